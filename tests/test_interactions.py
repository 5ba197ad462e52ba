"""Customer × item interactions, their sparse matrix and confidence weighting.

The expected values on the small history below are computed by hand in the comments. The cutoff is
2024-03-01 00:00 and most tests use a half-life of 10 days, so ages of 5, 10, 20 and 30 days give
weights 2^-0.5, 0.5, 0.25 and 0.125 (February 2024 has 29 days).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from implicit.nearest_neighbours import bm25_weight, tfidf_weight
from scipy import sparse

from features.interactions import (
    INTERACTION_COLUMNS,
    confidence,
    interaction_table,
    interactions,
    recommendable_items,
    to_matrix,
)
from features.schema import Col
from features.store import ibis_backend
from tests.fixtures_history import History, insert, line, random_history, ret, store_with

AS_OF = datetime(2024, 3, 1)
HALF_LIFE = 10.0
BROWSE = 0.1
EVENT_COLUMNS = ("record_key", "item_id", "event_type", "ts")


def _history() -> History:
    """Ann (1: web account + loyalty card) and Ben (2: web account).

    - O1 web 02-20 Ann SHIRT 1 (10 days old).
    - O2 store 02-25 Ann (card) SHIRT 2 + POST 1 (5 days old; postage is no product).
    - O3 web 02-10 Ann MUG 2, both returned 02-12: fully returned, no purchase.
    - O4 app 02-20 Ben BOOK 3, one returned 02-21: partial return, still a purchase (10 days old).
    - O5 web 02-10 Ben SHIRT 1, returned 03-03: the return is after the cutoff (20 days old).
    - O6 web 03-05 Ann BOOK 1: after the cutoff.
    - O7 store 02-28 anonymous SHIRT 1: no customer.
    - O8 web 01-31 Ann OLDLAMP 1: inactive in the catalogue, still an interaction (30 days old).
    """
    d = datetime
    h = History()
    h.items = [
        {"item_id": "SHIRT", "name": "Shirt", "category": "apparel", "price": 20.0, "active": True, "is_product": True},
        {"item_id": "MUG", "name": "Mug", "category": "home", "price": 10.0, "active": True, "is_product": True},
        {"item_id": "BOOK", "name": "Book", "category": "books", "price": 15.0, "active": True, "is_product": True},
        {"item_id": "OLDLAMP", "name": "Lamp", "category": "home", "price": 30.0, "active": False, "is_product": True},
        {"item_id": "POST", "name": "Postage", "category": None, "price": 5.0, "active": True, "is_product": False},
    ]
    h.identity = [
        {"key_hash": "k_ann", "key_type": "account", "customer_id": 1},
        {"key_hash": "k_ann_card", "key_type": "loyalty_card", "customer_id": 1},
        {"key_hash": "k_ben", "key_type": "account", "customer_id": 2},
    ]
    h.lines = [
        line("L1", "O1", "web", d(2024, 2, 20), "k_ann", "SHIRT", 1, 20.0),
        line("L2", "O2", "store", d(2024, 2, 25), "k_ann_card", "SHIRT", 2, 20.0),
        line("L3", "O2", "store", d(2024, 2, 25), "k_ann_card", "POST", 1, 5.0),
        line("L4", "O3", "web", d(2024, 2, 10), "k_ann", "MUG", 2, 10.0),
        line("L5", "O4", "app", d(2024, 2, 20), "k_ben", "BOOK", 3, 15.0),
        line("L6", "O5", "web", d(2024, 2, 10), "k_ben", "SHIRT", 1, 20.0),
        line("L7", "O6", "web", d(2024, 3, 5), "k_ann", "BOOK", 1, 15.0),
        line("L8", "O7", "store", d(2024, 2, 28), None, "SHIRT", 1, 20.0),
        line("L9", "O8", "web", d(2024, 1, 31), "k_ann", "OLDLAMP", 1, 30.0),
    ]
    h.returns = [
        ret("R1", "L4", 2, 20.0, d(2024, 2, 12)),
        ret("R2", "L5", 1, 15.0, d(2024, 2, 21)),
        ret("R3", "L6", 1, 20.0, d(2024, 3, 3)),
    ]
    return h


def _events() -> list[dict]:
    d = datetime
    return [
        {"record_key": "k_ann", "item_id": "BOOK", "event_type": "view", "ts": d(2024, 2, 20)},  # 10 days old
        {"record_key": "k_ann_card", "item_id": "SHIRT", "event_type": "add_to_cart", "ts": d(2024, 2, 25)},  # 5 days
        {"record_key": "k_stranger", "item_id": "SHIRT", "event_type": "view", "ts": d(2024, 2, 25)},  # unknown key
        {"record_key": "k_ben", "item_id": "POST", "event_type": "view", "ts": d(2024, 2, 25)},  # not a product
        {"record_key": "k_ann", "item_id": "MUG", "event_type": "view", "ts": d(2024, 3, 2)},  # after the cutoff
    ]


def _store(extra_lines=(), extra_returns=(), extra_events=()):
    con = store_with(_history())
    insert(con, "events", pd.DataFrame(_events() + list(extra_events), columns=list(EVENT_COLUMNS)))
    insert(con, "lines", list(extra_lines))
    insert(con, "returns", list(extra_returns))
    return con


@pytest.fixture(scope="module")
def backend():
    con = _store()
    yield ibis_backend(con)
    con.close()


def _by_pair(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index([Col.CUSTOMER_ID, Col.ITEM_ID])


# --- interactions ---------------------------------------------------------------------------------

H = 2**-0.5  # weight of something 5 days old with a 10-day half-life


@pytest.mark.unit
def test_interactions_on_the_hand_made_history(backend):
    df = interactions(backend, AS_OF, half_life_days=HALF_LIFE, browse_weight=BROWSE)
    assert tuple(df.columns) == INTERACTION_COLUMNS
    assert df.dtypes.astype(str).tolist() == ["int64", "object", "int64", "datetime64[ns]", "int64", "float64"]
    # Sorted by customer, then item. No MUG row (fully returned, its view is after the cutoff), no POST,
    # nothing for the anonymous sale or the unknown key.
    assert list(zip(df[Col.CUSTOMER_ID], df[Col.ITEM_ID])) == [
        (1, "BOOK"), (1, "OLDLAMP"), (1, "SHIRT"), (2, "BOOK"), (2, "SHIRT"),
    ]
    got = _by_pair(df)
    expected = {
        # Ann BOOK: no purchase (O6 is after the cutoff), one view 10 days old: 0.1 x 0.5.
        (1, "BOOK"): (0, None, 1, BROWSE * 0.5),
        # Ann OLDLAMP: inactive but bought 30 days ago: 0.5^3.
        (1, "OLDLAMP"): (1, "2024-01-31", 0, 0.125),
        # Ann SHIRT: O1 (10 days: 0.5) and O2 (5 days: 2^-0.5), two keys, one customer; one
        # add_to_cart 5 days old counts as a view: + 0.1 x 2^-0.5.
        (1, "SHIRT"): (2, "2024-02-25", 1, 0.5 + H + BROWSE * H),
        # Ben BOOK: 3 bought, 1 returned before the cutoff -> still a purchase, 10 days old.
        (2, "BOOK"): (1, "2024-02-20", 0, 0.5),
        # Ben SHIRT: its return is booked after the cutoff -> a purchase, 20 days old: 0.25.
        (2, "SHIRT"): (1, "2024-02-10", 0, 0.25),
    }
    for pair, (purchases, last, views, weight) in expected.items():
        row = got.loc[pair]
        assert row["purchases"] == purchases, pair
        assert (pd.isna(row["last_purchase"]) if last is None else row["last_purchase"] == pd.Timestamp(last)), pair
        assert row["views"] == views, pair
        assert math.isclose(row["weight"], weight, rel_tol=1e-12), pair


@pytest.mark.unit
def test_without_decay_purchases_count_one_and_views_browse_weight(backend):
    got = _by_pair(interactions(backend, AS_OF, half_life_days=None, browse_weight=0.25))
    # weight = purchases + 0.25 x views
    assert got["weight"].to_dict() == {
        (1, "BOOK"): 0.25, (1, "OLDLAMP"): 1.0, (1, "SHIRT"): 2.25, (2, "BOOK"): 1.0, (2, "SHIRT"): 1.0,
    }
    assert (got["weight"] == got["purchases"] + 0.25 * got["views"]).all()


@pytest.mark.unit
def test_decay_halves_a_purchase_one_half_life_old():
    # One purchase exactly 365 days before the cutoff, one just before it (1 second).
    h = History(
        items=[{"item_id": "A", "name": "A", "category": None, "price": 1.0, "active": True, "is_product": True}],
        identity=[{"key_hash": "k", "key_type": "account", "customer_id": 7}],
        lines=[
            line("L1", "O1", "web", AS_OF - timedelta(days=365), "k", "A", 1, 1.0),
            line("L2", "O2", "web", AS_OF - timedelta(seconds=1), "k", "B", 1, 1.0),
        ],
    )
    con = store_with(h)
    try:
        got = _by_pair(interactions(ibis_backend(con), AS_OF, half_life_days=365.0))
    finally:
        con.close()
    assert math.isclose(got.loc[(7, "A"), "weight"], 0.5, rel_tol=1e-12)
    assert math.isclose(got.loc[(7, "B"), "weight"], 0.5 ** (1 / 86_400 / 365), rel_tol=1e-12)
    assert got.loc[(7, "B"), "weight"] > 0.999999  # B is missing from the catalogue: still a product


@pytest.mark.unit
def test_since_keeps_only_recent_orders_and_events(backend):
    got = _by_pair(interactions(backend, AS_OF, half_life_days=None, browse_weight=BROWSE, since=datetime(2024, 2, 15)))
    # OLDLAMP (01-31) and Ben's SHIRT (02-10) are before since; everything else is at or after 02-15.
    assert sorted(got.index) == [(1, "BOOK"), (1, "SHIRT"), (2, "BOOK")]
    assert got.loc[(1, "SHIRT"), ["purchases", "views"]].tolist() == [2, 1]


@pytest.mark.unit
def test_an_empty_history_gives_an_empty_frame():
    con = store_with(History())
    try:
        df = interactions(ibis_backend(con), AS_OF)
    finally:
        con.close()
    assert df.empty and tuple(df.columns) == INTERACTION_COLUMNS


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"half_life_days": 0.0}, "half_life_days"),
        ({"half_life_days": float("nan")}, "half_life_days"),
        ({"browse_weight": -0.1}, "browse_weight"),
        ({"since": AS_OF}, "since"),
    ],
)
def test_bad_arguments_are_named(backend, kwargs, message):
    with pytest.raises(ValueError, match=message):
        interaction_table(backend, AS_OF, **kwargs)


@pytest.mark.unit
def test_extra_weights_are_the_weights_of_their_half_lives_from_one_scan(backend):
    both = interactions(backend, AS_OF, half_life_days=HALF_LIFE, browse_weight=BROWSE,
                        extra_weights={"weight_short": 5.0, "flat": None})
    assert list(both.columns) == [*INTERACTION_COLUMNS, "weight_short", "flat"]
    pd.testing.assert_frame_equal(both[list(INTERACTION_COLUMNS)],
                                  interactions(backend, AS_OF, half_life_days=HALF_LIFE, browse_weight=BROWSE))
    for name, half_life in (("weight_short", 5.0), ("flat", None)):
        alone = interactions(backend, AS_OF, half_life_days=half_life, browse_weight=BROWSE)
        np.testing.assert_allclose(both[name].to_numpy(), alone["weight"].to_numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="extra_weights: 'weight' is not a new column"):
        interaction_table(backend, AS_OF, extra_weights={"weight": 5.0})
    with pytest.raises(ValueError, match=r"extra_weights\['weight_short'\] must be a positive number of days"):
        interaction_table(backend, AS_OF, extra_weights={"weight_short": 0.0})


@pytest.mark.unit
def test_recommendable_items_are_active_products(backend):
    # OLDLAMP is inactive, POST is postage: neither is ever recommended.
    assert recommendable_items(backend).tolist() == ["BOOK", "MUG", "SHIRT"]


# --- no leakage -----------------------------------------------------------------------------------

_after = st.integers(min_value=0, max_value=60 * 86_400).map(lambda s: AS_OF + timedelta(seconds=s))
_keys = st.sampled_from(["k_ann", "k_ann_card", "k_ben", "k_new", None])
_items = st.sampled_from(["SHIRT", "MUG", "BOOK", "OLDLAMP", "POST", "NEW"])


@st.composite
def _future_rows(draw):
    n_lines = draw(st.integers(0, 4))
    lines = [
        line(f"F{i}", f"FO{draw(st.integers(0, 2))}", "web", draw(_after), draw(_keys), draw(_items),
             draw(st.integers(1, 3)), 10.0)
        for i in range(n_lines)
    ]
    # Returns booked after the cutoff, against lines sold before or after it.
    returnable = ["L1", "L2", "L5", "L6", "L9"] + [row["line_key"] for row in lines]
    returns = [
        ret(f"FR{i}", draw(st.sampled_from(returnable)), 1, 10.0, draw(_after)) for i in range(draw(st.integers(0, 3)))
    ]
    events = [
        {"record_key": draw(_keys), "item_id": draw(_items), "event_type": draw(st.sampled_from(["view", "add_to_cart"])),
         "ts": draw(_after)}
        for _ in range(draw(st.integers(0, 3)))
    ]
    return lines, returns, events


@pytest.mark.unit
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_future_rows(), half_life=st.sampled_from([None, 3.0, 365.0]))
def test_rows_at_or_after_the_cutoff_never_change_interactions(backend, rows, half_life):
    lines, returns, events = rows
    expected = interactions(backend, AS_OF, half_life_days=half_life)
    con = _store(lines, returns, events)
    try:
        got = interactions(ibis_backend(con), AS_OF, half_life_days=half_life)
    finally:
        con.close()
    pd.testing.assert_frame_equal(got, expected)


@pytest.mark.data
@pytest.mark.parametrize("as_of", [datetime(2022, 9, 1), datetime(2023, 6, 15)])
def test_truncating_a_random_history_at_the_cutoff_changes_nothing(as_of):
    history = random_history(seed=11, n_customers=80)
    full = store_with(history)
    truncated_history = History(
        lines=[row for row in history.lines if row["ts"] < as_of],
        returns=[row for row in history.returns if row["ts"] < as_of],
        items=history.items,
        identity=history.identity,
    )
    truncated = store_with(truncated_history)
    try:
        got = interactions(ibis_backend(full), as_of)
        expected = interactions(ibis_backend(truncated), as_of)
    finally:
        full.close()
        truncated.close()
    assert len(got) > 50
    pd.testing.assert_frame_equal(got, expected)
    assert not got["item_id"].eq("POST").any()
    assert (got["purchases"] >= 1).all()  # no events in this history: every row is a purchase


# --- matrix and confidence ------------------------------------------------------------------------


@pytest.mark.unit
def test_to_matrix_round_trip(backend):
    df = interactions(backend, AS_OF, half_life_days=HALF_LIFE)
    matrix, customer_ids, item_ids = to_matrix(df)
    assert isinstance(matrix, sparse.csr_matrix) and matrix.shape == (2, 3)
    assert customer_ids.tolist() == [1, 2] and item_ids.tolist() == ["BOOK", "OLDLAMP", "SHIRT"]
    coo = matrix.tocoo()
    back = pd.DataFrame(
        {Col.CUSTOMER_ID: customer_ids[coo.row], Col.ITEM_ID: item_ids[coo.col], "weight": coo.data}
    ).sort_values([Col.CUSTOMER_ID, Col.ITEM_ID]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back, df[[Col.CUSTOMER_ID, Col.ITEM_ID, "weight"]], check_dtype=False)
    # Row order does not matter: the same interactions give the same matrix.
    shuffled, c2, i2 = to_matrix(df.sample(frac=1.0, random_state=0))
    assert (shuffled != matrix).nnz == 0 and (c2 == customer_ids).all() and (i2 == item_ids).all()
    # Another value column.
    counts, _, _ = to_matrix(df, value="purchases")
    assert counts.toarray().tolist() == [[0.0, 1.0, 2.0], [1.0, 0.0, 1.0]]


@pytest.mark.unit
def test_to_matrix_names_a_missing_column():
    with pytest.raises(ValueError, match="weight"):
        to_matrix(pd.DataFrame({Col.CUSTOMER_ID: [1], Col.ITEM_ID: ["A"]}))


def _random_matrix(seed: int = 0) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.poisson(0.6, size=(12, 7)) * rng.uniform(0.1, 2.0, size=(12, 7))  # decayed weights
    dense[:, -1] = 0.0  # an item nobody touched (trailing empty column)
    return sparse.csr_matrix(dense)


@pytest.mark.unit
def test_confidence_bm25_is_implicits_weighting_with_items_as_documents():
    m = _random_matrix()
    got = confidence(m, scheme="bm25", K1=50, B=0.5)
    # implicit weighs the rows of its argument as documents; items are the documents (as in
    # BM25Recommender.fit), so the users x items matrix goes in transposed.
    # features does not import implicit (test_layers); this is the proof the two agree.
    expected = bm25_weight(m.T, K1=50, B=0.5).T.tocsr()
    assert isinstance(got, sparse.csr_matrix) and got.shape == m.shape
    np.testing.assert_allclose(got.toarray(), expected.toarray(), rtol=1e-12)
    assert (got != 0).nnz <= m.nnz  # weighting never invents interactions
    np.testing.assert_allclose(
        confidence(m).toarray(), bm25_weight(m.T, K1=100, B=0.8).T.toarray(), rtol=1e-12
    )


@pytest.mark.unit
def test_confidence_tfidf_and_none():
    m = _random_matrix(1)
    np.testing.assert_allclose(confidence(m, scheme="tfidf").toarray(), tfidf_weight(m.T).T.toarray(), rtol=1e-12)
    np.testing.assert_array_equal(confidence(m, scheme="none").toarray(), m.toarray())
    empty = sparse.csr_matrix((3, 4))
    assert confidence(empty).nnz == 0 and confidence(empty).shape == (3, 4)
    with pytest.raises(ValueError, match="bm42"):
        confidence(m, scheme="bm42")  # type: ignore[arg-type]


@pytest.mark.unit
def test_confidence_with_users_as_documents_is_the_als_input_weighting():
    m = _random_matrix(2)
    # implicit's usual ALS input: bm25_weight(user_items), users as documents, IDF per item.
    np.testing.assert_allclose(confidence(m, documents="users").toarray(),
                               bm25_weight(m, K1=100, B=0.8).toarray(), rtol=1e-12)
    np.testing.assert_allclose(confidence(m, scheme="tfidf", documents="users").toarray(),
                               tfidf_weight(m).toarray(), rtol=1e-12)
    with pytest.raises(ValueError, match="documents"):
        confidence(m, documents="rows")  # type: ignore[arg-type]
