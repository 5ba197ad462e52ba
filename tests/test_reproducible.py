"""The same store gives the same features and the same churn model on every run.

A sum of doubles depends on the order its terms are added in, and DuckDB's parallel aggregation
adds them in an order that changes from run to run: the last bits of a customer's spend moved, and
with them LightGBM's early stopping (same ROC AUC, a different number of trees). Amounts are summed
exactly (:func:`features.history.money_sum`), so the rows' order no longer matters.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from features.customer import customer_features
from features.schema import Feature
from features.store import ibis_backend
from tests.fixtures_history import History, line, store_with, synthetic_store
from training import tracking
from training.churn.evaluation import LABEL
from training.churn.pipeline import train_churn

AS_OF = datetime(2024, 3, 1)


def _one_order(prices: list[float]) -> History:
    """One customer's one web order whose lines cost ``prices``, inserted in that order."""
    h = History()
    h.items = [{"item_id": f"I{i}", "name": f"Item {i}", "category": "home", "price": p, "active": True,
                "is_product": True} for i, p in enumerate(prices)]
    h.identity = [{"key_hash": "k", "key_type": "account", "customer_id": 1}]
    h.lines = [line(f"L{i}", "O1", "web", datetime(2024, 2, 1), "k", f"I{i}", 1, p) for i, p in enumerate(prices)]
    return h


@pytest.mark.data
def test_spend_does_not_depend_on_the_order_of_the_lines():
    # (0.1 + 0.2) + 0.3 is 0.6000000000000001 in doubles, (0.3 + 0.2) + 0.1 is 0.6: summed exactly,
    # both orders give the double nearest to 0.6.
    values = []
    for prices in ([0.1, 0.2, 0.3], [0.3, 0.2, 0.1]):
        con = store_with(_one_order(prices))
        features = customer_features(ibis_backend(con), AS_OF)
        values.append(float(features.loc[1, Feature.HISTORIC_CLV]))
        con.close()
    assert values == [0.6, 0.6]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("reproducible"), 1_500, 5,
                           now=datetime(2026, 1, 1, tzinfo=timezone.utc),
                           churn={"with_clv_features": True, "max_cutoffs": 3})


@pytest.mark.model
def test_training_the_churn_step_twice_on_one_store_gives_the_same_model(store):
    # The search is off (the suite's budget 0): with a time budget the number of trials depends on
    # the machine's speed, and so may the chosen configuration.
    settings, con = store
    assert settings.train_search_budget_s == 0
    first, second = (train_churn(con, settings) for _ in range(2))
    assert first.test_cutoff == second.test_cutoff
    a, b = first.model, second.model
    assert a.learner_ == b.learner_
    assert a.best_iteration_ == b.best_iteration_
    assert a.to_dict() == b.to_dict()
    test = _test_frame(con, settings, first)
    assert np.array_equal(a.predict_proba(test), b.predict_proba(test))
    assert first.table.equals(second.table)
    # LightGBM is fitted whichever learner is served: its rounds, and every number the runs logged.
    client = tracking.configure(settings)
    runs = [client.get_run(r.run_id).data for r in (first, second)]
    assert int(runs[0].params["best_iteration"]) > 0
    assert runs[0].params == runs[1].params and runs[0].metrics == runs[1].metrics


@pytest.mark.model
def test_the_churn_run_logs_how_its_search_went(store):
    settings, con = store
    # A budget of a few seconds: how many trials finish depends on the machine, the figures do not.
    budgeted = settings.model_copy(update={"train_search_budget_s": 3.0})
    result = train_churn(con, budgeted)
    params = tracking.configure(budgeted).get_run(result.run_id).data.params
    trials, stopped = int(params["search.trials"]), int(params["search.trials_stopped"])
    assert trials + stopped >= 1 and stopped <= 1
    assert float(params["search.seconds"]) >= 0 and float(params["search.budget_s"]) == 3.0
    # The chosen values are a finished trial's (with its rounds), or the configured ones kept unjudged.
    assert ("search.best_iteration" in params) == (trials > 0)
    assert any(note.startswith("searched ") for note in result.notes)


def _test_frame(con, settings, result):
    from training.churn.dataset import build_dataset

    dataset = build_dataset(ibis_backend(con), cutoffs=[result.test_cutoff], horizon_days=result.horizon_days,
                            lookback_days=int(result.windows["lookback_days"]), time_unit=settings.time_unit,
                            with_clv=True)
    frame = dataset.frame
    assert len(frame) > 100 and frame[LABEL].nunique() == 2
    return frame
