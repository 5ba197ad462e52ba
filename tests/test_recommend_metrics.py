"""Recommender metrics on a hand-computed three-customer example, and their edge cases.

The example (item ids are integers, lists ranked best first, catalogue of 20 items):

    customer  recommended        relevant (test)   history   new = relevant - history
    A         [1, 2, 3, 4, 5]    {1, 3, 6}         {1}       {3, 6}
    B         [7, 8, 9]          {9}               {}        {9}
    C         [10, 11, 12, 13]   {20, 21}          {20}      {21}

Discounts 1 / log2(i + 1) for positions i = 1, 2, 3: 1, 0.6309298, 0.5.

k = 3, all purchases
    A  top 3 [1, 2, 3], hits at positions 1 and 3 (2 hits)
       precision 2/3, recall 2/3
       DCG = 1 + 0.5 = 1.5; IDCG over min(3, 3) = 3 positions = 2.1309298; NDCG = 0.7039180
       AP = (1/1 + 2/3) / min(3, 3) = 5/9; hit 1
    B  top 3 [7, 8, 9], hit at position 3
       precision 1/3, recall 1/1; DCG 0.5, IDCG 1, NDCG 0.5; AP = (1/3) / 1 = 1/3; hit 1
    C  no hit: every metric 0
    means: precision 1/3, recall 5/9, NDCG 0.4013060, MAP 8/27, hit rate 2/3

k = 5 (longer than B's and C's lists)
    A  the same two hits: precision 2/5, recall 2/3, NDCG 0.7039180 (IDCG over min(3, 5) = 3), AP 5/9
    B  precision 1/5 (the divisor stays k), recall 1, NDCG 0.5, AP 1/3
    means: precision 1/5, recall 5/9, NDCG 0.4013060, MAP 8/27, hit rate 2/3

k = 3, items new to the user
    A  new {3, 6}: hit at position 3 only
       precision 1/3, recall 1/2; DCG 0.5, IDCG over min(2, 3) = 2 positions = 1.6309298,
       NDCG 0.3065736; AP = (1/3) / 2 = 1/6; hit 1
    B  as above: precision 1/3, recall 1, NDCG 0.5, AP 1/3, hit 1
    C  new {21}: no hit
    means: precision 2/9, recall 1/2, NDCG 0.2688579, MAP 1/6, hit rate 2/3

Repeat and explore (the same lists): repeat = relevant & history, A {1}, C {20} (B has none).
    k = 3 and 5: A's 1 is at position 1, recall 1 / min(1, k) = 1; C's 20 is not listed, 0:
    recall@k_repeat 1/2 over 2 customers; recall@k_explore is recall@k over the new items: 1/2 at k = 3.

Coverage (catalogue 20): top 3 shows {1,2,3} + {7,8,9} + {10,11,12} = 9 items, 9/20 = 0.45;
top 5 shows {1..5} + {7,8,9} + {10..13} = 12 items, 12/20 = 0.6.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training.recommend.metrics import (
    N_CUSTOMERS,
    N_CUSTOMERS_NEW,
    RANKING_METRICS,
    catalogue_coverage,
    comparison_table,
    evaluate,
    hit_rate_at_k,
    map_at_k,
    metric_name,
    mlflow_metric_name,
    ndcg_at_k,
    new_items,
    precision_at_k,
    recall_at_k,
    repeat_items,
)

pytestmark = pytest.mark.unit

D1, D2, D3 = 1.0, 1.0 / math.log2(3.0), 0.5  # discounts at positions 1, 2, 3

RECOMMENDED = {"A": [1, 2, 3, 4, 5], "B": [7, 8, 9], "C": [10, 11, 12, 13]}
RELEVANT = {"A": {1, 3, 6}, "B": {9}, "C": {20, 21}}
HISTORY = {"A": {1}, "B": set(), "C": {20}}
CATALOGUE = 20

NDCG_A = (D1 + D3) / (D1 + D2 + D3)
NDCG_A_NEW = D3 / (D1 + D2)

EXPECTED_ALL = {
    3: {"precision": 1 / 3, "recall": 5 / 9, "ndcg": (NDCG_A + 0.5) / 3, "map": 8 / 27, "hit_rate": 2 / 3},
    5: {"precision": 1 / 5, "recall": 5 / 9, "ndcg": (NDCG_A + 0.5) / 3, "map": 8 / 27, "hit_rate": 2 / 3},
}
EXPECTED_NEW_3 = {"precision": 2 / 9, "recall": 1 / 2, "ndcg": (NDCG_A_NEW + 0.5) / 3, "map": 1 / 6,
                  "hit_rate": 2 / 3}

FUNCTIONS = {
    "precision": precision_at_k,
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "map": map_at_k,
    "hit_rate": hit_rate_at_k,
}


def test_hand_computed_constants():
    assert NDCG_A == pytest.approx(0.7039180, abs=1e-7)
    assert NDCG_A_NEW == pytest.approx(0.3065736, abs=1e-7)
    assert EXPECTED_ALL[3]["ndcg"] == pytest.approx(0.4013060, abs=1e-7)
    assert EXPECTED_NEW_3["ndcg"] == pytest.approx(0.2688579, abs=1e-7)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("metric", list(FUNCTIONS))
def test_every_metric_on_the_example(metric, k):
    assert FUNCTIONS[metric](RECOMMENDED, RELEVANT, k) == pytest.approx(EXPECTED_ALL[k][metric])


@pytest.mark.parametrize("metric", list(FUNCTIONS))
def test_every_metric_on_new_items(metric):
    fresh = new_items(RELEVANT, HISTORY)
    assert fresh == {"A": {3, 6}, "B": {9}, "C": {21}}
    assert FUNCTIONS[metric](RECOMMENDED, fresh, 3) == pytest.approx(EXPECTED_NEW_3[metric])


def test_numpy_lists_give_the_same_numbers():
    as_arrays = {c: np.asarray(items) for c, items in RECOMMENDED.items()}
    for metric, function in FUNCTIONS.items():
        assert function(as_arrays, RELEVANT, 3) == pytest.approx(EXPECTED_ALL[3][metric])
    assert catalogue_coverage(as_arrays, CATALOGUE, 3) == pytest.approx(0.45)


def test_k_larger_than_every_list():
    # Only B, k = 10: one hit at position 3. precision 1/10, recall 1, NDCG 0.5 / 1, AP (1/3) / 1.
    rec, rel = {"B": [7, 8, 9]}, {"B": {9}}
    assert precision_at_k(rec, rel, 10) == pytest.approx(0.1)
    assert recall_at_k(rec, rel, 10) == pytest.approx(1.0)
    assert ndcg_at_k(rec, rel, 10) == pytest.approx(0.5)
    assert map_at_k(rec, rel, 10) == pytest.approx(1 / 3)
    assert hit_rate_at_k(rec, rel, 10) == 1.0


def test_ideal_dcg_and_map_use_min_of_relevant_and_k():
    # Five relevant items, k = 2, both positions hit: a perfect top-2 list scores NDCG 1 and MAP 1,
    # and so does recall: 2 hits / min(5 relevant, k = 2).
    rec, rel = {"u": [1, 2, 3]}, {"u": {1, 2, 3, 4, 5}}
    assert ndcg_at_k(rec, rel, 2) == pytest.approx(1.0)
    assert map_at_k(rec, rel, 2) == pytest.approx(1.0)
    assert recall_at_k(rec, rel, 2) == pytest.approx(1.0)
    assert recall_at_k(rec, rel, 5) == pytest.approx(3 / 5)
    assert precision_at_k(rec, rel, 2) == pytest.approx(1.0)


def test_empty_relevant_sets_are_not_evaluated():
    # D has a list but bought nothing: it is left out, so the example's means do not change.
    rec = {**RECOMMENDED, "D": [1, 9]}
    rel = {**RELEVANT, "D": set()}
    for metric, function in FUNCTIONS.items():
        assert function(rec, rel, 3) == pytest.approx(EXPECTED_ALL[3][metric])
    assert evaluate(rec, rel, HISTORY, ks=(3,), catalogue_size=CATALOGUE)[N_CUSTOMERS] == 3


def test_no_evaluated_customer_gives_nan():
    for function in FUNCTIONS.values():
        assert math.isnan(function(RECOMMENDED, {"A": set()}, 3))
        assert math.isnan(function(RECOMMENDED, {}, 3))
    result = evaluate(RECOMMENDED, {}, {}, ks=(3,), catalogue_size=CATALOGUE)
    assert result[N_CUSTOMERS] == 0 and result[N_CUSTOMERS_NEW] == 0
    assert math.isnan(result["recall@3"]) and math.isnan(result["recall@3_new"])
    assert result["coverage@3"] == pytest.approx(0.45)  # coverage does not depend on the purchases


def test_customer_without_a_list_counts_as_zero():
    # E bought item 5 but has no list (missing, or empty): four customers, E contributes 0.
    for rec in ({**RECOMMENDED}, {**RECOMMENDED, "E": []}, {**RECOMMENDED, "E": np.array([], dtype=int)}):
        rel = {**RELEVANT, "E": {5}}
        assert recall_at_k(rec, rel, 3) == pytest.approx((2 / 3 + 1) / 4)
        assert hit_rate_at_k(rec, rel, 3) == pytest.approx(2 / 4)
        assert map_at_k(rec, rel, 3) == pytest.approx((5 / 9 + 1 / 3) / 4)


def test_duplicates_count_once_and_keep_their_slot():
    # [3, 3, 1] with relevant {1, 3}, k = 3: hits at positions 1 and 3 (the second 3 gains nothing).
    # precision 2/3, recall 1; DCG 1 + 0.5, IDCG over min(2, 3) = 2 positions = 1 + 0.6309298;
    # AP = (1/1 + 2/3) / 2 = 5/6; coverage: 2 distinct items.
    rec, rel = {"u": [3, 3, 1]}, {"u": {1, 3}}
    assert precision_at_k(rec, rel, 3) == pytest.approx(2 / 3)
    assert recall_at_k(rec, rel, 3) == pytest.approx(1.0)
    assert ndcg_at_k(rec, rel, 3) == pytest.approx((D1 + D3) / (D1 + D2))
    assert map_at_k(rec, rel, 3) == pytest.approx(5 / 6)
    assert catalogue_coverage(rec, 10, 3) == pytest.approx(0.2)
    # A list repeating one relevant item never exceeds one hit.
    assert recall_at_k({"u": [3, 3, 3]}, rel, 3) == pytest.approx(1 / 2)
    assert precision_at_k({"u": [3, 3, 3]}, rel, 3) == pytest.approx(1 / 3)


def test_customers_with_no_new_item_leave_the_new_variant():
    # F re-bought only what they had bought before: evaluated over all purchases, not over new items.
    rec = {**RECOMMENDED, "F": [4]}
    rel = {**RELEVANT, "F": {4}}
    hist = {**HISTORY, "F": {4}}
    assert "F" not in new_items(rel, hist)
    result = evaluate(rec, rel, hist, ks=(3,), catalogue_size=CATALOGUE)
    assert result[N_CUSTOMERS] == 4
    assert result[N_CUSTOMERS_NEW] == 3
    assert result["hit_rate@3"] == pytest.approx(3 / 4)
    for metric, value in EXPECTED_NEW_3.items():
        assert result[f"{metric}@3_new"] == pytest.approx(value)


def test_history_of_unknown_customers_is_empty():
    assert new_items({"x": {1, 2}}, {}) == {"x": {1, 2}}


def test_catalogue_coverage():
    assert catalogue_coverage(RECOMMENDED, CATALOGUE, 3) == pytest.approx(9 / 20)
    assert catalogue_coverage(RECOMMENDED, CATALOGUE, 5) == pytest.approx(12 / 20)
    assert catalogue_coverage({}, CATALOGUE, 5) == 0.0
    with pytest.raises(ValueError, match="catalogue_size=5"):
        catalogue_coverage(RECOMMENDED, 5, 5)
    with pytest.raises(ValueError, match="catalogue_size"):
        catalogue_coverage(RECOMMENDED, 0, 5)


def test_evaluate_keys_and_values():
    result = evaluate(RECOMMENDED, RELEVANT, HISTORY, ks=(3, 5), catalogue_size=CATALOGUE)
    expected_keys = (
        [N_CUSTOMERS, N_CUSTOMERS_NEW]
        + [f"{m}@{k}" for k in (3, 5) for m in RANKING_METRICS]
        + [f"{m}@{k}_new" for k in (3, 5) for m in RANKING_METRICS]
        + ["coverage@3", "coverage@5"]
        + ["n_customers_repeat", "recall@3_repeat", "recall@3_explore", "recall@5_repeat", "recall@5_explore"]
    )
    assert list(result) == expected_keys
    assert result[N_CUSTOMERS] == 3 and result[N_CUSTOMERS_NEW] == 3
    for k in (3, 5):
        for metric, value in EXPECTED_ALL[k].items():
            assert result[metric_name(metric, k)] == pytest.approx(value), (metric, k)
    for metric, value in EXPECTED_NEW_3.items():
        assert result[metric_name(metric, 3, new=True)] == pytest.approx(value), metric
    assert result["coverage@3"] == pytest.approx(0.45)
    assert result["coverage@5"] == pytest.approx(0.6)
    assert result["n_customers_repeat"] == 2
    assert result["recall@3_repeat"] == pytest.approx(0.5) and result["recall@5_repeat"] == pytest.approx(0.5)
    assert result["recall@3_explore"] == pytest.approx(0.5)
    assert result["recall@3_explore"] == result["recall@3_new"]
    # Slicing one hit matrix for the smaller k gives what each function computes on its own.
    for metric, function in FUNCTIONS.items():
        assert result[f"{metric}@3"] == pytest.approx(function(RECOMMENDED, RELEVANT, 3))


def test_evaluate_with_the_purchases_split_given_gives_the_same_numbers():
    split = (new_items(RELEVANT, HISTORY), repeat_items(RELEVANT, HISTORY))
    given = evaluate(RECOMMENDED, RELEVANT, HISTORY, ks=(3, 5), catalogue_size=CATALOGUE, split=split)
    assert given == evaluate(RECOMMENDED, RELEVANT, HISTORY, ks=(3, 5), catalogue_size=CATALOGUE)
    # The split is what the _new and _repeat columns are judged on: a different one changes them.
    nothing_new = evaluate(RECOMMENDED, RELEVANT, HISTORY, ks=(3,), catalogue_size=CATALOGUE, split=({}, split[1]))
    assert nothing_new[N_CUSTOMERS_NEW] == 0 and math.isnan(nothing_new["recall@3_new"])
    assert nothing_new["recall@3"] == given["recall@3"]


def test_evaluate_default_ks_names():
    result = evaluate(RECOMMENDED, RELEVANT, HISTORY, catalogue_size=CATALOGUE)
    for name in ("recall@20", "recall@20_new", "ndcg@10", "map@10_new", "hit_rate@20", "precision@10",
                 "coverage@10", "coverage@20"):
        assert name in result
    assert "coverage@10_new" not in result


@pytest.mark.parametrize("ks", [(), (0,), (10, 10), (2.5,)])
def test_evaluate_rejects_bad_ks(ks):
    with pytest.raises(ValueError, match="ks"):
        evaluate(RECOMMENDED, RELEVANT, HISTORY, ks=ks, catalogue_size=CATALOGUE)


def test_bad_k_and_string_lists_are_named():
    with pytest.raises(ValueError, match="k must be a positive integer"):
        recall_at_k(RECOMMENDED, RELEVANT, 0)
    with pytest.raises(TypeError, match=r"recommended\['A'\]"):
        recall_at_k({"A": "123"}, RELEVANT, 3)


def test_comparison_table():
    first = evaluate(RECOMMENDED, RELEVANT, HISTORY, ks=(3,), catalogue_size=CATALOGUE)
    empty = evaluate({}, RELEVANT, HISTORY, ks=(3,), catalogue_size=CATALOGUE)
    table = comparison_table({"als": first, "nothing": empty, "partial": {"recall@3": 0.25}})
    assert isinstance(table, pd.DataFrame)
    assert list(table.index) == ["als", "nothing", "partial"]
    assert table.index.name == "model"
    assert list(table.columns) == list(first)
    assert table.loc["als", "recall@3"] == pytest.approx(5 / 9)
    assert table.loc["nothing", "recall@3"] == 0.0
    assert table.loc["nothing", "coverage@3"] == 0.0
    assert table.loc["partial", "recall@3"] == 0.25
    assert math.isnan(table.loc["partial", "ndcg@3"])


def test_mlflow_metric_name_has_no_at_sign():
    assert mlflow_metric_name("recall@20_new") == "recall_at_20_new"
    assert mlflow_metric_name(N_CUSTOMERS) == N_CUSTOMERS
