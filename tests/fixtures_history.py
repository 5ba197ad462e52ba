"""Histories for the history/feature/KPI tests, written straight into an in-memory store.

``tiny_history`` is small enough to compute every feature by hand (see the test module's comments);
``random_history`` is a seeded omnichannel history of a few hundred customers whose expected
features are recomputed independently in pandas and by ``lifetimes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from features.settings import Settings, load_settings
from features.store import connect, connect_memory

LINE_COLUMNS = (
    "line_key", "order_key", "channel", "ts", "record_key", "is_guest", "item_id",
    "quantity", "unit_price", "discount", "gross_amount", "store_id", "country",
)
RETURN_COLUMNS = ("return_key", "line_key", "quantity", "refund_amount", "ts")
ITEM_COLUMNS = ("item_id", "name", "category", "price", "active", "is_product")
IDENTITY_COLUMNS = ("key_hash", "key_type", "customer_id")

#: The cutoff the tiny history is built around.
TINY_AS_OF = datetime(2024, 3, 1)


@dataclass
class History:
    """Rows of the store tables a history fills (lists of dicts keyed by column name)."""

    lines: list[dict] = field(default_factory=list)
    returns: list[dict] = field(default_factory=list)
    items: list[dict] = field(default_factory=list)
    identity: list[dict] = field(default_factory=list)

    def frames(self) -> dict[str, pd.DataFrame]:
        return {
            "lines": pd.DataFrame(self.lines, columns=list(LINE_COLUMNS)),
            "returns": pd.DataFrame(self.returns, columns=list(RETURN_COLUMNS)),
            "items": pd.DataFrame(self.items, columns=list(ITEM_COLUMNS)),
            "identity_map": pd.DataFrame(self.identity, columns=list(IDENTITY_COLUMNS)),
        }


def insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict] | pd.DataFrame) -> None:
    """Append rows to a store table (columns matched by name; the others stay NULL)."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if frame.empty:
        return
    con.register("_rows", frame)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
    finally:
        con.unregister("_rows")


def store_with(history: History) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory store holding ``history``."""
    con = connect_memory(load_settings())
    for table, frame in history.frames().items():
        insert(con, table, frame)
    return con


def line(
    line_key: str,
    order_key: str,
    channel: str,
    ts: datetime,
    record_key: str | None,
    item_id: str,
    quantity: int,
    unit_price: float,
    discount: float = 0.0,
    *,
    is_guest: bool = False,
) -> dict:
    return {
        "line_key": line_key, "order_key": order_key, "channel": channel, "ts": ts,
        "record_key": record_key, "is_guest": is_guest, "item_id": item_id, "quantity": quantity,
        "unit_price": unit_price, "discount": discount,
        "gross_amount": quantity * unit_price - discount,
        "store_id": "S1" if channel == "store" else None, "country": "GB",
    }


def ret(return_key: str, line_key: str, quantity: int, refund_amount: float, ts: datetime) -> dict:
    return {"return_key": return_key, "line_key": line_key, "quantity": quantity,
            "refund_amount": refund_amount, "ts": ts}


def tiny_history() -> History:
    """Four customers across channels, built around ``TINY_AS_OF`` = 2024-03-01 00:00 UTC.

    - Alice (1): web account + loyalty card. O1 web 01-10 10:00 (SHIRT 2x20 + POST 5 postage),
      O2 store 01-10 18:00 (MUG 10 - 2 discount), O3 app 02-05 09:30 (BOOK 3x15, 1 returned 02-10
      for 15), O4 web 02-20 12:00 (SHIRT 20, returned 03-05: after the cutoff), O5 web 03-02 (after).
    - Bob (2): guest e-mail. O6 web guest 02-01 15:00 (MYSTERY 30: not in the catalogue; LAMP 12:
      no category), O7 marketplace 02-01 20:00 (MUG 2x10, fully returned 02-03 for 20).
    - Carol (3): loyalty card. O8 store 2023-12-28 11:00 (SHIRT 20), O9 store 02-29 23:59:59 (BOOK 15).
    - Dan (4): app account. O10 web 02-15 (POST only: not a purchase), O13 app 02-16 10:00 (SHIRT 20),
      O11 web exactly at the cutoff 03-01 00:00 (MUG 10: not before the cutoff).
    - O12 store 02-10 anonymous (SHIRT 2x20, no loyalty card).
    """
    d = datetime
    h = History()
    h.items = [
        {"item_id": "SHIRT", "name": "Shirt", "category": "apparel", "price": 20.0, "active": True, "is_product": True},
        {"item_id": "MUG", "name": "Mug", "category": "home", "price": 10.0, "active": True, "is_product": True},
        {"item_id": "BOOK", "name": "Book", "category": "books", "price": 15.0, "active": True, "is_product": True},
        {"item_id": "LAMP", "name": "Lamp", "category": None, "price": 12.0, "active": True, "is_product": True},
        {"item_id": "POST", "name": "Postage", "category": None, "price": 5.0, "active": True, "is_product": False},
    ]
    h.identity = [
        {"key_hash": "k_alice_web", "key_type": "account", "customer_id": 1},
        {"key_hash": "k_alice_card", "key_type": "loyalty_card", "customer_id": 1},
        {"key_hash": "k_bob_email", "key_type": "email", "customer_id": 2},
        {"key_hash": "k_carol_card", "key_type": "loyalty_card", "customer_id": 3},
        {"key_hash": "k_dan_app", "key_type": "account", "customer_id": 4},
    ]
    h.lines = [
        line("L1", "O1", "web", d(2024, 1, 10, 10), "k_alice_web", "SHIRT", 2, 20.0),
        line("L2", "O1", "web", d(2024, 1, 10, 10), "k_alice_web", "POST", 1, 5.0),
        line("L3", "O2", "store", d(2024, 1, 10, 18), "k_alice_card", "MUG", 1, 10.0, 2.0),
        line("L4", "O3", "app", d(2024, 2, 5, 9, 30), "k_alice_web", "BOOK", 3, 15.0),
        line("L5", "O4", "web", d(2024, 2, 20, 12), "k_alice_web", "SHIRT", 1, 20.0),
        line("L6", "O5", "web", d(2024, 3, 2, 10), "k_alice_web", "SHIRT", 1, 20.0),
        line("L7", "O6", "web", d(2024, 2, 1, 15), "k_bob_email", "MYSTERY", 1, 30.0, is_guest=True),
        line("L8", "O6", "web", d(2024, 2, 1, 15), "k_bob_email", "LAMP", 1, 12.0, is_guest=True),
        line("L9", "O7", "marketplace", d(2024, 2, 1, 20), "k_bob_email", "MUG", 2, 10.0),
        line("L10", "O8", "store", d(2023, 12, 28, 11), "k_carol_card", "SHIRT", 1, 20.0),
        line("L11", "O9", "store", d(2024, 2, 29, 23, 59, 59), "k_carol_card", "BOOK", 1, 15.0),
        line("L12", "O10", "web", d(2024, 2, 15, 10), "k_dan_app", "POST", 1, 5.0),
        line("L13", "O13", "app", d(2024, 2, 16, 10), "k_dan_app", "SHIRT", 1, 20.0),
        line("L14", "O11", "web", d(2024, 3, 1), "k_dan_app", "MUG", 1, 10.0),
        line("L15", "O12", "store", d(2024, 2, 10, 14), None, "SHIRT", 2, 20.0),
    ]
    h.returns = [
        ret("R1", "L4", 1, 15.0, d(2024, 2, 10, 11)),
        ret("R2", "L5", 1, 20.0, d(2024, 3, 5, 9)),
        ret("R3", "L9", 2, 20.0, d(2024, 2, 3, 16)),
    ]
    return h


# --- A seeded random history ------------------------------------------------------------------

CHANNEL_CHOICES = ("web", "app", "store", "marketplace")
CATEGORIES = ("apparel", "home", "books", "toys", "garden", None)


def random_history(seed: int, n_customers: int = 300, *, start: datetime = datetime(2022, 1, 1),
                   days: int = 730) -> History:
    """A seeded history: repeat buyers with several keys each, same-day repeat orders, guest
    checkouts, anonymous sales, keys unknown to the identity map, fee lines, items missing from the
    catalogue, and partial returns booked up to 90 days after the sale. Sales happen between 07:00
    and 22:00, never exactly at midnight, so day-based cutoffs never fall on a purchase."""
    rng = np.random.default_rng(seed)
    h = History()
    item_ids = [f"I{i:02d}" for i in range(24)]
    prices = rng.uniform(2.0, 80.0, len(item_ids)).round(2)
    for i, item_id in enumerate(item_ids[:20]):  # I20..I23 are sold but missing from the catalogue
        h.items.append({"item_id": item_id, "name": item_id, "category": CATEGORIES[i % len(CATEGORIES)],
                        "price": float(prices[i]), "active": True, "is_product": True})
    h.items.append({"item_id": "POST", "name": "Postage", "category": None, "price": 4.0,
                    "active": True, "is_product": False})

    n_lines = 0
    n_orders = 0

    def add_order(record_key: str | None, ts: datetime) -> None:
        nonlocal n_lines, n_orders
        n_orders += 1
        order_key = f"O{n_orders}"
        channel = str(rng.choice(CHANNEL_CHOICES))
        guest = channel != "store" and record_key is not None and bool(rng.random() < 0.2)
        for _ in range(int(rng.integers(1, 4))):
            n_lines += 1
            k = int(rng.integers(0, len(item_ids)))
            quantity = int(rng.integers(1, 4))
            # Discounts up to 10% and refunds of 85% of the price keep every line's net amount >= 0.
            discount = round(float(rng.uniform(0, 0.1)) * quantity * float(prices[k]), 2) if rng.random() < 0.2 else 0.0
            h.lines.append(line(f"L{n_lines}", order_key, channel, ts, record_key, item_ids[k], quantity,
                                float(prices[k]), discount, is_guest=guest))
            if rng.random() < 0.15:
                back = int(rng.integers(1, quantity + 1))
                h.returns.append(ret(f"R{n_lines}", f"L{n_lines}", back, round(back * float(prices[k]) * 0.85, 2),
                                     ts + timedelta(days=float(rng.uniform(0.5, 90)))))
        if rng.random() < 0.1:
            n_lines += 1
            h.lines.append(line(f"L{n_lines}", order_key, channel, ts, record_key, "POST", 1, 4.0, is_guest=guest))

    def moment(day: float) -> datetime:
        base = start + timedelta(days=int(day))
        return base + timedelta(seconds=int(rng.integers(7 * 3600, 22 * 3600)))

    for customer_id in range(1, n_customers + 1):
        keys = [f"c{customer_id}k{j}" for j in range(int(rng.integers(1, 4)))]
        for key in keys:
            h.identity.append({"key_hash": key, "key_type": "account", "customer_id": customer_id})
        day = float(rng.uniform(0, days))
        rate = float(rng.gamma(1.0, 1 / 25))  # purchases per day
        while day < days:
            add_order(str(rng.choice(keys)), moment(day))
            if rng.random() < 0.1:  # a second order the same day
                add_order(str(rng.choice(keys)), moment(day))
            day += float(rng.exponential(1 / max(rate, 1e-3)))
            if rng.random() < 0.05:  # dropped out
                break
    for _ in range(n_customers // 5):
        add_order(None, moment(float(rng.uniform(0, days))))
        add_order(f"unknown{n_orders}", moment(float(rng.uniform(0, days))))
    return h


def synthetic_store(folder: Path, customers: int, seed: int, *, now: datetime,
                    **settings: Any) -> tuple[Settings, duckdb.DuckDBPyConnection]:
    """Generated raw files for ``customers`` persons ingested into a store under ``folder`` (raw files
    in ``folder/raw``, state in ``folder/state``), with the settings ``settings`` override."""
    from features.discovery import discover
    from synthetic.generate import generate
    from features.ingest import ingest

    generate(folder / "raw", customers, seed)
    loaded = load_settings(data_dir=folder / "state", **settings)
    con = connect(loaded)
    inputs, ignored = discover(folder / "raw")
    ingest(con, inputs, loaded, now=now, ignored_paths=ignored)
    return loaded, con
