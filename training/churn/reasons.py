"""Churn reasons in plain words: one sentence per feature, with the customer's own numbers.

:func:`reason_text` turns a feature that pushes a customer's churn risk up (see
``ChurnModel.predict``: the largest positive LightGBM contributions) into words a retention team
reads without a data dictionary: "no order for 120 days (usually every 30)", "spend down 60 % vs the
previous quarter", "probability still active 12 %". Related columns of the same row add context
(:func:`related_columns`): the usual gap between orders next to the days since the last one, the
previous quarter next to the last one.

Units are those of the churn features (``features.churn.churn_features``): days for durations
(recency and T with ``time_unit="D"``), shares in [0, 1], amounts in the data's currency. A value
that is missing (NaN) or not finite reads "... unknown" (or what missing means, e.g. a single
order) instead of a made-up number. A feature without a template reads ``"<feature> = <value>"``.

The functions are pure: no model, no state, the same words for the same row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

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
    "23.50" without a currency."""
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
    """Columns besides ``feature`` itself that its sentence reads when the row has them."""
    return _RELATED.get(feature, ())


def reason_text(feature: str, row: Mapping[str, Any], *, currency: str | None = None) -> str:
    """The sentence for ``feature`` with the value ``row[feature]`` (and related columns of ``row``).

    ``currency`` (an ISO code such as ``"GBP"``) formats amounts ("£23.50"); None writes bare numbers.
    A missing or non-finite value reads "<what> unknown", except where missing has a meaning: no
    usual gap between orders means one order only, no change vs the previous quarter means nothing
    in that quarter. A feature without a template reads ``"<feature> = <value>"``. ``KeyError`` when
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
    return template(value, row, currency)
