"""Holdout evaluation of a CLV model against a naive baseline, and the gate a model must pass.

Every number here comes from a calibration/holdout split (:func:`features.customer.calibration_holdout`):
the model is fitted on the calibration columns and predicts what each customer does in the holdout.
:class:`HoldoutEvaluation` says what is compared with what (repeat purchases, spend, the naive
baseline); the gate (:func:`gate`) keeps a model that does worse than the naive baseline out of
promotion."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from features.customer import DAYS_PER_UNIT, validate_rfm
from features.schema import Feature, Holdout
from training.clv.model import historic_rate

#: Calibration/holdout columns :func:`evaluate_holdout` reads.
REQUIRED_COLUMNS: tuple[str, ...] = (
    Feature.FREQUENCY,
    Feature.RECENCY,
    Feature.T,
    Feature.MONETARY_VALUE,
    Feature.AVG_ORDER_VALUE,
    Holdout.FREQUENCY,
    Holdout.MONETARY_VALUE,
    Holdout.DURATION,
)

#: Row name of the naive baseline in :func:`holdout_table`.
NAIVE_BASELINE = "naive (historic rate)"

#: Columns of :func:`holdout_table`.
TABLE_COLUMNS: tuple[str, ...] = ("actual", "predicted", "aggregate_error_pct", "mae", "correlation", "spend_mae")

#: Columns of :func:`holdout_by_frequency`.
BY_FREQUENCY_COLUMNS: tuple[str, ...] = ("n_customers", "actual", "predicted", "naive")

#: Human names of the time units, for titles and messages.
UNIT_NAMES: dict[str, str] = {"D": "days", "W": "weeks"}


@runtime_checkable
class ClvPredictor(Protocol):
    """What evaluation and plots need from a fitted CLV model (BG/NBD or Pareto/NBD + Gamma-Gamma).

    Durations (``t``, ``recency``, ``T``) are in the model's time unit ``time_unit_`` ("D": days,
    "W": weeks of 7 days); arguments are arrays of one value per customer (or broadcastable).
    """

    @property
    def time_unit_(self) -> str:
        """"D" or "W": the unit of t, recency and T.

        Returns
        -------
        str
            The model's time unit.
        """
        ...

    @property
    def kind_(self) -> str:
        """The model family, as titles and tables show it (e.g. "bgnbd").

        Returns
        -------
        str
            The model family's name.
        """
        ...

    def expected_purchases(self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """Expected repeat purchases in (T, T + t] given the customer's history.

        Parameters
        ----------
        t
            The horizon after T, in the model's time unit.
        frequency
            Repeat purchases per customer in the calibration period.
        recency
            Age at the last purchase, in the model's time unit.
        T
            Age at the end of the calibration period, in the model's time unit.

        Returns
        -------
        numpy.ndarray
            E[X(t) | frequency, recency, T] per customer.
        """
        ...

    def probability_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """Probability that the customer is still active at T.

        Parameters
        ----------
        frequency
            Repeat purchases per customer in the calibration period.
        recency
            Age at the last purchase, in the model's time unit.
        T
            Age at the end of the calibration period, in the model's time unit.

        Returns
        -------
        numpy.ndarray
            P(alive at T | frequency, recency, T) per customer, in [0, 1].
        """
        ...

    def unconditional_expected_purchases(self, t: ArrayLike) -> np.ndarray:
        """Expected repeat purchases of a customer in the t time units after their first purchase.

        Parameters
        ----------
        t
            Ages after the first purchase, in the model's time unit.

        Returns
        -------
        numpy.ndarray
            E[X(t)] per age, for a customer drawn from the population.
        """
        ...

    def expected_order_value(self, frequency: ArrayLike, monetary_value: ArrayLike) -> np.ndarray:
        """Expected spend per purchase given the customer's repeat purchases and their mean value.

        Parameters
        ----------
        frequency
            Repeat purchases per customer in the calibration period.
        monetary_value
            Mean spend of those repeat purchases.

        Returns
        -------
        numpy.ndarray
            E[M | frequency, monetary_value] per customer.
        """
        ...


@dataclass(frozen=True)
class HoldoutEvaluation:
    """How well a model predicted the holdout, next to the naive baseline.

    Repeat purchases: ``actual_total`` / ``predicted_total`` summed over the ``n_customers``
    calibration customers; ``aggregate_error`` = |predicted_total - actual_total| / actual_total (a
    fraction; NaN without holdout purchases); ``mae``, ``rmse``, ``correlation`` (Pearson; NaN when
    either side is constant) per customer. ``naive_*`` are the same for the historic-rate baseline.
    ``duration`` is the holdout length in ``time_unit``.

    Spend, over the ``spend_n`` customers with a holdout purchase: mean actual spend per purchase
    day, mean predicted expected order value, and the MAE of the model and of the calibration-mean
    baseline (all NaN when ``spend_n`` is 0).

    - *Repeat purchases*: the model's conditional expectation E[X(t) | frequency, recency, T] with
      t = ``duration_holdout`` (Fader, Hardie & Lee 2005, eq. 10 for BG/NBD) against the actual
      ``frequency_holdout``: aggregate (total predicted vs total actual) and per customer (MAE,
      RMSE, Pearson correlation).
    - *Naive baseline*: each customer keeps buying at their historic rate, frequency / T repeat
      purchases per time unit (0 when T = 0: a customer born on the calibration end has no rate
      yet), times the holdout length.
    - *Spend*: for the customers with a holdout purchase, Gamma-Gamma's expected order value
      E[M | frequency, monetary_value] (Fader & Hardie 2013, eq. 5) against their actual mean spend
      per purchase day in the holdout (``monetary_value_holdout``); baseline: the customer's own
      calibration mean (``monetary_value``, or ``avg_order_value`` for a customer without repeat
      purchases).
    """

    n_customers: int
    duration: float
    actual_total: float
    predicted_total: float
    aggregate_error: float
    mae: float
    rmse: float
    correlation: float
    naive_predicted_total: float
    naive_aggregate_error: float
    naive_mae: float
    naive_rmse: float
    naive_correlation: float
    spend_n: int
    spend_actual_mean: float
    spend_predicted_mean: float
    spend_mae: float
    spend_baseline_mae: float
    time_unit: str
    kind: str

    def to_metrics(self) -> dict[str, float]:
        """The numbers under stable metric names (tracking, reports); NaN where undefined.

        Returns
        -------
        dict[str, float]
            Metric name -> value, in the order of :data:`METRIC_FIELDS`.
        """
        return {name: float(getattr(self, field)) for name, field in METRIC_FIELDS.items()}


#: Metric name -> :class:`HoldoutEvaluation` field, in the order :meth:`HoldoutEvaluation.to_metrics` returns.
METRIC_FIELDS: dict[str, str] = {
    "holdout_customers": "n_customers",
    "holdout_duration": "duration",
    "holdout_actual_total": "actual_total",
    "holdout_predicted_total": "predicted_total",
    "holdout_aggregate_error": "aggregate_error",
    "holdout_mae": "mae",
    "holdout_rmse": "rmse",
    "holdout_correlation": "correlation",
    "naive_holdout_predicted_total": "naive_predicted_total",
    "naive_holdout_aggregate_error": "naive_aggregate_error",
    "naive_holdout_mae": "naive_mae",
    "naive_holdout_rmse": "naive_rmse",
    "naive_holdout_correlation": "naive_correlation",
    "holdout_spend_customers": "spend_n",
    "holdout_spend_actual_mean": "spend_actual_mean",
    "holdout_spend_predicted_mean": "spend_predicted_mean",
    "holdout_spend_mae": "spend_mae",
    "naive_holdout_spend_mae": "spend_baseline_mae",
}


@dataclass(frozen=True)
class GateDecision:
    """Whether a model may be promoted, and why: one sentence per criterion, with the numbers
    (the failed criteria when not eligible, the passed ones when eligible)."""

    eligible: bool
    reasons: tuple[str, ...]

    @property
    def message(self) -> str:
        """The verdict and its reasons in one line.

        Returns
        -------
        str
            ``eligible for promotion: ...`` or ``not eligible for promotion: ...``.
        """
        verdict = "eligible for promotion" if self.eligible else "not eligible for promotion"
        return f"{verdict}: " + "; ".join(self.reasons)


def _array(values: ArrayLike) -> np.ndarray:
    return np.asarray(values, dtype="float64")


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when there are fewer than two values or either side is constant."""
    if len(x) < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / denominator if denominator > 0 else math.nan


def _relative_error(predicted_total: float, actual_total: float) -> float:
    return abs(predicted_total - actual_total) / actual_total if actual_total > 0 else math.nan


def _check_frame(calibration_holdout: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in calibration_holdout.columns]
    if missing:
        raise ValueError(
            f"the calibration/holdout frame lacks column(s) {', '.join(missing)} "
            "(expected the output of features.customer.calibration_holdout; "
            f"it has {list(calibration_holdout.columns)})"
        )
    if calibration_holdout.empty:
        raise ValueError("the calibration/holdout frame has no customers: nothing to evaluate")
    validate_rfm(calibration_holdout)


def naive_holdout_purchases(calibration_holdout: pd.DataFrame) -> np.ndarray:
    """The naive baseline's holdout repeat purchases: frequency / T x duration_holdout (rate 0 for T = 0).

    Parameters
    ----------
    calibration_holdout
        A calibration/holdout frame (its ``frequency``, ``T`` and ``duration_holdout``).

    Returns
    -------
    numpy.ndarray
        One predicted count per row.
    """
    rate = historic_rate(_array(calibration_holdout[Feature.FREQUENCY]), _array(calibration_holdout[Feature.T]))
    return rate * _array(calibration_holdout[Holdout.DURATION])


def predicted_holdout_purchases(model: ClvPredictor, calibration_holdout: pd.DataFrame) -> np.ndarray:
    """The model's expected repeat purchases of each customer over their holdout.

    Parameters
    ----------
    model
        A fitted CLV model.
    calibration_holdout
        A calibration/holdout frame (its ``frequency``, ``recency``, ``T`` and ``duration_holdout``).

    Returns
    -------
    numpy.ndarray
        E[X(duration_holdout) | frequency, recency, T], one per row.
    """
    ch = calibration_holdout
    predicted = model.expected_purchases(
        _array(ch[Holdout.DURATION]), _array(ch[Feature.FREQUENCY]), _array(ch[Feature.RECENCY]), _array(ch[Feature.T])
    )
    return np.broadcast_to(_array(predicted), (len(ch),)).copy()


def evaluate_holdout(model: ClvPredictor, calibration_holdout: pd.DataFrame) -> HoldoutEvaluation:
    """Evaluate ``model`` (fitted on the calibration columns) on the holdout of ``calibration_holdout``.

    ``calibration_holdout`` is the frame of :func:`features.customer.calibration_holdout`, built with
    the model's time unit. Raises ``ValueError`` naming missing columns, an empty frame, or the
    customer and value breaking an RFM invariant.

    Parameters
    ----------
    model
        A fitted CLV model.
    calibration_holdout
        The frame of :func:`features.customer.calibration_holdout`, in the model's time unit.

    Returns
    -------
    HoldoutEvaluation
        The model's and the naive baseline's numbers on the holdout.

    Raises
    ------
    ValueError
        A column of :data:`REQUIRED_COLUMNS` is missing or the frame is empty.
    RFMValidationError
        A row breaks an RFM invariant (the error names the customer and the value).
    """
    _check_frame(calibration_holdout)
    ch = calibration_holdout
    actual = _array(ch[Holdout.FREQUENCY])
    predicted = predicted_holdout_purchases(model, ch)
    naive = naive_holdout_purchases(ch)
    actual_total = float(actual.sum())

    frequency = _array(ch[Feature.FREQUENCY])
    buyers = actual > 0
    spend_actual = _array(ch[Holdout.MONETARY_VALUE])[buyers]
    if buyers.any():
        spend_predicted = np.broadcast_to(
            _array(model.expected_order_value(frequency[buyers], _array(ch[Feature.MONETARY_VALUE])[buyers])),
            (int(buyers.sum()),),
        )
        own_mean = np.where(
            frequency > 0, _array(ch[Feature.MONETARY_VALUE]), _array(ch[Feature.AVG_ORDER_VALUE])
        )[buyers]
        spend = {
            "spend_actual_mean": float(spend_actual.mean()),
            "spend_predicted_mean": float(spend_predicted.mean()),
            "spend_mae": float(np.abs(spend_predicted - spend_actual).mean()),
            "spend_baseline_mae": float(np.abs(own_mean - spend_actual).mean()),
        }
    else:
        names = ("spend_actual_mean", "spend_predicted_mean", "spend_mae", "spend_baseline_mae")
        spend = dict.fromkeys(names, math.nan)

    return HoldoutEvaluation(
        n_customers=len(ch),
        duration=float(_array(ch[Holdout.DURATION]).mean()),
        actual_total=actual_total,
        predicted_total=float(predicted.sum()),
        aggregate_error=_relative_error(float(predicted.sum()), actual_total),
        mae=float(np.abs(predicted - actual).mean()),
        rmse=float(np.sqrt(((predicted - actual) ** 2).mean())),
        correlation=_pearson(predicted, actual),
        naive_predicted_total=float(naive.sum()),
        naive_aggregate_error=_relative_error(float(naive.sum()), actual_total),
        naive_mae=float(np.abs(naive - actual).mean()),
        naive_rmse=float(np.sqrt(((naive - actual) ** 2).mean())),
        naive_correlation=_pearson(naive, actual),
        spend_n=int(buyers.sum()),
        time_unit=str(model.time_unit_),
        kind=str(model.kind_),
        **spend,
    )


def gate(evaluation: HoldoutEvaluation) -> GateDecision:
    """A model is eligible for promotion only if it is no worse than the naive baseline on the holdout,
    both in aggregate (relative error of the total repeat purchases) and per customer (MAE).

    Undefined numbers (no repeat purchases in the holdout, predictions that are not finite) make a
    model ineligible: nothing shows it beats the baseline. Spend errors are reported, not gated.

    Parameters
    ----------
    evaluation
        The model's holdout evaluation (:func:`evaluate_holdout`).

    Returns
    -------
    GateDecision
        The verdict, with one sentence per criterion.
    """
    e = evaluation
    unit = UNIT_NAMES.get(e.time_unit, e.time_unit)
    failed: list[str] = []
    passed: list[str] = []

    if not (e.actual_total > 0):
        failed.append(
            f"the holdout ({e.duration:g} {unit}, {e.n_customers} customers) holds no repeat purchases, "
            "so the aggregate error is undefined and the model cannot be compared with the naive baseline"
        )
    elif not math.isfinite(e.aggregate_error):
        failed.append(
            f"holdout aggregate error is not a number (predicted total {e.predicted_total}): "
            "the model's predictions are not all finite"
        )
    else:
        comparison = (
            f"holdout aggregate error {e.aggregate_error:.1%} (predicted {e.predicted_total:,.1f} vs actual "
            f"{e.actual_total:,.0f} repeat purchases over {e.duration:g} {unit})"
        )
        naive = f"the naive baseline's {e.naive_aggregate_error:.1%} (predicted {e.naive_predicted_total:,.1f})"
        if e.aggregate_error > e.naive_aggregate_error:
            failed.append(f"{comparison} is worse than {naive}")
        else:
            passed.append(f"{comparison} is no worse than {naive}")

    if not math.isfinite(e.mae):
        failed.append(f"per-customer holdout MAE is not a number ({e.mae}): the model's predictions are not all finite")
    elif e.mae > e.naive_mae:
        failed.append(f"per-customer holdout MAE {e.mae:.3f} is worse than the naive baseline's {e.naive_mae:.3f}")
    else:
        passed.append(f"per-customer holdout MAE {e.mae:.3f} is no worse than the naive baseline's {e.naive_mae:.3f}")

    if failed:
        return GateDecision(eligible=False, reasons=tuple(failed))
    return GateDecision(eligible=True, reasons=tuple(passed))


def holdout_table(evaluations: Mapping[str, HoldoutEvaluation]) -> pd.DataFrame:
    """One row per model (named by the mapping's keys) and a last row for the naive baseline:
    actual and predicted holdout repeat purchases, aggregate error in percent, per-customer MAE,
    correlation and the spend MAE (the baseline's: the customers' own calibration mean).

    All evaluations must be on the same holdout (same customers, duration and actual purchases).

    Parameters
    ----------
    evaluations
        Model name -> its evaluation on one and the same holdout.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``model`` (the names, then :data:`NAIVE_BASELINE`), columns :data:`TABLE_COLUMNS`.

    Raises
    ------
    ValueError
        ``evaluations`` is empty, or two of them are on different holdouts.
    """
    if not evaluations:
        raise ValueError("holdout_table needs at least one evaluation")
    names = list(evaluations)
    first = evaluations[names[0]]
    for name in names[1:]:
        other = evaluations[name]
        same = (other.n_customers, other.duration, other.actual_total) == (
            first.n_customers, first.duration, first.actual_total
        )
        if not same:
            raise ValueError(
                f"evaluations {names[0]!r} and {name!r} are on different holdouts: "
                f"{first.n_customers} vs {other.n_customers} customers, duration {first.duration:g} vs "
                f"{other.duration:g}, {first.actual_total:g} vs {other.actual_total:g} actual repeat purchases"
            )
    rows = [
        (e.actual_total, e.predicted_total, 100 * e.aggregate_error, e.mae, e.correlation, e.spend_mae)
        for e in evaluations.values()
    ]
    rows.append(
        (first.actual_total, first.naive_predicted_total, 100 * first.naive_aggregate_error, first.naive_mae,
         first.naive_correlation, first.spend_baseline_mae)
    )
    index = pd.Index([*names, NAIVE_BASELINE], name="model")
    return pd.DataFrame(rows, index=index, columns=list(TABLE_COLUMNS)).astype("float64")


def holdout_by_frequency(
    model: ClvPredictor, calibration_holdout: pd.DataFrame, *, max_frequency: int = 7
) -> pd.DataFrame:
    """Mean actual, predicted and naive holdout repeat purchases per calibration frequency.

    Indexed by the bucket label "0", "1", ..., with every customer of frequency >= ``max_frequency``
    in the last bucket "``max_frequency``+"; empty buckets are left out. Columns: ``n_customers``,
    ``actual``, ``predicted``, ``naive`` (the lifetimes "calibration vs holdout purchases" view).

    Parameters
    ----------
    model
        A fitted CLV model.
    calibration_holdout
        The frame of :func:`features.customer.calibration_holdout`, in the model's time unit.
    max_frequency
        The frequency from which customers share the last bucket (at least 1).

    Returns
    -------
    pandas.DataFrame
        Indexed by the bucket label (named ``frequency``), columns :data:`BY_FREQUENCY_COLUMNS`.

    Raises
    ------
    ValueError
        ``max_frequency`` is below 1; a required column is missing or the frame is empty.
    RFMValidationError
        A row breaks an RFM invariant.
    """
    if max_frequency < 1:
        raise ValueError(f"max_frequency must be at least 1, got {max_frequency}")
    _check_frame(calibration_holdout)
    ch = calibration_holdout
    bucket = np.minimum(_array(ch[Feature.FREQUENCY]), max_frequency).astype("int64")
    frame = pd.DataFrame(
        {
            "bucket": bucket,
            "actual": _array(ch[Holdout.FREQUENCY]),
            "predicted": predicted_holdout_purchases(model, ch),
            "naive": naive_holdout_purchases(ch),
        }
    )
    grouped = frame.groupby("bucket").agg(
        n_customers=("actual", "size"), actual=("actual", "mean"), predicted=("predicted", "mean"),
        naive=("naive", "mean"),
    )
    labels = [f"{b}+" if b == max_frequency else str(b) for b in grouped.index]
    grouped.index = pd.Index(labels, name=Feature.FREQUENCY)
    grouped["n_customers"] = grouped["n_customers"].astype("int64")
    return grouped[list(BY_FREQUENCY_COLUMNS)]


def _day_index(values: pd.Series | pd.Index | pd.DatetimeIndex) -> pd.DatetimeIndex:
    """Timestamps as naive-UTC midnights (aware ones converted to UTC first)."""
    index = pd.DatetimeIndex(pd.to_datetime(values))
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return index.normalize()


def expected_cumulative_repeat_purchases(
    model: ClvPredictor, first_purchases: pd.Series, days: pd.Series | pd.DatetimeIndex
) -> np.ndarray:
    """Expected cumulative repeat purchases of a population, through the end of each of ``days``.

    ``first_purchases`` holds each customer's first purchase time; ``days`` consecutive or not, in
    increasing order. A customer born on day b is, at the end of day d >= b, d + 1 - b days old (the
    convention of T in :func:`features.customer.customer_features`: at midnight ending day d the
    customer's T is d + 1 - b), and contributes ``unconditional_expected_purchases(age)`` (Fader,
    Hardie & Lee 2005, eq. 9 for BG/NBD); customers not born yet contribute 0. Counted from the first
    day of ``days``: the expected purchases made before it are subtracted, so the curve starts where
    an actual cumulative count starting on that day starts. Customers are grouped by birth day, so
    the model is called once, on one age per day.

    Parameters
    ----------
    model
        A fitted CLV model.
    first_purchases
        Each customer's first purchase time (NaT ignored; aware times are converted to UTC).
    days
        The days of the curve, in increasing order.

    Returns
    -------
    numpy.ndarray
        The expected cumulative repeat purchases at the end of each day; empty without days.

    Raises
    ------
    ValueError
        ``days`` are not in increasing order.
    """
    day_index = _day_index(days)
    if len(day_index) == 0:
        return np.zeros(0)
    if (np.diff(day_index.asi8) < 0).any():
        raise ValueError("days must be in increasing order")
    births = _day_index(first_purchases.dropna())
    first_day, last_day = day_index[0], day_index[-1]
    births = births[births <= last_day]
    origin = min(first_day, births.min()) if len(births) else first_day
    n = (last_day - origin).days + 1

    # Customers per birth-day offset from the origin; E(age) for ages 1..n days.
    counts = np.bincount(np.asarray((births - origin).days, dtype="int64"), minlength=n).astype("float64")
    ages = np.arange(1, n + 1, dtype="float64") / DAYS_PER_UNIT[model.time_unit_]
    expected_at_age = np.broadcast_to(_array(model.unconditional_expected_purchases(ages)), (n,))
    # cumulative[j] = sum over birth offsets k <= j of counts[k] * E(j + 1 - k days).
    cumulative = np.convolve(counts, expected_at_age)[:n]

    offsets = np.asarray((day_index - origin).days, dtype="int64")
    start_offset = offsets[0]
    before_start = cumulative[start_offset - 1] if start_offset > 0 else 0.0
    return cumulative[offsets] - before_start



#: A one-order customer's predicted CLV above this quantile of the repeat customers' actual spend
#: over the same horizon needs a reason (:func:`plausibility_check`).
PLAUSIBLE_QUANTILE = 0.99


@dataclass(frozen=True)
class PlausibilityCheck:
    """Predicted CLV of the customers without a repeat purchase, checked against what customers
    actually spend.

    The reference is the repeat customers' actual net spend over the last ``reference_days`` before
    the cutoff (``reference_customers`` customers with a repeat purchase before that window),
    scaled to the CLV horizon (``horizon_days``); ``threshold`` is its :data:`PLAUSIBLE_QUANTILE`
    quantile. A one-order customer (frequency 0) whose CLV exceeds it is *explained* when their own
    spend to date already exceeds it too (a large first order), and *unexplained* otherwise:
    nothing in their own history supports a value above what 99 % of the repeat customers spend.
    ``largest_one_order_clv`` is the highest CLV of a one-order customer, ``own_spend_of_largest``
    what that customer has spent so far, and ``median_ratio_to_own_spend`` the median of CLV /
    spend to date over the one-order customers with positive spend.
    """

    horizon_days: float
    reference_days: float
    reference_customers: int
    threshold: float
    one_order_customers: int
    above: int
    unexplained: int
    largest_one_order_clv: float
    own_spend_of_largest: float
    median_ratio_to_own_spend: float

    @property
    def plausible(self) -> bool:
        """Whether every one-order customer above the threshold is explained by their own spend.

        Returns
        -------
        bool
            True when :attr:`unexplained` is 0 (also when nothing could be checked).
        """
        return self.unexplained == 0

    @property
    def message(self) -> str:
        """The check in one sentence, with its numbers.

        Returns
        -------
        str
            How many one-order customers are above the threshold and how many of them are explained, or
            why nothing could be checked.
        """
        if self.reference_customers == 0:
            return (f"no repeat customer bought before the last {self.reference_days:g} days: the CLV of the "
                    f"{self.one_order_customers} one-order customers could not be checked")
        head = (f"{self.above} of {self.one_order_customers} one-order customers have a CLV above the "
                f"{PLAUSIBLE_QUANTILE:.0%} quantile of the repeat customers' actual spend over {self.horizon_days:g} "
                f"days ({self.threshold:,.2f}; {self.reference_customers} repeat customers, the last "
                f"{self.reference_days:g} days scaled to the horizon)")
        if self.above == 0:
            return head
        explained = self.above - self.unexplained
        return (f"{head}: {explained} of them have spent more than that already, {self.unexplained} have not "
                f"(largest one-order CLV {self.largest_one_order_clv:,.2f}, own spend {self.own_spend_of_largest:,.2f})")

    def to_metrics(self) -> dict[str, float]:
        """The check's numbers under stable metric names, for tracking.

        Returns
        -------
        dict[str, float]
            ``plausibility.*`` metrics; NaN where undefined.
        """
        return {
            "plausibility.threshold": self.threshold,
            "plausibility.reference_customers": float(self.reference_customers),
            "plausibility.one_order_customers": float(self.one_order_customers),
            "plausibility.one_order_above": float(self.above),
            "plausibility.one_order_unexplained": float(self.unexplained),
            "plausibility.largest_one_order_clv": self.largest_one_order_clv,
            "plausibility.median_ratio_to_own_spend": self.median_ratio_to_own_spend,
        }


def plausibility_check(
    features: pd.DataFrame, clv: ArrayLike, reference: pd.DataFrame, *, horizon_days: float, time_unit: str = "D",
) -> PlausibilityCheck:
    """Check the predicted ``clv`` (one value per row of ``features``, the customer features as of
    the cutoff) of the one-order customers against the repeat customers' actual spend.

    ``reference`` is a calibration/holdout frame whose holdout ends at the cutoff
    (:func:`features.customer.calibration_holdout`): its repeat customers' ``spend_holdout`` over
    ``duration_holdout`` (in ``time_unit``, "D" or "W") is what they actually spent; it is
    scaled by ``horizon_days`` / the holdout length to the CLV horizon.

    Parameters
    ----------
    features
        The customer features at the cutoff (their ``frequency`` and ``historic_clv``).
    clv
        The predicted CLV, one per row of ``features``.
    reference
        A calibration/holdout frame whose holdout ends at the cutoff.
    horizon_days
        The CLV horizon, in days.
    time_unit
        The unit of the reference's ``duration_holdout``: ``"D"`` or ``"W"``.

    Returns
    -------
    PlausibilityCheck
        The threshold, the one-order customers above it and how many of them are unexplained.

    Raises
    ------
    ValueError
        A column is missing, ``clv`` does not have one value per row, or ``time_unit`` is unknown.
    """
    for column in (Feature.FREQUENCY, Feature.HISTORIC_CLV):
        if column not in features.columns:
            raise ValueError(f"plausibility_check: the features lack column {column!r}")
    for column in (Feature.FREQUENCY, Holdout.SPEND, Holdout.DURATION):
        if column not in reference.columns:
            raise ValueError(f"plausibility_check: the reference frame lacks column {column!r} (expected the output "
                             "of features.customer.calibration_holdout)")
    values = _array(clv)
    if values.shape != (len(features),):
        raise ValueError(f"plausibility_check: {values.shape[0] if values.ndim else 1} CLV values for "
                         f"{len(features)} customers")
    one = _array(features[Feature.FREQUENCY]) == 0
    own = _array(features[Feature.HISTORIC_CLV])[one]
    one_clv = values[one]

    repeat = _array(reference[Feature.FREQUENCY]) > 0
    if time_unit not in DAYS_PER_UNIT:
        raise ValueError(f"plausibility_check: time_unit must be one of {', '.join(DAYS_PER_UNIT)}, got {time_unit!r}")
    days_per_unit = float(DAYS_PER_UNIT[time_unit])
    duration_days = float(_array(reference[Holdout.DURATION]).max()) * days_per_unit if len(reference) else 0.0
    if repeat.any() and duration_days > 0:
        spend = _array(reference[Holdout.SPEND])[repeat] * (horizon_days / duration_days)
        threshold = float(np.quantile(spend, PLAUSIBLE_QUANTILE))
        above = one_clv > threshold
        unexplained = above & ~(own > threshold)
    else:
        threshold = math.nan
        above = unexplained = np.zeros(one_clv.shape, dtype=bool)
    positive = own > 0
    if one_clv.size:
        largest = int(np.argmax(one_clv))
        largest_clv, largest_own = float(one_clv[largest]), float(own[largest])
    else:
        largest_clv = largest_own = math.nan
    return PlausibilityCheck(
        horizon_days=float(horizon_days),
        reference_days=duration_days,
        reference_customers=int(repeat.sum()),
        threshold=threshold,
        one_order_customers=int(one.sum()),
        above=int(above.sum()),
        unexplained=int(unexplained.sum()),
        largest_one_order_clv=largest_clv,
        own_spend_of_largest=largest_own,
        median_ratio_to_own_spend=float(np.median(one_clv[positive] / own[positive])) if positive.any() else math.nan,
    )
