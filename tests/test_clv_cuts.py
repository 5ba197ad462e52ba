"""The CLV step on Online Retail II cut to its last year and its last four months, with the default
candidates: every purchase model is fitted without drop-out there and loses to the naive rate on
the per-customer MAE, so the historic-rate candidates decide. On both the validation split chooses
the blend. On the year it beats the baseline on the holdout too; on the four months it fails the
holdout gate, and the baseline itself is served. Either way a version that passes its gate is
registered.

Cost: about 15 s for the cut and the ingest and 40 to 60 s for the step, per cut.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from features.settings import load_settings
from training.clv.adapter import PURCHASE_MODELS
from training.clv.pipeline import BLEND, NAIVE, VALIDATION, train_clv
from tests.test_real_data_windows import RETAIL, _cut_store

pytestmark = [pytest.mark.data, pytest.mark.model, pytest.mark.slow]


@pytest.mark.skipif(not RETAIL.exists(), reason="the shared Online Retail II file is not beside the project")
@pytest.mark.parametrize(("cut", "since"), [("last four months", "2011-08-10"), ("last year", "2010-12-10")])
def test_a_cut_history_serves_a_clv_model_no_worse_than_the_naive_rate(tmp_path, cut, since):
    small, con = _cut_store(tmp_path, since)
    settings = load_settings(data_dir=small.data_dir)  # the default CLV candidates
    try:
        result = train_clv(con, settings)
    finally:
        con.close()
    table = result.candidates
    naive_mae = result.evaluation.naive_mae
    # The purchase models alone: fitted without drop-out, worse than the naive rate per customer.
    assert set(result.without_dropout) >= set(PURCHASE_MODELS)
    assert all(table.loc[kind, "mae"] > naive_mae for kind in PURCHASE_MODELS)
    assert result.gate.eligible, result.gate.reasons
    assert result.evaluation.mae <= naive_mae
    validation = result.rate_validation
    assert validation.validation_start + timedelta(days=validation.validation_days) == result.calibration_end
    # The blend validates best on both cuts: the holdout only judges it.
    assert result.choice.chosen_on == VALIDATION and result.choice.chosen == BLEND
    assert table.loc[BLEND, "validation_mae"] == table["validation_mae"].min()
    if cut == "last year":
        # Chosen on the validation split (rate weight 0.4), better than both parts on the holdout.
        assert result.kind == BLEND and 0 < result.model.rate_weight_ < 1
        assert result.evaluation.mae < naive_mae
        assert result.evaluation.mae < table.loc[list(PURCHASE_MODELS), "mae"].min()
    else:
        # The Christmas holdout: the blend validated on September-October loses; the baseline is served.
        assert table.loc[BLEND, "mae"] > naive_mae
        assert result.kind == NAIVE and result.serves_baseline is not None
        assert "blend, chosen on validation, failed the holdout gate" in result.serves_baseline
        assert result.evaluation.mae == pytest.approx(naive_mae, rel=1e-12)
