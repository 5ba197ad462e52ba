"""RecommendOptions: the one declaration of a recommend call's filters, read by the model, the
service's request schema, its grouping of concurrent requests and its default-list lookup."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from serving.schemas import RecommendRequest
from training.recommend.model import RecommenderModel
from training.recommend.options import RecommenderInputError, RecommendOptions
from training.recommend.ranked import Ranked

pytestmark = pytest.mark.unit

#: Fields of the request body that say whom the list is for, not what it holds.
WHO = {"customer_id", "key", "recent_items"}


def test_options_equal_by_value_are_one_key():
    first = RecommendOptions(5, categories=["Fruit", "Veg"], exclude_items=["A1"], channel="web")
    again = RecommendOptions(n=5, categories=("Fruit", "Veg"), exclude_items=("A1",), channel="web")
    assert first == again and hash(first) == hash(again) and first is not again
    groups: dict[RecommendOptions, list[int]] = {}
    for k, options in enumerate([first, again, RecommendOptions(6, categories=["Fruit", "Veg"], channel="web")]):
        groups.setdefault(options, []).append(k)
    assert list(groups.values()) == [[0, 1], [2]]
    # An empty exclusion list excludes nothing: the same options as none.
    assert RecommendOptions(exclude_items=[]) == RecommendOptions()
    # No filter is not an empty filter: no category at all allows no item.
    assert RecommendOptions(categories=[]) != RecommendOptions()
    with pytest.raises(AttributeError):
        first.n = 6  # type: ignore[misc]


def test_requests_asking_the_same_give_equal_options():
    body = {"n": 7, "categories": ["Fruit"], "exclude_items": ["A1", "B2"], "exclude_purchased": False,
            "country": "UK"}
    one = RecommendOptions.from_request(RecommendRequest(customer_id=1, **body))
    other = RecommendOptions.from_request(RecommendRequest(customer_id=2, recent_items=["C3"], **body))
    assert one == other == RecommendOptions(7, exclude_purchased=False, categories=("Fruit",),
                                            exclude_items=("A1", "B2"), country="UK")
    assert RecommendOptions.from_request(RecommendRequest(customer_id=1, n=7, categories=["Veg"])) != one


def test_from_request_maps_every_field_of_the_request_that_shapes_a_list():
    """A field added to the request body is an option (or says whom the list is for): nothing a
    request asks is dropped on the way to the model."""
    assert set(RecommendRequest.model_fields) - WHO == set(RecommendOptions.names())
    # Each option comes from its own field: every one set to something other than its default.
    body = {"n": 3, "exclude_purchased": False, "categories": ["c"], "exclude_categories": ["d"],
            "exclude_items": ["i"], "channel": "app", "country": "FR"}
    assert set(body) == set(RecommendOptions.names())
    options = RecommendOptions.from_request(RecommendRequest(customer_id=1, **body))
    default = RecommendOptions()
    for name, value in body.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(options, name) == expected != getattr(default, name), name


def test_recommends_keywords_are_the_options():
    """``recommend``'s filter keywords and the options are one list: a new option is a keyword too."""
    parameters = set(inspect.signature(RecommenderModel.recommend).parameters)
    assert parameters - {"self", "customer_ids", "recent_items", "progress"} == set(RecommendOptions.names())


def test_default_options_are_the_ones_ranked_at_export():
    assert RecommendOptions(n=5).is_default(10) and RecommendOptions(n=10).is_default(10)
    assert not RecommendOptions(n=11).is_default(10)
    assert RecommendOptions(n=5, exclude_items=[]).is_default(10)
    for changed in ({"exclude_purchased": False}, {"categories": []}, {"categories": ["x"]},
                    {"exclude_categories": ["x"]}, {"exclude_items": ["x"]}, {"channel": "web"}, {"country": "UK"}):
        assert not RecommendOptions(n=5, **changed).is_default(10), changed
    assert RecommendOptions.from_request(RecommendRequest(customer_id=1)).is_default(10)


@pytest.mark.parametrize("n", [0, 1001, -3, True, 2.0, "5", None])
def test_a_bad_n_is_refused_with_what_is_expected(n):
    with pytest.raises(RecommenderInputError, match="n must be a whole number from 1 to 1000"):
        RecommendOptions(n)


def test_bad_filters_are_refused_by_name():
    assert RecommendOptions(np.int64(1000)).n == 1000
    with pytest.raises(RecommenderInputError, match="categories must be a list"):
        RecommendOptions(categories="Fruit")  # type: ignore[arg-type]
    with pytest.raises(RecommenderInputError, match="exclude_items must be a list"):
        RecommendOptions(exclude_items=7)  # type: ignore[arg-type]
    with pytest.raises(RecommenderInputError, match="exclude_purchased must be true or false"):
        RecommendOptions(exclude_purchased="no")  # type: ignore[arg-type]
    with pytest.raises(RecommenderInputError, match="channel must be a text"):
        RecommendOptions(channel=3)  # type: ignore[arg-type]


def _ranked(customers: list[int]) -> Ranked:
    k = len(customers)
    return Ranked(customer_id=np.asarray(customers, dtype=np.int64), rank=np.arange(1, k + 1, dtype=np.int64),
                  item=np.arange(k, dtype=np.int64), score=np.linspace(1, 0, k), source=np.full(k, "model", dtype=object),
                  reason=np.full(k, None, dtype=object), fallback=np.zeros(k, dtype=bool))


def test_ranked_lists_split_by_customer_in_the_order_asked():
    ranked = _ranked([9, 9, 2, 5, 5, 5])
    parts = ranked.by_customer([9, 4, 2, 5])
    assert [p.customer_id.tolist() for p in parts] == [[9, 9], [], [2], [5, 5, 5]]
    assert [p.item.tolist() for p in parts] == [[0, 1], [], [2], [3, 4, 5]]
    assert _ranked([7, 7]).by_customer([7])[0].item.tolist() == [0, 1]
    assert ranked.by_customer([]) == []
