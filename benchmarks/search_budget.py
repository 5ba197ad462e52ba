"""Benchmark: do the hyper-parameter searches keep their time budget (``train_search_budget_s``)?

A generated history of ``--shape`` (default ``grocery``: weekly baskets over four months) with
``--customers`` persons is ingested into a throwaway store; the churn data set is built as
``rapport train`` builds it (windows ``auto``) and the churn LightGBM search
(:func:`training.churn.search.search_boosting`) runs ``--runs`` times with ``--budget`` seconds;
with ``--recommend`` the recommender's search (:func:`training.recommend.search.search`) runs as
well, on the temporal split ``rapport train`` uses. Neither includes the final fit, which is not
part of the budget.

    python benchmarks/search_budget.py [--shape grocery] [--customers 20000] [--budget 40]
                                       [--runs 3] [--recommend]

Prints, per run, the trials completed, the trials stopped at the deadline, the seconds spent and
the overrun past the budget, then the median seconds. The churn search should end within the budget
plus one boosting round; the recommender's within the budget plus the amount by which its last
trial was longer than every earlier one (a trial under way is not cut short).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This folder holds a features.py of its own: make sure `features` is the project's package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))
for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(name, "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="grocery")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--budget", type=float, default=40.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--recommend", action="store_true", help="also time the recommender's search")
    args = parser.parse_args()

    from features.discovery import discover
    from synthetic.generate import generate
    from features.ingest import ingest
    from features.settings import load_settings
    from features.store import connect, ibis_backend
    from features.windows import churn_cutoffs
    from training.churn.dataset import build_dataset
    from training.churn.evaluation import LABEL
    from training.churn.pipeline import configured_model, resolve_windows
    from training.churn.search import search_boosting

    with tempfile.TemporaryDirectory(prefix="rapport-search-budget-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        generate(folder / "raw", args.customers, args.seed, shape=args.shape)
        settings = load_settings(data_dir=folder / "state")
        con = connect(settings)
        inputs, ignored = discover(folder / "raw")
        ingest(con, inputs, settings, now=datetime.now(timezone.utc), ignored_paths=ignored)
        windows = resolve_windows(con, settings)
        dataset = build_dataset(ibis_backend(con), cutoffs=churn_cutoffs(windows, settings.churn.max_cutoffs),
                                horizon_days=int(windows["horizon_days"]), lookback_days=int(windows["lookback_days"]),
                                time_unit=settings.time_unit, with_clv=settings.churn.with_clv_features)
        train, valid, _ = dataset.split()
        print(f"{args.shape}, {args.customers:,} customers: store and churn data set in "
              f"{time.perf_counter() - t0:.0f} s ({len(train):,} training rows, {len(valid):,} validation rows)")

        configured = configured_model(settings)
        seconds = []
        for run in range(1, args.runs + 1):
            result = search_boosting(configured, train, valid, feature_names=dataset.feature_names, label=LABEL,
                                     budget_s=args.budget)
            seconds.append(result.seconds)
            print(f"churn run {run}: {result.trials} trials completed, {result.stopped} stopped at the deadline, "
                  f"{result.seconds:.1f} s for a {args.budget:g} s budget (overrun {result.seconds - args.budget:+.1f} s)")
        print(f"churn: median {statistics.median(seconds):.1f} s for a {args.budget:g} s budget")

        if args.recommend:
            from training.recommend.pipeline import _last_sale, recommender_settings
            from training.recommend.pipeline import resolve_windows as recommend_windows
            from training.recommend.search import search
            from training.recommend.split import temporal_split

            windows = recommend_windows(con, settings)
            split = temporal_split(_last_sale(con, None), test_days=int(windows["test_days"]),
                                   valid_days=int(windows["label_days"]))
            seconds = []
            for run in range(1, args.runs + 1):
                chosen = search(ibis_backend(con), split, recommender_settings(settings, windows), budget_s=args.budget)
                seconds.append(chosen.seconds)
                print(f"recommend run {run}: {chosen.trials} trials, {chosen.seconds:.1f} s for a {args.budget:g} s "
                      f"budget (overrun {chosen.seconds - args.budget:+.1f} s)")
            print(f"recommend: median {statistics.median(seconds):.1f} s for a {args.budget:g} s budget")
        con.close()


if __name__ == "__main__":
    main()
