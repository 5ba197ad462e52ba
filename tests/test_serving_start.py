"""The service starts only when it can serve, and stopping it stops everything it started: the
bundle's manifest records every file's size and SHA-256 and ``rapport serve start`` refuses a bundle
with a missing, truncated or changed file (naming it) before BentoML starts; a worker that cannot
load its bundle stops the server instead of being restarted in a loop; SIGTERM to ``rapport serve
start`` leaves no process behind. The bundle's arrays are memory-mapped, not copied."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.fixtures_serving import ROOT, bentoml_command, free_port, server_env, stop_group, wait_ready
from training.bundle import BundleError, load_bundle, verify_bundle

pytestmark = [pytest.mark.serving, pytest.mark.slow]

RAPPORT = [sys.executable, "-c", "from rapport.cli import app; app()"]


@pytest.fixture
def bundle_copy(serving_bundle, tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(serving_bundle[1], copy)
    return copy


def _serve_start(bundle: Path, port: int, env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*RAPPORT, "serve", "start", "--bundle", str(bundle), "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_the_manifest_records_every_file_and_each_change_is_named(bundle_copy):
    manifest = verify_bundle(bundle_copy)
    files = manifest["files"]
    on_disk = sorted(p.relative_to(bundle_copy).as_posix() for p in bundle_copy.rglob("*")
                     if p.is_file() and p.name != "manifest.json")
    assert sorted(files) == on_disk
    assert all(len(entry["sha256"]) == 64 and entry["bytes"] > 0 for entry in files.values())
    # The same size, one byte changed: only the digest tells.
    ranker = bundle_copy / "recommender" / "ranker.txt"
    data = bytearray(ranker.read_bytes())
    data[-2] = ord("x") if data[-2] != ord("x") else ord("y")
    ranker.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"recommender/ranker.txt has changed since the export"):
        verify_bundle(bundle_copy)
    verify_bundle(bundle_copy, digests=False)  # what a worker checks: the sizes
    (bundle_copy / "identity.parquet").unlink()
    with pytest.raises(BundleError, match=r"identity.parquet is missing"):
        verify_bundle(bundle_copy, digests=False)
    with pytest.raises(BundleError, match=r"identity.parquet is missing"):
        load_bundle(bundle_copy)


def test_a_truncated_file_is_refused_at_start_naming_it(bundle_copy, serving_bundle):
    settings, _ = serving_bundle
    target = bundle_copy / "recommender" / "arrays" / "user_factors.npy"
    size = target.stat().st_size
    with target.open("r+b") as handle:
        handle.truncate(size // 2)
    started = time.monotonic()
    process = _serve_start(bundle_copy, free_port(), server_env(bundle_copy, settings.data_dir))
    out, err = process.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert process.returncode != 0
    assert "recommender/arrays/user_factors.npy is truncated" in err and f"{size:,}" in err, err
    assert "Traceback" not in err
    assert elapsed < 30
    # A bundle exported before the file list: refused with what to do.
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest["files"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    process = _serve_start(bundle_copy, free_port(), server_env(bundle_copy, settings.data_dir))
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0 and "rapport serve export" in err


def test_a_worker_that_cannot_load_its_bundle_stops_the_server(bundle_copy, serving_bundle):
    """A file of the right size but broken (what the sizes a worker checks cannot see): BentoML run
    directly on it stops, with the file named once per worker at most, instead of restarting workers."""
    settings, _ = serving_bundle
    state = bundle_copy / "clv.json"
    text = state.read_text()
    state.write_text("#" + text[1:])
    log = bundle_copy.parent / "broken.log"
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(bentoml_command(free_port()), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env=server_env(bundle_copy, settings.data_dir, RAPPORT_SERVING_WORKERS="2"),
                                   start_new_session=True)
    try:
        process.wait(timeout=120)
    finally:
        stop_group(process)
    assert time.monotonic() - started < 120
    text = log.read_text()
    failures = text.count("cannot load the serving bundle")
    assert 1 <= failures <= 2, text[-3000:]
    assert "file clv.json cannot be read" in text


def test_sigterm_to_serve_start_stops_every_process_it_started(serving_bundle):
    settings, bundle = serving_bundle
    port = free_port()
    env = server_env(bundle, settings.data_dir, RAPPORT_SERVING_WORKERS="2")
    process = _serve_start(bundle, port, env)
    try:
        log = bundle.parent / "serve-start.log"
        log.write_text("")
        wait_ready(f"http://127.0.0.1:{port}", process, log)
        children = psutil.Process(process.pid).children(recursive=True)
        # the arbiter and its two workers
        assert len(children) >= 3, [c.cmdline() for c in children]
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
        assert process.returncode == 0
        time.sleep(0.5)
        left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert left == [], [c.cmdline() for c in left]
    finally:
        if process.poll() is None:
            process.kill()


def test_the_bundle_arrays_are_memory_mapped(serving_bundle):
    bundle = load_bundle(serving_bundle[1])

    def mapped(array: np.ndarray) -> bool:
        while array is not None:
            if isinstance(array, np.memmap):
                return True
            array = array.base if isinstance(array.base, np.ndarray) else None
        return False

    model = bundle.recommender
    for array in (model.models_.user_factors, model.data_.weight.data,
                  model.data_.weight.indices, model.data_.customer_ids, bundle.default_lists.item,
                  bundle.default_lists.score):
        assert mapped(array), (array.dtype, array.shape)
        assert not array.flags.writeable
