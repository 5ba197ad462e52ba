"""The CRM scores of a serving bundle as columns: every customer's row of ``rapport score``, written
once at export (:func:`encode`, then :func:`training.frames.write_frame`) and looked up by the
service's ``customer_scores`` instead of recomputed (:class:`ScoreTable`, numpy only).

Stored: the customer id (int64, ascending), the numbers as float64 (bit for bit), every other column
as dictionary codes into the JSON values it is answered with (code -1: empty). Memory-mapped
read-only, so the workers share one copy through the page cache; the service's recomputing path (a
bundle written before the score rows) answers through :meth:`ScoreTable.from_frame`, the same
conversion.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from features.errors import RapportError
from features.schema import Col

if TYPE_CHECKING:
    import pandas as pd

    from training.frames import Columns

#: Columns of :func:`training.scoring.score_rows` (and of ``rapport score``'s file), in order.
SCORE_COLUMNS: tuple[str, ...] = (
    Col.CUSTOMER_ID,
    "expected_purchases_30d",
    "expected_purchases_90d",
    "expected_purchases_365d",
    "probability_alive",
    "expected_order_value",
    "clv",
    "clv_lower",
    "clv_upper",
    "expected_next_order_date",
    "value_segment",
    "churn_probability",
    "churn_horizon_days",
    "risk_band",
    "percentile",
    "reason_1",
    "reason_2",
    "reason_3",
    "clv_model_version",
    "churn_model_version",
    "as_of",
)
#: Stored as float64 and answered as a number (None where not finite).
FLOATS: tuple[str, ...] = ("expected_purchases_30d", "expected_purchases_90d", "expected_purchases_365d",
                           "probability_alive", "expected_order_value", "clv", "clv_lower", "clv_upper",
                           "churn_probability", "percentile")
#: Stored as dictionary codes; the dictionary holds the JSON values, ``None`` is code -1.
CODED: tuple[str, ...] = tuple(name for name in SCORE_COLUMNS if name not in FLOATS and name != Col.CUSTOMER_ID)


class ScoreTableError(RapportError, ValueError):
    """Score columns that do not hold the rows of ``rapport score`` (missing columns, codes out of
    range, customer ids out of order), naming what is wrong."""


def _is_missing(value: Any) -> bool:
    import pandas as pd

    return value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)) \
        or (not isinstance(value, str) and bool(pd.isna(value)))


def _text(value: Any) -> str | None:
    return None if _is_missing(value) else str(value)


def _date(value: Any) -> str | None:
    import pandas as pd

    return None if _is_missing(value) else pd.Timestamp(value).date().isoformat()


def _count(value: Any) -> int | None:
    return None if _is_missing(value) else int(value)


#: How a coded column's values become the JSON value answered.
_ANSWERED: dict[str, Callable[[Any], Any]] = {
    **{name: _text for name in CODED}, "expected_next_order_date": _date, "churn_horizon_days": _count}


def encode(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of :func:`training.scoring.score_rows` in their stored form (see the module docstring):
    the same columns, the customer ids ascending, the coded columns (:data:`CODED`: the value segment,
    risk band, reasons, model versions and ``as_of`` as text, the next order date as its ISO date, the
    churn horizon as an integer) as categoricals of their JSON values (written by
    :func:`training.frames.write_frame` as codes and dictionary).

    Parameters
    ----------
    frame
        Columns :data:`SCORE_COLUMNS`, one row per customer.

    Returns
    -------
    pandas.DataFrame
        The stored form, on a new range index.

    Raises
    ------
    ScoreTableError
        A column is missing or a customer appears twice.
    """
    import pandas as pd

    missing = [name for name in SCORE_COLUMNS if name not in frame.columns]
    if missing:
        raise ScoreTableError(f"score rows: missing columns {missing}")
    ids = frame[Col.CUSTOMER_ID].to_numpy(dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    if len(ids) > 1 and not bool(np.all(np.diff(ids[order]) > 0)):
        raise ScoreTableError("score rows: a customer id appears more than once")
    out: dict[str, Any] = {Col.CUSTOMER_ID: ids[order]}
    for name in FLOATS:
        out[name] = frame[name].to_numpy(dtype=np.float64)[order]
    for name in CODED:
        codes, uniques = pd.factorize(frame[name], use_na_sentinel=True)
        # Distinct raw values may answer alike (e.g. two timestamps of one day): one code per value answered.
        answered = [_ANSWERED[name](value) for value in uniques]
        labels = list(dict.fromkeys(value for value in answered if value is not None))
        position = {value: k for k, value in enumerate(labels)}
        remap = np.asarray([-1 if value is None else position[value] for value in answered] + [-1], dtype=np.int64)
        out[name] = pd.Categorical.from_codes(remap[codes][order], categories=labels)
    return pd.DataFrame(out, columns=list(SCORE_COLUMNS))


class ScoreTable:
    """Score rows as columns, looked up by customer id with numpy alone (a worker answers from them
    before it has imported pandas or the models): ids to rows by binary search in the ascending id
    column, each column taken at those rows, codes to their values by index."""

    def __init__(self, arrays: dict[str, np.ndarray], labels: dict[str, list[Any]]) -> None:
        missing = [name for name in SCORE_COLUMNS if name not in arrays] + \
            [name for name in CODED if name not in labels]
        if missing:
            raise ScoreTableError(f"score columns: missing {sorted(set(missing))} (expected {list(SCORE_COLUMNS)})")
        ids = np.asarray(arrays[Col.CUSTOMER_ID])
        if ids.dtype != np.int64:
            raise ScoreTableError(f"score columns: customer ids of type {ids.dtype}, expected int64")
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            raise ScoreTableError("score columns: the customer ids are not strictly ascending")
        for name in CODED:
            codes = arrays[name]
            if len(codes) and (int(codes.max()) >= len(labels[name]) or int(codes.min()) < -1):
                raise ScoreTableError(f"score columns: codes of {name} outside its {len(labels[name])} values")
        # Plain views of the memory-mapped files (the same shared pages): a take from an np.memmap
        # pays for its subclass's bookkeeping, about half of a one-customer answer's time.
        self._ids = ids.view(np.ndarray)
        self._arrays = {name: np.asarray(values).view(np.ndarray) for name, values in arrays.items()}
        # Code -1 (an empty value) indexes the None appended at the end; object arrays, so that the
        # values of many rows are taken in one numpy call.
        self._values = {name: np.asarray([*labels[name], None], dtype=object) for name in CODED}

    @classmethod
    def from_columns(cls, table: Columns) -> ScoreTable:
        """The table of a bundle's ``scores/`` folder read by :func:`training.frames.read_columns`
        (memory-mapped)."""
        return cls(dict(table.arrays), {name: list(values) for name, values in table.categories.items()})

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> ScoreTable:
        """The table of rows of :func:`training.scoring.score_rows`, in memory (:func:`encode`)."""
        stored = encode(frame)
        return cls({name: stored[name].cat.codes.to_numpy() if name in CODED else stored[name].to_numpy()
                    for name in SCORE_COLUMNS},
                   {name: list(stored[name].cat.categories) for name in CODED})

    def __len__(self) -> int:
        return len(self._ids)

    def rows(self, customer_ids: Sequence[int]) -> tuple[np.ndarray, list[int]]:
        """The rows of ``customer_ids`` (duplicates once, in the order first asked) and the ids the
        table does not hold, in that order."""
        wanted = np.fromiter(dict.fromkeys(int(c) for c in customer_ids), dtype=np.int64)
        at = np.searchsorted(self._ids, wanted)
        found = at < len(self._ids)
        found[found] = self._ids[at[found]] == wanted[found]
        return at[found], wanted[~found].tolist()

    def records(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """The rows as JSON-ready dicts (:data:`SCORE_COLUMNS`; None where a value is empty)."""
        columns: list[list[Any]] = []
        for name in SCORE_COLUMNS:
            taken = self._arrays[name][rows]
            if name in self._values:
                columns.append(self._values[name][taken].tolist())
            elif name in FLOATS and not bool(np.isfinite(taken).all()):
                columns.append([value if math.isfinite(value) else None for value in taken.tolist()])
            else:
                columns.append(taken.tolist())
        return [dict(zip(SCORE_COLUMNS, row)) for row in zip(*columns)]
