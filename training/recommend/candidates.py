"""Candidate generation and ranking features: the first stage of the recommender, vectorised.

For a block of customers (known ones sliced from :class:`~training.recommend.data.InteractionData`,
or a new customer folded in from the items of a request), :func:`candidates` proposes items from
five sources (own purchases, ALS, item-KNN, TIFU-KNN, popular) and describes every (customer,
item) pair with the features the ranker reads (:data:`FEATURES`). Filters are applied before the
lists are cut, so a filter never leaves a customer with fewer items than it could have. Everything
is numpy / scipy over the whole block: no Python loop per customer or per pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import sparse

from training.recommend.data import InteractionData
from training.recommend.data import lookup_pairs as _lookup

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

#: Source flags of a candidate (bits of :attr:`Candidates.sources`).
SOURCE_OWN, SOURCE_ALS, SOURCE_KNN, SOURCE_POPULAR, SOURCE_TIFU = 1, 2, 4, 8, 16


@dataclass(frozen=True)
class CandidateSizes:
    """How many items each source proposes per customer."""

    own: int = 50
    als: int = 50
    knn: int = 50
    popular: int = 30
    tifu: int = 50

    def __post_init__(self) -> None:
        for name in ("own", "als", "knn", "popular", "tifu"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"candidate size {name!r} must be a whole number >= 0, got {value!r}")


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


# --- candidate generation -----------------------------------------------------------------------


def source_scores(block: UserBlock, *, similarity: sparse.csr_matrix, sizes: CandidateSizes,
                  tifu: TifuNeighbours | None = None) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """The item-KNN and TIFU-KNN scores of the block's customers over every item (CSR, sorted
    indices), before any filter: what :func:`candidates` cuts its lists from. A source of size 0 is
    not computed (all zero): the rule rankers read neither item-KNN nor, for top frequency, TIFU-KNN.

    Parameters
    ----------
    block
        The customers.
    similarity
        Item × item similarity of the item-KNN source.
    sizes
        Candidates per source (a size of 0 skips its source).
    tifu
        TIFU-KNN's neighbours; ``None``: the customers' own vectors only.

    Returns
    -------
    tuple[scipy.sparse.csr_matrix, scipy.sparse.csr_matrix]
        ``(knn_scores, tifu_scores)``, each B × items.
    """
    nothing = sparse.csr_matrix((block.size, similarity.shape[1]), dtype=np.float64)
    # Item-KNN: the scores implicit's item-item models rank by.
    knn_scores = (block.weight @ similarity).tocsr() if sizes.knn else nothing
    knn_scores.sort_indices()
    if not sizes.tifu:
        tifu_scores = nothing
    else:
        tifu_scores = tifu.scores(block) if tifu is not None else sparse.csr_matrix(block.tifu)
    return knn_scores, tifu_scores


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
    scores: tuple[sparse.csr_matrix, sparse.csr_matrix] | None = None,
) -> Candidates:
    """Candidates of every customer of ``block`` with their features.

    The five sources:

    - *own* items: what the customer bought, by decayed purchases (the repeat-purchase source), at
      most ``sizes.own``;
    - *ALS*: the top ``sizes.als`` items of the factorisation (``implicit`` ALS on BM25-weighted
      purchases), ``user_factors @ item_factors.T`` over the allowed items, found exactly by
      :class:`ItemFactorIndex` without scoring most of the catalogue;
    - *item-KNN*: the top ``sizes.knn`` items of ``user_items @ similarity``, the score of
      ``implicit``'s item-item models (BM25 similarity, K neighbours per item), "customers who
      bought X also bought";
    - *TIFU-KNN* (Hu et al., SIGIR 2020): the top ``sizes.tifu`` items of ``alpha * u + (1 - alpha)
      * mean of the k nearest customers' u``, with ``u`` the customer's time-decayed item-frequency
      vector over baskets (:func:`training.recommend.data.tifu_vectors`) and the neighbours found
      by cosine similarity among a pool of the most active customers (:class:`TifuNeighbours`);
    - *popular*: the ``sizes.popular`` allowed items with the most buyers in the last 30 days (the
      same for every customer: the seasonal trend).

    Candidates are deduplicated per customer; every pair gets every feature (:data:`FEATURES`)
    whatever source proposed it: the ALS and KNN scores are computed for all pairs, the ranks are
    the position in that source's list (the list length when the source did not propose the item).

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
        Candidates per source.
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
    scores
        :func:`source_scores` of the block with the same ``similarity``, ``sizes`` and ``tifu``,
        when several calls on one block share them (they do not depend on the filters).

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

    def not_excluded(rows: IntArray, cols: IntArray) -> BoolArray:
        ok = allowed[cols]
        if len(excluded_keys):
            keys = rows * n_items + cols
            pos = np.minimum(np.searchsorted(excluded_keys, keys), len(excluded_keys) - 1)
            ok &= excluded_keys[pos] != keys
        return ok

    # Own items by decayed weight.
    bought = block.purchases.data > 0
    o_rows = _entry_rows(block.purchases)[bought]
    o_cols = block.purchases.indices[bought].astype(np.int64)
    o_w = block.weight.data[bought]
    keep = not_excluded(o_rows, o_cols)
    own_r, own_c, _ = _top_per_row(o_rows[keep], o_cols[keep], o_w[keep], sizes.own)

    # ALS over the allowed items, owned ones left out when excluded.
    excluded_rows, excluded_cols = excluded_keys // n_items, excluded_keys % n_items
    als_r, als_c, als_rank = item_index.top(block.factors, sizes.als, allowed, excluded_rows, excluded_cols)

    # Item-KNN: the scores implicit's item-item models rank by (0 for a source of size 0).
    knn_scores, tifu_scores = scores if scores is not None else source_scores(block, similarity=similarity,
                                                                             sizes=sizes, tifu=tifu)
    kr, kc = _entry_rows(knn_scores), knn_scores.indices.astype(np.int64)
    keep = not_excluded(kr, kc) & (knn_scores.data > 0)
    knn_r, knn_c, knn_rank = _top_per_row(kr[keep], kc[keep], knn_scores.data[keep], sizes.knn)

    # TIFU-KNN: personal and neighbours' decayed basket frequencies.
    tr, tc = _entry_rows(tifu_scores), tifu_scores.indices.astype(np.int64)
    keep = not_excluded(tr, tc) & (tifu_scores.data > 0)
    tifu_r, tifu_c, tifu_rank = _top_per_row(tr[keep], tc[keep], tifu_scores.data[keep], sizes.tifu)

    # Popular: the same ranked list for everyone, minus each customer's exclusions.
    ranked = data.popular_overall if popular is None else np.asarray(popular, dtype=np.int64)
    ranked = ranked[allowed[ranked]][: sizes.popular + (sizes.own if exclude_owned else 0)]
    pr = np.repeat(np.arange(b, dtype=np.int64), len(ranked))
    pc = np.tile(ranked, b)
    keep = not_excluded(pr, pc)
    pop_r, pop_c, pop_rank = _top_per_row(pr[keep], pc[keep], -np.tile(np.arange(len(ranked), dtype=np.float64), b)[keep],
                                          sizes.popular)

    keys_by_source = [own_r * n_items + own_c, als_r * n_items + als_c, knn_r * n_items + knn_c,
                      pop_r * n_items + pop_c, tifu_r * n_items + tifu_c]
    ranks_by_source = [None, als_rank, knn_rank, None, tifu_rank]
    keys, inverse = np.unique(np.concatenate(keys_by_source), return_inverse=True)
    inverse = inverse.ravel()
    row, item = keys // n_items, keys % n_items
    sources = np.zeros(len(keys), dtype=np.int8)
    source_ranks: dict[int, FloatArray] = {}
    start = 0
    # Each source's entries are a stretch of the concatenation: ``inverse`` tells which pair each is.
    for flag, source_keys, source_rank in zip((SOURCE_OWN, SOURCE_ALS, SOURCE_KNN, SOURCE_POPULAR, SOURCE_TIFU),
                                              keys_by_source,
                                              ranks_by_source):
        at = inverse[start : start + len(source_keys)]
        start += len(source_keys)
        sources[at] |= flag
        if source_rank is not None:
            source_ranks[flag] = np.full(len(keys), np.nan)
            source_ranks[flag][at] = source_rank

    def rank_of(flag: int, missing: int) -> FloatArray:
        out = source_ranks[flag]
        return np.where(np.isnan(out), float(missing), out)

    x = np.zeros((len(keys), len(FEATURES)), dtype=np.float32)
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

    factors = np.asarray(block.factors, dtype=np.float32)
    x[:, _F["als_score"]] = np.einsum("ij,ij->i", factors[row], item_index.item_factors[item])
    x[:, _F["als_rank"]] = rank_of(SOURCE_ALS, sizes.als)
    x[:, _F["knn_score"]] = _lookup(knn_scores, row, item)
    x[:, _F["knn_rank"]] = rank_of(SOURCE_KNN, sizes.knn)
    popular_rank = np.full(n_items, float(len(ranked)))
    popular_rank[ranked] = np.arange(len(ranked))
    x[:, _F["popular_rank"]] = popular_rank[item]
    x[:, _F["tifu_score"]] = _lookup(tifu_scores, row, item)
    x[:, _F["tifu_rank"]] = rank_of(SOURCE_TIFU, sizes.tifu)
    return Candidates(row=row, item=item, sources=sources, x=x)
