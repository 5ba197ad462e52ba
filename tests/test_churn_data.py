"""Churn population, labels, trend features and the stacked data set, without leakage.

Expected values on the tiny churn history are computed by hand in the comments (rows in
``fixtures_churn.churn_history``; c = 2024-07-01, windows in its docstring). On generated data the
data set is checked for shape and ordering, and its labels against the generator's truth.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.churn import (
    CHURN_BASE_FEATURES,
    CHURN_FEATURE_COLUMNS,
    CHURNED,
    TREND_FEATURES,
    churn_features,
    churn_labels,
    churn_population,
    trend_features,
)
from features.customer import FEATURE_COLUMNS, customer_features
from features.discovery import discover
from synthetic.generate import generate
from features.ingest import ingest
from features.schema import Col, Feature
from features.settings import load_settings
from features.store import connect, ibis_backend
from tests.fixtures_churn import CHURN_AS_OF, CHURN_KEYS, churn_history
from tests.fixtures_history import History, insert, line, random_history, ret, store_with
from training.churn import dataset as dataset_module
from training.churn.dataset import (
    CLV_FEATURES,
    CUTOFF,
    ChurnDataset,
    build_dataset,
    monthly_cutoffs,
)
from training.clv.adapter import ClvFitError

d = datetime


@pytest.fixture(scope="module")
def con():
    connection = store_with(churn_history())
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def tiny(con):
    return ibis_backend(con)


# --- population and labels ------------------------------------------------------------------------


@pytest.mark.unit
def test_population_is_every_customer_with_a_purchase_in_the_year_before_the_cutoff(tiny):
    # Lookback [2023-07-02 00:00, 2024-07-01): Fay's only purchase is exactly at its start (in), Gus's
    # one second before it (out); Cat's last purchase before c is 2023-06-01 (out; her 2024-07-15
    # purchase is after c). Everyone else bought inside it.
    got = churn_population(tiny, CHURN_AS_OF)
    assert list(got) == [1, 2, 4, 5, 6, 8, 9]
    assert got.name == Col.CUSTOMER_ID and got.dtype == "int64"
    # 180 days: [2024-01-03, c). Ben (2023-09-01), Fay (2023-07-02) and Hal (2024-01-02 23:00) drop out.
    assert list(churn_population(tiny, CHURN_AS_OF, lookback_days=180)) == [1, 4, 5, 9]


@pytest.mark.unit
def test_labels_on_the_tiny_history(tiny):
    got = churn_labels(tiny, CHURN_AS_OF)
    # Label window [2024-07-01, 2024-09-29):
    # Ann 0 (A5 on 08-01); Ben 1 (nothing later); Dee 1 (D2 is postage only, D3 exactly at c + 90 d
    # is outside); Eve 0 (E3 exactly at c is inside); Fay 1; Hal 0 (H2 on 09-28 23:59, a guest
    # checkout still is his purchase); Ian 1 (the late line of I1 belongs to an order placed before c).
    expected = pd.Series([0, 1, 1, 0, 1, 0, 1], index=pd.Index([1, 2, 4, 5, 6, 8, 9], name=Col.CUSTOMER_ID),
                         name=CHURNED, dtype="int64")
    pd.testing.assert_series_equal(got, expected)
    # Cat buys on 07-15 but had no purchase in the year before c: not in the population at all.
    assert 3 not in got.index


@pytest.mark.unit
def test_a_shorter_horizon_and_lookback(tiny):
    # H = 30 days: [2024-07-01, 2024-07-31). Only Eve (E3 at c) buys; Ann's A5 (08-01) is too late.
    # Lookback 180 days: customers 1, 4, 5, 9.
    got = churn_labels(tiny, CHURN_AS_OF, horizon_days=30, lookback_days=180)
    assert got.to_dict() == {1: 1, 4: 1, 5: 0, 9: 1}


@pytest.mark.unit
def test_labels_refuse_a_window_past_the_data(tiny):
    # The last sale is 2024-10-15 12:00, so the data end at 2024-10-16 00:00: c + 90 d may be at most
    # that, i.e. c <= 2024-07-18.
    assert len(churn_labels(tiny, d(2024, 7, 18))) > 0
    with pytest.raises(ValueError, match="2024-07-19") as info:
        churn_labels(tiny, d(2024, 7, 19))
    message = str(info.value)
    assert "2024-10-17" in message and "2024-10-15 12:00" in message and "2024-07-18" in message
    with pytest.raises(ValueError, match="2024-10-17"):
        churn_labels(tiny, d(2024, 7, 2), horizon_days=107)


@pytest.mark.unit
def test_bad_arguments_are_named(tiny):
    with pytest.raises(ValueError, match="horizon_days"):
        churn_labels(tiny, CHURN_AS_OF, horizon_days=0)
    with pytest.raises(ValueError, match="lookback_days"):
        churn_population(tiny, CHURN_AS_OF, lookback_days=-1)
    with pytest.raises(ValueError, match="lookback_days"):
        churn_features(tiny, CHURN_AS_OF, lookback_days=1.5)


# --- trend features -------------------------------------------------------------------------------


@pytest.mark.unit
def test_trend_features_on_the_tiny_history(tiny):
    got = trend_features(tiny, CHURN_AS_OF)
    assert tuple(got.columns) == TREND_FEATURES
    # Every customer with a purchase before c, not only the population (Cat 3 and Gus 7 too).
    assert list(got.index) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    nan = math.nan
    # Windows: 30d [06-01, c), 90d [04-02, c), prev_90d [01-03, 04-02), prev_180d [2023-10-05, 04-02).
    expected = {
        # Ann: 30d = A4 (10; its return is booked after c); 90d = A3 (40 - 20 returned) + A4 = 30;
        # prev_90d = A2 (30); prev_180d = A1 + A2 = 50. Changes: 30/30 - 1 = 0, 2/1 - 1 = 1.
        1: (1, 10.0, 2, 30.0, 1, 30.0, 2, 50.0, 0.0, 1.0),
        # Ben (2023-09-01), Cat (2023-06-01), Fay (2023-07-02), Gus (2023-07-01): before every window.
        2: (0, 0.0, 0, 0.0, 0, 0.0, 0, 0.0, nan, nan),
        3: (0, 0.0, 0, 0.0, 0, 0.0, 0, 0.0, nan, nan),
        # Dee: D1 one second before c (15). Nothing in the previous quarter: both changes NaN.
        4: (1, 15.0, 1, 15.0, 0, 0.0, 0, 0.0, nan, nan),
        # Eve: E2 exactly at c - 90 d is in 90d (15); E1 in prev_90d, fully returned (spend 0): the spend
        # change is NaN, the orders change 1/1 - 1 = 0.
        5: (0, 0.0, 1, 15.0, 1, 0.0, 1, 0.0, nan, 0.0),
        6: (0, 0.0, 0, 0.0, 0, 0.0, 0, 0.0, nan, nan),
        7: (0, 0.0, 0, 0.0, 0, 0.0, 0, 0.0, nan, nan),
        # Hal: H1 at 2024-01-02 23:00, an hour before prev_90d starts: prev_180d only.
        8: (0, 0.0, 0, 0.0, 0, 0.0, 1, 10.0, nan, nan),
        # Ian: I1 (20) in prev_90d, nothing since: 0/20 - 1 = -1 and 0/1 - 1 = -1.
        9: (0, 0.0, 0, 0.0, 1, 20.0, 1, 20.0, -1.0, -1.0),
    }
    want = pd.DataFrame.from_dict(expected, orient="index", columns=list(TREND_FEATURES))
    want.index = pd.Index(want.index.astype("int64"), name=Col.CUSTOMER_ID)
    for name in ("orders_30d", "orders_90d", "orders_prev_90d", "orders_prev_180d"):
        want[name] = want[name].astype("int64")
    pd.testing.assert_frame_equal(got, want)


@pytest.mark.unit
def test_churn_features_are_customer_features_and_trends_of_the_population(tiny):
    got = churn_features(tiny, CHURN_AS_OF)
    assert tuple(got.columns) == CHURN_FEATURE_COLUMNS
    population = churn_population(tiny, CHURN_AS_OF)
    assert got.index.equals(population)
    assert got.index.equals(churn_labels(tiny, CHURN_AS_OF).index)
    pd.testing.assert_frame_equal(got[list(FEATURE_COLUMNS)],
                                  customer_features(tiny, CHURN_AS_OF).loc[population])
    pd.testing.assert_frame_equal(got[list(TREND_FEATURES)], trend_features(tiny, CHURN_AS_OF).loc[population])
    # The model features: every column but the two timestamps, all numeric.
    assert Feature.FIRST_PURCHASE not in CHURN_BASE_FEATURES and Feature.LAST_PURCHASE not in CHURN_BASE_FEATURES
    assert len(CHURN_BASE_FEATURES) == len(CHURN_FEATURE_COLUMNS) - 2
    assert all(pd.api.types.is_numeric_dtype(got[c]) for c in CHURN_BASE_FEATURES)


@pytest.mark.unit
def test_weekly_time_unit_scales_only_recency_and_t(tiny):
    daily = churn_features(tiny, CHURN_AS_OF)
    weekly = churn_features(tiny, CHURN_AS_OF, time_unit="W")
    pd.testing.assert_series_equal(weekly[Feature.T], daily[Feature.T] / 7)
    pd.testing.assert_frame_equal(weekly[list(TREND_FEATURES)], daily[list(TREND_FEATURES)])


# --- no leakage -----------------------------------------------------------------------------------

_KEYS = [*CHURN_KEYS, "k_new", None]
_LINES = ["A1", "A3", "A4", "B1", "C1", "D1", "E1", "E2", "H1", "I1", "late"]
_after = st.integers(min_value=0, max_value=200 * 86_400).map(lambda s: CHURN_AS_OF + timedelta(seconds=s))
_sale = st.fixed_dictionaries({
    "ts": _after,
    "key": st.sampled_from(_KEYS),
    "order": st.sampled_from(["OA1", "OA4", "OD1", "OE2", "OI1", "new"]),  # late lines of existing orders too
    "channel": st.sampled_from(["web", "app", "store", "marketplace"]),
    "item": st.sampled_from(["SHIRT", "MUG", "POST", "NEWITEM"]),
    "quantity": st.integers(1, 5),
    "price": st.floats(0.5, 500, allow_nan=False),
    "guest": st.booleans(),
})
_return = st.fixed_dictionaries({
    "ts": _after,
    "line": st.sampled_from(_LINES),
    "quantity": st.integers(1, 2),
    "refund": st.floats(0, 100, allow_nan=False),
})
_BASE: dict[tuple[str, int], pd.DataFrame] = {}


def _base(unit: str, lookback: int) -> pd.DataFrame:
    if (unit, lookback) not in _BASE:
        connection = store_with(churn_history())
        _BASE[unit, lookback] = churn_features(ibis_backend(connection), CHURN_AS_OF, lookback_days=lookback,
                                               time_unit=unit)
        connection.close()
    return _BASE[unit, lookback]


@pytest.mark.data
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sales=st.lists(_sale, max_size=6), returns=st.lists(_return, max_size=6), unit=st.sampled_from(["D", "W"]),
       lookback=st.sampled_from([30, 180, 365]))
def test_sales_and_returns_at_or_after_the_cutoff_never_change_the_churn_features(sales, returns, unit, lookback):
    connection = store_with(churn_history())
    late_lines = [
        line(f"LATE{i}", f"ONEW{i}" if s["order"] == "new" else s["order"], s["channel"], s["ts"], s["key"],
             s["item"], s["quantity"], s["price"], is_guest=s["guest"])
        for i, s in enumerate(sales)
    ]
    late_returns = [
        ret(f"RLATE{i}", ("LATE0" if late_lines else "A1") if r["line"] == "late" else r["line"], r["quantity"],
            r["refund"], r["ts"])
        for i, r in enumerate(returns)
    ]
    insert(connection, "lines", late_lines)
    insert(connection, "returns", late_returns)
    insert(connection, "identity_map", [{"key_hash": "k_new", "key_type": "email", "customer_id": 99}])
    insert(connection, "items", [{"item_id": "NEWITEM", "category": "new", "is_product": True}])
    got = churn_features(ibis_backend(connection), CHURN_AS_OF, lookback_days=lookback, time_unit=unit)
    connection.close()
    pd.testing.assert_frame_equal(got, _base(unit, lookback))


@pytest.mark.data
def test_the_whole_data_set_including_the_clv_features_ignores_everything_after_its_cutoffs():
    # Two stores: the seeded random history, and the same history cut at the latest cutoff (every sale
    # and return at or after it removed) plus one anonymous sale later on so that labels are allowed.
    # Features, CLV features included, must be identical at both cutoffs; only labels may differ.
    cutoffs = [d(2023, 3, 1), d(2023, 6, 1)]
    history = random_history(3)
    full = store_with(history)
    cut = History(
        lines=[row for row in history.lines if row["ts"] < cutoffs[-1]]
        + [line("LEND", "OEND", "store", d(2023, 10, 1, 12), None, "I01", 1, 10.0)],
        returns=[row for row in history.returns if row["ts"] < cutoffs[-1]],
        items=history.items,
        identity=history.identity,
    )
    short = store_with(cut)
    a = build_dataset(full, cutoffs=cutoffs)
    b = build_dataset(short, cutoffs=cutoffs)
    full.close()
    short.close()
    assert a.clv_failures == () and b.clv_failures == ()
    columns = [Col.CUSTOMER_ID, CUTOFF, *a.feature_names]
    pd.testing.assert_frame_equal(a.frame[columns], b.frame[columns])
    assert a.frame[list(CLV_FEATURES)].notna().all().all()
    # Only the labels differ: in the cut store nobody buys at or after 2023-06-01.
    assert (a.frame[CHURNED] != b.frame[CHURNED]).any()


# --- monthly cutoffs ------------------------------------------------------------------------------


@pytest.mark.unit
def test_monthly_cutoffs_by_hand():
    # Generated-data span: the first cutoff is day(first sale) + max(180, 365) = 2024-01-01 (itself a
    # 1st); the data end 2026-01-01, so c + 90 d <= 2026-01-01 means c <= 2025-10-03: last 2025-10-01.
    got = monthly_cutoffs(d(2023, 1, 1, 0, 0, 24), d(2025, 12, 31, 16, 19, 55), horizon_days=90, lookback_days=365)
    assert got[0] == d(2024, 1, 1) and got[-1] == d(2025, 10, 1) and len(got) == 22
    assert all(c.day == 1 and c.hour == 0 for c in got) and got == sorted(got)
    # Capped: the latest four.
    assert monthly_cutoffs(d(2023, 1, 1), d(2025, 12, 31), horizon_days=90, lookback_days=365, max_cutoffs=4) == [
        d(2025, 7, 1), d(2025, 8, 1), d(2025, 9, 1), d(2025, 10, 1)]
    # A short lookback lets min_history_days decide: 2023-01-15 + 180 d = 2023-07-14 -> first 2023-08-01.
    # Data end 2024-01-01; H = 30: c <= 2023-12-02 -> last 2023-12-01.
    assert monthly_cutoffs(d(2023, 1, 15, 10), d(2023, 12, 31, 23, 59), horizon_days=30, lookback_days=90) == [
        d(2023, 8, 1), d(2023, 9, 1), d(2023, 10, 1), d(2023, 11, 1), d(2023, 12, 1)]
    # The label window may end exactly at the end of the data (2023-12-31: c = 12-01 + 30 d), not later.
    assert monthly_cutoffs(d(2023, 1, 15), d(2023, 12, 30, 23), horizon_days=30, lookback_days=90)[-1] == d(2023, 12, 1)
    assert monthly_cutoffs(d(2023, 1, 15), d(2023, 12, 29, 23), horizon_days=30, lookback_days=90)[-1] == d(2023, 11, 1)
    # min_history_days = 400 > lookback: 2023-01-01 + 400 d = 2024-02-05 -> 2024-03-01.
    assert monthly_cutoffs(d(2023, 1, 1), d(2025, 12, 31), horizon_days=90, lookback_days=365,
                           min_history_days=400)[0] == d(2024, 3, 1)
    # Too short a history: no cutoff at all.
    assert monthly_cutoffs(d(2023, 1, 1), d(2023, 12, 31), horizon_days=90, lookback_days=365) == []


@pytest.mark.unit
def test_monthly_cutoffs_reject_bad_arguments():
    with pytest.raises(ValueError, match="before first_sale"):
        monthly_cutoffs(d(2024, 1, 1), d(2023, 1, 1), horizon_days=90, lookback_days=365)
    with pytest.raises(ValueError, match="max_cutoffs"):
        monthly_cutoffs(d(2023, 1, 1), d(2025, 1, 1), horizon_days=90, lookback_days=365, max_cutoffs=0)
    with pytest.raises(ValueError, match="horizon_days"):
        monthly_cutoffs(d(2023, 1, 1), d(2025, 1, 1), horizon_days=0, lookback_days=365)


# --- the data set on the tiny history ------------------------------------------------------------

_TINY_CUTOFFS = [d(2024, 7, 1), d(2024, 5, 1), d(2024, 6, 1)]  # unordered on purpose


@pytest.mark.unit
def test_build_dataset_stacks_features_and_labels_per_cutoff(con, tiny):
    ds = build_dataset(con, cutoffs=_TINY_CUTOFFS, with_clv=False)
    assert ds.cutoffs == (d(2024, 5, 1), d(2024, 6, 1), d(2024, 7, 1))
    assert ds.feature_names == CHURN_BASE_FEATURES and ds.horizon_days == 90
    assert list(ds.frame.columns) == [Col.CUSTOMER_ID, CUTOFF, *CHURN_BASE_FEATURES, CHURNED]
    for cutoff in ds.cutoffs:
        rows = ds.frame[ds.frame[CUTOFF] == pd.Timestamp(cutoff)].set_index(Col.CUSTOMER_ID)
        features = churn_features(tiny, cutoff)
        pd.testing.assert_frame_equal(rows[list(CHURN_BASE_FEATURES)], features[list(CHURN_BASE_FEATURES)],
                                      check_names=False)
        pd.testing.assert_series_equal(rows[CHURNED], churn_labels(tiny, cutoff), check_names=False)
    # At c = 2024-07-01 the labels are the hand-computed ones above.
    last = ds.frame[ds.frame[CUTOFF] == pd.Timestamp(CHURN_AS_OF)]
    assert dict(zip(last[Col.CUSTOMER_ID], last[CHURNED])) == {1: 0, 2: 1, 4: 1, 5: 0, 6: 1, 8: 0, 9: 1}

    # Three months of cutoffs cannot hold a 90-day embargo between train, validation and test.
    with pytest.raises(ValueError, match="90-day embargo"):
        ds.split()
    summary = ds.summary()
    assert list(summary["customers"]) == [int((ds.frame[CUTOFF] == pd.Timestamp(c)).sum()) for c in ds.cutoffs]
    assert not summary["clv_features"].any()


@pytest.mark.unit
def test_a_failed_clv_fit_leaves_nan_and_a_note(con, monkeypatch):
    class FailingClvModel:
        def __init__(self, **settings):
            self.settings = settings

        def fit(self, features, *, cutoff, currency="GBP"):
            raise ClvFitError("BG/NBD fit failed: did not converge", kind="bgnbd", reason="did not converge")

    monkeypatch.setattr(dataset_module, "ClvModel", FailingClvModel)
    ds = build_dataset(con, cutoffs=[d(2024, 6, 1), d(2024, 7, 1)])
    assert ds.feature_names == (*CHURN_BASE_FEATURES, *CLV_FEATURES)
    assert ds.frame[list(CLV_FEATURES)].isna().all().all()
    assert [c for c, _ in ds.clv_failures] == [d(2024, 6, 1), d(2024, 7, 1)]
    assert "2024-06-01" in ds.notes[0] and "did not converge" in ds.notes[0]
    assert ds.frame[CHURNED].notna().all()


@pytest.mark.unit
def test_build_dataset_refuses_cutoffs_past_the_data_before_any_work(con):
    with pytest.raises(ValueError, match="2024-08-01"):
        build_dataset(con, cutoffs=[d(2024, 6, 1), d(2024, 8, 1)], with_clv=False)
    with pytest.raises(ValueError, match="distinct"):
        build_dataset(con, cutoffs=[d(2024, 6, 1), d(2024, 6, 1)], with_clv=False)
    with pytest.raises(ValueError, match="at least one cutoff"):
        build_dataset(con, cutoffs=[], with_clv=False)
    with pytest.raises(TypeError, match="DuckDB connection or an Ibis backend"):
        build_dataset("rapport.duckdb", cutoffs=[d(2024, 6, 1)])


@pytest.mark.unit
def test_split_needs_cutoffs_a_label_window_apart(con):
    ds = build_dataset(con, cutoffs=[d(2024, 6, 1), d(2024, 7, 1)], with_clv=False)
    with pytest.raises(ValueError, match="90-day embargo.*2024-06-01, 2024-07-01"):
        ds.split()
    assert isinstance(ds, ChurnDataset)


# --- the data set on generated data ---------------------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("churn_generated")
    raw = tmp / "raw"
    generate(raw, 2_000, 23)
    settings_ = load_settings(data_dir=tmp / "state")
    connection = connect(settings_)
    inputs, ignored = discover(raw)
    ingest(connection, inputs, settings_, now=NOW, ignored_paths=ignored)
    first, last = connection.execute("SELECT min(ts), max(ts) FROM lines").fetchall()[0]
    cutoffs = monthly_cutoffs(first, last, horizon_days=90, lookback_days=365, max_cutoffs=8)
    messages: list[str] = []
    ds = build_dataset(connection, cutoffs=cutoffs, progress=messages.append)
    yield raw, connection, ds, messages
    connection.close()


@pytest.mark.data
def test_dataset_on_generated_data(generated):
    _, _, ds, messages = generated
    frame = ds.frame
    assert list(frame.columns) == [Col.CUSTOMER_ID, CUTOFF, *CHURN_BASE_FEATURES, *CLV_FEATURES, CHURNED]
    assert len(ds.cutoffs) == 8 and ds.cutoffs[-1] == d(2025, 10, 1) and len(messages) == 8
    assert ds.clv_failures == () and ds.notes == ()
    assert frame[CHURNED].notna().all() and set(frame[CHURNED].unique()) <= {0, 1}
    assert 0.1 < frame[CHURNED].mean() < 0.95
    assert not frame.duplicated([Col.CUSTOMER_ID, CUTOFF]).any()
    assert frame[CUTOFF].nunique() == 8 and frame.groupby(CUTOFF).size().min() > 500
    alive, expected = frame["clv_probability_alive"], frame["clv_expected_purchases_90d"]
    assert alive.notna().all() and expected.notna().all()
    assert alive.between(0.0, 1.0).all() and (expected >= 0).all()
    # Every row is in the population: a purchase in the year before its cutoff.
    assert (frame[Feature.DAYS_SINCE_LAST_ORDER] <= 365).all()

    train, valid, test = ds.split()
    # A 90-day embargo between the sets: test 2025-10-01, validation 2025-07-01 (its labels end by
    # 10-01), training 2025-03-01 and 04-01 (theirs end by 07-01); 05-01, 06-01, 08-01, 09-01 unused.
    assert set(test[CUTOFF]) == {pd.Timestamp(2025, 10, 1)} and set(valid[CUTOFF]) == {pd.Timestamp(2025, 7, 1)}
    assert set(train[CUTOFF]) == {pd.Timestamp(2025, 3, 1), pd.Timestamp(2025, 4, 1)}


@pytest.mark.data
def test_true_dropouts_are_labelled_churned_far_more_often(generated):
    raw, connection, ds, _ = generated
    # Customer -> person through the orders the generator recorded (ids shared by the raw files).
    pairs = connection.execute(
        "SELECT DISTINCT m.customer_id, l.order_id FROM lines l JOIN identity_map m ON m.key_hash = l.record_key"
    ).fetchdf()
    pairs["order_id"] = pairs["order_id"].astype("int64")
    orders = pd.read_parquet(raw / "_truth" / "orders.parquet", columns=["order_id", "person_id", "timestamp"])
    person_of = pairs.merge(orders, on="order_id").groupby("customer_id")["person_id"].first()
    persons = pd.read_parquet(raw / "_truth" / "persons.parquet", columns=["person_id", "alive_at_end"])
    alive_at_end = persons.set_index("person_id")["alive_at_end"].astype(bool)
    last_order = orders.groupby("person_id")["timestamp"].max().dt.tz_convert(None)

    cutoff = ds.cutoffs[-1]  # 2025-10-01: the last cutoff whose 90-day window fits the data
    last = ds.frame[ds.frame[CUTOFF] == pd.Timestamp(cutoff)]
    person = person_of.reindex(last[Col.CUSTOMER_ID]).to_numpy()
    alive = alive_at_end.reindex(person).to_numpy(dtype=bool)
    churned = last[CHURNED].to_numpy()
    dead, living = churned[~alive], churned[alive]
    assert len(dead) > 100 and len(living) > 100
    # Seeds 1-4 and 23 give 0.81-0.83 for the drop-outs and 0.62-0.65 for the living (whose
    # purchase rates are often low: a 90-day gap is common). Drop-outs that bought in the window
    # dropped out after it; the living churn only by chance.
    assert dead.mean() > 0.75 and dead.mean() > living.mean() + 0.12
    odds = (dead.mean() / (1 - dead.mean())) / (living.mean() / (1 - living.mean()))
    assert odds > 2.0
    # Sharper: a person whose last order is before the cutoff and who dropped out never buys again,
    # so each of their customers is churned (all of them, not most).
    gone = ~alive & (last_order.reindex(person).to_numpy() < np.datetime64(cutoff))
    assert gone.sum() > 100 and churned[gone].min() == 1
