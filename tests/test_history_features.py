"""Unified history, customer features, calibration/holdout, RFM validation and KPIs.

Expected values on the tiny history are computed by hand in the comments (see
``fixtures_history.tiny_history`` for the rows). On a random history the features are checked
against ``lifetimes`` and against an independent pandas computation.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lifetimes.utils import calibration_and_holdout_data, summary_data_from_transaction_data
from rich.console import Console

from features.customer import (
    DAYS_PER_UNIT,
    FEATURE_COLUMNS,
    HOLDOUT_COLUMNS,
    RFMValidationError,
    calibration_holdout,
    customer_features,
    validate_rfm,
)
from features.history import ORDER_COLUMNS, UNIFIED_COLUMNS, orders, unified_lines
from features.report import KpiReport, kpi_report, render_kpi_table
from features.schema import Col, Feature, Holdout
from features.store import ibis_backend
from tests.fixtures_history import (
    TINY_AS_OF,
    History,
    insert,
    line,
    random_history,
    ret,
    store_with,
    tiny_history,
)

RFM = [Feature.FREQUENCY, Feature.RECENCY, Feature.T, Feature.MONETARY_VALUE]


@pytest.fixture(scope="module")
def tiny():
    con = store_with(tiny_history())
    yield ibis_backend(con)
    con.close()


# --- unified history ------------------------------------------------------------------------------


@pytest.mark.unit
def test_unified_lines_resolves_customers_items_and_returns_before_the_cutoff(tiny):
    df = unified_lines(tiny, TINY_AS_OF).to_pandas().set_index(Col.LINE_KEY).sort_index()
    assert tuple(unified_lines(tiny, TINY_AS_OF).columns) == UNIFIED_COLUMNS
    # L6 (03-02) and L14 (exactly 03-01 00:00) are not before the cutoff.
    assert sorted(df.index) == sorted(f"L{i}" for i in (1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 15))
    # Both of Alice's keys resolve to customer 1; the anonymous store sale has no customer.
    assert df.loc["L1", Col.CUSTOMER_ID] == 1 and df.loc["L3", Col.CUSTOMER_ID] == 1
    assert pd.isna(df.loc["L15", Col.CUSTOMER_ID])
    # MYSTERY is missing from the catalogue: no category, still a product. POST is not a product.
    assert pd.isna(df.loc["L7", Col.CATEGORY]) and bool(df.loc["L7", Col.IS_PRODUCT])
    assert pd.isna(df.loc["L8", Col.CATEGORY])  # LAMP: in the catalogue without a category
    assert not df.loc["L2", Col.IS_PRODUCT]
    # L4: 3 x 15 = 45, 1 returned on 02-10 for 15 -> net 30.
    assert df.loc["L4", [Col.RETURNED_QUANTITY, Col.REFUND_AMOUNT, Col.NET_AMOUNT]].tolist() == [1, 15.0, 30.0]
    # L5: returned on 03-05, after the cutoff -> not yet returned.
    assert df.loc["L5", [Col.RETURNED_QUANTITY, Col.REFUND_AMOUNT, Col.NET_AMOUNT]].tolist() == [0, 0.0, 20.0]
    # L3: 1 x 10 - 2 discount = 8.
    assert df.loc["L3", Col.GROSS_AMOUNT] == 8.0
    assert df.loc["L7", Col.IS_GUEST] and not df.loc["L9", Col.IS_GUEST]


@pytest.mark.unit
def test_unified_lines_without_cutoff_sees_everything(tiny):
    df = unified_lines(tiny).to_pandas().set_index(Col.LINE_KEY)
    assert len(df) == 15
    assert df.loc["L5", Col.REFUND_AMOUNT] == 20.0 and df.loc["L5", Col.NET_AMOUNT] == 0.0


@pytest.mark.unit
def test_orders_collapse_lines(tiny):
    expr = orders(unified_lines(tiny, TINY_AS_OF))
    assert tuple(expr.columns) == ORDER_COLUMNS
    df = expr.to_pandas().set_index(Col.ORDER_KEY)
    assert len(df) == 11  # O1-O4, O6-O10, O12, O13
    # O1: SHIRT 2 x 20 + POST 5 (orders() keeps whatever lines it is given).
    assert df.loc["O1", [Col.GROSS_AMOUNT, Col.NET_AMOUNT, "n_lines"]].tolist() == [45.0, 45.0, 2]
    assert df.loc["O1", Col.TS] == pd.Timestamp("2024-01-10 10:00")
    # O6: Bob's guest web order, 30 + 12.
    assert df.loc["O6", Col.IS_GUEST] and df.loc["O6", Col.GROSS_AMOUNT] == 42.0
    assert df.loc["O6", Col.CUSTOMER_ID] == 2 and df.loc["O6", Col.CHANNEL] == "web"
    # O7: fully returned -> net 0, still an order.
    assert df.loc["O7", [Col.GROSS_AMOUNT, Col.REFUND_AMOUNT, Col.NET_AMOUNT]].tolist() == [20.0, 20.0, 0.0]
    assert pd.isna(df.loc["O12", Col.CUSTOMER_ID])


# --- customer features on the tiny history --------------------------------------------------------

DAY = 86_400.0


def _tiny_expected_daily() -> pd.DataFrame:
    rows = {
        # Alice: orders O1 (01-10 10:00, SHIRT 40; POST ignored), O2 (01-10 18:00, 8), O3 (02-05 09:30,
        # 45 - 15 returned = 30), O4 (02-20 12:00, 20; its return is booked after the cutoff).
        # Days with purchases: 01-10 (40 + 8 = 48), 02-05 (30), 02-20 (20) -> frequency 2.
        # recency = 02-20 - 01-10 = 41 days; T = 03-01 - 01-10 = 51 days (2024 is a leap year).
        # monetary_value = (30 + 20) / 2 = 25; historic_clv = 48 + 30 + 20 = 98; gross 40+8+45+20 = 113.
        1: dict(frequency=2.0, recency=41.0, T=51.0, monetary_value=25.0, historic_clv=98.0, n_orders=4,
                avg_order_value=98 / 4,
                avg_days_between_orders=(41 + 2 / 24) / 3,  # 01-10 10:00 -> 02-20 12:00, 3 gaps
                days_since_last_order=9.5,  # 02-20 12:00 -> 03-01 00:00
                tenure_days=51 - 10 / 24,  # 01-10 10:00 -> 03-01 00:00
                return_rate=15 / 113,
                share_web=(40 + 20) / 113, share_app=45 / 113, share_store=8 / 113, share_marketplace=0.0,
                guest_share=0.0, n_categories=3,  # apparel, home, books
                first_purchase="2024-01-10 10:00", last_purchase="2024-02-20 12:00"),
        # Bob: O6 (02-01 15:00 guest web, 30 + 12), O7 (02-01 20:00 marketplace, 20 fully returned).
        # One purchase day -> frequency 0, recency 0, T = 03-01 - 02-01 = 29; monetary 0.
        2: dict(frequency=0.0, recency=0.0, T=29.0, monetary_value=0.0, historic_clv=42.0, n_orders=2,
                avg_order_value=21.0,
                avg_days_between_orders=5 / 24,
                days_since_last_order=28 + 4 / 24,
                tenure_days=28 + 9 / 24,
                return_rate=20 / 62,
                share_web=42 / 62, share_app=0.0, share_store=0.0, share_marketplace=20 / 62,
                guest_share=0.5, n_categories=1,  # MYSTERY and LAMP have no category; MUG is home
                first_purchase="2024-02-01 15:00", last_purchase="2024-02-01 20:00"),
        # Carol: O8 (2023-12-28 11:00, 20), O9 (02-29 23:59:59, 15), both in store.
        # recency = 63 days, T = 64 days, monetary = 15.
        3: dict(frequency=1.0, recency=63.0, T=64.0, monetary_value=15.0, historic_clv=35.0, n_orders=2,
                avg_order_value=17.5,
                avg_days_between_orders=63 + (12 * 3600 + 59 * 60 + 59) / DAY,
                days_since_last_order=1 / DAY,
                tenure_days=64 - 11 / 24,
                return_rate=0.0,
                share_web=0.0, share_app=0.0, share_store=1.0, share_marketplace=0.0,
                guest_share=0.0, n_categories=2,
                first_purchase="2023-12-28 11:00", last_purchase="2024-02-29 23:59:59"),
        # Dan: O10 is postage only (not a purchase), O11 is exactly at the cutoff (not before it):
        # only O13 (02-16 10:00 app, 20). T = 03-01 - 02-16 = 14.
        4: dict(frequency=0.0, recency=0.0, T=14.0, monetary_value=0.0, historic_clv=20.0, n_orders=1,
                avg_order_value=20.0,
                avg_days_between_orders=np.nan,
                days_since_last_order=13 + 14 / 24,
                tenure_days=13 + 14 / 24,
                return_rate=0.0,
                share_web=0.0, share_app=1.0, share_store=0.0, share_marketplace=0.0,
                guest_share=0.0, n_categories=1,
                first_purchase="2024-02-16 10:00", last_purchase="2024-02-16 10:00"),
    }
    df = pd.DataFrame.from_dict(rows, orient="index")[list(FEATURE_COLUMNS)]
    df.index = pd.Index(df.index.astype("int64"), name=Col.CUSTOMER_ID)
    for column in (Feature.FIRST_PURCHASE, Feature.LAST_PURCHASE):
        df[column] = pd.to_datetime(df[column], format="ISO8601")
    return df


@pytest.mark.unit
def test_customer_features_on_the_tiny_history_match_hand_computed_values(tiny):
    got = customer_features(tiny, TINY_AS_OF)
    expected = _tiny_expected_daily()
    assert list(got.columns) == list(FEATURE_COLUMNS)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-9)
    assert got[Feature.N_ORDERS].dtype == np.int64 and got[Feature.N_CATEGORIES].dtype == np.int64
    assert got[Feature.FREQUENCY].dtype == np.float64


@pytest.mark.unit
def test_weekly_rfm_on_the_tiny_history(tiny):
    got = customer_features(tiny, TINY_AS_OF, time_unit="W")[RFM]
    # Weeks are days / 7 (Fader, Hardie & Lee 2005): the same repeat purchase days as with "D",
    # durations divided by 7, spend unchanged.
    daily = customer_features(tiny, TINY_AS_OF, time_unit="D")[RFM]
    expected = daily.assign(recency=daily["recency"] / 7, T=daily["T"] / 7)
    pd.testing.assert_frame_equal(got, expected)
    assert got.loc[2, "T"] == pytest.approx(daily.loc[2, "T"] / 7) and daily.loc[2, "T"] > 0


@pytest.mark.unit
def test_an_aware_cutoff_is_the_same_instant_in_utc(tiny):
    plus_one = timezone(timedelta(hours=1))
    aware = customer_features(tiny, datetime(2024, 3, 1, 1, 0, tzinfo=plus_one))
    pd.testing.assert_frame_equal(aware, customer_features(tiny, TINY_AS_OF))
    assert customer_features(tiny, TINY_AS_OF.replace(tzinfo=UTC)).equals(aware)


@pytest.mark.unit
def test_features_before_any_purchase_are_an_empty_frame(tiny):
    got = customer_features(tiny, datetime(2023, 1, 1))
    assert got.empty and list(got.columns) == list(FEATURE_COLUMNS)
    assert got.index.name == Col.CUSTOMER_ID


@pytest.mark.unit
def test_bad_arguments_are_named(tiny):
    with pytest.raises(ValueError, match="time_unit"):
        customer_features(tiny, TINY_AS_OF, time_unit="M")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="holdout_end"):
        calibration_holdout(tiny, TINY_AS_OF, datetime(2024, 2, 1))
    with pytest.raises(TypeError, match="datetime"):
        customer_features(tiny, "2024-03-01")  # type: ignore[arg-type]


@pytest.mark.unit
def test_calibration_holdout_on_the_tiny_history(tiny):
    got = calibration_holdout(tiny, datetime(2024, 2, 1), TINY_AS_OF)
    assert list(got.columns) == [*FEATURE_COLUMNS, *HOLDOUT_COLUMNS]
    # Bob's and Dan's first purchases are in the holdout: not calibration customers.
    assert got.index.tolist() == [1, 3]
    # Alice: calibration = O1 + O2 on 01-10 -> frequency 0, T = 02-01 - 01-10 = 22, clv 48.
    # Holdout: O3 (30: its return is booked on 02-10, before the holdout end) and O4 (20) on two days.
    # Carol: calibration O8 -> T = 02-01 - 2023-12-28 = 35; holdout O9 (15).  Duration = 29 days.
    expected = pd.DataFrame(
        {Feature.FREQUENCY: [0.0, 0.0], Feature.RECENCY: [0.0, 0.0], Feature.T: [22.0, 35.0],
         Feature.HISTORIC_CLV: [48.0, 20.0],
         Holdout.FREQUENCY: [2.0, 1.0], Holdout.SPEND: [50.0, 15.0], Holdout.MONETARY_VALUE: [25.0, 15.0],
         Holdout.DURATION: [29.0, 29.0]},
        index=pd.Index([1, 3], name=Col.CUSTOMER_ID),
    )
    pd.testing.assert_frame_equal(got[expected.columns], expected)
    # The calibration columns are exactly the features at the calibration end.
    pd.testing.assert_frame_equal(
        got[list(FEATURE_COLUMNS)], customer_features(tiny, datetime(2024, 2, 1)), check_dtype=False
    )


@pytest.mark.unit
def test_holdout_spend_counts_only_returns_booked_before_the_holdout_end(tiny):
    # Alice, holdout [02-01, 02-20 13:00): O3 (30) + O4 (20); O4's return (03-05) is not booked yet.
    short = calibration_holdout(tiny, datetime(2024, 2, 1), datetime(2024, 2, 20, 13))
    assert short.loc[1, [Holdout.FREQUENCY, Holdout.SPEND, Holdout.DURATION]].tolist() == [2.0, 50.0, 19.0]
    # Holdout [02-01, 03-06): O3 (30) + O4 (20 - 20 returned on 03-05) + O5 (03-02, 20) = 50 over 3 days.
    long = calibration_holdout(tiny, datetime(2024, 2, 1), datetime(2024, 3, 6))
    assert long.loc[1, [Holdout.FREQUENCY, Holdout.SPEND, Holdout.DURATION]].tolist() == [3.0, 50.0, 34.0]
    assert long.loc[1, Holdout.MONETARY_VALUE] == pytest.approx(50 / 3)


# --- against lifetimes and an independent pandas computation on a random history ------------------

RANDOM_AS_OF = datetime(2023, 7, 1)


@pytest.fixture(scope="module")
def random_store():
    history = random_history(seed=20240301, n_customers=400)
    con = store_with(history)
    yield history, ibis_backend(con)
    con.close()


def _pandas_orders(history: History, as_of: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Orders (and their lines) of identified customers, product lines only, net of the returns
    booked before as_of: the definition, restated in pandas on the raw rows."""
    f = history.frames()
    lines = f["lines"][f["lines"]["ts"] < as_of]
    items = f["items"].set_index("item_id")
    lines = lines[lines["item_id"].map(items["is_product"]).fillna(True).astype(bool)]
    lines = lines.assign(
        customer_id=lines["record_key"].map(f["identity_map"].set_index("key_hash")["customer_id"]),
        category=lines["item_id"].map(items["category"]),
    ).dropna(subset=["customer_id"])
    returns = f["returns"][f["returns"]["ts"] < as_of].groupby("line_key")["refund_amount"].sum()
    lines = lines.assign(refund=lines["line_key"].map(returns).fillna(0.0))
    lines = lines.assign(net=lines["gross_amount"] - lines["refund"])
    return lines.groupby("order_key").agg(
        customer_id=("customer_id", "first"), ts=("ts", "min"), channel=("channel", "first"),
        is_guest=("is_guest", "any"), gross=("gross_amount", "sum"), refund=("refund", "sum"), net=("net", "sum"),
    ).assign(customer_id=lambda d: d["customer_id"].astype("int64")), lines


@pytest.mark.data
@pytest.mark.parametrize("time_unit", ["D", "W"])
def test_rfm_equals_lifetimes_summary_data(random_store, time_unit):
    history, backend = random_store
    got = customer_features(backend, RANDOM_AS_OF, time_unit=time_unit)
    transactions, _ = _pandas_orders(history, RANDOM_AS_OF)
    expected = summary_data_from_transaction_data(
        transactions, "customer_id", "ts", monetary_value_col="net",
        observation_period_end=RANDOM_AS_OF, freq="D", freq_multiplier=DAYS_PER_UNIT[time_unit],
    )
    expected.index = expected.index.astype("int64")
    expected.index.name = Col.CUSTOMER_ID
    assert len(got) > 150 and (got[Feature.FREQUENCY] > 0).sum() > 50  # a meaningful comparison
    pd.testing.assert_frame_equal(got[RFM], expected.sort_index()[RFM], rtol=1e-9)
    validate_rfm(got)


@pytest.mark.data
def test_other_features_equal_a_pandas_computation(random_store):
    history, backend = random_store
    got = customer_features(backend, RANDOM_AS_OF)
    o, lines = _pandas_orders(history, RANDOM_AS_OF)
    by = o.groupby("customer_id")
    as_of = pd.Timestamp(RANDOM_AS_OF)
    gross = by["gross"].sum()
    expected = pd.DataFrame({
        Feature.HISTORIC_CLV: by["net"].sum(),
        Feature.N_ORDERS: by.size(),
        Feature.AVG_ORDER_VALUE: by["net"].mean(),
        Feature.AVG_DAYS_BETWEEN_ORDERS: (by["ts"].max() - by["ts"].min()).dt.total_seconds() / DAY
        / (by.size() - 1).replace(0, np.nan),
        Feature.DAYS_SINCE_LAST_ORDER: (as_of - by["ts"].max()).dt.total_seconds() / DAY,
        Feature.TENURE_DAYS: (as_of - by["ts"].min()).dt.total_seconds() / DAY,
        Feature.RETURN_RATE: by["refund"].sum() / gross,
        **{Feature.channel_share(c): o[o["channel"] == c].groupby("customer_id")["gross"].sum()
           .reindex(gross.index, fill_value=0.0) / gross for c in ("web", "app", "store", "marketplace")},
        Feature.GUEST_SHARE: by["is_guest"].mean(),
        Feature.N_CATEGORIES: lines.groupby("customer_id")["category"].nunique().reindex(gross.index, fill_value=0),
        Feature.FIRST_PURCHASE: by["ts"].min(),
        Feature.LAST_PURCHASE: by["ts"].max(),
    })
    expected.index = expected.index.astype("int64").rename(Col.CUSTOMER_ID)
    pd.testing.assert_frame_equal(got[expected.columns], expected, check_dtype=False, rtol=1e-9)


@pytest.mark.data
@pytest.mark.parametrize("time_unit", ["D", "W"])
def test_calibration_holdout_equals_lifetimes(random_store, time_unit):
    history, backend = random_store
    calibration_end, holdout_end = datetime(2023, 1, 2), datetime(2023, 7, 3)  # Mondays
    got = calibration_holdout(backend, calibration_end, holdout_end, time_unit=time_unit)

    # lifetimes averages the holdout amount per transaction: give it one transaction per customer
    # and period (amounts summed, as ``customer_features`` does) so the mean is per period. Each
    # keeps its first order's time, so the calibration/holdout boundary splits as in the store.
    o, _ = _pandas_orders(history, holdout_end)
    per_period = (
        o.assign(period=o["ts"].dt.to_period("D"))
        .groupby(["customer_id", "period"], as_index=False)
        .agg(ts=("ts", "min"), net=("net", "sum"))
    )
    expected = calibration_and_holdout_data(
        per_period, "customer_id", "ts", calibration_period_end=calibration_end, observation_period_end=holdout_end,
        freq="D", freq_multiplier=DAYS_PER_UNIT[time_unit], monetary_value_col="net",
    )
    expected.index = expected.index.astype("int64").rename(Col.CUSTOMER_ID)
    assert (got[Holdout.FREQUENCY] > 0).sum() > 50
    pd.testing.assert_index_equal(got.index, expected.index.sort_values())
    expected = expected.sort_index()
    for ours, theirs in [(Feature.FREQUENCY, "frequency_cal"), (Feature.RECENCY, "recency_cal"), (Feature.T, "T_cal"),
                         (Holdout.FREQUENCY, "frequency_holdout"),
                         (Holdout.MONETARY_VALUE, "monetary_value_holdout"),
                         (Holdout.DURATION, "duration_holdout")]:
        pd.testing.assert_series_equal(got[ours], expected[theirs], check_names=False, rtol=1e-9)
    # The calibration monetary value uses only the returns booked before the calibration end.
    pd.testing.assert_series_equal(
        got[Feature.MONETARY_VALUE],
        customer_features(backend, calibration_end, time_unit=time_unit)[Feature.MONETARY_VALUE],
    )
    np.testing.assert_allclose(
        got[Holdout.SPEND], got[Holdout.MONETARY_VALUE] * got[Holdout.FREQUENCY], rtol=1e-9
    )


# --- no leakage -----------------------------------------------------------------------------------

_KEYS = ["k_alice_web", "k_alice_card", "k_bob_email", "k_carol_card", "k_dan_app", "k_new", None]
_TINY_BASE = {unit: None for unit in ("D", "W")}


def _tiny_base(unit: str) -> pd.DataFrame:
    if _TINY_BASE[unit] is None:
        con = store_with(tiny_history())
        _TINY_BASE[unit] = customer_features(ibis_backend(con), TINY_AS_OF, time_unit=unit)
        con.close()
    return _TINY_BASE[unit]


_late = st.integers(min_value=0, max_value=90 * 86_400).map(lambda s: TINY_AS_OF + timedelta(seconds=s))
_sale = st.fixed_dictionaries({
    "ts": _late,
    "key": st.sampled_from(_KEYS),
    "order": st.sampled_from(["O1", "O3", "O6", "O9", "O13", "new"]),  # late lines of existing orders too
    "channel": st.sampled_from(["web", "app", "store", "marketplace"]),
    "item": st.sampled_from(["SHIRT", "MUG", "POST", "NEWITEM", "LAMP"]),
    "quantity": st.integers(1, 5),
    "price": st.floats(0.5, 500, allow_nan=False),
    "guest": st.booleans(),
})
_return = st.fixed_dictionaries({
    "ts": _late,
    "line": st.sampled_from([f"L{i}" for i in range(1, 16)] + ["late"]),
    "refund": st.floats(0, 100, allow_nan=False),
})


@pytest.mark.data
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sales=st.lists(_sale, max_size=6), returns=st.lists(_return, max_size=6), unit=st.sampled_from(["D", "W"]))
def test_rows_at_or_after_the_cutoff_never_change_the_features(sales, returns, unit):
    con = store_with(tiny_history())
    late_lines = [
        line(f"LATE{i}", f"{s['order']}-late{i}" if s["order"] == "new" else s["order"], s["channel"], s["ts"],
             s["key"], s["item"], s["quantity"], s["price"], is_guest=s["guest"])
        for i, s in enumerate(sales)
    ]
    late_returns = [
        ret(f"RLATE{i}", ("LATE0" if late_lines else "L1") if r["line"] == "late" else r["line"], 1,
            r["refund"], r["ts"])
        for i, r in enumerate(returns)
    ]
    insert(con, "lines", late_lines)
    insert(con, "returns", late_returns)
    insert(con, "identity_map", [{"key_hash": "k_new", "key_type": "email", "customer_id": 99}])
    insert(con, "items", [{"item_id": "NEWITEM", "category": "new", "is_product": True}])
    got = customer_features(ibis_backend(con), TINY_AS_OF, time_unit=unit)
    con.close()
    pd.testing.assert_frame_equal(got, _tiny_base(unit))


# --- RFM validation -------------------------------------------------------------------------------


def _rfm(**columns) -> pd.DataFrame:
    base = {"frequency": [0.0, 2.0, 1.0], "recency": [0.0, 10.0, 5.0], "T": [3.0, 12.0, 5.0],
            "monetary_value": [0.0, 20.0, 7.5]}
    base.update(columns)
    return pd.DataFrame(base, index=pd.Index([101, 102, 103], name=Col.CUSTOMER_ID))


@pytest.mark.unit
def test_validate_rfm_accepts_valid_tables_and_returns_them(tiny):
    df = _rfm()
    assert validate_rfm(df) is df
    validate_rfm(customer_features(tiny, TINY_AS_OF))
    validate_rfm(_rfm().drop(columns="monetary_value"))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("columns", "column", "customer", "value_text"),
    [
        ({"frequency": [0.0, -1.0, 1.0]}, "frequency", 102, "frequency=-1"),
        ({"frequency": [0.0, 2.5, 1.0]}, "frequency", 102, "frequency=2.5"),
        ({"frequency": [0.0, 2.0, np.nan]}, "frequency", 103, "frequency=nan"),
        ({"recency": [0.0, -3.0, 5.0]}, "recency", 102, "recency=-3"),
        ({"recency": [0.0, 10.0, 6.0]}, "recency", 103, "recency=6.0 > T=5.0"),
        ({"recency": [2.0, 10.0, 5.0]}, "recency", 101, "recency=2"),
        ({"T": [3.0, np.inf, 5.0]}, "T", 102, "T=inf"),
        ({"monetary_value": [0.0, -20.0, 7.5]}, "monetary_value", 102, "monetary_value=-20"),
    ],
)
def test_validate_rfm_names_the_column_customer_and_value(columns, column, customer, value_text):
    with pytest.raises(RFMValidationError) as info:
        validate_rfm(_rfm(**columns))
    err = info.value
    assert isinstance(err, ValueError)
    assert err.column == column and err.customer_ids == [customer] and err.n_violations == 1
    assert f"customer_id {customer}: {value_text}" in str(err)
    assert str(err).startswith(f"{column} must satisfy")


@pytest.mark.unit
def test_validate_rfm_reports_a_few_customers_and_the_count():
    df = pd.DataFrame({"frequency": [-1.0] * 8, "recency": [0.0] * 8, "T": [1.0] * 8},
                      index=pd.Index(range(1, 9), name=Col.CUSTOMER_ID))
    with pytest.raises(RFMValidationError, match=r"8 row\(s\) do not: customer_id 1: .* \(and 3 more\)") as info:
        validate_rfm(df)
    assert info.value.customer_ids == [1, 2, 3, 4, 5]


@pytest.mark.unit
def test_validate_rfm_names_missing_columns_and_uses_a_customer_id_column():
    with pytest.raises(RFMValidationError, match="T must satisfy being a column"):
        validate_rfm(_rfm().drop(columns="T"))
    with pytest.raises(RFMValidationError, match="monetary_value"):
        validate_rfm(_rfm().drop(columns="monetary_value"), monetary=True)
    df = _rfm(recency=[0.0, 13.0, 5.0]).reset_index()
    with pytest.raises(RFMValidationError, match="customer_id 102: recency=13"):
        validate_rfm(df)


# --- KPIs -----------------------------------------------------------------------------------------


@pytest.mark.unit
def test_kpis_on_the_tiny_history(tiny):
    report = kpi_report(tiny, end=TINY_AS_OF)
    k = report.overall
    # Orders before the cutoff that contain a product: O1-O4 (Alice), O6-O7 (Bob), O8-O9 (Carol),
    # O13 (Dan; O10 is postage only), O12 (anonymous) -> 10 orders, 9 identified, 4 customers.
    assert (k.customers, k.orders) == (4, 10)
    # Gross 113 + 62 + 35 + 20 + 40 (anonymous) = 270; refunds 15 + 20 = 35; net 235.
    assert (k.gross_revenue, k.refunds, k.revenue) == (270.0, 35.0, 235.0)
    assert k.average_order_value == pytest.approx(23.5)
    assert k.purchase_frequency == pytest.approx(9 / 4)
    assert k.repeat_purchase_rate == pytest.approx(3 / 4)  # Dan has one order
    # web/app/marketplace orders: O1, O3, O4, O6, O7, O13 -> one guest (O6).
    assert k.guest_checkout_rate == pytest.approx(1 / 6)
    assert k.return_rate == pytest.approx(35 / 270)
    assert k.anonymous_share == pytest.approx(1 / 10)
    assert (str(k.first_date), str(k.last_date)) == ("2023-12-28", "2024-02-29")

    assert list(report.by_channel) == ["web", "app", "store", "marketplace"]
    web, app, store, market = (report.by_channel[c] for c in ("web", "app", "store", "marketplace"))
    # web: O1 (40), O4 (20), O6 (42, guest); Alice twice, Bob once.
    assert (web.customers, web.orders, web.revenue, web.return_rate) == (2, 3, 102.0, 0.0)
    assert (web.repeat_purchase_rate, web.guest_checkout_rate, web.purchase_frequency) == (0.5, 1 / 3, 1.5)
    # app: O3 (45 - 15), O13 (20).
    assert (app.customers, app.orders, app.revenue, app.gross_revenue) == (2, 2, 50.0, 65.0)
    assert app.return_rate == pytest.approx(15 / 65) and app.repeat_purchase_rate == 0.0
    # store: O2 (8), O8 (20), O9 (15), O12 (40, anonymous); no checkout -> no guest rate.
    assert (store.customers, store.orders, store.revenue, store.average_order_value) == (2, 4, 83.0, 20.75)
    assert store.guest_checkout_rate is None and store.anonymous_share == 0.25
    assert store.purchase_frequency == 1.5 and store.repeat_purchase_rate == 0.5
    # marketplace: O7, fully returned.
    assert (market.orders, market.revenue, market.return_rate, market.guest_checkout_rate) == (1, 0.0, 1.0, 0.0)


@pytest.mark.unit
def test_kpis_of_a_window_count_its_orders_only(tiny):
    # From the cutoff on: O11 (Dan, 03-01 00:00, 10) and O5 (Alice, 03-02, 20), both web.
    # The return of O4 (booked 03-05) belongs to an order before the window.
    report = kpi_report(tiny, start=TINY_AS_OF)
    k = report.overall
    assert (k.orders, k.customers, k.revenue, k.refunds, k.repeat_purchase_rate) == (2, 2, 30.0, 0.0, 0.0)
    assert list(report.by_channel) == ["web"]
    # With no end every return counts: O4's refund of 20 makes all-time net 235 + 30 - 20.
    assert kpi_report(tiny).overall.revenue == 245.0
    with pytest.raises(ValueError, match="end"):
        kpi_report(tiny, start=TINY_AS_OF, end=datetime(2024, 1, 1))


@pytest.mark.unit
def test_kpi_report_serialises_and_renders(tiny):
    report = kpi_report(tiny, end=TINY_AS_OF)
    assert isinstance(report, KpiReport)
    data = json.loads(report.to_json())
    assert data == report.to_dict()
    assert data["end"] == "2024-03-01T00:00:00" and data["start"] is None
    assert data["overall"]["first_date"] == "2023-12-28"
    assert data["by_channel"]["store"]["guest_checkout_rate"] is None

    console = Console(width=160, record=True, color_system=None)
    console.print(render_kpi_table(report, "GBP"))
    text = console.export_text()
    for expected in ("GBP 235.00", "GBP 23.50", "75.0%", "16.7%", "13.0%", "2.25", "2023-12-28", "marketplace",
                     "orders before 2024-03-01 UTC"):
        assert expected in text


@pytest.mark.unit
def test_kpis_of_an_empty_store_are_zero_or_undefined():
    con = store_with(History())
    report = kpi_report(ibis_backend(con))
    con.close()
    k = report.overall
    assert (k.customers, k.orders, k.revenue) == (0, 0, 0.0)
    assert k.average_order_value is None and k.first_date is None and report.by_channel == {}
    assert not any(isinstance(v, float) and math.isnan(v) for v in report.to_dict()["overall"].values())
