"""The two-stage recommender on a synthetic store: data arrays, candidates, filters, cold start,
fold-in, similar items, explanations, the artefact, the comparison and its gate, MLflow, the CLI.

The generator's customers prefer the category of their segment (synthetic.generate), so a model that
learns from co-purchases has something real to find: the ranked blend must beat the baselines there.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.interactions import PURCHASES, interactions
from features.settings import RecommendModelSettings
from features.store import ibis_backend
from tests.fixtures_history import synthetic_store
from training.plotting import run_plot_dir
from training.recommend.artefact import RecommenderArtefactError, load, save
from training.recommend.block import UserBlock
from training.recommend.candidates import CANDIDATE_SOURCES, FEATURES, CandidateSizes, candidate_source, candidates
from training.recommend.data import build_interaction_data
from training.recommend.evaluation import (
    ALS,
    BUY_AGAIN,
    CHOSEN,
    POPULAR,
    POPULAR_RECENT,
    RECALL,
    RECALL_NEW,
    recommender_gate,
)
from training.recommend.model import RecommenderInputError, RecommenderModel, RecommenderSettings
from training.recommend.options import RecommendOptions
from training.recommend.ranked import RECOMMENDATION_COLUMNS, SOURCES
from training.recommend.topk import ItemFactorIndex

pytestmark = pytest.mark.data

NOW = datetime(2026, 1, 2, tzinfo=UTC)
SMALL = RecommenderSettings(factors=16, iterations=8, n_estimators=60, knn_neighbours=50,
                            candidates=CandidateSizes(own=30, als=30, knn=30, popular=20))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    settings, con = synthetic_store(tmp_path_factory.mktemp("recommend"), 3_000, 17, now=NOW)
    return settings, con


@pytest.fixture(scope="module")
def cutoff(store):
    _, con = store
    last = con.execute("SELECT max(ts) FROM lines").fetchall()[0][0]
    return datetime.combine(last.date() + timedelta(days=1), datetime.min.time())


@pytest.fixture(scope="module")
def model(store, cutoff):
    _, con = store
    return RecommenderModel(SMALL).fit(ibis_backend(con), cutoff)


def _owned(model, customer) -> set[str]:
    data = model.data_
    u = int(np.searchsorted(data.customer_ids, customer))
    lo, hi = data.purchases.indptr[u], data.purchases.indptr[u + 1]
    return set(data.item_ids[data.purchases.indices[lo:hi][data.purchases.data[lo:hi] > 0]])


def _busy_customers(model, k: int = 25) -> list[int]:
    counts = np.diff(model.data_.purchases.indptr)
    return [int(c) for c in model.data_.customer_ids[np.argsort(-counts, kind="stable")[:k]]]


# --- data ----------------------------------------------------------------------------------------


def test_interaction_arrays_share_one_layout_and_hold_the_interactions(store, cutoff):
    _, con = store
    backend = ibis_backend(con)
    data = build_interaction_data(backend, cutoff)
    frame = interactions(backend, cutoff)
    for m in (data.weight_short, data.purchases, data.days_since):
        np.testing.assert_array_equal(m.indptr, data.weight.indptr)
        np.testing.assert_array_equal(m.indices, data.weight.indices)
    assert data.weight.nnz == len(frame)
    assert list(data.customer_ids) == sorted(frame["customer_id"].unique())
    # Purchases per pair, as the interactions table counts them.
    u = np.searchsorted(data.customer_ids, frame["customer_id"].to_numpy())
    i = np.searchsorted(data.item_ids, frame["item_id"].astype(str).to_numpy(dtype=object))
    np.testing.assert_array_equal(np.asarray(data.purchases[u, i]).ravel(), frame[PURCHASES].to_numpy())
    # Distinct buyers per item, and the last-30-days buyers are among them.
    assert data.buyers.sum() == (frame[PURCHASES] > 0).sum()
    assert np.all(data.buyers_30d <= data.buyers_90d) and np.all(data.buyers_90d <= data.buyers)
    # Recommendable: active products of the catalogue only.
    items = con.execute("SELECT item_id, active AND is_product FROM items").fetchall()
    expected = {str(item) for item, ok in items if ok}
    assert set(data.item_ids[data.recommendable]) == expected


# --- candidates ----------------------------------------------------------------------------------


def _full_top(users, items, k, allowed, excluded):
    """The reference: every score computed, masked, and the k best of each row (ties: larger norm,
    then lower item position) as {row: [items in rank order]}."""
    scores = users.astype(np.float32) @ items.astype(np.float32).T
    scores[:, ~allowed] = -np.inf
    for r, c in excluded:
        scores[r, c] = -np.inf
    norms = np.linalg.norm(items.astype(np.float64), axis=1)
    out = {}
    for r in range(len(users)):
        ok = np.flatnonzero(np.isfinite(scores[r]))
        order = ok[np.lexsort((ok, -norms[ok], -scores[r, ok]))]
        out[r] = order[:k].tolist()
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_als_top_k_skips_items_but_finds_the_same_lists_as_scoring_every_item(seed, monkeypatch):
    import training.recommend.topk as topk

    # Small stretches so that a 3,000-item catalogue takes many steps (the production sizes are
    # tuned for 50,000 items).
    monkeypatch.setattr(topk, "ALS_FIRST_ITEMS", 64)
    monkeypatch.setattr(topk, "ALS_STRETCH_ITEMS", 128)
    monkeypatch.setattr(topk, "ALS_DOUBLING_FROM", 1_024)
    rng = np.random.default_rng(seed)
    n_items, n_users, k = 3_000, 60, 40
    # Zipf-like norms as ALS gives them, a block of never-bought items with zero factors (ties at
    # a score of 0) and a duplicated item (ties at equal norms).
    items = rng.normal(size=(n_items, 16)) * ((1.0 + np.arange(n_items)) ** -0.8)[rng.permutation(n_items), None]
    items[:200] = 0.0
    items[500] = items[501]
    users = rng.normal(size=(n_users, 16))
    users[0] = 0.0  # a customer with no factors: every score 0
    users[1] = -items[2000] * 50  # a customer whose best scores are negative
    allowed = rng.random(n_items) > 0.1
    excluded_rows = rng.integers(0, n_users, 400)
    excluded_cols = rng.integers(0, n_items, 400)
    excluded_cols[:30] = np.argsort(-np.linalg.norm(items, axis=1))[:30]  # the largest items, excluded
    index = ItemFactorIndex(items)
    rows, found, ranks = index.top(users, k, allowed, excluded_rows, excluded_cols)
    expected = _full_top(users, items, k, allowed, set(zip(excluded_rows.tolist(), excluded_cols.tolist())))
    got = {r: [] for r in range(n_users)}
    for r, item, rank in zip(rows.tolist(), found.tolist(), ranks.tolist()):
        assert rank == len(got[r])
        got[r].append(item)
    assert got == expected
    # Fewer allowed items than k: every allowed one, none of the others.
    few = np.zeros(n_items, dtype=bool)
    few[[5, 700, 2999]] = True
    rows, found, _ = index.top(users[:3], k, few, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    assert sorted(zip(rows.tolist(), found.tolist())) == [(r, i) for r in range(3) for i in (5, 700, 2999)]


def test_candidates_features_and_the_owned_filter(model):
    data, models = model.data_, model.models_
    rows = np.arange(40)
    block = UserBlock.of_users(data, rows, models.user_factors)
    kwargs = dict(item_index=models.item_index, similarity=models.similarity, sizes=SMALL.candidates,
                  allowed=data.recommendable)
    found = candidates(data, block, exclude_owned=False, **kwargs)
    assert found.x.shape == (len(found), len(FEATURES))
    keys = found.row * data.n_items + found.item
    assert np.all(np.diff(keys) > 0)  # sorted by (row, item), no duplicates
    assert data.recommendable[found.item].all()
    owned = found.feature("owned") == 1
    # Own items come from the repeat-purchase source and carry the customer's purchases.
    assert np.array_equal(owned[found.proposed_by(("own",))], np.ones(int(found.proposed_by(("own",)).sum()), bool))
    purchases = np.asarray(data.purchases[rows[found.row], found.item]).ravel()
    np.testing.assert_array_equal(found.feature("purchases"), purchases)
    assert np.isnan(found.feature("days_since_purchase")[~owned]).all()
    # ALS scores are the factor dot products.
    np.testing.assert_allclose(
        found.feature("als_score"),
        np.einsum("ij,ij->i", models.user_factors[rows[found.row]], models.item_factors[found.item]), rtol=1e-5)

    excluded = candidates(data, block, exclude_owned=True, **kwargs)
    assert (excluded.feature("owned") == 0).all()
    # Repurchasable items stay even when purchases are excluded.
    keep = np.zeros(data.n_items, dtype=bool)
    keep[found.item[owned]] = True
    kept = candidates(data, block, exclude_owned=True, keep_owned=keep, **kwargs)
    assert (kept.feature("owned") == 1).any()


# --- candidate sources ---------------------------------------------------------------------------


def test_the_registry_names_every_source_once_with_its_size_default_and_features():
    """A source is its function, its registration, its size default (a field of CandidateSizes, the
    same in the ``recommend.model.candidates`` setting's default) and its features among FEATURES."""
    sizes = {f.name: f.default for f in dataclasses.fields(CandidateSizes)}
    assert list(CANDIDATE_SOURCES) == ["own", "als", "knn", "tifu", "popular"]  # the search's order
    assert set(CANDIDATE_SOURCES) == set(sizes)
    assert RecommendModelSettings.model_fields["candidates"].default_factory() == sizes
    flags = [source.flag for source in CANDIDATE_SOURCES.values()]
    assert sorted(flags) == [1 << i for i in range(len(flags))]  # one bit each
    for source in CANDIDATE_SOURCES.values():
        assert source.label in SOURCES
        assert {source.rank_feature, source.score_feature} - {None} <= set(FEATURES)
        assert 1 <= source.search_sizes[0] <= source.search_sizes[1]
    with pytest.raises(ValueError, match="registered twice"):
        candidate_source("own", label="repurchase")
    with pytest.raises(ValueError, match="label"):
        candidate_source("new", label="bestseller")
    with pytest.raises(ValueError, match="not in FEATURES"):
        candidate_source("new", label="model", rank_feature="new_rank")
    with pytest.raises(ValueError, match="already filled"):
        candidate_source("new", label="model", score_feature="knn_score")


@pytest.mark.parametrize("name", list(CANDIDATE_SOURCES))
def test_each_source_alone_keeps_to_its_size_and_to_every_filter(model, name):
    """Every registered source, the only one with a size: its candidates are flagged by it alone,
    at most its size per customer, allowed items only, never a purchase when purchases are excluded
    (but for a repurchasable item), and its rank feature (if it has one) is the place in its list."""
    data, models = model.data_, model.models_
    rows = np.arange(60)
    block = UserBlock.of_users(data, rows, models.user_factors)
    allowed = data.recommendable & ~data.in_categories(sorted({c for c in data.category if c})[:1])
    size = 7
    sizes = CandidateSizes(**{f.name: size for f in dataclasses.fields(CandidateSizes)}).only((name,))
    found = candidates(data, block, item_index=models.item_index, similarity=models.similarity, sizes=sizes,
                       allowed=allowed, exclude_owned=True, tifu=models.tifu(SMALL))
    source = CANDIDATE_SOURCES[name]
    if name != "own":  # every customer bought something: the own source has nothing left to propose
        assert len(found) > 0
    assert (found.sources == source.flag).all()
    assert found.proposed_by((name,)).all()
    assert allowed[found.item].all()
    assert (found.feature("owned") == 0).all()
    assert (found.group_sizes(len(rows)) <= size).all()
    if source.rank_feature is not None:
        ranks = found.feature(source.rank_feature)
        for r in np.unique(found.row):
            assert sorted(ranks[found.row == r].tolist()) == list(range(int((found.row == r).sum())))
    # With purchases allowed, the own source proposes the customers' purchases only.
    kept = candidates(data, block, item_index=models.item_index, similarity=models.similarity, sizes=sizes,
                      allowed=allowed, exclude_owned=False, tifu=models.tifu(SMALL))
    if name == "own":
        assert len(kept) > 0 and (kept.feature("owned") == 1).all()


def test_a_new_source_is_its_function_its_registration_and_its_size(model, monkeypatch):
    """A source registered with its size joins the candidates, its pairs flagged by its bit, and
    leaves the other sources' candidates as they were."""
    import training.recommend.candidates as cand

    monkeypatch.setattr(cand, "CANDIDATE_SOURCES", dict(CANDIDATE_SOURCES))

    @dataclasses.dataclass(frozen=True)
    class WithNewest(CandidateSizes):
        newest: int = 3

    @candidate_source("newest", label="model")
    def newest_items(inputs, size):
        """The highest allowed item positions, the same for everyone (a stand-in for a real source)."""
        items = np.flatnonzero(inputs.allowed)[::-1][:size]
        row = np.repeat(np.arange(inputs.block.size, dtype=np.int64), len(items))
        item = np.tile(items, inputs.block.size).astype(np.int64)
        keep = inputs.allows(row, item)
        return cand.Proposal(row[keep], item[keep])

    data, models = model.data_, model.models_
    block = UserBlock.of_users(data, np.arange(30), models.user_factors)
    kwargs = dict(item_index=models.item_index, similarity=models.similarity, allowed=data.recommendable,
                  exclude_owned=False, tifu=models.tifu(SMALL))
    found = candidates(data, block, sizes=WithNewest(newest=3).only(("newest",)), **kwargs)
    newest = np.flatnonzero(data.recommendable)[::-1][:3]
    assert sorted(set(found.item.tolist())) == sorted(newest.tolist())
    assert (found.group_sizes(30) == 3).all() and found.proposed_by(("newest",)).all()
    assert (found.sources == cand.CANDIDATE_SOURCES["newest"].flag).all()
    everything = candidates(data, block, sizes=WithNewest(**dataclasses.asdict(SMALL.candidates)), **kwargs)
    before = candidates(data, block, sizes=WithNewest(**dataclasses.asdict(SMALL.candidates), newest=0), **kwargs)
    old = everything.proposed_by(tuple(CANDIDATE_SOURCES))
    assert (everything.proposed_by(("newest",)) | old).all()
    keys = before.row * data.n_items + before.item
    assert set(keys.tolist()) == set((everything.row[old] * data.n_items + everything.item[old]).tolist())


# --- recommend -----------------------------------------------------------------------------------


def test_lists_are_ranked_distinct_recommendable_and_exclude_purchases(model):
    customers = _busy_customers(model)
    out = model.recommend(customers, 10)
    assert list(out.columns) == list(RECOMMENDATION_COLUMNS)
    assert list(out["customer_id"].unique()) == customers  # the order asked for
    for customer, group in out.groupby("customer_id", sort=False):
        assert list(group["rank"]) == list(range(1, 11))
        assert group["item_id"].is_unique
        assert (np.diff(group["score"].to_numpy()) <= 0).all()
        assert not set(group["item_id"]) & _owned(model, customer)
    allowed = set(model.data_.item_ids[model.data_.recommendable])
    assert set(out["item_id"]) <= allowed
    assert not out["fallback"].any()
    assert set(out["source"]) <= {"model", "popularity"}
    assert out["reason"].map(lambda r: isinstance(r, str) and len(r) > 5).all()

    with_purchases = model.recommend(customers, 10, exclude_purchased=False)
    assert (with_purchases["source"] == "repurchase").any()
    repeat = with_purchases[with_purchases["source"] == "repurchase"].iloc[0]
    assert repeat["item_id"] in _owned(model, repeat["customer_id"])
    assert repeat["reason"].startswith("you bought it")


def test_large_frames_carry_the_same_item_ids(model, monkeypatch):
    import training.recommend.ranked as ranked

    customers = _busy_customers(model, 8)
    small = model.recommend(customers, 10)
    monkeypatch.setattr(ranked, "LARGE_FRAME_ROWS", 1)  # item ids taken in Arrow
    pd.testing.assert_frame_equal(model.recommend(customers, 10), small)


def test_batch_equals_one_customer_at_a_time(model):
    customers = _busy_customers(model, 8)
    batch = model.recommend(customers, 5)
    alone = pd.concat([model.recommend([c], 5) for c in customers], ignore_index=True)
    pd.testing.assert_frame_equal(batch, alone)


def test_category_and_item_filters(model):
    data = model.data_
    customers = _busy_customers(model, 10)
    category = pd.Series(data.category[data.recommendable]).value_counts().index[0]
    only = model.recommend(customers, 10, categories=[category.upper()])  # case-insensitive
    assert len(only) and set(data.category[data.item_positions(only["item_id"])[0]]) == {category}
    without = model.recommend(customers, 10, exclude_categories=[category])
    assert category not in set(data.category[data.item_positions(without["item_id"])[0]])
    first = model.recommend(customers[:1], 10)
    banned = list(first["item_id"].iloc[:3])
    again = model.recommend(customers[:1], 10, exclude_items=banned)
    assert not set(again["item_id"]) & set(banned) and len(again) == 10


def test_repurchasable_categories_come_back_after_a_purchase(store, cutoff, model):
    customers = _busy_customers(model, 25)
    bought = {c: _owned(model, c) for c in customers}
    categories = pd.Series([model.data_.category[model.data_.item_positions([i])[0][0]]
                            for items in bought.values() for i in items]).value_counts()
    consumable = str(categories.index[0])
    repurchase = RecommenderModel(SMALL)
    repurchase.__dict__.update({k: v for k, v in model.__dict__.items() if k.endswith("_")})
    repurchase.settings_ = RecommenderSettings(**{**SMALL.__dict__, "repurchasable_categories": (consumable,)})
    out = repurchase.recommend(customers, 20)
    again = [(c, i) for c, i in zip(out["customer_id"], out["item_id"]) if i in bought[c]]
    assert again, "items of a repurchasable category should be recommended again"
    cats = {model.data_.category[model.data_.item_positions([i])[0][0]] for _, i in again}
    assert cats == {consumable}


def test_unknown_customer_gets_the_popular_list_of_their_segment(model):
    data = model.data_
    unknown = int(data.customer_ids.max()) + 1000
    out = model.recommend([unknown], 10)
    assert out["fallback"].all() and (out["source"] == "popularity").all() and len(out) == 10
    expected = data.item_ids[data.popular_overall[:10]]
    assert list(out["item_id"]) == list(expected)
    assert (np.diff(out["score"].to_numpy()) < 0).all()
    assert out["reason"].str.match(r"popular: [\d,]+ buyers in the last 30 days").all()
    segments = data.popular_by["country"]
    country = sorted(segments, key=lambda c: -len(segments[c].items))[-1]
    by_country = model.recommend([unknown], 5, country=country.upper())
    assert list(by_country["item_id"]) == list(data.item_ids[segments[country].items[:5]])
    first = int(segments[country].orders[0])
    assert by_country["reason"].iloc[0] == f"popular: {first:,} orders in {country.upper()} in the last 90 days"
    # An unknown segment falls back to the overall list.
    assert list(model.recommend([unknown], 10, channel="carrier pigeon")["item_id"]) == list(expected)


def test_fold_in_recommends_from_the_recent_items_of_a_new_customer(model):
    data = model.data_
    known = _busy_customers(model, 1)[0]
    recent = sorted(_owned(model, known))[:5]
    newcomer = int(data.customer_ids.max()) + 7
    folded = model.recommend([newcomer], 10, recent_items={newcomer: recent})
    assert not folded["fallback"].any() and len(folded) == 10
    assert not set(folded["item_id"]) & set(recent)  # they count as purchases
    popular = model.recommend([newcomer], 10)
    assert list(folded["item_id"]) != list(popular["item_id"])
    # The fold-in's ALS factors are implicit's recalculate_user on the BM25-weighted items.
    block = model._folded_in(recent)
    assert block is not None and block.factors.shape == (1, SMALL.factors)
    scores = block.factors @ model.models_.item_factors.T
    top = data.item_ids[np.argsort(-scores[0])[:30]]
    similar = set()
    for item in recent:
        similar |= set(model.similar_items(item, 30)["item_id"])
    assert len(set(top) & (similar | set(recent))) >= 5  # it lands near what was bought
    # Unknown items only: nothing to fold in, the popular fallback.
    assert model.recommend([newcomer], 5, recent_items={newcomer: ["no-such-item"]})["fallback"].all()


def test_similar_items_and_explain(model):
    data = model.data_
    item = data.item_ids[data.popular_overall[0]]
    similar = model.similar_items(item, 10)
    assert len(similar) == 10 and item not in set(similar["item_id"])
    assert set(similar["item_id"]) <= set(data.item_ids[data.recommendable])
    co = similar[similar["source"] == "co-purchase"]
    assert (np.diff(co["score"].to_numpy()) <= 0).all()
    with pytest.raises(KeyError, match="not known"):
        model.similar_items("no-such-item")

    customer = _busy_customers(model, 1)[0]
    top = model.recommend([customer], 1)["item_id"].iloc[0]
    why = model.explain(customer, top, n=3)
    assert list(why.columns) == ["item_id", "contribution"] and 1 <= len(why) <= 3
    u = int(np.searchsorted(data.customer_ids, customer))
    touched = set(data.item_ids[data.weight.indices[data.weight.indptr[u] : data.weight.indptr[u + 1]]])
    assert set(why["item_id"]) <= touched  # items the customer bought (or browsed)
    assert (np.diff(why["contribution"].to_numpy()) <= 0).all()
    with pytest.raises(KeyError, match="customer"):
        model.explain(-5, top)


def test_bad_requests_name_the_problem(model):
    with pytest.raises(RecommenderInputError, match="n must be"):
        model.recommend([1], 0)
    with pytest.raises(RecommenderInputError, match="whole numbers"):
        model.recommend(["abc"], 5)


# --- artefact ------------------------------------------------------------------------------------


def test_saved_model_recommends_exactly_as_the_fitted_one(model, tmp_path):
    where = save(model, tmp_path / "rec")
    again = load(where)
    customers = _busy_customers(model, 30)
    pd.testing.assert_frame_equal(model.recommend(customers, 20), again.recommend(customers, 20))
    pd.testing.assert_frame_equal(model.similar_items(model.data_.item_ids[0], 5),
                                  again.similar_items(model.data_.item_ids[0], 5))
    (where / "ranker.txt").unlink()
    with pytest.raises(RecommenderArtefactError, match="ranker.txt"):
        load(where)


# --- gate ----------------------------------------------------------------------------------------


def _table(blend_all: float, blend_new: float) -> pd.DataFrame:
    rows = {
        CHOSEN: (blend_all, blend_new),
        POPULAR: (0.10, 0.04),
        POPULAR_RECENT: (0.11, 0.05),
        BUY_AGAIN: (0.30, float("nan")),
        ALS: (0.27, 0.09),
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=[RECALL, RECALL_NEW])


@pytest.mark.unit
def test_gate_needs_the_best_baseline_on_all_items_and_popularity_and_als_on_new_items():
    ok = recommender_gate(_table(0.34, 0.11))
    assert ok.eligible and ok.best_baseline == BUY_AGAIN
    assert ok.margin_all == pytest.approx(0.04) and ok.margin_new == pytest.approx(0.02)
    repeats_only = recommender_gate(_table(0.34, 0.08))
    assert not repeats_only.eligible and any("does not beat ALS" in r for r in repeats_only.reasons)
    explores_only = recommender_gate(_table(0.28, 0.12))
    assert not explores_only.eligible and "does not beat it" in explores_only.reasons[0]


# --- training step, registry, CLI --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(store):
    from training.recommend.pipeline import train_recommender

    settings, con = store
    small = settings.updated(recommend={"model": {"factors": 16, "iterations": 8, "n_estimators": 60}},
                             train_search_budget_s=0.0)
    return small, train_recommender(con, small)


def test_training_step_compares_gates_logs_and_registers(trained):
    import mlflow

    from training import tracking

    settings, result = trained
    table = result.table
    assert list(table.index)[0] == CHOSEN and {POPULAR, BUY_AGAIN, ALS, "BPR", "item-KNN cosine", "item-KNN BM25"} <= set(table.index)
    # On the generator's planted tastes the blend wins on both counts.
    assert result.gate.eligible, result.gate.reasons
    assert table.loc[CHOSEN, RECALL] > table.loc[BUY_AGAIN, RECALL]
    assert np.isnan(table.loc[BUY_AGAIN, RECALL_NEW])
    assert result.split.train_end < result.split.valid_end < result.split.test_end
    assert (run_plot_dir(settings.reports_dir, "recommend", result.run_id) / "comparison.png").stat().st_size > 10_000

    client = tracking.configure(settings)
    run = client.get_run(result.run_id)
    assert run.data.tags["gate.eligible"] == "true"
    assert run.data.params["catalogue_version"] == result.catalogue_version
    assert run.data.metrics["model.recall_at_20"] == pytest.approx(table.loc[CHOSEN, RECALL])
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "tables")}
    assert any(p.endswith("model_comparison.csv") for p in artifacts)
    version = client.get_model_version(result.model_name, result.model_version)
    assert version.tags["gate_eligible"] == "true"
    # The registered pyfunc recommends exactly what the model does.
    loaded = mlflow.pyfunc.load_model(f"models:/{result.model_name}/{result.model_version}")
    customers = result.model.data_.customer_ids[:20]
    got = loaded.predict(pd.DataFrame({"customer_id": customers}), params={"n": 7})
    pd.testing.assert_frame_equal(got.reset_index(drop=True), result.model.recommend(list(customers), 7))


def test_cli_writes_every_customers_list(trained, tmp_path, monkeypatch):
    from rapport.cli import app

    settings, result = trained
    monkeypatch.setenv("RAPPORT_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    out_file = tmp_path / "recs.csv"
    # The training step registers but does not promote (the pipeline does): no champion, no lists.
    refused = runner.invoke(app, ["recommend", "--output", str(out_file)])
    assert refused.exit_code == 1 and "rapport models promote" in refused.output and not out_file.exists()
    promoted = runner.invoke(app, ["models", "promote", result.model_name, result.model_version, "--reason", "test"])
    assert promoted.exit_code == 0, promoted.output
    out = runner.invoke(app, ["recommend", "--output", str(out_file), "--n", "5"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    frame = pd.read_csv(out_file)
    assert list(frame.columns) == [*RECOMMENDATION_COLUMNS, "model_version"]
    assert frame["customer_id"].nunique() == result.model.data_.n_users
    assert frame.groupby("customer_id").size().max() == 5
    assert (frame["model_version"].astype(str) == str(result.model_version)).all()
    bad = runner.invoke(app, ["recommend", "--output", str(tmp_path / "x.json")])
    assert bad.exit_code != 0
    missing = runner.invoke(app, ["recommend", "--output", str(tmp_path / "y.csv"), "--version", "999"])
    assert missing.exit_code == 1 and "999" in missing.output


def test_rank_is_recommend_customer_by_customer(model):
    """The service's path (a few customers ranked in one block, no DataFrame, split by customer)
    gives each customer the list ``recommend`` gives: known ones, a customer asked twice, an unknown
    one folded in on recent items and an unknown one with nothing (the popular list)."""
    known = _busy_customers(model, 3)
    newcomer, stranger = int(model.data_.customer_ids.max()) + 7, int(model.data_.customer_ids.max()) + 8
    recent = [str(i) for i in model.data_.item_ids[model.data_.recommendable][:3]]
    asked = [known[0], known[1], newcomer, known[0], stranger, known[2]]
    distinct = list(dict.fromkeys(asked))
    options = RecommendOptions(6, exclude_categories=["no such category"], channel="web")
    lists = dict(zip(distinct, model.rank(distinct, options, recent_items={newcomer: recent}).by_customer(distinct)))
    assert model.knows(asked).tolist() == [True, True, False, True, False, True]
    for customer in asked:
        expected = model.recommend([customer], 6, exclude_categories=["no such category"], channel="web",
                                   recent_items={newcomer: recent})
        pd.testing.assert_frame_equal(lists[customer].frame(model.data_.item_ids), expected)
    ranked = model.rank(known[1], RecommendOptions(6))  # one customer, not a list of them
    assert model.knows(known[1]).tolist() == [True]
    pd.testing.assert_frame_equal(ranked.frame(model.data_.item_ids), model.recommend([known[1]], 6))
    assert ranked.records(model.data_.item_ids)[0][:2] == (1, model.recommend([known[1]], 6)["item_id"].iloc[0])


def test_lists_of_several_rankers_from_one_candidate_set_are_each_rankers_own(model, monkeypatch):
    """The evaluation ranks the blend and the two rules on one candidate generation per filter: each
    ranker gets, customer by customer, the items ``recommend`` of ``with_ranker`` serves, in its
    order, with purchases excluded or not, on one thread or on blocks side by side. Lists longer
    than a rule's own candidates (60 items) show that a rule never ranks what only the blend's
    sources proposed."""
    import training.recommend.model as recommend_model

    customers = np.asarray(model.data_.customer_ids[::7][:150], dtype=np.int64)
    rankers = ("lightgbm", "tifu_knn", "top_frequency")
    monkeypatch.setattr(recommend_model, "BLOCK_CUSTOMERS", 40)  # several blocks, on two threads
    options = [RecommendOptions(60, exclude_purchased=exclude) for exclude in (False, True)]
    found = model.ranked_items(customers, rankers, options)
    assert set(found) == {(r, o) for r in rankers for o in options}
    for (ranker, option), (ids, items) in found.items():
        expected = model.with_ranker(ranker).rank(customers, option)
        np.testing.assert_array_equal(ids, expected.customer_id)
        np.testing.assert_array_equal(items, expected.item)
    # The rules alone (no blend among them) read their own sources only: still the same lists.
    _, items = model.ranked_items(customers, ("top_frequency",), [RecommendOptions(60)])[
        "top_frequency", RecommendOptions(60)]
    np.testing.assert_array_equal(items, model.with_ranker("top_frequency").rank(customers, RecommendOptions(60)).item)
    with pytest.raises(RecommenderInputError, match="unknown to the model"):
        model.ranked_items([int(model.data_.customer_ids.max()) + 1], rankers, [RecommendOptions(5)])
    with pytest.raises(ValueError, match="'best' unknown"):
        model.ranked_items(customers, ("best",), [RecommendOptions(5)])


# --- default lists (ranked once for the service) -------------------------------------------------


def test_default_lists_hold_every_customers_top_n_and_check_their_files(model, tmp_path):
    import json

    from training.recommend.precomputed import ARRAYS, HEADER, DefaultLists, DefaultListsError

    lists = DefaultLists.compute(model, 6)
    data = model.data_
    assert lists.n_customers == data.n_users
    customers = _busy_customers(model, 5) + [int(data.customer_ids[-1])]
    for customer in customers:
        row = int(np.searchsorted(data.customer_ids, customer))
        for n in (1, 4, 6):
            ranked = model.rank(customer, RecommendOptions(n))
            assert model.knows(customer).all()
            assert lists.lookup(row, n, customer).records(data.item_ids) == ranked.records(data.item_ids)
        assert lists.lookup(row, 7, customer) is None  # longer than the lists kept: ranked by the caller

    lists.save(tmp_path)
    loaded = DefaultLists.load(tmp_path, model)
    row = int(np.searchsorted(data.customer_ids, customers[0]))
    assert loaded.lookup(row, 6, customers[0]).records(data.item_ids) == lists.lookup(row, 6, customers[0]).records(
        data.item_ids)
    assert DefaultLists.load(tmp_path / "none", model) is None

    header = json.loads((tmp_path / HEADER).read_text())
    (tmp_path / HEADER).write_text(json.dumps({**header, "customers": header["customers"] + 1}))
    with pytest.raises(DefaultListsError, match="belong to another model"):
        DefaultLists.load(tmp_path, model)
    (tmp_path / HEADER).write_text(json.dumps({**header, "reasons": header["reasons"][:1]}))
    with pytest.raises(DefaultListsError, match="out of range"):
        DefaultLists.load(tmp_path, model)
    (tmp_path / HEADER).write_text(json.dumps(header))
    np.save(tmp_path / ARRAYS / "item.npy", lists.item[:-1])
    with pytest.raises(DefaultListsError, match="do not have the"):
        DefaultLists.load(tmp_path, model)
