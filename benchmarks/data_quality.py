"""Quality tables of the data layer, printed for the README.

1. CDNOW (Fader, Hardie & Lee 2005): the 1/10 sample through ingestion and customer features, BG/NBD
   fitted with lifetimes, against the published estimates.
2. Planted truth: synthetic data from known BG/NBD and Gamma-Gamma parameters, through ingestion and
   customer features, fitted back (several seeds).
3. UCI Online Retail II: what ingestion does with the real file (accepted, quarantined by reason,
   customers, guest lines).

    python benchmarks/data_quality.py [--persons 20000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This folder holds a features.py of its own: make sure `features` is the project's package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

from features.customer import customer_features, validate_rfm  # noqa: E402
from synthetic.generate import generate  # noqa: E402
from features.discovery import RawInput, discover  # noqa: E402
from features.ingest import ingest  # noqa: E402
from features.loaders import cdnow_paper_setup, load_cdnow, load_online_retail_ii  # noqa: E402
from features.settings import load_settings  # noqa: E402
from features.store import connect, ibis_backend  # noqa: E402

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
RETAIL = ROOT.parent / "shared" / "data" / "online_retail_ii" / "online_retail_ii.csv.gz"


def cdnow() -> None:
    from lifetimes import BetaGeoFitter

    setup = cdnow_paper_setup()
    with tempfile.TemporaryDirectory() as state:
        settings = load_settings(data_dir=state, currency="USD")
        con = connect(settings)
        tables = load_cdnow(sample=True)
        result = ingest(con, [RawInput(s, s, table=tables[s]) for s in tables], settings, now=NOW)
        cutoff = datetime.combine(setup.calibration_end + timedelta(days=1), datetime.min.time())
        rfm = validate_rfm(customer_features(ibis_backend(con), cutoff, time_unit="W"))
        con.close()
    # Our cutoff is exclusive (1997-10-01), the paper's end day inclusive: T is one day longer here.
    bg = BetaGeoFitter().fit(rfm["frequency"], rfm["recency"], (rfm["T"] * 7).round().sub(1) / 7)
    paper = setup.bgnbd.as_dict()
    print(f"## CDNOW sample through ingestion ({len(rfm):,} customers; {result.quarantined} $0 rows quarantined)")
    print("| parameter | published | fitted | difference |")
    print("|---|---|---|---|")
    for name in ("r", "alpha", "a", "b"):
        fitted = bg.params_[name]
        print(f"| {name} | {paper[name]:.3f} | {fitted:.3f} | {100 * (fitted / paper[name] - 1):+.1f} % |")
    print()


def planted(persons: int, seeds: int) -> None:
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    rows = []
    for seed in range(1, seeds + 1):
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw"
            generate(raw, persons, seed)
            truth = json.loads((raw / "_truth" / "params.json").read_text())
            settings = load_settings(data_dir=Path(tmp) / "state")
            con = connect(settings)
            inputs, _ = discover(raw)
            ingest(con, inputs, settings, now=NOW)
            end = datetime.fromisoformat(truth["observation_end"]).replace(tzinfo=None)
            rfm = validate_rfm(customer_features(ibis_backend(con), end))
            con.close()
        bg = BetaGeoFitter().fit(rfm["frequency"], rfm["recency"], rfm["T"])
        repeat = rfm[(rfm["frequency"] > 0) & (rfm["monetary_value"] > 0)]
        gg = GammaGammaFitter().fit(repeat["frequency"], repeat["monetary_value"])
        fitted = dict(bg.params_) | {"p": gg.params_["p"], "q": gg.params_["q"], "gamma": gg.params_["v"]}
        fitted["mean spend"] = fitted["p"] * fitted["gamma"] / (fitted["q"] - 1)
        rows.append((seed, truth["parameters"], fitted))
    true = rows[0][1] | {"mean spend": rows[0][1]["p"] * rows[0][1]["gamma"] / (rows[0][1]["q"] - 1)}
    names = ["r", "alpha", "a", "b", "p", "q", "gamma", "mean spend"]
    print(f"## Planted truth through ingestion and features ({persons:,} persons per seed)")
    print("| parameter | truth | " + " | ".join(f"seed {s}" for s, _, _ in rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    for name in names:
        print(f"| {name} | {true[name]:g} | " + " | ".join(f"{f[name]:.3f}" for _, _, f in rows) + " |")
    print()


def online_retail() -> None:
    if not RETAIL.exists():
        print(f"(Online Retail II not found at {RETAIL})")
        return
    with tempfile.TemporaryDirectory() as state:
        settings = load_settings(data_dir=state)
        con = connect(settings)
        tables = load_online_retail_ii(RETAIL, settings)
        result = ingest(con, [RawInput(s, s, table=tables[s]) for s in tables], settings, now=NOW)
        guest = con.execute("SELECT count(*) FROM lines WHERE record_key IS NULL").fetchall()[0][0]
        con.close()
    print("## UCI Online Retail II through ingestion")
    print("| file | rows | accepted | quarantined |")
    print("|---|---|---|---|")
    for f in result.files:
        print(f"| {f.source} | {f.rows:,} | {f.accepted:,} | {f.quarantined:,} |")
    print()
    print("| quarantine reason | rows |")
    print("|---|---|")
    for label, reason, n in result.quarantine_counts:
        print(f"| {label}: {reason} | {n:,} |")
    print()
    print(f"customers: {result.identity.customers:,}; anonymous (guest) sale lines kept: {guest:,}")
    for note in tables.notes:
        print(f"- {note}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    cdnow()
    planted(args.persons, args.seeds)
    online_retail()


if __name__ == "__main__":
    main()
