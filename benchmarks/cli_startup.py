"""Wall time of the light commands and of the early errors, against the interpreter's own start.

Each command runs ``--repeat`` times in a fresh process (as a user runs it); the script prints the
median wall time, the median CPU time of the process (user + system: far less sensitive than wall
time to other work on a shared machine) and the wall time's ratio to ``python -c pass``. A tiny store (two sales) is ingested into a temporary
folder first, for ``data report`` and the refused ``train --cutoff``. ``models list`` is shown for
reference: it needs MLflow, the commands above must not.

    python benchmarks/cli_startup.py --repeat 5
    python benchmarks/cli_startup.py --repeat 5 --store data   # also data report on a real store
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAPPORT = str(Path(sys.executable).with_name("rapport"))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str], env: dict[str, str], repeat: int) -> tuple[float, float, int]:
    wall, cpu, code = [], [], 0
    for _ in range(repeat):
        started, cpu_before = time.perf_counter(), _cpu()
        done = subprocess.run(command, env=env, capture_output=True, timeout=300, check=False)
        wall.append(time.perf_counter() - started)
        cpu.append(_cpu() - cpu_before)
        code = done.returncode
    return statistics.median(wall), statistics.median(cpu), code


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
    parser.add_argument("--store", type=Path, default=None,
                        help="a DATA_DIR with an ingested store: data report is timed on it too (read only)")
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
        if args.store is not None:
            # The JSON goes to the temporary folder: the store's own reports stay as they are.
            cases.insert(5, (f"rapport data report ({args.store.name})",
                             [RAPPORT, "data", "report", "--output", f"{tmp}/report.json"],
                             {**base, "RAPPORT_DATA_DIR": str(args.store.resolve())}))
        floor = None
        print(f"{'command':<36} {'wall s':>7} {'cpu s':>7} {'x python':>9} {'exit':>5}")
        for label, command, env in cases:
            wall, cpu, code = _timed(command, env, args.repeat)
            floor = floor or wall
            print(f"{label:<36} {wall:>7.2f} {cpu:>7.2f} {wall / floor:>9.1f} {code:>5}")


if __name__ == "__main__":
    main()
