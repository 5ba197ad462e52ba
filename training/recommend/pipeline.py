"""The recommender training step: compare every model on the test period, fit the chosen one on the
whole history, log to MLflow and register ``rapport-recommender``.

1. The split (:func:`training.recommend.split.temporal_split`): the last ``recommend_test_days`` of
   the history (before ``--cutoff`` in a backtest) are the test period, the ``recommend_valid_days``
   before them the label period the ranker learns on. With ``auto`` both periods and the half-life
   come from the history (:func:`features.windows.recommend_windows`); a history too short skips
   the step.
2. :func:`training.recommend.evaluation.compare`: the ranked blend, the baselines and the plain
   candidate models fitted before the test period and judged on it; the gate.
3. The model that is registered is the same configuration refitted up to the end of the history:
   its ranker learns on the test period (the latest labels, from the candidate models the comparison
   fitted before it), its candidate models see everything, so that the service recommends from the
   latest purchases. The run logs the comparison table (CSV and
   JSON), its plot, the parameters, the catalogue version and the data fingerprint; the model
   version is tagged ``gate_eligible``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import duckdb
import numpy as np
import pandas as pd

from features.history import utc_naive
from features.settings import Settings
from features.store import ibis_backend
from features.windows import Windows, history_stats, recommend_windows
from training import tracking
from training.plotting import run_plot_dir
from training.recommend.candidates import CandidateSizes
from training.recommend.data import InteractionData
from training.recommend.evaluation import CHOSEN, RecommenderGate, compare
from training.recommend.metrics import mlflow_metric_name
from training.recommend.model import RecommenderModel, RecommenderSettings
from training.recommend.plots import plot_comparison
from training.recommend.pyfunc import log_recommender_model
from training.recommend.split import TemporalSplit, purchases_between, temporal_split

log = logging.getLogger(__name__)

MODEL_NAME = "rapport-recommender"


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


def resolve_windows(con: duckdb.DuckDBPyConnection, settings: Settings, cutoff: datetime | None = None) -> Windows:
    """The recommender's test and label periods and half-life for the store's history (before ``cutoff``)."""
    return recommend_windows(history_stats(ibis_backend(con), before=cutoff), test_days=settings.recommend_test_days,
                             valid_days=settings.recommend_valid_days,
                             half_life_days=settings.recommend_half_life_days)


def recommender_settings(settings: Settings, windows: Windows) -> RecommenderSettings:
    """The model's settings from the project's (``recommend_*``, ``model_threads``) and the windows."""
    sizes = settings.recommend_candidates
    unknown = sorted(set(sizes) - {"own", "als", "knn", "popular"})
    if unknown:
        raise ValueError(f"recommend_candidates: unknown source(s) {', '.join(unknown)}; "
                         "expected own, als, knn and popular")
    return RecommenderSettings(
        half_life_days=windows["half_life_days"],  # type: ignore[arg-type]
        browse_weight=settings.recommend_browse_weight,
        factors=settings.recommend_factors,
        regularization=settings.recommend_regularization,
        iterations=settings.recommend_iterations,
        warm_iterations=settings.recommend_warm_iterations,
        knn_neighbours=settings.recommend_neighbours,
        candidates=CandidateSizes(**sizes),
        label_days=int(windows["valid_days"]),  # type: ignore[arg-type]
        max_training_customers=settings.recommend_max_training_customers,
        n_estimators=settings.recommend_ranker_trees,
        repurchasable_categories=tuple(settings.recommend_repurchasable_categories),
        num_threads=settings.model_threads,
    )


def catalogue_version(data: InteractionData) -> str:
    """A short hash of the catalogue the model recommends from: item ids, whether each is
    recommendable, and its category. Two runs on the same catalogue log the same version."""
    digest = hashlib.sha256()
    for item, ok, category in zip(data.item_ids, data.recommendable, data.category):
        digest.update(f"{item}\x1f{int(ok)}\x1f{category or ''}\x1e".encode())
    return digest.hexdigest()[:16]


def _last_sale(con: duckdb.DuckDBPyConnection, cutoff: datetime | None) -> datetime:
    if cutoff is None:
        rows = con.execute("SELECT max(ts) FROM lines").fetchall()
    else:
        rows = con.execute("SELECT max(ts) FROM lines WHERE ts < ?", [utc_naive(cutoff)]).fetchall()
    latest = rows[0][0]
    if latest is None:
        where = "" if cutoff is None else f" before {cutoff:%Y-%m-%d}"
        raise ValueError(f"the store holds no sale{where}: ingest data first (rapport data ingest DIR)")
    return pd.Timestamp(latest).to_pydatetime()


def train_recommender(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    *,
    cutoff: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> RecommenderTrainingResult:
    """Compare, fit on the whole history (before ``cutoff``), log and register (see the module docstring)."""

    def step(text: str) -> None:
        log.info(text)
        if progress:
            progress(text)

    backend = ibis_backend(con)
    windows = resolve_windows(con, settings, cutoff)
    model_settings = recommender_settings(settings, windows)
    split = temporal_split(_last_sale(con, cutoff), test_days=int(windows["test_days"]),  # type: ignore[arg-type]
                           valid_days=int(windows["valid_days"]))  # type: ignore[arg-type]
    comparison = compare(backend, split, model_settings, progress=lambda text: step(f"evaluation: {text}"))
    step("final model on the whole history")
    # The final ranker learns on the test period, the latest labels there are, from the candidate
    # models the comparison already fitted on the history before it (not fitted a second time).
    evaluated = comparison.model
    final_settings = replace(model_settings, label_days=(split.test_end - split.valid_end).days)
    model = RecommenderModel(final_settings)
    model.fit_data(evaluated.data_, purchases_between(backend, split.valid_end, split.test_end),
                   model.interaction_data(backend, split.test_end), models_before=evaluated.models_,
                   progress=lambda text: step(f"final: {text}"))
    version_of_catalogue = catalogue_version(model.data_)

    step("logging the run to MLflow")
    client = tracking.configure(settings)
    table = comparison.table
    with tracking.start_run(settings, run_name=f"recommend {split.test_end.date()}", tags={"step": "recommend"}) as run:
        plot_dir = run_plot_dir(settings.reports_dir, "recommend", run.info.run_id)
        plots = [plot_comparison(comparison.table, plot_dir / "comparison.png",
                                 title=f"Recommenders on {split.valid_end:%Y-%m-%d} .. {split.test_end:%Y-%m-%d} "
                                       f"({comparison.n_customers:,} customers)")]
        tracking.log_params_flat({
            "train_end": split.train_end.date().isoformat(),
            "valid_end": split.valid_end.date().isoformat(),
            "test_end": split.test_end.date().isoformat(),
            "catalogue_version": version_of_catalogue,
            "catalogue_items": int(model.data_.n_items),
            "recommendable_items": int(model.data_.recommendable.sum()),
            "customers": int(model.data_.n_users),
            "model": {k: v for k, v in final_settings.as_dict().items() if k != "candidates"},
            "candidates": final_settings.candidates.__dict__,
            "ranker_best_iteration": model.training_.best_iteration,
            **windows.to_params(),
        })
        tracking.log_params_flat({"data": tracking.data_fingerprint(con, as_of=split.test_end)})
        metrics: dict[str, float] = {}
        for name, row in table.iterrows():
            prefix = "model" if name == CHOSEN else _slug(str(name))
            metrics.update({f"{prefix}.{mlflow_metric_name(col)}": float(v) for col, v in row.items()
                            if isinstance(v, (int, float, np.floating)) and np.isfinite(v)})
        metrics.update(comparison.gate.to_metrics())
        metrics.update({"test_customers": float(comparison.n_customers),
                        "ranker_candidate_recall": model.training_.candidate_recall,
                        "ranker_validation_ndcg_at_20": model.training_.validation_ndcg20})
        tracking.log_metrics_flat(metrics)
        tracking.log_table(table.reset_index(), "model_comparison")
        for path in plots:
            tracking.log_artifact(path, "plots")
        tracking.set_tags({
            "gate.eligible": str(comparison.gate.eligible).lower(),
            "gate.reasons": " | ".join(comparison.gate.reasons),
            "gate.best_baseline": comparison.gate.best_baseline,
            "catalogue_version": version_of_catalogue,
        })
        sample = pd.DataFrame({"customer_id": model.data_.customer_ids[:5]})
        info = log_recommender_model(model, registered_model_name=MODEL_NAME, input_example=sample,
                                     tags={"catalogue_version": version_of_catalogue})
        version = getattr(info, "registered_model_version", None)
        if version is not None:
            client.set_model_version_tag(MODEL_NAME, str(version), "gate_eligible",
                                         str(comparison.gate.eligible).lower())
        run_id = run.info.run_id
    return RecommenderTrainingResult(
        run_id=run_id, model_name=MODEL_NAME, model_version=None if version is None else str(version), split=split,
        table=table, gate=comparison.gate, model=model, n_test_customers=comparison.n_customers,
        catalogue_version=version_of_catalogue, plots=tuple(str(p) for p in plots), windows=windows,
    )


def _slug(name: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in name.lower())
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_")

