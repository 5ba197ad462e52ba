"""The servable rules of thumb on a synthetic store: personal top frequency and TIFU-KNN served by the
same recommend code as the blend (filters, sources, reasons, the artefact), and a training run whose
champion is the baseline: registered, tagged, served as it was judged.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from features.store import ibis_backend
from training.recommend.artefact import load, save
from training.recommend.candidates import CandidateSizes
from training.recommend.evaluation import CHOSEN, RECALL, TIFU, TOP_FREQUENCY
from training.recommend.model import RecommenderModel, RecommenderSettings
from tests.fixtures_history import synthetic_store

pytestmark = pytest.mark.data

NOW = datetime(2026, 1, 2, tzinfo=timezone.utc)
SMALL = RecommenderSettings(factors=16, iterations=8, n_estimators=40, knn_neighbours=50, tifu_neighbours=30,
                            candidates=CandidateSizes(own=30, als=30, knn=30, popular=20, tifu=30))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("champion"), 2_000, 23, now=NOW)


@pytest.fixture(scope="module")
def model(store):
    _, con = store
    last = con.execute("SELECT max(ts) FROM lines").fetchall()[0][0]
    cutoff = datetime.combine(last.date() + timedelta(days=1), datetime.min.time())
    return RecommenderModel(SMALL).fit(ibis_backend(con), cutoff)


def _busy(model: RecommenderModel, k: int = 40) -> list[int]:
    counts = np.diff(model.data_.purchases.indptr)
    return [int(c) for c in model.data_.customer_ids[np.argsort(-counts, kind="stable")[:k]]]


def test_tifu_vectors_are_positive_exactly_on_the_purchased_pairs(model):
    data = model.data_
    np.testing.assert_array_equal(data.tifu.indptr, data.weight.indptr)
    np.testing.assert_array_equal(data.tifu.indices, data.weight.indices)
    np.testing.assert_array_equal(data.tifu.data > 0, data.purchases.data > 0)
    # Each vector is a decayed mean over the customer's groups of baskets: no entry above 1 / m * m = 1.
    assert data.tifu.data.max() <= 1.0 + 1e-12


def test_top_frequency_serves_the_customers_items_by_orders_then_the_popular_list(model):
    rule = model.with_ranker("top_frequency")
    assert rule.booster_ is None and model.booster_ is not None
    data = model.data_
    for customer in _busy(model, 15):
        got = rule.recommend([customer], 20, exclude_purchased=False)
        u = int(np.searchsorted(data.customer_ids, customer))
        orders = {data.item_ids[j]: v for j, v in zip(data.purchases.indices[data.purchases.indptr[u]:data.purchases.indptr[u + 1]],
                                                        data.purchases.data[data.purchases.indptr[u]:data.purchases.indptr[u + 1]]) if v > 0}
        own = got[got["source"] == "repurchase"]
        counts = [orders[i] for i in own["item_id"]]
        assert counts == sorted(counts, reverse=True) and len(own) == min(20, len(orders), SMALL.candidates.own)
        # Every own item comes before every popular one.
        assert list(got["source"]) == ["repurchase"] * len(own) + ["popularity"] * (len(got) - len(own))
        assert all(r.startswith("you bought it") for r in own["reason"])
    # With the purchases excluded (the default) the list is the popular list minus the customer's items.
    filtered = rule.recommend(_busy(model, 5), 10)
    assert set(filtered["source"]) == {"popularity"}
    assert all(r.startswith("popular: ") for r in filtered["reason"])


def test_popular_items_are_never_explained_by_a_purchase(model):
    for ranker in ("lightgbm", "tifu_knn"):
        got = model.with_ranker(ranker).recommend(list(model.data_.customer_ids[:400]), 20)
        popular = got[got["source"] == "popularity"]
        assert len(popular) and all(r.startswith("popular: ") for r in popular["reason"]), ranker
        because = got[got["reason"].str.startswith("because you bought")]
        assert set(because["source"]) <= {"model"}


def test_tifu_knn_ranks_its_own_scores_and_keeps_the_filters(model):
    rule = model.with_ranker("tifu_knn", tifu_alpha=1.0)
    customers = _busy(model, 10)
    got = rule.recommend(customers, 20, exclude_purchased=False)
    # alpha = 1: only the customer's own decayed frequencies, then the popular list.
    data = model.data_
    for customer, rows in got.groupby("customer_id", sort=False):
        u = int(np.searchsorted(data.customer_ids, customer))
        lo, hi = data.tifu.indptr[u], data.tifu.indptr[u + 1]
        mine = dict(zip(data.item_ids[data.tifu.indices[lo:hi]], data.tifu.data[lo:hi]))
        scored = [mine.get(i, 0.0) for i in rows["item_id"]]
        head = [v for v in scored if v > 0]
        assert head == sorted(head, reverse=True) and scored[: len(head)] == head
    category = data.category[data.recommendable][0]
    only = rule.recommend(customers, 10, categories=[category])
    assert set(data.category[data.item_positions(list(only["item_id"]))[0]]) <= {category}


def test_a_saved_rule_model_has_no_ranker_file_and_serves_the_same_lists(model, tmp_path):
    rule = model.with_ranker("top_frequency")
    where = save(rule, tmp_path / "rule")
    assert not (where / "ranker.txt").exists()
    again = load(where)
    assert again.settings_.ranker == "top_frequency" and again.booster_ is None
    customers = _busy(model, 20)
    pd.testing.assert_frame_equal(rule.recommend(customers, 20), again.recommend(customers, 20))
    pd.testing.assert_frame_equal(rule.recommend(customers, 20, exclude_purchased=False),
                                  again.recommend(customers, 20, exclude_purchased=False))
    blend = save(model, tmp_path / "blend")
    np.testing.assert_array_equal(load(blend).models_.tifu_pool_rows, model.models_.tifu_pool_rows)


@pytest.fixture(scope="module")
def baseline_champion(store, monkeypatch_module):
    """A training run whose validation choice is forced to the baseline."""
    import training.recommend.search as search
    from training.recommend.pipeline import train_recommender

    settings, con = store
    original = search.choose_champion

    def baseline(table):
        _, reasons = original(table)
        return TOP_FREQUENCY, [*reasons[:-1], f"champion: {TOP_FREQUENCY}"]

    monkeypatch_module.setattr(search, "choose_champion", baseline)
    small = settings.updated(recommend={"model": {"factors": 16, "iterations": 8, "n_estimators": 40}},
                             train_search_budget_s=0.0)
    return small, train_recommender(con, small)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_a_baseline_champion_is_registered_tagged_and_served_as_judged(baseline_champion):
    import mlflow

    from training import tracking

    settings, result = baseline_champion
    assert result.gate.champion == TOP_FREQUENCY
    assert result.model.settings_.ranker == "top_frequency" and result.model.booster_ is None
    assert {CHOSEN, TIFU, TOP_FREQUENCY} <= set(result.table.index)
    assert result.search is not None and result.search.trials == 1 and result.search.champion == TOP_FREQUENCY
    assert any("is the champion" in r for r in result.gate.reasons)
    client = tracking.configure(settings)
    run = client.get_run(result.run_id)
    assert run.data.params["champion_configuration"] == TOP_FREQUENCY
    assert run.data.params["search.trials"] == "1"
    assert run.data.tags["gate.champion"] == TOP_FREQUENCY
    # The run's "model" metrics are the champion's row.
    assert run.data.metrics["model.recall_at_20"] == pytest.approx(result.table.loc[TOP_FREQUENCY, RECALL])
    assert "model.recall_at_20_repeat" in run.data.metrics and "model.recall_at_20_explore" in run.data.metrics
    assert any(k.startswith("validation.personal_top_frequency.") for k in run.data.metrics)
    version = client.get_model_version(result.model_name, result.model_version)
    assert version.tags["champion_configuration"] == TOP_FREQUENCY
    loaded = mlflow.pyfunc.load_model(f"models:/{result.model_name}/{result.model_version}")
    customers = result.model.data_.customer_ids[:20]
    got = loaded.predict(pd.DataFrame({"customer_id": customers}), params={"n": 7})
    pd.testing.assert_frame_equal(got.reset_index(drop=True), result.model.recommend(list(customers), 7))


def test_the_search_starts_from_the_settings_as_given_and_stays_within_its_budget(store):
    import optuna

    from training.recommend.search import search, suggest
    from training.recommend.split import temporal_split

    _, con = store
    last = con.execute("SELECT max(ts) FROM lines").fetchall()[0][0]
    split = temporal_split(last, test_days=90, valid_days=90)
    # The first trial takes 10 s, the others 1 s: after two, 11 s are spent and the longest took 10,
    # so a third would pass the 20 s budget (one of the mean duration, 5.5 s, would not).
    result = search(ibis_backend(con), split, SMALL, budget_s=20.0, clock=TrialClock([10.0, 1.0, 1.0, 1.0]))
    assert result.trials == 2 and result.seconds == 11.0
    assert result.champion in {CHOSEN, TIFU, TOP_FREQUENCY}
    assert {CHOSEN, TIFU, TOP_FREQUENCY} <= set(result.table.index)
    # The first trial is the settings as given, in the search's own names.
    given = suggest(optuna.trial.FixedTrial(_given_params(SMALL)), SMALL)
    assert given["factors"] == SMALL.factors and given["candidates"] == SMALL.candidates
    assert result.settings.ranker == {CHOSEN: "lightgbm", TIFU: "tifu_knn", TOP_FREQUENCY: "top_frequency"}[result.champion]
    assert result.params["half_life_days"] == result.settings.half_life_days


class TrialClock:
    """A clock read in the search's order (its start, then per trial: the trial's start, its end and
    the budget check): trial i lasts ``durations[i]`` seconds, nothing else takes any time."""

    def __init__(self, durations: list[float]) -> None:
        self.durations, self.reads, self.now = durations, 0, 0.0

    def __call__(self) -> float:
        if self.reads % 3 == 2:  # the end of trial reads // 3
            self.now += self.durations[self.reads // 3]
        self.reads += 1
        return self.now


def _given_params(settings: RecommenderSettings) -> dict:
    from training.recommend.search import _as_trial_params

    return _as_trial_params(settings)
