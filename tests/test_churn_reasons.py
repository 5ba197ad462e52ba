"""Churn reasons written for many rows at once (:func:`reason_texts`) are :func:`reason_text`'s words,
row by row: every feature with a template and one without, on random rows full of edge values
(missing, infinite, zero and negative zero, negative, halves and rounding ties of days, percentages,
cents and tenths, shares next to 0.995, amounts next to 100), with and without the related columns."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from training.churn.reasons import CONTEXT_COLUMNS, KNOWN_FEATURES, reason_text, reason_texts, related_columns

#: A feature without a template: "<feature> = <value>".
UNKNOWN = "loyalty_points"
CURRENCIES = (None, "GBP", "CHF")

EDGES = np.array([
    np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-40, 1e-300,
    0.004, 0.0049999, 0.005, 0.0050001, 0.006, 0.01, 0.015, 0.045, 0.0499, 0.05, 0.0501, 0.055,
    0.125, 0.25, 0.35, 0.5, 0.95, 0.994, 0.9949, 0.995, 0.9951, 0.996, 1.0, 1.004, 1.005, 1.5, 2.5, 2.675,
    -0.001, -0.004, -0.005, -0.0051, -0.5, -1.5, -2.5, -5.0, -0.995, -1.0,
    1.0, 2.0, 3.0, 7.0, 30.4, 61.6, 99.99, 99.994, 99.9949999, 99.995, 99.996, 99.999, 100.0, 100.49, 100.5,
    101.5, 365.0, 400.0, 999.5, 1234.4, 1234.5, 1e6, 1e9 + 0.5, -99.995, -100.0, -100.5, -1234.5, -1e6,
])


def _column(rng: np.random.Generator, n: int) -> np.ndarray:
    """n values: edge values, small whole numbers, halves, shares, amounts with 1 to 3 decimals."""
    choices = [
        rng.choice(EDGES, n),
        rng.integers(-2, 15, n).astype(np.float64),
        np.round(rng.normal(0.0, 40.0, n) * 2) / 2,
        rng.random(n),
        np.round(rng.random(n), 3),
        np.round(rng.gamma(1.0, 80.0, n), 1),
        np.round(rng.gamma(1.0, 80.0, n) * 1000) / 1000 * rng.choice([-1.0, 1.0], n),
        rng.normal(0.0, 1.0, n),
    ]
    kind = rng.integers(0, len(choices), n)
    return np.choose(kind, choices)


def _expected(feature: str, columns: dict[str, np.ndarray], rows: np.ndarray, currency: str | None) -> list[str]:
    return [reason_text(feature, {name: column[i] for name, column in columns.items()}, currency=currency)
            for i in rows]


@pytest.mark.unit
@pytest.mark.parametrize("feature", [*KNOWN_FEATURES, UNKNOWN])
def test_reason_texts_are_reason_text_row_by_row(feature):
    rng = np.random.default_rng(sorted([*KNOWN_FEATURES, UNKNOWN]).index(feature))
    n = 4000
    names = dict.fromkeys([feature, *related_columns(feature), *CONTEXT_COLUMNS])
    for trial in range(4):
        columns = {name: _column(rng, n) for name in names}
        if trial == 1:  # the related columns absent: they read as missing
            columns = {feature: columns[feature]}
        if trial == 2:  # a few distinct values, many rows each: the sentences are shared
            columns = {name: rng.choice(column[:12], n) for name, column in columns.items()}
        rows = rng.integers(0, n, 3 * n)  # repeated rows, in any order
        currency = CURRENCIES[trial % len(CURRENCIES)]
        assert reason_texts(feature, columns, rows, currency=currency) == _expected(feature, columns, rows, currency)


_value = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([float(v) for v in EDGES]))


@pytest.mark.unit
@hsettings(max_examples=200, deadline=None, derandomize=True)
@given(feature=st.sampled_from([*KNOWN_FEATURES, UNKNOWN]),
       rows=st.lists(st.tuples(_value, _value, _value), min_size=1, max_size=12),
       currency=st.sampled_from(CURRENCIES))
def test_reason_texts_match_reason_text_on_any_values(feature, rows, currency):
    names = [feature, *related_columns(feature)][:3]
    columns = {name: np.array([row[j] for row in rows], dtype=np.float64) for j, name in enumerate(names)}
    index = np.arange(len(rows))
    assert reason_texts(feature, columns, index, currency=currency) == _expected(feature, columns, index, currency)


@pytest.mark.unit
def test_reason_texts_words_and_errors():
    columns = {"days_since_last_order": np.array([120.0, 45.0, 1.0, np.nan]),
               "avg_days_between_orders": np.array([30.4, np.nan, np.nan, 20.0]),
               "n_orders": np.array([5.0, 1.0, np.nan, 3.0])}
    assert reason_texts("days_since_last_order", columns, [0, 1, 2, 3, 0]) == [
        "no order for 120 days (usually every 30)",
        "no order for 45 days (only one order so far)",
        "no order for 1 day",
        "days since the last order unknown",
        "no order for 120 days (usually every 30)",
    ]
    assert reason_texts("days_since_last_order", columns, np.array([], dtype=np.int64)) == []
    with pytest.raises(KeyError, match="orders_90d"):
        reason_texts("orders_90d", columns, [0])
    with pytest.raises(ValueError, match="1-d"):
        reason_texts("days_since_last_order", columns, [[0, 1]])
