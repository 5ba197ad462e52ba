"""Holdout evaluation, the promotion gate, the diagnostic plots and the daily repeat-purchase series.

The models are small stand-ins with closed forms (no fitting), so every expected number below is
computed by hand in the comments:

- ``GammaPoisson(r, alpha)``: purchase rate lambda ~ Gamma(r, alpha) per time unit and no drop-out
  (the NBD model). E[X(t) | frequency f, T] = t (r + f) / (alpha + T); E[X(t)] = r t / alpha;
  every customer is alive. Expected order value (m0 + f m) / (1 + f), m0 = 30.
- ``Poisson(rate)``: every customer buys at ``rate`` per time unit. E[X(t) | ...] = E[X(t)] = rate t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.customer import calibration_holdout
from features.purchases import DAILY_COLUMNS, DAY, REPEAT_PURCHASES, daily_repeat_purchases
from features.schema import Feature, Holdout
from features.store import ibis_backend
from tests.fixtures_history import random_history, store_with, tiny_history
from training.clv.evaluation import (
    BY_FREQUENCY_COLUMNS,
    METRIC_FIELDS,
    NAIVE_BASELINE,
    TABLE_COLUMNS,
    ClvPredictor,
    GateDecision,
    HoldoutEvaluation,
    evaluate_holdout,
    expected_cumulative_repeat_purchases,
    gate,
    holdout_by_frequency,
    holdout_table,
    plausibility_check,
)
from training.clv.plots import (
    plot_calibration_vs_holdout,
    plot_cumulative_transactions,
    plot_frequency_recency_matrix,
    plot_probability_alive_matrix,
)


@dataclass
class GammaPoisson:
    r: float = 1.0
    alpha: float = 10.0
    mean_order_value: float = 30.0
    time_unit_: str = "D"
    kind_: str = "gamma-poisson"

    def expected_purchases(self, t, frequency, recency, T) -> np.ndarray:
        return np.asarray(t, float) * (self.r + np.asarray(frequency, float)) / (self.alpha + np.asarray(T, float))

    def probability_alive(self, frequency, recency, T) -> np.ndarray:
        return np.ones(np.broadcast(np.asarray(frequency), np.asarray(recency), np.asarray(T)).shape)

    def unconditional_expected_purchases(self, t) -> np.ndarray:
        return self.r * np.asarray(t, float) / self.alpha

    def expected_order_value(self, frequency, monetary_value) -> np.ndarray:
        f = np.asarray(frequency, float)
        return (self.mean_order_value + f * np.asarray(monetary_value, float)) / (1 + f)


@dataclass
class Poisson:
    rate: float
    time_unit_: str = "D"
    kind_: str = "poisson"

    def expected_purchases(self, t, frequency, recency, T) -> np.ndarray:
        return self.rate * np.asarray(t, float) * np.ones_like(np.asarray(frequency, float))

    def probability_alive(self, frequency, recency, T) -> np.ndarray:
        return np.ones_like(np.asarray(frequency, float))

    def unconditional_expected_purchases(self, t) -> np.ndarray:
        return self.rate * np.asarray(t, float)

    def expected_order_value(self, frequency, monetary_value) -> np.ndarray:
        return np.asarray(monetary_value, float)


def four_customers() -> pd.DataFrame:
    """A 10-day holdout of four customers.

    customer  f  r   T   m   aov | holdout f, mean spend
    A         0  0   0   0   30  | 1, 40   (born on the calibration end: T = 0, naive rate 0)
    B         2  8   10  20  25  | 3, 25
    C         1  5   20  50  45  | 0, 0
    D         4  30  40  10  12  | 2, 16
    """
    return pd.DataFrame(
        {
            Feature.FREQUENCY: [0.0, 2.0, 1.0, 4.0],
            Feature.RECENCY: [0.0, 8.0, 5.0, 30.0],
            Feature.T: [0.0, 10.0, 20.0, 40.0],
            Feature.MONETARY_VALUE: [0.0, 20.0, 50.0, 10.0],
            Feature.AVG_ORDER_VALUE: [30.0, 25.0, 45.0, 12.0],
            Holdout.FREQUENCY: [1.0, 3.0, 0.0, 2.0],
            Holdout.SPEND: [40.0, 75.0, 0.0, 32.0],
            Holdout.MONETARY_VALUE: [40.0, 25.0, 0.0, 16.0],
            Holdout.DURATION: [10.0] * 4,
        },
        index=pd.Index([11, 12, 13, 14], name="customer_id"),
    )


# --- metrics ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_the_stand_ins_satisfy_the_protocol():
    assert isinstance(GammaPoisson(), ClvPredictor)
    assert isinstance(Poisson(0.1), ClvPredictor)


@pytest.mark.unit
def test_holdout_metrics_and_naive_baseline_on_four_customers():
    e = evaluate_holdout(GammaPoisson(r=1.0, alpha=10.0), four_customers())
    # Model: 10 (1 + f) / (10 + T) = A 10/10 = 1, B 30/20 = 3/2, C 20/30 = 2/3, D 50/50 = 1.
    predicted = np.array([1.0, 1.5, 2 / 3, 1.0])
    actual = np.array([1.0, 3.0, 0.0, 2.0])
    assert (e.n_customers, e.duration, e.time_unit, e.kind) == (4, 10.0, "D", "gamma-poisson")
    assert e.actual_total == 6.0
    assert e.predicted_total == pytest.approx(25 / 6)
    assert e.aggregate_error == pytest.approx(11 / 36)  # |25/6 - 6| / 6
    assert e.mae == pytest.approx(19 / 24)  # (0 + 3/2 + 2/3 + 1) / 4
    assert e.rmse == pytest.approx(math.sqrt(133) / 12)  # sqrt((0 + 9/4 + 4/9 + 1) / 4)
    assert e.correlation == pytest.approx(np.corrcoef(predicted, actual)[0, 1])
    # Naive: f / T x 10 = A 0 (T = 0), B 2, C 0.5, D 1 -> total 3.5.
    assert e.naive_predicted_total == pytest.approx(3.5)
    assert e.naive_aggregate_error == pytest.approx(5 / 12)  # 2.5 / 6
    assert e.naive_mae == pytest.approx(0.875)  # (1 + 1 + 0.5 + 1) / 4
    assert e.naive_rmse == pytest.approx(math.sqrt(3.25 / 4))
    assert e.naive_correlation == pytest.approx(np.corrcoef([0, 2, 0.5, 1], actual)[0, 1])
    # Spend, customers with a holdout purchase (A, B, D): model (30 + f m) / (1 + f) = 30, 70/3, 14
    # vs actual 40, 25, 16 -> errors 10, 5/3, 2. Baseline: A has no repeat purchase -> aov 30;
    # B 20, D 10 -> errors 10, 5, 6.
    assert e.spend_n == 3
    assert e.spend_actual_mean == pytest.approx(27.0)
    assert e.spend_predicted_mean == pytest.approx((30 + 70 / 3 + 14) / 3)
    assert e.spend_mae == pytest.approx(41 / 9)
    assert e.spend_baseline_mae == pytest.approx(7.0)


@pytest.mark.unit
def test_metrics_have_stable_names_and_float_values():
    metrics = evaluate_holdout(GammaPoisson(), four_customers()).to_metrics()
    assert list(metrics) == list(METRIC_FIELDS)
    for name in ("holdout_aggregate_error", "holdout_mae", "holdout_rmse", "holdout_correlation",
                 "naive_holdout_aggregate_error", "naive_holdout_mae", "holdout_spend_mae", "naive_holdout_spend_mae"):
        assert name in metrics
    assert all(type(v) is float for v in metrics.values())
    assert metrics["holdout_mae"] == pytest.approx(19 / 24)
    assert metrics["naive_holdout_mae"] == pytest.approx(0.875)
    assert metrics["holdout_customers"] == 4.0


@pytest.mark.unit
def test_constant_predictions_have_no_correlation_and_no_spend_without_buyers():
    frame = four_customers().assign(**{Holdout.FREQUENCY: 0.0, Holdout.SPEND: 0.0, Holdout.MONETARY_VALUE: 0.0})
    e = evaluate_holdout(Poisson(0.15), frame)
    assert math.isnan(e.correlation) and math.isnan(e.aggregate_error)
    assert e.spend_n == 0 and math.isnan(e.spend_mae) and math.isnan(e.spend_baseline_mae)


@pytest.mark.unit
def test_bad_frames_are_named():
    with pytest.raises(ValueError, match="frequency_holdout"):
        evaluate_holdout(GammaPoisson(), four_customers().drop(columns=[Holdout.FREQUENCY]))
    with pytest.raises(ValueError, match="no customers"):
        evaluate_holdout(GammaPoisson(), four_customers().iloc[:0])
    with pytest.raises(ValueError, match="recency <= T"):
        evaluate_holdout(GammaPoisson(), four_customers().assign(**{Feature.RECENCY: [0.0, 12.0, 5.0, 30.0]}))


# --- gate ------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_a_model_better_than_the_naive_baseline_is_eligible():
    decision = gate(evaluate_holdout(GammaPoisson(r=1.0, alpha=10.0), four_customers()))
    assert isinstance(decision, GateDecision) and decision.eligible
    # 11/36 = 30.6 % vs 5/12 = 41.7 %; MAE 19/24 = 0.792 vs 0.875.
    assert len(decision.reasons) == 2
    assert "30.6%" in decision.reasons[0] and "41.7%" in decision.reasons[0]
    assert "0.792" in decision.reasons[1] and "0.875" in decision.reasons[1]
    assert decision.message.startswith("eligible for promotion")


@pytest.mark.unit
def test_a_model_worse_per_customer_is_not_eligible_even_with_a_perfect_total():
    # 0.15 x 10 = 1.5 for everyone: total 6 = actual (0.0 %), MAE (0.5 + 1.5 + 1.5 + 0.5) / 4 = 1.0 > 0.875.
    decision = gate(evaluate_holdout(Poisson(0.15), four_customers()))
    assert not decision.eligible
    assert decision.reasons == ("per-customer holdout MAE 1.000 is worse than the naive baseline's 0.875",)
    assert decision.message.startswith("not eligible for promotion: per-customer holdout MAE 1.000")


@pytest.mark.unit
def test_a_model_worse_in_aggregate_and_per_customer_says_both():
    # 10 (10 + f) / (10 + T) = 10, 6, 11/3, 2.8 -> total 22.47, error 16.47 / 6 = 274.4 %;
    # MAE (9 + 3 + 11/3 + 0.8) / 4 = 4.117.
    decision = gate(evaluate_holdout(GammaPoisson(r=10.0, alpha=10.0), four_customers()))
    assert not decision.eligible
    aggregate, mae = decision.reasons
    assert "aggregate error 274.4%" in aggregate and "predicted 22.5 vs actual 6" in aggregate
    assert "worse than the naive baseline's 41.7% (predicted 3.5)" in aggregate
    assert "MAE 4.117 is worse than the naive baseline's 0.875" in mae


@pytest.mark.unit
def test_a_holdout_without_purchases_or_with_broken_predictions_is_not_eligible():
    e = evaluate_holdout(GammaPoisson(), four_customers())
    empty = gate(replace(e, actual_total=0.0, aggregate_error=math.nan, naive_aggregate_error=math.nan))
    assert not empty.eligible and "no repeat purchases" in empty.reasons[0]
    broken = gate(replace(e, predicted_total=math.nan, aggregate_error=math.nan, mae=math.nan))
    assert not broken.eligible and len(broken.reasons) == 2
    assert all("not all finite" in reason for reason in broken.reasons)


# --- tables ----------------------------------------------------------------------------------------


@pytest.mark.unit
def test_holdout_table_has_a_row_per_model_and_the_naive_baseline():
    frame = four_customers()
    evaluations = {"nbd": evaluate_holdout(GammaPoisson(), frame), "poisson": evaluate_holdout(Poisson(0.15), frame)}
    table = holdout_table(evaluations)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert table.index.tolist() == ["nbd", "poisson", NAIVE_BASELINE]
    assert table["actual"].tolist() == [6.0, 6.0, 6.0]
    np.testing.assert_allclose(table["predicted"], [25 / 6, 6.0, 3.5])
    np.testing.assert_allclose(table["aggregate_error_pct"], [100 * 11 / 36, 0.0, 100 * 5 / 12])
    np.testing.assert_allclose(table["mae"], [19 / 24, 1.0, 0.875])
    assert math.isnan(table.loc["poisson", "correlation"])
    np.testing.assert_allclose(table["spend_mae"], [41 / 9, (40 + 5 + 6) / 3, 7.0])  # Poisson: own mean m


@pytest.mark.unit
def test_holdout_table_refuses_evaluations_of_different_holdouts():
    a = evaluate_holdout(GammaPoisson(), four_customers())
    b = evaluate_holdout(GammaPoisson(), four_customers().iloc[1:])
    with pytest.raises(ValueError, match="different holdouts"):
        holdout_table({"a": a, "b": b})
    with pytest.raises(ValueError, match="at least one"):
        holdout_table({})


@pytest.mark.unit
def test_holdout_by_frequency_groups_beyond_the_cap():
    table = holdout_by_frequency(GammaPoisson(), four_customers(), max_frequency=2)
    assert list(table.columns) == list(BY_FREQUENCY_COLUMNS)
    # Buckets: 0 = A, 1 = C, 2+ = B (f 2) and D (f 4).
    assert table.index.tolist() == ["0", "1", "2+"]
    assert table["n_customers"].tolist() == [1, 1, 2]
    np.testing.assert_allclose(table["actual"], [1.0, 0.0, 2.5])
    np.testing.assert_allclose(table["predicted"], [1.0, 2 / 3, 1.25])
    np.testing.assert_allclose(table["naive"], [0.0, 0.5, 1.5])


@pytest.mark.unit
@pytest.mark.parametrize(("time_unit", "rate"), [("D", 0.5), ("W", 3.5)])
def test_expected_cumulative_repeat_purchases_by_hand(time_unit, rate):
    # 0.5 purchases a day. One customer born on day 0, two on day 2 (any time of day); at the end of
    # day d a customer born on day b is d + 1 - b days old (as T counts it).
    # Through day 0: 0.5 x 1; day 1: 0.5 x 2; day 2: 0.5 x 3 + 2 x 0.5 x 1; day 3: 0.5 x 4 + 2 x 0.5 x 2.
    model = Poisson(rate, time_unit_=time_unit)
    first = pd.Series(pd.to_datetime(["2024-01-01 09:00", "2024-01-03 10:00", "2024-01-03 23:00", "2024-02-01 08:00"]))
    days = pd.date_range("2024-01-01", "2024-01-04", freq="D")
    np.testing.assert_allclose(expected_cumulative_repeat_purchases(model, first, days), [0.5, 1.0, 2.5, 4.0])
    # Counted from day 2: what was expected through day 1 (1.0) is subtracted.
    np.testing.assert_allclose(expected_cumulative_repeat_purchases(model, first, days[2:]), [1.5, 3.0])
    # Days before anyone is born count nothing.
    earlier = pd.date_range("2023-12-30", "2024-01-01", freq="D")
    np.testing.assert_allclose(expected_cumulative_repeat_purchases(model, first, earlier), [0.0, 0.0, 0.5])


# --- plots -----------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, written: Path) -> None:
    assert written == path and path.exists()
    content = path.read_bytes()
    assert content.startswith(PNG_SIGNATURE)
    assert len(content) > 15_000  # axes, labels, legend and data: far more than an empty canvas


@pytest.mark.unit
def test_calibration_vs_holdout_plot(tmp_path):
    path = tmp_path / "plots" / "calibration_vs_holdout.png"
    assert_png(path, plot_calibration_vs_holdout(GammaPoisson(), four_customers(), path, max_frequency=2))


@pytest.mark.unit
@pytest.mark.parametrize("time_unit", ["D", "W"])
def test_matrix_plots(tmp_path, time_unit):
    model = GammaPoisson(time_unit_=time_unit)
    path = tmp_path / "frequency_recency.png"
    assert_png(path, plot_frequency_recency_matrix(model, path, t=30.0, max_frequency=10, max_T=52.0))
    path = tmp_path / "probability_alive.png"
    assert_png(path, plot_probability_alive_matrix(model, path, rfm=four_customers()))  # bounds from the frame
    many = tmp_path / "long.png"  # more recency steps than columns shown
    assert_png(many, plot_frequency_recency_matrix(model, many, max_frequency=5, max_T=700.0))
    with pytest.raises(ValueError, match="max_frequency and max_T, or rfm"):
        plot_probability_alive_matrix(model, tmp_path / "x.png")


@pytest.mark.unit
def test_cumulative_transactions_plot(tmp_path):
    days = pd.date_range("2024-01-01", periods=60, freq="D")
    daily = pd.DataFrame({DAY: days, REPEAT_PURCHASES: np.arange(60) % 3})
    first = pd.Series(pd.to_datetime(["2023-12-01", "2024-01-05", "2024-01-20"]))
    path = tmp_path / "cumulative.png"
    assert_png(path, plot_cumulative_transactions(GammaPoisson(), first, daily, datetime(2024, 2, 1), path))
    with pytest.raises(ValueError, match="repeat_purchases"):
        plot_cumulative_transactions(GammaPoisson(), first, daily.drop(columns=[REPEAT_PURCHASES]),
                                     datetime(2024, 2, 1), path)


# --- daily repeat purchases ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    con = store_with(tiny_history())
    yield ibis_backend(con)
    con.close()


@pytest.fixture(scope="module")
def random_backend():
    con = store_with(random_history(seed=20240301, n_customers=400))
    yield ibis_backend(con)
    con.close()


@pytest.mark.unit
def test_daily_repeat_purchases_on_the_tiny_history(tiny):
    # Born before 02-01: Alice (01-10; O2 the same day is no repeat) and Carol (2023-12-28). Bob and
    # Dan are born in February. Holdout repeats: Alice 02-05 (O3), 02-20 (O4); Carol 02-29 (O9).
    got = daily_repeat_purchases(tiny, born_before=datetime(2024, 2, 1), start=datetime(2024, 2, 1),
                                 end=datetime(2024, 3, 1))
    assert list(got.columns) == list(DAILY_COLUMNS)
    assert got[DAY].tolist() == list(pd.date_range("2024-02-01", "2024-02-29", freq="D"))
    assert got[REPEAT_PURCHASES].dtype == "int64"
    ones = got.loc[got[REPEAT_PURCHASES] > 0, DAY].dt.strftime("%m-%d").tolist()
    assert ones == ["02-05", "02-20", "02-29"] and got[REPEAT_PURCHASES].sum() == 3
    # Bob's two orders on 02-01 are one birth day, Dan's POST-only order is no purchase: nothing new.
    everyone = daily_repeat_purchases(tiny, born_before=datetime(2024, 3, 1), start=datetime(2024, 2, 1),
                                      end=datetime(2024, 3, 1))
    pd.testing.assert_frame_equal(everyone, got)
    # Until 03-06: Alice's O5 (03-02) counts; O4 counts though it was returned in full on 03-05.
    longer = daily_repeat_purchases(tiny, born_before=datetime(2024, 2, 1), start=datetime(2024, 2, 1),
                                    end=datetime(2024, 3, 6))
    assert len(longer) == 34 and longer[REPEAT_PURCHASES].sum() == 4
    # A cutoff inside a day: the day is shown, purchases after the cutoff are not.
    partial = daily_repeat_purchases(tiny, born_before=datetime(2024, 2, 1), start=datetime(2024, 2, 1),
                                     end=datetime(2024, 2, 20, 11))
    assert partial[DAY].iloc[-1] == pd.Timestamp("2024-02-20") and partial[REPEAT_PURCHASES].sum() == 1
    with pytest.raises(ValueError, match="end"):
        daily_repeat_purchases(tiny, born_before=datetime(2024, 2, 1), start=datetime(2024, 2, 1),
                               end=datetime(2024, 2, 1))


@pytest.mark.unit
def test_daily_repeat_purchases_add_up_to_the_tiny_calibration_holdout(tiny):
    cal_end, hold_end = datetime(2024, 2, 1), datetime(2024, 3, 1)
    ch = calibration_holdout(tiny, cal_end, hold_end)
    holdout = daily_repeat_purchases(tiny, born_before=cal_end, start=cal_end, end=hold_end)
    calibration = daily_repeat_purchases(tiny, born_before=cal_end, start=datetime(2023, 12, 1), end=cal_end)
    assert holdout[REPEAT_PURCHASES].sum() == ch[Holdout.FREQUENCY].sum() == 3
    assert calibration[REPEAT_PURCHASES].sum() == ch[Feature.FREQUENCY].sum() == 0


@pytest.mark.data
@pytest.mark.parametrize("time_unit", ["D", "W"])
def test_daily_repeat_purchases_add_up_to_calibration_holdout(random_backend, time_unit):
    cal_end, hold_end = datetime(2023, 1, 2), datetime(2023, 7, 3)
    ch = calibration_holdout(random_backend, cal_end, hold_end, time_unit=time_unit)
    holdout = daily_repeat_purchases(random_backend, born_before=cal_end, start=cal_end, end=hold_end)
    calibration = daily_repeat_purchases(random_backend, born_before=cal_end, start=datetime(2022, 1, 1), end=cal_end)
    assert len(holdout) == 182 and len(calibration) == 366
    assert ch[Holdout.FREQUENCY].sum() > 300  # a meaningful comparison
    assert holdout[REPEAT_PURCHASES].sum() == ch[Holdout.FREQUENCY].sum()
    assert calibration[REPEAT_PURCHASES].sum() == ch[Feature.FREQUENCY].sum()
    # Split anywhere, the pieces add up to the whole.
    middle = datetime(2023, 4, 1)
    first = daily_repeat_purchases(random_backend, born_before=cal_end, start=cal_end, end=middle)
    second = daily_repeat_purchases(random_backend, born_before=cal_end, start=middle, end=hold_end)
    pd.testing.assert_frame_equal(pd.concat([first, second], ignore_index=True), holdout)


@pytest.mark.data
def test_cumulative_plot_from_the_store(tmp_path, random_backend):
    cal_end, hold_end = datetime(2023, 1, 2), datetime(2023, 7, 3)
    ch = calibration_holdout(random_backend, cal_end, hold_end)
    daily = daily_repeat_purchases(random_backend, born_before=cal_end, start=datetime(2022, 1, 1), end=hold_end)
    path = tmp_path / "cumulative.png"
    assert_png(path, plot_cumulative_transactions(GammaPoisson(r=0.5, alpha=25.0), ch[Feature.FIRST_PURCHASE],
                                                  daily, cal_end, path))


# --- plausibility of the one-order customers' CLV ---------------------------------------------------


def _reference(spend: list[float], frequency: list[int], days: float = 365.0) -> pd.DataFrame:
    return pd.DataFrame({Feature.FREQUENCY: frequency, Holdout.SPEND: spend,
                         Holdout.DURATION: [days] * len(spend)})


@pytest.mark.unit
def test_plausibility_flags_a_one_order_customer_valued_above_what_repeat_customers_spend():
    # 100 repeat customers spent 1..100 over the year (99th percentile 99.01); one-order customers
    # never count in the reference, whatever they spent.
    reference = _reference([*map(float, range(1, 101)), 5_000.0], [1] * 100 + [0])
    features = pd.DataFrame({Feature.FREQUENCY: [0, 0, 0, 2], Feature.HISTORIC_CLV: [49.80, 150.0, 20.0, 10.0]})
    check = plausibility_check(features, [120.0, 160.0, 30.0, 1_000.0], reference, horizon_days=365.0)
    assert check.threshold == pytest.approx(np.quantile(np.arange(1, 101), 0.99))
    assert check.reference_customers == 100 and check.one_order_customers == 3
    # 120 (spent 49.80) is unexplained; 160 (spent 150, above the threshold already) is explained;
    # the repeat customer's 1,000 is not this check's business.
    assert (check.above, check.unexplained) == (2, 1) and not check.plausible
    assert check.largest_one_order_clv == 160.0 and check.own_spend_of_largest == 150.0
    assert check.median_ratio_to_own_spend == pytest.approx(np.median([120 / 49.8, 160 / 150, 30 / 20]))
    assert "1 have not" in check.message and "3 one-order customers" in check.message

    fine = plausibility_check(features, [90.0, 160.0, 30.0, 1_000.0], reference, horizon_days=365.0)
    assert fine.plausible and fine.above == 1


@pytest.mark.unit
def test_plausibility_scales_a_shorter_reference_window_to_the_horizon():
    # Half a year of actual spend, in weeks: doubled to the 52-week horizon.
    reference = _reference([float(v) for v in range(1, 101)], [1] * 100, days=26.0)
    features = pd.DataFrame({Feature.FREQUENCY: [0], Feature.HISTORIC_CLV: [10.0]})
    check = plausibility_check(features, [150.0], reference, horizon_days=364.0, time_unit="W")
    assert check.reference_days == 182.0
    assert check.threshold == pytest.approx(2 * np.quantile(np.arange(1, 101), 0.99))
    assert check.plausible


@pytest.mark.unit
def test_plausibility_without_repeat_customers_or_with_bad_input_says_so():
    features = pd.DataFrame({Feature.FREQUENCY: [0], Feature.HISTORIC_CLV: [10.0]})
    empty = plausibility_check(features, [150.0], _reference([5.0], [0]), horizon_days=365.0)
    assert math.isnan(empty.threshold) and empty.plausible and "could not be checked" in empty.message
    with pytest.raises(ValueError, match="spend_holdout"):
        plausibility_check(features, [1.0], pd.DataFrame({Feature.FREQUENCY: [1]}), horizon_days=365.0)
    with pytest.raises(ValueError, match="2 CLV values for 1 customers"):
        plausibility_check(features, [1.0, 2.0], _reference([5.0], [1]), horizon_days=365.0)
