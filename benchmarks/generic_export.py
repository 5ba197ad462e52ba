"""Online Retail II two ways: the README's generic-export mapping against the dedicated loader.

The same real file (a UK online retailer, 2009-2011) is ingested once with ``rapport data load
online-retail-ii``'s loader and once as a generic ``transactions`` export with the README's mapping
(negative quantities become returns of the customer's earlier sale). Prints one table of what each
store holds, and the seconds each ingest took, for the README.

    python benchmarks/generic_export.py [--file PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This folder holds a features.py of its own: make sure `features` is the project's package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

from features.discovery import RawInput, discover  # noqa: E402
from features.ingest import ingest  # noqa: E402
from features.loaders import ONLINE_RETAIL_TIMEZONE, load_online_retail_ii  # noqa: E402
from features.settings import load_settings  # noqa: E402
from features.store import connect  # noqa: E402

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
RETAIL = ROOT.parent / "shared" / "data" / "online_retail_ii" / "online_retail_ii.csv.gz"
#: The README's mapping ("Bringing your own export").
MAPPING = {"customer_key": "Customer ID", "timestamp": "InvoiceDate", "item_id": "StockCode", "unit_price": "Price",
           "order_id": "Invoice", "name": "Description"}

FIGURES = {
    "sale lines stored": "SELECT count(*) FROM lines",
    "orders": "SELECT count(DISTINCT order_key) FROM lines",
    "gross revenue (GBP)": "SELECT round(sum(gross_amount)) FROM lines",
    "returns stored": "SELECT count(*) FROM returns",
    "refunds (GBP)": "SELECT round(sum(refund_amount)) FROM returns",
    "net revenue (GBP)": "SELECT round((SELECT sum(gross_amount) FROM lines) - (SELECT sum(refund_amount) FROM returns))",
    "return rate (units)": "SELECT round((SELECT sum(quantity) FROM returns) / (SELECT sum(quantity) FROM lines), 4)",
    "customers": "SELECT count(DISTINCT customer_id) FROM identity_map",
    "items with a name": "SELECT count(*) FROM items WHERE name IS NOT NULL",
    "rows quarantined": "SELECT count(*) FROM quarantine",
}


def measure(path: Path, generic: bool) -> tuple[dict[str, object], float, list[tuple[str, int]]]:
    with tempfile.TemporaryDirectory() as state:
        settings = load_settings(data_dir=state, timezone=ONLINE_RETAIL_TIMEZONE)
        con = connect(settings)
        started = time.perf_counter()
        if generic:
            inputs, _ = discover(path, source="transactions", mapping=MAPPING)
        else:
            tables = load_online_retail_ii(path, settings)
            inputs = [RawInput(s, s, table=tables[s]) for s in tables]
        ingest(con, inputs, settings, now=NOW)
        seconds = time.perf_counter() - started
        figures = {name: con.execute(sql).fetchall()[0][0] for name, sql in FIGURES.items()}
        reasons = con.execute("SELECT reason, count(*) FROM quarantine GROUP BY 1 ORDER BY 2 DESC").fetchall()
        con.close()
    return figures, seconds, reasons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=RETAIL)
    args = parser.parse_args()
    loader, loader_s, loader_reasons = measure(args.file, generic=False)
    generic, generic_s, generic_reasons = measure(args.file, generic=True)
    print("| Online Retail II | dedicated loader | generic export (README mapping) |")
    print("|---|---|---|")
    for name in FIGURES:
        a, b = loader[name], generic[name]
        print(f"| {name} | {a:,} | {b:,} |" if isinstance(a, int) else f"| {name} | {a} | {b} |")
    print(f"| ingest seconds | {loader_s:.1f} | {generic_s:.1f} |")
    print()
    for label, reasons in (("dedicated loader", loader_reasons), ("generic export", generic_reasons)):
        print(f"quarantined, {label}: " + "; ".join(f"{r} {n:,}" for r, n in reasons))


if __name__ == "__main__":
    main()
