"""The recommender: candidates from repeat purchases, ALS, item-KNN and popularity, ranked by LightGBM.

People re-buy what they bought, and they also discover: :class:`RecommenderModel` generates
candidates from both and learns the mix with a learning-to-rank model (or ranks them by a rule, so
that a baseline that wins on validation is served through the same code). :meth:`RecommenderModel.rank`
is the one scoring path of batch lists, the CLI and the service; :meth:`RecommenderModel.similar_items`
serves product pages ("customers also bought": the item-KNN neighbours, ALS neighbours when an item
has too few) and :meth:`RecommenderModel.explain` gives ALS's own explanation of a score."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, TypeVar

import ibis
import lightgbm as lgb
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import sparse
from sklearn.exceptions import NotFittedError
from threadpoolctl import threadpool_limits

from features.history import utc_naive
from features.interactions import confidence
from features.schema import Col
from training.progress import reporter
from training.recommend.candidates import (
    FEATURES,
    SOURCE_ALS,
    SOURCE_KNN,
    SOURCE_OWN,
    SOURCE_POPULAR,
    SOURCE_TIFU,
    Candidates,
    CandidateSizes,
    ItemFactorIndex,
    TifuNeighbours,
    UserBlock,
    _lookup,
    candidates,
    ranks_in_rows,
    row_score_order,
    source_scores,
    tifu_pool,
    tifu_pool_vectors,
)
from training.recommend.data import InteractionData, TifuDecay, build_interaction_data, relevant_positions

# The options and their error are numpy-only too (a worker reads a request's options before the model loads).
from training.recommend.options import RecommenderInputError, RecommendOptions, checked_n

# Ranked lists and their columns live in a module of their own (numpy only): a service's worker
# answers from the default lists with them before it has imported the model's libraries.
from training.recommend.ranked import LARGE_FRAME_ROWS, RECOMMENDATION_COLUMNS, SOURCES, Ranked  # noqa: F401
from training.recommend.split import purchases_between

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

#: How a model orders its candidates: the LightGBM ranker (the blend), TIFU-KNN's score alone, or
#: personal top frequency (the customer's items by their number of orders, then the popular list).
#: The last two learn nothing beyond the candidate models: they are the rules of thumb the ranker
#: must beat, servable through the same code.
RANKERS: tuple[str, ...] = ("lightgbm", "tifu_knn", "top_frequency")
#: Candidate sources each ranker reads (the others are left empty to save their cost).
_RULE_SOURCES = {"tifu_knn": ("own", "tifu", "popular"), "top_frequency": ("own", "popular")}
#: The flag of each candidate source (:class:`CandidateSizes`' fields) in :attr:`Candidates.sources`.
_SOURCE_FLAGS = {"own": SOURCE_OWN, "als": SOURCE_ALS, "knn": SOURCE_KNN, "popular": SOURCE_POPULAR, "tifu": SOURCE_TIFU}
#: Candidate rows from which the ranker scores on several threads.
PARALLEL_SCORING_ROWS = 20_000
#: Customers per block of candidate generation (the ALS top-k scores the items in stretches, so a
#: block's memory is its candidates: about 130 rows of 20 features a customer).
BLOCK_CUSTOMERS = 1_000


@dataclass(frozen=True)
class _Resolved:
    """The options of one recommend call resolved against the fitted model: the items that may be
    proposed, the repurchasable ones and the popular source."""

    options: RecommendOptions
    allowed: BoolArray
    keep_owned: BoolArray | None
    popular: IntArray


@dataclass(frozen=True)
class RecommenderSettings:
    """Everything a fit depends on (see :class:`RecommenderModel`)."""

    half_life_days: float | None = 365.0
    short_half_life_days: float = 30.0
    browse_weight: float = 0.1
    factors: int = 64
    regularization: float = 0.05
    iterations: int = 15
    #: ALS iterations of the final candidate models, started from the label period's factors.
    warm_iterations: int = 5
    #: BPR, a candidate of the comparison only (not of the blend).
    bpr_iterations: int = 100
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    knn_neighbours: int = 100
    #: BM25 of the item-item similarity (implicit's BM25Recommender defaults; the ALS input uses bm25_k1/b).
    knn_k1: float = 1.2
    knn_b: float = 0.75
    candidates: CandidateSizes = field(default_factory=CandidateSizes)
    label_days: int = 90
    max_training_customers: int = 20_000
    #: The ranker's maximum boosting rounds (early stopping picks fewer; each tree costs batch time).
    n_estimators: int = 150
    learning_rate: float = 0.1
    num_leaves: int = 15
    min_child_samples: int = 100
    early_stopping_rounds: int = 30
    repurchasable_categories: tuple[str, ...] = ()
    #: One of :data:`RANKERS`.
    ranker: str = "lightgbm"
    #: TIFU-KNN (Hu et al. 2020): neighbours k, the personal share alpha, the basket decay, the pool.
    tifu_neighbours: int = 100
    tifu_alpha: float = 0.7
    tifu_group_size: int = 7
    tifu_within_decay: float = 0.9
    tifu_across_decay: float = 0.7
    tifu_pool: int = 5_000
    num_threads: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool]] = [
            ("half_life_days", self.half_life_days is None or self.half_life_days > 0),
            ("short_half_life_days", self.short_half_life_days > 0),
            ("browse_weight", self.browse_weight >= 0),
            ("factors", self.factors >= 1),
            ("regularization", self.regularization >= 0),
            ("iterations", self.iterations >= 1),
            ("warm_iterations", self.warm_iterations >= 1),
            ("bpr_iterations", self.bpr_iterations >= 1),
            ("knn_neighbours", self.knn_neighbours >= 1),
            ("label_days", self.label_days >= 1),
            ("max_training_customers", self.max_training_customers >= 10),
            ("n_estimators", self.n_estimators >= 1),
            ("learning_rate", 0 < self.learning_rate <= 1),
            ("num_leaves", self.num_leaves >= 2),
            ("min_child_samples", self.min_child_samples >= 1),
            ("early_stopping_rounds", self.early_stopping_rounds >= 1),
            ("num_threads", self.num_threads >= 1),
            ("ranker", self.ranker in RANKERS),
            ("tifu_neighbours", self.tifu_neighbours >= 1),
            ("tifu_alpha", 0 <= self.tifu_alpha <= 1),
            ("tifu_group_size", self.tifu_group_size >= 1),
            ("tifu_within_decay", 0 < self.tifu_within_decay <= 1),
            ("tifu_across_decay", 0 < self.tifu_across_decay <= 1),
            ("tifu_pool", self.tifu_pool >= 1),
        ]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ValueError(f"invalid recommender setting(s): {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")

    @property
    def tifu_decay(self) -> TifuDecay:
        return TifuDecay(self.tifu_group_size, self.tifu_within_decay, self.tifu_across_decay)

    @property
    def ranked_candidates(self) -> CandidateSizes:
        """The candidate sizes the ranker reads: all of them for the blend, its own sources for a rule."""
        used = _RULE_SOURCES.get(self.ranker)
        if used is None:
            return self.candidates
        return CandidateSizes(**{name: (size if name in used else 0) for name, size in self.candidates.__dict__.items()})

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["repurchasable_categories"] = list(self.repurchasable_categories)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RecommenderSettings:
        values = dict(values)
        values["candidates"] = CandidateSizes(**values.get("candidates", {}))
        values["repurchasable_categories"] = tuple(values.get("repurchasable_categories", ()))
        return cls(**values)


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
        """TIFU-KNN's neighbour search with the settings' k and alpha (built once per pair)."""
        key = (settings.tifu_neighbours, settings.tifu_alpha)
        built = self.__dict__.setdefault("_tifu", {})
        if key not in built:
            built[key] = TifuNeighbours(self.tifu_pool_rows, self.tifu_pool, *key)
        return built[key]

    @cached_property
    def item_index(self) -> ItemFactorIndex:
        """The item factors ordered for the ALS top-k (built on first use)."""
        return ItemFactorIndex(self.item_factors)

    @cached_property
    def similarity_keys(self) -> IntArray:
        """``row * items + column`` of every stored similarity, ascending (the matrix has sorted
        indices): many ``similarity[j, i]`` are found at once by one binary search, for reasons."""
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

    ``warm_start``: the history and candidate models of an earlier cutoff; ALS then starts from their
    factors and runs ``warm_iterations`` instead of ``iterations`` (most of the fit's time at a
    million customers)."""
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


class RecommenderModel:
    """Two-stage recommender. ``fit`` returns self; fitted attributes end in ``_``:
    ``data_`` (:class:`InteractionData` at the cutoff), ``models_`` (:class:`CandidateModels`),
    ``booster_`` (the LightGBM ranker), ``training_`` (:class:`RankerTraining`), ``settings_``.

    People re-buy what they bought, and they also discover. Neither a pure "buy again" list nor a pure
    factorisation serves both, so the model has two stages:

    1. *Candidates* (:mod:`training.recommend.candidates`): the customer's own items, ALS
       (``implicit``, BM25-weighted decayed purchases), item-item KNN (``implicit``'s BM25 similarity),
       TIFU-KNN (time-decayed basket frequencies blended with the nearest customers') and the items
       with the most buyers in the last 30 days, each pair described by 22 features: how often and how
       recently the customer bought the item, the customer's activity, the item's popularity and
       trend, and the models' scores and ranks.
    2. *Ranking*: a LightGBM learning-to-rank model (``rank_xendcg``, the cross-entropy bound of
       NDCG: on Online Retail II the quality of ``lambdarank`` with fewer trees and less training
       time, as the README reports) orders each customer's candidates. It learns the mix between
       repurchase and discovery from data, on a *label period* that never overlaps the evaluation:
       for a model as of cutoff ``c``, the candidate models are fitted on the history before
       ``c - label_days``, the ranker learns which of their candidates the customers bought in
       ``[c - label_days, c)`` (early stopping on a fifth of those customers, NDCG@20), then the
       candidate models are refitted on everything before ``c`` and the ranker is kept.

    The ranking stage can also be a rule (:data:`RANKERS`): personal top frequency (the customer's
    items by number of orders, then the popular list) or TIFU-KNN's score. A rule model is fitted,
    saved, served and explained exactly as the blend, so that a baseline that wins on validation is
    what the service serves (:meth:`RecommenderModel.with_ranker`).
    """

    def __init__(self, settings: RecommenderSettings | None = None) -> None:
        self.settings = settings or RecommenderSettings()

    # --- fit ------------------------------------------------------------------------------------

    def fit(
        self,
        backend: ibis.BaseBackend,
        as_of: datetime,
        *,
        progress: Callable[[str], None] | None = None,
    ) -> RecommenderModel:
        """Learn the ranker on the label period before ``as_of`` and fit the candidate models on
        everything before ``as_of`` (the protocol is the class docstring's).

        Parameters
        ----------
        backend
            The store.
        as_of
            The cutoff: nothing on or after it is seen.
        progress
            Called with each step's line of text, if given.

        Returns
        -------
        RecommenderModel
            ``self``, fitted.
        """
        settings = self.settings

        step = reporter(logger, progress)

        as_of = utc_naive(as_of)
        label_start = as_of - timedelta(days=settings.label_days)
        step(f"interactions before {label_start:%Y-%m-%d} (ranker features)")
        before = self.interaction_data(backend, label_start)
        relevant = purchases_between(backend, label_start, as_of)
        step(f"interactions before {as_of:%Y-%m-%d} (final candidate models)")
        data = self.interaction_data(backend, as_of)
        return self.fit_data(before, relevant, data, progress=progress)

    def fit_data(
        self,
        before: InteractionData,
        relevant: Mapping[int, set[str]],
        data: InteractionData,
        *,
        models_before: CandidateModels | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> RecommenderModel:
        """:meth:`fit` on prepared arrays: ``before`` is the history at the start of the label period,
        ``relevant`` what customers bought in it (customer id -> item ids), ``data`` the history at
        the cutoff (its end). ``models_before``: the candidate models already fitted on ``before``
        with these settings (a model fitted as of ``before.as_of`` has them as ``models_``), so that
        they are not fitted twice."""
        settings = self.settings

        step = reporter(logger, progress)

        if not before.as_of < data.as_of:
            raise RecommenderInputError(f"the label period must start ({before.as_of}) before the cutoff ({data.as_of})")
        if models_before is None:
            step("candidate models for the label period")
            models_before = fit_candidate_models(before, settings)
        booster: lgb.Booster | None = None
        training: RankerTraining | None = None
        if settings.ranker == "lightgbm":
            step("ranker on the label period")
            booster, training = _fit_ranker(before, models_before, relevant, settings, before.as_of, data.as_of)
        step("final candidate models")
        self.data_ = data
        # ALS starts from the label period's factors: a few iterations move them to the cutoff.
        self.models_ = fit_candidate_models(data, settings, warm_start=(before, models_before))
        self.booster_ = booster
        self.training_ = training
        self.settings_ = settings
        return self

    def interaction_data(self, backend: ibis.BaseBackend, as_of: datetime) -> InteractionData:
        """The history as of ``as_of`` with this model's decay and browse settings."""
        s = self.settings
        return build_interaction_data(backend, as_of, half_life_days=s.half_life_days,
                                      short_half_life_days=s.short_half_life_days, browse_weight=s.browse_weight,
                                      tifu=s.tifu_decay)

    def with_ranker(self, ranker: str, **settings: Any) -> RecommenderModel:
        """A fitted model on the same history and candidate models that orders its candidates with
        ``ranker`` (one of :data:`RANKERS`; a rule for anything but ``lightgbm``, whose ranker this
        model must have), with other settings replaced (e.g. TIFU-KNN's k and alpha, which only
        change the scoring)."""
        self._check_fitted()
        if ranker == "lightgbm" and self.booster_ is None:
            raise RecommenderInputError("this model has no LightGBM ranker to order candidates with")
        out = RecommenderModel(replace(self.settings_, ranker=ranker, **settings))
        out.data_, out.models_, out.settings_ = self.data_, self.models_, out.settings
        out.booster_ = self.booster_ if ranker == "lightgbm" else None
        out.training_ = self.training_ if ranker == "lightgbm" else None
        return out

    def refitted_on(self, data: InteractionData) -> RecommenderModel:
        """This model's ranker (or rule) with its candidate models refitted on ``data``, a later
        history (ALS warm-started from this model's factors): the configuration that was judged,
        brought up to date without learning its ranking again."""
        self._check_fitted()
        if not self.data_.as_of < data.as_of:
            raise RecommenderInputError(f"the history to refit on ({data.as_of}) must be later than the model's "
                                        f"({self.data_.as_of})")
        out = RecommenderModel(self.settings_)
        out.data_ = data
        out.models_ = fit_candidate_models(data, self.settings_, warm_start=(self.data_, self.models_))
        out.booster_, out.training_, out.settings_ = self.booster_, self.training_, self.settings_
        return out

    def _check_fitted(self) -> None:
        if not hasattr(self, "settings_"):
            raise NotFittedError("this RecommenderModel is not fitted yet: call fit() first")

    # --- filters --------------------------------------------------------------------------------

    def _memo(self) -> dict[Any, Any]:
        """Per-fit cache of what requests share (filter masks, popular lists); emptied by a new fit."""
        memo = self.__dict__.get("_memo_")
        if memo is None or memo.get("data") is not self.data_:
            memo = self.__dict__["_memo_"] = {"data": self.data_}
        return memo

    def _category_mask(self, categories: Iterable[str] | None, exclude_categories: Iterable[str] | None) -> BoolArray:
        """Recommendable items in ``categories`` and not in ``exclude_categories``: computed once per
        filter and shared (read-only) by the requests that ask for it."""
        key = ("allowed",
               None if categories is None else tuple(sorted({str(c).lower() for c in categories})),
               None if exclude_categories is None else tuple(sorted({str(c).lower() for c in exclude_categories})))
        memo = self._memo()
        mask = memo.get(key)
        if mask is None:
            data = self.data_
            mask = data.recommendable.copy()
            if key[1] is not None:
                mask &= data.in_categories(key[1])
            if key[2] is not None:
                mask &= ~data.in_categories(key[2])
            mask.flags.writeable = False
            if len(memo) < 1000:  # a bounded cache: callers may send any combination of categories
                memo[key] = mask
        return mask

    def _allowed(self, categories: Iterable[str] | None, exclude_categories: Iterable[str] | None,
                 exclude_items: Iterable[Hashable] | None) -> BoolArray:
        mask = self._category_mask(categories, exclude_categories)
        if exclude_items is not None:
            items = list(exclude_items)
            if items:
                pos, known = self.data_.item_positions(items)
                mask = mask.copy()
                mask[pos[known]] = False
        return mask

    def allowed_items(
        self,
        *,
        categories: Iterable[str] | None = None,
        exclude_categories: Iterable[str] | None = None,
        exclude_items: Iterable[Hashable] | None = None,
    ) -> BoolArray:
        """Mask of the items that may be recommended: recommendable (active products), in
        ``categories`` when given (case-insensitive), not in ``exclude_categories``, not in
        ``exclude_items``."""
        self._check_fitted()
        return self._allowed(categories, exclude_categories, exclude_items).copy()

    def _keep_owned(self) -> BoolArray | None:
        categories = self.settings_.repurchasable_categories
        if not categories:
            return None
        memo = self._memo()
        if "keep_owned" not in memo:
            memo["keep_owned"] = self.data_.in_categories(categories)
        return memo["keep_owned"]

    def _popular(self, channel: str | None, country: str | None) -> tuple[IntArray, FloatArray, str]:
        key = ("popular", None if channel is None else str(channel).lower(),
               None if country is None else str(country).lower())
        memo = self._memo()
        found = memo.get(key)
        if found is None:
            found = self.data_.popular_with_counts(channel=channel, country=country)
            if len(memo) < 1000:
                memo[key] = found
        return found

    # --- recommend ------------------------------------------------------------------------------

    def _resolve(self, options: RecommendOptions) -> _Resolved:
        """What every list of one call shares, resolved once: where each option enters the
        candidates (the item mask, the popular source; ``exclude_purchased`` in :meth:`_candidates`)."""
        self._check_fitted()
        return _Resolved(options=options,
                         allowed=self._allowed(options.categories, options.exclude_categories, options.exclude_items),
                         keep_owned=self._keep_owned(), popular=self._popular(options.channel, options.country)[0])

    def recommend(
        self,
        customer_ids: Hashable | Sequence[Hashable],
        n: int = 20,
        *,
        exclude_purchased: bool = True,
        categories: Iterable[str] | None = None,
        exclude_categories: Iterable[str] | None = None,
        exclude_items: Iterable[Hashable] | None = None,
        channel: str | None = None,
        country: str | None = None,
        recent_items: Mapping[Hashable, Sequence[Hashable]] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> pd.DataFrame:
        """Top-``n`` items of each customer, one row per (customer, rank): :data:`RECOMMENDATION_COLUMNS`
        (:meth:`rank`'s rows as a DataFrame; the keywords are those of :class:`RecommendOptions`).

        ``exclude_purchased`` drops what the customer bought (except repurchasable categories);
        ``categories`` / ``exclude_categories`` / ``exclude_items`` filter every list;
        ``channel`` / ``country`` choose the popular list of an unknown customer;
        ``recent_items`` (customer id -> item ids) folds in customers unknown to the model. A customer
        with fewer allowed candidates than ``n`` gets a shorter list; ``fallback`` is true for
        customers served the popular list. ``progress(done, total)`` is called after each block.
        """
        self._check_fitted()
        # The options turn any iterable of values into a tuple (and refuse a lone string) themselves.
        lists: dict[str, Any] = {"categories": categories, "exclude_categories": exclude_categories,
                                 "exclude_items": exclude_items}
        options = RecommendOptions(n, exclude_purchased=exclude_purchased, channel=channel, country=country, **lists)
        return self.rank(customer_ids, options, recent_items=recent_items, progress=progress).frame(self.data_.item_ids)

    def rank(
        self,
        customer_ids: Hashable | Iterable[Hashable],
        options: RecommendOptions | None = None,
        *,
        recent_items: Mapping[Hashable, Sequence[Hashable]] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Ranked:
        """The top ``options.n`` items of one customer or many under ``options`` (default:
        :class:`RecommendOptions`' defaults), as :class:`Ranked` columns (item positions;
        :meth:`Ranked.records` gives the item ids): the rows of :meth:`recommend`, without a DataFrame.

        Entries come grouped by customer in the order asked, by rank within each
        (:meth:`Ranked.by_customer` splits them); :meth:`knows` tells which customers the model
        knows. ``recent_items`` (customer id -> item ids) folds in customers unknown to the model;
        ``progress(done, total)`` is called after each block. Known customers are ranked in blocks
        of :data:`BLOCK_CUSTOMERS`, side by side on the model's threads; one customer is a block of
        one, scored on one thread (the service's call).

        It is the one scoring path of batch lists, the CLI and the service (:meth:`recommend` is its
        DataFrame): the options of a call are applied while candidates are generated (recommendable
        items only; already purchased items excluded by default, except categories marked
        repurchasable; category include / exclude; the caller's exclusions), an unknown customer gets
        the popular items of their channel or country (a flagged fallback), and an unknown customer
        with a few recent items gets an ALS fold-in (``recalculate_user``) on them, ranked by the same
        code. Each item comes with its source (``repurchase``, ``model`` or ``popularity``) and a
        reason in words ("because you bought X").

        Parameters
        ----------
        customer_ids
            One customer id or many.
        options
            The filters and list length; :class:`RecommendOptions`' defaults when None.
        recent_items
            Customer id -> item ids, for customers unknown to the model.
        progress
            ``progress(done, total)``, called after each block.

        Returns
        -------
        Ranked
            The entries, grouped by customer in the order asked, by rank within each.
        """
        resolved = self._resolve(RecommendOptions() if options is None else options)
        data = self.data_
        ids = _customer_ids(customer_ids)
        rows, known = data.user_positions(ids)
        parts: list[Ranked] = []
        known_at = np.flatnonzero(known)
        done = 0
        blocks = [known_at[start : start + BLOCK_CUSTOMERS] for start in range(0, len(known_at), BLOCK_CUSTOMERS)]
        threads = min(self.settings_.num_threads, len(blocks))

        def rank(at: IntArray) -> Ranked:
            block = UserBlock.of_users(data, rows[at], self.models_.user_factors)
            # Blocks run side by side on the threads: each scores on one thread of its own.
            return self._rank_block(block, ids[at], resolved, scoring_threads=1 if threads > 1 else None)

        for at, ranked in zip(blocks, _side_by_side(rank, blocks, threads)):
            parts.append(ranked)
            done += len(at)
            if progress:
                progress(done, len(ids))
        recent = {_customer_id(k): v for k, v in (recent_items or {}).items()}
        for i in np.flatnonzero(~known):
            parts.append(self._unknown(int(ids[i]), resolved, recent.get(int(ids[i]), ())))
        if progress and len(known_at) < len(ids):
            progress(len(ids), len(ids))
        out = Ranked.concat(parts)
        if not known.all():
            # Known customers come block by block in the order asked; put the others back in place
            # (each customer at the first place it was asked).
            unique, first = np.unique(ids, return_index=True)
            position = first[np.searchsorted(unique, out.customer_id)]
            out = out.take(np.argsort(position, kind="stable"))
        return out

    def knows(self, customer_ids: Hashable | Sequence[Hashable]) -> BoolArray:
        """Whether the model knows each customer's history (else :meth:`rank` folds them in on their
        recent items or serves the popular list)."""
        self._check_fitted()
        return self.data_.user_positions(_customer_ids(customer_ids))[1]

    def ranked_items(self, customer_ids: Iterable[Hashable], rankers: Sequence[str],
                     options: Sequence[RecommendOptions]) -> dict[tuple[str, RecommendOptions], tuple[IntArray, IntArray]]:
        """The top items of known customers under several rankers (of :data:`RANKERS`) and options,
        from one candidate generation per block of customers and options: per ``(ranker, options)``,
        ``(customer ids, item positions)`` grouped by customer in the order asked and by rank within
        each customer: the items and order of :meth:`rank` of :meth:`with_ranker`, without its
        scores, sources and reasons.

        The candidates are those of the ranker reading the most sources; a rule ranks the ones its
        own sources proposed (:data:`_RULE_SOURCES`): the very pairs, with the same features and in the
        same order, that its own candidate generation gives (every source's list is cut on its own).
        The item-KNN and TIFU-KNN scores of a block are computed once for all the options. An
        evaluation of the servable configurations then costs about one of them."""
        self._check_fitted()
        unknown_rankers = [r for r in rankers if r not in RANKERS]
        if unknown_rankers:
            raise ValueError(f"ranker(s) {', '.join(map(repr, unknown_rankers))} unknown; expected {', '.join(RANKERS)}")
        if "lightgbm" in rankers and self.booster_ is None:
            raise RecommenderInputError("this model has no LightGBM ranker to order candidates with")
        resolved = {option: self._resolve(option) for option in options}
        data = self.data_
        ids = _customer_ids(customer_ids)
        rows, known = data.user_positions(ids)
        if not known.all():
            raise RecommenderInputError(f"{int((~known).sum()):,} of the customers are unknown to the model: "
                                        "ranked_items ranks known customers only")
        # The union of the rankers' sources (all of them for the blend).
        used = {name for r in rankers for name in _RULE_SOURCES.get(r, self.settings_.candidates.__dict__)}
        sizes = CandidateSizes(**{name: (size if name in used else 0)
                                  for name, size in self.settings_.candidates.__dict__.items()})
        flags = {r: sum(_SOURCE_FLAGS[name] for name in _RULE_SOURCES[r]) for r in rankers if r in _RULE_SOURCES}
        blocks = [np.arange(start, min(start + BLOCK_CUSTOMERS, len(ids))) for start in range(0, len(ids), BLOCK_CUSTOMERS)]
        threads = min(self.settings_.num_threads, len(blocks))

        def rank(at: IntArray) -> dict[tuple[str, RecommendOptions], tuple[IntArray, IntArray]]:
            block = UserBlock.of_users(data, rows[at], self.models_.user_factors)
            scores = source_scores(block, similarity=self.models_.similarity, sizes=sizes,
                                   tifu=self.models_.tifu(self.settings_))
            out = {}
            for option, resolved_option in resolved.items():
                found = self._candidates(block, resolved_option, sizes, scores)
                for ranker in rankers:
                    mine = found
                    if ranker in flags:
                        keep = (found.sources & flags[ranker]) != 0
                        mine = Candidates(found.row[keep], found.item[keep], found.sources[keep], found.x[keep])
                    if len(mine) == 0:
                        ranked = np.empty(0)
                    elif ranker == "lightgbm":
                        ranked = self._score(mine, 1 if threads > 1 else None)
                    else:
                        ranked = rule_scores(mine, ranker)
                    top, _, _ = self._top(mine, ranked, option.n)
                    out[ranker, option] = (ids[at][mine.row[top]], mine.item[top])
            return out

        parts = list(_side_by_side(rank, blocks, threads))
        empty = np.empty(0, dtype=np.int64)
        return {key: (np.concatenate([p[key][0] for p in parts]) if parts else empty,
                      np.concatenate([p[key][1] for p in parts]) if parts else empty)
                for key in ((r, o) for r in rankers for o in resolved)}

    def _unknown(self, customer: int, resolved: _Resolved, recent: Sequence[Hashable]) -> Ranked:
        """A customer the model does not know: a fold-in on their recent items, else the popular list."""
        block = self._folded_in(recent)
        if block is None:
            return self._popular_list(customer, resolved)
        return self._rank_block(block, np.asarray([customer], dtype=np.int64), resolved)

    def _folded_in(self, items: Sequence[Hashable]) -> UserBlock | None:
        if not items:
            return None
        pos, known = self.data_.item_positions(list(items))
        if not known.any():
            return None
        block = UserBlock.folded_in(self.data_.n_items, pos[known], np.zeros(self.models_.item_factors.shape[1]),
                                    tifu_weight=self.settings_.tifu_decay.basket_weight)
        weighted = _bm25_rows(block.weight, self.models_.als_idf, self.models_.als_mean_row_weight,
                              self.settings_.bm25_k1, self.settings_.bm25_b)
        als = self._als_object()
        with threadpool_limits(1, "blas"):
            factors = als.recalculate_user(0, weighted.astype(np.float32))
        return replace(block, factors=np.asarray(factors, dtype=np.float32).reshape(1, -1))

    def _als_object(self) -> Any:
        als = _als(self.settings_, 1)
        als.item_factors = self.models_.item_factors
        als.user_factors = self.models_.user_factors
        return als

    def _score(self, found: Candidates, threads: int | None = None) -> FloatArray:
        if len(found) == 0:
            return np.empty(0)
        if self.booster_ is None:
            return rule_scores(found, self.settings_.ranker)
        if threads is None:
            # LightGBM's OpenMP threads cost milliseconds to wake up: one thread for a single request.
            threads = self.settings_.num_threads if len(found) >= PARALLEL_SCORING_ROWS else 1
        return np.asarray(self.booster_.predict(found.x, num_threads=threads), dtype=np.float64)

    def _candidates(self, block: UserBlock, resolved: _Resolved, sizes: CandidateSizes,
                    scores: tuple[sparse.csr_matrix, sparse.csr_matrix] | None = None) -> Candidates:
        return candidates(self.data_, block, item_index=self.models_.item_index, similarity=self.models_.similarity,
                          sizes=sizes, allowed=resolved.allowed, exclude_owned=resolved.options.exclude_purchased,
                          keep_owned=resolved.keep_owned, popular=resolved.popular,
                          tifu=self.models_.tifu(self.settings_), scores=scores)

    @staticmethod
    def _top(found: Candidates, scores: FloatArray, n: int) -> tuple[IntArray, IntArray, FloatArray]:
        """Each row's ``n`` best candidates: their places in ``found`` (by row, then rank), 0-based
        ranks and the scores as ranked."""
        # Scores in float32 precision, as they are ranked: candidates come in (row, item) order, so a
        # tie goes to the lower item position.
        scores = scores.astype(np.float32).astype(np.float64)
        order = row_score_order(found.row, scores)
        rank = ranks_in_rows(found.row[order])
        at = order[rank < n]
        return at, rank[rank < n], scores[at]

    def _rank_block(self, block: UserBlock, customer_ids: IntArray, resolved: _Resolved, *,
                    scoring_threads: int | None = None) -> Ranked:
        found = self._candidates(block, resolved, self.settings_.ranked_candidates)
        at, rank, score = self._top(found, self._score(found, scoring_threads), resolved.options.n)
        row, item, sources = found.row[at], found.item[at], found.sources[at]
        source = np.asarray(SOURCES, dtype=object)[np.where(sources & SOURCE_OWN, 0, np.where(
            sources & (SOURCE_ALS | SOURCE_KNN | SOURCE_TIFU), 1, 2))]
        reasons = self._reasons(block, row, item, sources, found, at)
        return Ranked(customer_id=customer_ids[row].astype(np.int64), rank=(rank + 1).astype(np.int64), item=item,
                      score=score, source=source, reason=reasons, fallback=np.zeros(len(row), dtype=bool))

    def _reasons(self, block: UserBlock, row: IntArray, item: IntArray, sources: NDArray[np.int8],
                 found: Candidates, at: IntArray) -> NDArray[np.object_]:
        """Words for each recommended pair, by its source: the repurchase history; for an item-KNN
        candidate the bought item that makes its score (the largest ``weight[u, j] * similarity[j,
        i]``, the first such item on a tie); for ALS and TIFU-KNN the similar customers; else (the
        popular source alone) its popularity. "because you bought" is only ever said of an item the
        item-KNN source proposed."""
        data = self.data_
        out = np.empty(len(row), dtype=object)
        purchases = found.feature("purchases")[at]
        days = found.feature("days_since_purchase")[at]
        own = np.flatnonzero(sources & SOURCE_OWN)
        if len(own):
            # One sentence per distinct (times, days): written once, shared by every pair that says it.
            times = purchases[own].astype(np.int64)
            ago = np.where(np.isfinite(days[own]), days[own], -1.0).astype(np.int64)
            combos, inverse = np.unique(np.stack([times, ago], axis=1), axis=0, return_inverse=True)
            texts = np.asarray([f"you bought it {t} time{'s' if t != 1 else ''}"
                                + ("" if d < 0 else f", last {d} days ago") for t, d in combos.tolist()], dtype=object)
            out[own] = texts[inverse.ravel()]
        rest = np.flatnonzero(~(sources & SOURCE_OWN).astype(bool) & (sources & SOURCE_KNN).astype(bool))
        # Every (pair, item the customer has) at once: its share of the pair's KNN score.
        weight = block.weight
        starts, stops = weight.indptr[row[rest]], weight.indptr[row[rest] + 1]
        lengths = (stops - starts).astype(np.int64)
        pair = np.repeat(np.arange(len(rest), dtype=np.int64), lengths)
        offsets = np.cumsum(lengths) - lengths
        entry = np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
        bought, w = weight.indices[entry].astype(np.int64), weight.data[entry]
        keys = bought * data.n_items + item[rest][pair]
        sim_keys = self.models_.similarity_keys
        best_item = np.full(len(rest), -1, dtype=np.int64)
        if len(sim_keys) and len(keys):
            # Sorted needles: numpy's binary searches then walk the 5-million-entry array in order.
            ascending = np.argsort(keys)
            at_key = np.empty(len(keys), dtype=np.int64)
            at_key[ascending] = np.minimum(np.searchsorted(sim_keys, keys[ascending]), len(sim_keys) - 1)
            share = np.where(sim_keys[at_key] == keys, self.models_.similarity.data[at_key], 0.0) * w
            # A pair's entries come by bought item: on a tie, the lower one explains the pair.
            order = row_score_order(pair, share)
            first = order[np.r_[True, pair[order][1:] != pair[order][:-1]]]
            positive = share[first] > 0
            best_item[pair[first][positive]] = bought[first][positive]
        because, popular = self._item_sentences()
        has = best_item >= 0
        out[rest[has]] = because[best_item[has]]
        others = np.flatnonzero(out == None)  # noqa: E711 (an elementwise test of the object array)
        alike = (sources[others] & (SOURCE_ALS | SOURCE_KNN | SOURCE_TIFU)).astype(bool)
        out[others[alike]] = "customers with similar purchases bought it"
        out[others[~alike]] = popular[item[others[~alike]]]
        return out

    def _item_sentences(self) -> tuple[NDArray[np.object_], NDArray[np.object_]]:
        """Per item, once per fit: "because you bought <item>" and "popular: <n> buyers in the last 30 days"."""
        memo = self._memo()
        if "sentences" not in memo:
            data = self.data_
            memo["sentences"] = (
                np.asarray([f"because you bought {_label(data, j)}" for j in range(data.n_items)], dtype=object),
                np.asarray([f"popular: {int(b):,} buyers in the last 30 days" for b in data.buyers_30d], dtype=object))
        return memo["sentences"]

    def _popular_list(self, customer: int, resolved: _Resolved) -> Ranked:
        """The cold-start list: the segment's popular items, topped up with the overall ones; score
        1 / rank, the popularity in the reason."""
        n, allowed = resolved.options.n, resolved.allowed
        items, counts, what = self._popular(resolved.options.channel, resolved.options.country)
        keep = allowed[items]
        items, counts = items[keep][:n], counts[keep][:n]
        reasons = [f"popular: {int(c):,} {what}" for c in counts]
        if len(items) < n:
            overall, overall_counts, overall_what = self._popular(None, None)
            extra = allowed[overall] & ~np.isin(overall, items)
            more, more_counts = overall[extra][: n - len(items)], overall_counts[extra][: n - len(items)]
            reasons += [f"popular: {int(c):,} {overall_what}" for c in more_counts]
            items = np.concatenate([items, more])
        k = len(items)
        return Ranked(
            customer_id=np.full(k, customer, dtype=np.int64),
            rank=np.arange(1, k + 1, dtype=np.int64),
            item=items.astype(np.int64),
            # 1 / rank: the counts behind the order are in the reasons (a segment's and the overall
            # list count different things, so they cannot be one score).
            score=1.0 / np.arange(1, k + 1, dtype=np.float64),
            source=np.full(k, "popularity", dtype=object),
            reason=np.asarray(reasons, dtype=object),
            fallback=np.ones(k, dtype=bool),
        )

    # --- product pages --------------------------------------------------------------------------

    def similar_items(self, item_id: Hashable, n: int = 10, *, categories: Iterable[str] | None = None,
                      exclude_categories: Iterable[str] | None = None,
                      exclude_items: Iterable[Hashable] | None = None) -> pd.DataFrame:
        """Items bought by the customers who bought ``item_id`` (item-KNN similarity), topped up with
        ALS neighbours (cosine of the item factors) when it has fewer than ``n``. Columns ``rank``,
        ``item_id``, ``score``, ``source`` (``co-purchase`` or ``model``). ``KeyError`` for an item the
        model does not know."""
        self._check_fitted()
        n = checked_n(n)
        pos, known = self.data_.item_positions([item_id])
        if not known[0]:
            raise KeyError(f"item {item_id!r} is not known to the recommender")
        i = int(pos[0])
        allowed = self.allowed_items(categories=categories, exclude_categories=exclude_categories,
                                     exclude_items=exclude_items)
        allowed[i] = False
        sim = self.models_.similarity
        neighbours = sim.indices[sim.indptr[i] : sim.indptr[i + 1]].astype(np.int64)
        values = sim.data[sim.indptr[i] : sim.indptr[i + 1]]
        keep = allowed[neighbours] & (values > 0)
        order = np.lexsort((neighbours[keep], -values[keep]))[:n]
        items, scores = list(neighbours[keep][order]), list(values[keep][order])
        sources = ["co-purchase"] * len(items)
        if len(items) < n:
            factors = self.models_.item_factors.astype(np.float64)
            norms = np.linalg.norm(factors, axis=1)
            cosine = factors @ factors[i] / np.where(norms * norms[i] > 0, norms * norms[i], 1.0)
            cosine[~allowed] = -np.inf
            cosine[items] = -np.inf
            extra = np.argsort(-cosine, kind="stable")[: n - len(items)]
            extra = extra[np.isfinite(cosine[extra]) & (cosine[extra] > 0)]  # only items that are alike
            items += list(extra)
            scores += list(cosine[extra])
            sources += ["model"] * len(extra)
        return pd.DataFrame({"rank": np.arange(1, len(items) + 1, dtype=np.int64),
                             Col.ITEM_ID: self.data_.item_ids[np.asarray(items, dtype=np.int64)],
                             "score": np.asarray(scores, dtype=np.float64),
                             "source": np.asarray(sources, dtype=object)})

    def explain(self, customer_id: Hashable, item_id: Hashable, n: int = 3) -> pd.DataFrame:
        """ALS's explanation of the customer's score for the item: the ``n`` items they bought that
        contribute most (implicit's ``explain``). Columns ``item_id``, ``contribution``. ``KeyError``
        for an unknown customer or item."""
        self._check_fitted()
        rows, known = self.data_.user_positions([_customer_id(customer_id)])
        if not known[0]:
            raise KeyError(f"customer {customer_id!r} is not known to the recommender")
        pos, iknown = self.data_.item_positions([item_id])
        if not iknown[0]:
            raise KeyError(f"item {item_id!r} is not known to the recommender")
        weighted = _bm25_rows(self.data_.weight[rows], self.models_.als_idf, self.models_.als_mean_row_weight,
                              self.settings_.bm25_k1, self.settings_.bm25_b).astype(np.float32)
        with threadpool_limits(1, "blas"):
            _, top, _ = self._als_object().explain(0, weighted, int(pos[0]), N=n)
        return pd.DataFrame({Col.ITEM_ID: [self.data_.item_ids[j] for j, _ in top],
                             "contribution": np.asarray([float(s) for _, s in top], dtype=np.float64)})


def _side_by_side(work: Callable[[IntArray], _T], blocks: Sequence[IntArray], threads: int) -> Iterator[_T]:
    """``work`` of each block, in order; on ``threads`` threads side by side when more than one."""
    with ExitStack() as stack:
        results: Iterable[_T] = map(work, blocks)
        if threads > 1:
            # Blocks side by side, each single-threaded: BLAS threads inside them would compete
            # for the same cores (the ALS top-k's products run through BLAS). numpy's products
            # and sorts and LightGBM release the GIL: blocks overlap on the cores.
            stack.enter_context(threadpool_limits(1, "blas"))
            results = stack.enter_context(ThreadPoolExecutor(max_workers=threads)).map(work, blocks)
        yield from results


# --- ranker training -------------------------------------------------------------------------------


def _fit_ranker(
    data: InteractionData,
    models: CandidateModels,
    relevant: Mapping[int, set[str]],
    settings: RecommenderSettings,
    label_start: datetime,
    label_end: datetime,
) -> tuple[lgb.Booster, RankerTraining]:
    """The LightGBM ranker on the candidates of the customers who bought something in the label period."""
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


# --- rules of thumb ------------------------------------------------------------------------------------


def rule_scores(found: Candidates, ranker: str) -> FloatArray:
    """The scores of the rule rankers of :data:`RANKERS`, larger first.

    ``top_frequency`` (P-TopFreq): an item the customer bought scores its number of orders, plus
    ``0.5 / (2 + days since its last purchase)`` so that a tie goes to the more recent; every other
    candidate scores below any of them by its place in the popular list. ``tifu_knn``: TIFU-KNN's
    score where it is positive, then the popular list the same way."""
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


# --- helpers ------------------------------------------------------------------------------------------


def _customer_ids(customer_ids: Hashable | Iterable[Hashable]) -> IntArray:
    """One customer id or many as an array (a text is one id, not its letters)."""
    values: Iterable[Hashable]
    if isinstance(customer_ids, (str, bytes)) or not isinstance(customer_ids, Iterable):
        values = [customer_ids]
    else:
        values = customer_ids
    return np.asarray([_customer_id(c) for c in values], dtype=np.int64)


def _customer_id(value: Any) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise RecommenderInputError(f"customer ids are whole numbers, got {value!r}") from None
    if isinstance(value, float) and not float(value).is_integer():
        raise RecommenderInputError(f"customer ids are whole numbers, got {value!r}")
    return out


def _label(data: InteractionData, item: int) -> str:
    name = data.name[item]
    return f"{name} ({data.item_ids[item]})" if name else str(data.item_ids[item])
