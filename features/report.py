"""Engagement KPIs a retailer tracks, overall and per channel, from the unified history.

Counted on the same footing as the customer features (:mod:`features.customer`): an order is a
purchase of products (postage, fees and adjustments are left out), revenue is net of the returns
booked before the end of the window, and a customer is an identified customer (``customer_id``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from features.errors import ArgumentError
from features.moments import utc_naive
from features.schema import CHANNELS, Channel, Col

if TYPE_CHECKING:
    import duckdb
    import ibis
    import ibis.expr.types as ir
    import pandas as pd

# Ibis, the history's expressions and pandas are imported inside the functions that build or run an
# expression: `rapport data report` runs the KPI query compiled ahead of time (kpi_report_duckdb)
# and starts in a fraction of the second Ibis alone takes to import.

logger = logging.getLogger(__name__)

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
        """JSON-serialisable: dates and times as ISO 8601 strings, undefined ratios as null.

        Returns
        -------
        dict[str, Any]
            ``start``, ``end``, ``overall`` (the :class:`ChannelKpis` fields) and ``by_channel`` (channel ->
            the same fields).
        """

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
        """:meth:`to_dict` as a JSON text.

        Parameters
        ----------
        **kwargs
            Passed to :func:`json.dumps` (``indent=2``, ...).

        Returns
        -------
        str
            The JSON document.
        """
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


def _bounds(start: datetime | date | None, end: datetime | date | None) -> tuple[datetime | None, datetime | None]:
    """A reporting window's bounds in naive UTC, checked."""
    start_n = utc_naive(start) if start is not None else None
    end_n = utc_naive(end) if end is not None else None
    if start_n is not None and end_n is not None and end_n <= start_n:
        raise ArgumentError(f"end ({end_n}) must be after start ({start_n})")
    return start_n, end_n


def window_orders(backend: ibis.BaseBackend, start: datetime | None, end: datetime | None) -> ir.Table:
    """Orders of product lines made in ``[start, end)``, net of the returns booked before ``end``:
    the one definition of "the orders of a reporting window" every KPI shares.

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    start, end
        The window ``[start, end)`` (naive UTC or aware); ``None``: unbounded on that side.

    Returns
    -------
    ibis.expr.types.Table
        The orders, unexecuted, with the columns of :func:`features.history.orders`.

    Raises
    ------
    ArgumentError
        ``end`` is not after ``start``.
    """
    from features.history import cutoff_literal, orders, product_lines, unified_lines

    start_n, end_n = _bounds(start, end)
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

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    start, end
        The window ``[start, end)`` (naive UTC or aware); ``None``: unbounded on that side.

    Returns
    -------
    KpiReport
        The window's bounds (naive UTC), the KPIs of all channels and those of each channel.

    Raises
    ------
    ArgumentError
        ``end`` is not after ``start``.
    """
    return _assemble(kpi_table(backend, start=start, end=end).to_pyarrow().to_pylist(), start, end)


def kpi_table(backend: ibis.BaseBackend, *, start: datetime | None = None, end: datetime | None = None) -> ir.Table:
    """The aggregates of :func:`kpi_report` as one Ibis expression: a row per channel with an order
    and one for all channels (``_channel`` = :data:`ALL_CHANNELS`).

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    start, end
        The window ``[start, end)`` (naive UTC or aware); ``None``: unbounded on that side.

    Returns
    -------
    ibis.expr.types.Table
        Unexecuted; ``_channel`` and the aggregates (customers, orders, identified, repeat, online,
        guest and anonymous orders, gross, refunds, net, first and last order time).

    Raises
    ------
    ArgumentError
        ``end`` is not after ``start``.
    """
    import ibis

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
    return ibis.union(overall.select(by_channel.columns), by_channel)


def _assemble(rows: list[dict[str, Any]], start: datetime | date | None, end: datetime | date | None) -> KpiReport:
    start_n, end_n = _bounds(start, end)
    found = {row["_channel"]: _channel_kpis(row) for row in rows}
    ordered = [c for c in CHANNELS if c in found] + sorted(c for c in found if c not in CHANNELS and c != ALL_CHANNELS)
    return KpiReport(start=start_n, end=end_n, overall=found[ALL_CHANNELS], by_channel={c: found[c] for c in ordered})


# --- The KPI query compiled ahead of time -----------------------------------------------------------

#: Modules of this package whose source the compiled KPI query depends on (its expression, the
#: history, the column names, the store's tables): a change to any of them makes it stale.
KPI_QUERY_SOURCES: tuple[str, ...] = ("report.py", "history.py", "moments.py", "schema.py", "store.py")
#: Where :func:`write_kpi_queries` writes the compiled query (a generated module).
KPI_QUERIES_MODULE = Path(__file__).with_name("kpi_queries.py")
#: Bounds compiled into the query and then replaced by the parameters ``$start`` and ``$end``:
#: moments no store holds, so their literals cannot be mistaken for anything else in the SQL.
_PLACEHOLDERS = {"start": datetime(1901, 2, 3, 4, 5, 6), "end": datetime(2998, 7, 8, 9, 10, 11)}


def _variant(start: datetime | None, end: datetime | None) -> str:
    """The key of the compiled query for a window: which bounds it has."""
    return ",".join(name for name, bound in (("start", start), ("end", end)) if bound is not None)


def kpi_query_fingerprint() -> str:
    """SHA-256 of what the compiled KPI query depends on: the Ibis and sqlglot versions and the
    source of :data:`KPI_QUERY_SOURCES`.

    Returns
    -------
    str
        The hex digest :data:`features.kpi_queries.FINGERPRINT` is compared with.
    """
    digest = hashlib.sha256()
    for package in ("ibis-framework", "sqlglot"):
        digest.update(f"{package}=={metadata.version(package)}\n".encode())
    for name in KPI_QUERY_SOURCES:
        digest.update(Path(__file__).with_name(name).read_bytes())
    return digest.hexdigest()


def compile_kpi_queries(backend: ibis.BaseBackend) -> dict[str, str]:
    """The DuckDB SQL of :func:`kpi_table` for each kind of window (no bound, a start, an end, both),
    the bounds as the parameters ``$start`` and ``$end``. ``backend`` is a DuckDB store's.

    Parameters
    ----------
    backend
        Ibis backend of a DuckDB store (its tables may be empty).

    Returns
    -------
    dict[str, str]
        Window kind (``""``, ``"start"``, ``"end"``, ``"start,end"``) -> SQL text.

    Raises
    ------
    RuntimeError
        A bound is not compiled as a literal that can be replaced by its parameter (a new Ibis or
        sqlglot version writes it differently).
    """
    import ibis

    queries: dict[str, str] = {}
    for key in ("", "start", "end", "start,end"):
        bounds = {name: _PLACEHOLDERS[name] for name in key.split(",") if name}
        sql = backend.compile(kpi_table(backend, **bounds))
        for name, moment in bounds.items():
            shown = backend.compile(ibis.literal(moment, type="timestamp").name("x"))
            found = re.fullmatch(r'SELECT (.+) AS "x"', shown)
            if found is None or found.group(1) not in sql:
                raise RuntimeError(f"the {name} of the KPI query is not compiled as a literal {shown!r}")
            sql = sql.replace(found.group(1), f"CAST(${name} AS TIMESTAMP)")
        if any(str(moment.year) in sql for moment in _PLACEHOLDERS.values()):
            raise RuntimeError("a bound of the KPI query is compiled in a form that was not replaced by its parameter")
        queries[key] = sql
    return queries


def write_kpi_queries(path: Path = KPI_QUERIES_MODULE) -> None:
    """Compile the KPI query on an empty store and write it, with its fingerprint, as a module.

    Parameters
    ----------
    path
        The module to write; by default :data:`KPI_QUERIES_MODULE` (``features/kpi_queries.py``).

    Returns
    -------
    None

    Raises
    ------
    RuntimeError
        A bound cannot be turned into its parameter (:func:`compile_kpi_queries`).
    """
    import duckdb

    from features.store import create_tables, ibis_backend

    con = duckdb.connect(":memory:")
    try:
        create_tables(con)
        queries = compile_kpi_queries(ibis_backend(con))
    finally:
        con.close()
    lines = [
        '"""The KPI report\'s query (features.report.kpi_table) compiled to DuckDB SQL, one per kind of window.',
        "",
        "Generated by ``make kpi-queries``; do not edit. ``rapport data report`` runs it without importing Ibis",
        "while FINGERPRINT matches features.report.kpi_query_fingerprint(), and compiles the expression otherwise.",
        '"""',
        "",
        f"FINGERPRINT = {kpi_query_fingerprint()!r}",
        "",
        "QUERIES = {",
        *(f"    {key!r}: {sql!r}," for key, sql in queries.items()),
        "}",
        "",
    ]
    path.write_text("\n".join(lines))


def kpi_report_duckdb(con: duckdb.DuckDBPyConnection, *, start: datetime | None = None,
                      end: datetime | None = None) -> KpiReport:
    """:func:`kpi_report` of a DuckDB store, by the query compiled ahead of time (no Ibis import).

    When the sources of the query changed since it was compiled (:func:`kpi_query_fingerprint`),
    the expression is compiled and run instead: the numbers never come from a stale query.

    Parameters
    ----------
    con
        An open store (read only is enough).
    start, end
        The window ``[start, end)`` (naive UTC or aware); ``None``: unbounded on that side.

    Returns
    -------
    KpiReport
        The same report as :func:`kpi_report`.

    Raises
    ------
    ArgumentError
        ``end`` is not after ``start``.
    """
    start_n, end_n = _bounds(start, end)
    from features import kpi_queries

    if kpi_queries.FINGERPRINT != kpi_query_fingerprint():
        logger.info("the compiled KPI query is older than its sources (make kpi-queries): compiling it")
        from features.store import ibis_backend

        return kpi_report(ibis_backend(con), start=start_n, end=end_n)
    bounds = {name: bound for name, bound in (("start", start_n), ("end", end_n)) if bound is not None}
    cursor = con.execute(kpi_queries.QUERIES[_variant(start_n, end_n)], bounds)
    names = [column[0] for column in cursor.description]
    return _assemble([dict(zip(names, row, strict=True)) for row in cursor.fetchall()], start_n, end_n)


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

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    freq
        The calendar period: ``day``, ``week`` (starting on Monday), ``month``, ``quarter`` or ``year``.
    start, end
        The window ``[start, end)`` (naive UTC or aware); ``None``: unbounded on that side.

    Returns
    -------
    pandas.DataFrame
        The columns :data:`PERIOD_COLUMNS`, one row per period and channel; empty without any order.

    Raises
    ------
    ValueError
        ``freq`` is not a key of :data:`PERIOD_FREQUENCIES`.
    ArgumentError
        ``end`` is not after ``start``.
    """
    import pandas as pd

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

    Parameters
    ----------
    report
        The KPIs to show (:func:`kpi_report`).
    currency
        The code shown before every amount.

    Returns
    -------
    rich.table.Table
        The table, titled with the report's window; an undefined ratio shows as a dash.
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


if __name__ == "__main__":
    write_kpi_queries()
