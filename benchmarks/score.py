"""Benchmark: the CRM scores of 1,000,000 customers (``rapport score``'s path) with CLV and churn models.

Setup (not timed): the synthetic data set of ``benchmarks/features.py`` (1,000,000 customers,
generated once into ``benchmarks/.cache/``) is ingested into a fresh store; a BG/NBD + Gamma-Gamma
model is fitted on every customer's features at the end of the data and a churn model on a stacked
churn data set of a few monthly cutoffs (without the slow CLV candidates: the models' quality is not
what is measured here).

Timed, as ``rapport score`` runs it: the snapshot (customer features of everyone, churn features of
the churn population, their BG/NBD features — ``training.scoring.build_snapshot``), then every
customer's scores in chunks (``score_chunks``: CLV outputs with intervals, churn probability, band,
percentile, three reasons) written to a Parquet file chunk by chunk.

    python benchmarks/score.py [--customers 1000000] [--runs 3] [--chunk 200000]

Prints seconds per stage, customers per second and peak RSS. Target on 2 cores: 1,000,000 customers
under 60 s, in memory comfortably.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This folder holds a features.py of its own: make sure `features` is the project's package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from features.churn import sales_span  # noqa: E402
from features.customer import customer_features  # noqa: E402
from features.discovery import discover  # noqa: E402
from features.ingest import ingest  # noqa: E402
from features.settings import load_settings  # noqa: E402
from features.store import connect, ibis_backend  # noqa: E402
from training.churn.dataset import build_dataset, monthly_cutoffs  # noqa: E402
from training.churn.evaluation import LABEL  # noqa: E402
from training.churn.model import ChurnModel  # noqa: E402
from training.clv.model import ClvModel  # noqa: E402
from training.scoring import build_snapshot, score_chunks  # noqa: E402


def _ensure_data(customers: int, seed: int) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_features", ROOT / "benchmarks" / "features.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.ensure_data(customers, seed)


def setup(raw: Path, state: Path, n_cutoffs: int):
    settings = load_settings(data_dir=state)
    con = connect(settings)
    t0 = time.perf_counter()
    inputs, ignored = discover(raw)
    # "Now" just after the generated years: the planted future-dated rows are quarantined, as they should be.
    ingest(con, inputs, settings, now=datetime(2026, 1, 2, tzinfo=timezone.utc), ignored_paths=ignored)
    backend = ibis_backend(con)
    first, last = sales_span(backend)
    as_of = datetime.combine(last.date() + timedelta(days=1), datetime.min.time())
    print(f"setup: ingested in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    clv = ClvModel(kind="bgnbd").fit(customer_features(backend, as_of), cutoff=as_of, currency=settings.currency)
    cutoffs = monthly_cutoffs(first, last - timedelta(microseconds=1), horizon_days=90, lookback_days=365,
                              max_cutoffs=n_cutoffs)
    dataset = build_dataset(backend, cutoffs=cutoffs, horizon_days=90, lookback_days=365)
    train, valid, _ = dataset.split()
    churn = ChurnModel().fit(train, valid, feature_names=dataset.feature_names, label=LABEL, currency=settings.currency)
    print(f"setup: CLV and churn models fitted in {time.perf_counter() - t0:.1f} s "
          f"({len(train):,} training snapshots over {len(cutoffs)} cutoffs)", flush=True)
    return con, clv, churn, as_of


def run_once(con, clv, churn, as_of: datetime, out: Path, chunk: int) -> dict[str, float]:
    t0 = time.perf_counter()
    snapshot = build_snapshot(ibis_backend(con), as_of, time_unit=clv.time_unit_)
    t1 = time.perf_counter()
    writer = None
    rows = 0
    for frame in score_chunks(snapshot, clv, churn, versions={"clv": "1", "churn": "1"}, chunk_size=chunk):
        table = pa.Table.from_pandas(frame, preserve_index=False)
        writer = writer or pq.ParquetWriter(out, table.schema)
        writer.write_table(table)
        rows += len(frame)
    if writer is not None:
        writer.close()
    t2 = time.perf_counter()
    return {"snapshot": t1 - t0, "score_and_write": t2 - t1, "total": t2 - t0, "customers": float(rows),
            "churn_population": float(len(snapshot.churn))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=200_000)
    parser.add_argument("--cutoffs", type=int, default=8, help="monthly cutoffs of the churn training set")
    args = parser.parse_args()
    raw = _ensure_data(args.customers, args.seed)
    state = Path(tempfile.mkdtemp(prefix="rapport-bench-score-"))
    try:
        con, clv, churn, as_of = setup(raw, state, args.cutoffs)
        runs = []
        for i in range(args.runs):
            figures = run_once(con, clv, churn, as_of, state / "scores.parquet", args.chunk)
            runs.append(figures)
            print(f"run {i + 1}: snapshot {figures['snapshot']:.1f} s, scores + Parquet {figures['score_and_write']:.1f} s, "
                  f"total {figures['total']:.1f} s for {int(figures['customers']):,} customers "
                  f"({int(figures['churn_population']):,} in the churn population)", flush=True)
        total = statistics.median(r["total"] for r in runs)
        customers = runs[0]["customers"]
        print(f"median of {len(runs)}: snapshot {statistics.median(r['snapshot'] for r in runs):.1f} s, "
              f"scores + Parquet {statistics.median(r['score_and_write'] for r in runs):.1f} s, "
              f"total {total:.1f} s = {customers / total:,.0f} customers/s (target < 60 s for 1,000,000)")
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2:.2f} GB")
    finally:
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
