"""`rapport train` on histories too short for a step: the step is skipped with its reason, the others
run and are promoted, the exit code is 0; and the commands that use models take the champion only
(never a version that failed its gate), saying how to override."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone

import pytest
from typer.testing import CliRunner

from features.discovery import discover
from synthetic.generate import generate
from features.ingest import ingest
from features.settings import load_settings
from features.store import connect
from training import tracking
from training.pipeline import run_pipeline

pytestmark = [pytest.mark.data, pytest.mark.slow]


def _store(folder, customers: int, start: date, end: date, **settings):
    generate(folder / "raw", customers, 5, start=start, end=end)
    loaded = load_settings(data_dir=folder / "state", **settings)
    con = connect(loaded)
    inputs, ignored = discover(folder / "raw")
    ingest(con, inputs, loaded, now=datetime(2026, 1, 2, tzinfo=timezone.utc), ignored_paths=ignored)
    return loaded, con


@pytest.fixture
def cli_env(monkeypatch):
    def use(settings):
        monkeypatch.setenv("RAPPORT_DATA_DIR", str(settings.data_dir))
        monkeypatch.setenv("COLUMNS", "250")  # one table row per line: the messages are not wrapped
        for name in ("RAPPORT_CONFIG", "RAPPORT_CHURN_HORIZON_DAYS", "RAPPORT_CLV_HOLDOUT_DAYS"):
            monkeypatch.delenv(name, raising=False)
    return use


def test_a_history_too_short_skips_every_step_and_train_exits_0(tmp_path, cli_env):
    from rapport.cli import app

    # The generator simulates at least 90 days: the store keeps the last 45 of them, as a short export would.
    settings, con = _store(tmp_path, 400, date(2025, 9, 1), date(2025, 12, 15))
    con.execute("DELETE FROM returns WHERE line_key IN (SELECT line_key FROM lines WHERE ts < TIMESTAMP '2025-11-01')")
    con.execute("DELETE FROM lines WHERE ts < TIMESTAMP '2025-11-01'")
    try:
        result = run_pipeline(con, settings)
    finally:
        con.close()
    assert [o.step for o in result.steps] == ["clv", "churn", "recommend"]
    for outcome in result.steps:
        assert outcome.version is None and outcome.promotion is None
        assert re.match(rf"{outcome.step} skipped: it needs at least 60 days of history; the data have 4\d ",
                        outcome.skipped), outcome.skipped
    summary = result.summary()
    assert list(summary["alias"]) == ["none (skipped)"] * 3
    assert list(summary["vs baselines"]) == [o.skipped for o in result.steps]
    client = tracking.configure(settings)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["skipped.churn"].startswith("churn skipped") and \
        parent.data.tags["promotion.rapport-churn"] == "skipped"

    cli_env(settings)
    trained = CliRunner().invoke(app, ["train"])
    assert trained.exit_code == 0, trained.output
    assert trained.output.count("skipped: it needs at least 60 days") >= 3
    assert "Training summary" in trained.output


def test_a_step_that_does_not_fit_is_skipped_and_the_others_are_promoted(tmp_path, cli_env):
    from rapport.cli import app

    # One year of history, and a churn horizon set by hand that leaves no room for three cutoffs.
    settings, con = _store(tmp_path, 1_500, date(2025, 1, 1), date(2025, 12, 31), clv={"candidates": ["bgnbd"]},
                           churn={"horizon_days": 120})
    try:
        result = run_pipeline(con, settings, steps=["clv", "churn"])
    finally:
        con.close()
    clv, churn = result.steps
    assert churn.skipped is not None and "churn.horizon_days" in churn.skipped and churn.version is None
    assert "Set churn.horizon_days to auto or shorter" in churn.skipped
    assert clv.skipped is None and clv.promotion is not None and clv.promotion.promoted
    # auto: a third of the 364-day history.
    assert clv.result.windows["holdout_days"] == 121 and clv.result.windows.chosen["holdout_days"].auto
    client = tracking.configure(settings)
    run = client.get_run(clv.result.run_id)
    assert run.data.params["window.holdout_days"] == "121" and run.data.params["holdout_days"] == "121"
    assert run.data.params["window.holdout_days.why"].startswith("auto: a third of the 364-day history")

    cli_env(settings)
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "holdout_days 121 (auto)" in listed.output, listed.output

    # No champion for a model: every command that would use it refuses and names the override.
    client.delete_registered_model_alias("rapport-clv", "champion")
    client.set_model_version_tag("rapport-clv", clv.version, "gate_eligible", "false")
    for command in (["score", "--output", str(tmp_path / "s.parquet")], ["serve", "export", "--output",
                                                                            str(tmp_path / "bundle")]):
        refused = runner.invoke(app, command)
        assert refused.exit_code == 1, refused.output
        text = " ".join(refused.output.split())
        assert "rapport-clv has no champion" in text and f"version {clv.version}, failed its gate" in text
        assert "rapport models promote rapport-clv VERSION" in text
    assert not (tmp_path / "s.parquet").exists() and not (tmp_path / "bundle").exists()
    no_recommender = runner.invoke(app, ["recommend", "--output", str(tmp_path / "r.parquet")])
    assert no_recommender.exit_code == 1
    assert "no version of rapport-recommender is registered" in " ".join(no_recommender.output.split())

    # The override: promoted by hand, the CLV champion is used; churn was never trained, so scores wait.
    refused = runner.invoke(app, ["models", "promote", "rapport-clv", clv.version, "--reason", "checked"])
    assert refused.exit_code == 1 and "--force" in refused.output, refused.output
    promoted = runner.invoke(app, ["models", "promote", "rapport-clv", clv.version, "--reason", "checked", "--force"])
    assert promoted.exit_code == 0, promoted.output
    waiting = runner.invoke(app, ["score", "--output", str(tmp_path / "s.parquet")])
    assert waiting.exit_code == 1 and "no version of rapport-churn is registered" in " ".join(waiting.output.split())
