"""Benchmark: ingest alone (reading, validation, quarantine, identity) of synthetic files, as Parquet
and as CSV.

Generates the synthetic data set once into ``benchmarks/.cache/`` (Parquet, and the same files
written as CSV by DuckDB), then ingests each format into a fresh store ``--runs`` times and prints
the median seconds and rows per second. Run it from two checkouts (before/after a change)
alternately to compare them on a shared machine: only ratios of runs close in time mean much there.

    python benchmarks/ingest.py [--customers 100000] [--runs 3] [--formats parquet,csv]
"""

from __future__ import annotations

import argparse
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

import duckdb  # noqa: E402

from features.discovery import discover  # noqa: E402
from features.ingest import ingest  # noqa: E402
from features.settings import load_settings  # noqa: E402
from features.store import connect  # noqa: E402


def ensure_data(customers: int, seed: int) -> dict[str, Path]:
    folder = ROOT / "benchmarks" / ".cache" / f"synthetic-{customers}-{seed}"
    if not (folder / "_truth" / "params.json").exists():
        print(f"generating {customers:,} customers into {folder} (once) ...", flush=True)
        code = (
            "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
            "from synthetic.generate import generate;"
            "generate(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))"
        )
        subprocess.run([sys.executable, "-c", code, str(ROOT), str(folder), str(customers), str(seed)], check=True)
    csv = folder.with_name(folder.name + "-csv")
    if not csv.exists():
        tmp = csv.with_name(csv.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for path in folder.iterdir():
            if path.is_file() and path.suffix in (".parquet", ".csv"):
                target = tmp / (path.name.removesuffix(".parquet").removesuffix(".csv") + ".csv")
                duckdb.sql(f"COPY (SELECT * FROM '{path}') TO '{target}' (HEADER)")
        tmp.rename(csv)
    return {"parquet": folder, "csv": csv}


def run_once(raw: Path) -> tuple[float, int]:
    state = Path(tempfile.mkdtemp(prefix="rapport-bench-"))
    try:
        settings = load_settings(data_dir=state)
        con = connect(settings)
        started = time.perf_counter()
        inputs, ignored = discover(raw)
        result = ingest(con, inputs, settings, now=datetime(2030, 1, 1, tzinfo=timezone.utc), ignored_paths=ignored)
        seconds = time.perf_counter() - started
        con.close()
        return seconds, sum(f.rows for f in result.files)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--formats", default="parquet,csv")
    args = parser.parse_args()
    folders = ensure_data(args.customers, args.seed)
    for fmt in args.formats.split(","):
        times, rows = [], 0
        for _ in range(args.runs):
            seconds, rows = run_once(folders[fmt])
            times.append(seconds)
        median = statistics.median(times)
        print(f"{fmt:8s} {rows:,} rows: ingest {median:.2f} s median of {args.runs} "
              f"({', '.join(f'{t:.2f}' for t in times)}) = {rows / median:,.0f} rows/s", flush=True)


if __name__ == "__main__":
    main()
