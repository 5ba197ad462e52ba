"""`rapport train`: every model step under one MLflow parent run, then the promotion gate.

Steps, in order (:data:`training.models.MODELS`): CLV → churn (it fits a BG/NBD per cutoff for its
features) → recommender. Each step fits, evaluates against its baselines, logs a nested MLflow run
(parameters, metrics, tables, plots, data fingerprint, code version) and registers a new version of
its model. Only when every step asked for has succeeded does promotion run
(:mod:`training.promotion`); what a failed, skipped or interrupted step and a backtest do is
:func:`run_pipeline`'s to say."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import mlflow
import pandas as pd

from features.errors import ArgumentError, RapportError
from features.settings import Settings
from features.windows import HistoryTooShort
from training import promotion, tracking
from training.cutoff import check_cutoff
from training.models import STEPS, by_key

log = logging.getLogger(__name__)

class PipelineError(RapportError, RuntimeError):
    """A step failed; the message names it. Aliases were left untouched."""

    def __init__(self, step: str, cause: BaseException, result: PipelineResult) -> None:
        super().__init__(f"training step {step!r} failed: {cause}. No model was promoted; the champions are unchanged.")
        self.step = step
        self.cause = cause
        self.result = result


class TrainingInterrupted(KeyboardInterrupt):
    """A signal stopped the training; the runs it had open were marked FAILED.

    SIGTERM and SIGINT during :func:`run_pipeline` (in the main thread) raise it where the pipeline
    is: the open runs (the step's nested run and the parent run) end FAILED with the signal's name,
    the versions already registered are tagged as not promoted, and the exception reaches the caller
    (the CLI exits with 128 + the signal's number). A killed process would otherwise leave its runs
    RUNNING forever."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"training interrupted by {self.signal_name}: its MLflow runs are marked FAILED, "
                         f"no model was promoted by it")


#: The signals that stop a training cleanly.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`TrainingInterrupted`; the previous handlers
    come back afterwards. Only the main thread can install handlers: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        # A second signal must not interrupt the runs being marked FAILED (a few registry writes).
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise TrainingInterrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class StepOutcome:
    step: str
    model_name: str
    seconds: float
    result: Any
    version: str | None
    promotion: promotion.Promotion | None = None
    #: Why the step was skipped (too little history); None when it ran.
    skipped: str | None = None


@dataclass
class PipelineResult:
    run_id: str
    cutoff: datetime | None
    steps: list[StepOutcome] = field(default_factory=list)
    promoted: bool = False

    def summary(self) -> pd.DataFrame:
        """One row per step: model, version, key metrics, its own gate, the champion comparison, alias.

        Returns
        -------
        pandas.DataFrame
            Columns ``model``, ``version``, ``seconds``, ``key metrics``, ``vs baselines``,
            ``vs champion`` and ``alias``; a skipped step says why under ``vs baselines``.
        """
        rows = []
        for outcome in self.steps:
            if outcome.skipped is not None:
                rows.append({"model": outcome.model_name, "version": "", "seconds": round(outcome.seconds, 1),
                             "key metrics": "", "vs baselines": outcome.skipped, "vs champion": "",
                             "alias": "none (skipped)"})
                continue
            gate = getattr(outcome.result, "gate", None)
            p = outcome.promotion
            rows.append({
                "model": outcome.model_name,
                "version": outcome.version,
                "seconds": round(outcome.seconds, 1),
                "key metrics": ", ".join(f"{k.label} {p.metrics.get(k.metric, float('nan')):.4f}"
                                         for k in by_key(outcome.step).key_metrics) if p else "",
                "vs baselines": ("passes" if getattr(gate, "eligible", False) else "fails") + " its gate"
                                + _served_as(outcome.result),
                "vs champion": "; ".join(r for r in (p.reasons if p else ()) if not r.startswith("its own gate failed")),
                "alias": p.alias if p else ("none (backtest)" if self.cutoff else "none"),
            })
        return pd.DataFrame(rows, columns=["model", "version", "seconds", "key metrics", "vs baselines",
                                           "vs champion", "alias"])


def run_pipeline(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    *,
    steps: Sequence[str] | None = None,
    cutoff: datetime | None = None,
    progress: Callable[[str, str], None] | None = None,
    on_step_done: Callable[[StepOutcome], None] | None = None,
) -> PipelineResult:
    """Run ``steps`` (default: all, in pipeline order) under a parent run, then promote.

    ``progress(step, text)`` reports what a step is doing; ``on_step_done`` is called after each
    step. Raises :class:`~training.cutoff.CutoffError` before any run when ``cutoff`` does not fit
    the history, :class:`PipelineError` when a step fails (aliases untouched) and
    :class:`TrainingInterrupted` on SIGTERM/SIGINT.

    Promotion (:mod:`training.promotion`) makes each new version ``champion`` or ``challenger``. A
    step that raises stops the pipeline: the parent run is marked failed with the step and the
    message, the versions registered by earlier steps are tagged as not promoted, and every alias
    stays where it was.

    A step whose history is too short (:class:`features.windows.HistoryTooShort`: below the minimum,
    or windows set by hand that do not fit) is *skipped*, not failed: its outcome says why (the
    minimum, what the data have, the setting to change), the parent run is tagged
    ``skipped.<step>``, the other steps run and are promoted as usual.

    A backtest (``cutoff`` given) registers its versions but never promotes them: a model trained on
    a past history is for analysis, not for serving. A cutoff after the last sale, or one that leaves
    a step too little history, is refused before any run starts (:mod:`training.cutoff`).

    Parameters
    ----------
    con
        The store.
    settings
        The deployment's settings.
    steps
        The steps to run (names of :data:`training.models.MODELS`); all of them when None.
    cutoff
        The end of the history to train on (a backtest); the whole history when None.
    progress
        ``progress(step, text)``, called with what a step is doing.
    on_step_done
        Called with each step's :class:`StepOutcome` when it ends.

    Returns
    -------
    PipelineResult
        The parent run's id, the cutoff, every step's outcome and whether promotion ran.
    """
    wanted = list(STEPS) if steps is None else [s for s in STEPS if s in steps]
    unknown = sorted(set(steps or ()) - set(STEPS))
    if unknown or not wanted:
        raise ArgumentError(f"unknown training step(s) {', '.join(unknown) or '(none given)'}; available: {', '.join(STEPS)}")
    if cutoff is not None:
        check_cutoff(con, settings, cutoff, wanted)
    with _signals_interrupt():
        return _run(con, settings, wanted, cutoff, progress, on_step_done)


def _run(con: duckdb.DuckDBPyConnection, settings: Settings, wanted: list[str], cutoff: datetime | None,
         progress: Callable[[str, str], None] | None, on_step_done: Callable[[StepOutcome], None] | None,
         ) -> PipelineResult:
    client = tracking.configure(settings)
    label = (cutoff or datetime.now()).date().isoformat()
    with tracking.start_run(settings, run_name=f"train {label}", tags={"step": "pipeline", "steps": ",".join(wanted)}) as run:
        result = PipelineResult(run_id=run.info.run_id, cutoff=cutoff)
        tracking.log_params_flat({"steps": ",".join(wanted), "cutoff": cutoff.date().isoformat() if cutoff else "latest",
                                  "promotion_tolerance": settings.promotion_tolerance})
        for step in wanted:
            spec = by_key(step)
            started = time.perf_counter()
            try:
                train = spec.train_function()
                outcome_result = train(con, settings, cutoff=cutoff,
                                       progress=(lambda text, step=step: progress(step, text)) if progress else None)
            except TrainingInterrupted as exc:
                _mark_failed(client, result, step, exc)
                raise
            except HistoryTooShort as short:
                log.warning("%s", short)
                tracking.set_tags({f"skipped.{step}": str(short)[:4000]})
                outcome = StepOutcome(step=step, model_name=spec.registered_name, seconds=time.perf_counter() - started,
                                      result=None, version=None, skipped=str(short))
                result.steps.append(outcome)
                if on_step_done:
                    on_step_done(outcome)
                continue
            except Exception as exc:
                _mark_failed(client, result, step, exc)
                raise PipelineError(step, exc, result) from exc
            outcome = StepOutcome(step=step, model_name=spec.registered_name, seconds=time.perf_counter() - started,
                                  result=outcome_result, version=getattr(outcome_result, "model_version", None))
            result.steps.append(outcome)
            tracking.log_metrics_flat({f"{step}.seconds": outcome.seconds})
            if on_step_done:
                on_step_done(outcome)
        if cutoff is None:
            for outcome in result.steps:
                if outcome.version is None:
                    continue
                decision = promotion.decide(client, outcome.model_name, outcome.version,
                                            tolerance=settings.promotion_tolerance)
                promotion.apply(client, decision)
                outcome.promotion = decision
                if decision.promoted:
                    promotion.publish_champion_plots(client, settings.reports_dir, outcome.model_name)
            result.promoted = True
        summary = result.summary()
        tracking.log_table(summary, "training_summary")
        tracking.set_tags({f"promotion.{o.model_name}": o.promotion.alias if o.promotion else
                           ("skipped" if o.skipped else "none") for o in result.steps})
    return result


def _mark_failed(client: mlflow.MlflowClient, result: PipelineResult, step: str, exc: BaseException) -> None:
    """Record the failure on the parent run and on the versions this run registered (never promoted)."""
    message = f"{type(exc).__name__}: {exc}"
    log.error("training step %s failed: %s", step, message)
    tracking.set_tags({"failed_step": step, "failure": message[:4000]})
    for outcome in result.steps:
        if outcome.version is not None:
            client.set_model_version_tag(outcome.model_name, outcome.version, "promotion.decision",
                                         f"not promoted: the pipeline failed at step {step}")


def _served_as(result: object) -> str:
    """What a step serves when it is not its learned model: a baseline that won on validation (the
    recommender's ``gate.champion``, churn's ``learner``)."""
    from training.churn.model import LIGHTGBM
    from training.recommend.evaluation import CHOSEN

    baseline = getattr(result, "serves_baseline", None)
    if isinstance(baseline, str):
        return f" (serves {baseline})"
    learner = getattr(result, "learner", None)
    if isinstance(learner, str) and learner != LIGHTGBM:
        return f" (serves {learner}: it beat LightGBM on validation)"
    champion = getattr(getattr(result, "gate", None), "champion", None)
    if isinstance(champion, str) and champion != CHOSEN:
        return f" (serves {champion})"
    return ""
