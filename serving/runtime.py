"""The service's in-memory state and answers, without HTTP: a loaded bundle, the identity index and
one function per endpoint. :mod:`serving.service` wraps it in BentoML; tests call it directly too.

Lookups never touch a database: customers by id are rows of the snapshot (pandas index) and of the
recommender's sorted id array; raw keys are hashed with the deployment's salt
(:func:`features.identity.hash_key`) and found by binary search in :class:`IdentityIndex`, the
identity map as sorted 64-bit words (24 bytes a key). Scores come from
:func:`training.scoring.score_rows` and lists from ``RecommenderModel.recommend``: the code paths of
``rapport score`` and ``rapport recommend``, so the service and the batch files agree. A request for
a known customer's plain list (no filter, ``n`` within the bundle's ``serving_default_lists``) is a
lookup in the lists the same model ranked at export (:mod:`training.recommend.precomputed`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.errors import ArgumentError, RapportError
from features.identity import hash_key
from features.schema import Col, KeyType
from features.settings import Settings
from serving import schemas
from training.bundle import Bundle, BundleError, key_hash_words, load_bundle, salt_check
from training.recommend.model import Ranked, RecommenderInputError
from training.scoring import SCORE_COLUMNS, score_rows

log = logging.getLogger(__name__)


class RequestError(RapportError, ValueError):
    """A request the service answers with a 4xx: the status, the field and the message."""

    def __init__(self, status: int, field: str, message: str, *, unknown_customer_ids: list[int] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message
        self.unknown_customer_ids = unknown_customer_ids


class IdentityIndex:
    """The identity map as sorted arrays per key type: (high word, low word) -> customer id.

    A bundle's map is written sorted by (key type, high, low) (:func:`training.bundle.sort_identity`):
    the index is then slices of the frame's arrays, checked in one vectorised pass (a worker starts
    without sorting millions of keys); an unsorted frame is sorted here."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._by_type: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        key_type = frame["key_type"]
        if not isinstance(key_type.dtype, pd.CategoricalDtype):
            key_type = key_type.astype("category")
        codes = key_type.cat.codes.to_numpy()
        high = frame["hash_high"].to_numpy(dtype=np.uint64)
        low = frame["hash_low"].to_numpy(dtype=np.uint64)
        ids = frame[Col.CUSTOMER_ID].to_numpy(dtype=np.int64)
        if not _sorted_keys(codes, high, low):
            order = np.lexsort((low, high, codes))
            codes, high, low, ids = codes[order], high[order], low[order], ids[order]
        bounds = np.searchsorted(codes, np.arange(len(key_type.cat.categories) + 1))
        for k, name in enumerate(key_type.cat.categories):
            start, stop = int(bounds[k]), int(bounds[k + 1])
            if stop > start:
                self._by_type[str(name)] = (high[start:stop], low[start:stop], ids[start:stop])
        self.size = len(frame)

    def customer(self, key_hash: str) -> int | None:
        key_type, high, low = key_hash_words(key_hash)
        found = self._by_type.get(key_type)
        if found is None:
            return None
        highs, lows, ids = found
        start = int(np.searchsorted(highs, np.uint64(high), side="left"))
        stop = int(np.searchsorted(highs, np.uint64(high), side="right"))
        for k in range(start, stop):
            if int(lows[k]) == low:
                return int(ids[k])
        return None


def _sorted_keys(codes: np.ndarray, high: np.ndarray, low: np.ndarray) -> bool:
    """Whether (codes, high, low) is in lexicographic order."""
    if len(codes) < 2:
        return True
    c0, c1, h0, h1 = codes[:-1], codes[1:], high[:-1], high[1:]
    return bool(np.all((c0 < c1) | ((c0 == c1) & ((h0 < h1) | ((h0 == h1) & (low[:-1] <= low[1:]))))))


def _float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    return str(value)


def _date(value: Any) -> str | None:
    if value is None or pd.isna(value):
        return None
    return pd.Timestamp(value).date().isoformat()


_FLOATS = ("expected_purchases_30d", "expected_purchases_90d", "expected_purchases_365d", "probability_alive",
           "expected_order_value", "clv", "clv_lower", "clv_upper", "churn_probability", "percentile")
_TEXTS = ("value_segment", "risk_band", "reason_1", "reason_2", "reason_3", "clv_model_version",
          "churn_model_version", "as_of")


def score_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """:func:`score_rows` output as JSON-ready rows: NaN and empty values as None, the next order date
    as an ISO date."""
    columns = {name: frame[name].tolist() for name in SCORE_COLUMNS}
    out = []
    for k in range(len(frame)):
        row: dict[str, Any] = {Col.CUSTOMER_ID: int(columns[Col.CUSTOMER_ID][k])}
        for name in _FLOATS:
            row[name] = _float(columns[name][k])
        for name in _TEXTS:
            row[name] = _text(columns[name][k])
        row["expected_next_order_date"] = _date(columns["expected_next_order_date"][k])
        horizon = columns["churn_horizon_days"][k]
        row["churn_horizon_days"] = None if horizon is None or pd.isna(horizon) else int(horizon)
        out.append(row)
    return out


@dataclass
class Outcome:
    """What an answer did, for the service's counters."""

    fallback: bool = False
    unknown_customers: int = 0


class Runtime:
    """The loaded bundle and the answers of every endpoint (plain Python objects in, pydantic out)."""

    def __init__(self, bundle: Bundle, settings: Settings) -> None:
        self.bundle = bundle
        self.settings = settings
        self.identity = IdentityIndex(bundle.identity)
        self.versions = bundle.versions()
        self.snapshot_date = str(bundle.manifest["snapshot_date"])
        self.metadata = schemas.Metadata(model_versions=self.versions, snapshot_date=self.snapshot_date)
        self._salt_ok = bundle.manifest.get("salt_check") in (None, salt_check(settings))
        if not self._salt_ok:
            log.error("the identity salt differs from the one the bundle was exported with: lookups by raw key "
                      "will answer 400 (set RAPPORT_IDENTITY_SALT to the store's salt)")
        self._score_versions = {"clv": self.versions["clv"], "churn": self.versions["churn"]}
        self._customers_index = bundle.snapshot.customers.index
        self._recommender_ids = bundle.recommender.data_.customer_ids

    @classmethod
    def from_directory(cls, directory: Path | str, settings: Settings) -> Runtime:
        return cls(load_bundle(directory), settings)

    # --- lookups ----------------------------------------------------------------------------------

    def resolve_key(self, key: schemas.RawKey) -> int | None:
        if not self._salt_ok:
            # The deployment's fault, not the request's: 503 until the salt is fixed.
            raise RequestError(503, "key", "lookups by raw key are disabled: the service's identity salt is not the "
                                           "one the bundle was exported with")
        hashed = hash_key(KeyType(key.type), key.value, self.settings)
        # A key with nothing left after normalisation (a phone number without digits) is nobody's.
        return None if hashed is None else self.identity.customer(hashed)

    # --- endpoints --------------------------------------------------------------------------------

    def recommend(self, request: schemas.RecommendRequest) -> tuple[schemas.RecommendResponse, Outcome]:
        answer = self.recommend_many([request])[0]
        if isinstance(answer, RequestError):
            raise answer
        return answer

    def listed(self, request: schemas.RecommendRequest) -> tuple[schemas.RecommendResponse, Outcome] | RequestError | None:
        """The answer from the bundle's default lists when the request asks for one of them: a
        customer the model knows, ``n`` within the lists' length and the default options (purchases
        excluded, no filter, no channel or country); None when the list must be ranked."""
        lists = self.bundle.default_lists
        if lists is None or not _default_options(request, lists.length):
            return None
        try:
            customer = request.customer_id if request.key is None else self.resolve_key(request.key)
        except RequestError as exc:
            return exc
        if customer is None:
            return None
        customer = int(customer)
        row = int(np.searchsorted(self._recommender_ids, customer))
        if row >= len(self._recommender_ids) or int(self._recommender_ids[row]) != customer:
            return None
        return self._recommendation(customer, lists.lookup(row, request.n, customer), True)

    def recommend_many(
        self, requests: Sequence[schemas.RecommendRequest],
    ) -> list[tuple[schemas.RecommendResponse, Outcome] | RequestError]:
        """Answers of several recommend requests, in order (a :class:`RequestError` for a request that
        gets a 4xx). Requests with the same options are ranked together in one block: the service
        gathers the requests that arrive while it computes (see :mod:`serving.service`); each list is
        the one the request would get alone. Requests for a default list are looked up (:meth:`listed`)."""
        out: list[tuple[schemas.RecommendResponse, Outcome] | RequestError | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
        for k, request in enumerate(requests):
            if (answer := self.listed(request)) is not None:
                out[k] = answer
                continue
            try:
                customer = request.customer_id if request.key is None else self.resolve_key(request.key)
            except RequestError as exc:
                out[k] = exc
                continue
            # An unresolved key asks for a customer no model knows: -1 is never a customer id.
            asked = -1 if customer is None else int(customer)
            if request.recent_items:  # a fold-in is the request's own
                groups[("alone", k)] = [(k, asked)]
            else:
                groups.setdefault(_options(request), []).append((k, asked))
        model = self.bundle.recommender
        for members in groups.values():
            first = requests[members[0][0]]
            try:
                answers = model.recommend_each(
                    [asked for _, asked in members], first.n, exclude_purchased=first.exclude_purchased,
                    categories=first.categories, exclude_categories=first.exclude_categories,
                    exclude_items=first.exclude_items, channel=first.channel, country=first.country,
                    recent_items={members[0][1]: first.recent_items} if first.recent_items else None)
            except RecommenderInputError as exc:
                for k, _ in members:
                    out[k] = RequestError(400, "body", str(exc))
                continue
            for (k, asked), (ranked, known) in zip(members, answers):
                out[k] = self._recommendation(asked if asked >= 0 else None, ranked, known)
        return out  # type: ignore[return-value]

    def _recommendation(self, customer: int | None, ranked: Ranked,
                        known: bool) -> tuple[schemas.RecommendResponse, Outcome]:
        fallback = bool(ranked.fallback.any()) if len(ranked) else not known
        items = [schemas.RecommendedItem.model_construct(rank=r, item_id=str(i), score=s, source=src, reason=reason)
                 for r, i, s, src, reason in ranked.records(self.bundle.recommender.data_.item_ids)]
        response = schemas.RecommendResponse.model_construct(customer_id=customer, known=known, fallback=fallback,
                                                             items=items, metadata=self.metadata)
        return response, Outcome(fallback=fallback, unknown_customers=0 if known else 1)

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
        wanted = pd.Index(list(dict.fromkeys(int(c) for c in customer_ids)), dtype=np.int64)
        # get_indexer uses the index's own hash table (built once); isin would hash a million ids per call.
        unknown = wanted[self._customers_index.get_indexer(wanted) < 0]
        if len(unknown):
            shown = ", ".join(str(c) for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            raise RequestError(404, "customer_ids", f"{len(unknown)} unknown customer(s): {shown}",
                               unknown_customer_ids=[int(c) for c in unknown])
        frame = score_rows(self.bundle.snapshot, wanted, self.bundle.clv, self.bundle.churn,
                           versions=self._score_versions)
        scores = [schemas.CustomerScore(**row) for row in score_records(frame)]
        return schemas.CustomerScoresResponse(scores=scores, metadata=self.metadata)

    def info(self) -> schemas.InfoResponse:
        manifest = self.bundle.manifest
        models = {key: {"name": str(value["name"]), "version": str(value["version"])}
                  for key, value in manifest["models"].items()}
        counts = {str(k): int(v) for k, v in manifest.get("counts", {}).items()}
        return schemas.InfoResponse(models=models, snapshot_date=self.snapshot_date,
                                    bundle_created=manifest.get("created"), counts=counts, process_id=os.getpid(),
                                    metadata=self.metadata)

    def error(self, exc: RequestError) -> dict[str, Any]:
        body = schemas.ErrorResponse(error=exc.message, detail=[schemas.ErrorDetail(loc=[exc.field], msg=exc.message)],
                                     unknown_customer_ids=exc.unknown_customer_ids, metadata=self.metadata)
        return body.model_dump(mode="json", exclude_none=True)


def _default_options(request: schemas.RecommendRequest, length: int) -> bool:
    """Whether a request asks for a prefix of a default list (see training.recommend.precomputed)."""
    return (request.n <= length and request.exclude_purchased and request.categories is None
            and request.exclude_categories is None and not request.exclude_items and request.channel is None
            and request.country is None)


def _options(request: schemas.RecommendRequest) -> tuple[Any, ...]:
    """What a recommend request's list depends on besides the customer: requests with equal options
    can be ranked in one block."""

    def listed(values: list[str] | None) -> tuple[str, ...] | None:
        return None if values is None else tuple(values)

    return (request.n, request.exclude_purchased, listed(request.categories), listed(request.exclude_categories),
            listed(request.exclude_items), request.channel, request.country)


def worker_count(setting: int | str) -> int:
    """The service's worker processes for the ``serving_workers`` setting (or the
    ``RAPPORT_SERVING_WORKERS`` variable): a number, or ``auto``: two where there are two cores or
    more (a request is answered on one core; the second worker keeps answering while one is busy or
    restarted), else one."""
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        return 2 if len(os.sched_getaffinity(0)) >= 2 else 1
    try:
        count = int(setting)
    except ValueError:
        count = 0
    if not 1 <= count <= 64:
        raise ArgumentError(f"RAPPORT_SERVING_WORKERS must be auto or a number of workers from 1 to 64, got {setting!r}")
    return count


def bundle_directory(default: str = "bundle") -> Path:
    """Where the service finds its bundle: ``RAPPORT_BUNDLE_DIR``, else ``./bundle``."""
    return Path(os.environ.get("RAPPORT_BUNDLE_DIR") or default)


__all__ = ["BundleError", "IdentityIndex", "Outcome", "RequestError", "Runtime", "bundle_directory", "score_records",
           "worker_count"]
