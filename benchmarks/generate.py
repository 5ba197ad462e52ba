"""Benchmark: synthetic data generation for a million customers.

Usage:
    python benchmarks/generate.py [OUTPUT_DIR] [--customers N] [--seed S] [--format parquet|csv] [--runs R]

Without OUTPUT_DIR the files go to a temporary folder that is removed afterwards. Prints, per run,
the wall time, the sales lines and all rows written, rows per second and the peak resident memory
of this process (``resource.getrusage``; a high-water mark, so it is the maximum over the runs so
far), then the median time over the runs.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This folder holds a features.py of its own: make sure `features` is the project's package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

from synthetic.generate import generate  # noqa: E402


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", nargs="?", type=Path, help="where to write (default: a temporary folder)")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)

    seconds = []
    for run in range(1, args.runs + 1):
        temporary = args.output_dir is None
        target = Path(tempfile.mkdtemp(prefix="rapport-generate-")) if temporary else args.output_dir / f"run{run}"
        try:
            summary = generate(target, args.customers, args.seed, file_format=args.format)
        finally:
            if temporary:
                shutil.rmtree(target, ignore_errors=True)
        seconds.append(summary.seconds)
        print(
            f"run {run}: {args.customers:,} customers, {summary.orders:,} orders, {summary.lines:,} sales lines, "
            f"{summary.rows_written:,} rows in all files ({args.format}) in {summary.seconds:.1f} s = "
            f"{summary.lines / summary.seconds:,.0f} sales lines/s, {summary.rows_written / summary.seconds:,.0f} "
            f"rows/s; peak RSS {_peak_rss_mb():,.0f} MB"
        )
    if len(seconds) > 1:
        print(f"median over {len(seconds)} runs: {statistics.median(seconds):.1f} s")


if __name__ == "__main__":
    main()
