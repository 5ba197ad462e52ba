"""Shared fixtures: an isolated state folder per test, and tiny raw files written by hand; the audit
of the whole run's logs for personal data (:mod:`tests.log_audit`)."""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from features.settings import Settings, load_settings
from tests.fixtures_serving import serving_bundle, serving_server  # noqa: F401  (session fixtures of the serving tests)
from tests.log_audit import audit_file

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # tests never phone home
# The hyper-parameter searches spend their whole time budget by design: the suite judges the settings
# as given, and the tests of the searches pass a budget of their own.
os.environ.setdefault("RAPPORT_TRAIN_SEARCH_BUDGET_S", "0")

#: The session's log file and the handler that writes every log record into it.
_AUDIT: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    handle, name = tempfile.mkstemp(prefix="rapport-test-log-", suffix=".txt")
    os.close(handle)
    handler = logging.FileHandler(name, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    # INFO too: that is where a service logs its refused requests.
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    _AUDIT.update(path=Path(name), handler=handler)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each test's captured output goes into the session's log too (log records are there already)."""
    handler = _AUDIT.get("handler")
    if not isinstance(handler, logging.FileHandler):
        return
    for title, content in report.sections:
        if title.startswith(("Captured stdout", "Captured stderr")) and content:
            with handler.lock:
                handler.stream.write(f"--- {report.nodeid}: {title}\n{content}\n")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when its logs or captured output hold a planted e-mail address or phone number."""
    handler, path = _AUDIT.get("handler"), _AUDIT.get("path")
    if not isinstance(handler, logging.FileHandler) or not isinstance(path, Path):
        return
    logging.getLogger().removeHandler(handler)
    handler.close()
    findings = audit_file(path)
    if not findings:
        path.unlink(missing_ok=True)
        return
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        shown = "; ".join(str(f) for f in findings[:20]) + (f" (and {len(findings) - 20} more)" if len(findings) > 20 else "")
        reporter.write_line(f"personal data in the test run's logs ({len(findings)} line(s) of {path}): {shown}",
                            red=True, bold=True)


#: The "now" every ingest test runs at: no test depends on the wall clock.
NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("RAPPORT_CONFIG", raising=False)
    for name in list(__import__("os").environ):
        if name.startswith("RAPPORT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return load_settings(data_dir=tmp_path / "state")


def write_csv(folder: Path, name: str, header: list[str], rows: list[list[object]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])
    return path


ORDER_HEADER = ["order_id", "line_id", "timestamp", "account_id", "email", "device_id", "item_id", "quantity",
                "unit_price", "discount", "currency", "channel", "country"]
RECEIPT_HEADER = ["receipt_id", "line_id", "timestamp", "store_id", "loyalty_card", "item_id", "quantity", "unit_price"]
RETURN_HEADER = ["return_id", "order_id", "line_id", "quantity", "refund_amount", "timestamp"]
KEYS_HEADER = ["account_id", "email", "phone", "loyalty_card", "device_id"]
