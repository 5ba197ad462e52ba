"""Benchmark: ingest + unified history + customer features on ~10 million lines.

Generates the synthetic data set once (1,000,000 customers, about 10 million order lines) into
``benchmarks/.cache/`` in a child process, so that this process's peak RSS measures only the work
under test. Then, in a fresh state folder: ingest every file (validation, quarantine, identity
resolution), build the unified history and the customer features as of the end of the data.

    python benchmarks/features.py [--customers 1000000] [--runs 3]

Prints seconds per stage, lines per second and peak RSS. Target on 2 cores: < 60 s end to end and
< 4 GB peak RSS for 10 million lines.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This folder holds a features.py of its own: make sure `features` is the project's package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

from features.customer import customer_features  # noqa: E402
from features.discovery import discover  # noqa: E402
from features.ingest import ingest  # noqa: E402
from features.settings import load_settings  # noqa: E402
from features.store import connect, ibis_backend  # noqa: E402


def ensure_data(customers: int, seed: int) -> Path:
    folder = ROOT / "benchmarks" / ".cache" / f"synthetic-{customers}-{seed}"
    if not (folder / "_truth" / "params.json").exists():
        print(f"generating {customers:,} customers into {folder} (once) ...", flush=True)
        code = (
            "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
            "from synthetic.generate import generate;"
            "generate(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))"
        )
        subprocess.run([sys.executable, "-c", code, str(ROOT), str(folder), str(customers), str(seed)], check=True)
    return folder


def run_once(raw: Path, end: datetime) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="rapport-bench-"))
    try:
        settings = load_settings(data_dir=state)
        con = connect(settings)
        t0 = time.perf_counter()
        inputs, ignored = discover(raw)
        result = ingest(con, inputs, settings, now=datetime(2030, 1, 1, tzinfo=timezone.utc), ignored_paths=ignored)
        t1 = time.perf_counter()
        frame = customer_features(ibis_backend(con), end)
        t2 = time.perf_counter()
        lines = con.execute("SELECT count(*) FROM lines").fetchall()[0][0]
        con.close()
        return {
            "ingest_s": t1 - t0,
            "features_s": t2 - t1,
            "total_s": t2 - t0,
            "lines": lines,
            "rows_read": sum(f.rows for f in result.files),
            "quarantined": result.quarantined,
            "customers": len(frame),
        }
    finally:
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    raw = ensure_data(args.customers, args.seed)
    params = json.loads((raw / "_truth" / "params.json").read_text())
    end = datetime.fromisoformat(str(params["end"])) if "end" in params else datetime(2026, 1, 1)
    runs = []
    for i in range(args.runs):
        runs.append(run_once(raw, end))
        r = runs[-1]
        print(f"run {i + 1}: ingest {r['ingest_s']:.1f} s, features {r['features_s']:.1f} s, "
              f"total {r['total_s']:.1f} s ({r['rows_read'] / r['total_s']:,.0f} rows/s)", flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in ("ingest_s", "features_s", "total_s")}
    last = runs[-1]
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print()
    print(f"rows read (all files)    {last['rows_read']:,}")
    print(f"sales lines stored       {last['lines']:,}")
    print(f"rows quarantined         {last['quarantined']:,}")
    print(f"customers with features  {last['customers']:,}")
    print(f"ingest (median)          {med['ingest_s']:.1f} s")
    print(f"features (median)        {med['features_s']:.1f} s")
    print(f"end to end (median)      {med['total_s']:.1f} s  -> {last['rows_read'] / med['total_s']:,.0f} rows/s")
    print(f"peak RSS                 {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
