"""Ranking metrics of a recommender on a held-out period, each with one definition.

Inputs are plain mappings, so any model can be evaluated: ``recommended`` (customer id -> ranked
item ids, best first: a list, tuple or 1-d numpy array), ``relevant`` (customer id -> set of item
ids bought in the test period) and ``history`` (customer id -> set of item ids bought before it).
The conventions every metric shares (who is evaluated, short lists, duplicates, items new to the
customer) are in :func:`evaluate`; each metric's formula is in its own function. One Python pass
over the customers builds a boolean hit matrix (customers x k); every metric is then a numpy
reduction of it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from itertools import islice
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

CustomerId: TypeAlias = Hashable
ItemId: TypeAlias = Hashable
# Keyed by any hashable id (a mapping's key type is invariant: ``Mapping[int, ...]`` is no
# ``Mapping[Hashable, ...]`` to a type checker); the item sets are read-only.
Recommended: TypeAlias = Mapping[Any, "Sequence[Any] | np.ndarray"]
ItemSets: TypeAlias = Mapping[Any, "AbstractSet[Any]"]

#: The cut-offs reported by default.
DEFAULT_KS: tuple[int, ...] = (10, 20)

#: Metric names, in the order :func:`evaluate` returns them (each followed by ``@k``).
RANKING_METRICS: tuple[str, ...] = ("precision", "recall", "ndcg", "map", "hit_rate")
COVERAGE = "coverage"
#: Suffix of the metrics over the items new to each customer.
NEW_SUFFIX = "_new"
#: Suffixes of recall over the items bought before and over the new ones, on the same lists.
REPEAT_SUFFIX = "_repeat"
EXPLORE_SUFFIX = "_explore"
#: Number of evaluated customers, over all purchases and over new items.
N_CUSTOMERS = "n_customers"
N_CUSTOMERS_NEW = "n_customers_new"
N_CUSTOMERS_REPEAT = "n_customers_repeat"
#: Index name of :func:`comparison_table`.
MODEL = "model"


def metric_name(metric: str, k: int, *, new: bool = False) -> str:
    """The stable name of a metric at k, e.g. ``recall@20`` or ``recall@20_new``.

    Parameters
    ----------
    metric
        A name of :data:`RANKING_METRICS` or :data:`COVERAGE`.
    k
        The cut-off.
    new
        Name the variant over the items new to each customer (suffix ``_new``).

    Returns
    -------
    str
        ``<metric>@<k>[_new]``.
    """
    return f"{metric}@{k}{NEW_SUFFIX if new else ''}"


def mlflow_metric_name(name: str) -> str:
    """The name under which a metric can be logged to MLflow, which rejects ``@``: ``recall_at_20_new``.

    Parameters
    ----------
    name
        A metric name of :func:`metric_name` or :func:`evaluate`.

    Returns
    -------
    str
        ``name`` with ``@`` replaced by ``_at_``.
    """
    return name.replace("@", "_at_")


# --------------------------------------------------------------------------------------------------
# Validation and the hit matrix


def _check_k(k: int, what: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{what} must be a positive integer, got {k!r}")
    return int(k)


def _top_k(items: Any, k: int, customer: CustomerId) -> list[ItemId]:
    """The first k entries of one customer's ranked list, as a Python list."""
    if items is None:
        return []
    if isinstance(items, (str, bytes)):
        raise TypeError(
            f"recommended[{customer!r}] must be a sequence of item ids, got the string {items!r}"
        )
    if isinstance(items, np.ndarray):
        if items.ndim != 1:
            raise ValueError(
                f"recommended[{customer!r}] must be a 1-d array of item ids, got shape {items.shape}"
            )
        return items[:k].tolist()
    return list(islice(items, k))


def _hit_matrix(
    recommended: Recommended, relevant: ItemSets, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hits of the evaluated customers: a boolean (customers x k) matrix and the |relevant| counts.

    Row order follows ``relevant``; customers with an empty relevant set get no row. Entry (u, i) is
    True when position i + 1 holds a relevant item that did not already appear higher in the list.
    """
    k = _check_k(k)
    rows: list[int] = []
    cols: list[int] = []
    sizes: list[int] = []
    for customer, items in relevant.items():
        if not items:
            continue
        row = len(sizes)
        sizes.append(len(items))
        top = _top_k(recommended.get(customer), k, customer)
        if len(set(top)) == len(top):  # the common case: no duplicates
            for position, item in enumerate(top):
                if item in items:
                    rows.append(row)
                    cols.append(position)
        else:
            seen: set[ItemId] = set()
            for position, item in enumerate(top):
                if item in items and item not in seen:
                    rows.append(row)
                    cols.append(position)
                seen.add(item)
    hits = np.zeros((len(sizes), k), dtype=bool)
    hits[np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)] = True
    return hits, np.asarray(sizes, dtype=np.int64)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


# --------------------------------------------------------------------------------------------------
# Per-customer values from a hit matrix (k is the matrix width)


def _precision(hits: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return hits.sum(axis=1) / hits.shape[1]


def _recall(hits: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return hits.sum(axis=1) / np.minimum(sizes, hits.shape[1])


def _ndcg(hits: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    k = hits.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(sizes, k) - 1]
    return (hits @ discounts) / ideal


def _average_precision(hits: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    k = hits.shape[1]
    precision_at_i = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return (precision_at_i * hits).sum(axis=1) / np.minimum(sizes, k)


def _hit_rate(hits: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return hits.any(axis=1).astype(float)


_PER_CUSTOMER = {
    "precision": _precision,
    "recall": _recall,
    "ndcg": _ndcg,
    "map": _average_precision,
    "hit_rate": _hit_rate,
}


# --------------------------------------------------------------------------------------------------
# Public metrics


def new_items(relevant: ItemSets, history: ItemSets) -> dict[Any, set[Any]]:
    """The relevant items each customer had not bought before; customers left with none are dropped.

    Parameters
    ----------
    relevant
        Customer id -> items bought in the test period.
    history
        Customer id -> items bought before it (a customer missing from it bought nothing).

    Returns
    -------
    dict
        Customer id -> non-empty set of new relevant items.
    """
    out: dict[CustomerId, set[ItemId]] = {}
    for customer, items in relevant.items():
        fresh = set(items) - set(history.get(customer, ()))
        if fresh:
            out[customer] = fresh
    return out


def repeat_items(relevant: ItemSets, history: ItemSets) -> dict[Any, set[Any]]:
    """The relevant items each customer had bought before; customers left with none are dropped.

    Parameters
    ----------
    relevant, history
        As in :func:`new_items`.

    Returns
    -------
    dict
        Customer id -> non-empty set of relevant items bought again.
    """
    out: dict[CustomerId, set[ItemId]] = {}
    for customer, items in relevant.items():
        again = set(items) & set(history.get(customer, ()))
        if again:
            out[customer] = again
    return out


def precision_at_k(recommended: Recommended, relevant: ItemSets, k: int) -> float:
    """Mean over evaluated customers of hits in the top k / k.

    With ``hit_u,i = 1`` when position i (1-based) of customer u's list holds a relevant item for the
    first time and ``hits_u = sum_{i<=k} hit_u,i``: ``precision@k = hits_u / k`` (a list shorter
    than k still divides by k).

    Parameters
    ----------
    recommended
        Customer id -> ranked item ids, best first.
    relevant
        Customer id -> items bought in the test period.
    k
        The cut-off, a positive integer.

    Returns
    -------
    float
        The mean; NaN when no customer has a relevant item.

    Raises
    ------
    ValueError
        ``k`` is not a positive integer, or a list is not one-dimensional.
    """
    return _mean(_precision(*_hit_matrix(recommended, relevant, k)))


def recall_at_k(recommended: Recommended, relevant: ItemSets, k: int) -> float:
    """Mean over evaluated customers of hits in the top k / min(number of relevant items, k).

    ``recall@k = hits_u / min(|R_u|, k)`` with ``R_u`` the customer's relevant items: capped, so a
    customer who bought more than k items can still reach recall 1 with k right items. When this
    definition was chosen, on Online Retail II, it gave most popular 0.099 and buy again 0.298 at
    k = 20, where ``hits_u / |R_u|`` gives 0.050 and 0.182.

    Parameters
    ----------
    recommended, relevant, k
        As in :func:`precision_at_k`.

    Returns
    -------
    float
        The mean; NaN when no customer has a relevant item.

    """
    return _mean(_recall(*_hit_matrix(recommended, relevant, k)))


def ndcg_at_k(recommended: Recommended, relevant: ItemSets, k: int) -> float:
    """Mean over evaluated customers of DCG@k / ideal DCG@k (binary gains, log2 discount).

    ``DCG = sum_{i<=k} hit_u,i / log2(i + 1)`` and ``IDCG = sum_{i <= min(|R_u|, k)} 1 / log2(i + 1)``,
    the DCG of a list with every relevant item on top (Jarvelin & Kekalainen 2002, with the
    binary-relevance gain).

    Parameters
    ----------
    recommended, relevant, k
        As in :func:`precision_at_k`.

    Returns
    -------
    float
        The mean, in [0, 1]; NaN when no customer has a relevant item.

    """
    return _mean(_ndcg(*_hit_matrix(recommended, relevant, k)))


def map_at_k(recommended: Recommended, relevant: ItemSets, k: int) -> float:
    """Mean over evaluated customers of the average precision at k, normalised by min(|relevant|, k).

    ``AP@k = sum_{i<=k} precision@i * hit_u,i / min(|R_u|, k)``, where precision@i counts the hits
    in the first i positions; the normalisation by ``min(|R_u|, k)`` makes a perfect top-k list
    score 1.

    Parameters
    ----------
    recommended, relevant, k
        As in :func:`precision_at_k`.

    Returns
    -------
    float
        The mean, in [0, 1]; NaN when no customer has a relevant item.

    """
    return _mean(_average_precision(*_hit_matrix(recommended, relevant, k)))


def hit_rate_at_k(recommended: Recommended, relevant: ItemSets, k: int) -> float:
    """Share of evaluated customers with at least one relevant item in their top k.

    ``hit_rate@k = 1 if hits_u >= 1 else 0``, averaged.

    Parameters
    ----------
    recommended, relevant, k
        As in :func:`precision_at_k`.

    Returns
    -------
    float
        The share, in [0, 1]; NaN when no customer has a relevant item.

    """
    return _mean(_hit_rate(*_hit_matrix(recommended, relevant, k)))


def catalogue_coverage(recommended: Recommended, catalogue_size: int, k: int) -> float:
    """Distinct items in the top-k lists of all customers of ``recommended`` / catalogue size.

    It depends on the lists only, not on the purchases, so it has no ``_new`` variant; customers
    without a relevant item count here too.

    Parameters
    ----------
    recommended
        Customer id -> ranked item ids, best first.
    catalogue_size
        Number of items the lists are drawn from, a positive integer.
    k
        The cut-off, a positive integer.

    Returns
    -------
    float
        The share of the catalogue shown, in [0, 1].

    Raises
    ------
    ValueError
        ``k`` or ``catalogue_size`` is not a positive integer, or the lists hold more distinct
        items than ``catalogue_size``.
    """
    catalogue_size = _check_k(catalogue_size, "catalogue_size")
    k = _check_k(k)
    shown: set[ItemId] = set()
    for customer, items in recommended.items():
        shown.update(_top_k(items, k, customer))
    if len(shown) > catalogue_size:
        raise ValueError(
            f"the top-{k} lists hold {len(shown)} distinct items, more than catalogue_size={catalogue_size}: "
            "pass the size of the catalogue the items are drawn from"
        )
    return len(shown) / catalogue_size


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    checked = tuple(_check_k(k, "every k in ks") for k in ks)
    if not checked:
        raise ValueError("ks must hold at least one cut-off, got an empty sequence")
    if len(set(checked)) != len(checked):
        raise ValueError(f"ks must not repeat a cut-off, got {checked}")
    return checked


def _ranking_metrics(
    recommended: Recommended, relevant: ItemSets, ks: tuple[int, ...], *, new: bool
) -> tuple[int, dict[str, float]]:
    hits, sizes = _hit_matrix(recommended, relevant, max(ks))
    out: dict[str, float] = {}
    for k in ks:
        top = hits[:, :k]
        for metric in RANKING_METRICS:
            out[metric_name(metric, k, new=new)] = _mean(_PER_CUSTOMER[metric](top, sizes))
    return len(sizes), out


def evaluate(
    recommended: Recommended,
    relevant: ItemSets,
    history: ItemSets,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    catalogue_size: int,
    split: tuple[ItemSets, ItemSets] | None = None,
) -> dict[str, float]:
    """Every metric at every k, over all test purchases and over the items new to each customer.

    Keys, in this order: ``n_customers``, ``n_customers_new``; then for each k,
    ``precision@k``, ``recall@k``, ``ndcg@k``, ``map@k``, ``hit_rate@k``; the same with the suffix
    ``_new`` (relevant items minus history, see :func:`new_items`); then ``coverage@k`` for each k;
    then ``n_customers_repeat`` and, for each k, ``recall@k_repeat`` and ``recall@k_explore`` (the
    same lists judged on the items bought before, and on the new ones).

    Conventions shared by every metric:

    - *Evaluated customers* are the customers of ``relevant`` with at least one relevant item. A
      metric is the plain mean over them (every customer weighs the same); it is NaN when there is
      no evaluated customer. Customers that have a list but no relevant item are not evaluated
      (they still count for catalogue coverage).
    - An evaluated customer without a list (missing from ``recommended``, or an empty list) has
      zero hits: they count as 0 in every metric, so a model cannot look better by skipping
      customers.
    - *Top k*: the first k positions of the list. A list shorter than k is not padded with anything
      that could hit, and precision still divides by k, so a short list is penalised.
    - *Duplicates are counted once*: an item repeated within the top k is a hit at its first
      position only; its later copies keep their positions (they push the items after them down)
      and gain nothing.
    - *New to the user* (:func:`new_items`): the relevant items minus the customer's history.
      Customers with no new relevant item are excluded from that variant (they are not counted as
      zeros), so the ``_new`` metrics are averages over ``n_customers_new`` customers, usually
      fewer than ``n_customers``.
    - ``recall@k_repeat`` and ``recall@k_explore``: recall@k of the same lists split by what the
      customer bought, over the relevant items bought before (:func:`repeat_items`; customers with
      none excluded) and over those new to them. Where ``recall@k_new`` judges a list with the
      customer's purchases excluded, these two say how one unfiltered list divides its hits between
      buying again and discovering.

    The hit matrix is built once per variant for the largest k and sliced for the smaller ones.

    Parameters
    ----------
    recommended
        Customer id -> ranked item ids, best first.
    relevant
        Customer id -> items bought in the test period.
    history
        Customer id -> items bought before the test period.
    ks
        Distinct positive cut-offs.
    catalogue_size
        Number of items the lists are drawn from (for coverage).
    split
        ``(new_items(relevant, history), repeat_items(relevant, history))`` when the caller judges
        many lists on the same purchases and has them already; ``None``: computed here.

    Returns
    -------
    dict[str, float]
        Metric name -> value, in the order above (counts as floats).

    Raises
    ------
    ValueError
        An empty or repeating ``ks``, a cut-off or catalogue size that is not a positive integer,
        or lists with more distinct items than the catalogue.
    """
    ks = _check_ks(ks)
    fresh, again = split if split is not None else (new_items(relevant, history), repeat_items(relevant, history))
    n_all, on_all = _ranking_metrics(recommended, relevant, ks, new=False)
    n_new, on_new = _ranking_metrics(recommended, fresh, ks, new=True)
    out: dict[str, float] = {N_CUSTOMERS: float(n_all), N_CUSTOMERS_NEW: float(n_new)}
    out.update(on_all)
    out.update(on_new)
    for k in ks:
        out[metric_name(COVERAGE, k)] = catalogue_coverage(recommended, catalogue_size, k)
    repeat_hits, repeat_sizes = _hit_matrix(recommended, again, max(ks))
    out[N_CUSTOMERS_REPEAT] = float(len(repeat_sizes))
    for k in ks:
        out[metric_name("recall", k) + REPEAT_SUFFIX] = _mean(_recall(repeat_hits[:, :k], repeat_sizes))
        # The same lists judged on the new items: what recall@k_new is for these lists.
        out[metric_name("recall", k) + EXPLORE_SUFFIX] = on_new[metric_name("recall", k, new=True)]
    return out


def comparison_table(results: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """One row per model (index ``model``, in the order given), one column per metric.

    Columns follow the order in which the metric names first appear; a metric one model lacks is NaN.

    Parameters
    ----------
    results
        Model name -> metrics (:func:`evaluate`'s output).

    Returns
    -------
    pandas.DataFrame
        float64, indexed by ``model``.
    """
    columns: dict[str, None] = {}
    for metrics in results.values():
        columns.update(dict.fromkeys(metrics))
    table = pd.DataFrame(
        [[float(metrics.get(c, np.nan)) for c in columns] for metrics in results.values()],
        index=pd.Index(list(results), name=MODEL),
        columns=list(columns),
        dtype=float,
    )
    return table
