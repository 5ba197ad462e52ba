"""Benchmark: train the recommender on 1,000,000 customers x 50,000 items x 10 million interactions
and recommend to every customer.

The :class:`~training.recommend.data.InteractionData` snapshots are drawn with numpy (no store), from
a taste structure the models can learn: the items fall in ``--clusters`` categories (500) and have a
Zipf-like popularity (weight ~ rank^-0.9, a random rank per item); 3 % of them are new, launched in
the last 180 days (and, for a third of those, only after the cutoff), with five times the weight;
a fifth are consumables, re-bought about twice more per buyer (the others 0.1 times). Each customer
has 1 to 3 favourite categories and a number of distinct items ~ 1 + geometric (mean about
``interactions / customers``); three quarters of their items come from a favourite category (by
popularity within it), the rest from the whole catalogue by popularity; 12 % of the pairs are
only browsed (1 + Poisson(1) views, weight 0.1 each). Every purchase or view has a day: the
customer arrived 30 to 1095 days before the cutoff; 60 % stopped buying at a uniform moment since
then, the others are still active and also buy in the 90 days *after* the cutoff (the test
period). Decayed weights use half-lives of 365 and 30 days, as ``build_interaction_data``.

From these events, as ``RecommenderModel.fit`` would from the store:

- ``data``: the history before the cutoff (``--interactions`` (customer, item) pairs exactly: the
  draws are oversampled and surplus pairs dropped, never a customer's only pair);
- ``before``: the same customers' history 90 days earlier (the start of the label period);
- ``relevant``: customer id -> items bought in the 90-day label period (the ranker's labels);
- ``test``: items bought in the 90 days after the cutoff, to check that the lists beat popularity.

    python benchmarks/recommend.py [--customers 1000000] [--items 50000] [--interactions 10000000]
                                   [--runs 3] [--latency-calls 1000] [--ranker-trees 150]

Prints the seconds of synthesising the data (no store is involved: nothing is built from one),
of ``RecommenderModel.fit_data`` and of its parts (candidate models on ``before``, the ranker,
candidate models on ``data``; ALS and item-KNN within the candidate models), of ``recommend`` for every customer (n=20, purchases excluded) with
customers/s, the latency of a single customer's top-20 with filters (purchases and two categories
excluded; median and p99 over ``--latency-calls`` calls of ``rank`` for the one customer with its
``RecommendOptions`` built in the call, the service's path, and the median through ``recommend``,
which builds a DataFrame), medians over the runs, then the ranker's
training figures, recall@20 of new items in the test period against the most popular items, and
peak RSS. Targets on 2 cores: fit < 120 s, recommendations for every customer < 180 s, one
customer < 2 ms. At full scale a run takes about 8 minutes: ``--runs 1``. ``--ranker-trees`` sets the
ranker's maximum boosting rounds (the setting's default unless given), to weigh quality against batch time.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# This folder holds a features.py of its own: make sure `features` is the project's package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import sparse  # noqa: E402

import training.recommend.model as recommend_model  # noqa: E402
from training.recommend.candidates import _lookup  # noqa: E402
from training.recommend.data import InteractionData  # noqa: E402
from training.recommend.model import RecommenderModel, RecommenderSettings  # noqa: E402
from training.recommend.options import RecommendOptions  # noqa: E402

CUTOFF = datetime(2026, 1, 1)
LABEL_DAYS = 90
TEST_DAYS = 90
HALF_LIFE_DAYS = 365.0
SHORT_HALF_LIFE_DAYS = 30.0
BROWSE_WEIGHT = 0.1
FAVOURITE_SHARE = 0.75
BROWSE_SHARE = 0.12
#: Draws per wanted pair: repeated draws of the same pair, and pairs only after the cutoff, are lost.
OVERSAMPLE = 1.45




class Events:
    """Every purchase and view, one entry each: customer position, item position, day (days before
    the cutoff, negative after it) and whether it is a purchase; ``key`` = customer * items + item."""

    def __init__(self, user: np.ndarray, item: np.ndarray, day: np.ndarray, purchase: np.ndarray, n_items: int):
        self.user, self.item, self.day, self.purchase, self.n_items = user, item, day, purchase, n_items
        self.key = user * n_items + item
        self.pair_keys, self.pair_of = np.unique(self.key, return_inverse=True)

    def __len__(self) -> int:
        return len(self.key)

    def subset(self, keep: np.ndarray) -> Events:
        return Events(self.user[keep], self.item[keep], self.day[keep], self.purchase[keep], self.n_items)


class Catalogue:
    """Item ids (``SKU000000``..., sorted), categories, names, recommendable, and what the draws use."""

    def __init__(self, rng: np.random.Generator, n_items: int, n_clusters: int):
        self.item_ids = np.asarray([f"SKU{i:06d}" for i in range(n_items)], dtype=object)
        self.name = np.asarray([f"Product {i}" for i in range(n_items)], dtype=object)
        self.cluster = rng.permutation(np.arange(n_items) % n_clusters)
        self.category = np.asarray([f"category {c:03d}" for c in range(n_clusters)], dtype=object)[self.cluster]
        self.recommendable = rng.random(n_items) >= 0.05
        weight = (1.0 + rng.permutation(n_items)) ** -0.9
        new = rng.random(n_items) < 0.03
        self.launch = np.full(n_items, np.inf)  # days before the cutoff; negative: after it
        self.launch[new] = rng.uniform(-TEST_DAYS, 180.0, int(new.sum()))
        weight[new] *= 5.0
        self.repeat_rate = np.where(rng.random(n_items) < 0.2, 2.0, 0.1)
        # Items ordered by cluster with their cumulative weight: a draw within a cluster (or over the
        # whole catalogue) is a search of a uniform number in its range of the cumulative sum.
        self.by_cluster = np.argsort(self.cluster, kind="stable")
        self.cumulative = np.cumsum(weight[self.by_cluster])
        self.ends = np.searchsorted(self.cluster[self.by_cluster], np.arange(n_clusters), side="right")
        starts = np.concatenate([[0], self.ends[:-1]])
        self.low = np.where(starts > 0, self.cumulative[np.maximum(starts - 1, 0)], 0.0)
        self.high = self.cumulative[self.ends - 1]

    def draw_in(self, rng: np.random.Generator, clusters: np.ndarray) -> np.ndarray:
        target = self.low[clusters] + rng.random(len(clusters)) * (self.high[clusters] - self.low[clusters])
        pos = np.minimum(np.searchsorted(self.cumulative, target, side="right"), self.ends[clusters] - 1)
        return self.by_cluster[pos]

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        target = rng.random(n) * self.cumulative[-1]
        pos = np.minimum(np.searchsorted(self.cumulative, target, side="right"), len(self.cumulative) - 1)
        return self.by_cluster[pos]


def synthesise(n_customers: int, n_items: int, n_pairs: int, n_clusters: int, seed: int,
               ) -> tuple[np.ndarray, Catalogue, Events]:
    """Customer ids, the catalogue and every event (see the module docstring), trimmed so that
    exactly ``n_pairs`` (customer, item) pairs have an event before the cutoff (drawn again with
    more draws per customer when the first draw falls short)."""
    oversample = OVERSAMPLE
    for _ in range(4):
        customer_ids, catalogue, events, found = _draw(n_customers, n_items, n_pairs, n_clusters, seed, oversample)
        if found >= n_pairs:
            break
        oversample *= 1.05 * n_pairs / found
    else:
        print(f"warning: only {found:,} pairs before the cutoff ({n_pairs:,} asked)")
    return customer_ids, catalogue, events


def _draw(n_customers: int, n_items: int, n_pairs: int, n_clusters: int, seed: int, oversample: float,
          ) -> tuple[np.ndarray, Catalogue, Events, int]:
    rng = np.random.default_rng(seed)
    n_clusters = max(1, min(n_clusters, n_items))
    catalogue = Catalogue(rng, n_items, n_clusters)
    customer_ids = 100_000 + np.cumsum(rng.integers(1, 4, n_customers)).astype(np.int64)

    mean_pairs = max(oversample * n_pairs / n_customers, 1.0)
    distinct = rng.geometric(1.0 / mean_pairs, n_customers)
    owner = np.repeat(np.arange(n_customers, dtype=np.int64), distinct)
    n_draws = len(owner)
    n_favourite = rng.integers(1, 4, n_customers)
    favourite = rng.integers(0, n_clusters, (n_customers, 3))
    from_favourite = rng.random(n_draws) < FAVOURITE_SHARE
    which = (rng.random(n_draws) * n_favourite[owner]).astype(np.int64)
    item = np.empty(n_draws, dtype=np.int64)
    item[from_favourite] = catalogue.draw_in(rng, favourite[owner[from_favourite], which[from_favourite]])
    item[~from_favourite] = catalogue.draw(rng, int((~from_favourite).sum()))
    browse = rng.random(n_draws) < BROWSE_SHARE
    count = np.where(browse, 1 + rng.poisson(1.0, n_draws), 1 + rng.poisson(catalogue.repeat_rate[item]))

    arrived = np.floor(rng.uniform(30.0, 1095.0, n_customers))
    stopped = rng.random(n_customers) < 0.6
    end = np.where(stopped, rng.random(n_customers) * arrived, -float(TEST_DAYS))
    draw_of = np.repeat(np.arange(n_draws, dtype=np.int64), count)
    user = owner[draw_of]
    day = end[user] + rng.random(len(draw_of)) * (arrived[user] - end[user])
    ev_item = item[draw_of]
    launched = day <= catalogue.launch[ev_item]
    events = Events(user[launched], ev_item[launched], day[launched], ~browse[draw_of][launched], n_items)

    past = events.day >= 0.0
    has_past = np.zeros(len(events.pair_keys), dtype=bool)
    has_past[events.pair_of[past]] = True
    past_pairs = np.flatnonzero(has_past)
    surplus = len(past_pairs) - n_pairs
    if surplus > 0:
        owners = events.pair_keys[past_pairs] // n_items
        first = np.concatenate([[True], owners[1:] != owners[:-1]])
        droppable = past_pairs[~first]
        if surplus > len(droppable):
            raise RuntimeError(f"cannot reach {n_pairs:,} pairs with {n_customers:,} customers")
        keep_pair = np.ones(len(events.pair_keys), dtype=bool)
        keep_pair[rng.choice(droppable, surplus, replace=False)] = False
        events = events.subset(keep_pair[events.pair_of])
    return customer_ids, catalogue, events, len(past_pairs)


def snapshot(customer_ids: np.ndarray, catalogue: Catalogue, events: Events, days_before: float) -> InteractionData:
    """:class:`InteractionData` as of ``days_before`` days before the cutoff, as
    ``build_interaction_data`` would build it from these events."""
    n_items = len(catalogue.item_ids)
    sel = events.day >= days_before
    pair_of = events.pair_of[sel]
    present = np.zeros(len(events.pair_keys), dtype=bool)
    present[pair_of] = True
    pair = (np.cumsum(present) - 1)[pair_of]
    keys = events.pair_keys[present]
    n_pairs = len(keys)
    age = events.day[sel] - days_before
    bought = events.purchase[sel]
    unit = np.where(bought, 1.0, BROWSE_WEIGHT)
    weight = np.bincount(pair, unit * 0.5 ** (age / HALF_LIFE_DAYS), minlength=n_pairs)
    weight_short = np.bincount(pair, unit * 0.5 ** (age / SHORT_HALF_LIFE_DAYS), minlength=n_pairs)
    purchases = np.bincount(pair, bought.astype(np.float64), minlength=n_pairs)
    last = np.full(n_pairs, np.inf)
    np.minimum.at(last, pair[bought], np.floor(age[bought]))
    days_plus_one = np.where(np.isfinite(last), last + 1.0, 0.0)

    users, rows = np.unique(keys // n_items, return_inverse=True)
    cols = (keys % n_items).astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(users)))]).astype(np.int32)
    shape = (len(users), n_items)

    def matrix(values: np.ndarray) -> sparse.csr_matrix:
        out = sparse.csr_matrix((values, cols.copy(), indptr.copy()), shape=shape)
        out.has_sorted_indices = True
        return out

    is_bought = purchases > 0
    buyers = np.bincount(cols[is_bought], minlength=n_items).astype(np.float64)
    orders = np.bincount(cols, weights=purchases, minlength=n_items)
    recent = {d: np.bincount(cols[is_bought & (last < d)], minlength=n_items).astype(np.float64) for d in (30, 90)}
    return InteractionData(
        as_of=CUTOFF - timedelta(days=days_before),
        customer_ids=customer_ids[users],
        item_ids=catalogue.item_ids,
        weight=matrix(weight),
        weight_short=matrix(weight_short),
        purchases=matrix(purchases),
        days_since=matrix(days_plus_one),
        recommendable=catalogue.recommendable,
        category=catalogue.category,
        name=catalogue.name,
        buyers=buyers,
        buyers_30d=recent[30],
        buyers_90d=recent[90],
        orders_per_buyer=np.divide(orders, buyers, out=np.zeros(n_items), where=buyers > 0),
        popular_by={},
    )


def bought_between(events: Events, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (customer position, item position) pairs bought from ``start`` to ``end`` days
    before the cutoff (end excluded), sorted."""
    sel = events.purchase & (events.day >= end) & (events.day < start)
    keys = np.unique(events.key[sel])
    return keys // events.n_items, keys % events.n_items


def as_sets(customer_ids: np.ndarray, item_ids: np.ndarray, users: np.ndarray, items: np.ndarray
            ) -> dict[int, set[str]]:
    if len(users) == 0:
        return {}
    bounds = np.flatnonzero(np.diff(users)) + 1
    firsts = np.concatenate([[0], bounds])
    groups = np.split(item_ids[items], bounds)
    return {int(c): set(g.tolist()) for c, g in zip(customer_ids[users[firsts]], groups)}


def recall_at_20(data: InteractionData, recommendations: pd.DataFrame, test_users: np.ndarray,
                 test_items: np.ndarray, sample: int, seed: int) -> tuple[int, float, float]:
    """Recall@20 (hits / min(|new items bought|, 20)) of the lists and of the 20 most popular items
    the customer did not buy, over up to ``sample`` customers known at the cutoff who bought an item
    new to them in the test period."""
    n_items = data.n_items
    ids = np.asarray(test_users)
    rows, known = data.user_positions(ids)
    rows, items = rows[known], test_items[known]
    new = _lookup(data.purchases, rows, items) <= 0
    rows, items = rows[new], items[new]
    customers = np.unique(rows)
    if len(customers) == 0:
        return 0, float("nan"), float("nan")
    customers = np.sort(np.random.default_rng(seed).choice(customers, min(sample, len(customers)), replace=False))
    inside = np.isin(rows, customers)
    test_keys = np.unique(np.searchsorted(customers, rows[inside]) * n_items + items[inside])
    relevant = np.bincount(test_keys // n_items, minlength=len(customers))

    chosen = recommendations[recommendations["customer_id"].isin(data.customer_ids[customers])]
    r = np.searchsorted(customers, np.searchsorted(data.customer_ids, chosen["customer_id"].to_numpy()))
    i = pd.Index(data.item_ids).get_indexer(chosen["item_id"].to_numpy())
    hits = np.bincount(r[np.isin(r * n_items + i, test_keys)], minlength=len(customers))
    model = float(np.mean(hits / np.minimum(relevant, 20)))

    ranked = data.popular_overall[:200]
    pr, pc = np.repeat(customers, len(ranked)), np.tile(ranked, len(customers))
    free = (_lookup(data.purchases, pr, pc) <= 0).reshape(len(customers), len(ranked))
    top = free & (np.cumsum(free, axis=1) <= 20)
    pr_block = np.repeat(np.arange(len(customers)), len(ranked))
    pop_keys = (pr_block * n_items + pc)[top.ravel()]
    pop_hits = np.bincount(pop_keys[np.isin(pop_keys, test_keys)] // n_items, minlength=len(customers))
    popular = float(np.mean(pop_hits / np.minimum(relevant, 20)))
    return len(customers), model, popular


def _timed(record: list[tuple[str, float]], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        record.append((name, time.perf_counter() - t0))
        return out

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--clusters", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-calls", type=int, default=1_000)
    parser.add_argument("--eval-customers", type=int, default=20_000)
    parser.add_argument("--ranker-trees", type=int, default=RecommenderSettings().n_estimators,
                        help="the ranker's maximum boosting rounds (default: the setting's default)")
    args = parser.parse_args()

    started = time.perf_counter()
    customer_ids, catalogue, events = synthesise(args.customers, args.items, args.interactions, args.clusters,
                                                 args.seed)
    data = snapshot(customer_ids, catalogue, events, 0.0)
    before = snapshot(customer_ids, catalogue, events, float(LABEL_DAYS))
    relevant = as_sets(customer_ids, catalogue.item_ids, *bought_between(events, LABEL_DAYS, 0.0))
    test_users, test_items = bought_between(events, 0.0, -float(TEST_DAYS))
    n_events = len(events)
    del events  # the snapshots hold what the models need
    synth_s = time.perf_counter() - started
    bought = data.purchases.data > 0
    print(f"synthesised in {synth_s:.1f} s (numpy, no store): {n_events:,} events; at the cutoff "
          f"{data.n_users:,} customers x {data.n_items:,} items, {data.weight.nnz:,} pairs "
          f"({bought.mean():.0%} bought, mean {data.purchases.data[bought].mean():.2f} orders); "
          f"{LABEL_DAYS} days before: {before.n_users:,} customers, {before.weight.nnz:,} pairs; label period: "
          f"{len(relevant):,} buying customers ({len(relevant) / data.n_users:.0%}); test period: "
          f"{len(np.unique(test_users)):,}", flush=True)

    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import BM25Recommender

    parts: list[tuple[str, float]] = []
    recommend_model.fit_candidate_models = _timed(parts, "candidate models", recommend_model.fit_candidate_models)
    recommend_model.fit_ranker = _timed(parts, "ranker", recommend_model.fit_ranker)
    AlternatingLeastSquares.fit = _timed(parts, "ALS", AlternatingLeastSquares.fit)
    BM25Recommender.fit = _timed(parts, "item-KNN", BM25Recommender.fit)

    rng = np.random.default_rng(args.seed)
    excluded = sorted(set(catalogue.category))[:2]
    fit_s: list[float] = []
    part_s: dict[str, list[float]] = {}
    batch_s, p50_ms, p99_ms, frame_p50_ms = [], [], [], []
    model = RecommenderModel(RecommenderSettings())
    lists = pd.DataFrame()
    for run in range(args.runs):
        parts.clear()
        t0 = time.perf_counter()
        model = RecommenderModel(RecommenderSettings(seed=args.seed, n_estimators=args.ranker_trees)).fit_data(
            before, relevant, data)
        fit_s.append(time.perf_counter() - t0)
        candidate = [s for name, s in parts if name == "candidate models"]
        this = {"candidate models before": candidate[0], "ranker": dict(parts)["ranker"],
                "candidate models final": candidate[1],
                "ALS (both)": sum(s for name, s in parts if name == "ALS"),
                "item-KNN (both)": sum(s for name, s in parts if name == "item-KNN")}
        for name, s in this.items():
            part_s.setdefault(name, []).append(s)
        print(f"run {run + 1}: fit {fit_s[-1]:.1f} s ("
              + ", ".join(f"{name} {s[-1]:.1f} s" for name, s in part_s.items()) + ")", flush=True)

        # One customer at a time first (as the service calls it: rank, no DataFrame), then
        # the batch (whose 20 M rows would otherwise sit in the heap during the latency calls).
        lists = pd.DataFrame()  # free the previous run's lists before making new ones
        chosen = rng.choice(data.customer_ids, args.latency_calls + 20)
        latencies, frame_latencies = [], []
        for k, cid in enumerate(chosen):
            t2 = time.perf_counter()
            model.rank(cid, RecommendOptions(20, exclude_purchased=True, exclude_categories=excluded))
            t3 = time.perf_counter()
            model.recommend([cid], 20, exclude_purchased=True, exclude_categories=excluded)
            if k >= 20:  # the first calls warm up
                latencies.append(t3 - t2)
                frame_latencies.append(time.perf_counter() - t3)
        p50_ms.append(1000 * float(np.median(latencies)))
        p99_ms.append(1000 * float(np.percentile(latencies, 99)))
        frame_p50_ms.append(1000 * float(np.median(frame_latencies)))

        t1 = time.perf_counter()
        lists = model.recommend(data.customer_ids, 20, exclude_purchased=True)
        batch_s.append(time.perf_counter() - t1)
        print(f"run {run + 1}: recommend all {batch_s[-1]:.1f} s, one customer {p50_ms[-1]:.2f} ms median / "
              f"{p99_ms[-1]:.2f} ms p99 ({frame_p50_ms[-1]:.2f} ms median as a DataFrame)", flush=True)

    evaluated, model_recall, popular_recall = recall_at_20(
        data, lists, customer_ids[test_users], test_items, args.eval_customers, args.seed)
    training = model.training_
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    med = statistics.median

    def show(label: str, text: str) -> None:
        print(f"{label:<38}{text}")

    print()
    show("customers x items, pairs", f"{data.n_users:,} x {data.n_items:,}, {data.weight.nnz:,} "
         f"({model.settings_.num_threads} threads)")
    show("synthesise (no store)", f"{synth_s:.1f} s")
    show(f"fit_data (median of {args.runs})", f"{med(fit_s):.1f} s   (target < 120 s)")
    for name, s in part_s.items():
        show(f"  {name}", f"{med(s):.1f} s")
    show(f"recommend all, n=20 (median of {args.runs})", f"{med(batch_s):.1f} s   (target < 180 s) -> "
         f"{data.n_users / med(batch_s):,.0f} customers/s; {len(lists):,} rows")
    show("one customer, n=20, filters", f"{med(p50_ms):.2f} ms median, {med(p99_ms):.2f} ms p99 over "
         f"{args.latency_calls:,} calls of rank   (target < 2 ms); {med(frame_p50_ms):.2f} ms median "
         "through recommend (DataFrame)")
    show("ranker", f"{training.n_customers:,} customers, {training.n_pairs:,} pairs, {training.best_iteration} "
         f"trees, candidate recall {training.candidate_recall:.3f}, validation NDCG@20 "
         f"{training.validation_ndcg20:.3f}")
    show("recall@20, new items, test period", f"{model_recall:.3f} (most popular not bought: {popular_recall:.3f}) "
         f"over {evaluated:,} customers")
    sources = lists["source"].value_counts(normalize=True)
    show("sources of the lists", ", ".join(f"{k} {v:.0%}" for k, v in sources.items()))
    show("peak RSS", f"{peak_gb:.2f} GB")

if __name__ == "__main__":
    main()
