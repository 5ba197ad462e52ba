"""The CLV training step end to end on generated data: candidates, gate, MLflow run, registered
pyfunc that scores like the fitted model, and the ``rapport train`` command."""

from __future__ import annotations

from datetime import datetime, timezone

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.customer import customer_features
from features.store import ibis_backend
from training import tracking
from training.clv.pipeline import MODEL_NAME, choose, train_clv
from tests.fixtures_history import synthetic_store

pytestmark = [pytest.mark.model, pytest.mark.slow]

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    settings, con = synthetic_store(tmp_path_factory.mktemp("clv"), 6_000, 21, now=NOW)
    return settings, con


def test_training_logs_registers_and_the_registered_model_scores_like_the_fitted_one(store):
    settings, con = store
    result = train_clv(con, settings)
    assert result.cutoff == datetime(2026, 1, 1)  # the day after the last sale
    assert set(result.candidates.index) >= {"bgnbd", "naive (historic rate)"}
    assert result.gate.eligible, result.gate.reasons  # planted BG/NBD data: the model beats the naive rate
    assert result.evaluation.aggregate_error < 0.05
    # No one-order customer is valued above the 99th percentile of the repeat customers' actual
    # 12-month spend without their own spend to show for it.
    check = result.plausibility
    assert check.reference_customers > 500 and check.one_order_customers > 500
    assert check.plausible, check.message
    assert check.largest_one_order_clv < check.threshold

    client = tracking.configure(settings)
    run = client.get_run(result.run_id)
    assert run.data.params["model"] == result.kind and run.data.params["time_unit"] == "D"
    assert "holdout_mae" in run.data.metrics and "naive_holdout_mae" in run.data.metrics
    assert run.data.metrics["plausibility.one_order_unexplained"] == 0
    alive = run.data.metrics["one_order_probability_alive_median"]
    assert alive < 1.0 if result.kind != "bgnbd" else alive == 1.0
    assert "one-order customers" in run.data.tags["plausibility"]
    assert run.data.tags["gate.eligible"] == "true"
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/calibration_vs_holdout.png", "plots/cumulative_transactions.png"} <= artifacts
    assert str(settings.mlflow_dir) in tracking.tracking_uri(settings)

    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{result.model_version}")
    features = customer_features(ibis_backend(con), result.cutoff).head(50)
    served = loaded.predict(features)
    own = result.model.predict(features)
    pd.testing.assert_series_equal(served["clv"], own["clv"], check_names=False)
    pd.testing.assert_series_equal(served["probability_alive"], own["probability_alive"], check_names=False)

    again = train_clv(con, settings)
    assert int(again.model_version) == int(result.model_version) + 1


@pytest.mark.unit
def test_choose_prefers_a_model_without_the_one_order_artefact_when_it_is_as_good():
    class E:
        def __init__(self, mae):
            self.mae = mae

    # Within 1 % of BG/NBD's MAE, a model that lets one-order customers be inactive wins.
    assert choose({"bgnbd": E(1.0), "paretonbd": E(1.009)}) == "paretonbd"
    assert choose({"bgnbd": E(1.0), "mbgnbd": E(1.008), "paretonbd": E(1.004)}) == "paretonbd"
    assert choose({"bgnbd": E(1.0), "mbgnbd": E(1.003), "paretonbd": E(1.2)}) == "mbgnbd"
    # Further away, the lowest MAE wins, BG/NBD included.
    assert choose({"bgnbd": E(1.0), "paretonbd": E(1.02)}) == "bgnbd"
    assert choose({"bgnbd": E(1.2), "paretonbd": E(1.0)}) == "paretonbd"
    assert choose({"bgnbd": E(1.0)}) == "bgnbd"


def test_rapport_train_only_clv_with_a_cutoff(store, monkeypatch):
    from rapport.cli import app

    settings, con = store
    monkeypatch.setenv("RAPPORT_DATA_DIR", str(settings.data_dir))
    con.close()  # the command opens the store itself
    out = CliRunner().invoke(app, ["train", "--only", "clv", "--cutoff", "2025-07-01"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "rapport-clv" in out.output and "2025-07-01" in out.output
    bad = CliRunner().invoke(app, ["train", "--only", "nothing"])
    assert bad.exit_code != 0 and "clv" in bad.output
