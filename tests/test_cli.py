"""The ``rapport`` command as a user runs it: exit codes, messages and what it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from rapport.cli import app
from tests.conftest import ORDER_HEADER, write_csv

pytestmark = pytest.mark.data

#: The installed command, as a user runs it.
RAPPORT = str(Path(sys.executable).with_name("rapport"))


@pytest.fixture
def run(settings, monkeypatch):
    monkeypatch.setenv("RAPPORT_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


def test_generate_ingest_report_features(run, settings, tmp_path):
    raw = tmp_path / "raw"
    out = run("data", "generate", "--customers", "300", "--seed", "3", "--output", str(raw))
    assert out.exit_code == 0, out.output
    assert (raw / "orders.parquet").exists() and (raw / "_truth" / "params.json").exists()

    out = run("data", "ingest", str(raw))
    assert out.exit_code == 0, out.output
    assert "Quarantined rows by reason" in out.output and "unparseable timestamp" in out.output
    assert "customers" in out.output

    again = run("data", "ingest", str(raw))
    assert again.exit_code == 0 and "same content as" in again.output and "skipped" in again.output

    out = run("data", "report")
    assert out.exit_code == 0, out.output
    report = json.loads((settings.reports_dir / "kpi_report.json").read_text())
    assert set(report["kpis"]["by_channel"]) <= {"web", "app", "store", "marketplace"}
    assert report["kpis"]["overall"]["orders"] > 0 and report["identity"]["customers"] > 0
    assert sum(report["quarantine"].values()) > 0

    target = tmp_path / "features.csv"
    out = run("data", "features", "--as-of", "2025-06-30", "--output", str(target))
    assert out.exit_code == 0, out.output
    assert target.read_text().startswith("customer_id,frequency,recency,T,")
    # The extension decides the format whatever its case; the file is the same table.
    upper = tmp_path / "FEATURES.PARQUET"
    assert run("data", "features", "--as-of", "2025-06-30", "--output", str(upper)).exit_code == 0
    assert pd.read_parquet(upper).index.name == "customer_id"
    assert len(pd.read_parquet(upper)) == len(pd.read_csv(target))


def test_a_bad_file_exits_non_zero_with_a_message_naming_it(run, tmp_path):
    header = [c for c in ORDER_HEADER if c != "timestamp"]
    path = write_csv(tmp_path / "raw", "orders.csv", header, [["1", "1", "A", "", "", "I1", 1, 2.0, "", "", "web", ""]])
    out = run("data", "ingest", str(path))
    assert out.exit_code == 1
    assert "orders.csv" in out.output and "timestamp" in out.output


def test_generic_export_with_map_options(run, tmp_path):
    path = write_csv(tmp_path / "raw", "export.csv", ["Customer ID", "InvoiceDate", "StockCode", "Quantity", "Price"],
                     [["c1", "2024-01-01 10:00", "I1", 2, 3.5], ["c2", "2024-01-02 10:00", "I2", 1, 1.0]])
    out = run("data", "ingest", str(path), "--source", "transactions", "--map", "customer_key=Customer ID",
              "--map", "timestamp=InvoiceDate", "--map", "item_id=StockCode", "--map", "unit_price=Price")
    assert out.exit_code == 0, out.output
    assert "2 customers" in out.output


def test_a_report_window_that_ends_before_it_starts_is_an_option_error(run):
    out = run("data", "report", "--start", "2024-03-01", "--end", "2024-01-01")
    assert out.exit_code == 2 and "Traceback" not in out.output
    text = " ".join(out.output.replace("│", " ").split())  # typer frames the error in a box
    assert "--end" in text and "expected a day after --start (2024-03-01), got 2024-01-01" in text


def test_report_without_data_explains_what_to_do(run):
    out = run("data", "report")
    assert out.exit_code == 1 and "ingest data first" in out.output


def test_contract_lists_every_source(run):
    out = run("data", "contract")
    assert out.exit_code == 0
    for source in ("orders", "store_receipts", "returns", "catalogue", "browse_events", "customer_keys", "transactions"):
        assert source in out.output


@pytest.mark.slow
def test_demo_runs_end_to_end(run, settings):
    out = run("demo", "--customers", "400", "--seed", "2")
    assert out.exit_code == 0, out.output
    assert "Engagement KPIs" in out.output and "quarantine" in out.output.lower()
    assert (settings.reports_dir / "kpi_report.json").exists()


def test_loading_a_dataset_in_another_currency_says_which_setting_to_change(run, settings):
    out = run("data", "load", "cdnow")
    assert out.exit_code == 1
    assert "USD" in out.output and "RAPPORT_CURRENCY" in out.output
    assert not settings.database_path.exists()  # stopped before writing anything


def test_column_names_and_mappings_with_brackets_print_as_they_are(run, tmp_path):
    # Rich markup would swallow "[eur]" and raise on "[/]" (after the data was committed).
    header = ORDER_HEADER + ["notes [/]", "price [eur]"]
    row = ["1", "1", "2024-01-05T10:00:00", "A1", "", "", "I1", 2, 10.0, 0, "GBP", "web", "UK", "x", "10"]
    out = run("data", "ingest", str(write_csv(tmp_path / "raw", "orders.csv", header, [row])))
    assert out.exit_code == 0, out.output
    assert "notes [/]" in out.output and "price [eur]" in out.output
    path = write_csv(tmp_path / "raw2", "export.csv", ["Customer ID", "InvoiceDate", "StockCode", "Quantity", "Price [/]"],
                     [["c1", "2024-01-01 10:00", "I1", 2, 3.5]])
    out = run("data", "ingest", str(path), "--source", "transactions", "--map", "customer_key=Customer ID",
              "--map", "timestamp=InvoiceDate", "--map", "item_id=StockCode", "--map", "unit_price=Price [/]")
    assert out.exit_code == 0, out.output
    other = write_csv(tmp_path / "raw3", "export.csv", ["Price [/]"], [[1.0]])
    missing = run("data", "ingest", str(other), "--source", "transactions", "--map", "unit_price=[bold]Price [/]")
    assert missing.exit_code == 1 and "[bold]Price [/]" in missing.output


def test_a_bad_setting_is_one_line_naming_the_variable(run, monkeypatch):
    monkeypatch.setenv("RAPPORT_CHURN_HORIZON", "30")
    out = run("config")
    assert out.exit_code == 1
    assert out.output.strip() == "error: RAPPORT_CHURN_HORIZON: not a setting; did you mean RAPPORT_CHURN__HORIZON_DAYS?"


def test_config_masks_the_credentials_of_uris(run, monkeypatch):
    monkeypatch.setenv("RAPPORT_MLFLOW_TRACKING_URI", "https://ana:pa55w0rd@mlflow.example:5000")
    monkeypatch.setenv("RAPPORT_IDENTITY_SALT", "salt-s3cret")
    out = run("config")
    assert out.exit_code == 0, out.output
    assert "mlflow_tracking_uri = https://ana:***@mlflow.example:5000" in out.output
    assert "pa55w0rd" not in out.output and "salt-s3cret" not in out.output


def test_tables_keep_their_width_when_the_output_is_not_a_terminal(settings, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS" and not k.startswith("RAPPORT_")}
    out = subprocess.run([RAPPORT, "data", "contract", "orders"], capture_output=True,
                         text=True, env={**env, "RAPPORT_DATA_DIR": str(settings.data_dir)}, timeout=60, check=True)
    lines = out.stdout.splitlines()
    header = next(line for line in lines if "column" in line and "meaning" in line)
    assert "…" not in out.stdout and max(len(line) for line in lines) > 80
    assert "required" in header  # no header cut


#: Libraries that take seconds to import; the light commands and every early error must not.
HEAVY = ("mlflow", "lightgbm", "bentoml", "lifetimes", "implicit")
#: What `data report` runs without: its KPI query is compiled ahead of time (features/kpi_queries.py)
#: and the identity and quarantine summaries are SQL.
REPORT_NEVER = ("ibis", "sqlglot", "pandas", "pyarrow", "numpy", "scipy")


def _imported(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the command with ``python -X importtime`` and return the top-level packages it imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", RAPPORT, *args], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    names = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines()
             if line.startswith("import time:")}
    return done, names


@pytest.mark.slow
def test_light_commands_and_early_errors_never_import_the_model_libraries(run, settings, tmp_path):
    path = write_csv(tmp_path / "raw", "export.csv", ["customer_key", "timestamp", "item_id", "quantity", "unit_price"],
                     [["c1", "2024-01-01 10:00", "I1", 2, 3.5], ["c2", "2024-02-01 10:00", "I2", 1, 1.0]])
    assert run("data", "ingest", str(path), "--source", "transactions").exit_code == 0
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAPPORT_")}
    store = {**base, "RAPPORT_DATA_DIR": str(settings.data_dir)}
    missing = {**base, "RAPPORT_DATA_DIR": str(tmp_path / "nothing")}
    cases = [
        (("--help",), store, 0, "Customer intelligence"),
        (("config",), store, 0, "data_dir ="),
        (("data", "report"), store, 0, "report written to"),
        (("data", "report"), missing, 1, "ingest data first"),
        (("train",), missing, 1, "ingest data first"),
        (("train", "--cutoff", "2030-01-01"), store, 1, "after the last sale (2024-02-01)"),
        (("config",), {**store, "RAPPORT_CHURN_HORIZON": "30"}, 1, "did you mean RAPPORT_CHURN__HORIZON_DAYS"),
        (("score", "--output", str(tmp_path / "s.parquet")), missing, 1, "ingest data first"),
        (("score", "--output", str(tmp_path / "s.parquet")), store, 1, "train first with rapport train"),
        (("recommend", "--output", str(tmp_path / "r.parquet")), store, 1, "train first with rapport train"),
    ]
    for args, env, code, fragment in cases:
        done, names = _imported(*args, env=env)
        assert done.returncode == code and fragment in done.stdout + done.stderr, (args, done.stdout, done.stderr[-2000:])
        assert names and not names & set(HEAVY), (args, sorted(names & set(HEAVY)))
        if args == ("data", "report"):
            assert not names & set(REPORT_NEVER), (args, sorted(names & set(REPORT_NEVER)))
    # The check itself sees an import: the command that needs MLflow does load it.
    _, names = _imported("models", "list", env=store)
    assert "mlflow" in names
