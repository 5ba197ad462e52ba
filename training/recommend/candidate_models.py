"""The recommender's fitted first stage: the models its candidate sources read.

:func:`fit_candidate_models` fits ALS (``implicit``, on BM25-weighted decayed purchases, optionally
warm-started from an earlier cutoff's factors), the BM25 item-item similarity and TIFU-KNN's
neighbour pool into :class:`CandidateModels`. :func:`fold_in` gives a customer unknown to the fit
ALS factors from a few items, and :func:`als_contributions` ALS's own explanation of a score; both
weight those items as the fit weighted its input.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from threadpoolctl import threadpool_limits

from features.interactions import confidence
from training.recommend.block import UserBlock
from training.recommend.data import InteractionData
from training.recommend.options import RecommenderInputError
from training.recommend.tifu import TifuNeighbours, tifu_pool, tifu_pool_vectors
from training.recommend.topk import ItemFactorIndex

if TYPE_CHECKING:
    from training.recommend.model import RecommenderSettings

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class CandidateModels:
    """The fitted first stage: ALS factors, the item-item similarity and the ALS input weighting."""

    user_factors: NDArray[np.float32]
    item_factors: NDArray[np.float32]
    similarity: sparse.csr_matrix
    #: BM25 of the ALS input (users as documents): IDF per item and the mean customer weight.
    als_idf: FloatArray
    als_mean_row_weight: float
    #: TIFU-KNN's neighbour pool: the customers' rows in the data and their vectors.
    tifu_pool_rows: IntArray
    tifu_pool: sparse.csr_matrix

    def tifu(self, settings: RecommenderSettings) -> TifuNeighbours:
        """TIFU-KNN's neighbour search with the settings' k and alpha (built once per pair).

        Parameters
        ----------
        settings
            The model's settings (``tifu_neighbours``, ``tifu_alpha``).

        Returns
        -------
        TifuNeighbours
            The search over this fit's pool.
        """
        key = (settings.tifu_neighbours, settings.tifu_alpha)
        built = self.__dict__.setdefault("_tifu", {})
        if key not in built:
            built[key] = TifuNeighbours(self.tifu_pool_rows, self.tifu_pool, *key)
        return built[key]

    @cached_property
    def item_index(self) -> ItemFactorIndex:
        """The item factors ordered for the ALS top-k (built on first use).

        Returns
        -------
        ItemFactorIndex
            Over :attr:`item_factors`.
        """
        return ItemFactorIndex(self.item_factors)

    @cached_property
    def similarity_keys(self) -> IntArray:
        """``row * items + column`` of every stored similarity, ascending (the matrix has sorted
        indices): many ``similarity[j, i]`` are found at once by one binary search, for reasons.

        Returns
        -------
        numpy.ndarray
            int64, one key per stored entry of :attr:`similarity`.
        """
        sim = self.similarity
        rows = np.repeat(np.arange(sim.shape[0], dtype=np.int64), np.diff(sim.indptr))
        return rows * sim.shape[1] + sim.indices.astype(np.int64)


def _bm25_rows(weight: sparse.csr_matrix, idf: FloatArray, mean_row: float, k1: float, b: float) -> sparse.csr_matrix:
    """The ALS input weighting of some customers' rows, with the IDF and mean fitted on all customers
    (equal to ``confidence(matrix, documents="users")`` for the fitted matrix's own rows)."""
    coo = sparse.coo_matrix(weight)
    row_sums = np.ravel(weight.sum(axis=1))
    norm = (1.0 - b) + b * row_sums / (mean_row if mean_row > 0 else 1.0)
    data = coo.data * (k1 + 1.0) / (k1 * norm[coo.row] + coo.data) * idf[coo.col]
    out = sparse.csr_matrix((data, (coo.row, coo.col)), shape=weight.shape)
    out.sort_indices()
    return out


def _als(settings: RecommenderSettings, n_threads: int) -> Any:
    from implicit.cpu.als import AlternatingLeastSquares

    return AlternatingLeastSquares(
        factors=settings.factors, regularization=settings.regularization, iterations=settings.iterations,
        calculate_training_loss=False, num_threads=n_threads, random_state=settings.seed,
    )


def _fitted_als(models: CandidateModels, settings: RecommenderSettings) -> Any:
    """``implicit``'s ALS object holding the fitted factors (one thread: a single customer's solve)."""
    als = _als(settings, 1)
    als.item_factors = models.item_factors
    als.user_factors = models.user_factors
    return als


def _weighted(models: CandidateModels, settings: RecommenderSettings, weight: sparse.csr_matrix) -> sparse.csr_matrix:
    """Rows of interactions weighted as the fit weighted the ALS input."""
    return _bm25_rows(weight, models.als_idf, models.als_mean_row_weight, settings.bm25_k1, settings.bm25_b)


def _warm_factors(data: InteractionData, earlier: InteractionData, models: CandidateModels,
                  seed: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Starting factors for an ALS fit on ``data`` from one fitted on ``earlier`` (the same store some
    weeks before): each known customer and item starts where it was, new ones as implicit starts
    them (uniform in [0, 0.01))."""
    rng = np.random.default_rng(seed)
    n_factors = models.item_factors.shape[1]

    def carry(ids: NDArray[Any], earlier_ids: NDArray[Any], earlier_factors: NDArray[np.float32]) -> NDArray[np.float32]:
        out = (rng.random((len(ids), n_factors), dtype=np.float32) * 0.01).astype(np.float32)
        if len(earlier_ids):
            pos = np.minimum(np.searchsorted(earlier_ids, ids), len(earlier_ids) - 1)
            known = earlier_ids[pos] == ids
            out[known] = earlier_factors[pos[known]]
        return out

    return (carry(data.customer_ids, earlier.customer_ids, models.user_factors),
            carry(data.item_ids, earlier.item_ids, models.item_factors))


def fit_candidate_models(data: InteractionData, settings: RecommenderSettings, *,
                         warm_start: tuple[InteractionData, CandidateModels] | None = None) -> CandidateModels:
    """ALS on the BM25-weighted decayed purchases and the BM25 item-item similarity (``implicit``).

    Parameters
    ----------
    data
        The history to fit on.
    settings
        The model's settings (ALS, BM25, item-KNN, TIFU-KNN pool, threads, seed).
    warm_start
        The history and candidate models of an earlier cutoff; ALS then starts from their factors
        and runs ``warm_iterations`` instead of ``iterations`` (most of the fit's time at a million
        customers).

    Returns
    -------
    CandidateModels
        The fitted first stage.

    Raises
    ------
    RecommenderInputError
        ``data`` holds no interaction.
    """
    from implicit.nearest_neighbours import BM25Recommender

    if data.n_users == 0 or data.weight.nnz == 0:
        raise RecommenderInputError(f"no interaction before {data.as_of:%Y-%m-%d}: nothing to learn from")
    weight = data.weight.astype(np.float64)
    n_users = weight.shape[0]
    counts = np.bincount(weight.indices, minlength=weight.shape[1])
    idf = np.log(float(n_users)) - np.log1p(counts)
    mean_row = float(np.ravel(weight.sum(axis=1)).mean())
    als_input = confidence(weight, scheme="bm25", K1=settings.bm25_k1, B=settings.bm25_b, documents="users")
    with threadpool_limits(1, "blas"):
        als = _als(settings, settings.num_threads)
        if warm_start is not None:
            als.user_factors, als.item_factors = _warm_factors(data, *warm_start, seed=settings.seed)
            als.iterations = settings.warm_iterations
        als.fit(als_input.astype(np.float32).tocsr(), show_progress=False)
        knn = BM25Recommender(K=settings.knn_neighbours, K1=settings.knn_k1, B=settings.knn_b,
                              num_threads=settings.num_threads)
        with warnings.catch_warnings():
            # implicit's BM25 weighting hands a COO matrix to its own fit and warns about it.
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            knn.fit(weight.tocsr(), show_progress=False)
    similarity = sparse.csr_matrix(knn.similarity, dtype=np.float64)
    similarity.sort_indices()
    pool = tifu_pool(data, settings.tifu_pool)
    return CandidateModels(
        user_factors=np.ascontiguousarray(als.user_factors, dtype=np.float32),
        item_factors=np.ascontiguousarray(als.item_factors, dtype=np.float32),
        similarity=similarity,
        als_idf=idf.astype(np.float64),
        als_mean_row_weight=mean_row,
        tifu_pool_rows=pool,
        tifu_pool=tifu_pool_vectors(data, pool),
    )


def fold_in(models: CandidateModels, settings: RecommenderSettings, items: IntArray) -> UserBlock:
    """A customer unknown to the fit, from the items they just bought or viewed: each item one
    purchase on the cutoff's day, the ALS factors ``implicit``'s ``recalculate_user`` on them.

    Parameters
    ----------
    models
        The fitted first stage.
    settings
        The model's settings (BM25, TIFU-KNN's basket decay).
    items
        Item positions (duplicates count once).

    Returns
    -------
    UserBlock
        One row, ranked like a known customer's.
    """
    block = UserBlock.folded_in(models.item_factors.shape[0], items, np.zeros(models.item_factors.shape[1]),
                                tifu_weight=settings.tifu_decay.basket_weight)
    with threadpool_limits(1, "blas"):
        factors = _fitted_als(models, settings).recalculate_user(0, _weighted(models, settings, block.weight)
                                                                 .astype(np.float32))
    return replace(block, factors=np.asarray(factors, dtype=np.float32).reshape(1, -1))


def als_contributions(models: CandidateModels, settings: RecommenderSettings, weight: sparse.csr_matrix,
                      item: int, n: int) -> tuple[IntArray, FloatArray]:
    """ALS's explanation of a customer's score for an item (``implicit``'s ``explain``): the ``n``
    items of their history that contribute most.

    Parameters
    ----------
    models
        The fitted first stage.
    settings
        The model's settings (BM25).
    weight
        The customer's interaction row (1 × items).
    item
        The item's position.
    n
        Items to return.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        ``(item positions, contributions)``, largest contribution first.
    """
    weighted = _weighted(models, settings, weight).astype(np.float32)
    with threadpool_limits(1, "blas"):
        _, top, _ = _fitted_als(models, settings).explain(0, weighted, item, N=n)
    return (np.asarray([j for j, _ in top], dtype=np.int64),
            np.asarray([float(s) for _, s in top], dtype=np.float64))
