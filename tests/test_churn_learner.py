"""The churn step's choice of learner: when a linear rule in RFM is the truth, the logistic regression
on RFM beats LightGBM on the validation cutoff, is the model fitted, judged against the remaining
baselines, registered and served, with the same outputs (calibrated probability, band, percentile,
reasons from its exact linear contributions) and a JSON artefact checked on load.

The planted customers churn with probability expit(-0.4 - 0.5 frequency + 0.012 (T - recency)
- 0.003 monetary_value): fewer repeat purchases, a longer time since the last one and smaller orders
mean more churn; a noise column has no effect. On that truth a LightGBM searched for the validation
cutoff can still rank it better by luck: the choice compares LightGBM with its configured values."""

from __future__ import annotations

import copy
import json
import os
from datetime import datetime, timezone

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy.special import expit  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from features.schema import Feature  # noqa: E402
from training import tracking  # noqa: E402
from training.churn.evaluation import RFM_BASELINE, RFM_FEATURES, choose_learner, fit_baselines  # noqa: E402
from training.churn.errors import ChurnArtefactError, ChurnInputError  # noqa: E402
from training.churn.model import LOGISTIC_RFM, ChurnModel  # noqa: E402
from training.churn.pyfunc import log_churn_model, pyfunc_output  # noqa: E402

NOISE = "return_rate"
FEATURES = (*RFM_FEATURES, Feature.DAYS_SINCE_LAST_ORDER, NOISE)
#: Customers per planted cutoff (the test cutoff's apart) and the first seed, for the searched LightGBM
#: that wins the validation cutoff by luck.
PLANTED_ROWS, PLANTED_TEST, PLANTED_SEED = 150, 5_000, 100


def rfm_frame(n: int, seed: int) -> pd.DataFrame:
    """n customer snapshots whose churn follows a linear rule in frequency, recency, T and monetary value."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(30.0, 700.0, n)
    frequency = rng.poisson(age / 120.0).astype(float)
    recency = np.where(frequency > 0, age * rng.uniform(0.0, 1.0, n), 0.0)
    monetary = np.where(frequency > 0, rng.gamma(2.0, 60.0, n), 0.0)
    logit = -0.4 - 0.5 * frequency + 0.012 * (age - recency) - 0.003 * monetary
    return pd.DataFrame({
        "customer_id": [f"c{seed}-{i}" for i in range(n)],
        Feature.FREQUENCY: frequency,
        Feature.RECENCY: recency,
        Feature.T: age,
        Feature.MONETARY_VALUE: monetary,
        Feature.DAYS_SINCE_LAST_ORDER: age - recency,
        NOISE: rng.uniform(0.0, 1.0, n),
        "churned": (rng.uniform(size=n) < expit(logit)).astype("int64"),
    })


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return {"train": rfm_frame(1_500, 1), "valid": rfm_frame(1_500, 2), "test": rfm_frame(4_000, 3)}


@pytest.fixture(scope="module")
def logistic(frames) -> ChurnModel:
    return ChurnModel(learner=LOGISTIC_RFM, num_threads=1).fit(
        frames["train"], frames["valid"], feature_names=RFM_FEATURES, currency="GBP", horizon_days=90)


@pytest.mark.model
def test_a_linear_truth_in_rfm_chooses_the_logistic_regression(frames):
    lightgbm = ChurnModel(num_threads=1).fit(frames["train"], frames["valid"], feature_names=FEATURES)
    baselines = fit_baselines(frames["train"])
    choice = choose_learner(lightgbm.raw_probability(frames["valid"]), baselines, frames["valid"])
    assert choice.learner == LOGISTIC_RFM, choice.message
    assert choice.logistic_rfm_roc_auc > choice.lightgbm_roc_auc
    assert RFM_BASELINE in choice.message and choice.to_params()["learner"] == LOGISTIC_RFM


@pytest.mark.model
def test_the_logistic_learner_is_the_rfm_baseline_calibrated(logistic, frames):
    baselines = fit_baselines(frames["train"])
    # The same fit as the baseline: the same coefficients, so the same ranking of the test customers.
    np.testing.assert_allclose(logistic.coef_, baselines.rfm[-1].coef_[0], rtol=1e-9)
    np.testing.assert_allclose(logistic.intercept_, baselines.rfm[-1].intercept_[0], rtol=1e-9)
    np.testing.assert_allclose(logistic.raw_probability(frames["test"]), baselines.rfm_probability(frames["test"]),
                               rtol=1e-9)
    # The planted signs: more repeat purchases and larger orders lower churn, a later last purchase too.
    coef = dict(zip(logistic.feature_names_, logistic.coef_))
    assert coef[Feature.FREQUENCY] < 0 and coef[Feature.MONETARY_VALUE] < 0 and coef[Feature.T] > 0
    y = frames["test"]["churned"].to_numpy()
    assert roc_auc_score(y, logistic.predict_proba(frames["test"])) > 0.8
    assert logistic.get_params()["learner"] == LOGISTIC_RFM and logistic.booster_ is None


@pytest.mark.model
def test_its_reasons_name_the_features_that_push_the_probability_most(logistic, frames):
    test = frames["test"].head(500)
    contributions = logistic.feature_contributions(test)
    # Exact for a linear model: coefficient x standardised value, plus the intercept, is the log-odds.
    z = (test[list(RFM_FEATURES)].to_numpy() - logistic.scaler_mean_) / logistic.scaler_scale_
    np.testing.assert_allclose(contributions[list(RFM_FEATURES)].to_numpy(), z * logistic.coef_)
    np.testing.assert_allclose(contributions.sum(axis=1).to_numpy(),
                               np.log(logistic.raw_probability(test) / (1 - logistic.raw_probability(test))))
    out = logistic.predict(test)
    top = contributions[list(RFM_FEATURES)].idxmax(axis=1)
    pushes = contributions[list(RFM_FEATURES)].max(axis=1) > 0
    from training.churn.reasons import reason_text

    for i in np.flatnonzero(pushes.to_numpy())[:50]:
        row = test.iloc[i].to_dict()
        assert out["reason_1"].iloc[i] == reason_text(top.iloc[i], row, currency="GBP", horizon_days=90)
    assert out.loc[~pushes, "reason_1"].isna().all()
    # The longest absent customer's first reason is the time since the last repeat purchase.
    absent = test[Feature.DAYS_SINCE_LAST_ORDER].idxmax()
    assert top.loc[absent] in (Feature.RECENCY, Feature.T)
    assert list(out.columns) == ["churn_probability", "risk_band", "percentile", "reason_1", "reason_2", "reason_3"]
    # One customer scored alone gets the batch row.
    pd.testing.assert_frame_equal(logistic.predict(test.iloc[[7]]), out.iloc[[7]])


@pytest.mark.model
def test_a_missing_value_is_named_for_the_logistic_learner(logistic, frames):
    test = frames["test"].head(20).copy()
    test.loc[3, Feature.MONETARY_VALUE] = np.nan
    with pytest.raises(ChurnInputError, match=r"monetary_value \(1 rows\)"):
        logistic.predict(test)


@pytest.mark.model
def test_the_artefact_round_trip_scores_identically_and_corruption_is_named(logistic, frames):
    artefact = json.loads(json.dumps(logistic.to_dict()))
    assert artefact["settings"]["learner"] == LOGISTIC_RFM and "booster" not in artefact["fitted"]
    again = ChurnModel.from_dict(artefact)
    pd.testing.assert_frame_equal(again.predict(frames["test"]), logistic.predict(frames["test"]))
    assert again.to_dict() == artefact

    def broken(change) -> dict:
        data = copy.deepcopy(artefact)
        change(data)
        return data

    cases = [
        (broken(lambda a: a["fitted"].update(coef=[1.0, 2.0])), r"fitted\.coef must be a list of 4 finite numbers"),
        (broken(lambda a: a["fitted"].update(intercept="x")), r"fitted\.intercept must be a finite number"),
        (broken(lambda a: a["fitted"]["scaler_scale"].__setitem__(0, 0.0)), r"fitted\.scaler_scale"),
        (broken(lambda a: a["fitted"]["scaler_mean"].__setitem__(1, float("nan"))), r"fitted\.scaler_mean"),
        (broken(lambda a: a["fitted"].pop("coef")), r"missing field\(s\) fitted\.coef"),
        (broken(lambda a: a["settings"].update(learner="xgboost")), r"setting learner must be one of"),
    ]
    for data, message in cases:
        with pytest.raises(ChurnArtefactError, match=message):
            ChurnModel.from_dict(data)


@pytest.mark.model
def test_an_artefact_without_a_learner_is_lightgbm(frames):
    lightgbm = ChurnModel(num_threads=1, n_estimators=20).fit(frames["train"], frames["valid"],
                                                             feature_names=FEATURES)
    artefact = json.loads(json.dumps(lightgbm.to_dict()))
    assert artefact["settings"].pop("learner") == "lightgbm"
    again = ChurnModel.from_dict(artefact)
    assert again.learner_ == "lightgbm"
    np.testing.assert_array_equal(again.predict_proba(frames["test"]), lightgbm.predict_proba(frames["test"]))


@pytest.mark.model
def test_the_pyfunc_of_the_logistic_learner_scores_like_the_model(logistic, frames, settings):
    tracking.configure(settings)
    test = frames["test"].head(40).assign(cutoff=pd.Timestamp("2025-01-01"))
    with tracking.start_run(settings, run_name="churn logistic pyfunc"):
        info = log_churn_model(logistic, registered_model_name="rapport-churn-test", input_example=test.head(5))
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    pd.testing.assert_frame_equal(loaded.predict(test), pyfunc_output(logistic.predict(test.set_index("customer_id"))))


# --- the training step ------------------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.slow
def test_the_step_registers_and_tags_the_logistic_regression_when_it_wins(tmp_path, monkeypatch):
    """The store gives the step its windows and cutoffs; the rows at those cutoffs follow the linear
    rule (the data set builder is replaced by one that plants them)."""
    from tests.fixtures_history import synthetic_store
    from training.churn import pipeline
    from training.churn.dataset import ChurnDataset

    settings, con = synthetic_store(tmp_path, 400, 5, now=datetime(2026, 1, 1, tzinfo=timezone.utc))

    def planted(backend, *, cutoffs, horizon_days, lookback_days, time_unit, with_clv, progress):
        parts = [rfm_frame(1_500, 10 + i).assign(cutoff=pd.Timestamp(c).tz_localize(None))
                 for i, c in enumerate(sorted(cutoffs))]
        return ChurnDataset(frame=pd.concat(parts, ignore_index=True), feature_names=FEATURES,
                            cutoffs=tuple(sorted(cutoffs)), horizon_days=horizon_days, lookback_days=lookback_days)

    monkeypatch.setattr(pipeline, "build_dataset", planted)
    result = pipeline.train_churn(con, settings)

    assert result.learner == LOGISTIC_RFM and result.model.learner_ == LOGISTIC_RFM, result.choice.message
    # Judged against the remaining baselines, with LightGBM shown next to it; the RFM baseline is not
    # its own competitor.
    assert list(result.table.index) == [f"{RFM_BASELINE} (served)", "LightGBM",
                                        "days since last purchase"]
    assert result.metrics.name == f"{RFM_BASELINE} (served)"
    assert RFM_BASELINE not in (result.gate.best_baseline or "")
    assert result.gate.eligible, result.gate.reasons
    assert any("ranks the validation cutoff better than LightGBM" in note for note in result.notes)

    client = tracking.configure(settings)
    run = client.get_run(result.run_id)
    assert run.data.tags["churn_learner"] == LOGISTIC_RFM and run.data.params["learner"] == LOGISTIC_RFM
    assert float(run.data.metrics["model_roc_auc"]) == pytest.approx(result.metrics.roc_auc)
    assert "lightgbm_roc_auc" in run.data.metrics
    version = client.get_model_version(pipeline.MODEL_NAME, result.model_version)
    assert version.tags["churn_learner"] == LOGISTIC_RFM

    loaded = mlflow.pyfunc.load_model(f"models:/{pipeline.MODEL_NAME}/{result.model_version}")
    sample = rfm_frame(200, 99)
    pd.testing.assert_frame_equal(loaded.predict(sample),
                                  pyfunc_output(result.model.predict(sample.set_index("customer_id"))))


@pytest.mark.model
@pytest.mark.slow
def test_a_lightgbm_searched_to_win_the_validation_cutoff_does_not_choose_the_learner(tmp_path, monkeypatch):
    """The best of 40 searched configurations on a small validation cutoff ranks it better than the
    regression by luck, and ranks the test cutoff worse: set against the regression, as the choice
    once did, that number served it. The step compares LightGBM with its configured values instead:
    the regression is served and passes its gate."""
    from tests.fixtures_history import synthetic_store
    from training.churn import pipeline
    from training.churn.dataset import ChurnDataset
    from training.churn.search import MAX_TRIALS

    settings, con = synthetic_store(tmp_path, 400, 5, now=datetime(2026, 1, 1, tzinfo=timezone.utc),
                                    train_search_budget_s=600)

    def planted(backend, *, cutoffs, horizon_days, lookback_days, time_unit, with_clv, progress):
        # Small cutoffs to learn from and to validate on, a large one to test on.
        last = max(cutoffs)
        parts = [rfm_frame(PLANTED_TEST if c == last else PLANTED_ROWS, PLANTED_SEED + i)
                 .assign(cutoff=pd.Timestamp(c).tz_localize(None)) for i, c in enumerate(sorted(cutoffs))]
        return ChurnDataset(frame=pd.concat(parts, ignore_index=True), feature_names=FEATURES,
                            cutoffs=tuple(sorted(cutoffs)), horizon_days=horizon_days, lookback_days=lookback_days)

    monkeypatch.setattr(pipeline, "build_dataset", planted)
    result = pipeline.train_churn(con, settings)
    assert result.learner == LOGISTIC_RFM, result.choice.message
    assert result.gate.eligible, result.gate.reasons

    # What the choice once compared: the search's winner (every trial finishes), on the same rows. It
    # ranks the validation cutoff better than the regression, and the test cutoff worse.
    params = tracking.configure(settings).get_run(result.run_id).data.params
    assert int(params["search.trials"]) == MAX_TRIALS
    assert float(params["search.validation_auc"]) > result.choice.logistic_rfm_roc_auc > result.choice.lightgbm_roc_auc
    assert result.table.loc["LightGBM", "ROC AUC"] < result.metrics.roc_auc

    assert "LightGBM with its configured values" in result.choice.message
    assert params["learner"] == LOGISTIC_RFM and params["learner.compared"] == "configured LightGBM vs logistic_rfm"
    assert float(params["validation_roc_auc.lightgbm"]) == pytest.approx(result.choice.lightgbm_roc_auc, abs=1e-6)
    assert float(params["validation_roc_auc.logistic_rfm"]) == pytest.approx(result.choice.logistic_rfm_roc_auc,
                                                                            abs=1e-6)
