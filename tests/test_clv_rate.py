"""The historic-rate candidates of the CLV model and P(alive) from a model without BG/NBD's one-order
artefact, on CDNOW (2,357 customers, 39 weeks, durations in weeks):

- ``rate_weight`` 1 serves the naive baseline itself: expected purchases frequency / T x t, the same
  numbers the evaluation's baseline predicts, with Gamma-Gamma spend and no parameter uncertainty in
  the purchases;
- a rate weight w blends: (1 - w) x the purchase model + w x the historic rate, in every output;
- ``alive_kind``: BG/NBD's one-order customers are all at P(alive) = 1 however long ago their order;
  with MBG/NBD fitted alongside they are not, and nothing else changes;
- both travel in the JSON artefact, and an artefact written before they existed still loads.
"""

from __future__ import annotations

import copy
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value

from features.schema import Feature, Holdout
from training.clv.evaluation import evaluate_holdout, naive_holdout_purchases
from training.clv.model import DAYS_PER_MONTH, ClvArtefactError, ClvModel

pytestmark = [pytest.mark.unit, pytest.mark.model]

CUTOFF = datetime(1997, 10, 1)


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    frame = load_cdnow_summary_data_with_monetary_value().astype({"frequency": "float64"})
    frame[Feature.HISTORIC_CLV] = frame["monetary_value"] * frame["frequency"]
    return frame


def _fit(cdnow: pd.DataFrame, **settings) -> ClvModel:
    return ClvModel(time_unit="W", **settings).fit(cdnow, cutoff=CUTOFF, currency="USD")


@pytest.fixture(scope="module")
def bgnbd(cdnow: pd.DataFrame) -> ClvModel:
    return _fit(cdnow)


def test_rate_weight_one_serves_the_naive_baseline_with_gamma_gamma_spend(cdnow, bgnbd):
    naive = _fit(cdnow, rate_weight=1.0)
    scores = naive.predict(cdnow)
    rate = np.where(cdnow["T"] > 0, cdnow["frequency"] / cdnow["T"], 0.0)
    np.testing.assert_allclose(scores["expected_purchases_365d"], rate * 365 / 7, rtol=1e-12)
    # The historic rate has no parameters: its purchase interval has no width.
    np.testing.assert_allclose(scores["expected_purchases_365d_lower"], scores["expected_purchases_365d_upper"])
    # CLV: the rate's purchases month by month, discounted, times Gamma-Gamma's order value.
    months = np.arange(1, 13)
    per_month = rate[:, None] * (DAYS_PER_MONTH / 7) / 1.01 ** months
    np.testing.assert_allclose(scores["clv"], per_month.sum(axis=1) * scores["expected_order_value"], rtol=1e-9)
    pd.testing.assert_series_equal(scores["expected_order_value"], bgnbd.predict(cdnow)["expected_order_value"])
    assert (scores.loc[cdnow["frequency"] == 0, "clv"] == 0).all()
    # The same numbers as the evaluation's naive baseline, on a stand-in holdout of 39 weeks.
    frame = cdnow.assign(**{Holdout.DURATION: 39.0, Holdout.FREQUENCY: cdnow["frequency"],
                            Holdout.MONETARY_VALUE: cdnow["monetary_value"],
                            Feature.AVG_ORDER_VALUE: cdnow["monetary_value"]})
    np.testing.assert_allclose(naive.expected_purchases(39.0, cdnow["frequency"], cdnow["recency"], cdnow["T"]),
                               naive_holdout_purchases(frame), rtol=1e-12)
    evaluation = evaluate_holdout(naive, frame)
    assert evaluation.mae == pytest.approx(evaluation.naive_mae, rel=1e-12)
    assert naive.label_.startswith("naive (historic rate)")


def test_a_rate_weight_blends_every_purchase_output(cdnow, bgnbd):
    blend = _fit(cdnow, rate_weight=0.3)
    model, mixed = bgnbd.predict(cdnow), blend.predict(cdnow)
    rate = np.where(cdnow["T"] > 0, cdnow["frequency"] / cdnow["T"], 0.0)
    for column, days in (("expected_purchases_30d", 30), ("expected_purchases_365d", 365)):
        np.testing.assert_allclose(mixed[column], 0.7 * model[column] + 0.3 * rate * days / 7, rtol=1e-9)
    # The model's share carries the parameter uncertainty: the interval shrinks with it.
    width = model["expected_purchases_365d_upper"] - model["expected_purchases_365d"]
    np.testing.assert_allclose(mixed["expected_purchases_365d_upper"] - mixed["expected_purchases_365d"], 0.7 * width,
                               rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(mixed["probability_alive"], model["probability_alive"])
    np.testing.assert_allclose(blend.unconditional_expected_purchases([10.0, 39.0]),
                               0.7 * bgnbd.unconditional_expected_purchases([10.0, 39.0]))
    assert "rate weight 0.30" in blend.label_


def test_probability_alive_from_mbgnbd_removes_bgnbd_one_order_artefact(cdnow, bgnbd):
    with_alive = _fit(cdnow, alive_kind="mbgnbd")
    own, reported = bgnbd.predict(cdnow), with_alive.predict(cdnow)
    one_order = cdnow["frequency"] == 0
    # CDNOW's one-order customers made their only purchase 27 to 39 weeks before the cutoff; most
    # never buy again. BG/NBD keeps every one of them at exactly 1.
    assert (own.loc[one_order, "probability_alive"] == 1.0).all()
    assert reported.loc[one_order, "probability_alive"].max() < 1.0
    assert reported.loc[one_order, "probability_alive"].median() < 0.5
    # Purchases, CLV and the next order stay BG/NBD's; P(alive) of repeat customers is MBG/NBD's own.
    for column in ("expected_purchases_365d", "clv", "days_to_next_order"):
        pd.testing.assert_series_equal(reported[column], own[column])
    mbgnbd = _fit(cdnow, kind="mbgnbd")
    np.testing.assert_allclose(reported["probability_alive"], mbgnbd.predict(cdnow)["probability_alive"])
    assert with_alive.label_ == "bgnbd, P(alive) from mbgnbd"


def test_rate_weight_and_alive_model_travel_in_the_artefact(cdnow):
    model = _fit(cdnow, rate_weight=0.25, alive_kind="paretonbd")
    loaded = ClvModel.from_dict(model.to_dict())
    pd.testing.assert_frame_equal(loaded.predict(cdnow), model.predict(cdnow))
    assert loaded.label_ == model.label_

    # An artefact written before the two settings existed: the purchase model alone.
    plain = _fit(cdnow)
    old = plain.to_dict()
    for name in ("rate_weight", "alive_kind"):
        del old["settings"][name]
    del old["fitted"]["alive_params"]
    pd.testing.assert_frame_equal(ClvModel.from_dict(old).predict(cdnow), plain.predict(cdnow))

    broken = copy.deepcopy(model.to_dict())
    broken["fitted"]["alive_params"] = None
    with pytest.raises(ClvArtefactError, match=r"fitted\.alive_params \(settings\.alive_kind 'paretonbd'\)"):
        ClvModel.from_dict(broken)


@pytest.mark.parametrize(("setting", "value", "expected"), [
    ("rate_weight", 1.5, r"rate_weight must be a weight in \[0, 1\].*got 1\.5"),
    ("rate_weight", float("nan"), r"rate_weight must be a weight in \[0, 1\]"),
    ("alive_kind", "bgnbd", r"alive_kind must be None or one of mbgnbd, paretonbd .*got 'bgnbd'"),
])
def test_bad_rate_and_alive_settings_are_named(cdnow, setting, value, expected):
    with pytest.raises(ValueError, match=expected):
        ClvModel(time_unit="W", **{setting: value}).fit(cdnow, cutoff=CUTOFF, currency="USD")
