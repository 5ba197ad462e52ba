"""Engagement KPIs a retailer tracks, overall and per channel, from the unified history.

Counted on the same footing as the customer features (:mod:`features.customer`): an order is a
purchase of products (postage, fees and adjustments are left out), revenue is net of the returns
booked before the end of the window, and a customer is an identified customer (``customer_id``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd
from rich.table import Table

from features.errors import ArgumentError
from features.history import cutoff_literal, orders, product_lines, unified_lines, utc_naive
from features.schema import CHANNELS, Channel, Col

#: Label of the all-channels row in the JSON output and the table.
ALL_CHANNELS = "all"


@dataclass(frozen=True)
class ChannelKpis:
    """KPIs of one channel (or of all channels together). Ratios are None when undefined (0/0)."""

    customers: int  # distinct identified customers with an order
    orders: int  # all orders, anonymous ones included
    revenue: float  # net: gross - refunds booked before the window's end
    gross_revenue: float
    refunds: float
    average_order_value: float | None  # revenue / orders
    purchase_frequency: float | None  # orders of identified customers / customers
    repeat_purchase_rate: float | None  # share of customers with >= 2 orders
    guest_checkout_rate: float | None  # share of web/app/marketplace orders checked out without an account
    return_rate: float | None  # refunds / gross revenue
    anonymous_share: float | None  # share of orders no customer is known for
    first_date: date | None
    last_date: date | None


@dataclass(frozen=True)
class KpiReport:
    """KPIs over the orders made in ``[start, end)`` (an open end when None)."""

    start: datetime | None
    end: datetime | None
    overall: ChannelKpis
    by_channel: Mapping[str, ChannelKpis] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: dates and times as ISO 8601 strings, undefined ratios as null."""

        def plain(value: Any) -> Any:
            if isinstance(value, datetime | date):
                return value.isoformat()
            if isinstance(value, float) and not math.isfinite(value):
                return None
            return value

        def kpis(k: ChannelKpis) -> dict[str, Any]:
            return {name: plain(value) for name, value in asdict(k).items()}

        return {
            "start": plain(self.start),
            "end": plain(self.end),
            "overall": kpis(self.overall),
            "by_channel": {channel: kpis(k) for channel, k in self.by_channel.items()},
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def _ratio(numerator: float | int | None, denominator: float | int | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return float(numerator) / float(denominator)


def _kpi_aggregates(t: ir.Table) -> dict[str, ir.Value]:
    """Aggregates over a table of (customer x channel) order groups, see :func:`kpi_report`."""
    identified = t[Col.CUSTOMER_ID].notnull()
    return {
        "customers": t[Col.CUSTOMER_ID].nunique(),
        "orders": t._orders.sum(),
        "identified_orders": t._orders.sum(where=identified),
        "repeaters": t.count(where=identified & (t._orders >= 2)),
        "online_orders": t._online.sum(),
        "guest_orders": t._guest.sum(),
        "anonymous_orders": t._orders.sum(where=~identified),
        "gross": t._gross.sum(),
        "refunds": t._refund.sum(),
        "net": t._net.sum(),
        "first_ts": t._first_ts.min(),
        "last_ts": t._last_ts.max(),
    }


def _channel_kpis(row: Mapping[str, Any]) -> ChannelKpis:
    def number(name: str) -> float:
        value = row.get(name)
        return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    def moment(name: str) -> date | None:
        value = row.get(name)
        if value is None or value != value:  # None or NaT
            return None
        return value.date() if isinstance(value, datetime) else value

    n_orders = int(number("orders"))
    customers = int(number("customers"))
    gross = number("gross")
    return ChannelKpis(
        customers=customers,
        orders=n_orders,
        revenue=number("net"),
        gross_revenue=gross,
        refunds=number("refunds"),
        average_order_value=_ratio(number("net"), n_orders),
        purchase_frequency=_ratio(number("identified_orders"), customers),
        repeat_purchase_rate=_ratio(number("repeaters"), customers),
        guest_checkout_rate=_ratio(number("guest_orders"), number("online_orders")),
        return_rate=_ratio(number("refunds"), gross),
        anonymous_share=_ratio(number("anonymous_orders"), n_orders),
        first_date=moment("first_ts"),
        last_date=moment("last_ts"),
    )


def window_orders(backend: ibis.BaseBackend, start: datetime | None, end: datetime | None) -> ir.Table:
    """Orders of product lines made in ``[start, end)``, net of the returns booked before ``end``:
    the one definition of "the orders of a reporting window" every KPI shares."""
    start_n = utc_naive(start) if start is not None else None
    end_n = utc_naive(end) if end is not None else None
    if start_n is not None and end_n is not None and end_n <= start_n:
        raise ArgumentError(f"end ({end_n}) must be after start ({start_n})")
    lines = product_lines(unified_lines(backend, end_n))
    if start_n is not None:
        lines = lines.filter(lines[Col.TS] >= cutoff_literal(start_n))
    return orders(lines)


def kpi_report(backend: ibis.BaseBackend, *, start: datetime | None = None, end: datetime | None = None) -> KpiReport:
    """Engagement KPIs of the orders made in ``[start, end)``, overall and per channel.

    Orders are counted when they were made; their refunds count when the return was booked before
    ``end`` (any time when ``end`` is None), so a report for a closed window never changes. Returns
    of orders made before ``start`` are not in the window. Per channel, a customer counts in every
    channel they ordered in, and "repeat" means two orders in that channel. ``by_channel`` lists the
    channels with at least one order, in the contract's order (web, app, store, marketplace).
    """
    o = window_orders(backend, start, end)

    # One row per (channel, customer) -- anonymous orders of a channel form one NULL-customer group.
    online = o[Col.CHANNEL] != Channel.STORE.value
    groups = o.group_by([Col.CHANNEL, Col.CUSTOMER_ID]).aggregate(
        _orders=o.count(),
        _online=o.count(where=online),
        _guest=o.count(where=online & o[Col.IS_GUEST]),
        _gross=o[Col.GROSS_AMOUNT].sum(),
        _refund=o[Col.REFUND_AMOUNT].sum(),
        _net=o[Col.NET_AMOUNT].sum(),
        _first_ts=o[Col.TS].min(),
        _last_ts=o[Col.TS].max(),
    )
    # Overall: the same groups re-summed per customer, so "repeat" spans channels.
    per_customer = groups.group_by(Col.CUSTOMER_ID).aggregate(
        _orders=groups._orders.sum(),
        _online=groups._online.sum(),
        _guest=groups._guest.sum(),
        _gross=groups._gross.sum(),
        _refund=groups._refund.sum(),
        _net=groups._net.sum(),
        _first_ts=groups._first_ts.min(),
        _last_ts=groups._last_ts.max(),
    )
    by_channel = groups.group_by(groups[Col.CHANNEL].name("_channel")).aggregate(**_kpi_aggregates(groups))
    overall = per_customer.aggregate(**_kpi_aggregates(per_customer)).mutate(
        _channel=ibis.literal(ALL_CHANNELS, type="string")
    )
    rows = ibis.union(overall.select(by_channel.columns), by_channel).to_pyarrow().to_pylist()

    found = {row["_channel"]: _channel_kpis(row) for row in rows}
    ordered = [c for c in CHANNELS if c in found] + sorted(c for c in found if c not in CHANNELS and c != ALL_CHANNELS)
    return KpiReport(
        start=utc_naive(start) if start is not None else None,
        end=utc_naive(end) if end is not None else None,
        overall=found[ALL_CHANNELS],
        by_channel={c: found[c] for c in ordered},
    )


# --- Revenue over time ------------------------------------------------------------------------------

#: Column of :func:`revenue_by_period` holding the first day of each period.
PERIOD = "period"

#: Columns of :func:`revenue_by_period`, in order (the amounts are named as in :class:`ChannelKpis`).
PERIOD_COLUMNS: tuple[str, ...] = (PERIOD, Col.CHANNEL, "customers", "orders", "revenue", "gross_revenue", "refunds")

#: Calendar periods :func:`revenue_by_period` groups by: (Ibis truncation unit, pandas frequency).
#: Weeks start on Monday, like ISO weeks and the ``"W"`` unit of the customer features.
PERIOD_FREQUENCIES: dict[str, tuple[str, str]] = {
    "day": ("D", "D"),
    "week": ("W", "W-MON"),
    "month": ("M", "MS"),
    "quarter": ("Q", "QS"),
    "year": ("Y", "YS"),
}


def revenue_by_period(
    backend: ibis.BaseBackend,
    *,
    freq: str = "month",
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """Orders and revenue per calendar period (UTC) and channel, counted as :func:`kpi_report` counts them.

    The orders are those made in ``[start, end)`` (an open end when None); postage, fees and
    adjustments are not orders. An order falls in the period of its first line; its refunds count in
    that same period when the return was booked before ``end`` (any time when ``end`` is None), so
    ``revenue`` is what the orders of the period are worth net of returns, and the rows of one
    channel sum to that channel's :func:`kpi_report` orders and amounts over the same window.

    One row per period from the first to the last period with an order, times every channel with an
    order (in the contract's order), with zeros where a channel had no order in a period, so the
    result pivots straight into a plot. ``period`` is the first day of the period (a naive UTC
    timestamp); a window that starts or ends inside a period makes that period partial.
    ``customers`` counts distinct identified customers with an order in the period and channel.
    Columns: :data:`PERIOD_COLUMNS`. ``freq`` is one of :data:`PERIOD_FREQUENCIES`.
    """
    if freq not in PERIOD_FREQUENCIES:
        raise ValueError(f"freq must be one of {', '.join(PERIOD_FREQUENCIES)}, got {freq!r}")
    unit, pandas_freq = PERIOD_FREQUENCIES[freq]
    o = window_orders(backend, start, end)
    table = o.group_by([o[Col.TS].truncate(unit).name(PERIOD), o[Col.CHANNEL]]).aggregate(
        customers=o[Col.CUSTOMER_ID].nunique(),
        orders=o.count(),
        revenue=o[Col.NET_AMOUNT].sum(),
        gross_revenue=o[Col.GROSS_AMOUNT].sum(),
        refunds=o[Col.REFUND_AMOUNT].sum(),
    )
    found = table.to_pandas()
    found[PERIOD] = pd.to_datetime(found[PERIOD]).astype("datetime64[ns]")

    seen = set(found[Col.CHANNEL])
    channels = [c for c in CHANNELS if c in seen] + sorted(c for c in seen if c not in CHANNELS)
    periods = (
        pd.date_range(found[PERIOD].min(), found[PERIOD].max(), freq=pandas_freq).astype("datetime64[ns]")
        if len(found)
        else pd.DatetimeIndex([], dtype="datetime64[ns]")
    )
    grid = pd.MultiIndex.from_product([periods, channels], names=[PERIOD, Col.CHANNEL])
    dense = found.set_index([PERIOD, Col.CHANNEL]).reindex(grid, fill_value=0).reset_index()
    dense = dense[list(PERIOD_COLUMNS)]
    return dense.astype({"customers": "int64", "orders": "int64", "revenue": "float64",
                         "gross_revenue": "float64", "refunds": "float64"})


# --- Rendering --------------------------------------------------------------------------------------

_DASH = "—"


def _count(value: int) -> str:
    return f"{value:,}"


def _money(value: float | None, currency: str) -> str:
    return _DASH if value is None else f"{currency} {value:,.2f}"


def _percent(value: float | None) -> str:
    return _DASH if value is None else f"{value:.1%}"


def _decimal(value: float | None) -> str:
    return _DASH if value is None else f"{value:,.2f}"


def _date(value: date | None) -> str:
    return _DASH if value is None else value.isoformat()


def _moment(value: datetime) -> str:
    return value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat(sep=" ", timespec="minutes")


def _window(start: datetime | None, end: datetime | None) -> str:
    if start is None and end is None:
        return "all orders"
    parts = ([f"from {_moment(start)}"] if start else []) + ([f"before {_moment(end)}"] if end else [])
    return "orders " + ", ".join(parts) + " UTC"


def render_kpi_table(report: KpiReport, currency: str) -> Table:
    """A rich table of the report: one row per KPI, one column for all channels and one per channel.

    ``currency`` is the ISO 4217 code the store's amounts are in (``settings.currency``).
    """
    columns = [("All channels", report.overall), *report.by_channel.items()]
    table = Table(title=f"Engagement KPIs ({_window(report.start, report.end)})", title_justify="left")
    table.add_column("KPI", style="bold")
    for name, _ in columns:
        table.add_column(name, justify="right")

    rows: list[tuple[str, Any]] = [
        ("Customers (identified)", lambda k: _count(k.customers)),
        ("Orders", lambda k: _count(k.orders)),
        ("Revenue (net)", lambda k: _money(k.revenue, currency)),
        ("Gross sales", lambda k: _money(k.gross_revenue, currency)),
        ("Refunds", lambda k: _money(k.refunds, currency)),
        ("Average order value", lambda k: _money(k.average_order_value, currency)),
        ("Orders per customer", lambda k: _decimal(k.purchase_frequency)),
        ("Repeat purchase rate", lambda k: _percent(k.repeat_purchase_rate)),
        ("Guest checkout rate", lambda k: _percent(k.guest_checkout_rate)),
        ("Return rate", lambda k: _percent(k.return_rate)),
        ("Anonymous sales", lambda k: _percent(k.anonymous_share)),
        ("First order", lambda k: _date(k.first_date)),
        ("Last order", lambda k: _date(k.last_date)),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(k) for _, k in columns))
    return table
