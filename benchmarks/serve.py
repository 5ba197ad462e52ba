"""Benchmark: the real BentoML server on a bundle of 1,000,000 customers and 50,000 items, driven over
HTTP from a second process at 16 concurrent connections, 127.0.0.1 only.

The load generator is wrk (Debian's ``wrk`` package: C, a few percent of a core, 4 threads so that
the connections spread over the workers) when it is installed, else a Python asyncio client (httpx,
which itself takes most of a core on a 2-core machine and so understates the server). Each
endpoint gets a 5 s warm-up, then ``--seconds`` of load.

The bundle is synthesised, not exported from a 1M-customer store: the recommender is fitted on the
synthetic interactions of ``benchmarks/recommend.py`` (``RecommenderModel.fit_data``); the CLV and
churn models are the ones of a small trained bundle (``--models``, e.g. one written by
``rapport serve export`` after ``rapport demo``), and the scoring snapshot is that bundle's rows
resampled to the 1M customers; the identity map gets three random keys per customer. Every
customer's score row is written as ``rapport serve export`` writes it (``score_chunks`` of that
snapshot with those models, ``training.bundle.write_scores``; the seconds it took are printed).

The bundle holds the default lists (``--default-lists``, the top 20 of every customer ranked at
export, as ``rapport serve export`` writes them; the seconds it took are printed).

    python benchmarks/serve.py --models bundle [--customers 1000000] [--items 50000]
                               [--interactions 10000000] [--seconds 30] [--connections 16] [--workers 2]
                               [--client wrk|httpx] [--default-lists 20] [--reuse] [--kill-worker]
                               [--worker-start N] [--cases customer_scores,customer_scores_1000,echo]

Prints, for ``recommend`` (a random known customer, n=10, no option: the web shop's plain list, a
lookup in the default lists), ``recommend_ranked`` (the same with ``exclude_purchased: false``: an
option, so the model ranks the list per request, in blocks of concurrent requests),
``customer_scores`` (one random customer: a lookup in the score rows), ``customer_scores_1000``
(1,000 random customers a request, the CRM's batch, on one connection: the latency of one request
with no other waiting) and ``echo`` (the HTTP layer alone): requests/s, p50 and p99 latency, errors;
the share of echo's throughput each endpoint reaches and its latencies as multiples of echo's (the
machine's speed divides out), the load average before and after, and each worker's resident (RSS)
and proportional (PSS: the shared pages of the memory-mapped bundle split between the processes
that map them) memory. Targets on 2 cores: recommend >= 1,000 requests/s, p99 < 50 ms, zero errors,
>= 60 % of echo; customer_scores >= 3,000 requests/s with p99 < 10 ms, a 1,000-customer request
under 20 ms; < 2 GB per worker. ``--cases`` measures only the cases named (echo is always measured,
last).

``--kill-worker`` measures recovery instead: ``recommend`` under the same load for ``--seconds``, one
of the workers killed (SIGKILL) a third of the way in; prints the requests lost and the seconds until
the restarted worker answers (it memory-maps the bundle's arrays). Targets: < 0.5 % of the requests
lost, the worker answering again within 5 s.

``--worker-start N`` measures a worker's start alone, without load: one worker killed N times; prints
the median seconds until the new process answers (the arbiter's check, the interpreter, the imports,
the bundle's lookups) and until it has loaded the models and the snapshot in the background.
"""

from __future__ import annotations

import argparse
import contextlib
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the project: benchmarks/features.py is no package

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

API_KEY = "benchmark-key"


def build_bundle(args: argparse.Namespace, out: Path) -> None:
    import recommend as synthetic  # benchmarks/recommend.py

    from training.bundle import CHURN_STATE, CLV_STATE, IDENTITY, MODEL_KEYS, RECOMMENDER_DIR, SNAPSHOT_CHURN, \
        SNAPSHOT_CUSTOMERS, load_bundle, read_manifest, read_table, sort_identity, table_path, write_default_lists, \
        write_manifest, write_scores
    from training.frames import write_frame
    from training.recommend import artefact
    from training.recommend.model import RecommenderModel, RecommenderSettings

    source = Path(args.models)
    manifest = read_manifest(source)
    started = time.perf_counter()
    customer_ids, catalogue, events = synthetic.synthesise(args.customers, args.items, args.interactions, 500, 7)
    data = synthetic.snapshot(customer_ids, catalogue, events, 0.0)
    before = synthetic.snapshot(customer_ids, catalogue, events, float(synthetic.LABEL_DAYS))
    relevant = synthetic.as_sets(customer_ids, catalogue.item_ids,
                                 *synthetic.bought_between(events, synthetic.LABEL_DAYS, 0.0))
    print(f"synthesised {data.n_users:,} customers x {data.n_items:,} items in {time.perf_counter() - started:.0f} s",
          flush=True)
    started = time.perf_counter()
    model = RecommenderModel(RecommenderSettings(seed=7)).fit_data(before, relevant, data)
    print(f"recommender fitted in {time.perf_counter() - started:.0f} s", flush=True)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    artefact.save(model, out / RECOMMENDER_DIR)
    started = time.perf_counter()
    lists = write_default_lists(model, out, args.default_lists)
    print(f"default lists (top {args.default_lists}) ranked in {time.perf_counter() - started:.0f} s", flush=True)
    for name in (CLV_STATE, CHURN_STATE):
        shutil.copy(source / name, out / name)
    rng = np.random.default_rng(7)
    ids = pd.Index(data.customer_ids, name="customer_id")
    customers = read_table(table_path(source, SNAPSHOT_CUSTOMERS))
    churn = read_table(table_path(source, SNAPSHOT_CHURN))
    rows = customers.iloc[rng.integers(0, len(customers), len(ids))].set_axis(ids)
    write_frame(rows, out / SNAPSHOT_CUSTOMERS)
    in_churn = churn.iloc[rng.integers(0, len(churn), len(ids) // 2)].set_axis(ids[::2][: len(ids) // 2])
    write_frame(in_churn, out / SNAPSHOT_CHURN)
    # The same tables as Parquet (earlier bundles' format), read back once each: the figure the columns replace.
    for name, frame in ((SNAPSHOT_CUSTOMERS, rows), (SNAPSHOT_CHURN, in_churn)):
        frame.to_parquet(out.parent / f"{name}.parquet")
        began = time.perf_counter()
        pd.read_parquet(out.parent / f"{name}.parquet")
        parquet_s = time.perf_counter() - began
        began = time.perf_counter()
        read_table(out / name)
        print(f"{name}: {len(frame):,} rows read in {time.perf_counter() - began:.2f} s as .npy columns, "
              f"{parquet_s:.2f} s as Parquet", flush=True)
    started = time.perf_counter()
    from training.scoring import Snapshot, score_chunks

    models = load_bundle(source)
    versions = {key: str(manifest["models"][key]["version"]) for key in MODEL_KEYS}
    write_scores(score_chunks(Snapshot(as_of=models.snapshot.as_of, customers=rows, churn=in_churn), models.clv,
                              models.churn, versions=versions), out)
    print(f"score rows of {len(ids):,} customers written in {time.perf_counter() - started:.0f} s", flush=True)
    n_keys = 3 * len(ids)
    write_frame(sort_identity(pd.DataFrame({
        "key_type": pd.Categorical(np.resize(np.asarray(["email", "account", "device"]), n_keys)),
        "hash_high": rng.integers(0, 2**63, n_keys, dtype=np.int64).astype(np.uint64),
        "hash_low": rng.integers(0, 2**63, n_keys, dtype=np.int64).astype(np.uint64),
        "customer_id": np.repeat(ids.to_numpy(), 3),
    })), out / IDENTITY, index=False)
    manifest = {**manifest, "counts": {"customers": len(ids), "churn_population": len(in_churn), "identity_keys": n_keys,
                                       "recommender_customers": data.n_users, "items": data.n_items,
                                       "default_lists": 0 if lists is None else lists.n_customers},
                "salt_check": None, "created": pd.Timestamp.now(tz="UTC").isoformat()}
    write_manifest(out, manifest)


# --- the load generator (second process) ----------------------------------------------------------------


async def _drive(url: str, endpoint: str, ids: list[int], seconds: float, connections: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    headers = {"X-API-Key": API_KEY}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10, headers=headers) as client:
        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < stop:
                i = (i + connections) % len(ids)
                if endpoint == "recommend":
                    body = {"customer_id": ids[i], "n": 10}
                elif endpoint == "recommend_ranked":
                    body = {"customer_id": ids[i], "n": 10, "exclude_purchased": False}
                elif endpoint == "customer_scores":
                    body = {"customer_ids": [ids[i]]}
                elif endpoint == "customer_scores_1000":
                    start = i % (len(ids) - BATCH + 1)
                    body = {"customer_ids": ids[start : start + BATCH]}
                else:
                    body = {"message": "ping"}
                t = time.perf_counter()
                try:
                    response = await client.post(f"/{_WRK_BODIES[endpoint][0]}", json=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t)
                errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(connections)))
        elapsed = time.perf_counter() - started
    lat = np.asarray(latencies) * 1000
    return {"endpoint": endpoint, "requests": len(lat), "rps": len(lat) / elapsed,
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)), "errors": errors}


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "%(key)s"
local ids = {}
for line in io.lines("%(ids)s") do ids[#ids + 1] = line end
-- each wrk thread starts at its own place in the list: no two connections ask for the same customers
local threads = 0
function setup(thread)
  thread:set("offset", threads * 5003)
  threads = threads + 1
end
local i = nil
-- %(batch)d consecutive customers of the list from the i-th on (wrapping before its end)
local function batch(start)
  start = ((start - 1) %% (#ids - %(batch)d + 1)) + 1
  return table.concat(ids, ",", start, start + %(batch)d - 1)
end
request = function()
  i = ((i or offset or 0) %% #ids) + 1
  return wrk.format(nil, "/%(endpoint)s", nil, %(body)s)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%f %%f %%f %%d\\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""

#: Customers per request of the ``customer_scores_1000`` case (the service's largest batch).
BATCH = 1_000
#: Per measured case: the endpoint's path and the request body (Lua expression of the customer ids[i]).
#: ``recommend`` asks for a plain list (a lookup in the default lists ranked at export);
#: ``recommend_ranked`` keeps purchases in the list (an option), so the model ranks it per request.
_WRK_BODIES = {
    "recommend": ("recommend", "'{\"customer_id\": ' .. ids[i] .. ', \"n\": 10}'"),
    "recommend_ranked": ("recommend", "'{\"customer_id\": ' .. ids[i] .. ', \"n\": 10, \"exclude_purchased\": false}'"),
    "customer_scores": ("customer_scores", "'{\"customer_ids\": [' .. ids[i] .. ']}'"),
    "customer_scores_1000": ("customer_scores", "'{\"customer_ids\": [' .. batch(i) .. ']}'"),
    "echo": ("echo", "'{\"message\": \"ping\"}'"),
}
CASES = tuple(_WRK_BODIES)
#: Cases measured on one connection whatever --connections says: the latency of a request alone.
ONE_CONNECTION = ("customer_scores_1000",)


def drive_wrk(url: str, endpoint: str, ids_file: Path, seconds: float, connections: int) -> dict:
    """One endpoint under wrk: 4 threads (connections opened by several threads spread over the
    workers; one thread opens them all at once and one worker may accept them all)."""
    script = ids_file.parent / f"{endpoint}.lua"
    path, body = _WRK_BODIES[endpoint]
    script.write_text(_WRK_SCRIPT % {"key": API_KEY, "ids": ids_file.with_suffix(".txt"), "endpoint": path,
                                     "body": body, "batch": BATCH})
    threads = str(min(4, connections))
    for duration in (5.0, seconds):  # warm-up, then the measure
        done = subprocess.run(["wrk", "-t", threads, "-c", str(connections), "-d", f"{duration:g}s", "-s", str(script),
                               url], capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    requests, elapsed, p50, p99, errors = line.split()[1:]
    return {"endpoint": endpoint, "requests": int(requests), "rps": int(requests) / float(elapsed),
            "p50": float(p50), "p99": float(p99), "errors": int(errors)}


def _workers(server_pid: int) -> list:
    import psutil

    return [p for p in psutil.Process(server_pid).children(recursive=True)
            if any("_bentoml_impl.worker" in part for part in p.cmdline())]


def _answering_process(url: str) -> int | None:
    """The worker process that answers ``/info`` on a new connection (None: no answer)."""
    import http.client
    from urllib.parse import urlparse

    where = urlparse(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=1)
    try:
        connection.request("POST", "/info", body=b"", headers={"Connection": "close"})
        response = connection.getresponse()
        return json.loads(response.read())["process_id"] if response.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError, KeyError):
        return None
    finally:
        connection.close()


def kill_worker_case(url: str, server_pid: int, ids_file: Path, seconds: float, connections: int) -> dict:
    """``recommend`` under wrk for ``seconds``; a third of the way in, one worker is killed (SIGKILL).
    Counts the requests lost (wrk's errors: the killed worker's requests in flight, failed
    reconnections) and the seconds until the restarted worker answers: new connections are opened
    every 50 ms and asked which process answers (``/info``'s ``process_id``) until a process that was
    not there before the kill answers."""
    script = ids_file.parent / "kill.lua"
    path, body = _WRK_BODIES["recommend"]
    script.write_text(_WRK_SCRIPT % {"key": API_KEY, "ids": ids_file.with_suffix(".txt"), "endpoint": path,
                                     "body": body, "batch": BATCH})
    threads = str(min(4, connections))
    command = ["wrk", "-t", threads, "-c", str(connections), "-d", f"{seconds:g}s", "-s", str(script), url]
    subprocess.run([*command[:6], "5s", *command[7:]], capture_output=True, text=True, check=True)  # warm-up
    before = {p.pid for p in _workers(server_pid)}
    load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds / 3)
    victim = sorted(before)[0]
    killed_at = time.perf_counter()
    os.kill(victim, 9)
    recovered = None
    # Until it answers (a minute at most: past the load's end, the figure is flagged).
    while time.perf_counter() - killed_at < 60:
        answered = _answering_process(url)
        if answered is not None and answered not in before:
            recovered = time.perf_counter() - killed_at
            break
        time.sleep(0.05)
    out, _ = load.communicate(timeout=seconds + 60)
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    requests, elapsed, p50, p99, errors = line.split()[1:]
    return {"endpoint": "recommend, one worker killed", "requests": int(requests),
            "rps": int(requests) / float(elapsed), "p50": float(p50), "p99": float(p99), "errors": int(errors),
            "recovered_s": recovered, "during_load": recovered is not None and recovered < seconds * 2 / 3,
            "workers_after": len([p for p in _workers(server_pid) if p.status() != "zombie"])}


def worker_start_case(url: str, server_pid: int, log: Path, repeats: int) -> dict:
    """A worker's start without load: ``repeats`` times, one worker killed (SIGKILL) and the seconds
    until a new process answers ``/info`` (spawned by the arbiter, imports, the lookups), then the
    seconds its log gives for loading the models and the snapshot in the background."""
    answered, loaded = [], []
    # Every worker of the server's start has loaded its models (each logs it once) before the first kill.
    began = time.perf_counter()
    while log.read_text().count("models loaded in") < len(_workers(server_pid)) and time.perf_counter() - began < 120:
        time.sleep(0.2)
    for _ in range(repeats):
        before = {p.pid for p in _workers(server_pid)}
        logged = log.read_text().count("models loaded in")
        killed_at = time.perf_counter()
        os.kill(sorted(before)[0], 9)
        while time.perf_counter() - killed_at < 120:
            if (pid := _answering_process(url)) is not None and pid not in before:
                answered.append(time.perf_counter() - killed_at)
                break
            time.sleep(0.05)
        # (A server whose workers load everything before they answer logs no such line.)
        while logged and time.perf_counter() - killed_at < 120 and log.read_text().count("models loaded in") == logged:
            time.sleep(0.2)
        lines = [x for x in log.read_text().splitlines() if "models loaded in" in x]
        if logged:
            loaded.append(float(lines[-1].rsplit("models loaded in ", 1)[1].split()[0]))
        time.sleep(2)  # the survivors settle before the next kill
    return {"answered": answered, "loaded": loaded}


def drive_main() -> None:
    url, endpoint, ids_file, seconds, connections = sys.argv[2:7]
    ids = json.loads(Path(ids_file).read_text())
    print(json.dumps(asyncio.run(_drive(url, endpoint, ids, float(seconds), int(connections)))))


# --- the benchmark --------------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    total = 0.0
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for p in [str(pid), *children]:
        with contextlib.suppress(FileNotFoundError):  # a process that ended meanwhile
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total = max(total, int(line.split()[1]) / 1024)
    return total


def _worker_memory_mb(server_pid: int) -> list[tuple[int, float, float]]:
    """(pid, RSS, PSS) of each worker, from /proc/<pid>/smaps_rollup, in MB."""
    out = []
    for process in _workers(server_pid):
        fields: dict[str, float] = {}
        with contextlib.suppress(FileNotFoundError):  # a process that ended meanwhile
            for line in Path(f"/proc/{process.pid}/smaps_rollup").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in ("Rss", "Pss"):
                    fields[name] = int(rest.split()[0]) / 1024
        if fields:
            out.append((process.pid, fields.get("Rss", 0.0), fields.get("Pss", 0.0)))
    return sorted(out)


def _load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="A small bundle whose CLV and churn models are reused.")
    parser.add_argument("--bundle", default="/tmp/rapport-serve-benchmark/bundle")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--client", choices=("wrk", "httpx"), default=None,
                        help="The load generator (default: wrk when installed, else httpx).")
    parser.add_argument("--reuse", action="store_true", help="Use the bundle built by an earlier run.")
    parser.add_argument("--kill-worker", action="store_true",
                        help="Only the recovery case: recommend under load, one of the workers killed a third of the "
                             "way in (needs wrk and --workers 2 or more).")
    parser.add_argument("--worker-start", type=int, default=0, metavar="N",
                        help="Only a worker's start without load: one worker killed N times, the seconds until a new "
                             "process answers and until its models are loaded.")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"The cases to measure, comma-separated, among {', '.join(CASES)} (echo always).")
    parser.add_argument("--default-lists", type=int, default=20,
                        help="Length of the default lists ranked into the bundle (serving.default_lists; 0: none).")
    args = parser.parse_args()
    cases = [c for c in CASES if c in {*args.cases.split(","), "echo"}]
    if unknown := set(args.cases.split(",")) - set(CASES):
        raise SystemExit(f"unknown case(s) {', '.join(sorted(unknown))}: the cases are {', '.join(CASES)}")

    client = args.client or ("wrk" if shutil.which("wrk") else "httpx")
    if client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk); use --client httpx")
    bundle = Path(args.bundle)
    if not (args.reuse and (bundle / "manifest.json").is_file()):
        build_bundle(args, bundle)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RAPPORT_BUNDLE_DIR": str(bundle), "RAPPORT_SERVING__API_KEYS": json.dumps([API_KEY]),
           "BENTOML_DO_NOT_TRACK": "true", "RAPPORT_SERVING__WORKERS": str(args.workers)}
    log = bundle.parent / "server.log"
    root = Path(__file__).resolve().parents[1]
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:Rapport", "--host",
                                   "127.0.0.1", "--port", str(port)], cwd=root, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import httpx

        from training.bundle import SNAPSHOT_CUSTOMERS, read_table, table_path

        started = time.perf_counter()
        while True:
            with contextlib.suppress(httpx.HTTPError):  # not listening yet
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if server.poll() is not None or time.perf_counter() - started > 600:
                raise SystemExit(f"the server did not start: see {log}")
            time.sleep(1)
        print(f"server ready in {time.perf_counter() - started:.0f} s (bundle load)", flush=True)
        manifest = json.loads((bundle / "manifest.json").read_text())
        ids_all = read_table(table_path(bundle, SNAPSHOT_CUSTOMERS)).index.to_numpy()
        ids = np.random.default_rng(1).choice(ids_all, min(20_000, len(ids_all)), replace=False).tolist()
        ids_file = bundle.parent / "ids.json"
        ids_file.write_text(json.dumps([int(i) for i in ids]))
        ids_file.with_suffix(".txt").write_text("\n".join(str(int(i)) for i in ids) + "\n")
        if args.worker_start:
            if args.workers < 2:
                raise SystemExit("--worker-start needs at least two workers (one answers while the other starts)")
            r = worker_start_case(url, server.pid, log, args.worker_start)
            print(f"a killed worker answered again after {np.median(r['answered']):.1f} s without load (median of "
                  f"{len(r['answered'])}: {', '.join(f'{x:.1f}' for x in r['answered'])} s)"
                  + (f"; its models and snapshot were loaded {np.median(r['loaded']):.1f} s later in the background "
                     f"({', '.join(f'{x:.1f}' for x in r['loaded'])} s)" if r["loaded"] else ""), flush=True)
            return
        if args.kill_worker:
            if client != "wrk" or args.workers < 2:
                raise SystemExit("--kill-worker needs wrk and at least two workers")
            r = kill_worker_case(url, server.pid, ids_file, args.seconds, args.connections)
            recovered = ("more than 60 s" if r["recovered_s"] is None else
                         f"{r['recovered_s']:.1f} s" + ("" if r["during_load"] else " (after the load ended)"))
            print(f"{r['endpoint']}: {r['rps']:,.0f} req/s   p50 {r['p50']:.1f} ms   p99 {r['p99']:.1f} ms   "
                  f"lost {r['errors']:,} of {r['requests'] + r['errors']:,} requests "
                  f"({r['errors'] / max(1, r['requests'] + r['errors']):.3%}); the restarted worker answered after "
                  f"{recovered}; {r['workers_after']} workers at the end ({args.seconds:.0f} s, "
                  f"{args.connections} connections)", flush=True)
            return
        results: dict[str, dict] = {}
        load_before = _load_average()
        # recommend first: BentoML keeps every answered request's timer for the 10 s timeout, and
        # echo's tens of thousands would still be in the heap during the next endpoint's run.
        # A case on one connection is compared with echo on one connection too.
        runs = [(c, 1 if c in ONE_CONNECTION else args.connections) for c in cases]
        if any(c in ONE_CONNECTION for c in cases):
            runs.append(("echo", 1))
        for endpoint, connections in runs:
            label = endpoint if (endpoint, connections) != ("echo", 1) else "echo, 1 connection"
            if client == "wrk":
                results[label] = drive_wrk(url, endpoint, ids_file, args.seconds, connections)
            else:
                done = subprocess.run([sys.executable, __file__, "--drive", url, endpoint, str(ids_file),
                                       str(args.seconds), str(connections)], capture_output=True, text=True,
                                      check=True)
                results[label] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[label]
            print(f"{label:<20} {r['rps']:8.0f} req/s   p50 {r['p50']:6.1f} ms   p99 {r['p99']:6.1f} ms   "
                  f"errors {r['errors']}   ({r['requests']:,} requests, {connections} connection(s))", flush=True)
        rss = _rss_mb(server.pid)
        print()
        print(f"bundle: {manifest['counts']['customers']:,} customers, {manifest['counts']['items']:,} items; "
              f"{args.connections} connections, {args.seconds:.0f} s each, {args.workers} worker(s), client {client}; "
              f"load average (1 / 5 / 15 min) {load_before} before, {_load_average()} after")
        for endpoint, r in results.items():
            if not endpoint.startswith("echo"):
                echo = results["echo, 1 connection" if endpoint in ONE_CONNECTION else "echo"]
                print(f"{endpoint} / echo: throughput {r['rps'] / echo['rps']:.0%}, p50 {r['p50'] / echo['p50']:.1f}x, "
                      f"p99 {r['p99'] / echo['p99']:.1f}x" + (" (both on one connection)" if endpoint in ONE_CONNECTION
                                                              else ""))
        print(f"server resident memory (largest process): {rss:,.0f} MB")
        for pid, resident, proportional in _worker_memory_mb(server.pid):
            print(f"worker {pid}: RSS {resident:,.0f} MB, PSS {proportional:,.0f} MB")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--drive":
        drive_main()
    else:
        main()
