"""``rapport train``: every step under one parent run, then promotion, and the tables it prints."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from features.errors import RapportError
from features.settings import Settings
from rapport.app import (
    _PATH_ERRORS,
    BUG_EXIT_CODE,
    _date,
    _error,
    _guard,
    _progress,
    _styled,
    _traceback,
    _user_error,
    app,
    console,
    settings,
)
from rapport.data_commands import _ingest_and_print
from training.models import CHURN, CLV, RECOMMEND, STEPS

# --- train ----------------------------------------------------------------------------------------

#: Training steps, in pipeline order (churn uses CLV features).
TRAIN_STEPS = STEPS


@app.command("train")
def train(
    only: Annotated[list[str] | None, typer.Option("--only", help=f"Run only these steps ({', '.join(TRAIN_STEPS)}).")] = None,
    cutoff: Annotated[str | None, typer.Option(help="Train on the history before this day (a backtest: "
                                                    "registered, never promoted). Default: all of it.")] = None,
    raw: Annotated[Path | None, typer.Option(help="Ingest the new raw files of this folder first "
                                                  "(files already ingested are skipped).")] = None,
) -> None:
    """Ingest new files, then fit, evaluate against the baselines, log to MLflow (one parent run, one
    nested run per model), register and promote the models; prints each model's table and a summary.
    SIGTERM or Ctrl+C marks the MLflow runs FAILED and exits with 128 + the signal's number."""
    from features.store import connect
    from training.cutoff import check_cutoff

    steps = only or list(TRAIN_STEPS)
    unknown = [step for step in steps if step not in TRAIN_STEPS]
    if unknown:
        raise typer.BadParameter(f"unknown step {', '.join(unknown)}; available: {', '.join(TRAIN_STEPS)}",
                                 param_hint="--only")
    s = settings()
    when = _date(cutoff, "--cutoff")
    if raw is not None:
        from features.discovery import discover

        inputs, ignored = _guard(lambda: discover(raw))
        _ingest_and_print(inputs, ignored)
    con = _guard(lambda: connect(s, read_only=True))
    try:
        if when is not None:
            # Refused in a second, before MLflow and the model libraries are even imported.
            _guard(lambda: check_cutoff(con, s, when, steps))
        result = _train(con, s, steps, when)
    finally:
        con.close()
    _print_summary(result)


def _train(con, s: Settings, steps: list[str], when: datetime | None):  # noqa: ANN001, ANN202
    from training.pipeline import PipelineError, TrainingInterrupted, run_pipeline

    printers = {CLV.key: _print_clv, CHURN.key: _print_churn, RECOMMEND.key: _print_recommend}
    with _progress() as progress:
        tasks = {step: progress.add_task(f"{step}: waiting", total=None) for step in TRAIN_STEPS if step in steps}

        def report(step: str, text: str) -> None:
            progress.update(tasks[step], description=f"{step}: {text}")

        def done(outcome) -> None:  # noqa: ANN001
            if outcome.skipped is not None:
                progress.update(tasks[outcome.step], description=f"{outcome.step}: skipped", total=1, completed=1)
                progress.console.print(_styled(outcome.skipped, "bold yellow"), highlight=False)
                return
            progress.update(tasks[outcome.step], description=f"{outcome.step}: done in {outcome.seconds:.0f} s",
                            total=1, completed=1)
            progress.console.print(_styled(outcome.step, "bold", f"finished in {outcome.seconds:.1f} s"))
            _print_windows(outcome.result.windows)
            printers[outcome.step](outcome.result, s)

        try:
            result = run_pipeline(con, s, steps=steps, cutoff=when, progress=report, on_step_done=done)
        except PipelineError as exc:
            if isinstance(exc.cause, (RapportError, *_PATH_ERRORS)):
                _user_error(exc)
            # A step failed on something no check expected: a bug, shown with the traceback of its cause.
            _traceback(exc.cause)
            _error(exc)
            raise typer.Exit(BUG_EXIT_CODE) from exc
        except TrainingInterrupted as exc:
            _error(exc)
            raise typer.Exit(128 + exc.signum) from exc
    return result


def _print_plots(plots: Iterable[Path | str]) -> None:
    folders = sorted({str(Path(p).parent) for p in plots})
    if folders:
        console.print(f"plots of this run: {', '.join(folders)}")


def _print_windows(windows) -> None:  # noqa: ANN001
    console.print(f"windows of {windows.step} from the {windows.stats.describe()}:", highlight=False)
    for line in windows.lines():
        console.print(f"  {line}", highlight=False)


def _print_summary(result) -> None:  # noqa: ANN001
    summary = result.summary()
    table = Table(title="Training summary", title_justify="left")
    for col in summary.columns:
        table.add_column(col, overflow="fold")
    for _, row in summary.iterrows():
        table.add_row(*(str(v) for v in row))
    console.print(table)
    if not result.promoted:
        console.print("backtest: versions registered, none promoted")
    from training.plotting import champion_plot_dir

    for outcome in result.steps:
        if outcome.promotion is not None and outcome.promotion.promoted:
            console.print(f"{outcome.model_name} champion plots: {champion_plot_dir(settings().reports_dir, outcome.step)}")
    console.print(f"MLflow parent run {result.run_id}")


def _print_recommend(result, s: Settings) -> None:  # noqa: ANN001
    from training.recommend.evaluation import summary_columns

    split = result.split
    table = Table(title=f"Recommenders on the test period {split.valid_end.date()} .. {split.test_end.date()} "
                        f"({result.n_test_customers:,} customers known before it; ranker learned on "
                        f"{split.train_end.date()} .. {split.valid_end.date()})")
    table.add_column("model")
    columns = [c for c in summary_columns() if c != "n_customers"]
    for col in columns:
        table.add_column(col, justify="right")
    for name, row in result.table.iterrows():
        table.add_row(str(name), *("—" if v != v else f"{v:.3f}" for v in (row[c] for c in columns)))
    console.print(table)
    console.print("the _new columns: lists with the customer's purchases excluded (the default filter), "
                  "judged on the items new to the customer")
    console.print(Text.assemble("ranked blend: ", _verdict(result.gate.eligible), ": " + "; ".join(result.gate.reasons)))
    console.print(f"registered {result.model_name} version {result.model_version} (MLflow run "
                  f"{result.run_id}, fitted on the history up to {split.test_end.date()}, catalogue "
                  f"{result.catalogue_version})")
    _print_plots(result.plots)


def _print_churn(result, s: Settings) -> None:  # noqa: ANN001
    table = Table(title=f"Churn (H = {result.horizon_days} days) on the held-out cutoff {result.test_cutoff.date()}")
    table.add_column("model")
    for col in result.table.columns:
        table.add_column(str(col), justify="right")
    for name, row in result.table.iterrows():
        table.add_row(str(name), *(f"{v:.3f}" if isinstance(v, float) and v == v else str(v) for v in row))
    console.print(table)
    console.print(f"trained on cutoffs {', '.join(str(c.date()) for c in result.train_cutoffs)}; "
                  f"validation (early stopping, calibration) {result.valid_cutoff.date()}")
    console.print(Text.assemble(f"{result.metrics.name}: ", _verdict(result.gate.eligible), ": " + "; ".join(result.gate.reasons)))
    for note in result.notes:
        console.print(_styled("note", "yellow", note))
    console.print(f"registered {result.model_name} version {result.model_version} (MLflow run {result.run_id})")
    _print_plots(result.plots)


def _verdict(eligible: bool) -> Text:
    return Text("eligible for promotion", "green") if eligible else Text("not eligible for promotion", "red")


def _print_clv(result, s: Settings) -> None:  # noqa: ANN001
    from training.clv.pipeline import BLEND, VALIDATION_MAE

    validation = result.rate_validation
    split = (f"validation {validation.validation_start.date()} .. {result.calibration_end.date()}, "
             if validation is not None else "")
    table = Table(title=f"CLV candidates ({split}holdout {result.calibration_end.date()} .. {result.cutoff.date()}, "
                        f"time unit {s.time_unit})")
    frame = result.candidates
    formats = {VALIDATION_MAE: ("validation MAE", "{:.4f}"), "actual": ("actual", "{:,.0f}"),
               "predicted": ("predicted", "{:,.0f}"), "aggregate_error_pct": ("total error", "{:.1f} %"),
               "mae": ("holdout MAE", "{:.4f}"), "correlation": ("corr.", "{:.3f}"),
               "spend_mae": (f"spend MAE ({s.currency})", "{:,.2f}")}
    table.add_column("model")
    for col in frame.columns:
        table.add_column(formats.get(col, (str(col), ""))[0], justify="right")
    choice = result.choice
    for name, row in frame.iterrows():
        label = str(name) + (" without drop-out (NBD)" if name in result.without_dropout else "")
        if name == BLEND and validation is not None:
            label += f" ({validation.blend_kind}, rate weight {validation.blend_weight:g})"
        if choice is not None and name == choice.chosen and name != result.kind:
            label += " (chosen, fails the gate)"
        elif name == result.kind:
            label += " (chosen, served)" if choice is None or name == choice.chosen else " (served)"
        cells = ["—" if v != v else formats[c][1].format(v) if c in formats else str(v) for c, v in row.items()]
        table.add_row(label, *cells)
    console.print(table)
    if choice is not None:
        for note in choice.notes:
            console.print(_styled("choice:", "bold", note), highlight=False)
    for kind, message in result.failed_candidates:
        console.print(_styled(f"candidate {kind} left out:", "yellow", message))
    console.print(Text.assemble(f"{result.kind}: ", _verdict(result.gate.eligible),
                                "" if result.gate.eligible else ": " + "; ".join(result.gate.reasons)))
    console.print(f"served: {result.model.label_}")
    console.print(f"registered {result.model_name} version {result.model_version} "
                  f"(MLflow run {result.run_id}, cutoff {result.cutoff.date()})")
    _print_plots(result.plots)
