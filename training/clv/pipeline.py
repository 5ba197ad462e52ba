"""The CLV training step: candidates chosen on a validation split of the calibration period,
evaluated and gated on the holdout after it, the served model refitted on the whole history before
the cutoff, everything logged to MLflow and the model registered.

The choice is never made on the holdout whose numbers are reported, and what is served is never
worse than the naive rule of thumb; :func:`train_clv` gives the steps."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from features.customer import calibration_holdout, customer_features
from features.errors import NoDataError
from features.history import utc_naive
from features.purchases import daily_repeat_purchases
from features.schema import Feature, Holdout
from features.settings import Settings
from features.store import ibis_backend, sales_range
from features.windows import HistoryTooShort, Windows, clv_windows, history_stats
from training import tracking
from training.clv.adapter import PURCHASE_MODELS, ClvFitError
from training.clv.evaluation import (
    NAIVE_BASELINE,
    GateDecision,
    HoldoutEvaluation,
    PlausibilityCheck,
    evaluate_holdout,
    gate,
    holdout_table,
    naive_holdout_purchases,
    plausibility_check,
    predicted_holdout_purchases,
)
from training.clv.model import DAYS_PER_MONTH, ClvModel
from training.clv.plots import (
    plot_calibration_vs_holdout,
    plot_cumulative_transactions,
    plot_frequency_recency_matrix,
    plot_probability_alive_matrix,
)
from training.clv.pyfunc import log_clv_model
from training.models import CLV
from training.plotting import run_plot_dir
from training.progress import reporter

log = logging.getLogger(__name__)

MODEL_NAME = CLV.registered_name
#: Candidates within this relative per-customer MAE of the best count as tied.
TIE_TOLERANCE = 0.01
#: Purchase models in which a customer without a repeat purchase can be inactive (BG/NBD gives such a
#: customer P(alive) = 1 by construction); one of them wins a tie, the better one first.
WITHOUT_ONE_ORDER_ARTEFACT: tuple[str, ...] = ("mbgnbd", "paretonbd")
#: Candidate: a purchase model's expected purchases blended with the customer's historic rate, the
#: base model and the weight chosen on the validation split of the calibration period.
BLEND = "blend"
#: Candidate: the naive baseline itself (historic rate x t) served with Gamma-Gamma spend and the
#: P(alive) of the purchase model that validated best, so that the champion is never worse than it.
NAIVE = "naive"
#: Weights of the historic rate the blend tries on the validation split (0: the model alone).
RATE_WEIGHTS: tuple[float, ...] = tuple(float(w) for w in np.round(np.linspace(0.0, 1.0, 21), 2))
#: The model whose P(alive) is reported when BG/NBD predicts the purchases: MBG/NBD is BG/NBD with
#: the one change that lets a customer drop out before a repeat purchase (Batislam et al. 2007).
ALIVE_COMPANION = "mbgnbd"
#: The splits a candidate can be chosen on (parameter ``chosen_on``): the validation split of the
#: calibration period; the holdout, when no candidate could be validated; none, for a sole candidate.
VALIDATION, HOLDOUT, SOLE_CANDIDATE = "validation", "holdout", "sole candidate"
#: Column of the candidates' table: the validation MAE each candidate was chosen on.
VALIDATION_MAE = "validation_mae"


@dataclass(frozen=True)
class RateValidation:
    """The validation split of the calibration period, on which the candidates are chosen: every
    base model fitted on [start, validation_start) and evaluated on [validation_start,
    calibration_end) (``validation_days`` long). ``mae[kind][i]`` is the per-customer validation MAE
    of the blend with rate weight ``RATE_WEIGHTS[i]`` (0: the model alone, 1: the naive rate,
    ``naive_mae``); ``blend_kind`` and ``blend_weight`` the chosen blend, ``naive_kind`` the model
    whose P(alive) the naive candidate reports; ``failed`` the base models that could not be fitted
    there, with the reason. :meth:`candidate_mae` reads off each candidate's validation MAE."""

    validation_start: datetime
    validation_days: int
    n_customers: int
    naive_mae: float
    mae: dict[str, tuple[float, ...]]
    blend_kind: str
    blend_weight: float
    naive_kind: str
    failed: tuple[tuple[str, str], ...]

    def to_metrics(self) -> dict[str, float]:
        out = {"validation.customers": float(self.n_customers), "validation.days": float(self.validation_days),
               "validation.naive_mae": self.naive_mae, "validation.blend_weight": self.blend_weight}
        for kind, maes in self.mae.items():
            out[f"validation.{kind}.mae"] = maes[0]
            out[f"validation.{kind}.best_blend_mae"] = min(maes)
        return out

    def candidate_mae(self, candidates: Iterable[str]) -> dict[str, float]:
        """The validation MAE of each of ``candidates`` that has one: a purchase model alone (weight
        0), the blend at its chosen model and weight, the naive rate; a purchase model that could not
        be fitted on the first part has none."""
        blend = self.mae[self.blend_kind][RATE_WEIGHTS.index(self.blend_weight)]
        known = {**{kind: maes[0] for kind, maes in self.mae.items()}, BLEND: blend, NAIVE: self.naive_mae}
        return {name: known[name] for name in candidates if name in known}


@dataclass(frozen=True)
class CandidateChoice:
    """Which candidate is served and on which split it was chosen (:func:`choose_candidate`).

    ``chosen``: the candidate chosen on ``chosen_on`` (:data:`VALIDATION`, :data:`HOLDOUT` or
    :data:`SOLE_CANDIDATE`); ``served``: ``chosen``, or :data:`NAIVE` when ``chosen`` failed the
    holdout gate and the naive candidate passed it; ``validation_mae``: the validation MAE of every
    candidate that has one; ``notes``: how the choice was made, in sentences the run and
    ``rapport train`` show."""

    chosen: str
    chosen_on: str
    served: str
    validation_mae: dict[str, float]
    notes: tuple[str, ...]

    @property
    def message(self) -> str:
        return "; ".join(self.notes)


@dataclass(frozen=True)
class ClvTrainingResult:
    run_id: str
    model_name: str
    model_version: str | None
    kind: str
    cutoff: datetime
    calibration_end: datetime
    candidates: pd.DataFrame
    evaluation: HoldoutEvaluation
    gate: GateDecision
    model: ClvModel
    plots: tuple[Path, ...]
    failed_candidates: tuple[tuple[str, str], ...]
    #: Candidates fitted in their no-drop-out limit, the NBD (``adapter.NO_DROPOUT``).
    without_dropout: tuple[str, ...]
    windows: Windows
    plausibility: PlausibilityCheck
    #: The validation split the candidates were chosen on (None when it could not be built or
    #: there was nothing to choose).
    rate_validation: RateValidation | None = None
    #: How the served candidate was chosen (None only for results built by hand).
    choice: CandidateChoice | None = None

    @property
    def serves_baseline(self) -> str | None:
        """The baseline served when the naive candidate is served (the training summary names it, and
        the chosen candidate that failed the gate if that is why), else None."""
        if self.kind != NAIVE:
            return None
        chosen = None if self.choice is None else self.choice.chosen
        failed = chosen is not None and chosen != NAIVE
        return "the naive historic rate with Gamma-Gamma spend" + (
            f": {chosen}, chosen on validation, failed the holdout gate" if failed else "")


def default_cutoff(con: duckdb.DuckDBPyConnection) -> datetime:
    """The day after the last stored sale: train on everything there is."""
    found = sales_range(con)
    if found is None:
        raise NoDataError("the store holds no sales yet: ingest data first (rapport data ingest DIR)")
    return datetime.combine(found[1].date() + timedelta(days=1), datetime.min.time())


def _by_mae(maes: Mapping[str, float]) -> list[str]:
    """The names by increasing MAE; on an exact tie the blend comes last (at weight 0 or 1 it is
    another candidate under a longer name), then by name."""
    return sorted(maes, key=lambda kind: (maes[kind], kind == BLEND, kind))


def _lowest(maes: Mapping[str, float]) -> str:
    """The lowest MAE (:func:`_by_mae`), unless one of :data:`WITHOUT_ONE_ORDER_ARTEFACT` is within
    :data:`TIE_TOLERANCE` of it: then the best of those."""
    by_mae = _by_mae(maes)
    best = by_mae[0]
    for kind in by_mae:
        if kind in WITHOUT_ONE_ORDER_ARTEFACT and maes[kind] <= maes[best] * (1 + TIE_TOLERANCE):
            return kind
    return best


def choose(evaluations: dict[str, HoldoutEvaluation]) -> str:
    """The holdout choice, the fallback of :func:`choose_candidate` when no candidate could be
    validated: the lowest per-customer holdout MAE among the candidates that pass the gate (all of
    them when none does), unless one of :data:`WITHOUT_ONE_ORDER_ARTEFACT` is within
    :data:`TIE_TOLERANCE` of it: then the best of those. The holdout MAE of a candidate chosen so is
    optimistic: it is the number it was chosen on."""
    eligible = {kind: e.mae for kind, e in evaluations.items() if gate(e).eligible}
    return _lowest(eligible or {kind: e.mae for kind, e in evaluations.items()})


def choose_candidate(evaluations: Mapping[str, HoldoutEvaluation], validation_mae: Mapping[str, float] | None,
                     *, not_validated: str = "") -> CandidateChoice:
    """Choose the candidate on the validation split and let the holdout only judge it.

    ``evaluations``: the holdout evaluation of every candidate fitted on the calibration period;
    ``validation_mae``: the validation MAE of the candidates that have one (None: no validation
    split, ``not_validated`` says why). The chosen candidate is the lowest validation MAE among the
    evaluated ones (:func:`_lowest`: MBG/NBD or Pareto/NBD within :data:`TIE_TOLERANCE`, the blend
    last on an exact tie). If it fails the holdout gate and :data:`NAIVE`, the baseline itself,
    passes it, the naive candidate is served: what is served is never worse than the rule of thumb,
    and the choice among the others is not remade on the holdout. Without any validated candidate,
    :func:`choose` decides on the holdout, and the notes say that its holdout MAE is then the number
    it was chosen on."""
    if not evaluations:
        raise ValueError("choose_candidate needs at least one evaluated candidate")
    if len(evaluations) == 1:
        (only,) = evaluations
        return CandidateChoice(only, SOLE_CANDIDATE, only, dict(validation_mae or {}),
                               (f"{only}: the only candidate, nothing to choose",))
    validated = {k: float(v) for k, v in (validation_mae or {}).items() if k in evaluations and math.isfinite(v)}
    if not validated:
        kind = choose(dict(evaluations))
        why = not_validated or "no candidate fitted on the calibration period has a validation MAE"
        return CandidateChoice(kind, HOLDOUT, kind, validated, (
            f"{kind} chosen on the holdout, so its holdout MAE is the number it was chosen on (optimistic): "
            f"no validation split ({why})",))
    kind = _lowest(validated)
    best = _by_mae(validated)[0]
    notes = [f"{kind} chosen on the validation split (validation MAE {validated[kind]:.4f}"
             + (f", within {TIE_TOLERANCE:.0%} of {best}'s {validated[best]:.4f} and without BG/NBD's one-order "
                f"artefact)" if kind != best else f", the lowest of {len(validated)})")
             + "; the holdout evaluates and gates it, the other candidates' holdout numbers are for information"]
    unvalidated = [k for k in evaluations if k not in validated]
    if unvalidated:
        notes.append(f"{', '.join(unvalidated)} not chosen: no validation MAE ({not_validated or 'not validated'})")
    decision = gate(evaluations[kind])
    served = kind
    if not decision.eligible and kind != NAIVE and NAIVE in evaluations and gate(evaluations[NAIVE]).eligible:
        served = NAIVE
        notes.append(f"{kind} fails the holdout gate ({'; '.join(decision.reasons)}): the naive baseline is served")
    return CandidateChoice(kind, VALIDATION, served, validated, tuple(notes))


def _model(kind: str, settings: Settings, *, rate_weight: float = 0.0, alive_kind: str | None = None) -> ClvModel:
    return ClvModel(
        kind=kind,
        time_unit=settings.time_unit,
        **settings.clv.model.model_dump(),
        rate_weight=rate_weight,
        alive_kind=alive_kind,
    )


def validate_rate_candidates(
    backend, settings: Settings, kinds: tuple[str, ...], calibration_end: datetime, holdout_days: int,  # noqa: ANN001
    first_sale: datetime,
) -> RateValidation:
    """The validation split inside the calibration period that every candidate is chosen on: each
    base model of ``kinds`` fitted on its first part and validated on its last ``holdout_days`` (half
    of it when the calibration period is shorter than two holdouts), alone and blended with the
    historic rate at every weight of :data:`RATE_WEIGHTS`; it chooses the blend (base model and
    rate weight) and the naive candidate's P(alive) model, and gives every candidate its
    validation MAE (:meth:`RateValidation.candidate_mae`). The holdout after ``calibration_end``
    plays no part. Raises ``ValueError`` when the calibration period is too short to split or no
    base model can be fitted on its first part."""
    span = (calibration_end - utc_naive(first_sale)).days
    days = min(holdout_days, span // 2)
    if days < 1:
        raise ValueError(f"the {span}-day calibration period is too short to split into a fit and a validation part")
    start = calibration_end - timedelta(days=days)
    inner = calibration_holdout(backend, start, calibration_end, time_unit=settings.time_unit)
    if len(inner) == 0:
        raise ValueError(f"no customer bought before the validation start {start.date()}")
    actual = inner[Holdout.FREQUENCY].to_numpy(dtype=np.float64)
    naive = naive_holdout_purchases(inner)
    maes: dict[str, tuple[float, ...]] = {}
    failed: list[tuple[str, str]] = []
    for kind in kinds:
        try:
            model = _model(kind, settings).fit(inner, cutoff=start, currency=settings.currency)
        except ClvFitError as exc:
            failed.append((kind, exc.reason or str(exc)))
            continue
        predicted = predicted_holdout_purchases(model, inner)
        maes[kind] = tuple(float(np.abs((1 - w) * predicted + w * naive - actual).mean()) for w in RATE_WEIGHTS)
    if not maes:
        raise ValueError(f"no base model could be fitted on the {span - days}-day first part of the calibration "
                         f"period: {'; '.join(f'{k}: {why}' for k, why in failed)}")
    # The blend: each base model at its best weight (the smaller weight on a tie), then the best model.
    best_weight = {kind: int(np.argmin(values)) for kind, values in maes.items()}
    blend_kind = _lowest({kind: maes[kind][best_weight[kind]] for kind in maes})
    return RateValidation(
        validation_start=start, validation_days=days, n_customers=len(inner),
        naive_mae=float(np.abs(naive - actual).mean()), mae=maes, blend_kind=blend_kind,
        blend_weight=RATE_WEIGHTS[best_weight[blend_kind]], naive_kind=_lowest({k: v[0] for k, v in maes.items()}),
        failed=tuple(failed),
    )


def train_clv(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    *,
    cutoff: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> ClvTrainingResult:
    """Fit, evaluate, log and register the CLV model from the store's history before ``cutoff``.

    Steps, for a cutoff c and a holdout of h days (``clv.holdout_days``, or with ``auto`` a third of the
    history, 7 to 183 days: :func:`features.windows.clv_windows`; a history too short skips the step):

    1. ``calibration_holdout`` at c − h: features of the customers born before it, and what they did
       in the holdout [c − h, c).
    2. Every candidate purchase model (BG/NBD, MBG/NBD, Pareto/NBD) is fitted on the calibration
       features. The validation split (:func:`validate_rate_candidates`) cuts the calibration period
       again, h days before its end (half of it when it is shorter than 2 h): each purchase model is
       fitted on the first part and predicts the last, alone and blended with the customer's own rate
       frequency / T at every weight of :data:`RATE_WEIGHTS`. That gives every candidate a validation
       MAE: a purchase model alone (weight 0), ``blend`` (the base model and weight with the lowest
       validation MAE) and ``naive`` (the rate itself, weight 1, with Gamma-Gamma spend and the P(alive)
       of the purchase model that validated best). The blend and naive candidates are then fitted on
       the calibration features like the others. A candidate whose fit runs to the no-drop-out bound (a
       history cut at a date: every old customer looks new, nobody is visibly gone) is fitted in that
       limit, the NBD, and named so (``without_dropout``); a candidate that cannot be fitted even so is
       reported, not fatal, unless all fail.
    3. The choice (:func:`choose_candidate`) is made on the validation split, never on the holdout
       whose numbers are then reported: the lowest validation MAE wins, except that a model in which a
       customer without repeat purchases can be inactive (MBG/NBD, Pareto/NBD) wins when its MAE is
       within ``TIE_TOLERANCE`` (1 %) of the best: BG/NBD lets a customer drop out only after a repeat
       purchase, so it gives every one-order customer, however long ago, a probability alive of exactly
       1 (Fader, Hardie & Lee, "Computing P(alive) using the BG/NBD model"; MBG/NBD, Batislam et al.
       2007, removes it). A blend that equals another candidate (weight 0 or 1) loses the exact tie to
       it. A candidate without a validation MAE (its purchase model could not be fitted on the first
       part) is not chosen. When no candidate has one (the calibration period cannot be split, or no
       purchase model fits on its first part) the choice falls back to the holdout (:func:`choose`) and
       the run says so: parameter ``chosen_on`` and the ``choice`` tag. With one candidate there is
       nothing to choose.
    4. The gate (``evaluation.gate``) on the holdout: worse than the naive baseline on the aggregate
       error or the per-customer MAE makes the chosen candidate ineligible for promotion. Then, when
       ``naive`` is a candidate and passes, the baseline is what is served (never worse than the rule of
       thumb), and the run says so; otherwise the chosen candidate is registered as not eligible. The
       other candidates' holdout numbers are logged and shown for information only.
    5. The served candidate (its purchase model and rate weight) is refitted on ``customer_features``
       at c (all history before the cutoff): that is the model scored and served. When its purchase
       model is BG/NBD, :data:`ALIVE_COMPANION` (MBG/NBD) is fitted alongside and reports P(alive).
    6. The plausibility check (``evaluation.plausibility_check``): the refitted model's CLV of the
       one-order customers against the repeat customers' actual spend over the last year (the last
       half of a shorter history), scaled to the horizon; logged as metrics and a tag, and a warning
       when a one-order customer is valued above the 99th percentile without their own spend to show
       for it.
    7. One MLflow run: parameters (the served and the chosen candidate, the split that chose it),
       coefficients with standard errors, the validation MAE of every candidate, holdout metrics of
       every candidate and the baseline, the table of both, four diagnostic plots, the data
       fingerprint; the model as a pyfunc registered as ``rapport-clv``.

    Parameters
    ----------
    con
        The store.
    settings
        The deployment's settings (the ``clv`` section and windows, MLflow).
    cutoff
        The end of the history to train on (a backtest); the day after the last sale when None.
    progress
        Called with each step's line of text, if given.

    Returns
    -------
    ClvTrainingResult
        The run and registered version, the candidates' table, the served model with its holdout
        evaluation, gate and plausibility check, and how it was chosen.
    """

    step = reporter(log, progress)

    backend = ibis_backend(con)
    cutoff = utc_naive(cutoff) if cutoff is not None else default_cutoff(con)
    windows = clv_windows(history_stats(backend, before=cutoff), holdout_days=settings.clv.holdout_days)
    holdout_days = int(windows["holdout_days"])  # type: ignore[arg-type]
    calibration_end = cutoff - timedelta(days=holdout_days)

    step(f"calibration/holdout split at {calibration_end.date()}")
    split = calibration_holdout(backend, calibration_end, cutoff, time_unit=settings.time_unit)
    if len(split) == 0:
        raise NoDataError(f"no customer bought before the calibration end {calibration_end.date()}: "
                         f"choose a later --cutoff or a shorter clv_holdout_days")

    fitted: dict[str, ClvModel] = {}
    evaluations: dict[str, HoldoutEvaluation] = {}
    failed: list[tuple[str, str]] = []
    reasons: dict[str, str] = {}

    def skipped() -> HistoryTooShort:
        # Every candidate failing on the calibration period is what too short a history does (no
        # drop-out visible yet: the parameters are not identified), not an error of the code.
        return HistoryTooShort(CLV.key, (
            f"clv skipped: no purchase model ({', '.join(k for k, _ in failed)}) could be fitted on the "
            f"{(calibration_end - windows.stats.first_sale).days}-day calibration period before "
            f"{calibration_end:%Y-%m-%d} ({len(split):,} customers), not even without drop-out: "
            f"{'; '.join(f'{k}: {why}' for k, why in reasons.items())}. A longer history helps; so may a "
            f"shorter clv.holdout_days or a clv.model.penalizer above 0"))

    kinds: tuple[str, ...] = tuple(k for k in settings.clv.candidates if k in PURCHASE_MODELS)
    # What each candidate is, as (purchase model, rate weight): the purchase models alone, then the
    # historic-rate candidates once the validation split has chosen them.
    recipes: dict[str, tuple[str, float]] = {kind: (kind, 0.0) for kind in kinds}
    for kind in kinds:
        step(f"fitting candidate {kind} on the calibration period")
        try:
            fitted[kind] = _model(kind, settings).fit(split, cutoff=calibration_end, currency=settings.currency)
        except ClvFitError as exc:
            failed.append((kind, str(exc)))
            reasons[kind] = exc.reason or str(exc)
            log.warning("candidate %s failed: %s", kind, exc)
            continue
        evaluations[kind] = evaluate_holdout(fitted[kind], split)
        if fitted[kind].purchase_params_.without_dropout:
            step(f"candidate {kind} fitted without drop-out (NBD): the calibration period shows no drop-out to "
                 f"estimate")
    if kinds and not evaluations:
        raise skipped()
    rate_validation = None
    not_validated = ""
    rate_candidates = [k for k in settings.clv.candidates if k in (BLEND, NAIVE)]
    if rate_candidates or len(evaluations) > 1:
        step("validating the candidates on a split of the calibration period")
        try:
            rate_validation = validate_rate_candidates(backend, settings, kinds or PURCHASE_MODELS, calibration_end,
                                                       holdout_days, windows.stats.first_sale)
        except ValueError as exc:
            not_validated = str(exc)
            for name in rate_candidates:
                failed.append((name, f"not validated: {exc}"))
                reasons[name] = str(exc)
            log.warning("CLV: no validation split (%s): the candidates are chosen on the holdout%s", exc,
                        f", {' and '.join(rate_candidates)} left out" if rate_candidates else "")
    if rate_validation is not None:
        chosen_rate = {BLEND: (rate_validation.blend_kind, rate_validation.blend_weight),
                       NAIVE: (rate_validation.naive_kind, 1.0)}
        for name in rate_candidates:
            recipes[name] = chosen_rate[name]
            base, weight = recipes[name]
            step(f"fitting candidate {name} ({base}, rate weight {weight:g}) on the calibration period")
            try:
                fitted[name] = _model(base, settings, rate_weight=weight).fit(split, cutoff=calibration_end,
                                                                             currency=settings.currency)
            except ClvFitError as exc:
                failed.append((name, str(exc)))
                reasons[name] = exc.reason or str(exc)
                log.warning("candidate %s failed: %s", name, exc)
                continue
            evaluations[name] = evaluate_holdout(fitted[name], split)
    if not evaluations:
        raise skipped()
    if rate_validation is not None:
        not_validated = "; ".join(f"{k}: {why}" for k, why in rate_validation.failed)
    choice = choose_candidate(evaluations, rate_validation.candidate_mae(evaluations) if rate_validation else None,
                              not_validated=not_validated)
    step(f"candidate {choice.chosen} chosen ({choice.chosen_on})")
    log.info("CLV choice: %s", choice.message)
    kind = choice.served
    if kind != choice.chosen:
        log.warning("CLV: %s", choice.notes[-1])
    decision = gate(evaluations[kind])
    table = _candidate_table(evaluations, choice, rate_validation)

    base, weight = recipes[kind]
    step(f"refitting {kind} on all history before {cutoff.date()}")
    features = customer_features(backend, cutoff, time_unit=settings.time_unit)
    final = _refit(base, weight, settings, features, cutoff)
    label = final.label_
    if final.purchase_params_.without_dropout:
        log.warning("CLV: %s: the history shows no drop-out to estimate, every customer is taken to stay (%s)",
                    label, final.purchase_params_.message)

    step("checking the one-order customers' CLV against the repeat customers' actual spend")
    plausibility, one_order_alive = _plausibility(con, backend, final, features, cutoff, settings)
    if not plausibility.plausible:
        log.warning("CLV plausibility: %s", plausibility.message)
    if final.alive_params_ is None and final.purchase_params_.kind not in WITHOUT_ONE_ORDER_ARTEFACT:
        log.warning("CLV: %s served (%s) and %s could not be fitted for P(alive): it gives every one-order "
                    "customer probability alive 1", kind, choice.message, ALIVE_COMPANION)

    step("logging the run to MLflow")
    client = tracking.configure(settings)
    with tracking.start_run(settings, run_name=f"{CLV.key} {cutoff.date()}",
                            tags={"step": CLV.key, "model_kind": kind}) as run:
        plot_dir = run_plot_dir(settings.reports_dir, CLV.key, run.info.run_id)
        plots = _plots(backend, fitted[kind], split, calibration_end, cutoff, plot_dir)
        params = {
            # The served model's parameters, then what the step chose and why.
            **{name: value for name, value in final.get_params().items() if name not in ("kind", "alive_kind")},
            "model": kind,
            "validation_choice": choice.chosen,
            "chosen_on": choice.chosen_on,
            "model_fit": label,
            "purchase_model": base,
            "rate_weight": weight,
            "probability_alive_model": (final.alive_params_ or final.purchase_params_).label,
            "cutoff": cutoff.date().isoformat(),
            "calibration_end": calibration_end.date().isoformat(),
            "holdout_days": holdout_days,
            **windows.to_params(),
            "candidates": ",".join(settings.clv.candidates),
            "currency": settings.currency,
        }
        record = tracking.StepRecord(params=params, data_as_of=cutoff, metrics={
            **evaluations[kind].to_metrics(),
            **{f"candidate.{k}.{name}": value for k, e in evaluations.items() for name, value in e.to_metrics().items()},
            **_coefficients(final, "final"),
            **_coefficients(fitted[kind], "calibration"),
            "customers": float(len(features)),
            "spend_customers": float(final.n_spend_customers_),
            "spend_excluded": float(final.n_spend_excluded_),
            **plausibility.to_metrics(),
            "one_order_probability_alive_median": one_order_alive,
            **(rate_validation.to_metrics() if rate_validation is not None else {}),
            "validation_mae": choice.validation_mae,
        }, tables={"holdout_table": table}, plots=plots, tags={
            "gate.reasons": " | ".join(decision.reasons) or "beats the naive baseline",
            "choice": choice.message,
            "failed_candidates": "; ".join(f"{k}: {m}" for k, m in failed) or "none",
            "without_dropout": ",".join(k for k in fitted if fitted[k].purchase_params_.without_dropout) or "none",
            "plausibility": plausibility.message,
        })
        version = tracking.finish_step(
            con, client, MODEL_NAME, record, gate_eligible=decision.eligible,
            log_model=lambda: log_clv_model(final, registered_model_name=MODEL_NAME, input_example=features.head(5)))
        run_id = run.info.run_id
    log.info("Gamma-Gamma left out %d of %d customers (no repeat purchase or no positive net spend)",
             final.n_spend_excluded_, len(features))
    return ClvTrainingResult(
        run_id=run_id,
        model_name=MODEL_NAME,
        model_version=version,
        kind=kind,
        cutoff=cutoff,
        calibration_end=calibration_end,
        candidates=table,
        evaluation=evaluations[kind],
        gate=decision,
        model=final,
        plots=tuple(plots),
        failed_candidates=tuple(failed),
        without_dropout=tuple(k for k in fitted if fitted[k].purchase_params_.without_dropout),
        windows=windows,
        plausibility=plausibility,
        rate_validation=rate_validation,
        choice=choice,
    )


def _candidate_table(evaluations: Mapping[str, HoldoutEvaluation], choice: CandidateChoice,
                     validation: RateValidation | None) -> pd.DataFrame:
    """:func:`evaluation.holdout_table` with the validation MAE each candidate was chosen on in
    front (:data:`VALIDATION_MAE`; the baseline row: the naive rate's; NaN without one)."""
    table = holdout_table(evaluations)
    known = {**choice.validation_mae, **({NAIVE_BASELINE: validation.naive_mae} if validation is not None else {})}
    table.insert(0, VALIDATION_MAE, [known.get(name, math.nan) for name in table.index])
    return table


def _refit(base: str, weight: float, settings: Settings, features: pd.DataFrame, cutoff: datetime) -> ClvModel:
    """The chosen candidate refitted on ``features``; with BG/NBD as its purchase model, P(alive)
    comes from :data:`ALIVE_COMPANION` fitted alongside, unless that cannot be fitted (then the run
    warns: BG/NBD's own P(alive) is 1 for every one-order customer)."""
    if base in WITHOUT_ONE_ORDER_ARTEFACT:
        return _model(base, settings, rate_weight=weight).fit(features, cutoff=cutoff, currency=settings.currency)
    try:
        return _model(base, settings, rate_weight=weight, alive_kind=ALIVE_COMPANION).fit(
            features, cutoff=cutoff, currency=settings.currency)
    except ClvFitError as exc:
        if exc.kind != ALIVE_COMPANION:
            raise
        log.warning("CLV: %s for P(alive) could not be fitted (%s): P(alive) comes from %s", ALIVE_COMPANION,
                    exc.reason or exc, base)
        return _model(base, settings, rate_weight=weight).fit(features, cutoff=cutoff, currency=settings.currency)


def _plausibility(con: duckdb.DuckDBPyConnection, backend, model: ClvModel, features: pd.DataFrame,  # noqa: ANN001
                  cutoff: datetime, settings: Settings) -> tuple[PlausibilityCheck, float]:
    """The plausibility check of ``model``'s CLV, against the repeat customers' spend over the last
    horizon before the cutoff (the last half of a history shorter than two horizons), and the
    median probability alive of the one-order customers."""
    horizon_days = settings.clv.model.horizon_months * DAYS_PER_MONTH
    found = sales_range(con)
    span_days = (cutoff - found[0]).days if found is not None else 0
    window = max(1, min(round(horizon_days), span_days // 2))
    reference = calibration_holdout(backend, cutoff - timedelta(days=window), cutoff, time_unit=settings.time_unit)
    scores = model.predict(features)
    check = plausibility_check(features, scores["clv"].to_numpy(), reference, horizon_days=horizon_days,
                               time_unit=settings.time_unit)
    one_order = features[Feature.FREQUENCY].to_numpy() == 0
    alive = scores["probability_alive"].to_numpy()[one_order]
    return check, float(np.median(alive)) if alive.size else float("nan")


def _coefficients(model: ClvModel, prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for params in (model.purchase_params_, model.spend_params_):
        errors = params.standard_errors()
        for name, value in params.as_dict().items():
            out[f"{prefix}.{params.kind}.{name}"] = float(value)
            out[f"{prefix}.{params.kind}.{name}.se"] = float(errors[name])
        out[f"{prefix}.{params.kind}.log_likelihood"] = float(params.log_likelihood)
        # A fit rescued by the penalizer retry says so in the run.
        out[f"{prefix}.{params.kind}.penalizer"] = float(params.penalizer)
        out[f"{prefix}.{params.kind}.retried"] = float(params.retried)
    return out


def _plots(backend, model: ClvModel, split: pd.DataFrame, calibration_end: datetime, cutoff: datetime,
           folder: Path) -> list[Path]:  # noqa: ANN001
    first = split["first_purchase"]
    daily = daily_repeat_purchases(backend, born_before=calibration_end, start=first.min().to_pydatetime(),
                                   end=cutoff)
    return [
        plot_calibration_vs_holdout(model, split, folder / "calibration_vs_holdout.png"),
        plot_frequency_recency_matrix(model, folder / "frequency_recency_matrix.png", rfm=split),
        plot_probability_alive_matrix(model, folder / "probability_alive_matrix.png", rfm=split),
        plot_cumulative_transactions(model, first, daily, calibration_end, folder / "cumulative_transactions.png"),
    ]
