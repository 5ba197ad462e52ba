"""Ingestion: file-level errors name the file and column, bad rows are quarantined with their reason
and row number, re-ingest is idempotent, nothing personal is stored in clear."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from features.discovery import IngestError, RawInput, discover, load_mapping_file, parse_map_options
from features.ingest import ingest
from features.rawformat import CsvOptions, detect_delimiter, detect_encoding, scan_lines, strftime_format
from features.schema import QuarantineReason as Q
from features.store import StoreBusyError, connect
from tests.conftest import NOW, ORDER_HEADER, RECEIPT_HEADER, RETURN_HEADER, write_csv

pytestmark = pytest.mark.data

GOOD_ORDERS = [
    ["1", "1", "2024-01-05T10:00:00+01:00", "A1", "jane@example.com", "", "I1", 2, 10.0, 0, "GBP", "web", "UK"],
    ["1", "2", "2024-01-05T10:00:00+01:00", "A1", "jane@example.com", "", "I2", 1, 5.0, 1, "GBP", "web", "UK"],
    ["2", "1", "2024-02-05 09:00", "", "bob@example.com", "", "I1", 1, 10.0, "", "", "web", "UK"],
]


def _ingest(settings, path: Path, **kwargs):
    con = connect(settings)
    inputs, ignored = discover(path, **kwargs)
    result = ingest(con, inputs, settings, now=NOW, ignored_paths=ignored)
    return con, result


def _count(con, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


# --- file-level errors ----------------------------------------------------------------------------


def test_missing_required_column_names_file_and_column_and_writes_nothing(settings, tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw, "orders.csv", ORDER_HEADER, GOOD_ORDERS)
    header = [c for c in RECEIPT_HEADER if c != "store_id"]
    write_csv(raw, "store_receipts.csv", header, [["S1", "1", "2024-02-01", "C1", "I1", 1, 3.0]])
    con = connect(settings)
    inputs, _ = discover(raw)
    with pytest.raises(IngestError) as info:
        ingest(con, inputs, settings, now=NOW)
    message = str(info.value)
    assert "store_receipts.csv" in message and "store_id" in message
    # The good orders file of the same call was rolled back with it.
    assert _count(con, "lines") == 0
    assert _count(con, "identity_map") == 0
    assert _count(con, "ingested_files") == 0


def test_wrong_type_for_a_whole_column_is_a_file_error(settings, tmp_path):
    rows = [r[:7] + ["two"] + r[8:] for r in GOOD_ORDERS]
    raw = write_csv(tmp_path / "raw", "orders.csv", ORDER_HEADER, rows)
    with pytest.raises(IngestError, match=r"orders\.csv: column 'quantity' .* whole numbers.*row 1: not a number\)") as info:
        _ingest(settings, raw)
    # A text value could be personal data in a mis-mapped column: its kind is told, never the value.
    assert "two" not in str(info.value)


def test_unparseable_file_is_a_file_error(settings, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "orders.csv").write_text(",".join(ORDER_HEADER) + "\n1,1,\"unterminated,2024-01-01\n2,2\n")
    with pytest.raises(IngestError, match=r"orders\.csv"):
        _ingest(settings, raw)


def test_mapping_that_names_a_missing_column_is_explained(settings, tmp_path):
    raw = write_csv(tmp_path / "raw", "export.csv", ["Customer", "When", "Sku", "Qty", "Price"],
                    [["c1", "2024-01-01", "I1", 1, 2.0]])
    with pytest.raises(IngestError, match="no such column"):
        _ingest(settings, raw, source="transactions",
                mapping={"customer_key": "Customer", "timestamp": "Date", "item_id": "Sku",
                         "quantity": "Qty", "unit_price": "Price"})


def test_unrecognised_folder_is_an_error_and_unknown_files_are_listed(settings, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "notes.txt").write_text("hello")
    with pytest.raises(IngestError, match="no recognised source file"):
        discover(raw)
    write_csv(raw, "orders.csv", ORDER_HEADER, GOOD_ORDERS)
    (raw / "_truth").mkdir()
    inputs, ignored = discover(raw)
    assert [i.source for i in inputs] == ["orders"]
    assert {Path(p).name for p, _ in ignored} == {"notes.txt", "_truth"}


# --- row-level quarantine -------------------------------------------------------------------------


def test_every_bad_row_is_quarantined_with_reason_and_row_number(settings, tmp_path):
    ok = ["web", "UK"]
    rows = GOOD_ORDERS + [
        ["3", "1", "not-a-date", "A2", "", "", "I1", 1, 10, "", "", *ok],          # row 4
        ["4", "1", "2024-03-01", "A2", "", "", "I3", 0, 10, "", "", *ok],          # row 5
        ["5", "1", "2024-03-01", "A2", "", "", "I3", 1, -3, "", "", *ok],          # row 6
        ["6", "1", "2024-03-01", "A2", "", "", "I3", 1, 3, "", "", "fax", "UK"],   # row 7
        ["7", "1", "2030-03-01", "A2", "", "", "I3", 1, 3, "", "", *ok],           # row 8
        ["1", "1", "2024-01-05T10:00:00+01:00", "A1", "", "", "I9", 2, 10, 0, "GBP", *ok],  # row 9
        ["8", "1", "2024-03-01", "A2", "", "", "I3", 1, 3, "", "USD", *ok],        # row 10
        ["9", "1", "2024-03-01", "A2", "", "", "", 1, 3, "", "", *ok],             # row 11
        ["10", "1", "2024-03-01", "A2", "", "", "I3", 1, "abc", "", "", *ok],      # row 12
        ["11", "1", "2024-03-01", "A2", "", "", "I3", 1, 0, "", "", *ok],          # row 13
    ]
    raw = tmp_path / "raw"
    write_csv(raw, "orders.csv", ORDER_HEADER, rows)
    write_csv(raw, "returns.csv", RETURN_HEADER, [
        ["R1", "1", "1", 1, 10, "2024-01-10"],   # fine
        ["R2", "99", "1", 1, 10, "2024-01-10"],  # orphan
        ["R3", "1", "1", 5, 10, "2024-01-11"],   # 1 + 5 > 2 sold
        ["R4", "2", "1", 1, 10, "2024-01-01"],   # before its sale (2024-02-05)
        ["R5", "1", "2", 1, -1, "2024-01-11"],   # negative refund
    ])
    con, result = _ingest(settings, raw)
    got = {(Path(f).name, r): n for f, r, n in result.quarantine_counts}
    assert got == {
        ("orders.csv", Q.BAD_TIMESTAMP): 1,
        ("orders.csv", Q.BAD_QUANTITY): 1,
        ("orders.csv", Q.NON_POSITIVE_PRICE): 2,
        ("orders.csv", Q.UNKNOWN_CHANNEL): 1,
        ("orders.csv", Q.FUTURE_TIMESTAMP): 1,
        ("orders.csv", Q.DUPLICATE_LINE): 1,
        ("orders.csv", Q.UNKNOWN_CURRENCY): 1,
        ("orders.csv", Q.MISSING_VALUE): 1,
        ("orders.csv", Q.BAD_NUMBER): 1,
        ("returns.csv", Q.ORPHAN_RETURN): 1,
        ("returns.csv", Q.RETURN_EXCEEDS_SALE): 1,
        ("returns.csv", Q.RETURN_BEFORE_SALE): 1,
        ("returns.csv", Q.NEGATIVE_AMOUNT): 1,
    }
    rows_by_reason = dict(con.execute(
        "SELECT reason, list(row_number ORDER BY row_number) FROM quarantine WHERE source = 'orders' GROUP BY 1"
    ).fetchall())
    assert rows_by_reason[Q.BAD_TIMESTAMP] == [4]
    assert rows_by_reason[Q.DUPLICATE_LINE] == [9]
    assert rows_by_reason[Q.NON_POSITIVE_PRICE] == [6, 13]
    # Nothing lost: every row of every file is either stored or quarantined.
    orders_file = next(f for f in result.files if f.source == "orders")
    assert orders_file.rows == len(rows) == orders_file.accepted + orders_file.quarantined
    assert _count(con, "lines") == 3 and _count(con, "returns") == 1
    # The quarantine is also written as CSV for people to open.
    assert result.quarantine_file is not None and result.quarantine_file.exists()
    assert "unparseable timestamp" in result.quarantine_file.read_text()


def test_currency_with_a_rate_is_converted_and_timezone_applies_to_naive_times(tmp_path, settings):
    from features.settings import load_settings

    s = load_settings(data_dir=tmp_path / "fx", currency="GBP", currency_rates={"EUR": 0.85},
                      timezone="Europe/London")
    raw = write_csv(tmp_path / "raw", "orders.csv", ORDER_HEADER, [
        ["1", "1", "2024-05-01 10:00", "A1", "", "", "I1", 2, 10.0, 0, "EUR", "web", "UK"],
        ["2", "1", "2024-05-01T10:00:00+02:00", "A1", "", "", "I1", 1, 10.0, 0, "gbp", "web", "UK"],
    ])
    con, result = _ingest(s, raw)
    assert result.quarantined == 0
    rows = con.execute("SELECT order_id, gross_amount, unit_price, ts FROM lines ORDER BY order_id").fetchall()
    assert rows[0][1] == pytest.approx(17.0) and rows[0][2] == pytest.approx(8.5)
    assert rows[0][3].hour == 9  # 10:00 in London in May (summer time) is 09:00 UTC
    assert rows[1][1] == pytest.approx(10.0) and rows[1][3].hour == 8


# --- idempotence ----------------------------------------------------------------------------------


def test_reingesting_the_same_file_changes_nothing(settings, tmp_path):
    raw = write_csv(tmp_path / "raw", "orders.csv", ORDER_HEADER, GOOD_ORDERS)
    con, first = _ingest(settings, raw)
    assert first.accepted == 3
    inputs, _ = discover(raw)
    second = ingest(con, inputs, settings, now=NOW)
    assert second.files[0].skipped and "ingest #1" in second.files[0].skipped
    assert _count(con, "lines") == 3


def test_a_new_days_file_appends_and_overlapping_lines_are_not_duplicated(settings, tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw, "orders.csv", ORDER_HEADER, GOOD_ORDERS)
    con, _ = _ingest(settings, raw)
    # A cumulative export: yesterday's lines again plus one new order, as another file.
    day2 = tmp_path / "day2"
    write_csv(day2, "orders_2024-02-06.csv", ORDER_HEADER, GOOD_ORDERS + [
        ["3", "1", "2024-02-06 09:00", "A1", "jane@example.com", "", "I2", 1, 5.0, "", "", "web", "UK"],
    ])
    inputs, _ = discover(day2)
    result = ingest(con, inputs, settings, now=NOW)
    assert (result.accepted, result.already_present, result.quarantined) == (1, 3, 0)
    assert _count(con, "lines") == 4


def test_same_line_id_with_other_content_in_a_later_file_is_quarantined(settings, tmp_path):
    raw = write_csv(tmp_path / "raw", "orders.csv", ORDER_HEADER, GOOD_ORDERS)
    con, _ = _ingest(settings, raw)
    changed = [GOOD_ORDERS[0][:6] + ["I7"] + GOOD_ORDERS[0][7:]]
    later = write_csv(tmp_path / "later", "orders.csv", ORDER_HEADER, changed)
    inputs, _ = discover(later)
    result = ingest(con, inputs, settings, now=NOW)
    assert result.quarantine_counts[0][1:] == (Q.DUPLICATE_LINE.value, 1)
    assert con.execute("SELECT item_id FROM lines WHERE line_key = '1/1'").fetchall() == [("I1",)]


# --- generic transactions with a mapping -----------------------------------------------------------


def test_generic_transactions_with_a_mapping_file(settings, tmp_path):
    raw = write_csv(tmp_path / "raw", "export.csv", ["Customer", "When", "Sku", "Qty", "Price", "Shop"], [
        ["c1", "2024-01-01 10:00", "I1", 1, 2.0, "x"],
        ["c1", "2024-01-01 10:00", "I2", 3, 1.0, "x"],
        ["c2", "2024-01-02 11:00", "I1", 1, 2.0, "x"],
        ["", "2024-01-03 11:00", "I1", 1, 2.0, "x"],
    ])
    mapping_file = tmp_path / "mapping.toml"
    mapping_file.write_text(
        'source = "transactions"\n[columns]\ncustomer_key = "Customer"\ntimestamp = "When"\n'
        'item_id = "Sku"\nquantity = "Qty"\nunit_price = "Price"\n'
    )
    loaded = load_mapping_file(mapping_file)
    con, result = _ingest(settings, raw, source=loaded.source, mapping=loaded.columns)
    assert result.accepted == 4 and result.quarantined == 0
    assert result.files[0].notes == ("ignored columns not in the contract: Shop",)
    orders = con.execute("SELECT count(DISTINCT order_key), count(*) FILTER (WHERE record_key IS NULL),"
                         " count(*) FILTER (WHERE is_guest) FROM lines").fetchall()[0]
    assert orders == (3, 1, 1)  # c1's two lines at one time form one order; the anonymous line is a guest sale
    assert result.identity.customers == 2


def test_map_options_are_parsed_and_bad_ones_explained():
    assert parse_map_options(["customer_key=Customer ID", "timestamp = InvoiceDate"]) == {
        "customer_key": "Customer ID", "timestamp": "InvoiceDate"}
    with pytest.raises(IngestError, match="CONTRACT_COLUMN=FILE_COLUMN"):
        parse_map_options(["customer_key"])


def test_arrow_tables_ingest_like_files(settings):

    table = pa.table({"customer_key": ["a", "b"], "timestamp": ["2024-01-01", "2024-01-02"],
                      "item_id": ["I1", "I2"], "quantity": [1, 2], "unit_price": [3.0, 4.0]})
    con = connect(settings)
    result = ingest(con, [RawInput("transactions", "memory", table=table)], settings, now=NOW)
    assert result.accepted == 2 and _count(con, "lines") == 2


# --- privacy ----------------------------------------------------------------------------------------


def test_no_personal_identifier_is_stored_in_clear(settings, tmp_path):
    raw = tmp_path / "raw"
    rows = GOOD_ORDERS + [["3", "1", "bad", "A9", "secret.person@example.com", "dev-1", "I1", 1, 1, "", "", "web", "UK"]]
    write_csv(raw, "orders.csv", ORDER_HEADER, rows)
    write_csv(raw, "store_receipts.csv", RECEIPT_HEADER, [["S1", "1", "2024-02-01", "ST1", "CARD-777", "I1", 1, 3.0]])
    con, result = _ingest(settings, raw)
    assert result.quarantined == 1  # the row with the bad timestamp, whose keys must be hashed too
    dump = ""
    for (table,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").fetchall():
        dump += con.execute(f"SELECT * FROM {table}").fetchdf().to_csv()
    dump += result.quarantine_file.read_text()
    for clear in ("jane@example.com", "bob@example.com", "secret.person", "CARD-777", "CARD777", "dev-1"):
        assert clear.lower() not in dump.lower()
    assert "email:" in dump  # hashed keys keep their type readable


def test_two_data_dirs_never_share_state(tmp_path, settings):
    from features.settings import load_settings

    raw = write_csv(tmp_path / "raw", "orders.csv", ORDER_HEADER, GOOD_ORDERS)
    a = load_settings(data_dir=tmp_path / "a")
    b = load_settings(data_dir=tmp_path / "b")
    con_a, _ = _ingest(a, raw)
    con_b = connect(b)
    assert _count(con_a, "lines") == 3 and _count(con_b, "lines") == 0
    assert a.database_path != b.database_path and not (tmp_path / "data").exists()


# --- reading files as retailers write them ---------------------------------------------------------


def test_encodings_are_detected_from_the_bytes():
    text = "item_id,name\nI1,Crème brûlée\n"
    assert detect_encoding(text.encode("utf-8"))[0] == "utf-8"
    assert detect_encoding(text.encode("utf-8-sig"))[0] == "utf-8-sig"
    assert detect_encoding(text.encode("utf-16"))[0] == "utf-16"
    assert detect_encoding(text.encode("utf-16-be"))[0] == "utf-16-be"
    assert detect_encoding(text.encode("latin-1"))[0] == "cp1252"
    # 0x81 is undefined in Windows-1252: only Latin-1 decodes it.
    assert detect_encoding(b"a,b\n1,\x81\xe9\n")[0] == "iso8859-1"


def test_delimiter_and_date_format_notation():
    assert detect_delimiter('Client;"Date; heure";Prix') == ";"
    assert detect_delimiter("a\tb\tc") == "\t"
    assert detect_delimiter("single") is None
    assert strftime_format("dd/mm/yyyy HH:MM") == "%d/%m/%Y %H:%M"
    assert strftime_format("%d.%m.%Y") == "%d.%m.%Y"


@pytest.mark.parametrize(("options", "fragment"), [
    ({"encoding": "klingon"}, "--encoding 'klingon': unknown encoding"),
    ({"delimiter": "::"}, "--delimiter '::'"),
    ({"decimal": ";"}, "--decimal ';'"),
    ({"date_format": "tomorrow"}, "--date-format 'tomorrow'"),
])
def test_declared_formats_are_checked(options, fragment):
    with pytest.raises(IngestError, match=re.escape(fragment)):
        CsvOptions(**options)


def test_mapping_file_declares_the_format_and_refuses_unknown_keys(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('source = "transactions"\ndelimiter = ";"\ndecimal = ","\n[columns]\nitem_id = "Sku"\n')
    loaded = load_mapping_file(path)
    assert (loaded.source, loaded.columns, loaded.formats) == ("transactions", {"item_id": "Sku"},
                                                               {"delimiter": ";", "decimal": ","})
    path.write_text('source = "transactions"\nseparator = ";"\n')
    with pytest.raises(IngestError, match="unknown key.*separator"):
        load_mapping_file(path)


def test_arrow_tables_with_nan_and_infinite_values_are_quarantined(settings):
    table = pa.table({
        "customer_key": ["c1", "c2", "c3"], "timestamp": ["2024-01-01", "2024-01-02", "2024-01-03"],
        "item_id": ["I1", "I1", "I1"], "quantity": [1.0, float("nan"), 2.0],
        "unit_price": [2.5, 1.0, float("inf")],
    })
    con = connect(settings)
    result = ingest(con, [RawInput("transactions", "memory", table=table)], settings, now=NOW)
    assert (result.accepted, result.quarantined) == (1, 2)
    assert dict(con.execute("SELECT column_name, reason FROM quarantine").fetchall()) == {
        "quantity": Q.NOT_FINITE.value, "unit_price": Q.NOT_FINITE.value}


def test_returns_in_a_redelivered_export_are_already_present(settings, tmp_path):
    header = ["Customer", "When", "Sku", "Qty", "Price"]
    rows = [["c1", "2024-01-01 10:00", "I1", 3, 2.0], ["c1", "2024-01-05 10:00", "I1", -1, 2.0]]
    mapping = {"customer_key": "Customer", "timestamp": "When", "item_id": "Sku", "quantity": "Qty", "unit_price": "Price"}
    con, first = _ingest(settings, write_csv(tmp_path / "a", "export.csv", header, rows), source="transactions",
                         mapping=mapping)
    assert (first.accepted, _count(con, "lines"), _count(con, "returns")) == (2, 1, 1)
    later = rows + [["c1", "2024-01-06 10:00", "I1", -1, 2.0]]
    inputs, _ = discover(write_csv(tmp_path / "b", "export.csv", header, later), source="transactions", mapping=mapping)
    second = ingest(con, inputs, settings, now=NOW)
    assert (second.accepted, second.already_present, second.quarantined) == (1, 2, 0)
    assert con.execute("SELECT sum(quantity), sum(refund_amount) FROM returns").fetchall() == [(2, 4.0)]


# --- a store another process holds ---------------------------------------------------------------


def _hold_store(path: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('held', flush=True);"
         " time.sleep(float(sys.argv[2]))", str(path), str(seconds)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_busy_store_is_waited_for_then_its_holder_is_named(settings):
    connect(settings).close()
    holder = _hold_store(settings.database_path, 30)
    try:
        with pytest.raises(StoreBusyError) as info:
            connect(settings.model_copy(update={"store_busy_timeout_seconds": 0.3}))
        message = str(info.value)
        assert f"process {holder.pid}" in message and "store_busy_timeout_seconds" in message
    finally:
        holder.kill()
        holder.wait()


def test_a_store_released_within_the_timeout_is_opened(settings):
    connect(settings).close()
    holder = _hold_store(settings.database_path, 0.5)
    try:
        con = connect(settings.model_copy(update={"store_busy_timeout_seconds": 20}))
        assert _count(con, "lines") == 0
        con.close()
    finally:
        holder.wait()


@pytest.mark.unit
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_lines_are_counted_and_numbered_as_the_reader_counts_them(tmp_path, newline):
    # Lines as DuckDB numbers them: the header 1, then each row and each blank line; the line breaks
    # of a quoted field (blank ones included, and a doubled quote inside it) start no line.
    text = ["h1,h2", "a,1", "", 'b,"x', "", 'y ""z""",2', "", "", "c,3", "", "d,4"]
    path = tmp_path / "f.csv"
    path.write_bytes(newline.join(text).encode() + newline.encode())
    scan = scan_lines(path)
    assert (scan.blank, scan.physical, scan.newline) == ((3, 5, 6, 8), 11, newline[-1].encode())
    assert scan_lines(path, 5).blank == (3, 5)
    assert scan_lines(path, 2).blank == ()
