"""Candidate generation and ranking features: the first stage of the recommender, vectorised.

For a block of customers (known ones sliced from :class:`~training.recommend.data.InteractionData`,
or a new customer folded in from the items of a request), :func:`candidates` proposes items from
every source of the registry :data:`CANDIDATE_SOURCES` (own purchases, ALS, item-KNN, TIFU-KNN,
popular: one function each) and describes every (customer, item) pair with the features the ranker
reads (:data:`FEATURES`). Filters are applied before the lists are cut, so a filter never leaves a
customer with fewer items than it could have. Everything is numpy / scipy over the whole block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray
from scipy import sparse

from training.recommend.data import InteractionData
from training.recommend.data import lookup_pairs as _lookup
from training.recommend.ranked import SOURCES as SERVED_SOURCES

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

#: Features of a (customer, item) pair, in the ranker's column order.
FEATURES: tuple[str, ...] = (
    "owned",  # 1 when the customer bought the item before
    "purchases",  # distinct orders of the item
    "weight",  # decayed purchases (+ weighted views), long half-life
    "weight_short",  # the same with the short half-life
    "days_since_purchase",  # days since the last purchase of the item (NaN: never bought)
    "share_of_orders",  # purchases of the item / the customer's most bought item's purchases
    "customer_items",  # distinct items the customer bought
    "customer_max_purchases",  # purchases of the customer's most bought item (an order-count proxy)
    "customer_days_since",  # days since the customer's last purchase
    "customer_weight_short",  # the customer's total short-half-life weight (recent activity)
    "item_buyers",  # distinct buyers ever
    "item_buyers_30d",
    "item_buyers_90d",
    "item_trend",  # (buyers 30 d + 1) / (buyers 90 d / 3 + 1): rising above 1
    "item_orders_per_buyer",  # how much the item is re-bought
    "als_score",
    "als_rank",
    "knn_score",
    "knn_rank",
    "popular_rank",
    "tifu_score",  # TIFU-KNN's blend of the personal and the neighbours' decayed frequencies
    "tifu_rank",
)
_F = {name: i for i, name in enumerate(FEATURES)}

#: Customers per block of candidate generation (the ALS top-k scores the items in stretches, so a
#: block's memory is its candidates: about 130 rows of 20 features a customer).
BLOCK_CUSTOMERS = 1_000


@dataclass(frozen=True)
class CandidateSizes:
    """How many items each source proposes per customer: one field per source of
    :data:`CANDIDATE_SOURCES`, its default size."""

    own: int = 50
    als: int = 50
    knn: int = 50
    popular: int = 30
    tifu: int = 50

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"candidate size {f.name!r} must be a whole number >= 0, got {value!r}")

    def only(self, names: Iterable[str]) -> CandidateSizes:
        """These sizes for the sources ``names``, 0 (nothing proposed) for every other.

        Parameters
        ----------
        names
            Names of :data:`CANDIDATE_SOURCES`.

        Returns
        -------
        CandidateSizes
            A copy with the other sources' sizes 0.
        """
        keep = set(names)
        return CandidateSizes(**{f.name: (getattr(self, f.name) if f.name in keep else 0) for f in fields(self)})


@dataclass(frozen=True)
class UserBlock:
    """Rows of the customers to score: their interaction rows (B × items CSR, sorted indices, one
    sparsity) and ALS factors (B × factors)."""

    weight: sparse.csr_matrix
    weight_short: sparse.csr_matrix
    purchases: sparse.csr_matrix
    days_since: sparse.csr_matrix  # days + 1; 0 = never bought
    factors: NDArray[np.floating]
    tifu: sparse.csr_matrix  # TIFU-KNN's personal vectors
    #: The customers' rows in the data (None for a customer folded in from a request).
    rows: IntArray | None = None

    @property
    def size(self) -> int:
        """Number of customers B in the block.

        Returns
        -------
        int
            Rows of the block's matrices.
        """
        return int(self.weight.shape[0])

    @classmethod
    def of_users(cls, data: InteractionData, rows: IntArray, user_factors: NDArray[np.floating]) -> UserBlock:
        """The block of known customers at ``rows`` of ``data``.

        Parameters
        ----------
        data
            The interaction data the model was fitted on.
        rows
            Customer rows (positions in ``data.customer_ids``), any order.
        user_factors
            ALS user factors of every customer of ``data`` (customers × factors).

        Returns
        -------
        UserBlock
            B = ``len(rows)`` rows in the order given.
        """
        rows = np.asarray(rows, dtype=np.int64)
        # The four matrices share one sparsity: gather the rows' entries once (scipy's fancy row
        # indexing has a fixed cost per matrix that would dominate a single request's block).
        indptr = data.weight.indptr
        starts, lengths = indptr[rows], (indptr[rows + 1] - indptr[rows]).astype(np.int64)
        out_indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=out_indptr[1:])
        entry = np.repeat(starts - out_indptr[:-1], lengths) + np.arange(int(out_indptr[-1]), dtype=np.int64)
        indices = data.weight.indices[entry]
        shape = (len(rows), data.n_items)

        def take(m: sparse.csr_matrix) -> sparse.csr_matrix:
            return sparse.csr_matrix((m.data[entry], indices, out_indptr), shape=shape)

        return cls(take(data.weight), take(data.weight_short), take(data.purchases), take(data.days_since),
                   np.asarray(user_factors[rows]), take(data.tifu_matrix), rows)

    @classmethod
    def folded_in(cls, n_items: int, items: IntArray, factors: NDArray[np.floating], *,
                  tifu_weight: float = 1.0) -> UserBlock:
        """One customer unknown to the data whose recent items are given: each counts as one
        purchase made on the cutoff's day, and as one basket (``tifu_weight``: its TIFU weight).

        Parameters
        ----------
        n_items
            Number of items of the model.
        items
            Item positions of the recent items (duplicates count once).
        factors
            The customer's folded-in ALS factors (one vector).
        tifu_weight
            TIFU-KNN weight of the one basket.

        Returns
        -------
        UserBlock
            One row, ``rows`` None.
        """
        cols = np.unique(np.asarray(items, dtype=np.int64))
        one = sparse.csr_matrix((np.ones(len(cols)), (np.zeros(len(cols), dtype=np.int64), cols)), shape=(1, n_items))
        one.sort_indices()
        return cls(one, one.copy(), one.copy(), one.copy(), np.asarray(factors, dtype=np.float32).reshape(1, -1),
                   one * float(tifu_weight))


def _normalised_rows(m: sparse.csr_matrix) -> sparse.csr_matrix:
    """``m`` with each row scaled to unit length (an all-zero row stays zero)."""
    counts = np.diff(m.indptr)
    rows = np.repeat(np.arange(m.shape[0]), counts)
    norms = np.sqrt(np.bincount(rows, weights=m.data * m.data, minlength=m.shape[0]))
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return sparse.csr_matrix((m.data * scale[rows], m.indices, m.indptr), shape=m.shape)


class TifuNeighbours:
    """TIFU-KNN's scores of a block of customers (Hu et al., SIGIR 2020, eq. 5):
    ``alpha * u + (1 - alpha) * (1/k) * sum of the k nearest customers' u``.

    Neighbours are the ``k`` customers of the pool (``pool``: their vectors, P × items; ``pool_rows``:
    their rows in the data) with the largest positive cosine similarity to the customer, never the
    customer themself; a customer with fewer such neighbours gets the sum over those it has, still
    divided by ``k`` (as the paper's mean over a fixed k). The pool is the most active customers
    (:func:`tifu_pool`): the nearest neighbours of a whole history cost ``customers²``, a pool's
    ``customers × pool``; each neighbour lends its strongest items (:func:`tifu_pool_vectors`)."""

    def __init__(self, pool_rows: IntArray, pool: sparse.csr_matrix, k: int, alpha: float):
        self.pool_rows = np.asarray(pool_rows, dtype=np.int64)
        self.pool = sparse.csr_matrix(pool)
        self.k, self.alpha = int(k), float(alpha)
        self._normalised_t = _normalised_rows(self.pool).T.tocsr()
        self._place = np.argsort(self.pool_rows, kind="stable")

    def scores(self, block: UserBlock) -> sparse.csr_matrix:
        """TIFU-KNN's score of every item for each customer of ``block``.

        Parameters
        ----------
        block
            The customers (their ``tifu`` vectors; ``rows`` to keep a pool customer from being their
            own neighbour).

        Returns
        -------
        scipy.sparse.csr_matrix
            B × items, sorted indices.
        """
        own = sparse.csr_matrix(block.tifu)
        k = min(self.k, self.pool.shape[0])
        if k == 0 or self.alpha >= 1.0 or own.nnz == 0:
            return (own * self.alpha).tocsr()
        sim = (_normalised_rows(own) @ self._normalised_t).toarray()
        if block.rows is not None and len(self.pool_rows):
            # A customer of the pool is not their own neighbour.
            sorted_rows = self.pool_rows[self._place]
            at = np.minimum(np.searchsorted(sorted_rows, block.rows), len(sorted_rows) - 1)
            member = sorted_rows[at] == block.rows
            sim[np.flatnonzero(member), self._place[at[member]]] = -np.inf
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else np.argsort(-sim, axis=1)
        near = np.take_along_axis(sim, top, axis=1) > 0
        indptr = np.zeros(sim.shape[0] + 1, dtype=np.int64)
        np.cumsum(near.sum(axis=1), out=indptr[1:])
        weights = sparse.csr_matrix((np.full(int(indptr[-1]), 1.0 / self.k), top[near], indptr),
                                    shape=(sim.shape[0], self.pool.shape[0]))
        out = (own * self.alpha + (weights @ self.pool) * (1.0 - self.alpha)).tocsr()
        out.sort_indices()
        return out


#: Items each pool customer contributes to a neighbour mean: their strongest ones. A full vector per
#: neighbour makes a block's mean hold k x (items a customer bought) entries, most of them too weak
#: to enter any list; 20 keeps the mean of k = 100 neighbours within 2,000 entries a customer.
TIFU_NEIGHBOUR_ITEMS = 20


def tifu_pool_vectors(data: InteractionData, rows: IntArray) -> sparse.csr_matrix:
    """The pool customers' TIFU vectors, each cut to its :data:`TIFU_NEIGHBOUR_ITEMS` largest entries
    (ties to the lower item).

    Parameters
    ----------
    data
        The interaction data.
    rows
        The pool's customer rows (:func:`tifu_pool`).

    Returns
    -------
    scipy.sparse.csr_matrix
        ``len(rows)`` × items, sorted indices.
    """
    pool = data.tifu_matrix[np.asarray(rows, dtype=np.int64)].tocsr()
    pool.sort_indices()
    r, c, _ = _top_per_row(_entry_rows(pool), pool.indices.astype(np.int64), pool.data, TIFU_NEIGHBOUR_ITEMS)
    values = _lookup(pool, r, c)
    out = sparse.csr_matrix((values, (r, c)), shape=pool.shape)
    out.sort_indices()
    return out


def tifu_pool(data: InteractionData, size: int) -> IntArray:
    """The rows of the ``size`` customers with the most purchases (orders × items; ties to the lower
    row), TIFU-KNN's neighbour candidates, ascending.

    Parameters
    ----------
    data
        The interaction data.
    size
        Most customers in the pool.

    Returns
    -------
    numpy.ndarray
        int64 customer rows, ascending; customers without a purchase are left out.
    """
    totals = np.ravel(data.purchases.sum(axis=1))
    order = np.lexsort((np.arange(len(totals)), -totals))
    chosen = order[: min(size, len(order))]
    return np.sort(chosen[totals[chosen] > 0]).astype(np.int64)


@dataclass(frozen=True)
class Candidates:
    """Candidate pairs of a block, sorted by (row, item): ``row`` (position in the block), ``item``
    (item position), ``sources`` (bit flags), ``x`` (pairs × :data:`FEATURES`, float32)."""

    row: IntArray
    item: IntArray
    sources: NDArray[np.int8]
    x: NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.row)

    def group_sizes(self, n_rows: int) -> IntArray:
        """Candidates per customer of the block (the ranker's query groups).

        Parameters
        ----------
        n_rows
            Number of customers B in the block.

        Returns
        -------
        numpy.ndarray
            int64, length B (0 for a customer without candidates).
        """
        return np.bincount(self.row, minlength=n_rows).astype(np.int64)

    def feature(self, name: str) -> NDArray[np.float32]:
        """One feature of every pair.

        Parameters
        ----------
        name
            A name of :data:`FEATURES`.

        Returns
        -------
        numpy.ndarray
            float32, one value per pair (a view into ``x``).
        """
        return self.x[:, _F[name]]

    def proposed_by(self, names: Iterable[str]) -> BoolArray:
        """Which pairs any of some sources proposed.

        Parameters
        ----------
        names
            Names of :data:`CANDIDATE_SOURCES`.

        Returns
        -------
        numpy.ndarray
            Boolean, one per pair.
        """
        return (self.sources & source_flags(names)) != 0


# --- vectorised sparse helpers ------------------------------------------------------------------


def _entry_rows(m: sparse.csr_matrix) -> IntArray:
    return np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))


def _entry_of(m: sparse.csr_matrix, rows: IntArray, cols: IntArray) -> IntArray:
    """The position in ``m.data`` of each (row, col) pair, -1 where nothing is stored; ``m`` has
    sorted indices."""
    n_cols = m.shape[1]
    keys = _entry_rows(m) * n_cols + m.indices.astype(np.int64)
    if len(keys) == 0:
        return np.full(len(rows), -1, dtype=np.int64)
    query = rows.astype(np.int64) * n_cols + cols.astype(np.int64)
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, pos, -1)


def _reversed_score_bits(scores: NDArray[np.floating]) -> NDArray[np.int64]:
    """Each score as float32, mapped onto 0 .. 2**32 - 1 so that the best (largest) score is 0: IEEE
    floats order as sign-magnitude integers."""
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.int32).astype(np.int64)
    monotone = np.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits) + 2**31
    return 2**32 - 1 - monotone


def row_score_order(rows: IntArray, scores: FloatArray) -> IntArray:
    """The order of the entries by row, then score (descending, in float32 precision), then input
    position: ``np.lexsort((position, -scores, rows))``, but as one sort of packed integers (row,
    score bits, position in one 64-bit word, cheaper than an argsort) when they fit, else one
    stable argsort of (row, score) keys. An entry's place depends on its own score only, never on
    the other rows of the block.

    Parameters
    ----------
    rows
        Row of each entry.
    scores
        Score of each entry (compared in float32).

    Returns
    -------
    numpy.ndarray
        int64 permutation of the entries.
    """
    n = len(rows)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    position_bits = max(int(n - 1).bit_length(), 1)
    row_bits = max(int(rows.max()).bit_length(), 1)
    reversed_bits = _reversed_score_bits(scores)
    if row_bits + position_bits <= 32:
        keys = ((rows.astype(np.uint64) << np.uint64(32 + position_bits))
                | (reversed_bits.astype(np.uint64) << np.uint64(position_bits)) | np.arange(n, dtype=np.uint64))
        return (np.sort(keys) & np.uint64((1 << position_bits) - 1)).astype(np.int64)
    return np.argsort((rows << 32) | reversed_bits, kind="stable")


def _top_per_row(rows: IntArray, cols: IntArray, scores: FloatArray, k: int) -> tuple[IntArray, IntArray, IntArray]:
    """The ``k`` best (row, col) entries of each row by score (in float32 precision; ties keep the
    input order: the lower col first for entries given in (row, col) order, as CSR rows are), with
    their rank (0-based) in the row; sorted by row then rank."""
    if k == 0 or len(rows) == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    order = row_score_order(rows, scores)
    rank = ranks_in_rows(rows[order])
    keep = order[rank < k]
    return rows[keep], cols[keep], rank[rank < k]


def ranks_in_rows(sorted_rows: IntArray) -> IntArray:
    """Each entry's place (0-based) within its row, for entries grouped by row in ascending order.

    Parameters
    ----------
    sorted_rows
        Row of each entry, ascending (non-negative).

    Returns
    -------
    numpy.ndarray
        int64, one rank per entry.
    """
    counts = np.bincount(sorted_rows)
    starts = np.cumsum(counts) - counts
    return np.arange(len(sorted_rows), dtype=np.int64) - starts[sorted_rows]


#: Items the ALS top-k scores first, then per stretch (see :class:`ItemFactorIndex`).
ALS_FIRST_ITEMS = 512
ALS_STRETCH_ITEMS = 1_024
#: Past this many items the stretches double: the few customers still scoring finish in few steps.
ALS_DOUBLING_FROM = 8_192
#: Allowance on the norm bound for the rounding of a float32 dot product (relative error ~1e-6).
_BOUND_SLACK = 1e-4
_EMPTY = np.uint64(2**64 - 1)


def _score_position_keys(scores: NDArray[np.float32], positions: IntArray) -> NDArray[np.uint64]:
    """One unsigned integer per entry: the float32 score (order reversed) in the high 32 bits, the
    position in the low 32: the smallest keys are the best scores, ties to the lowest position."""
    return (_reversed_score_bits(scores).astype(np.uint64) << np.uint64(32)) | positions.astype(np.uint64)


def _key_scores(keys: NDArray[np.uint64]) -> NDArray[np.float32]:
    """The float32 scores of :func:`_score_position_keys` keys."""
    monotone = 2**32 - 1 - (keys >> np.uint64(32)).astype(np.int64)
    bits = np.where(monotone >= 2**31, monotone - 2**31, (2**31 - 1 - monotone) | -(2**31))
    return bits.astype(np.int32).view(np.float32)


class ItemFactorIndex:
    """ALS item factors in decreasing order of their norm, for an exact top-k that scores a
    fraction of the catalogue.

    A score ``u . v`` is at most ``|u| |v|``. Items are scored in stretches of that order (512
    first, then 1,024 at a time); each customer keeps the best k keys so far, and once an item's
    bound ``|u| |v|`` is below the customer's k-th best score, neither it nor any later item (all
    with smaller norms) can enter the list: the customer stops there. Rarely bought items have small
    factors, so most customers' top 50 of 50,000 items is settled within a few thousand: the lists of
    a full ``user_factors @ item_factors.T`` (ties to the item of larger norm, then the lower
    position) without scoring most of the catalogue. A stretch's scores that cannot enter a list
    (below the customer's current k-th) are never sorted."""

    def __init__(self, item_factors: NDArray[np.floating]):
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        norms = np.linalg.norm(self.item_factors.astype(np.float64), axis=1)
        #: Item positions by decreasing norm, and each item's place in that order.
        self.order = np.argsort(-norms, kind="stable")
        self.place = np.empty(len(norms), dtype=np.int64)
        self.place[self.order] = np.arange(len(norms))
        self.factors = np.ascontiguousarray(self.item_factors[self.order])
        #: Minus the bounds' norms, ascending (for searchsorted), widened by the rounding allowance.
        self.neg_norms = -norms[self.order] * (1.0 + _BOUND_SLACK)

    @property
    def n_items(self) -> int:
        """Number of items indexed.

        Returns
        -------
        int
            Rows of ``item_factors``.
        """
        return len(self.order)

    def top(self, user_factors: NDArray[np.floating], k: int, allowed: BoolArray, excluded_rows: IntArray,
            excluded_cols: IntArray) -> tuple[IntArray, IntArray, IntArray]:
        """The ``k`` best allowed items of each customer (``user_factors``: B × factors), leaving out
        the (row, item) pairs given. A customer with fewer than ``k`` allowed items gets them all.

        Parameters
        ----------
        user_factors
            B × factors.
        k
            Items per customer.
        allowed
            Boolean mask over the items.
        excluded_rows, excluded_cols
            (row, item position) pairs never to return (e.g. :func:`owned_exclusion`).

        Returns
        -------
        tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]
            ``(row, item, rank)``, int64, sorted by row then rank (0-based).
        """
        u = np.ascontiguousarray(user_factors, dtype=np.float32)
        b, n = len(u), self.n_items
        k = min(k, n)
        if b == 0 or k == 0:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, empty
        allowed_in_order = np.asarray(allowed, dtype=bool)[self.order]
        ex_place = self.place[np.asarray(excluded_cols, dtype=np.int64)]
        by_place = np.argsort(ex_place, kind="stable")
        ex_place, ex_rows = ex_place[by_place], np.asarray(excluded_rows, dtype=np.int64)[by_place]
        user_norms = np.linalg.norm(u.astype(np.float64), axis=1)
        best = np.full((b, k), _EMPTY, dtype=np.uint64)
        kth = np.full(b, -np.inf, dtype=np.float32)
        active = np.arange(b, dtype=np.int64)
        start, stretch = 0, ALS_FIRST_ITEMS
        while start < n and len(active):
            stop = min(n, start + stretch)
            scores = u[active] @ self.factors[start:stop].T
            scores[:, ~allowed_in_order[start:stop]] = -np.inf
            lo, hi = np.searchsorted(ex_place, [start, stop])
            if hi > lo:
                rows = ex_rows[lo:hi]
                at = np.minimum(np.searchsorted(active, rows), len(active) - 1)
                hit = active[at] == rows
                scores[at[hit], ex_place[lo:hi][hit] - start] = -np.inf
            # Only what may enter a list is sorted: scores at least the customer's k-th so far.
            hit_rows, hit_cols = np.nonzero(scores >= kth[active][:, None])
            if len(hit_rows):
                keys = _score_position_keys(scores[hit_rows, hit_cols], hit_cols + start)
                touched, first, counts = np.unique(active[hit_rows], return_index=True, return_counts=True)
                merged = np.full((len(touched), k + int(counts.max())), _EMPTY, dtype=np.uint64)
                merged[:, :k] = best[touched]
                slot = np.arange(len(keys)) - np.repeat(first, counts)
                merged[np.repeat(np.arange(len(touched)), counts), k + slot] = keys
                kept = np.partition(merged, k - 1, axis=1)[:, :k]
                best[touched] = kept
                kth[touched] = _key_scores(kept.max(axis=1))
            bound = kth[active].astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                # Items this customer must still score: those whose bound reaches the k-th best.
                limit = np.where(np.isfinite(bound) & (bound > 0),
                                 np.searchsorted(self.neg_norms, -bound / user_norms[active], side="right"), n)
            active = active[limit > stop]
            start = stop
            if start >= ALS_DOUBLING_FROM:
                stretch *= 2
            elif start >= ALS_FIRST_ITEMS:
                stretch = ALS_STRETCH_ITEMS
        keys = np.sort(best, axis=1)
        valid = (keys != _EMPTY) & (_key_scores(keys) > -np.inf)
        rows = np.broadcast_to(np.arange(b, dtype=np.int64)[:, None], (b, k))[valid]
        ranks = np.broadcast_to(np.arange(k, dtype=np.int64)[None, :], (b, k))[valid]
        items = self.order[(keys[valid] & np.uint64(0xFFFFFFFF)).astype(np.int64)]
        return rows, items, ranks


def owned_exclusion(block: UserBlock, keep_owned: BoolArray | None) -> tuple[IntArray, IntArray]:
    """(row, item) pairs the block's customers bought, minus items of repurchasable categories.

    Parameters
    ----------
    block
        The customers.
    keep_owned
        Boolean mask over the items that stay even when bought (repurchasable); ``None``: none.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        ``(rows, item positions)``, int64, in CSR order.
    """
    bought = block.purchases.data > 0
    rows, cols = _entry_rows(block.purchases)[bought], block.purchases.indices[bought].astype(np.int64)
    if keep_owned is not None:
        drop = ~keep_owned[cols]
        rows, cols = rows[drop], cols[drop]
    return rows, cols


# --- candidate sources ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceInputs:
    """What every candidate source reads: one block of customers under one call's filters.

    ``excluded_keys`` holds ``row * items + item`` of the pairs never to propose (the purchases
    when they are excluded), sorted; ``shared`` the block's scores that no filter changes, kept by
    :meth:`block_scores` for the next call on the same block with the same sizes."""

    data: InteractionData
    block: UserBlock
    item_index: ItemFactorIndex
    similarity: sparse.csr_matrix
    tifu: TifuNeighbours | None
    sizes: CandidateSizes
    allowed: BoolArray
    exclude_owned: bool
    excluded_keys: IntArray
    popular: IntArray | None
    shared: dict[str, sparse.csr_matrix]

    def allows(self, rows: IntArray, cols: IntArray) -> BoolArray:
        """Whether each (row, item) pair may be proposed: an allowed item the row's customer is not
        excluded from.

        Parameters
        ----------
        rows, cols
            Block rows and item positions of the pairs, int64.

        Returns
        -------
        numpy.ndarray
            Boolean, one per pair.
        """
        ok = self.allowed[cols]
        keys_excluded = self.excluded_keys
        if len(keys_excluded):
            keys = rows * self.data.n_items + cols
            pos = np.minimum(np.searchsorted(keys_excluded, keys), len(keys_excluded) - 1)
            ok &= keys_excluded[pos] != keys
        return ok

    def block_scores(self, name: str, size: int, compute: Callable[[], sparse.csr_matrix]) -> sparse.csr_matrix:
        """A source's scores of every item for the block's customers, computed once per block.

        Parameters
        ----------
        name
            The source's name (the key in ``shared``).
        size
            The source's size: at 0 nothing is computed and every score is 0.
        compute
            Computes the B × items scores.

        Returns
        -------
        scipy.sparse.csr_matrix
            B × items.
        """
        if not size:
            return sparse.csr_matrix((self.block.size, self.similarity.shape[1]), dtype=np.float64)
        if name not in self.shared:
            self.shared[name] = compute()
        return self.shared[name]


@dataclass(frozen=True)
class Proposal:
    """A source's lists for the customers of a block: ``(row, item)`` pairs, at most the source's
    size per row; ``rank``, the pair's 0-based place in the row's list (for a source whose rank is a
    ranking feature); ``pair_scores(rows, items)``, the source's score of any pair (its score
    feature), for the pairs every source proposed."""

    row: IntArray
    item: IntArray
    rank: IntArray | None = None
    pair_scores: Callable[[IntArray, IntArray], NDArray[np.floating]] | None = None


#: What a source does: its lists for a block, at most ``size`` items per customer.
ProposeFunction = Callable[[SourceInputs, int], Proposal]


@dataclass(frozen=True)
class CandidateSource:
    """A registered candidate source (see :func:`candidate_source`)."""

    name: str
    propose: ProposeFunction
    #: Its bit in :attr:`Candidates.sources`.
    flag: int
    #: How a list names an item it proposed: one of :data:`training.recommend.ranked.SOURCES`.
    label: str
    #: The lowest and highest size the validation search tries.
    search_sizes: tuple[int, int]
    #: The features of :data:`FEATURES` it fills: its rank in the list (the size when it did not
    #: propose the pair) and its score of the pair.
    rank_feature: str | None
    score_feature: str | None


#: The candidate sources by name, in the order they were registered; every name is a field of
#: :class:`CandidateSizes` (its size) and a key of the ``recommend_candidates`` setting.
CANDIDATE_SOURCES: dict[str, CandidateSource] = {}


def candidate_source(name: str, *, label: str, search_sizes: tuple[int, int] = (10, 100),
                     rank_feature: str | None = None,
                     score_feature: str | None = None) -> Callable[[ProposeFunction], ProposeFunction]:
    """Register a candidate source's function under ``name``, the next bit its flag.

    Parameters
    ----------
    name
        The source's name: a field of :class:`CandidateSizes`, a key of ``recommend_candidates``.
    label
        How a list names the items it proposed: ``repurchase``, ``model`` or ``popularity``.
    search_sizes
        The sizes the validation search tries, lowest and highest.
    rank_feature, score_feature
        The names in :data:`FEATURES` of its rank and of its score of a pair, if it has them.

    Returns
    -------
    Callable
        The decorator: registers the function and returns it unchanged.
    """
    if name in CANDIDATE_SOURCES:
        raise ValueError(f"candidate source {name!r} is registered twice")
    if label not in SERVED_SOURCES:
        raise ValueError(f"candidate source {name!r}: label {label!r} is not one of {', '.join(SERVED_SOURCES)}")
    unknown = [f for f in (rank_feature, score_feature) if f is not None and f not in _F]
    if unknown:
        raise ValueError(f"candidate source {name!r}: {', '.join(unknown)} not in FEATURES")

    def register(propose: ProposeFunction) -> ProposeFunction:
        flag = 1 << len(CANDIDATE_SOURCES)
        if flag > np.iinfo(np.int8).max:
            raise ValueError("at most seven candidate sources: Candidates.sources holds one bit each in an int8")
        CANDIDATE_SOURCES[name] = CandidateSource(name, propose, flag, label, search_sizes, rank_feature, score_feature)
        return propose

    return register


def source_flags(names: Iterable[str]) -> int:
    """The bits of some sources in :attr:`Candidates.sources`.

    Parameters
    ----------
    names
        Names of :data:`CANDIDATE_SOURCES`.

    Returns
    -------
    int
        Their flags or-ed.
    """
    return sum(CANDIDATE_SOURCES[name].flag for name in set(names))


def label_flags(label: str) -> int:
    """The bits of the sources a list names ``label``.

    Parameters
    ----------
    label
        ``repurchase``, ``model`` or ``popularity``.

    Returns
    -------
    int
        Their flags or-ed.
    """
    return source_flags(name for name, source in CANDIDATE_SOURCES.items() if source.label == label)


def _top_scores(inputs: SourceInputs, scores: sparse.csr_matrix, size: int) -> Proposal:
    """The ``size`` best allowed items of each row of ``scores`` with a positive score."""
    rows, cols = _entry_rows(scores), scores.indices.astype(np.int64)
    keep = inputs.allows(rows, cols) & (scores.data > 0)
    row, item, rank = _top_per_row(rows[keep], cols[keep], scores.data[keep], size)
    return Proposal(row, item, rank, lambda r, i: _lookup(scores, r, i))


@candidate_source("own", label="repurchase")
def own_items(inputs: SourceInputs, size: int) -> Proposal:
    """The repeat-purchase source: what the customer bought, by decayed purchases.

    Parameters
    ----------
    inputs
        The block and the filters.
    size
        Items per customer.

    Returns
    -------
    Proposal
        Without rank or score features (the pair's history features say it all).
    """
    purchases = inputs.block.purchases
    bought = purchases.data > 0
    rows = _entry_rows(purchases)[bought]
    cols = purchases.indices[bought].astype(np.int64)
    weight = inputs.block.weight.data[bought]
    keep = inputs.allows(rows, cols)
    row, item, _ = _top_per_row(rows[keep], cols[keep], weight[keep], size)
    return Proposal(row, item)


@candidate_source("als", label="model", rank_feature="als_rank", score_feature="als_score")
def als_items(inputs: SourceInputs, size: int) -> Proposal:
    """The factorisation: the top items of ``user_factors @ item_factors.T`` (``implicit`` ALS on
    BM25-weighted purchases) over the allowed items, found exactly by :class:`ItemFactorIndex`
    without scoring most of the catalogue.

    Parameters
    ----------
    inputs
        The block and the filters.
    size
        Items per customer.

    Returns
    -------
    Proposal
        With ranks; the score of a pair is the dot product of its factors.
    """
    n_items, excluded = inputs.data.n_items, inputs.excluded_keys
    row, item, rank = inputs.item_index.top(inputs.block.factors, size, inputs.allowed, excluded // n_items,
                                            excluded % n_items)
    factors = np.asarray(inputs.block.factors, dtype=np.float32)
    item_factors = inputs.item_index.item_factors

    def scores(rows: IntArray, items: IntArray) -> NDArray[np.floating]:
        return np.einsum("ij,ij->i", factors[rows], item_factors[items])

    return Proposal(row, item, rank, scores)


@candidate_source("knn", label="model", rank_feature="knn_rank", score_feature="knn_score")
def knn_items(inputs: SourceInputs, size: int) -> Proposal:
    """Item-KNN, "customers who bought X also bought": the top items of ``user_items @
    similarity``, the score of ``implicit``'s item-item models (BM25 similarity, K neighbours per
    item).

    Parameters
    ----------
    inputs
        The block and the filters.
    size
        Items per customer.

    Returns
    -------
    Proposal
        With ranks and scores.
    """

    def compute() -> sparse.csr_matrix:
        scores = (inputs.block.weight @ inputs.similarity).tocsr()
        scores.sort_indices()
        return scores

    return _top_scores(inputs, inputs.block_scores("knn", size, compute), size)


@candidate_source("tifu", label="model", rank_feature="tifu_rank", score_feature="tifu_score")
def tifu_items(inputs: SourceInputs, size: int) -> Proposal:
    """TIFU-KNN (Hu et al., SIGIR 2020): the top items of ``alpha * u + (1 - alpha) * mean of the k
    nearest customers' u``, ``u`` the customer's time-decayed item frequencies over baskets
    (:func:`training.recommend.data.tifu_vectors`), the neighbours the most similar (cosine) of a
    pool of the most active customers (:class:`TifuNeighbours`; without one, ``u`` alone).

    Parameters
    ----------
    inputs
        The block and the filters.
    size
        Items per customer.

    Returns
    -------
    Proposal
        With ranks and scores.
    """
    block, tifu = inputs.block, inputs.tifu

    def compute() -> sparse.csr_matrix:
        return tifu.scores(block) if tifu is not None else sparse.csr_matrix(block.tifu)

    return _top_scores(inputs, inputs.block_scores("tifu", size, compute), size)


@candidate_source("popular", label="popularity", search_sizes=(10, 50), score_feature="popular_rank")
def popular_items(inputs: SourceInputs, size: int) -> Proposal:
    """The popular list (the allowed items with the most buyers in the last 30 days, or the
    segment's list given), the same for every customer but for their exclusions: the seasonal
    trend.

    Parameters
    ----------
    inputs
        The block and the filters.
    size
        Items per customer.

    Returns
    -------
    Proposal
        The score of a pair is the item's place in the list (its length for an item not on it).
    """
    data, b = inputs.data, inputs.block.size
    ranked = data.popular_overall if inputs.popular is None else np.asarray(inputs.popular, dtype=np.int64)
    ranked = ranked[inputs.allowed[ranked]][: size + (inputs.sizes.own if inputs.exclude_owned else 0)]
    rows = np.repeat(np.arange(b, dtype=np.int64), len(ranked))
    cols = np.tile(ranked, b)
    keep = inputs.allows(rows, cols)
    places = -np.tile(np.arange(len(ranked), dtype=np.float64), b)[keep]
    row, item, _ = _top_per_row(rows[keep], cols[keep], places, size)
    place = np.full(data.n_items, float(len(ranked)))
    place[ranked] = np.arange(len(ranked))
    return Proposal(row, item, pair_scores=lambda _, items: place[items])


# --- candidate generation -------------------------------------------------------------------------


def candidates(
    data: InteractionData,
    block: UserBlock,
    *,
    item_index: ItemFactorIndex,
    similarity: sparse.csr_matrix,
    sizes: CandidateSizes,
    allowed: BoolArray,
    exclude_owned: bool,
    keep_owned: BoolArray | None = None,
    popular: IntArray | None = None,
    tifu: TifuNeighbours | None = None,
    shared: dict[str, sparse.csr_matrix] | None = None,
) -> Candidates:
    """Candidates of every customer of ``block`` with their features.

    Every source of :data:`CANDIDATE_SOURCES` proposes its lists (at most its size of ``sizes``
    per customer; own purchases, ALS, item-KNN, TIFU-KNN and the popular list: see their
    functions). Candidates are deduplicated per customer, each keeping the flags of the sources
    that proposed it; every pair gets every feature (:data:`FEATURES`) whatever source proposed it:
    a source's score is computed for all pairs, its rank is the position in its list (its size
    when it did not propose the item).

    Parameters
    ----------
    data
        The interaction data the model was fitted on.
    block
        The customers (:class:`UserBlock`).
    item_index
        The ALS item factors (:class:`ItemFactorIndex`, built once per model).
    similarity
        Item × item similarity of the item-KNN source.
    sizes
        Candidates per source (a source of size 0 proposes nothing).
    allowed
        Items that may be proposed at all (a mask over ``data.item_ids``: recommendable, category
        include/exclude, the caller's exclusions).
    exclude_owned
        Drop the items each customer bought, except where ``keep_owned`` is true.
    keep_owned
        Mask of items that stay even when bought (repurchasable categories); ``None``: none.
    popular
        Item positions by popularity for the popular source; ``None``: overall popularity.
    tifu
        TIFU-KNN's neighbours; ``None``: the customers' own vectors only (``alpha`` 1).
    shared
        The sources' scores of this block that no filter changes (item-KNN's, TIFU-KNN's), filled
        by the first call and read by the next ones on the same block with the same ``sizes``,
        ``similarity`` and ``tifu``; ``None``: kept for this call only.

    Returns
    -------
    Candidates
        Pairs sorted by (row, item), with source flags and the float32 feature matrix.
    """
    n_items, b = data.n_items, block.size
    excluded_keys = np.empty(0, dtype=np.int64)
    if exclude_owned:
        er, ec = owned_exclusion(block, keep_owned)
        excluded_keys = np.sort(er * n_items + ec)
    inputs = SourceInputs(data=data, block=block, item_index=item_index, similarity=similarity, tifu=tifu,
                          sizes=sizes, allowed=allowed, exclude_owned=exclude_owned, excluded_keys=excluded_keys,
                          popular=popular, shared={} if shared is None else shared)
    proposals = [(source, source.propose(inputs, getattr(sizes, name))) for name, source in CANDIDATE_SOURCES.items()]
    keys_by_source = [p.row * n_items + p.item for _, p in proposals]
    keys, inverse = np.unique(np.concatenate(keys_by_source), return_inverse=True)
    inverse = inverse.ravel()
    row, item = keys // n_items, keys % n_items
    sources = np.zeros(len(keys), dtype=np.int8)
    x = np.zeros((len(keys), len(FEATURES)), dtype=np.float32)
    start = 0
    # Each source's entries are a stretch of the concatenation: ``inverse`` tells which pair each is.
    for (source, proposal), source_keys in zip(proposals, keys_by_source):
        at = inverse[start : start + len(source_keys)]
        start += len(source_keys)
        sources[at] |= source.flag
        if source.rank_feature is not None:
            if proposal.rank is None:
                raise TypeError(f"candidate source {source.name!r} gives no rank for {source.rank_feature}")
            rank = np.full(len(keys), float(getattr(sizes, source.name)))
            rank[at] = proposal.rank
            x[:, _F[source.rank_feature]] = rank
        if source.score_feature is not None:
            if proposal.pair_scores is None:
                raise TypeError(f"candidate source {source.name!r} gives no scores for {source.score_feature}")
            x[:, _F[source.score_feature]] = proposal.pair_scores(row, item)

    # The four history matrices share one sparsity: find each pair's entry once.
    entry = _entry_of(block.purchases, row, item)
    stored = entry >= 0

    def value(m: sparse.csr_matrix) -> FloatArray:
        out = np.zeros(len(keys))
        out[stored] = m.data[entry[stored]]
        return out

    purchases = value(block.purchases)
    days = value(block.days_since)
    x[:, _F["owned"]] = purchases > 0
    x[:, _F["purchases"]] = purchases
    x[:, _F["weight"]] = value(block.weight)
    x[:, _F["weight_short"]] = value(block.weight_short)
    x[:, _F["days_since_purchase"]] = np.where(days > 0, days - 1.0, np.nan)

    # Customer-level features, over what they bought.
    bought_counts = np.where(block.purchases.data > 0, block.purchases.data, 0.0)
    entry_rows = _entry_rows(block.purchases)
    n_bought = np.bincount(entry_rows, weights=(bought_counts > 0).astype(np.float64), minlength=b)
    max_purchases = np.zeros(b)
    np.maximum.at(max_purchases, entry_rows, bought_counts)
    last_days = np.full(b, np.inf)
    days_data = np.where(block.days_since.data > 0, block.days_since.data - 1.0, np.inf)
    np.minimum.at(last_days, entry_rows, days_data)
    short_total = np.bincount(entry_rows, weights=block.weight_short.data, minlength=b)
    x[:, _F["share_of_orders"]] = np.divide(purchases, max_purchases[row], out=np.zeros(len(keys)),
                                            where=max_purchases[row] > 0)
    x[:, _F["customer_items"]] = n_bought[row]
    x[:, _F["customer_max_purchases"]] = max_purchases[row]
    x[:, _F["customer_days_since"]] = np.where(np.isfinite(last_days), last_days, np.nan)[row]
    x[:, _F["customer_weight_short"]] = short_total[row]

    x[:, _F["item_buyers"]] = data.buyers[item]
    x[:, _F["item_buyers_30d"]] = data.buyers_30d[item]
    x[:, _F["item_buyers_90d"]] = data.buyers_90d[item]
    x[:, _F["item_trend"]] = (data.buyers_30d[item] + 1.0) / (data.buyers_90d[item] / 3.0 + 1.0)
    x[:, _F["item_orders_per_buyer"]] = data.orders_per_buyer[item]
    return Candidates(row=row, item=item, sources=sources, x=x)
