"""The churn training step end to end on generated data: embargoed cutoffs, the model against its
baselines, calibration, the MLflow run and the registered pyfunc, and ``rapport train --only churn``."""

from __future__ import annotations

from datetime import datetime, timezone

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.churn import churn_features
from features.store import ibis_backend
from training import tracking
from training.churn.evaluation import expected_calibration_error
from training.churn.pipeline import MODEL_NAME, train_churn
from tests.fixtures_history import synthetic_store

pytestmark = [pytest.mark.model, pytest.mark.slow]

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    settings, con = synthetic_store(tmp_path_factory.mktemp("churn"), 8_000, 31, now=NOW,
                                    churn={"with_clv_features": True})
    return settings, con


def test_training_beats_the_baselines_is_calibrated_logged_and_registered(store):
    settings, con = store
    result = train_churn(con, settings)
    # Embargo: labels of the training cutoffs end by the validation cutoff, whose labels end by the test's.
    horizon = pd.Timedelta(days=result.horizon_days)
    assert max(result.train_cutoffs) + horizon <= result.valid_cutoff
    assert result.valid_cutoff + horizon <= result.test_cutoff
    assert result.gate.eligible, result.gate.reasons
    table = result.table
    model_auc = table.iloc[0]["ROC AUC"]
    assert all(model_auc > auc for auc in table.iloc[1:]["ROC AUC"])

    client = tracking.configure(settings)
    run = client.get_run(result.run_id)
    assert run.data.params["test_cutoff"] == result.test_cutoff.date().isoformat()
    assert run.data.tags["gate.eligible"] == "true"
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/reliability.png", "plots/feature_importance.png", "plots/lift.png"} <= artifacts

    # Scoring at the test cutoff: calibrated (small error) and the registered model agrees.
    backend = ibis_backend(con)
    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{result.model_version}")
    frame = churn_features(backend, result.test_cutoff)
    from training.churn.dataset import clv_features
    from features.customer import customer_features

    frame = frame.join(clv_features(frame, customer_features(backend, result.test_cutoff), result.test_cutoff))
    sample = frame.head(200)
    served = loaded.predict(sample)
    own = result.model.predict(sample)
    pd.testing.assert_series_equal(served["churn_probability"], own["churn_probability"], check_names=False)
    assert list(served["reason_1"]) == list(own["reason_1"])


def test_the_held_out_calibration_error_is_small(store):
    settings, con = store
    from features.churn import churn_labels
    from features.customer import customer_features
    from training.churn.dataset import clv_features

    result = train_churn(con, settings)
    backend = ibis_backend(con)
    frame = churn_features(backend, result.test_cutoff)
    frame = frame.join(clv_features(frame, customer_features(backend, result.test_cutoff), result.test_cutoff))
    labels = churn_labels(backend, result.test_cutoff).reindex(frame.index)
    assert expected_calibration_error(labels.to_numpy(), result.model.predict_proba(frame)) < 0.05


def test_rapport_train_only_churn(store, monkeypatch):
    from rapport.cli import app

    settings, con = store
    monkeypatch.setenv("RAPPORT_DATA_DIR", str(settings.data_dir))
    con.close()
    out = CliRunner().invoke(app, ["train", "--only", "churn"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "ROC AUC" in out.output and "logistic regression on RFM" in out.output and "rapport-churn" in out.output
