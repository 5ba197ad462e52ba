"""TIFU-KNN's neighbours (Hu et al., SIGIR 2020): the nearest customers of a pool, and the pool.

:class:`TifuNeighbours` blends each customer's time-decayed item frequencies with the mean of their
nearest neighbours' (:func:`training.recommend.data.tifu_vectors` builds the vectors); the
neighbours come from a pool of the most active customers (:func:`tifu_pool`), each cut to its
strongest items (:func:`tifu_pool_vectors`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import sparse

from training.recommend.block import UserBlock
from training.recommend.data import InteractionData
from training.recommend.data import lookup_pairs as _lookup
from training.recommend.topk import entry_rows, top_per_row

IntArray = NDArray[np.int64]


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
    r, c, _ = top_per_row(entry_rows(pool), pool.indices.astype(np.int64), pool.data, TIFU_NEIGHBOUR_ITEMS)
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
