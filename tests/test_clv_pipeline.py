"""The CLV training step end to end on generated data: candidates, gate, MLflow run, registered
pyfunc that scores like the fitted model, and the ``rapport train`` command."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.customer import customer_features
from features.schema import Feature
from features.settings import load_settings
from features.store import ibis_backend
from training import tracking
from training.clv.adapter import PURCHASE_MODELS
from training.clv.evaluation import HoldoutEvaluation
from training.clv import pipeline
from training.clv.pipeline import (
    BLEND,
    HOLDOUT,
    MODEL_NAME,
    NAIVE,
    RATE_WEIGHTS,
    SOLE_CANDIDATE,
    TIE_TOLERANCE,
    VALIDATION,
    VALIDATION_MAE,
    WITHOUT_ONE_ORDER_ARTEFACT,
    RateValidation,
    choose,
    choose_candidate,
    train_clv,
)
from tests.fixtures_history import History, line, store_with, synthetic_store

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
    assert set(result.candidates.index) >= {"bgnbd", BLEND, NAIVE, "naive (historic rate)"}
    assert result.gate.eligible, result.gate.reasons  # planted BG/NBD data: the model beats the naive rate
    assert result.evaluation.aggregate_error < 0.05
    # Planted BG/NBD truth: the purchase model is right, so the validation split gives the historic
    # rate little weight and a purchase model is served, not the naive rate.
    assert result.kind in PURCHASE_MODELS
    validation = result.rate_validation
    assert validation is not None and validation.validation_days == result.windows["holdout_days"]
    assert validation.validation_start + timedelta(days=validation.validation_days) == result.calibration_end
    assert validation.blend_weight <= 0.2
    assert min(min(maes) for maes in validation.mae.values()) < validation.naive_mae
    assert result.candidates.loc[NAIVE, "mae"] > result.candidates.loc[result.kind, "mae"]
    # Whichever purchase model is served, a one-order customer is not certainly alive.
    assert result.model.label_.startswith(result.kind)
    assert result.model.alive_params_ is not None or result.kind in WITHOUT_ONE_ORDER_ARTEFACT
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
    assert run.data.metrics["one_order_probability_alive_median"] < 1.0
    assert run.data.params["rate_weight"] == "0.0"
    assert run.data.metrics["validation.blend_weight"] == validation.blend_weight
    assert "one-order customers" in run.data.tags["plausibility"]
    assert run.data.tags["gate.eligible"] == "true"
    # Chosen on the validation split: every candidate's validation MAE logged and in the table, the
    # chosen one the lowest of them (or a model without the one-order artefact within 1 %).
    choice = result.choice
    assert choice.chosen_on == VALIDATION and choice.served == result.kind
    assert set(choice.validation_mae) == {*PURCHASE_MODELS, BLEND, NAIVE}
    assert choice.validation_mae[NAIVE] == validation.naive_mae
    assert all(choice.validation_mae[kind] == validation.mae[kind][0] for kind in PURCHASE_MODELS)
    lowest = min(choice.validation_mae.values())
    assert choice.validation_mae[choice.chosen] <= lowest * (1 + TIE_TOLERANCE)
    assert choice.chosen == min(choice.validation_mae, key=choice.validation_mae.get) or (
        choice.chosen in WITHOUT_ONE_ORDER_ARTEFACT)
    for name, mae in choice.validation_mae.items():
        assert run.data.metrics[f"validation_mae.{name}"] == pytest.approx(mae)
        assert result.candidates.loc[name, VALIDATION_MAE] == pytest.approx(mae)
    assert result.candidates.loc["naive (historic rate)", VALIDATION_MAE] == validation.naive_mae
    assert run.data.params["chosen_on"] == "validation" and run.data.params["validation_choice"] == choice.chosen
    assert run.data.tags["choice"].startswith(f"{choice.chosen} chosen on the validation split")
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/calibration_vs_holdout.png", "plots/cumulative_transactions.png"} <= artifacts
    assert str(settings.mlflow_dir) in tracking.tracking_uri(settings)

    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{result.model_version}")
    features = customer_features(ibis_backend(con), result.cutoff).head(50)
    served = loaded.predict(features)
    own = result.model.predict(features)
    pd.testing.assert_series_equal(served["clv"], own["clv"], check_names=False)
    pd.testing.assert_series_equal(served["probability_alive"], own["probability_alive"], check_names=False)
    # No one-order customer quiet for over a year is certainly alive, whichever model is served.
    everyone = customer_features(ibis_backend(con), result.cutoff)
    lapsed = (everyone[Feature.FREQUENCY] == 0) & (everyone[Feature.DAYS_SINCE_LAST_ORDER] > 365)
    assert lapsed.sum() > 100
    assert result.model.predict(everyone).loc[lapsed, "probability_alive"].max() < 0.999

    again = train_clv(con, settings)
    assert int(again.model_version) == int(result.model_version) + 1


def _regular_buyers(n: int, seed: int) -> History:
    """Customers who buy like clockwork, each at their own period (5 to 100 days, log-uniform), from
    a random phase of it when the record starts on 2025-01-01, for 360 days, none leaving: the
    customer's own rate is the truth, and neither Poisson purchases nor a Gamma spread of rates is."""
    rng = np.random.default_rng(seed)
    h = History()
    h.items.append({"item_id": "I1", "name": "I1", "category": "home", "price": 10.0, "active": True,
                    "is_product": True})
    start = datetime(2025, 1, 1, 9)
    for c in range(n):
        key = f"k{c}"
        h.identity.append({"key_hash": key, "key_type": "account", "customer_id": c + 1})
        period = float(np.exp(rng.uniform(np.log(5.0), np.log(100.0))))
        day, k = rng.uniform(0.0, period), 0
        while day < 360:
            h.lines.append(line(f"L{c}-{k}", f"O{c}-{k}", "web", start + timedelta(days=float(day)), key, "I1",
                                int(rng.integers(1, 4)), 10.0))
            day, k = day + period, k + 1
    return h


def test_regular_buyers_are_served_their_historic_rate(tmp_path):
    con = store_with(_regular_buyers(600, seed=7))
    settings = load_settings(data_dir=tmp_path / "state")
    result = train_clv(con, settings)
    table = result.candidates
    # The rate candidates win on the validation split, and so on the holdout: the weight goes to the rate.
    assert result.kind in (BLEND, NAIVE)
    assert result.rate_validation.blend_weight >= 0.5
    assert table.loc[result.kind, "mae"] < min(table.loc[kind, "mae"] for kind in PURCHASE_MODELS)
    assert result.gate.eligible, result.gate.reasons
    # Served with Gamma-Gamma spend and a purchase model's P(alive); CLV is the rate's purchases times spend.
    scores = result.model.predict(customer_features(ibis_backend(con), result.cutoff))
    assert scores["clv"].gt(0).all() and scores["probability_alive"].between(0, 1).all()


def test_without_a_validation_split_the_choice_falls_back_to_the_holdout_and_says_so(tmp_path, monkeypatch):
    def unsplittable(*args, **kwargs):
        raise ValueError("the 1-day calibration period is too short to split into a fit and a validation part")

    monkeypatch.setattr(pipeline, "validate_rate_candidates", unsplittable)
    con = store_with(_regular_buyers(600, seed=7))
    settings = load_settings(data_dir=tmp_path / "state")
    result = train_clv(con, settings)
    table = result.candidates
    # Only the purchase models are candidates (blend and naive need the validation split), and the
    # holdout chooses among them: the lowest MAE among those passing the gate.
    assert result.rate_validation is None
    assert {name for name, why in result.failed_candidates if why.startswith("not validated: the 1-day")} == {
        BLEND, NAIVE}
    assert set(table.index) == {*PURCHASE_MODELS, "naive (historic rate)"}
    assert table[VALIDATION_MAE].isna().all()
    choice = result.choice
    assert choice.chosen_on == HOLDOUT and choice.chosen == choice.served == result.kind
    naive = table.loc["naive (historic rate)"]
    passing = {kind: table.loc[kind, "mae"] for kind in PURCHASE_MODELS
               if table.loc[kind, "mae"] <= naive["mae"] and table.loc[kind, "aggregate_error_pct"] <= naive[
                   "aggregate_error_pct"]}
    assert result.kind == pipeline._lowest(passing or table.loc[list(PURCHASE_MODELS), "mae"].to_dict())
    assert "optimistic" in choice.message and "too short to split" in choice.message

    run = tracking.configure(settings).get_run(result.run_id)
    assert run.data.params["chosen_on"] == "holdout" and run.data.params["validation_choice"] == result.kind
    assert run.data.tags["choice"] == choice.message
    assert not any(name.startswith("validation_mae.") for name in run.data.metrics)


def _evaluation(mae: float, aggregate: float, *, naive_mae: float = 1.0) -> HoldoutEvaluation:
    """A holdout evaluation with the given MAE and aggregate error, next to a naive baseline with
    ``naive_mae`` and an aggregate error of 20 %."""
    return HoldoutEvaluation(
        n_customers=100, duration=30.0, actual_total=100.0, predicted_total=100 * (1 - aggregate),
        aggregate_error=aggregate, mae=mae, rmse=mae, correlation=0.5, naive_predicted_total=80.0,
        naive_aggregate_error=0.2, naive_mae=naive_mae, naive_rmse=naive_mae, naive_correlation=0.4, spend_n=10,
        spend_actual_mean=1.0, spend_predicted_mean=1.0, spend_mae=0.1, spend_baseline_mae=0.1, time_unit="D",
        kind="bgnbd")


@pytest.mark.unit
def test_choose_prefers_a_model_without_the_one_order_artefact_when_it_is_as_good():
    def E(mae):  # every one passes the gate
        return _evaluation(mae, 0.1, naive_mae=2.0)

    # Within 1 % of BG/NBD's MAE, a model that lets one-order customers be inactive wins.
    assert choose({"bgnbd": E(1.0), "paretonbd": E(1.009)}) == "paretonbd"
    assert choose({"bgnbd": E(1.0), "mbgnbd": E(1.008), "paretonbd": E(1.004)}) == "paretonbd"
    assert choose({"bgnbd": E(1.0), "mbgnbd": E(1.003), "paretonbd": E(1.2)}) == "mbgnbd"
    # Further away, the lowest MAE wins, BG/NBD included.
    assert choose({"bgnbd": E(1.0), "paretonbd": E(1.02)}) == "bgnbd"
    assert choose({"bgnbd": E(1.2), "paretonbd": E(1.0)}) == "paretonbd"
    assert choose({"bgnbd": E(1.0)}) == "bgnbd"


@pytest.mark.unit
def test_choose_serves_the_best_candidate_that_passes_the_gate():
    evaluation = _evaluation  # the naive baseline: MAE 1.0, aggregate error 20 %

    # The lowest MAE but a larger total error than the baseline fails the gate: the naive rate is served.
    assert choose({"bgnbd": evaluation(0.95, 0.3), NAIVE: evaluation(1.0, 0.2)}) == NAIVE
    assert choose({"bgnbd": evaluation(0.95, 0.1), NAIVE: evaluation(1.0, 0.2)}) == "bgnbd"
    # When nothing passes, the lowest MAE is still the one registered (and the run says it failed).
    assert choose({"bgnbd": evaluation(1.1, 0.3), BLEND: evaluation(1.2, 0.3)}) == "bgnbd"
    assert RATE_WEIGHTS[0] == 0.0 and RATE_WEIGHTS[-1] == 1.0


@pytest.mark.unit
def test_the_candidate_is_chosen_on_validation_even_when_another_wins_the_holdout():
    E = _evaluation  # every candidate passes the gate: naive baseline MAE 1.0, aggregate error 20 %
    evaluations = {"bgnbd": E(0.95, 0.1), "paretonbd": E(0.94, 0.1), BLEND: E(0.96, 0.1), NAIVE: E(1.0, 0.2)}
    validation = {"bgnbd": 1.30, "paretonbd": 1.32, BLEND: 1.20, NAIVE: 1.40}
    # The holdout alone would pick Pareto/NBD, by a little; the validation split picks the blend.
    assert choose(evaluations) == "paretonbd"
    choice = choose_candidate(evaluations, validation)
    assert (choice.chosen, choice.served, choice.chosen_on) == (BLEND, BLEND, VALIDATION)
    assert choice.validation_mae == validation
    assert choice.message.startswith("blend chosen on the validation split (validation MAE 1.2000, the lowest of 4)")
    assert "holdout numbers are for information" in choice.message
    # A validation MAE of a candidate that was not fitted on the calibration period does not count.
    assert choose_candidate({k: evaluations[k] for k in ("bgnbd", NAIVE)}, validation).chosen == "bgnbd"


@pytest.mark.unit
def test_the_tie_rule_applies_on_the_validation_split():
    E = _evaluation
    evaluations = {"bgnbd": E(0.90, 0.1), "mbgnbd": E(0.95, 0.1), "paretonbd": E(0.93, 0.1), BLEND: E(0.9, 0.1),
                   NAIVE: E(1.0, 0.2)}

    def chosen(**validation: float) -> str:
        return choose_candidate({k: evaluations[k] for k in validation}, validation).chosen

    # MBG/NBD within 1 % of BG/NBD on validation wins, whatever the holdout says.
    assert chosen(bgnbd=1.0, mbgnbd=1.008) == "mbgnbd"
    assert chosen(bgnbd=1.0, mbgnbd=1.008, paretonbd=1.004) == "paretonbd"
    assert chosen(bgnbd=1.0, mbgnbd=1.02) == "bgnbd"
    # A blend at weight 0 or 1 ties its base model or the naive rate exactly: the simpler one is chosen.
    assert chosen(bgnbd=1.0, blend=1.0, naive=1.3) == "bgnbd"
    assert chosen(bgnbd=1.2, blend=1.0, naive=1.0) == NAIVE
    assert chosen(bgnbd=1.2, blend=0.99, naive=1.0) == BLEND


@pytest.mark.unit
def test_a_validated_choice_that_fails_the_holdout_gate_serves_the_naive_baseline():
    E = _evaluation
    # BG/NBD validates best but misses the holdout total (30 % vs the baseline's 20 %); the blend
    # would pass, but the holdout does not choose: the baseline itself is served.
    evaluations = {"bgnbd": E(0.9, 0.3), BLEND: E(0.95, 0.1), NAIVE: E(1.0, 0.2)}
    choice = choose_candidate(evaluations, {"bgnbd": 1.0, BLEND: 1.05, NAIVE: 1.1})
    assert (choice.chosen, choice.served, choice.chosen_on) == ("bgnbd", NAIVE, VALIDATION)
    assert "bgnbd fails the holdout gate (holdout aggregate error 30.0%" in choice.message
    assert choice.message.endswith("the naive baseline is served")
    # Without the naive candidate the chosen one is registered, and the gate keeps it from promotion.
    alone = choose_candidate({k: evaluations[k] for k in ("bgnbd", BLEND)}, {"bgnbd": 1.0, BLEND: 1.05})
    assert alone.chosen == alone.served == "bgnbd"
    # Chosen on validation and passing: served as it is.
    assert choose_candidate(evaluations, {"bgnbd": 1.1, BLEND: 1.05, NAIVE: 1.1}).served == BLEND


@pytest.mark.unit
def test_without_validation_the_holdout_chooses_and_the_choice_says_so():
    E = _evaluation
    evaluations = {"bgnbd": E(0.9, 0.1), "paretonbd": E(0.95, 0.1)}
    choice = choose_candidate(evaluations, None, not_validated="the 3-day calibration period is too short")
    assert (choice.chosen, choice.served, choice.chosen_on) == ("bgnbd", "bgnbd", HOLDOUT)
    assert choice.validation_mae == {}
    assert "chosen on the holdout" in choice.message and "optimistic" in choice.message
    assert "the 3-day calibration period is too short" in choice.message
    # A kind that failed on the validation split is not chosen, even when the holdout likes it best.
    partial = choose_candidate(evaluations, {"paretonbd": 1.0}, not_validated="bgnbd: did not converge")
    assert (partial.chosen, partial.chosen_on) == ("paretonbd", VALIDATION)
    assert "bgnbd not chosen: no validation MAE (bgnbd: did not converge)" in partial.message
    # One candidate: nothing to choose.
    sole = choose_candidate({"bgnbd": evaluations["bgnbd"]}, None)
    assert (sole.chosen, sole.served, sole.chosen_on) == ("bgnbd", "bgnbd", SOLE_CANDIDATE)
    with pytest.raises(ValueError, match="at least one"):
        choose_candidate({}, None)


@pytest.mark.unit
def test_every_candidate_reads_its_validation_mae_off_the_split():
    weights = len(RATE_WEIGHTS)
    bgnbd = tuple(1.0 - 0.01 * i for i in range(weights))  # 1.0 alone, falling with the rate's weight
    paretonbd = tuple(0.9 + 0.001 * i for i in range(weights))
    validation = RateValidation(
        validation_start=datetime(2025, 1, 1), validation_days=90, n_customers=100, naive_mae=0.8,
        mae={"bgnbd": bgnbd, "paretonbd": paretonbd}, blend_kind="bgnbd", blend_weight=RATE_WEIGHTS[15],
        naive_kind="paretonbd", failed=(("mbgnbd", "did not converge"),))
    maes = validation.candidate_mae(["bgnbd", "mbgnbd", "paretonbd", BLEND, NAIVE])
    assert maes == {"bgnbd": 1.0, "paretonbd": 0.9, BLEND: bgnbd[15], NAIVE: 0.8}


def test_rapport_train_only_clv_with_a_cutoff(store, monkeypatch):
    from rapport.cli import app

    settings, con = store
    monkeypatch.setenv("RAPPORT_DATA_DIR", str(settings.data_dir))
    con.close()  # the command opens the store itself
    out = CliRunner().invoke(app, ["train", "--only", "clv", "--cutoff", "2025-07-01"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "rapport-clv" in out.output and "2025-07-01" in out.output
    assert "served: " in out.output and "blend" in out.output and "naive" in out.output  # the candidates' rows
    assert "validation MAE" in out.output and "choice: " in out.output and "(chosen, served)" in out.output
    bad = CliRunner().invoke(app, ["train", "--only", "nothing"])
    assert bad.exit_code != 0 and "clv" in bad.output
