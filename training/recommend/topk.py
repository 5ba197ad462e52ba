"""Top-k selection over sparse scores, vectorised: the order of scored entries within rows and the
exact ALS top-k over a catalogue.

:func:`row_score_order` sorts entries by row, then score, as one sort of packed integers;
:func:`top_per_row` keeps each row's best k; :class:`ItemFactorIndex` finds each customer's k best
items of ``user_factors @ item_factors.T`` without scoring most of the catalogue.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import sparse

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


def entry_rows(m: sparse.csr_matrix) -> IntArray:
    """The row of each stored entry of a CSR matrix.

    Parameters
    ----------
    m
        A CSR matrix.

    Returns
    -------
    numpy.ndarray
        int64, one row per entry of ``m.data``.
    """
    return np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))


def entry_of(m: sparse.csr_matrix, rows: IntArray, cols: IntArray) -> IntArray:
    """The position in ``m.data`` of each (row, col) pair.

    Parameters
    ----------
    m
        A CSR matrix with sorted indices.
    rows, cols
        The pairs.

    Returns
    -------
    numpy.ndarray
        int64 positions, -1 where nothing is stored.
    """
    n_cols = m.shape[1]
    keys = entry_rows(m) * n_cols + m.indices.astype(np.int64)
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


def top_per_row(rows: IntArray, cols: IntArray, scores: FloatArray, k: int) -> tuple[IntArray, IntArray, IntArray]:
    """The ``k`` best (row, col) entries of each row by score (in float32 precision; ties keep the
    input order: the lower col first for entries given in (row, col) order, as CSR rows are).

    Parameters
    ----------
    rows, cols
        The entries.
    scores
        Score of each entry, larger first.
    k
        Entries kept per row.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]
        ``(rows, cols, ranks)``, int64, sorted by row then rank (0-based).
    """
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
            (row, item position) pairs never to return (e.g. :func:`training.recommend.candidates.owned_exclusion`).

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
