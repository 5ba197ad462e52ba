"""Churn reasons in plain words: one sentence per feature, with the customer's own numbers.

:func:`reason_text` turns a feature that pushes a customer's churn risk up (the largest positive
contributions of ``ChurnModel.predict``) into words a retention team reads without a data
dictionary: "no order for 120 days (usually every 30)", "spend down 60 % vs the previous quarter".
Related columns of the same row add context (:func:`related_columns`). :func:`reason_texts` writes
the sentences of one feature for many rows at once, each distinct sentence once. The functions are
pure: no model, no state, the same words for the same row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from features.churn import (
    ORDERS_30D,
    ORDERS_90D,
    ORDERS_CHANGE_90D,
    ORDERS_PREV_90D,
    ORDERS_PREV_180D,
    SPEND_30D,
    SPEND_90D,
    SPEND_CHANGE_90D,
    SPEND_PREV_90D,
    SPEND_PREV_180D,
)
from features.schema import Feature

# Column names of the BG/NBD features the churn data set adds (training.churn.dataset.CLV_FEATURES);
# spelled out here so that scoring does not import the data-set builder and its CLV fits.
CLV_PROBABILITY_ALIVE = "clv_probability_alive"
CLV_EXPECTED_PURCHASES_90D = "clv_expected_purchases_90d"
CLV_NO_PURCHASE_90D = "clv_probability_no_purchase_90d"

SHARE_WEB = Feature.channel_share("web")
SHARE_APP = Feature.channel_share("app")
SHARE_STORE = Feature.channel_share("store")
SHARE_MARKETPLACE = Feature.channel_share("marketplace")

#: Currency symbols written before an amount; any other currency code is written after it.
CURRENCY_SYMBOLS: dict[str, str] = {"GBP": "£", "EUR": "€", "USD": "$"}

#: A relative change that rounds to less than this many percent reads "flat".
_FLAT_PERCENT = 1

_Template = Callable[[float, Mapping[str, Any], "str | None"], str]
FloatArray = NDArray[np.float64]


# --- formatting -----------------------------------------------------------------------------------


def _number(value: Any) -> float:
    """``value`` as a float; NaN for None, non-numbers and anything float() refuses."""
    if value is None or isinstance(value, str | bytes):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _known(value: float) -> bool:
    return math.isfinite(value)


def _whole(value: float) -> int:
    # Half away from zero: "2.5 days" reads 3, as a person would round it (Python's round() gives 2).
    return int(math.floor(abs(value) + 0.5)) * (1 if value >= 0 else -1)


def _plural(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n:,} {singular if n == 1 else (plural or singular + 's')}"


def _days(value: float) -> str:
    return _plural(_whole(value), "day")


def _percent(share: float) -> str:
    """A share in [0, 1] (or a relative change) as a whole percentage: 0.35 -> "35 %"."""
    return f"{_whole(share * 100):,} %"


def money(amount: float, currency: str | None = None) -> str:
    """An amount for a sentence: "£23.50", "£1,234" (whole units from 100 on), "120.00 CHF",
    "23.50" without a currency.

    Parameters
    ----------
    amount
        The amount, in the data's currency (negative amounts keep their sign).
    currency
        ISO code such as ``"GBP"`` (a known symbol is written before the number, another code
        after it); ``None``: a bare number.

    Returns
    -------
    str
        The amount as written in a sentence.
    """
    text = f"{abs(amount):,.0f}" if abs(amount) >= 100 else f"{abs(amount):,.2f}"
    sign = "-" if amount < 0 and text.strip("0.,") else ""
    if currency is None:
        return f"{sign}{text}"
    symbol = CURRENCY_SYMBOLS.get(currency.upper())
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency.upper()}"


def _only(n: int) -> str:
    """ "only " before the small counts a reason is about (1 or 2 orders)."""
    return "only " if 0 < n <= 2 else ""


def _count(value: float, singular: str, plural: str | None = None) -> str:
    n = _whole(value)
    return f"{_only(n)}{_plural(n, singular, plural)}"


# --- templates ------------------------------------------------------------------------------------


def _days_since_last_order(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    usual = _number(row.get(Feature.AVG_DAYS_BETWEEN_ORDERS))
    n_orders = _number(row.get(Feature.N_ORDERS))
    text = "no order for less than a day" if _whole(value) == 0 else f"no order for {_days(value)}"
    if _known(usual) and usual > 0:
        return f"{text} (usually every {_whole(usual):,})"
    if _known(n_orders) and _whole(n_orders) == 1:
        return f"{text} (only one order so far)"
    return text


def _recency(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    frequency = _number(row.get(Feature.FREQUENCY))
    age = _number(row.get(Feature.T))
    if (_known(frequency) and _whole(frequency) == 0) or value == 0:
        since = f" {_days(age)} ago" if _known(age) else ""
        return f"no repeat purchase since the first order{since}"
    if _known(age) and age >= value:
        return f"last repeat purchase {_days(age - value)} ago"
    return f"{_days(value)} between the first and the last purchase"


def _first_order(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    return f"first order {_days(value)} ago"


def _tenure(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    return f"customer for {_days(value)}"


def _frequency(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    if _whole(value) == 0:
        return "no repeat purchase yet"
    return f"{_count(value, 'repeat purchase')} so far"


def _n_orders(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    return f"{_count(value, 'order')} so far"


def _monetary_value(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    frequency = _number(row.get(Feature.FREQUENCY))
    if _known(frequency) and _whole(frequency) == 0:
        return "no repeat order yet"
    return f"repeat orders average {money(value, currency)}"


def _historic_clv(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    return f"spent {money(value, currency)} in total so far"


def _avg_order_value(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    return f"average order {money(value, currency)}"


def _avg_days_between_orders(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    return f"orders every {_days(value)} on average"


def _return_rate(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    return f"returns {_percent(value)} of what they buy"


def _channel_share(where: str) -> _Template:
    def template(value: float, row: Mapping[str, Any], currency: str | None) -> str:
        percent = _whole(value * 100)
        if percent == 0:
            return f"no spend {where}"
        if percent == 100:
            return f"all spend {where}"
        return f"{_percent(value)} of spend {where}"

    return template


def _guest_share(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    return f"checks out as a guest in {_percent(value)} of orders"


def _n_categories(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    n = _whole(value)
    return f"buys from {_only(n)}{_plural(n, 'category', 'categories')}"


def _orders_in(window: str, previous: str | None = None) -> _Template:
    """Orders in a window ("in the last 90 days"), with the window before it in brackets."""

    def template(value: float, row: Mapping[str, Any], currency: str | None) -> str:
        n = _whole(value)
        text = f"no order {window}" if n == 0 else f"{_count(value, 'order')} {window}"
        before = _number(row.get(previous)) if previous else math.nan
        return f"{text} ({_whole(before):,} in the quarter before)" if _known(before) else text

    return template


def _spend_in(window: str, previous: str | None = None) -> _Template:
    """Net spend in a window, with the window before it in brackets."""

    def template(value: float, row: Mapping[str, Any], currency: str | None) -> str:
        text = f"no spend {window}" if value == 0 else f"spent {money(value, currency)} {window}"
        before = _number(row.get(previous)) if previous else math.nan
        return f"{text} ({money(before, currency)} in the quarter before)" if _known(before) else text

    return template


def _change(what: str, last: str, before: str) -> _Template:
    """A relative change vs the previous quarter: "spend down 60 % vs the previous quarter"."""

    def template(value: float, row: Mapping[str, Any], currency: str | None) -> str:
        if _known(value):
            if _whole(abs(value) * 100) < _FLAT_PERCENT:
                return f"{what} flat vs the previous quarter"
            direction = "down" if value < 0 else "up"
            return f"{what} {direction} {_percent(abs(value))} vs the previous quarter"
        # The ratio is undefined when the previous quarter had nothing: say what happened instead.
        now, then = _number(row.get(last)), _number(row.get(before))
        if _known(then) and then == 0 and _known(now):
            if now == 0:
                return f"no {what} in the last two quarters"
            return f"{what} in the last 90 days after none in the quarter before"
        return f"{what} change vs the previous quarter unknown"

    return template


def _probability_alive(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    return f"probability still active {_percent(value)}"


def _expected_purchases(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    if value < 0.05:
        return "expected to buy less than 0.1 times in the next 90 days"
    return f"expected to buy {value:.1f} times in the next 90 days"


def _no_purchase(value: float, row: Mapping[str, Any], currency: str | None) -> str:
    return f"{_percent(value)} likely to buy nothing in the next 90 days (purchase model)"


#: Template, and the sentence for a missing (or non-finite) value, per feature.
_TEMPLATES: dict[str, tuple[_Template, str]] = {
    Feature.DAYS_SINCE_LAST_ORDER: (_days_since_last_order, "days since the last order unknown"),
    Feature.RECENCY: (_recency, "time of the last repeat purchase unknown"),
    Feature.T: (_first_order, "time since the first order unknown"),
    Feature.TENURE_DAYS: (_tenure, "time as a customer unknown"),
    Feature.FREQUENCY: (_frequency, "number of repeat purchases unknown"),
    Feature.N_ORDERS: (_n_orders, "number of orders unknown"),
    Feature.MONETARY_VALUE: (_monetary_value, "average repeat order unknown"),
    Feature.HISTORIC_CLV: (_historic_clv, "total spend unknown"),
    Feature.AVG_ORDER_VALUE: (_avg_order_value, "average order unknown"),
    # NaN by definition for a customer with a single order (features.customer).
    Feature.AVG_DAYS_BETWEEN_ORDERS: (_avg_days_between_orders,
                                      "only one order so far: no usual gap between orders yet"),
    Feature.RETURN_RATE: (_return_rate, "share returned unknown"),
    SHARE_WEB: (_channel_share("in the web shop"), "share of spend in the web shop unknown"),
    SHARE_APP: (_channel_share("in the app"), "share of spend in the app unknown"),
    SHARE_STORE: (_channel_share("in stores"), "share of spend in stores unknown"),
    SHARE_MARKETPLACE: (_channel_share("on marketplaces"), "share of spend on marketplaces unknown"),
    Feature.GUEST_SHARE: (_guest_share, "share of guest checkouts unknown"),
    Feature.N_CATEGORIES: (_n_categories, "number of categories bought unknown"),
    ORDERS_30D: (_orders_in("in the last 30 days"), "orders in the last 30 days unknown"),
    SPEND_30D: (_spend_in("in the last 30 days"), "spend in the last 30 days unknown"),
    ORDERS_90D: (_orders_in("in the last 90 days", ORDERS_PREV_90D), "orders in the last 90 days unknown"),
    SPEND_90D: (_spend_in("in the last 90 days", SPEND_PREV_90D), "spend in the last 90 days unknown"),
    ORDERS_PREV_90D: (_orders_in("90 to 180 days ago"), "orders 90 to 180 days ago unknown"),
    SPEND_PREV_90D: (_spend_in("90 to 180 days ago"), "spend 90 to 180 days ago unknown"),
    ORDERS_PREV_180D: (_orders_in("90 to 270 days ago"), "orders 90 to 270 days ago unknown"),
    SPEND_PREV_180D: (_spend_in("90 to 270 days ago"), "spend 90 to 270 days ago unknown"),
    SPEND_CHANGE_90D: (_change("spend", SPEND_90D, SPEND_PREV_90D), "spend change vs the previous quarter unknown"),
    ORDERS_CHANGE_90D: (_change("orders", ORDERS_90D, ORDERS_PREV_90D),
                        "orders change vs the previous quarter unknown"),
    CLV_PROBABILITY_ALIVE: (_probability_alive, "probability still active unknown"),
    CLV_EXPECTED_PURCHASES_90D: (_expected_purchases, "expected purchases in the next 90 days unknown"),
    CLV_NO_PURCHASE_90D: (_no_purchase, "chance of no purchase in the next 90 days unknown"),
}

#: Features with a plain-words template (every churn model feature of the data set).
KNOWN_FEATURES: tuple[str, ...] = tuple(_TEMPLATES)

#: Other columns of the row a feature's sentence reads, for context.
_RELATED: dict[str, tuple[str, ...]] = {
    Feature.DAYS_SINCE_LAST_ORDER: (Feature.AVG_DAYS_BETWEEN_ORDERS, Feature.N_ORDERS),
    Feature.RECENCY: (Feature.FREQUENCY, Feature.T),
    Feature.MONETARY_VALUE: (Feature.FREQUENCY,),
    ORDERS_90D: (ORDERS_PREV_90D,),
    SPEND_90D: (SPEND_PREV_90D,),
    SPEND_CHANGE_90D: (SPEND_90D, SPEND_PREV_90D),
    ORDERS_CHANGE_90D: (ORDERS_90D, ORDERS_PREV_90D),
}

#: Every column some sentence reads for context (scoring passes them along when the input has them).
CONTEXT_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(c for related in _RELATED.values() for c in related))


def related_columns(feature: str) -> tuple[str, ...]:
    """Columns besides ``feature`` itself that its sentence reads when the row has them.

    Context for the reader: the usual gap between orders next to the days since the last one, the
    previous quarter next to the last one.

    Parameters
    ----------
    feature
        A churn feature name.

    Returns
    -------
    tuple[str, ...]
        Column names; empty for a feature whose sentence reads only its own value.
    """
    return _RELATED.get(feature, ())


def _with_horizon(text: str, horizon_days: int | None) -> str:
    """The churn horizon next to the days since the last order: the probability is about it."""
    if horizon_days is None:
        return text
    horizon = f"churn horizon {_days(horizon_days)}"
    return f"{text[:-1]}; {horizon})" if text.endswith(")") else f"{text} ({horizon})"


def reason_text(feature: str, row: Mapping[str, Any], *, currency: str | None = None,
                horizon_days: int | None = None) -> str:
    """The sentence for ``feature`` with the value ``row[feature]`` (and related columns of ``row``).

    Units are those of the churn features (:func:`features.churn.churn_features`): days for
    durations (recency and T with ``time_unit="D"``), shares in [0, 1], amounts in the data's
    currency. A missing or non-finite value reads "<what> unknown" instead of a made-up number,
    except where missing has a meaning: no usual gap between orders means one order only, no change
    vs the previous quarter means nothing in that quarter. A feature without a template reads
    ``"<feature> = <value>"``.

    Parameters
    ----------
    feature
        The feature to explain.
    row
        The customer's values: ``row[feature]`` and, when present, its :func:`related_columns`.
    currency
        ISO code such as ``"GBP"`` to format amounts ("£23.50"); ``None``: bare numbers.
    horizon_days
        The churn model's horizon H, named in the days-since-last-order sentence: "no order for
        40 days (usually every 7; churn horizon 21 days)"; ``None``: not named.

    Returns
    -------
    str
        One sentence, no final full stop.

    Raises
    ------
    KeyError
        ``row`` has no ``feature`` at all.
    """
    if feature not in row:
        raise KeyError(f"reason_text: the row has no value for {feature!r}")
    value = _number(row[feature])
    entry = _TEMPLATES.get(feature)
    if entry is None:
        return f"{feature} = {value:g}"
    template, unknown = entry
    if not _known(value):
        if feature in (SPEND_CHANGE_90D, ORDERS_CHANGE_90D):
            return template(value, row, currency)  # NaN there means "nothing in the quarter before"
        return unknown
    text = template(value, row, currency)
    return _with_horizon(text, horizon_days) if feature == Feature.DAYS_SINCE_LAST_ORDER else text


# --- many rows at once ------------------------------------------------------------------------------

#: What a sentence depends on, per row: arrays of equal length; rows with equal keys get equal words.
_Keys = list[FloatArray]
#: A row's related column by name (all missing for an absent column or None).
_Related = Callable[[str | None], FloatArray]
_KeyFunction = Callable[[FloatArray, _Related], _Keys]

#: Distance from a rounding tie (in units of the last decimal written) under which a product such as
#: ``amount * 100`` may round differently from the exact decimal: such values are keyed as they are.
_TIE_MARGIN = 1e-6


def _wholes(values: FloatArray) -> FloatArray:
    """:func:`_whole` of every finite value (half away from zero), as floats; +0.0 for zero."""
    return np.floor(np.abs(values) + 0.5) * np.where(values >= 0, 1.0, -1.0) + 0.0


def _rounded(scaled: FloatArray, limit: float) -> tuple[NDArray[np.bool_], FloatArray]:
    """Where ``scaled`` (a value times 10^decimals, >= 0) is far enough from a rounding tie, below
    ``limit``, for ``rint(scaled)`` to be the digits Python's correctly rounded formatting writes."""
    safe = (np.abs(scaled - np.floor(scaled) - 0.5) > _TIE_MARGIN) & (scaled < limit)
    return safe, np.rint(scaled) + 0.0


def _money_keys(amount: FloatArray) -> _Keys:
    """What :func:`money` writes for finite amounts: whole units from 100 on, cents below, the sign
    when the digits are not all zero; amounts next to a rounding tie are keyed as they are."""
    size = np.abs(amount)
    large = size >= 100
    safe, cents = _rounded(size * 100, 100 * 100)
    # 0, 1: whole units, positive or negative; 2, 3: cents, unsigned or negative; 4: the amount itself.
    mode = np.where(large, np.where(amount < 0, 1.0, 0.0),
                    np.where(safe, np.where((amount < 0) & (cents > 0), 3.0, 2.0), 4.0))
    number = np.where(large, np.rint(size) + 0.0, np.where(safe, cents, amount))
    return [mode, number]


def _days_since_last_order_keys(value: FloatArray, related: _Related) -> _Keys:
    usual, n_orders = related(Feature.AVG_DAYS_BETWEEN_ORDERS), related(Feature.N_ORDERS)
    has_usual = np.isfinite(usual) & (usual > 0)
    single = np.isfinite(n_orders) & (_wholes(n_orders) == 1)
    return [_wholes(value), np.where(has_usual, _wholes(usual), np.where(single, -1.0, -2.0))]


def _recency_keys(value: FloatArray, related: _Related) -> _Keys:
    frequency, age = related(Feature.FREQUENCY), related(Feature.T)
    first_only = (np.isfinite(frequency) & (_wholes(frequency) == 0)) | (value == 0)
    since_age = ~first_only & np.isfinite(age) & (age >= value)
    number = np.where(first_only, np.where(np.isfinite(age), _wholes(age), np.nan),
                      np.where(since_age, _wholes(age - value), _wholes(value)))
    return [np.where(first_only, 0.0, np.where(since_age, 1.0, 2.0)), number]


def _whole_keys(value: FloatArray, related: _Related) -> _Keys:
    return [_wholes(value)]


def _percent_keys(value: FloatArray, related: _Related) -> _Keys:
    return [_wholes(value * 100)]


def _monetary_value_keys(value: FloatArray, related: _Related) -> _Keys:
    frequency = related(Feature.FREQUENCY)
    no_repeat = np.isfinite(frequency) & (_wholes(frequency) == 0)
    return [np.where(no_repeat, -1.0, key) for key in _money_keys(value)]


def _money_only_keys(value: FloatArray, related: _Related) -> _Keys:
    return _money_keys(value)


def _orders_in_keys(previous: str | None) -> _KeyFunction:
    def keys(value: FloatArray, related: _Related) -> _Keys:
        before = related(previous)
        return [_wholes(value), np.where(np.isfinite(before), _wholes(before), np.nan)]

    return keys


def _spend_in_keys(previous: str | None) -> _KeyFunction:
    def keys(value: FloatArray, related: _Related) -> _Keys:
        before = related(previous)
        none = value == 0
        known_before = np.isfinite(before)
        return ([np.where(none, -1.0, key) for key in _money_keys(value)]
                + [np.where(known_before, key, -1.0) for key in _money_keys(before)])

    return keys


def _change_keys(last: str, before: str) -> _KeyFunction:
    def keys(value: FloatArray, related: _Related) -> _Keys:
        known = np.isfinite(value)
        percent = _wholes(np.abs(value) * 100)
        moved = known & (percent >= _FLAT_PERCENT)
        now, then = related(last), related(before)
        after_none = np.isfinite(then) & (then == 0) & np.isfinite(now)
        # Without a ratio: 1 nothing in both quarters, 2 something after nothing, 3 unknown.
        state = np.where(after_none, np.where(now == 0, 1.0, 2.0), 3.0)
        return [known.astype(np.float64), np.where(known, np.where(moved, percent, 0.0), state),
                np.where(moved & (value < 0), 1.0, 0.0)]

    return keys


def _expected_purchases_keys(value: FloatArray, related: _Related) -> _Keys:
    few = value < 0.05
    safe, tenths = _rounded(value * 10, 1e9)
    return [np.where(few, 0.0, np.where(safe, 1.0, 2.0)), np.where(few, 0.0, np.where(safe, tenths, value))]


#: Per feature, what its template's words depend on (for finite values; a value that is not finite
#: reads the feature's "unknown" sentence, except for the changes, whose keys cover it).
_KEYS: dict[str, _KeyFunction] = {
    Feature.DAYS_SINCE_LAST_ORDER: _days_since_last_order_keys,
    Feature.RECENCY: _recency_keys,
    Feature.T: _whole_keys,
    Feature.TENURE_DAYS: _whole_keys,
    Feature.FREQUENCY: _whole_keys,
    Feature.N_ORDERS: _whole_keys,
    Feature.MONETARY_VALUE: _monetary_value_keys,
    Feature.HISTORIC_CLV: _money_only_keys,
    Feature.AVG_ORDER_VALUE: _money_only_keys,
    Feature.AVG_DAYS_BETWEEN_ORDERS: _whole_keys,
    Feature.RETURN_RATE: _percent_keys,
    SHARE_WEB: _percent_keys,
    SHARE_APP: _percent_keys,
    SHARE_STORE: _percent_keys,
    SHARE_MARKETPLACE: _percent_keys,
    Feature.GUEST_SHARE: _percent_keys,
    Feature.N_CATEGORIES: _whole_keys,
    ORDERS_30D: _orders_in_keys(None),
    SPEND_30D: _spend_in_keys(None),
    ORDERS_90D: _orders_in_keys(ORDERS_PREV_90D),
    SPEND_90D: _spend_in_keys(SPEND_PREV_90D),
    ORDERS_PREV_90D: _orders_in_keys(None),
    SPEND_PREV_90D: _spend_in_keys(None),
    ORDERS_PREV_180D: _orders_in_keys(None),
    SPEND_PREV_180D: _spend_in_keys(None),
    SPEND_CHANGE_90D: _change_keys(SPEND_90D, SPEND_PREV_90D),
    ORDERS_CHANGE_90D: _change_keys(ORDERS_90D, ORDERS_PREV_90D),
    CLV_PROBABILITY_ALIVE: _percent_keys,
    CLV_EXPECTED_PURCHASES_90D: _expected_purchases_keys,
    CLV_NO_PURCHASE_90D: _percent_keys,
}


def _keys(feature: str, value: FloatArray, related: _Related) -> _Keys:
    """Arrays such that two rows with equal keys (bit for bit) get the same sentence."""
    key_function = _KEYS.get(feature)
    if key_function is None:  # no template ("<feature> = <value>"), or one without keys: values as they are
        return [value, *(related(name) for name in related_columns(feature))]
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf rows are keyed apart below
        keys = key_function(value, related)
    if feature in (SPEND_CHANGE_90D, ORDERS_CHANGE_90D):
        return keys
    known = np.isfinite(value)
    return [known.astype(np.float64), *(np.where(known, key, 0.0) for key in keys)]


def _groups(keys: _Keys) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """The group of each row (rows with bit-equal keys share one) and one row of each group."""
    n = len(keys[0])
    codes = np.zeros(n, dtype=np.int64)
    for key in keys:
        key_codes, uniques = pd.factorize(np.ascontiguousarray(key, dtype=np.float64).view(np.int64))
        codes, _ = pd.factorize(codes * len(uniques) + key_codes)
    representative = np.zeros(int(codes.max()) + 1 if n else 0, dtype=np.intp)
    representative[codes] = np.arange(n, dtype=np.intp)
    return codes.astype(np.intp), representative


def reason_texts(feature: str, columns: Mapping[str, ArrayLike], rows: ArrayLike, *,
                 currency: str | None = None, horizon_days: int | None = None) -> list[str]:
    """:func:`reason_text` of ``feature`` for each row index in ``rows`` of ``columns``, in that order.

    ``columns`` maps column names to equally long numeric arrays (missing values as NaN): the feature
    and, when present, its :func:`related_columns` (an absent one reads as missing, as in
    :func:`reason_text`). Each distinct sentence is written once, by :func:`reason_text`, for all
    rows it describes: the rows are grouped by what their sentence depends on (the numbers as
    written: whole days, whole percentages, amounts rounded as :func:`money` writes them, the
    branch a template takes), so a million customers cost far fewer sentences and every row gets
    the words of :func:`reason_text`.

    Parameters
    ----------
    feature
        The feature to explain.
    columns
        Column name -> numeric array, all of one length.
    rows
        Row numbers into the arrays (1-d).
    currency, horizon_days
        As in :func:`reason_text`.

    Returns
    -------
    list[str]
        One sentence per entry of ``rows``, in that order.

    Raises
    ------
    KeyError
        ``columns`` has no ``feature``.
    ValueError
        ``rows`` is not one-dimensional.
    """
    if feature not in columns:
        raise KeyError(f"reason_texts: the columns have no {feature!r}")
    index = np.asarray(rows, dtype=np.intp)
    if index.ndim != 1:
        raise ValueError(f"reason_texts: rows must be a 1-d array of row numbers, got shape {index.shape}")
    present = [name for name in (feature, *related_columns(feature)) if name in columns]
    values = {name: np.asarray(columns[name], dtype=np.float64)[index] for name in present}
    if index.size == 0:
        return []

    def related(name: str | None) -> FloatArray:
        return values[name] if name in values else np.full(index.size, np.nan)

    codes, representative = _groups(_keys(feature, values[feature], related))
    texts = [reason_text(feature, {name: column[i] for name, column in values.items()}, currency=currency,
                         horizon_days=horizon_days) for i in representative]
    return np.asarray(texts, dtype=object)[codes].tolist()
