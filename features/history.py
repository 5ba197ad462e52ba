"""The unified purchase history: sales lines with customer, catalogue attributes and returns resolved.

Everything here is an Ibis expression over the store's tables (:mod:`features.store`), so the same
code runs on DuckDB today and on Spark or a warehouse later. Nothing is executed until a caller asks
for a result.

Point-in-time correctness: :func:`unified_lines` with an ``as_of`` cutoff sees only sales made
before the cutoff and only the returns *booked* before it. A return booked after the cutoff does not
exist yet at the cutoff, even when it reverses an earlier sale, so features computed at ``as_of``
never depend on anything that happened at or after ``as_of``.
"""

from __future__ import annotations

from datetime import date, datetime

import ibis
import ibis.expr.types as ir

from features.moments import utc_naive
from features.schema import Col

#: Scale of :func:`money_sum`'s exact sums: a millionth of the currency unit, far below any price
#: and any fractional quantity times a price, and 32 integer digits, room for billions of lines of ``features.schema.MAX_ABS_NUMBER``.
MONEY_SUM_TYPE = "decimal(38, 6)"

#: Store tables read by this module (filled by ingestion, see :mod:`features.store`).
LINES_TABLE = "lines"
RETURNS_TABLE = "returns"
ITEMS_TABLE = "items"
IDENTITY_TABLE = "identity_map"

#: Columns of :func:`unified_lines`, in order.
UNIFIED_COLUMNS: tuple[str, ...] = (
    Col.LINE_KEY,
    Col.ORDER_KEY,
    Col.CUSTOMER_ID,
    Col.CHANNEL,
    Col.TS,
    Col.IS_GUEST,
    Col.ITEM_ID,
    Col.CATEGORY,
    Col.IS_PRODUCT,
    Col.QUANTITY,
    Col.UNIT_PRICE,
    Col.DISCOUNT,
    Col.GROSS_AMOUNT,
    Col.RETURNED_QUANTITY,
    Col.REFUND_AMOUNT,
    Col.NET_AMOUNT,
    Col.STORE_ID,
    Col.COUNTRY,
)

#: Number of lines of an order (a column of :func:`orders`).
N_LINES = "n_lines"

#: Columns of :func:`orders`, in order.
ORDER_COLUMNS: tuple[str, ...] = (
    Col.ORDER_KEY,
    Col.CUSTOMER_ID,
    Col.TS,
    Col.CHANNEL,
    Col.IS_GUEST,
    Col.GROSS_AMOUNT,
    Col.REFUND_AMOUNT,
    Col.NET_AMOUNT,
    N_LINES,
)


def cutoff_literal(moment: datetime | date) -> ir.TimestampScalar:
    """An Ibis timestamp literal for a cutoff, comparable with the store's naive-UTC ``ts``.

    Parameters
    ----------
    moment
        The cutoff: an aware or naive ``datetime`` or a ``date`` (:func:`features.moments.utc_naive`).

    Returns
    -------
    ibis.expr.types.TimestampScalar
        The cutoff as naive UTC.

    Raises
    ------
    TypeError
        ``moment`` is neither a ``datetime`` nor a ``date``.
    """
    return ibis.literal(utc_naive(moment), type="timestamp")


def unified_lines(backend: ibis.BaseBackend, as_of: datetime | None = None) -> ir.Table:
    """Sales lines sold before ``as_of``, net of the returns booked before ``as_of``.

    One row per sold line (``line_key``), with:

    - ``customer_id``: the customer the line's ``record_key`` resolves to in ``identity_map``;
      NULL for an anonymous sale (no key) or a key the identity map does not know.
    - ``category`` and ``is_product`` from ``items``. An item missing from the catalogue has a NULL
      category and counts as a product.
    - ``returned_quantity`` and ``refund_amount``: sums over the returns of the line booked before
      ``as_of`` (0 when none); ``net_amount = gross_amount - refund_amount``.

    ``as_of=None`` means no cutoff (the whole store). Returns booked at or after ``as_of`` are
    ignored even when they reverse a line sold before it: at the cutoff they have not happened yet.

    Parameters
    ----------
    backend
        Ibis backend holding the store's tables.
    as_of
        The cutoff (naive UTC or aware); ``None``: the whole store.

    Returns
    -------
    ibis.expr.types.Table
        The lines, unexecuted, with the columns :data:`UNIFIED_COLUMNS`.
    """
    lines = backend.table(LINES_TABLE)
    returns = backend.table(RETURNS_TABLE)
    items = backend.table(ITEMS_TABLE)
    identity = backend.table(IDENTITY_TABLE)

    if as_of is not None:
        cutoff = cutoff_literal(as_of)
        lines = lines.filter(lines[Col.TS] < cutoff)
        returns = returns.filter(returns[Col.TS] < cutoff)

    returned = returns.group_by(returns[Col.LINE_KEY].name("_r_line_key")).aggregate(
        _r_quantity=returns[Col.QUANTITY].sum(),
        _r_refund=money_sum(returns[Col.REFUND_AMOUNT]),
    )
    catalogue = items.select(
        _i_item_id=items[Col.ITEM_ID], _i_category=items[Col.CATEGORY], _i_is_product=items[Col.IS_PRODUCT]
    )
    ids = identity.select(_k_key_hash=identity["key_hash"], _k_customer_id=identity[Col.CUSTOMER_ID])

    joined = (
        lines.left_join(ids, lines[Col.RECORD_KEY] == ids._k_key_hash)
        .left_join(catalogue, lines[Col.ITEM_ID] == catalogue._i_item_id)
        .left_join(returned, lines[Col.LINE_KEY] == returned._r_line_key)
    )
    refund = joined._r_refund.fill_null(0.0)
    return joined.select(
        **{
            Col.LINE_KEY: joined[Col.LINE_KEY],
            Col.ORDER_KEY: joined[Col.ORDER_KEY],
            Col.CUSTOMER_ID: joined._k_customer_id,
            Col.CHANNEL: joined[Col.CHANNEL],
            Col.TS: joined[Col.TS],
            Col.IS_GUEST: joined[Col.IS_GUEST].fill_null(False),
            Col.ITEM_ID: joined[Col.ITEM_ID],
            Col.CATEGORY: joined._i_category,
            Col.IS_PRODUCT: joined._i_is_product.fill_null(True),
            Col.QUANTITY: joined[Col.QUANTITY],
            Col.UNIT_PRICE: joined[Col.UNIT_PRICE],
            Col.DISCOUNT: joined[Col.DISCOUNT].fill_null(0.0),
            Col.GROSS_AMOUNT: joined[Col.GROSS_AMOUNT],
            Col.RETURNED_QUANTITY: joined._r_quantity.fill_null(0),
            Col.REFUND_AMOUNT: refund,
            Col.NET_AMOUNT: joined[Col.GROSS_AMOUNT] - refund,
            Col.STORE_ID: joined[Col.STORE_ID],
            Col.COUNTRY: joined[Col.COUNTRY],
        }
    )


def money_sum(amount: ir.NumericColumn, where: ir.BooleanValue | None = None) -> ir.FloatingScalar:
    """The sum of an amount column as float64, computed exactly: every value rounded to a millionth,
    summed as a decimal. A sum of doubles depends on the order the backend adds them in, which a
    parallel aggregation changes from run to run (the last bits of a customer's spend differ); an
    exact sum does not, so features, and the models trained on them, are the same on every run.

    Parameters
    ----------
    amount
        An amount column (``gross_amount``, ``refund_amount``, ``net_amount``).
    where
        Only the rows where this is true are summed; ``None``: every row.

    Returns
    -------
    ibis.expr.types.FloatingScalar
        The exact sum as float64 (NULL over no row, as SQL's ``SUM``).
    """
    return amount.cast(MONEY_SUM_TYPE).sum(where=where).cast("float64")


def product_lines(lines: ir.Table) -> ir.Table:
    """The lines that are purchases of products: postage, fees and adjustments removed.

    Parameters
    ----------
    lines
        A table shaped like :func:`unified_lines`.

    Returns
    -------
    ibis.expr.types.Table
        Its rows whose ``is_product`` is true.
    """
    return lines.filter(lines[Col.IS_PRODUCT])


def orders(lines: ir.Table) -> ir.Table:
    """One row per ``order_key`` of a table shaped like :func:`unified_lines`.

    ``ts`` is the order's first line; ``customer_id``, ``channel`` and ``is_guest`` are the same on
    every line of an order (one record, one checkout), the aggregate only collapses them. Amounts are
    sums over the order's lines, so they are net of exactly the returns ``lines`` was built with.

    Parameters
    ----------
    lines
        A table shaped like :func:`unified_lines` (possibly filtered, e.g. by :func:`product_lines`).

    Returns
    -------
    ibis.expr.types.Table
        One row per order, unexecuted, with the columns :data:`ORDER_COLUMNS`.
    """
    return lines.group_by(lines[Col.ORDER_KEY]).aggregate(
        **{
            Col.CUSTOMER_ID: lines[Col.CUSTOMER_ID].max(),
            Col.TS: lines[Col.TS].min(),
            Col.CHANNEL: lines[Col.CHANNEL].min(),
            Col.IS_GUEST: lines[Col.IS_GUEST].any(),
            Col.GROSS_AMOUNT: money_sum(lines[Col.GROSS_AMOUNT]),
            Col.REFUND_AMOUNT: money_sum(lines[Col.REFUND_AMOUNT]),
            Col.NET_AMOUNT: money_sum(lines[Col.NET_AMOUNT]),
            N_LINES: lines.count(),
        }
    )
