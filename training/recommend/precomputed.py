"""Every known customer's list under the default options, ranked once when a serving bundle is
written: the web shop's plain "recommended for you" (no filter, purchases excluded) is then a lookup.

The lists are those of :meth:`RecommenderModel.rank` with the default options
(``RecommendOptions(n=length)``: purchases excluded, no other filter), ``length`` items each (the
model's code, the bundle's model). A list's first ``n`` entries are the customer's top ``n``, so a
request whose options are the default ones with ``n <= length``
(:meth:`~training.recommend.options.RecommendOptions.is_default`) is answered from here with
exactly the list the model would rank; any other request is ranked as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from features.errors import RapportError
from training.recommend.artefact import load_arrays, save_arrays
from training.recommend.options import RecommendOptions
from training.recommend.ranked import SOURCES, Ranked

if TYPE_CHECKING:
    from training.recommend.model import RecommenderModel

ARRAYS = "default_lists"
#: The single-file array format of earlier bundles (still read).
ARRAYS_NPZ = "default_lists.npz"
HEADER = "default_lists.json"
FORMAT = "rapport-default-lists"
VERSION = 1


class DefaultListsError(RapportError, ValueError):
    """Default lists that cannot be read or do not belong to the model, naming the file."""


@dataclass(frozen=True)
class DefaultLists:
    """The lists; ``offsets[k]:offsets[k + 1]`` are customer k's entries.

    Compact columns, one entry per (customer, rank), the customers in the model's order
    (``data_.customer_ids``): item position (the smallest unsigned type that holds it), score
    (float32: the ranker's scores are ranked in float32 precision, so nothing is lost), source code
    and reason code (an index into the distinct ``reasons``).

    Files, beside the model in a bundle: ``default_lists/`` (the columns and per-customer offsets,
    one ``.npy`` file each, memory-mapped read-only on load so that a service's workers share them;
    an earlier bundle's single ``default_lists.npz`` is still read) and ``default_lists.json`` (the
    length, the reasons, the sources and the counts, checked on load).
    """

    length: int
    offsets: NDArray[np.int64]
    item: NDArray[np.unsignedinteger]
    score: NDArray[np.float32]
    source: NDArray[np.uint8]
    reason: NDArray[np.unsignedinteger]
    reasons: NDArray[np.object_]

    @property
    def n_customers(self) -> int:
        """Number of customers with a list (the model's known customers).

        Returns
        -------
        int
            ``len(offsets) - 1``.
        """
        return len(self.offsets) - 1

    @classmethod
    def compute(cls, model: RecommenderModel, length: int,
                progress: Callable[[int, int], None] | None = None) -> DefaultLists:
        """Rank every customer the model knows (``model.rank``'s blocks and threads).

        Parameters
        ----------
        model
            The fitted recommender of the bundle.
        length
            Items per list (``serving.default_lists``).
        progress
            Called with (customers done, customers in all) as blocks finish.

        Returns
        -------
        DefaultLists
            One list per known customer, in the model's order.

        Raises
        ------
        ValueError
            A ranked list names a source outside :data:`training.recommend.ranked.SOURCES`.
        """
        import pandas as pd

        customer_ids = model.data_.customer_ids
        ranked = model.rank(customer_ids, RecommendOptions(n=length), progress=progress)
        counts = np.bincount(np.searchsorted(customer_ids, ranked.customer_id), minlength=len(customer_ids))
        offsets = np.zeros(len(customer_ids) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        # Reasons are shared string objects (one per item or per wording): hashing them is cheap.
        reason_codes, reasons = pd.factorize(pd.Series(ranked.reason, dtype=object), use_na_sentinel=False)
        source_codes = pd.Categorical(ranked.source, categories=list(SOURCES)).codes
        if (source_codes < 0).any():
            raise ValueError(f"a ranked list has a source outside {SOURCES}")
        return cls(length=length, offsets=offsets,
                   item=ranked.item.astype(np.min_scalar_type(max(model.data_.n_items - 1, 0))),
                   score=ranked.score.astype(np.float32), source=source_codes.astype(np.uint8),
                   reason=reason_codes.astype(np.min_scalar_type(max(len(reasons) - 1, 0))),
                   reasons=np.asarray(reasons, dtype=object))

    def lookup(self, row: int, n: int, customer_id: int) -> Ranked | None:
        """The top ``n`` of the customer at ``row`` of the model, or None when ``n`` is longer than
        the lists kept.

        Parameters
        ----------
        row
            The customer's position in the model's ``customer_ids``.
        n
            Items asked for.
        customer_id
            The customer's id, written into the answer.

        Returns
        -------
        Ranked or None
            Up to ``n`` items, ranks from 1 (fewer when the customer's list is shorter); ``None``
            for ``n > length``.
        """
        if n > self.length:
            return None
        start = int(self.offsets[row])
        stop = min(int(self.offsets[row + 1]), start + n)
        k = stop - start
        return Ranked(customer_id=np.full(k, customer_id, dtype=np.int64), rank=np.arange(1, k + 1, dtype=np.int64),
                      item=self.item[start:stop].astype(np.int64), score=self.score[start:stop].astype(np.float64),
                      source=_SOURCE_NAMES[self.source[start:stop]], reason=self.reasons[self.reason[start:stop]],
                      fallback=np.zeros(k, dtype=bool))

    # --- files ------------------------------------------------------------------------------------

    def save(self, directory: Path | str) -> None:
        """Write the arrays and the header into ``directory`` (an older ``.npz`` there is removed).

        Parameters
        ----------
        directory
            The bundle's model folder (exists).

        Returns
        -------
        None
        """
        where = Path(directory)
        save_arrays(where / ARRAYS, {"offsets": self.offsets, "item": self.item, "score": self.score,
                                     "source": self.source, "reason": self.reason})
        (where / ARRAYS_NPZ).unlink(missing_ok=True)
        header = {"format": FORMAT, "version": VERSION, "length": self.length, "customers": self.n_customers,
                  "entries": int(len(self.item)), "sources": list(SOURCES),
                  "reasons": [None if r is None else str(r) for r in self.reasons]}
        (where / HEADER).write_text(json.dumps(header), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path | str, model: RecommenderModel) -> DefaultLists | None:
        """The lists saved in ``directory`` for ``model``, or None when there are none.

        Parameters
        ----------
        directory
            The bundle's model folder.
        model
            The fitted recommender the lists must belong to.

        Returns
        -------
        DefaultLists or None
            The lists, memory-mapped; ``None`` when ``directory`` has no header.

        Raises
        ------
        DefaultListsError
            As :meth:`load_for`.
        """
        return cls.load_for(directory, model.data_.n_users, model.data_.n_items)

    @classmethod
    def load_for(cls, directory: Path | str, n_customers: int, n_items: int) -> DefaultLists | None:
        """The lists saved in ``directory`` for a model of ``n_customers`` x ``n_items`` (checked), or
        None when there are none: without the model itself (a worker answers from them before it has
        loaded it).

        Parameters
        ----------
        directory
            The bundle's model folder.
        n_customers, n_items
            The model's numbers of customers and items, checked against the files.

        Returns
        -------
        DefaultLists or None
            The lists, memory-mapped; ``None`` when ``directory`` has no header.

        Raises
        ------
        DefaultListsError
            A header that is not JSON or of another format or version, lists of another model, or
            arrays that are missing, of the wrong length or with codes out of range; the message
            names the file.
        """
        where = Path(directory)
        if not (where / HEADER).is_file():
            return None
        try:
            header: dict[str, Any] = json.loads((where / HEADER).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DefaultListsError(f"{where / HEADER}: not JSON ({exc})") from None
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise DefaultListsError(f"{where / HEADER}: format {header.get('format')!r} version "
                                    f"{header.get('version')!r}, expected {FORMAT!r} version {VERSION}")
        if header.get("sources") != list(SOURCES):
            raise DefaultListsError(f"{where / HEADER}: sources {header.get('sources')}, expected {list(SOURCES)}")
        if header.get("customers") != n_customers:
            raise DefaultListsError(f"{where / HEADER}: lists of {header.get('customers')} customers, the recommender "
                                    f"knows {n_customers}: the lists belong to another model")
        if (where / ARRAYS).is_dir():
            arrays = load_arrays(where / ARRAYS, DefaultListsError)
        elif (where / ARRAYS_NPZ).is_file():
            with np.load(where / ARRAYS_NPZ, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        else:
            raise DefaultListsError(f"{where}: {HEADER} without {ARRAYS}")
        missing = {"offsets", "item", "score", "source", "reason"} - set(arrays)
        if missing:
            raise DefaultListsError(f"{where / ARRAYS}: missing array(s) {', '.join(sorted(missing))}")
        reasons = np.asarray(header.get("reasons", []), dtype=object)
        entries = int(header.get("entries", -1))
        offsets = arrays["offsets"].astype(np.int64, copy=False)
        bad = [name for name in ("item", "score", "source", "reason") if len(arrays[name]) != entries]
        if bad or len(offsets) != n_customers + 1 or (len(offsets) and offsets[-1] != entries):
            raise DefaultListsError(f"{where / ARRAYS}: the arrays do not have the {entries:,} entries of "
                                    f"{n_customers:,} customers the header describes")
        if entries and (int(arrays["item"].max()) >= n_items or int(arrays["reason"].max()) >= len(reasons)
                        or int(arrays["source"].max()) >= len(SOURCES)):
            raise DefaultListsError(f"{where / ARRAYS}: an item, reason or source code is out of range")
        return cls(length=int(header["length"]), offsets=offsets, item=arrays["item"], score=arrays["score"],
                   source=arrays["source"], reason=arrays["reason"], reasons=reasons)


_SOURCE_NAMES = np.asarray(SOURCES, dtype=object)
