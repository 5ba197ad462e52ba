"""The ``rapport`` command. It wires the layers together and prints what they return; it holds no
logic of its own (every computation lives in ``features``, ``training`` or ``serving``)."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup
from typer.exceptions import TyperException

from features.errors import ArgumentError, RapportError
from features.masking import MaskingFormatter, mask_secrets
from features.settings import Settings, load_settings
from training.models import CHURN, CLV, RECOMMEND, REGISTERED_NAMES, STEPS, names_text

if TYPE_CHECKING:
    import pandas as pd

#: Width of the output when it is not a terminal (a CI log, a file, a pipe) and COLUMNS is unset:
#: rich would squeeze tables into 80 columns and cut their headers ("recall…").
NON_TERMINAL_WIDTH = 200


class _Console(Console):
    """A console that never interprets rich markup (a column named ``price [eur]`` or ``notes [/]``
    prints as it is) and masks the credentials of every message it prints (URIs with a password)."""

    def print(self, *objects, **kwargs) -> None:  # noqa: ANN002, ANN003 - rich's signature
        super().print(*(mask_secrets(o) if isinstance(o, str) else o for o in objects), **kwargs)


def _console(*, stderr: bool) -> _Console:
    stream = sys.stderr if stderr else sys.stdout
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    wide = not terminal and not os.environ.get("COLUMNS", "").isdigit()
    # Not on a terminal, lines are not wrapped either: a message stays one line for grep.
    return _Console(stderr=stderr, markup=False, width=NON_TERMINAL_WIDTH if wide else None, soft_wrap=not terminal)


console = _console(stderr=False)
err = _console(stderr=True)


def _styled(label: str, style: str, message: object = "") -> Text:
    """``label`` in ``style``, then ``message`` as plain text (never parsed as markup), masked."""
    text = mask_secrets(message)
    return Text.assemble((label, style), " " + text if text else "")


def _error(message: object) -> None:
    err.print(_styled("error:", "bold red", message), highlight=False)


def _traceback(exc: BaseException) -> None:
    # Plain text through the masking console: a URI's password never reaches the terminal or a CI log.
    err.print("".join(traceback.format_exception(exc)).rstrip(), highlight=False)


#: Exit code of an unexpected error (a bug): its traceback is shown. A user's error exits with 1.
BUG_EXIT_CODE = 2

#: Errors of a path the user gave (missing, already there, a folder where a file is expected, not
#: writable): the message names the file. Other ``OSError``s (a full disk, a dropped connection) keep
#: their traceback.
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


class _Commands(TyperGroup):
    """The command group: a user's error that no ``_guard`` caught is one line (exit code 1); an
    exception no command expected is shown with its traceback and exits with :data:`BUG_EXIT_CODE`
    (Python's own code for an uncaught exception, 1, would pass it off as the user's error)."""

    def invoke(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # exit codes and usage errors, typer's own
            raise
        except (RapportError, *_PATH_ERRORS) as exc:
            _user_error(exc)
        except Exception as exc:
            _traceback(exc)
            _error(f"unexpected {type(exc).__name__} (a bug; the traceback is above): {exc}")
            raise typer.Exit(BUG_EXIT_CODE) from exc


app = typer.Typer(cls=_Commands, help="Customer intelligence for omnichannel retailers.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Generate, ingest, inspect and report on the unified customer history.",
                       no_args_is_help=True)
models_app = typer.Typer(help="Registered model versions: list them, promote one by hand.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")


class _State:
    settings: Settings | None = None
    verbose: bool = False


_state = _State()


@app.callback()
def main(
    config: Annotated[Path | None, typer.Option("--config", help="TOML settings file (else $RAPPORT_CONFIG or ./rapport.toml).")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="State folder (else $RAPPORT_DATA_DIR or ./data).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details; show the traceback of an "
                                                                     "error too.")] = False,
) -> None:
    _state.verbose = verbose
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    if config is not None:
        os.environ["RAPPORT_CONFIG"] = str(config)
    overrides = {"data_dir": data_dir} if data_dir is not None else {}
    _state.settings = _guard(lambda: load_settings(**overrides))


def settings() -> Settings:
    if _state.settings is None:
        _state.settings = _guard(load_settings)
    return _state.settings


def _user_error(exc: BaseException) -> NoReturn:
    """One red line and exit code 1; the traceback first under ``--verbose``."""
    if _state.verbose:
        _traceback(exc)
    _error(exc)
    raise typer.Exit(1) from exc


def _guard(fn):  # noqa: ANN001, ANN202 - tiny wrapper
    """Run ``fn``; the user's errors (a :class:`RapportError`, a path that cannot be read or written)
    become one red line and exit code 1. Anything else is a bug: :class:`_Commands` shows its traceback."""
    try:
        return fn()
    except (RapportError, *_PATH_ERRORS) as exc:
        _user_error(exc)


@contextmanager
def _progress() -> Iterator[Progress]:
    # Descriptions hold file names and step texts: never markup.
    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        yield progress


def _date(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"expected a date like 2024-06-30, got {value!r}", param_hint=option) from exc


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


# --- data generate --------------------------------------------------------------------------------


@data_app.command("generate")
def data_generate(
    customers: Annotated[int, typer.Option(min=10, help="Number of persons to simulate.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 42,
    output: Annotated[Path, typer.Option(help="Folder to write the raw channel files into.")] = Path("data/raw"),
    file_format: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
    shape: Annotated[str, typer.Option(help="Kind of history: default, grocery, fashion or one-year.")] = "default",
    start: Annotated[str | None, typer.Option(help="First day of the simulated history (default: the shape's).")] = None,
    end: Annotated[str | None, typer.Option(help="Last day of the simulated history (default: the shape's).")] = None,
    bad_rows: Annotated[bool, typer.Option(help="Plant a counted sprinkling of bad rows.")] = True,
) -> None:
    """Write synthetic raw files for every source, from a generative model with known parameters
    (written to OUTPUT/_truth/params.json)."""
    summary = _generate(customers, seed, output, file_format, start, end, bad_rows, shape=shape)
    _print_generation(summary)


def _generate(customers: int, seed: int, output: Path, file_format: str, start: str | None, end: str | None,  # noqa: ANN202
              bad_rows: bool, *, shape: str = "default"):
    from synthetic.generate import SHAPES, generate

    if file_format not in ("parquet", "csv"):
        raise typer.BadParameter("expected parquet or csv", param_hint="--format")
    if shape not in SHAPES:
        raise typer.BadParameter(f"expected one of {', '.join(SHAPES)}", param_hint="--shape")
    start_d = None if start is None else _date(start, "--start").date()
    end_d = None if end is None else _date(end, "--end").date()
    with _progress() as progress:
        task = progress.add_task("generating", total=1.0)

        def report(stage: str, fraction: float) -> None:
            progress.update(task, description=f"generating: {stage}", completed=fraction)

        return _guard(lambda: generate(output, customers, seed, shape=shape, start=start_d, end=end_d,
                                       file_format=file_format, bad_rows=bad_rows, progress=report))


def _print_generation(summary) -> None:  # noqa: ANN001
    table = Table(title="Synthetic data written", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, value in summary.counts().items():
        table.add_row(name, f"{value:,}")
    console.print(table)
    console.print(f"files in {summary.output_dir} (true parameters in {summary.output_dir / '_truth'}), "
                  f"{summary.seconds:.1f} s")


# --- data ingest ----------------------------------------------------------------------------------


@data_app.command("ingest")
def data_ingest(
    path: Annotated[Path, typer.Argument(help="A source file, or a folder of source files / per-source folders.")],
    source: Annotated[str | None, typer.Option(help="Source of every file given (else from the file names).")] = None,
    map_: Annotated[list[str] | None, typer.Option("--map", help="CONTRACT_COLUMN=FILE_COLUMN, repeatable.")] = None,
    mapping: Annotated[Path | None, typer.Option(help="TOML mapping file: source = ..., [columns] contract = \"file column\".")] = None,
    encoding: Annotated[str | None, typer.Option(help="Text encoding of CSV files (utf-8, utf-16, latin-1, windows-1252...); default: detected.")] = None,
    delimiter: Annotated[str | None, typer.Option(help="Field delimiter of CSV files: , ; | or tab; default: detected from the header.")] = None,
    decimal: Annotated[str | None, typer.Option(help="Decimal mark of numbers in CSV files: . or , (default: detected).")] = None,
    date_format: Annotated[str | None, typer.Option(help="Format of text timestamps, e.g. dd/mm/yyyy or '%d/%m/%Y %H:%M' (default: ISO 8601; dd/mm/yyyy and mm/dd/yyyy detected when a day tells).")] = None,
    accept_quarantine: Annotated[bool, typer.Option(help="Store a file even when one column and reason quarantine more than max_quarantine_share of its rows.")] = False,
    append_distant_history: Annotated[bool, typer.Option(help="Store sales distant_history_days or more away from the store's history.")] = False,
) -> None:
    """Validate and store raw files; bad rows go to the quarantine, counted per reason."""
    from features.discovery import discover, load_mapping_file, parse_map_options
    from features.rawformat import CsvOptions

    def run():  # noqa: ANN202
        columns: dict[str, str] = {}
        kind = source
        formats: dict[str, str] = {}
        if mapping is not None:
            loaded = load_mapping_file(mapping)
            kind, columns, formats = kind or loaded.source, loaded.columns, loaded.formats
        columns.update(parse_map_options(map_ or []))
        declared = {"encoding": encoding, "delimiter": delimiter, "decimal": decimal, "date_format": date_format}
        options = CsvOptions(**{**formats, **{k: v for k, v in declared.items() if v is not None}})
        inputs, ignored = discover(path, source=kind, mapping=columns, options=options)
        return inputs, ignored

    inputs, ignored = _guard(run)
    _ingest_and_print(inputs, ignored, accept_quarantine=accept_quarantine,
                      append_distant_history=append_distant_history)


def _ingest_and_print(inputs, ignored, *, accept_quarantine: bool = False,  # noqa: ANN001
                      append_distant_history: bool = False) -> None:
    from features.ingest import ingest
    from features.store import connect

    s = settings()
    s.ensure_dirs()
    with _progress() as progress:
        task = progress.add_task("ingesting", total=len(inputs) + 1)

        def report(label: str) -> None:
            progress.update(task, description=f"ingesting {label}", advance=1)

        con = _guard(lambda: connect(s))
        try:
            result = _guard(lambda: ingest(con, inputs, s, now=_utc_now(), ignored_paths=ignored, progress=report,
                                           accept_quarantine=accept_quarantine,
                                           append_distant_history=append_distant_history))
        finally:
            con.close()
    _print_ingest(result, s)


def _short(label: str) -> str:
    """A file's name for tables (the quarantine file keeps full paths)."""
    return Path(label).name if "/" in label else label


def _print_ingest(result, s: Settings) -> None:  # noqa: ANN001
    files = Table(title=f"Ingest #{result.ingest_id}")
    for col in ("file", "source", "rows", "accepted", "quarantined", "already present"):
        files.add_column(col, justify="right" if col not in ("file", "source") else "left")
    for f in result.files:
        if f.skipped:
            files.add_row(_short(f.label), f.source, "-", "-", "-", "skipped")
        else:
            files.add_row(_short(f.label), f.source, f"{f.rows:,}", f"{f.accepted:,}", f"{f.quarantined:,}", f"{f.already_present:,}")
    console.print(files)
    for f in result.files:
        for note in f.notes:
            console.print(_styled("note", "yellow", f"{f.label}: {note}"))
        if f.skipped:
            console.print(_styled("skipped", "yellow", f"{f.label}: {f.skipped}"))
    for note in result.notes:
        console.print(_styled("note", "yellow", note))
    for path, why in result.ignored_paths:
        console.print(_styled("ignored", "yellow", f"{path}: {why}"))
    if result.quarantine_counts:
        q = Table(title="Quarantined rows by reason")
        q.add_column("file")
        q.add_column("reason")
        q.add_column("rows", justify="right")
        for label, reason, n in result.quarantine_counts:
            q.add_row(_short(label), reason, f"{n:,}")
        console.print(q)
        console.print(f"quarantined rows with their row numbers: {result.quarantine_file}")
    else:
        console.print("no row quarantined")
    ident = result.identity
    console.print(f"identity: {ident.keys:,} hashed customer keys -> {ident.customers:,} customers "
                  f"({ident.new_customers:,} new, {ident.merges:,} merged in this ingest)")
    console.print(f"store: {s.database_path}")


# --- data load (the real data sets we ship loaders for) --------------------------------------------


@data_app.command("load")
def data_load(
    dataset: Annotated[str, typer.Argument(help="online-retail-ii or cdnow.")],
    path: Annotated[Path | None, typer.Option(help="The Online Retail II CSV (.csv or .csv.gz).")] = None,
    full: Annotated[bool, typer.Option(help="cdnow: the full 23,570-customer file instead of the 1/10 sample.")] = False,
    append_distant_history: Annotated[bool, typer.Option(help="Store sales distant_history_days or more away from the store's history.")] = False,
) -> None:
    """Convert a known public data set into the contract and ingest it."""
    from features.discovery import RawInput
    from features.loaders import load_cdnow, load_online_retail_ii

    def convert():  # noqa: ANN202
        if dataset == "online-retail-ii":
            if path is None:
                raise typer.BadParameter("give the file with --path", param_hint="--path")
            return load_online_retail_ii(path, settings())
        if dataset == "cdnow":
            return load_cdnow(sample=not full)
        raise typer.BadParameter("expected online-retail-ii or cdnow", param_hint="DATASET")

    with _progress() as progress:
        progress.add_task(f"converting {dataset}", total=None)
        tables = _guard(convert)
    for note in tables.notes:
        console.print(_styled(dataset, "cyan", note))
    foreign = tables.unconvertible_currencies(settings())
    if foreign:
        _error(f"{dataset} amounts are in {', '.join(foreign)} but this store's currency is "
               f"{settings().currency} with no rate for it: use a separate store, e.g. RAPPORT_CURRENCY="
               f"{foreign[0]} RAPPORT_DATA_DIR=data/{dataset}, or set RAPPORT_CURRENCY_RATES")
        raise typer.Exit(1)
    inputs = [RawInput(source, f"{dataset}:{source}", table=tables[source]) for source in tables]
    _ingest_and_print(inputs, [], append_distant_history=append_distant_history)


# --- data report ----------------------------------------------------------------------------------


@data_app.command("report")
def data_report(
    start: Annotated[str | None, typer.Option(help="First day to include.")] = None,
    end: Annotated[str | None, typer.Option(help="Day after the last one to include.")] = None,
    output: Annotated[Path | None, typer.Option(help="JSON file (default: DATA_DIR/reports/kpi_report.json).")] = None,
) -> None:
    """Engagement KPIs overall and per channel, identity and quarantine summaries; printed and written as JSON."""
    from features.moments import utc_naive
    from features.store import connect

    first, last = _date(start, "--start"), _date(end, "--end")
    if first is not None and last is not None and utc_naive(last) <= utc_naive(first):
        raise typer.BadParameter(f"expected a day after --start ({start}), got {end}", param_hint="--end")
    s = settings()
    con = _guard(lambda: connect(s, read_only=True))
    try:
        # Imported once the store is known to exist: a missing store is reported without paying for them.
        from features.data_report import data_report
        from features.report import render_kpi_table

        report = data_report(con, start=first, end=last)
    finally:
        con.close()
    ident = report.identity
    console.print(render_kpi_table(report.kpis, currency=s.currency))
    console.print(f"identity: {ident.keys:,} hashed keys -> {ident.customers:,} customers "
                  f"({ident.keys_per_customer:.2f} keys per customer; {ident.merges:,} merges recorded); "
                  f"keys by type: " + ", ".join(f"{k} {v:,}" for k, v in ident.keys_by_type.items()))
    if report.quarantine:
        console.print("quarantined rows so far: " + ", ".join(f"{r} {n:,}" for r, n in report.quarantine.items()))
    target = output or s.reports_dir / "kpi_report.json"
    report.write_json(target, currency=s.currency, generated_at=_utc_now())
    console.print(f"report written to {target}")


# --- data features --------------------------------------------------------------------------------


@data_app.command("features")
def data_features(
    as_of: Annotated[str, typer.Option("--as-of", help="Cutoff: only data before this day counts.")],
    output: Annotated[Path, typer.Option(help="Parquet or CSV file (by extension, .parquet or .csv).")],
    time_unit: Annotated[str | None, typer.Option(help="D or W (default: settings.time_unit).")] = None,
) -> None:
    """Write per-customer features as of a cutoff (lifetimes frequency/recency/T, spend, channels...)."""
    from features.customer import customer_features, validate_rfm
    from features.output import write_frames
    from features.store import connect, ibis_backend

    _check_output(output)
    s = settings()
    cutoff = _date(as_of, "--as-of")
    unit = time_unit or s.time_unit
    con = _guard(lambda: connect(s, read_only=True))
    try:
        frame = _guard(lambda: validate_rfm(customer_features(ibis_backend(con), cutoff, time_unit=unit)))
    finally:
        con.close()
    write_frames([frame], output, index=True)
    console.print(f"{len(frame):,} customers' features as of {cutoff.date()} written to {output}")


# --- data contract --------------------------------------------------------------------------------


@data_app.command("contract")
def data_contract(
    source: Annotated[str | None, typer.Argument(help="One source (default: all).")] = None,
) -> None:
    """Show the raw input contract: every source, its columns and what they must hold."""
    from features.schema import EXPECTED, SOURCES

    names = [source] if source else list(SOURCES)
    for name in names:
        if name not in SOURCES:
            _error(f"unknown source {name!r}; expected one of {', '.join(SOURCES)}")
            raise typer.Exit(1)
        spec = SOURCES[name]
        table = Table(title=f"{spec.name}: {spec.description}", title_justify="left")
        for col in ("column", "type", "required", "meaning"):
            table.add_column(col)
        for c in spec.columns:
            table.add_row(c.name, EXPECTED[c.type].split(" such as")[0], "yes" if c.required else "", c.description)
        console.print(table)


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


# --- batch files ----------------------------------------------------------------------------------


def _check_output(output: Path) -> None:
    from features.output import check_table_path

    try:
        check_table_path(output)
    except ArgumentError as exc:
        raise typer.BadParameter(str(exc), param_hint="--output") from None


def _write_chunks(chunks: Iterable[tuple[int, pd.DataFrame]], output: Path, *, total: int, what: str) -> int:
    """:func:`features.output.write_frames` under a progress bar; each chunk is (the customers it
    covers, its frame). Returns the rows written."""
    from features.output import write_frames

    with _progress() as progress:
        task = progress.add_task(what, total=total)

        def frames() -> Iterator[pd.DataFrame]:
            for done, frame in chunks:
                yield frame
                progress.update(task, advance=done)

        return write_frames(frames(), output)


# --- recommend ------------------------------------------------------------------------------------

#: Customers per chunk of ``rapport recommend`` (each chunk is ranked, then appended to the file).
RECOMMEND_CHUNK = 20_000


@app.command("recommend")
def recommend(
    output: Annotated[Path, typer.Option(help="Parquet or CSV file (by extension) to write the lists to.")],
    n: Annotated[int, typer.Option("--n", min=1, max=100, help="Items per customer.")] = 20,
    include_purchased: Annotated[bool, typer.Option(
        "--include-purchased", help="Keep items the customer already bought (default: excluded, "
                                    "except repurchasable categories).")] = False,
    version: Annotated[str | None, typer.Option(help=f"Registered version of {RECOMMEND.registered_name} to use. "
                                                      "Default: the champion (none: refused).")] = None,
) -> None:
    """Write the top-N recommendations of every customer known to the recommender: customer_id, rank,
    item_id, score, source (model / repurchase / popularity) and reason; the same code path as the
    service."""
    _check_output(output)
    s = settings()
    _require_registry(s)
    from training import tracking
    from training.bundle import champion_version

    name = RECOMMEND.registered_name
    client = tracking.configure(s)
    if version is None:
        chosen, how = _guard(lambda: champion_version(client, name)), "the champion"
    else:
        chosen, how = _guard(lambda: tracking.resolve_version(client, name, version))
    err.print(f"using {name} version {chosen.version}: {how}")
    model = _guard(lambda: tracking.load_model(client, name, chosen.version))
    customers = model.data_.customer_ids

    def chunks() -> Iterator[tuple[int, pd.DataFrame]]:
        for start in range(0, len(customers), RECOMMEND_CHUNK):
            chunk = customers[start : start + RECOMMEND_CHUNK]
            frame = model.recommend(chunk, n, exclude_purchased=not include_purchased)
            yield len(chunk), frame.assign(model_version=str(chosen.version))

    rows = _write_chunks(chunks(), output, total=len(customers), what="recommending")
    console.print(f"{rows:,} recommendations for {len(customers):,} customers (version {chosen.version}, "
                  f"history up to {model.data_.as_of.date()}) written to {output}")


def _require_registry(s: Settings) -> None:
    """The embedded model registry must exist before a command reads models from it: refused in a
    second, before MLflow is imported (a tracking server is asked by MLflow itself)."""
    if s.mlflow_tracking_uri is None and not s.mlflow_db_path.is_file():
        _error(f"no model has been trained in {s.data_dir}: the registry {s.mlflow_db_path} does not exist; "
               f"train first with rapport train")
        raise typer.Exit(1)


# --- score ----------------------------------------------------------------------------------------


@app.command("score")
def score(
    output: Annotated[Path, typer.Option(help="Parquet or CSV file (by extension) to write the scores to.")],
    chunk: Annotated[int, typer.Option(min=1_000, help="Customers per chunk.")] = 200_000,
) -> None:
    """Write the CRM scores of every known customer with the champion models: expected purchases,
    P(alive), expected order value, CLV with its interval, next order date, value segment, churn
    probability, risk band, percentile, three reasons and the model versions."""
    from features.store import connect, ibis_backend

    _check_output(output)
    s = settings()
    _guard(lambda: connect(s, read_only=True)).close()  # a missing store is named before MLflow is imported
    _require_registry(s)
    from training import tracking
    from training.bundle import champion_version
    from training.scoring import build_snapshot, churn_lookback_days, score_chunks

    client = tracking.configure(s)
    models, versions = {}, {}
    for spec in (CLV, CHURN):
        chosen = _guard(lambda name=spec.registered_name: champion_version(client, name))
        err.print(f"using {spec.registered_name} version {chosen.version}: the champion")
        models[spec.key] = _guard(lambda name=spec.registered_name, chosen=chosen:
                                  tracking.load_model(client, name, chosen.version))
        versions[spec.key] = str(chosen.version)
    as_of = models[CLV.key].cutoff_
    con = _guard(lambda: connect(s, read_only=True))
    try:
        with _progress() as progress:
            task = progress.add_task("snapshot", total=None)
            snapshot = _guard(lambda: build_snapshot(
                ibis_backend(con), as_of, time_unit=models[CLV.key].time_unit_,
                lookback_days=churn_lookback_days(models[CHURN.key]),
                progress=lambda text: progress.update(task, description=f"snapshot: {text}")))
    finally:
        con.close()
    frames = ((len(f), f) for f in score_chunks(snapshot, models[CLV.key], models[CHURN.key], versions=versions,
                                                chunk_size=chunk))
    rows = _write_chunks(frames, output, total=len(snapshot), what="scoring")
    used = ", ".join(f"{spec.registered_name} v{versions[spec.key]}" for spec in (CLV, CHURN))
    console.print(f"{rows:,} customers scored as of {as_of.date()} ({used}) written to {output}")


# --- models ---------------------------------------------------------------------------------------


@models_app.command("list")
def models_list() -> None:
    """Registered versions of every model: aliases (champion, challenger), gate verdict, key metrics."""
    from training import promotion, tracking

    client = tracking.configure(settings())
    frame = promotion.model_versions(client)
    if frame.empty:
        console.print("no model is registered yet: run rapport train")
        return
    table = Table(title="Registered models", title_justify="left")
    for col in frame.columns:
        table.add_column(col, overflow="fold")
    for _, row in frame.iterrows():
        cells = [str(v) for v in row]
        if "champion" in row["aliases"]:
            table.add_row(*cells, style="bold green")
        else:
            table.add_row(*cells)
    console.print(table)


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help=f"Registered model: {names_text()}.")],
    version: Annotated[str, typer.Argument(help="Version to make the champion.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the version's tags).")],
    by: Annotated[str | None, typer.Option(help="Who (default: the system user).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Promote a version that failed its own gate "
                                                        "(worse than its baselines).")] = False,
) -> None:
    """Make a version the champion by hand, whatever the comparison with the champion said; who, why
    and when go in its tags. A version that failed its own gate needs --force. The champion's plots
    are copied to DATA_DIR/reports/<step>/champion/."""
    from training import promotion, tracking

    if name not in REGISTERED_NAMES:
        raise typer.BadParameter(f"unknown model {name!r}; expected one of {', '.join(REGISTERED_NAMES)}",
                                 param_hint="NAME")
    s = settings()
    client = tracking.configure(s)
    done = _guard(lambda: promotion.promote_manually(client, name, version, reason=reason, by=by, force=force))
    previous = f" (was version {done.previous_champion})" if done.previous_champion else ""
    console.print(f"{name} version {version} is now the champion{previous}: {'; '.join(done.reasons)}")
    plots = promotion.publish_champion_plots(client, s.reports_dir, name)
    if plots is not None:
        console.print(f"champion plots: {plots}")


def _missing_champion(s: Settings) -> str | None:
    """Why the champions scores and examples need are not all there (None when they are)."""
    from training import tracking
    from training.bundle import champion_version

    client = tracking.configure(s)
    try:
        for name in REGISTERED_NAMES:
            champion_version(client, name)
    except tracking.NoModelError as exc:
        return str(exc)
    return None


def _print_examples(scores_path: Path, n: int = 3) -> None:
    """The scores and recommendations of a few customers: the most valuable high-risk ones."""
    import pandas as pd

    from training import tracking

    frame = pd.read_parquet(scores_path)
    at_risk = frame[frame["risk_band"] == "high"].sort_values("clv", ascending=False)
    chosen = (at_risk if len(at_risk) >= n else frame.sort_values("clv", ascending=False)).head(n)
    from training.bundle import champion_version

    client = tracking.configure(settings())
    version = _guard(lambda: champion_version(client, RECOMMEND.registered_name))
    model = _guard(lambda: tracking.load_model(client, RECOMMEND.registered_name, version.version))
    lists = model.recommend(chosen["customer_id"].tolist(), 5)
    names = dict(zip(model.data_.item_ids, model.data_.name))
    for _, row in chosen.iterrows():
        console.print(
            f"customer {row['customer_id']}: CLV {row['clv']:,.2f} ({row['clv_lower']:,.2f} .. "
            f"{row['clv_upper']:,.2f}), {row['expected_purchases_365d']:.1f} purchases expected in a year, "
            f"P(alive) {row['probability_alive']:.0%}, segment {row['value_segment']}; churn "
            f"{row['churn_probability']:.0%} ({row['risk_band']} risk): "
            + "; ".join(str(r) for r in (row["reason_1"], row["reason_2"], row["reason_3"]) if isinstance(r, str)))
        mine = lists[lists["customer_id"] == row["customer_id"]]
        for _, item in mine.iterrows():
            console.print(f"    {item['rank']}. {names.get(item['item_id']) or item['item_id']} "
                          f"({item['source']}: {item['reason']})")


# --- serve ----------------------------------------------------------------------------------------

serve_app = typer.Typer(help="The BentoML service: export its bundle, start it.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")


@serve_app.command("export")
def serve_export(
    output: Annotated[Path, typer.Option(help="Directory to write the bundle to (replaced if it is a bundle).")] = Path("bundle"),
) -> None:
    """Write the serving bundle: the champion models, the scoring snapshot at the CLV champion's cutoff
    and the identity map. The service needs nothing else (no store, no tracking server)."""
    from training.bundle import export_bundle

    with _progress() as progress:
        task = progress.add_task("bundle", total=None)
        # BundleError is a RapportError: _guard prints it as one line.
        manifest = _guard(lambda: export_bundle(settings(), output,
                                                progress=lambda text: progress.update(task, description=text)))
    models = ", ".join(f"{m['name']} v{m['version']}" for m in manifest["models"].values())
    counts = manifest["counts"]
    console.print(f"bundle written to {output}: {models}; snapshot {manifest['snapshot_date']}, "
                  f"{counts['customers']:,} customers, {counts['items']:,} items, default lists of "
                  f"{counts.get('default_lists', 0):,} customers")


@serve_app.command("start")
def serve_start(
    bundle: Annotated[Path, typer.Option(help="Bundle directory (rapport serve export).")] = Path("bundle"),
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Run the service on a bundle (bentoml serve serving.service:Rapport); the OpenAPI page is at /.

    Every file of the bundle is checked against its manifest (size, SHA-256) first: a bundle that
    cannot be served is refused here, with the file named, not by workers failing one after the
    other. BentoML runs in its own process group; SIGTERM and SIGINT (Ctrl+C) are passed on to the
    whole group, and whatever is left of it when the server has stopped is ended."""
    import contextlib
    import signal
    import subprocess

    import psutil

    from serving.runtime import worker_count
    from training.bundle import verify_bundle

    _guard(lambda: verify_bundle(bundle))
    workers = _guard(lambda: worker_count(settings().serving_workers))
    env = {**os.environ, "RAPPORT_BUNDLE_DIR": str(bundle.resolve()), "RAPPORT_SERVING_WORKERS": str(workers)}
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:Rapport", "--host", host, "--port", str(port)]
    console.print(f"serving {bundle} on http://{host}:{port} with {workers} worker(s) (OpenAPI page at /, "
                  "Ctrl+C to stop)")
    server = subprocess.Popen(command, env=env, process_group=0)
    # BentoML's arbiter starts each worker in a session of its own (circus), out of reach of a signal
    # to the group: the workers are remembered while the server runs, so that none outlives it.
    started: dict[int, psutil.Process] = {}
    asked: list[int] = []

    def remember() -> None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(server.pid).children(recursive=True):
                started.setdefault(child.pid, child)

    def forward(signum: int, _frame: object) -> None:
        asked.append(signum)
        remember()
        with contextlib.suppress(ProcessLookupError):  # the group has ended already
            os.killpg(server.pid, signum)

    def end_all(grace: float = 10.0) -> None:
        # What is left of the server's group and of its workers once the arbiter is gone: given
        # ``grace`` seconds, then killed.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        left = [p for p in started.values() if p.is_running()]
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(left, timeout=grace)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        while True:
            try:
                code = server.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                remember()
    finally:
        end_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if asked:
        raise typer.Exit(0)
    _error(f"the service stopped by itself (exit code {code}): see its log above")
    raise typer.Exit(code if code > 0 else 1)  # killed by a signal: a negative code


# --- config ---------------------------------------------------------------------------------------


@app.command("config")
def show_config() -> None:
    """Show the effective settings (secrets masked)."""
    s = settings()
    for name, value in s.model_dump().items():
        console.print(f"{name} = {mask_secrets(value)}")


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
