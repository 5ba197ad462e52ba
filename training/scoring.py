"""Customer scores for the CRM: CLV and churn outputs of the champion models, one row per customer.

One scoring path for batch files (``rapport score``) and the service: :func:`build_snapshot` reads
the features of every customer as of the snapshot date with the code training uses (no
training/serving skew), :func:`score_rows` turns rows of the snapshot into :data:`SCORE_COLUMNS`,
and :func:`score_chunks` streams the whole snapshot in chunks, so a million customers never need
more than a chunk's worth of outputs in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import ibis
import numpy as np
import pandas as pd

from features.churn import DEFAULT_LOOKBACK_DAYS, churn_features
from features.customer import customer_features
from features.schema import Col, Feature
from training.progress import reporter
from training.score_table import SCORE_COLUMNS

log = logging.getLogger(__name__)

LAPSED = "lapsed"
_CLV_COLUMNS = SCORE_COLUMNS[1:11]
def churn_lookback_days(churn_model: object) -> int:
    """The population lookback the churn model was trained with (365 days when it does not say).

    The snapshot's churn population uses it, so scoring draws the population training drew.

    Parameters
    ----------
    churn_model
        The champion churn model (its ``lookback_days_``).

    Returns
    -------
    int
        Days.
    """
    value = getattr(churn_model, "lookback_days_", None)
    return DEFAULT_LOOKBACK_DAYS if value is None else int(value)

_CHURN_COLUMNS = ("churn_probability", "risk_band", "percentile", "reason_1", "reason_2", "reason_3")
#: Customers per chunk of :func:`score_chunks`.
DEFAULT_CHUNK = 200_000


@dataclass(frozen=True)
class Snapshot:
    """Features of every customer as of ``as_of``: ``customers`` (all, customer features) and
    ``churn`` (the churn population: churn features and BG/NBD features), both indexed by customer id."""

    as_of: datetime
    customers: pd.DataFrame
    churn: pd.DataFrame

    def __len__(self) -> int:
        return len(self.customers)


def build_snapshot(backend: ibis.BaseBackend, as_of: datetime, *, time_unit: str = "D",
                   lookback_days: int = 365, progress: Callable[[str], None] | None = None) -> Snapshot:
    """The features :func:`score_rows` needs for every customer, as of ``as_of``.

    ``as_of`` is the cutoff the champion CLV model was fitted at, so the model and its inputs
    describe the same day. ``customer_features`` are read for everyone, ``churn_features`` for the
    churn population (a purchase in the ``lookback_days`` before the date) and, for them, the
    BG/NBD features the churn model was trained with (``training.churn.dataset.clv_features``: a
    BG/NBD fit on the history before the date, exactly as at each training cutoff).

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    as_of
        The snapshot date.
    time_unit
        Time unit of the RFM features (the CLV model's).
    lookback_days
        The churn population's lookback (:func:`churn_lookback_days` of the churn model).
    progress
        Called with a line per step (also logged).

    Returns
    -------
    Snapshot
        ``customers`` and ``churn`` frames indexed by customer id.
    """

    step = reporter(log, progress)

    # Imported here, not at module level: the service imports score_rows, never the data-set builder.
    from training.churn.dataset import clv_features

    step("customer features")
    customers = customer_features(backend, as_of, time_unit=time_unit)  # type: ignore[arg-type]
    step("churn features")
    churn = churn_features(backend, as_of, lookback_days=lookback_days, time_unit=time_unit)  # type: ignore[arg-type]
    if len(churn):
        step("purchase-model features of the churn population")
        churn = churn.join(clv_features(churn, customers, as_of, time_unit=time_unit))  # type: ignore[arg-type]
    return Snapshot(as_of=as_of, customers=customers, churn=churn)


def score_rows(snapshot: Snapshot, customer_ids: pd.Index, clv_model: object, churn_model: object, *,
               versions: dict[str, str] | None = None) -> pd.DataFrame:
    """:data:`SCORE_COLUMNS` for ``customer_ids`` (all in the snapshot), in that order.

    The CLV outputs are ``ClvModel.predict``'s, the churn outputs ``ChurnModel.predict``'s
    (calibrated probability, risk band, percentile, three reasons), and ``churn_horizon_days`` is
    the horizon H the probability is about (no order in the next H days; it travels in the churn
    model). Customers outside the churn population bought nothing in the model's lookback: they
    are ``lapsed`` (their churn probability is empty, their first reason says why), since the churn
    model was neither trained nor calibrated on them.

    Parameters
    ----------
    snapshot
        The features (:func:`build_snapshot`).
    customer_ids
        Customers to score, each in ``snapshot.customers``.
    clv_model, churn_model
        The champion models.
    versions
        Registry versions by model (``clv``, ``churn``), written into every row; ``None``: empty.

    Returns
    -------
    pandas.DataFrame
        One row per customer in the order given, columns :data:`SCORE_COLUMNS`; object columns
        hold None where empty, ``churn_horizon_days`` is Int64, ``as_of`` an ISO date.

    Raises
    ------
    KeyError
        A customer id that is not in the snapshot.
    """
    versions = versions or {}
    rows = snapshot.customers.loc[customer_ids]
    clv = clv_model.predict(rows)  # type: ignore[attr-defined]
    out = pd.DataFrame({Col.CUSTOMER_ID: customer_ids.to_numpy(dtype=np.int64)})
    for column in _CLV_COLUMNS:
        values = clv[column].to_numpy()
        out[column] = values.astype(str) if column == "value_segment" else values
    # The churn index's own hash table (built once per snapshot), not a new one per call as isin would.
    in_population = snapshot.churn.index.get_indexer(customer_ids) >= 0
    churn = pd.DataFrame(index=customer_ids, columns=list(_CHURN_COLUMNS), dtype=object)
    if in_population.any():
        scored = churn_model.predict(snapshot.churn.loc[customer_ids[in_population]])  # type: ignore[attr-defined]
        churn.loc[scored.index, "churn_probability"] = scored["churn_probability"].to_numpy()
        churn.loc[scored.index, "risk_band"] = scored["risk_band"].astype(str).to_numpy()
        churn.loc[scored.index, "percentile"] = scored["percentile"].to_numpy()
        for column in ("reason_1", "reason_2", "reason_3"):
            churn.loc[scored.index, column] = scored[column].to_numpy() if column in scored else None
    lapsed = ~in_population
    if lapsed.any():
        days = rows[Feature.DAYS_SINCE_LAST_ORDER].to_numpy(dtype=np.float64)[lapsed]
        churn.loc[customer_ids[lapsed], "risk_band"] = LAPSED
        churn.loc[customer_ids[lapsed], "reason_1"] = [f"no order for {int(d):,} days: lapsed" for d in days]
    out["churn_probability"] = pd.to_numeric(churn["churn_probability"], errors="coerce").to_numpy(dtype=np.float64)
    horizon = getattr(churn_model, "horizon_days_", None)
    out["churn_horizon_days"] = pd.array([horizon] * len(out), dtype="Int64")
    # object columns, None where empty, whatever pandas would infer (one row or many: the same dtype).
    out["risk_band"] = pd.Series(churn["risk_band"].to_numpy(dtype=object), dtype=object)
    out["percentile"] = pd.to_numeric(churn["percentile"], errors="coerce").to_numpy(dtype=np.float64)
    for column in ("reason_1", "reason_2", "reason_3"):
        out[column] = pd.Series(churn[column].to_numpy(dtype=object), dtype=object)
    out["clv_model_version"] = versions.get("clv", "")
    out["churn_model_version"] = versions.get("churn", "")
    out["as_of"] = pd.Timestamp(snapshot.as_of).date().isoformat()
    return out[list(SCORE_COLUMNS)]


def score_chunks(snapshot: Snapshot, clv_model: object, churn_model: object, *, versions: dict[str, str] | None = None,
                 chunk_size: int = DEFAULT_CHUNK) -> Iterator[pd.DataFrame]:
    """:func:`score_rows` over every customer of the snapshot, ``chunk_size`` customers at a time.

    Parameters
    ----------
    snapshot, clv_model, churn_model, versions
        As in :func:`score_rows`.
    chunk_size
        Customers per chunk.

    Yields
    ------
    pandas.DataFrame
        The rows of one chunk, in the snapshot's order.
    """
    ids = snapshot.customers.index
    for start in range(0, len(ids), chunk_size):
        yield score_rows(snapshot, ids[start : start + chunk_size], clv_model, churn_model, versions=versions)
