"""The promotion gate: which registered version the service and batch scores use.

Every training step registers a new version of its model (:data:`training.models.MODELS`) tagged
``gate_eligible`` with its own gate's verdict (each model beats its baselines as its step defines).
:func:`decide` compares it with the current ``champion`` on the model's key metrics and
:func:`apply` gives it the alias ``champion`` or ``challenger``; :func:`promote_manually` is the
override (``rapport models promote NAME VERSION``). Whenever the alias moves, the champion's plots
are copied to one stable place (:func:`publish_champion_plots`), so that it always shows the served
model, whatever challengers and backtests wrote since into their own run folders."""

from __future__ import annotations

import getpass
import json
import logging
import math
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from features.errors import ArgumentError, RapportError
from training import tracking
from training.models import REGISTERED_NAMES, KeyMetric, by_name
from training.plotting import champion_plot_dir

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


#: The registered models, in pipeline order (``rapport models list`` lists them).
MODEL_NAMES: tuple[str, ...] = REGISTERED_NAMES


class GateFailedError(RapportError, ValueError):
    """A manual promotion of a version that failed its own gate, without ``force``."""


@dataclass(frozen=True)
class Promotion:
    """The alias a version gets and why."""

    model_name: str
    version: str
    alias: str
    previous_champion: str | None
    reasons: tuple[str, ...]
    metrics: Mapping[str, float]
    champion_metrics: Mapping[str, float] | None

    @property
    def promoted(self) -> bool:
        """Whether the version becomes the champion.

        Returns
        -------
        bool
            True when :attr:`alias` is ``champion``.
        """
        return self.alias == CHAMPION


def _run_of(client: mlflow.MlflowClient, version: ModelVersion) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    if not version.run_id:
        return {}, {}, {}
    run = client.get_run(version.run_id)
    return dict(run.data.metrics), dict(run.data.params), dict(run.data.tags)


def _key_metrics(keys: Iterable[KeyMetric], metrics: Mapping[str, float]) -> dict[str, float]:
    return {k.metric: float(metrics.get(k.metric, math.nan)) for k in keys}


def decide(client: mlflow.MlflowClient, model_name: str, version: str, *, tolerance: float) -> Promotion:
    """The alias ``version`` of ``model_name`` deserves; changes nothing.

    The key metrics are those of the model's :class:`~training.models.ModelSpec` (``key_metrics``),
    read from both versions' training runs. The version becomes:

    - ``champion`` when it passed its own gate AND no key metric is worse than the champion's beyond
      ``tolerance`` (relative: a higher-is-better metric must reach ``champion × (1 − tol)``, a
      lower-is-better one stay under ``champion × (1 + tol)``); the first eligible version of a
      model becomes champion;
    - ``challenger`` otherwise, with the reasons (which :func:`apply` writes to the version's tags
      ``promotion.decision`` and ``promotion.reasons``; the training summary shows them).

    "The same evaluation": both runs logged the evaluation window they were measured on (the spec's
    ``window_params``); when the windows differ the comparison still happens and the reasons say so,
    since the numbers then come from different periods.

    Parameters
    ----------
    client
        The registry's client (:func:`training.tracking.configure`).
    model_name
        The registered model's name.
    version
        The new version.
    tolerance
        The relative margin a key metric may be worse than the champion's (``promotion_tolerance``).

    Returns
    -------
    Promotion
        The alias, the reasons, the previous champion and both versions' key metrics.

    Raises
    ------
    ValueError
        ``tolerance`` is outside ``[0, 1)``.
    ArgumentError
        ``model_name`` is not a registered model of the project.
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"promotion tolerance must be in [0, 1), got {tolerance!r}")
    spec = by_name(model_name)
    candidate = client.get_model_version(model_name, str(version))
    metrics, params, tags = _run_of(client, candidate)
    mine = _key_metrics(spec.key_metrics, metrics)
    reasons: list[str] = []
    eligible = (candidate.tags or {}).get(tracking.GATE_ELIGIBLE_TAG) == "true"
    gate_text = tags.get("gate.reasons", "")
    if not eligible:
        reasons.append("its own gate failed" + (f": {gate_text}" if gate_text else ""))
    champion = tracking.latest_with_alias(client, model_name, CHAMPION)
    champion_version = None if champion is None else str(champion.version)
    if champion is None or champion_version == str(version):
        if eligible:
            reasons.append("no champion yet")
        return Promotion(model_name, str(version), CHAMPION if eligible else CHALLENGER,
                         champion_version, tuple(reasons), mine, None)
    their_metrics, their_params, _ = _run_of(client, champion)
    theirs = _key_metrics(spec.key_metrics, their_metrics)
    window = spec.window_params
    if any(params.get(p) != their_params.get(p) for p in window):
        reasons.append("note: the champion was evaluated on another period ("
                       + ", ".join(f"{p} {their_params.get(p)} vs {params.get(p)}" for p in window) + ")")
    worse = False
    for key in spec.key_metrics:
        new, old = mine[key.metric], theirs[key.metric]
        if not math.isfinite(new):
            worse = True
            reasons.append(f"{key.label} is undefined for the new version")
            continue
        if not math.isfinite(old):
            reasons.append(f"{key.label} {new:.4f}; the champion has none to compare with")
            continue
        limit = old * (1 - tolerance) if key.higher_is_better else old * (1 + tolerance)
        bad = new < limit if key.higher_is_better else new > limit
        worse |= bad
        verdict = "worse than" if bad else "not worse than"
        reasons.append(f"{key.label} {new:.4f} is {verdict} champion v{champion_version}'s {old:.4f} "
                       f"(tolerance {tolerance:.0%})")
    alias = CHAMPION if eligible and not worse else CHALLENGER
    return Promotion(model_name, str(version), alias, champion_version, tuple(reasons), mine, theirs)


def apply(client: mlflow.MlflowClient, promotion: Promotion) -> None:
    """Tag the version with the decision, then point its alias at it (one registry call).

    Atomicity: a version is created by the registry only after its artefacts are written, its tags
    are set before the alias moves, and moving an alias is one registry call — a reader that
    resolves ``models:/NAME@champion`` sees either the old champion or the new one, complete.

    Parameters
    ----------
    client
        The registry's client.
    promotion
        The decision of :func:`decide` (or :func:`promote_manually`).

    Returns
    -------
    None
    """
    name, version = promotion.model_name, promotion.version
    client.set_model_version_tag(name, version, "promotion.decision", promotion.alias)
    client.set_model_version_tag(name, version, "promotion.reasons", " | ".join(promotion.reasons) or "-")
    client.set_model_version_tag(name, version, "promotion.at", _now())
    if promotion.promoted and promotion.previous_champion and promotion.previous_champion != version:
        client.set_model_version_tag(name, version, "promotion.previous_champion", promotion.previous_champion)
    tracking.set_alias(client, name, promotion.alias, version)
    log.info("%s version %s is now %s", name, version, promotion.alias)


def gate_failure(client: mlflow.MlflowClient, version: ModelVersion) -> str | None:
    """Why ``version`` failed its own gate (its run's ``gate.reasons``), or None when it passed.

    Parameters
    ----------
    client
        The registry's client.
    version
        A registered version (its ``gate_eligible`` tag is read, then its run's tags).

    Returns
    -------
    str or None
        The gate's reasons (or a sentence saying that its run recorded no passing gate); ``None`` when
        the version is tagged ``gate_eligible``.
    """
    if (version.tags or {}).get(tracking.GATE_ELIGIBLE_TAG) == "true":
        return None
    _, _, tags = _run_of(client, version)
    return tags.get("gate.reasons") or "its training run recorded no passing gate"


def promote_manually(client: mlflow.MlflowClient, model_name: str, version: str, *, reason: str,
                     by: str | None = None, force: bool = False) -> Promotion:
    """Make ``version`` the champion whatever the comparison with the champion, recording who, why and
    when in the version's tags. :class:`GateFailedError` with the gate's reasons when the version
    failed its own gate (worse than a rule of thumb), unless ``force``, which the tags then record
    too.

    Parameters
    ----------
    client
        The registry's client.
    model_name
        The registered model's name.
    version
        The version to make champion.
    reason
        Why, in words (recorded in the tags).
    by
        Who promotes it; the current user when None.
    force
        Promote a version that failed its own gate.

    Returns
    -------
    Promotion
        The decision applied (alias ``champion``).

    Raises
    ------
    ArgumentError
        ``reason`` is empty.
    NoModelError
        ``model_name`` has no such version.
    GateFailedError
        The version failed its own gate and ``force`` is not set.
    """
    if not reason.strip():
        raise ArgumentError("a manual promotion needs a reason (--reason)")
    try:
        candidate = client.get_model_version(model_name, str(version))
    except MlflowException:
        raise tracking.NoModelError(f"{model_name} has no version {version}") from None
    failure = gate_failure(client, candidate)
    if failure is not None and not force:
        raise GateFailedError(f"{model_name} version {version} failed its own gate ({failure}): it is not better "
                              f"than its baselines; promote it anyway with --force")
    who = by or _user()
    champion = tracking.latest_with_alias(client, model_name, CHAMPION)
    previous = None if champion is None else str(champion.version)
    client.set_model_version_tag(model_name, str(version), "promotion.manual_by", who)
    client.set_model_version_tag(model_name, str(version), "promotion.manual_reason", reason)
    reasons = [f"promoted by hand by {who}: {reason}"]
    if failure is not None:
        client.set_model_version_tag(model_name, str(version), "promotion.forced", "true")
        reasons.append(f"forced although it failed its own gate: {failure}")
    promotion = Promotion(model_name, str(version), CHAMPION, previous, tuple(reasons), {}, None)
    apply(client, promotion)
    return promotion


def publish_champion_plots(client: mlflow.MlflowClient, reports_dir: Path, model_name: str) -> Path | None:
    """Copy the champion's plots (its run's ``plots/`` artifacts) to ``<reports>/<step>/champion/``
    with a ``champion.json`` naming the version and run; returns the folder, None without a champion
    or plots. The folder is replaced as a whole: it never mixes two versions' plots.

    Parameters
    ----------
    client
        The registry's client.
    reports_dir
        The reports folder (``settings.reports_dir``).
    model_name
        The registered model's name.

    Returns
    -------
    pathlib.Path or None
        The champion's plot folder; ``None`` when there is no champion, its run has no ``step`` tag or
        its plots cannot be downloaded (logged as a warning; the promotion stands).
    """
    champion = tracking.latest_with_alias(client, model_name, CHAMPION)
    if champion is None or not champion.run_id:
        return None
    run = client.get_run(champion.run_id)
    step = run.data.tags.get("step")
    if not step:
        return None
    target = champion_plot_dir(reports_dir, step)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path=tracking.PLOTS_ARTIFACT,
                                            dst_path=str(staging), tracking_uri=client.tracking_uri)
    except (MlflowException, OSError) as exc:
        # The promotion stands; only the copy of its plots is missing, and the log says why.
        log.warning("the plots of %s version %s could not be copied to %s: %s", model_name, champion.version,
                    target, exc)
        shutil.rmtree(staging, ignore_errors=True)
        return None
    for path in (staging / tracking.PLOTS_ARTIFACT).iterdir():
        path.rename(staging / path.name)
    (staging / tracking.PLOTS_ARTIFACT).rmdir()
    (staging / "champion.json").write_text(json.dumps(
        {"model": model_name, "version": str(champion.version), "run_id": champion.run_id, "copied_at": _now()},
        indent=2))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def model_versions(client: mlflow.MlflowClient, model_names: Iterable[str] = MODEL_NAMES) -> pd.DataFrame:
    """One row per registered version: model, version, aliases, gate verdict, key metrics, created.

    Parameters
    ----------
    client
        The registry's client.
    model_names
        The registered models to list; a name the registry does not hold is left out.

    Returns
    -------
    pandas.DataFrame
        Columns ``model``, ``version``, ``aliases``, ``gate``, ``key metrics``, ``windows``,
        ``created`` (UTC) and ``decision``; newest version first within each model.
    """
    rows = []
    for name in model_names:
        try:
            versions = client.search_model_versions(f"name = '{name}'")
            registered = client.get_registered_model(name)
        except MlflowException:
            continue
        aliases: dict[str, list[str]] = {}
        for alias, v in (registered.aliases or {}).items():
            aliases.setdefault(str(v), []).append(alias)
        for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
            metrics, params, _ = _run_of(client, v)
            rows.append({
                "model": name,
                "version": int(v.version),
                "aliases": ", ".join(sorted(aliases.get(str(v.version), []))),
                "gate": (v.tags or {}).get(tracking.GATE_ELIGIBLE_TAG, "?"),
                "key metrics": ", ".join(f"{k.metric} {metrics[k.metric]:.4f}" for k in by_name(name).key_metrics
                                         if k.metric in metrics),
                "windows": windows_text(params),
                "created": datetime.fromtimestamp(v.creation_timestamp / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M"),
                "decision": (v.tags or {}).get("promotion.reasons", ""),
            })
    return pd.DataFrame(rows, columns=["model", "version", "aliases", "gate", "key metrics", "windows", "created",
                                       "decision"])


#: ``window.*`` parameters that describe the history rather than a chosen window.
_HISTORY_PARAMS = ("window.history_days", "window.repeat_customers", "window.median_days_between_purchases")


def windows_text(params: Mapping[str, str]) -> str:
    """The windows a version was trained with, from its run's ``window.*`` parameters
    (``features.windows.Windows.to_params``): "horizon_days 21 (auto), lookback_days 37 (auto)".

    Parameters
    ----------
    params
        A training run's parameters.

    Returns
    -------
    str
        Each chosen window with its value and ``auto`` or ``set``, comma-separated (the measures of the
        history are left out); empty when the run logged none.
    """
    names = [k for k in sorted(params) if k.startswith("window.") and not k.endswith(".why")
             and k not in _HISTORY_PARAMS]
    parts = []
    for name in names:
        why = params.get(f"{name}.why", "")
        parts.append(f"{name.removeprefix('window.')} {params[name]} ({'auto' if why.startswith('auto') else 'set'})")
    return ", ".join(parts)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
