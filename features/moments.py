"""Moments as the store keeps them: naive UTC.

Kept apart from :mod:`features.history` (Ibis expressions) so that code that only needs to
normalise a cutoff, such as the precompiled KPI report of ``rapport data report``, does not import
Ibis.
"""

from __future__ import annotations

from datetime import UTC, date, datetime


def utc_naive(moment: datetime | date) -> datetime:
    """A cutoff as the store keeps time: naive UTC.

    The store's ``ts`` columns are UTC without an offset. An aware ``datetime`` is converted to UTC;
    a naive one is taken to be UTC already; a ``date`` means midnight UTC at the start of that day.

    Parameters
    ----------
    moment
        A cutoff: an aware or naive ``datetime``, or a ``date``.

    Returns
    -------
    datetime
        The same instant as a naive UTC ``datetime``.

    Raises
    ------
    TypeError
        ``moment`` is neither a ``datetime`` nor a ``date``.
    """
    if not isinstance(moment, datetime):
        if isinstance(moment, date):
            return datetime(moment.year, moment.month, moment.day)
        raise TypeError(f"expected a datetime or date cutoff, got {type(moment).__name__}: {moment!r}")
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment
