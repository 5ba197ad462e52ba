"""Churn evaluation: metrics on a hand-computed example, the baselines, the gate, calibration and plots.

The ten-customer example (scores from highest to lowest, 1 = churned):

    rank      1    2    3    4    5    6    7    8    9    10
    p        0.9  0.8  0.7  0.6  0.5  0.4  0.3  0.2  0.1  0.05
    churned   1    0    1    1    0    0    1    0    0    0

4 churners, 6 non-churners, base rate 0.4.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from features.schema import Feature
from training.churn.evaluation import (
    BASELINE_METRIC_PREFIXES,
    BASELINE_NAMES,
    CAPTURE_COLUMNS,
    LABEL,
    METRIC_FIELDS,
    P_ALIVE_BASELINE,
    PROBABILITY_ALIVE,
    RECENCY_BASELINE,
    RELIABILITY_COLUMNS,
    RFM_BASELINE,
    RFM_FEATURES,
    TABLE_COLUMNS,
    ChurnGate,
    ClassifierMetrics,
    baseline_metrics,
    baseline_notes,
    baseline_probabilities,
    baseline_scores,
    capture_curve,
    churn_gate,
    classifier_metrics,
    expected_calibration_error,
    fit_baselines,
    importance_table,
    metrics_table,
    reliability_curve,
)
from training.churn.plots import plot_feature_importance, plot_lift, plot_reliability

P10 = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
Y10 = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 0])


# --- metrics ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_metrics_on_ten_customers_by_hand():
    m = classifier_metrics("model", Y10, P10)
    assert (m.name, m.n, m.positives, m.base_rate) == ("model", 10, 4, 0.4)
    # ROC AUC: of the 4 x 6 = 24 (churner, non-churner) pairs, the churner ranks higher in
    # rank 1: 6 (all non-churners below), rank 3: 5 (ranks 5, 6, 8, 9, 10), rank 4: 5, rank 7: 3
    # (ranks 8, 9, 10) -> 19 / 24.
    assert m.roc_auc == pytest.approx(19 / 24)
    # Average precision: precision at each churner's rank, averaged: (1/1 + 2/3 + 3/4 + 4/7) / 4.
    assert m.pr_auc == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 7) / 4)
    # Brier: squared errors .1², .8², .3², .4², .5², .4², .7², .2², .1², .05²
    # = .01 + .64 + .09 + .16 + .25 + .16 + .49 + .04 + .01 + .0025 = 1.8525, / 10.
    assert m.brier == pytest.approx(0.18525)
    # Log loss: -(ln .9 + ln .7 + ln .6 + ln .3 [churners] + ln .2 + ln .5 + ln .6 + ln .8 + ln .9 + ln .95) / 10
    # = (0.10536 + 0.35667 + 0.51083 + 1.20397 + 1.60944 + 0.69315 + 0.51083 + 0.22314 + 0.10536 + 0.05129) / 10.
    assert m.log_loss == pytest.approx(0.537004, abs=1e-6)
    # Top decile: ceil(10 / 10) = 1 customer, rank 1, a churner: churn rate 1 / base rate 0.4 = 2.5;
    # it holds 1 of the 4 churners = 0.25.
    assert m.top_decile_lift == pytest.approx(2.5)
    assert m.top_decile_capture == pytest.approx(0.25)
    # Every customer has a probability of their own; the ECE is that of the reliability curve.
    assert m.distinct_values == len(np.unique(P10))
    assert m.ece == pytest.approx(expected_calibration_error(Y10, P10))


@pytest.mark.unit
def test_ties_are_counted_as_distinct_values_and_a_plain_score_has_no_ece():
    plateaus = np.where(P10 > 0.5, 0.8, 0.2)
    m = classifier_metrics("steps", Y10, plateaus)
    assert m.distinct_values == 2
    # Two bins, one per plateau: ECE = sum over them of share x |churn rate - probability|.
    high = plateaus == 0.8
    by_hand = (high.sum() * abs(Y10[high].mean() - 0.8) + (~high).sum() * abs(Y10[~high].mean() - 0.2)) / 10
    assert m.ece == pytest.approx(by_hand)
    assert math.isnan(classifier_metrics("days", Y10, 100 * P10, is_probability=False).ece)


@pytest.mark.unit
def test_to_metrics_names_are_stable_and_prefixed():
    m = classifier_metrics("model", Y10, P10)
    metrics = m.to_metrics("test")
    assert list(metrics) == [f"test_{name}" for name in METRIC_FIELDS]
    assert metrics["test_roc_auc"] == pytest.approx(19 / 24)
    assert metrics["test_customers"] == 10.0 and metrics["test_churners"] == 4.0
    assert list(m.to_metrics("")) == list(METRIC_FIELDS)
    assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.unit
def test_a_plain_score_ranks_but_has_no_brier_or_log_loss():
    days = 100 * P10  # the same order, not a probability
    m = classifier_metrics("days", Y10, days, is_probability=False)
    assert m.roc_auc == pytest.approx(19 / 24)
    assert m.top_decile_lift == pytest.approx(2.5)
    assert math.isnan(m.brier) and math.isnan(m.log_loss)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classifier_metrics("days", Y10, days)


@pytest.mark.unit
def test_ties_at_the_decile_boundary_are_shared_whatever_the_row_order():
    # Ranks 1 and 2 tied at 0.9 for the single top-decile place; one churns, one does not: the place
    # is shared, 1 x 1/2 = 0.5 churners -> capture 0.5 / 4 = 0.125, lift (0.5 / 1) / 0.4 = 1.25.
    scores = P10.copy()
    scores[1] = 0.9
    m = classifier_metrics("tied", Y10, scores)
    assert m.top_decile_capture == pytest.approx(0.125)
    assert m.top_decile_lift == pytest.approx(1.25)
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(10)
        shuffled = classifier_metrics("tied", Y10[order], scores[order])
        assert (shuffled.top_decile_lift, shuffled.top_decile_capture) == (m.top_decile_lift, m.top_decile_capture)
        assert shuffled.roc_auc == pytest.approx(m.roc_auc)


@pytest.mark.unit
def test_top_decile_rounds_up_and_the_capture_curve_ends_at_everyone():
    # 15 customers: the top decile is ceil(1.5) = 2 customers; 30 customers: exactly 3 (not 4).
    y = np.r_[1, 1, np.zeros(13, dtype=int)]
    m = classifier_metrics("m", y, np.linspace(1, 0, 15))
    assert m.top_decile_capture == pytest.approx(1.0)  # both churners in the top 2
    assert m.top_decile_lift == pytest.approx((2 / 2) / (2 / 15))
    curve = capture_curve(np.r_[np.ones(3, dtype=int), np.zeros(27, dtype=int)], np.linspace(1, 0, 30))
    assert curve["customers"].iloc[0] == 3 and curve["capture"].iloc[0] == pytest.approx(1.0)

    curve = capture_curve(Y10, P10)
    assert list(curve.columns) == list(CAPTURE_COLUMNS)
    # Cumulative churners among the top 1..10 (ranks 1, 3, 4, 7 churn): 1, 1, 2, 3, 3, 3, 4, 4, 4, 4.
    assert curve["churners"].tolist() == [1, 1, 2, 3, 3, 3, 4, 4, 4, 4]
    assert curve["capture"].iloc[-1] == 1.0 and curve["lift"].iloc[-1] == pytest.approx(1.0)
    assert curve["lift"].iloc[0] == pytest.approx(2.5)


@pytest.mark.unit
def test_one_class_makes_ranking_metrics_undefined_and_bad_input_is_named():
    m = classifier_metrics("m", np.zeros(10, dtype=int), P10)
    assert math.isnan(m.roc_auc) and math.isnan(m.pr_auc) and math.isnan(m.top_decile_lift)
    assert m.brier == pytest.approx(float(np.mean(P10**2)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        classifier_metrics("m", np.r_[Y10[:-1], 2], P10)
    with pytest.raises(ValueError, match="NaN or infinite"):
        classifier_metrics("m", Y10, np.r_[P10[:-1], np.nan])
    with pytest.raises(ValueError, match="expected 10 scores"):
        classifier_metrics("m", Y10, P10[:5])


# --- baselines --------------------------------------------------------------------------------------


def synthetic_customers(n: int, seed: int) -> pd.DataFrame:
    """Customers whose churn rises with days since the last order and falls with frequency."""
    rng = np.random.default_rng(seed)
    frequency = rng.poisson(2.0, n).astype(float)
    T = rng.uniform(30, 365, n)
    recency = np.where(frequency > 0, T * rng.uniform(0.1, 1.0, n), 0.0)
    days = T - recency
    logit = -1.0 + 0.01 * days - 0.4 * frequency
    churned = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            Feature.FREQUENCY: frequency,
            Feature.RECENCY: recency,
            Feature.T: T,
            Feature.MONETARY_VALUE: np.where(frequency > 0, rng.gamma(6, 8, n), 0.0),
            Feature.DAYS_SINCE_LAST_ORDER: days,
            PROBABILITY_ALIVE: 1 / (1 + np.exp(logit)) * rng.uniform(0.8, 1.0, n),
            LABEL: churned,
        }
    )


@pytest.mark.unit
def test_baselines_are_fitted_on_the_training_rows_only():
    train, test = synthetic_customers(2000, seed=1), synthetic_customers(500, seed=2)
    baselines = fit_baselines(train)
    assert baselines.n_train == 2000 and baselines.train_positives == int(train[LABEL].sum())

    # The same pipeline fitted by hand on the training rows gives the same probabilities.
    by_hand = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
        train[list(RFM_FEATURES)].to_numpy(), train[LABEL].to_numpy()
    )
    expected = by_hand.predict_proba(test[list(RFM_FEATURES)].to_numpy())[:, 1]
    np.testing.assert_allclose(baselines.rfm_probability(test), expected)

    before = baseline_probabilities(baselines, test)
    flipped = test.assign(**{LABEL: 1 - test[LABEL]})
    after = baseline_probabilities(baselines, flipped)
    for name in BASELINE_NAMES:
        np.testing.assert_array_equal(before[name], after[name])
    # ... while their metrics on the flipped labels do change (AUC becomes 1 - AUC).
    assert baseline_metrics(baselines, flipped)[RFM_BASELINE].roc_auc == pytest.approx(
        1 - baseline_metrics(baselines, test)[RFM_BASELINE].roc_auc
    )
    assert set(baselines.to_params()) == {
        *(f"{BASELINE_METRIC_PREFIXES[RFM_BASELINE]}_coef_{c}" for c in RFM_FEATURES),
        f"{BASELINE_METRIC_PREFIXES[RFM_BASELINE]}_intercept",
        f"{BASELINE_METRIC_PREFIXES[RECENCY_BASELINE]}_coef_{Feature.DAYS_SINCE_LAST_ORDER}",
        f"{BASELINE_METRIC_PREFIXES[RECENCY_BASELINE]}_intercept",
    }


@pytest.mark.unit
def test_baseline_metrics_rank_days_raw_and_calibrate_them_on_train():
    train, test = synthetic_customers(2000, seed=3), synthetic_customers(500, seed=4)
    baselines = fit_baselines(train)
    metrics = baseline_metrics(baselines, test)
    assert list(metrics) == list(BASELINE_NAMES)
    y, days = test[LABEL].to_numpy(), test[Feature.DAYS_SINCE_LAST_ORDER].to_numpy()

    recency = metrics[RECENCY_BASELINE]
    assert recency.roc_auc == pytest.approx(roc_auc_score(y, days))
    probability = baselines.recency_probability(test)
    assert recency.brier == pytest.approx(brier_score_loss(y, probability))
    assert recency.log_loss == pytest.approx(log_loss(y, probability))
    assert metrics[P_ALIVE_BASELINE].roc_auc == pytest.approx(roc_auc_score(y, 1 - test[PROBABILITY_ALIVE]))
    assert metrics[RFM_BASELINE].roc_auc > 0.6  # the planted signal is found
    assert all(m.n == 500 for m in metrics.values())

    scores = baseline_scores(baselines, test)
    np.testing.assert_array_equal(scores[RECENCY_BASELINE], days)
    assert baselines.scores(test).keys() == scores.keys()
    curves = baselines.reliability_curves(test)
    assert list(curves) == list(BASELINE_NAMES)
    pd.testing.assert_frame_equal(curves[RFM_BASELINE], reliability_curve(y, baselines.rfm_probability(test)))
    assert "logistic fit" in baseline_notes(baselines, test)[0]


@pytest.mark.unit
def test_p_alive_baseline_is_skipped_with_a_note_when_empty():
    train, test = synthetic_customers(500, seed=5), synthetic_customers(200, seed=6)
    baselines = fit_baselines(train)

    empty = test.assign(**{PROBABILITY_ALIVE: np.nan})
    assert list(baseline_metrics(baselines, empty)) == [RECENCY_BASELINE, RFM_BASELINE]
    assert any("skipped" in note and "NaN" in note for note in baseline_notes(baselines, empty))
    assert P_ALIVE_BASELINE not in baseline_probabilities(baselines, empty)
    assert P_ALIVE_BASELINE not in baselines.reliability_curves(empty)

    missing = test.drop(columns=PROBABILITY_ALIVE)
    assert P_ALIVE_BASELINE not in baseline_metrics(baselines, missing)
    assert any("no clv_probability_alive column" in note for note in baseline_notes(baselines, missing))

    partial = test.copy()
    partial.loc[:49, PROBABILITY_ALIVE] = np.nan
    assert baseline_metrics(baselines, partial)[P_ALIVE_BASELINE].n == 150
    assert any("150 of 200" in note for note in baseline_notes(baselines, partial))
    assert baselines.reliability_curves(partial)[P_ALIVE_BASELINE]["count"].sum() == 150


@pytest.mark.unit
def test_fit_baselines_names_what_is_wrong():
    train = synthetic_customers(100, seed=7)
    with pytest.raises(ValueError, match="lacks column.*monetary_value"):
        fit_baselines(train.drop(columns=Feature.MONETARY_VALUE))
    with pytest.raises(ValueError, match=r"recency \(1 rows\)"):
        fit_baselines(train.assign(**{Feature.RECENCY: np.r_[np.nan, train[Feature.RECENCY].iloc[1:]]}))
    with pytest.raises(ValueError, match="churners and non-churners"):
        fit_baselines(train.assign(**{LABEL: 0}))


# --- gate and tables --------------------------------------------------------------------------------


def metrics_with_auc(name: str, auc: float) -> ClassifierMetrics:
    return ClassifierMetrics(name, 1000, 200, 0.2, auc, 0.5, 0.12, 0.4, 2.5, 0.25)


@pytest.mark.unit
def test_gate_passes_a_model_that_beats_the_best_baseline_and_says_by_how_much():
    baselines = {
        RFM_BASELINE: metrics_with_auc(RFM_BASELINE, 0.75),
        RECENCY_BASELINE: metrics_with_auc(RECENCY_BASELINE, 0.70),
        P_ALIVE_BASELINE: metrics_with_auc(P_ALIVE_BASELINE, math.nan),
    }
    decision = churn_gate(metrics_with_auc("LightGBM", 0.80), baselines)
    assert isinstance(decision, ChurnGate)
    assert decision.eligible and decision.best_baseline == RFM_BASELINE
    assert decision.margin == pytest.approx(0.05)
    text = decision.message
    assert text.startswith("eligible for promotion")
    assert "0.800" in text and "0.750" in text and "+0.050" in text and RFM_BASELINE in text
    assert "days since last purchase 0.700" in text
    assert decision.to_metrics() == {"gate_eligible": 1.0, "gate_roc_auc_margin": pytest.approx(0.05)}


@pytest.mark.unit
def test_gate_fails_a_model_that_does_not_beat_the_best_baseline():
    baselines = {
        RFM_BASELINE: metrics_with_auc(RFM_BASELINE, 0.75),
        RECENCY_BASELINE: metrics_with_auc(RECENCY_BASELINE, 0.78),
    }
    decision = churn_gate(metrics_with_auc("LightGBM", 0.76), baselines)
    assert not decision.eligible and decision.best_baseline == RECENCY_BASELINE
    assert decision.margin == pytest.approx(-0.02)
    assert "-0.020" in decision.message and "falls short of the best baseline by 0.020" in decision.message

    tie = churn_gate(metrics_with_auc("LightGBM", 0.78), baselines)
    assert not tie.eligible and tie.margin == 0.0 and "ties" in tie.message

    undefined = churn_gate(metrics_with_auc("LightGBM", math.nan), baselines)
    assert not undefined.eligible and math.isnan(undefined.margin)

    alone = churn_gate(metrics_with_auc("LightGBM", 0.9), {})
    assert not alone.eligible and alone.best_baseline is None


@pytest.mark.unit
def test_metrics_table_has_the_model_first_then_the_baselines():
    baselines = {
        RFM_BASELINE: metrics_with_auc(RFM_BASELINE, 0.75),
        RECENCY_BASELINE: metrics_with_auc(RECENCY_BASELINE, 0.70),
    }
    table = metrics_table(metrics_with_auc("LightGBM", 0.8), baselines)
    assert list(table.index) == ["LightGBM", RFM_BASELINE, RECENCY_BASELINE]
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert table.loc["LightGBM", "ROC AUC"] == 0.8 and table.loc[RFM_BASELINE, "lift@10%"] == 2.5
    assert (table.dtypes == "float64").all()
    with pytest.raises(ValueError, match="also the name of a baseline"):
        metrics_table(metrics_with_auc(RFM_BASELINE, 0.8), baselines)


@pytest.mark.unit
def test_importance_table_sorts_by_gain_with_shares():
    table = importance_table(pd.Series({"frequency": 10.0, "days_since_last_order": 30.0, "T": 0.0, "recency": 10.0}))
    assert list(table.index) == ["days_since_last_order", "frequency", "recency", "T"]
    assert table["share"].tolist() == [0.6, 0.2, 0.2, 0.0]
    with pytest.raises(ValueError, match="finite gains"):
        importance_table(pd.Series({"a": -1.0}))


# --- calibration ------------------------------------------------------------------------------------


@pytest.mark.unit
def test_reliability_curve_by_hand():
    curve = reliability_curve(Y10, P10, n_bins=5)
    assert list(curve.columns) == list(RELIABILITY_COLUMNS)
    # Five quantile bins of two customers each, from the lowest probabilities:
    # (0.05, 0.1) -> mean 0.075, churned 0/2; (0.2, 0.3) -> 0.25, 1/2; (0.4, 0.5) -> 0.45, 0/2;
    # (0.6, 0.7) -> 0.65, 2/2; (0.8, 0.9) -> 0.85, 1/2.
    np.testing.assert_allclose(curve["mean_predicted"], [0.075, 0.25, 0.45, 0.65, 0.85])
    np.testing.assert_allclose(curve["observed_rate"], [0.0, 0.5, 0.0, 1.0, 0.5])
    assert curve["count"].tolist() == [2] * 5
    # ECE = 2/10 x (0.075 + 0.25 + 0.45 + 0.35 + 0.35) = 0.2 x 1.475.
    assert expected_calibration_error(Y10, P10, n_bins=5) == pytest.approx(0.295)


@pytest.mark.unit
def test_tied_probabilities_never_straddle_two_bins():
    p = np.r_[np.full(6, 0.2), np.full(4, 0.7)]  # what isotonic calibration produces: a few steps
    curve = reliability_curve(Y10, p, n_bins=10)
    assert curve["count"].tolist() == [6, 4]
    np.testing.assert_allclose(curve["mean_predicted"], [0.2, 0.7])
    # Churners among the first six (ranks 1..6 of Y10: 1, 0, 1, 1, 0, 0) and the last four (1, 0, 0, 0).
    np.testing.assert_allclose(curve["observed_rate"], [0.5, 0.25])
    assert reliability_curve(Y10, np.full(10, 0.4))["count"].tolist() == [10]


@pytest.mark.unit
def test_ece_is_small_when_calibrated_and_large_when_not():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.0, 1.0, 20_000)
    calibrated = (rng.uniform(size=p.size) < p).astype(int)
    assert expected_calibration_error(calibrated, p) < 0.02
    curve = reliability_curve(calibrated, p)
    # Same bins and rates as scikit-learn's quantile calibration curve.
    observed, predicted = calibration_curve(calibrated, p, n_bins=10, strategy="quantile")
    np.testing.assert_allclose(curve["observed_rate"], observed)
    np.testing.assert_allclose(curve["mean_predicted"], predicted)

    # Over-confident: the true churn probability is p², so the gap averages E|p - p²| = 1/6.
    miscalibrated = (rng.uniform(size=p.size) < p**2).astype(int)
    assert expected_calibration_error(miscalibrated, p) == pytest.approx(1 / 6, abs=0.02)


# --- plots ------------------------------------------------------------------------------------------


def assert_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.unit
def test_each_plot_writes_a_png(tmp_path: Path):
    train, test = synthetic_customers(2000, seed=8), synthetic_customers(1000, seed=9)
    baselines = fit_baselines(train)
    y = test[LABEL].to_numpy()
    model = np.clip(baselines.rfm_probability(test) * 0.7 + 0.3 * (test[Feature.DAYS_SINCE_LAST_ORDER] / 400), 0, 1)

    curves = {"LightGBM (calibrated)": reliability_curve(y, model)}
    curves.update({name: reliability_curve(y, p) for name, p in baseline_probabilities(baselines, test).items()})
    assert_png(plot_reliability(curves, tmp_path / "reliability.png"))

    scores = {"LightGBM (calibrated)": np.asarray(model), **baseline_scores(baselines, test)}
    assert_png(plot_lift(y, scores, tmp_path / "nested" / "lift.png"))

    importance = pd.Series(np.arange(25, 0, -1, dtype=float) ** 2, index=[f"feature_{i}" for i in range(25)])
    assert_png(plot_feature_importance(importance, tmp_path / "importance.png", top=20))
