"""Candidate generation and ranking features: the first stage of the recommender, vectorised.

For a block of customers (known ones sliced from :class:`~training.recommend.data.InteractionData`,
or a new customer folded in from the items of a request), :func:`candidates` proposes items from
every source of the registry :data:`CANDIDATE_SOURCES` (own purchases, ALS, item-KNN, TIFU-KNN,
popular: one function each) and describes every (customer, item) pair with the features the ranker
reads (:data:`FEATURES`). Filters are applied before the lists are cut, so a filter never leaves a
customer with fewer items than it could have. Everything is numpy / scipy over the whole block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace

import numpy as np
from numpy.typing import NDArray
from scipy import sparse

from training.recommend.block import UserBlock
from training.recommend.data import InteractionData
from training.recommend.data import lookup_pairs as _lookup
from training.recommend.ranked import SOURCES as SERVED_SOURCES
from training.recommend.tifu import TifuNeighbours
from training.recommend.topk import ItemFactorIndex, entry_of, entry_rows, top_per_row

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

#: Features of a (customer, item) pair, in the ranker's column order.
FEATURES: tuple[str, ...] = (
    "owned",  # 1 when the customer bought the item before
    "purchases",  # distinct orders of the item
    "weight",  # decayed purchases (+ weighted views), long half-life
    "weight_short",  # the same with the short half-life
    "days_since_purchase",  # days since the last purchase of the item (NaN: never bought)
    "share_of_orders",  # purchases of the item / the customer's most bought item's purchases
    "customer_items",  # distinct items the customer bought
    "customer_max_purchases",  # purchases of the customer's most bought item (an order-count proxy)
    "customer_days_since",  # days since the customer's last purchase
    "customer_weight_short",  # the customer's total short-half-life weight (recent activity)
    "item_buyers",  # distinct buyers ever
    "item_buyers_30d",
    "item_buyers_90d",
    "item_trend",  # (buyers 30 d + 1) / (buyers 90 d / 3 + 1): rising above 1
    "item_orders_per_buyer",  # how much the item is re-bought
    "als_score",
    "als_rank",
    "knn_score",
    "knn_rank",
    "popular_rank",
    "tifu_score",  # TIFU-KNN's blend of the personal and the neighbours' decayed frequencies
    "tifu_rank",
)
_F = {name: i for i, name in enumerate(FEATURES)}

#: Customers per block of candidate generation (the ALS top-k scores the items in stretches, so a
#: block's memory is its candidates: about 130 rows of 20 features a customer).
BLOCK_CUSTOMERS = 1_000


@dataclass(frozen=True)
class CandidateSizes:
    """How many items each source proposes per customer: one field per source of
    :data:`CANDIDATE_SOURCES`, its default size."""

    own: int = 50
    als: int = 50
    knn: int = 50
    popular: int = 30
    tifu: int = 50

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"candidate size {f.name!r} must be a whole number >= 0, got {value!r}")

    def only(self, names: Iterable[str]) -> CandidateSizes:
        """These sizes for the sources ``names``, 0 (nothing proposed) for every other.

        Parameters
        ----------
        names
            Names of :data:`CANDIDATE_SOURCES`.

        Returns
        -------
        CandidateSizes
            A copy with the other sources' sizes 0.
        """
        keep = set(names)
        return replace(self, **{f.name: 0 for f in fields(self) if f.name not in keep})


@dataclass(frozen=True)
class Candidates:
    """Candidate pairs of a block, sorted by (row, item): ``row`` (position in the block), ``item``
    (item position), ``sources`` (bit flags), ``x`` (pairs × :data:`FEATURES`, float32)."""

    row: IntArray
    item: IntArray
    sources: NDArray[np.int8]
    x: NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.row)

    def group_sizes(self, n_rows: int) -> IntArray:
        """Candidates per customer of the block (the ranker's query groups).

        Parameters
        ----------
        n_rows
            Number of customers B in the block.

        Returns
        -------
        numpy.ndarray
            int64, length B (0 for a customer without candidates).
        """
        return np.bincount(self.row, minlength=n_rows).astype(np.int64)

    def feature(self, name: str) -> NDArray[np.float32]:
        """One feature of every pair.

        Parameters
        ----------
        name
            A name of :data:`FEATURES`.

        Returns
        -------
        numpy.ndarray
            float32, one value per pair (a view into ``x``).
        """
        return self.x[:, _F[name]]

    def proposed_by(self, names: Iterable[str]) -> BoolArray:
        """Which pairs any of some sources proposed.

        Parameters
        ----------
        names
            Names of :data:`CANDIDATE_SOURCES`.

        Returns
        -------
        numpy.ndarray
            Boolean, one per pair.
        """
        return (self.sources & source_flags(names)) != 0


def owned_exclusion(block: UserBlock, keep_owned: BoolArray | None) -> tuple[IntArray, IntArray]:
    """(row, item) pairs the block's customers bought, minus items of repurchasable categories.

    Parameters
    ----------
    block
        The customers.
    keep_owned
        Boolean mask over the items that stay even when bought (repurchasable); ``None``: none.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        ``(rows, item positions)``, int64, in CSR order.
    """
    bought = block.purchases.data > 0
    rows, cols = entry_rows(block.purchases)[bought], block.purchases.indices[bought].astype(np.int64)
    if keep_owned is not None:
        drop = ~keep_owned[cols]
        rows, cols = rows[drop], cols[drop]
    return rows, cols


# --- candidate sources ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceInputs:
    """What every candidate source reads: one block of customers under one call's filters.

    ``excluded_keys`` holds ``row * items + item`` of the pairs never to propose (the purchases
    when they are excluded), sorted; ``shared`` the block's scores that no filter changes, kept by
    :meth:`block_scores` for the next call on the same block with the same sizes."""

    data: InteractionData
    block: UserBlock
    item_index: ItemFactorIndex
    similarity: sparse.csr_matrix
    tifu: TifuNeighbours | None
    sizes: CandidateSizes
    allowed: BoolArray
    exclude_owned: bool
    excluded_keys: IntArray
    popular: IntArray | None
    shared: dict[str, sparse.csr_matrix]

    def allows(self, rows: IntArray, cols: IntArray) -> BoolArray:
        """Whether each (row, item) pair may be proposed: an allowed item the row's customer is not
        excluded from.

        Parameters
        ----------
        rows, cols
            Block rows and item positions of the pairs, int64.

        Returns
        -------
        numpy.ndarray
            Boolean, one per pair.
        """
        ok = self.allowed[cols]
        keys_excluded = self.excluded_keys
        if len(keys_excluded):
            keys = rows * self.data.n_items + cols
            pos = np.minimum(np.searchsorted(keys_excluded, keys), len(keys_excluded) - 1)
            ok &= keys_excluded[pos] != keys
        return ok

    def block_scores(self, name: str, size: int, compute: Callable[[], sparse.csr_matrix]) -> sparse.csr_matrix:
        """A source's scores of every item for the block's customers, computed once per block.

        Parameters
        ----------
        name
            The source's name (the key in ``shared``).
        size
            The source's size: at 0 nothing is computed and every score is 0.
        compute
            Computes the B × items scores.

        Returns
        -------
        scipy.sparse.csr_matrix
            B × items.
        """
        if not size:
            return sparse.csr_matrix((self.block.size, self.similarity.shape[1]), dtype=np.float64)
        if name not in self.shared:
            self.shared[name] = compute()
        return self.shared[name]


@dataclass(frozen=True)
class Proposal:
    """A source's lists for the customers of a block: ``(row, item)`` pairs, at most the source's
    size per row; ``rank``, the pair's 0-based place in the row's list (for a source whose rank is a
    ranking feature); ``pair_scores(rows, items)``, the source's score of any pair (its score
    feature), for the pairs every source proposed."""

    row: IntArray
    item: IntArray
    rank: IntArray | None = None
    pair_scores: Callable[[IntArray, IntArray], NDArray[np.floating]] | None = None


#: What a source does: its lists for a block, at most ``size`` items per customer.
ProposeFunction = Callable[[SourceInputs, int], Proposal]


@dataclass(frozen=True)
class CandidateSource:
    """A registered candidate source (see :func:`candidate_source`)."""

    name: str
    propose: ProposeFunction
    #: Its bit in :attr:`Candidates.sources`.
    flag: int
    #: How a list names an item it proposed: one of :data:`training.recommend.ranked.SOURCES`.
    label: str
    #: The lowest and highest size the validation search tries.
    search_sizes: tuple[int, int]
    #: The features of :data:`FEATURES` it fills: its rank in the list (the size when it did not
    #: propose the pair) and its score of the pair.
    rank_feature: str | None
    score_feature: str | None


#: The candidate sources by name, in the order they were registered; every name is a field of
#: :class:`CandidateSizes` (its size) and a key of the ``recommend.model.candidates`` setting.
CANDIDATE_SOURCES: dict[str, CandidateSource] = {}


def candidate_source(name: str, *, label: str, search_sizes: tuple[int, int] = (10, 100),
                     rank_feature: str | None = None,
                     score_feature: str | None = None) -> Callable[[ProposeFunction], ProposeFunction]:
    """Register a candidate source's function under ``name``, the next bit its flag (each feature
    is filled by one source at most).

    Parameters
    ----------
    name
        The source's name: a field of :class:`CandidateSizes`, a key of ``recommend.model.candidates``.
    label
        How a list names the items it proposed: ``repurchase``, ``model`` or ``popularity``.
    search_sizes
        The sizes the validation search tries, lowest and highest.
    rank_feature, score_feature
        The names in :data:`FEATURES` of its rank and of its score of a pair, if it has them.

    Returns
    -------
    Callable
        The decorator: registers the function and returns it unchanged.
    """
    if name in CANDIDATE_SOURCES:
        raise ValueError(f"candidate source {name!r} is registered twice")
    if label not in SERVED_SOURCES:
        raise ValueError(f"candidate source {name!r}: label {label!r} is not one of {', '.join(SERVED_SOURCES)}")
    unknown = [f for f in (rank_feature, score_feature) if f is not None and f not in _F]
    if unknown:
        raise ValueError(f"candidate source {name!r}: {', '.join(unknown)} not in FEATURES")
    claimed = {f: s.name for s in CANDIDATE_SOURCES.values() for f in (s.rank_feature, s.score_feature) if f}
    taken = [f"{f} (by {claimed[f]!r})" for f in (rank_feature, score_feature) if f in claimed]
    if taken:
        raise ValueError(f"candidate source {name!r}: {', '.join(taken)} already filled by another source")

    def register(propose: ProposeFunction) -> ProposeFunction:
        flag = 1 << len(CANDIDATE_SOURCES)
        if flag > np.iinfo(np.int8).max:
            raise ValueError("at most seven candidate sources: Candidates.sources holds one bit each in an int8")
        CANDIDATE_SOURCES[name] = CandidateSource(name, propose, flag, label, search_sizes, rank_feature, score_feature)
        return propose

    return register


def source_flags(names: Iterable[str]) -> int:
    """The bits of some sources in :attr:`Candidates.sources`.

    Parameters
    ----------
    names
        Names of :data:`CANDIDATE_SOURCES`.

    Returns
    -------
    int
        Their flags or-ed.
    """
    return sum(CANDIDATE_SOURCES[name].flag for name in set(names))


def label_flags(label: str) -> int:
    """The bits of the sources a list names ``label``.

    Parameters
    ----------
    label
        ``repurchase``, ``model`` or ``popularity``.

    Returns
    -------
    int
        Their flags or-ed.
    """
    return source_flags(name for name, source in CANDIDATE_SOURCES.items() if source.label == label)


def _top_scores(inputs: SourceInputs, scores: sparse.csr_matrix, size: int) -> Proposal:
    """The ``size`` best allowed items of each row of ``scores`` with a positive score."""
    rows, cols = entry_rows(scores), scores.indices.astype(np.int64)
    keep = inputs.allows(rows, cols) & (scores.data > 0)
    row, item, rank = top_per_row(rows[keep], cols[keep], scores.data[keep], size)
    return Proposal(row, item, rank, lambda r, i: _lookup(scores, r, i))


@candidate_source("own", label="repurchase")
def _own_items(inputs: SourceInputs, size: int) -> Proposal:
    """The repeat-purchase source: what the customer bought, by decayed purchases (no rank or score
    feature: the pair's history features say it all)."""
    purchases = inputs.block.purchases
    bought = purchases.data > 0
    rows = entry_rows(purchases)[bought]
    cols = purchases.indices[bought].astype(np.int64)
    weight = inputs.block.weight.data[bought]
    keep = inputs.allows(rows, cols)
    row, item, _ = top_per_row(rows[keep], cols[keep], weight[keep], size)
    return Proposal(row, item)


@candidate_source("als", label="model", rank_feature="als_rank", score_feature="als_score")
def _als_items(inputs: SourceInputs, size: int) -> Proposal:
    """The factorisation: the top items of ``user_factors @ item_factors.T`` (``implicit`` ALS on
    BM25-weighted purchases) over the allowed items, found exactly by :class:`ItemFactorIndex`
    without scoring most of the catalogue. Its score of a pair is the dot product of their factors."""
    n_items, excluded = inputs.data.n_items, inputs.excluded_keys
    row, item, rank = inputs.item_index.top(inputs.block.factors, size, inputs.allowed, excluded // n_items,
                                            excluded % n_items)
    factors = np.asarray(inputs.block.factors, dtype=np.float32)
    item_factors = inputs.item_index.item_factors

    def scores(rows: IntArray, items: IntArray) -> NDArray[np.floating]:
        return np.einsum("ij,ij->i", factors[rows], item_factors[items])

    return Proposal(row, item, rank, scores)


@candidate_source("knn", label="model", rank_feature="knn_rank", score_feature="knn_score")
def _knn_items(inputs: SourceInputs, size: int) -> Proposal:
    """Item-KNN, "customers who bought X also bought": the top items of ``user_items @
    similarity``, the score of ``implicit``'s item-item models (BM25 similarity, K neighbours per
    item), which is also its score of a pair."""

    def compute() -> sparse.csr_matrix:
        scores = (inputs.block.weight @ inputs.similarity).tocsr()
        scores.sort_indices()
        return scores

    return _top_scores(inputs, inputs.block_scores("knn", size, compute), size)


@candidate_source("tifu", label="model", rank_feature="tifu_rank", score_feature="tifu_score")
def _tifu_items(inputs: SourceInputs, size: int) -> Proposal:
    """TIFU-KNN (Hu et al., SIGIR 2020): the top items of ``alpha * u + (1 - alpha) * mean of the k
    nearest customers' u``, ``u`` the customer's time-decayed item frequencies over baskets
    (:func:`training.recommend.data.tifu_vectors`), the neighbours the most similar (cosine) of a
    pool of the most active customers (:class:`TifuNeighbours`; without one, ``u`` alone)."""
    block, tifu = inputs.block, inputs.tifu

    def compute() -> sparse.csr_matrix:
        return tifu.scores(block) if tifu is not None else sparse.csr_matrix(block.tifu)

    return _top_scores(inputs, inputs.block_scores("tifu", size, compute), size)


@candidate_source("popular", label="popularity", search_sizes=(10, 50), score_feature="popular_rank")
def _popular_items(inputs: SourceInputs, size: int) -> Proposal:
    """The popular list (the allowed items with the most buyers in the last 30 days, or the
    segment's list given), the same for every customer but for their exclusions: the seasonal
    trend. Its score of a pair is the item's place in the list (the list's length when not on it);
    the list is cut ``sizes.own`` items longer when purchases are excluded, so that the customers'
    purchases leave enough of it."""
    data, b = inputs.data, inputs.block.size
    ranked = data.popular_overall if inputs.popular is None else np.asarray(inputs.popular, dtype=np.int64)
    ranked = ranked[inputs.allowed[ranked]][: size + (inputs.sizes.own if inputs.exclude_owned else 0)]
    rows = np.repeat(np.arange(b, dtype=np.int64), len(ranked))
    cols = np.tile(ranked, b)
    keep = inputs.allows(rows, cols)
    places = -np.tile(np.arange(len(ranked), dtype=np.float64), b)[keep]
    row, item, _ = top_per_row(rows[keep], cols[keep], places, size)
    place = np.full(data.n_items, float(len(ranked)))
    place[ranked] = np.arange(len(ranked))
    return Proposal(row, item, pair_scores=lambda _, items: place[items])


# --- candidate generation -------------------------------------------------------------------------


def candidates(
    data: InteractionData,
    block: UserBlock,
    *,
    item_index: ItemFactorIndex,
    similarity: sparse.csr_matrix,
    sizes: CandidateSizes,
    allowed: BoolArray,
    exclude_owned: bool,
    keep_owned: BoolArray | None = None,
    popular: IntArray | None = None,
    tifu: TifuNeighbours | None = None,
    shared: dict[str, sparse.csr_matrix] | None = None,
) -> Candidates:
    """Candidates of every customer of ``block`` with their features.

    Every source of :data:`CANDIDATE_SOURCES` proposes its lists (at most its size of ``sizes``
    per customer; own purchases, ALS, item-KNN, TIFU-KNN and the popular list: see their
    functions). Candidates are deduplicated per customer, each keeping the flags of the sources
    that proposed it; every pair gets every feature (:data:`FEATURES`) whatever source proposed it:
    a source's score is computed for all pairs, its rank is the position in its list (its size
    when it did not propose the item).

    Parameters
    ----------
    data
        The interaction data the model was fitted on.
    block
        The customers (:class:`UserBlock`).
    item_index
        The ALS item factors (:class:`ItemFactorIndex`, built once per model).
    similarity
        Item × item similarity of the item-KNN source.
    sizes
        Candidates per source (a source of size 0 proposes nothing).
    allowed
        Items that may be proposed at all (a mask over ``data.item_ids``: recommendable, category
        include/exclude, the caller's exclusions).
    exclude_owned
        Drop the items each customer bought, except where ``keep_owned`` is true.
    keep_owned
        Mask of items that stay even when bought (repurchasable categories); ``None``: none.
    popular
        Item positions by popularity for the popular source; ``None``: overall popularity.
    tifu
        TIFU-KNN's neighbours; ``None``: the customers' own vectors only (``alpha`` 1).
    shared
        The sources' scores of this block that no filter changes (item-KNN's, TIFU-KNN's), filled
        by the first call and read by the next ones on the same block with the same ``sizes``,
        ``similarity`` and ``tifu``; ``None``: kept for this call only.

    Returns
    -------
    Candidates
        Pairs sorted by (row, item), with source flags and the float32 feature matrix.
    """
    n_items, b = data.n_items, block.size
    excluded_keys = np.empty(0, dtype=np.int64)
    if exclude_owned:
        er, ec = owned_exclusion(block, keep_owned)
        excluded_keys = np.sort(er * n_items + ec)
    inputs = SourceInputs(data=data, block=block, item_index=item_index, similarity=similarity, tifu=tifu,
                          sizes=sizes, allowed=allowed, exclude_owned=exclude_owned, excluded_keys=excluded_keys,
                          popular=popular, shared={} if shared is None else shared)
    proposals = [(source, source.propose(inputs, getattr(sizes, name))) for name, source in CANDIDATE_SOURCES.items()]
    keys_by_source = [p.row * n_items + p.item for _, p in proposals]
    keys, inverse = np.unique(np.concatenate(keys_by_source), return_inverse=True)
    inverse = inverse.ravel()
    row, item = keys // n_items, keys % n_items
    sources = np.zeros(len(keys), dtype=np.int8)
    x = np.zeros((len(keys), len(FEATURES)), dtype=np.float32)
    start = 0
    # Each source's entries are a stretch of the concatenation: ``inverse`` tells which pair each is.
    for (source, proposal), source_keys in zip(proposals, keys_by_source):
        at = inverse[start : start + len(source_keys)]
        start += len(source_keys)
        sources[at] |= source.flag
        if source.rank_feature is not None:
            if proposal.rank is None:
                raise TypeError(f"candidate source {source.name!r} gives no rank for {source.rank_feature}")
            rank = np.full(len(keys), float(getattr(sizes, source.name)))
            rank[at] = proposal.rank
            x[:, _F[source.rank_feature]] = rank
        if source.score_feature is not None:
            if proposal.pair_scores is None:
                raise TypeError(f"candidate source {source.name!r} gives no scores for {source.score_feature}")
            x[:, _F[source.score_feature]] = proposal.pair_scores(row, item)

    # The four history matrices share one sparsity: find each pair's entry once.
    entry = entry_of(block.purchases, row, item)
    stored = entry >= 0

    def value(m: sparse.csr_matrix) -> FloatArray:
        out = np.zeros(len(keys))
        out[stored] = m.data[entry[stored]]
        return out

    purchases = value(block.purchases)
    days = value(block.days_since)
    x[:, _F["owned"]] = purchases > 0
    x[:, _F["purchases"]] = purchases
    x[:, _F["weight"]] = value(block.weight)
    x[:, _F["weight_short"]] = value(block.weight_short)
    x[:, _F["days_since_purchase"]] = np.where(days > 0, days - 1.0, np.nan)

    # Customer-level features, over what they bought.
    bought_counts = np.where(block.purchases.data > 0, block.purchases.data, 0.0)
    purchase_rows = entry_rows(block.purchases)
    n_bought = np.bincount(purchase_rows, weights=(bought_counts > 0).astype(np.float64), minlength=b)
    max_purchases = np.zeros(b)
    np.maximum.at(max_purchases, purchase_rows, bought_counts)
    last_days = np.full(b, np.inf)
    days_data = np.where(block.days_since.data > 0, block.days_since.data - 1.0, np.inf)
    np.minimum.at(last_days, purchase_rows, days_data)
    short_total = np.bincount(purchase_rows, weights=block.weight_short.data, minlength=b)
    x[:, _F["share_of_orders"]] = np.divide(purchases, max_purchases[row], out=np.zeros(len(keys)),
                                            where=max_purchases[row] > 0)
    x[:, _F["customer_items"]] = n_bought[row]
    x[:, _F["customer_max_purchases"]] = max_purchases[row]
    x[:, _F["customer_days_since"]] = np.where(np.isfinite(last_days), last_days, np.nan)[row]
    x[:, _F["customer_weight_short"]] = short_total[row]

    x[:, _F["item_buyers"]] = data.buyers[item]
    x[:, _F["item_buyers_30d"]] = data.buyers_30d[item]
    x[:, _F["item_buyers_90d"]] = data.buyers_90d[item]
    x[:, _F["item_trend"]] = (data.buyers_30d[item] + 1.0) / (data.buyers_90d[item] / 3.0 + 1.0)
    x[:, _F["item_orders_per_buyer"]] = data.orders_per_buyer[item]
    return Candidates(row=row, item=item, sources=sources, x=x)
