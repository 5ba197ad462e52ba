"""The serving bundle: everything the service needs, in one directory, with no access to the store or
the tracking server afterwards.

:func:`export_bundle` writes it from the champions of the registry (``rapport serve export``; the
layout is documented there); :func:`load_bundle` reads it back (the service, at start-up) and
:func:`verify_bundle` checks every file against the manifest. Only :func:`export_bundle` touches
MLflow, the store and the training pipelines, and it imports them when called: the service imports
this module to read a bundle, never the code that fits models."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from features.errors import RapportError
from features.schema import Col
from features.settings import Settings
from training.frames import FrameFileError, read_columns, read_frame, write_frame
from training.models import BUNDLE_KEYS, CHURN, CLV, MODELS, RECOMMEND
from training.progress import reporter
from training.score_table import SCORE_COLUMNS, ScoreTable, ScoreTableError, encode

if TYPE_CHECKING:
    # The models and pandas are imported where a bundle is written or fully loaded: a service's
    # worker reads the manifest and answers from the default lists first (serving.lookup).
    import pandas as pd

    from training.churn.model import ChurnModel
    from training.clv.model import ClvModel
    from training.scoring import Snapshot

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "rapport-serving-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
#: Where each model's state is (training.models declares them with the models).
CLV_STATE = CLV.bundle_file
CHURN_STATE = CHURN.bundle_file
RECOMMENDER_DIR = RECOMMEND.bundle_file
#: The tables: folders of .npy columns (training.frames); ``<name>.parquet`` in earlier bundles.
SNAPSHOT_CUSTOMERS = "snapshot_customers"
SNAPSHOT_CHURN = "snapshot_churn"
IDENTITY = "identity"
#: Every customer's row of ``rapport score`` (training.score_table); absent from earlier bundles.
SCORES = "scores"
#: Keys of manifest["models"], in the order the service reports them.
MODEL_KEYS: tuple[str, ...] = BUNDLE_KEYS
#: Key of the manifest's file list: relative path -> {"bytes", "sha256"}.
FILES = "files"
#: Columns of the identity table.
IDENTITY_COLUMNS = frozenset({"key_type", "hash_high", "hash_low", Col.CUSTOMER_ID})


class BundleError(RapportError, ValueError):
    """A bundle directory that cannot be written or read, naming the file and what is wrong."""


def salt_check(settings: Settings) -> str:
    """A fingerprint of the identity salt: the service refuses raw-key lookups with another salt
    (they would silently find nobody). Not the salt, and useless to guess it from.

    Parameters
    ----------
    settings
        The deployment's settings; their identity salt is read.

    Returns
    -------
    str
        The first 16 hex characters of a SHA-256 over a fixed prefix and the salt.
    """
    return hashlib.sha256(f"rapport-salt-check|{settings.salt()}".encode()).hexdigest()[:16]


def key_words(hex_digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 32 hex characters of key hashes as two unsigned 64-bit words (high, low), vectorised.

    Parameters
    ----------
    hex_digests
        The hex digests of the key hashes (the part after ``<type>:``), 32 lower-case characters each.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        The high and the low 64 bits of each digest, as ``uint64`` arrays.

    Raises
    ------
    BundleError
        A digest is not 32 characters long or not lower-case hex.
    """
    raw = np.asarray(hex_digests, dtype="S32")
    if raw.size and (np.char.str_len(raw) != 32).any():
        raise BundleError("identity map: a key hash does not end in 32 hex characters")
    chars = raw.view(np.uint8).reshape(-1, 32).astype(np.uint64)
    # '0'..'9' -> 0..9, 'a'..'f' -> 10..15 (the hashes are lower-case hex).
    nibbles = np.where(chars >= ord("a"), chars - ord("a") + 10, chars - ord("0"))
    if raw.size and (nibbles > 15).any():
        raise BundleError("identity map: a key hash is not lower-case hex")
    shifts = np.arange(60, -1, -4, dtype=np.uint64)
    high = np.bitwise_or.reduce(nibbles[:, :16] << shifts, axis=1) if raw.size else np.empty(0, np.uint64)
    low = np.bitwise_or.reduce(nibbles[:, 16:] << shifts, axis=1) if raw.size else np.empty(0, np.uint64)
    return high.astype(np.uint64), low.astype(np.uint64)


def key_hash_words(key_hash: str) -> tuple[str, int, int]:
    """``"<type>:<32 hex>"`` (features.identity.hash_key) as (type, high word, low word).

    Parameters
    ----------
    key_hash
        A hashed key, ``<type>:<32 hex characters>``.

    Returns
    -------
    tuple[str, int, int]
        The key type and the digest's high and low 64 bits.
    """
    key_type, _, digest = key_hash.partition(":")
    return key_type, int(digest[:16], 16), int(digest[16:], 16)


# --- choosing the versions -------------------------------------------------------------------------


def champion_version(client: Any, model_name: str) -> Any:
    """The ``champion`` version of ``model_name``: what the bundle, ``rapport score`` and ``rapport
    recommend`` use. Never another version: a version that failed its gate is served only after a
    person promoted it (``rapport models promote``). ``NoModelError`` says what to do otherwise.

    Parameters
    ----------
    client
        The registry's client (:func:`training.tracking.configure`).
    model_name
        The registered model's name.

    Returns
    -------
    mlflow.entities.model_registry.ModelVersion
        The version the ``champion`` alias points at.

    Raises
    ------
    NoModelError
        No version is registered, or none is the champion (the message names the latest version, its
        gate verdict and how to promote one).
    """
    from training import tracking

    champion = tracking.latest_with_alias(client, model_name, "champion")
    if champion is not None:
        return champion
    registered = client.search_model_versions(f"name = '{model_name}'")
    if not registered:
        raise tracking.NoModelError(f"no version of {model_name} is registered: train it first (rapport train; a "
                                    f"step skipped for too short a history registers none, its message says why)")
    latest = max(registered, key=lambda v: int(v.version))
    gate = {"false": "failed its gate", "true": "passed its gate but is not the champion"}.get(
        (latest.tags or {}).get(tracking.GATE_ELIGIBLE_TAG, ""), "has no gate verdict")
    raise tracking.NoModelError(
        f"{model_name} has no champion: none of its {len(registered)} registered version(s) is promoted (the "
        f"latest, version {latest.version}, {gate}) and no other version is used in its place. Retrain "
        f"(rapport train) or promote a version by hand: rapport models promote {model_name} VERSION --reason TEXT "
        f"(--force for a version that failed its gate; rapport models list shows the versions and their gates)")


# --- writing ---------------------------------------------------------------------------------------


def _state(model: Any, path: Path) -> None:
    from training.json_pyfunc import json_default

    path.write_text(json.dumps(model.to_dict(), default=json_default, sort_keys=True), encoding="utf-8")


def _identity_frame(con: Any) -> pd.DataFrame:
    import pandas as pd

    table = con.execute("SELECT key_hash, customer_id FROM identity_map").fetchnumpy()
    hashes = np.asarray(table["key_hash"], dtype=object)
    split = pd.Series(hashes, dtype=object).str.split(":", n=1, expand=True)
    if len(split) and split.shape[1] != 2:
        raise BundleError("identity map: a key hash has no '<type>:' prefix")
    types = split[0].to_numpy(dtype=object) if len(split) else np.empty(0, dtype=object)
    digests = split[1].to_numpy(dtype=object) if len(split) else np.empty(0, dtype=object)
    high, low = key_words(digests.astype(str) if len(digests) else np.empty(0, dtype="S32"))
    return pd.DataFrame({
        "key_type": pd.Categorical(types),
        "hash_high": high,
        "hash_low": low,
        Col.CUSTOMER_ID: np.asarray(table["customer_id"], dtype=np.int64),
    })


def sort_identity(frame: pd.DataFrame) -> pd.DataFrame:
    """The identity frame in the order the service looks keys up in (key type, high, low): a worker
    then starts without sorting it (serving.lookup.IdentityIndex).

    Parameters
    ----------
    frame
        The identity table: columns :data:`IDENTITY_COLUMNS`.

    Returns
    -------
    pandas.DataFrame
        A copy with ``key_type`` categorical, sorted by key type, high word and low word (stable), on
        a fresh index.
    """
    out = frame.assign(key_type=frame["key_type"].astype("category"))
    return out.sort_values(["key_type", "hash_high", "hash_low"], kind="stable", ignore_index=True)


def export_bundle(settings: Settings, directory: Path | str, *,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the serving bundle of the registry's champions into ``directory`` (replaced when it is
    a bundle already; refused when it holds anything else).

    Layout (``format_version`` 1)::

        manifest.json             models (name + version), snapshot date, created time, counts, salt
                                  check, and every other file's size and SHA-256 (``files``)
        clv.json                  ClvModel.to_dict() of the CLV champion
        churn.json                ChurnModel.to_dict() of the churn champion
        recommender/              the recommender champion's artefact (training.recommend.artefact)
        snapshot_customers/       build_snapshot(...).customers at the CLV champion's cutoff
        snapshot_churn/           build_snapshot(...).churn (the churn population)
        identity/                 the identity map, compact, sorted by key: key_type, the 128-bit key
                                  digest as two unsigned 64-bit words, customer_id (no key in clear,
                                  no salt)
        scores/                   every snapshot customer's row of ``rapport score`` (score_chunks of
                                  the snapshot above), by ascending customer id: numbers as float64,
                                  text and dates as dictionary codes (training.score_table)
        default_lists/ + .json    every known customer's top-N under the default options, ranked by
                                  the recommender at export (training.recommend.precomputed; absent
                                  when serving.default_lists is 0)

    The snapshot is taken at the CLV champion's cutoff with the code ``rapport score`` uses
    (:func:`training.scoring.build_snapshot`) and scored with its code too
    (:func:`training.scoring.score_chunks`): the service's ``customer_scores`` looks up the rows of
    ``rapport score`` of the same customers.

    Parameters
    ----------
    settings
        The deployment's settings: the store, the tracking server, the salt, ``serving.default_lists``.
    directory
        Where the bundle goes.
    progress
        Called with each step's line of text (also logged at INFO), if given.

    Returns
    -------
    dict
        The manifest written to ``manifest.json``.

    Raises
    ------
    BundleError
        ``directory`` holds files but no manifest, or the identity map holds a malformed key hash.
    NoModelError
        A model has no champion.
    """
    import pandas as pd

    from features.store import connect, ibis_backend
    from training import tracking
    from training.recommend import artefact
    from training.scoring import build_snapshot, churn_lookback_days, score_chunks

    step = reporter(log, progress)

    out = Path(directory)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise BundleError(f"{out} exists and is not a bundle: choose an empty or new directory")
    client = tracking.configure(settings)
    models: dict[str, Any] = {}
    described: dict[str, dict[str, str]] = {}
    for spec in MODELS:
        name = spec.registered_name
        chosen, how = champion_version(client, name), "the champion"
        step(f"loading {name} version {chosen.version} ({how})")
        models[spec.bundle_key] = tracking.load_model(client, name, chosen.version)
        described[spec.bundle_key] = {"name": name, "version": str(chosen.version), "chosen": how}
    clv: ClvModel = models[CLV.bundle_key]
    churn: ChurnModel = models[CHURN.bundle_key]
    recommender = models[RECOMMEND.bundle_key]
    as_of = clv.cutoff_
    step(f"scoring snapshot as of {as_of:%Y-%m-%d}")
    con = connect(settings, read_only=True)
    try:
        snapshot = build_snapshot(ibis_backend(con), as_of, time_unit=clv.time_unit_,
                                  lookback_days=churn_lookback_days(churn), progress=step)
        step("identity map")
        identity = _identity_frame(con)
    finally:
        con.close()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    step("writing the bundle")
    _state(clv, out / CLV_STATE)
    _state(churn, out / CHURN_STATE)
    artefact.save(recommender, out / RECOMMENDER_DIR)
    lists = write_default_lists(recommender, out, settings.serving.default_lists, step)
    write_frame(snapshot.customers, out / SNAPSHOT_CUSTOMERS)
    write_frame(snapshot.churn, out / SNAPSHOT_CHURN)
    write_frame(sort_identity(identity), out / IDENTITY, index=False)
    step(f"scores of {len(snapshot):,} customers")
    versions = {key: described[key]["version"] for key in (CLV.bundle_key, CHURN.bundle_key)}
    write_scores(score_chunks(snapshot, clv, churn, versions=versions), out)
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "snapshot_date": pd.Timestamp(as_of).date().isoformat(),
        "snapshot_as_of": pd.Timestamp(as_of).isoformat(),
        "time_unit": clv.time_unit_,
        "models": described,
        "counts": {
            "customers": len(snapshot.customers),
            "churn_population": len(snapshot.churn),
            "identity_keys": len(identity),
            "recommender_customers": int(recommender.data_.n_users),
            "items": int(len(recommender.data_.item_ids)),
            "default_lists": 0 if lists is None else lists.n_customers,
        },
        "salt_check": salt_check(settings),
    }
    return write_manifest(out, manifest)


def write_default_lists(recommender: Any, directory: Path, length: int,
                        step: Callable[[str], None] | None = None) -> Any:
    """Rank every customer the recommender knows under the default options (``length`` items each)
    into the bundle's ``default_lists`` files; nothing when ``length`` is 0. Returns the lists.

    Parameters
    ----------
    recommender
        The fitted recommender (``training.recommend.model.RecommenderModel``).
    directory
        The bundle's directory.
    length
        Items per customer (``serving_default_lists``); 0 or less: no lists.
    step
        Called with a progress line as customers are ranked; ``None``: silent.

    Returns
    -------
    training.recommend.precomputed.DefaultLists or None
        The lists written; ``None`` when ``length`` is 0 or less.
    """
    from training.recommend.precomputed import DefaultLists

    if length <= 0:
        return None

    def progress(done: int, total: int) -> None:
        if step:
            step(f"default lists: top {length} of {done:,} / {total:,} customers")

    progress(0, recommender.data_.n_users)
    lists = DefaultLists.compute(recommender, length, progress=progress)
    lists.save(directory)
    return lists


def write_scores(chunks: Iterable[pd.DataFrame], directory: Path) -> None:
    """Write the rows of :func:`training.scoring.score_chunks` (``rapport score``'s) into the
    bundle's ``scores`` table in their stored form (:func:`training.score_table.encode`).

    Parameters
    ----------
    chunks
        The score rows, chunk by chunk (columns :data:`training.score_table.SCORE_COLUMNS`).
    directory
        The bundle's directory; the table goes into its ``scores/`` folder (replaced).

    Returns
    -------
    None

    Raises
    ------
    training.score_table.ScoreTableError
        A column is missing or a customer appears twice.
    """
    import pandas as pd

    frames = list(chunks)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SCORE_COLUMNS))
    write_frame(encode(rows), directory / SCORES, index=False)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest`` with the size and SHA-256 of every other file of the bundle (``files``):
    the last step of writing a bundle.

    Parameters
    ----------
    directory
        The bundle's directory, every other file written.
    manifest
        The manifest's fields but ``files``.

    Returns
    -------
    dict[str, Any]
        The manifest written, ``files`` included.
    """
    manifest = {**manifest, FILES: file_digests(directory)}
    (Path(directory) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return manifest


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_digests(directory: Path | str) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes": size, "sha256": hex digest}}`` of every file of a bundle but the
    manifest.

    Parameters
    ----------
    directory
        The bundle's directory.

    Returns
    -------
    dict[str, dict[str, Any]]
        Every file below ``directory`` but the manifest, by POSIX relative path, in sorted order.
    """
    where = Path(directory)
    return {path.relative_to(where).as_posix(): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
            for path in sorted(where.rglob("*")) if path.is_file() and path.relative_to(where).as_posix() != MANIFEST}


def verify_bundle(directory: Path | str, *, digests: bool = True) -> dict[str, Any]:
    """The manifest, once every file it lists is there with its recorded size (and, with ``digests``,
    its SHA-256); a :class:`BundleError` naming the first file that is missing, truncated or changed.

    ``rapport serve start`` runs it before it starts the server; a worker checks the sizes only.

    Parameters
    ----------
    directory
        The bundle's directory.
    digests
        Also compare every file's SHA-256 with the manifest's (reads every byte).

    Returns
    -------
    dict
        The bundle's manifest.

    Raises
    ------
    BundleError
        The manifest is missing or malformed or lists no files, or a file it lists is missing, of
        another size or (with ``digests``) of another SHA-256.
    """
    where = Path(directory)
    manifest = read_manifest(where)
    files = manifest.get(FILES)
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{where / MANIFEST}: no list of files with their sizes and SHA-256 (a bundle written "
                          f"before these checks): write it again with rapport serve export")
    for name, recorded in files.items():
        path = where / name
        if not path.is_file():
            raise BundleError(f"bundle {where}: file {name} is missing (the manifest lists it)")
        size, expected = path.stat().st_size, int(recorded["bytes"])
        if size < expected:
            raise BundleError(f"bundle {where}: file {name} is truncated: {size:,} bytes, the manifest records "
                              f"{expected:,}")
        if size != expected:
            raise BundleError(f"bundle {where}: file {name} has changed: {size:,} bytes, the manifest records "
                              f"{expected:,}")
        if digests and _sha256(path) != recorded["sha256"]:
            raise BundleError(f"bundle {where}: file {name} has changed since the export: its SHA-256 is not the "
                              f"one the manifest records")
    return manifest


# --- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the manifest, the three models, the scoring snapshot and the identity map."""

    manifest: dict[str, Any]
    clv: ClvModel
    churn: ChurnModel
    recommender: Any  # training.recommend.model.RecommenderModel
    #: None when loaded without it (load_bundle(snapshot=False)).
    snapshot: Snapshot | None
    identity: pd.DataFrame
    #: training.recommend.precomputed.DefaultLists, or None when the bundle has none.
    default_lists: Any = None
    #: Every customer's score row (training.score_table), or None in a bundle written before them.
    scores: ScoreTable | None = None

    def versions(self) -> dict[str, str]:
        """The version of each model in the bundle (:func:`manifest_versions`).

        Returns
        -------
        dict[str, str]
            Bundle key -> version number.
        """
        return manifest_versions(self.manifest)


def manifest_versions(manifest: dict[str, Any]) -> dict[str, str]:
    """The version of each model in a bundle's manifest, by bundle key (``{"clv": "3", ...}``).

    Parameters
    ----------
    manifest
        A bundle's manifest (:func:`read_manifest`).

    Returns
    -------
    dict[str, str]
        Bundle key -> version number, for every key of :data:`MODEL_KEYS`.

    Raises
    ------
    KeyError
        The manifest lacks a model.
    """
    return {key: str(manifest["models"][key]["version"]) for key in MODEL_KEYS}


def read_manifest(directory: Path | str) -> dict[str, Any]:
    """The bundle's ``manifest.json``, checked to be of this format and version and to name every model.

    Parameters
    ----------
    directory
        The bundle's directory.

    Returns
    -------
    dict[str, Any]
        The manifest.

    Raises
    ------
    BundleError
        There is no manifest, it is not JSON, its format or version is another, or it lacks a model or
        ``snapshot_as_of``.
    """
    where = Path(directory)
    path = where / MANIFEST
    if not path.is_file():
        raise BundleError(f"{where} is not a serving bundle: no {MANIFEST} (write one with: rapport serve export)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not JSON ({exc})") from None
    if manifest.get("format") != BUNDLE_FORMAT or manifest.get("format_version") != BUNDLE_VERSION:
        raise BundleError(f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}, "
                          f"expected {BUNDLE_FORMAT!r} version {BUNDLE_VERSION}")
    missing = [key for key in MODEL_KEYS if key not in manifest.get("models", {})]
    if missing or "snapshot_as_of" not in manifest:
        raise BundleError(f"{path}: missing {', '.join(missing) or 'snapshot_as_of'}")
    return manifest


def table_path(where: Path, name: str) -> Path:
    """Where a table of the bundle is: its folder of columns, else the Parquet file of an earlier
    bundle; a :class:`BundleError` when it has neither.

    Parameters
    ----------
    where
        The bundle's directory.
    name
        The table's name (:data:`SNAPSHOT_CUSTOMERS`, :data:`SNAPSHOT_CHURN`, :data:`IDENTITY`).

    Returns
    -------
    pathlib.Path
        The folder ``<name>/``, else the file ``<name>.parquet``.

    Raises
    ------
    BundleError
        The bundle has neither.
    """
    if (where / name).is_dir():
        return where / name
    if (where / f"{name}.parquet").is_file():
        return where / f"{name}.parquet"
    raise BundleError(f"bundle {where}: missing table {name} (neither the folder {name}/ nor {name}.parquet)")


def read_table(path: Path) -> pd.DataFrame:
    """A table at :func:`table_path`: its columns, or the Parquet file of an earlier bundle.

    Parameters
    ----------
    path
        A folder of ``.npy`` columns (:func:`training.frames.read_frame`) or a Parquet file.

    Returns
    -------
    pandas.DataFrame
        The table.
    """
    if path.is_dir():
        return read_frame(path)
    import pandas as pd

    return pd.read_parquet(path)


def load_bundle(directory: Path | str, *, snapshot: bool = True) -> Bundle:
    """The bundle written by :func:`export_bundle` (or a synthetic one with the same layout).

    The large arrays (the recommender's and the default lists) are uncompressed ``.npy`` files that
    are memory-mapped read-only: the service's workers share them through the page cache, and a
    worker that is restarted has almost nothing to read. The tables are folders of ``.npy``
    columns (:mod:`training.frames`), read without decoding; a bundle written with them as Parquet
    files (``snapshot_customers.parquet``, ...) is still read.

    Parameters
    ----------
    directory
        The bundle's directory.
    snapshot
        Read the scoring snapshot (the service reads it only for a bundle without score rows, which
        it scores per request).

    Returns
    -------
    Bundle
        The manifest, the three models, the scoring snapshot (None when not read) and the identity
        map.

    Raises
    ------
    BundleError
        A file is missing, of another size than the manifest records or unreadable (the message names
        it), or the identity table lacks a column.
    """
    from training.churn.model import ChurnModel
    from training.clv.model import ClvModel
    from training.recommend import artefact
    from training.recommend.precomputed import DefaultLists, DefaultListsError
    from training.scoring import Snapshot

    where = Path(directory)
    # Sizes only: cheap at every worker's start; `rapport serve start` checks the digests first.
    manifest = verify_bundle(where, digests=False)
    for name in (CLV_STATE, CHURN_STATE):
        if not (where / name).is_file():
            raise BundleError(f"bundle {where}: missing file {name}")
    tables = {name: table_path(where, name) for name in (SNAPSHOT_CUSTOMERS, SNAPSHOT_CHURN, IDENTITY)}

    def read(name: str, how: Callable[[Path], Any]) -> Any:
        # A file that passed the size check but cannot be read is named, with what is wrong in it.
        try:
            return how(where / name)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"bundle {where}: file {name} cannot be read: {type(exc).__name__}: {exc}") from None

    clv = read(CLV_STATE, lambda path: ClvModel.from_dict(json.loads(path.read_text(encoding="utf-8"))))
    churn = read(CHURN_STATE, lambda path: ChurnModel.from_dict(json.loads(path.read_text(encoding="utf-8"))))
    recommender = read(RECOMMENDER_DIR, artefact.load)
    as_of = datetime.fromisoformat(manifest["snapshot_as_of"])
    features = Snapshot(as_of=as_of, customers=read(tables[SNAPSHOT_CUSTOMERS].name, read_table),
                        churn=read(tables[SNAPSHOT_CHURN].name, read_table)) if snapshot else None
    identity = read(tables[IDENTITY].name, read_table)
    if not IDENTITY_COLUMNS <= set(identity.columns):
        raise BundleError(f"{tables[IDENTITY]}: columns {sorted(identity.columns)}, expected {sorted(IDENTITY_COLUMNS)}")
    try:
        default_lists = DefaultLists.load(where, recommender)
    except DefaultListsError as exc:
        raise BundleError(f"bundle {where}: {exc}") from None
    return Bundle(manifest=manifest, clv=clv, churn=churn, recommender=recommender, snapshot=features,
                  identity=identity, default_lists=default_lists, scores=read_scores(where))


def read_scores(directory: Path | str) -> ScoreTable | None:
    """The bundle's score columns, memory-mapped (numpy only: a worker answers from them before it
    has imported pandas), or None when the bundle was written before them.

    Parameters
    ----------
    directory
        The bundle's directory.

    Returns
    -------
    training.score_table.ScoreTable or None
        The score rows; None when the bundle has no ``scores/`` folder.

    Raises
    ------
    BundleError
        The folder's columns cannot be read or do not hold score rows (the message says which).
    """
    where = Path(directory)
    if not (where / SCORES).is_dir():
        return None
    try:
        return ScoreTable.from_columns(read_columns(where / SCORES))
    except (FrameFileError, ScoreTableError) as exc:
        raise BundleError(f"bundle {where}: {exc}") from None
