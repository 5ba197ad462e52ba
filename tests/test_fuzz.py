"""The service's OpenAPI document tells the truth: schemathesis (its command line, every check,
positive and negative cases, a bounded number of examples per endpoint, seeded) drives the real
server of the shared test bundle from ``/docs.json`` alone and finds no failure: no 500, no status or
body the document does not list, no valid request refused, no invalid one accepted, no endpoint
that needs a key answering without one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures_serving import API_KEY

pytestmark = [pytest.mark.fuzz, pytest.mark.serving, pytest.mark.slow]

#: Examples per endpoint and phase: every branch of the bodies, about 700 requests in all.
MAX_EXAMPLES = 40


def _schemathesis() -> list[str]:
    beside = Path(sys.executable).with_name("st")
    found = str(beside) if beside.exists() else shutil.which("st")
    if found is None:
        pytest.fail("schemathesis is not installed: make install-test (the test extras pin it)")
    return [found]


def test_the_openapi_document_holds_under_schemathesis(serving_server, tmp_path):
    url, log = serving_server
    done = subprocess.run(
        [*_schemathesis(), "run", f"{url}/docs.json", "--checks", "all", "--mode", "all",
         "--max-examples", str(MAX_EXAMPLES), "--seed", "7", "--generation-database", "none", "--workers", "1",
         "--phases", "examples,coverage,fuzzing", "-H", f"X-API-Key: {API_KEY}", "--request-timeout", "20",
         "--no-color", "--report", "junit", "--report-junit-path", str(tmp_path / "junit.xml")],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    # Every endpoint of the document was exercised.
    with urllib.request.urlopen(f"{url}/docs.json") as response:
        paths = json.loads(response.read())["paths"]
    report = (tmp_path / "junit.xml").read_text()
    for path in paths:
        assert path in report, path
    # Thousands of malformed requests later, the server log holds no traceback.
    assert "Traceback" not in log.read_text()
