"""Identity resolution: one stable ``customer_id`` per person across channels.

Raw keys (account id, e-mail, phone, loyalty card, device id, a retailer's customer number) are
normalised, then stored only as salted hashes ``"<type>:<32 hex chars>"`` (the type stays readable,
the value does not). Keys that occur together on one record are linked; the connected components
of that graph are customers, and :func:`resolve` keeps their ids stable across ingests.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from features.schema import KeyType
from features.settings import Settings

if TYPE_CHECKING:
    # Annotations only: a service's worker hashes request keys with this module before it has
    # imported DuckDB or pandas (serving.lookup).
    import duckdb

SALT_VARIABLE = "rapport_salt"
HASH_HEX_CHARS = 32  # 128 bits: collisions are negligible for billions of keys
_BLANKS = " \t\n\v\f\r"  # stripped around every key, identically in SQL and Python
_BLANKS_SQL = "' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)"


def bind_salt(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Make the salt available to SQL as ``getvariable('rapport_salt')`` without putting it in SQL text.

    Parameters
    ----------
    con
        The DuckDB connection the hashing SQL runs on.
    settings
        Settings that hold the salt (read from the environment).

    Returns
    -------
    None
    """
    con.execute(f"SET VARIABLE {SALT_VARIABLE} = ?", [settings.salt()])


def normalise_sql(key_type: KeyType, expr: str, phone_country_code: str) -> str:
    """SQL that normalises a raw key; NULL for an empty value. Mirrors :func:`normalise_key`.

    Parameters
    ----------
    key_type
        The key's type: it decides the normalisation (e-mail lower-cased without ``+tag``, phone in
        international digits, loyalty card upper-cased without blanks and dashes, device lower-cased).
    expr
        SQL expression of the raw value.
    phone_country_code
        Digits (a leading ``+`` allowed) that replace a phone number's leading 0.

    Returns
    -------
    str
        A DuckDB expression of type VARCHAR.

    Raises
    ------
    ValueError
        ``phone_country_code`` is not digits (only checked for phone keys).
    """
    raw = f"trim(CAST({expr} AS VARCHAR), {_BLANKS_SQL})"
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


def hash_normalised_sql(key_type: KeyType, normalised: str) -> str:
    """SQL for the stored form of an already normalised key (NULL stays NULL).

    Parameters
    ----------
    key_type
        The key's type, kept readable as the prefix.
    normalised
        SQL expression of the normalised value (:func:`normalise_sql`).

    Returns
    -------
    str
        A DuckDB expression that reads the salt bound by :func:`bind_salt`.
    """
    return (
        f"'{key_type.value}:' || substr(sha256(getvariable('{SALT_VARIABLE}') || '|{key_type.value}|' || "
        f"{normalised}), 1, {HASH_HEX_CHARS})"
    )


def hash_sql(key_type: KeyType, expr: str, phone_country_code: str) -> str:
    """SQL for the stored form of a raw key: ``'<type>:' || sha256(salt|type|normalised)[:32]``.

    Parameters
    ----------
    key_type, expr, phone_country_code
        As in :func:`normalise_sql`.

    Returns
    -------
    str
        A DuckDB expression; NULL for an empty key.

    Raises
    ------
    ValueError
        ``phone_country_code`` is not digits.
    """
    return hash_normalised_sql(key_type, normalise_sql(key_type, expr, phone_country_code))


def normalise_key(key_type: KeyType, value: object, phone_country_code: str = "44") -> str | None:
    """Python twin of :func:`normalise_sql`, for request-time lookups (tested equal to the SQL).

    Parameters
    ----------
    key_type
        The key's type (see :func:`normalise_sql`).
    value
        The raw value (converted with ``str``), or ``None``.
    phone_country_code
        Digits that replace a phone number's leading 0.

    Returns
    -------
    str or None
        The normalised key; ``None`` for a missing or blank value.
    """
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
    """The stored form of one raw key, as :func:`hash_sql` computes it.

    Parameters
    ----------
    key_type
        The key's type.
    value
        The raw value, or ``None``.
    settings
        Settings with the salt and ``default_phone_country_code``.

    Returns
    -------
    str or None
        ``"<type>:<32 hex chars>"``; ``None`` for a missing or blank value.
    """
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
    """The identity map's size so far (:func:`identity_summary`)."""

    keys: int
    customers: int
    keys_by_type: dict[str, int]
    merges: int

    @property
    def keys_per_customer(self) -> float:
        """Mean number of raw keys per customer.

        Returns
        -------
        float
            ``keys / customers``; 0.0 for an empty map.
        """
        return self.keys / self.customers if self.customers else 0.0


def resolve(con: duckdb.DuckDBPyConnection, *, ingest_id: int, now: datetime) -> IdentityUpdate:
    """Recompute the components of ``identity_links`` and update ``identity_map`` stably.

    Keys that occur together on one record (an order with an account and an e-mail, a loyalty
    sign-up with a card and an e-mail) are linked; each connected component of that graph is one
    customer.

    Stability: a key that already had a customer keeps it. When new links join components that had
    different customer ids, the smallest (oldest) id survives and every other id is recorded in
    ``identity_merges`` as merged into it; nothing else is renumbered. New components get new ids
    after the largest id ever issued.

    Keys are numbered in SQL, only integer edge arrays cross into Python for scipy's
    ``connected_components`` (union-find), and the id bookkeeping happens in SQL again. Runs inside
    the caller's transaction, so a failed ingest leaves the map as it was.

    Parameters
    ----------
    con
        The store's DuckDB connection, inside a transaction.
    ingest_id
        The ingest that caused the pass, recorded with each merge.
    now
        When the pass ran, recorded with each merge (stored naive).

    Returns
    -------
    IdentityUpdate
        Keys and customers in the map after the pass, new customers and merges recorded.
    """
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _id_keys AS SELECT key_hash, CAST(row_number() OVER () - 1 AS BIGINT) AS code "
        "FROM (SELECT key_a AS key_hash FROM identity_links UNION SELECT key_b FROM identity_links)"
    )
    n = con.execute("SELECT count(*) FROM _id_keys").fetchall()[0][0]
    if n == 0:
        con.execute("DROP TABLE _id_keys")
        return IdentityUpdate(0, 0, 0, 0)
    edges = con.execute(
        "SELECT a.code AS a, b.code AS b FROM identity_links l "
        "JOIN _id_keys a ON a.key_hash = l.key_a JOIN _id_keys b ON b.key_hash = l.key_b"
    ).fetchnumpy()
    # Imported here: numpy, pandas and scipy cost seconds that readers of the identity map (rapport
    # data report) never need.
    import numpy as np
    import pandas as pd
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(edges["a"]), dtype=np.int8), (edges["a"], edges["b"])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    components = pd.DataFrame({"code": np.arange(n, dtype=np.int64), "component": component.astype(np.int64)})
    con.register("_id_components", components)
    try:
        issued = con.execute(
            "SELECT greatest(coalesce((SELECT max(customer_id) FROM identity_map), 0),"
            " coalesce((SELECT max(merged_id) FROM identity_merges), 0))"
        ).fetchall()[0][0]
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _id_resolved AS
            WITH keyed AS (
                SELECT k.key_hash, c.component, m.customer_id AS old_id
                FROM _id_keys k JOIN _id_components c USING (code) LEFT JOIN identity_map m USING (key_hash)
            ), per_component AS (
                SELECT component, min(old_id) AS survivor, min(key_hash) AS first_key FROM keyed GROUP BY component
            ), numbered AS (
                -- New people get ids after the largest ever issued, in the order of their smallest key.
                SELECT component, survivor,
                       coalesce(survivor, ? + row_number() OVER (PARTITION BY survivor IS NULL ORDER BY first_key)) AS customer_id
                FROM per_component
            )
            SELECT k.key_hash, k.old_id, n.survivor, n.customer_id FROM keyed k JOIN numbered n USING (component)
            """,
            [issued],
        )
        merges = con.execute(
            "INSERT INTO identity_merges SELECT DISTINCT old_id, customer_id, ?, ? FROM _id_resolved "
            "WHERE old_id IS NOT NULL AND old_id <> customer_id",
            [ingest_id, now.replace(tzinfo=None)],
        ).fetchall()[0][0]
        con.execute("DELETE FROM identity_map")
        con.execute(
            "INSERT INTO identity_map SELECT key_hash, split_part(key_hash, ':', 1), customer_id FROM _id_resolved"
        )
        keys, customers, new_customers = con.execute(
            "SELECT count(*), count(DISTINCT customer_id), count(DISTINCT customer_id) FILTER (WHERE survivor IS NULL)"
            " FROM _id_resolved"
        ).fetchall()[0]
    finally:
        con.unregister("_id_components")
        con.execute("DROP TABLE IF EXISTS _id_keys")
        con.execute("DROP TABLE IF EXISTS _id_resolved")
    return IdentityUpdate(keys=keys, customers=customers, new_customers=new_customers, merges=merges)


def identity_summary(con: duckdb.DuckDBPyConnection) -> IdentitySummary:
    """How many raw keys resolved into how many customers, and how many merges happened so far.

    Parameters
    ----------
    con
        The store's DuckDB connection.

    Returns
    -------
    IdentitySummary
        Keys, customers, keys by type and merges.
    """
    keys, customers = con.execute("SELECT count(*), count(DISTINCT customer_id) FROM identity_map").fetchall()[0]
    by_type = dict(con.execute("SELECT key_type, count(*) FROM identity_map GROUP BY 1 ORDER BY 1").fetchall())
    merges = con.execute("SELECT count(*) FROM identity_merges").fetchall()[0][0]
    return IdentitySummary(keys=keys, customers=customers, keys_by_type=by_type, merges=merges)


def customer_for_key(con: duckdb.DuckDBPyConnection, key_type: KeyType, value: object,
                     settings: Settings) -> int | None:
    """The customer_id of one raw key (hashed here), or None when the key is unknown.

    Parameters
    ----------
    con
        The store's DuckDB connection.
    key_type
        The key's type.
    value
        The raw value (never logged or stored in clear).
    settings
        Settings with the salt and ``default_phone_country_code``.

    Returns
    -------
    int or None
        The customer id; ``None`` for an unknown or blank key.
    """
    hashed = hash_key(key_type, value, settings)
    if hashed is None:
        return None
    rows = con.execute("SELECT customer_id FROM identity_map WHERE key_hash = ?", [hashed]).fetchall()
    return int(rows[0][0]) if rows else None
