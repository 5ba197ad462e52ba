"""The service starts only when it can serve, and stopping it stops everything it started: the
bundle's manifest records every file's size and SHA-256 and ``rapport serve start`` refuses a bundle
with a missing, truncated or changed file (naming it) before BentoML starts; a worker that cannot
load its bundle stops the server instead of being restarted in a loop; SIGTERM to ``rapport serve
start`` leaves no process behind. The bundle's arrays are memory-mapped, not copied; a worker
answers from them before it imports the model libraries, which it loads right after in a thread;
a bundle whose tables are Parquet files (written before the tables of columns) is still served."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from tests.fixtures_serving import ROOT, bentoml_command, free_port, server_env, stop_group, wait_ready
from features.schema import KeyType
from serving import schemas
from serving.lookup import Lookups
from serving.runtime import Runtime
from training.bundle import IDENTITY, SNAPSHOT_CHURN, SNAPSHOT_CUSTOMERS, BundleError, load_bundle, read_manifest, \
    read_table, verify_bundle, write_manifest

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
    (bundle_copy / "identity" / "hash_low.npy").unlink()
    with pytest.raises(BundleError, match=r"identity/hash_low.npy is missing"):
        verify_bundle(bundle_copy, digests=False)
    with pytest.raises(BundleError, match=r"identity/hash_low.npy is missing"):
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
                                   env=server_env(bundle_copy, settings.data_dir, RAPPORT_SERVING__WORKERS="2"),
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
    env = server_env(bundle, settings.data_dir, RAPPORT_SERVING__WORKERS="2")
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


#: Imported by a worker only once it answers (serving.lookup): the libraries of the models and the snapshot.
MODEL_LIBRARIES = ("pandas", "pyarrow", "scipy", "sklearn", "lightgbm", "ibis", "duckdb", "mlflow", "lifetimes",
                   "implicit", "autograd")

_WORKER_START = """
import json, os, sys, threading
heavy = set(sys.argv[1].split(","))
customer, email = int(sys.argv[2]), sys.stdin.read()
seen = {}

class Watch:
    # Records which thread imports each model library first (the import itself goes on as usual).
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in heavy and top not in seen:
            seen[top] = threading.current_thread().name
        return None

sys.meta_path.insert(0, Watch())
from features.schema import KeyType
from features.settings import load_settings
from serving import schemas
from serving.lookup import Lookups, RequestError
from serving.service import Rapport

# What a worker answers with before it loads the models, in a process that has loaded nothing else.
lookups = Lookups.from_directory(os.environ["RAPPORT_BUNDLE_DIR"], load_settings())
by_id = lookups.listed(schemas.RecommendRequest(customer_id=customer, n=5))
by_key = lookups.listed(schemas.RecommendRequest(key=schemas.RawKey(type=KeyType.EMAIL, value=email), n=5))
answers = {"by_id": [i.item_id for i in by_id[0].items], "by_key": [i.item_id for i in by_key[0].items],
           "info": lookups.info().process_id == os.getpid(),
           "error": lookups.error(RequestError(404, "item_id", "not known"))["detail"][0]["loc"] == ["item_id"],
           "looked_up_scores": [s.customer_id for s in lookups.customer_scores([customer]).scores] == [customer]}
before_service = sorted(seen)
# The service's own start: the models are loaded by its thread, never by the thread that starts it.
service = Rapport.inner()
runtime = service._loaded.result(timeout=300)
answers["scores"] = len(runtime.customer_scores([customer]).scores) == 1
on_start = sorted(top for top, thread in seen.items() if thread == "MainThread")
print(json.dumps({"before_service": before_service, "on_start": on_start, "later": sorted(seen), "answers": answers}))
"""


def _email(value: str) -> schemas.RawKey:
    return schemas.RawKey(type=KeyType.EMAIL, value=value)


def test_a_worker_answers_before_it_imports_the_model_libraries(serving_bundle):
    """The lookups a worker answers with at once (default lists by id and by raw key, customer scores,
    /info, error bodies) import none of the model libraries, and neither does the service's start (its
    ``__init__``, what a worker runs before it accepts requests): they are loaded right after, in the
    thread that loads the models."""
    settings, bundle = serving_bundle
    runtime = Runtime(load_bundle(bundle), settings)
    keys = pd.read_parquet(bundle.parent / "raw" / "customer_keys.parquet")
    # A customer whose e-mail resolves to a default list (the same lookup, made by the full runtime).
    email, expected_by_key = next(
        (e, answer) for e in keys["email"] if isinstance(e, str) and e
        and isinstance(answer := runtime.listed(schemas.RecommendRequest(key=_email(e), n=5)), tuple))
    customer = int(runtime.bundle.recommender.data_.customer_ids[0])
    expected_by_id = runtime.listed(schemas.RecommendRequest(customer_id=customer, n=5))
    # The e-mail goes through stdin: never in a command line.
    done = subprocess.run([sys.executable, "-c", _WORKER_START, ",".join(MODEL_LIBRARIES), str(customer)], cwd=ROOT,
                          env=server_env(bundle, settings.data_dir), input=email, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["before_service"] == [] and found["on_start"] == [], found
    assert found["answers"] == {"by_id": [i.item_id for i in expected_by_id[0].items],
                                "by_key": [i.item_id for i in expected_by_key[0].items],
                                "info": True, "error": True, "looked_up_scores": True, "scores": True}, found
    # The watch itself sees the imports: the thread that loads the models does import them.
    assert {"pandas", "lightgbm", "sklearn", "scipy"} <= set(found["later"]), found


def _as_parquet_bundle(bundle: Path) -> None:
    """The bundle as it was written before the tables of columns: Parquet files, a new manifest."""
    for name, index in ((SNAPSHOT_CUSTOMERS, True), (SNAPSHOT_CHURN, True), (IDENTITY, False)):
        frame = read_table(bundle / name)
        shutil.rmtree(bundle / name)
        frame.to_parquet(bundle / f"{name}.parquet", index=index)
    manifest = read_manifest(bundle)
    manifest.pop("files")
    write_manifest(bundle, manifest)


def test_a_bundle_with_parquet_tables_is_still_served(bundle_copy, serving_bundle):
    settings, bundle = serving_bundle
    current = load_bundle(bundle)
    _as_parquet_bundle(bundle_copy)
    earlier = load_bundle(bundle_copy)
    for name in ("customers", "churn"):
        pd.testing.assert_frame_equal(getattr(earlier.snapshot, name), getattr(current.snapshot, name))
    # The lookups answer by customer id at once; raw keys wait for the runtime, which reads the Parquet map.
    lookups = Lookups.from_directory(bundle_copy, settings)
    assert lookups.identity is None
    customer = int(current.recommender.data_.customer_ids[0])
    assert lookups.listed(schemas.RecommendRequest(customer_id=customer, n=5)) is not None
    runtime = Runtime.from_directory(bundle_copy, settings, lookups)
    assert lookups.identity is not None and lookups.identity.size == len(current.identity)
    assert runtime.identity.size == len(current.identity)
