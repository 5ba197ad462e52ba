"""Wall time of the light commands and of the early errors, against the interpreter's own start.

Each command runs ``--repeat`` times in a fresh process (as a user runs it); the script prints the
median and the ratio to ``python -c pass``. A tiny store (two sales) is ingested into a temporary
folder first, for ``data report`` and the refused ``train --cutoff``. ``models list`` is shown for
reference: it needs MLflow, the commands above must not.

    python benchmarks/cli_startup.py --repeat 5
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAPPORT = str(Path(sys.executable).with_name("rapport"))


def _timed(command: list[str], env: dict[str, str], repeat: int) -> tuple[float, int]:
    seconds, code = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, timeout=300, check=False)
        seconds.append(time.perf_counter() - started)
        code = done.returncode
    return statistics.median(seconds), code


def _tiny_store(folder: Path, env: dict[str, str]) -> None:
    raw = folder / "raw"
    raw.mkdir()
    with (raw / "transactions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["customer_key", "timestamp", "item_id", "quantity", "unit_price"])
        writer.writerows([["c1", "2024-01-01 10:00", "I1", 2, 3.5], ["c2", "2024-02-01 10:00", "I2", 1, 1.0]])
    subprocess.run([RAPPORT, "data", "ingest", str(raw / "transactions.csv"), "--source", "transactions"],
                   env=env, capture_output=True, timeout=300, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command (median reported)")
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAPPORT_")}
    with tempfile.TemporaryDirectory(prefix="rapport-startup-") as tmp:
        store, missing = {**base, "RAPPORT_DATA_DIR": f"{tmp}/state"}, {**base, "RAPPORT_DATA_DIR": f"{tmp}/none"}
        _tiny_store(Path(tmp), store)
        cases = [
            ("python -c pass", [sys.executable, "-c", "pass"], base),
            ("import rapport.cli", [sys.executable, "-c", "import rapport.cli"], base),
            ("rapport --help", [RAPPORT, "--help"], base),
            ("rapport config", [RAPPORT, "config"], store),
            ("rapport data report (2 sales)", [RAPPORT, "data", "report"], store),
            ("error: data report, no store", [RAPPORT, "data", "report"], missing),
            ("error: train, no store", [RAPPORT, "train"], missing),
            ("error: train --cutoff 2030-01-01", [RAPPORT, "train", "--cutoff", "2030-01-01"], store),
            ("error: unknown RAPPORT_ variable", [RAPPORT, "config"], {**store, "RAPPORT_CHURN_HORIZON": "30"}),
            ("reference: rapport models list", [RAPPORT, "models", "list"], store),
        ]
        floor = None
        print(f"{'command':<36} {'median s':>9} {'x python':>9} {'exit':>5}")
        for label, command, env in cases:
            seconds, code = _timed(command, env, args.repeat)
            floor = floor or seconds
            print(f"{label:<36} {seconds:>9.2f} {seconds / floor:>9.1f} {code:>5}")


if __name__ == "__main__":
    main()
