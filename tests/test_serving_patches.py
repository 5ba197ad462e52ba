"""The patches of BentoML's and circus's private parts (serving/patches.py) apply to the tested
versions only: another version, or a class that has changed, is skipped with a warning naming the
package, the versions and what is lost, and the service still starts."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from serving import patches

pytestmark = pytest.mark.unit

TIMERS = next(patch for patch in patches.PATCHES if patch.name == "cancel_answered_timers")


class _Middleware(TimeoutMiddleware):
    """A class of its own to patch, so that the tests leave BentoML's untouched."""


def _on_copy(patch: patches.Patch, **changes: object) -> patches.Patch:
    return dataclasses.replace(patch, target=f"{__name__}:_Middleware", **changes)


@pytest.fixture
def copy_class(monkeypatch):
    # The patch sets attributes on the class: a fresh subclass for each test.
    monkeypatch.setattr(f"{__name__}._Middleware", type("_Middleware", (TimeoutMiddleware,), {}))


def test_the_tested_versions_are_patched():
    # Every patch applies to the installed (locked) versions: none is silently lost.
    assert patches.apply() == [patch.name for patch in patches.PATCHES]
    assert getattr(TimeoutMiddleware, TIMERS.flag) is True


def test_a_patch_applies_once(copy_class):
    calls = []
    patch = _on_copy(TIMERS, install=lambda owner: calls.append(owner))
    assert patches.apply([patch]) == [patch.name]
    assert patches.apply([patch]) == [patch.name]
    assert len(calls) == 1


@pytest.mark.parametrize("version", ["1.5.0", "1.4.39", "2.0.0rc1"])
def test_another_bentoml_version_is_skipped_with_a_warning(copy_class, monkeypatch, caplog, version):
    monkeypatch.setattr(patches, "installed_version", lambda distribution: version)
    original = _Middleware.__call__
    with caplog.at_level(logging.WARNING, logger="serving.patches"):
        assert patches.apply([_on_copy(TIMERS)]) == []
    assert _Middleware.__call__ is original and TIMERS.flag not in vars(_Middleware)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert f"BentoML {version} is installed" in message and "bentoml ~=1.4.40" in message
    assert "cancel_answered_timers" in message and "skipped" in message
    assert "timer and context stay in memory until the timeout" in message


def test_each_patch_names_what_is_lost_for_its_package(monkeypatch, caplog):
    monkeypatch.setattr(patches, "installed_version", lambda distribution: "99.0")
    with caplog.at_level(logging.WARNING, logger="serving.patches"):
        assert patches.apply() == []
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3
    assert "BentoML 99.0 is installed" in messages[1] and "logs it at ERROR with the request's values" in messages[1]
    assert "circus (kantoku) 99.0 is installed" in messages[2] and "kantoku ~=0.18.3" in messages[2]
    assert "restarted at the arbiter's own check interval, not within 1 s" in messages[2]


def test_a_missing_package_is_skipped_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(patches, "installed_version", lambda distribution: None)
    with caplog.at_level(logging.WARNING, logger="serving.patches"):
        assert patches.apply([_on_copy(TIMERS)]) == []
    assert "BentoML is not installed" in caplog.records[0].getMessage()


@pytest.mark.parametrize(("changes", "missing"), [
    ({"target": "bentoml._internal.server.http.nowhere:TimeoutMiddleware"},
     "has no bentoml._internal.server.http.nowhere:TimeoutMiddleware"),
    ({"target": "bentoml._internal.server.http.traffic:Gone"}, "has no bentoml._internal.server.http.traffic:Gone"),
    ({"needs": ("__call__", "_no_such_method")}, f"has no {__name__}:_Middleware._no_such_method"),
    ({"keyword": "check_delay"}, f"has no check_delay argument to {__name__}:_Middleware"),
])
def test_a_class_that_changed_is_skipped_with_a_warning(copy_class, caplog, changes, missing):
    calls = []
    patch = _on_copy(TIMERS, install=lambda owner: calls.append(owner))
    patch = dataclasses.replace(patch, **changes)
    with caplog.at_level(logging.WARNING, logger="serving.patches"):
        assert patches.apply([patch]) == []
    assert calls == []
    message = caplog.records[0].getMessage()
    assert message.startswith("BentoML 1.4.40 " + missing) and "skipped, so every answered request" in message


def test_the_tested_bentoml_is_the_one_pyproject_pins():
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    [bentoml] = [Requirement(text) for text in project["project"]["dependencies"] if text.startswith("bentoml")]
    assert str(bentoml.specifier) == patches.BENTOML_TESTED
