"""Identity resolution: one stable ``customer_id`` per person across channels.

Raw keys (account id, e-mail, phone, loyalty card, device id, a retailer's customer number) are
normalised, then stored only as salted hashes ``"<type>:<32 hex chars>"`` (the type stays readable,
the value does not). Keys that occur together on one record (an order with an account and an
e-mail, a loyalty sign-up with a card and an e-mail) are linked; the connected components of that
graph are customers (union-find, computed with scipy's ``connected_components``).

Stability: a key that already had a customer keeps it. When new links join components that had
different customer ids, the smallest (oldest) id survives and every other id is recorded in
``identity_merges`` as merged into it; nothing else is renumbered. New components get new ids
after the largest id ever issued.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from features.schema import KeyType
from features.settings import Settings

SALT_VARIABLE = "rapport_salt"
HASH_HEX_CHARS = 32  # 128 bits: collisions are negligible for billions of keys
_BLANKS = " \t\r\n\f\v"  # stripped around every key, identically in SQL and Python
_BLANKS_RE = " \\t\\r\\n\\f\\v"


def bind_salt(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Make the salt available to SQL as ``getvariable('rapport_salt')`` without putting it in SQL text."""
    con.execute(f"SET VARIABLE {SALT_VARIABLE} = ?", [settings.salt()])


def normalise_sql(key_type: KeyType, expr: str, phone_country_code: str) -> str:
    """SQL that normalises a raw key; NULL for an empty value. Mirrors :func:`normalise_key`."""
    raw = f"regexp_replace(CAST({expr} AS VARCHAR), '^[{_BLANKS_RE}]+|[{_BLANKS_RE}]+$', '', 'g')"
    if key_type is KeyType.EMAIL:
        # Case and a "+tag" in the local part do not make another mailbox.
        body = f"regexp_replace(lower({raw}), '\\+[^@]*@', '@')"
    elif key_type is KeyType.PHONE:
        kept = f"regexp_replace({raw}, '[^0-9+]', '', 'g')"
        digits = f"regexp_replace({kept}, '[^0-9]', '', 'g')"
        cc = phone_country_code.strip().lstrip("+")
        if not cc.isdigit():
            raise ValueError(f"default_phone_country_code must be digits, got {phone_country_code!r}")
        body = (
            f"CASE WHEN {kept} LIKE '+%' THEN {digits} WHEN {digits} LIKE '00%' THEN substr({digits}, 3) "
            f"WHEN {digits} LIKE '0%' THEN '{cc}' || substr({digits}, 2) ELSE {digits} END"
        )
    elif key_type is KeyType.LOYALTY_CARD:
        body = f"upper(regexp_replace({raw}, '[\\s-]', '', 'g'))"
    elif key_type is KeyType.DEVICE:
        body = f"lower({raw})"
    else:
        body = raw
    return f"nullif({body}, '')"


def hash_sql(key_type: KeyType, expr: str, phone_country_code: str) -> str:
    """SQL for the stored form of a raw key: ``'<type>:' || sha256(salt|type|normalised)[:32]``."""
    norm = normalise_sql(key_type, expr, phone_country_code)
    return (
        f"CASE WHEN {norm} IS NULL THEN NULL ELSE '{key_type.value}:' || "
        f"substr(sha256(getvariable('{SALT_VARIABLE}') || '|{key_type.value}|' || {norm}), 1, {HASH_HEX_CHARS}) END"
    )


def normalise_key(key_type: KeyType, value: object, phone_country_code: str = "44") -> str | None:
    """Python twin of :func:`normalise_sql`, for request-time lookups (tested equal to the SQL)."""
    if value is None:
        return None
    raw = str(value).strip(_BLANKS)
    if key_type is KeyType.EMAIL:
        out = re.sub(r"\+[^@]*@", "@", raw.lower(), count=1)
    elif key_type is KeyType.PHONE:
        kept = re.sub(r"[^0-9+]", "", raw)
        digits = re.sub(r"[^0-9]", "", kept)
        cc = phone_country_code.strip().lstrip("+")
        if kept.startswith("+"):
            out = digits
        elif digits.startswith("00"):
            out = digits[2:]
        elif digits.startswith("0"):
            out = cc + digits[1:]
        else:
            out = digits
    elif key_type is KeyType.LOYALTY_CARD:
        out = re.sub(r"[\s-]", "", raw).upper()
    elif key_type is KeyType.DEVICE:
        out = raw.lower()
    else:
        out = raw
    return out or None


def hash_key(key_type: KeyType, value: object, settings: Settings) -> str | None:
    """The stored form of one raw key, as :func:`hash_sql` computes it."""
    norm = normalise_key(key_type, value, settings.default_phone_country_code)
    if norm is None:
        return None
    digest = hashlib.sha256(f"{settings.salt()}|{key_type.value}|{norm}".encode()).hexdigest()
    return f"{key_type.value}:{digest[:HASH_HEX_CHARS]}"


@dataclass(frozen=True)
class IdentityUpdate:
    """What one resolution pass did."""

    keys: int
    customers: int
    new_customers: int
    merges: int


@dataclass(frozen=True)
class IdentitySummary:
    keys: int
    customers: int
    keys_by_type: dict[str, int]
    merges: int

    @property
    def keys_per_customer(self) -> float:
        return self.keys / self.customers if self.customers else 0.0


def resolve(con: duckdb.DuckDBPyConnection, *, ingest_id: int, now: datetime) -> IdentityUpdate:
    """Recompute the components of ``identity_links`` and update ``identity_map`` stably.

    Runs inside the caller's transaction, so a failed ingest leaves the map as it was.
    """
    links = con.sql("SELECT key_a, key_b FROM identity_links").to_arrow_table()
    if links.num_rows == 0:
        return IdentityUpdate(0, 0, 0, 0)
    a = links.column("key_a").to_numpy(zero_copy_only=False)
    b = links.column("key_b").to_numpy(zero_copy_only=False)
    codes, keys = pd.factorize(np.concatenate([a, b]), sort=True)
    n = len(keys)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (codes[: len(a)], codes[len(a):])), shape=(n, n))
    _, component = connected_components(graph, directed=False)

    frame = pd.DataFrame({"key_hash": keys, "component": component})
    existing = con.execute("SELECT key_hash, customer_id FROM identity_map").fetchdf()
    frame = frame.merge(existing, on="key_hash", how="left")

    per_component = frame.groupby("component")["customer_id"]
    survivor = per_component.transform("min")

    # Merges: every existing id of a component other than its survivor.
    is_merged = (frame["customer_id"].notna() & (frame["customer_id"] != survivor)).to_numpy()
    merged = pd.DataFrame(
        {"customer_id": frame["customer_id"].to_numpy()[is_merged], "into_id": survivor.to_numpy()[is_merged]}
    ).drop_duplicates("customer_id")

    # New components: ids after the largest ever issued, ordered by their smallest key (deterministic).
    issued = con.execute(
        "SELECT greatest(coalesce((SELECT max(customer_id) FROM identity_map), 0),"
        " coalesce((SELECT max(merged_id) FROM identity_merges), 0))"
    ).fetchall()[0][0]
    new_components = (
        frame.loc[survivor.isna()].groupby("component")["key_hash"].min().sort_values().index.to_numpy()
    )
    new_ids = pd.Series(np.arange(issued + 1, issued + 1 + len(new_components), dtype=np.int64),
                        index=new_components)
    customer_id = survivor.fillna(frame["component"].map(new_ids)).astype(np.int64)

    result = pd.DataFrame(
        {
            "key_hash": frame["key_hash"].to_numpy(),
            "key_type": frame["key_hash"].str.split(":", n=1).str[0].to_numpy(),
            "customer_id": customer_id.to_numpy(),
        }
    )
    con.execute("DELETE FROM identity_map")
    con.register("_identity_result", result)
    try:
        con.execute("INSERT INTO identity_map SELECT key_hash, key_type, customer_id FROM _identity_result")
        if len(merged):
            merges = pd.DataFrame(
                {
                    "merged_id": merged["customer_id"].astype(np.int64).to_numpy(),
                    "into_id": merged["into_id"].astype(np.int64).to_numpy(),
                }
            )
            con.register("_identity_merges", merges)
            con.execute(
                "INSERT INTO identity_merges SELECT merged_id, into_id, ?, ? FROM _identity_merges",
                [ingest_id, now.replace(tzinfo=None)],
            )
            con.unregister("_identity_merges")
    finally:
        con.unregister("_identity_result")
    return IdentityUpdate(
        keys=len(result),
        customers=int(result["customer_id"].nunique()),
        new_customers=len(new_components),
        merges=len(merged),
    )


def identity_summary(con: duckdb.DuckDBPyConnection) -> IdentitySummary:
    """How many raw keys resolved into how many customers, and how many merges happened so far."""
    keys, customers = con.execute("SELECT count(*), count(DISTINCT customer_id) FROM identity_map").fetchall()[0]
    by_type = dict(con.execute("SELECT key_type, count(*) FROM identity_map GROUP BY 1 ORDER BY 1").fetchall())
    merges = con.execute("SELECT count(*) FROM identity_merges").fetchall()[0][0]
    return IdentitySummary(keys=keys, customers=customers, keys_by_type=by_type, merges=merges)


def customer_for_key(con: duckdb.DuckDBPyConnection, key_type: KeyType, value: object,
                     settings: Settings) -> int | None:
    """The customer_id of one raw key (hashed here), or None when the key is unknown."""
    hashed = hash_key(key_type, value, settings)
    if hashed is None:
        return None
    rows = con.execute("SELECT customer_id FROM identity_map WHERE key_hash = ?", [hashed]).fetchall()
    return int(rows[0][0]) if rows else None
