"""The service's in-memory state and answers, without HTTP: a loaded bundle, the identity index and
one function per endpoint. :mod:`serving.service` wraps it in BentoML; tests call it directly too.

Scores are the rows of ``rapport score`` stored in the bundle at export, lists come from the code path
of ``rapport recommend``, so the service and the batch files agree; no lookup touches a database
(:class:`Runtime` says how)."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.schema import Col
from features.settings import Settings
from serving import schemas
from serving.lookup import (
    IdentityIndex,
    Lookups,
    Outcome,
    RequestError,
    bundle_directory,
    unknown_customers,
    worker_count,
)
from training.bundle import Bundle, BundleError, load_bundle
from training.recommend.model import RecommenderInputError
from training.recommend.options import RecommendOptions
from training.score_table import ScoreTable
from training.scoring import score_rows

log = logging.getLogger(__name__)


class Runtime:
    """The loaded bundle and the answers of every endpoint (plain Python objects in, pydantic out).

    The answers that are lookups (default lists, raw keys, ``info``, error bodies) are those of its
    :class:`serving.lookup.Lookups` (the service passes the ones its worker answered with while this
    was loading).

    Lookups never touch a database: customers by id are rows of the snapshot (pandas index) and of
    the recommender's sorted id array; raw keys are hashed with the deployment's salt
    (:func:`features.identity.hash_key`) and found by binary search in
    :class:`serving.lookup.IdentityIndex`, the identity map as sorted 64-bit words (24 bytes a key).
    Scores are the rows :func:`training.scoring.score_chunks` wrote into the bundle at export
    (:mod:`training.score_table`: customer ids to rows by binary search, no model called); a bundle
    written before them is scored per request with :func:`training.scoring.score_rows`. Lists come
    from ``RecommenderModel.recommend``. A request for a known customer's plain list (no filter, ``n``
    within the bundle's ``serving.default_lists``) is a lookup in the lists the same model ranked at
    export (:mod:`training.recommend.precomputed`)."""

    def __init__(self, bundle: Bundle, settings: Settings, lookups: Lookups | None = None) -> None:
        self.bundle = bundle
        self.settings = settings
        # The worker's lookups read the map already (from its columns) unless the bundle's is Parquet.
        found = None if lookups is None else lookups.identity
        self.identity = found if found is not None else IdentityIndex(bundle.identity)
        if lookups is None:
            lookups = Lookups(bundle.manifest, settings, customer_ids=bundle.recommender.data_.customer_ids,
                              item_ids=bundle.recommender.data_.item_ids, default_lists=bundle.default_lists,
                              identity=self.identity, scores=bundle.scores)
        elif lookups.identity is None:
            lookups.identity = self.identity
        self.lookups = lookups
        self.versions = lookups.versions
        self.snapshot_date = lookups.snapshot_date
        self.metadata = lookups.metadata
        self._score_versions = {"clv": self.versions["clv"], "churn": self.versions["churn"]}
        self._customers_index = None if bundle.snapshot is None else bundle.snapshot.customers.index

    @classmethod
    def from_directory(cls, directory: Path | str, settings: Settings, lookups: Lookups | None = None) -> Runtime:
        """The runtime of the bundle in ``directory``; its scoring snapshot is read only when the
        bundle has no score rows (hundreds of megabytes a worker at a million customers otherwise)."""
        if lookups is None:
            return cls(load_bundle(directory), settings)
        return cls(load_bundle(directory, snapshot=lookups.scores is None), settings, lookups)

    # --- lookups ----------------------------------------------------------------------------------

    def resolve_key(self, key: schemas.RawKey) -> int | None:
        return self.lookups.resolve_key(key)

    # --- endpoints --------------------------------------------------------------------------------

    def recommend(self, request: schemas.RecommendRequest) -> tuple[schemas.RecommendResponse, Outcome]:
        answer = self.recommend_many([request])[0]
        if isinstance(answer, RequestError):
            raise answer
        return answer

    def listed(self, request: schemas.RecommendRequest,
               options: RecommendOptions | None = None) -> tuple[schemas.RecommendResponse, Outcome] | RequestError | None:
        """:meth:`serving.lookup.Lookups.listed`."""
        return self.lookups.listed(request, options)

    def recommend_many(
        self, requests: Sequence[schemas.RecommendRequest],
    ) -> list[tuple[schemas.RecommendResponse, Outcome] | RequestError]:
        """Answers of several recommend requests, in order (a :class:`RequestError` for a request that
        gets a 4xx). Requests with equal options (:class:`RecommendOptions`, the key of their group)
        are ranked together in one block: the service gathers the requests that arrive while it
        computes (see :mod:`serving.service`); each list is the one the request would get alone.
        Requests for a default list are looked up (:meth:`listed`)."""
        out: list[tuple[schemas.RecommendResponse, Outcome] | RequestError | None] = [None] * len(requests)
        groups: dict[Hashable, tuple[RecommendOptions, list[tuple[int, int]]]] = {}
        for k, request in enumerate(requests):
            try:
                options = RecommendOptions.from_request(request)
            except RecommenderInputError as exc:
                out[k] = RequestError(400, "body", str(exc))
                continue
            if (answer := self.listed(request, options)) is not None:
                out[k] = answer
                continue
            try:
                customer = request.customer_id if request.key is None else self.resolve_key(request.key)
            except RequestError as exc:
                out[k] = exc
                continue
            # An unresolved key asks for a customer no model knows: -1 is never a customer id.
            asked = -1 if customer is None else int(customer)
            # A fold-in is the request's own.
            key: Hashable = ("alone", k) if request.recent_items else options
            groups.setdefault(key, (options, []))[1].append((k, asked))
        model = self.bundle.recommender
        for options, members in groups.values():
            first = requests[members[0][0]]
            customers = list(dict.fromkeys(asked for _, asked in members))
            try:
                ranked = model.rank(customers, options,
                                    recent_items={customers[0]: first.recent_items} if first.recent_items else None)
            except RecommenderInputError as exc:
                for k, _ in members:
                    out[k] = RequestError(400, "body", str(exc))
                continue
            lists = dict(zip(customers, ranked.by_customer(customers)))
            for k, asked in members:
                out[k] = self.lookups.recommendation(asked if asked >= 0 else None, lists[asked],
                                                     self.lookups.row(asked) is not None)
        return out  # type: ignore[return-value]

    def similar_items(self, request: schemas.SimilarItemsRequest) -> schemas.SimilarItemsResponse:
        try:
            frame = self.bundle.recommender.similar_items(
                request.item_id, request.n, categories=request.categories,
                exclude_categories=request.exclude_categories, exclude_items=request.exclude_items)
        except KeyError:
            raise RequestError(404, "item_id", f"item {request.item_id!r} is not known to the recommender") from None
        except RecommenderInputError as exc:
            raise RequestError(400, "body", str(exc)) from None
        items = [schemas.SimilarItem(rank=int(r), item_id=str(i), score=float(s), source=str(src))
                 for r, i, s, src in zip(frame["rank"].tolist(), frame[Col.ITEM_ID].tolist(),
                                         frame["score"].tolist(), frame["source"].tolist())]
        return schemas.SimilarItemsResponse(item_id=request.item_id, items=items, metadata=self.metadata)

    def customer_scores(self, customer_ids: Sequence[int]) -> schemas.CustomerScoresResponse:
        """The score rows of ``customer_ids``: looked up in the bundle's (:meth:`Lookups.customer_scores`),
        or, in a bundle written before them, recomputed (:meth:`recomputed_scores`)."""
        if self.lookups.scores is not None:
            return self.lookups.customer_scores(customer_ids)
        return self.recomputed_scores(customer_ids)

    def recomputed_scores(self, customer_ids: Sequence[int]) -> schemas.CustomerScoresResponse:
        """The score rows of ``customer_ids`` computed from the snapshot with the models
        (:func:`training.scoring.score_rows`, what the export stores), answered as the looked-up ones."""
        snapshot = self.bundle.snapshot
        if snapshot is None or self._customers_index is None:
            raise RuntimeError("the bundle was loaded without its scoring snapshot: load_bundle(snapshot=True)")
        wanted = pd.Index(list(dict.fromkeys(int(c) for c in customer_ids)), dtype=np.int64)
        # get_indexer uses the index's own hash table (built once); isin would hash a million ids per call.
        unknown = wanted[self._customers_index.get_indexer(wanted) < 0]
        if len(unknown):
            raise unknown_customers(unknown.tolist())
        frame = score_rows(snapshot, wanted, self.bundle.clv, self.bundle.churn,
                           versions=self._score_versions)
        return self.lookups.customer_scores(wanted.tolist(), ScoreTable.from_frame(frame))

    def info(self) -> schemas.InfoResponse:
        return self.lookups.info()

    def error(self, exc: RequestError) -> dict[str, Any]:
        return self.lookups.error(exc)


__all__ = ["BundleError", "IdentityIndex", "Lookups", "Outcome", "RequestError", "Runtime", "bundle_directory",
           "worker_count"]
