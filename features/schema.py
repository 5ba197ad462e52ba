"""The data contract: raw input schemas, unified table columns and feature names.

Ingestion validates files against :data:`SOURCES`; the unified history, the features, training and
serving refer to columns only through the constants defined here, so a rename happens in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Channel(StrEnum):
    WEB = "web"
    APP = "app"
    STORE = "store"
    MARKETPLACE = "marketplace"


CHANNELS: tuple[str, ...] = tuple(c.value for c in Channel)


class KeyType(StrEnum):
    """Kinds of raw customer key. All of them are stored only as salted hashes."""

    ACCOUNT = "account"
    EMAIL = "email"
    PHONE = "phone"
    LOYALTY_CARD = "loyalty_card"
    DEVICE = "device"
    CUSTOMER = "customer"  # a retailer's own customer number, from a generic transactions export


class EventType(StrEnum):
    VIEW = "view"
    ADD_TO_CART = "add_to_cart"


class ColumnType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    TIMESTAMP = "timestamp"
    BOOLEAN = "boolean"


#: DuckDB type each contract column type is cast to.
DUCKDB_TYPES: dict[ColumnType, str] = {
    ColumnType.STRING: "VARCHAR",
    ColumnType.INTEGER: "BIGINT",
    ColumnType.NUMBER: "DOUBLE",
    ColumnType.TIMESTAMP: "TIMESTAMPTZ",
    ColumnType.BOOLEAN: "BOOLEAN",
}

#: What a user is told a column must hold, in error messages and the README.
EXPECTED: dict[ColumnType, str] = {
    ColumnType.STRING: "text",
    ColumnType.INTEGER: "whole numbers",
    ColumnType.NUMBER: "numbers",
    ColumnType.TIMESTAMP: "timestamps such as 2024-03-01T14:05:00+01:00 (no offset means the configured timezone)",
    ColumnType.BOOLEAN: "true/false",
}


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: ColumnType
    required: bool
    description: str


@dataclass(frozen=True)
class SourceSpec:
    """One raw input: its file-name stem, its columns, and what it is."""

    name: str
    description: str
    columns: tuple[ColumnSpec, ...]

    @property
    def required(self) -> tuple[str, ...]:
        """The columns a file of this source must have.

        Returns
        -------
        tuple[str, ...]
            Names of the required columns, in contract order.
        """
        return tuple(c.name for c in self.columns if c.required)

    @property
    def column_names(self) -> tuple[str, ...]:
        """Every column of this source, required or optional.

        Returns
        -------
        tuple[str, ...]
            The column names, in contract order.
        """
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> ColumnSpec:
        """The contract of one column of this source.

        Parameters
        ----------
        name
            The column's contract name.

        Returns
        -------
        ColumnSpec
            Its type, whether it is required and its description.

        Raises
        ------
        KeyError
            The source has no such column.
        """
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise KeyError(f"source {self.name!r} has no column {name!r}")


def _c(name: str, type_: ColumnType, required: bool, description: str) -> ColumnSpec:
    return ColumnSpec(name, type_, required, description)


S, I, N, T, B = (ColumnType.STRING, ColumnType.INTEGER, ColumnType.NUMBER, ColumnType.TIMESTAMP,
                 ColumnType.BOOLEAN)

ORDERS = SourceSpec(
    "orders",
    "Order lines from the web shop, the app and marketplaces.",
    (
        _c("order_id", S, True, "Order number; unique across orders and store receipts."),
        _c("line_id", S, True, "Line number within the order."),
        _c("timestamp", T, True, "When the order was placed."),
        _c("account_id", S, False, "Web/app account; empty for a guest checkout."),
        _c("email", S, False, "E-mail given at checkout (guests always give one)."),
        _c("device_id", S, False, "App installation id."),
        _c("item_id", S, True, "Product (catalogue item id)."),
        _c("quantity", I, True, "Units sold, > 0."),
        _c("unit_price", N, True, "Price of one unit before discount, > 0."),
        _c("discount", N, False, "Discount on the whole line (amount, >= 0). Default 0."),
        _c("currency", S, False, "ISO 4217 code. Default: the configured currency."),
        _c("channel", S, True, "web, app or marketplace."),
        _c("country", S, False, "Delivery country."),
    ),
)

STORE_RECEIPTS = SourceSpec(
    "store_receipts",
    "Receipt lines from physical stores.",
    (
        _c("receipt_id", S, True, "Receipt number; unique across orders and store receipts."),
        _c("line_id", S, True, "Line number within the receipt."),
        _c("timestamp", T, True, "When the receipt was issued."),
        _c("store_id", S, True, "Store."),
        _c("loyalty_card", S, False, "Loyalty card scanned at the till; empty for an anonymous sale."),
        _c("item_id", S, True, "Product (catalogue item id)."),
        _c("quantity", I, True, "Units sold, > 0."),
        _c("unit_price", N, True, "Price of one unit before discount, > 0."),
        _c("discount", N, False, "Discount on the whole line (amount, >= 0). Default 0."),
        _c("currency", S, False, "ISO 4217 code. Default: the configured currency."),
        _c("country", S, False, "Country of the store."),
    ),
)

RETURNS = SourceSpec(
    "returns",
    "Returned units, each referring to the sold line it reverses (in any channel).",
    (
        _c("return_id", S, True, "Return number."),
        _c("order_id", S, True, "Order or receipt number of the original sale."),
        _c("line_id", S, True, "Line of the original sale."),
        _c("quantity", I, True, "Units returned, > 0 and at most the units sold."),
        _c("refund_amount", N, True, "Money given back, >= 0."),
        _c("timestamp", T, True, "When the return was booked."),
        _c("currency", S, False, "ISO 4217 code of the refund. Default: the configured currency."),
    ),
)

CATALOGUE = SourceSpec(
    "catalogue",
    "The item catalogue. A later file replaces the attributes of the items it lists.",
    (
        _c("item_id", S, True, "Item id used in sales lines."),
        _c("name", S, False, "Display name."),
        _c("category", S, False, "Category (used for breadth features and recommendation filters)."),
        _c("price", N, False, "Current list price."),
        _c("active", B, False, "False for items no longer sold. Default true."),
        _c("is_product", B, False, "False for postage, fees and adjustments. Default true."),
    ),
)

BROWSE_EVENTS = SourceSpec(
    "browse_events",
    "Optional web/app behaviour: product views and add-to-carts.",
    (
        _c("customer_key", S, True, "The key the visitor was known by."),
        _c("key_type", S, True, "account, email, device or loyalty_card."),
        _c("item_id", S, True, "Item viewed."),
        _c("event_type", S, True, "view or add_to_cart."),
        _c("timestamp", T, True, "When it happened."),
    ),
)

CUSTOMER_KEYS = SourceSpec(
    "customer_keys",
    "Key registrations that tie one person's keys together (loyalty sign-ups, CRM accounts).",
    (
        _c("account_id", S, False, "Web/app account."),
        _c("email", S, False, "E-mail address."),
        _c("phone", S, False, "Phone number in any common format."),
        _c("loyalty_card", S, False, "Loyalty card number."),
        _c("device_id", S, False, "App installation id."),
        _c("timestamp", T, False, "When the registration happened."),
    ),
)

TRANSACTIONS = SourceSpec(
    "transactions",
    "Generic transaction lines from any export; map its columns with --map or a mapping TOML.",
    (
        _c("customer_key", S, False, "The retailer's customer number; empty for an anonymous sale."),
        _c("timestamp", T, True, "When the sale happened."),
        _c("item_id", S, True, "Product."),
        _c("quantity", I, True, "Units sold, > 0; a negative quantity is a return of the customer's earlier "
           "sale of the item (settings.negative_quantity_returns)."),
        _c("unit_price", N, True, "Price of one unit, > 0."),
        _c("discount", N, False, "Discount on the whole line (amount, >= 0). Default 0."),
        _c("channel", S, False, "web, app, store or marketplace. Default: settings.default_channel."),
        _c("order_id", S, False, "Order number. Default: one order per customer and timestamp."),
        _c("line_id", S, False, "Line within the order. Default: position in the order."),
        _c("currency", S, False, "ISO 4217 code. Default: the configured currency."),
        _c("country", S, False, "Country."),
        _c("name", S, False, "Item name, for the catalogue (the most frequent one per item)."),
        _c("category", S, False, "Item category, for the catalogue (the most frequent one per item)."),
    ),
)

#: Every recognised raw source, in the order ingestion processes them (catalogue and keys first,
#: sales before the returns that refer to them).
SOURCES: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in (CATALOGUE, CUSTOMER_KEYS, ORDERS, STORE_RECEIPTS, TRANSACTIONS, RETURNS, BROWSE_EVENTS)
}

#: Columns that carry a raw customer key, per source, and the kind of key each holds. Their values
#: are hashed on the way in and never stored in clear (not even in quarantine records).
KEY_COLUMNS: dict[str, dict[str, KeyType]] = {
    "orders": {"account_id": KeyType.ACCOUNT, "email": KeyType.EMAIL, "device_id": KeyType.DEVICE},
    "store_receipts": {"loyalty_card": KeyType.LOYALTY_CARD},
    "transactions": {"customer_key": KeyType.CUSTOMER},
    "customer_keys": {
        "account_id": KeyType.ACCOUNT, "email": KeyType.EMAIL, "phone": KeyType.PHONE,
        "loyalty_card": KeyType.LOYALTY_CARD, "device_id": KeyType.DEVICE,
    },
}

#: Key types a browse event may name in its key_type column.
EVENT_KEY_TYPES: tuple[KeyType, ...] = (KeyType.ACCOUNT, KeyType.EMAIL, KeyType.DEVICE, KeyType.LOYALTY_CARD)

#: File extensions ingestion reads.
FILE_EXTENSIONS: tuple[str, ...] = (".parquet", ".csv", ".csv.gz", ".tsv")


class QuarantineReason(StrEnum):
    """Why a row did not enter the unified history. The values are what reports print."""

    MISSING_VALUE = "missing required value"
    BAD_TIMESTAMP = "unparseable timestamp"
    TIMESTAMP_OUT_OF_RANGE = "timestamp before earliest_timestamp or not finite"
    BAD_NUMBER = "not a number"
    NOT_FINITE = "not a finite number"
    OUT_OF_RANGE = "number out of range"
    NOT_WHOLE = "not a whole number"
    BAD_BOOLEAN = "unparseable true/false"
    NUL_BYTE = "NUL byte in a text field"
    FUTURE_TIMESTAMP = "timestamp in the future"
    NON_POSITIVE_PRICE = "negative or zero price on a sale"
    BAD_QUANTITY = "zero or negative quantity"
    NEGATIVE_AMOUNT = "negative discount, refund, price or line total"
    UNKNOWN_CHANNEL = "unknown channel"
    UNKNOWN_CURRENCY = "currency without a configured rate"
    DUPLICATE_LINE = "duplicate line id"
    DUPLICATE_ITEM = "duplicate item id in the file"
    ORPHAN_RETURN = "return references no known sale"
    RETURN_EXCEEDS_SALE = "return quantity exceeds the units sold"
    RETURN_BEFORE_SALE = "return booked before its sale"
    UNKNOWN_KEY_TYPE = "unknown key type"
    UNKNOWN_EVENT_TYPE = "unknown event type"
    NO_KEYS = "no customer key"
    # Rows the CSV reader could not split into the file's columns (the row is stored without values).
    WRONG_FIELD_COUNT = "wrong number of fields"
    BAD_ENCODING = "bytes not valid in the file's encoding"
    BAD_QUOTING = "unterminated or misplaced quote"
    LINE_TOO_LONG = "line longer than the reader's maximum"
    UNREADABLE_ROW = "row the CSV reader cannot parse"


#: Largest magnitude a number may have (amounts, quantities, ids exported as numbers): beyond any
#: retail figure (10^15 is ten times the world's yearly GDP in any currency) and small enough that
#: sums over billions of lines stay exact in BIGINT and finite in DOUBLE.
MAX_ABS_NUMBER = 1e15


# --- Unified tables (DuckDB), column names -------------------------------------------------------


class Col:
    """Column names of the unified tables and of the customer features."""

    CUSTOMER_ID = "customer_id"
    ORDER_KEY = "order_key"
    ORDER_ID = "order_id"
    LINE_ID = "line_id"
    LINE_KEY = "line_key"
    SOURCE = "source"
    CHANNEL = "channel"
    TS = "ts"
    RECORD_KEY = "record_key"
    IS_GUEST = "is_guest"
    ITEM_ID = "item_id"
    CATEGORY = "category"
    IS_PRODUCT = "is_product"
    QUANTITY = "quantity"
    UNIT_PRICE = "unit_price"
    DISCOUNT = "discount"
    GROSS_AMOUNT = "gross_amount"
    RETURNED_QUANTITY = "returned_quantity"
    REFUND_AMOUNT = "refund_amount"
    NET_AMOUNT = "net_amount"
    STORE_ID = "store_id"
    COUNTRY = "country"


class Feature:
    """Per-customer feature names (features.customer.customer_features)."""

    FREQUENCY = "frequency"
    RECENCY = "recency"
    T = "T"
    MONETARY_VALUE = "monetary_value"
    HISTORIC_CLV = "historic_clv"
    N_ORDERS = "n_orders"
    AVG_ORDER_VALUE = "avg_order_value"
    AVG_DAYS_BETWEEN_ORDERS = "avg_days_between_orders"
    DAYS_SINCE_LAST_ORDER = "days_since_last_order"
    TENURE_DAYS = "tenure_days"
    RETURN_RATE = "return_rate"
    GUEST_SHARE = "guest_share"
    N_CATEGORIES = "n_categories"
    FIRST_PURCHASE = "first_purchase"
    LAST_PURCHASE = "last_purchase"

    @staticmethod
    def channel_share(channel: str) -> str:
        """The name of the feature holding a channel's share of a customer's gross spend.

        Parameters
        ----------
        channel
            A channel (:class:`Channel`).

        Returns
        -------
        str
            ``share_<channel>``.
        """
        return f"share_{channel}"


#: Holdout columns added by the calibration/holdout helper.
class Holdout:
    FREQUENCY = "frequency_holdout"
    SPEND = "spend_holdout"
    MONETARY_VALUE = "monetary_value_holdout"
    DURATION = "duration_holdout"
