"""The churn data set: labelled cutoffs stacked into training, validation and test sets.

At every cutoff c the rows are the churn population at c (a purchase in the year before c), the
features are :func:`features.churn.churn_features` at c (the history before c only) and, optionally,
two BG/NBD outputs of a CLV model fitted at c on ``customer_features`` at c (again only the history
before c); the label is :func:`features.churn.churn_labels` (no purchase in ``[c, c + H)``).

Time is the only honest split: the latest cutoff is the test set, the one before it the validation
set, all earlier cutoffs the training set. A model is never evaluated on a cutoff earlier than one it
was trained on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import duckdb
import ibis
import numpy as np
import pandas as pd

from features.churn import (
    CHURN_BASE_FEATURES,
    CHURNED,
    DEFAULT_HORIZON_DAYS,
    DEFAULT_LOOKBACK_DAYS,
    check_label_window,
    churn_features,
    churn_labels,
    sales_span,
)
from features.customer import DAYS_PER_UNIT, customer_features
from features.history import utc_naive
from features.schema import Col, Feature
from features.settings import TimeUnit
from features.store import ibis_backend
from features.windows import cutoff_grid
from training.clv.adapter import ClvFitError
from training.clv.model import ClvModel

log = logging.getLogger(__name__)

CLV_PROBABILITY_ALIVE = "clv_probability_alive"
CLV_EXPECTED_PURCHASES_90D = "clv_expected_purchases_90d"
#: The BG/NBD features :func:`build_dataset` adds with ``with_clv`` (NaN at a cutoff whose fit failed).
CLV_NO_PURCHASE_90D = "clv_probability_no_purchase_90d"
CLV_FEATURES: tuple[str, ...] = (CLV_PROBABILITY_ALIVE, CLV_EXPECTED_PURCHASES_90D, CLV_NO_PURCHASE_90D)
#: Horizon of ``clv_expected_purchases_90d``, in days.
CLV_PURCHASE_HORIZON_DAYS = 90

#: Column of the cutoff a row belongs to (naive UTC midnight for monthly cutoffs).
CUTOFF = "cutoff"

#: Default minimum history before the first cutoff, in days.
DEFAULT_MIN_HISTORY_DAYS = 180


def monthly_cutoffs(
    first_sale: datetime,
    last_sale: datetime,
    *,
    horizon_days: int,
    lookback_days: int,
    min_history_days: int = DEFAULT_MIN_HISTORY_DAYS,
    max_cutoffs: int | None = None,
) -> list[datetime]:
    """First-of-month cutoffs (midnight, naive UTC) that the history can both describe and label.

    - The first cutoff is the first 1st of a month at or after day(first_sale) + max(min_history_days,
      lookback_days) days: every cutoff has its whole lookback window (the population's "year
      before c") inside the data, and at least ``min_history_days`` of history.
    - The last cutoff is the latest 1st of a month c with c + horizon_days <= the midnight after the
      day of ``last_sale`` (the end of the data): its label window ``[c, c + H)`` is fully observed.
    - With ``max_cutoffs`` only the latest ``max_cutoffs`` are kept (the most recent behaviour).

    Ascending; an empty list when the history is too short for any. ``ValueError`` for bad arguments.

    Parameters
    ----------
    first_sale, last_sale
        The first and the last sale of the history (naive UTC or aware).
    horizon_days
        The label horizon H, in days (a whole number >= 1).
    lookback_days
        The population's lookback, in days (a whole number >= 1).
    min_history_days
        The least history before the first cutoff, in days (a whole number >= 0).
    max_cutoffs
        Keep only this many latest cutoffs; ``None``: all of them.

    Returns
    -------
    list[datetime]
        The cutoffs, ascending; empty when the history is too short for any.

    Raises
    ------
    ValueError
        An argument is not a whole number of its range, or ``last_sale`` is before ``first_sale``.
    """
    first, last = utc_naive(first_sale), utc_naive(last_sale)
    for name, value in (("horizon_days", horizon_days), ("lookback_days", lookback_days)):
        _check_whole(name, value, minimum=1)
    _check_whole("min_history_days", min_history_days, minimum=0)
    if max_cutoffs is not None:
        _check_whole("max_cutoffs", max_cutoffs, minimum=1)
    if last < first:
        raise ValueError(f"last_sale ({last}) is before first_sale ({first})")

    cutoffs = cutoff_grid(first, last, horizon_days=horizon_days, lookback_days=max(min_history_days, lookback_days),
                          spacing="monthly")
    if max_cutoffs is not None:
        cutoffs = cutoffs[-max_cutoffs:]
    return cutoffs


def _check_whole(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")


@dataclass(frozen=True, eq=False)
class ChurnDataset:
    """Labelled churn rows of several cutoffs.

    - ``frame``: one row per (cutoff, customer) with columns ``customer_id``, ``cutoff`` (naive UTC
      datetime64), every name of ``feature_names`` and ``churned`` (int64 0/1); sorted by cutoff then
      customer_id, RangeIndex.
    - ``feature_names``: :data:`features.churn.CHURN_BASE_FEATURES`, then :data:`CLV_FEATURES` when
      they were built.
    - ``cutoffs``: ascending; ``horizon_days``: the label horizon H.
    - ``lookback_days``, ``time_unit``: the population lookback and the unit of recency/T.
    - ``clv_failures``: (cutoff, reason) of every cutoff whose CLV fit failed (its CLV columns are NaN).
    """

    frame: pd.DataFrame
    feature_names: tuple[str, ...]
    cutoffs: tuple[datetime, ...]
    horizon_days: int
    lookback_days: int = DEFAULT_LOOKBACK_DAYS
    time_unit: str = "D"
    clv_failures: tuple[tuple[datetime, str], ...] = ()

    @property
    def notes(self) -> tuple[str, ...]:
        """What a reader of the results should know about how the data set was built.

        Returns
        -------
        tuple[str, ...]
            One sentence per cutoff without any customer in the population, then one per cutoff whose
            CLV fit failed (with the reason); empty when there is nothing to say.
        """
        counts = self.frame[CUTOFF].value_counts()
        empty = tuple(
            f"no customer in the churn population at cutoff {cutoff:%Y-%m-%d} (no purchase in the "
            f"{self.lookback_days} days before it)"
            for cutoff in self.cutoffs
            if int(counts.get(pd.Timestamp(cutoff), 0)) == 0
        )
        failed = tuple(
            f"CLV features are NaN at cutoff {cutoff:%Y-%m-%d}: the BG/NBD fit failed ({reason})"
            for cutoff, reason in self.clv_failures
        )
        return empty + failed

    def split(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(train, valid, test) by cutoff, with an embargo of one label window between them.

        Test is the latest cutoff. Validation is the latest cutoff whose label window [c, c + H)
        ends by the test cutoff, and training uses the cutoffs whose label windows end by the
        validation cutoff. So no label the model learns from, or is calibrated on, looks at days
        that the later set's features or labels cover: the evaluation sees the future the way a
        model retrained at the test cutoff would. ``ValueError`` naming the cutoffs when there are
        too few for that.

        Returns
        -------
        tuple[pandas.DataFrame, pandas.DataFrame, pandas.DataFrame]
            The rows of the training, validation and test cutoffs, each on a fresh RangeIndex.

        Raises
        ------
        ValueError
            The cutoffs are too few, or too close together, for the three sets with their embargo.
        """
        cutoffs = sorted(pd.Timestamp(c) for c in self.cutoffs)
        window = pd.Timedelta(days=self.horizon_days)
        test_cutoff = cutoffs[-1] if cutoffs else None
        valid = [c for c in cutoffs if test_cutoff is not None and c + window <= test_cutoff]
        valid_cutoff = valid[-1] if valid else None
        train = [c for c in cutoffs if valid_cutoff is not None and c + window <= valid_cutoff]
        if not train:
            listed = ", ".join(f"{c:%Y-%m-%d}" for c in cutoffs) or "none"
            raise ValueError(
                f"a train/valid/test split with a {self.horizon_days}-day embargo needs a test cutoff, a "
                f"validation cutoff at least {self.horizon_days} days earlier and training cutoffs at least "
                f"{self.horizon_days} days before that; this data set has cutoffs {listed}: use more history "
                f"or more cutoffs (churn.max_cutoffs)"
            )
        at = self.frame[CUTOFF]
        parts = (at.isin(train), at == valid_cutoff, at == test_cutoff)
        return tuple(self.frame.loc[mask].reset_index(drop=True) for mask in parts)

    def summary(self) -> pd.DataFrame:
        """Per cutoff: customers, churners, churn rate and whether the CLV features were computed.

        Returns
        -------
        pandas.DataFrame
            One row per cutoff: ``cutoff``, ``customers``, ``churned``, ``churn_rate`` (NaN without
            customers) and ``clv_features`` (bool).
        """
        failed = {pd.Timestamp(c) for c, _ in self.clv_failures}
        with_clv = set(CLV_FEATURES) <= set(self.feature_names)
        rows = []
        for cutoff in self.cutoffs:
            labels = self.frame.loc[self.frame[CUTOFF] == pd.Timestamp(cutoff), CHURNED]
            rows.append({
                CUTOFF: pd.Timestamp(cutoff),
                "customers": int(labels.shape[0]),
                "churned": int(labels.sum()),
                "churn_rate": float(labels.mean()) if labels.shape[0] else math.nan,
                "clv_features": with_clv and labels.shape[0] > 0 and pd.Timestamp(cutoff) not in failed,
            })
        return pd.DataFrame(rows, columns=[CUTOFF, "customers", "churned", "churn_rate", "clv_features"])


def _backend(con_or_backend: duckdb.DuckDBPyConnection | ibis.BaseBackend) -> ibis.BaseBackend:
    if isinstance(con_or_backend, duckdb.DuckDBPyConnection):
        return ibis_backend(con_or_backend)
    if isinstance(con_or_backend, ibis.BaseBackend):
        return con_or_backend
    raise TypeError(f"expected a DuckDB connection or an Ibis backend, got {type(con_or_backend).__name__}")


def clv_features(
    population: pd.DataFrame, rfm: pd.DataFrame, cutoff: datetime, *, time_unit: TimeUnit = "D"
) -> pd.DataFrame:
    """The :data:`CLV_FEATURES` of the ``population`` rows (frequency, recency, T at ``cutoff``) from a
    BG/NBD model fitted on ``rfm`` (``customer_features`` at ``cutoff``: every customer born before
    it, not only the population). Raises :class:`~training.clv.adapter.ClvFitError` when it cannot
    be fitted.

    ``clv_expected_purchases_90d`` is E[X(t)] over the next 90 days, t = 90 days in the model's unit;
    ``clv_probability_no_purchase_90d`` is the model's own P(no purchase in those 90 days), which
    combines drop-out and the purchase rate (1 - P(alive) alone ignores how often a customer buys).

    Parameters
    ----------
    population
        The churn population at ``cutoff`` with its ``frequency``, ``recency`` and ``T``.
    rfm
        The RFM table the BG/NBD model is fitted on (:func:`features.customer.customer_features`).
    cutoff
        The cutoff the model is fitted at.
    time_unit
        The unit of ``recency`` and ``T`` (``"D"`` or ``"W"``).

    Returns
    -------
    pandas.DataFrame
        The columns :data:`CLV_FEATURES`, on the index of ``population``.

    Raises
    ------
    ClvFitError
        The BG/NBD model cannot be fitted on ``rfm``.
    """
    # Currency does not matter here: both outputs count purchases, no money.
    model = ClvModel(kind="bgnbd", time_unit=time_unit).fit(rfm, cutoff=cutoff)
    f, r, t = (population[c].to_numpy(dtype=np.float64) for c in (Feature.FREQUENCY, Feature.RECENCY, Feature.T))
    horizon = CLV_PURCHASE_HORIZON_DAYS / DAYS_PER_UNIT[model.time_unit_]
    return pd.DataFrame(
        {
            CLV_PROBABILITY_ALIVE: np.asarray(model.probability_alive(f, r, t), dtype=np.float64),
            CLV_EXPECTED_PURCHASES_90D: np.asarray(model.expected_purchases(horizon, f, r, t), dtype=np.float64),
            CLV_NO_PURCHASE_90D: np.asarray(model.probability_no_purchase(horizon, f, r, t), dtype=np.float64),
        },
        index=population.index,
    )


def build_dataset(
    con_or_backend: duckdb.DuckDBPyConnection | ibis.BaseBackend,
    *,
    cutoffs: Sequence[datetime],
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
    time_unit: TimeUnit = "D",
    with_clv: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ChurnDataset:
    """Features and labels of the churn population at every cutoff, stacked.

    Per cutoff c: ``churn_features(backend, c)`` and ``churn_labels(backend, c)`` (same customers);
    with ``with_clv`` also :data:`CLV_FEATURES` from a BG/NBD model fitted on
    ``customer_features(backend, c)`` (the history before c only). A CLV fit that fails
    (``ClvFitError``, e.g. too few repeat customers at an early cutoff) leaves NaN in those columns at
    that cutoff and is recorded in ``clv_failures`` / ``notes``; it never stops the build.

    Every cutoff is checked before any work: a cutoff whose label window ``[c, c + H)`` reaches past
    the data raises ``ValueError`` naming the dates, as do duplicate cutoffs or none. ``progress``
    receives one line per cutoff.

    Parameters
    ----------
    con_or_backend
        An open store, or an Ibis backend over one.
    cutoffs
        The cutoffs (naive UTC or aware), in any order; distinct, at least one.
    horizon_days
        The label horizon H, in days.
    lookback_days
        The population's lookback, in days.
    time_unit
        The unit of ``recency`` and ``T`` (``"D"`` or ``"W"``).
    with_clv
        Add the :data:`CLV_FEATURES` of a BG/NBD model fitted at each cutoff.
    progress
        Called with one line per cutoff; ``None``: silent.

    Returns
    -------
    ChurnDataset
        The stacked rows, the feature names, the cutoffs (ascending) and the CLV fits that failed.

    Raises
    ------
    ValueError
        No cutoff, a repeated cutoff, or a horizon or lookback that is not a whole number >= 1.
    ArgumentError
        A cutoff's label window reaches past the data (the message names the dates).
    NoDataError
        The store holds no sale.
    TypeError
        ``con_or_backend`` is neither a DuckDB connection nor an Ibis backend.
    """
    backend = _backend(con_or_backend)
    _check_whole("horizon_days", horizon_days, minimum=1)
    _check_whole("lookback_days", lookback_days, minimum=1)
    ordered = sorted(utc_naive(c) for c in cutoffs)
    if not ordered:
        raise ValueError("build_dataset needs at least one cutoff, got none")
    duplicates = sorted({c for c in ordered if ordered.count(c) > 1})
    if duplicates:
        raise ValueError(f"cutoffs must be distinct; repeated: {', '.join(str(c) for c in duplicates)}")
    _, last_sale = sales_span(backend)
    for cutoff in ordered:
        check_label_window(cutoff, horizon_days, last_sale)

    feature_names = (*CHURN_BASE_FEATURES, *(CLV_FEATURES if with_clv else ()))
    parts: list[pd.DataFrame] = []
    failures: list[tuple[datetime, str]] = []
    for i, cutoff in enumerate(ordered, start=1):
        started = time.perf_counter()
        if progress is not None:
            progress(f"churn data set: cutoff {i}/{len(ordered)} {cutoff:%Y-%m-%d}")
        features = churn_features(backend, cutoff, lookback_days=lookback_days, time_unit=time_unit)
        labels = churn_labels(backend, cutoff, horizon_days=horizon_days, lookback_days=lookback_days)
        if not labels.index.equals(features.index):
            raise RuntimeError(
                f"churn features and labels at {cutoff:%Y-%m-%d} cover different customers "
                f"({len(features)} vs {len(labels)}): the population definitions disagree"
            )
        part = features.loc[:, list(CHURN_BASE_FEATURES)]
        if with_clv:
            clv = pd.DataFrame(np.nan, index=features.index, columns=list(CLV_FEATURES), dtype="float64")
            if len(features):
                try:
                    rfm = customer_features(backend, cutoff, time_unit=time_unit)
                    clv = clv_features(features, rfm, cutoff, time_unit=time_unit)
                except ClvFitError as error:
                    failures.append((cutoff, str(error)))
                    log.warning("churn data set: no CLV features at cutoff %s, the BG/NBD fit failed: %s",
                                cutoff.date(), error)
            part = part.join(clv)
        part = part.assign(**{CHURNED: labels.to_numpy(dtype="int64")})
        part.insert(0, CUTOFF, pd.Timestamp(cutoff))
        part = part.reset_index()
        parts.append(part)
        log.info("churn data set: cutoff %s, %d customers, churn rate %.3f, %.1f s", cutoff.date(), len(part),
                 float(labels.mean()) if len(labels) else math.nan, time.perf_counter() - started)

    columns = [Col.CUSTOMER_ID, CUTOFF, *feature_names, CHURNED]
    non_empty = [p for p in parts if len(p)]
    frame = pd.concat(non_empty, ignore_index=True) if non_empty else parts[0]
    frame = frame.loc[:, columns].reset_index(drop=True)
    frame[CUTOFF] = pd.to_datetime(frame[CUTOFF])
    frame[Col.CUSTOMER_ID] = frame[Col.CUSTOMER_ID].astype("int64")
    frame[CHURNED] = frame[CHURNED].astype("int64")
    return ChurnDataset(
        frame=frame,
        feature_names=tuple(feature_names),
        cutoffs=tuple(ordered),
        horizon_days=horizon_days,
        lookback_days=lookback_days,
        time_unit=time_unit,
        clv_failures=tuple(failures),
    )
