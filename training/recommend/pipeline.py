"""The recommender training step: compare every model on the test period, fit the chosen one on the
whole history, log to MLflow and register ``rapport-recommender``.

The champion configuration is chosen on the validation period, judged and gated on the test
period, then brought up to the end of the history so that the service recommends from the latest
purchases; :func:`train_recommender` gives the steps."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from features.errors import NoDataError
from features.settings import Settings, SettingsError
from features.store import ibis_backend, sales_range
from features.windows import Windows, history_stats, recommend_windows
from training import tracking
from training.models import RECOMMEND
from training.plotting import run_plot_dir
from training.progress import reporter
from training.recommend.candidates import CandidateSizes
from training.recommend.data import InteractionData
from training.recommend.evaluation import (
    CHOSEN,
    CONFIGURATIONS,
    TIFU,
    TOP_FREQUENCY,
    RecommenderGate,
    compare,
    recommender_gate,
)
from training.recommend.metrics import mlflow_metric_name
from training.recommend.model import RecommenderInputError, RecommenderModel, RecommenderSettings
from training.recommend.plots import plot_comparison
from training.recommend.pyfunc import log_recommender_model
from training.recommend.search import SearchResult, search
from training.recommend.split import TemporalSplit, temporal_split

log = logging.getLogger(__name__)

MODEL_NAME = RECOMMEND.registered_name


@dataclass(frozen=True)
class RecommenderTrainingResult:
    run_id: str
    model_name: str
    model_version: str | None
    split: TemporalSplit
    table: pd.DataFrame
    gate: RecommenderGate
    model: RecommenderModel
    n_test_customers: int
    catalogue_version: str
    plots: tuple[str, ...]
    windows: Windows
    #: The validation search (None when the history had no room for it; the reason is in the gate).
    search: SearchResult | None = None


def resolve_windows(con: duckdb.DuckDBPyConnection, settings: Settings, cutoff: datetime | None = None) -> Windows:
    """The recommender's test and label periods and half-life for the store's history (before ``cutoff``).

    Parameters
    ----------
    con
        The store.
    settings
        The deployment's settings (``recommend.test_days``, ``recommend.label_days``,
        ``recommend.half_life_days``).
    cutoff
        Only the history before it counts; all of it when None.

    Returns
    -------
    Windows
        ``test_days``, ``valid_days`` and ``half_life_days``, with how each was chosen.
    """
    return recommend_windows(history_stats(ibis_backend(con), before=cutoff), test_days=settings.recommend.test_days,
                             label_days=settings.recommend.label_days,
                             half_life_days=settings.recommend.half_life_days)


def recommender_settings(settings: Settings, windows: Windows) -> RecommenderSettings:
    """The model's settings from the project's (``recommend.model``, ``model_threads``) and the windows.

    Parameters
    ----------
    settings
        The deployment's settings.
    windows
        The resolved windows (:func:`resolve_windows`): the half-life and the label period.

    Returns
    -------
    RecommenderSettings
        The settings of :class:`~training.recommend.model.RecommenderModel`; a
        :class:`~features.settings.SettingsError` names an unknown candidate source.
    """
    section = settings.recommend.model
    sources = tuple(CandidateSizes.__dataclass_fields__)
    unknown = sorted(set(section.candidates) - set(sources))
    if unknown:
        raise SettingsError([f"recommend.model.candidates: unknown source(s) {', '.join(unknown)}; "
                           f"expected {', '.join(sources[:-1])} and {sources[-1]}"])
    return RecommenderSettings(
        **{**section.model_dump(), "candidates": CandidateSizes(**section.candidates)},
        half_life_days=windows["half_life_days"],  # type: ignore[arg-type]
        label_days=int(windows["label_days"]),  # type: ignore[arg-type]
        num_threads=settings.model_threads,
    )


def catalogue_version(data: InteractionData) -> str:
    """A short hash of the catalogue the model recommends from: item ids, whether each is
    recommendable, and its category. Two runs on the same catalogue log the same version.

    Parameters
    ----------
    data
        The interaction data the model was fitted on.

    Returns
    -------
    str
        16 hex characters.
    """
    digest = hashlib.sha256()
    for item, ok, category in zip(data.item_ids, data.recommendable, data.category):
        digest.update(f"{item}\x1f{int(ok)}\x1f{category or ''}\x1e".encode())
    return digest.hexdigest()[:16]


def _last_sale(con: duckdb.DuckDBPyConnection, cutoff: datetime | None) -> datetime:
    found = sales_range(con, before=cutoff)
    if found is None:
        where = "" if cutoff is None else f" before {cutoff:%Y-%m-%d}"
        raise NoDataError(f"the store holds no sale{where}: ingest data first (rapport data ingest DIR)")
    return found[1]


def train_recommender(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    *,
    cutoff: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> RecommenderTrainingResult:
    """Compare, fit on the whole history (before ``cutoff``), log and register.

    1. The split (:func:`training.recommend.split.temporal_split`): the last ``recommend.test_days`` of
       the history (before ``--cutoff`` in a backtest) are the test period, the ``recommend.label_days``
       before them the label period the ranker learns on. With ``auto`` both periods and the half-life
       come from the history (:func:`features.windows.recommend_windows`); a history too short skips
       the step.
    2. :func:`training.recommend.search.search`: on the validation period, the hyper-parameters
       (Optuna, within ``train_search_budget_s``) and the champion among the servable configurations
       (the blend, TIFU-KNN, personal top frequency: a baseline when nothing beats it).
    3. :func:`training.recommend.evaluation.compare`: the ranked blend, TIFU-KNN, the baselines and the
       plain candidate models fitted before the test period and judged on it; the champion's gate.
    4. The model that is registered is the champion's configuration brought up to the end of the
       history: the ranker (or rule) the test period judged, with its candidate models refitted on
       everything (ALS warm-started), so that the service recommends from the latest purchases. The
       run logs the comparison table (CSV and JSON) and the validation table, its plot, the
       parameters (the searched values as ``search.*``), the catalogue version and the data
       fingerprint; the model version is tagged ``gate_eligible`` and ``champion_configuration``.

    Parameters
    ----------
    con
        The store the interactions and the catalogue are read from.
    settings
        The deployment's settings (the ``recommend`` section and windows, the search budget, MLflow).
    cutoff
        A backtest's end of history: the test period ends there; None uses every sale.
    progress
        Receives each line the step logs (validation, evaluation, final model, logging).

    Returns
    -------
    RecommenderTrainingResult
        The run and registered version, the split, the comparison table and gate, the fitted model,
        the catalogue version, the plots, the windows and the validation search.
    """

    step = reporter(log, progress)

    backend = ibis_backend(con)
    windows = resolve_windows(con, settings, cutoff)
    model_settings = recommender_settings(settings, windows)
    split = temporal_split(_last_sale(con, cutoff), test_days=int(windows["test_days"]),  # type: ignore[arg-type]
                           valid_days=int(windows["label_days"]))  # type: ignore[arg-type]
    chosen: SearchResult | None = None
    try:
        chosen = search(backend, split, model_settings, budget_s=settings.train_search_budget_s,
                        progress=lambda text: step(f"validation: {text}"))
    except RecommenderInputError as exc:
        step(f"validation: no choice on the validation period ({exc}); the settings as given")
    if chosen is not None:
        model_settings = chosen.settings
        comparison = compare(backend, split, model_settings, champion=chosen.champion, prefitted=chosen.model,
                             progress=lambda text: step(f"evaluation: {text}"))
        comparison = replace(comparison, gate=replace(
            comparison.gate, reasons=(*chosen.reasons[:-1], *comparison.gate.reasons)))
    else:
        comparison = compare(backend, split, model_settings, progress=lambda text: step(f"evaluation: {text}"))
        # Nothing to choose on before the test period: the first learned configuration that passes
        # the gate there, else the baseline, so that what is served never loses to it.
        champion = next((name for name in (CHOSEN, TIFU) if recommender_gate(comparison.table, name).eligible),
                        TOP_FREQUENCY)
        gate = recommender_gate(comparison.table, champion)
        comparison = replace(comparison, gate=replace(gate, reasons=(
            "the history leaves no validation period before the test period: chosen on the test period",
            *gate.reasons)))
        model_settings = replace(model_settings, ranker=CONFIGURATIONS[champion])
    step(f"final model on the whole history ({comparison.gate.champion})")
    # The ranker (or rule) judged on the test period is the one served; its candidate models are
    # refitted on the whole history, ALS starting from the comparison's factors.
    evaluated = comparison.model.with_ranker(model_settings.ranker)
    final_settings = evaluated.settings_
    model = evaluated.refitted_on(evaluated.interaction_data(backend, split.test_end))
    version_of_catalogue = catalogue_version(model.data_)

    step("logging the run to MLflow")
    client = tracking.configure(settings)
    table = comparison.table
    with tracking.start_run(settings, run_name=f"{RECOMMEND.key} {split.test_end.date()}",
                            tags={"step": RECOMMEND.key}) as run:
        plot_dir = run_plot_dir(settings.reports_dir, RECOMMEND.key, run.info.run_id)
        plots = [plot_comparison(comparison.table, plot_dir / "comparison.png",
                                 title=f"Recommenders on {split.valid_end:%Y-%m-%d} .. {split.test_end:%Y-%m-%d} "
                                       f"({comparison.n_customers:,} customers)",
                                 champion=comparison.gate.champion)]
        params: dict[str, Any] = {
            "train_end": split.train_end.date().isoformat(),
            "valid_end": split.valid_end.date().isoformat(),
            "test_end": split.test_end.date().isoformat(),
            "catalogue_version": version_of_catalogue,
            "catalogue_items": int(model.data_.n_items),
            "recommendable_items": int(model.data_.recommendable.sum()),
            "customers": int(model.data_.n_users),
            "model": {k: v for k, v in final_settings.as_dict().items() if k != "candidates"},
            "candidates": final_settings.candidates.__dict__,
            "ranker_best_iteration": None if model.training_ is None else model.training_.best_iteration,
            "champion_configuration": comparison.gate.champion,
            **windows.to_params(),
        }
        if chosen is not None:
            params["search"] = {
                "trials": chosen.trials, "seconds": round(chosen.seconds, 1),
                "budget_s": settings.train_search_budget_s,
                **{k: (v.__dict__ if hasattr(v, "__dict__") else v) for k, v in chosen.params.items()}}
        metrics: dict[str, float] = {}
        for name, row in table.iterrows():
            prefix = "model" if name == comparison.gate.champion else _slug(str(name))
            metrics.update({f"{prefix}.{mlflow_metric_name(col)}": float(v) for col, v in row.items()
                            if isinstance(v, (int, float, np.floating)) and np.isfinite(v)})
        metrics.update(comparison.gate.to_metrics())
        metrics["test_customers"] = float(comparison.n_customers)
        if model.training_ is not None:
            metrics.update({"ranker_candidate_recall": model.training_.candidate_recall,
                            "ranker_validation_ndcg_at_20": model.training_.validation_ndcg20})
        if chosen is not None:
            for name, row in chosen.table.iterrows():
                metrics.update({f"validation.{_slug(str(name))}.{mlflow_metric_name(col)}": float(v)
                                for col, v in row.items() if np.isfinite(v)})
        tables = {"model_comparison": table.reset_index()}
        if chosen is not None:
            tables["validation_comparison"] = chosen.table.reset_index()
        record = tracking.StepRecord(params=params, metrics=metrics, data_as_of=split.test_end, tables=tables,
                                     plots=plots, tags={
            "gate.reasons": " | ".join(comparison.gate.reasons),
            "gate.best_baseline": comparison.gate.best_baseline,
            "gate.champion": comparison.gate.champion,
            "catalogue_version": version_of_catalogue,
        })
        sample = pd.DataFrame({"customer_id": model.data_.customer_ids[:5]})
        version = tracking.finish_step(
            con, client, MODEL_NAME, record, gate_eligible=comparison.gate.eligible,
            log_model=lambda: log_recommender_model(model, registered_model_name=MODEL_NAME, input_example=sample,
                                                    tags={"catalogue_version": version_of_catalogue}),
            version_tags={"champion_configuration": comparison.gate.champion})
        run_id = run.info.run_id
    return RecommenderTrainingResult(
        run_id=run_id, model_name=MODEL_NAME, model_version=version, split=split,
        table=table, gate=comparison.gate, model=model, n_test_customers=comparison.n_customers,
        catalogue_version=version_of_catalogue, plots=tuple(str(p) for p in plots), search=chosen,
        windows=windows,
    )


def _slug(name: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in name.lower())
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_")

