"""Synthetic omnichannel raw data drawn from known parameters, with the truth written next to it.

Why: every model in Rapport is proved on planted truth before it is trusted on real data. This
module writes the raw files a retailer would hand over (see :data:`features.schema.SOURCES`) and,
in ``_truth/``, the parameters and per-person latent values they were drawn from: BG/NBD purchases,
Gamma-Gamma spend, tastes and fragmented identities (the generative model is in :func:`generate`).
Everything is vectorised over flattened arrays (numpy + pyarrow), with no loop over persons, orders
or lines, so a million customers fit in one run. The data are a function of ``seed`` and the
arguments only: no clock is read.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.errors import ArgumentError
from features.schema import (
    BROWSE_EVENTS,
    CATALOGUE,
    CHANNELS,
    CUSTOMER_KEYS,
    ORDERS,
    RETURNS,
    STORE_RECEIPTS,
    Channel,
    EventType,
    KeyType,
    QuarantineReason,
    SourceSpec,
)

logger = logging.getLogger(__name__)

FileFormat = Literal["parquet", "csv"]
Progress = Callable[[str, float], None]

#: Folder under the output directory that holds the truth; ingestion ignores it.
TRUTH_DIR = "_truth"
#: Every person is observed for at least this long after their first purchase, so that even the
#: newest customers have a few months of history (and ``T`` is never tiny).
MIN_OBSERVATION_DAYS = 90
CURRENCY = "GBP"
#: Currency of the planted "no configured rate" rows.
FOREIGN_CURRENCY = "USD"
#: Channel value of the planted "unknown channel" rows.
UNKNOWN_CHANNEL = "fax"
#: Planted future timestamps lie at least this far after the last day.
FUTURE_OFFSET_DAYS = 400
#: Time zone of the timestamps written in the late CSV files (they carry their UTC offset).
LATE_FILE_TIMEZONE = "Europe/London"

# Id ranges. Sales ids are unique across orders and store receipts; planted bad rows and orphan
# references use ranges no sale ever uses, so they can never collide with a real line.
ORDER_ID_BASE = 100_000_000
RECEIPT_ID_BASE = 900_000_000
BAD_SALE_ID_BASE = 800_000_000
ORPHAN_SALE_ID_BASE = 700_000_000
RETURN_ID_BASE = 0
BAD_RETURN_ID_BASE = 800_000_000
_MAX_SALES_PER_SOURCE = 600_000_000
#: Rows per slice when building and writing the big tables: bounds memory, and is one row group.
_CHUNK_ROWS = 1_000_000

_WEB, _APP, _STORE, _MARKETPLACE = (CHANNELS.index(c) for c in
                                    (Channel.WEB, Channel.APP, Channel.STORE, Channel.MARKETPLACE))

#: Categories and a few product nouns each. Segment ``s`` prefers category ``s``.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Kitchen", ("Kettle", "Knife Set", "Chopping Board")),
    ("Tableware", ("Mug", "Dinner Plate", "Serving Bowl")),
    ("Home Decor", ("Cushion", "Vase", "Photo Frame")),
    ("Lighting", ("Table Lamp", "String Lights", "Candle")),
    ("Bedding", ("Duvet Cover", "Pillow", "Throw")),
    ("Bath", ("Towel", "Bath Mat", "Soap Dish")),
    ("Storage", ("Basket", "Storage Box", "Shelf")),
    ("Garden", ("Planter", "Watering Can", "Bird Feeder")),
    ("Outdoor", ("Picnic Blanket", "Lantern", "Cool Bag")),
    ("Toys", ("Jigsaw Puzzle", "Plush Bear", "Building Set")),
    ("Baby", ("Bib", "Rattle", "Cot Blanket")),
    ("Books", ("Cookbook", "Novel", "Atlas")),
    ("Stationery", ("Notebook", "Pen Set", "Planner")),
    ("Crafts", ("Yarn", "Paint Set", "Sewing Kit")),
    ("Party", ("Balloons", "Bunting", "Napkins")),
    ("Beauty", ("Lip Balm", "Hand Cream", "Make-up Brush")),
    ("Pet Supplies", ("Dog Bed", "Cat Toy", "Pet Bowl")),
    ("Sports", ("Yoga Mat", "Water Bottle", "Skipping Rope")),
    ("Electronics", ("Charger", "Headphones", "Speaker")),
    ("Food & Drink", ("Tea Selection", "Chocolate Box", "Biscuit Tin")),
)
_ADJECTIVES = ("Classic", "Vintage", "Retro", "Nordic", "Rustic", "Modern", "Mini", "Large", "Deluxe", "Eco")
_COLOURS = ("Red", "Blue", "Green", "Pink", "White", "Black", "Ivory", "Grey", "Mustard", "Teal")
#: Non-products: (item_id, name, price). Their lines are fees, never part of the order value z.
POSTAGE_ITEM = ("POST", "Postage", 3.95)
GIFTWRAP_ITEM = ("GIFTWRAP", "Gift wrapping", 2.50)
FEE_CATEGORY = "Fees"

_FIRST_NAMES = (
    "Jane", "John", "Olivia", "Oliver", "Amelia", "George", "Isla", "Harry", "Ava", "Noah", "Mia",
    "Jack", "Emily", "Leo", "Grace", "Arthur", "Sophia", "Oscar", "Lily", "Charlie", "Freya", "Muhammad",
    "Ella", "Thomas", "Priya", "Aisha", "Chen", "Sean", "Niamh", "Tomasz",
)
_LAST_NAMES = (
    "Doe", "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel",
    "Robinson", "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Khan",
    "Lewis", "Clarke", "Jackson", "Wood", "Murphy", "Kelly", "Nowak", "Singh", "Hughes", "Edwards",
)
#: Reserved example domains (RFC 2606), so no generated address can belong to anyone.
_DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "post.example")
_EMAIL_TAGS = ("shop", "orders", "news")
_COUNTRIES = ("GB", "IE", "FR", "DE")
_COUNTRY_SHARES = (0.90, 0.05, 0.03, 0.02)
#: Dirichlet concentration of a person's preference over (web, app, store, marketplace).
_CHANNEL_CONCENTRATION = {Channel.WEB: 2.0, Channel.APP: 1.0, Channel.STORE: 1.5, Channel.MARKETPLACE: 0.5}


@dataclass(frozen=True)
class TrueParameters:
    """The parameters the purchase and spend processes are drawn from (written to params.json).

    Time is in days: ``lambda ~ Gamma(r, rate=alpha)`` purchases per day, so the default mean rate
    is 0.01 a day (3.65 a year). ``p ~ Beta(a, b)`` is the drop-out probability after each repeat
    purchase (mean 1/6). Order value ``z ~ Gamma(p, rate=nu)``, ``nu ~ Gamma(q, rate=gamma)``.
    """

    r: float = 0.6
    alpha: float = 60.0
    a: float = 0.8
    b: float = 4.0
    p: float = 6.0
    q: float = 4.0
    gamma: float = 25.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"TrueParameters.{name} must be a positive number, got {value!r}")
        if self.q <= 1:
            raise ValueError(f"TrueParameters.q must exceed 1 for a finite mean order value, got {self.q}")

    @property
    def mean_order_value(self) -> float:
        """E[z] = p * gamma / (q - 1) (Fader & Hardie 2013, eq. 4 with the population mean of 1/nu).

        Returns
        -------
        float
            The population's mean order value (value of an order's product lines, base currency).
        """
        return self.p * self.gamma / (self.q - 1)


@dataclass(frozen=True)
class Behaviour:
    """Everything about the data that is not a model parameter: shares, rates and sizes.

    The defaults make 1,000,000 customers give about ten million order lines (orders + store
    receipts) and about fourteen million rows over all files.
    """

    account_share: float = 0.70  # persons with a web/app account
    app_share_of_account_holders: float = 0.80  # account holders who installed the app
    card_share: float = 0.50  # persons with a loyalty card
    card_registered_share: float = 0.95  # card holders whose card is tied to their e-mail
    phone_share_of_registrations: float = 0.90
    guest_share_of_account_web_orders: float = 0.20  # account holders who check out as guest
    email_variant_share: float = 0.25  # orders whose e-mail is spelled differently
    extra_lines_mean: float = 1.2  # product lines per order = 1 + Poisson(this)
    extra_quantity_mean: float = 0.3  # units per line = 1 + Poisson(this)
    favourite_share: float = 0.35  # lines that repeat one of the person's favourite items
    segment_share: float = 0.45  # lines drawn from the person's taste segment
    zipf_exponent: float = 1.0
    inactive_item_share: float = 0.04
    free_delivery_threshold: float = 30.0  # web/app orders below this pay postage
    giftwrap_share: float = 0.02  # of web/app orders
    home_store_share: float = 0.85
    return_share: float = 0.04  # of product lines
    full_return_share: float = 0.70  # of returns of multi-unit lines
    max_return_days: int = 30
    events_per_order: float = 1.0  # browse events per order of an account holder
    same_item_event_share: float = 0.5
    add_to_cart_share: float = 0.25
    late_share: float = 0.002  # of orders delivered in the late CSV files instead
    bad_row_share: float = 0.001  # of lines, planted as bad rows

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 0:
                raise ValueError(f"Behaviour.{name} must not be negative, got {value!r}")
            if name.endswith("_share") and value > 1:
                raise ValueError(f"Behaviour.{name} is a share and must be at most 1, got {value!r}")
        if self.favourite_share + self.segment_share > 1:
            raise ValueError("Behaviour.favourite_share + segment_share must be at most 1")


@dataclass(frozen=True)
class GenerationSummary:
    """What :func:`generate` wrote: paths, counts and how long it took."""

    output_dir: Path
    truth_dir: Path
    files: dict[str, Path]
    persons: int
    orders: int  # orders and store receipts, including those in the late files
    lines: int  # sold lines in orders and store receipts, including valid late rows
    returns: int
    events: int
    customer_keys: int
    late_rows: int  # valid rows delivered in the late files
    bad_rows: int
    rows_written: int  # every row of every raw file (truth excluded)
    seconds: float

    def counts(self) -> dict[str, int]:
        """Every count by name, in the order a report lists them.

        Returns
        -------
        dict[str, int]
            Persons, orders, lines, returns, browse events, customer keys, late rows, bad rows and
            rows written.
        """
        return {
            "persons": self.persons, "orders": self.orders, "lines": self.lines, "returns": self.returns,
            "browse events": self.events, "customer keys": self.customer_keys, "late rows": self.late_rows,
            "bad rows": self.bad_rows, "rows written": self.rows_written,
        }


# --- Shapes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A kind of retailer's history: its span, the parameters it is drawn from and its seasonality.

    ``seasonality`` is the amplitude A of a yearly cycle of every person's purchase intensity,
    lambda (1 + A cos(2 pi (day of year - ``peak_day_of_year``) / 365.25)), first purchases
    included (0: none; below 1, so the intensity stays positive). Seasonal draws are made in
    *operational time* (the integral of the cycle) and mapped back to the calendar: a Poisson
    process in operational time is an inhomogeneous one in calendar time with that intensity, so the
    BG/NBD truth holds in operational time.
    """

    name: str
    description: str
    start: date
    end: date
    params: TrueParameters = TrueParameters()
    behaviour: Behaviour = Behaviour()
    seasonality: float = 0.0
    peak_day_of_year: int = 335  # early December

    def __post_init__(self) -> None:
        if not 0 <= self.seasonality < 1:
            raise ValueError(f"Shape {self.name!r}: seasonality must be in [0, 1), got {self.seasonality!r}")
        if not 1 <= self.peak_day_of_year <= 366:
            raise ValueError(f"Shape {self.name!r}: peak_day_of_year must be in 1..366, got {self.peak_day_of_year!r}")


#: The shape :func:`generate` and ``rapport data generate`` draw unless told otherwise.
DEFAULT_SHAPE = "default"

#: Every shape by name (``rapport data generate --shape NAME``).
SHAPES: dict[str, Shape] = {shape.name: shape for shape in (
    Shape(
        DEFAULT_SHAPE,
        "three years of a homeware retailer across web, app, stores and marketplaces; a repeat "
        "purchase about every 100 days, a sixth of the customers drop out after each",
        date(2023, 1, 1), date(2025, 12, 31),
    ),
    Shape(
        "grocery",
        "four months of weekly baskets: a purchase about every 7 days (median gap), most customers "
        "repeat, large baskets of favourite items",
        date(2025, 9, 1), date(2025, 12, 31),
        params=TrueParameters(r=6.0, alpha=60.0, a=1.0, b=40.0, p=8.0, q=5.0, gamma=25.0),
        behaviour=Behaviour(extra_lines_mean=7.0, favourite_share=0.55, segment_share=0.30,
                            free_delivery_threshold=40.0, return_share=0.01, events_per_order=0.3),
    ),
    Shape(
        "fashion",
        "two years of a fashion retailer: rare repeat purchases, a strong yearly season peaking in "
        "December (nine times the intensity of early June), many returns",
        date(2024, 1, 1), date(2025, 12, 31),
        params=TrueParameters(r=0.25, alpha=250.0, a=2.0, b=2.0, p=5.0, q=4.0, gamma=40.0),
        behaviour=Behaviour(extra_lines_mean=0.8, return_share=0.25, full_return_share=0.9),
        seasonality=0.8,
    ),
    Shape(
        "one-year",
        "the default retailer observed for one year only",
        date(2025, 1, 1), date(2025, 12, 31),
    ),
)}


def shape_named(name: str) -> Shape:
    """The shape called ``name``.

    Parameters
    ----------
    name
        A key of :data:`SHAPES` (``default``, ``grocery``, ``fashion``, ``one-year``).

    Returns
    -------
    Shape
        The shape's span, parameters, behaviour and seasonality.

    Raises
    ------
    ValueError
        An unknown name; the message lists the known ones.
    """
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown shape {name!r}: expected one of {', '.join(SHAPES)}") from None


# --- Bad rows -------------------------------------------------------------------------------------

#: Kinds of planted bad row and the quarantine reason ingestion must give each.
BAD_ROW_REASONS: dict[str, QuarantineReason] = {
    "unparseable_timestamp": QuarantineReason.BAD_TIMESTAMP,
    "zero_quantity": QuarantineReason.BAD_QUANTITY,
    "negative_price": QuarantineReason.NON_POSITIVE_PRICE,
    "zero_price": QuarantineReason.NON_POSITIVE_PRICE,
    "unknown_channel": QuarantineReason.UNKNOWN_CHANNEL,
    "future_timestamp": QuarantineReason.FUTURE_TIMESTAMP,
    "duplicate_line": QuarantineReason.DUPLICATE_LINE,
    "unknown_currency": QuarantineReason.UNKNOWN_CURRENCY,
    "orphan_return": QuarantineReason.ORPHAN_RETURN,
    "missing_value": QuarantineReason.MISSING_VALUE,
}
_SALE_KINDS = ("unparseable_timestamp", "zero_quantity", "negative_price", "zero_price", "future_timestamp",
               "duplicate_line", "unknown_currency", "missing_value")
#: Which kinds each late file carries (a store receipt has no channel, a return no price).
BAD_ROW_KINDS: dict[str, tuple[str, ...]] = {
    ORDERS.name: (*_SALE_KINDS, "unknown_channel"),
    STORE_RECEIPTS.name: _SALE_KINDS,
    RETURNS.name: ("unparseable_timestamp", "zero_quantity", "future_timestamp", "unknown_currency",
                   "orphan_return", "missing_value"),
}
_UNPARSEABLE_TIMESTAMPS = ("2024-13-45T10:00:00+00:00", "not a date", "31/02/2024 25:61")


def late_file_name(source: str) -> str:
    """Name of the CSV that carries a source's late rows and planted bad rows.

    Parameters
    ----------
    source
        A source name (``orders``, ``store_receipts``, ``returns``).

    Returns
    -------
    str
        ``<source>_late.csv``.
    """
    return f"{source}_late.csv"


# --- Public entry point ---------------------------------------------------------------------------


def generate(
    output_dir: Path,
    n_customers: int,
    seed: int,
    *,
    shape: str | Shape = DEFAULT_SHAPE,
    start: date | None = None,
    end: date | None = None,
    file_format: FileFormat = "parquet",
    params: TrueParameters | None = None,
    behaviour: Behaviour | None = None,
    bad_rows: bool = True,
    progress: Progress | None = None,
) -> GenerationSummary:
    """Write raw omnichannel files for ``n_customers`` persons and the truth they came from.

    ``shape`` (a name of :data:`SHAPES` or a :class:`Shape`) gives the span, parameters, behaviour
    and seasonality; ``start``, ``end``, ``params`` and ``behaviour`` override the shape's.
    ``start`` and ``end`` are the first and last day of the history (``end`` included); every
    timestamp lies in ``[start, end + 1 day)`` except the planted future ones. Raw files go to
    ``output_dir`` (``orders``, ``store_receipts``, ``returns``, ``catalogue``, ``browse_events``,
    ``customer_keys`` as Parquet or CSV; with ``bad_rows`` also ``*_late.csv``), the truth to
    ``output_dir/_truth``. Same arguments, same bytes.

    The generative model, per person:

    * first purchase uniform over ``[start, end + 1 day - MIN_OBSERVATION_DAYS)``;
    * purchase rate ``lambda ~ Gamma(r, rate=alpha)`` per day and drop-out probability
      ``p ~ Beta(a, b)``: the BG/NBD model (Fader, Hardie & Lee 2005, section 3, assumptions i-v),
      drawn exactly as ``lifetimes.generate_data.beta_geometric_nbd_model`` draws it: arrivals form
      a Poisson process, and after each *repeat* purchase the person drops out with probability ``p``;
    * spend per order ``z ~ Gamma(p, rate=nu)`` with ``nu ~ Gamma(q, rate=gamma)``: the Gamma-Gamma
      model (Fader & Hardie 2013, eq. 1-2), so the mean order value is ``p * gamma / (q - 1)``.
      ``z`` is the value of an order's *product* lines; postage and gift wrap come on top;
    * a taste segment, 3-5 favourite items and Zipf-like item popularity, so recommenders have signal;
    * a channel preference and fragmented identities (e-mail in assorted spellings, account, app
      device, loyalty card) that identity resolution has to join back together.

    Parameters
    ----------
    output_dir
        Folder for the raw files (created when missing).
    n_customers
        Number of persons to draw (>= 1).
    seed
        Seed of every random stream.
    shape
        A name of :data:`SHAPES` or a :class:`Shape`.
    start, end
        First and last day of the history, ``end`` included; ``None``: the shape's.
    file_format
        ``"parquet"`` or ``"csv"`` for the main files (late files are always CSV).
    params, behaviour
        Override the shape's :class:`TrueParameters` and :class:`Behaviour`.
    bad_rows
        Write the late CSV files with planted bad rows (:data:`BAD_ROW_REASONS`).
    progress
        Called with a stage name and the fraction done.

    Returns
    -------
    GenerationSummary
        Paths written, counts and seconds taken.

    Raises
    ------
    ArgumentError
        A span of ``MIN_OBSERVATION_DAYS`` days or fewer.
    ValueError
        An unknown shape, ``n_customers`` not a whole number >= 1, or an unknown format.
    FileExistsError
        ``output_dir`` already holds the files in the other format.
    """
    started = time.perf_counter()
    output_dir = Path(output_dir)
    chosen = shape if isinstance(shape, Shape) else shape_named(shape)
    start = chosen.start if start is None else start
    end = chosen.end if end is None else end
    params = chosen.params if params is None else params
    behaviour = chosen.behaviour if behaviour is None else behaviour
    horizon = _Horizon.from_dates(start, end, seasonality=chosen.seasonality, peak_day_of_year=chosen.peak_day_of_year)
    _check_arguments(output_dir, n_customers, file_format)
    report = _progress_reporter(progress)
    rngs = _random_streams(seed)
    world = _draw_world(rngs, n_customers, horizon, params, behaviour, late_files=bad_rows, report=report)

    output_dir.mkdir(parents=True, exist_ok=True)
    writer = _Writer(output_dir, file_format)
    late_parts = _write_main_files(writer, world, rngs if bad_rows else None, behaviour, report)
    bad_counts: dict[str, dict[str, int]] = {}
    late_valid: dict[str, int] = {}
    if bad_rows:
        report("writing late files", 0.90)
        donors = [part.templates for name, part in late_parts.items() if name != RETURNS.name]
        for source, part in late_parts.items():
            frame, kinds = _late_frame(rngs[f"bad_{source}"], source, part, donors, horizon)
            name = late_file_name(source)
            writer.write_text(name, frame)
            bad_counts[name] = kinds
            late_valid[name] = part.valid.num_rows

    report("writing truth", 0.95)
    truth_dir = output_dir / TRUTH_DIR
    truth_dir.mkdir(exist_ok=True)
    counts = world.counts()
    _write_truth(truth_dir, world, seed=seed, n_customers=n_customers, horizon=horizon, file_format=file_format,
                 shape=chosen.name, params=params, behaviour=behaviour, counts=counts, bad_counts=bad_counts,
                 late_valid=late_valid)
    report("done", 1.0)
    seconds = time.perf_counter() - started
    logger.info("generated %d persons, %d sales lines, %d rows in %.1f s into %s", counts["persons"],
                counts["lines"], writer.rows, seconds, output_dir)
    return GenerationSummary(
        output_dir=output_dir, truth_dir=truth_dir, files=dict(writer.files), persons=counts["persons"],
        orders=counts["orders"], lines=counts["lines"], returns=counts["returns"], events=counts["browse_events"],
        customer_keys=counts["customer_keys"], late_rows=sum(late_valid.values()),
        bad_rows=sum(sum(_reason_counts(kinds).values()) for kinds in bad_counts.values()),
        rows_written=writer.rows, seconds=seconds,
    )


@dataclass
class _World:
    """Everything drawn, before anything is written."""

    persons: _Persons
    identities: _Identities
    catalogue: _Catalogue
    taste: _Taste
    orders: _Orders
    lines: _Lines
    returns: _Returns
    events: pa.Table
    registry: pa.Table
    late: _Late

    def counts(self) -> dict[str, int]:
        return {
            "persons": self.persons.n,
            "orders": int(self.orders.n),
            "orders_online": int((~self.orders.is_store).sum()),
            "store_receipts": int(self.orders.is_store.sum()),
            "lines": int(self.lines.order.shape[0]),
            "returns": int(self.returns.line.shape[0]),
            "browse_events": self.events.num_rows,
            "customer_keys": self.registry.num_rows,
            "catalogue_items": self.catalogue.n,
            "persons_with_unregistered_card": int((self.identities.has_card & ~self.identities.card_registered).sum()),
        }


def _draw_world(rngs: dict[str, np.random.Generator], n_customers: int, horizon: _Horizon, params: TrueParameters,
                behaviour: Behaviour, *, late_files: bool, report: Progress) -> _World:
    """Draw persons, catalogue, orders, lines, returns, events and registrations, in that order."""
    report("persons", 0.0)
    persons = _draw_persons(rngs["persons"], n_customers, horizon, params)
    identities = _draw_identities(rngs["identities"], persons, behaviour)
    report("catalogue", 0.05)
    catalogue = _draw_catalogue(rngs["catalogue"], n_customers, behaviour)
    taste = _draw_taste(rngs["taste"], persons.n, catalogue)
    report("orders", 0.10)
    orders = _draw_orders(rngs["orders"], persons, identities, horizon, params, behaviour)
    report("lines", 0.20)
    lines = _draw_lines(rngs["lines"], orders, taste, catalogue, behaviour)
    report("returns", 0.35)
    returns = _draw_returns(rngs["returns"], lines, orders, horizon, behaviour)
    report("browse events", 0.40)
    events = _browse_events_table(rngs["events"], lines, orders, identities, catalogue, horizon, behaviour)
    registry = _customer_keys_table(rngs["registry"], persons, identities, orders, behaviour)
    report("late deliveries", 0.45)
    if late_files:
        late = _pick_late(rngs["late"], orders, lines, returns, behaviour)
    else:  # no late files: every row stays in the main files
        late = _Late(np.zeros(orders.n, dtype=bool), np.zeros(returns.line.shape[0], dtype=bool))
    return _World(persons, identities, catalogue, taste, orders, lines, returns, events, registry, late)


def _write_main_files(writer: _Writer, world: _World, rngs: dict[str, np.random.Generator] | None,
                      behaviour: Behaviour, report: Progress) -> dict[str, _LatePart]:
    """Write the six main files; with ``rngs`` also set aside what each late file needs.

    The big tables are built and written a slice at a time, so no table of ten million rows is ever
    whole in memory; a late file needs only its own rows and the few on-time rows its bad rows copy.
    """
    report("writing catalogue and key registrations", 0.50)
    writer.write(CATALOGUE.name, _catalogue_table(world.catalogue))
    writer.write(CUSTOMER_KEYS.name, world.registry)
    report("writing browse events", 0.55)
    writer.write(BROWSE_EVENTS.name, world.events)
    tables = _Tables(world.lines, world.orders, world.returns, world.identities, world.catalogue)
    late_parts: dict[str, _LatePart] = {}
    for step, source in enumerate((ORDERS.name, STORE_RECEIPTS.name, RETURNS.name)):
        report(f"writing {source}", 0.60 + 0.10 * step)
        rows = tables.rows(source)
        is_late = world.late.row_mask(source, world.lines, world.orders)
        on_time = rows[~is_late]
        chunks = np.array_split(on_time, max(1, -(-on_time.shape[0] // _CHUNK_ROWS)))
        writer.write_chunks(source, (tables.build(source, chunk) for chunk in chunks))
        if rngs is not None:
            late_parts[source] = _LatePart.sample(rngs[f"bad_{source}"], source, tables, rows, is_late, behaviour)
    return late_parts


# --- Arguments, randomness, progress ----------------------------------------------------------------


@dataclass(frozen=True)
class _Horizon:
    """The observed period in epoch seconds: ``[start 00:00 UTC, end + 1 day 00:00 UTC)``, and its
    seasonal cycle (:class:`Shape`)."""

    start: date
    end: date
    start_s: int
    end_s: int
    seasonality: float = 0.0
    peak_day_of_year: int = 335

    def operational(self, day: np.ndarray | float) -> np.ndarray:
        """U(d) = integral over [0, d] of 1 + A cos(2 pi (x + x0 - peak) / 365.25) dx, x0 the start's
        day of the year: the operational time of calendar day d (days after the start)."""
        day = np.asarray(day, dtype=np.float64)
        if self.seasonality == 0:
            return day
        omega = 2 * np.pi / 365.25
        offset = self.start.timetuple().tm_yday - self.peak_day_of_year
        return day + self.seasonality / omega * (np.sin(omega * (day + offset)) - np.sin(omega * offset))

    def calendar(self, operational: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`operational` (U is strictly increasing for A < 1), read off a grid of
        one point per minute."""
        if self.seasonality == 0:
            return operational
        grid = np.linspace(0.0, float(self.days), self.days * 1_440 + 1)
        return np.interp(operational, self.operational(grid), grid)

    @classmethod
    def from_dates(cls, start: date, end: date, *, seasonality: float = 0.0, peak_day_of_year: int = 335) -> _Horizon:
        if not isinstance(start, date) or not isinstance(end, date):
            raise TypeError(f"start and end must be dates, got {start!r} and {end!r}")
        days = (end - start).days + 1
        if days <= MIN_OBSERVATION_DAYS:
            raise ArgumentError(
                f"the history from start={start} to end={end} covers {days} days; it must cover more than "
                f"{MIN_OBSERVATION_DAYS} days (every person is observed that long after their first purchase)"
            )
        start_s = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp())
        return cls(start, end, start_s, start_s + days * 86_400, seasonality, peak_day_of_year)

    @property
    def days(self) -> int:
        return (self.end_s - self.start_s) // 86_400

    @property
    def end_exclusive(self) -> datetime:
        return datetime.fromtimestamp(self.end_s, tz=UTC)


def _check_arguments(output_dir: Path, n_customers: int, file_format: str) -> None:
    if isinstance(n_customers, bool) or not isinstance(n_customers, (int, np.integer)) or n_customers < 1:
        raise ValueError(f"n_customers must be a whole number >= 1, got {n_customers!r}")
    if file_format not in ("parquet", "csv"):
        raise ValueError(f"file_format must be 'parquet' or 'csv', got {file_format!r}")
    other = ".csv" if file_format == "parquet" else ".parquet"
    sources = (ORDERS, STORE_RECEIPTS, RETURNS, CATALOGUE, BROWSE_EVENTS, CUSTOMER_KEYS)
    clashes = [output_dir / f"{s.name}{other}" for s in sources if (output_dir / f"{s.name}{other}").exists()]
    if clashes:
        # Both formats side by side would be ingested twice.
        raise FileExistsError(
            f"{output_dir} already holds {', '.join(p.name for p in clashes)}; writing {file_format} files next to "
            f"them would make ingestion read every sale twice. Use an empty directory."
        )


_STREAMS = ("persons", "identities", "catalogue", "taste", "orders", "lines", "returns", "events", "registry",
            "late", f"bad_{ORDERS.name}", f"bad_{STORE_RECEIPTS.name}", f"bad_{RETURNS.name}")


def _random_streams(seed: int) -> dict[str, np.random.Generator]:
    """One independent generator per stage, so changing one stage does not reshuffle the others."""
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children, strict=True)}


def _progress_reporter(progress: Progress | None) -> Progress:
    def report(stage: str, fraction: float) -> None:
        logger.debug("generate: %s (%.0f%%)", stage, 100 * fraction)
        if progress is not None:
            progress(stage, fraction)

    return report


# --- Vectorised helpers ---------------------------------------------------------------------------


def _segment_starts(counts: np.ndarray) -> np.ndarray:
    """Offset of each segment in the flattened array of segments with these lengths."""
    return np.cumsum(counts) - counts


def _within_segment_index(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., count-1 for every segment, flattened."""
    total = int(counts.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(_segment_starts(counts), counts)


def _take(values: pa.Array | list[str] | tuple[str, ...], indices: np.ndarray,
          valid: np.ndarray | None = None) -> pa.Array:
    """``values[indices]`` as an Arrow array, null where ``valid`` is False."""
    values = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, type=pa.string())
    mask = None if valid is None else ~np.asarray(valid, dtype=bool)
    return pc.take(values, pa.array(np.asarray(indices, dtype=np.int64), mask=mask))


def _join(*parts: pa.Array | str) -> pa.Array:
    """Element-wise string concatenation of arrays and scalars."""
    return pc.binary_join_element_wise(*parts, "")


def _digits(numbers: np.ndarray, width: int) -> pa.Array:
    """Whole numbers as zero-padded decimal strings."""
    return pc.utf8_lpad(pc.cast(pa.array(np.asarray(numbers, dtype=np.int64)), pa.string()), width=width,
                        padding="0")


def _distinct_numbers(rng: np.random.Generator, n: int, upper: int) -> np.ndarray:
    """``n`` distinct random whole numbers below ``upper`` (keys must never collide across persons)."""
    if n > upper:
        raise ValueError(f"cannot draw {n} distinct numbers below {upper}")
    return rng.choice(upper, size=n, replace=False)


def _hex_ids(rng: np.random.Generator, n: int) -> pa.Array:
    """Random UUID-shaped ids (8-4-4-4-12 hex digits), built without a loop over rows."""
    lut = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    nibbles = rng.integers(0, 16, size=(n, 32), dtype=np.uint8)
    chars = lut[nibbles]
    dash = np.full((n, 1), ord("-"), dtype=np.uint8)
    parts = (chars[:, :8], dash, chars[:, 8:12], dash, chars[:, 12:16], dash, chars[:, 16:20], dash, chars[:, 20:])
    text = np.ascontiguousarray(np.hstack(parts)).view("S36").ravel()
    return pc.cast(pa.array(text, type=pa.binary()), pa.string())


class _StackedSampler:
    """Draw items from one of several discrete distributions, all groups in one vectorised call.

    Group ``g``'s cumulative distribution is stored shifted by ``g`` in one flat sorted array, so a
    single ``searchsorted(flat, g + u)`` samples every row from its own group's distribution.
    """

    def __init__(self, weights: np.ndarray) -> None:
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        totals = weights.sum(axis=1, keepdims=True)
        if np.any(totals <= 0):
            raise ValueError("every group of a sampler needs some positive weight")
        cdf = np.cumsum(weights / totals, axis=1)
        cdf[:, -1] = 1.0
        self.n_items = weights.shape[1]
        self._flat = (cdf + np.arange(weights.shape[0])[:, None]).ravel()

    def sample(self, group: np.ndarray, u: np.ndarray) -> np.ndarray:
        # Cap u below 1 so that g + u never rounds up into the next group's range.
        position = np.asarray(group, dtype=np.float64) + np.minimum(u, 1.0 - 1e-9)
        flat = np.searchsorted(self._flat, position, side="right")
        return (flat - np.asarray(group, dtype=np.int64) * self.n_items).astype(np.int32)


# --- Persons: BG/NBD latent values ----------------------------------------------------------------


@dataclass
class _Persons:
    n: int
    first_day: np.ndarray  # days after start (float), in operational time (see Shape)
    window: np.ndarray  # operational days from first purchase to the end of the history
    lam: np.ndarray
    p_drop: np.ndarray
    nu: np.ndarray
    n_arrivals: np.ndarray  # N: Poisson arrivals in the window
    n_repeat: np.ndarray  # k = min(J, N): repeat purchases made
    alive: np.ndarray  # N < J: the person had not dropped out by the end


def _draw_persons(rng: np.random.Generator, n: int, horizon: _Horizon, params: TrueParameters) -> _Persons:
    """Latent BG/NBD and Gamma-Gamma values per person and how many repeat purchases they make.

    lifetimes' simulator walks each person's exponential inter-purchase times and after every repeat
    purchase flips a coin with probability p to drop out. Equivalently: the number of repeat
    purchases a person would make before dropping out is J ~ Geometric(p) on {1, 2, ...}; the
    Poisson process has N ~ Poisson(lambda * W) arrivals in the window W; the person makes
    k = min(J, N) of them and is still alive at the end iff N < J.
    """
    # Drawn in operational time (calendar time without a season): the first purchase lies before
    # the last MIN_OBSERVATION_DAYS calendar days either way.
    first_day = rng.uniform(0.0, float(horizon.operational(horizon.days - MIN_OBSERVATION_DAYS)), size=n)
    window = float(horizon.operational(horizon.days)) - first_day
    lam = rng.gamma(params.r, 1.0 / params.alpha, size=n)
    p_drop = rng.beta(params.a, params.b, size=n)
    # Beta draws can underflow to exactly 0 for tiny a; numpy's geometric needs p > 0.
    n_before_dropout = rng.geometric(np.maximum(p_drop, 1e-300))
    n_arrivals = rng.poisson(lam * window)
    nu = rng.gamma(params.q, 1.0 / params.gamma, size=n)
    n_repeat = np.minimum(n_before_dropout, n_arrivals)
    return _Persons(n, first_day, window, lam, p_drop, nu, n_arrivals, n_repeat, n_arrivals < n_before_dropout)


# --- Identities -------------------------------------------------------------------------------------


@dataclass
class _Identities:
    """Each person's raw keys. Arrays have one entry per person; keys a person lacks are null."""

    has_account: np.ndarray
    has_device: np.ndarray
    has_card: np.ndarray
    card_registered: np.ndarray
    email_variants: pa.Array  # n * N_EMAIL_VARIANTS: variant v of person i at v * n + i
    account_id: pa.Array
    device_id: pa.Array
    loyalty_card: pa.Array
    phone_national: pa.Array  # ten digits after the +44, e.g. 7700900123
    channel_cdf: np.ndarray  # (n, 3) cumulative preference over web, app, store (marketplace is the rest)
    country: np.ndarray
    home_store: np.ndarray
    n_stores: int

    @property
    def email(self) -> pa.Array:
        """Canonical e-mail: lower case, no whitespace, no +tag."""
        return self.email_variants.slice(0, len(self.has_account))


N_EMAIL_VARIANTS = 5


def _draw_identities(rng: np.random.Generator, persons: _Persons, behaviour: Behaviour) -> _Identities:
    n = persons.n
    has_account = rng.random(n) < behaviour.account_share
    has_device = has_account & (rng.random(n) < behaviour.app_share_of_account_holders)
    has_card = rng.random(n) < behaviour.card_share
    card_registered = has_card & (rng.random(n) < behaviour.card_registered_share)
    email_variants = _email_variants(rng, n)
    account_id = _join("AC", _digits(_distinct_numbers(rng, n, 10**9), 9))
    device_id = _hex_ids(rng, n)
    loyalty_card = _join("6337", _digits(_distinct_numbers(rng, n, 10**12), 12))
    phone_national = _join("7", _digits(_distinct_numbers(rng, n, 10**9), 9))
    null = pa.scalar(None, pa.string())
    n_stores = int(np.clip(n // 5_000, 5, 150))
    return _Identities(
        has_account=has_account,
        has_device=has_device,
        has_card=has_card,
        card_registered=card_registered,
        email_variants=email_variants,
        account_id=pc.if_else(pa.array(has_account), account_id, null),
        device_id=pc.if_else(pa.array(has_device), device_id, null),
        loyalty_card=pc.if_else(pa.array(has_card), loyalty_card, null),
        phone_national=phone_national,
        channel_cdf=_channel_preferences(rng, has_device, has_card),
        country=rng.choice(len(_COUNTRIES), size=n, p=_COUNTRY_SHARES).astype(np.int8),
        home_store=rng.integers(0, n_stores, size=n).astype(np.int32),
        n_stores=n_stores,
    )


def _email_variants(rng: np.random.Generator, n: int) -> pa.Array:
    """Five spellings of each person's address; variant 0 is the canonical one.

    Real checkouts see "Jane.Doe+shop@Example.com " and "jane.doe@example.com" for one person:
    identity resolution must lower-case, strip and drop the +tag to join them.
    """
    first = _take(_FIRST_NAMES, rng.integers(0, len(_FIRST_NAMES), n))
    last = _take(_LAST_NAMES, rng.integers(0, len(_LAST_NAMES), n))
    # A unique number per person keeps addresses distinct without encoding the person id.
    token = pc.cast(pa.array(rng.permutation(n).astype(np.int64) + 1), pa.string())
    domain = _take(_DOMAINS, rng.integers(0, len(_DOMAINS), n))
    tag = _take(_EMAIL_TAGS, rng.integers(0, len(_EMAIL_TAGS), n))
    first_l, last_l, domain_cap = pc.utf8_lower(first), pc.utf8_lower(last), pc.utf8_capitalize(domain)
    canonical = _join(first_l, ".", last_l, token, "@", domain)
    variants = (
        canonical,
        _join(first, ".", last, token, "@", domain_cap),
        _join(first_l, ".", last_l, token, "+", tag, "@", domain),
        _join("  ", pc.utf8_upper(canonical)),
        _join(first, ".", last, token, "+", tag, "@", domain_cap, " "),
    )
    assert len(variants) == N_EMAIL_VARIANTS
    return pa.concat_arrays(variants)


def _channel_preferences(rng: np.random.Generator, has_device: np.ndarray, has_card: np.ndarray) -> np.ndarray:
    """Cumulative channel preference per person (web, app, store; marketplace is the remainder).

    Only app users (account + device) order in the app and only card holders shop in store, so
    that every sale carries a key; the share they cannot use goes to the web shop.
    """
    concentration = [_CHANNEL_CONCENTRATION[Channel(c)] for c in CHANNELS]
    share = rng.dirichlet(concentration, size=len(has_device))
    share[:, _WEB] += np.where(has_device, 0.0, share[:, _APP]) + np.where(has_card, 0.0, share[:, _STORE])
    share[:, _APP] = np.where(has_device, share[:, _APP], 0.0)
    share[:, _STORE] = np.where(has_card, share[:, _STORE], 0.0)
    return np.cumsum(share, axis=1)[:, :3]


# --- Catalogue and taste --------------------------------------------------------------------------


@dataclass
class _Catalogue:
    n: int
    n_products: int  # products are items 0..n_products-1; fees follow
    item_id: pa.Array
    name: pa.Array
    category: np.ndarray  # index into CATEGORIES, or len(CATEGORIES) for fees
    price: np.ndarray
    active: np.ndarray
    popularity: np.ndarray  # Zipf weight, 0 for fees
    by_category: _StackedSampler  # draws a product of a given category by popularity

    @property
    def postage(self) -> int:
        return self.n_products

    @property
    def giftwrap(self) -> int:
        return self.n_products + 1

    @property
    def category_names(self) -> tuple[str, ...]:
        return (*(c for c, _ in CATEGORIES), FEE_CATEGORY)


def catalogue_size(n_customers: int) -> int:
    """Products in the catalogue: a small shop for small tests, up to 5,000 products.

    Parameters
    ----------
    n_customers
        Number of persons drawn.

    Returns
    -------
    int
        ``n_customers // 50`` within [200, 5,000].
    """
    return max(200, min(5_000, n_customers // 50))


def _draw_catalogue(rng: np.random.Generator, n_customers: int, behaviour: Behaviour) -> _Catalogue:
    """Products in ~20 categories with lognormal prices and Zipf popularity, plus two fee items."""
    n_products = catalogue_size(n_customers)
    n_categories = len(CATEGORIES)
    category = rng.permutation(np.arange(n_products) % n_categories).astype(np.int16)
    typical_price = np.exp(rng.uniform(np.log(3.0), np.log(40.0), size=n_categories))
    raw_price = typical_price[category] * np.exp(rng.normal(0.0, 0.5, size=n_products))
    price = np.maximum(np.round(raw_price * 2) / 2 - 0.01, 0.49)  # shelf prices end in .49 / .99
    rank = rng.permutation(n_products)
    popularity = 1.0 / (rank + 1.0) ** behaviour.zipf_exponent
    active = rng.random(n_products) >= behaviour.inactive_item_share

    nouns = [f"{noun}" for _, ns in CATEGORIES for noun in ns]
    noun_offset = np.cumsum([0] + [len(ns) for _, ns in CATEGORIES])[:-1]
    noun = noun_offset[category] + rng.integers(0, 3, size=n_products)
    names = _join(_take(_ADJECTIVES, rng.integers(0, len(_ADJECTIVES), n_products)), " ",
                  _take(_COLOURS, rng.integers(0, len(_COLOURS), n_products)), " ", _take(nouns, noun))
    fees = (POSTAGE_ITEM, GIFTWRAP_ITEM)
    item_id = pa.concat_arrays([_join("P", _digits(np.arange(1, n_products + 1), 5)),
                                pa.array([f[0] for f in fees], pa.string())])
    name = pa.concat_arrays([names, pa.array([f[1] for f in fees], pa.string())])

    weights = np.zeros((n_categories, n_products + len(fees)))
    weights[category, np.arange(n_products)] = popularity
    return _Catalogue(
        n=n_products + len(fees),
        n_products=n_products,
        item_id=item_id,
        name=name,
        category=np.concatenate([category, np.full(len(fees), n_categories, dtype=np.int16)]),
        price=np.concatenate([price, [f[2] for f in fees]]),
        active=np.concatenate([active, np.ones(len(fees), dtype=bool)]),
        popularity=np.concatenate([popularity, np.zeros(len(fees))]),
        by_category=_StackedSampler(weights),
    )


@dataclass
class _Taste:
    segment: np.ndarray  # (n,) taste segment, linked to a category
    favourites: np.ndarray  # (n, 5) item indices; the first n_favourites are used
    n_favourites: np.ndarray
    by_segment: _StackedSampler
    overall: _StackedSampler


def _segment_weights(catalogue: _Catalogue) -> np.ndarray:
    """Item weights per taste segment: 55% own category, 15% each on two related ones, 15% spread.

    Within a category items keep their global Zipf popularity, so segments share best-sellers.
    """
    n_cat = len(CATEGORIES)
    cat_weight = np.full((n_cat, n_cat), 0.15 / n_cat)
    own = np.arange(n_cat)
    cat_weight[own, own] += 0.55
    cat_weight[own, (own + 1) % n_cat] += 0.15
    cat_weight[own, (own + 5) % n_cat] += 0.15
    products = np.arange(catalogue.n_products)
    pop = catalogue.popularity[products]
    category = catalogue.category[products]
    category_mass = np.bincount(category, weights=pop, minlength=n_cat)
    weights = np.zeros((n_cat, catalogue.n))
    weights[:, products] = cat_weight[:, category] * (pop / category_mass[category])[None, :]
    return weights


def _draw_taste(rng: np.random.Generator, n: int, catalogue: _Catalogue) -> _Taste:
    n_cat = len(CATEGORIES)
    segment_share = rng.dirichlet(np.full(n_cat, 5.0))
    segment = rng.choice(n_cat, size=n, p=segment_share).astype(np.int32)
    by_segment = _StackedSampler(_segment_weights(catalogue))
    favourites = by_segment.sample(np.repeat(segment, 5), rng.random(n * 5)).reshape(n, 5)
    return _Taste(
        segment=segment,
        favourites=favourites,
        n_favourites=rng.integers(3, 6, size=n).astype(np.int8),
        by_segment=by_segment,
        overall=_StackedSampler(catalogue.popularity),
    )


# --- Orders -----------------------------------------------------------------------------------------


@dataclass
class _Orders:
    """Every order and store receipt, sorted by time. ``order_id`` is unique across both."""

    n: int
    person: np.ndarray
    ts: np.ndarray  # epoch seconds
    channel: np.ndarray  # index into CHANNELS
    value: np.ndarray  # z: value of the product lines
    guest: np.ndarray  # web checkout without logging in
    email_variant: np.ndarray
    store: np.ndarray
    order_id: np.ndarray
    n_product_lines: np.ndarray
    has_postage: np.ndarray
    has_giftwrap: np.ndarray

    @property
    def is_store(self) -> np.ndarray:
        return self.channel == _STORE


def _repeat_purchase_days(rng: np.random.Generator, persons: _Persons) -> tuple[np.ndarray, np.ndarray]:
    """Times of each person's k repeat purchases, in days after their first purchase.

    Given N Poisson arrivals in (0, W), their times are the order statistics of N uniforms; the
    first k of them are W * S_i / S_(N+1) with S_i the partial sums of N+1 unit exponentials
    (Devroye 1986, ch. V.2). Only k exponentials are drawn per person: S_(N+1) = S_k + Gamma(N+1-k).
    """
    k = persons.n_repeat
    owner = np.repeat(np.arange(persons.n), k)
    sums = np.cumsum(rng.standard_exponential(int(k.sum())))
    starts = _segment_starts(k)
    before = np.concatenate(([0.0], sums))[starts]  # running sum before each person's segment
    buying = k > 0
    s_k = np.zeros(persons.n)
    s_k[buying] = sums[starts[buying] + k[buying] - 1] - before[buying]
    s_total = np.ones(persons.n)
    s_total[buying] = s_k[buying] + rng.standard_gamma((persons.n_arrivals - k + 1)[buying].astype(np.float64))
    fraction = (sums - before[owner]) / s_total[owner]
    return owner, persons.first_day[owner] + fraction * persons.window[owner]


def _draw_orders(rng: np.random.Generator, persons: _Persons, identities: _Identities, horizon: _Horizon,
                 params: TrueParameters, behaviour: Behaviour) -> _Orders:
    repeat_owner, repeat_day = _repeat_purchase_days(rng, persons)
    person = np.concatenate([np.arange(persons.n), repeat_owner])
    day = horizon.calendar(np.concatenate([persons.first_day, repeat_day]))
    u = rng.random(person.shape[0])
    channel = (u[:, None] >= identities.channel_cdf[person]).sum(axis=1).astype(np.int8)
    ts = horizon.start_s + np.floor(day * 86_400).astype(np.int64)
    # Stores open 09:00-18:00: move a receipt's time of day there (the calendar day is unchanged).
    is_store = channel == _STORE
    midnight = ts - (ts - horizon.start_s) % 86_400
    ts = np.where(is_store, midnight + 9 * 3_600 + ((ts - midnight) * 9 * 3_600) // 86_400, ts)
    order = np.argsort(ts, kind="stable")
    person, ts, channel, is_store = person[order], ts[order], channel[order], is_store[order]
    n = person.shape[0]

    # Gamma-Gamma spend: z ~ Gamma(p, rate=nu) (Fader & Hardie 2013, eq. 1).
    value = rng.gamma(params.p, 1.0 / persons.nu[person])
    is_web = channel == _WEB
    guest = is_web & (~identities.has_account[person] | (rng.random(n) < behaviour.guest_share_of_account_web_orders))
    varied = rng.random(n) < behaviour.email_variant_share
    email_variant = np.where(varied, rng.integers(1, N_EMAIL_VARIANTS, size=n), 0).astype(np.int8)
    at_home = rng.random(n) < behaviour.home_store_share
    store = np.where(at_home, identities.home_store[person], rng.integers(0, identities.n_stores, size=n))
    order_id = _sales_ids(is_store)
    shipped = (channel == _WEB) | (channel == _APP)
    return _Orders(
        n=n, person=person, ts=ts, channel=channel, value=value, guest=guest, email_variant=email_variant,
        store=store.astype(np.int32), order_id=order_id,
        n_product_lines=(1 + rng.poisson(behaviour.extra_lines_mean, size=n)).astype(np.int64),
        has_postage=shipped & (value < behaviour.free_delivery_threshold),
        has_giftwrap=shipped & (rng.random(n) < behaviour.giftwrap_share),
    )


def _sales_ids(is_store: np.ndarray) -> np.ndarray:
    """Order numbers in time order; receipts are numbered in their own range, so ids never clash."""
    online_rank = np.cumsum(~is_store)
    store_rank = np.cumsum(is_store)
    if online_rank[-1] > _MAX_SALES_PER_SOURCE or store_rank[-1] > _MAX_SALES_PER_SOURCE:
        raise ArgumentError("too many orders for the id ranges; generate fewer customers per directory")
    return np.where(is_store, RECEIPT_ID_BASE + store_rank, ORDER_ID_BASE + online_rank).astype(np.int64)


# --- Lines ------------------------------------------------------------------------------------------


@dataclass
class _Lines:
    """Every sold line (orders and receipts), grouped by order in order-time order."""

    order: np.ndarray  # index into _Orders
    line_id: np.ndarray  # 1-based within the order
    item: np.ndarray
    quantity: np.ndarray
    unit_price: np.ndarray
    is_product: np.ndarray
    order_start: np.ndarray  # index of each order's first line


def _draw_lines(rng: np.random.Generator, orders: _Orders, taste: _Taste, catalogue: _Catalogue,
                behaviour: Behaviour) -> _Lines:
    """Product lines (plus postage / gift wrap) whose prices add up to each order's value z."""
    n_lines = orders.n_product_lines + orders.has_postage + orders.has_giftwrap
    order = np.repeat(np.arange(orders.n), n_lines)
    within = _within_segment_index(n_lines)
    fee_slot = within - orders.n_product_lines[order]
    is_product = fee_slot < 0
    postage = (fee_slot == 0) & orders.has_postage[order]

    product_lines = np.flatnonzero(is_product)
    person = orders.person[order[product_lines]]
    item = np.where(postage, catalogue.postage, catalogue.giftwrap).astype(np.int32)
    item[product_lines] = _choose_items(rng, person, taste, behaviour)
    quantity = np.ones(order.shape[0], dtype=np.int64)
    quantity[product_lines] += rng.poisson(behaviour.extra_quantity_mean, size=product_lines.shape[0])

    # Scale list prices per order so the product lines add up to z; fees keep their list price.
    product_order = order[product_lines]
    list_price = catalogue.price[item[product_lines]]
    list_value = np.bincount(product_order, weights=quantity[product_lines] * list_price, minlength=orders.n)
    scale = np.divide(orders.value, list_value, out=np.ones(orders.n), where=list_value > 0)
    unit_price = catalogue.price[item]
    unit_price[product_lines] = np.maximum(np.round(list_price * scale[product_order], 2), 0.01)
    return _Lines(order=order, line_id=within + 1, item=item, quantity=quantity, unit_price=unit_price,
                  is_product=is_product, order_start=_segment_starts(n_lines))


def _choose_items(rng: np.random.Generator, person: np.ndarray, taste: _Taste, behaviour: Behaviour) -> np.ndarray:
    """Favourite item (repeat buying), else the person's segment, else overall popularity."""
    u = rng.random(person.shape[0])
    item = np.empty(person.shape[0], dtype=np.int32)
    favourite = u < behaviour.favourite_share
    in_segment = ~favourite & (u < behaviour.favourite_share + behaviour.segment_share)
    anywhere = ~favourite & ~in_segment

    fav_person = person[favourite]
    slot = (rng.random(fav_person.shape[0]) * taste.n_favourites[fav_person]).astype(np.int64)
    item[favourite] = taste.favourites[fav_person, slot]
    item[in_segment] = taste.by_segment.sample(taste.segment[person[in_segment]], rng.random(int(in_segment.sum())))
    n_any = int(anywhere.sum())
    item[anywhere] = taste.overall.sample(np.zeros(n_any, dtype=np.int64), rng.random(n_any))
    return item


# --- Returns ----------------------------------------------------------------------------------------


@dataclass
class _Returns:
    line: np.ndarray  # index into _Lines
    quantity: np.ndarray
    refund: np.ndarray
    ts: np.ndarray
    return_id: np.ndarray


def _draw_returns(rng: np.random.Generator, lines: _Lines, orders: _Orders, horizon: _Horizon,
                  behaviour: Behaviour) -> _Returns:
    """~4% of product lines come back, fully or in part, 1-30 days later (if before the end)."""
    candidates = np.flatnonzero(lines.is_product)
    line = candidates[rng.random(candidates.shape[0]) < behaviour.return_share]
    sold = lines.quantity[line]
    partial = (sold > 1) & (rng.random(line.shape[0]) >= behaviour.full_return_share)
    quantity = np.where(partial, rng.integers(1, np.maximum(sold, 2)), sold)
    ts = orders.ts[lines.order[line]] + rng.integers(86_400, behaviour.max_return_days * 86_400 + 1,
                                                     size=line.shape[0])
    keep = ts < horizon.end_s
    line, quantity, ts = line[keep], quantity[keep], ts[keep]
    order = np.argsort(ts, kind="stable")
    line, quantity, ts = line[order], quantity[order], ts[order]
    refund = np.round(quantity * lines.unit_price[line], 2)
    return _Returns(line=line, quantity=quantity.astype(np.int64), refund=refund, ts=ts,
                    return_id=RETURN_ID_BASE + 1 + np.arange(line.shape[0], dtype=np.int64))


# --- Browse events and key registrations ----------------------------------------------------------


def _browse_events_table(rng: np.random.Generator, lines: _Lines, orders: _Orders, identities: _Identities,
                         catalogue: _Catalogue, horizon: _Horizon, behaviour: Behaviour) -> pa.Table:
    """Views and add-to-carts by account holders shortly before their orders, of items near them.

    About one event per order: half show an item of that order, half another product of the same
    category (what the shopper looked at before choosing).
    """
    account_orders = np.flatnonzero(identities.has_account[orders.person])
    per_order = rng.poisson(behaviour.events_per_order, size=account_orders.shape[0])
    order = np.repeat(account_orders, per_order)
    n = order.shape[0]
    seen_line = lines.order_start[order] + (rng.random(n) * orders.n_product_lines[order]).astype(np.int64)
    seen = lines.item[seen_line]
    other = catalogue.by_category.sample(catalogue.category[seen].astype(np.int64), rng.random(n))
    item = np.where(rng.random(n) < behaviour.same_item_event_share, seen, other)
    ts = orders.ts[order] - rng.integers(0, 3 * 86_400, size=n)
    person = orders.person[order]
    # App users browse in the app before app orders and about half the time otherwise.
    by_device = identities.has_device[person] & ((orders.channel[order] == _APP) | (rng.random(n) < 0.5))
    key = pc.if_else(pa.array(by_device), _take(identities.device_id, person), _take(identities.account_id, person))
    add_to_cart = rng.random(n) < behaviour.add_to_cart_share
    # Events before the history starts are not in the export.
    sort = np.argsort(ts, kind="stable")
    sort = sort[ts[sort] >= horizon.start_s]
    table = pa.table({
        "customer_key": key,
        "key_type": _take((KeyType.ACCOUNT.value, KeyType.DEVICE.value), by_device.astype(np.int64)),
        "item_id": _take(catalogue.item_id, item),
        "event_type": _take((EventType.VIEW.value, EventType.ADD_TO_CART.value), add_to_cart.astype(np.int64)),
        "timestamp": _timestamps(ts),
    })
    return table.take(pa.array(sort))


def _customer_keys_table(rng: np.random.Generator, persons: _Persons, identities: _Identities, orders: _Orders,
                         behaviour: Behaviour) -> pa.Table:
    """Loyalty sign-ups (card + e-mail + phone) and CRM accounts (account + e-mail + device).

    ~5% of cards are never registered: their receipts form a fragment no resolver can join to the
    person's other keys, recorded as ``card_registered = false`` in the truth.
    """
    first_ts = _first_purchase(persons, orders)
    cards = np.flatnonzero(identities.card_registered)
    accounts = np.flatnonzero(identities.has_account)
    person = np.concatenate([cards, accounts])
    is_card = np.arange(person.shape[0]) < cards.shape[0]
    n = person.shape[0]
    # Sign-ups happen up to 30 days before the first purchase (possibly before the history starts).
    ts = first_ts[person] - rng.integers(0, 30 * 86_400, size=n)
    variant = np.where(rng.random(n) < behaviour.email_variant_share, rng.integers(1, N_EMAIL_VARIANTS, size=n), 0)
    has_phone = is_card & (rng.random(n) < behaviour.phone_share_of_registrations)
    table = pa.table({
        "account_id": _take(identities.account_id, person, ~is_card),
        "email": _take(identities.email_variants, variant * persons.n + person),
        "phone": _phone_numbers(rng, _take(identities.phone_national, person), has_phone),
        "loyalty_card": _take(identities.loyalty_card, person, is_card),
        "device_id": _take(identities.device_id, person, ~is_card),
        "timestamp": _timestamps(ts),
    })
    return table.take(pa.array(np.argsort(ts, kind="stable")))


def _phone_numbers(rng: np.random.Generator, national: pa.Array, valid: np.ndarray) -> pa.Array:
    """UK mobiles as people type them: +44 7700 900123, 07700900123, 0044-7700-900-123, ..."""
    def part(a: int, b: int) -> pa.Array:
        return pc.utf8_slice_codeunits(national, a, b)

    formats = (
        _join("+44 ", part(0, 4), " ", part(4, 10)),
        _join("0", national),
        _join("0044-", part(0, 4), "-", part(4, 7), "-", part(7, 10)),
        _join("+44", national),
        _join("(0", part(0, 4), ") ", part(4, 10)),
    )
    n = len(national)
    choice = rng.integers(0, len(formats), size=n)
    return _take(pa.concat_arrays(formats), choice * n + np.arange(n), valid)


def _e164(national: pa.Array) -> pa.Array:
    """The form the truth records phones in: +44 and the national number without its leading 0."""
    return _join("+44", national)


# --- Tables in the contract's column names ----------------------------------------------------------


def _timestamps(epoch_seconds: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(epoch_seconds, dtype=np.int64) * 1_000_000, type=pa.int64()).cast(
        pa.timestamp("us", tz="UTC"))


def _catalogue_table(catalogue: _Catalogue) -> pa.Table:
    return pa.table({
        "item_id": catalogue.item_id,
        "name": catalogue.name,
        "category": _take(catalogue.category_names, catalogue.category.astype(np.int64)),
        "price": pa.array(catalogue.price),
        "active": pa.array(catalogue.active),
        "is_product": pa.array(np.arange(catalogue.n) < catalogue.n_products),
    })


def _sales_lines(lines: _Lines, orders: _Orders, store: bool) -> np.ndarray:
    return np.flatnonzero(orders.is_store[lines.order] == store)


@dataclass
class _Tables:
    """Builds the big tables a slice of rows at a time, so no table of ten million rows is ever whole.

    ``rows(source)`` gives the index (into _Lines or _Returns) of every row of a source in file
    order; ``build(source, rows)`` turns any subset of those indices into an Arrow table.
    """

    lines: _Lines
    orders: _Orders
    returns: _Returns
    identities: _Identities
    catalogue: _Catalogue

    def rows(self, source: str) -> np.ndarray:
        if source == RETURNS.name:
            return np.arange(self.returns.line.shape[0])
        return _sales_lines(self.lines, self.orders, store=source == STORE_RECEIPTS.name)

    def build(self, source: str, rows: np.ndarray) -> pa.Table:
        builder = {ORDERS.name: self._orders, STORE_RECEIPTS.name: self._store_receipts,
                   RETURNS.name: self._returns}[source]
        return builder(np.asarray(rows, dtype=np.int64))

    def _orders(self, idx: np.ndarray) -> pa.Table:
        """Web, app and marketplace lines with the keys each channel knows the buyer by."""
        lines, orders, identities = self.lines, self.orders, self.identities
        order = lines.order[idx]
        person = orders.person[order]
        channel = orders.channel[order]
        logged_in = ((channel == _WEB) & ~orders.guest[order]) | (channel == _APP)
        n_persons = len(identities.has_account)
        variant = orders.email_variant[order].astype(np.int64)
        return pa.table({
            "order_id": pa.array(orders.order_id[order]),
            "line_id": pa.array(lines.line_id[idx]),
            "timestamp": _timestamps(orders.ts[order]),
            "account_id": _take(identities.account_id, person, logged_in),
            "email": _take(identities.email_variants, variant * n_persons + person),
            "device_id": _take(identities.device_id, person, channel == _APP),
            "item_id": _take(self.catalogue.item_id, lines.item[idx]),
            "quantity": pa.array(lines.quantity[idx]),
            "unit_price": pa.array(lines.unit_price[idx]),
            "currency": _constant(CURRENCY, idx.shape[0]),
            "channel": _take(CHANNELS, channel.astype(np.int64)),
            "country": _take(_COUNTRIES, identities.country[person].astype(np.int64)),
        })

    def _store_receipts(self, idx: np.ndarray) -> pa.Table:
        """Till lines: the loyalty card is the only key a store knows."""
        lines, orders, identities = self.lines, self.orders, self.identities
        order = lines.order[idx]
        store_ids = _join("ST", _digits(np.arange(1, identities.n_stores + 1), 3))
        return pa.table({
            "receipt_id": pa.array(orders.order_id[order]),
            "line_id": pa.array(lines.line_id[idx]),
            "timestamp": _timestamps(orders.ts[order]),
            "store_id": _take(store_ids, orders.store[order].astype(np.int64)),
            "loyalty_card": _take(identities.loyalty_card, orders.person[order]),
            "item_id": _take(self.catalogue.item_id, lines.item[idx]),
            "quantity": pa.array(lines.quantity[idx]),
            "unit_price": pa.array(lines.unit_price[idx]),
            "currency": _constant(CURRENCY, idx.shape[0]),
            "country": _constant("GB", idx.shape[0]),
        })

    def _returns(self, idx: np.ndarray) -> pa.Table:
        returns, lines = self.returns, self.lines
        line = returns.line[idx]
        return pa.table({
            "return_id": pa.array(returns.return_id[idx]),
            "order_id": pa.array(self.orders.order_id[lines.order[line]]),
            "line_id": pa.array(lines.line_id[line]),
            "quantity": pa.array(returns.quantity[idx]),
            "refund_amount": pa.array(returns.refund[idx]),
            "timestamp": _timestamps(returns.ts[idx]),
            "currency": _constant(CURRENCY, idx.shape[0]),
        })


def _constant(value: str, n: int) -> pa.Array:
    return _take((value,), np.zeros(n, dtype=np.int64))


# --- Late files and planted bad rows ----------------------------------------------------------------


@dataclass
class _Late:
    """Orders delivered late (in the *_late.csv files) and the returns that go with them."""

    orders: np.ndarray  # bool per order
    returns: np.ndarray  # bool per return

    def row_mask(self, source: str, lines: _Lines, orders: _Orders) -> np.ndarray:
        """Late flag of each row of one source's table, in that table's row order."""
        if source == RETURNS.name:
            return self.returns
        return self.orders[lines.order[_sales_lines(lines, orders, store=source == STORE_RECEIPTS.name)]]


def _pick_late(rng: np.random.Generator, orders: _Orders, lines: _Lines, returns: _Returns,
               behaviour: Behaviour) -> _Late:
    """A few whole orders per source (at least one when the source has two) arrive late.

    Returns of late sales travel in the late returns file, so no return ever precedes its sale in
    file order; a few other returns arrive late too.
    """
    late = rng.random(orders.n) < behaviour.late_share
    for is_store in (False, True):
        members = np.flatnonzero(orders.is_store == is_store)
        if members.shape[0] >= 2 and not late[members].any():
            late[rng.choice(members)] = True
    late_return = late[lines.order[returns.line]] | (rng.random(returns.line.shape[0]) < behaviour.late_share)
    if returns.line.shape[0] >= 2 and not late_return.any():
        late_return[rng.integers(0, returns.line.shape[0])] = True
    return _Late(orders=late, returns=late_return)


def _text_column(column: pa.ChunkedArray | pa.Array) -> pd.Series:
    """A column as the text a CSV export would hold; timestamps in London time with their offset."""
    if pa.types.is_timestamp(column.type):
        local = pd.Series(column.to_pandas()).dt.tz_convert(LATE_FILE_TIMEZONE)
        text = local.dt.strftime("%Y-%m-%dT%H:%M:%S%z")
        return text.str[:-2] + ":" + text.str[-2:]
    if pa.types.is_floating(column.type):
        return pd.Series(column.to_numpy(zero_copy_only=False)).map("{:.2f}".format)
    if pa.types.is_boolean(column.type):
        return pd.Series(column.to_pylist()).map({True: "true", False: "false"})
    return pd.Series(pc.cast(column, pa.string()).to_pylist(), dtype=object)


def _text_frame(table: pa.Table) -> pd.DataFrame:
    return pd.DataFrame({name: _text_column(table[name]).astype(object).to_numpy() for name in table.column_names},
                        dtype=object)


@dataclass
class _LatePart:
    """What one late file needs from its source: the late rows and copies of on-time rows to break."""

    valid: pa.Table  # late rows, delivered as they are
    templates: pa.Table  # on-time rows (already written) that bad rows are copied from
    per_kind: int

    @classmethod
    def sample(cls, rng: np.random.Generator, source: str, tables: _Tables, rows: np.ndarray, is_late: np.ndarray,
               behaviour: Behaviour) -> _LatePart:
        """About ``bad_row_share`` of the written rows, at least one per kind of bad row."""
        on_time = rows[~is_late]
        kinds = BAD_ROW_KINDS[source]
        per_kind = max(1, round(behaviour.bad_row_share * on_time.shape[0] / len(kinds)))
        picked = on_time[rng.integers(0, on_time.shape[0], size=per_kind * len(kinds))] if on_time.size else on_time
        return cls(valid=tables.build(source, rows[is_late]), templates=tables.build(source, picked),
                   per_kind=per_kind)


def _late_frame(rng: np.random.Generator, source: str, part: _LatePart, donors: list[pa.Table],
                horizon: _Horizon) -> tuple[pd.DataFrame, dict[str, int]]:
    """Valid late rows plus a counted sprinkling of bad rows, one defect per row, shuffled.

    Bad rows are copies of rows already written with a fresh id and one field broken, except
    duplicates, which keep the id of the line they duplicate and change the item.
    """
    spec = _spec(source)
    kinds = BAD_ROW_KINDS[source]
    templates = _text_frame(part.templates) if part.templates.num_rows else _borrowed_templates(
        rng, source, donors, part.per_kind * len(kinds), part.valid.column_names)
    frames = [_text_frame(part.valid)]
    counts: dict[str, int] = {}
    for position, kind in enumerate(kinds):
        if kind == "duplicate_line" and not part.templates.num_rows:
            logger.warning("%s has no written lines to duplicate: no %s rows planted", source, kind)
            counts[kind] = 0
            continue
        ids = np.arange(position * part.per_kind, (position + 1) * part.per_kind)
        frames.append(_break_rows(rng, templates.iloc[ids].reset_index(drop=True), kind, spec, ids, horizon))
        counts[kind] = part.per_kind
    frame = pd.concat(frames, ignore_index=True)
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    return frame[part.valid.column_names], counts


def _borrowed_templates(rng: np.random.Generator, source: str, donors: list[pa.Table], n: int,
                        columns: list[str]) -> pd.DataFrame:
    """Template rows for a source with nothing written (possible only for a handful of customers).

    They are built from another source's sales lines, so every kind of bad row but the duplicate
    is still planted. A borrowed order carries a placeholder e-mail so its only defect is the planted one.
    """
    donor = next(t for t in donors if t.num_rows)  # every person buys at least once
    rows = _text_frame(donor.take(pa.array(rng.integers(0, donor.num_rows, size=n))))
    sale_id = rows["order_id"] if "order_id" in rows else rows["receipt_id"]
    overrides = {
        RETURNS.name: {"return_id": "0", "order_id": sale_id, "quantity": "1", "refund_amount": rows["unit_price"]},
        STORE_RECEIPTS.name: {"receipt_id": sale_id, "store_id": "ST001", "loyalty_card": None},
        ORDERS.name: {"order_id": sale_id, "account_id": None, "email": "walk.in@example.com", "device_id": None,
                      "channel": Channel.WEB.value},
    }[source]
    borrowed = {c: overrides[c] if c in overrides else rows.get(c) for c in columns}
    return pd.DataFrame(borrowed, columns=columns, dtype=object)


def _spec(source: str) -> SourceSpec:
    return {s.name: s for s in (ORDERS, STORE_RECEIPTS, RETURNS)}[source]


def _break_rows(rng: np.random.Generator, rows: pd.DataFrame, kind: str, spec: SourceSpec, ids: np.ndarray,
                horizon: _Horizon) -> pd.DataFrame:
    """Give copied rows a fresh id and exactly one defect of the given kind."""
    rows = rows.copy()
    id_column = spec.columns[0].name  # order_id, receipt_id or return_id
    n = len(rows)
    if kind != "duplicate_line":
        base = BAD_RETURN_ID_BASE if spec is RETURNS else BAD_SALE_ID_BASE
        rows[id_column] = [str(base + 1 + i) for i in ids]
        if spec is not RETURNS:
            rows["line_id"] = "1"
    if kind == "unparseable_timestamp":
        rows["timestamp"] = [_UNPARSEABLE_TIMESTAMPS[i] for i in rng.integers(0, len(_UNPARSEABLE_TIMESTAMPS), n)]
    elif kind == "zero_quantity":
        rows["quantity"] = "0"
    elif kind == "negative_price":
        rows["unit_price"] = [f"-{v}" for v in rows["unit_price"]]
    elif kind == "zero_price":
        rows["unit_price"] = "0.00"
    elif kind == "unknown_channel":
        rows["channel"] = UNKNOWN_CHANNEL
    elif kind == "future_timestamp":
        future = horizon.end_s + FUTURE_OFFSET_DAYS * 86_400 + rng.integers(0, 60 * 86_400, size=n)
        rows["timestamp"] = _text_column(_timestamps(future)).to_numpy()
    elif kind == "duplicate_line":
        # Same order and line as a line already written, another item: the later copy is the bad one.
        rows["item_id"] = [_another_item(item) for item in rows["item_id"]]
    elif kind == "unknown_currency":
        rows["currency"] = FOREIGN_CURRENCY
    elif kind == "orphan_return":
        rows["order_id"] = [str(ORPHAN_SALE_ID_BASE + 1 + i) for i in ids]
    elif kind == "missing_value":
        rows["return_id" if spec is RETURNS else "item_id"] = None
    else:  # pragma: no cover - BAD_ROW_KINDS and this function change together
        raise AssertionError(kind)
    return rows


def _another_item(item_id: str) -> str:
    """A different product id that exists in every catalogue (which holds at least 200 products)."""
    if re.fullmatch(r"P\d{5}", item_id) is None:  # a fee line
        return "P00001"
    return f"P{int(item_id[1:]) % 200 + 1:05d}"


def _reason_counts(kinds: dict[str, int]) -> dict[str, int]:
    """Counts by quarantine reason (two kinds, zero and negative price, share one reason)."""
    counts: dict[str, int] = {}
    for kind, n in kinds.items():
        reason = BAD_ROW_REASONS[kind].value
        counts[reason] = counts.get(reason, 0) + n
    return counts


# --- Writing ----------------------------------------------------------------------------------------


@dataclass
class _Writer:
    """Writes raw files into one folder and remembers their paths and row counts."""

    output_dir: Path
    file_format: str
    files: dict[str, Path] = field(default_factory=dict)
    rows: int = 0

    def write(self, source: str, table: pa.Table) -> int:
        return self.write_chunks(source, iter((table,)))

    def write_chunks(self, source: str, tables: Iterator[pa.Table]) -> int:
        """Parquet as is; CSV with ISO 8601 timestamps that carry their offset (+00:00)."""
        path = self.output_dir / f"{source}.{self.file_format}"
        first = next(tables)
        rows = 0
        if self.file_format == "parquet":
            with pq.ParquetWriter(path, first.schema) as out:
                for table in itertools.chain((first,), tables):
                    out.write_table(table)
                    rows += table.num_rows
        else:
            first = _with_text_timestamps(first)
            with pacsv.CSVWriter(path, first.schema) as out:
                for table in itertools.chain((first,), map(_with_text_timestamps, tables)):
                    out.write_table(table)
                    rows += table.num_rows
        return self._done(source, path, rows)

    def write_text(self, name: str, frame: pd.DataFrame) -> int:
        """A late file: every field is text, as a CSV export from another system would be."""
        schema = pa.schema([(c, pa.string()) for c in frame.columns])
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        path = self.output_dir / name
        pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(quoting_style="all_valid"))
        return self._done(name, path, table.num_rows)

    def _done(self, key: str, path: Path, rows: int) -> int:
        self.files[key] = path
        self.rows += rows
        logger.info("wrote %s (%d rows)", path, rows)
        return rows


def _with_text_timestamps(table: pa.Table) -> pa.Table:
    columns = {}
    for name in table.column_names:
        column = table[name]
        if pa.types.is_timestamp(column.type):
            text = pc.strftime(column.cast(pa.timestamp("s", tz="UTC")), format="%Y-%m-%dT%H:%M:%S")
            column = _join(text, "+00:00")
        columns[name] = column
    return pa.table(columns)


def _write_truth(truth_dir: Path, world: _World, *, seed: int, n_customers: int, horizon: _Horizon,
                 file_format: str, shape: str, params: TrueParameters, behaviour: Behaviour, counts: dict[str, int],
                 bad_counts: dict[str, dict[str, int]], late_valid: dict[str, int]) -> None:
    """params.json, persons.parquet and orders.parquet: what the data were drawn from."""
    pq.write_table(_persons_truth(world), truth_dir / "persons.parquet")
    pq.write_table(_orders_truth(world), truth_dir / "orders.parquet")
    document = {
        "generator": "synthetic.generate",
        "seed": seed,
        "shape": shape,
        "seasonality": {"amplitude": horizon.seasonality, "peak_day_of_year": horizon.peak_day_of_year},
        "n_customers": n_customers,
        "start": horizon.start.isoformat(),
        "end": horizon.end.isoformat(),
        "observation_end": horizon.end_exclusive.isoformat(),
        "time_unit": "D",
        "file_format": file_format,
        "currency": CURRENCY,
        "parameters": asdict(params),
        "implied": {"mean_order_value": params.mean_order_value,
                    "mean_purchase_rate_per_day": params.r / params.alpha,
                    "mean_dropout_probability": params.a / (params.a + params.b)},
        "behaviour": asdict(behaviour),
        "counts": counts,
        "late_valid_rows": late_valid,
        "bad_rows": {name: _reason_counts(kinds) for name, kinds in bad_counts.items()},
        "bad_row_kinds": bad_counts,
    }
    (truth_dir / "params.json").write_text(json.dumps(document, indent=2) + "\n")


def _persons_truth(world: _World) -> pa.Table:
    """One row per person: latent values, what happened, and every raw key in its canonical form."""
    persons, identities = world.persons, world.identities
    null = pa.scalar(None, pa.string())
    return pa.table({
        "person_id": pa.array(np.arange(1, persons.n + 1, dtype=np.int64)),
        "lambda": pa.array(persons.lam),
        "p": pa.array(persons.p_drop),
        "nu": pa.array(persons.nu),
        "alive_at_end": pa.array(persons.alive),
        "n_repeat": pa.array(persons.n_repeat.astype(np.int64)),
        "n_orders": pa.array(persons.n_repeat.astype(np.int64) + 1),
        "first_purchase": _timestamps(_first_purchase(persons, world.orders)),
        "segment": pa.array(world.taste.segment),
        "email": identities.email,
        "account_id": identities.account_id,
        "device_id": identities.device_id,
        "loyalty_card": identities.loyalty_card,
        "card_registered": pa.array(identities.card_registered),  # false for persons without a card
        # A phone number is only ever given when registering a card.
        "phone": pc.if_else(pa.array(identities.card_registered), _e164(identities.phone_national), null),
    })


def _orders_truth(world: _World) -> pa.Table:
    """One row per order or receipt: who placed it, and the value of its product lines."""
    orders, lines = world.orders, world.lines
    product = lines.is_product
    value = np.bincount(lines.order[product], weights=lines.quantity[product] * lines.unit_price[product],
                        minlength=orders.n)
    return pa.table({
        "order_id": pa.array(orders.order_id),
        "source": _take((ORDERS.name, STORE_RECEIPTS.name), orders.is_store.astype(np.int64)),
        "person_id": pa.array(orders.person.astype(np.int64) + 1),
        "channel": _take(CHANNELS, orders.channel.astype(np.int64)),
        "timestamp": _timestamps(orders.ts),
        "order_value": pa.array(np.round(value, 2)),
        "guest": pa.array(orders.guest),
        "late": pa.array(world.late.orders),
    })


def _first_purchase(persons: _Persons, orders: _Orders) -> np.ndarray:
    first = np.full(persons.n, np.iinfo(np.int64).max)
    np.minimum.at(first, orders.person, orders.ts)
    return first
