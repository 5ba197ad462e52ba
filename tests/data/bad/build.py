"""Writes the bad-input corpus next to this script: small files, one defect (or one kind of file) each.

The expected outcome of every file (exit code, message fragments, counts per reason) is written by
hand in ``manifest.toml``, never computed from the files. Run ``python tests/data/bad/build.py``
after changing a case; the files are committed, so the tests never need this script.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent
ORDER_HEADER = ("order_id,line_id,timestamp,account_id,email,device_id,item_id,quantity,unit_price,discount,"
                "currency,channel,country")


def order(n: int, *, ts: str = "2024-03-01 10:00:00", quantity: str = "1", price: str = "9.95",
          item: str = "I1", order_id: str | None = None, account: str = "A1", country: str = "UK") -> str:
    oid = order_id if order_id is not None else f"O{n}"
    return f"{oid},1,{ts},{account},jane.doe@example.com,,{item},{quantity},{price},0,GBP,web,{country}"


def orders(*rows: str) -> str:
    return "\n".join([ORDER_HEADER, *rows]) + "\n"


def good(k: int, start: int = 1) -> list[str]:
    return [order(i) for i in range(start, start + k)]


def write(name: str, text: str, encoding: str = "utf-8") -> None:
    (HERE / name).write_bytes(text.encode(encoding))


def transactions(rows: list[tuple], header: str, sep: str = ",") -> str:
    return "\n".join([header, *(sep.join(str(v) for v in row) for row in rows)]) + "\n"


def main() -> None:
    # -- literal paths: siblings a glob would match
    write("orders1.csv", orders(*good(5, 100)))
    write("orders_extra.csv", orders(*good(4, 200)))
    write("orders[1].csv", orders(*good(3)))
    write("orders*.csv", orders(*good(2, 10)))

    # -- numbers that do not fit their type
    write("orders_quantity_out_of_range.csv", orders(*good(3), order(4, quantity="1e308"),
                                                     order(5, quantity="9223372036854775808")))
    write("orders_quantity_not_finite.csv", orders(*good(3), order(4, quantity="NaN"), order(5, quantity="inf"),
                                                   order(6, quantity="-Infinity")))
    write("orders_quantity_decimal.csv", orders(*good(3), order(4, quantity="6.95")))
    write("orders_price_text.csv", orders(*good(3), order(4, price="n/a")))
    write("orders_line_total_overflow.csv", orders(*good(2), order(3, quantity="1000000000", price="1e14")))
    write("orders_price_1e300.csv", orders(*good(2), order(3, price="1e300")))
    base = {
        "order_id": pa.array([1.0, 2.0, 3.0, 4.0, 5.0, 1e300]),
        "line_id": pa.array([1, 1, 1, 1, 1, 1]),
        "timestamp": pa.array(["2024-03-01T10:00:00+00:00"] * 6),
        "account_id": pa.array(["A1"] * 6),
        "item_id": pa.array(["I1"] * 6),
        "quantity": pa.array([1.0, 2.0, 1e308, float("nan"), 2.0**63, 1.0]),
        "unit_price": pa.array([9.95, float("inf"), 1.0, 1.0, 1.0, 1.0]),
        "channel": pa.array(["web"] * 6),
    }
    pq.write_table(pa.table(base), HERE / "orders_parquet_numbers.parquet")
    pq.write_table(pa.table(base).slice(0, 2), HERE / "orders[p].parquet")
    pq.write_table(pa.table({**base, "order_id": pa.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                             "quantity": pa.array([1.0] * 6),
                             "unit_price": pa.array([float("nan"), float("-inf"), 2.5, 3.0, 4.0, 5.0])}),
                   HERE / "orders_parquet_prices.parquet")

    # -- rows that used to vanish or fail the file
    write("orders_hash_ids.csv", orders(order(1, order_id="#1001"), order(2, order_id="#1002"), *good(2, 3),
                                        order(5, order_id="# 1005")))
    write("orders_timestamps_implausible.csv", orders(*good(2), order(3, ts="-infinity"), order(4, ts="epoch"),
                                                      order(5, ts="0001-01-01 00:00:00"),
                                                      order(6, ts="1970-01-01T00:00:00Z"), order(7, ts="infinity")))
    ragged = good(5)
    ragged[2] += ",extra"
    write("orders_ragged_row.csv", orders(*ragged))
    short = good(4)
    short[1] = short[1].rsplit(",", 1)[0]
    write("orders_short_row.csv", orders(*short))
    nul = good(4)
    nul[2] = nul[2].replace(",I1,", ",I\x001,")
    write("orders_nul_byte.csv", orders(*nul))
    write("orders_unterminated_quote.csv", orders(*good(2), order(3, item='"I1'), *good(2, 4)))
    # A quoted field holding line breaks is one row over several lines: the rows after it keep their
    # numbers (1 = first data row), whether the reader refuses them or the checks quarantine them.
    multiline = good(12)
    multiline[1] = order(2, country='"United\nKingdom"')
    multiline[4] = order(5, country='"Isle of\r\nMan\n"')
    multiline[6] += ",extra"
    multiline[9] = order(10, price="n/a")
    write("orders_multiline_then_ragged.csv", orders(*multiline))
    multiline = good(12)
    multiline[1] = order(2, country='"United\nKingdom"')
    multiline[3] = order(4, country="Fran\udce7e")
    multiline[7] = order(8, price="n/a")
    (HERE / "orders_multiline_then_bad_byte.csv").write_bytes(
        orders(*multiline).encode("utf-8", errors="surrogateescape"))
    # A multi-line field is no quote left open: a misplaced quote after it is one refused row, and
    # a quote never closed after it still refuses the file, counting the lines it swallowed.
    multiline = good(12)
    multiline[1] = order(2, country='"United\nKingdom"')
    multiline[5] = order(6, item='"I1"x')
    write("orders_multiline_then_misplaced_quote.csv", orders(*multiline))
    write("orders_multiline_then_unclosed_quote.csv",
          orders(*good(1), order(2, country='"United\nKingdom"'), *good(1, 3), order(4, item='"I1'), *good(2, 5)))
    # Blank lines are no rows, but the reader counts them in the lines of the rows it refuses.
    blank = good(12)
    blank[1] = order(2, country='"United\n\nKingdom"')  # a blank line inside a field is no blank line
    blank[0] += "\n"
    blank[2] += "\n\n"
    blank[4] += ",extra"
    blank[8] = blank[8].replace(",I1,", ",I\x001,")
    write("orders_blank_lines.csv", orders(*blank))

    # -- encodings
    catalogue = "item_id,name,category\nI1,Crème brûlée dish,Kitchen\nI2,Café au lait bowl,Kitchen\nI3,Plain mug,Kitchen\n"
    write("catalogue_latin1.csv", catalogue, "latin-1")
    write("catalogue_windows1252.csv", catalogue.replace("Plain mug", "“Best” mug – 5€"), "cp1252")
    write("catalogue_utf16.csv", catalogue, "utf-16")
    write("catalogue_utf16le_no_bom.csv", catalogue, "utf-16-le")
    write("catalogue_utf8_bom.csv", catalogue, "utf-8-sig")
    (HERE / "catalogue_latin1.csv.gz").write_bytes(gzip.compress(catalogue.encode("latin-1"), mtime=0))
    (HERE / "orders_bad_utf8_byte.csv").write_bytes(
        orders(*good(2), order(3, country="Fran\udce7e"), *good(2, 4)).encode("utf-8", errors="surrogateescape"))

    # -- delimiters, decimal marks, date formats
    header = "Client;Date;Article;Quantité;Prix unitaire"
    rows = [(f"C{i % 4}", f"{(i % 28) + 1:02d}/0{(i % 9) + 1}/2024 1{i % 10}:30", f"A{i % 5}", (i % 3) + 1,
             f"{i % 7 + 1},{i % 100:02d}") for i in range(30)]
    write("export_fr_semicolon.csv", transactions(rows, header, ";"), "cp1252")
    ambiguous = [(f"C{i}", f"0{i % 9 + 1}/0{i % 3 + 1}/2024", "A1", 1, "2.50") for i in range(6)]
    write("export_ambiguous_dates.csv", transactions(ambiguous, "customer,date,item,qty,price"))
    write("export_pipe.csv", transactions([(f"C{i}", "2024-03-0{}".format(i + 1), "A1", 1, 2.5) for i in range(3)],
                                          "customer|date|item|qty|price", "|"))
    tsv = "\n".join([ORDER_HEADER.replace(",", "\t"), *(r.replace(",", "\t") for r in good(3))]) + "\n"
    write("orders_tab.tsv", tsv)
    (HERE / "orders_gzip.csv.gz").write_bytes(gzip.compress(orders(*good(3)).encode(), mtime=0))

    # -- generic exports: returns as negative quantities, names and categories, swapped mappings
    header = "Invoice,StockCode,Description,Category,Quantity,InvoiceDate,Price,Customer ID"
    lines = [
        ("536365", "85123A", "WHITE HANGING HEART", "Decor", 6, "2024-03-01 08:26", 2.55, 17850),
        ("536365", "71053", "WHITE METAL LANTERN", "Lighting", 6, "2024-03-01 08:26", 3.39, 17850),
        ("536366", "85123A", "WHITE HANGING HEART", "Decor", 4, "2024-03-02 09:00", 2.55, 13047),
        ("C536367", "85123A", "WHITE HANGING HEART", "Decor", -2, "2024-03-03 10:00", 2.55, 17850),
        ("C536368", "71053", "WHITE METAL LANTERN", "Lighting", -6, "2024-03-04 10:00", 3.39, 17850),
        ("C536369", "22423", "REGENCY CAKESTAND", "Kitchen", -1, "2024-03-04 11:00", 12.75, 17850),
        ("C536370", "85123A", "WHITE HANGING HEART", "Decor", -5, "2024-03-05 11:00", 2.55, 13047),
        ("C536371", "85123A", "WHITE HANGING HEART", "Decor", -1, "2024-03-01 07:00", 2.55, 13047),
    ]
    write("export_returns.csv", transactions(lines, header))
    swapped = [(f"{536000 + i}", f"2{i:04d}", "ITEM", "Misc", (i % 4) + 1, f"2024-03-{i % 28 + 1:02d} 10:00",
                f"{i % 5 + 1}.00" if i % 8 == 0 else f"{(i * 37) % 900 / 100 + 0.05:.2f}", 12000 + i % 9)
               for i in range(40)]
    write("export_swapped.csv", transactions(swapped, header))
    emails = [(f"{536000 + i}", "22423", "CAKESTAND", "Kitchen", f"buyer{i}@example.com", "2024-03-01 10:00", 1.5, 1)
              for i in range(12)]
    write("export_email_in_quantity.csv", transactions(emails, header))

    # -- what was already handled: missing columns, wrong types, duplicates, orphans, SQL-looking text
    write("orders_empty.csv", "")
    write("orders_header_only.csv", orders())
    write("orders_missing_column.csv", orders(*good(2)).replace(",item_id", ",sku"))
    write("orders_quantity_words.csv", orders(*(order(i, quantity="two") for i in range(1, 4))))
    write("orders_duplicate_lines.csv", orders(*good(3), order(2, item="I9")))
    write("orders_sql_text.csv", orders(order(1, item="I1'; DROP TABLE lines; --"), *good(2, 2)))
    write("orders_assorted.csv", orders(
        *good(40), order(41, ts="2031-01-01 10:00:00"), order(42, price="-1"), order(43, quantity="0"),
        order(44, ts="not a date"), order(45, item=""),
        order(46).replace(",GBP,web,", ",XYZ,web,"), order(47).replace(",GBP,web,", ",GBP,teleport,")))
    write("returns_orphan.csv", "return_id,order_id,line_id,quantity,refund_amount,timestamp\n"
          "R1,O404,1,1,9.95,2024-03-02 10:00\nR2,O1,1,1,9.95,2024-03-02 10:00\n")
    write("returns_refund_not_finite.csv", "return_id,order_id,line_id,quantity,refund_amount,timestamp\n"
          "R1,O1,1,1,NaN,2024-03-02 10:00\nR2,O2,1,1,1e308,2024-03-02 10:00\nR3,O3,1,1,9.95,2024-03-02 10:00\n")
    write("orders_day1.csv", orders(*good(3)))
    write("orders_day2.csv", orders(*good(4)))
    write("orders_2010.csv", orders(*(order(i, ts="2010-05-01 10:00:00") for i in range(500, 503))))


if __name__ == "__main__":
    main()
