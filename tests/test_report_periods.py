"""Revenue per calendar period and channel (``features.report.revenue_by_period``).

Expected values on the tiny history (``fixtures_history.tiny_history``) are computed by hand from
its product orders; postage lines (L2, and O10 which is postage only) are never orders:

    order  channel      time (UTC)           customer  gross  refund (booked)
    O8     store        2023-12-28 11:00     Carol 3   20
    O1     web          2024-01-10 10:00     Alice 1   40
    O2     store        2024-01-10 18:00     Alice 1    8     (10 - 2 discount)
    O6     web guest    2024-02-01 15:00     Bob 2     42     (MYSTERY 30 + LAMP 12)
    O7     marketplace  2024-02-01 20:00     Bob 2     20     20 (02-03)
    O3     app          2024-02-05 09:30     Alice 1   45     15 (02-10)
    O12    store        2024-02-10 14:00     anonymous 40
    O13    app          2024-02-16 10:00     Dan 4     20
    O4     web          2024-02-20 12:00     Alice 1   20     20 (03-05)
    O9     store        2024-02-29 23:59:59  Carol 3   15
    O11    web          2024-03-01 00:00     Dan 4     10
    O5     web          2024-03-02 10:00     Alice 1   20
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest

from features.report import PERIOD, PERIOD_COLUMNS, PERIOD_FREQUENCIES, kpi_report, revenue_by_period
from features.schema import CHANNELS, Col
from features.store import ibis_backend
from tests.fixtures_history import TINY_AS_OF, random_history, store_with, tiny_history

W, A, S, M = CHANNELS  # web, app, store, marketplace


@pytest.fixture(scope="module")
def tiny():
    con = store_with(tiny_history())
    yield ibis_backend(con)
    con.close()


def _frame(rows: list[tuple]) -> pd.DataFrame:
    """Expected rows: (period, channel, customers, orders, revenue, gross_revenue, refunds)."""
    df = pd.DataFrame(rows, columns=list(PERIOD_COLUMNS))
    df[PERIOD] = pd.to_datetime(df[PERIOD]).astype("datetime64[ns]")
    return df.astype({"customers": "int64", "orders": "int64", "revenue": "float64",
                      "gross_revenue": "float64", "refunds": "float64"})


def _assert_rows(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == list(PERIOD_COLUMNS)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_dtype=False,
                                  check_index_type=False, rtol=1e-12)


# Month by month over the whole store: every return counts, whenever it was booked.
#   2023-12 store: O8 -> 1 customer, 1 order, 20.
#   2024-01 web: O1 40; store: O2 8.
#   2024-02 web: O6 42 + O4 20 = 62 gross, O4's 20 refunded (03-05) -> 42 net, Bob and Alice.
#           app: O3 45 + O13 20 = 65 gross, 15 refunded -> 50, Alice and Dan.
#           store: O9 15 + O12 40 (anonymous) = 55, 2 orders but 1 identified customer (Carol).
#           marketplace: O7 20, fully refunded -> 0 net, 1 order.
#   2024-03 web: O11 10 + O5 20 = 30, Dan and Alice.
MONTHLY_ALL = [
    ("2023-12-01", W, 0, 0, 0.0, 0.0, 0.0),
    ("2023-12-01", A, 0, 0, 0.0, 0.0, 0.0),
    ("2023-12-01", S, 1, 1, 20.0, 20.0, 0.0),
    ("2023-12-01", M, 0, 0, 0.0, 0.0, 0.0),
    ("2024-01-01", W, 1, 1, 40.0, 40.0, 0.0),
    ("2024-01-01", A, 0, 0, 0.0, 0.0, 0.0),
    ("2024-01-01", S, 1, 1, 8.0, 8.0, 0.0),
    ("2024-01-01", M, 0, 0, 0.0, 0.0, 0.0),
    ("2024-02-01", W, 2, 2, 42.0, 62.0, 20.0),
    ("2024-02-01", A, 2, 2, 50.0, 65.0, 15.0),
    ("2024-02-01", S, 1, 2, 55.0, 55.0, 0.0),
    ("2024-02-01", M, 1, 1, 0.0, 20.0, 20.0),
    ("2024-03-01", W, 2, 2, 30.0, 30.0, 0.0),
    ("2024-03-01", A, 0, 0, 0.0, 0.0, 0.0),
    ("2024-03-01", S, 0, 0, 0.0, 0.0, 0.0),
    ("2024-03-01", M, 0, 0, 0.0, 0.0, 0.0),
]


@pytest.mark.unit
def test_monthly_revenue_by_channel_on_the_tiny_history_matches_hand_computed_values(tiny):
    _assert_rows(revenue_by_period(tiny), _frame(MONTHLY_ALL))


@pytest.mark.unit
def test_the_end_of_the_window_drops_later_orders_and_later_returns(tiny):
    # Before 03-01 00:00: O11 (exactly at the end) and O5 are out, and O4's return booked on 03-05
    # has not happened yet, so February's web revenue is its full 62.
    expected = [row for row in MONTHLY_ALL if row[0] != "2024-03-01"]
    expected[8] = ("2024-02-01", W, 2, 2, 62.0, 62.0, 0.0)
    _assert_rows(revenue_by_period(tiny, end=TINY_AS_OF), _frame(expected))


@pytest.mark.unit
def test_the_start_of_the_window_drops_earlier_orders_and_takes_aware_times(tiny):
    # [02-01, 03-01) given as aware times in UTC+1: the same instants one hour later on the clock.
    plus_one = timezone(timedelta(hours=1))
    got = revenue_by_period(tiny, start=datetime(2024, 2, 1, 1, tzinfo=plus_one),
                            end=datetime(2024, 3, 1, 1, tzinfo=plus_one))
    _assert_rows(got, _frame([
        ("2024-02-01", W, 2, 2, 62.0, 62.0, 0.0),
        ("2024-02-01", A, 2, 2, 50.0, 65.0, 15.0),
        ("2024-02-01", S, 1, 2, 55.0, 55.0, 0.0),
        ("2024-02-01", M, 1, 1, 0.0, 20.0, 20.0),
    ]))


@pytest.mark.unit
def test_weeks_start_on_monday_and_empty_weeks_are_zero(tiny):
    # Window [2023-12-25, 2024-01-15): O8 on Thursday 2023-12-28 is in the week of Monday 12-25;
    # nothing happens in the week of 01-01; O1 and O2 on Wednesday 01-10 are in the week of 01-08.
    # Only store and web sold in the window, so only they have rows.
    got = revenue_by_period(tiny, freq="week", start=datetime(2023, 12, 25), end=datetime(2024, 1, 15))
    _assert_rows(got, _frame([
        ("2023-12-25", W, 0, 0, 0.0, 0.0, 0.0),
        ("2023-12-25", S, 1, 1, 20.0, 20.0, 0.0),
        ("2024-01-01", W, 0, 0, 0.0, 0.0, 0.0),
        ("2024-01-01", S, 0, 0, 0.0, 0.0, 0.0),
        ("2024-01-08", W, 1, 1, 40.0, 40.0, 0.0),
        ("2024-01-08", S, 1, 1, 8.0, 8.0, 0.0),
    ]))


@pytest.mark.unit
def test_days_split_at_utc_midnight(tiny):
    # O9 at 23:59:59 on 02-29 is still February; O11 at 00:00 on 03-01 is March 1st.
    got = revenue_by_period(tiny, freq="day", start=datetime(2024, 2, 29), end=datetime(2024, 3, 2))
    _assert_rows(got, _frame([
        ("2024-02-29", W, 0, 0, 0.0, 0.0, 0.0),
        ("2024-02-29", S, 1, 1, 15.0, 15.0, 0.0),
        ("2024-03-01", W, 1, 1, 10.0, 10.0, 0.0),
        ("2024-03-01", S, 0, 0, 0.0, 0.0, 0.0),
    ]))


@pytest.mark.unit
def test_quarters_and_years(tiny):
    # 2023: O8 only. 2024 (all returns): web 40 + 62 + 30 = 132 gross, 20 refunded, 5 orders from
    # Alice, Bob and Dan; app 65 / 15; store 8 + 55 = 63 from Alice and Carol (and the anonymous
    # O12); marketplace 20 fully refunded. 2024 Q1 ends before 04-01, so it equals the year.
    year_2024 = [
        (W, 3, 5, 112.0, 132.0, 20.0),
        (A, 2, 2, 50.0, 65.0, 15.0),
        (S, 2, 3, 63.0, 63.0, 0.0),
        (M, 1, 1, 0.0, 20.0, 20.0),
    ]
    year_2023 = [(W, 0, 0, 0.0, 0.0, 0.0), (A, 0, 0, 0.0, 0.0, 0.0), (S, 1, 1, 20.0, 20.0, 0.0),
                 (M, 0, 0, 0.0, 0.0, 0.0)]
    _assert_rows(revenue_by_period(tiny, freq="year"),
                 _frame([("2023-01-01", *r) for r in year_2023] + [("2024-01-01", *r) for r in year_2024]))
    _assert_rows(revenue_by_period(tiny, freq="quarter"),
                 _frame([("2023-10-01", *r) for r in year_2023] + [("2024-01-01", *r) for r in year_2024]))


@pytest.mark.unit
def test_an_empty_window_gives_an_empty_frame_with_the_columns(tiny):
    got = revenue_by_period(tiny, start=datetime(2030, 1, 1))
    assert got.empty and list(got.columns) == list(PERIOD_COLUMNS)


@pytest.mark.unit
def test_bad_arguments_are_named(tiny):
    with pytest.raises(ValueError, match=r"freq must be one of day, week, month, quarter, year, got 'fortnight'"):
        revenue_by_period(tiny, freq="fortnight")
    with pytest.raises(ValueError, match="must be after start"):
        revenue_by_period(tiny, start=datetime(2024, 2, 1), end=datetime(2024, 2, 1))


@pytest.mark.data
@pytest.mark.parametrize("freq", list(PERIOD_FREQUENCIES))
def test_the_periods_of_a_channel_add_up_to_its_kpis(freq):
    # On a seeded history of a few hundred customers with returns booked up to 90 days after the
    # sale: per channel, the periods sum to kpi_report's orders and amounts for the same window.
    con = store_with(random_history(seed=11, n_customers=200))
    try:
        backend = ibis_backend(con)
        start, end = datetime(2022, 3, 15, tzinfo=UTC), datetime(2023, 9, 1, tzinfo=UTC)
        periods = revenue_by_period(backend, freq=freq, start=start, end=end)
        report = kpi_report(backend, start=start, end=end)
    finally:
        con.close()
    sums = periods.groupby(Col.CHANNEL, sort=False)[["orders", "revenue", "gross_revenue", "refunds"]].sum()
    assert list(sums.index) == list(report.by_channel)
    for channel, k in report.by_channel.items():
        assert sums.loc[channel, "orders"] == k.orders
        assert sums.loc[channel, "revenue"] == pytest.approx(k.revenue, rel=1e-9)
        assert sums.loc[channel, "gross_revenue"] == pytest.approx(k.gross_revenue, rel=1e-9)
        assert sums.loc[channel, "refunds"] == pytest.approx(k.refunds, rel=1e-9)
    assert periods["revenue"].sum() == pytest.approx(report.overall.revenue, rel=1e-9)
    # Consecutive periods, each channel once per period, no gaps.
    firsts = periods[PERIOD].drop_duplicates()
    step = pd.tseries.frequencies.to_offset(PERIOD_FREQUENCIES[freq][1])
    assert (firsts.iloc[1:].to_numpy() == (firsts.iloc[:-1] + step).to_numpy()).all()
    assert len(periods) == len(firsts) * len(report.by_channel)
