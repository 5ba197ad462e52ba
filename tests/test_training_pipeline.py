"""`rapport train` end to end on a small synthetic store: the parent run with nested steps, the
promotion gate (a degraded retraining is refused and the champion stays), a failing step leaves the
registry as it was, manual promotion, and the CRM scores of the champions."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.store import ibis_backend
from training import promotion, tracking
from training.pipeline import PipelineError, run_pipeline
from tests.fixtures_history import synthetic_store

pytestmark = [pytest.mark.data, pytest.mark.slow]

NOW = datetime(2026, 1, 2, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    settings, con = synthetic_store(tmp_path_factory.mktemp("pipeline"), 6_000, 23, now=NOW,
                                    clv_candidates=["bgnbd"], churn_max_cutoffs=8,
                                    recommend_factors=16, recommend_iterations=8, recommend_ranker_trees=60)
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


def test_manual_promotion_records_who_and_why(store, first):
    settings, _ = store
    client = tracking.configure(settings)
    versions = sorted(int(v.version) for v in client.search_model_versions("name = 'rapport-churn'"))
    champion = _aliases(client, "rapport-churn")["champion"]
    other = str(next(v for v in versions if str(v) != champion))
    done = promotion.promote_manually(client, "rapport-churn", other, reason="seasonal rollback", by="ana")
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
    assert empty.exit_code == 1 and "train" in empty.output
