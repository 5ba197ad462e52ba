"""Whether a training cutoff fits the store's history, decided before any model is fitted.

A cutoff after the last sale leaves the evaluation periods before it without data: a CLV holdout
with no purchase looks perfect (MAE 0), a recommender test period with no purchase has nothing to
measure. A cutoff too close to the first sale leaves a step no history to learn from. Both used to
surface minutes into a run, after versions were registered; :func:`check_cutoff` refuses them at
once, with both dates.

It reads two numbers from the store and the settings only (no model library is imported), so that
the refusal costs a second, not the import of MLflow and LightGBM.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import duckdb

from features.errors import RapportError
from features.moments import utc_naive
from features.settings import Settings
from features.store import sales_range as store_sales_range
from training.models import CHURN, CLV, RECOMMEND


class CutoffError(RapportError, ValueError):
    """The cutoff does not fit the history; the message gives the cutoff and the dates it must respect."""


def sales_range(con: duckdb.DuckDBPyConnection) -> tuple[datetime, datetime]:
    """The first and the last stored sale (naive UTC); :class:`CutoffError` when there is none.

    Parameters
    ----------
    con
        An open store.

    Returns
    -------
    tuple[datetime, datetime]
        The timestamps of the first and the last sale.

    Raises
    ------
    CutoffError
        The store holds no sale.
    """
    found = store_sales_range(con)
    if found is None:
        raise CutoffError("the store holds no sales yet: ingest data first (rapport data ingest DIR)")
    return found


def _days(value: object) -> int | None:
    # A window the settings leave to the data ("auto") is resolved by its step, which then skips
    # or fails with its own reason; only whole numbers of days are checked here.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def history_needed(settings: Settings, steps: Sequence[str]) -> dict[str, tuple[int, str]]:
    """Days of history each step needs before the cutoff, with what they are for.

    Each is a lower bound the step cannot do without (its own checks may ask for more, e.g. whole
    months of churn cutoffs):

    - ``clv``: the holdout, plus at least one day of calibration before it;
    - ``churn``: the population's lookback, then three label windows (training, validation and test
      cutoffs, one horizon apart so that no label overlaps the next set);
    - ``recommend``: the test and validation periods, plus at least one day of training history.

    Parameters
    ----------
    settings
        The settings whose windows are read; a window left to the data (``auto``) gives the floor
        :data:`features.windows.MIN_SPAN_DAYS`.
    steps
        The training steps to run; the others are left out.

    Returns
    -------
    dict[str, tuple[int, str]]
        Step -> (days needed, what they are for, naming the settings).
    """
    from features.windows import MIN_SPAN_DAYS

    # With windows left to the data, the floor is the span below which every step is skipped.
    auto = (MIN_SPAN_DAYS, f"{MIN_SPAN_DAYS} days of history, the least any step learns from (its windows are "
                           f"chosen from the data)")
    needed: dict[str, tuple[int, str]] = {}
    holdout = _days(settings.clv.holdout_days)
    if CLV.key in steps:
        needed[CLV.key] = auto if holdout is None else (
            holdout + 1, f"a {holdout}-day holdout (clv.holdout_days) after a calibration period")
    lookback, horizon = _days(settings.churn.lookback_days), _days(settings.churn.horizon_days)
    if CHURN.key in steps:
        needed[CHURN.key] = auto if lookback is None or horizon is None else (
            lookback + 3 * horizon, f"a {lookback}-day lookback (churn.lookback_days) and three {horizon}-day label "
                                    f"windows (churn.horizon_days) for the training, validation and test cutoffs")
    test, valid = _days(settings.recommend.test_days), _days(settings.recommend.label_days)
    if RECOMMEND.key in steps:
        needed[RECOMMEND.key] = auto if test is None or valid is None else (
            test + valid + 1, f"a {test}-day test period (recommend.test_days) and a {valid}-day label period "
                              f"(recommend.label_days) after some history")
    return needed


def check_cutoff(con: duckdb.DuckDBPyConnection, settings: Settings, cutoff: datetime,
                 steps: Sequence[str]) -> None:
    """Raise :class:`CutoffError` when ``cutoff`` is after the day following the last sale, or leaves
    one of ``steps`` less history than it needs (:func:`history_needed`).

    Parameters
    ----------
    con
        An open store.
    settings
        The settings whose windows say how much history each step needs.
    cutoff
        The training cutoff (naive UTC or aware).
    steps
        The training steps to run.

    Returns
    -------
    None

    Raises
    ------
    CutoffError
        The store holds no sale, the cutoff is after the day following the last sale, or it leaves a
        step too little history (the message names the step, the days it needs and the earliest cutoff).
    """
    first, last = sales_range(con)
    when = utc_naive(cutoff)
    end = datetime(last.year, last.month, last.day) + timedelta(days=1)  # the default cutoff
    if when > end:
        raise CutoffError(
            f"the cutoff {when.date()} is after the last sale ({last.date()}): the periods the models are "
            f"evaluated on would hold days without data (a holdout without purchases looks perfect); "
            f"choose a cutoff up to {end.date()}, or leave --cutoff out to train on all the history")
    start = datetime(first.year, first.month, first.day)
    short = {step: (days, why) for step, (days, why) in history_needed(settings, steps).items()
             if when < start + timedelta(days=days)}
    if short:
        step, (days, why) = max(short.items(), key=lambda item: item[1][0])
        raise CutoffError(
            f"the cutoff {when.date()} leaves too little history: the first sale is on {first.date()} and "
            f"{step} needs at least {days} days before the cutoff ({why}), so the earliest cutoff is "
            f"{(start + timedelta(days=days)).date()}"
            + (f" (steps short of history: {', '.join(short)})" if len(short) > 1 else ""))
