"""Windows chosen from the data: the ``auto`` value of every window setting, resolved per step.

A horizon that suits a two-year wholesaler does not suit a four-month grocer. Every window setting
is ``auto`` by default: :func:`history_stats` measures the history once, and one pure function per
step (:func:`churn_windows`, :func:`recommend_windows`, :func:`clv_windows`) turns the measures and
the settings into windows, each with the reason it was chosen; an explicit value always wins. Below
a real minimum a step is skipped with :class:`HistoryTooShort`, never failed. The formulas are in
each function's docstring and in the README ("Windows chosen from the data").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import ibis

from features.churn import DEFAULT_HORIZON_DAYS, DEFAULT_LOOKBACK_DAYS, data_end
from features.customer import _identified_product_lines
from features.errors import NoDataError, RapportError
from features.history import LINES_TABLE, cutoff_literal, utc_naive
from features.schema import Col

#: The value of a window setting that asks for :mod:`features.windows` to choose.
AUTO = "auto"
Auto = Literal["auto"]
#: A cutoff spacing: monthly (the first of each month) or a whole number of days.
Spacing = int | Literal["monthly"]

#: Below these a step is skipped (:func:`require_history`).
MIN_SPAN_DAYS = 60
MIN_REPEAT_CUSTOMERS = 100
#: Auto cutoff spacing: monthly only when it gives at least this many training cutoffs.
MIN_TRAINING_CUTOFFS = 3

# Bounds of the auto windows, in days (the upper ones are the fixed defaults of a two-year history).
HORIZON_RHYTHMS = 3
HORIZON_MIN, HORIZON_MAX = 14, DEFAULT_HORIZON_DAYS
LOOKBACK_HORIZONS = 4
LOOKBACK_MAX = DEFAULT_LOOKBACK_DAYS
RECOMMEND_SHARE, RECOMMEND_MIN, RECOMMEND_MAX = 6, 7, 90
HALF_LIFE_SHARE, HALF_LIFE_MIN, HALF_LIFE_MAX = 2, 7, 365
CLV_SHARE, CLV_MIN, CLV_MAX = 3, 7, 183
WEEKLY = 7


class HistoryTooShort(RapportError, ValueError):
    """A step cannot be trained on this history: its message names the minimum, what the data have
    and the setting to change. The pipeline records the step as skipped, not failed.

    Raised below :data:`MIN_SPAN_DAYS` days of history or :data:`MIN_REPEAT_CUSTOMERS` repeat
    customers (purchases on two days or more), and when a window set by hand does not fit the
    history (the message then names the setting).
    """

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class HistoryStats:
    """What the windows are chosen from (:func:`history_stats`)."""

    first_sale: datetime
    last_sale: datetime
    customers: int
    repeat_customers: int
    #: Median over repeat customers of their mean days between purchase days; NaN without any.
    median_days_between_purchases: float

    @property
    def span_days(self) -> float:
        """Days from the first to the last sale.

        Returns
        -------
        float
            The span S of the history in days (fractional: timestamps, not calendar days).
        """
        return (self.last_sale - self.first_sale).total_seconds() / 86_400

    def describe(self) -> str:
        """One line that says what the windows were chosen from, for ``rapport train``.

        Returns
        -------
        str
            Span with its dates, customers, repeat customers and the median days between purchases.
        """
        gap = self.median_days_between_purchases
        rhythm = f"median {gap:.0f} days between purchases" if math.isfinite(gap) else "no repeat purchase"
        return (f"history {self.first_sale:%Y-%m-%d} .. {self.last_sale:%Y-%m-%d} ({self.span_days:.0f} days), "
                f"{self.customers:,} customers, {self.repeat_customers:,} repeat customers, {rhythm}")


def history_stats(backend: ibis.BaseBackend, *, before: datetime | None = None) -> HistoryStats:
    """Span, customers, repeat customers and the median days between purchases of the history
    (before ``before`` when given, e.g. a backtest's cutoff).

    The median days between purchases g is, per repeat customer (purchases on two days or more),
    days from the first to the last purchase day / (purchase days - 1); then the median over
    repeat customers (NaN without any).

    Parameters
    ----------
    backend
        Ibis backend holding the unified history (the ``lines`` table).
    before
        Only sales strictly before this instant count (naive UTC or aware); ``None``: all sales.

    Returns
    -------
    HistoryStats
        The measures every step's windows are chosen from.

    Raises
    ------
    NoDataError
        The store holds no sale (before ``before``).
    """
    lines = backend.table(LINES_TABLE)
    if before is not None:
        lines = lines.filter(lines[Col.TS] < cutoff_literal(utc_naive(before)))
    span = lines.aggregate(first=lines[Col.TS].min(), last=lines[Col.TS].max()).to_pandas()
    first, last = span["first"].iloc[0], span["last"].iloc[0]
    if first is None or first != first:
        where = "" if before is None else f" before {before:%Y-%m-%d}"
        raise NoDataError(f"the store holds no sale{where}: ingest data first (rapport data ingest DIR)")
    end = utc_naive(before) if before is not None else last.to_pydatetime() + timedelta(microseconds=1)
    product = _identified_product_lines(backend, end)
    days = product.select(product[Col.CUSTOMER_ID], day=product[Col.TS].date()).distinct()
    per = days.group_by(Col.CUSTOMER_ID).aggregate(n=days.count(), first=days.day.min(), last=days.day.max())
    gap = (per["last"].delta(per["first"], unit="day").cast("float64") / (per.n - 1).cast("float64"))
    repeat = per.n >= 2
    out = per.aggregate(customers=per.count(), repeat=per.count(where=repeat),
                        median_gap=gap.median(where=repeat)).to_pandas()
    median_gap = out["median_gap"].iloc[0]
    return HistoryStats(
        first_sale=first.to_pydatetime(), last_sale=last.to_pydatetime(),
        customers=int(out["customers"].iloc[0]), repeat_customers=int(out["repeat"].iloc[0]),
        median_days_between_purchases=math.nan if median_gap is None else float(median_gap),
    )


def _week(days: float) -> int:
    return int(days // WEEKLY) * WEEKLY


def _clamp(value: float, low: int, high: int) -> int:
    return int(min(max(value, low), high))


def require_history(step: str, stats: HistoryStats) -> None:
    """:class:`HistoryTooShort` when the history is below the minimum every step needs.

    Below :data:`MIN_SPAN_DAYS` days or :data:`MIN_REPEAT_CUSTOMERS` repeat customers a step cannot
    learn anything honest, and no window setting can make up for it.

    Parameters
    ----------
    step
        The step's name (``churn``, ``recommend``, ``clv``), used in the message.
    stats
        The history's measures (:func:`history_stats`).

    Returns
    -------
    None

    Raises
    ------
    HistoryTooShort
        The history is too short or has too few repeat customers; the message names both.
    """
    if stats.span_days < MIN_SPAN_DAYS:
        raise HistoryTooShort(step, (
            f"{step} skipped: it needs at least {MIN_SPAN_DAYS} days of history; the data have "
            f"{stats.span_days:.0f} ({stats.first_sale:%Y-%m-%d} .. {stats.last_sale:%Y-%m-%d}). "
            f"Ingest a longer history (no window setting can make up for it)"))
    if stats.repeat_customers < MIN_REPEAT_CUSTOMERS:
        raise HistoryTooShort(step, (
            f"{step} skipped: it needs at least {MIN_REPEAT_CUSTOMERS} repeat customers (purchases on two "
            f"days or more); the data have {stats.repeat_customers:,} of {stats.customers:,} customers. "
            f"Ingest more history or more customers (no window setting can make up for it)"))


@dataclass(frozen=True)
class Chosen:
    """A window's value and why it has it (``auto: ...`` or ``set``)."""

    value: int | float | str | None
    why: str

    @property
    def auto(self) -> bool:
        """Whether the value was chosen from the data rather than set.

        Returns
        -------
        bool
            ``True`` when ``why`` starts with ``auto``.
        """
        return self.why.startswith(AUTO)


def _explicit(value: object, setting: str) -> Chosen:
    return Chosen(value, f"set ({setting})")  # type: ignore[arg-type]


@dataclass(frozen=True)
class Windows:
    """The windows of one step: ``chosen`` maps each setting name to its :class:`Chosen`."""

    step: str
    stats: HistoryStats
    chosen: dict[str, Chosen]

    def __getitem__(self, setting: str) -> int | float | str | None:
        return self.chosen[setting].value

    def to_params(self) -> dict[str, object]:
        """MLflow parameters: ``window.<setting>`` (the value; ``none`` for no decay) and
        ``window.<setting>.why``, plus the history's measures.

        Returns
        -------
        dict[str, object]
            Parameter name to value, including ``window.history_days``, ``window.repeat_customers``
            and ``window.median_days_between_purchases``.
        """
        params: dict[str, object] = {}
        for name, c in self.chosen.items():
            params[f"window.{name}"] = "none" if c.value is None else c.value
            params[f"window.{name}.why"] = c.why
        gap = self.stats.median_days_between_purchases
        params.update({"window.history_days": round(self.stats.span_days, 1),
                       "window.repeat_customers": self.stats.repeat_customers,
                       "window.median_days_between_purchases": round(gap, 1) if math.isfinite(gap) else "none"})
        return params

    def lines(self) -> list[str]:
        """One line per window for ``rapport train``: ``horizon_days = 21 (auto: ...)``.

        Returns
        -------
        list[str]
            ``<setting> = <value> (<why>)``, in the order of ``chosen``.
        """
        return [f"{name} = {'none' if c.value is None else c.value} ({c.why})" for name, c in self.chosen.items()]


# --- churn ---------------------------------------------------------------------------------------------


def churn_windows(stats: HistoryStats, *, horizon_days: int | Auto, lookback_days: int | Auto,
                  cutoff_spacing: Spacing | Auto, max_cutoffs: int) -> Windows:
    """Horizon, lookback and cutoff spacing of the churn step.

    With S the span of the history in days, g the median days between purchases and ``week(x)``
    = x rounded down to whole weeks:

    - horizon H = clamp(week(3 g), 14, 90), and at most max(14, week(S / 5)): a customer who usually
      buys every g days and has not bought for three rhythms has left; a fifth of the span leaves
      room for the lookback, the test, the validation and several training cutoffs;
    - lookback L = 365 days when S - 4 H >= 365 (a whole year: every season in the population), else
      min(4 H, S - 4 H) and at least H: four horizons of behaviour, leaving one horizon beyond the
      three label windows for more training cutoffs;
    - cutoff spacing: monthly (first of the month) when monthly cutoffs give at least
      :data:`MIN_TRAINING_CUTOFFS` training cutoffs (after the test and the validation cutoff, with
      one horizon of embargo between them), else weekly.

    Parameters
    ----------
    stats
        The history's measures (:func:`history_stats`).
    horizon_days, lookback_days
        Days, or ``"auto"`` to choose them as above.
    cutoff_spacing
        ``"monthly"``, a whole number of days >= 1, or ``"auto"``.
    max_cutoffs
        Most cutoffs the data set may use (test and validation included).

    Returns
    -------
    Windows
        Step ``churn`` with ``horizon_days``, ``lookback_days`` and ``cutoff_spacing``.

    Raises
    ------
    HistoryTooShort
        Below the minimum history, or when the windows (chosen or set) leave no test, validation
        and training cutoff: the message names the settings to change.
    """
    require_history("churn", stats)
    span, gap = stats.span_days, stats.median_days_between_purchases
    chosen: dict[str, Chosen] = {}
    if horizon_days == AUTO:
        rhythm = _clamp(_week(HORIZON_RHYTHMS * gap), HORIZON_MIN, HORIZON_MAX)
        room = max(HORIZON_MIN, _week(span / 5))
        value = min(rhythm, room)
        why = (f"auto: {HORIZON_RHYTHMS} x the median {gap:.0f} days between purchases, in whole weeks, within "
               f"[{HORIZON_MIN}, {HORIZON_MAX}]")
        if value < rhythm:
            why += f", at most a fifth of the {span:.0f}-day history"
        chosen["horizon_days"] = Chosen(value, why)
    else:
        chosen["horizon_days"] = _explicit(horizon_days, "churn.horizon_days")
    horizon = int(chosen["horizon_days"].value)  # type: ignore[arg-type]
    if lookback_days == AUTO:
        room = int(span - LOOKBACK_HORIZONS * horizon)
        if room >= LOOKBACK_MAX:
            chosen["lookback_days"] = Chosen(LOOKBACK_MAX, f"auto: a year, since the history leaves {room} days "
                                                           f"before its last {LOOKBACK_HORIZONS} horizons")
        else:
            chosen["lookback_days"] = Chosen(max(horizon, min(LOOKBACK_HORIZONS * horizon, room)), (
                f"auto: {LOOKBACK_HORIZONS} horizons, at most the {room} days the history leaves before its last "
                f"{LOOKBACK_HORIZONS} horizons, at least one horizon"))
    else:
        chosen["lookback_days"] = _explicit(lookback_days, "churn.lookback_days")
    lookback = int(chosen["lookback_days"].value)  # type: ignore[arg-type]

    if cutoff_spacing == AUTO:
        monthly = select_cutoffs(cutoff_grid(stats.first_sale, stats.last_sale, horizon_days=horizon,
                                             lookback_days=lookback, spacing="monthly"), horizon, max_cutoffs)
        enough = min(MIN_TRAINING_CUTOFFS, max_cutoffs - 2)
        if len(monthly) - 2 >= enough:
            chosen["cutoff_spacing"] = Chosen("monthly", f"auto: monthly cutoffs give {len(monthly) - 2} training "
                                                         f"cutoff(s), at least {enough} wanted")
        else:
            chosen["cutoff_spacing"] = Chosen(WEEKLY, f"auto: weekly, monthly cutoffs would give "
                                                      f"{max(len(monthly) - 2, 0)} training cutoff(s), fewer than "
                                                      f"{enough}")
    else:
        chosen["cutoff_spacing"] = _explicit(cutoff_spacing, "churn.cutoff_spacing")
    windows = Windows("churn", stats, chosen)
    cutoffs = churn_cutoffs(windows, max_cutoffs)
    if len(cutoffs) < 3:
        settings = [f"churn.{name}" for name, c in chosen.items() if not c.auto]
        change = (f"set {' / '.join(settings)} to auto or shorter" if settings
                  else "ingest a longer history")
        raise HistoryTooShort("churn", (
            f"churn skipped: it needs a test cutoff, a validation cutoff {horizon} days earlier and a training "
            f"cutoff {horizon} days before that, each after {lookback} days of history (lookback) and with its "
            f"{horizon}-day label window inside the data, at least {lookback + 3 * horizon} days in all; the "
            f"history {stats.first_sale:%Y-%m-%d} .. {stats.last_sale:%Y-%m-%d} ({span:.0f} days) gives "
            f"{len(cutoffs)} such cutoffs. {change[0].upper() + change[1:]}"))
    return windows


def churn_cutoffs(windows: Windows, max_cutoffs: int) -> list[datetime]:
    """The cutoffs the churn data set is built on for ``windows`` (:func:`select_cutoffs` of the grid).

    Parameters
    ----------
    windows
        The churn step's windows (:func:`churn_windows`).
    max_cutoffs
        Most cutoffs to return (test and validation included).

    Returns
    -------
    list[datetime]
        Naive UTC midnights, ascending: training cutoffs, then validation, then test.
    """
    horizon = int(windows["horizon_days"])  # type: ignore[arg-type]
    grid = cutoff_grid(windows.stats.first_sale, windows.stats.last_sale, horizon_days=horizon,
                       lookback_days=int(windows["lookback_days"]),  # type: ignore[arg-type]
                       spacing=windows["cutoff_spacing"])  # type: ignore[arg-type]
    return select_cutoffs(grid, horizon, max_cutoffs)


def _next_month(day: datetime) -> datetime:
    return datetime(day.year + day.month // 12, day.month % 12 + 1, 1)


def cutoff_grid(first_sale: datetime, last_sale: datetime, *, horizon_days: int, lookback_days: int,
                spacing: Spacing) -> list[datetime]:
    """Every cutoff (naive UTC midnight) the history can both describe and label, ascending.

    The first is at or after the day of ``first_sale`` + ``lookback_days`` (the population's whole
    lookback window inside the data); the last has its label window ``[c, c + H)`` end by the midnight
    after the day of ``last_sale``.

    Parameters
    ----------
    first_sale, last_sale
        The history's first and last sale.
    horizon_days
        Length H of the label window ``[c, c + H)`` in days.
    lookback_days
        Days of history each cutoff needs before it.
    spacing
        ``"monthly"``: the first of each month; a whole number of days >= 1: every ``spacing``
        days back from the last possible cutoff.

    Returns
    -------
    list[datetime]
        The cutoffs, ascending; empty when the history is shorter than lookback + horizon.

    Raises
    ------
    ValueError
        ``spacing`` is neither ``"monthly"`` nor a whole number >= 1.
    """
    first = utc_naive(first_sale)
    earliest = datetime(first.year, first.month, first.day) + timedelta(days=lookback_days)
    latest = data_end(last_sale) - timedelta(days=horizon_days)
    if latest < earliest:
        return []
    if spacing == "monthly":
        cutoff = datetime(earliest.year, earliest.month, 1)
        if cutoff < earliest:
            cutoff = _next_month(cutoff)
        out = []
        while cutoff <= latest:
            out.append(cutoff)
            cutoff = _next_month(cutoff)
        return out
    if isinstance(spacing, bool) or not isinstance(spacing, int) or spacing < 1:
        raise ValueError(f"churn.cutoff_spacing must be auto, monthly or a whole number of days >= 1, got {spacing!r}")
    n = (latest - earliest).days // spacing
    return [latest - timedelta(days=spacing * k) for k in range(n, -1, -1)]


def select_cutoffs(grid: list[datetime], horizon_days: int, max_cutoffs: int) -> list[datetime]:
    """The cutoffs of ``grid`` a churn data set uses, ascending: the latest (test), the latest whose
    label window ends by it (validation), and up to ``max_cutoffs - 2`` of the latest whose label
    windows end by the validation cutoff (training). Cutoffs inside an embargo are left out: no
    split could use them.

    Parameters
    ----------
    grid
        Candidate cutoffs, ascending (:func:`cutoff_grid`).
    horizon_days
        Length of each cutoff's label window in days (the embargo between the splits).
    max_cutoffs
        Most cutoffs to return (test and validation included).

    Returns
    -------
    list[datetime]
        ``[*training, validation, test]``, ascending; fewer than 3 when the grid has no such triple.
    """
    if not grid:
        return []
    window = timedelta(days=horizon_days)
    test = grid[-1]
    valid = [c for c in grid if c + window <= test]
    if not valid:
        return [test]
    train = [c for c in grid if c + window <= valid[-1]][-max(max_cutoffs - 2, 1):]
    return [*train, valid[-1], test]


# --- recommender and CLV ---------------------------------------------------------------------------------


def recommend_windows(stats: HistoryStats, *, test_days: int | Auto, label_days: int | Auto,
                      half_life_days: float | None | Auto) -> Windows:
    """Test and validation periods and the interactions' half-life of the recommender.

    With S the span of the history in days: test T = validation V = clamp(floor(S / 6), 7, 90)
    days; half-life = clamp(floor(S / 2), 7, 365) days.

    Parameters
    ----------
    stats
        The history's measures (:func:`history_stats`).
    test_days, label_days
        Days of the test and the validation (label) period, or ``"auto"``.
    half_life_days
        Half-life of the interactions' decay in days, ``None`` for no decay, or ``"auto"``.

    Returns
    -------
    Windows
        Step ``recommend`` with ``test_days``, ``label_days`` and ``half_life_days``.

    Raises
    ------
    HistoryTooShort
        Below the minimum history, or when T + 2 V exceeds the span (the candidate models need a
        training period at least as long as the label period).
    """
    require_history("recommend", stats)
    span = stats.span_days
    period = _clamp(math.floor(span / RECOMMEND_SHARE), RECOMMEND_MIN, RECOMMEND_MAX)
    why = f"auto: a {RECOMMEND_SHARE}th of the {span:.0f}-day history, within [{RECOMMEND_MIN}, {RECOMMEND_MAX}]"
    chosen = {
        "test_days": Chosen(period, why) if test_days == AUTO else _explicit(test_days, "recommend.test_days"),
        "label_days": Chosen(period, why) if label_days == AUTO else _explicit(label_days, "recommend.label_days"),
    }
    if half_life_days == AUTO:
        chosen["half_life_days"] = Chosen(float(_clamp(math.floor(span / HALF_LIFE_SHARE), HALF_LIFE_MIN, HALF_LIFE_MAX)),
                                          f"auto: half the {span:.0f}-day history, within [{HALF_LIFE_MIN}, "
                                          f"{HALF_LIFE_MAX}]")
    else:
        chosen["half_life_days"] = _explicit(half_life_days, "recommend.half_life_days")
    test, valid = int(chosen["test_days"].value), int(chosen["label_days"].value)  # type: ignore[arg-type]
    # The candidate models need a training period before the label period at least as long as it.
    if test + 2 * valid > span:
        settings = [f"recommend.{n}" for n in ("test_days", "label_days") if not chosen[n].auto]
        raise HistoryTooShort("recommend", (
            f"recommend skipped: a {test}-day test period, a {valid}-day label period and a training period at "
            f"least as long need {test + 2 * valid} days; the history {stats.first_sale:%Y-%m-%d} .. "
            f"{stats.last_sale:%Y-%m-%d} has {span:.0f}. Set {' / '.join(settings) or 'the periods'} to auto "
            f"or shorter"))
    return Windows("recommend", stats, chosen)


def clv_windows(stats: HistoryStats, *, holdout_days: int | Auto) -> Windows:
    """The CLV holdout: the last days of the history the candidate purchase models are judged on.

    With S the span in days: holdout h = clamp(floor(S / 3), 7, 183) days (two thirds of the
    history to calibrate the purchase model, a third to judge it).

    Parameters
    ----------
    stats
        The history's measures (:func:`history_stats`).
    holdout_days
        Days of holdout, or ``"auto"``.

    Returns
    -------
    Windows
        Step ``clv`` with ``holdout_days``.

    Raises
    ------
    HistoryTooShort
        Below the minimum history, or when the calibration period would be shorter than the holdout.
    """
    require_history("clv", stats)
    span = stats.span_days
    if holdout_days == AUTO:
        chosen = Chosen(_clamp(math.floor(span / CLV_SHARE), CLV_MIN, CLV_MAX),
                        f"auto: a third of the {span:.0f}-day history, within [{CLV_MIN}, {CLV_MAX}]")
    else:
        chosen = _explicit(holdout_days, "clv.holdout_days")
    # The calibration period needs at least as many days as the holdout to estimate a purchase rate.
    if 2 * int(chosen.value) > span:  # type: ignore[arg-type]
        raise HistoryTooShort("clv", (
            f"clv skipped: a {chosen.value}-day holdout needs at least as long a calibration period before it, "
            f"{2 * int(chosen.value)} days in all; the history {stats.first_sale:%Y-%m-%d} .. "  # type: ignore[arg-type]
            f"{stats.last_sale:%Y-%m-%d} has {span:.0f}. Set clv.holdout_days to auto or shorter"))
    return Windows("clv", stats, {"holdout_days": chosen})
