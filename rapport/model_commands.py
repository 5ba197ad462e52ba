"""``rapport recommend``, ``rapport score`` and ``rapport models``: the champions' batch files and the registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from features.settings import Settings
from training.models import CHURN, CLV, RECOMMEND, REGISTERED_NAMES, names_text

if TYPE_CHECKING:
    import pandas as pd
if TYPE_CHECKING:
    import pandas as pd

from rapport.app import (
    _check_output,
    _error,
    _guard,
    _progress,
    _write_chunks,
    app,
    console,
    err,
    models_app,
    settings,
)

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
