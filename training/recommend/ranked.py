"""Ranked recommendation lists as columns of arrays: what :class:`training.recommend.model.RecommenderModel`
ranks and the bundle's default lists (:mod:`training.recommend.precomputed`) hold.

numpy only at import (pandas and pyarrow when a frame is asked for): a service's worker answers a
default list with it before it has imported the model's libraries (see :mod:`serving.lookup`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from features.schema import Col

if TYPE_CHECKING:
    import pandas as pd

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

#: Columns of :meth:`RecommenderModel.recommend`.
RECOMMENDATION_COLUMNS: tuple[str, ...] = (Col.CUSTOMER_ID, "rank", Col.ITEM_ID, "score", "source", "reason", "fallback")
#: Sources of a recommended item.
SOURCES: tuple[str, ...] = ("repurchase", "model", "popularity")
#: Rows from which a recommendation frame takes its item ids in Arrow (2.6 s -> 0.1 s at 20 M rows).
LARGE_FRAME_ROWS = 100_000


@dataclass(frozen=True)
class Ranked:
    """Ranked lists, one entry per (customer, rank), columns as arrays: what :meth:`RecommenderModel.rank`
    returns and :meth:`RecommenderModel.recommend` turns into its DataFrame (``item``: item
    positions in the model's ``data_.item_ids``)."""

    customer_id: IntArray
    rank: IntArray
    item: IntArray
    score: FloatArray
    source: NDArray[np.object_]
    reason: NDArray[np.object_]
    fallback: BoolArray

    def __len__(self) -> int:
        return len(self.rank)

    @classmethod
    def concat(cls, parts: Sequence[Ranked]) -> Ranked:
        if len(parts) == 1:
            return parts[0]
        if not parts:
            empty = np.empty(0, dtype=np.int64)
            return cls(empty, empty, empty, np.empty(0), np.empty(0, dtype=object), np.empty(0, dtype=object),
                       np.empty(0, dtype=bool))
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in cls.__dataclass_fields__))

    def take(self, at: IntArray | slice) -> Ranked:
        return Ranked(*(getattr(self, name)[at] for name in self.__dataclass_fields__))

    def by_customer(self, customer_ids: Sequence[int]) -> list[Ranked]:
        """Each customer's list, for distinct ``customer_ids`` whose entries come grouped in that order
        (as :meth:`RecommenderModel.rank` returns them): one :class:`Ranked` each, empty for a
        customer without entries."""
        if len(customer_ids) == 1:  # the service's lone request: every entry is that customer's
            return [self]
        ids = np.asarray(customer_ids, dtype=np.int64)
        if not len(ids):
            return []
        order = np.argsort(ids, kind="stable")
        # Each entry's place in ``ids``: non-decreasing, so each customer's entries are one stretch.
        place = order[np.minimum(np.searchsorted(ids[order], self.customer_id), len(ids) - 1)]
        bounds = np.searchsorted(place, np.arange(len(ids) + 1)).tolist()
        return [self if (start, stop) == (0, len(self)) else self.take(slice(start, stop))
                for start, stop in zip(bounds[:-1], bounds[1:])]

    def frame(self, item_ids: NDArray[np.object_]) -> pd.DataFrame:
        """The rows as :data:`RECOMMENDATION_COLUMNS`."""
        import pandas as pd

        if len(self) >= LARGE_FRAME_ROWS:
            import pyarrow as pa

            # Taken from the catalogue's strings in Arrow: no Python string per row to convert.
            vocabulary = pa.array([str(i) for i in item_ids], type=pa.large_string())
            items: Any = pd.array(vocabulary.take(pa.array(self.item)), dtype=pd.StringDtype(na_value=np.nan))
        else:
            items = item_ids[self.item].astype(object)
        return pd.DataFrame({
            Col.CUSTOMER_ID: self.customer_id, "rank": self.rank, Col.ITEM_ID: items,
            "score": self.score, "source": self.source, "reason": self.reason, "fallback": self.fallback,
        })

    def records(self, item_ids: NDArray[np.object_]) -> list[tuple[int, str, float, str, str | None]]:
        """(rank, item id, score, source, reason) per entry, as plain Python values."""
        return list(zip(self.rank.tolist(), item_ids[self.item].tolist(), self.score.tolist(), self.source.tolist(),
                        self.reason.tolist()))
