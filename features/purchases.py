"""Repeat purchases per day: the actual series a CLV model's expected cumulative purchases are drawn against.

The counting follows :mod:`features.customer` exactly, so the series adds up to the RFM columns: a
*purchase* is an order of product lines of an identified customer (postage and fees are not
purchases, an order later returned in full still is one), purchases are grouped by UTC day, and a
customer's first purchase day is their birth, not a repeat purchase. Summed over the days before a
calibration end the series gives the total ``frequency`` of :func:`features.customer.customer_features`;
summed over a holdout window it gives the total ``frequency_holdout`` of
:func:`features.customer.calibration_holdout` (for cutoffs at midnight UTC, as the CLI uses).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import ibis
import ibis.expr.types as ir
import pandas as pd

from features.history import cutoff_literal, orders, product_lines, unified_lines, utc_naive
from features.schema import Col

#: Columns of :func:`daily_repeat_purchases`.
DAY = "day"
REPEAT_PURCHASES = "repeat_purchases"
DAILY_COLUMNS: tuple[str, ...] = (DAY, REPEAT_PURCHASES)

_DAY = "_day"


def daily_repeat_purchase_table(
    backend: ibis.BaseBackend, *, born_before: datetime, start: datetime, end: datetime
) -> ir.Table:
    """The Ibis expression behind :func:`daily_repeat_purchases` (unexecuted; only days with purchases).

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    born_before
        Only customers whose first purchase is before this instant count.
    start, end
        The window ``[start, end)`` whose purchase days are counted (naive UTC or aware).

    Returns
    -------
    ibis.expr.types.Table
        Columns ``day`` and ``repeat_purchases``, one row per day with at least one repeat purchase.

    Raises
    ------
    ValueError
        ``end`` is not after ``start``.
    """
    born_before, start, end = utc_naive(born_before), utc_naive(start), utc_naive(end)
    if end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")

    lines = product_lines(unified_lines(backend, end))
    lines = lines.filter(lines[Col.CUSTOMER_ID].notnull())
    o = orders(lines)
    o = o.mutate(**{_DAY: o[Col.TS].date()})

    births = o.group_by(o[Col.CUSTOMER_ID].name("_b_customer_id")).aggregate(
        _first_ts=o[Col.TS].min(), _first_day=o[_DAY].min()
    )
    window = o.filter(o[Col.TS] >= cutoff_literal(start))
    j = window.join(births, window[Col.CUSTOMER_ID] == births._b_customer_id)
    # Only customers born before the cutoff, and only their purchase days after the birth day.
    j = j.filter((j._first_ts < cutoff_literal(born_before)) & (j[_DAY] > j._first_day))
    return j.group_by(j[_DAY].name(DAY)).aggregate(**{REPEAT_PURCHASES: j[Col.CUSTOMER_ID].nunique()})


def daily_repeat_purchases(
    backend: ibis.BaseBackend, *, born_before: datetime, start: datetime, end: datetime
) -> pd.DataFrame:
    """Repeat purchases per day of the customers whose first purchase is before ``born_before``.

    One row per UTC day from the day of ``start`` to the last day touched by ``[start, end)`` (for
    cutoffs at midnight: exactly the days in ``[start, end)``), zero-filled, with columns ``day``
    (midnight of the day, naive UTC) and ``repeat_purchases``: the number of those customers with at
    least one purchase on that day that is not their first purchase day. Purchases at or after
    ``end`` are not seen; purchases before ``start`` only serve to find each customer's birth day.

    With ``born_before = calibration_end``, the sum over ``[calibration_end, holdout_end)`` equals the
    sum of ``frequency_holdout`` of ``calibration_holdout(backend, calibration_end, holdout_end)`` and
    the sum over the days before ``calibration_end`` equals the sum of its ``frequency`` (both exactly
    when the cutoffs are at midnight UTC; a cutoff inside a customer's birth day would make
    ``calibration_holdout`` count that day in both periods, and this series once, as the birth).

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    born_before
        Only customers whose first purchase is before this instant count (a calibration end).
    start, end
        The window ``[start, end)`` whose days are listed (naive UTC or aware).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`DAILY_COLUMNS` (``day``, ``repeat_purchases``), one row per day, zero-filled.

    Raises
    ------
    ValueError
        ``end`` is not after ``start``.
    """
    start_n, end_n = utc_naive(start), utc_naive(end)
    table = daily_repeat_purchase_table(backend, born_before=born_before, start=start, end=end)
    counts = table.to_pandas()
    last_day = (end_n - timedelta(microseconds=1)).date()
    days = pd.date_range(pd.Timestamp(start_n.date()), pd.Timestamp(last_day), freq="D", name=DAY, unit="us")
    per_day = pd.Series(
        counts[REPEAT_PURCHASES].to_numpy(dtype="int64"),
        index=pd.DatetimeIndex(pd.to_datetime(counts[DAY])).as_unit(days.unit),
        dtype="int64",
    )
    filled = per_day.reindex(days, fill_value=0).astype("int64")
    return pd.DataFrame({DAY: days, REPEAT_PURCHASES: filled.to_numpy()}, columns=list(DAILY_COLUMNS))
