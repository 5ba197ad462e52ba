"""`rapport train` end to end on a small synthetic store: the parent run with nested steps, the
promotion gate (a degraded retraining is refused and the champion stays), a failing step leaves the
registry as it was, manual promotion, and the CRM scores of the champions."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from datetime import datetime, timedelta, timezone

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.store import ibis_backend
from features.windows import MIN_SPAN_DAYS
from training import promotion, tracking
from training.cutoff import CutoffError, sales_range
from training.pipeline import PipelineError, TrainingInterrupted, run_pipeline
from training.plotting import champion_plot_dir, run_plot_dir
from tests.fixtures_history import synthetic_store

pytestmark = [pytest.mark.data, pytest.mark.slow]

NOW = datetime(2026, 1, 2, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    settings, con = synthetic_store(tmp_path_factory.mktemp("pipeline"), 6_000, 23, now=NOW,
                                    clv={"candidates": ["bgnbd"]}, churn={"max_cutoffs": 8},
                                    recommend={"model": {"factors": 16, "iterations": 8, "n_estimators": 60}})
    return settings, con


@pytest.fixture(scope="module")
def first(store):
    settings, con = store
    return run_pipeline(con, settings, steps=["clv", "churn"])


def _aliases(client, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in (client.get_registered_model(name).aliases or {}).items()}


def test_first_training_promotes_every_eligible_model_under_one_parent_run(store, first):
    settings, _ = store
    client = tracking.configure(settings)
    assert [o.step for o in first.steps] == ["clv", "churn"]
    for outcome in first.steps:
        assert outcome.promotion is not None and outcome.promotion.promoted, outcome.promotion
        assert _aliases(client, outcome.model_name) == {"champion": outcome.version}
        run = client.get_run(outcome.result.run_id)
        # Each step's run is nested under the pipeline's parent run and carries the code version.
        assert run.data.tags["mlflow.parentRunId"] == first.run_id
        assert tracking.CODE_VERSION_TAG in run.data.tags
        assert any(k.startswith("data.") for k in run.data.params)
    parent = client.get_run(first.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["promotion.rapport-churn"] == "champion"
    summary = first.summary()
    assert list(summary["alias"]) == ["champion", "champion"]
    assert summary["vs champion"].str.contains("no champion yet").all()


def _runs(client, settings) -> int:
    return len(client.search_runs([tracking.experiment_id(client, settings)], max_results=1000))


def _versions(client) -> int:
    return sum(len(client.search_model_versions(f"name = '{name}'")) for name in promotion.MODEL_NAMES)


def test_a_cutoff_outside_the_history_is_refused_before_any_run(store, first):
    settings, con = store
    client = tracking.configure(settings)
    runs, versions = _runs(client, settings), _versions(client)
    first_sale, last_sale = sales_range(con)
    with pytest.raises(CutoffError) as late:
        run_pipeline(con, settings, cutoff=datetime(2030, 1, 1))
    assert "2030-01-01" in str(late.value) and f"last sale ({last_sale.date()})" in str(late.value)
    early_cutoff = first_sale + timedelta(days=30)
    # Windows left to the data: below the span every step needs, whatever the windows would be.
    with pytest.raises(CutoffError, match=f"needs at least {MIN_SPAN_DAYS} days before the cutoff"):
        run_pipeline(con, settings, steps=["recommend"], cutoff=early_cutoff)
    # Windows set by hand: both dates, and the earliest cutoff the steps asked for allow (churn needs
    # the longest history).
    settings = settings.updated(clv={"holdout_days": 183}, churn={"lookback_days": 365, "horizon_days": 90})
    with pytest.raises(CutoffError) as early:
        run_pipeline(con, settings, steps=["clv", "churn"], cutoff=early_cutoff)
    needed = settings.churn.lookback_days + 3 * settings.churn.horizon_days
    earliest = datetime.combine(first_sale.date(), datetime.min.time()) + timedelta(days=needed)
    assert str(early_cutoff.date()) in str(early.value) and f"first sale is on {first_sale.date()}" in str(early.value)
    assert f"churn needs at least {needed} days" in str(early.value)
    assert f"earliest cutoff is {earliest.date()}" in str(early.value)
    assert "steps short of history: clv, churn" in str(early.value)
    # The day after the last sale is the latest cutoff allowed (it is the default one).
    with pytest.raises(CutoffError):
        run_pipeline(con, settings, steps=["clv"], cutoff=datetime.combine(last_sale.date(), datetime.min.time())
                     + timedelta(days=2))
    assert (_runs(client, settings), _versions(client)) == (runs, versions)  # nothing started, nothing registered


def test_a_retraining_on_degraded_data_is_refused_and_the_champion_stays(store, first, monkeypatch):
    settings, con = store
    client = tracking.configure(settings)
    champion = _aliases(client, "rapport-churn")["champion"]

    import training.churn.pipeline as churn_pipeline

    real = churn_pipeline.build_dataset

    def shuffled_labels(*args, **kwargs):
        dataset = real(*args, **kwargs)
        frame = dataset.frame.copy()
        rng = np.random.default_rng(0)
        learn = frame["cutoff"] < frame["cutoff"].max()  # training and validation cutoffs; the test stays true
        frame.loc[learn, "churned"] = rng.permutation(frame.loc[learn, "churned"].to_numpy())
        return dataclasses.replace(dataset, frame=frame)

    monkeypatch.setattr(churn_pipeline, "build_dataset", shuffled_labels)
    second = run_pipeline(con, settings, steps=["churn"])
    outcome = second.steps[0]
    assert outcome.promotion is not None and outcome.promotion.alias == "challenger"
    assert any("worse than champion" in r for r in outcome.promotion.reasons) or \
        any("own gate failed" in r for r in outcome.promotion.reasons)
    aliases = _aliases(client, "rapport-churn")
    assert aliases["champion"] == champion and aliases["challenger"] == outcome.version
    tags = client.get_model_version("rapport-churn", outcome.version).tags
    assert tags["promotion.decision"] == "challenger" and tags["promotion.reasons"]


def test_plots_are_written_per_run_and_the_champions_stay_in_place(store, first):
    settings, _ = store
    client = tracking.configure(settings)
    for outcome in first.steps:
        own = run_plot_dir(settings.reports_dir, outcome.step, outcome.result.run_id)
        assert {str(p) for p in outcome.result.plots} == {str(own / p.name) for p in own.glob("*.png")} != set()
    # The degraded churn retraining (a challenger) wrote its plots beside, not over, the champion's.
    churn_runs = list((settings.reports_dir / "churn" / "runs").iterdir())
    assert len(churn_runs) >= 2
    champion = client.get_model_version_by_alias("rapport-churn", "champion")
    folder = champion_plot_dir(settings.reports_dir, "churn")
    published = json.loads((folder / "champion.json").read_text())
    assert (published["version"], published["run_id"]) == (str(champion.version), champion.run_id)
    mine = run_plot_dir(settings.reports_dir, "churn", champion.run_id)
    for png in mine.glob("*.png"):
        assert (folder / png.name).read_bytes() == png.read_bytes()


def test_a_failing_step_leaves_the_registry_as_it_was(store, first, monkeypatch):
    settings, con = store
    client = tracking.configure(settings)
    before = {name: _aliases(client, name) for name in ("rapport-clv", "rapport-churn")}

    import training.churn.pipeline as churn_pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("the churn data set could not be built")

    monkeypatch.setattr(churn_pipeline, "build_dataset", broken)
    with pytest.raises(PipelineError, match="'churn' failed.*could not be built.*champions are unchanged"):
        run_pipeline(con, settings, steps=["clv", "churn"])
    after = {name: _aliases(client, name) for name in ("rapport-clv", "rapport-churn")}
    assert after == before
    # The CLV version this run registered before the failure is marked, not promoted.
    latest_clv = max(client.search_model_versions("name = 'rapport-clv'"), key=lambda v: int(v.version))
    assert latest_clv.version != before["rapport-clv"]["champion"]
    assert latest_clv.tags["promotion.decision"].startswith("not promoted: the pipeline failed at step churn")
    parent = client.search_runs([tracking.experiment_id(client, settings)],
                                filter_string="tags.step = 'pipeline'", order_by=["attributes.start_time DESC"])[0]
    assert parent.info.status == "FAILED" and parent.data.tags["failed_step"] == "churn"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_training_marks_its_runs_failed(store, first, monkeypatch, signum):
    settings, con = store
    client = tracking.configure(settings)
    before = {name: _aliases(client, name) for name in ("rapport-clv", "rapport-churn")}
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    import training.clv.pipeline as clv_pipeline

    def killed(*args, **kwargs):  # the signal arrives while the nested CLV run is open
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal should have stopped the step")

    monkeypatch.setattr(clv_pipeline, "log_clv_model", killed)
    with pytest.raises(TrainingInterrupted, match=signal.Signals(signum).name) as info:
        run_pipeline(con, settings, steps=["clv", "churn"])
    assert info.value.signum == signum
    runs = client.search_runs([tracking.experiment_id(client, settings)], order_by=["attributes.start_time DESC"],
                              max_results=2)
    nested, parent = runs
    assert (nested.data.tags["step"], parent.data.tags["step"]) == ("clv", "pipeline")
    assert nested.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert nested.info.status == parent.info.status == "FAILED"
    assert parent.data.tags["failed_step"] == "clv" and "TrainingInterrupted" in parent.data.tags["failure"]
    assert {name: _aliases(client, name) for name in before} == before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # put back


def test_promoting_a_version_that_failed_its_gate_needs_force(store, first, monkeypatch):
    from rapport.cli import app

    settings, _ = store
    client = tracking.configure(settings)
    champion = _aliases(client, "rapport-churn")["champion"]
    # The retraining on shuffled labels lost to its baselines: its own gate failed.
    failed = next(v for v in client.search_model_versions("name = 'rapport-churn'")
                  if v.tags.get("gate_eligible") == "false")
    version = str(failed.version)
    why = client.get_run(failed.run_id).data.tags["gate.reasons"]
    with pytest.raises(promotion.GateFailedError, match="failed its own gate .*--force") as info:
        promotion.promote_manually(client, "rapport-churn", version, reason="try")
    assert why in str(info.value)
    assert _aliases(client, "rapport-churn")["champion"] == champion
    monkeypatch.setenv("RAPPORT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("COLUMNS", "250")
    runner = CliRunner()
    refused = runner.invoke(app, ["models", "promote", "rapport-churn", version, "--reason", "try"])
    assert refused.exit_code == 1 and "best baseline" in refused.output and "--force" in refused.output
    forced = runner.invoke(app, ["models", "promote", "rapport-churn", version, "--reason", "try", "--force"])
    assert forced.exit_code == 0, forced.output
    assert "forced although it failed its own gate" in forced.output and "champion plots:" in forced.output
    assert client.get_model_version("rapport-churn", version).tags["promotion.forced"] == "true"
    folder = champion_plot_dir(settings.reports_dir, "churn")
    assert json.loads((folder / "champion.json").read_text())["version"] == version
    assert {p.name for p in folder.glob("*.png")} == {"reliability.png", "feature_importance.png", "lift.png"}
    back = runner.invoke(app, ["models", "promote", "rapport-churn", champion, "--reason", "back"])
    assert back.exit_code == 0, back.output
    assert json.loads((folder / "champion.json").read_text())["version"] == champion


def test_manual_promotion_records_who_and_why(store, first):
    settings, _ = store
    client = tracking.configure(settings)
    versions = sorted(int(v.version) for v in client.search_model_versions("name = 'rapport-churn'"))
    champion = _aliases(client, "rapport-churn")["champion"]
    other = str(next(v for v in versions if str(v) != champion))
    done = promotion.promote_manually(client, "rapport-churn", other, reason="seasonal rollback", by="ana",
                                      force=True)
    assert done.previous_champion == champion
    assert _aliases(client, "rapport-churn")["champion"] == other
    tags = client.get_model_version("rapport-churn", other).tags
    assert tags["promotion.manual_by"] == "ana" and tags["promotion.manual_reason"] == "seasonal rollback"
    promotion.promote_manually(client, "rapport-churn", champion, reason="back to the trained champion", by="ana")
    with pytest.raises(ValueError, match="reason"):
        promotion.promote_manually(client, "rapport-churn", champion, reason=" ")
    table = promotion.model_versions(client)
    assert set(table["model"]) >= {"rapport-clv", "rapport-churn"}
    assert (table["aliases"].str.contains("champion")).sum() == 2


def test_scores_have_one_row_per_customer_and_no_gap_where_a_model_applies(store, first):
    from training.scoring import LAPSED, SCORE_COLUMNS, build_snapshot, score_chunks

    settings, con = store
    client = tracking.configure(settings)
    models = {}
    for name in ("rapport-clv", "rapport-churn"):
        version, _ = tracking.resolve_version(client, name)
        models[name] = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}").unwrap_python_model().model
    clv = models["rapport-clv"]
    snapshot = build_snapshot(ibis_backend(con), clv.cutoff_, time_unit=clv.time_unit_)
    frame = pd.concat(score_chunks(snapshot, clv, models["rapport-churn"], versions={"clv": "1", "churn": "1"},
                                   chunk_size=1_000), ignore_index=True)
    assert list(frame.columns) == list(SCORE_COLUMNS)
    # Every score names the horizon its churn probability is about: the churn model's own.
    horizon = models["rapport-churn"].horizon_days_
    assert horizon is not None and (frame["churn_horizon_days"] == horizon).all()
    assert frame["customer_id"].is_unique and len(frame) == len(snapshot.customers)
    clv_columns = ["expected_purchases_30d", "expected_purchases_90d", "expected_purchases_365d",
                   "probability_alive", "expected_order_value", "clv", "clv_lower", "clv_upper", "value_segment"]
    assert frame[clv_columns].notna().all().all()
    active = frame["risk_band"] != LAPSED
    assert frame.loc[active, ["churn_probability", "percentile"]].notna().all().all()
    # A reason is a feature pushing the risk up: almost everyone has one (none for the safest few).
    assert frame.loc[active, "reason_1"].notna().mean() > 0.9
    assert set(frame.loc[active, "risk_band"]) <= {"low", "medium", "high"}
    assert frame.loc[~active, "churn_probability"].isna().all()
    assert frame.loc[~active, "reason_1"].str.contains("lapsed").all()
    # The same customer scored alone gets the batch answer.
    one = frame["customer_id"].iloc[5]
    from training.scoring import score_rows

    alone = score_rows(snapshot, pd.Index([one]), clv, models["rapport-churn"], versions={"clv": "1", "churn": "1"})
    pd.testing.assert_frame_equal(alone.reset_index(drop=True), frame[frame["customer_id"] == one].reset_index(drop=True))


def test_cli_exit_codes(store, first, tmp_path, monkeypatch):
    from rapport.cli import app

    settings = store[0]
    monkeypatch.setenv("RAPPORT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("COLUMNS", "250")  # a wide table: no name wrapped over two lines
    runner = CliRunner()
    bad_step = runner.invoke(app, ["train", "--only", "forecast"])
    assert bad_step.exit_code != 0 and "forecast" in bad_step.output
    no_version = runner.invoke(app, ["models", "promote", "rapport-churn", "999", "--reason", "test"])
    assert no_version.exit_code == 1 and "999" in no_version.output
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "rapport-churn" in listed.output and "champion" in listed.output
    # The CLI opens the store read-only: DuckDB refuses that next to this module's writable connection,
    # so this (the module's last test) closes it first.
    store[1].close()
    out = tmp_path / "scores.csv"
    scored = runner.invoke(app, ["score", "--output", str(out)])
    assert scored.exit_code == 0, scored.output
    assert pd.read_csv(out)["customer_id"].is_unique
    empty = CliRunner().invoke(app, ["score", "--output", str(tmp_path / "x.csv")],
                               env={"RAPPORT_DATA_DIR": str(tmp_path / "nothing")})
    assert empty.exit_code == 1 and "ingest data first" in empty.output
    late = runner.invoke(app, ["train", "--cutoff", "2030-01-01"])
    assert late.exit_code == 1 and "2030-01-01" in late.output and "last sale" in late.output


def test_an_interrupted_train_command_exits_non_zero(store, first, monkeypatch):
    from rapport.cli import app

    settings = store[0]  # the store's connection was closed by test_cli_exit_codes
    monkeypatch.setenv("RAPPORT_DATA_DIR", str(settings.data_dir))
    import training.clv.pipeline as clv_pipeline

    monkeypatch.setattr(clv_pipeline, "log_clv_model", lambda *a, **k: os.kill(os.getpid(), signal.SIGINT))
    out = CliRunner().invoke(app, ["train", "--only", "clv"])
    assert out.exit_code == 128 + signal.SIGINT
    assert "training interrupted by SIGINT" in out.output


@pytest.mark.unit
def test_the_summary_says_when_a_step_serves_a_baseline():
    from types import SimpleNamespace

    from training.churn.model import LIGHTGBM, LOGISTIC_RFM
    from training.pipeline import PipelineResult, StepOutcome
    from training.recommend.evaluation import CHOSEN, TOP_FREQUENCY

    def outcome(step: str, result: object) -> StepOutcome:
        return StepOutcome(step=step, model_name=f"rapport-{step}", seconds=1.0, result=result, version="1")

    gate = SimpleNamespace(eligible=True)
    result = PipelineResult(run_id="r", cutoff=None, steps=[
        outcome("churn", SimpleNamespace(gate=gate, learner=LOGISTIC_RFM)),
        outcome("churn", SimpleNamespace(gate=gate, learner=LIGHTGBM)),
        outcome("recommend", SimpleNamespace(gate=SimpleNamespace(eligible=True, champion=TOP_FREQUENCY))),
        outcome("recommend", SimpleNamespace(gate=SimpleNamespace(eligible=True, champion=CHOSEN))),
    ])
    verdicts = list(result.summary()["vs baselines"])
    assert verdicts[0] == f"passes its gate (serves {LOGISTIC_RFM}: it beat LightGBM on validation)"
    assert verdicts[1] == verdicts[3] == "passes its gate"
    assert verdicts[2] == f"passes its gate (serves {TOP_FREQUENCY})"
