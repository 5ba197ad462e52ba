"""Baseline recommenders every learned model must beat: most popular items and buy-again.

Both follow scikit-learn's conventions (``__init__`` stores settings, ``fit`` returns ``self``,
fitted attributes end in ``_``) and ``implicit``'s recommend shape: ``recommend`` takes a batch of
customer ids and returns, per customer, ``(item_ids, scores)`` as two numpy arrays, best first.
Customer and item ids stay the store's ids; positions in arrays are an internal detail. What they
are fitted on is said on the shared base class, how each scores on :class:`PopularityRecommender`
and :class:`BuyAgainRecommender`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import ibis
import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from features.interactions import LAST_PURCHASE, PURCHASES, WEIGHT, interactions
from features.schema import Col

PopularityScore = Literal["customers", "weight"]
Recommendations = dict[Hashable, tuple[np.ndarray, np.ndarray]]

#: The issue's reference buy-again: a one-year recency half-life.
DEFAULT_HALF_LIFE_DAYS = 365.0


def _check_frame(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"interactions frame lacks column(s) {missing}; expected the columns of features.interactions.interactions"
        )
    weights = frame[WEIGHT].to_numpy(dtype="float64")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("interactions frame has a weight that is negative or not finite; expected weights >= 0")
    return frame[frame[PURCHASES] > 0]


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, dtype=object), np.empty(0, dtype=np.float64)


def _take(
    items: np.ndarray, scores: np.ndarray, n: int, excluded: set[Hashable] | frozenset[Hashable] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The first n entries of a ranked list whose items are not in ``excluded``."""
    if excluded:
        # Only the first n + |excluded| entries can make the top n.
        head = min(len(items), n + len(excluded))
        keep = ~np.isin(items[:head], np.fromiter((str(i) for i in excluded), dtype=object, count=len(excluded)))
        return items[:head][keep][:n], scores[:head][keep][:n]
    return items[:n], scores[:n]


def _allowed_mask(item_ids: np.ndarray, allowed_items: set[Hashable] | frozenset[Hashable] | None) -> np.ndarray | None:
    if allowed_items is None:
        return None
    return pd.Index(item_ids).isin([str(i) for i in allowed_items])


class _Recommender(ABC):
    """What both baselines share.

    They are fitted on a frame of :func:`features.interactions.interactions` (columns
    ``customer_id``, ``item_id``, ``purchases``, ``last_purchase``, ``weight``). Only purchased pairs
    (``purchases > 0``) count: browse-only pairs are ignored. ``fit_history`` builds that frame from
    a store with the model's own ``half_life_days`` (and no browse weight) and fits on it. Items the
    customer must not see (``exclude``) and the candidate items (``allowed_items``, e.g.
    :func:`features.interactions.recommendable_items`) are arguments of ``recommend``. Remaining
    ties are broken by item id, so the lists are deterministic.
    """

    half_life_days: float | None

    def _check_fitted(self) -> None:
        if not hasattr(self, "item_ids_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit() first")

    @abstractmethod
    def fit(self, interactions_frame: pd.DataFrame) -> _Recommender:
        """Fit on an interactions frame (``features.interactions.interactions``); returns self."""

    def fit_history(
        self, backend: ibis.BaseBackend, as_of: datetime, *, since: datetime | None = None
    ) -> _Recommender:
        """Fit on the purchases before ``as_of`` (and at or after ``since``), decayed with ``half_life_days``."""
        frame = interactions(backend, as_of, half_life_days=self.half_life_days, browse_weight=0.0, since=since)
        return self.fit(frame)


class PopularityRecommender(_Recommender):
    """The most popular items, the same list for every customer.

    ``score="customers"`` (default): the number of distinct customers who bought the item.
    ``score="weight"``: the summed ``weight`` of the item's purchased pairs (recency-weighted
    popularity when the frame carries decayed weights). ``half_life_days`` is only used by
    :meth:`fit_history` to build that weight (``None``: no decay), so that with a half-life recent
    sales count more. Every customer, known or not, gets the same list (minus their exclusions);
    ties go to the item id.

    Fitted attributes: ``item_ids_`` (ranked, best first) and ``scores_``.
    """

    def __init__(self, score: PopularityScore = "customers", half_life_days: float | None = None) -> None:
        self.score = score
        self.half_life_days = half_life_days

    def fit(self, interactions_frame: pd.DataFrame) -> PopularityRecommender:
        if self.score not in ("customers", "weight"):
            raise ValueError(f"score must be 'customers' or 'weight', got {self.score!r}")
        bought = _check_frame(interactions_frame, (Col.CUSTOMER_ID, Col.ITEM_ID, PURCHASES, WEIGHT))
        items = bought[Col.ITEM_ID].astype(str)
        if self.score == "customers":
            per_item = bought[Col.CUSTOMER_ID].groupby(items).nunique().astype("float64")
        else:
            per_item = bought[WEIGHT].astype("float64").groupby(items).sum()
        ranked = pd.DataFrame({"item": per_item.index.astype(str), "score": per_item.to_numpy()})
        ranked = ranked.sort_values(["score", "item"], ascending=[False, True], kind="stable")
        self.item_ids_ = ranked["item"].to_numpy(dtype=object)
        self.scores_ = ranked["score"].to_numpy(dtype=np.float64)
        return self

    def recommend(
        self,
        customer_ids: Sequence[Hashable],
        n: int = 20,
        *,
        exclude: Mapping[Hashable, set[Hashable]] | None = None,
        allowed_items: set[Hashable] | None = None,
    ) -> Recommendations:
        """Customer id -> (item ids, scores) of the n most popular items, minus the customer's exclusions.

        Every customer, including one the model never saw, gets the global list.
        """
        self._check_fitted()
        n = _check_n(n)
        items, scores = self.item_ids_, self.scores_
        mask = _allowed_mask(items, allowed_items)
        if mask is not None:
            items, scores = items[mask], scores[mask]
        exclude = exclude or {}
        return {customer: _take(items, scores, n, exclude.get(customer)) for customer in customer_ids}


class BuyAgainRecommender(_Recommender):
    """Each customer's own purchased items, ranked by their recency-weighted purchase count.

    The score of an item is the ``weight`` of the customer's (customer, item) pair: with
    :meth:`fit_history`, ``sum over the customer's orders of the item of 0.5 ** (age_days /
    half_life_days)`` (the default half-life is one year; ``half_life_days=None``: the number of
    orders). Ties go to the most recent
    ``last_purchase``, then to the item id. Customers unknown to the model get empty arrays.

    Fitted attributes: ``customer_ids_`` (sorted), ``indptr_`` (customer ``customer_ids_[u]`` owns
    entries ``indptr_[u]:indptr_[u + 1]``), ``item_ids_`` and ``scores_`` (ranked within each customer).
    """

    def __init__(self, half_life_days: float | None = DEFAULT_HALF_LIFE_DAYS) -> None:
        self.half_life_days = half_life_days

    def fit(self, interactions_frame: pd.DataFrame) -> BuyAgainRecommender:
        bought = _check_frame(interactions_frame, (Col.CUSTOMER_ID, Col.ITEM_ID, PURCHASES, LAST_PURCHASE, WEIGHT))
        ranked = pd.DataFrame(
            {
                "customer": bought[Col.CUSTOMER_ID].to_numpy(dtype="int64"),
                "item": bought[Col.ITEM_ID].astype(str).to_numpy(dtype=object),
                "score": bought[WEIGHT].to_numpy(dtype="float64"),
                "last": pd.to_datetime(bought[LAST_PURCHASE]).to_numpy(),
            }
        )
        # Duplicate (customer, item) rows are summed, as in features.interactions.to_matrix.
        ranked = ranked.groupby(["customer", "item"], as_index=False, sort=False).agg(score=("score", "sum"), last=("last", "max"))
        ranked = ranked.sort_values(
            ["customer", "score", "last", "item"], ascending=[True, False, False, True], kind="stable", na_position="last"
        )
        customers = ranked["customer"].to_numpy(dtype="int64")
        self.customer_ids_, starts = np.unique(customers, return_index=True)
        self.indptr_ = np.append(starts, len(customers)).astype(np.int64)
        self.item_ids_ = ranked["item"].to_numpy(dtype=object)
        self.scores_ = ranked["score"].to_numpy(dtype=np.float64)
        return self

    def recommend(
        self,
        customer_ids: Sequence[Any],
        n: int = 20,
        *,
        exclude: Mapping[Hashable, set[Hashable]] | None = None,
        allowed_items: set[Hashable] | None = None,
    ) -> Recommendations:
        """Customer id -> (item ids, scores) of up to n of the customer's own items, best first.

        A customer has fewer than n items when they bought fewer; an unknown customer gets empty arrays.
        """
        self._check_fitted()
        n = _check_n(n)
        mask = _allowed_mask(self.item_ids_, allowed_items)
        exclude = exclude or {}
        out: Recommendations = {}
        for customer in customer_ids:
            u = int(np.searchsorted(self.customer_ids_, customer))
            if u >= len(self.customer_ids_) or self.customer_ids_[u] != customer:
                out[customer] = _empty()
                continue
            lo, hi = self.indptr_[u], self.indptr_[u + 1]
            items, scores = self.item_ids_[lo:hi], self.scores_[lo:hi]
            if mask is not None:
                keep = mask[lo:hi]
                items, scores = items[keep], scores[keep]
            out[customer] = _take(items, scores, n, exclude.get(customer))
        return out
