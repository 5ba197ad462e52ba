"""The recommender: :class:`RecommenderModel`, the two stages behind one scikit-learn-style model.

People re-buy what they bought, and they also discover: the model's candidates come from every
source of :mod:`training.recommend.candidates` (fitted in :mod:`training.recommend.candidate_models`)
and are ordered by :mod:`training.recommend.ranker` (LightGBM, or a rule so that a baseline that wins
on validation is served through the same code). :meth:`RecommenderModel.rank` is the one scoring
path of batch lists, the CLI and the service; :meth:`RecommenderModel.similar_items` serves product
pages (:mod:`training.recommend.similar`) and :meth:`RecommenderModel.explain` gives ALS's own
explanation of a score. :class:`RecommenderSettings` holds everything a fit depends on."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import ibis
import lightgbm as lgb
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.exceptions import NotFittedError
from threadpoolctl import threadpool_limits

from features.history import utc_naive
from features.schema import Col
from features.settings import RecommendModelSettings, check_section
from training.progress import reporter
from training.recommend.block import UserBlock
from training.recommend.candidate_models import CandidateModels, als_contributions, fit_candidate_models, fold_in
from training.recommend.candidates import BLOCK_CUSTOMERS, CANDIDATE_SOURCES, Candidates, CandidateSizes, candidates
from training.recommend.data import InteractionData, TifuDecay, build_interaction_data

# The options and their error are numpy-only too (a worker reads a request's options before the model loads).
from training.recommend.options import RecommenderInputError, RecommendOptions, checked_n
from training.recommend.ranked import Ranked
from training.recommend.ranker import RANKERS, RULE_SOURCES, RankerTraining, candidate_scores, fit_ranker, rule_scores
from training.recommend.reasons import ItemSentences, item_sentences, pair_reasons, popular_reason, served_sources
from training.recommend.similar import similar_items
from training.recommend.split import purchases_between
from training.recommend.topk import ranks_in_rows, row_score_order

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class _Resolved:
    """The options of one recommend call resolved against the fitted model: the items that may be
    proposed, the repurchasable ones and the popular source."""

    options: RecommendOptions
    allowed: BoolArray
    keep_owned: BoolArray | None
    popular: IntArray


#: The fields of :class:`RecommenderSettings` that are the deployment's settings
#: (``settings.recommend.model``); the candidate sizes are checked by :class:`CandidateSizes`.
_SECTION_FIELDS = tuple(name for name in RecommendModelSettings.model_fields if name != "candidates")


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
        # The deployment's settings (features.settings.RecommendModelSettings) are checked against
        # their declaration there; the others here.
        check_section(RecommendModelSettings, {name: getattr(self, name) for name in _SECTION_FIELDS},
                      "RecommenderSettings")
        checks: list[tuple[str, bool]] = [
            ("half_life_days", self.half_life_days is None or self.half_life_days > 0),
            ("short_half_life_days", self.short_half_life_days > 0),
            ("bpr_iterations", self.bpr_iterations >= 1),
            ("label_days", self.label_days >= 1),
            ("learning_rate", 0 < self.learning_rate <= 1),
            ("num_leaves", self.num_leaves >= 2),
            ("min_child_samples", self.min_child_samples >= 1),
            ("early_stopping_rounds", self.early_stopping_rounds >= 1),
            ("num_threads", self.num_threads >= 1),
            ("ranker", self.ranker in RANKERS),
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
        used = RULE_SOURCES.get(self.ranker)
        return self.candidates if used is None else self.candidates.only(used)

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
            booster, training = fit_ranker(before, models_before, relevant, settings, before.as_of, data.as_of)
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
        own sources proposed (:data:`~training.recommend.ranker.RULE_SOURCES`): the very pairs, with the same features and in the
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
        used = {name for r in rankers for name in RULE_SOURCES.get(r, tuple(CANDIDATE_SOURCES))}
        sizes = self.settings_.candidates.only(used)
        blocks = [np.arange(start, min(start + BLOCK_CUSTOMERS, len(ids))) for start in range(0, len(ids), BLOCK_CUSTOMERS)]
        threads = min(self.settings_.num_threads, len(blocks))

        def rank(at: IntArray) -> dict[tuple[str, RecommendOptions], tuple[IntArray, IntArray]]:
            block = UserBlock.of_users(data, rows[at], self.models_.user_factors)
            # Item-KNN's and TIFU-KNN's scores of the block, shared by the options' candidates.
            shared: dict[str, Any] = {}
            out = {}
            for option, resolved_option in resolved.items():
                found = self._candidates(block, resolved_option, sizes, shared)
                for ranker in rankers:
                    mine = found
                    if ranker in RULE_SOURCES:
                        keep = found.proposed_by(RULE_SOURCES[ranker])
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
        return fold_in(self.models_, self.settings_, pos[known])

    def _score(self, found: Candidates, threads: int | None = None) -> FloatArray:
        return candidate_scores(found, self.booster_, self.settings_.ranker, self.settings_.num_threads, threads)

    def _candidates(self, block: UserBlock, resolved: _Resolved, sizes: CandidateSizes,
                    shared: dict[str, Any] | None = None) -> Candidates:
        return candidates(self.data_, block, item_index=self.models_.item_index, similarity=self.models_.similarity,
                          sizes=sizes, allowed=resolved.allowed, exclude_owned=resolved.options.exclude_purchased,
                          keep_owned=resolved.keep_owned, popular=resolved.popular,
                          tifu=self.models_.tifu(self.settings_), shared=shared)

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
        row, item = found.row[at], found.item[at]
        reasons = pair_reasons(self.data_, self.models_, block, found, at, self._item_sentences())
        return Ranked(customer_id=customer_ids[row].astype(np.int64), rank=(rank + 1).astype(np.int64), item=item,
                      score=score, source=served_sources(found.sources[at]), reason=reasons,
                      fallback=np.zeros(len(row), dtype=bool))

    def _item_sentences(self) -> ItemSentences:
        """Per item, once per fit: "because you bought <item>" and its popularity in the last 30 days."""
        memo = self._memo()
        if "sentences" not in memo:
            memo["sentences"] = item_sentences(self.data_)
        sentences: ItemSentences = memo["sentences"]
        return sentences

    def _popular_list(self, customer: int, resolved: _Resolved) -> Ranked:
        """The cold-start list: the segment's popular items, topped up with the overall ones; score
        1 / rank, the popularity in the reason."""
        n, allowed = resolved.options.n, resolved.allowed
        items, counts, what = self._popular(resolved.options.channel, resolved.options.country)
        keep = allowed[items]
        items, counts = items[keep][:n], counts[keep][:n]
        reasons = [popular_reason(c, what) for c in counts]
        if len(items) < n:
            overall, overall_counts, overall_what = self._popular(None, None)
            extra = allowed[overall] & ~np.isin(overall, items)
            more, more_counts = overall[extra][: n - len(items)], overall_counts[extra][: n - len(items)]
            reasons += [popular_reason(c, overall_what) for c in more_counts]
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
        items, scores, sources = similar_items(self.models_, i, allowed, n)
        return pd.DataFrame({"rank": np.arange(1, len(items) + 1, dtype=np.int64),
                             Col.ITEM_ID: self.data_.item_ids[items], "score": scores, "source": sources})

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
        items, contributions = als_contributions(self.models_, self.settings_, self.data_.weight[rows], int(pos[0]), n)
        return pd.DataFrame({Col.ITEM_ID: list(self.data_.item_ids[items]), "contribution": contributions})


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
