"""TIFU-KNN's vectors and neighbours on hand-computed examples, the rule rankers (personal top
frequency, TIFU-KNN alone), the choice of the champion on validation and a baseline champion's gate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from training.recommend.block import UserBlock
from training.recommend.candidates import FEATURES, Candidates
from training.recommend.data import TifuDecay, tifu_vectors
from training.recommend.evaluation import (
    ALS,
    BUY_AGAIN,
    CHOSEN,
    POPULAR,
    POPULAR_RECENT,
    RECALL,
    RECALL_NEW,
    TIFU,
    TOP_FREQUENCY,
    recommender_gate,
)
from training.recommend.ranker import rule_scores
from training.recommend.search import choose_champion
from training.recommend.tifu import TifuNeighbours

pytestmark = pytest.mark.unit


def test_tifu_vectors_decay_baskets_within_and_across_groups():
    # One customer, three baskets (latest first: {0, 1} at t=30, {0} at t=20, {2} at t=10), m = 2,
    # r_b = 0.5, r_g = 0.25. Positions from the latest p = 0, 1, 2; groups p // 2 = 0, 0, 1; G = 2.
    # Basket weights r_g^g * r_b^(p mod m) / (m * G): 1/4, 0.5/4, 0.25/4.
    # u_0 = 0.25 + 0.125 = 0.375, u_1 = 0.25, u_2 = 0.0625.
    # A second customer with one basket {1}: weight 1 / (m * 1) = 0.5.
    customer = np.array([0, 0, 0, 0, 1])
    item = np.array([0, 1, 0, 2, 1])
    ts = np.array([30, 30, 20, 10, 5])
    basket = np.array([7, 7, 8, 9, 3])
    u = tifu_vectors(customer, item, ts, basket, (2, 3), TifuDecay(group_size=2, within=0.5, across=0.25)).toarray()
    np.testing.assert_allclose(u, [[0.375, 0.25, 0.0625], [0.0, 0.5, 0.0]])


def test_tifu_decay_settings_are_checked():
    with pytest.raises(ValueError, match="group size"):
        TifuDecay(group_size=0)
    with pytest.raises(ValueError, match="within"):
        TifuDecay(within=1.5)


def _block(rows: np.ndarray, tifu: np.ndarray, data_rows: np.ndarray | None) -> UserBlock:
    m = sparse.csr_matrix(tifu)
    return UserBlock(m, m, m, m, np.zeros((len(tifu), 2), dtype=np.float32), m, data_rows)


def test_tifu_neighbours_blend_the_nearest_customers_never_the_customer_themself():
    pool = np.array([[1.0, 1.0, 0.0, 0.0],   # row 0
                     [1.0, 0.9, 0.0, 0.5],   # row 1: the nearest to row 0
                     [0.0, 0.0, 1.0, 0.0]])  # row 2: nothing in common with row 0
    neighbours = TifuNeighbours(np.array([0, 1, 2]), sparse.csr_matrix(pool), k=1, alpha=0.5)
    # Customer of row 0 (in the pool): its neighbour is row 1, not itself.
    got = neighbours.scores(_block(np.array([0]), pool[:1], np.array([0]))).toarray()[0]
    np.testing.assert_allclose(got, 0.5 * pool[0] + 0.5 * pool[1])
    # k = 2: the second nearest shares nothing (cosine 0), so only row 1 counts, divided by k.
    wider = TifuNeighbours(np.array([0, 1, 2]), sparse.csr_matrix(pool), k=2, alpha=0.5)
    got = wider.scores(_block(np.array([0]), pool[:1], np.array([0]))).toarray()[0]
    np.testing.assert_allclose(got, 0.5 * pool[0] + 0.5 * pool[1] / 2)
    # A customer folded in from a request (no data row) may have any pool member as neighbour.
    got = neighbours.scores(_block(np.array([0]), pool[:1], None)).toarray()[0]
    np.testing.assert_allclose(got, 0.5 * pool[0] + 0.5 * pool[0])
    # alpha = 1: the customer's own vector.
    alone = TifuNeighbours(np.array([0, 1, 2]), sparse.csr_matrix(pool), k=1, alpha=1.0)
    np.testing.assert_allclose(alone.scores(_block(np.array([0]), pool[:1], np.array([0]))).toarray(), pool[:1])


def _candidates(purchases, days, popular_rank, tifu) -> Candidates:
    x = np.zeros((len(purchases), len(FEATURES)), dtype=np.float32)
    x[:, FEATURES.index("purchases")] = purchases
    x[:, FEATURES.index("days_since_purchase")] = days
    x[:, FEATURES.index("popular_rank")] = popular_rank
    x[:, FEATURES.index("tifu_score")] = tifu
    n = len(purchases)
    return Candidates(row=np.zeros(n, dtype=np.int64), item=np.arange(n), sources=np.zeros(n, dtype=np.int8), x=x)


def test_top_frequency_ranks_by_orders_then_recency_then_the_popular_list():
    nan = float("nan")
    found = _candidates(purchases=[2, 5, 2, 0, 0, 0], days=[40, 3, 10, nan, nan, nan],
                        popular_rank=[30, 30, 30, 2, 0, 30], tifu=[0.1, 0.0, 0.3, 0.2, 0.0, 0.0])
    order = np.argsort(-rule_scores(found, "top_frequency"), kind="stable")
    # 5 orders; then the two items of 2 orders, the more recent first; then popular ranks 0, 2,
    # then an item outside the popular list.
    assert order.tolist() == [1, 2, 0, 4, 3, 5]
    tifu_order = np.argsort(-rule_scores(found, "tifu_knn"), kind="stable")
    assert tifu_order.tolist() == [2, 3, 0, 4, 1, 5]
    with pytest.raises(ValueError, match="not a rule"):
        rule_scores(found, "lightgbm")


def _validation(blend, tifu, top_frequency=(0.30, 0.05), popular_new=0.06, als_new=0.07) -> pd.DataFrame:
    rows = {CHOSEN: blend, TIFU: tifu, TOP_FREQUENCY: top_frequency, POPULAR: (0.10, popular_new), ALS: (0.25, als_new)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[RECALL, RECALL_NEW])


def test_the_champion_is_the_best_configuration_that_beats_the_baselines_on_validation():
    assert choose_champion(_validation(blend=(0.34, 0.10), tifu=(0.33, 0.08)))[0] == CHOSEN
    assert choose_champion(_validation(blend=(0.31, 0.08), tifu=(0.35, 0.09)))[0] == TIFU
    # The blend beats top frequency on all items but not ALS on new ones; TIFU-KNN loses on all
    # items: the baseline is the champion, and the reasons say why.
    champion, reasons = choose_champion(_validation(blend=(0.34, 0.065), tifu=(0.29, 0.09)))
    assert champion == TOP_FREQUENCY
    assert "does not beat both" in reasons[0] and "does not beat" in reasons[1]
    assert reasons[-1] == f"champion: {TOP_FREQUENCY}"


def _test_table(top_frequency: float, buy_again: float) -> pd.DataFrame:
    rows = {CHOSEN: (0.30, 0.05), TIFU: (0.29, 0.05), TOP_FREQUENCY: (top_frequency, 0.04), POPULAR: (0.10, 0.04),
            POPULAR_RECENT: (0.11, 0.05), BUY_AGAIN: (buy_again, float("nan")), ALS: (0.27, 0.09)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[RECALL, RECALL_NEW])


def test_a_baseline_champion_must_still_be_the_best_baseline_on_the_test_period():
    served = recommender_gate(_test_table(0.33, 0.31), TOP_FREQUENCY)
    assert served.eligible and served.champion == TOP_FREQUENCY and served.best_baseline == BUY_AGAIN
    assert served.ratio_to_top_frequency == pytest.approx(1.0)
    beaten = recommender_gate(_test_table(0.30, 0.31), TOP_FREQUENCY)
    assert not beaten.eligible and "beaten" in beaten.reasons[1]
    # A learned champion is judged against every baseline, personal top frequency included.
    blend = recommender_gate(_test_table(0.33, 0.31), CHOSEN)
    assert not blend.eligible and blend.best_baseline == TOP_FREQUENCY
    assert blend.ratio_to_top_frequency == pytest.approx(0.30 / 0.33)
