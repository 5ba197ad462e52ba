"""The audit of the test run's logs: it finds the planted e-mails and phones, and nothing else."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tests.log_audit import audit_file, find_personal_data

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("line", [
    "WARNING features.ingest: bad row: jane.doe17@example.com,2024-01-01",
    "ERROR serving: body {'key': {'type': 'email', 'value': 'nobody@example.invalid'}}",
    "Jane.Doe+shop@Mail.Example rejected",
    "  POST.EXAMPLE user JANE.DOE3@POST.EXAMPLE",
    "merge of b@x.com",
    "phone +44 7700 900123 is not valid",
    "phone 07700900123",
    "0044-7700-900-123",
    "key=+447700900123;",
    "(07700) 900123",
])
def test_a_planted_email_or_phone_is_found(line):
    assert len(find_personal_data(line)) == 1


@pytest.mark.parametrize("line", [
    "INFO training.pipeline: rapport-clv version 3 is now champion",
    "quarantined 12 rows: unparseable timestamp (column timestamp, rows 4, 9, 17)",
    "mlflow tracking https://ana:***@mlflow.example:5000/api",  # masked: no address left
    "run 1733280000000 took 0.7700900123 s; card 6337000000000001",
    "customer_id 17700900123 scored",
    "user@company.co.uk",  # a real-looking domain is not one the tests plant
])
def test_ordinary_log_lines_are_not_findings(line):
    assert find_personal_data(line) == []


def test_the_file_audit_names_lines_and_kinds_never_values(tmp_path):
    log = tmp_path / "session.txt"
    handler = logging.FileHandler(log)
    logger = logging.getLogger("tests.log_audit_probe")
    logger.addHandler(handler)
    logger.propagate = False  # these planted values must not reach the session's own audit
    try:
        logger.warning("ingest finished: 3 rows")
        logger.warning("row 2 holds %s and %s", "ann@example.com", "07700 900123")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        handler.close()
    findings = audit_file(log)
    assert [(f.line, f.kind) for f in findings] == [(2, "an e-mail address"), (2, "a phone number")]
    assert all("ann" not in str(f) and "900123" not in str(f) for f in findings)
    assert audit_file(tmp_path / "absent.txt") == []


def test_a_session_whose_logs_hold_a_planted_phone_fails(tmp_path):
    """The conftest hooks as a plugin of a small session: one passing test that logs a phone number."""
    probe = tmp_path / "test_probe.py"
    probe.write_text("import logging\n\ndef test_logs():\n    logging.getLogger('probe').info('call %s', '+44 7700 900123')\n")
    clean = tmp_path / "test_clean.py"
    clean.write_text("import logging\n\ndef test_logs():\n    logging.getLogger('probe').info('3 rows')\n")
    repository = Path(__file__).resolve().parents[1]
    outputs = {}
    for test, code in ((probe, 1), (clean, 0)):
        done = subprocess.run([sys.executable, "-m", "pytest", str(test), "-q", "-p", "tests.conftest",
                               "-p", "no:cacheprovider", "--rootdir", str(tmp_path)],
                              cwd=repository, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == code and "1 passed" in done.stdout, done.stdout[-2000:]
        outputs[test.name] = done.stdout
    assert "personal data in the test run's logs" in outputs["test_probe.py"]
    assert ": a phone number" in outputs["test_probe.py"] and "900123" not in outputs["test_probe.py"]
    assert "personal data" not in outputs["test_clean.py"]
