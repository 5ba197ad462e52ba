"""A small trained serving bundle and the real BentoML server on it, shared by the serving tests
(session fixtures, imported by conftest.py): the store is trained and the bundle exported once.

:func:`start_server` runs a command that starts the service (``bentoml serve`` or ``rapport serve
start``) on a free port and waits for ``/readyz``; :func:`stop_group` stops it and everything it
started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 1, 2, tzinfo=timezone.utc)
API_KEY = "test-key-0123456789"
OTHER_KEY = "other"


@pytest.fixture(scope="session")
def serving_bundle(tmp_path_factory):
    """(settings, bundle directory) of a small trained store."""
    from tests.fixtures_history import synthetic_store
    from training import promotion, tracking
    from training.bundle import export_bundle
    from training.pipeline import run_pipeline

    tmp = tmp_path_factory.mktemp("serving")
    settings, con = synthetic_store(tmp, 1_500, 31, now=NOW, clv={"candidates": ["bgnbd"]},
                                    churn={"max_cutoffs": 8, "model": {"n_estimators": 60}},
                                    recommend={"model": {"factors": 16, "iterations": 6, "n_estimators": 40,
                                                         "max_training_customers": 2_000}})
    result = run_pipeline(con, settings)
    con.close()
    # The bundle holds champions only; a model of this small store that missed its gate is promoted by
    # hand, as `rapport models promote --force` would: these tests are about serving, not about the gate.
    client = tracking.configure(settings)
    for outcome in result.steps:
        if not outcome.promotion.promoted:
            promotion.promote_manually(client, outcome.model_name, outcome.version, reason="serving tests",
                                       force=True)
    export_bundle(settings, tmp / "bundle")
    return settings, tmp / "bundle"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(bundle: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "RAPPORT_BUNDLE_DIR": str(bundle), "RAPPORT_SERVING__API_KEYS": json.dumps([API_KEY, OTHER_KEY]),
           "RAPPORT_DATA_DIR": str(data_dir), "OPENBLAS_NUM_THREADS": "1", "BENTOML_DO_NOT_TRACK": "true", **extra}
    env.pop("RAPPORT_CONFIG", None)
    return env


def bentoml_command(port: int) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", "serving.service:Rapport", "--host", "127.0.0.1", "--port",
            str(port)]


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError):  # not listening yet
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the service did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process's group (tests start the server in a session of its own)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            time.sleep(0.5)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def start_server(command: list[str], env: dict[str, str], log: Path, url: str) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_ready(url, process, log)
        yield process
    finally:
        stop_group(process)


@pytest.fixture(scope="session")
def serving_server(serving_bundle):
    """The URL of the real server (two workers) on the shared bundle, and its log file."""
    settings, bundle = serving_bundle
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = bundle.parent / "server.log"
    with start_server(bentoml_command(port), server_env(bundle, settings.data_dir, RAPPORT_SERVING__WORKERS="2"),
                      log, url):
        yield url, log
