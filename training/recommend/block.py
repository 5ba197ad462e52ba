"""The rows of the customers a recommender scores at once: :class:`UserBlock`.

Known customers are sliced from :class:`~training.recommend.data.InteractionData` (their four
interaction matrices share one sparsity, gathered once); a customer unknown to the data is folded in
from the items of a request. Candidate generation, TIFU-KNN and the reasons read blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import sparse

from training.recommend.data import InteractionData

IntArray = NDArray[np.int64]


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
