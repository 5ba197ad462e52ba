"""What a worker answers from the moment it starts, with numpy alone: the bundle's manifest
(``/info``), the default lists and the score rows written at export (a known customer's plain
``recommend``, ``customer_scores``), the identity index (raw keys) and the error bodies.

A worker that starts (at the server's start, or after one crashed or was killed) reads these in a
fraction of a second: every array is memory-mapped (the page cache already holds them when another
worker runs) and nothing here imports pandas, LightGBM, scikit-learn, SciPy, Ibis, DuckDB or MLflow
(``tests/test_serving_start.py`` checks it). The models (:class:`serving.runtime.Runtime`) are loaded
right after, in the background (:mod:`serving.service`); a request that needs them waits for them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from features.errors import ArgumentError, RapportError
from features.identity import hash_key
from features.schema import Col, KeyType
from features.settings import Settings
from serving import schemas
from training.bundle import (
    IDENTITY,
    IDENTITY_COLUMNS,
    RECOMMENDER_DIR,
    BundleError,
    key_hash_words,
    manifest_versions,
    read_scores,
    salt_check,
    table_path,
    verify_bundle,
)
from training.frames import Columns, FrameFileError, read_columns
from training.recommend.artefact import RecommenderArtefactError, read_ids
from training.recommend.options import RecommendOptions
from training.recommend.precomputed import DefaultLists, DefaultListsError
from training.recommend.ranked import Ranked
from training.score_table import ScoreTable

if TYPE_CHECKING:
    import pandas as pd

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
        import pandas as pd

        key_type = frame["key_type"]
        if not isinstance(key_type.dtype, pd.CategoricalDtype):
            key_type = key_type.astype("category")
        self._build(key_type.cat.codes.to_numpy(), [str(c) for c in key_type.cat.categories],
                    frame["hash_high"].to_numpy(dtype=np.uint64), frame["hash_low"].to_numpy(dtype=np.uint64),
                    frame[Col.CUSTOMER_ID].to_numpy(dtype=np.int64))

    @classmethod
    def from_columns(cls, table: Columns) -> IdentityIndex:
        """The index of the bundle's identity table read as columns (:func:`training.frames.read_columns`:
        memory-mapped, no pandas)."""
        missing = IDENTITY_COLUMNS - set(table.names)
        if missing or "key_type" not in table.categories:
            raise BundleError(f"identity table: columns {sorted(table.names)}, expected {sorted(IDENTITY_COLUMNS)} "
                              f"(key_type categorical)")
        index = cls.__new__(cls)
        index._build(np.asarray(table.arrays["key_type"]), [str(c) for c in table.categories["key_type"]],
                     table.arrays["hash_high"].astype(np.uint64, copy=False),
                     table.arrays["hash_low"].astype(np.uint64, copy=False),
                     table.arrays[Col.CUSTOMER_ID].astype(np.int64, copy=False))
        return index

    def _build(self, codes: np.ndarray, categories: list[str], high: np.ndarray, low: np.ndarray,
               ids: np.ndarray) -> None:
        self._by_type: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        if not _sorted_keys(codes, high, low):
            order = np.lexsort((low, high, codes))
            codes, high, low, ids = codes[order], high[order], low[order], ids[order]
        bounds = np.searchsorted(codes, np.arange(len(categories) + 1))
        for k, name in enumerate(categories):
            start, stop = int(bounds[k]), int(bounds[k + 1])
            if stop > start:
                self._by_type[name] = (high[start:stop], low[start:stop], ids[start:stop])
        self.size = len(codes)

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


def unknown_customers(unknown: Sequence[int]) -> RequestError:
    """The 404 of a ``customer_scores`` request naming the customers the snapshot does not hold."""
    shown = ", ".join(str(c) for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
    return RequestError(404, "customer_ids", f"{len(unknown)} unknown customer(s): {shown}",
                        unknown_customer_ids=[int(c) for c in unknown])


@dataclass
class Outcome:
    """What an answer did, for the service's counters."""

    fallback: bool = False
    unknown_customers: int = 0


class Lookups:
    """The answers that are lookups in the bundle (see the module docstring)."""

    def __init__(self, manifest: dict[str, Any], settings: Settings, *, customer_ids: np.ndarray,
                 item_ids: np.ndarray, default_lists: DefaultLists | None, identity: IdentityIndex | None,
                 scores: ScoreTable | None = None) -> None:
        self.manifest = manifest
        self.settings = settings
        #: None in a bundle written before the score rows: the runtime recomputes them.
        self.scores = scores
        if scores is None:
            log.warning("the bundle has no score rows (written before rapport serve export stored them): "
                        "customer_scores recomputes every answer from the snapshot; export the bundle again "
                        "to look them up")
        #: None until the full runtime supplies it (a bundle whose identity table is Parquet).
        self.identity = identity
        self.default_lists = default_lists
        self.versions = manifest_versions(manifest)
        self.snapshot_date = str(manifest["snapshot_date"])
        self.metadata = schemas.Metadata(model_versions=self.versions, snapshot_date=self.snapshot_date)
        self._customer_ids = customer_ids
        self._item_ids = item_ids
        self._salt_ok = manifest.get("salt_check") in (None, salt_check(settings))
        if not self._salt_ok:
            log.error("the identity salt differs from the one the bundle was exported with: lookups by raw key "
                      "will answer 400 (set RAPPORT_IDENTITY_SALT to the store's salt)")

    @classmethod
    def from_directory(cls, directory: Path | str, settings: Settings) -> Lookups:
        """The lookups of the bundle in ``directory``: its manifest (every file's size checked), the
        recommender's ids, the default lists, the score rows and the identity table, memory-mapped."""
        where = Path(directory)
        manifest = verify_bundle(where, digests=False)
        try:
            customer_ids, item_ids = read_ids(where / RECOMMENDER_DIR)
            default_lists = DefaultLists.load_for(where, len(customer_ids), len(item_ids))
            identity_path = table_path(where, IDENTITY)
            # A bundle of before the tables of columns has its map in Parquet: the full runtime reads it.
            identity = IdentityIndex.from_columns(read_columns(identity_path)) if identity_path.is_dir() else None
        except (RecommenderArtefactError, DefaultListsError, FrameFileError) as exc:
            raise BundleError(f"bundle {where}: {exc}") from None
        return cls(manifest, settings, customer_ids=customer_ids, item_ids=item_ids, default_lists=default_lists,
                   identity=identity, scores=read_scores(where))

    def resolve_key(self, key: schemas.RawKey) -> int | None:
        """The customer of a raw key (None: nobody's); a :class:`RequestError` (503) when the salt is
        not the bundle's. Needs the identity index (:attr:`identity` not None)."""
        if not self._salt_ok:
            # The deployment's fault, not the request's: 503 until the salt is fixed.
            raise RequestError(503, "key", "lookups by raw key are disabled: the service's identity salt is not the "
                                           "one the bundle was exported with")
        if self.identity is None:
            raise RuntimeError("raw keys are resolved once the identity index is loaded (Runtime supplies it)")
        hashed = hash_key(KeyType(key.type), key.value, self.settings)
        # A key with nothing left after normalisation (a phone number without digits) is nobody's.
        return None if hashed is None else self.identity.customer(hashed)

    def listed(self, request: schemas.RecommendRequest,
               options: RecommendOptions | None = None) -> tuple[schemas.RecommendResponse, Outcome] | RequestError | None:
        """The answer from the bundle's default lists when the request asks for one of them: a
        customer the model knows and the default options with ``n`` within the lists' length
        (:meth:`RecommendOptions.is_default`); None when the list must be ranked (or the request
        names a raw key and the identity index is not loaded yet). ``options``: the request's, when
        the caller has them already."""
        lists = self.default_lists
        if lists is None:
            return None
        if not (RecommendOptions.from_request(request) if options is None else options).is_default(lists.length):
            return None
        if request.key is not None and self.identity is None:
            return None
        try:
            customer = request.customer_id if request.key is None else self.resolve_key(request.key)
        except RequestError as exc:
            return exc
        if customer is None:
            return None
        customer = int(customer)
        row = self.row(customer)
        if row is None:
            return None
        ranked = lists.lookup(row, request.n, customer)
        return None if ranked is None else self.recommendation(customer, ranked, True)

    def row(self, customer: int) -> int | None:
        """The customer's row in the recommender (None: a customer it does not know)."""
        row = int(np.searchsorted(self._customer_ids, customer))
        if row >= len(self._customer_ids) or int(self._customer_ids[row]) != customer:
            return None
        return row

    def recommendation(self, customer: int | None, ranked: Ranked,
                       known: bool) -> tuple[schemas.RecommendResponse, Outcome]:
        """A ranked list as the recommend endpoint's answer."""
        fallback = bool(ranked.fallback.any()) if len(ranked) else not known
        items = [schemas.RecommendedItem.model_construct(rank=r, item_id=str(i), score=s, source=src, reason=reason)
                 for r, i, s, src, reason in ranked.records(self._item_ids)]
        response = schemas.RecommendResponse.model_construct(customer_id=customer, known=known, fallback=fallback,
                                                             items=items, metadata=self.metadata)
        return response, Outcome(fallback=fallback, unknown_customers=0 if known else 1)

    def customer_scores(self, customer_ids: Sequence[int],
                        table: ScoreTable | None = None) -> schemas.CustomerScoresResponse:
        """The score rows of ``customer_ids`` (duplicates once, in the order asked) from ``table``
        (default: the bundle's, :attr:`scores`); a :class:`RequestError` (404) naming the customers it
        does not hold."""
        table = self.scores if table is None else table
        if table is None:
            raise RuntimeError("the bundle has no score rows: the runtime recomputes them (Runtime.customer_scores)")
        rows, unknown = table.rows(customer_ids)
        if unknown:
            raise unknown_customers(unknown)
        # Validated as one object (pydantic's compiled path: faster than building each row's model).
        return schemas.CustomerScoresResponse.model_validate({"scores": table.records(rows), "metadata": self.metadata})

    def info(self) -> schemas.InfoResponse:
        manifest = self.manifest
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


def worker_count(setting: int | str) -> int:
    """The service's worker processes for the ``serving.workers`` setting (or the
    ``RAPPORT_SERVING__WORKERS`` variable): a number, or ``auto``: two where there are two cores or
    more (a request is answered on one core; the second worker keeps answering while one is busy or
    restarted), else one."""
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        return 2 if len(os.sched_getaffinity(0)) >= 2 else 1
    try:
        count = int(setting)
    except ValueError:
        count = 0
    if not 1 <= count <= 64:
        raise ArgumentError(f"RAPPORT_SERVING__WORKERS must be auto or a number of workers from 1 to 64, got {setting!r}")
    return count


def bundle_directory(default: str = "bundle") -> Path:
    """Where the service finds its bundle: ``RAPPORT_BUNDLE_DIR``, else ``./bundle``."""
    return Path(os.environ.get("RAPPORT_BUNDLE_DIR") or default)
