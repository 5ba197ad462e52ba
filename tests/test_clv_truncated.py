"""CLV on a history cut at a date (left-truncated): every customer who was buying before the cut
starts at their first purchase after it, so old customers look new and nobody is visibly gone. The
drop-out parameters then run to their bound (BG/NBD's a, Pareto/NBD's s towards 0): the data show no
drop-out to estimate. Such a fit is accepted in its no-drop-out limit, the NBD, and named so; a fit
that fails even there is still refused with its reasons."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from features.schema import Feature, Holdout
from training.clv.adapter import NO_DROPOUT, ClvFitError, FittedParams, fit_purchase_model
from training.clv.evaluation import evaluate_holdout
from training.clv.model import ClvModel

pytestmark = [pytest.mark.model]

CALIBRATION_DAYS, HOLDOUT_DAYS = 240, 120


def left_truncated(seed: int, n: int, r: float, alpha: float) -> pd.DataFrame:
    """Calibration/holdout frame of ``n`` persons buying as Poisson processes with rates
    lambda ~ Gamma(r, rate alpha) per day since long before the record starts (no drop-out); only
    the first CALIBRATION_DAYS + HOLDOUT_DAYS days are recorded, so a person's first recorded
    purchase stands as their first. Persons without a purchase in the calibration days are unseen."""
    rng = np.random.default_rng(seed)
    span = CALIBRATION_DAYS + HOLDOUT_DAYS
    rows = []
    for rate in rng.gamma(r, 1 / alpha, n):
        times = np.cumsum(rng.exponential(1 / rate, int(rate * span * 3) + 20))
        times = times[times < span]
        calibration, holdout = times[times < CALIBRATION_DAYS], times[times >= CALIBRATION_DAYS]
        if calibration.size == 0:
            continue
        first, x = np.floor(calibration[0]), calibration.size - 1
        rows.append({
            Feature.FREQUENCY: float(x), Feature.RECENCY: float(np.floor(calibration[-1]) - first),
            Feature.T: float(CALIBRATION_DAYS - first), Feature.MONETARY_VALUE: 20.0 if x else 0.0,
            Feature.AVG_ORDER_VALUE: 20.0, Holdout.FREQUENCY: float(holdout.size),
            Holdout.SPEND: 20.0 * holdout.size, Holdout.MONETARY_VALUE: 20.0 if holdout.size else 0.0,
            Holdout.DURATION: float(HOLDOUT_DAYS),
        })
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def truncated() -> pd.DataFrame:
    return left_truncated(7, 1_500, r=1.0, alpha=60.0)


@pytest.mark.parametrize("kind", ["bgnbd", "mbgnbd", "paretonbd"])
def test_a_left_truncated_history_fits_without_drop_out_and_beats_the_naive_mae(truncated, kind):
    model = ClvModel(kind=kind, time_unit="D").fit(truncated, cutoff=datetime(2025, 1, 1))
    params = model.purchase_params_
    # The full fit was refused (a drop-out parameter ran to its bound or was not identified) ...
    assert params.without_dropout and params.label == f"{kind} without drop-out (NBD)"
    assert set(params.fixed) == set(NO_DROPOUT[kind]) and " after: " in params.message
    assert not params.retried
    # ... and the NBD limit recovers the purchase rates' mean r / alpha of the persons seen (those
    # with a purchase in the calibration days, so above the planted 1/60 a day).
    rate = truncated[Feature.FREQUENCY].sum() / truncated[Feature.T].sum()
    assert params.values[0] / params.values[1] == pytest.approx(rate, rel=0.1)
    errors = params.standard_errors()
    assert all(errors[name] == 0 for name in params.fixed)
    assert 0 < errors["r"] < params.values[0] and 0 < errors["alpha"] < params.values[1]
    # Nobody leaves: every customer is alive.
    scores = model.predict(truncated.assign(historic_clv=0.0))
    assert scores["probability_alive"].min() > 0.999
    evaluation = evaluate_holdout(model, truncated)
    assert evaluation.mae < 0.99 * evaluation.naive_mae
    assert evaluation.aggregate_error < 0.1


def test_the_no_drop_out_limit_survives_the_artefact_and_older_artefacts_still_load(truncated):
    params = fit_purchase_model("bgnbd", truncated[Feature.FREQUENCY], truncated[Feature.RECENCY],
                                truncated[Feature.T])
    data = params.to_dict()
    assert data["fixed"] == ["a", "b"] and FittedParams.from_dict(data) == params
    older = {k: v for k, v in data.items() if k != "fixed"}
    assert FittedParams.from_dict(older).fixed == ()
    with pytest.raises(ValueError, match="fixed parameters must be among"):
        FittedParams.from_dict({**data, "fixed": ["s"]})


def test_data_that_reject_no_drop_out_are_still_refused_with_the_reasons():
    # Everyone bought once, 30 days ago: even the NBD sends r to 0 (the rates are not identified
    # from nobody's repeat purchases); both reasons are named.
    n = 200
    with pytest.raises(ClvFitError) as caught:
        fit_purchase_model("bgnbd", np.zeros(n), np.zeros(n), np.full(n, 30.0))
    error = caught.value
    assert "penalizer 0.001" in str(error) and "without drop-out: " in str(error)
    assert error.reason is not None and "; without drop-out: " in error.reason


def test_a_fit_with_visible_drop_out_is_not_replaced_by_the_limit():
    # Planted BG/NBD with drop-out (CDNOW-like parameters, in weeks) recorded from each person's
    # first purchase: the full fit converges and is kept.
    rng = np.random.default_rng(11)
    n, horizon = 2_000, 39.0
    lam, p = rng.gamma(0.25, 1 / 4.0, n), rng.beta(0.8, 2.4, n)
    birth = rng.uniform(0, 12, n)
    frequency, recency = np.zeros(n), np.zeros(n)
    for i in range(n):
        t, x = birth[i], 0
        while True:
            t += rng.exponential(1 / lam[i])
            if t >= horizon:
                break
            x += 1
            recency[i] = t - birth[i]
            if rng.random() < p[i]:
                break
        frequency[i] = x
    params = fit_purchase_model("bgnbd", frequency, recency, horizon - birth)
    assert not params.without_dropout and params.fixed == () and params.label == "bgnbd"


def test_a_skip_names_each_candidate_and_why_it_could_not_be_fitted(tmp_path, monkeypatch):
    # A real store, but a calibration period in which everyone bought exactly once: no candidate can
    # be fitted, not even without drop-out; the skip says which, why, and what may help.
    from features.settings import load_settings
    from features.windows import HistoryTooShort
    from tests.fixtures_history import random_history, store_with
    from training.clv import pipeline

    con = store_with(random_history(seed=20240301, n_customers=400))
    settings = load_settings(data_dir=tmp_path / "state")
    n = 200
    once = pd.DataFrame({Feature.FREQUENCY: np.zeros(n), Feature.RECENCY: np.zeros(n), Feature.T: np.full(n, 30.0),
                         Feature.MONETARY_VALUE: np.zeros(n), Feature.HISTORIC_CLV: np.full(n, 20.0)})
    monkeypatch.setattr(pipeline, "calibration_holdout", lambda *args, **kwargs: once)
    with pytest.raises(HistoryTooShort) as caught:
        pipeline.train_clv(con, settings)
    message = str(caught.value)
    assert message.startswith("clv skipped: no purchase model (bgnbd, mbgnbd, paretonbd) could be fitted on the ")
    for kind in ("bgnbd", "mbgnbd", "paretonbd"):
        assert f"{kind}: " in message
    assert message.count("; without drop-out: ") == 3 and "clv.holdout_days" in message
