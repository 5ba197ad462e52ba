"""The ``rapport`` command. It wires the layers together and prints what they return; it holds no
logic of its own (every computation lives in ``features``, ``training`` or ``serving``). The commands
are registered by group, in the order ``rapport --help`` lists them: :mod:`rapport.data_commands`,
:mod:`rapport.train_commands`, :mod:`rapport.model_commands`, :mod:`rapport.serve_commands`; the
shared parts are in :mod:`rapport.app`."""

from __future__ import annotations

from typing import Annotated

import typer

from features.masking import mask_secrets

# The command modules register their commands when imported, in the order `rapport --help` lists them.
# isort: off
from rapport import data_commands, train_commands, model_commands, serve_commands  # noqa: F401
# isort: on
from rapport.app import (
    _guard,
    _styled,
    app,
    console,
    settings,
)
from rapport.data_commands import _generate, _ingest_and_print, _print_generation, data_report
from rapport.model_commands import _missing_champion, _print_examples, score
from rapport.train_commands import train

# --- config ---------------------------------------------------------------------------------------


@app.command("config")
def show_config() -> None:
    """Show the effective settings (secrets masked)."""
    for name, value in settings().leaves():
        console.print(f"{name} = {mask_secrets(value)}", highlight=False, markup=False)


# --- demo -----------------------------------------------------------------------------------------


@app.command("demo")
def demo(
    customers: Annotated[int, typer.Option(min=10, help="Number of persons to simulate.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
) -> None:
    """The main job on the embedded default data: generate synthetic omnichannel files, ingest them
    (quarantine report included), print the KPI report, train and promote the CLV, churn and
    recommender models, write the CRM scores and show a few customers."""
    from features.discovery import discover

    s = settings()
    raw = s.data_dir / "demo" / "raw"
    console.rule("1. synthetic omnichannel data")
    summary = _generate(customers, seed, raw, "parquet", "2023-01-01", "2025-12-31", True)
    _print_generation(summary)
    console.rule("2. ingest, quarantine and identity resolution")
    inputs, ignored = _guard(lambda: discover(raw))
    _ingest_and_print(inputs, ignored)
    console.rule("3. engagement KPIs")
    data_report(start=None, end=None, output=None)
    console.rule("4. training: CLV, churn and recommender, evaluated against baselines, logged to MLflow, promoted")
    train(only=None, cutoff=None, raw=None)
    console.rule("5. CRM scores of every customer with the champion models")
    missing = _missing_champion(s)
    if missing is None:
        scores_path = s.data_dir / "scores.parquet"
        score(output=scores_path, chunk=200_000)
        console.rule("6. a few customers")
        _print_examples(scores_path)
    else:
        # Scores and examples use champions only: a model that lost to its baseline is not shown.
        console.print(_styled("no scores and no examples:", "yellow", missing), highlight=False)
    console.rule("done")
    console.print(f"everything is under {s.data_dir.resolve()}: raw files {raw}, store {s.database_path}, "
                  f"quarantine {s.quarantine_dir}, reports and plots {s.reports_dir}, MLflow {s.mlflow_dir} "
                  f"(browse it with: mlflow ui --backend-store-uri sqlite:///{s.mlflow_db_path})")
