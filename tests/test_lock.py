"""The lock files agree with pyproject.toml and bentofile.yaml: a dependency added or tightened without
``make lock`` fails here, not on a fresh machine that installs an untested version."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
#: The platform the lock files are resolved for (LOCK_TARGET in the Makefile).
TARGET = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def pins(path: Path) -> dict[str, Version]:
    """``name==version`` lines of a compiled requirements file, by canonical name."""
    found: dict[str, Version] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", \
            f"{path.name}:{number}: expected a pin name==version, got {line!r}"
        found[canonicalize_name(requirement.name)] = Version(specifiers[0].version)
    return found


def unmet(requirements: list[str], locked: dict[str, Version], lock_name: str) -> list[str]:
    """Each requirement (for the locked platform) missing from ``locked`` or pinned outside its range."""
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(TARGET):
            continue
        version = locked.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name}: missing from {lock_name}")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}: {lock_name} pins {version}, expected {requirement.specifier}")
    return problems


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_pins_reads_only_exact_pins(tmp_path):
    good = tmp_path / "good.lock"
    good.write_text("# header\nNumPy==2.4.6\n    # via pandas\nibis-framework[duckdb]==12.0.0\n", encoding="utf-8")
    assert pins(good) == {"numpy": Version("2.4.6"), "ibis-framework": Version("12.0.0")}
    loose = tmp_path / "loose.lock"
    loose.write_text("numpy>=1.26\n", encoding="utf-8")
    with pytest.raises(AssertionError, match=r"loose.lock:1: expected a pin"):
        pins(loose)


def test_unmet_names_a_missing_or_stale_pin():
    locked = {"numpy": Version("1.25.0"), "pandas": Version("2.2.0")}
    assert unmet(["numpy>=1.26", "pandas>=2.1", "scipy>=1.11", "colorama; sys_platform == 'win32'"],
                 locked, "x.lock") == ["numpy: x.lock pins 1.25.0, expected >=1.26", "scipy: missing from x.lock"]


def test_runtime_lock_satisfies_the_dependencies(project):
    assert unmet(project["dependencies"], pins(ROOT / "requirements.lock"), "requirements.lock") == []


def test_test_lock_satisfies_the_dependencies_and_the_test_extra(project):
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    assert unmet(requirements, pins(ROOT / "requirements-test.lock"), "requirements-test.lock") == []


def test_both_locks_pin_a_shared_package_alike():
    runtime, test = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-test.lock")
    assert set(runtime) <= set(test)
    assert {name: (version, test[name]) for name, version in runtime.items() if test[name] != version} == {}


def test_bento_packages_agree_with_the_lock_and_pin_bentoml_like_pyproject(project):
    packages = yaml.safe_load((ROOT / "bentofile.yaml").read_text(encoding="utf-8"))["python"]["packages"]
    assert unmet(packages, pins(ROOT / "requirements.lock"), "requirements.lock") == []
    bentoml = [str(Requirement(text).specifier) for text in project["dependencies"] + packages
               if canonicalize_name(Requirement(text).name) == "bentoml"]
    # One specifier in pyproject.toml and one in bentofile.yaml, the same minor.
    assert len(bentoml) == 2 and bentoml[0] == bentoml[1] and bentoml[0].startswith("~=")
