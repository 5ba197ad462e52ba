"""Windows chosen from the data (features.windows): the auto formulas on the histories a retailer
brings (a weekly grocer's four months, a wholesaler's two years), explicit values winning, every
history above the minimum giving a usable churn split, the skip below it, and the horizon travelling
from the churn data set into the model, its reasons and the model list."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from features.schema import Feature
from features.store import ibis_backend
from features.windows import (
    MIN_REPEAT_CUSTOMERS,
    MIN_SPAN_DAYS,
    HistoryStats,
    HistoryTooShort,
    churn_cutoffs,
    churn_windows,
    clv_windows,
    cutoff_grid,
    history_stats,
    recommend_windows,
    select_cutoffs,
)
from training.churn.errors import ChurnArtefactError
from training.churn.model import ChurnModel
from training.churn.reasons import reason_text, reason_texts
from training.promotion import windows_text
from tests.fixtures_history import TINY_AS_OF, store_with, tiny_history

START = datetime(2024, 1, 1, 8, 30)


def stats(days: float, gap: float, *, repeat: int = 2_000, customers: int = 5_000) -> HistoryStats:
    return HistoryStats(first_sale=START, last_sale=START + timedelta(days=days), customers=customers,
                        repeat_customers=repeat, median_days_between_purchases=gap)


def churn_auto(history: HistoryStats, max_cutoffs: int = 12, **explicit):
    values = {"horizon_days": "auto", "lookback_days": "auto", "cutoff_spacing": "auto", **explicit}
    return churn_windows(history, max_cutoffs=max_cutoffs, **values)


def embargoed(cutoffs: list[datetime], horizon: int) -> bool:
    """Test = the last; validation a horizon before it; every training cutoff a horizon before that."""
    *train, valid, test = cutoffs
    window = timedelta(days=horizon)
    return bool(train) and valid + window <= test and all(c + window <= valid for c in train)


# --- the auto formulas ----------------------------------------------------------------------------


@pytest.mark.unit
def test_a_weekly_grocer_with_four_months_gets_a_short_horizon_and_weekly_cutoffs():
    history = stats(121, 7.0)
    churn = churn_auto(history)
    # 3 x 7 = 21 days (a shopper who usually buys weekly has left after three missed weeks).
    assert churn["horizon_days"] == 21
    assert churn["lookback_days"] == 37  # 121 - 4 x 21: what the history leaves before the label windows
    assert churn["cutoff_spacing"] == 7 and "monthly cutoffs would give 0" in churn.chosen["cutoff_spacing"].why
    cutoffs = churn_cutoffs(churn, 12)
    assert len(cutoffs) >= 3 + 2 and embargoed(cutoffs, 21)
    assert min(cutoffs) >= datetime(2024, 1, 1) + timedelta(days=37)  # the whole lookback is in the data
    rec = recommend_windows(history, test_days="auto", label_days="auto", half_life_days="auto")
    assert (rec["test_days"], rec["label_days"], rec["half_life_days"]) == (20, 20, 60.0)
    assert clv_windows(history, holdout_days="auto")["holdout_days"] == 40


@pytest.mark.unit
def test_a_two_year_wholesaler_keeps_the_fixed_windows_of_a_long_history():
    history = stats(738, 50.0)
    churn = churn_auto(history)
    assert (churn["horizon_days"], churn["lookback_days"], churn["cutoff_spacing"]) == (90, 365, "monthly")
    cutoffs = churn_cutoffs(churn, 12)
    assert all(c.day == 1 for c in cutoffs) and embargoed(cutoffs, 90)
    rec = recommend_windows(history, test_days="auto", label_days="auto", half_life_days="auto")
    assert (rec["test_days"], rec["label_days"], rec["half_life_days"]) == (90, 90, 365.0)
    assert clv_windows(history, holdout_days="auto")["holdout_days"] == 183


@pytest.mark.unit
def test_one_year_of_history_caps_the_horizon_at_a_fifth_of_it():
    churn = churn_auto(stats(364, 57.0))
    assert churn["horizon_days"] == 70  # 3 x 57 = 171 -> 90, at most week(364 / 5) = 70
    assert "a fifth of the 364-day history" in churn.chosen["horizon_days"].why
    assert churn["lookback_days"] == 84
    cutoffs = churn_cutoffs(churn, 12)
    # Weekly: the monthly grid leaves a single training cutoff; the weekly one fills max_cutoffs.
    assert churn["cutoff_spacing"] == 7 and len(cutoffs) == 12 and embargoed(cutoffs, 70)


@pytest.mark.unit
def test_explicit_values_win_and_say_so():
    history = stats(738, 7.0)
    churn = churn_auto(history, horizon_days=60, lookback_days=200, cutoff_spacing=14)
    assert (churn["horizon_days"], churn["lookback_days"], churn["cutoff_spacing"]) == (60, 200, 14)
    assert all(c.why.startswith("set (churn.") for c in churn.chosen.values())
    rec = recommend_windows(history, test_days=30, label_days="auto", half_life_days=None)
    assert (rec["test_days"], rec["label_days"], rec["half_life_days"]) == (30, 90, None)
    assert rec.chosen["label_days"].auto and not rec.chosen["test_days"].auto
    assert clv_windows(history, holdout_days=100)["holdout_days"] == 100


@pytest.mark.unit
@hypothesis_settings(max_examples=300, deadline=None)
@given(days=st.floats(MIN_SPAN_DAYS, 1_500), gap=st.floats(0.0, 600.0), hour=st.integers(0, 23),
       max_cutoffs=st.integers(3, 24))
def test_every_history_above_the_minimum_gets_an_embargoed_churn_split(days, gap, hour, max_cutoffs):
    history = HistoryStats(first_sale=datetime(2023, 3, 5, hour), last_sale=datetime(2023, 3, 5, hour)
                           + timedelta(days=days), customers=1_000, repeat_customers=500,
                           median_days_between_purchases=gap)
    churn = churn_auto(history, max_cutoffs)
    horizon, lookback = churn["horizon_days"], churn["lookback_days"]
    assert 14 <= horizon <= 90 and horizon <= lookback <= 365
    cutoffs = churn_cutoffs(churn, max_cutoffs)
    assert 3 <= len(cutoffs) <= max_cutoffs and embargoed(cutoffs, horizon)
    data_end = datetime.combine(history.last_sale.date() + timedelta(days=1), datetime.min.time())
    assert cutoffs[-1] + timedelta(days=horizon) <= data_end
    assert cutoffs[0] >= datetime.combine(history.first_sale.date(), datetime.min.time()) + timedelta(days=lookback)
    rec = recommend_windows(history, test_days="auto", label_days="auto", half_life_days="auto")
    assert rec["test_days"] + 2 * rec["label_days"] <= days
    assert 2 * clv_windows(history, holdout_days="auto")["holdout_days"] <= days


# --- below the minimum: skipped, with the reason ---------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("step", ["clv", "churn", "recommend"])
def test_a_history_too_short_skips_every_step_naming_the_minimum_and_what_the_data_have(step):
    resolve = {
        "clv": lambda h: clv_windows(h, holdout_days="auto"),
        "churn": lambda h: churn_auto(h),
        "recommend": lambda h: recommend_windows(h, test_days="auto", label_days="auto", half_life_days="auto"),
    }[step]
    with pytest.raises(HistoryTooShort, match=rf"^{step} skipped: .*at least {MIN_SPAN_DAYS} days.* have 45 ") as short:
        resolve(stats(45, 7.0))
    assert short.value.step == step
    with pytest.raises(HistoryTooShort, match=rf"at least {MIN_REPEAT_CUSTOMERS} repeat customers.* have 40 of"):
        resolve(stats(300, 7.0, repeat=40))


@pytest.mark.unit
def test_windows_set_by_hand_that_do_not_fit_skip_the_step_naming_the_setting():
    one_year = stats(364, 57.0)
    # The defaults of old (H 90, a year of lookback) on one year: the failure the project used to raise.
    with pytest.raises(HistoryTooShort, match=r"gives 0 such cutoffs\. Set churn.horizon_days / "
                                              r"churn.lookback_days to auto or shorter"):
        churn_auto(one_year, horizon_days=90, lookback_days=365)
    with pytest.raises(HistoryTooShort, match=r"need 270 days.* has 121\. Set recommend.test_days / "
                                              r"recommend.label_days to auto"):
        recommend_windows(stats(121, 7.0), test_days=90, label_days=90, half_life_days="auto")
    with pytest.raises(HistoryTooShort, match=r"366 days in all.* has 121\. Set clv.holdout_days to auto"):
        clv_windows(stats(121, 7.0), holdout_days=183)


# --- cutoffs ------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_cutoff_grids_by_hand():
    first, last = datetime(2024, 1, 10, 15), datetime(2024, 6, 20, 9)  # data end 2024-06-21 00:00
    monthly = cutoff_grid(first, last, horizon_days=30, lookback_days=40, spacing="monthly")
    assert monthly == [datetime(2024, m, 1) for m in (3, 4, 5)]  # from 02-19 (10 Jan + 40) to 05-22
    weekly = cutoff_grid(first, last, horizon_days=30, lookback_days=40, spacing=7)
    assert weekly[-1] == datetime(2024, 5, 22) and weekly[0] >= datetime(2024, 2, 19)
    assert all(b - a == timedelta(days=7) for a, b in zip(weekly, weekly[1:])) and len(weekly) == 14
    assert cutoff_grid(first, last, horizon_days=90, lookback_days=90, spacing="monthly") == []
    with pytest.raises(ValueError, match="churn.cutoff_spacing"):
        cutoff_grid(first, last, horizon_days=30, lookback_days=40, spacing=0)
    # Test, the validation cutoff a horizon before it, then the latest training cutoffs before that.
    assert select_cutoffs(weekly, 30, 4) == [datetime(2024, 3, 6), datetime(2024, 3, 13), datetime(2024, 4, 17),
                                              datetime(2024, 5, 22)]
    # Three weeks of cutoffs hold no validation cutoff a 30-day horizon before the test: no split.
    assert select_cutoffs(weekly[-4:], 30, 12) == [weekly[-1]]


@pytest.mark.data
def test_history_stats_by_hand():
    con = store_with(tiny_history())
    try:
        backend = ibis_backend(con)
        before = history_stats(backend, before=TINY_AS_OF)
        # Before the cutoff: Alice buys on 01-10, 02-05, 02-20 (41 days / 2 gaps), Carol on 2023-12-28
        # and 02-29 (63 days); Bob and Dan buy on one day only (Dan's postage-only order is no purchase).
        assert (before.customers, before.repeat_customers) == (4, 2)
        assert before.median_days_between_purchases == pytest.approx((20.5 + 63) / 2)
        assert (before.first_sale, before.last_sale) == (datetime(2023, 12, 28, 11), datetime(2024, 2, 29, 23, 59, 59))
        everything = history_stats(backend)
        # Alice adds 03-02 (52 days / 3), Dan 03-01 (14 days after 02-16).
        assert (everything.customers, everything.repeat_customers) == (4, 3)
        assert everything.median_days_between_purchases == pytest.approx(52 / 3)
        assert everything.last_sale == datetime(2024, 3, 2, 10)
        with pytest.raises(ValueError, match="no sale before 2020-01-01"):
            history_stats(backend, before=datetime(2020, 1, 1))
    finally:
        con.close()


# --- the horizon in every output ---------------------------------------------------------------------


@pytest.mark.unit
def test_windows_are_logged_and_listed():
    churn = churn_auto(stats(121, 7.0))
    params = {k: str(v) for k, v in churn.to_params().items()}
    assert params["window.horizon_days"] == "21" and params["window.horizon_days.why"].startswith("auto: 3 x")
    assert params["window.median_days_between_purchases"] == "7.0" and params["window.history_days"] == "121.0"
    assert windows_text(params) == "cutoff_spacing 7 (auto), horizon_days 21 (auto), lookback_days 37 (auto)"
    assert any(line.startswith("horizon_days = 21 (auto: ") for line in churn.lines())
    assert windows_text({"window.holdout_days": "100", "window.holdout_days.why": "set (clv.holdout_days)"}) == \
        "holdout_days 100 (set)"


@pytest.mark.unit
def test_the_reasons_name_the_churn_horizon():
    row = {Feature.DAYS_SINCE_LAST_ORDER: 40.0, Feature.AVG_DAYS_BETWEEN_ORDERS: 7.0, Feature.N_ORDERS: 9.0}
    assert reason_text(Feature.DAYS_SINCE_LAST_ORDER, row, horizon_days=21) == \
        "no order for 40 days (usually every 7; churn horizon 21 days)"
    single = {Feature.DAYS_SINCE_LAST_ORDER: 40.0, Feature.N_ORDERS: 1.0}
    assert reason_text(Feature.DAYS_SINCE_LAST_ORDER, single, horizon_days=21) == \
        "no order for 40 days (only one order so far; churn horizon 21 days)"
    assert reason_text(Feature.DAYS_SINCE_LAST_ORDER, row) == "no order for 40 days (usually every 7)"
    # Other sentences do not repeat it; the batch path writes the same words.
    assert reason_text(Feature.N_ORDERS, row, horizon_days=21) == "9 orders so far"
    columns = {name: [value, value] for name, value in row.items()}
    assert reason_texts(Feature.DAYS_SINCE_LAST_ORDER, columns, [0, 1], horizon_days=21) == \
        ["no order for 40 days (usually every 7; churn horizon 21 days)"] * 2


@pytest.mark.model
def test_the_churn_artefact_carries_the_horizon_and_the_reasons_use_it():
    from tests.test_churn_model import FEATURES, churn_frame

    train, _ = churn_frame(3_000, 1)
    valid, _ = churn_frame(1_500, 2)
    model = ChurnModel(seed=3, n_estimators=30).fit(train, valid, feature_names=FEATURES, horizon_days=21,
                                                    lookback_days=37)
    state = json.loads(json.dumps(model.to_dict()))
    assert state["windows"] == {"horizon_days": 21, "lookback_days": 37}
    loaded = ChurnModel.from_dict(state)
    assert (loaded.horizon_days_, loaded.lookback_days_) == (21, 37)
    reasons = loaded.predict(valid.head(300))[["reason_1", "reason_2", "reason_3"]].stack()
    days = [r for r in reasons if isinstance(r, str) and r.startswith("no order for")]
    assert days and all(r.endswith("churn horizon 21 days)") for r in days)
    # An artefact from before the windows travelled says nothing: the horizon is unknown, not made up.
    old = {k: v for k, v in state.items() if k != "windows"}
    assert ChurnModel.from_dict(old).horizon_days_ is None
    with pytest.raises(ChurnArtefactError, match=r"windows\.horizon_days must be a whole number of days"):
        ChurnModel.from_dict({**state, "windows": {"horizon_days": 0, "lookback_days": 37}})
    with pytest.raises(ValueError, match="horizon_days"):
        ChurnModel(n_estimators=10).fit(train, valid, feature_names=FEATURES, horizon_days=-3)
