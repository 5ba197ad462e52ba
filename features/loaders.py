"""Loaders that convert the two real data sets the project ships with into the data contract.

:func:`load_online_retail_ii` converts the UCI Online Retail II file (a UK online retailer,
2009-2011) into ``orders``, ``returns`` and a ``catalogue``; :func:`load_cdnow` converts the CDNOW
records shipped inside ``lifetimes`` into ``transactions``, and :func:`cdnow_paper_setup` holds the
paper's periods and published BG/NBD estimates the CLV model is checked against. A loader only
converts: it never drops or repairs a bad row, ingestion validates and quarantines it, so nothing
disappears silently. What a conversion did is reported, with counts, in :attr:`ContractTables.notes`.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import MappingProxyType

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features import store
from features.discovery import IngestError
from features.schema import SOURCES, Channel
from features.settings import Settings

logger = logging.getLogger(__name__)


class DatasetFileError(IngestError, ValueError):
    """A public data set's file that cannot be converted (a missing column, a malformed line): the
    message names the file, the line or column and what was expected."""


# --- The result of a conversion -------------------------------------------------------------------


@dataclass(frozen=True)
class ContractTables:
    """Contract tables by source name, plus what the conversion did.

    ``tables`` maps a source name of :data:`features.schema.SOURCES` to a table whose columns are
    columns of that source (optional ones may be absent). ``notes`` are human-readable sentences
    with counts; ``counts`` holds the same figures by name for programs and tests.
    """

    tables: Mapping[str, pa.Table]
    notes: tuple[str, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for source, table in self.tables.items():
            if source not in SOURCES:
                raise ValueError(f"unknown contract source {source!r}; expected one of {sorted(SOURCES)}")
            spec = SOURCES[source]
            unknown = [name for name in table.column_names if name not in spec.column_names]
            if unknown:
                raise ValueError(f"{source}: columns {unknown} are not contract columns {list(spec.column_names)}")
            missing = [name for name in spec.required if name not in table.column_names]
            if missing:
                raise ValueError(f"{source}: required columns {missing} are missing")
        object.__setattr__(self, "tables", MappingProxyType(dict(self.tables)))
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "counts", MappingProxyType(dict(self.counts)))

    def __getitem__(self, source: str) -> pa.Table:
        try:
            return self.tables[source]
        except KeyError:
            raise KeyError(f"no {source!r} table; this conversion produced {sorted(self.tables)}") from None

    def __contains__(self, source: object) -> bool:
        return source in self.tables

    def __iter__(self) -> Iterator[str]:
        return iter(self.tables)

    def unconvertible_currencies(self, settings: Settings) -> list[str]:
        """Currencies in these tables that ``settings`` can neither keep nor convert; ingesting
        them would quarantine every row, so callers stop first and say which setting to change.

        Parameters
        ----------
        settings
            The settings ingestion will use (``currency``, ``currency_rates``).

        Returns
        -------
        list[str]
            Upper-case currency codes, sorted; empty when every currency can be ingested.
        """
        found: set[str] = set()
        for table in self.tables.values():
            if "currency" in table.column_names:
                found.update(v.upper() for v in pc.unique(table["currency"]).to_pylist() if v)
        return sorted(found - {settings.currency} - set(settings.currency_rates))

    def write_parquet(self, directory: Path) -> list[Path]:
        """Write one ``<source>.parquet`` per table into ``directory`` (the layout ingestion reads).

        Parameters
        ----------
        directory
            Folder to write into; created when missing, existing files of the same name replaced.

        Returns
        -------
        list[pathlib.Path]
            The files written, one per table.
        """
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for source, table in self.tables.items():
            path = directory / f"{source}.parquet"
            pq.write_table(table, path)
            paths.append(path)
        return paths


# --- Online Retail II ----------------------------------------------------------------------------

#: Columns of the Online Retail II file.
ONLINE_RETAIL_COLUMNS: tuple[str, ...] = (
    "Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country",
)
#: The shop is in the UK: InvoiceDate is local time there (GMT in winter, BST in summer).
ONLINE_RETAIL_TIMEZONE = "Europe/London"
ONLINE_RETAIL_CURRENCY = "GBP"
#: An item counts as active when it sold within this many days before the file's last line.
ACTIVE_WINDOW_DAYS = 365

#: Codes that do not start with a digit but are real products (inspected in the 2009-2011 file):
#: ``DCGS...`` are the items of the retailer's "dotcom gift shop" (MISO PRETTY GUM, GIRLS PARTY BAG,
#: dog collars, ...), ``SP1002`` is KID'S CHALKBOARD/EASEL. Every other code without a leading
#: digit is postage, carriage, fees, discounts, manual adjustments, samples, tests or gift vouchers
#: (POST, DOT, C2, C3, M, D, S, B, CRUK, BANK CHARGES, AMAZONFEE, ADJUST, PADS, TEST001, GIFT_0001_*).
ONLINE_RETAIL_PRODUCT_PATTERNS: tuple[str, ...] = (r"DCGS\w+", r"SP1002")

#: Codes that start with a digit but are not products: 23444 is "Next Day Carriage" and 22016 is
#: "Dotcomgiftshop Gift Voucher £100.00".
ONLINE_RETAIL_NON_PRODUCT_CODES: tuple[str, ...] = ("23444", "22016")

# Words of an item name that describe a variant (colour, size, pattern, pack, theme of a range)
# rather than what the item is; the category heuristic skips them ("EDWARDIAN PARASOL BLACK",
# "DOORMAT MERRY CHRISTMAS RED", "MAGIC DRAWING SLATE DOLLY GIRL").
_NAME_MODIFIERS: frozenset[str] = frozenset(
    """
    PINK RED BLUE GREEN WHITE BLACK CREAM IVORY SILVER GOLD PURPLE YELLOW ORANGE BROWN GREY GRAY NATURAL
    LILAC TURQUOISE NAVY AQUA LIME MAGENTA TEAL BEIGE CLEAR COPPER ZINC PASTEL BRIGHT FUCHSIA
    SMALL LARGE MEDIUM MINI JUMBO BIG GIANT LONG TALL CM MM XL SML MED LGE
    DESIGN DESIGNS RETROSPOT POLKADOT POLKADOTS SPOTTY SPOT SPOTS STRIPE STRIPES STRIPED FLORAL
    ASSORTED ASST COLOUR COLOURS COLOURED SET PACK PCS PC PIECE OF AND THE IN WITH
    CHRISTMAS EASTER VINTAGE ANTIQUE RETRO PAISLEY GINGHAM FLOCK LONDON WOODLAND DOLLY GIRL GIRLS BOY
    BOYS SPACEBOY PAINTED HANGING METAL ROUND SCENTED
    """.split()
)

_WORD = re.compile(r"[A-Z]+")


def load_online_retail_ii(path: Path, settings: Settings) -> ContractTables:
    """Convert the UCI Online Retail II file into ``orders``, ``returns`` and ``catalogue`` tables.

    Sale lines (invoices not starting with "C") become ``orders``: ``line_id`` is the line's position
    within its invoice in file order, times are local UK time, a line without Customer ID is a guest
    purchase (``account_id`` empty). Cancellation lines ("C" invoices) become ``returns``, each tied
    to the sale line it reverses: the most recent earlier sale of the same customer and StockCode
    (earlier in time, or at the same minute and earlier in the file). A cancellation without such a
    sale (guest cancellations; sales before the file starts) keeps its own invoice and line as the
    reference, so ingestion quarantines it as a return of no known sale instead of losing it.
    Bad-debt adjustments ("A" invoices, negative price), stock write-offs (negative quantity), free
    lines (price 0) pass through for ingestion to quarantine. Every file line ends up in exactly one
    of ``orders`` and ``returns``.

    The ``catalogue`` has one row per (trimmed, upper-cased) StockCode; see :func:`category_from_name`
    and :func:`is_online_retail_product` for the heuristic columns.

    Parameters
    ----------
    path
        The Online Retail II file, as CSV with its original column names.
    settings
        Settings for the conversion (``non_product_items``, currency, DuckDB configuration).

    Returns
    -------
    ContractTables
        ``catalogue``, ``orders`` and ``returns``, with notes and counts of the conversion.

    Raises
    ------
    FileNotFoundError
        ``path`` is not a file.
    DatasetFileError
        The file lacks the Online Retail II columns or cannot be read.
    """
    started = time.perf_counter()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Online Retail II file not found: {path}")
    con = duckdb.connect(":memory:")
    try:
        store.configure(con, settings)
        _read_online_retail(con, path)
        orders = _fetch(con, _ORDERS_SQL)
        returns_with_match = _fetch(con, _RETURNS_SQL)
        items = _fetch(con, _CATALOGUE_SQL, [ACTIVE_WINDOW_DAYS])
        counts = dict(zip(_COUNT_NAMES, con.execute(_COUNTS_SQL).fetchone() or (), strict=True))
    finally:
        con.close()

    matched = returns_with_match.column("matched").to_pylist()
    exceeds = returns_with_match.column("exceeds_sale").to_pylist()
    returns = returns_with_match.drop_columns(["matched", "exceeds_sale"])
    orders = _localise(orders, ONLINE_RETAIL_TIMEZONE)
    returns = _localise(returns, ONLINE_RETAIL_TIMEZONE)
    catalogue, non_products = _online_retail_catalogue(items, settings)

    counts.update(
        orders=orders.num_rows,
        returns=returns.num_rows,
        returns_matched=sum(matched),
        returns_unmatched=returns.num_rows - sum(matched),
        returns_exceeding_sale=sum(1 for e in exceeds if e),
        catalogue_items=catalogue.num_rows,
        non_product_items=len(non_products),
        non_product_lines=sum(non_products.values()),
    )
    notes = _online_retail_notes(path, counts, non_products)
    elapsed = time.perf_counter() - started
    logger.info("converted %s (%d lines) in %.1f s", path.name, counts["input_lines"], elapsed)
    return ContractTables(
        {"catalogue": catalogue, "orders": orders, "returns": returns}, tuple(notes), counts
    )


def _read_online_retail(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    # Everything is read as text and cast with TRY_CAST: an unparseable value becomes empty and
    # ingestion quarantines its row (with the reason), rather than the whole file failing here.
    con.execute(
        "CREATE TEMP TABLE raw AS SELECT * FROM read_csv(?, header = true, all_varchar = true)",
        [str(path)],
    )
    found = [row[0] for row in con.execute("DESCRIBE raw").fetchall()]
    missing = [name for name in ONLINE_RETAIL_COLUMNS if name not in found]
    if missing:
        raise DatasetFileError(
            f"{path}: missing columns {missing}; an Online Retail II file has {list(ONLINE_RETAIL_COLUMNS)}, "
            f"this one has {found}"
        )
    # ``rowid`` of a table created from one file scan is the file order (DuckDB preserves insertion
    # order), which defines line numbers and breaks ties between lines of the same minute.
    con.execute(
        f"""
        CREATE TEMP TABLE typed AS
        SELECT
            rowid AS file_row,
            trim(Invoice) AS invoice,
            upper(trim(StockCode)) AS item_id,
            nullif(trim(Description), '') AS description,
            TRY_CAST(trim(Quantity) AS BIGINT) AS quantity,
            timezone('{ONLINE_RETAIL_TIMEZONE}', TRY_CAST(trim(InvoiceDate) AS TIMESTAMP)) AS ts,
            TRY_CAST(trim(Price) AS DOUBLE) AS price,
            TRY_CAST(trim(Price) AS DECIMAL(18, 6)) AS price_exact,
            -- Exports through spreadsheets turn the customer number into 12345.0.
            nullif(regexp_replace(trim("Customer ID"), '\\.0+$', ''), '') AS account_id,
            nullif(trim(Country), '') AS country
        FROM raw
        """
    )
    # The windows sort the key columns only and join back: sorting whole rows is several times slower.
    con.execute(
        """
        CREATE TEMP TABLE lines AS
        WITH keys AS (
            SELECT
                file_row,
                CAST(row_number() OVER (PARTITION BY invoice ORDER BY file_row) AS VARCHAR) AS line_id,
                row_number() OVER (ORDER BY ts, file_row) AS seq
            FROM typed
        )
        SELECT typed.*, starts_with(upper(invoice), 'C') AS is_cancellation, keys.line_id, keys.seq
        FROM typed JOIN keys USING (file_row)
        """
    )
    con.execute("DROP TABLE raw")
    con.execute("DROP TABLE typed")


_ORDERS_SQL = f"""
SELECT
    invoice AS order_id, line_id, ts AS timestamp, account_id, item_id, quantity,
    price AS unit_price, '{ONLINE_RETAIL_CURRENCY}' AS currency, '{Channel.WEB.value}' AS channel, country
FROM lines
WHERE NOT is_cancellation
ORDER BY file_row
"""


def latest_earlier_sale(returns: str, sales: str, *, customer: str) -> str:
    """FROM clause pairing each row of ``returns`` (alias ``c``) with the same customer's most recent
    earlier sale of the same item in ``sales`` (alias ``s``; NULLs when there is none).

    Both relations have ``item_id``, ``seq`` (one order over sales and returns together: time, then
    file position, so that a return never reverses a later sale) and the ``customer`` column. The
    Online Retail II loader and the ingest of generic transactions with negative quantities both
    match returns to sales with it.

    Parameters
    ----------
    returns, sales
        Names of the two relations (tables or CTEs) in the surrounding SQL.
    customer
        Name of the customer column both relations share.

    Returns
    -------
    str
        A DuckDB ``ASOF LEFT JOIN`` clause, to follow ``FROM``.
    """
    return (
        f"{returns} AS c ASOF LEFT JOIN {sales} AS s "
        f"ON c.{customer} = s.{customer} AND c.item_id = s.item_id AND c.seq > s.seq"
    )


# A cancellation reverses the customer's most recent earlier sale line of the same item. Only sale
# lines ingestion accepts (quantity > 0, price > 0) are candidates: a return pointing at a
# quarantined sale would be orphaned anyway. ``seq`` orders lines by time, then file position.
_RETURNS_SQL = f"""
WITH sales AS (
    SELECT invoice, line_id, account_id, item_id, quantity, seq
    FROM lines
    WHERE NOT is_cancellation AND account_id IS NOT NULL AND quantity > 0 AND price > 0
),
cancellations AS (
    SELECT * FROM lines WHERE is_cancellation
)
SELECT
    c.invoice || '-' || c.line_id AS return_id,
    coalesce(s.invoice, c.invoice) AS order_id,
    coalesce(s.line_id, c.line_id) AS line_id,
    -c.quantity AS quantity,
    CAST(-c.quantity * c.price_exact AS DOUBLE) AS refund_amount,
    c.ts AS timestamp,
    '{ONLINE_RETAIL_CURRENCY}' AS currency,
    s.invoice IS NOT NULL AS matched,
    s.invoice IS NOT NULL AND -c.quantity > s.quantity AS exceeds_sale
FROM {latest_earlier_sale("cancellations", "sales", customer="account_id")}
ORDER BY c.file_row
"""

# Name: the most frequent non-empty description (ties: the alphabetically last, to be deterministic).
# Price: median positive sale price (any positive price when the code was never sold at one).
_CATALOGUE_SQL = """
WITH descriptions AS (
    SELECT item_id, description, count(*) AS n
    FROM lines WHERE description IS NOT NULL
    GROUP BY item_id, description
),
names AS (
    SELECT item_id, arg_max(description, (n, description)) AS name FROM descriptions GROUP BY item_id
),
stats AS (
    SELECT
        item_id,
        count(*) AS n_lines,
        coalesce(
            median(price) FILTER (WHERE NOT is_cancellation AND price > 0),
            median(price) FILTER (WHERE price > 0)
        ) AS price,
        coalesce(bool_or(
            NOT is_cancellation AND quantity > 0 AND price > 0
            AND ts > (SELECT max(ts) FROM lines) - to_days(CAST(? AS INTEGER))
        ), false) AS active
    FROM lines
    WHERE item_id IS NOT NULL AND item_id <> ''
    GROUP BY item_id
)
SELECT s.item_id, n.name, s.price, s.active, s.n_lines
FROM stats AS s LEFT JOIN names AS n USING (item_id)
ORDER BY s.item_id
"""

_COUNT_NAMES = (
    "input_lines", "sale_lines", "cancellation_lines", "guest_lines", "guest_order_lines",
    "guest_cancellation_lines", "orders_non_positive_quantity", "orders_zero_price",
    "orders_negative_price", "bad_debt_lines", "cancellations_non_negative_quantity",
    "unparseable_values", "first_day", "last_day",
)
_COUNTS_SQL = """
SELECT
    count(*),
    count(*) FILTER (WHERE NOT is_cancellation),
    count(*) FILTER (WHERE is_cancellation),
    count(*) FILTER (WHERE account_id IS NULL),
    count(*) FILTER (WHERE account_id IS NULL AND NOT is_cancellation),
    count(*) FILTER (WHERE account_id IS NULL AND is_cancellation),
    count(*) FILTER (WHERE NOT is_cancellation AND quantity <= 0),
    count(*) FILTER (WHERE NOT is_cancellation AND price = 0),
    count(*) FILTER (WHERE NOT is_cancellation AND price < 0),
    count(*) FILTER (WHERE starts_with(upper(invoice), 'A')),
    count(*) FILTER (WHERE is_cancellation AND quantity >= 0),
    count(*) FILTER (WHERE quantity IS NULL OR ts IS NULL OR price IS NULL),
    CAST(strftime(min(ts), '%Y%m%d') AS BIGINT),
    CAST(strftime(max(ts), '%Y%m%d') AS BIGINT)
FROM lines
"""


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None) -> pa.Table:
    return con.sql(sql, params=params).to_arrow_table()


def _localise(table: pa.Table, zone: str) -> pa.Table:
    """Label the (UTC-instant) timestamp column with the source's zone; the instants are unchanged."""
    index = table.schema.get_field_index("timestamp")
    column = table.column(index).cast(pa.timestamp("us", tz=zone))
    return table.set_column(index, "timestamp", column)


def category_from_name(name: str | None) -> str | None:
    """Heuristic category of an item: the last word of its name that says what the item is.

    Online Retail II has no categories. Names end in the kind of thing sold most of the time
    ("... 20 LIGHTS", "... TOTE BAG", "... COFFEE MUG"), so the category is the name's last word of
    two or more letters, skipping words that only describe a variant (colour, size, pattern, pack:
    "EDWARDIAN PARASOL BLACK" is a PARASOL). It is a heuristic, good enough for breadth features and
    recommendation filters, not a merchandising taxonomy. Plurals are merged by
    :func:`merge_plural_categories`.

    Parameters
    ----------
    name
        The item's name (any case), or ``None``.

    Returns
    -------
    str or None
        An upper-case word; ``None`` for a missing name or one without a word of two letters.
    """
    if not name:
        return None
    words = [w for w in _WORD.findall(name.upper()) if len(w) > 1]
    if not words:
        return None
    nouns = [w for w in words if w not in _NAME_MODIFIERS]
    return nouns[-1] if nouns else words[-1]


def merge_plural_categories(categories: list[str | None]) -> list[str | None]:
    """Map a plural category to its singular when the singular is also a category (LIGHTS -> LIGHT).

    Parameters
    ----------
    categories
        Categories of :func:`category_from_name`, one per item (``None`` allowed).

    Returns
    -------
    list[str or None]
        The same length and order, plurals replaced by a singular found among ``categories``.
    """
    known = {c for c in categories if c}

    def singular(word: str) -> str:
        for suffix, replacement in (("S", ""), ("ES", ""), ("IES", "Y")):
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                stem = word[: -len(suffix)] + replacement
                if stem in known:
                    return stem
        return word

    return [singular(c) if c else c for c in categories]


def is_online_retail_product(item_id: str, non_product_items: list[str]) -> bool:
    """Whether an Online Retail II code is a product rather than postage, a fee or an adjustment.

    Product codes start with a digit (85123A, 22423). Not products: the configured
    ``non_product_items`` (case-insensitive), :data:`ONLINE_RETAIL_NON_PRODUCT_CODES`, and codes
    without a leading digit unless :data:`ONLINE_RETAIL_PRODUCT_PATTERNS` lists them.

    Parameters
    ----------
    item_id
        A StockCode (surrounding spaces and case ignored).
    non_product_items
        Codes configured as non-products (setting ``non_product_items``).

    Returns
    -------
    bool
        ``True`` for a product.
    """
    code = item_id.strip().upper()
    if code in {c.strip().upper() for c in non_product_items} or code in ONLINE_RETAIL_NON_PRODUCT_CODES:
        return False
    if code[:1].isdigit():
        return True
    return any(re.fullmatch(pattern, code) for pattern in ONLINE_RETAIL_PRODUCT_PATTERNS)


def _online_retail_catalogue(items: pa.Table, settings: Settings) -> tuple[pa.Table, dict[str, int]]:
    item_ids = items.column("item_id").to_pylist()
    names = items.column("name").to_pylist()
    n_lines = items.column("n_lines").to_pylist()
    is_product = [is_online_retail_product(code, settings.non_product_items) for code in item_ids]
    # Postage and fees get no category: they must not count as a kind of product a customer buys.
    categories = merge_plural_categories(
        [category_from_name(name) if product else None for name, product in zip(names, is_product, strict=True)]
    )
    catalogue = pa.table(
        {
            "item_id": items.column("item_id"),
            "name": items.column("name"),
            "category": pa.array(categories, pa.string()),
            "price": items.column("price"),
            "active": items.column("active"),
            "is_product": pa.array(is_product, pa.bool_()),
        }
    )
    non_products = {
        code: n for code, n, product in zip(item_ids, n_lines, is_product, strict=True) if not product
    }
    non_products = dict(sorted(non_products.items(), key=lambda kv: (-kv[1], kv[0])))
    return catalogue, non_products


def _online_retail_notes(path: Path, c: Mapping[str, int], non_products: Mapping[str, int]) -> list[str]:
    top = ", ".join(f"{code} ({n:,})" for code, n in list(non_products.items())[:12])
    notes = [
        f"{path.name}: {c['input_lines']:,} lines, {c['first_day']} .. {c['last_day']}, local UK time "
        f"({ONLINE_RETAIL_TIMEZONE}), prices in {ONLINE_RETAIL_CURRENCY}.",
        f"orders: {c['orders']:,} sale lines; {c['guest_order_lines']:,} of them have no Customer ID and "
        "are kept as guest purchases (empty account_id).",
        f"returns: {c['returns']:,} cancellation lines; {c['returns_matched']:,} matched to the customer's most "
        f"recent earlier sale of the same StockCode, {c['returns_unmatched']:,} without one "
        f"({c['guest_cancellation_lines']:,} guest cancellations, the rest customers whose sale precedes the "
        "file) keep their own invoice as reference and will be quarantined as returns of no known sale.",
        f"returns: {c['returns_exceeding_sale']:,} cancellations return more units than the matched sale line "
        "had; kept as they are (ingestion reports them).",
        f"orders passed through for ingestion to quarantine: {c['orders_non_positive_quantity']:,} lines with "
        f"zero or negative quantity (stock write-offs), {c['orders_zero_price']:,} with price 0, "
        f"{c['orders_negative_price']:,} with a negative price (bad-debt adjustments; "
        f"{c['bad_debt_lines']:,} 'A' invoice lines in all).",
        f"catalogue: {c['catalogue_items']:,} item codes (trimmed, upper-cased); name = most frequent "
        "description; category = heuristic from the name's last word; price = median positive price; "
        f"active = sold in the last {ACTIVE_WINDOW_DAYS} days of the file.",
        f"catalogue: {c['non_product_items']:,} codes are not products ({c['non_product_lines']:,} file lines, sales and "
        f"cancellations): {top}.",
    ]
    if c["cancellations_non_negative_quantity"]:
        notes.append(
            f"returns: {c['cancellations_non_negative_quantity']:,} cancellation lines have a non-negative "
            "Quantity, so their returned quantity is not positive (ingestion quarantines them)."
        )
    if c["unparseable_values"]:
        notes.append(
            f"{c['unparseable_values']:,} lines have an unparseable Quantity, InvoiceDate or Price, left empty "
            "for ingestion to quarantine."
        )
    return notes


# --- CDNOW ---------------------------------------------------------------------------------------

CDNOW_CURRENCY = "USD"
CDNOW_ITEM_ID = "CD"


@dataclass(frozen=True)
class BgNbdParameters:
    """BG/NBD parameters (Fader, Hardie & Lee 2005): purchase-rate Gamma(r, alpha), drop-out Beta(a, b)."""
    r: float
    alpha: float
    a: float
    b: float

    def as_dict(self) -> dict[str, float]:
        """The four parameters by name, as ``lifetimes`` prints them.

        Returns
        -------
        dict[str, float]
            ``{"r": ..., "alpha": ..., "a": ..., "b": ...}``.
        """
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}


@dataclass(frozen=True)
class CdnowPaperSetup:
    """The CDNOW study design and published BG/NBD estimates of Fader, Hardie & Lee (2005).

    The 2,357 customers of the 1/10 sample made their first purchase in the first quarter of 1997.
    Calibration runs from 1997-01-01 to the end of 1997-09-30 (39 weeks), the holdout from 1997-10-01
    to 1998-06-30 (39 weeks). Time is measured in weeks as days / 7 from each customer's first
    purchase: frequency counts repeat purchase days, recency and T are (last purchase - first
    purchase) / 7 and (1997-09-30 - first purchase) / 7. With lifetimes this is
    ``summary_data_from_transaction_data(..., freq="D", freq_multiplier=7,
    observation_period_end="1997-09-30")``; ``freq="W"`` would round dates to calendar weeks
    instead and shift the estimates.
    """

    calibration_start: date
    calibration_end: date
    holdout_end: date
    calibration_weeks: int
    holdout_weeks: int
    time_unit: str
    days_per_unit: int
    n_customers: int
    bgnbd: BgNbdParameters
    citation: str


#: Fader, Hardie & Lee (2005), section 5 (BG/NBD estimates on the CDNOW sample).
CDNOW_PAPER_BGNBD = BgNbdParameters(r=0.243, alpha=4.414, a=0.793, b=2.426)

CDNOW_CITATION = (
    'Fader, P. S., Hardie, B. G. S., & Lee, K. L. (2005). "Counting Your Customers" the Easy Way: '
    "An Alternative to the Pareto/NBD Model. Marketing Science, 24(2), 275-284."
)


def cdnow_paper_setup() -> CdnowPaperSetup:
    """Calibration/holdout boundaries and the published BG/NBD estimates for the CDNOW sample.

    Returns
    -------
    CdnowPaperSetup
        The periods of Fader, Hardie & Lee (2005) and their section 5 estimates.
    """
    return CdnowPaperSetup(
        calibration_start=date(1997, 1, 1),
        calibration_end=date(1997, 9, 30),
        holdout_end=date(1998, 6, 30),
        calibration_weeks=39,
        holdout_weeks=39,
        time_unit="W",
        days_per_unit=7,
        n_customers=2357,
        bgnbd=CDNOW_PAPER_BGNBD,
        citation=CDNOW_CITATION,
    )


def cdnow_file(sample: bool = True) -> Path:
    """Path of the CDNOW file shipped inside ``lifetimes`` (located without importing the package).

    Parameters
    ----------
    sample
        ``True``: the 1/10 sample (``CDNOW_sample.txt``); ``False``: the master file.

    Returns
    -------
    pathlib.Path
        The file inside the installed package's ``datasets`` folder.

    Raises
    ------
    ModuleNotFoundError
        ``lifetimes`` is not installed.
    FileNotFoundError
        The installed package lacks the file.
    """
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the CDNOW files ship with the lifetimes package, which is not installed")
    name = "CDNOW_sample.txt" if sample else "CDNOW_master.txt"
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed lifetimes package")
    return path


def load_cdnow(sample: bool = True) -> ContractTables:
    """Convert the CDNOW purchase records into a contract ``transactions`` table.

    ``sample=True`` reads ``CDNOW_sample.txt``, the 1/10 sample of 2,357 customers analysed by Fader,
    Hardie & Lee (2005): whitespace-separated master customer id, sample id, date (YYYYMMDD), number
    of CDs, dollar value. ``sample=False`` reads ``CDNOW_master.txt`` (23,570 customers; header, then
    customer id, date, CDs, value). ``customer_key`` is the master customer id as written (the same
    person has the same key in both files). Each record is one line of item "CD": quantity = CDs,
    unit_price = value / CDs, timestamp = the date at midnight UTC. Records of one customer and day
    form one order (``<customer>-<YYYYMMDD>``, lines numbered in file order), matching the paper's
    one-purchase-per-day count. Amounts are US dollars (ingest with ``currency = "USD"``). Records
    with 0 CDs or $0 pass through for ingestion to quarantine.

    Parameters
    ----------
    sample
        ``True``: the 1/10 sample; ``False``: the master file.

    Returns
    -------
    ContractTables
        One ``transactions`` table, with notes and counts (records, customers, orders, zero rows).

    Raises
    ------
    DatasetFileError
        A record with the wrong number of fields (the message names the file and line).
    """
    path = cdnow_file(sample)
    customers: list[str] = []
    days: list[str] = []
    quantities: list[int] = []
    values: list[float] = []
    with path.open(encoding="ascii") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or not fields[0].isdigit():  # blank line or the master file's header
                continue
            expected = 5 if sample else 4
            if len(fields) != expected:
                raise DatasetFileError(f"{path}:{number}: expected {expected} fields, got {len(fields)}: {line.strip()!r}")
            customer, day, cds, value = (fields[0], *fields[-3:])
            customers.append(customer)
            days.append(day)
            quantities.append(int(cds))
            values.append(float(value))

    line_ids: list[str] = []
    per_order: dict[tuple[str, str], int] = {}
    for key in zip(customers, days, strict=True):
        per_order[key] = per_order.get(key, 0) + 1
        line_ids.append(str(per_order[key]))
    # With 0 CDs the line is quarantined for its quantity; its value stays visible as the unit price.
    unit_prices = [value / cds if cds > 0 else value for cds, value in zip(quantities, values, strict=True)]
    timestamps = [
        datetime(int(d[:4]), int(d[4:6]), int(d[6:]), tzinfo=UTC) for d in days
    ]
    n = len(customers)
    transactions = pa.table(
        {
            "customer_key": pa.array(customers, pa.string()),
            "timestamp": pa.array(timestamps, pa.timestamp("us", tz="UTC")),
            "item_id": pa.array([CDNOW_ITEM_ID] * n, pa.string()),
            "quantity": pa.array(quantities, pa.int64()),
            "unit_price": pa.array(unit_prices, pa.float64()),
            "channel": pa.array([Channel.WEB.value] * n, pa.string()),
            "order_id": pa.array([f"{c}-{d}" for c, d in zip(customers, days, strict=True)], pa.string()),
            "line_id": pa.array(line_ids, pa.string()),
            "currency": pa.array([CDNOW_CURRENCY] * n, pa.string()),
        }
    )
    counts = {
        "transactions": n,
        "customers": len(set(customers)),
        "orders": len(per_order),
        "zero_quantity_rows": sum(1 for q in quantities if q == 0),
        "zero_value_rows": sum(1 for v in values if v == 0),
    }
    notes = (
        f"{path.name}: {n:,} purchase records of {counts['customers']:,} customers, "
        f"{min(days)} .. {max(days)}; {counts['orders']:,} orders (customer-days).",
        f"transactions: {counts['zero_quantity_rows']:,} records with 0 CDs and {counts['zero_value_rows']:,} "
        "with $0 passed through; ingestion quarantines them.",
        f"amounts are {CDNOW_CURRENCY}: ingest with currency = \"{CDNOW_CURRENCY}\" (or a {CDNOW_CURRENCY} "
        "rate in currency_rates), otherwise every row is quarantined for its currency.",
    )
    return ContractTables({"transactions": transactions}, notes, counts)

