"""Temporal split for recommender evaluation, and the item sets the metrics compare against.

A recommender is trained on history before a cutoff and judged on what customers bought after it,
never on a random shuffle of rows (that would let the model see the future): :func:`temporal_split`
cuts the timeline in train, validation and test periods. :func:`purchases_between` and
:func:`history_items` read the item sets from :func:`features.interactions.interactions`, so "a
purchase" means the same thing to the model and to its evaluation: a product line of an identified
customer with a positive net quantity after the returns booked before the period's end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta

import ibis
import numpy as np
import pandas as pd

from features.errors import NoDataError
from features.history import utc_naive
from features.interactions import PURCHASES, interactions
from features.schema import Col

#: Default evaluation: the last 90 days are the test period, the 90 days before validate.
DEFAULT_TEST_DAYS = 90
DEFAULT_VALID_DAYS = 90


@dataclass(frozen=True)
class TemporalSplit:
    """Three consecutive periods: train before ``train_end``, valid ``[train_end, valid_end)``,
    test ``[valid_end, test_end)``."""

    train_end: datetime
    valid_end: datetime
    test_end: datetime

    def __post_init__(self) -> None:
        if not (self.train_end <= self.valid_end < self.test_end):
            raise ValueError(
                "a temporal split needs train_end <= valid_end < test_end, got "
                f"train_end={self.train_end}, valid_end={self.valid_end}, test_end={self.test_end}"
            )

    @property
    def valid_start(self) -> datetime:
        """First instant of the validation period.

        Returns
        -------
        datetime
            ``train_end``.
        """
        return self.train_end

    @property
    def test_start(self) -> datetime:
        """First instant of the test period.

        Returns
        -------
        datetime
            ``valid_end``.
        """
        return self.valid_end


def temporal_split(
    last_sale: datetime, *, test_days: int = DEFAULT_TEST_DAYS, valid_days: int = DEFAULT_VALID_DAYS
) -> TemporalSplit:
    """The split whose test period is the last ``test_days`` days up to the day after ``last_sale``.

    The three periods are consecutive, each boundary exclusive (``[start, end)``, as every cutoff
    in :mod:`features`)::

        train: ... -> train_end      valid: train_end -> valid_end      test: valid_end -> test_end

    ``test_end`` is midnight at the start of the day after ``last_sale`` (in ``last_sale``'s time
    zone, if it has one: the last day is in the test period), ``valid_end = test_end - test_days``
    and ``train_end = valid_end - valid_days``. Hyper-parameters are chosen on the validation period
    with a model fitted on ``train``; the reported figures come from a model fitted on everything
    before ``valid_end`` (train + valid) and scored on the test period.

    Parameters
    ----------
    last_sale
        The latest sale (:func:`last_sale`).
    test_days
        Length of the test period, whole days >= 1.
    valid_days
        Length of the validation period, whole days >= 0 (0: an empty validation period).

    Returns
    -------
    TemporalSplit
        The three boundaries.

    Raises
    ------
    ValueError
        ``test_days`` or ``valid_days`` out of range.
    """
    if isinstance(test_days, bool) or not isinstance(test_days, int) or test_days < 1:
        raise ValueError(f"test_days must be a positive whole number of days, got {test_days!r}")
    if isinstance(valid_days, bool) or not isinstance(valid_days, int) or valid_days < 0:
        raise ValueError(f"valid_days must be a whole number of days >= 0, got {valid_days!r}")
    test_end = datetime.combine(last_sale.date() + timedelta(days=1), time.min, tzinfo=last_sale.tzinfo)
    valid_end = test_end - timedelta(days=test_days)
    return TemporalSplit(train_end=valid_end - timedelta(days=valid_days), valid_end=valid_end, test_end=test_end)


def last_sale(backend: ibis.BaseBackend) -> datetime:
    """The time of the latest sale line in the store (naive UTC), the anchor of :func:`temporal_split`.

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.

    Returns
    -------
    datetime
        Naive UTC.

    Raises
    ------
    NoDataError
        The store holds no sale line.
    """
    lines = backend.table("lines")
    latest = lines[Col.TS].max().to_pandas()
    if latest is None or pd.isna(latest):
        raise NoDataError("the store holds no sale line: ingest orders before splitting the history")
    return pd.Timestamp(latest).to_pydatetime()


def _item_sets(frame: pd.DataFrame) -> dict[int, set[str]]:
    bought = frame[frame[PURCHASES] > 0]
    # The frame is sorted by customer: one split of plain arrays (a pandas group per customer is
    # slow for 100,000 customers).
    customers = bought[Col.CUSTOMER_ID].to_numpy(dtype=np.int64)
    items = bought[Col.ITEM_ID].astype(str).to_numpy(dtype=object)
    order = np.argsort(customers, kind="stable")
    customers, items = customers[order], items[order]
    cut = np.flatnonzero(np.diff(customers)) + 1
    firsts = customers[np.r_[0, cut]] if len(customers) else customers
    return {int(c): set(group) for c, group in zip(firsts.tolist(), np.split(items, cut))}


def purchases_between(backend: ibis.BaseBackend, start: datetime, end: datetime) -> dict[int, set[str]]:
    """Customer id -> the product items they bought in ``[start, end)``.

    Only identified customers and product items; a line counts when its net quantity after the returns
    booked before ``end`` is positive (a fully returned purchase is no purchase). Customers without
    any purchase in the period are absent.

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    start, end
        The period, ``start`` before ``end``.

    Returns
    -------
    dict[int, set[str]]
        Customer id -> item ids (the ``relevant`` of :func:`training.recommend.metrics.evaluate`).

    Raises
    ------
    ValueError
        ``start`` is not before ``end``.
    """
    if utc_naive(start) >= utc_naive(end):
        raise ValueError(f"start must be before end, got start={start!r} and end={end!r}")
    frame = interactions(backend, end, since=start, half_life_days=None, browse_weight=0.0)
    return _item_sets(frame)


def history_items(backend: ibis.BaseBackend, as_of: datetime) -> dict[int, set[str]]:
    """Customer id -> the product items they bought before ``as_of`` (net of returns booked before it).

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    as_of
        The cutoff.

    Returns
    -------
    dict[int, set[str]]
        Customer id -> item ids (the ``history`` of :func:`training.recommend.metrics.evaluate`,
        which separates new items from repeat purchases).
    """
    frame = interactions(backend, as_of, half_life_days=None, browse_weight=0.0)
    return _item_sets(frame)
