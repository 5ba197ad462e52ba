"""Ingestion: raw channel files into the unified store, with a quarantine for bad rows.

Every row is decided: accepted, quarantined with a reason, or counted as already present. A file
that cannot be read at all fails the ingest with an error that names file, column and what was
expected; a bad row never crashes it and is never dropped silently; a file ingested before is
skipped. All files of one call are written in a single DuckDB transaction together with the
identity update, so a failure leaves the store as it was. The rules are listed in :func:`ingest`.
Heavy work is SQL inside DuckDB; Python only orchestrates.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from features.discovery import IngestError, RawInput
from features.identity import IdentityUpdate, bind_salt, hash_sql, resolve
from features.loaders import latest_earlier_sale
from features.rawformat import CsvOptions, date_formats, literal, scan_lines, stage_csv, strftime_format
from features.schema import (
    CHANNELS,
    DUCKDB_TYPES,
    EVENT_KEY_TYPES,
    EXPECTED,
    KEY_COLUMNS,
    MAX_ABS_NUMBER,
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
    """What ingestion decided for one file: ``rows`` = accepted + quarantined + already present."""

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
    """What one :func:`ingest` call stored: per-file results, quarantine counts, identity update."""

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
        """Rows accepted over every file of the ingest.

        Returns
        -------
        int
            The sum of :attr:`FileResult.accepted`.
        """
        return sum(f.accepted for f in self.files)

    @property
    def quarantined(self) -> int:
        """Rows quarantined over every file of the ingest.

        Returns
        -------
        int
            The sum of :attr:`FileResult.quarantined`.
        """
        return sum(f.quarantined for f in self.files)

    @property
    def already_present(self) -> int:
        """Rows already in the store with identical content, over every file of the ingest.

        Returns
        -------
        int
            The sum of :attr:`FileResult.already_present`.
        """
        return sum(f.already_present for f in self.files)


# --- SQL building blocks --------------------------------------------------------------------------


def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


#: Fewer rows with one column and reason are a coincidence of a small file, not a wrong mapping.
_MIN_PATTERN_ROWS = 10
#: Rows the decimal mark and date format are detected on.
_SAMPLE_ROWS = 100_000
#: A raw value that is a number (and so safe to repeat in a message): 6.95, -1e308, 1.234,5, NaN, inf.
_NUMBER_TEXT = re.compile(r"[+-]?(\d[\d., ]*([eE][+-]?\d+)?|[.,]\d+|nan|inf|infinity)", re.IGNORECASE)


def _reader_error(exc: duckdb.Error) -> str:
    """What went wrong in DuckDB's words, without the raw line it quotes (it may hold personal data)."""
    first = str(exc).split("\n", 1)[0]
    line = re.search(r"[Ll]ine:? (\d+)", str(exc))
    first = re.sub(r"'[^']*'|\"[^\"]*\"", "...", first)[:200]
    return f"{type(exc).__name__}: {first}" + (f" (line {line.group(1)})" if line and line.group(1) not in first else "")


@dataclass(frozen=True)
class _Columns:
    """How the contract columns of one input map onto its raw columns, with their raw types."""

    raw_name: dict[str, str]  # contract -> raw (present columns only)
    raw_type: dict[str, str]  # contract -> DuckDB type of the raw column
    ignored: tuple[str, ...]


#: Reader error types of DuckDB's rejects table and the quarantine reason of their rows.
_REJECT_REASONS = {
    "TOO MANY COLUMNS": Q.WRONG_FIELD_COUNT,
    "MISSING COLUMNS": Q.WRONG_FIELD_COUNT,
    "INVALID ENCODING": Q.BAD_ENCODING,
    "INVALID UNICODE": Q.BAD_ENCODING,
    "UNQUOTED VALUE": Q.BAD_QUOTING,
    "LINE SIZE OVER MAXIMUM": Q.LINE_TOO_LONG,
}


@dataclass(frozen=True)
class _Read:
    """One input made readable: ``_raw`` (numbered rows), the rows the reader refused, and how it was read."""

    described: list[tuple[str, str]]
    rejected: int
    #: "delimiter ';'", "encoding cp1252 (...)": what was detected or declared, for messages and notes.
    how: tuple[str, ...]


def _read(con: duckdb.DuckDBPyConnection, inp: RawInput, index: int, workdir: Path) -> _Read:
    """Create ``_raw`` (``_row`` = 1 for the first data row, then the file's columns) and ``_rejected``
    (``_row``, ``reason`` of CSV rows the reader could not split into the columns)."""
    con.execute("CREATE OR REPLACE TEMP TABLE _rejected (_row BIGINT, reason VARCHAR)")
    if inp.table is not None:
        name = f"_rapport_input_{index}"
        con.register(name, inp.table)
        # Arrow scans keep their order while preserve_insertion_order is on (the default, switched
        # off only around inserts).
        con.execute(f"CREATE OR REPLACE TEMP VIEW _raw AS SELECT row_number() OVER () AS _row, * FROM {_q(name)}")
        return _Read(_described(con), 0, ())
    assert inp.path is not None
    if inp.path.name.lower().endswith(".parquet"):
        path = _lit(str(literal(inp.path, workdir)))
        con.execute(
            "CREATE OR REPLACE TEMP VIEW _raw AS SELECT file_row_number + 1 AS _row, * EXCLUDE (file_row_number) "
            f"FROM read_parquet({path}, file_row_number = true)"
        )
        return _Read(_described(con), 0, ())
    staged = stage_csv(inp.path, inp.options or CsvOptions(), workdir)
    # Every reader choice is explicit, the columns too, so DuckDB's sniffer never runs: it guesses
    # '#' as a comment character (dropping the rows of ids like '#123') and gives up on a file with
    # one ragged row. Rows the reader cannot split are kept out of the columns and listed in the
    # rejects table with their line.
    rejects = f"_rejects_{index}"
    columns = "{" + ", ".join(f"{_lit(name)}: 'VARCHAR'" for name in staged.columns) + "}"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _raw AS
        SELECT row_number() OVER () AS _row, * FROM read_csv(
            {_lit(str(staged.path))}, columns = {columns}, auto_detect = false, header = true,
            delim = {_lit(staged.delimiter)}, quote = '"', escape = '"', comment = '',
            encoding = {_lit(staged.encoding)}, store_rejects = true, rejects_table = {_lit(rejects)},
            rejects_scan = {_lit(rejects + '_scan')})
        """
    )
    reasons = " ".join(f"WHEN {_lit(kind)} THEN {_lit(reason.value)}" for kind, reason in _REJECT_REASONS.items())
    # One line can have several errors. The header is line 1 and the reader counts the blank lines it
    # skips, so the data row is line - 1 - the blank lines before it (see rawformat.scan_lines).
    last = con.execute(f"SELECT max(line) FROM {rejects}").fetchall()[0][0]
    blanks = list(scan_lines(staged.path, last).blank) if last is not None else []
    con.execute(
        f"""
        INSERT INTO _rejected
        SELECT line - 1 - (SELECT count(*) FROM (SELECT unnest(?::BIGINT[]) AS b) WHERE b < line),
               CASE arg_min(error_type, column_idx) {reasons} ELSE {_lit(Q.UNREADABLE_ROW.value)} END
        FROM {rejects} GROUP BY line
        """,
        [blanks],
    )
    con.execute(f"DROP TABLE {rejects}")
    con.execute(f"DROP TABLE {rejects}_scan")
    rejected = con.execute("SELECT count(*) FROM _rejected").fetchall()[0][0]
    _check_unclosed_quote(con, inp.label, staged.path, rejected)
    if rejected:
        # The reader numbered only the rows it kept: shift each by the refused rows before it. With
        # refused rows R_1 < R_2 < ..., R_i - i good rows precede R_i, so good row k is row
        # k + #{i : R_i - i < k} of the file.
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _raw AS
            WITH refused AS (SELECT _row - row_number() OVER (ORDER BY _row) AS good_before,
                                    row_number() OVER (ORDER BY _row) AS n FROM _rejected),
            steps AS (SELECT good_before, max(n) AS n FROM refused GROUP BY 1)
            SELECT r.* REPLACE (r._row + coalesce(s.n, 0) AS _row)
            FROM _raw r ASOF LEFT JOIN steps s ON r._row > s.good_before
            ORDER BY r._row
            """
        )
    return _Read(_described(con), rejected, staged.detected)


def _check_unclosed_quote(con: duckdb.DuckDBPyConnection, label: str, path: Path, rejected: int) -> None:
    """A quote that is never closed swallows every line after it into one refused row: the rows
    cannot be told apart any more, so the file is refused rather than losing them unsaid."""
    first = con.execute("SELECT min(_row) FROM _rejected WHERE reason = ?", [Q.BAD_QUOTING.value]).fetchall()[0][0]
    if first is None:
        return
    scan = scan_lines(path)
    # Every physical line is the header, a row kept or refused, a blank line, or a line break inside
    # a field of a kept row (a quoted multi-line field): any other line was swallowed.
    newline = f"chr({ord(scan.newline)})"
    breaks = " + ".join(f"coalesce(length({_q(name)}) - length(replace({_q(name)}, {newline}, '')), 0)"
                        for name, _ in _described(con)) or "0"
    kept, inside = con.execute(f"SELECT count(*), coalesce(sum({breaks}), 0) FROM _raw").fetchall()[0]
    lost = scan.physical - 1 - kept - inside - rejected - len(scan.blank)
    if lost > 0:
        raise IngestError(
            f"{label}: row {first} opens a quote that is never closed, so the {lost:,} line(s) after it cannot be "
            "split into rows; close or remove that quote (nothing was written)"
        )


def _described(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    return [(row[0], row[1]) for row in con.execute("DESCRIBE SELECT * EXCLUDE (_row) FROM _raw").fetchall()]


@dataclass(frozen=True)
class _Format:
    """How the text values of one file are written: decimal mark, date formats (None: ISO 8601)."""

    decimal: str = "."
    date_formats: tuple[str, ...] | None = None


def _resolve_columns(spec: SourceSpec, inp: RawInput, described: list[tuple[str, str]],
                     how: tuple[str, ...] = ()) -> _Columns:
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
            + (f" (read with {', '.join(how)}: declare --delimiter or --encoding if that is wrong)" if how else "")
        )
    used = set(raw_name.values())
    return _Columns(
        raw_name=raw_name,
        raw_type={c: raw_types[r] for c, r in raw_name.items()},
        ignored=tuple(r for r in raw_types if r not in used),
    )


def _raw(cols: _Columns, name: str) -> str:
    return f"r.{_q(cols.raw_name[name])}"


_INTEGER_TYPES = ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER", "USMALLINT",
                  "UTINYINT", "UHUGEINT")
_FLOAT_TYPES = ("DOUBLE", "FLOAT", "REAL")
_MAX = f"{MAX_ABS_NUMBER:.0e}"


def _number(cols: _Columns, name: str, fmt: _Format) -> str:
    """SQL for a raw value as DOUBLE: NULL where it is no number, NaN/inf where it says so."""
    raw, rtype = _raw(cols, name), cols.raw_type[name].upper()
    if rtype in _FLOAT_TYPES or rtype in _INTEGER_TYPES or rtype.startswith("DECIMAL"):
        return f"CAST({raw} AS DOUBLE)"
    text = f"trim(CAST({raw} AS VARCHAR))"
    if fmt.decimal == ",":
        # 1.234,56 and 1 234,56 -> 1234.56: the point and spaces group thousands where the comma is the decimal mark.
        text = f"replace(replace(replace({text}, ' ', ''), '.', ''), ',', '.')"
    return f"TRY_CAST({text} AS DOUBLE)"


def _number_problem(number: str, whole: bool) -> str:
    """The reason a parsed DOUBLE is not acceptable, NULL when it is (and for a missing value)."""
    whens = [
        (f"{number} IS NULL", Q.BAD_NUMBER),
        (f"NOT isfinite({number})", Q.NOT_FINITE),
        (f"abs({number}) > {_MAX}", Q.OUT_OF_RANGE),
    ]
    if whole:
        whens.append((f"{number} <> round({number})", Q.NOT_WHOLE))
    return "CASE " + " ".join(f"WHEN {cond} THEN {_lit(reason.value)}" for cond, reason in whens) + " END"


def _level1(spec: SourceSpec, cols: _Columns, name: str, settings: Settings, fmt: _Format) -> list[str]:
    """First-level SQL of a non-key contract column: the parsed value, or ``_d_<name>`` (the value as
    DOUBLE) for a number, parsed at the second level; ``_why_<name>`` for text with a problem."""
    ctype = spec.column(name).type
    if name not in cols.raw_name:
        return [f"CAST(NULL AS {DUCKDB_TYPES[ctype]}) AS {_q(name)}".replace("TIMESTAMPTZ", "TIMESTAMP")]
    raw, rtype = _raw(cols, name), cols.raw_type[name].upper()
    if ctype in (ColumnType.INTEGER, ColumnType.NUMBER):
        return [f"{_number(cols, name, fmt)} AS {_q('_d_' + name)}"]
    if ctype is ColumnType.STRING:
        if rtype in _FLOAT_TYPES:  # ids exported as floats: 12346.0 -> "12346"
            ok = f"isfinite({raw}) AND abs({raw}) <= {_MAX}"
            return [
                f"CASE WHEN {ok} AND {raw} = round({raw}) THEN CAST(CAST({raw} AS BIGINT) AS VARCHAR) "
                f"WHEN {ok} THEN CAST({raw} AS VARCHAR) END AS {_q(name)}",
                f"CASE WHEN NOT isfinite({raw}) THEN {_lit(Q.NOT_FINITE.value)} WHEN abs({raw}) > {_MAX} "
                f"THEN {_lit(Q.OUT_OF_RANGE.value)} END AS {_q('_why_' + name)}",
            ]
        value = f"nullif(trim(CAST({raw} AS VARCHAR)), '') AS {_q(name)}"
        return [value, _nul_problem(cols, name)] if rtype == "VARCHAR" else [value]
    if ctype is ColumnType.BOOLEAN:
        return [f"TRY_CAST({raw} AS BOOLEAN) AS {_q(name)}"]
    # Timestamps are stored as naive UTC. A value without an offset is in settings.timezone
    # (the session TimeZone is set to it while ingesting).
    if rtype.startswith("TIMESTAMP WITH TIME ZONE") or rtype == "TIMESTAMPTZ":
        value = f"timezone('UTC', {raw})"
    elif rtype.startswith("TIMESTAMP") or rtype == "DATE":
        value = f"timezone('UTC', timezone({_lit(settings.timezone)}, CAST({raw} AS TIMESTAMP)))"
    elif fmt.date_formats is not None:
        listed = "[" + ", ".join(_lit(f) for f in fmt.date_formats) + "]"
        parsed = f"try_strptime(trim(CAST({raw} AS VARCHAR)), {listed})"
        zoned = any("%z" in f or "%Z" in f for f in fmt.date_formats)
        value = (f"timezone('UTC', {parsed})" if zoned
                 else f"timezone('UTC', timezone({_lit(settings.timezone)}, {parsed}))")
    else:
        value = f"timezone('UTC', TRY_CAST({raw} AS TIMESTAMPTZ))"
    return [f"{value} AS {_q(name)}"]


def _nul_problem(cols: _Columns, name: str) -> str:
    raw = _raw(cols, name)
    return (f"CASE WHEN contains(CAST({raw} AS VARCHAR), chr(0)) THEN {_lit(Q.NUL_BYTE.value)} END "
            f"AS {_q('_why_' + name)}")


def _level2(spec: SourceSpec, cols: _Columns, name: str, settings: Settings) -> tuple[str | None, str | None]:
    """Second-level SQL of a present typed column: (replacement or new parsed value, ``_why_``)."""
    ctype = spec.column(name).type
    c, missing = _q(name), _q("_m_" + name)
    if ctype in (ColumnType.INTEGER, ColumnType.NUMBER):
        d = _q("_d_" + name)
        whole = ctype is ColumnType.INTEGER
        ok = f"isfinite({d}) AND abs({d}) <= {_MAX}" + (f" AND {d} = round({d})" if whole else "")
        value = f"CASE WHEN {ok} THEN CAST({d} AS {'BIGINT' if whole else 'DOUBLE'}) END AS {c}"
        return value, f"CASE WHEN NOT {missing} THEN {_number_problem(d, whole)} END AS {_q('_why_' + name)}"
    if ctype is ColumnType.TIMESTAMP:
        earliest = f"TIMESTAMP '{settings.earliest_timestamp.isoformat()}'"
        plausible = f"isfinite({c}) AND {c} >= {earliest}"
        why = (f"CASE WHEN {missing} THEN NULL WHEN {c} IS NULL THEN {_lit(Q.BAD_TIMESTAMP.value)} "
               f"WHEN NOT ({plausible}) THEN {_lit(Q.TIMESTAMP_OUT_OF_RANGE.value)} END AS {_q('_why_' + name)}")
        return f"CASE WHEN {plausible} THEN {c} END AS {c}", why
    if ctype is ColumnType.BOOLEAN:
        return None, f"CASE WHEN NOT {missing} AND {c} IS NULL THEN {_lit(Q.BAD_BOOLEAN.value)} END AS {_q('_why_' + name)}"
    return None, None


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


_TYPED = (ColumnType.INTEGER, ColumnType.NUMBER, ColumnType.TIMESTAMP, ColumnType.BOOLEAN)


# --- the ingest -----------------------------------------------------------------------------------


class _Ingest:
    """State of one ingest call: the connection inside its transaction and the ids it issued.

    Per input the work happens in three temporary relations: ``_raw`` (the file, numbered rows),
    ``_checked`` (parsed contract columns, hashed keys, derived columns and the first row-level
    reason) and ``_verdict`` (only the rows that are *not* plainly accepted: quarantined or already
    present). Accepted rows are ``_checked`` minus ``_verdict``; keeping ``_verdict`` small is what
    makes ten million lines fast.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, settings: Settings, now: datetime, *, workdir: Path,
                 accept_quarantine: bool) -> None:
        self.con = con
        self.settings = settings
        self.workdir = workdir
        self.accept_quarantine = accept_quarantine
        # Stored times are naive UTC; a naive `now` is taken to be UTC already.
        self.now = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
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
        try:
            read = _read(self.con, inp, index, self.workdir)
        except duckdb.Error as exc:
            raise IngestError(f"{inp.label}: cannot be read as a {spec.name} file: {_reader_error(exc)}") from exc
        cols = _resolve_columns(spec, inp, read.described, read.how)
        fmt, detected = self._detect_format(spec, cols, inp)
        try:
            self._create_checked(spec, cols, fmt)
        except duckdb.Error as exc:
            raise IngestError(f"{inp.label}: cannot be read as a {spec.name} file: {_reader_error(exc)}") from exc
        self._check_whole_columns(spec, cols, inp.label)

        file_id = self.next_file_id
        self.next_file_id += 1
        if spec.name in SALES_SOURCES:
            self._verdict_sales()
            if spec.name == "transactions" and self.settings.negative_quantity_returns:
                self._verdict_transaction_returns()
        elif spec.name == "returns":
            self._verdict_returns()
        elif spec.name == "catalogue":
            self._verdict_simple("item_id", Q.DUPLICATE_ITEM)
        elif spec.name == "browse_events":
            self._verdict_events()
        else:  # customer_keys
            self._verdict_simple(None, None)
        self.con.execute("INSERT INTO _verdict SELECT _row, reason, NULL, FALSE FROM _rejected")
        rows = self._scalar("SELECT count(*) FROM _checked") + read.rejected
        quarantined, present = self.con.execute(
            "SELECT count(final_reason), count(*) FILTER (WHERE already_present) FROM _verdict"
        ).fetchall()[0]
        self._check_quarantine_share(spec, cols, inp.label, rows, quarantined)
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
        accepted = rows - quarantined - present
        self._store_quarantine(spec, cols, inp.label, file_id)
        self.con.execute(
            "INSERT INTO ingested_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [file_id, self.ingest_id, inp.label, spec.name, digest, rows, accepted, quarantined, present],
        )
        self.con.execute("DROP VIEW _accepted")
        # _raw is a view of a Parquet file or Arrow table, a table of a CSV file.
        temporary = dict(self.con.execute(
            "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'main' "
            "AND table_catalog = 'temp'").fetchall())
        for name in ("_raw", "_verdict", "_checked", "_rejected", "_tx_returns"):
            if name in temporary:
                self.con.execute(f"DROP {'VIEW' if temporary[name] == 'VIEW' else 'TABLE'} {name}")
        if inp.table is not None:
            self.con.unregister(f"_rapport_input_{index}")
        notes = [f"read with {', '.join((*read.how, *detected))}"] if read.how or detected else []
        if cols.ignored:
            notes.append(f"ignored columns not in the contract: {', '.join(cols.ignored)}")
        return FileResult(inp.label, spec.name, rows, accepted, quarantined, present, notes=tuple(notes))

    def _detect_format(self, spec: SourceSpec, cols: _Columns, inp: RawInput) -> tuple[_Format, list[str]]:
        """The decimal mark and date format of a text file's values: declared, or detected on the
        first rows (``1234,56`` in every number that has decimals; ``31/12/2024`` dates)."""
        options = inp.options or CsvOptions()
        detected: list[str] = []
        text_columns = [c for c in cols.raw_name if cols.raw_type[c].upper() == "VARCHAR"]
        numbers = [c for c in text_columns if spec.column(c).type in (ColumnType.INTEGER, ColumnType.NUMBER)]
        decimal = options.decimal or "."
        if options.decimal is None and numbers:
            values = " UNION ALL ".join(f"SELECT trim({_raw(cols, c)}) AS v FROM sample r" for c in numbers)
            comma, point = self.con.execute(
                f"WITH sample AS (SELECT * FROM _raw LIMIT {_SAMPLE_ROWS}) "
                r"SELECT count(*) FILTER (WHERE regexp_full_match(v, '[+-]?[0-9]{1,3}([. ][0-9]{3})*,[0-9]+')),"
                r" count(*) FILTER (WHERE regexp_full_match(v, '[+-]?[0-9]*\.[0-9]+'))"
                f" FROM ({values})"
            ).fetchall()[0]
            if comma and not point:
                decimal = ","
                detected.append("decimal comma (detected in the numbers)")
        elif options.decimal == ",":
            detected.append("decimal comma (declared)")
        formats = None
        stamps = [c for c in text_columns if spec.column(c).type is ColumnType.TIMESTAMP]
        if options.date_format is not None:
            formats = tuple(date_formats(strftime_format(options.date_format)))
            detected.append(f"dates as {options.date_format} (declared)")
        elif stamps:
            formats = self._detect_date_format(cols, stamps, inp.label)
            if formats is not None:
                detected.append(f"dates as {formats[-1]} (detected: a day above 12 comes "
                                f"{'first' if formats[-1].startswith('%d') else 'second'})")
        return _Format(decimal, formats), detected

    def _detect_date_format(self, cols: _Columns, stamps: list[str], label: str) -> tuple[str, ...] | None:
        """``dd/mm/yyyy`` or ``mm/dd/yyyy`` (with any time) when most values are written so; which of
        the two is told by a first or second number above 12, else the user must say."""
        values = " UNION ALL ".join(f"SELECT trim({_raw(cols, c)}) AS v FROM sample r" for c in stamps)
        total, iso, dmy, first, second, sep = self.con.execute(
            f"WITH sample AS (SELECT * FROM _raw LIMIT {_SAMPLE_ROWS}), v AS ({values}), "
            r"m AS (SELECT v, regexp_extract(v, '^([0-9]{1,2})([/.-])([0-9]{1,2})[/.-][0-9]{4}\b', ['a', 's', 'b']) AS p FROM v)"
            " SELECT count(v), count(TRY_CAST(v AS TIMESTAMPTZ)), count(*) FILTER (WHERE p.a <> ''),"
            " max(TRY_CAST(nullif(p.a, '') AS INTEGER)), max(TRY_CAST(nullif(p.b, '') AS INTEGER)),"
            " mode(nullif(p.s, '')) FROM m"
        ).fetchall()[0]
        if not dmy or dmy <= iso or dmy < total / 2:
            return None
        if first > 12 and second <= 12:
            return tuple(date_formats(f"%d{sep}%m{sep}%Y"))
        if second > 12 and first <= 12:
            return tuple(date_formats(f"%m{sep}%d{sep}%Y"))
        names = ", ".join(repr(cols.raw_name[c]) for c in stamps)
        raise IngestError(
            f"{label}: column {names} holds dates like dd{sep}mm{sep}yyyy or mm{sep}dd{sep}yyyy, and no day above 12 "
            f"tells which; declare it with --date-format dd{sep}mm{sep}yyyy (or mm{sep}dd{sep}yyyy), or date_format "
            "in the mapping file"
        )

    def _create_checked(self, spec: SourceSpec, cols: _Columns, fmt: _Format) -> None:
        """``_checked``: parsed contract columns, hashed keys, derived columns, the first row-level
        reason (NULL for a good row) and the column it is about, in one pass over the file.

        Three nested selects so that each expensive expression (timestamp parsing, key
        normalisation) is evaluated once per row; raw customer keys are dropped as soon as they
        are hashed, so not even the temporary tables hold them in clear.
        """
        s = self.settings
        cc = s.default_phone_country_code
        present = [c.name for c in spec.columns if c.name in cols.raw_name]
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
        for c in spec.columns:
            if c.name not in key_columns:
                level1 += _level1(spec, cols, c.name, s, fmt)
        level1 += [f"{_missing(cols, c.name)} AS {_q('_m_' + c.name)}" for c in spec.columns]
        level1 += [f"{hashed.get(col, 'CAST(NULL AS VARCHAR)')} AS {_q('_h_' + col)}" for col in key_columns]
        level1 += [_nul_problem(cols, col) for col in key_columns
                   if col in cols.raw_name and cols.raw_type[col].upper() == "VARCHAR"]
        if spec.name == "browse_events":
            key = _raw(cols, "customer_key")
            whens = " ".join(f"WHEN {_lit(kt.value)} THEN {hash_sql(kt, key, cc)}" for kt in EVENT_KEY_TYPES)
            level1.append(f"CASE lower(trim(CAST({_raw(cols, 'key_type')} AS VARCHAR))) {whens} END AS _h_event")
        source = " ".join(["_raw r", *(join for _, join, _, _ in joins)])
        # Level 2: numbers parsed from their DOUBLE, implausible timestamps emptied, and why a present
        # value is not acceptable (the value is not kept in any message).
        replaced: list[str] = []
        added: list[str] = []
        for name in present:
            if name in key_columns or spec.column(name).type not in _TYPED:
                continue
            value, why = _level2(spec, cols, name, s)
            if value is not None:
                (replaced if spec.column(name).type is ColumnType.TIMESTAMP else added).append(value)
            if why is not None:
                added.append(why)
        level2 = "*" + (f" REPLACE ({', '.join(replaced)})" if replaced else "")
        level2 = ", ".join([level2, *added])
        whys = [name for name in present if self._has_why(spec, cols, name, key_columns)]
        # Level 3: derived columns and the first failing rule, with its column.
        rules: list[tuple[str, str, str | None]] = [
            (_q("_m_" + name), _lit(Q.MISSING_VALUE.value), name) for name in spec.required]
        rules += [(f"{_q('_why_' + name)} IS NOT NULL", _q("_why_" + name), name) for name in whys]
        rules += [(cond, _lit(reason.value), column) for cond, reason, column in self._row_rules(spec)]
        if "timestamp" in spec.column_names:
            future = self.now + timedelta(hours=s.future_tolerance_hours)
            rules.append((f"\"timestamp\" > TIMESTAMP '{future.isoformat(sep=' ')}'", _lit(Q.FUTURE_TIMESTAMP.value),
                          "timestamp"))
        reason = " ".join(f"WHEN {cond} THEN {value}" for cond, value, _ in rules)
        column = " ".join(f"WHEN {cond} THEN {_lit(col) if col else 'NULL'}" for cond, _, col in rules)
        dropped = [_q("_m_" + c.name) for c in spec.columns]
        dropped += [_q("_d_" + name) for name in present
                    if name not in key_columns and spec.column(name).type in (ColumnType.INTEGER, ColumnType.NUMBER)]
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE _checked AS SELECT * EXCLUDE ({', '.join(dropped)}), "
            f"{self._derived_columns(spec)} CASE {reason} END AS reason, CASE {column} END AS reason_column "
            f"FROM (SELECT {level2} FROM (SELECT {', '.join(level1)} FROM {source}))"
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

    @staticmethod
    def _has_why(spec: SourceSpec, cols: _Columns, name: str, key_columns: Mapping[str, KeyType]) -> bool:
        """Whether level 1 or 2 gives the column a ``_why_`` (typed values, text that may hold NUL bytes,
        ids exported as floats)."""
        rtype = cols.raw_type[name].upper()
        if spec.column(name).type in _TYPED and name not in key_columns:
            return True
        return rtype == "VARCHAR" or (rtype in _FLOAT_TYPES and name not in key_columns)

    def _check_whole_columns(self, spec: SourceSpec, cols: _Columns, label: str) -> None:
        """A typed column none of whose values is acceptable is a file-level error, not 10,000 bad rows."""
        typed = [c.name for c in spec.columns if c.type in _TYPED and c.name in cols.raw_name]
        if not typed:
            return
        parts = [f"count({_q(c)}), count({_q('_why_' + c)})" for c in typed]
        values = self.con.execute(f"SELECT {', '.join(parts)} FROM _checked").fetchall()[0]
        for i, c in enumerate(typed):
            parsed, bad = values[2 * i], values[2 * i + 1]
            if bad and not parsed:
                row, why = self.con.execute(
                    f"SELECT _row, {_q('_why_' + c)} FROM _checked WHERE {_q('_why_' + c)} IS NOT NULL ORDER BY _row LIMIT 1"
                ).fetchall()[0]
                hint = ("; declare the format with --date-format (e.g. dd/mm/yyyy)"
                        if spec.column(c).type is ColumnType.TIMESTAMP else "")
                raise IngestError(
                    f"{label}: column {cols.raw_name[c]!r} ({spec.name}.{c}) should hold "
                    f"{EXPECTED[spec.column(c).type]}, but none of its {bad:,} values does "
                    f"(row {row}: {why}{self._number_shown(cols, c, row)}){hint}"
                )

    def _number_shown(self, cols: _Columns, name: str, row: int) -> str:
        """``": 6.95"`` when the raw value of a row is a number (safe to show), else nothing: a raw
        text value could be a person's name or e-mail in a mis-mapped column."""
        value = self.con.execute(
            f"SELECT CAST({_raw(cols, name)} AS VARCHAR) FROM _raw r WHERE r._row = ?", [row]
        ).fetchall()
        text = (value[0][0] or "").strip() if value else ""
        return f": {text}" if len(text) <= 40 and _NUMBER_TEXT.fullmatch(text) else ""

    def _check_quarantine_share(self, spec: SourceSpec, cols: _Columns, label: str, rows: int,
                                quarantined: int) -> None:
        """Refuse a file in which one column and reason would quarantine more than
        ``max_quarantine_share`` of the rows: a swapped mapping, a wrong decimal mark or date format,
        another encoding, far more likely than that much bad data. A sprinkling of assorted bad rows
        (a late file with one defect of each kind) is bad data, decided row by row, and so are fewer
        than ``_MIN_PATTERN_ROWS`` rows."""
        limit = self.settings.max_quarantine_share
        if self.accept_quarantine or not rows or quarantined <= limit * rows:
            return
        column, reason, n, row = self.con.execute(
            "SELECT final_column, final_reason, count(*), min(_row) FROM _verdict WHERE final_reason IS NOT NULL "
            "GROUP BY ALL ORDER BY 3 DESC, 1 NULLS LAST, 2 LIMIT 1"
        ).fetchall()[0]
        if n <= limit * rows or n < _MIN_PATTERN_ROWS:
            return
        if column is None:
            where = "rows the reader could not split"
            example = f"first in row {row}"
        else:
            file_column = f" (file column {cols.raw_name[column]!r})" if column in cols.raw_name else ""
            where = f"column {column}{file_column}"
            shown = self._number_shown(cols, column, row) if column in cols.raw_name else ""
            example = f"e.g. row {row}{shown}"
        raise IngestError(
            f"{label}: {n:,} of {rows:,} rows ({n / rows:.0%}) would be quarantined for {where}: {reason} "
            f"({example}), more than max_quarantine_share ({limit:.0%}); {quarantined:,} rows in all. Nothing was "
            "written. Check the column mapping and the file's format (--delimiter, --decimal, --date-format, "
            "--encoding), or pass --accept-quarantine to store the good rows and quarantine the others."
        )

    def _row_rules(self, spec: SourceSpec) -> list[tuple[str, QuarantineReason, str | None]]:
        """(condition, reason, column at fault) of the rules on parsed values, in order."""
        s = self.settings
        rules: list[tuple[str, QuarantineReason, str | None]] = []
        if spec.name in SALES_SOURCES:
            returns = spec.name == "transactions" and s.negative_quantity_returns
            rules += [
                ("quantity = 0" if returns else "quantity <= 0", Q.BAD_QUANTITY, "quantity"),
                ("unit_price <= 0", Q.NON_POSITIVE_PRICE, "unit_price"),
                ("coalesce(discount, 0) < 0 OR coalesce(discount, 0) > abs(quantity) * unit_price", Q.NEGATIVE_AMOUNT,
                 "discount"),
                (f"abs(quantity) * unit_price > {_MAX}", Q.OUT_OF_RANGE, "unit_price"),
            ]
            if "channel" in spec.column_names:
                allowed = ", ".join(_lit(c) for c in CHANNELS)
                rules.append((f"channel IS NOT NULL AND lower(channel) NOT IN ({allowed})", Q.UNKNOWN_CHANNEL,
                              "channel"))
            rules.append((f"({_rate_sql('currency', s)}) IS NULL", Q.UNKNOWN_CURRENCY, "currency"))
        elif spec.name == "returns":
            rules += [
                ("quantity <= 0", Q.BAD_QUANTITY, "quantity"),
                ("refund_amount < 0", Q.NEGATIVE_AMOUNT, "refund_amount"),
                (f"({_rate_sql('currency', s)}) IS NULL", Q.UNKNOWN_CURRENCY, "currency"),
            ]
        elif spec.name == "catalogue":
            rules.append(("price < 0", Q.NEGATIVE_AMOUNT, "price"))
        elif spec.name == "browse_events":
            kinds = ", ".join(_lit(k.value) for k in EVENT_KEY_TYPES)
            events = ", ".join(_lit(e.value) for e in EventType)
            rules += [
                (f"lower(key_type) NOT IN ({kinds})", Q.UNKNOWN_KEY_TYPE, "key_type"),
                (f"lower(event_type) NOT IN ({events})", Q.UNKNOWN_EVENT_TYPE, "event_type"),
                ("_h_event IS NULL", Q.NO_KEYS, "customer_key"),
            ]
        elif spec.name == "customer_keys":
            hashed = [f"_h_{c}" for c in KEY_COLUMNS["customer_keys"]]
            rules.append((f"coalesce({', '.join(hashed)}) IS NULL", Q.NO_KEYS, None))
        return rules

    def _derived_columns(self, spec: SourceSpec) -> str:
        """Columns computed from the parsed ones (DuckDB lets later ones use earlier aliases)."""
        s = self.settings
        rate = f"{_rate_sql('currency', s)} AS rate,"
        if spec.name == "orders":
            return (
                "coalesce(_h_account_id, _h_email, _h_device_id) AS record_key, lower(channel) AS _channel,"
                " _h_account_id IS NULL AND lower(channel) <> 'store' AS is_guest, CAST(NULL AS VARCHAR) AS store_id,"
                f" {rate} order_id || '/' || line_id AS line_key, {_SALE_HASH} AS row_hash, FALSE AS _return,"
            )
        if spec.name == "store_receipts":
            return (
                "_h_loyalty_card AS record_key, 'store' AS _channel, FALSE AS is_guest, receipt_id AS order_id,"
                f" {rate} receipt_id || '/' || line_id AS line_key, {_SALE_HASH} AS row_hash, FALSE AS _return,"
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
                f" coalesce(quantity < 0, FALSE) AND {str(s.negative_quantity_returns).upper()} AS _return,"
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
        # Returns inside a transactions file (negative quantities) are decided by _verdict_transaction_returns.
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _verdict AS
            WITH sales AS (SELECT * FROM _checked WHERE reason IS NULL AND NOT _return),
            existing AS (
                SELECT c._row, c.row_hash = l.row_hash AS same
                FROM sales c JOIN lines l ON l.line_key = c.line_key
            ), repeated AS (
                SELECT line_key FROM sales GROUP BY line_key HAVING count(*) > 1
            ), later AS (
                SELECT _row FROM (
                    SELECT _row, row_number() OVER (PARTITION BY line_key ORDER BY _row) AS n FROM sales
                    WHERE line_key IN (SELECT line_key FROM repeated)
                ) WHERE n > 1
            )
            SELECT _row, reason AS final_reason, reason_column AS final_column, FALSE AS already_present
            FROM _checked WHERE reason IS NOT NULL
            UNION ALL
            SELECT _row, CASE WHEN same THEN NULL ELSE {_lit(Q.DUPLICATE_LINE.value)} END,
                   CASE WHEN same THEN NULL ELSE 'line_id' END, same FROM existing
            UNION ALL
            SELECT _row, {_lit(Q.DUPLICATE_LINE.value)}, 'line_id', FALSE FROM later
            WHERE _row NOT IN (SELECT _row FROM existing)
            """
        )

    def _verdict_transaction_returns(self) -> None:
        """Negative quantities of a transactions file: each is a return of the customer's most recent
        earlier sale of the item (stored, or accepted earlier in the file), matched the way the Online
        Retail II loader matches cancellations; without such a sale it is quarantined."""
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _tx_returns AS
            WITH asked AS (SELECT * FROM _checked WHERE reason IS NULL AND _return),
            events AS (
                -- Stored sales first at equal times, then the file's rows in file order.
                SELECT record_key AS customer, item_id, ts, 0 AS origin, 0 AS _row, line_key, quantity, FALSE AS is_return
                FROM lines WHERE record_key IN (SELECT record_key FROM asked)
                UNION ALL
                SELECT record_key, item_id, "timestamp", 1, _row, line_key, quantity, FALSE FROM _checked
                WHERE reason IS NULL AND NOT _return AND record_key IN (SELECT record_key FROM asked)
                  AND _row NOT IN (SELECT _row FROM _verdict)
                UNION ALL
                SELECT record_key, item_id, "timestamp", 1, _row, line_key, quantity, TRUE FROM asked
            ), ordered AS (
                SELECT *, row_number() OVER (ORDER BY ts, origin, _row) AS seq FROM events
            ), matched AS (
                SELECT c._row, s.line_key AS sale_key, s.quantity AS sold
                FROM {latest_earlier_sale("(SELECT * FROM ordered WHERE is_return)",
                                          "(SELECT * FROM ordered WHERE NOT is_return)", customer="customer")}
            )
            SELECT a._row, m.sale_key, m.sold, -a.quantity AS quantity, -a.quantity * a.unit_price * a.rate AS refund,
                   a."timestamp", a.line_key || '/' || m.sale_key AS return_key,
                   hash(a.line_key || '/' || m.sale_key, m.sale_key, -a.quantity, -a.quantity * a.unit_price,
                        a."timestamp") AS row_hash
            FROM asked a JOIN matched m USING (_row)
            """
        )
        self.con.execute(
            f"""
            INSERT INTO _verdict
            WITH s AS (
                SELECT t.*, r.row_hash AS existing_hash FROM _tx_returns t LEFT JOIN returns r USING (return_key)
            ), d AS (
                SELECT *, CASE
                    WHEN sale_key IS NULL THEN {_lit(Q.ORPHAN_RETURN.value)}
                    WHEN existing_hash IS NOT NULL AND existing_hash <> row_hash THEN {_lit(Q.DUPLICATE_LINE.value)}
                END AS r1, coalesce(existing_hash = row_hash, FALSE) AS already_present
                FROM s
            ), e AS (
                -- Units returned so far, in file order, on top of those already stored.
                SELECT d.*, coalesce(prev.returned, 0) + sum(CASE WHEN r1 IS NULL AND NOT already_present
                    THEN quantity ELSE 0 END) OVER (PARTITION BY sale_key ORDER BY _row
                    ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cumulative
                FROM d LEFT JOIN (SELECT line_key, sum(quantity) AS returned FROM returns GROUP BY 1) prev
                    ON prev.line_key = d.sale_key
            ), f AS (
                SELECT _row, already_present, CASE WHEN r1 IS NULL AND NOT already_present AND cumulative > sold
                    THEN {_lit(Q.RETURN_EXCEEDS_SALE.value)} ELSE r1 END AS final_reason FROM e
            )
            SELECT _row, final_reason, CASE WHEN final_reason IS NOT NULL THEN 'quantity' END, already_present
            FROM f WHERE final_reason IS NOT NULL OR already_present
            """
        )

    def _verdict_returns(self) -> None:
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _verdict AS
            WITH j AS (
                SELECT c._row, c.reason, c.reason_column, c.quantity, c.line_key, c.return_key, c."timestamp",
                       c.row_hash, l.quantity AS sold_quantity, l.ts AS sold_ts, l.line_key IS NOT NULL AS sale_known,
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
                CASE
                    WHEN reason IS NOT NULL THEN reason_column
                    WHEN NOT sale_known THEN 'line_id'
                    WHEN "timestamp" < sold_ts THEN 'timestamp'
                    WHEN existing_hash IS NOT NULL AND existing_hash <> row_hash THEN 'return_id'
                END AS c1,
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
                    THEN {_lit(Q.RETURN_EXCEEDS_SALE.value)} ELSE r2 END AS final_reason,
                    CASE WHEN r2 IS NULL AND NOT already_present AND cumulative > sold_quantity THEN 'quantity'
                         WHEN r1 IS NULL AND r2 IS NOT NULL THEN 'return_id' ELSE c1 END AS final_column
                FROM e
            )
            SELECT _row, final_reason, final_column, already_present FROM f WHERE final_reason IS NOT NULL OR already_present
            """
        )

    def _verdict_simple(self, unique_column: str | None, duplicate: QuarantineReason | None) -> None:
        later = ""
        if unique_column is not None and duplicate is not None:
            later = f"""
            UNION ALL
            SELECT _row, {_lit(duplicate.value)}, {_lit(unique_column)}, FALSE FROM (
                SELECT _row, row_number() OVER (PARTITION BY {_q(unique_column)} ORDER BY _row) AS n
                FROM _checked WHERE reason IS NULL
            ) WHERE n > 1
            """
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE _verdict AS SELECT _row, reason AS final_reason, reason_column AS final_column,"
            f" FALSE AS already_present FROM _checked WHERE reason IS NOT NULL {later}"
        )

    def _verdict_events(self) -> None:
        self.con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _verdict AS
            SELECT _row, reason AS final_reason, reason_column AS final_column, FALSE AS already_present
            FROM _checked WHERE reason IS NOT NULL
            UNION ALL
            SELECT _row, NULL, NULL, TRUE FROM _checked WHERE reason IS NULL AND row_hash IN (SELECT row_hash FROM events)
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
            FROM _accepted WHERE NOT _return
            """,
            [file_id],
        )
        self._insert_links([f"_h_{c}" for c in KEY_COLUMNS[spec.name]])
        if spec.name == "transactions":
            if self.settings.negative_quantity_returns:
                self.con.execute(
                    """
                    INSERT INTO returns
                    SELECT t.return_key, t.sale_key, t.quantity, t.refund, t."timestamp", t.row_hash, ?
                    FROM _tx_returns t SEMI JOIN _accepted a ON a._row = t._row
                    """,
                    [file_id],
                )
            self._store_items_named(file_id)

    def _store_items_named(self, file_id: int) -> None:
        """Names and categories of a transactions file fill the catalogue: an item it does not know
        gets a row, a known item without a name or category gets the file's (the most frequent per item)."""
        self.con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _named AS
            SELECT item_id, mode(name) AS name, mode(category) AS category FROM _accepted
            WHERE name IS NOT NULL OR category IS NOT NULL GROUP BY item_id
            """
        )
        self.con.execute(
            """
            UPDATE items SET name = coalesce(items.name, n.name), category = coalesce(items.category, n.category)
            FROM _named n WHERE n.item_id = items.item_id AND (items.name IS NULL OR items.category IS NULL)
            """
        )
        self.con.execute(
            f"""
            INSERT INTO items
            SELECT n.item_id, n.name, n.category, NULL, TRUE, upper(n.item_id) NOT IN ({self._non_products()}), ?
            FROM _named n ANTI JOIN items i ON i.item_id = n.item_id
            """,
            [file_id],
        )
        self.con.execute("DROP TABLE _named")

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
        """Bad rows with their contract columns as found in the file (customer keys hashed) and the
        column at fault; a row the reader could not split is stored without values."""
        hashed = {c: f"c.{_q('_h_' + c)}" for c in KEY_COLUMNS.get(spec.name, {})}
        if spec.name == "browse_events":
            hashed = {"customer_key": "c._h_event"}
        parts = []
        for contract, raw in cols.raw_name.items():
            parts += [_lit(contract), hashed.get(contract, f"CAST(r.{_q(raw)} AS VARCHAR)")]
        file_column = "CASE v.final_column " + " ".join(
            f"WHEN {_lit(contract)} THEN {_lit(raw)}" for contract, raw in cols.raw_name.items()) + " END"
        self.con.execute(
            f"""
            INSERT INTO quarantine (ingest_id, file_id, source_file, source, row_number, reason, record, column_name,
                                    file_column)
            SELECT ?, ?, ?, ?, v._row, v.final_reason, CAST(json_object({', '.join(parts)}) AS VARCHAR),
                   v.final_column, {file_column}
            FROM _verdict v JOIN _checked c ON c._row = v._row JOIN _raw r ON r._row = v._row
            WHERE v.final_reason IS NOT NULL
            UNION ALL
            SELECT ?, ?, ?, ?, _row, reason, '{{}}', NULL, NULL FROM _rejected
            """,
            [self.ingest_id, file_id, label, spec.name] * 2,
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
    accept_quarantine: bool = False,
    append_distant_history: bool = False,
) -> IngestResult:
    """Validate and store ``inputs`` in one transaction, then resolve identities.

    The rules, in the order they are applied:

    1. *File level* (the whole ingest fails, nothing is written): a file that cannot be read,
       misses a required column, or whose column holds no value of the expected type at all. The
       error names the file, the column and what was expected.
    2. *Row level* (never a crash, never a silent drop): each bad row goes to the ``quarantine``
       table with the file, its row number (1 = first data row), the column at fault and the
       reason; customer keys in the stored record are hashed like everywhere else. A number that is
       not finite or does not fit its type, a timestamp outside the plausible range, a CSV row with
       the wrong number of fields or bytes invalid in the file's encoding is a row-level problem
       too. A file in which one column and reason would quarantine more than
       ``max_quarantine_share`` of the rows is refused as a whole (a wrong mapping or format, more
       likely than bad data) unless the caller accepts it.
    3. *Idempotence*: a file whose bytes were ingested before is skipped; a line whose id is
       already in the store with identical content is counted as already present; with different
       content it is quarantined as a duplicate line id.

    Parameters
    ----------
    con
        The store's DuckDB connection (tables of :mod:`features.store`).
    inputs
        The files to ingest, each with its source (:class:`features.discovery.RawInput`); stored in
        the order of :data:`features.schema.SOURCES`, then by label.
    settings
        Settings: salt, time zone, currency, formats, ``max_quarantine_share``,
        ``distant_history_days``, ``quarantine_dir``.
    now
        Decides which timestamps are "in the future"; an argument so that nothing here depends on
        a hidden clock.
    ignored_paths
        (path, reason) of files discovery passed over, carried into the result.
    progress
        Called with each file's label (and ``"identity resolution"``) as the work reaches it.
    accept_quarantine
        Store a file even when more than ``max_quarantine_share`` of its rows are quarantined.
    append_distant_history
        Store sales that are ``distant_history_days`` or more away from the stored history.

    Returns
    -------
    IngestResult
        Per-file counts, quarantine counts by (file, reason), the identity update, and the CSV of
        this ingest's quarantined rows (``None`` when there are none).

    Raises
    ------
    IngestError
        Nothing to ingest, a file-level problem (the message names the file and column), or sales
        ``distant_history_days`` or more from the stored history without
        ``append_distant_history``; the store is left as it was.
    """
    if not inputs:
        raise IngestError("nothing to ingest")
    bind_salt(con, settings)
    con.execute(f"SET TimeZone = {_lit(settings.timezone)}")
    con.execute("BEGIN TRANSACTION")
    try:
        # Transcoded copies and plain-named links live only as long as the call.
        with tempfile.TemporaryDirectory(prefix="rapport-ingest-") as workdir:
            job = _Ingest(con, settings, now, workdir=Path(workdir), accept_quarantine=accept_quarantine)
            first_file_id = job.next_file_id
            started = job.now
            results = []
            for index, inp in enumerate(_order(inputs)):
                if progress:
                    progress(inp.label)
                results.append(job.run(inp, index))
        if not append_distant_history:
            _check_distant_history(con, settings, first_file_id)
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
            [job.ingest_id, started, datetime.now(UTC).replace(tzinfo=None, microsecond=0), len(results),
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
            f"COPY (SELECT source_file, source, row_number, column_name AS column, file_column, reason, record"
            f" FROM quarantine WHERE ingest_id = ? ORDER BY source_file, row_number) TO {_lit(str(quarantine_file))} (HEADER)",
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


def _check_distant_history(con: duckdb.DuckDBPyConnection, settings: Settings, first_file_id: int) -> None:
    """Refuse sales far from the stored history: a real export ingested into the demo's store (or
    another retailer's) would silently become one customer history spanning two unrelated periods."""
    new_first, new_last, old_first, old_last = con.execute(
        "SELECT min(ts) FILTER (WHERE file_id >= ?), max(ts) FILTER (WHERE file_id >= ?),"
        " min(ts) FILTER (WHERE file_id < ?), max(ts) FILTER (WHERE file_id < ?) FROM lines",
        [first_file_id] * 4,
    ).fetchall()[0]
    if new_first is None or old_first is None:
        return
    gap = max((new_first - old_last).days, (old_first - new_last).days)
    if gap < settings.distant_history_days:
        return
    raise IngestError(
        f"these files' sales run {new_first:%Y-%m-%d} .. {new_last:%Y-%m-%d}, the store's history "
        f"{old_first:%Y-%m-%d} .. {old_last:%Y-%m-%d}: {gap:,} days apart (distant_history_days is "
        f"{settings.distant_history_days}); nothing was written. Use another store (--data-dir or RAPPORT_DATA_DIR) "
        "for another history, or pass --append-distant-history if both belong together."
    )
