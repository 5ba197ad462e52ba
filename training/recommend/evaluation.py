"""The recommender's honest comparison: every candidate model and baseline, one table, one gate.

:func:`compare` fits every model and baseline on the history before the test period of
:mod:`training.recommend.split` and judges them on it, each as it would be served; nothing of the
test period is seen and no choice is made on it. Which configuration is registered is decided
before, on the validation period (:mod:`training.recommend.search`); the test period only reports
and gates it (:func:`recommender_gate`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

import ibis
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import sparse
from threadpoolctl import threadpool_limits

from features.errors import NoDataError
from training.progress import reporter
from training.recommend.block import UserBlock
from training.recommend.candidates import CandidateSizes, candidates
from training.recommend.data import InteractionData
from training.recommend.metrics import (
    EXPLORE_SUFFIX,
    N_CUSTOMERS,
    N_CUSTOMERS_NEW,
    NEW_SUFFIX,
    REPEAT_SUFFIX,
    comparison_table,
    evaluate,
    metric_name,
    new_items,
    repeat_items,
)
from training.recommend.model import RecommenderModel, RecommenderSettings
from training.recommend.options import RecommendOptions
from training.recommend.split import TemporalSplit, purchases_between
from training.recommend.topk import ItemFactorIndex, ranks_in_rows, row_score_order

logger = logging.getLogger(__name__)

#: The blend's row in the comparison table.
CHOSEN = "ranked blend (LightGBM)"
TIFU = "TIFU-KNN"
TOP_FREQUENCY = "personal top frequency"
POPULAR = "most popular"
POPULAR_RECENT = "most popular, last 30 days"
BUY_AGAIN = "buy again (1-year half-life)"
ALS = "ALS (BM25)"
BPR = "BPR"
KNN_COSINE = "item-KNN cosine"
KNN_BM25 = "item-KNN BM25"
BASELINES: tuple[str, ...] = (TOP_FREQUENCY, POPULAR, POPULAR_RECENT, BUY_AGAIN)
#: The servable configurations (rows of the table) and the ranker each is served with.
CONFIGURATIONS: dict[str, str] = {CHOSEN: "lightgbm", TIFU: "tifu_knn", TOP_FREQUENCY: "top_frequency"}
#: The list length every model is judged on.
K = 20
RECALL = metric_name("recall", K)
RECALL_NEW = metric_name("recall", K, new=True)


@dataclass(frozen=True)
class RecommenderGate:
    """Whether the chosen model may be promoted, and why (or why not)."""

    eligible: bool
    best_baseline: str
    margin_all: float  # recall@20 over all items, chosen minus the best baseline
    margin_new: float  # recall@20 over new items, chosen minus the better of popularity and ALS
    reasons: tuple[str, ...]
    #: The row of the configuration that is registered.
    champion: str = CHOSEN
    #: The champion's recall@20 over personal top frequency's (the issue's target: >= 1.05).
    ratio_to_top_frequency: float = float("nan")

    def to_metrics(self) -> dict[str, float]:
        return {"gate_eligible": float(self.eligible), "gate_margin_recall_at_20": self.margin_all,
                "gate_margin_recall_at_20_new": self.margin_new,
                "gate_ratio_recall_at_20_to_top_frequency": self.ratio_to_top_frequency}


@dataclass(frozen=True)
class Comparison:
    """The comparison table (one row per model, :mod:`training.recommend.metrics` columns), the
    gate, and the model fitted as of ``valid_end`` with its test-period lists."""

    split: TemporalSplit
    table: pd.DataFrame
    gate: RecommenderGate
    model: RecommenderModel
    n_customers: int


def recommender_gate(table: pd.DataFrame, chosen: str = CHOSEN) -> RecommenderGate:
    """The gate on a comparison table, for the ``chosen`` row.

    The ``chosen`` row is the *champion* configuration (the blend, TIFU-KNN or personal top
    frequency), decided on the validation period (:mod:`training.recommend.search`). A learned
    champion (the blend, TIFU-KNN) is eligible for promotion only if it beats the best baseline on
    recall@20 over all items AND beats popularity and plain ALS on recall@20 over new items; a
    baseline champion (personal top frequency, registered when nothing beat it on validation) only
    if no other baseline beats it on recall@20. Either way the run says which condition failed.

    Parameters
    ----------
    table
        The comparison table of :func:`compare` (one row per model, the metrics' columns).
    chosen
        The row of the registered configuration.

    Returns
    -------
    RecommenderGate
        Whether it may be promoted, and why (or why not).
    """
    baselines = [b for b in BASELINES if b in table.index and b != chosen]
    best = max(baselines, key=lambda b: table.loc[b, RECALL])
    mine_all, mine_new = float(table.loc[chosen, RECALL]), float(table.loc[chosen, RECALL_NEW])
    margin_all = mine_all - float(table.loc[best, RECALL])
    rivals_new = {name: float(table.loc[name, RECALL_NEW]) for name in (POPULAR, ALS) if name in table.index}
    best_new = max(rivals_new.values()) if rivals_new else float("nan")
    margin_new = mine_new - best_new
    ratio = mine_all / float(table.loc[TOP_FREQUENCY, RECALL]) if TOP_FREQUENCY in table.index else float("nan")
    reasons = []
    if chosen in BASELINES:
        # A baseline is served when nothing beat it on validation: it must still be the best rule.
        ok_all = margin_all >= 0
        reasons.append(f"{chosen} is the champion: no candidate beat it on the validation period")
        reasons.append(f"recall@20 over all items {mine_all:.4f} vs {table.loc[best, RECALL]:.4f} for {best}, the best "
                       f"other baseline ({'not beaten' if ok_all else 'beaten'}, {margin_all:+.4f})")
        return RecommenderGate(eligible=ok_all, best_baseline=best, margin_all=margin_all, margin_new=margin_new,
                               reasons=tuple(reasons), champion=chosen, ratio_to_top_frequency=ratio)
    ok_all = margin_all > 0
    ok_new = bool(rivals_new) and margin_new > 0
    reasons.append(f"recall@20 over all items {mine_all:.4f} vs {table.loc[best, RECALL]:.4f} for {best} "
                   f"({'beats it' if ok_all else 'does not beat it'} by {margin_all:+.4f})")
    for name, value in rivals_new.items():
        verdict = "beats" if mine_new > value else "does not beat"
        reasons.append(f"recall@20 over new items {mine_new:.4f} {verdict} {name} ({value:.4f})")
    return RecommenderGate(eligible=ok_all and ok_new, best_baseline=best, margin_all=margin_all,
                           margin_new=margin_new, reasons=tuple(reasons), champion=chosen,
                           ratio_to_top_frequency=ratio)


#: The last purchases split by :func:`_purchase_split` (the objects, to compare by identity, and the split).
_last_split: list[tuple[object, object, tuple[dict[int, set[str]], dict[int, set[str]]]]] = []


def _purchase_split(relevant: Mapping[int, set[str]],
                    history: Mapping[int, set[str]]) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
    """The new and the repeat purchases of ``relevant`` (:func:`new_items`, :func:`repeat_items`),
    kept for the next call on the same two mappings: a comparison judges a dozen models' lists on
    the same test purchases, and the split costs as much as judging a list."""
    if _last_split and _last_split[0][0] is relevant and _last_split[0][1] is history:
        return _last_split[0][2]
    split = (new_items(relevant, history), repeat_items(relevant, history))
    _last_split[:] = [(relevant, history, split)]
    return split


def _row(all_lists: Mapping[int, list[str]], new_lists: Mapping[int, list[str]], relevant: Mapping[int, set[str]],
         history: Mapping[int, set[str]], catalogue: int, *, has_new: bool = True) -> dict[str, float]:
    """Metrics of a model: the all-items columns from its unfiltered lists, the ``_new`` columns from
    its lists with the customer's purchases excluded."""
    split = _purchase_split(relevant, history)
    plain = evaluate(all_lists, relevant, history, catalogue_size=catalogue, split=split)
    filtered = evaluate(new_lists, relevant, history, catalogue_size=catalogue, split=split)
    out = {k: v for k, v in plain.items() if not k.endswith(NEW_SUFFIX) and k != N_CUSTOMERS_NEW}
    for k, v in filtered.items():
        if k.endswith(NEW_SUFFIX):
            out[k] = v if has_new else float("nan")
    out[N_CUSTOMERS_NEW] = filtered[N_CUSTOMERS_NEW]
    return out


def _as_lists(rows: NDArray[np.int64], cols: NDArray[np.int64], at: NDArray[np.int64],
              customer_ids: NDArray[np.int64], item_ids: NDArray[np.object_], out: dict[int, list[str]]) -> None:
    """Add the lists of (block row, item) entries sorted by row then rank to ``out`` (an empty list
    for a block row without entries)."""
    bounds = np.searchsorted(rows, np.arange(len(at) + 1))
    items = item_ids[cols]
    for i, u in enumerate(at):
        out[int(customer_ids[u])] = list(items[bounds[i] : bounds[i + 1]])


def _owned(purchases: sparse.csr_matrix, at: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    owned = purchases[at].tocoo()
    bought = owned.data > 0
    return owned.row[bought].astype(np.int64), owned.col[bought].astype(np.int64)


def _factor_lists(user_factors: NDArray[np.floating], index: ItemFactorIndex, rows: NDArray[np.int64],
                  data: InteractionData, exclude_owned: bool) -> dict[int, list[str]]:
    """Top-K items per customer of a factor model (``user_factors @ item_factors.T`` over the
    recommendable items), by the exact top-k of :class:`ItemFactorIndex`, in blocks of customers."""
    out: dict[int, list[str]] = {}
    empty = np.empty(0, dtype=np.int64)
    for start in range(0, len(rows), 1_000):
        at = rows[start : start + 1_000]
        ex_rows, ex_cols = _owned(data.purchases, at) if exclude_owned else (empty, empty)
        r, c, _ = index.top(user_factors[at], K, data.recommendable, ex_rows, ex_cols)
        _as_lists(r, c, at, data.customer_ids, data.item_ids, out)
    return out


def _similarity_lists(similarity: sparse.csr_matrix, rows: NDArray[np.int64],
                      data: InteractionData) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """Top-K items per customer of an item-item model (``weight @ similarity``, implicit's item-KNN
    score), among the items with a positive score (the others are not ranked): as is, and with the
    customer's purchases excluded (both from one product of the matrices)."""
    plain: dict[int, list[str]] = {}
    filtered: dict[int, list[str]] = {}
    for start in range(0, len(rows), 1_000):
        at = rows[start : start + 1_000]
        scores = (data.weight[at] @ similarity).tocsr()
        scores.sort_indices()
        r = np.repeat(np.arange(len(at), dtype=np.int64), np.diff(scores.indptr))
        c = scores.indices.astype(np.int64)
        allowed = data.recommendable[c] & (scores.data > 0)
        orows, ocols = _owned(data.purchases, at)
        owned_keys = np.sort(orows * data.n_items + ocols)
        keys = r * data.n_items + c
        pos = np.minimum(np.searchsorted(owned_keys, keys), max(len(owned_keys) - 1, 0))
        owned = (owned_keys[pos] == keys) if len(owned_keys) else np.zeros(len(keys), dtype=bool)
        for keep, out in ((allowed, plain), (allowed & ~owned, filtered)):
            order = row_score_order(r[keep], scores.data[keep])
            kr, kc = r[keep][order], c[keep][order]
            first = ranks_in_rows(kr) < K
            _as_lists(kr[first], kc[first], at, data.customer_ids, data.item_ids, out)
    return plain, filtered


def _grouped(customer_id: NDArray[np.int64], items: NDArray[np.object_]) -> dict[int, list[str]]:
    """Customer id -> their items, from entries grouped by customer."""
    # One split at each change of customer.
    cut = np.flatnonzero(np.diff(customer_id)) + 1
    ids = customer_id[np.r_[0, cut]] if len(customer_id) else np.empty(0, dtype=np.int64)
    return {int(c): list(group) for c, group in zip(ids, np.split(items, cut))}


def ranked_lists(model: RecommenderModel, customers: NDArray[np.int64],
                 rankers: tuple[str, ...]) -> dict[tuple[str, bool], dict[int, list[str]]]:
    """Per ranker and purchase filter (``(ranker, exclude_purchased)``), customer id -> the model's
    top-K item ids (what :meth:`RecommenderModel.recommend` of ``model.with_ranker(ranker)`` serves),
    from one candidate generation per filter (:meth:`RecommenderModel.ranked_items`)."""
    found = model.ranked_items(customers, rankers, (RecommendOptions(K, exclude_purchased=False), RecommendOptions(K)))
    return {(ranker, options.exclude_purchased): _grouped(ids, model.data_.item_ids[items])
            for (ranker, options), (ids, items) in found.items()}


def configuration_rows(model: RecommenderModel, names: tuple[str, ...], customers: NDArray[np.int64],
                       relevant: Mapping[int, set[str]], history: Mapping[int, set[str]]) -> dict[str, dict[str, float]]:
    """The metrics of servable configurations (rows of :data:`CONFIGURATIONS`) of one fitted model:
    each one's lists as is and with purchases excluded."""
    catalogue = int(model.data_.recommendable.sum())
    rankers = tuple(CONFIGURATIONS[name] for name in names)
    lists = ranked_lists(model, customers, rankers)
    return {name: _row(lists[r, False], lists[r, True], relevant, history, catalogue) for name, r in zip(names, rankers)}


def popular_rows(data: InteractionData, customers: NDArray[np.int64], relevant: Mapping[int, set[str]],
                 history: Mapping[int, set[str]]) -> dict[str, dict[str, float]]:
    """Most popular ever (distinct buyers) and in the last 30 days, the same list for everyone."""
    rows, _ = data.user_positions(customers)
    allowed = data.recommendable
    catalogue = int(allowed.sum())
    out = {}
    for name, ranked in ((POPULAR, np.lexsort((np.arange(data.n_items), -data.buyers))), (POPULAR_RECENT, data.popular_overall)):
        ranked = ranked[allowed[ranked]]
        plain = {int(c): list(data.item_ids[ranked[:K]]) for c in customers}
        filtered = {}
        for c, u in zip(customers, rows):
            lo, hi = data.purchases.indptr[u], data.purchases.indptr[u + 1]
            owned = set(data.purchases.indices[lo:hi][data.purchases.data[lo:hi] > 0].tolist())
            filtered[int(c)] = [data.item_ids[i] for i in ranked[: K + len(owned)] if i not in owned][:K]
        out[name] = _row(plain, filtered, relevant, history, catalogue)
    return out


def als_row(model: RecommenderModel, customers: NDArray[np.int64], relevant: Mapping[int, set[str]],
            history: Mapping[int, set[str]]) -> dict[str, float]:
    """Plain ALS: the candidate model's own top-K over every allowed item."""
    data = model.data_
    rows, _ = data.user_positions(customers)
    all_lists, new_lists = (_factor_lists(model.models_.user_factors, model.models_.item_index, rows, data, exclude)
                            for exclude in (False, True))
    return _row(all_lists, new_lists, relevant, history, int(data.recommendable.sum()))


def compare(
    backend: ibis.BaseBackend,
    split: TemporalSplit,
    settings: RecommenderSettings,
    *,
    champion: str = CHOSEN,
    prefitted: RecommenderModel | None = None,
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Fit every model on the history before ``split.valid_end`` and judge them on the test period;
    the gate is ``champion``'s (a row of :data:`CONFIGURATIONS`, chosen on validation).
    ``prefitted``: a model with these settings fitted as of ``split.train_end`` (the validation
    search's), whose history and candidate models are then the label period's, not built again.

    Protocol:

    - the two-stage model is fitted as of ``valid_end``: its ranker learns on the validation period
      (candidate models fitted before ``train_end``, labels from ``[train_end, valid_end)``), its
      candidate models are refitted on everything before ``valid_end``; nothing of the test period is
      seen, and no choice is made on it;
    - the baselines (most popular ever, most popular in the last 30 days, buy again with a one-year
      half-life, personal top frequency: the customer's items by number of orders, then the popular
      list), TIFU-KNN on its own and the plain candidate models (``implicit`` ALS on BM25 weights, BPR,
      item-KNN with cosine and with BM25 similarity) are fitted on the same history before
      ``valid_end``; personal top frequency and TIFU-KNN are the same fitted model with a rule in place
      of the ranker (:meth:`RecommenderModel.with_ranker`), so their rows are what serving them gives;
    - every model recommends 20 items to each customer who bought in the test period and was known
      before it, twice: as is (judged on all test purchases) and with the customer's purchases excluded,
      the service's default filter (judged on the items new to the customer: the ``_new`` columns).
      Only recommendable items (active products) are ever proposed.

    Parameters
    ----------
    backend
        The store.
    split
        The temporal split (:func:`training.recommend.split.temporal_split`).
    settings
        The recommender's settings.
    champion
        The registered configuration's row, chosen on validation.
    prefitted
        The validation search's model, fitted as of ``split.train_end``, or None.
    progress
        Called with each step's line of text, if given.

    Returns
    -------
    Comparison
        The table, the gate and the model fitted as of ``valid_end`` with its test-period lists.
    """

    step = reporter(logger, progress)

    if champion not in CONFIGURATIONS:
        raise ValueError(f"champion {champion!r} is not a servable configuration; expected one of "
                         f"{', '.join(CONFIGURATIONS)}")
    label_days = (split.valid_end - split.train_end).days
    if label_days < 1:
        raise ValueError("the recommender's evaluation needs a validation period of at least one day to learn the ranking")
    settings = replace(settings, label_days=label_days, ranker="lightgbm")
    if prefitted is not None and prefitted.data_.as_of == split.train_end:
        model = RecommenderModel(settings)
        step(f"interactions before {split.valid_end:%Y-%m-%d} (label period from the validation search)")
        model.fit_data(prefitted.data_, purchases_between(backend, split.train_end, split.valid_end),
                       model.interaction_data(backend, split.valid_end), models_before=prefitted.models_, progress=step)
    else:
        model = RecommenderModel(settings).fit(backend, split.valid_end, progress=step)
    data = model.data_
    history = data.history_sets()
    step("test-period purchases")
    relevant = {c: items for c, items in purchases_between(backend, split.valid_end, split.test_end).items()
                if c in history}
    if not relevant:
        raise NoDataError(f"no customer known before {split.valid_end:%Y-%m-%d} bought in the test period: "
                         "nothing to evaluate on")
    customers = np.asarray(sorted(relevant), dtype=np.int64)
    rows, _ = data.user_positions(customers)
    allowed = data.recommendable
    catalogue = int(allowed.sum())
    table: dict[str, dict[str, float]] = {}

    step(f"ranked lists for {len(customers):,} test customers")
    table.update(configuration_rows(model, tuple(CONFIGURATIONS), customers, relevant, history))

    step("baselines")
    table.update(popular_rows(data, customers, relevant, history))
    buy_again: dict[int, list[str]] = {}
    block = UserBlock.of_users(data, rows, model.models_.user_factors)
    own = candidates(data, block, item_index=model.models_.item_index, similarity=model.models_.similarity,
                     sizes=CandidateSizes(own=K).only(("own",)), allowed=allowed,
                     exclude_owned=False)
    # Ties on the decayed weight go to the most recent purchase, then to the item id.
    order = np.lexsort((own.item, own.feature("days_since_purchase"), -own.feature("weight"), own.row))
    for r, i in zip(own.row[order], own.item[order]):
        buy_again.setdefault(int(customers[r]), []).append(data.item_ids[i])
    table[BUY_AGAIN] = _row(buy_again, {}, relevant, history, catalogue, has_new=False)

    step("candidate models on their own (ALS, BPR, item-KNN)")
    table[ALS] = als_row(model, customers, relevant, history)
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    from implicit.nearest_neighbours import CosineRecommender

    with threadpool_limits(1, "blas"):
        bpr = BayesianPersonalizedRanking(factors=settings.factors, iterations=settings.bpr_iterations,
                                          num_threads=settings.num_threads,
                                          random_state=settings.seed)
        binary = data.purchases.copy()
        binary.data = (binary.data > 0).astype(np.float32)
        binary.eliminate_zeros()
        bpr.fit(binary.tocsr(), show_progress=False)
        cosine = CosineRecommender(K=settings.knn_neighbours, num_threads=settings.num_threads)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Method expects CSR input")  # implicit's internal COO
            cosine.fit(data.weight.tocsr(), show_progress=False)
    cos_sim = sparse.csr_matrix(cosine.similarity)
    cos_sim.sort_indices()
    bpr_index = ItemFactorIndex(np.asarray(bpr.item_factors))
    bpr_users = np.asarray(bpr.user_factors)
    all_lists, new_lists = (_factor_lists(bpr_users, bpr_index, rows, data, exclude) for exclude in (False, True))
    table[BPR] = _row(all_lists, new_lists, relevant, history, catalogue)
    for name, similarity in ((KNN_COSINE, cos_sim), (KNN_BM25, model.models_.similarity)):
        table[name] = _row(*_similarity_lists(similarity, rows, data), relevant, history, catalogue)

    frame = comparison_table(table)
    frame = frame.loc[[CHOSEN, TIFU, *BASELINES, ALS, BPR, KNN_COSINE, KNN_BM25]]
    return Comparison(split=split, table=frame, gate=recommender_gate(frame, champion), model=model,
                      n_customers=len(customers))


def summary_columns() -> list[str]:
    """The columns a person reads first: recall (with its repeat / explore split), NDCG and coverage
    at 10 and 20, all and new items."""
    return [N_CUSTOMERS, metric_name("recall", 10), RECALL, RECALL + REPEAT_SUFFIX, RECALL + EXPLORE_SUFFIX,
            metric_name("ndcg", K), metric_name("recall", 10, new=True), RECALL_NEW, metric_name("ndcg", K, new=True),
            metric_name("coverage", K)]


def evaluated_at(split: TemporalSplit) -> dict[str, datetime]:
    return {"train_end": split.train_end, "valid_end": split.valid_end, "test_end": split.test_end}
