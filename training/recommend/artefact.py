"""The recommender's fitted state on disk: a directory of two files and a folder of arrays, no pickle.

:func:`save` writes it (the layout is in its docstring), :func:`load` reads it back and checks
every array's shape against the header, raising :class:`RecommenderArtefactError` with the file
and field that is wrong. The arrays are memory-mapped read-only on load, so a service's workers
share one copy through the page cache. The MLflow pyfunc (:mod:`training.recommend.pyfunc`) logs
this directory as its artefact.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from features.errors import RapportError
from training.artefact import ArtefactReader

if TYPE_CHECKING:
    from training.recommend.model import RecommenderModel

ARTEFACT_FORMAT = "rapport-recommender"
#: 2: TIFU-KNN's vectors and neighbour pool, and rule rankers (no ranker.txt).
ARTEFACT_VERSION = 2
HEADER = "recommender.json"
ARRAYS = "arrays"
#: The single-file array format of earlier artefacts (still read).
ARRAYS_NPZ = "arrays.npz"
RANKER = "ranker.txt"
_MATRICES = ("weight", "weight_short", "purchases", "days_since", "tifu")
_ITEM_ARRAYS = ("recommendable", "buyers", "buyers_30d", "buyers_90d", "orders_per_buyer")


class RecommenderArtefactError(RapportError, ValueError):
    """A recommender artefact directory that cannot be read, naming the file and field."""


def _index_dtype(index: np.ndarray) -> type:
    return np.int32 if not len(index) or int(index[-1]) <= np.iinfo(np.int32).max else np.int64


def save_arrays(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """One uncompressed ``.npy`` file per array in ``directory`` (replaced), loadable with
    :func:`load_arrays`.

    Parameters
    ----------
    directory
        Folder of the arrays (created; its ``.npy`` files are removed first).
    arrays
        Name -> numeric array (no object dtype: saved with ``allow_pickle=False``).

    Returns
    -------
    None
    """
    if directory.is_dir():
        for old in directory.glob("*.npy"):
            old.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in arrays.items():
        np.save(directory / f"{name}.npy", np.ascontiguousarray(value), allow_pickle=False)


def load_arrays(directory: Path, error: type[Exception]) -> dict[str, np.ndarray]:
    """The arrays of :func:`save_arrays`, memory-mapped read-only (no pickle).

    Parameters
    ----------
    directory
        Folder of the arrays.
    error
        The exception class raised for a file that is not an array (the caller's named error).

    Returns
    -------
    dict[str, numpy.ndarray]
        File stem -> read-only memory map.

    Raises
    ------
    error
        A ``.npy`` file that cannot be read; the message names it.
    """
    arrays = {}
    for path in sorted(directory.glob("*.npy")):
        try:
            arrays[path.stem] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise error(f"{path}: not a readable array ({exc})") from None
    return arrays


def save(model: RecommenderModel, directory: Path | str) -> Path:
    """Write the fitted ``model`` into ``directory`` (created; existing files of the artefact replaced).

    The layout:

    - ``recommender.json``: the header (``format``, ``format_version``), the settings, the cutoff,
      item ids, names and categories, the per-segment popular lists and what the ranker learned from;
    - ``arrays/``: numbers only, one uncompressed ``.npy`` file per array (``allow_pickle=False`` on
      load): customer ids, the interaction matrices (one shared ``indptr`` / ``indices``, one data
      array each), item statistics, ALS factors, the item-item similarity and the ALS input
      weighting, in the dtypes the model computes with, so a memory-mapped load copies nothing and
      a worker starts without reading them (artefacts written before, with one ``arrays.npz``, are
      still read, into memory);
    - ``ranker.txt``: LightGBM's own model text (absent for a rule ranker).

    Parameters
    ----------
    model
        A fitted :class:`~training.recommend.model.RecommenderModel`.
    directory
        Where to write.

    Returns
    -------
    pathlib.Path
        ``directory``.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        ``model`` is not fitted.
    RecommenderArtefactError
        The interaction matrices do not share one sparsity.
    """
    model._check_fitted()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    data, models = model.data_, model.models_
    matrices = {name: getattr(data, name) for name in _MATRICES[:-1]} | {"tifu": data.tifu_matrix}
    base = matrices["weight"]
    for name, m in matrices.items():
        if not (np.array_equal(m.indptr, base.indptr) and np.array_equal(m.indices, base.indices)):
            raise RecommenderArtefactError(f"interaction matrix {name!r} does not share the weight matrix's sparsity")
    sim = models.similarity
    arrays: dict[str, np.ndarray] = {
        "customer_ids": data.customer_ids,
        # Index arrays in the dtype scipy keeps them in (int32 while they fit), so that a
        # memory-mapped load builds the matrices without copying them.
        "indptr": base.indptr.astype(_index_dtype(base.indptr)),
        "indices": base.indices.astype(np.int32),
        # float64 as in memory: a loaded model scores exactly as the one that was saved.
        **{f"data_{name}": m.data.astype(np.float64) for name, m in matrices.items()},
        **{name: getattr(data, name) for name in _ITEM_ARRAYS},
        "user_factors": models.user_factors,
        "item_factors": models.item_factors,
        "similarity_indptr": sim.indptr.astype(_index_dtype(sim.indptr)),
        "similarity_indices": sim.indices.astype(np.int32),
        "similarity_data": sim.data.astype(np.float64),
        "als_idf": models.als_idf,
        "tifu_pool_rows": models.tifu_pool_rows.astype(np.int64),
    }
    save_arrays(out / ARRAYS, arrays)
    (out / ARRAYS_NPZ).unlink(missing_ok=True)
    if model.booster_ is not None:
        (out / RANKER).write_text(model.booster_.model_to_string(), encoding="utf-8")
    else:
        (out / RANKER).unlink(missing_ok=True)
    training = None if model.training_ is None else asdict(model.training_)
    header = {
        "format": ARTEFACT_FORMAT,
        "format_version": ARTEFACT_VERSION,
        "settings": model.settings_.as_dict(),
        "fitted": {
            "as_of": data.as_of.isoformat(),
            "n_users": data.n_users,
            "item_ids": [str(i) for i in data.item_ids],
            "item_names": list(data.name),
            "item_categories": list(data.category),
            "popular_by": {col: {seg: {"items": p.items.tolist(), "orders": p.orders.tolist()} for seg, p in segs.items()}
                           for col, segs in data.popular_by.items()},
            "als_mean_row_weight": models.als_mean_row_weight,
            "training": None if training is None else {k: (v.isoformat() if isinstance(v, datetime) else v)
                                                       for k, v in training.items()},
        },
    }
    (out / HEADER).write_text(json.dumps(header, allow_nan=True), encoding="utf-8")
    return out


def _header(where: Path) -> ArtefactReader:
    for name in (HEADER,):
        if not (where / name).is_file():
            raise RecommenderArtefactError(f"recommender artefact {where}: missing file {name}")
    if not (where / ARRAYS).is_dir() and not (where / ARRAYS_NPZ).is_file():
        raise RecommenderArtefactError(f"recommender artefact {where}: missing folder {ARRAYS}")
    try:
        header = json.loads((where / HEADER).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RecommenderArtefactError(f"{where / HEADER}: not JSON ({exc})") from None
    return ArtefactReader(header, what="recommender", format=ARTEFACT_FORMAT, version=ARTEFACT_VERSION,
                          error=RecommenderArtefactError)


_FITTED = ("as_of", "n_users", "item_ids", "item_names", "item_categories", "popular_by", "als_mean_row_weight",
           "training")


def read_ids(directory: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """The saved model's customer ids (memory-mapped, sorted) and item ids, without loading the
    model or its libraries: what a service's worker needs to answer from the default lists at once.

    Parameters
    ----------
    directory
        The artefact directory of :func:`save`.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        ``(customer_ids, item_ids)``: int64 (read-only) and object (str).

    Raises
    ------
    RecommenderArtefactError
        A missing or unreadable file, or customer ids that do not match the header.
    """
    where = Path(directory)
    reader = _header(where)
    fitted = reader.section("fitted", _FITTED)
    item_ids = np.asarray(reader.field(fitted, "item_ids", list), dtype=object)
    n_users = reader.field(fitted, "n_users", int)
    path = where / ARRAYS / "customer_ids.npy"
    if (where / ARRAYS).is_dir():
        try:
            customer_ids = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise RecommenderArtefactError(f"{path}: not a readable array ({exc})") from None
    else:
        with np.load(where / ARRAYS_NPZ, allow_pickle=False) as npz:
            customer_ids = npz["customer_ids"]
    if len(customer_ids) != n_users:
        raise RecommenderArtefactError(f"{path}: customer_ids has {len(customer_ids)} entries, expected {n_users}")
    return customer_ids.astype(np.int64, copy=False), item_ids


def load(directory: Path | str) -> RecommenderModel:
    """The model saved in ``directory`` by :func:`save`.

    Parameters
    ----------
    directory
        The artefact directory.

    Returns
    -------
    RecommenderModel
        Fitted, its arrays memory-mapped read-only.

    Raises
    ------
    RecommenderArtefactError
        A missing file, a header of another format or version, settings that do not validate, or
        an array missing or of the wrong shape; the message names the file and field.
    """
    import lightgbm as lgb
    from scipy import sparse

    from training.recommend.candidate_models import CandidateModels
    from training.recommend.data import InteractionData, PopularList
    from training.recommend.model import RecommenderModel, RecommenderSettings
    from training.recommend.ranker import RankerTraining
    from training.recommend.tifu import tifu_pool_vectors

    where = Path(directory)
    reader = _header(where)
    fitted = reader.section("fitted", _FITTED)
    try:
        settings = RecommenderSettings.from_dict(reader.section("settings", ()))
    except (TypeError, ValueError) as exc:
        raise RecommenderArtefactError(f"{where / HEADER}: settings: {exc}") from None
    item_ids = np.asarray(reader.field(fitted, "item_ids", list), dtype=object)
    n_items, n_users = len(item_ids), reader.field(fitted, "n_users", int)
    if (where / ARRAYS).is_dir():
        arrays = load_arrays(where / ARRAYS, RecommenderArtefactError)
    else:
        with np.load(where / ARRAYS_NPZ, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}

    def array(name: str, length: int | None = None) -> np.ndarray:
        if name not in arrays:
            raise RecommenderArtefactError(f"{where / ARRAYS}: missing array {name!r}")
        value = arrays[name]
        if length is not None and len(value) != length:
            raise RecommenderArtefactError(f"{where / ARRAYS}: {name} has {len(value)} entries, expected {length}")
        return value

    indptr, indices = array("indptr", n_users + 1), array("indices")

    def matrix(name: str) -> Any:
        values = array(f"data_{name}", len(indices)).astype(np.float64, copy=False)
        return sparse.csr_matrix((values, indices, indptr), shape=(n_users, n_items))

    try:
        popular_by = {col: {seg: PopularList(np.asarray(p["items"], dtype=np.int64), np.asarray(p["orders"], dtype=np.int64))
                            for seg, p in segs.items()}
                      for col, segs in reader.field(fitted, "popular_by", dict).items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise RecommenderArtefactError(f"{where / HEADER}: fitted.popular_by is malformed ({exc})") from None
    data = InteractionData(
        as_of=datetime.fromisoformat(fitted["as_of"]),
        customer_ids=array("customer_ids", n_users).astype(np.int64, copy=False),
        item_ids=item_ids,
        **{name: matrix(name) for name in _MATRICES},
        recommendable=array("recommendable", n_items).astype(bool, copy=False),
        category=np.asarray(reader.field(fitted, "item_categories", list), dtype=object),
        name=np.asarray(reader.field(fitted, "item_names", list), dtype=object),
        buyers=array("buyers", n_items).astype(np.float64, copy=False),
        buyers_30d=array("buyers_30d", n_items).astype(np.float64, copy=False),
        buyers_90d=array("buyers_90d", n_items).astype(np.float64, copy=False),
        orders_per_buyer=array("orders_per_buyer", n_items).astype(np.float64, copy=False),
        popular_by=popular_by,
    )
    similarity = sparse.csr_matrix(
        (array("similarity_data").astype(np.float64, copy=False), array("similarity_indices"), array("similarity_indptr", n_items + 1)),
        shape=(n_items, n_items))
    user_factors = array("user_factors", n_users)
    item_factors = array("item_factors", n_items)
    if user_factors.shape[1:] != (settings.factors,) or item_factors.shape[1:] != (settings.factors,):
        raise RecommenderArtefactError(f"{where / ARRAYS}: factors have shape {user_factors.shape} / "
                                       f"{item_factors.shape}, expected {settings.factors} columns")
    pool_rows = array("tifu_pool_rows").astype(np.int64)
    if len(pool_rows) and (pool_rows.min() < 0 or pool_rows.max() >= n_users):
        raise RecommenderArtefactError(f"{where / ARRAYS}: tifu_pool_rows holds rows outside 0 .. {n_users - 1}")
    models = CandidateModels(
        user_factors=np.ascontiguousarray(user_factors, dtype=np.float32),
        # A copy in memory (items x factors, small): implicit's Cython solvers (the fold-in of an
        # unknown customer) take writable buffers, and the memory map is read-only.
        item_factors=np.array(item_factors, dtype=np.float32, order="C"),
        similarity=similarity,
        als_idf=array("als_idf", n_items).astype(np.float64, copy=False),
        als_mean_row_weight=float(fitted["als_mean_row_weight"]),
        tifu_pool_rows=pool_rows,
        tifu_pool=tifu_pool_vectors(data, pool_rows),
    )
    booster, ranker_training = None, None
    if settings.ranker == "lightgbm":
        if not (where / RANKER).is_file():
            raise RecommenderArtefactError(f"recommender artefact {where}: missing file {RANKER} (the ranker is lightgbm)")
        try:
            booster = lgb.Booster(model_str=(where / RANKER).read_text(encoding="utf-8"))
        except lgb.basic.LightGBMError as exc:
            raise RecommenderArtefactError(f"{where / RANKER}: not a LightGBM model ({exc})") from None
        training: dict[str, Any] = dict(reader.field(fitted, "training", dict))
        for key in ("label_start", "label_end"):
            training[key] = datetime.fromisoformat(training[key])
        ranker_training = RankerTraining(**training)
    model = RecommenderModel(settings)
    model.data_, model.models_, model.booster_ = data, models, booster
    model.training_ = ranker_training
    model.settings_ = settings
    return model
