"""Churn: the population, the label and the features at a cutoff, without leakage.

For a cutoff c (naive UTC; before c is the past, c and later the future) the *population* is every
identified customer with a purchase in ``[c - lookback, c)`` (:func:`churn_population`), the
*label* says whether they make none in ``[c, c + H)`` (:func:`churn_labels`), and the *features*
(:func:`churn_features`) are built from sales made and returns booked before c only, so nothing at
or after c can change them. A *purchase* is what :mod:`features.customer` counts: an order of
product lines by an identified customer, dated by its first line (postage and fees are not
purchases; an order later returned in full still is one). Each function is one Ibis expression
executed by the backend; pandas appears only in the returned objects.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import ibis
import ibis.expr.types as ir
import pandas as pd

from features.customer import (
    FEATURE_COLUMNS,
    _identified_product_lines,
    _to_frame,
    customer_feature_table,
)
from features.errors import ArgumentError, NoDataError
from features.history import LINES_TABLE, cutoff_literal, money_sum, orders, utc_naive
from features.schema import Col, Feature
from features.settings import TimeUnit

#: Default label horizon H and population lookback, in days.
DEFAULT_HORIZON_DAYS = 90
DEFAULT_LOOKBACK_DAYS = 365

#: Name of the label (:func:`churn_labels`).
CHURNED = "churned"

ORDERS_30D = "orders_30d"
SPEND_30D = "spend_30d"
ORDERS_90D = "orders_90d"
SPEND_90D = "spend_90d"
ORDERS_PREV_90D = "orders_prev_90d"
SPEND_PREV_90D = "spend_prev_90d"
ORDERS_PREV_180D = "orders_prev_180d"
SPEND_PREV_180D = "spend_prev_180d"
SPEND_CHANGE_90D = "spend_change_90d"
ORDERS_CHANGE_90D = "orders_change_90d"

#: Columns of :func:`trend_features`, in order (index: ``customer_id``).
TREND_FEATURES: tuple[str, ...] = (
    ORDERS_30D,
    SPEND_30D,
    ORDERS_90D,
    SPEND_90D,
    ORDERS_PREV_90D,
    SPEND_PREV_90D,
    ORDERS_PREV_180D,
    SPEND_PREV_180D,
    SPEND_CHANGE_90D,
    ORDERS_CHANGE_90D,
)

#: Columns of :func:`churn_features`, in order (index: ``customer_id``).
CHURN_FEATURE_COLUMNS: tuple[str, ...] = (*FEATURE_COLUMNS, *TREND_FEATURES)

#: The numeric model features of :func:`churn_features`: every column but the purchase timestamps.
CHURN_BASE_FEATURES: tuple[str, ...] = tuple(
    c for c in CHURN_FEATURE_COLUMNS if c not in (Feature.FIRST_PURCHASE, Feature.LAST_PURCHASE)
)

_TREND_COUNTS = (ORDERS_30D, ORDERS_90D, ORDERS_PREV_90D, ORDERS_PREV_180D)

# Trend windows [c - start, c - end) in days before the cutoff.
_WINDOWS: dict[str, tuple[int, int]] = {
    "30d": (30, 0),
    "90d": (90, 0),
    "prev_90d": (180, 90),
    "prev_180d": (270, 90),
}

# Private column names of intermediate tables.
_T_CUSTOMER_ID = "_t_customer_id"


def _check_days(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number of days >= 1, got {value!r}")
    return value


def _customer_orders(backend: ibis.BaseBackend, as_of: datetime) -> ir.Table:
    """Orders of identified customers made before ``as_of``, net of the returns booked before it."""
    return orders(_identified_product_lines(backend, as_of))


def _no_float_dust(amount: ir.NumericValue) -> ir.NumericValue:
    # A sum of net amounts of fully returned orders leaves float dust (1e-14) that would turn a
    # "previous quarter of 0" into a huge ratio.
    return ibis.ifelse(amount.abs() < 1e-9, 0.0, amount)


def trend_feature_table(backend: ibis.BaseBackend, as_of: datetime) -> ir.Table:
    """The Ibis expression behind :func:`trend_features` (unexecuted; one row per customer).

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    as_of
        The cutoff: only sales made and returns booked strictly before it are read.

    Returns
    -------
    ibis.expr.types.Table
        ``customer_id`` and :data:`TREND_FEATURES`.
    """
    as_of = utc_naive(as_of)
    o = _customer_orders(backend, as_of)
    ts, net = o[Col.TS], o[Col.NET_AMOUNT]
    counts, spends = {}, {}
    for suffix, (start, end) in _WINDOWS.items():
        inside = ts >= cutoff_literal(as_of - timedelta(days=start))
        if end:
            inside &= ts < cutoff_literal(as_of - timedelta(days=end))
        counts[f"orders_{suffix}"] = o.count(where=inside)
        spends[f"spend_{suffix}"] = money_sum(net, where=inside)
    t = o.group_by(o[Col.CUSTOMER_ID].name(_T_CUSTOMER_ID)).aggregate(**counts, **spends)

    spend = {name: _no_float_dust(t[name].fill_null(0.0)).cast("float64") for name in spends}
    n = {name: t[name].fill_null(0).cast("int64") for name in counts}
    return t.select(
        t[_T_CUSTOMER_ID].name(Col.CUSTOMER_ID),
        **{
            ORDERS_30D: n[ORDERS_30D],
            SPEND_30D: spend[SPEND_30D],
            ORDERS_90D: n[ORDERS_90D],
            SPEND_90D: spend[SPEND_90D],
            ORDERS_PREV_90D: n[ORDERS_PREV_90D],
            SPEND_PREV_90D: spend[SPEND_PREV_90D],
            ORDERS_PREV_180D: n[ORDERS_PREV_180D],
            SPEND_PREV_180D: spend[SPEND_PREV_180D],
            SPEND_CHANGE_90D: (spend[SPEND_90D] / spend[SPEND_PREV_90D].nullif(0.0) - 1.0).cast("float64"),
            ORDERS_CHANGE_90D: (
                n[ORDERS_90D].cast("float64") / n[ORDERS_PREV_90D].nullif(0).cast("float64") - 1.0
            ).cast("float64"),
        },
    )


def _shape(table: ir.Table, columns: tuple[str, ...]) -> pd.DataFrame:
    df = _to_frame(table, columns)
    for name in _TREND_COUNTS:
        if name in df.columns:
            df[name] = df[name].astype("int64")
    return df


def trend_features(backend: ibis.BaseBackend, as_of: datetime) -> pd.DataFrame:
    """How each customer's buying moved over the last nine months, from the history before ``as_of``.

    Indexed by ``customer_id`` (sorted): every customer of ``customer_features(backend, as_of)``
    (a purchase before ``as_of``), with 0 for windows without orders. With c = ``as_of`` and orders
    dated by their first line (a purchase as in :func:`features.customer.customer_features`):

    - ``orders_30d`` / ``spend_30d``: orders and their net spend in ``[c - 30 d, c)``;
    - ``orders_90d`` / ``spend_90d``: in ``[c - 90 d, c)``;
    - ``orders_prev_90d`` / ``spend_prev_90d``: in ``[c - 180 d, c - 90 d)`` (the quarter before);
    - ``orders_prev_180d`` / ``spend_prev_180d``: in ``[c - 270 d, c - 90 d)`` (the half-year before);
    - ``spend_change_90d`` = spend_90d / spend_prev_90d - 1 and ``orders_change_90d`` =
      orders_90d / orders_prev_90d - 1: NaN when the previous quarter's spend (orders) is 0.

    Spend is net of the returns booked before c (gross - refunds, base currency), as in
    ``customer_features``: a return booked later has not happened at the cutoff.

    Parameters
    ----------
    backend, as_of
        As in :func:`trend_feature_table`.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`TREND_FEATURES`, indexed by ``customer_id``; order counts int64, the rest
        float64.
    """
    return _shape(trend_feature_table(backend, as_of), TREND_FEATURES)


def _population_filter(table: ir.Table, last_purchase: ir.TimestampValue, as_of: datetime,
                       lookback_days: int) -> ir.Table:
    return table.filter(last_purchase >= cutoff_literal(as_of - timedelta(days=lookback_days)))


def churn_population_table(backend: ibis.BaseBackend, as_of: datetime, *,
                           lookback_days: int = DEFAULT_LOOKBACK_DAYS) -> ir.Table:
    """The Ibis expression behind :func:`churn_population` (one column, ``customer_id``).

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    as_of
        The cutoff c.
    lookback_days
        Whole days >= 1: a customer belongs when their last purchase is in ``[c - lookback, c)``.

    Returns
    -------
    ibis.expr.types.Table
        One column, ``customer_id``, unordered.

    Raises
    ------
    ValueError
        ``lookback_days`` is not a whole number >= 1.
    """
    as_of = utc_naive(as_of)
    lookback_days = _check_days("lookback_days", lookback_days)
    o = _customer_orders(backend, as_of)
    last = o.group_by(o[Col.CUSTOMER_ID]).aggregate(_last_ts=o[Col.TS].max())
    return _population_filter(last, last._last_ts, as_of, lookback_days).select(Col.CUSTOMER_ID)


def churn_population(backend: ibis.BaseBackend, as_of: datetime, *,
                     lookback_days: int = DEFAULT_LOOKBACK_DAYS) -> pd.Index:
    """Customers with at least one purchase in ``[as_of - lookback_days, as_of)``.

    Equal to the rows of ``customer_features(backend, as_of)`` whose ``last_purchase`` is at or
    after ``as_of - lookback_days``.

    Parameters
    ----------
    backend, as_of, lookback_days
        As in :func:`churn_population_table`.

    Returns
    -------
    pandas.Index
        Sorted int64 ``customer_id`` values.

    Raises
    ------
    ValueError
        ``lookback_days`` is not a whole number >= 1.
    """
    ids = churn_population_table(backend, as_of, lookback_days=lookback_days).to_pandas()[Col.CUSTOMER_ID]
    return pd.Index(sorted(ids.astype("int64").tolist()), dtype="int64", name=Col.CUSTOMER_ID)


def sales_span(backend: ibis.BaseBackend) -> tuple[datetime, datetime]:
    """First and last sale time in the store (naive UTC), over every stored sales line (anonymous
    sales and fees included: they show how far the data reach).

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.

    Returns
    -------
    tuple[datetime, datetime]
        ``(first_sale, last_sale)``, naive UTC.

    Raises
    ------
    NoDataError
        The store holds no sale.
    """
    lines = backend.table(LINES_TABLE)
    span = lines.aggregate(_first=lines[Col.TS].min(), _last=lines[Col.TS].max()).to_pandas()
    first, last = span["_first"].iloc[0], span["_last"].iloc[0]
    if pd.isna(first) or pd.isna(last):
        raise NoDataError("the store holds no sales yet: ingest data first (rapport data ingest DIR)")
    return pd.Timestamp(first).to_pydatetime(), pd.Timestamp(last).to_pydatetime()


def data_end(last_sale: datetime) -> datetime:
    """Midnight after the day of ``last_sale``: the data cover every moment before it, so a label
    window ``[c, c + H)`` is observed in full when ``c + H`` is at most this.

    Parameters
    ----------
    last_sale
        The last stored sale (naive UTC or aware).

    Returns
    -------
    datetime
        Naive UTC midnight of the following day.
    """
    last = utc_naive(last_sale)
    return datetime(last.year, last.month, last.day) + timedelta(days=1)


def check_label_window(as_of: datetime, horizon_days: int, last_sale: datetime) -> None:
    """Refuse a label window ``[as_of, as_of + horizon_days)`` that reaches past the data.

    Parameters
    ----------
    as_of
        The cutoff c.
    horizon_days
        The label horizon H in days.
    last_sale
        The last stored sale (:func:`sales_span`).

    Returns
    -------
    None

    Raises
    ------
    ArgumentError
        ``c + H`` is after :func:`data_end`; the message names the dates and the latest cutoff
        that fits.
    """
    as_of = utc_naive(as_of)
    window_end = as_of + timedelta(days=horizon_days)
    end = data_end(last_sale)
    if window_end > end:
        latest = end - timedelta(days=horizon_days)
        raise ArgumentError(
            f"cannot label churn at cutoff {as_of:%Y-%m-%d %H:%M}: the {horizon_days}-day label window ends "
            f"{window_end:%Y-%m-%d %H:%M}, after the data (last sale {utc_naive(last_sale):%Y-%m-%d %H:%M}, "
            f"so the data end at {end:%Y-%m-%d %H:%M}); a label there would be fake. "
            f"The latest cutoff with a {horizon_days}-day window is {latest:%Y-%m-%d %H:%M}"
        )


def churn_labels(
    backend: ibis.BaseBackend,
    as_of: datetime,
    *,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
) -> pd.Series:
    """The churn label of the population at ``as_of``: 1 when no purchase in ``[as_of, as_of + H)``.

    A purchase made exactly at ``as_of`` is in the label window (it is not in the features: they
    see only ``< as_of``); one made exactly at ``as_of + H`` is not. An order is dated by its first
    line, so a late line added to an order placed before ``as_of`` is not a new purchase.

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    as_of
        The cutoff c.
    horizon_days
        The label horizon H, whole days >= 1.
    lookback_days
        The population's lookback, whole days >= 1 (:func:`churn_population`).

    Returns
    -------
    pandas.Series
        Named ``churned`` (int64, 0/1), indexed by sorted ``customer_id`` like
        :func:`churn_population`.

    Raises
    ------
    ArgumentError
        ``as_of + H`` is after the end of the data (midnight after the day of the last stored
        sale): customers would look churned only because the history stops.
    NoDataError
        The store holds no sale.
    ValueError
        ``horizon_days`` or ``lookback_days`` is not a whole number >= 1.
    """
    as_of = utc_naive(as_of)
    horizon_days = _check_days("horizon_days", horizon_days)
    lookback_days = _check_days("lookback_days", lookback_days)
    _, last_sale = sales_span(backend)
    check_label_window(as_of, horizon_days, last_sale)

    population = churn_population_table(backend, as_of, lookback_days=lookback_days)
    later = orders(_identified_product_lines(backend, as_of + timedelta(days=horizon_days)))
    later = later.filter(later[Col.TS] >= cutoff_literal(as_of))
    buyers = later.select(_b_customer_id=later[Col.CUSTOMER_ID]).distinct()
    j = population.left_join(buyers, population[Col.CUSTOMER_ID] == buyers._b_customer_id)
    table = j.select(
        j[Col.CUSTOMER_ID], **{CHURNED: ibis.ifelse(j._b_customer_id.isnull(), 1, 0).cast("int64")}
    )
    df = table.to_pandas()
    index = pd.Index(df[Col.CUSTOMER_ID].astype("int64").to_numpy(), name=Col.CUSTOMER_ID)
    labels = pd.Series(df[CHURNED].astype("int64").to_numpy(), index=index, name=CHURNED, dtype="int64")
    return labels.sort_index()


def churn_feature_table(
    backend: ibis.BaseBackend,
    as_of: datetime,
    *,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
    time_unit: TimeUnit = "D",
) -> ir.Table:
    """The Ibis expression behind :func:`churn_features` (unexecuted; one row per population customer).

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    as_of
        The cutoff: only sales made and returns booked before it are read.
    lookback_days
        The population's lookback, whole days >= 1.
    time_unit
        Time unit of the RFM features (:func:`features.customer.customer_features`).

    Returns
    -------
    ibis.expr.types.Table
        ``customer_id`` and :data:`CHURN_FEATURE_COLUMNS`.

    Raises
    ------
    ValueError
        ``lookback_days`` is not a whole number >= 1.
    """
    as_of = utc_naive(as_of)
    lookback_days = _check_days("lookback_days", lookback_days)
    customers = customer_feature_table(backend, as_of, time_unit=time_unit)
    trends = trend_feature_table(backend, as_of).rename({_T_CUSTOMER_ID: Col.CUSTOMER_ID})
    j = customers.join(trends, customers[Col.CUSTOMER_ID] == trends[_T_CUSTOMER_ID])
    j = _population_filter(j, j[Feature.LAST_PURCHASE], as_of, lookback_days)
    return j.select(j[Col.CUSTOMER_ID], *(j[name] for name in CHURN_FEATURE_COLUMNS))


def churn_features(
    backend: ibis.BaseBackend,
    as_of: datetime,
    *,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
    time_unit: TimeUnit = "D",
) -> pd.DataFrame:
    """The churn model's inputs at ``as_of`` for the churn population (training and serving alike).

    Indexed by ``customer_id`` (sorted), one row per customer of :func:`churn_population`; columns
    :data:`CHURN_FEATURE_COLUMNS`: every column of ``customer_features(backend, as_of,
    time_unit=time_unit)`` followed by :data:`TREND_FEATURES`. Only sales made and returns booked
    before ``as_of`` are read. :data:`CHURN_BASE_FEATURES` are the numeric columns a model uses
    (``first_purchase`` / ``last_purchase`` timestamps excluded).

    Parameters
    ----------
    backend, as_of, lookback_days, time_unit
        As in :func:`churn_feature_table`.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CHURN_FEATURE_COLUMNS`, indexed by sorted ``customer_id``.

    Raises
    ------
    ValueError
        ``lookback_days`` is not a whole number >= 1.
    """
    return _shape(churn_feature_table(backend, as_of, lookback_days=lookback_days, time_unit=time_unit),
                  CHURN_FEATURE_COLUMNS)
