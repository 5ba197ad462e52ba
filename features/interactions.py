"""Customer × item interactions: the recommender's input, built from the unified history.

One row per (customer, item) pair an identified customer bought or browsed before ``as_of``, with
a time-decayed implicit-feedback ``weight`` (:func:`interactions`). Non-products are not
interactions; discontinued items are kept (a purchase still says something about taste), and the
rule that only active products are *recommended* is applied later with :func:`recommendable_items`.
:func:`to_matrix` turns the table into a sparse users × items matrix with its id maps, and
:func:`confidence` applies BM25 or TF-IDF weighting, written out here because ``features`` is the
base layer and does not import ``implicit`` (the tests check the two agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
from scipy import sparse

from features.history import IDENTITY_TABLE, ITEMS_TABLE, cutoff_literal, unified_lines, utc_naive
from features.schema import Col, EventType

#: Store table of browse events (see :mod:`features.store`).
EVENTS_TABLE = "events"

PURCHASES = "purchases"
LAST_PURCHASE = "last_purchase"
VIEWS = "views"
WEIGHT = "weight"

#: Columns of :func:`interactions`, in order.
INTERACTION_COLUMNS: tuple[str, ...] = (Col.CUSTOMER_ID, Col.ITEM_ID, PURCHASES, LAST_PURCHASE, VIEWS, WEIGHT)

#: Event types that count as a view of the item.
BROWSE_EVENT_TYPES: tuple[str, ...] = (EventType.VIEW.value, EventType.ADD_TO_CART.value)

SECONDS_PER_DAY = 86_400.0

ConfidenceScheme = Literal["none", "bm25", "tfidf"]


def _check_arguments(
    as_of: datetime, half_life_days: float | None, browse_weight: float, since: datetime | None
) -> None:
    if half_life_days is not None and not (np.isfinite(half_life_days) and half_life_days > 0):
        raise ValueError(f"half_life_days must be a positive number of days or None (no decay), got {half_life_days!r}")
    if not (np.isfinite(browse_weight) and browse_weight >= 0):
        raise ValueError(f"browse_weight must be a finite number >= 0, got {browse_weight!r}")
    if since is not None and utc_naive(since) >= utc_naive(as_of):
        raise ValueError(f"since must be before as_of, got since={since!r} and as_of={as_of!r}")


def _decay(ts: ir.TimestampValue, as_of: datetime, half_life_days: float | None) -> ir.FloatingValue:
    """``0.5 ** (age_days / half_life_days)`` for an event at ``ts``; 1 when decay is off."""
    if half_life_days is None:
        # A column, not a scalar, so that callers can aggregate it (ts is never NULL here: it passed a cutoff).
        return ibis.ifelse(ts.notnull(), 1.0, 0.0).cast("float64")
    age_days = (cutoff_literal(as_of).epoch_seconds() - ts.epoch_seconds()).cast("float64") / SECONDS_PER_DAY
    return ibis.literal(0.5, type="float64") ** (age_days / float(half_life_days))


def _purchases(backend: ibis.BaseBackend, as_of: datetime, since: datetime | None, half_life_days: float | None,
               extra: Mapping[str, float | None]) -> ir.Table:
    """One row per (customer, item): orders with a positive net quantity, their latest time and decayed
    sum (and one more sum per ``extra`` half-life, ``_purchase_<name>``)."""
    lines = unified_lines(backend, as_of)
    lines = lines.filter(lines[Col.CUSTOMER_ID].notnull() & lines[Col.IS_PRODUCT])
    if since is not None:
        lines = lines.filter(lines[Col.TS] >= cutoff_literal(since))
    # An order can hold the same item on several lines: net the quantities per order first.
    per_order = lines.group_by([Col.CUSTOMER_ID, Col.ITEM_ID, Col.ORDER_KEY]).aggregate(
        _net_quantity=(lines[Col.QUANTITY] - lines[Col.RETURNED_QUANTITY]).sum(),
        _ts=lines[Col.TS].min(),
    )
    bought = per_order.filter(per_order._net_quantity > 0)
    return bought.group_by([Col.CUSTOMER_ID, Col.ITEM_ID]).aggregate(
        _purchases=bought[Col.ORDER_KEY].nunique(),
        _last_purchase=bought._ts.max(),
        _purchase_weight=_decay(bought._ts, as_of, half_life_days).sum(),
        **{f"_purchase_{name}": _decay(bought._ts, as_of, h).sum() for name, h in extra.items()},
    )


def _views(backend: ibis.BaseBackend, as_of: datetime, since: datetime | None, half_life_days: float | None,
           extra: Mapping[str, float | None]) -> ir.Table:
    """One row per (customer, item): browse events of identified customers on products, and their
    decayed sum (and one more per ``extra`` half-life, ``_view_<name>``)."""
    events = backend.table(EVENTS_TABLE)
    identity = backend.table(IDENTITY_TABLE)
    items = backend.table(ITEMS_TABLE)
    events = events.filter(
        (events[Col.TS] < cutoff_literal(as_of)) & events.event_type.lower().isin(BROWSE_EVENT_TYPES)
    )
    if since is not None:
        events = events.filter(events[Col.TS] >= cutoff_literal(since))
    ids = identity.select(_k_key_hash=identity["key_hash"], _k_customer_id=identity[Col.CUSTOMER_ID])
    catalogue = items.select(_i_item_id=items[Col.ITEM_ID], _i_is_product=items[Col.IS_PRODUCT])
    joined = events.inner_join(ids, events[Col.RECORD_KEY] == ids._k_key_hash).left_join(
        catalogue, events[Col.ITEM_ID] == catalogue._i_item_id
    )
    joined = joined.filter(joined._i_is_product.fill_null(True) & joined[Col.ITEM_ID].notnull())
    joined = joined.mutate(**{Col.CUSTOMER_ID: joined._k_customer_id})
    return joined.group_by([Col.CUSTOMER_ID, Col.ITEM_ID]).aggregate(
        _views=joined.count(),
        _view_weight=_decay(joined[Col.TS], as_of, half_life_days).sum(),
        **{f"_view_{name}": _decay(joined[Col.TS], as_of, h).sum() for name, h in extra.items()},
    )


def interaction_table(
    backend: ibis.BaseBackend,
    as_of: datetime,
    *,
    half_life_days: float | None = 365.0,
    browse_weight: float = 0.1,
    since: datetime | None = None,
    extra_weights: Mapping[str, float | None] | None = None,
) -> ir.Table:
    """The Ibis expression behind :func:`interactions` (unexecuted, unordered).

    Everything at or after ``as_of`` is invisible, including returns booked after the cutoff.

    Parameters
    ----------
    backend
        Ibis backend holding the unified history, the identity map, the catalogue and the events.
    as_of
        The cutoff: only orders, returns and events strictly before it count.
    half_life_days
        Half-life of the decay in days (> 0), or ``None`` for no decay.
    browse_weight
        Weight of one view relative to one purchase (finite, >= 0).
    since
        Keep only orders and events at or after it (before ``as_of``), e.g. to train on the last
        two years; ``None``: the whole history.
    extra_weights
        Column name -> half-life in days (``None``: no decay): more ``weight`` columns with other
        half-lives, from the same scan.

    Returns
    -------
    ibis.expr.types.Table
        The columns of :func:`interactions`, unordered.

    Raises
    ------
    ValueError
        A half-life that is not positive, a negative browse weight, ``since`` not before ``as_of``,
        or an ``extra_weights`` name that is not a new identifier.
    """
    _check_arguments(as_of, half_life_days, browse_weight, since)
    extra = dict(extra_weights or {})
    for name, h in extra.items():
        if h is not None and not (np.isfinite(h) and h > 0):
            raise ValueError(f"extra_weights[{name!r}] must be a positive number of days or None (no decay), got {h!r}")
        if name in INTERACTION_COLUMNS or not name.isidentifier():
            raise ValueError(f"extra_weights: {name!r} is not a new column name (a Python identifier other than "
                             f"{', '.join(INTERACTION_COLUMNS)})")
    bought = _purchases(backend, as_of, since, half_life_days, extra)
    viewed = _views(backend, as_of, since, half_life_days, extra).rename(
        _v_customer_id=Col.CUSTOMER_ID, _v_item_id=Col.ITEM_ID
    )
    joined = bought.outer_join(
        viewed, (bought[Col.CUSTOMER_ID] == viewed._v_customer_id) & (bought[Col.ITEM_ID] == viewed._v_item_id)
    )
    purchase_weight = joined._purchase_weight.fill_null(0.0)
    view_weight = joined._view_weight.fill_null(0.0)
    return joined.select(
        **{
            Col.CUSTOMER_ID: joined[Col.CUSTOMER_ID].coalesce(joined._v_customer_id).cast("int64"),
            Col.ITEM_ID: joined[Col.ITEM_ID].coalesce(joined._v_item_id).cast("string"),
            PURCHASES: joined._purchases.fill_null(0).cast("int64"),
            LAST_PURCHASE: joined._last_purchase,
            VIEWS: joined._views.fill_null(0).cast("int64"),
            WEIGHT: (purchase_weight + float(browse_weight) * view_weight).cast("float64"),
            **{name: (joined[f"_purchase_{name}"].fill_null(0.0)
                      + float(browse_weight) * joined[f"_view_{name}"].fill_null(0.0)).cast("float64")
               for name in extra},
        }
    )


def interactions(
    backend: ibis.BaseBackend,
    as_of: datetime,
    *,
    half_life_days: float | None = 365.0,
    browse_weight: float = 0.1,
    since: datetime | None = None,
    extra_weights: Mapping[str, float | None] | None = None,
) -> pd.DataFrame:
    """Customer × item interactions before ``as_of``.

    - ``purchases``: the number of distinct orders with a positive net quantity of the item, net of
      the returns booked before ``as_of`` (:func:`features.history.unified_lines`). A fully returned
      line is no purchase; a partly returned one still is.
    - ``last_purchase``: the time of the latest such order (NaT for a pair that was only browsed).
    - ``views``: browse events (``view`` and ``add_to_cart``) before ``as_of`` whose ``record_key``
      resolves to the customer through ``identity_map``.
    - ``weight``: the implicit-feedback strength,
      ``Σ_purchases 0.5^(age / half_life) + browse_weight × Σ_views 0.5^(age / half_life)``, with
      ``age`` the days from the order (or event) to ``as_of``: a purchase one half-life old counts
      half as much as one made just before the cutoff. ``half_life_days=None`` switches decay off
      (every purchase counts 1, every view ``browse_weight``).

    Postage, fees and adjustments (``is_product`` false) are not interactions; items missing from
    the catalogue count as products, as in the unified history; inactive items are kept.

    Parameters
    ----------
    backend, as_of, half_life_days, browse_weight, since, extra_weights
        As in :func:`interaction_table`.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`INTERACTION_COLUMNS`: ``customer_id`` (int64), ``item_id`` (str),
        ``purchases`` (int64), ``last_purchase`` (datetime64, NaT when only browsed), ``views``
        (int64), ``weight`` (float64), then one float64 column per ``extra_weights`` entry. Sorted
        by customer then item, with a fresh RangeIndex.

    Raises
    ------
    ValueError
        As :func:`interaction_table`.
    """
    table = interaction_table(
        backend, as_of, half_life_days=half_life_days, browse_weight=browse_weight, since=since,
        extra_weights=extra_weights,
    )
    df = table.to_pandas()
    out = pd.DataFrame(
        {
            Col.CUSTOMER_ID: df[Col.CUSTOMER_ID].astype("int64"),
            Col.ITEM_ID: df[Col.ITEM_ID].astype(object),
            PURCHASES: df[PURCHASES].astype("int64"),
            LAST_PURCHASE: pd.to_datetime(df[LAST_PURCHASE]).astype("datetime64[ns]"),
            VIEWS: df[VIEWS].astype("int64"),
            WEIGHT: df[WEIGHT].astype("float64"),
            **{name: df[name].astype("float64") for name in extra_weights or {}},
        },
        columns=[*INTERACTION_COLUMNS, *(extra_weights or {})],
    )
    return out.sort_values([Col.CUSTOMER_ID, Col.ITEM_ID], kind="stable").reset_index(drop=True)


def recommendable_items(backend: ibis.BaseBackend) -> pd.Index:
    """Item ids that may be recommended: active products of the catalogue, sorted.

    Postage, fees and discontinued items are never recommended, even though their purchases stay in
    :func:`interactions`. Items missing from the catalogue are not recommendable either: nothing is
    known about them (price, availability) to show them to a customer.

    Parameters
    ----------
    backend
        Ibis backend holding the catalogue (``items`` table).

    Returns
    -------
    pandas.Index
        Sorted item ids (object dtype), named ``item_id``.
    """
    items = backend.table(ITEMS_TABLE)
    chosen = items.filter(items.active.fill_null(False) & items[Col.IS_PRODUCT].fill_null(False))
    ids = chosen.select(chosen[Col.ITEM_ID]).distinct().to_pandas()[Col.ITEM_ID]
    return pd.Index(sorted(ids.astype(str)), dtype=object, name=Col.ITEM_ID)


def to_matrix(frame: pd.DataFrame, *, value: str = WEIGHT) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """A users × items CSR matrix of ``frame[value]`` with its id maps (the orientation ``implicit``
    0.7 fits on).

    Both id arrays are sorted, so the same interactions always give the same matrix. Duplicate
    (customer, item) rows are summed. External ids become indices only here, at the edge between
    the feature table and the model.

    Parameters
    ----------
    frame
        Interactions with at least ``customer_id``, ``item_id`` and ``value``.
    value
        The column that fills the matrix (default ``weight``).

    Returns
    -------
    tuple[scipy.sparse.csr_matrix, numpy.ndarray, numpy.ndarray]
        ``(matrix, customer_ids, item_ids)``: float64 CSR of shape (customers, items); row ``u`` is
        customer ``customer_ids[u]`` (int64), column ``i`` is item ``item_ids[i]`` (object, str).

    Raises
    ------
    ValueError
        ``frame`` lacks one of the three columns.
    """
    missing = [c for c in (Col.CUSTOMER_ID, Col.ITEM_ID, value) if c not in frame.columns]
    if missing:
        raise ValueError(f"interactions frame lacks column(s) {missing}; expected at least {Col.CUSTOMER_ID}, {Col.ITEM_ID}, {value}")
    customer_ids = np.unique(frame[Col.CUSTOMER_ID].to_numpy(dtype="int64"))
    item_ids = np.unique(frame[Col.ITEM_ID].astype(str).to_numpy(dtype=object))
    rows = np.searchsorted(customer_ids, frame[Col.CUSTOMER_ID].to_numpy(dtype="int64"))
    cols = np.searchsorted(item_ids, frame[Col.ITEM_ID].astype(str).to_numpy(dtype=object))
    data = frame[value].to_numpy(dtype="float64")
    matrix = sparse.csr_matrix((data, (rows, cols)), shape=(len(customer_ids), len(item_ids)), dtype=np.float64)
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix, customer_ids, item_ids


def confidence(
    matrix: sparse.csr_matrix,
    *,
    scheme: ConfidenceScheme = "bm25",
    K1: float = 100,
    B: float = 0.8,
    documents: Literal["items", "users"] = "items",
) -> sparse.csr_matrix:
    """Confidence weighting of a users × items matrix, returned as users × items CSR (float64).

    The weighting of ``implicit.nearest_neighbours.bm25_weight`` / ``tfidf_weight`` (implicit 0.7),
    applied with *items as the documents and users as the terms*, as implicit's own
    ``BM25Recommender.fit`` does (``bm25_weight(user_items.T).T``). The result equals
    ``bm25_weight(matrix.T, K1, B).T``. For an entry ``x`` of user ``u`` and item ``i``::

        idf(u)    = log(n_items) - log(1 + number of items u interacted with)
        norm(i)   = (1 - B) + B * (column sum of i) / (mean column sum)
        bm25(u,i) = x * (K1 + 1) / (K1 * norm(i) + x) * idf(u)
        tfidf(u,i) = sqrt(x) * idf(u)

    ``K1`` saturates large weights, ``B`` sets how much an item's total mass is normalised away, and
    the IDF discounts customers who interact with everything. ``scheme="none"`` returns the matrix
    unchanged (as float64 CSR). Entries stay where they are: weighting never adds interactions.

    ``documents="users"`` swaps the roles: the weighting of ``bm25_weight(matrix)`` (``tfidf_weight``),
    the usual input of implicit's ALS, with the IDF per item (items everybody buys say little about
    a customer) and the length normalisation per customer.

    Parameters
    ----------
    matrix
        Users × items interaction strengths (any sparse format; read as float64).
    scheme
        ``"bm25"``, ``"tfidf"`` or ``"none"``.
    K1, B
        BM25's saturation and length-normalisation parameters (ignored by the other schemes).
    documents
        ``"items"`` (item-KNN input) or ``"users"`` (ALS input): which axis holds the documents.

    Returns
    -------
    scipy.sparse.csr_matrix
        Users × items, float64, with the same non-zero positions as ``matrix``.

    Raises
    ------
    ValueError
        An unknown ``scheme`` or ``documents``.
    """
    if documents not in ("items", "users"):
        raise ValueError(f"documents must be 'items' or 'users', got {documents!r}")
    if documents == "users":
        return confidence(sparse.csr_matrix(matrix).T.tocsr(), scheme=scheme, K1=K1, B=B).T.tocsr()
    if scheme not in ("none", "bm25", "tfidf"):
        raise ValueError(f"unknown confidence scheme {scheme!r}; expected 'none', 'bm25' or 'tfidf'")
    matrix = sparse.csr_matrix(matrix, dtype=np.float64)
    if scheme == "none" or matrix.nnz == 0:
        return matrix
    coo = matrix.tocoo()
    n_users, n_items = coo.shape
    idf = np.log(float(n_items)) - np.log1p(np.bincount(coo.row, minlength=n_users))
    if scheme == "tfidf":
        data = np.sqrt(coo.data) * idf[coo.row]
    else:
        item_sums = np.ravel(coo.sum(axis=0))
        length_norm = (1.0 - B) + B * item_sums / item_sums.mean()
        data = coo.data * (K1 + 1.0) / (K1 * length_norm[coo.col] + coo.data) * idf[coo.row]
    return sparse.csr_matrix((data, (coo.row, coo.col)), shape=coo.shape, dtype=np.float64)
