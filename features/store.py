"""The embedded DuckDB store: table layout and connections.

Raw keys never reach these tables in clear: ``record_key`` and ``identity_map.key_hash`` hold
salted hashes (see :mod:`features.identity`). ``customer_id`` is resolved at query time by joining
``lines.record_key`` to ``identity_map``, so a merge of two customers never rewrites history rows.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from features.errors import RapportError
from features.moments import utc_naive
from features.settings import Settings

if TYPE_CHECKING:
    import ibis

SCHEMA_VERSION = 1

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS ingests (
        ingest_id INTEGER PRIMARY KEY, started_at TIMESTAMP, finished_at TIMESTAMP,
        files INTEGER, accepted BIGINT, quarantined BIGINT, already_present BIGINT)""",
    """CREATE TABLE IF NOT EXISTS ingested_files (
        file_id INTEGER PRIMARY KEY, ingest_id INTEGER, path VARCHAR, source VARCHAR, sha256 VARCHAR,
        rows BIGINT, accepted BIGINT, quarantined BIGINT, already_present BIGINT)""",
    # One row per sold line (orders, store receipts, generic transactions), gross of returns.
    """CREATE TABLE IF NOT EXISTS lines (
        line_key VARCHAR, order_key VARCHAR, order_id VARCHAR, line_id VARCHAR, source VARCHAR,
        channel VARCHAR, ts TIMESTAMP, record_key VARCHAR, is_guest BOOLEAN, item_id VARCHAR,
        quantity BIGINT, unit_price DOUBLE, discount DOUBLE, gross_amount DOUBLE,
        store_id VARCHAR, country VARCHAR, row_hash UBIGINT, file_id INTEGER)""",
    """CREATE TABLE IF NOT EXISTS returns (
        return_key VARCHAR, line_key VARCHAR, quantity BIGINT, refund_amount DOUBLE, ts TIMESTAMP,
        row_hash UBIGINT, file_id INTEGER)""",
    """CREATE TABLE IF NOT EXISTS items (
        item_id VARCHAR PRIMARY KEY, name VARCHAR, category VARCHAR, price DOUBLE, active BOOLEAN,
        is_product BOOLEAN, file_id INTEGER)""",
    """CREATE TABLE IF NOT EXISTS events (
        record_key VARCHAR, item_id VARCHAR, event_type VARCHAR, ts TIMESTAMP, row_hash UBIGINT,
        file_id INTEGER)""",
    # Distinct pairs of hashed keys seen on one record (key_a = key_b for a record with one key).
    """CREATE TABLE IF NOT EXISTS identity_links (key_a VARCHAR, key_b VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS identity_map (
        key_hash VARCHAR PRIMARY KEY, key_type VARCHAR, customer_id BIGINT)""",
    """CREATE TABLE IF NOT EXISTS identity_merges (
        merged_id BIGINT, into_id BIGINT, ingest_id INTEGER, merged_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        ingest_id INTEGER, file_id INTEGER, source_file VARCHAR, source VARCHAR, row_number BIGINT,
        reason VARCHAR, record VARCHAR, column_name VARCHAR, file_column VARCHAR)""",
)
#: Columns added after a store's first release, for stores created before them.
_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("quarantine", "column_name", "VARCHAR"),
    ("quarantine", "file_column", "VARCHAR"),
)


class StoreBusyError(RapportError, RuntimeError):
    """Another process holds the store's lock for longer than ``store_busy_timeout_seconds``."""


#: DuckDB's lock conflict message names the holder: "... Conflicting lock is held in /usr/bin/python3 (PID 123)".
_HOLDER = re.compile(r"\(PID (\d+)\)")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def connect(settings: Settings, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (and on first use create) the database under ``settings.data_dir``.

    A store held by another process (an ingest, or a reader while this one writes) is waited for
    up to ``store_busy_timeout_seconds``; then the error names the process holding it.

    Parameters
    ----------
    settings
        Where the store is (``database_path``), its memory and thread limits and how long a lock held
        by another process is waited for.
    read_only
        Open without writing (several readers may share the store); the store must exist.

    Returns
    -------
    duckdb.DuckDBPyConnection
        The open connection, configured, its tables created when not read only.

    Raises
    ------
    FileNotFoundError
        ``read_only`` and there is no database yet.
    StoreBusyError
        Another process held the store's lock for longer than ``store_busy_timeout_seconds``.
    """
    path: Path = settings.database_path
    if read_only and not path.exists():
        raise FileNotFoundError(
            f"no database at {path}: ingest data first (rapport data ingest DIR) or set RAPPORT_DATA_DIR"
        )
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = _connect_waiting(path, read_only, settings.store_busy_timeout_seconds)
    configure(con, settings)
    if not read_only:
        create_tables(con)
    return con


def _connect_waiting(path: Path, read_only: bool, timeout: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                raise StoreBusyError(
                    f"store {path} is in use by {_holder(str(exc))}; waited {timeout:g} s "
                    "(store_busy_timeout_seconds). Run again when it has finished, or raise the setting."
                ) from None
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, 1.0)


def _holder(message: str) -> str:
    """The process named in DuckDB's lock message: its id and command words (from /proc where there is one)."""
    found = _HOLDER.search(message)
    if found is None:
        return "another process"
    pid = found.group(1)
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return f"process {pid}"
    # Program and subcommand words only (``python3 rapport data ingest``): a file argument could name
    # a person's export, so only plain words are shown (no dots, slashes or '=' inside).
    words = [Path(a).name for a in args if a and not a.startswith("-")]
    words = [w for w in words if _WORD.fullmatch(w)][:4]
    return f"process {pid} ({' '.join(words)})" if words else f"process {pid}"


def connect_memory(settings: Settings) -> duckdb.DuckDBPyConnection:
    """An in-memory store with the same layout (tests, notebooks).

    Parameters
    ----------
    settings
        The memory and thread limits of the connection.

    Returns
    -------
    duckdb.DuckDBPyConnection
        An empty store with every table created.
    """
    con = duckdb.connect(":memory:")
    configure(con, settings)
    create_tables(con)
    return con


def configure(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Apply the settings to a connection: memory limit, threads, UTC time zone, no progress bar.

    Parameters
    ----------
    con
        An open DuckDB connection.
    settings
        ``duckdb_memory_limit`` and ``duckdb_threads`` are read.

    Returns
    -------
    None
    """
    con.execute(f"SET memory_limit = '{settings.duckdb_memory_limit}'")
    con.execute(f"SET threads = {int(settings.duckdb_threads)}")
    con.execute("SET TimeZone = 'UTC'")
    # Progress is the CLI's job, not the library's. Inside Jupyter without ipywidgets DuckDB starts with
    # the bar off and refuses any change to the setting (duckdb/duckdb#7590), so only switch it off when on.
    if con.execute("SELECT current_setting('enable_progress_bar')").fetchall()[0][0]:
        con.execute("SET enable_progress_bar = false")


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the store's tables (:data:`DDL`) where missing, add the columns of later releases and
    record the schema version.

    Parameters
    ----------
    con
        An open, writable DuckDB connection.

    Returns
    -------
    None
    """
    for statement in DDL:
        con.execute(statement)
    for table, column, type_ in _ADDED_COLUMNS:
        con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {type_}")
    con.execute(
        "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO NOTHING", [str(SCHEMA_VERSION)]
    )


def sales_range(con: duckdb.DuckDBPyConnection, *, before: datetime | None = None) -> tuple[datetime, datetime] | None:
    """The first and the last stored sale line's timestamps (naive UTC, as the store keeps time).

    Parameters
    ----------
    con:
        An open store.
    before:
        Only sales strictly before this moment count (a backtest's cutoff); None: every sale.

    Returns
    -------
    ``(first, last)``, or None when the store holds no such sale.
    """
    if before is None:
        first, last = con.execute("SELECT min(ts), max(ts) FROM lines").fetchall()[0]
    else:
        first, last = con.execute("SELECT min(ts), max(ts) FROM lines WHERE ts < ?", [utc_naive(before)]).fetchall()[0]
    if first is None:
        return None
    return utc_naive(first), utc_naive(last)


def ibis_backend(con: duckdb.DuckDBPyConnection) -> ibis.BaseBackend:
    """The Ibis backend over an open DuckDB connection: feature code only ever sees this.

    Parameters
    ----------
    con
        An open DuckDB connection (a store from :func:`connect` or :func:`connect_memory`).

    Returns
    -------
    ibis.BaseBackend
        An Ibis DuckDB backend sharing ``con``.
    """
    # Imported here: Ibis costs about a second that commands reading the store by SQL never need.
    import ibis

    return ibis.duckdb.from_connection(con)
