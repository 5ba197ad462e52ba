"""Benchmark: ``rapport train --only recommend`` on a one-million-line, 50,000-item history.

The history is a grocer's: weekly-ish baskets over one year, drawn with numpy from a taste
structure the models can learn, written as a generic ``transactions`` file and a ``catalogue`` and
ingested into a throwaway store (``RAPPORT_DATA_DIR`` in a temporary folder). Items fall in
``--clusters`` categories with a Zipf-like popularity (weight ~ rank^-0.9); each customer has one or
two favourite categories and a *repertoire* of 5 to 40 staples (three quarters from a favourite
category, the rest from the whole catalogue, by popularity) from which most of each basket comes;
the rest of a basket explores (a favourite category, else the whole catalogue). A customer arrives
at a uniform day of the year and shops at their own rhythm (3 to 21 days, scaled to the wanted lines; exponential gaps)
until the end of the history or an earlier stop (a third of them). Baskets hold 1 + Poisson(7)
distinct lines; surplus lines are dropped so that the file has exactly ``--lines`` lines.

Then ``rapport train --only recommend`` runs as a subprocess (the command a user types: the
import of the CLI, the split, the comparison with every baseline, the search within
``train_search_budget_s``, the final fit, MLflow logging and registration), ``--runs`` times, and
once more with ``RAPPORT_TRAIN_SEARCH_BUDGET_S=0`` (no search). With ``--reference DIR`` (a
checkout of another version of the project, e.g. ``git worktree add /tmp/before main``) every run is
a pair: that version's code and this one on the same store, back to back, the reference first in
odd pairs and second in even ones; the speed-up is the median of the pairs' ratios, read on the
same machine at the same moment (timings on a shared machine are noisy and drift; ratios of
neighbouring runs much less).

    python benchmarks/recommend_train.py [--lines 1000000] [--items 50000] [--customers 20000]
                                         [--runs 1] [--budget S] [--reference DIR] [--keep DIR]

Prints the seconds of generating and ingesting the data (not part of the target), then the wall
time of each training run (and of the reference next to it), the median, the no-search time and
the ratio, the median ratio to the reference, and the champion's table lines as the command
printed them. Target on 2 cores: under 60 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This folder holds a features.py of its own: make sure `features` is the project's package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

END = datetime(2025, 12, 31)
DAYS = 365


def history(n_lines: int, n_items: int, n_customers: int, n_clusters: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The transactions (exactly ``n_lines`` lines) and the catalogue (see the module docstring)."""
    rng = np.random.default_rng(seed)
    item_ids = np.asarray([f"G{i:06d}" for i in range(n_items)], dtype=object)
    cluster = rng.permutation(np.arange(n_items) % n_clusters)
    weight = (1.0 + rng.permutation(n_items)) ** -0.9
    by_cluster = np.argsort(cluster, kind="stable")
    cumulative = np.cumsum(weight[by_cluster])
    ends = np.searchsorted(cluster[by_cluster], np.arange(n_clusters), side="right")
    starts = np.concatenate([[0], ends[:-1]])
    low = np.where(starts > 0, cumulative[np.maximum(starts - 1, 0)], 0.0)
    high = cumulative[ends - 1]

    def draw_in(clusters: np.ndarray) -> np.ndarray:
        target = low[clusters] + rng.random(len(clusters)) * (high[clusters] - low[clusters])
        return by_cluster[np.minimum(np.searchsorted(cumulative, target, side="right"), ends[clusters] - 1)]

    def draw(n: int) -> np.ndarray:
        target = rng.random(n) * cumulative[-1]
        return by_cluster[np.minimum(np.searchsorted(cumulative, target, side="right"), n_items - 1)]

    favourite = rng.integers(0, n_clusters, size=(n_customers, 2))
    # Repertoires: staples per customer, a flat array with offsets.
    sizes = rng.integers(5, 41, n_customers)
    owner = np.repeat(np.arange(n_customers), sizes)
    in_favourite = rng.random(len(owner)) < 0.75
    staples = np.where(in_favourite, draw_in(favourite[owner, rng.integers(0, 2, len(owner))]), draw(len(owner)))
    offsets = np.concatenate([[0], np.cumsum(sizes)])

    arrive = rng.uniform(0, DAYS - 7, n_customers)
    stop = np.where(rng.random(n_customers) < 1 / 3, rng.uniform(arrive, DAYS), DAYS)
    rhythm = rng.uniform(3, 21, n_customers)
    # The rhythms stretched or shrunk so that the baskets hold a third more lines than wanted (8 a
    # basket on average; duplicates within a basket are dropped), then trimmed.
    rhythm *= 8.0 * ((stop - arrive) / rhythm).sum() / (n_lines * 1.35)
    n_baskets = np.maximum(1, np.ceil((stop - arrive) / rhythm * 1.5).astype(np.int64))
    basket_owner = np.repeat(np.arange(n_customers), n_baskets)
    gaps = rng.exponential(rhythm[basket_owner])
    first = np.concatenate([[0], np.cumsum(n_baskets)[:-1]])
    day = arrive[basket_owner] + np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first] - gaps[first], n_baskets)
    keep = day < stop[basket_owner]
    keep[first] = True  # every customer has a first basket
    basket_owner, day = basket_owner[keep], np.minimum(day[keep], DAYS - 1e-3)

    lines_per = 1 + rng.poisson(7, len(basket_owner))
    line_basket = np.repeat(np.arange(len(basket_owner)), lines_per)
    customer = basket_owner[line_basket]
    explore = rng.random(len(line_basket)) < 0.3
    staple_pick = offsets[customer] + (rng.random(len(customer)) * sizes[customer]).astype(np.int64)
    explore_fav = rng.random(len(customer)) < 0.6
    explored = np.where(explore_fav, draw_in(favourite[customer, rng.integers(0, 2, len(customer))]),
                        draw(len(customer)))
    item = np.where(explore, explored, staples[staple_pick])
    # One line per (basket, item), then exactly n_lines lines.
    pair = np.unique(line_basket.astype(np.int64) * n_items + item, return_index=True)[1]
    pair = np.sort(pair)
    if len(pair) < n_lines:
        raise SystemExit(f"the draw gave {len(pair):,} lines, fewer than --lines {n_lines:,}: raise --customers")
    pair = np.sort(rng.choice(pair, n_lines, replace=False))
    basket, item = line_basket[pair], item[pair]
    ts = pd.Timestamp(END - timedelta(days=DAYS)) + pd.to_timedelta(day[basket] * 86_400.0, unit="s").round("s")
    transactions = pd.DataFrame({
        "customer_key": pd.Series(basket_owner[basket]).map(lambda c: f"C{c:06d}").to_numpy(),
        "order_id": pd.Series(basket).map(lambda b: f"B{b:08d}").to_numpy(),
        "timestamp": ts,
        "item_id": item_ids[item],
        "quantity": 1 + rng.poisson(0.5, len(item)),
        "unit_price": np.round(0.5 + (item % 97) / 10.0, 2),
        "channel": "store",
        "country": "United Kingdom",
    })
    catalogue = pd.DataFrame({
        "item_id": item_ids,
        "name": [f"Grocery item {i}" for i in range(n_items)],
        "category": [f"aisle {c:03d}" for c in cluster],
        "active": True,
        "is_product": True,
    })
    return transactions, catalogue


def _run(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[1:3])} exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--clusters", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--budget", type=float, default=None,
                        help="train_search_budget_s for the timed runs (default: the setting's default)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the store in this folder (default: removed)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="a checkout of another version of the project to time on the same store")
    args = parser.parse_args(argv)

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="rapport-bench-recommend-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rapport = str(Path(sys.executable).with_name("rapport"))
    env = {**os.environ, "RAPPORT_DATA_DIR": str(workdir / "data"), "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    try:
        start = time.perf_counter()
        transactions, catalogue = history(args.lines, args.items, args.customers, args.clusters, args.seed)
        raw = workdir / "raw"
        raw.mkdir(exist_ok=True)
        transactions.to_parquet(raw / "export.parquet", index=False)
        catalogue.to_parquet(raw / "catalogue.parquet", index=False)
        generated = time.perf_counter() - start
        print(f"history: {len(transactions):,} lines, {transactions['item_id'].nunique():,} items sold "
              f"({len(catalogue):,} in the catalogue), {transactions['customer_key'].nunique():,} customers, "
              f"{transactions['order_id'].nunique():,} baskets; generated in {generated:.1f} s")
        seconds, _ = _run([rapport, "data", "ingest", str(raw / "catalogue.parquet")], env)
        ingest, _ = _run([rapport, "data", "ingest", str(raw / "export.parquet"), "--source", "transactions"], env)
        print(f"ingested in {seconds + ingest:.1f} s")

        timed_env = dict(env)
        if args.budget is not None:
            timed_env["RAPPORT_TRAIN_SEARCH_BUDGET_S"] = str(args.budget)
        train = [rapport, "train", "--only", "recommend"]
        # The reference's own CLI, imported from its checkout (ahead of this one on the path).
        reference = [sys.executable, "-c", "from rapport.cli import app; app()", "train", "--only", "recommend"]
        reference_env = None if args.reference is None else {**timed_env, "PYTHONPATH": str(args.reference.resolve())}
        times, before, ratios, output = [], [], [], ""
        for run in range(args.runs):
            # With a reference, each run is a pair timed back to back, the reference first in every
            # other pair: the load of a shared machine drifts, and a fixed order would bias the ratio.
            pair = [("this", train, timed_env)]
            if reference_env is not None:
                pair.insert(0 if run % 2 == 0 else 1, ("reference", reference, reference_env))
            timed = {}
            for who, command, command_env in pair:
                seconds, text = _run(command, command_env)
                timed[who] = seconds
                if who == "this":
                    output = text
            times.append(timed["this"])
            line = f"run {run + 1}: rapport train --only recommend {timed['this']:.1f} s"
            if "reference" in timed:
                before.append(timed["reference"])
                ratios.append(timed["this"] / timed["reference"])
                line += f"; reference {timed['reference']:.1f} s (ratio {ratios[-1]:.2f})"
            print(line, flush=True)
        median = statistics.median(times)
        plain, _ = _run(train, {**env, "RAPPORT_TRAIN_SEARCH_BUDGET_S": "0"})
        print(f"median {median:.1f} s over {len(times)} run(s) (target < 60 s); without the search "
              f"{plain:.1f} s; ratio {median / plain:.2f}")
        if ratios:
            print(f"reference {args.reference}: median {statistics.median(before):.1f} s; this version "
                  f"{median:.1f} s; ratio this / reference {statistics.median(ratios):.2f} (median over "
                  f"{len(ratios)} pair(s) timed back to back)")
        print(output[-4000:])
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
