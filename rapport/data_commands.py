"""``rapport data``: generate, ingest, load, report, features, contract."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from features.settings import Settings
from rapport.app import (
    _check_output,
    _date,
    _error,
    _guard,
    _progress,
    _styled,
    _utc_now,
    console,
    data_app,
    settings,
)

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
