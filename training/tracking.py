"""The one door to MLflow tracking and the model registry, for every model (CLV, churn, recommender).

Where runs go is decided by the settings, never at import time (:func:`configure` says where).
:func:`configure` is the only place that touches MLflow's global state (tracking and registry URI);
every other function either takes the :class:`mlflow.MlflowClient` it returns or works on the run
opened by :func:`start_run`. Registered models are promoted with aliases (``champion``,
``challenger``), never with the stages MLflow 3 deprecated."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import duckdb
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    NOT_FOUND,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)

from features.errors import RapportError
from features.history import utc_naive
from features.settings import Settings
from features.store import sales_range

log = logging.getLogger(__name__)

#: Tag with the commit of the code that produced a run or a model version.
CODE_VERSION_TAG = "code_version"
#: MLflow's own tag for the source commit (shown in the UI next to the run).
GIT_COMMIT_TAG = "mlflow.source.git.commit"
#: MLflow refuses longer parameter values.
MAX_PARAM_LENGTH = 6000
#: Tag of a registered version with its own gate's verdict ("true" or "false"), set by its training
#: step; promotion, the bundle and ``rapport models list`` read it.
GATE_ELIGIBLE_TAG = "gate_eligible"
#: Artifact folder of a training run's plots; promotion copies it to the champion's plot folder.
PLOTS_ARTIFACT = "plots"
#: Tables whose row counts identify the data a model was trained on.
FINGERPRINT_TABLES = ("lines", "returns", "items", "identity_map")
#: Schemes whose server decides the artifact location of a new experiment.
_SERVER_SCHEMES = frozenset({"http", "https", "databricks", "databricks-uc", "uc"})
#: Loggers that report schema migrations of the SQLite store at INFO on first use.
_CHATTY_LOGGERS = ("alembic", "mlflow.store.db.utils", "mlflow.store.db.db_types")
_MISSING = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(NOT_FOUND)}
_REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


# --- where runs go ------------------------------------------------------------------------------


def tracking_uri(settings: Settings) -> str:
    """The tracking (and registry) URI: the setting, else the SQLite store under the data folder.

    Parameters
    ----------
    settings
        ``mlflow_tracking_uri`` and, when it is unset, ``mlflow_db_path`` are read.

    Returns
    -------
    str
        ``mlflow_tracking_uri`` as set, else ``sqlite:///`` and the absolute path of the SQLite store.
    """
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    # Absolute, so a later change of working directory still finds the same database.
    return f"sqlite:///{settings.mlflow_db_path.resolve()}"


def artifact_location(settings: Settings) -> str | None:
    """Where a new experiment keeps its artifacts.

    ``<data_dir>/mlflow/artifacts`` as a ``file://`` URI for the embedded store and for a database
    URI; None for a tracking server, which serves (and chooses) the artifact store itself.

    Parameters
    ----------
    settings
        ``mlflow_tracking_uri`` and ``mlflow_artifacts_dir`` are read.

    Returns
    -------
    str or None
        The artifact folder as an absolute ``file://`` URI; ``None`` for an ``http(s)`` or Databricks
        tracking URI.
    """
    if settings.mlflow_tracking_uri and urlparse(settings.mlflow_tracking_uri).scheme in _SERVER_SCHEMES:
        return None
    return settings.mlflow_artifacts_dir.resolve().as_uri()


def _quiet_mlflow() -> None:
    # MLflow draws a progress bar on uploads and downloads and the SQLite store announces its schema
    # migrations at INFO: both end up in the CLI's output. The CLI reports progress itself.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    # MLflow logs its INFO lines ("Inferring model signature ...") through its own stderr handler,
    # whatever the application's level. Follow the application (the CLI's --verbose) unless the user
    # chose a level with MLFLOW_LOGGING_LEVEL.
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:
        mlflow_logger = logging.getLogger("mlflow")
        if logging.getLogger().getEffectiveLevel() > logging.INFO and mlflow_logger.level < logging.WARNING:
            mlflow_logger.setLevel(logging.WARNING)


def configure(settings: Settings) -> mlflow.MlflowClient:
    """Point MLflow at the settings' store and return a client bound to it.

    Creates the folders of the embedded store and the experiment ``settings.mlflow_experiment``
    (with its artifact location) on first use; calling it again changes nothing. It also sets
    MLflow's global tracking and registry URI, because ``mlflow.start_run`` and ``log_model`` read
    them: this function is the only place in the project that does.

    Where runs go:

    * ``mlflow_tracking_uri`` unset (the default): an embedded SQLite store at
      ``<data_dir>/mlflow/mlflow.db`` with artifacts under ``<data_dir>/mlflow/artifacts``. Two
      data folders never share runs or registered models.
    * ``RAPPORT_MLFLOW_TRACKING_URI=http://host:5000`` (or ``postgresql://...``): the same code logs
      to a tracking server or a real database. A server chooses where artifacts go; a database URI
      keeps them under the data folder.

    Parameters
    ----------
    settings
        The deployment's settings (``mlflow_tracking_uri``, ``data_dir``, ``mlflow_experiment``).

    Returns
    -------
    mlflow.MlflowClient
        A client bound to the settings' tracking and registry URI.
    """
    _quiet_mlflow()
    if not settings.mlflow_tracking_uri:
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
        settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id(client, settings)
    return client


def experiment_id(client: mlflow.MlflowClient, settings: Settings) -> str:
    """The id of the settings' experiment, created (with its artifact location) when missing.

    Parameters
    ----------
    client
        A client on the tracking store.
    settings
        ``mlflow_experiment`` names the experiment; :func:`artifact_location` says where a new one
        keeps its artifacts.

    Returns
    -------
    str
        The experiment's id.

    Raises
    ------
    RuntimeError
        The experiment exists but is deleted (the message says how to restore it or choose another).
    """
    name = settings.mlflow_experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(settings))
        except MlflowException as exc:
            # Another process created it between the lookup and the creation.
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise RuntimeError(
            f"MLflow experiment {name!r} in {client.tracking_uri} is deleted: restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or choose another "
            f"name with RAPPORT_MLFLOW_EXPERIMENT"
        )
    return experiment.experiment_id


def current_client() -> mlflow.MlflowClient:
    """A client on the URIs :func:`configure` set (for code that runs inside :func:`start_run`).

    Returns
    -------
    mlflow.MlflowClient
        A client on MLflow's current tracking and registry URI.
    """
    return mlflow.MlflowClient(tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri())


# --- what a run records about its inputs -----------------------------------------------------------


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None) -> Any:
    # fetchall, not fetchone: DuckDB keeps a half-read result open and the next statement fails.
    return con.execute(sql, params or []).fetchall()[0][0]


def data_fingerprint(con: duckdb.DuckDBPyConnection, *, as_of: datetime) -> dict[str, Any]:
    """What identifies the data a model saw: row counts, the sales period and the ingested files.

    ``hash`` is a SHA-256 over the sorted content hashes of every ingested file and the row counts:
    the same store gives the same hash whatever the order files came in; ingesting one more file
    (or deleting rows) changes it. It is meant for comparing runs, not for security.

    Parameters
    ----------
    con
        An open store.
    as_of
        The training cutoff (naive UTC or aware); the counts ``*_before_as_of`` are of the history
        before it.

    Returns
    -------
    dict[str, Any]
        ``as_of`` (ISO), the row counts of :data:`FINGERPRINT_TABLES`, ``lines_before_as_of``,
        ``customers``, ``customers_before_as_of``, ``first_sale`` and ``last_sale`` (ISO or ``None``),
        ``files`` (ingested files) and ``hash``.
    """
    cutoff = utc_naive(as_of)
    counts = {table: int(_scalar(con, f"SELECT count(*) FROM {table}")) for table in FINGERPRINT_TABLES}
    counts["lines_before_as_of"] = int(_scalar(con, "SELECT count(*) FROM lines WHERE ts < ?", [cutoff]))
    counts["customers"] = int(_scalar(con, "SELECT count(DISTINCT customer_id) FROM identity_map"))
    counts["customers_before_as_of"] = int(_scalar(
        con,
        "SELECT count(DISTINCT m.customer_id) FROM lines l JOIN identity_map m ON l.record_key = m.key_hash "
        "WHERE l.ts < ?",
        [cutoff],
    ))
    first, last = sales_range(con) or (None, None)
    # In-memory inputs (the data-set loaders) have no file digest: their source, label and row count
    # stand in for it.
    files = sorted(row[0] for row in con.execute(
        "SELECT coalesce(sha256, source || ':' || path || ':' || rows) FROM ingested_files").fetchall())
    digest = hashlib.sha256(
        json.dumps({"files": files, "counts": counts}, sort_keys=True).encode("utf-8")
    ).hexdigest()
    return {
        "as_of": cutoff.isoformat(),
        **counts,
        "first_sale": None if first is None else first.isoformat(),
        "last_sale": None if last is None else last.isoformat(),
        "files": len(files),
        "hash": digest,
    }


def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            ["git", *args],
            cwd=_REPOSITORY_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            # Read-only: never take the index lock a concurrent commit may need.
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None


def code_version() -> str | None:
    """The commit of the project's working tree, with ``-dirty`` when tracked files have changed.

    None when the code does not run from a git checkout (an installed wheel, a container) or git is
    missing.

    Returns
    -------
    str or None
        The commit hash, suffixed ``-dirty`` when tracked files differ from it; ``None`` outside a
        git checkout of the project.
    """
    top = _git("rev-parse", "--show-toplevel")
    if top is None or top.returncode != 0 or Path(top.stdout.strip()).resolve() != _REPOSITORY_ROOT:
        return None
    head = _git("rev-parse", "HEAD")
    if head is None or head.returncode != 0:
        return None
    commit = head.stdout.strip()
    diff = _git("diff", "--quiet", "HEAD", "--")
    dirty = diff is not None and diff.returncode == 1
    return f"{commit}-dirty" if dirty else commit


# --- runs -----------------------------------------------------------------------------------------


@contextmanager
def start_run(
    settings: Settings,
    *,
    run_name: str,
    tags: Mapping[str, Any] | None = None,
    nested: bool = False,
) -> Iterator[Run]:
    """Open a run in the settings' experiment; it ends FINISHED, or FAILED when the block raises.

    The run is tagged with the code version and ``tags``. It is a child of the active run when there
    is one (each step's run under the ``rapport train`` parent run), or with ``nested=True``.

    Parameters
    ----------
    settings
        Where runs go (:func:`configure`) and the experiment (``mlflow_experiment``).
    run_name
        The run's name.
    tags
        More tags; values are turned into text (dates ISO, sequences comma-joined).
    nested
        Open the run as a child of the active run; a run opened while another is active is nested
        anyway.

    Yields
    ------
    mlflow.entities.Run
        The active run.

    Raises
    ------
    RuntimeError
        The settings' experiment is deleted (:func:`experiment_id`).
    """
    nested = nested or mlflow.active_run() is not None
    client = configure(settings)
    version = code_version()
    run_tags = {CODE_VERSION_TAG: version or "unknown"}
    if version:
        run_tags[GIT_COMMIT_TAG] = version.removesuffix("-dirty")
    run_tags.update({str(key): _param_value(value) for key, value in (tags or {}).items()})
    with mlflow.start_run(
        experiment_id=experiment_id(client, settings), run_name=run_name, nested=nested, tags=run_tags
    ) as run:
        yield run


def require_active_run(what: str) -> str:
    """The id of the active run; a clear error naming ``what`` when no run is open.

    Parameters
    ----------
    what
        The function asking, named in the message.

    Returns
    -------
    str
        The active run's id.

    Raises
    ------
    RuntimeError
        No run is active (MLflow would otherwise open one in its default experiment).
    """
    run = mlflow.active_run()
    if run is None:
        # MLflow would silently open a run in its default experiment (and an ./mlruns folder).
        raise RuntimeError(f"{what} needs an active run: call it inside training.tracking.start_run(...)")
    return run.info.run_id


def _flatten(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value)) if np.ndim(value) == 0 else False
    except (TypeError, ValueError):
        return False


def _param_value(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(_param_value(v) for v in value)
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def log_params_flat(params: Mapping[str, Any]) -> dict[str, str]:
    """Log parameters on the active run; nested mappings become dotted names (``data.lines``).

    None and NaN values are skipped with a warning; dates are ISO strings, sequences comma-joined.
    Returns what was logged.

    Parameters
    ----------
    params
        Parameter name -> value; a mapping value is flattened into ``name.key``. A value longer than
        :data:`MAX_PARAM_LENGTH` characters is truncated, with a warning.

    Returns
    -------
    dict[str, str]
        The names and texts logged.

    Raises
    ------
    RuntimeError
        No run is active (:func:`require_active_run`).
    """
    require_active_run("log_params_flat")
    logged: dict[str, str] = {}
    for name, value in _flatten(params):
        if _is_missing(value):
            log.warning("parameter %s is %r: not logged", name, value)
            continue
        text = _param_value(value)
        if len(text) > MAX_PARAM_LENGTH:
            log.warning("parameter %s has %d characters: truncated to %d", name, len(text), MAX_PARAM_LENGTH)
            text = text[:MAX_PARAM_LENGTH]
        logged[name] = text
    if logged:
        mlflow.log_params(logged)
    return logged


def log_metrics_flat(metrics: Mapping[str, Any], *, step: int | None = None) -> dict[str, float]:
    """Log numeric metrics on the active run; nested mappings become dotted names.

    None, NaN and infinite values are skipped with a warning (a metric that could not be computed is
    absent, not zero). A value that is not a number raises :class:`TypeError` naming the metric.
    Returns what was logged.

    Parameters
    ----------
    metrics
        Metric name -> number; a mapping value is flattened into ``name.key``.
    step
        The step the metrics are logged at (MLflow's ``step``); ``None``: MLflow's default.

    Returns
    -------
    dict[str, float]
        The names and values logged.

    Raises
    ------
    TypeError
        A value is not a number; the message names the metric.
    RuntimeError
        No run is active (:func:`require_active_run`).
    """
    require_active_run("log_metrics_flat")
    logged: dict[str, float] = {}
    for name, value in _flatten(metrics):
        if _is_missing(value):
            log.warning("metric %s is %r: not logged", name, value)
            continue
        if isinstance(value, str) or not isinstance(value, int | float | np.number | np.bool_):
            raise TypeError(f"metric {name} must be a number, got {type(value).__name__}: {value!r}")
        number = float(value)
        if not math.isfinite(number):
            log.warning("metric %s is %r: not logged", name, number)
            continue
        logged[name] = number
    if logged:
        mlflow.log_metrics(logged, step=step)
    return logged


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set tags on the active run (values as strings).

    Parameters
    ----------
    tags
        Tag name -> value; values are turned into text (dates ISO, sequences comma-joined).

    Returns
    -------
    None

    Raises
    ------
    RuntimeError
        No run is active (:func:`require_active_run`).
    """
    require_active_run("set_tags")
    mlflow.set_tags({str(key): _param_value(value) for key, value in tags.items()})


def log_artifact(path: Path | str, artifact_path: str | None = None) -> None:
    """Copy a local file (a plot, a report) into the active run's artifacts, under ``artifact_path``.

    Parameters
    ----------
    path
        The local file.
    artifact_path
        The folder inside the run's artifacts; ``None``: their root.

    Returns
    -------
    None

    Raises
    ------
    FileNotFoundError
        ``path`` is not a file.
    RuntimeError
        No run is active (:func:`require_active_run`).
    """
    require_active_run("log_artifact")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cannot log artifact {path}: no such file")
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_plots(paths: Iterable[Path | str]) -> None:
    """Copy a training run's plot files into its :data:`PLOTS_ARTIFACT` folder.

    Parameters
    ----------
    paths
        The plot files (PNG) to copy.

    Returns
    -------
    None

    Raises
    ------
    FileNotFoundError
        A path is not a file.
    RuntimeError
        No run is active (:func:`require_active_run`).
    """
    for path in paths:
        log_artifact(path, PLOTS_ARTIFACT)


def log_table(frame: pd.DataFrame, name: str, *, artifact_path: str = "tables") -> list[str]:
    """Log a table as ``<artifact_path>/<name>.csv`` and ``<name>.json`` (pandas' "split" layout).

    A named index becomes a column. Returns the artifact paths written.

    Parameters
    ----------
    frame
        The table to log.
    name
        The files' stem: no ``/``, not starting with a dot.
    artifact_path
        The folder inside the run's artifacts.

    Returns
    -------
    list[str]
        The artifact paths of the CSV and the JSON file.

    Raises
    ------
    ValueError
        ``name`` is not a plain file stem.
    RuntimeError
        No run is active (:func:`require_active_run`).
    """
    require_active_run("log_table")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"table name must be a plain file stem, got {name!r}")
    table = frame.reset_index() if _has_named_index(frame) else frame
    written: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rapport-table-") as tmp:
        csv_path = Path(tmp, f"{name}.csv")
        json_path = Path(tmp, f"{name}.json")
        table.to_csv(csv_path, index=False)
        table.to_json(json_path, orient="split", index=False, date_format="iso", double_precision=15)
        for path in (csv_path, json_path):
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
            written.append(f"{artifact_path}/{path.name}")
    return written


def _has_named_index(frame: pd.DataFrame) -> bool:
    return any(level is not None for level in frame.index.names)


# --- registry -------------------------------------------------------------------------------------


def _logged_model_id(client: mlflow.MlflowClient, run_id: str, artifact_name: str) -> str:
    run = client.get_run(run_id)
    found: list[Any] = []
    token = None
    while True:
        page = client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"name = '{artifact_name}'", page_token=token
        )
        found.extend(model for model in page if model.source_run_id == run_id)
        token = page.token
        if not token:
            break
    if not found:
        raise LookupError(f"run {run_id} logged no model named {artifact_name!r}")
    # The same name logged twice in one run: the later one is the model the run ended with.
    return max(found, key=lambda model: model.creation_timestamp).model_id


def register_model(
    client: mlflow.MlflowClient,
    *,
    run_id: str,
    artifact_name: str,
    model_name: str,
    tags: Mapping[str, Any] | None = None,
    model_id: str | None = None,
) -> ModelVersion:
    """Register the model ``artifact_name`` logged by run ``run_id`` as a new version of ``model_name``.

    ``model_id`` (from the ``ModelInfo`` of ``log_model``) skips the lookup by name. The registered
    model is created on first use. The new version carries ``tags`` and no alias: promotion is a
    separate, explicit :func:`set_alias`.

    Parameters
    ----------
    client
        The registry's client (:func:`configure`).
    run_id
        The run that logged the model.
    artifact_name
        The name the model was logged under (``log_model(name=...)``); the latest one of the run wins.
    model_name
        The registered model's name.
    tags
        Tags of the new version; values are turned into text.
    model_id
        The logged model's id, when known.

    Returns
    -------
    mlflow.entities.model_registry.ModelVersion
        The new version.

    Raises
    ------
    LookupError
        ``model_id`` is not given and the run logged no model named ``artifact_name``.
    """
    if model_id is None:
        model_id = _logged_model_id(client, run_id, artifact_name)
    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    version = client.create_model_version(
        name=model_name,
        source=f"models:/{model_id}",
        run_id=run_id,
        tags={str(key): _param_value(value) for key, value in (tags or {}).items()},
        model_id=model_id,
    )
    log.info("registered %s version %s from run %s", model_name, version.version, run_id)
    return version


def tag_registered_version(client: mlflow.MlflowClient, model_name: str, info: Any, *, gate_eligible: bool,
                           tags: Mapping[str, Any] | None = None) -> str | None:
    """Tag the version that ``log_model(..., registered_model_name=model_name)`` registered (``info``, its
    ``ModelInfo``) with its gate's verdict (:data:`GATE_ELIGIBLE_TAG`) and ``tags``, before promotion
    reads them. Returns the version, None when nothing was registered.

    Parameters
    ----------
    client
        The registry's client (:func:`configure`).
    model_name
        The registered model's name.
    info
        The ``ModelInfo`` returned by ``log_model``; its ``registered_model_version`` is read.
    gate_eligible
        Whether the version passed its own gate (tagged ``"true"`` or ``"false"``).
    tags
        More tags; values are turned into text.

    Returns
    -------
    str or None
        The version number; ``None`` when ``log_model`` registered nothing.
    """
    version = getattr(info, "registered_model_version", None)
    if version is None:
        return None
    for key, value in {GATE_ELIGIBLE_TAG: gate_eligible, **(tags or {})}.items():
        text = str(value).lower() if isinstance(value, bool) else _param_value(value)
        client.set_model_version_tag(model_name, str(version), str(key), text)
    return str(version)


@dataclass(frozen=True)
class StepRecord:
    """What a training step logs on its run before its model (:func:`finish_step`).

    Attributes
    ----------
    params
        Parameters; nested mappings become dotted names.
    metrics
        Metrics; nested mappings become dotted names.
    data_as_of
        The store's fingerprint is taken of the lines before this moment (``data.*`` parameters).
    tables
        Tables logged as ``tables/<name>.csv``, by name.
    plots
        Figures logged as artifacts.
    tags
        Run tags besides ``gate.eligible`` (the gate's reasons, the step's choices).
    """

    params: Mapping[str, Any]
    metrics: Mapping[str, Any]
    data_as_of: datetime
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    plots: Sequence[Path | str] = ()
    tags: Mapping[str, Any] = field(default_factory=dict)


def finish_step(
    con: duckdb.DuckDBPyConnection, client: mlflow.MlflowClient, model_name: str, record: StepRecord, *,
    gate_eligible: bool, log_model: Callable[[], Any], version_tags: Mapping[str, Any] | None = None,
) -> str | None:
    """The end every training step shares, on its active run: parameters with the store's
    fingerprint, metrics, tables, plots, tags with the gate's verdict, then the model logged and
    registered (``log_model``) and its version tagged before promotion reads it.

    Parameters
    ----------
    con
        The store (for the data fingerprint).
    client
        The tracking client (:func:`configure`).
    model_name
        The registered model's name (``ModelSpec.registered_name``).
    record
        What the step logs (:class:`StepRecord`).
    gate_eligible
        The gate's verdict, a run tag and a version tag (:data:`GATE_ELIGIBLE_TAG`).
    log_model
        Logs and registers the model; returns its ``ModelInfo``.
    version_tags
        More tags of the registered version.

    Returns
    -------
    str or None
        The registered version, None when nothing was registered.
    """
    log_params_flat({**record.params, "data": data_fingerprint(con, as_of=record.data_as_of)})
    log_metrics_flat(record.metrics)
    for name, table in record.tables.items():
        log_table(table, name)
    log_plots(record.plots)
    set_tags({"gate.eligible": str(gate_eligible).lower(), **record.tags})
    return tag_registered_version(client, model_name, log_model(), gate_eligible=gate_eligible, tags=version_tags)


def set_alias(client: mlflow.MlflowClient, model_name: str, alias: str, version: str | int) -> None:
    """Point ``alias`` (``champion``, ``challenger``) of ``model_name`` at ``version``; moves it if set.

    Parameters
    ----------
    client
        The registry's client (:func:`configure`).
    model_name
        The registered model's name.
    alias
        The alias to set.
    version
        The version it is to point at.

    Returns
    -------
    None
    """
    client.set_registered_model_alias(model_name, alias, str(version))


def latest_with_alias(client: mlflow.MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, or None when the alias or the registered model does not exist.

    Parameters
    ----------
    client
        The registry's client (:func:`configure`).
    model_name
        The registered model's name.
    alias
        The alias (``champion``, ``challenger``).

    Returns
    -------
    mlflow.entities.model_registry.ModelVersion or None
        The version the alias points at; ``None`` when the model is not registered or the alias is
        not set.
    """
    # The SQLite store reports a missing alias as INVALID_PARAMETER_VALUE, the code of any bad
    # argument too: look the alias up on the registered model instead of guessing from the error.
    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code in _MISSING:
            return None
        raise
    if alias not in (registered.aliases or {}):
        return None
    return client.get_model_version_by_alias(model_name, alias)


def model_uri(model_name: str, alias_or_version: str | int) -> str:
    """The URI of a registered version: ``models:/NAME/3`` for a version number, ``models:/NAME@champion``
    for an alias (the version it points at when the URI is read).

    Parameters
    ----------
    model_name
        The registered model's name.
    alias_or_version
        A version number, or an alias.

    Returns
    -------
    str
        The ``models:/`` URI.
    """
    text = str(alias_or_version)
    return f"models:/{model_name}/{text}" if text.isdigit() else f"models:/{model_name}@{text}"


def load_model(client: mlflow.MlflowClient, model_name: str, alias_or_version: str | int) -> Any:
    """The fitted model (``ClvModel``, ``ChurnModel``, ``RecommenderModel``) of a registered version, by
    number (``3``) or alias (``champion``). Every command that reads a model from the registry reads it
    here. An alias is resolved to its version first, so the model loaded is the version named, even if
    the alias moves meanwhile; :class:`NoModelError` when the version or the alias does not exist.

    Parameters
    ----------
    client
        The registry's client (:func:`configure`).
    model_name
        The registered model's name.
    alias_or_version
        A version number, or an alias.

    Returns
    -------
    Any
        The model the version's pyfunc wraps.

    Raises
    ------
    NoModelError
        The version, the alias or the registered model does not exist.
    """
    text = str(alias_or_version)
    version = _version(client, model_name, text) if text.isdigit() else latest_with_alias(client, model_name, text)
    if version is None:
        raise NoModelError(f"{model_name} has no version with the alias {text!r}")
    return mlflow.pyfunc.load_model(model_uri(model_name, version.version)).unwrap_python_model().model


class NoModelError(RapportError, LookupError):
    """No registered version of a model to use: it must be trained first."""


def resolve_version(client: mlflow.MlflowClient, model_name: str, version: str | None = None) -> tuple[ModelVersion, str]:
    """The version to use and how it was chosen: ``version`` when given, else the ``champion``,
    else (nothing promoted yet) the latest registered version.

    Parameters
    ----------
    client
        The registry's client (:func:`configure`).
    model_name
        The registered model's name.
    version
        The version asked for; ``None``: the champion, else the latest version.

    Returns
    -------
    tuple[mlflow.entities.model_registry.ModelVersion, str]
        The version and how it was chosen, in words (for the command's output).

    Raises
    ------
    NoModelError
        The version asked for does not exist, or no version is registered.
    """
    if version is not None:
        return _version(client, model_name, str(version)), f"version {version} (asked for)"
    champion = latest_with_alias(client, model_name, "champion")
    if champion is not None:
        return champion, "the champion"
    versions: list[ModelVersion]
    try:
        versions = list(client.search_model_versions(f"name = '{model_name}'"))
    except MlflowException as exc:
        if exc.error_code in _MISSING:
            versions = []
        else:
            raise
    if not versions:
        raise NoModelError(f"no version of {model_name} is registered: train it first (rapport train)")
    latest = max(versions, key=lambda v: int(v.version))
    return latest, "the latest version (no champion promoted yet)"


def _version(client: mlflow.MlflowClient, model_name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(model_name, version)
    except MlflowException as exc:
        raise NoModelError(f"{model_name} has no version {version}: {exc.message}") from None
