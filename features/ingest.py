"""Ingestion: raw channel files into the unified store, with a quarantine for bad rows.

The rules, in the order they are applied:

1. *File level* (the whole ingest fails, nothing is written): a file that cannot be read, misses a
   required column, or whose column holds no value of the expected type at all. The error names the
   file, the column and what was expected.
2. *Row level* (never a crash, never a silent drop): each bad row goes to the ``quarantine`` table
   with the file, its row number (1 = first data row) and the reason; customer keys in the stored
   record are hashed like everywhere else.
3. *Idempotence*: a file whose bytes were ingested before is skipped; a line whose id is already in
   the store with identical content is counted as already present; with different content it is
   quarantined as a duplicate line id.

All files of one call are written in a single DuckDB transaction together with the identity update,
so a failure leaves the store exactly as it was. Heavy work is SQL inside DuckDB; Python only
orchestrates.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from features.discovery import IngestError, RawInput
from features.identity import IdentityUpdate, bind_salt, hash_sql, resolve
from features.schema import (
    CHANNELS,
    DUCKDB_TYPES,
    EVENT_KEY_TYPES,
    EXPECTED,
    KEY_COLUMNS,
    SOURCES,
    ColumnType,
    EventType,
    KeyType,
    QuarantineReason,
    SourceSpec,
)
from features.settings import Settings

log = logging.getLogger(__name__)

SALES_SOURCES = ("orders", "store_receipts", "transactions")
Q = QuarantineReason


@dataclass(frozen=True)
class FileResult:
    label: str
    source: str
    rows: int
    accepted: int
    quarantined: int
    already_present: int
    skipped: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class IngestResult:
    ingest_id: int
    files: tuple[FileResult, ...]
    #: (file label, reason, count) for every quarantined row of this ingest.
    quarantine_counts: tuple[tuple[str, str, int], ...]
    identity: IdentityUpdate
    ignored_paths: tuple[tuple[str, str], ...]
    quarantine_file: Path | None
    notes: tuple[str, ...] = ()

    @property
    def accepted(self) -> int:
        return sum(f.accepted for f in self.files)

    @property
    def quarantined(self) -> int:
        return sum(f.quarantined for f in self.files)

    @property
    def already_present(self) -> int:
        return sum(f.already_present for f in self.files)


# --- SQL building blocks --------------------------------------------------------------------------


def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class _Columns:
    """How the contract columns of one input map onto its raw columns, with their raw types."""

    raw_name: dict[str, str]  # contract -> raw (present columns only)
    raw_type: dict[str, str]  # contract -> DuckDB type of the raw column
    ignored: tuple[str, ...]


def _relation(con: duckdb.DuckDBPyConnection, inp: RawInput, index: int) -> str:
    if inp.table is not None:
        name = f"_rapport_input_{index}"
        con.register(name, inp.table)
        return _q(name)
    assert inp.path is not None
    path = _lit(str(inp.path))
    name = inp.path.name.lower()
    if name.endswith(".parquet"):
        return f"read_parquet({path})"
    delim = ", delim = '\\t'" if name.endswith(".tsv") else ""
    return f"read_csv({path}, all_varchar = true, header = true{delim})"


def _numbered(relation: str) -> str:
    """The input with ``_row`` = 1 for its first data row, identical on every scan."""
    if relation.startswith("read_parquet("):
        numbered = relation[:-1] + ", file_row_number = true)"
        return f"SELECT file_row_number + 1 AS _row, * EXCLUDE (file_row_number) FROM {numbered}"
    # CSV and Arrow scans keep file order while preserve_insertion_order is on (the default,
    # switched off only around inserts).
    return f"SELECT row_number() OVER () AS _row, * FROM {relation}"


def _resolve_columns(spec: SourceSpec, inp: RawInput, described: list[tuple[str, str]]) -> _Columns:
    raw_types = dict(described)
    by_lower = {name.strip().lower(): name for name in raw_types}
    unknown = sorted(set(inp.mapping) - set(spec.column_names))
    if unknown:
        raise IngestError(
            f"{inp.label}: mapping names {', '.join(unknown)}, which are not columns of {spec.name}; "
            f"its columns are {', '.join(spec.column_names)}"
        )
    raw_name: dict[str, str] = {}
    for col in spec.columns:
        if col.name in inp.mapping:
            mapped = inp.mapping[col.name]
            if mapped not in raw_types:
                raise IngestError(
                    f"{inp.label}: mapping says column {col.name!r} is {mapped!r}, but the file has no such "
                    f"column; its columns are {', '.join(raw_types)}"
                )
            raw_name[col.name] = mapped
        elif col.name in by_lower:
            raw_name[col.name] = by_lower[col.name]
    missing = [c for c in spec.required if c not in raw_name]
    if missing:
        details = "; ".join(f"{c} ({spec.column(c).description})" for c in missing)
        raise IngestError(
            f"{inp.label}: missing required column(s) for {spec.name}: {details}. The file has: "
            f"{', '.join(raw_types)}. Rename them, or map them with --map {missing[0]}=COLUMN or a mapping file."
        )
    used = set(raw_name.values())
    return _Columns(
        raw_name=raw_name,
        raw_type={c: raw_types[r] for c, r in raw_name.items()},
        ignored=tuple(r for r in raw_types if r not in used),
    )


def _raw(cols: _Columns, name: str) -> str:
    return f"r.{_q(cols.raw_name[name])}"


def _parsed(spec: SourceSpec, cols: _Columns, name: str, settings: Settings) -> str:
    """SQL for a contract column parsed into its contract type (NULL where it does not parse)."""
    ctype = spec.column(name).type
    if name not in cols.raw_name:
        return f"CAST(NULL AS {DUCKDB_TYPES[ctype]})".replace("TIMESTAMPTZ", "TIMESTAMP")
    raw, rtype = _raw(cols, name), cols.raw_type[name].upper()
    if ctype is ColumnType.STRING:
        if rtype in ("DOUBLE", "FLOAT", "REAL"):  # ids exported as floats: 12346.0 -> "12346"
            return f"CASE WHEN {raw} = round({raw}) THEN CAST(CAST({raw} AS BIGINT) AS VARCHAR) ELSE CAST({raw} AS VARCHAR) END"
        return f"nullif(trim(CAST({raw} AS VARCHAR)), '')"
    if ctype is ColumnType.INTEGER:
        if rtype in ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER"):
            return f"CAST({raw} AS BIGINT)"
        number = f"TRY_CAST({raw} AS DOUBLE)"
        return f"CASE WHEN {number} = round({number}) THEN CAST({number} AS BIGINT) END"
    if ctype is ColumnType.NUMBER:
        return f"TRY_CAST({raw} AS DOUBLE)"
    if ctype is ColumnType.BOOLEAN:
        return f"TRY_CAST({raw} AS BOOLEAN)"
    # Timestamps are stored as naive UTC. A value without an offset is in settings.timezone
    # (the session TimeZone is set to it while ingesting).
    if rtype.startswith("TIMESTAMP WITH TIME ZONE") or rtype == "TIMESTAMPTZ":
        return f"timezone('UTC', {raw})"
    if rtype.startswith("TIMESTAMP") or rtype == "DATE":
        return f"timezone('UTC', timezone({_lit(settings.timezone)}, CAST({raw} AS TIMESTAMP)))"
    return f"timezone('UTC', TRY_CAST({raw} AS TIMESTAMPTZ))"


def _missing(cols: _Columns, name: str) -> str:
    if name not in cols.raw_name:
        return "TRUE"
    raw = _raw(cols, name)
    return f"({raw} IS NULL OR trim(CAST({raw} AS VARCHAR)) = '')"


def _rate_sql(currency_expr: str, settings: Settings) -> str:
    """Conversion rate into the base currency; NULL for a currency without a configured rate."""
    whens = [f"WHEN {_lit(settings.currency)} THEN 1.0"]
    whens += [f"WHEN {_lit(code)} THEN {float(rate)!r}" for code, rate in settings.currency_rates.items()
              if code != settings.currency]
    return f"CASE upper(coalesce({currency_expr}, {_lit(settings.currency)})) {' '.join(whens)} END"


_PARSE_REASON = {
    ColumnType.TIMESTAMP: Q.BAD_TIMESTAMP,
    ColumnType.INTEGER: Q.BAD_NUMBER,
    ColumnType.NUMBER: Q.BAD_NUMBER,
    ColumnType.BOOLEAN: Q.BAD_BOOLEAN,
}


# --- the ingest -----------------------------------------------------------------------------------


class _Ingest:
    """State of one ingest call: the connection inside its transaction and the ids it issued.

    Per input the work happens in three temporary relations: ``_raw`` (the file, numbered rows),
    ``_checked`` (parsed contract columns, hashed keys, derived columns and the first row-level
    reason) and ``_verdict`` (only the rows that are *not* plainly accepted: quarantined or already
    present). Accepted rows are ``_checked`` minus ``_verdict``; keeping ``_verdict`` small is what
    makes ten million lines fast.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, settings: Settings, now: datetime) -> None:
        self.con = con
        self.settings = settings
        # Stored times are naive UTC; a naive `now` is taken to be UTC already.
        self.now = now.astimezone(timezone.utc).replace(tzinfo=None) if now.tzinfo else now
        self.ingest_id = self._scalar("SELECT coalesce(max(ingest_id), 0) + 1 FROM ingests")
        self.next_file_id = self._scalar("SELECT coalesce(max(file_id), 0) + 1 FROM ingested_files")

    def _scalar(self, sql: str, params: list[object] | None = None) -> Any:
        return self.con.execute(sql, params or []).fetchall()[0][0]

    # - per input -

    def run(self, inp: RawInput, index: int) -> FileResult:
        spec = SOURCES[inp.source]
        digest = _file_digest(inp.path) if inp.path is not None else None
        if digest is not None:
            seen = self.con.execute(
                "SELECT path, ingest_id FROM ingested_files WHERE sha256 = ? AND source = ? LIMIT 1",
                [digest, spec.name],
            ).fetchall()
            if seen:
                return FileResult(inp.label, spec.name, 0, 0, 0, 0,
                                  skipped=f"same content as {seen[0][0]}, ingested in ingest #{seen[0][1]}")
        relation = _relation(self.con, inp, index)
        try:
            described = [(row[0], row[1]) for row in self.con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]
            cols = _resolve_columns(spec, inp, described)
            self.con.execute(f"CREATE OR REPLACE TEMP VIEW _raw AS {_numbered(relation)}")
            # The first full scan of the file: a file that cannot be parsed fails here.
            self._create_checked(spec, cols)
        except duckdb.Error as exc:
            raise IngestError(f"{inp.label}: cannot be read as a {spec.name} file: {exc}") from exc
        self._check_whole_columns(spec, cols, inp.label)

        file_id = self.next_file_id
        self.next_file_id += 1
        if spec.name in SALES_SOURCES:
            self._verdict_sales()
        elif spec.name == "returns":
            self._verdict_returns()
        elif spec.name == "catalogue":
            self._verdict_simple("item_id", Q.DUPLICATE_ITEM)
        elif spec.name == "browse_events":
            self._verdict_events()
        else:  # customer_keys
            self._verdict_simple(None, None)
        self.con.execute(
            "CREATE OR REPLACE TEMP VIEW _accepted AS SELECT c.* FROM _checked c ANTI JOIN _verdict v ON v._row = c._row"
        )
        if spec.name in SALES_SOURCES:
            self._store_sales(spec, file_id)
        elif spec.name == "returns":
            self._store_returns(file_id)
        elif spec.name == "catalogue":
            self._store_catalogue(file_id)
        elif spec.name == "browse_events":
            self._store_events(file_id)
        else:
            self._insert_links([f"_h_{c}" for c in KEY_COLUMNS[spec.name]])
        rows = self._scalar("SELECT count(*) FROM _checked")
        quarantined, present = self.con.execute(
            "SELECT count(final_reason), count(*) FILTER (WHERE already_present) FROM _verdict"
        ).fetchall()[0]
        accepted = rows - quarantined - present
        self._store_quarantine(spec, cols, inp.label, file_id)
        self.con.execute(
            "INSERT INTO ingested_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [file_id, self.ingest_id, inp.label, spec.name, digest, rows, accepted, quarantined, present],
        )
        for view in ("_accepted", "_raw"):
            self.con.execute(f"DROP VIEW IF EXISTS {view}")
        for temp in ("_verdict", "_checked"):
            self.con.execute(f"DROP TABLE IF EXISTS {temp}")
        if inp.table is not None:
            self.con.unregister(f"_rapport_input_{index}")
        notes = (f"ignored columns not in the contract: {', '.join(cols.ignored)}",) if cols.ignored else ()
        return FileResult(inp.label, spec.name, rows, accepted, quarantined, present, notes=notes)

    def _create_checked(self, spec: SourceSpec, cols: _Columns) -> None:
        """``_checked``: parsed contract columns, hashed keys, derived columns and the first
        row-level reason (NULL for a good row), in one pass over the file.

        Three nested selects so that each expensive expression (timestamp parsing, key
        normalisation) is evaluated once per row; raw customer keys are dropped as soon as they
        are hashed, so not even the temporary tables hold them in clear.
        """
        s = self.settings
        cc = s.default_phone_country_code
        present = [c for c in spec.columns if c.name in cols.raw_name]
        typed = [c.name for c in present if c.type in _PARSE_REASON]
        key_columns = KEY_COLUMNS.get(spec.name, {})
        # Keys repeat on many lines: normalise and hash each distinct raw value once, then join.
        joins = []
        for i, (col, key_type) in enumerate(key_columns.items()):
            if col not in cols.raw_name:
                continue
            raw = f"CAST({_raw(cols, col)} AS VARCHAR)"
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE _keymap_{i} AS SELECT raw, {hash_sql(key_type, 'raw', cc)} AS h "
                f"FROM (SELECT DISTINCT {raw} AS raw FROM _raw r WHERE {raw} IS NOT NULL)"
            )
            joins.append((f"_keymap_{i}", f"LEFT JOIN _keymap_{i} k{i} ON k{i}.raw = {raw}", f"k{i}.h", col))
        hashed = {col: h for _, _, h, col in joins}
        # Level 1: parse, look up hashed keys, flag missing values.
        level1 = ["r._row AS _row"]
        level1 += [f"{_parsed(spec, cols, c.name, s)} AS {_q(c.name)}" for c in spec.columns if c.name not in key_columns]
        level1 += [f"{_missing(cols, c.name)} AS {_q('_m_' + c.name)}" for c in spec.columns]
        level1 += [f"{hashed.get(col, 'CAST(NULL AS VARCHAR)')} AS {_q('_h_' + col)}" for col in key_columns]
        if spec.name == "browse_events":
            key = _raw(cols, "customer_key")
            whens = " ".join(f"WHEN {_lit(kt.value)} THEN {hash_sql(kt, key, cc)}" for kt in EVENT_KEY_TYPES)
            level1.append(f"CASE lower(trim(CAST({_raw(cols, 'key_type')} AS VARCHAR))) {whens} END AS _h_event")
        source = " ".join(["_raw r", *(join for _, join, _, _ in joins)])
        # Level 2: flag values that are present but do not parse.
        level2 = ["*"]
        level2 += [f"NOT {_q('_m_' + name)} AND {_q(name)} IS NULL AS {_q('_bad_' + name)}" for name in typed]
        # Level 3: derived columns and the first failing rule.
        reasons: list[tuple[str, QuarantineReason]] = [(_q("_m_" + name), Q.MISSING_VALUE) for name in spec.required]
        reasons += [(_q("_bad_" + name), _PARSE_REASON[spec.column(name).type]) for name in typed]
        reasons += self._row_rules(spec)
        if "timestamp" in spec.column_names:
            future = self.now + timedelta(hours=s.future_tolerance_hours)
            reasons.append((f"\"timestamp\" > TIMESTAMP '{future.isoformat(sep=' ')}'", Q.FUTURE_TIMESTAMP))
        case = " ".join(f"WHEN {cond} THEN {_lit(reason.value)}" for cond, reason in reasons)
        flags = ", ".join(_q("_m_" + c.name) for c in spec.columns)
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE _checked AS SELECT * EXCLUDE ({flags}), "
            f"{self._derived_columns(spec)} CASE {case} END AS reason "
            f"FROM (SELECT {', '.join(level2)} FROM (SELECT {', '.join(level1)} FROM {source}))"
        )
        for table, _, _, _ in joins:
            self.con.execute(f"DROP TABLE {table}")
        if spec.name == "transactions":
            # Generic exports often have no order or line numbers: the derived order above, and the
            # position within it.
            self.con.execute("CREATE OR REPLACE TEMP TABLE _checked AS SELECT * REPLACE (_order_id AS order_id) FROM _checked")
            self.con.execute(
                "CREATE OR REPLACE TEMP TABLE _checked AS SELECT * REPLACE ("
                " coalesce(line_id, CAST(row_number() OVER (PARTITION BY order_id ORDER BY _row) AS VARCHAR)) AS line_id)"
                " FROM _checked"
            )
            self.con.execute(
                "CREATE OR REPLACE TEMP TABLE _checked AS SELECT * REPLACE (order_id || '/' || line_id AS line_key,"
                f" {_SALE_HASH} AS row_hash) FROM _checked"
            )

    def _check_whole_columns(self, spec: SourceSpec, cols: _Columns, label: str) -> None:
        """A typed column none of whose values parse is a file-level error, not 10,000 bad rows."""
        typed = [c.name for c in spec.columns if c.type in _PARSE_REASON and c.name in cols.raw_name]
        if not typed:
            return
        parts = [f"count({_q(c)}), count(*) FILTER (WHERE {_q('_bad_' + c)})" for c in typed]
        values = self.con.execute(f"SELECT {', '.join(parts)} FROM _checked").fetchall()[0]
        for i, c in enumerate(typed):
            parsed, bad = values[2 * i], values[2 * i + 1]
            if bad and not parsed:
                sample = self.con.execute(
                    f"SELECT CAST({_raw(cols, c)} AS VARCHAR) FROM _raw r WHERE r._row = "
                    f"(SELECT min(_row) FROM _checked WHERE {_q('_bad_' + c)})"
                ).fetchall()[0][0]
                raise IngestError(
                    f"{label}: column {cols.raw_name[c]!r} ({spec.name}.{c}) should hold "
                    f"{EXPECTED[spec.column(c).type]}, but none of its {bad} values does (e.g. {sample!r})"
                )

    def _row_rules(self, spec: SourceSpec) -> list[tuple[str, QuarantineReason]]:
        s = self.settings
        rules: list[tuple[str, QuarantineReason]] = []
        if spec.name in SALES_SOURCES:
            rules += [
                ("quantity <= 0", Q.BAD_QUANTITY),
                ("unit_price <= 0", Q.NON_POSITIVE_PRICE),
                ("coalesce(discount, 0) < 0 OR coalesce(discount, 0) > quantity * unit_price", Q.NEGATIVE_AMOUNT),
            ]
            if "channel" in spec.column_names:
                allowed = ", ".join(_lit(c) for c in CHANNELS)
                rules.append((f"channel IS NOT NULL AND lower(channel) NOT IN ({allowed})", Q.UNKNOWN_CHANNEL))
            rules.append((f"({_rate_sql('currency', s)}) IS NULL", Q.UNKNOWN_CURRENCY))
        elif spec.name == "returns":
            rules += [
                ("quantity <= 0", Q.BAD_QUANTITY),
                ("refund_amount < 0", Q.NEGATIVE_AMOUNT),
                (f"({_rate_sql('currency', s)}) IS NULL", Q.UNKNOWN_CURRENCY),
            ]
        elif spec.name == "catalogue":
            rules.append(("price < 0", Q.NEGATIVE_AMOUNT))
        elif spec.name == "browse_events":
            kinds = ", ".join(_lit(k.value) for k in EVENT_KEY_TYPES)
            events = ", ".join(_lit(e.value) for e in EventType)
            rules += [
                (f"lower(key_type) NOT IN ({kinds})", Q.UNKNOWN_KEY_TYPE),
                (f"lower(event_type) NOT IN ({events})", Q.UNKNOWN_EVENT_TYPE),
                ("_h_event IS NULL", Q.NO_KEYS),
            ]
        elif spec.name == "customer_keys":
            hashed = [f"_h_{c}" for c in KEY_COLUMNS["customer_keys"]]
            rules.append((f"coalesce({', '.join(hashed)}) IS NULL", Q.NO_KEYS))
        return rules

    def _derived_columns(self, spec: SourceSpec) -> str:
        """Columns computed from the parsed ones (DuckDB lets later ones use earlier aliases)."""
        s = self.settings
        rate = f"{_rate_sql('currency', s)} AS rate,"
        if spec.name == "orders":
            return (
                "coalesce(_h_account_id, _h_email, _h_device_id) AS record_key, lower(channel) AS _channel,"
                " _h_account_id IS NULL AND lower(channel) <> 'store' AS is_guest, CAST(NULL AS VARCHAR) AS store_id,"
                f" {rate} order_id || '/' || line_id AS line_key, {_SALE_HASH} AS row_hash,"
            )
        if spec.name == "store_receipts":
            return (
                "_h_loyalty_card AS record_key, 'store' AS _channel, FALSE AS is_guest, receipt_id AS order_id,"
                f" {rate} receipt_id || '/' || line_id AS line_key, {_SALE_HASH} AS row_hash,"
            )
        if spec.name == "transactions":
            channel = f"lower(coalesce(channel, {_lit(s.default_channel)}))"
            return (
                f"_h_customer_key AS record_key, {channel} AS _channel,"
                f" _h_customer_key IS NULL AND {channel} <> 'store' AS is_guest, CAST(NULL AS VARCHAR) AS store_id,"
                # Without order ids, one customer's lines at one timestamp form one order.
                " coalesce(order_id, coalesce(_h_customer_key, 'anonymous') || '@'"
                " || strftime(\"timestamp\", '%Y-%m-%dT%H:%M:%S')) AS _order_id,"
                f" {rate} CAST(NULL AS VARCHAR) AS line_key, CAST(NULL AS UBIGINT) AS row_hash,"
            )
        if spec.name == "returns":
            return (
                f"{rate} order_id || '/' || line_id AS line_key, return_id || '/' || line_key AS return_key,"
                " hash(return_id, line_key, quantity, refund_amount, \"timestamp\") AS row_hash,"
            )
        if spec.name == "customer_keys":
            hashed = ", ".join(f"_h_{c}" for c in KEY_COLUMNS["customer_keys"])
            return f"coalesce({hashed}) AS record_key,"
        if spec.name == "browse_events":
            return "_h_event AS record_key, hash(_h_event, item_id, lower(event_type), \"timestamp\") AS row_hash,"
        return ""

    # - verdicts: the rows that are not plainly accepted -

    def _verdict_sales(self) -> None:
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _verdict AS
            WITH existing AS (
                SELECT c._row, c.row_hash = l.row_hash AS same
                FROM _checked c JOIN lines l ON l.line_key = c.line_key WHERE c.reason IS NULL
            ), repeated AS (
                SELECT line_key FROM _checked WHERE reason IS NULL GROUP BY line_key HAVING count(*) > 1
            ), later AS (
                SELECT _row FROM (
                    SELECT _row, row_number() OVER (PARTITION BY line_key ORDER BY _row) AS n FROM _checked
                    WHERE reason IS NULL AND line_key IN (SELECT line_key FROM repeated)
                ) WHERE n > 1
            )
            SELECT _row, reason AS final_reason, FALSE AS already_present FROM _checked WHERE reason IS NOT NULL
            UNION ALL
            SELECT _row, CASE WHEN same THEN NULL ELSE {_lit(Q.DUPLICATE_LINE.value)} END, same FROM existing
            UNION ALL
            SELECT _row, {_lit(Q.DUPLICATE_LINE.value)}, FALSE FROM later WHERE _row NOT IN (SELECT _row FROM existing)
            """
        )

    def _verdict_returns(self) -> None:
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _verdict AS
            WITH j AS (
                SELECT c._row, c.reason, c.quantity, c.line_key, c.return_key, c."timestamp", c.row_hash,
                       l.quantity AS sold_quantity, l.ts AS sold_ts, l.line_key IS NOT NULL AS sale_known,
                       r.row_hash AS existing_hash
                FROM _checked c LEFT JOIN lines l ON l.line_key = c.line_key
                LEFT JOIN returns r ON r.return_key = c.return_key
            ), s AS (
                SELECT *, CASE
                    WHEN reason IS NOT NULL THEN reason
                    WHEN NOT sale_known THEN {_lit(Q.ORPHAN_RETURN.value)}
                    WHEN "timestamp" < sold_ts THEN {_lit(Q.RETURN_BEFORE_SALE.value)}
                    WHEN existing_hash IS NOT NULL AND existing_hash <> row_hash THEN {_lit(Q.DUPLICATE_LINE.value)}
                END AS r1,
                coalesce(reason IS NULL AND existing_hash = row_hash, FALSE) AS already_present
                FROM j
            ), d AS (
                SELECT *, CASE
                    WHEN r1 IS NULL AND NOT already_present AND row_number() OVER (
                        PARTITION BY return_key, r1 IS NULL AND NOT already_present ORDER BY _row) > 1
                    THEN {_lit(Q.DUPLICATE_LINE.value)} ELSE r1 END AS r2
                FROM s
            ), e AS (
                -- Units returned so far, in file order, on top of those already stored.
                SELECT d.*, coalesce(prev.returned, 0) + sum(CASE WHEN r2 IS NULL AND NOT already_present
                    THEN quantity ELSE 0 END) OVER (PARTITION BY d.line_key ORDER BY _row
                    ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cumulative
                FROM d LEFT JOIN (SELECT line_key, sum(quantity) AS returned FROM returns GROUP BY 1) prev
                    ON prev.line_key = d.line_key
            ), f AS (
                SELECT _row, already_present, CASE WHEN r2 IS NULL AND NOT already_present AND cumulative > sold_quantity
                    THEN {_lit(Q.RETURN_EXCEEDS_SALE.value)} ELSE r2 END AS final_reason
                FROM e
            )
            SELECT _row, final_reason, already_present FROM f WHERE final_reason IS NOT NULL OR already_present
            """
        )

    def _verdict_simple(self, unique_column: str | None, duplicate: QuarantineReason | None) -> None:
        later = ""
        if unique_column is not None and duplicate is not None:
            later = f"""
            UNION ALL
            SELECT _row, {_lit(duplicate.value)}, FALSE FROM (
                SELECT _row, row_number() OVER (PARTITION BY {_q(unique_column)} ORDER BY _row) AS n
                FROM _checked WHERE reason IS NULL
            ) WHERE n > 1
            """
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE _verdict AS "
            f"SELECT _row, reason AS final_reason, FALSE AS already_present FROM _checked WHERE reason IS NOT NULL {later}"
        )

    def _verdict_events(self) -> None:
        self.con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _verdict AS
            SELECT _row, reason AS final_reason, FALSE AS already_present FROM _checked WHERE reason IS NOT NULL
            UNION ALL
            SELECT _row, NULL, TRUE FROM _checked WHERE reason IS NULL AND row_hash IN (SELECT row_hash FROM events)
            """
        )

    # - writing the accepted rows -

    def _store_sales(self, spec: SourceSpec, file_id: int) -> None:
        self._unordered(
            f"""
            INSERT INTO lines
            SELECT line_key, order_id, order_id, line_id, {_lit(spec.name)}, _channel, "timestamp", record_key,
                   is_guest, item_id, quantity, unit_price * rate, coalesce(discount, 0) * rate,
                   (quantity * unit_price - coalesce(discount, 0)) * rate, store_id, country, row_hash, ?
            FROM _accepted
            """,
            [file_id],
        )
        self._insert_links([f"_h_{c}" for c in KEY_COLUMNS[spec.name]])

    def _insert_links(self, keys: list[str]) -> None:
        """Every key of an accepted record is linked to the record's key (a star per record)."""
        listed = ", ".join(["record_key", *keys])
        self._unordered(
            f"""
            INSERT INTO identity_links
            SELECT DISTINCT record_key, k FROM (
                SELECT record_key, unnest([{listed}]) AS k FROM _accepted WHERE record_key IS NOT NULL
            ) WHERE k IS NOT NULL
            EXCEPT SELECT key_a, key_b FROM identity_links
            """
        )

    def _store_returns(self, file_id: int) -> None:
        self.con.execute(
            """
            INSERT INTO returns
            SELECT return_key, line_key, quantity, refund_amount * rate, "timestamp", row_hash, ? FROM _accepted
            """,
            [file_id],
        )

    def _store_catalogue(self, file_id: int) -> None:
        self.con.execute(
            f"""
            INSERT OR REPLACE INTO items
            SELECT item_id, name, category, price, coalesce(active, TRUE),
                   coalesce(is_product, TRUE) AND upper(item_id) NOT IN ({self._non_products()}), ?
            FROM _accepted
            """,
            [file_id],
        )

    def _store_events(self, file_id: int) -> None:
        self.con.execute(
            """
            INSERT INTO events
            SELECT record_key, item_id, lower(event_type), "timestamp", row_hash, ? FROM _accepted
            """,
            [file_id],
        )
        self._insert_links([])

    def _store_quarantine(self, spec: SourceSpec, cols: _Columns, label: str, file_id: int) -> None:
        """Bad rows with their contract columns as found in the file; customer keys hashed."""
        hashed = {c: f"c.{_q('_h_' + c)}" for c in KEY_COLUMNS.get(spec.name, {})}
        if spec.name == "browse_events":
            hashed = {"customer_key": "c._h_event"}
        parts = []
        for contract, raw in cols.raw_name.items():
            parts += [_lit(contract), hashed.get(contract, f"CAST(r.{_q(raw)} AS VARCHAR)")]
        self.con.execute(
            f"""
            INSERT INTO quarantine
            SELECT ?, ?, ?, ?, v._row, v.final_reason, CAST(json_object({', '.join(parts)}) AS VARCHAR)
            FROM _verdict v JOIN _checked c ON c._row = v._row JOIN _raw r ON r._row = v._row
            WHERE v.final_reason IS NOT NULL
            """,
            [self.ingest_id, file_id, label, spec.name],
        )

    def _unordered(self, sql: str, params: list[object] | None = None) -> None:
        """Run an insert without keeping row order: about twice as fast for millions of rows. Row
        numbering (``_raw``) needs the order, so it is switched back on straight after."""
        self.con.execute("SET preserve_insertion_order = false")
        try:
            self.con.execute(sql, params or [])
        finally:
            self.con.execute("SET preserve_insertion_order = true")

    def _non_products(self) -> str:
        return ", ".join(_lit(code.upper()) for code in self.settings.non_product_items) or "''"

    def complete_items(self) -> int:
        """Items sold but missing from the catalogue get a row (no name/category) so that every
        line has an item with the non-product rule applied."""
        before = self._scalar("SELECT count(*) FROM items")
        self.con.execute(
            f"""
            INSERT INTO items
            SELECT DISTINCT l.item_id, NULL, NULL, NULL, TRUE, upper(l.item_id) NOT IN ({self._non_products()}), NULL
            FROM lines l ANTI JOIN items i ON i.item_id = l.item_id
            """
        )
        return self._scalar("SELECT count(*) FROM items") - before


#: Content hash of a sale line: the same line id with another hash is a conflicting duplicate.
_SALE_HASH = ('hash(line_key, "timestamp", item_id, quantity, unit_price, discount, _channel, record_key, '
              "store_id, country)")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _order(inputs: list[RawInput]) -> list[RawInput]:
    rank = {name: i for i, name in enumerate(SOURCES)}
    return sorted(inputs, key=lambda inp: (rank[inp.source], inp.label))


def ingest(
    con: duckdb.DuckDBPyConnection,
    inputs: list[RawInput],
    settings: Settings,
    *,
    now: datetime,
    ignored_paths: list[tuple[str, str]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> IngestResult:
    """Validate and store ``inputs`` in one transaction, then resolve identities.

    ``now`` decides which timestamps are "in the future"; it is an argument so that nothing here
    depends on a hidden clock.
    """
    if not inputs:
        raise IngestError("nothing to ingest")
    bind_salt(con, settings)
    con.execute(f"SET TimeZone = {_lit(settings.timezone)}")
    con.execute("BEGIN TRANSACTION")
    try:
        job = _Ingest(con, settings, now)
        started = job.now
        results = []
        for index, inp in enumerate(_order(inputs)):
            if progress:
                progress(inp.label)
            results.append(job.run(inp, index))
        added_items = job.complete_items()
        if progress:
            progress("identity resolution")
        identity = resolve(con, ingest_id=job.ingest_id, now=job.now)
        counts = con.execute(
            "SELECT source_file, reason, count(*) FROM quarantine WHERE ingest_id = ? GROUP BY 1, 2 ORDER BY 1, 3 DESC",
            [job.ingest_id],
        ).fetchall()
        con.execute(
            "INSERT INTO ingests VALUES (?, ?, ?, ?, ?, ?, ?)",
            [job.ingest_id, started, datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0), len(results),
             sum(r.accepted for r in results), sum(r.quarantined for r in results),
             sum(r.already_present for r in results)],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.execute("SET TimeZone = 'UTC'")
    notes = []
    if added_items:
        notes.append(f"{added_items} item(s) sold but missing from the catalogue were added without name or category")
    quarantine_file = None
    if any(r.quarantined for r in results):
        settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
        quarantine_file = settings.quarantine_dir / f"ingest-{job.ingest_id:04d}.csv"
        con.execute(
            f"COPY (SELECT source_file, source, row_number, reason, record FROM quarantine WHERE ingest_id = ?"
            f" ORDER BY source_file, row_number) TO {_lit(str(quarantine_file))} (HEADER)",
            [job.ingest_id],
        )
    return IngestResult(
        ingest_id=job.ingest_id,
        files=tuple(results),
        quarantine_counts=tuple((f, r, int(n)) for f, r, n in counts),
        identity=identity,
        ignored_paths=tuple(ignored_paths or ()),
        quarantine_file=quarantine_file,
        notes=tuple(notes),
    )
