"""What a recommended item says of itself: its source in a list and a reason in words.

An item's source (``repurchase``, ``model``, ``popularity``) comes from the label each candidate
source registered (:data:`~training.recommend.candidates.CANDIDATE_SOURCES`); its reason from the
customer's purchases, the item-KNN similarity or the item's popularity (:func:`pair_reasons`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from training.recommend.block import UserBlock
from training.recommend.candidate_models import CandidateModels
from training.recommend.candidates import Candidates, label_flags, source_flags
from training.recommend.data import InteractionData
from training.recommend.ranked import SOURCES
from training.recommend.topk import row_score_order

IntArray = NDArray[np.int64]


class ItemSentences(NamedTuple):
    """Per item, the two sentences that name it: "because you bought <item>" and its popularity."""

    because: NDArray[np.object_]
    popular: NDArray[np.object_]


def popular_reason(count: float, what: str) -> str:
    """The reason of a popular item.

    Parameters
    ----------
    count
        Its count (buyers or orders).
    what
        What the count counts ("buyers in the last 30 days").

    Returns
    -------
    str
        ``popular: <count> <what>``.
    """
    return f"popular: {int(count):,} {what}"


def item_sentences(data: InteractionData) -> ItemSentences:
    """The sentences of every item (computed once per fit).

    Parameters
    ----------
    data
        The history (item names, ids and buyers in the last 30 days).

    Returns
    -------
    ItemSentences
        One sentence of each kind per item position.
    """
    return ItemSentences(
        np.asarray([f"because you bought {_label(data, j)}" for j in range(data.n_items)], dtype=object),
        np.asarray([popular_reason(b, "buyers in the last 30 days") for b in data.buyers_30d], dtype=object))


def served_sources(sources: NDArray[np.int8]) -> NDArray[np.object_]:
    """The source a list names each candidate by: the first of :data:`training.recommend.ranked.SOURCES`
    that one of the candidate sources which proposed it is labelled with.

    Parameters
    ----------
    sources
        Source flags (:attr:`Candidates.sources`).

    Returns
    -------
    numpy.ndarray
        Object array of labels, one per candidate.
    """
    code = np.full(len(sources), len(SOURCES) - 1, dtype=np.int64)
    for at in range(len(SOURCES) - 2, -1, -1):  # the first label wins: written last
        code[(sources & label_flags(SOURCES[at])) != 0] = at
    return np.asarray(SOURCES, dtype=object)[code]


def pair_reasons(data: InteractionData, models: CandidateModels, block: UserBlock, found: Candidates,
                 at: IntArray, sentences: ItemSentences) -> NDArray[np.object_]:
    """Words for each recommended pair, by its sources: the repurchase history; for an item-KNN
    candidate the bought item that makes its score (the largest ``weight[u, j] * similarity[j, i]``,
    the first such item on a tie); for the other model sources the similar customers; else (the
    popular source alone) its popularity. "because you bought" is only ever said of an item the
    item-KNN source proposed.

    Parameters
    ----------
    data
        The history the model was fitted on.
    models
        The candidate models (the item-KNN similarity).
    block
        The customers of ``found``.
    found
        Their candidates.
    at
        The places in ``found`` of the recommended pairs.
    sentences
        :func:`item_sentences` of ``data``.

    Returns
    -------
    numpy.ndarray
        Object array of sentences, one per pair of ``at``.
    """
    row, item, sources = found.row[at], found.item[at], found.sources[at]
    out = np.empty(len(row), dtype=object)
    purchases = found.feature("purchases")[at]
    days = found.feature("days_since_purchase")[at]
    repurchase = label_flags("repurchase")
    own = np.flatnonzero(sources & repurchase)
    if len(own):
        # One sentence per distinct (times, days): written once, shared by every pair that says it.
        times = purchases[own].astype(np.int64)
        ago = np.where(np.isfinite(days[own]), days[own], -1.0).astype(np.int64)
        combos, inverse = np.unique(np.stack([times, ago], axis=1), axis=0, return_inverse=True)
        texts = np.asarray([f"you bought it {t} time{'s' if t != 1 else ''}"
                            + ("" if d < 0 else f", last {d} days ago") for t, d in combos.tolist()], dtype=object)
        out[own] = texts[inverse.ravel()]
    rest = np.flatnonzero(~(sources & repurchase).astype(bool) & (sources & source_flags(("knn",))).astype(bool))
    # Every (pair, item the customer has) at once: its share of the pair's KNN score.
    weight = block.weight
    starts, stops = weight.indptr[row[rest]], weight.indptr[row[rest] + 1]
    lengths = (stops - starts).astype(np.int64)
    pair = np.repeat(np.arange(len(rest), dtype=np.int64), lengths)
    offsets = np.cumsum(lengths) - lengths
    entry = np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
    bought, w = weight.indices[entry].astype(np.int64), weight.data[entry]
    keys = bought * data.n_items + item[rest][pair]
    sim_keys = models.similarity_keys
    best_item = np.full(len(rest), -1, dtype=np.int64)
    if len(sim_keys) and len(keys):
        # Sorted needles: numpy's binary searches then walk the 5-million-entry array in order.
        ascending = np.argsort(keys)
        at_key = np.empty(len(keys), dtype=np.int64)
        at_key[ascending] = np.minimum(np.searchsorted(sim_keys, keys[ascending]), len(sim_keys) - 1)
        share = np.where(sim_keys[at_key] == keys, models.similarity.data[at_key], 0.0) * w
        # A pair's entries come by bought item: on a tie, the lower one explains the pair.
        order = row_score_order(pair, share)
        first = order[np.r_[True, pair[order][1:] != pair[order][:-1]]]
        positive = share[first] > 0
        best_item[pair[first][positive]] = bought[first][positive]
    has = best_item >= 0
    out[rest[has]] = sentences.because[best_item[has]]
    others = np.flatnonzero(out == None)  # noqa: E711 (an elementwise test of the object array)
    alike = (sources[others] & label_flags("model")).astype(bool)
    out[others[alike]] = "customers with similar purchases bought it"
    out[others[~alike]] = sentences.popular[item[others[~alike]]]
    return out


def _label(data: InteractionData, item: int) -> str:
    name = data.name[item]
    return f"{name} ({data.item_ids[item]})" if name else str(data.item_ids[item])
