"""The recommender's second stage: how a model orders each customer's candidates.

The LightGBM learning-to-rank model (:func:`fit_ranker`, on a label period's purchases among the
candidates' :data:`~training.recommend.candidates.FEATURES`) or a rule of thumb that learns nothing
beyond the candidate models (:func:`rule_scores`); :func:`candidate_scores` scores with either, so
that a baseline that wins on validation is served through the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
from numpy.typing import NDArray

from training.recommend.block import UserBlock
from training.recommend.candidate_models import CandidateModels
from training.recommend.candidates import BLOCK_CUSTOMERS, FEATURES, Candidates, candidates
from training.recommend.data import InteractionData, relevant_positions
from training.recommend.data import lookup_pairs as _lookup
from training.recommend.options import RecommenderInputError

if TYPE_CHECKING:
    from training.recommend.model import RecommenderSettings

FloatArray = NDArray[np.float64]

#: How a model orders its candidates: the LightGBM ranker (the blend), TIFU-KNN's score alone, or
#: personal top frequency (the customer's items by their number of orders, then the popular list).
#: The last two learn nothing beyond the candidate models: they are the rules of thumb the ranker
#: must beat, servable through the same code.
RANKERS: tuple[str, ...] = ("lightgbm", "tifu_knn", "top_frequency")
#: Candidate sources each rule reads (the others are left empty to save their cost); the blend
#: reads every source.
RULE_SOURCES: dict[str, tuple[str, ...]] = {"tifu_knn": ("own", "tifu", "popular"), "top_frequency": ("own", "popular")}
#: Candidate rows from which the ranker scores on several threads.
PARALLEL_SCORING_ROWS = 20_000


@dataclass(frozen=True)
class RankerTraining:
    """What the ranker learned from: the label period and how well the candidates covered it."""

    label_start: datetime
    label_end: datetime
    n_customers: int
    n_pairs: int
    positives: int
    relevant: int
    candidate_recall: float  # share of the label period's purchases (of known items) among the candidates
    best_iteration: int
    validation_ndcg20: float


def _ranker_params(settings: RecommenderSettings) -> dict[str, Any]:
    return {
        "objective": "rank_xendcg",
        "metric": "ndcg",
        "eval_at": [20],
        "learning_rate": settings.learning_rate,
        "num_leaves": settings.num_leaves,
        "min_data_in_leaf": settings.min_child_samples,
        # 63 bins instead of 255: histograms a quarter the size, the same splits on these features
        # (counts, days, ranks and scores) to a few percent of a feature's range.
        "max_bin": 63,
        "num_threads": settings.num_threads,
        "seed": settings.seed,
        "deterministic": True,
        "verbose": -1,
    }


def fit_ranker(
    data: InteractionData,
    models: CandidateModels,
    relevant: Mapping[int, set[str]],
    settings: RecommenderSettings,
    label_start: datetime,
    label_end: datetime,
) -> tuple[lgb.Booster, RankerTraining]:
    """The LightGBM ranker on the candidates of the customers who bought something in the label period.

    Parameters
    ----------
    data
        The history at the start of the label period.
    models
        The candidate models fitted on ``data``.
    relevant
        What each customer bought in the label period (customer id -> item ids).
    settings
        The model's settings (candidate sizes, the ranker's, the sample of customers, seed).
    label_start, label_end
        The label period.

    Returns
    -------
    tuple[lightgbm.Booster, RankerTraining]
        The ranker, cut at its best iteration (early stopping on a fifth of the customers,
        NDCG@20), and what it learned from.

    Raises
    ------
    RecommenderInputError
        Fewer than 10 known customers bought in the label period, or have a purchase among their
        candidates.
    """
    labels = relevant_positions(data, relevant)
    with_labels = np.flatnonzero(np.diff(labels.indptr) > 0)
    if len(with_labels) < 10:
        raise RecommenderInputError(
            f"only {len(with_labels)} known customers bought in {label_start:%Y-%m-%d} .. {label_end:%Y-%m-%d}: "
            "too few to learn the ranking (need 10)")
    rng = np.random.default_rng(settings.seed)
    if len(with_labels) > settings.max_training_customers:
        with_labels = np.sort(rng.choice(with_labels, settings.max_training_customers, replace=False))
    allowed = data.recommendable
    xs, ys, groups = [], [], []
    size = BLOCK_CUSTOMERS
    for start in range(0, len(with_labels), size):
        rows = with_labels[start : start + size]
        block = UserBlock.of_users(data, rows, models.user_factors)
        found = candidates(data, block, item_index=models.item_index, similarity=models.similarity,
                           sizes=settings.candidates, allowed=allowed, exclude_owned=False, tifu=models.tifu(settings))
        y = _lookup(labels[rows], found.row, found.item)
        xs.append(found.x)
        ys.append(y)
        groups.append(found.group_sizes(len(rows)))
    x, y, group = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)
    relevant_total = int(labels[with_labels].sum())
    positives = int(y.sum())
    # Customers whose candidates hold none of their purchases teach the ranking nothing.
    offsets = np.concatenate([[0], np.cumsum(group)])
    per_customer = np.add.reduceat(y, offsets[:-1]) if len(group) else np.empty(0)
    useful = np.flatnonzero((group > 0) & (per_customer > 0))
    if len(useful) < 10:
        raise RecommenderInputError("fewer than 10 customers have a later purchase among their candidates")
    # A fifth of the customers (at least one, and at least one left to learn from) for early stopping.
    valid_mask = np.zeros(len(useful), dtype=bool)
    valid_mask[rng.permutation(len(useful))[: min(len(useful) - 1, max(1, round(0.2 * len(useful))))]] = True
    parts = {}
    for name, chosen in (("train", useful[~valid_mask]), ("valid", useful[valid_mask])):
        take = np.concatenate([np.arange(offsets[c], offsets[c + 1]) for c in chosen])
        parts[name] = (x[take], y[take], group[chosen])
    train_set = lgb.Dataset(parts["train"][0], parts["train"][1], group=parts["train"][2],
                            feature_name=list(FEATURES), free_raw_data=True)
    valid_set = lgb.Dataset(parts["valid"][0], parts["valid"][1], group=parts["valid"][2], reference=train_set)
    booster = lgb.train(
        _ranker_params(settings), train_set, num_boost_round=settings.n_estimators, valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(settings.early_stopping_rounds, verbose=False)],
    )
    best = int(booster.best_iteration or settings.n_estimators)
    ndcg = float(booster.best_score.get("valid", {}).get("ndcg@20", float("nan")))
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    training = RankerTraining(
        label_start=label_start, label_end=label_end, n_customers=int(len(useful)), n_pairs=int(len(y)),
        positives=positives, relevant=relevant_total,
        candidate_recall=positives / relevant_total if relevant_total else float("nan"),
        best_iteration=best, validation_ndcg20=ndcg,
    )
    return booster, training


def rule_scores(found: Candidates, ranker: str) -> FloatArray:
    """The scores of the rule rankers of :data:`RANKERS`, larger first.

    ``top_frequency`` (P-TopFreq): an item the customer bought scores its number of orders, plus
    ``0.5 / (2 + days since its last purchase)`` so that a tie goes to the more recent; every other
    candidate scores below any of them by its place in the popular list. ``tifu_knn``: TIFU-KNN's
    score where it is positive, then the popular list the same way.

    Parameters
    ----------
    found
        The candidates (their features).
    ranker
        ``top_frequency`` or ``tifu_knn``.

    Returns
    -------
    numpy.ndarray
        float64, one score per candidate.
    """
    n_popular = float(np.nanmax(found.feature("popular_rank"))) + 2.0
    popular = -(found.feature("popular_rank").astype(np.float64) + 1.0) / n_popular  # in (-1, 0)
    if ranker == "top_frequency":
        purchases = found.feature("purchases").astype(np.float64)
        days = np.nan_to_num(found.feature("days_since_purchase").astype(np.float64), nan=0.0)
        return np.where(purchases > 0, purchases + 0.5 / (2.0 + days), popular)
    if ranker == "tifu_knn":
        tifu = found.feature("tifu_score").astype(np.float64)
        return np.where(tifu > 0, tifu, popular)
    raise ValueError(f"ranker {ranker!r} is not a rule; expected one of {', '.join(RANKERS[1:])}")


def candidate_scores(found: Candidates, booster: lgb.Booster | None, ranker: str, num_threads: int,
                     threads: int | None = None) -> FloatArray:
    """The ranking scores of some candidates, larger first: the LightGBM ranker's, or the rule's
    when there is no ranker.

    Parameters
    ----------
    found
        The candidates.
    booster
        The LightGBM ranker; ``None``: the rule ``ranker`` scores.
    ranker
        The model's ranker (of :data:`RANKERS`).
    num_threads
        The model's threads.
    threads
        LightGBM's threads; ``None``: ``num_threads`` from :data:`PARALLEL_SCORING_ROWS` candidates
        on, else one.

    Returns
    -------
    numpy.ndarray
        float64, one score per candidate.
    """
    if len(found) == 0:
        return np.empty(0)
    if booster is None:
        return rule_scores(found, ranker)
    if threads is None:
        # LightGBM's OpenMP threads cost milliseconds to wake up: one thread for a single request.
        threads = num_threads if len(found) >= PARALLEL_SCORING_ROWS else 1
    return np.asarray(booster.predict(found.x, num_threads=threads), dtype=np.float64)
