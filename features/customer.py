"""Per-customer features as of a cutoff, and the calibration/holdout split of the CLV models.

One Ibis query (lines -> orders -> customer, with a customer x period branch for the RFM columns and
a lines branch for category breadth) that DuckDB runs in a few seconds on ten million lines; pandas
appears only when the result is returned.

The recency/frequency/T columns follow the convention of Fader, Hardie & Lee (2005) as implemented by
``lifetimes.utils.summary_data_from_transaction_data``: purchases are grouped into periods of the time
unit, the first period is the customer's "birth", and only the periods after it are repeat purchases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import get_args

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd

from features.errors import ArgumentError, RapportError
from features.history import cutoff_literal, money_sum, orders, product_lines, unified_lines, utc_naive
from features.schema import CHANNELS, Col, Feature, Holdout
from features.settings import TimeUnit

#: Days in one period of each time unit.
DAYS_PER_UNIT: dict[str, int] = {"D": 1, "W": 7}

_SECONDS_PER_DAY = 86_400.0

#: Columns of :func:`customer_features`, in order (index: ``customer_id``).
FEATURE_COLUMNS: tuple[str, ...] = (
    Feature.FREQUENCY,
    Feature.RECENCY,
    Feature.T,
    Feature.MONETARY_VALUE,
    Feature.HISTORIC_CLV,
    Feature.N_ORDERS,
    Feature.AVG_ORDER_VALUE,
    Feature.AVG_DAYS_BETWEEN_ORDERS,
    Feature.DAYS_SINCE_LAST_ORDER,
    Feature.TENURE_DAYS,
    Feature.RETURN_RATE,
    *(Feature.channel_share(c) for c in CHANNELS),
    Feature.GUEST_SHARE,
    Feature.N_CATEGORIES,
    Feature.FIRST_PURCHASE,
    Feature.LAST_PURCHASE,
)

#: Columns :func:`calibration_holdout` adds to the calibration features, in order.
HOLDOUT_COLUMNS: tuple[str, ...] = (Holdout.FREQUENCY, Holdout.SPEND, Holdout.MONETARY_VALUE, Holdout.DURATION)

_INTEGER_COLUMNS = (Feature.N_ORDERS, Feature.N_CATEGORIES)
_TIMESTAMP_COLUMNS = (Feature.FIRST_PURCHASE, Feature.LAST_PURCHASE)

# Private column names of intermediate tables.
_PERIOD = "_period"
_PERIOD_NET = "_period_net"


class RFMValidationError(RapportError, ValueError):
    """An RFM table breaks an invariant of the lifetimes convention.

    ``column`` is the offending column, ``customer_ids`` the first offending customers (at most
    :data:`MAX_REPORTED`), ``values`` their values in that column and ``n_violations`` how many rows
    break the rule in total.
    """

    MAX_REPORTED = 5

    def __init__(
        self, column: str, rule: str, customer_ids: Sequence[object], values: Sequence[object], n_violations: int
    ) -> None:
        self.column = column
        self.rule = rule
        self.customer_ids = list(customer_ids)
        self.values = list(values)
        self.n_violations = n_violations
        shown = ", ".join(f"customer_id {c}: {column}={_show(v)}" for c, v in zip(self.customer_ids, self.values))
        more = n_violations - len(self.customer_ids)
        suffix = f" (and {more} more)" if more > 0 else ""
        super().__init__(f"{column} must satisfy {rule}; {n_violations} row(s) do not: {shown}{suffix}")


def _show(value: object) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):g}"
    return str(value)


def _check_time_unit(time_unit: str) -> TimeUnit:
    if time_unit not in get_args(TimeUnit):
        raise ArgumentError(f"time_unit must be one of {get_args(TimeUnit)}, got {time_unit!r}")
    return time_unit  # type: ignore[return-value]


def period_start(moment: datetime | date, time_unit: TimeUnit) -> date:
    """The day a cutoff falls in. Purchases are grouped by day in every time unit; the unit only
    scales the durations (a week is 7 days, as in Fader, Hardie & Lee 2005).

    Parameters
    ----------
    moment
        A cutoff (naive UTC or aware ``datetime``, or a ``date``).
    time_unit
        The model's time unit; it does not change the day.

    Returns
    -------
    datetime.date
        The UTC day of ``moment``.
    """
    del time_unit  # the same day for every unit; kept in the signature for symmetry with callers
    return utc_naive(moment).date()


def _period_of(ts: ir.TimestampValue, time_unit: TimeUnit) -> ir.DateValue:
    # Purchases on one day are one transaction, whatever the unit (lifetimes: freq="D").
    del time_unit
    return ts.date()


def _periods_between(later: ir.DateValue, earlier: ir.DateValue, time_unit: TimeUnit) -> ir.NumericValue:
    # Days measured in the unit: weeks are days / 7 (lifetimes: freq="D", freq_multiplier=7).
    days = later.delta(earlier, unit="day")
    return days / DAYS_PER_UNIT[time_unit] if time_unit == "W" else days


def _identified_product_lines(backend: ibis.BaseBackend, as_of: datetime, since: datetime | None = None) -> ir.Table:
    """Product lines of identified customers sold before ``as_of`` (and at or after ``since``), net of
    the returns booked before ``as_of``. Postage, fees and adjustments are not purchases."""
    lines = product_lines(unified_lines(backend, as_of))
    lines = lines.filter(lines[Col.CUSTOMER_ID].notnull())
    if since is not None:
        lines = lines.filter(lines[Col.TS] >= cutoff_literal(since))
    return lines


def customer_feature_table(backend: ibis.BaseBackend, as_of: datetime, *, time_unit: TimeUnit = "D") -> ir.Table:
    """The Ibis expression behind :func:`customer_features` (unexecuted; one row per customer).

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    as_of
        The cutoff (naive UTC or aware): only sales and returns before it count.
    time_unit
        ``"D"`` (days) or ``"W"`` (weeks of 7 days): the unit of ``recency``, ``T`` and the holdout
        duration.

    Returns
    -------
    ibis.expr.types.Table
        ``customer_id`` and the columns :data:`FEATURE_COLUMNS`, unexecuted.

    Raises
    ------
    ArgumentError
        ``time_unit`` is neither ``"D"`` nor ``"W"``.
    """
    time_unit = _check_time_unit(time_unit)
    as_of = utc_naive(as_of)
    as_of_epoch = (as_of - datetime(1970, 1, 1)).total_seconds()
    as_of_period = ibis.literal(period_start(as_of, time_unit), type="date")

    lines = _identified_product_lines(backend, as_of)
    o = orders(lines)

    # RFM: customer x period is lifetimes' transaction table after grouping into periods (amounts
    # summed); the first period is the customer's birth, the others are repeat purchases.
    o_periods = o.mutate(**{_PERIOD: _period_of(o[Col.TS], time_unit)})
    per_period = o_periods.group_by([Col.CUSTOMER_ID, _PERIOD]).aggregate(
        **{_PERIOD_NET: money_sum(o_periods[Col.NET_AMOUNT])}
    )
    p = per_period
    rfm = p.group_by(Col.CUSTOMER_ID).aggregate(
        _first_period=p[_PERIOD].min(),
        _last_period=p[_PERIOD].max(),
        _n_periods=p.count(),
        _first_period_net=p[_PERIOD_NET].argmin(p[_PERIOD]),
    )

    # Order statistics straight from the orders (cheaper than carrying them through the periods).
    stats = o.group_by(o[Col.CUSTOMER_ID].name("_o_customer_id")).aggregate(
        _n_orders=o.count(),
        _n_guest=o[Col.IS_GUEST].sum(),
        _gross=money_sum(o[Col.GROSS_AMOUNT]),
        _refund=money_sum(o[Col.REFUND_AMOUNT]),
        _net=money_sum(o[Col.NET_AMOUNT]),
        _first_ts=o[Col.TS].min(),
        _last_ts=o[Col.TS].max(),
        **{f"_gross_{ch}": money_sum(o[Col.GROSS_AMOUNT], where=o[Col.CHANNEL] == ch).fill_null(0.0) for ch in CHANNELS},
    )

    categories = lines.filter(lines[Col.CATEGORY].notnull())
    categories = categories.group_by(categories[Col.CUSTOMER_ID].name("_c_customer_id")).aggregate(
        _n_categories=categories[Col.CATEGORY].nunique()
    )

    c = rfm.join(stats, rfm[Col.CUSTOMER_ID] == stats._o_customer_id).left_join(
        categories, rfm[Col.CUSTOMER_ID] == categories._c_customer_id
    )
    frequency = c._n_periods - 1
    repeat_net = c._net - c._first_period_net
    gross = c._gross.nullif(0.0)
    first_epoch = c._first_ts.epoch_seconds()
    last_epoch = c._last_ts.epoch_seconds()
    features = {
        Feature.FREQUENCY: frequency.cast("float64"),
        Feature.RECENCY: _periods_between(c._last_period, c._first_period, time_unit).cast("float64"),
        Feature.T: _periods_between(as_of_period, c._first_period, time_unit).cast("float64"),
        # lifetimes: mean of the per-period sums, first period excluded, 0 without repeat periods.
        Feature.MONETARY_VALUE: ibis.ifelse(frequency > 0, _no_float_dust(repeat_net) / frequency.nullif(0), 0.0).cast(
            "float64"
        ),
        Feature.HISTORIC_CLV: c._net.cast("float64"),
        Feature.N_ORDERS: c._n_orders.cast("int64"),
        Feature.AVG_ORDER_VALUE: (c._net / c._n_orders).cast("float64"),
        Feature.AVG_DAYS_BETWEEN_ORDERS: (
            (last_epoch - first_epoch) / _SECONDS_PER_DAY / (c._n_orders - 1).nullif(0)
        ).cast("float64"),
        Feature.DAYS_SINCE_LAST_ORDER: ((as_of_epoch - last_epoch) / _SECONDS_PER_DAY).cast("float64"),
        Feature.TENURE_DAYS: ((as_of_epoch - first_epoch) / _SECONDS_PER_DAY).cast("float64"),
        Feature.RETURN_RATE: (c._refund / gross).cast("float64"),
        **{Feature.channel_share(ch): (c[f"_gross_{ch}"] / gross).cast("float64") for ch in CHANNELS},
        Feature.GUEST_SHARE: (c._n_guest / c._n_orders).cast("float64"),
        Feature.N_CATEGORIES: c._n_categories.fill_null(0).cast("int64"),
        Feature.FIRST_PURCHASE: c._first_ts,
        Feature.LAST_PURCHASE: c._last_ts,
    }
    return c.select(c[Col.CUSTOMER_ID], **features)


def _no_float_dust(amount: ir.NumericValue) -> ir.NumericValue:
    """Zero for |amount| < 1e-9: a difference of two sums of money leaves float dust (-3e-14 for a
    customer whose repeat purchases were all returned) that would break monetary_value >= 0."""
    return ibis.ifelse(amount.abs() < 1e-9, 0.0, amount)


def _to_frame(table: ir.Table, columns: Sequence[str]) -> pd.DataFrame:
    """Execute once and shape the result: indexed by customer_id, sorted, NumPy dtypes, NaN for NULL."""
    df = table.to_pandas()
    df = df.set_index(Col.CUSTOMER_ID).sort_index()
    df.index = df.index.astype("int64")
    out = {}
    for name in columns:
        column = df[name]
        if name in _TIMESTAMP_COLUMNS:
            out[name] = pd.to_datetime(column)
        elif name in _INTEGER_COLUMNS:
            out[name] = column.astype("int64")
        else:
            out[name] = pd.to_numeric(column).astype("float64")
    return pd.DataFrame(out, index=df.index, columns=list(columns))


def customer_features(backend: ibis.BaseBackend, as_of: datetime, *, time_unit: TimeUnit = "D") -> pd.DataFrame:
    """Features of every identified customer from the history strictly before ``as_of``.

    Indexed by ``customer_id`` (sorted), one row per customer with at least one product purchase
    before ``as_of``. What counts:

    - A *purchase* is an order (all its product lines), dated by its first line, counted when it was
      made: an order later returned in full still is a purchase. Returns only reduce spend, and only
      the returns booked before ``as_of``: a return booked later has not happened at the cutoff.
    - *Spend* is net: ``gross_amount - refund_amount`` (base currency). Postage, fees and adjustments
      (catalogue ``is_product`` false) are neither purchases nor spend. Anonymous sales and keys the
      identity map does not know have no customer and are left out.

    Columns (``Feature`` names), with ``p(t)`` the period of time ``t``: its UTC day for
    every ``time_unit`` (several orders on one day are one transaction); durations are measured in
    days for ``"D"`` and in weeks of 7 days for ``"W"`` (the convention of Fader, Hardie & Lee 2005):

    - ``frequency``: distinct purchase days - 1 (repeat transactions).
    - ``recency``: p(last purchase) - p(first purchase), in the time unit.
    - ``T``: p(as_of) - p(first purchase), in the time unit.
    - ``monetary_value``: mean net spend of the repeat periods (each period's orders summed, first
      period excluded); 0 when ``frequency`` is 0.
    - ``historic_clv``: total net spend.
    - ``n_orders``: number of orders.
    - ``avg_order_value``: historic_clv / n_orders.
    - ``avg_days_between_orders``: (last - first order time) in days / (n_orders - 1); NaN for one order.
    - ``days_since_last_order``, ``tenure_days``: as_of - last / first order time, in days (fractional).
    - ``return_rate``: refunds / gross spend (NaN when gross spend is 0).
    - ``share_web``, ``share_app``, ``share_store``, ``share_marketplace``: the channel's share of gross spend.
    - ``guest_share``: share of orders checked out as a guest.
    - ``n_categories``: distinct non-empty catalogue categories bought.
    - ``first_purchase``, ``last_purchase``: first and last order time (naive UTC).

    With ``time_unit="D"`` the first four columns equal ``lifetimes.utils.summary_data_from_transaction_data``
    applied to the orders before ``as_of`` (net amount as monetary value) with
    ``observation_period_end=as_of`` and ``freq="D"``; with ``"W"`` they equal it with ``freq="D",
    freq_multiplier=7``.
    Frequency, recency and T are floats, as in lifetimes.

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    as_of
        The cutoff (naive UTC or aware): only sales and returns before it count.
    time_unit
        ``"D"`` (days) or ``"W"`` (weeks of 7 days): the unit of ``recency``, ``T`` and the holdout
        duration.

    Returns
    -------
    pandas.DataFrame
        The columns :data:`FEATURE_COLUMNS`, indexed by ``customer_id`` (int64, sorted).

    Raises
    ------
    ArgumentError
        ``time_unit`` is neither ``"D"`` nor ``"W"``.
    """
    table = customer_feature_table(backend, as_of, time_unit=time_unit)
    return _to_frame(table, FEATURE_COLUMNS)


def calibration_holdout(
    backend: ibis.BaseBackend,
    calibration_end: datetime,
    holdout_end: datetime,
    *,
    time_unit: TimeUnit = "D",
) -> pd.DataFrame:
    """Features at ``calibration_end`` plus what each customer did in ``[calibration_end, holdout_end)``.

    Rows: the customers of ``customer_features(backend, calibration_end)`` (first purchase before
    ``calibration_end``); customers born in the holdout are not in it. Added columns (``Holdout``):

    - ``frequency_holdout``: distinct purchase periods in the holdout.
    - ``spend_holdout``: net spend of the holdout orders, counting the returns of those orders booked
      before ``holdout_end``. Returns booked in the holdout against calibration orders are not holdout
      spend (they are about purchases the calibration features already describe).
    - ``monetary_value_holdout``: spend_holdout / frequency_holdout (mean per period), 0 without purchases.
    - ``duration_holdout``: p(holdout_end) - p(calibration_end), in periods.

    Matches ``lifetimes.utils.calibration_and_holdout_data(..., calibration_period_end=calibration_end,
    observation_period_end=holdout_end)`` given one transaction per customer and period, when no
    purchase falls exactly on ``calibration_end`` or ``holdout_end`` (lifetimes includes both ends).

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    calibration_end
        The end of the calibration period, the start of the holdout (naive UTC or aware).
    holdout_end
        The end of the holdout, excluded.
    time_unit
        ``"D"`` (days) or ``"W"`` (weeks of 7 days): the unit of ``recency``, ``T`` and the holdout
        duration.

    Returns
    -------
    pandas.DataFrame
        The columns :data:`FEATURE_COLUMNS` then :data:`HOLDOUT_COLUMNS`, indexed by ``customer_id``
        (sorted).

    Raises
    ------
    ArgumentError
        ``holdout_end`` is not after ``calibration_end``, or ``time_unit`` is neither ``"D"`` nor ``"W"``.
    """
    time_unit = _check_time_unit(time_unit)
    cal_end, hold_end = utc_naive(calibration_end), utc_naive(holdout_end)
    if hold_end <= cal_end:
        raise ArgumentError(f"holdout_end ({hold_end}) must be after calibration_end ({cal_end})")

    calibration = customer_feature_table(backend, cal_end, time_unit=time_unit)

    o = orders(_identified_product_lines(backend, hold_end, since=cal_end))
    o = o.mutate(**{_PERIOD: _period_of(o[Col.TS], time_unit)})
    per_period = o.group_by([Col.CUSTOMER_ID, _PERIOD]).aggregate(**{_PERIOD_NET: money_sum(o[Col.NET_AMOUNT])})
    holdout = per_period.group_by(per_period[Col.CUSTOMER_ID].name("_h_customer_id")).aggregate(
        _h_periods=per_period.count(), _h_spend=money_sum(per_period[_PERIOD_NET])
    )

    j = calibration.left_join(holdout, calibration[Col.CUSTOMER_ID] == holdout._h_customer_id)
    n_periods = j._h_periods.fill_null(0)
    spend = j._h_spend.fill_null(0.0)
    duration = (period_start(hold_end, time_unit) - period_start(cal_end, time_unit)).days / DAYS_PER_UNIT[time_unit]
    table = j.select(
        *(j[name] for name in (Col.CUSTOMER_ID, *FEATURE_COLUMNS)),
        **{
            Holdout.FREQUENCY: n_periods.cast("float64"),
            Holdout.SPEND: spend.cast("float64"),
            Holdout.MONETARY_VALUE: ibis.ifelse(n_periods > 0, spend / n_periods.nullif(0), 0.0).cast("float64"),
            Holdout.DURATION: ibis.literal(float(duration), type="float64"),
        },
    )
    return _to_frame(table, (*FEATURE_COLUMNS, *HOLDOUT_COLUMNS))


def _customer_ids(df: pd.DataFrame) -> pd.Series:
    if Col.CUSTOMER_ID in df.columns:
        return df[Col.CUSTOMER_ID]
    return pd.Series(df.index, index=df.index)


def validate_rfm(df: pd.DataFrame, *, monetary: bool | None = None) -> pd.DataFrame:
    """Check the invariants of the lifetimes RFM convention before a model is fitted on ``df``.

    Rules (checked in this order; the first broken one raises):

    - ``frequency``, ``recency`` and ``T`` exist and are finite numbers;
    - ``frequency`` is a whole number >= 0;
    - ``recency`` >= 0 and ``recency`` <= ``T``;
    - ``recency`` == 0 when ``frequency`` == 0 (a one-period customer has no repeat to date);
    - ``monetary_value`` (checked when present, or required with ``monetary=True``) is finite and >= 0.

    Customers are named by the ``customer_id`` column when there is one, else by the index.
    Returns ``df`` unchanged so the call can sit in a pipeline; raises :class:`RFMValidationError`
    (a ``ValueError``) naming the column, the rule, the customers and their values.

    Parameters
    ----------
    df
        An RFM table (e.g. :func:`customer_features`), one row per customer.
    monetary
        Whether ``monetary_value`` is checked: ``True`` requires it, ``False`` skips it, ``None``
        checks it when the column is there.

    Returns
    -------
    pandas.DataFrame
        ``df`` itself, unchanged.

    Raises
    ------
    RFMValidationError
        A required column is missing or a rule is broken; the error names the column, the rule, the
        first customers at fault with their values and how many rows break it.
    """
    required = [Feature.FREQUENCY, Feature.RECENCY, Feature.T]
    check_monetary = Feature.MONETARY_VALUE in df.columns if monetary is None else monetary
    if check_monetary:
        required.append(Feature.MONETARY_VALUE)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise RFMValidationError(", ".join(missing), "being a column of the RFM table", [], [], len(df))

    ids = _customer_ids(df)

    def fail(column: str, rule: str, bad: pd.Series, describe: Callable[[np.ndarray], list] | None = None) -> None:
        bad = bad.fillna(True).to_numpy(dtype=bool)
        if bad.any():
            n = RFMValidationError.MAX_REPORTED
            rows = np.flatnonzero(bad)[:n]
            shown = describe(rows) if describe is not None else list(df[column].to_numpy()[rows])
            raise RFMValidationError(column, rule, list(ids.to_numpy()[rows]), shown, int(bad.sum()))

    numbers = {}
    for column in required:
        values = pd.to_numeric(df[column], errors="coerce").astype("float64")
        fail(column, "a finite number", ~np.isfinite(values))
        numbers[column] = values

    f, r, t = numbers[Feature.FREQUENCY], numbers[Feature.RECENCY], numbers[Feature.T]
    fail(Feature.FREQUENCY, "frequency >= 0", f < 0)
    fail(Feature.FREQUENCY, "a whole number of repeat periods", f != np.floor(f))
    fail(Feature.RECENCY, "recency >= 0", r < 0)
    # The message text is built only for the few rows it shows, never for the whole table.
    fail(Feature.RECENCY, "recency <= T", r > t,
         lambda rows: [f"{df[Feature.RECENCY].iloc[i]} > T={df[Feature.T].iloc[i]}" for i in rows])
    fail(Feature.RECENCY, "recency == 0 when frequency == 0", (f == 0) & (r != 0))
    if check_monetary:
        fail(Feature.MONETARY_VALUE, "monetary_value >= 0", numbers[Feature.MONETARY_VALUE] < 0)
    return df
