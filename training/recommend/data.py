"""The recommender's view of the history at a cutoff: sparse customer × item arrays and item statistics.

:class:`InteractionData` is built once per cutoff (:func:`build_interaction_data`) from
:func:`features.interactions.interactions` (the unified history across channels, net of returns,
postage and fees excluded) and the catalogue. Everything the candidate models and the ranker read
is here, as numpy / scipy arrays indexed by position, so that scoring a batch of customers never
touches the store. Customer ids and item ids are sorted, so the same history always gives the same
arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

import ibis
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import sparse

from features.history import ITEMS_TABLE, cutoff_literal, unified_lines, utc_naive
from features.interactions import LAST_PURCHASE, PURCHASES, WEIGHT, interactions
from features.schema import Col

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

#: Windows of the item popularity statistics, in days before the cutoff.
RECENT_DAYS = (30, 90)
#: Grouping columns of the per-segment popularity used for cold start.
POPULAR_BY: tuple[str, ...] = (Col.CHANNEL, Col.COUNTRY)
#: Window of the per-segment popularity, in days before the cutoff.
POPULAR_WINDOW_DAYS = 90
#: Items kept per segment.
POPULAR_PER_SEGMENT = 200


@dataclass(frozen=True)
class PopularList:
    """A segment's popular items: positions, most popular first, and their distinct orders."""

    items: IntArray
    orders: IntArray


@dataclass(frozen=True)
class InteractionData:
    """Customer × item arrays and item statistics as of ``as_of``.

    - four users × items CSR matrices with the same sparsity (every pair a customer bought or
      browsed): ``weight`` (decayed purchases plus weighted views, the models' input),
      ``weight_short`` (the same with a short half-life: what the customer buys *now*),
      ``purchases`` (distinct orders, 0 for a browse-only pair) and ``days_since`` (days from the
      pair's last purchase to the cutoff, stored plus one so that a purchase on the cutoff's day is
      not an implicit zero; NaN-free: a browse-only pair stores 0, read back as "never bought");
      and ``tifu``, the customer's time-decayed item-frequency vector over baskets
      (:func:`tifu_vectors`, 0 for a browse-only pair);
    - per item: ``name`` (for explanations), ``recommendable`` (an active product of the
      catalogue), ``category`` (None when the catalogue does not know the item), and popularity:
      distinct buyers ever, in the last 30 and the last 90 days before the cutoff (a buyer whose
      last purchase of the item is that recent), and the mean number of orders per buyer (how much
      the item is re-bought);
    - popular items per channel and per country (:data:`POPULAR_BY`), distinct orders in the last
      :data:`POPULAR_WINDOW_DAYS` days including guest orders, for the cold start of an unknown
      customer ("popular in the app", "popular in France").
    """

    as_of: datetime
    customer_ids: IntArray
    item_ids: NDArray[np.object_]
    weight: sparse.csr_matrix
    weight_short: sparse.csr_matrix
    purchases: sparse.csr_matrix
    days_since: sparse.csr_matrix
    recommendable: BoolArray
    category: NDArray[np.object_]
    name: NDArray[np.object_]
    buyers: FloatArray
    buyers_30d: FloatArray
    buyers_90d: FloatArray
    orders_per_buyer: FloatArray
    #: segment column (channel, country) -> segment value (lower case) -> its popular items.
    popular_by: Mapping[str, Mapping[str, PopularList]] = field(default_factory=dict)
    #: TIFU-KNN's personal vectors (:func:`tifu_vectors`), on the sparsity of ``weight``; None: all zero.
    tifu: sparse.csr_matrix | None = None

    @cached_property
    def tifu_matrix(self) -> sparse.csr_matrix:
        """``tifu``, or an all-zero matrix on the sparsity of ``weight`` when the data has none.

        Returns
        -------
        scipy.sparse.csr_matrix
            users × items, float64.
        """
        if self.tifu is not None:
            return self.tifu
        return sparse.csr_matrix((np.zeros(self.weight.nnz), self.weight.indices, self.weight.indptr),
                                 shape=self.weight.shape)

    @property
    def n_users(self) -> int:
        """Number of customers (matrix rows).

        Returns
        -------
        int
            ``len(customer_ids)``.
        """
        return len(self.customer_ids)

    @property
    def n_items(self) -> int:
        """Number of items (matrix columns).

        Returns
        -------
        int
            ``len(item_ids)``.
        """
        return len(self.item_ids)

    def user_positions(self, customer_ids: object) -> tuple[IntArray, BoolArray]:
        """Positions of ``customer_ids`` in :attr:`customer_ids` and whether each is known (a
        position of an unknown customer is 0 and must not be used).

        Parameters
        ----------
        customer_ids
            One id or an array-like of ids (read as int64).

        Returns
        -------
        tuple[numpy.ndarray, numpy.ndarray]
            ``(positions, known)``: int64 and bool, one per id.
        """
        ids = np.asarray(customer_ids, dtype=np.int64).reshape(-1)
        pos = np.searchsorted(self.customer_ids, ids)
        pos = np.minimum(pos, max(self.n_users - 1, 0))
        known = (self.n_users > 0) & (self.customer_ids[pos] == ids) if self.n_users else np.zeros(len(ids), bool)
        return np.where(known, pos, 0).astype(np.int64), np.asarray(known, dtype=bool)

    def item_positions(self, item_ids: object) -> tuple[IntArray, BoolArray]:
        """Positions of ``item_ids`` in :attr:`item_ids` and whether each is known.

        Parameters
        ----------
        item_ids
            One id or an array-like of ids (compared as strings).

        Returns
        -------
        tuple[numpy.ndarray, numpy.ndarray]
            ``(positions, known)``: int64 (0 for an unknown item) and bool, one per id.
        """
        ids = np.asarray([str(i) for i in np.atleast_1d(np.asarray(item_ids, dtype=object))], dtype=object)
        if self.n_items == 0 or len(ids) == 0:
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        pos = np.minimum(np.searchsorted(self.item_ids, ids), self.n_items - 1)
        known = self.item_ids[pos] == ids
        return np.where(known, pos, 0).astype(np.int64), np.asarray(known, dtype=bool)

    def popular(self, *, channel: str | None = None, country: str | None = None) -> IntArray:
        """Item positions by popularity for the segment (channel first, then country), else overall
        (distinct buyers in the last 30 days, then ever); recommendable items only.

        Parameters
        ----------
        channel, country
            The segment of an unknown customer (any case); ``None``: not known.

        Returns
        -------
        numpy.ndarray
            int64 item positions, most popular first.
        """
        return self.popular_with_counts(channel=channel, country=country)[0]

    def popular_with_counts(self, *, channel: str | None = None,
                            country: str | None = None) -> tuple[IntArray, FloatArray, str]:
        """:meth:`popular` with each item's count and what the count is, for scores and reasons:
        distinct orders in the segment in the last 90 days, or distinct buyers in the last 30 days.

        Parameters
        ----------
        channel, country
            As in :meth:`popular`.

        Returns
        -------
        tuple[numpy.ndarray, numpy.ndarray, str]
            ``(items, counts, what)``: int64 positions, float64 counts, and the count's meaning
            for a reason ("orders in the app in the last 90 days").
        """
        for column, value in ((Col.CHANNEL, channel), (Col.COUNTRY, country)):
            if value is not None:
                found = self.popular_by.get(column, {}).get(str(value).lower())
                if found is not None and len(found.items):
                    where = f"in the {value}" if column == Col.CHANNEL else f"in {value}"
                    return found.items, found.orders.astype(np.float64), \
                        f"orders {where} in the last {POPULAR_WINDOW_DAYS} days"
        overall = self.popular_overall
        return overall, self.buyers_30d[overall], "buyers in the last 30 days"

    @cached_property
    def popular_overall(self) -> IntArray:
        """Recommendable items by distinct buyers in the last 30 days, then ever (ties: lower position).

        Returns
        -------
        numpy.ndarray
            int64 item positions, most popular first.
        """
        order = np.lexsort((np.arange(self.n_items), -self.buyers, -self.buyers_30d))
        return order[self.recommendable[order]].astype(np.int64)

    @cached_property
    def category_codes(self) -> tuple[IntArray, dict[str, int]]:
        """Each item's category as an integer code (-1: none) and the code of each lower-case
        category, for case-insensitive filters without string comparisons per request.

        Returns
        -------
        tuple[numpy.ndarray, dict[str, int]]
            int64 code per item, and lower-case category -> code.
        """
        lowered = [None if c is None else str(c).lower() for c in self.category]
        codes: dict[str, int] = {}
        out = np.full(len(lowered), -1, dtype=np.int64)
        for i, name in enumerate(lowered):
            if name is not None:
                out[i] = codes.setdefault(name, len(codes))
        return out, codes

    def in_categories(self, categories: Iterable[str]) -> BoolArray:
        """Mask of the items whose category is one of ``categories`` (case-insensitive).

        Parameters
        ----------
        categories
            Category names; unknown ones match nothing.

        Returns
        -------
        numpy.ndarray
            bool, one per item.
        """
        codes, by_name = self.category_codes
        wanted = [by_name[c] for c in {str(c).lower() for c in categories} if c in by_name]
        if not wanted:
            return np.zeros(self.n_items, dtype=bool)
        lookup = np.zeros(len(by_name) + 1, dtype=bool)
        lookup[wanted] = True
        return lookup[codes]  # code -1 reads the last entry, which stays False

    def history_sets(self) -> dict[int, set[str]]:
        """Customer id -> the items they bought (purchases > 0), as in :func:`training.recommend.split.history_items`.

        Returns
        -------
        dict[int, set[str]]
            Only customers with a purchase.
        """
        m = self.purchases
        bought = m.data > 0
        rows = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(m.indptr))[bought]
        items = self.item_ids[m.indices[bought]]
        cut = np.flatnonzero(np.diff(rows)) + 1
        firsts = rows[np.r_[0, cut]] if len(rows) else rows
        return {int(self.customer_ids[u]): set(group.tolist()) for u, group in zip(firsts, np.split(items, cut))}


def _catalogue(backend: ibis.BaseBackend) -> pd.DataFrame:
    items = backend.table(ITEMS_TABLE)
    frame = items.select(Col.ITEM_ID, "name", "category", "active", Col.IS_PRODUCT).to_pandas()
    frame[Col.ITEM_ID] = frame[Col.ITEM_ID].astype(str)
    return frame.drop_duplicates(Col.ITEM_ID).set_index(Col.ITEM_ID)


def _popular_by(backend: ibis.BaseBackend, as_of: datetime, item_ids: NDArray[np.object_],
                recommendable: BoolArray) -> dict[str, dict[str, PopularList]]:
    """Per channel and per country: recommendable item positions by distinct orders (guests included)
    in the last :data:`POPULAR_WINDOW_DAYS` days before ``as_of``."""
    lines = unified_lines(backend, as_of)
    since = utc_naive(as_of) - timedelta(days=POPULAR_WINDOW_DAYS)
    lines = lines.filter(lines[Col.IS_PRODUCT] & (lines[Col.TS] >= cutoff_literal(since))
                         & ((lines[Col.QUANTITY] - lines[Col.RETURNED_QUANTITY]) > 0))
    out: dict[str, dict[str, PopularList]] = {}
    for column in POPULAR_BY:
        counts = (lines.filter(lines[column].notnull())
                  .group_by([column, Col.ITEM_ID]).aggregate(orders=lines[Col.ORDER_KEY].nunique()).to_pandas())
        if counts.empty:
            out[column] = {}
            continue
        counts[Col.ITEM_ID] = counts[Col.ITEM_ID].astype(str)
        pos = np.searchsorted(item_ids, counts[Col.ITEM_ID].to_numpy(dtype=object)) if len(item_ids) else np.zeros(len(counts), int)
        pos = np.minimum(pos, max(len(item_ids) - 1, 0))
        keep = (len(item_ids) > 0) & (item_ids[pos] == counts[Col.ITEM_ID].to_numpy(dtype=object)) if len(item_ids) else np.zeros(len(counts), bool)
        counts = counts[keep].assign(_pos=pos[keep])
        counts = counts[recommendable[counts["_pos"].to_numpy()]]
        segments: dict[str, PopularList] = {}
        for value, group in counts.groupby(column, sort=True):
            ranked = group.sort_values(["orders", "_pos"], ascending=[False, True], kind="stable").head(POPULAR_PER_SEGMENT)
            segments[str(value).lower()] = PopularList(ranked["_pos"].to_numpy(dtype=np.int64),
                                                       ranked["orders"].to_numpy(dtype=np.int64))
        out[column] = segments
    return out


@dataclass(frozen=True)
class TifuDecay:
    """TIFU-KNN's basket decay (Hu et al., SIGIR 2020, section 3): baskets in groups of
    ``group_size`` counted from the latest, ``within`` the decay between consecutive baskets of a
    group (r_b), ``across`` the decay between consecutive groups (r_g)."""

    group_size: int = 7
    within: float = 0.9
    across: float = 0.7

    @property
    def basket_weight(self) -> float:
        """The weight of each item of a customer's only basket: 1 / m.

        Returns
        -------
        float
            ``1 / group_size``.
        """
        return 1.0 / self.group_size

    def __post_init__(self) -> None:
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"TIFU group size must be a whole number >= 1, got {self.group_size!r}")
        for name in ("within", "across"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"TIFU decay {name!r} must be in (0, 1], got {getattr(self, name)!r}")


def basket_lines(backend: ibis.BaseBackend, as_of: datetime, since: datetime | None = None) -> pd.DataFrame:
    """One row per (customer, order, item) bought before ``as_of`` (at or after ``since``): the
    purchases of :func:`features.interactions.interactions` before they are summed per pair (a
    positive net quantity in the order, products only, identified customers), with the order's time.

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    as_of
        The cutoff: orders and returns strictly before it.
    since
        Keep only orders at or after it; ``None``: the whole history.

    Returns
    -------
    pandas.DataFrame
        Columns ``customer_id``, ``item_id`` (str), ``order_key``, ``ts`` (the order's first line).
    """
    lines = unified_lines(backend, as_of)
    lines = lines.filter(lines[Col.CUSTOMER_ID].notnull() & lines[Col.IS_PRODUCT])
    if since is not None:
        lines = lines.filter(lines[Col.TS] >= cutoff_literal(since))
    per_order = lines.group_by([Col.CUSTOMER_ID, Col.ITEM_ID, Col.ORDER_KEY]).aggregate(
        _net=(lines[Col.QUANTITY] - lines[Col.RETURNED_QUANTITY]).sum(), ts=lines[Col.TS].min())
    frame = per_order.filter(per_order._net > 0).drop("_net").to_pandas()
    frame[Col.ITEM_ID] = frame[Col.ITEM_ID].astype(str)
    # An order's time is its first line's, so that all its items share one basket position.
    frame["ts"] = frame.groupby([Col.CUSTOMER_ID, Col.ORDER_KEY], sort=False)["ts"].transform("min")
    return frame


def tifu_vectors(customer: IntArray, item: IntArray, basket_ts: NDArray[np.int64], basket_key: IntArray,
                 shape: tuple[int, int], decay: TifuDecay) -> sparse.csr_matrix:
    """TIFU-KNN's personal item-frequency vectors (Hu et al. 2020, eq. 3-4), one row per customer.

    Each (customer row, item column) purchase belongs to a basket (``basket_key``, time
    ``basket_ts``). A customer's baskets, counted from the latest (position p = 0, 1, ...), fall in
    groups of m = ``group_size`` (g = p // m; the oldest group may be partial), and

        u = 1/G * sum_g across^g * (1/m * sum_{baskets of g} within^(p mod m) * basket),

    with G the customer's number of groups and a basket the 0/1 vector of its items: recent groups
    and the recent baskets within each count most.

    Parameters
    ----------
    customer, item
        Row and column of each purchase line.
    basket_ts
        Time of each line's basket (any integer unit; larger is later).
    basket_key
        Basket id of each line (unique over customers).
    shape
        ``(customers, items)`` of the result.
    decay
        The basket decay (:class:`TifuDecay`).

    Returns
    -------
    scipy.sparse.csr_matrix
        ``shape``, float64, sorted indices.
    """
    n = len(customer)
    if n == 0:
        return sparse.csr_matrix(shape, dtype=np.float64)
    # Baskets, one entry each, by customer then time descending (ties by key): position p.
    keys, first = np.unique(basket_key, return_index=True)
    b_customer, b_ts = customer[first], basket_ts[first]
    order = np.lexsort((keys, -b_ts, b_customer))
    position = np.empty(len(keys), dtype=np.int64)
    counts = np.bincount(b_customer[order], minlength=shape[0])
    starts = np.cumsum(counts) - counts
    position[order] = np.arange(len(keys)) - starts[b_customer[order]]
    m = decay.group_size
    groups = np.zeros(shape[0], dtype=np.float64)
    np.maximum.at(groups, b_customer, position // m + 1.0)
    basket_weight = (decay.across ** (position // m)) * (decay.within ** (position % m)) / (m * groups[b_customer])
    line_weight = basket_weight[np.searchsorted(keys, basket_key)]
    out = sparse.csr_matrix((line_weight, (customer, item)), shape=shape)
    out.sum_duplicates()
    out.sort_indices()
    return out


def build_interaction_data(
    backend: ibis.BaseBackend,
    as_of: datetime,
    *,
    half_life_days: float | None = 365.0,
    short_half_life_days: float = 30.0,
    browse_weight: float = 0.1,
    since: datetime | None = None,
    tifu: TifuDecay | None = None,
) -> InteractionData:
    """The arrays of :class:`InteractionData` for the history before ``as_of`` (at or after ``since``).

    Parameters
    ----------
    backend
        Ibis backend holding the unified history and the catalogue.
    as_of
        The cutoff.
    half_life_days
        Half-life of the models' ``weight`` in days; ``None``: no decay.
    short_half_life_days
        Half-life of the ``weight_short`` feature in days.
    browse_weight
        What one view counts next to one purchase.
    since
        Keep only orders and events at or after it; ``None``: the whole history.
    tifu
        The basket decay of the TIFU-KNN vectors; ``None``: :class:`TifuDecay`'s defaults.

    Returns
    -------
    InteractionData
        Every array, sorted by customer id and item id.

    Raises
    ------
    ValueError
        A half-life or browse weight out of range, or ``since`` not before ``as_of``
        (:func:`features.interactions.interaction_table`).
    """
    # Both half-lives from one scan of the history.
    frame = interactions(backend, as_of, half_life_days=half_life_days, browse_weight=browse_weight, since=since,
                         extra_weights={"weight_short": short_half_life_days})
    catalogue = _catalogue(backend)

    customer_ids = np.unique(frame[Col.CUSTOMER_ID].to_numpy(dtype=np.int64))
    # Distinct ids by hashing first: sorting a million Python strings to drop duplicates is slow.
    item_ids = np.sort(pd.unique(np.concatenate([frame[Col.ITEM_ID].astype(str).to_numpy(dtype=object),
                                                 np.asarray(catalogue.index, dtype=object)]))).astype(object)
    rows = np.searchsorted(customer_ids, frame[Col.CUSTOMER_ID].to_numpy(dtype=np.int64))
    # A hash lookup of the strings: a binary search compares Python strings one by one.
    item_index = pd.Index(item_ids)
    cols = item_index.get_indexer(frame[Col.ITEM_ID].astype(str).to_numpy(dtype=object)).astype(np.int64)
    shape = (len(customer_ids), len(item_ids))

    def matrix(values: np.ndarray) -> sparse.csr_matrix:
        # Every matrix holds every pair (explicit zeros included), so that they share one sparsity.
        out = sparse.csr_matrix((np.asarray(values, dtype=np.float64), (rows, cols)), shape=shape)
        out.sort_indices()
        return out

    purchases = frame[PURCHASES].to_numpy(dtype=np.float64)
    last = pd.to_datetime(frame[LAST_PURCHASE])
    age = (pd.Timestamp(utc_naive(as_of)) - last).dt.total_seconds().to_numpy(dtype=np.float64) / 86_400.0
    days_plus_one = np.where(np.isfinite(age), np.maximum(age, 0.0) + 1.0, 0.0)
    # The frame is sorted by (customer, item), as are CSR entries with sorted indices: one layout.
    weight = matrix(frame[WEIGHT].to_numpy())
    weight_short = matrix(frame["weight_short"].to_numpy())
    bought = matrix(purchases)
    days = matrix(days_plus_one)

    info = catalogue.reindex(item_ids)
    recommendable = (info["active"].fillna(False).astype(bool) & info[Col.IS_PRODUCT].fillna(False).astype(bool)).to_numpy()
    category = np.asarray([None if pd.isna(c) else str(c) for c in info["category"]], dtype=object)
    name = np.asarray([None if pd.isna(c) else str(c) for c in info["name"]], dtype=object)

    baskets = basket_lines(backend, as_of, since)
    b_rows = np.searchsorted(customer_ids, baskets[Col.CUSTOMER_ID].to_numpy(dtype=np.int64))
    b_cols = item_index.get_indexer(baskets[Col.ITEM_ID].to_numpy(dtype=object)).astype(np.int64)
    basket_key = baskets.groupby([Col.CUSTOMER_ID, Col.ORDER_KEY], sort=False).ngroup().to_numpy(dtype=np.int64)
    basket_ts = pd.to_datetime(baskets["ts"]).to_numpy(dtype="datetime64[s]").astype(np.int64)
    personal = tifu_vectors(b_rows, b_cols, basket_ts, basket_key, shape,
                            tifu or TifuDecay())
    # On the sparsity of the other matrices: every bought pair is one of their pairs.
    tifu_data = lookup_pairs(personal, rows, cols)

    n_items = len(item_ids)
    is_bought = purchases > 0
    recent = {d: is_bought & (days_plus_one - 1.0 < d) for d in RECENT_DAYS}
    buyers = np.bincount(cols[is_bought], minlength=n_items).astype(np.float64)
    orders = np.bincount(cols, weights=purchases, minlength=n_items)
    return InteractionData(
        as_of=utc_naive(as_of),
        customer_ids=customer_ids,
        item_ids=item_ids,
        weight=weight,
        weight_short=weight_short,
        purchases=bought,
        days_since=days,
        recommendable=recommendable,
        category=category,
        name=name,
        buyers=buyers,
        buyers_30d=np.bincount(cols[recent[30]], minlength=n_items).astype(np.float64),
        buyers_90d=np.bincount(cols[recent[90]], minlength=n_items).astype(np.float64),
        orders_per_buyer=np.divide(orders, buyers, out=np.zeros(n_items), where=buyers > 0),
        popular_by=_popular_by(backend, as_of, item_ids, recommendable),
        tifu=matrix(tifu_data),
    )


def lookup_pairs(m: sparse.csr_matrix, rows: IntArray, cols: IntArray) -> FloatArray:
    """``m[rows, cols]`` for many pairs (0 where nothing is stored); ``m`` has sorted indices.

    Parameters
    ----------
    m
        CSR matrix with sorted indices.
    rows, cols
        Positions of the pairs.

    Returns
    -------
    numpy.ndarray
        float64, one value per pair.
    """
    keys = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr)) * m.shape[1] + m.indices
    if len(keys) == 0:
        return np.zeros(len(rows))
    query = np.asarray(rows, dtype=np.int64) * m.shape[1] + np.asarray(cols, dtype=np.int64)
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, m.data[pos], 0.0)


def relevant_positions(data: InteractionData, relevant: Mapping[Any, set[str]]) -> sparse.csr_matrix:
    """A users × items 0/1 CSR of ``relevant`` (customer id -> item ids bought in a later period),
    restricted to the customers and items of ``data`` (the ranker's labels).

    Parameters
    ----------
    data
        The interaction data the labels are for.
    relevant
        Customer id -> item ids bought in the later period.

    Returns
    -------
    scipy.sparse.csr_matrix
        users × items of ``data``, float64 ones, sorted indices.
    """
    # One lookup of every (customer, item) pair: a lookup per customer is slow for 100,000s.
    owners = np.repeat(np.asarray(list(relevant.keys()), dtype=np.int64), [len(v) for v in relevant.values()])
    pos, known = data.user_positions(owners)
    ipos, iknown = data.item_positions([i for items in relevant.values() for i in items])
    r, c = pos[known & iknown], ipos[known & iknown]
    if len(r) == 0:
        return sparse.csr_matrix((data.n_users, data.n_items), dtype=np.float64)
    out = sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(data.n_users, data.n_items))
    out.data[:] = 1.0
    out.sort_indices()
    return out
