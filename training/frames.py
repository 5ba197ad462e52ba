"""A table of a serving bundle on disk as a folder of uncompressed ``.npy`` columns.

Reading is ``np.load(..., mmap_mode="r")`` per column: no decoding, nothing to decompress, and
:func:`read_columns` returns the arrays without pandas (a service's worker looks keys up in them
before it has imported pandas); :func:`read_frame` builds the DataFrame. Columns are written one
file each, never pickled (``allow_pickle=False`` both ways); the layout is in :func:`write_frame`.
The README's Performance section compares the read with Parquet's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from features.errors import RapportError

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = "columns.json"
FORMAT = "rapport-columns"
VERSION = 1


class FrameFileError(RapportError, ValueError):
    """A table folder that cannot be read, naming the file and what is wrong."""


@dataclass(frozen=True)
class Columns:
    """A table read by :func:`read_columns`: arrays by column name (categoricals as codes), the
    categories of the categorical columns, the index (None when the table has none)."""

    names: tuple[str, ...]
    arrays: dict[str, np.ndarray]
    categories: dict[str, list[Any]]
    index: np.ndarray | None
    index_name: str | None

    def __len__(self) -> int:
        return len(self.arrays[self.names[0]]) if self.names else (0 if self.index is None else len(self.index))


def write_frame(frame: pd.DataFrame, directory: Path, *, index: bool = True) -> None:
    """Write ``frame`` as :mod:`training.frames` columns into ``directory`` (created; replaced).

    ``<name>/columns.json`` lists the columns in order (name, kind, dtype; a categorical's
    categories) and the index's name; ``<name>/<column>.npy`` is a column (``index.npy`` the index).
    Numbers, booleans and timestamps are stored as they are; a categorical or text column as its
    integer codes, the categories in the JSON (text comes back as a categorical).

    Parameters
    ----------
    frame
        The table: columns of numbers, booleans, timestamps, text or categoricals.
    directory
        The table's folder; its files are removed first.
    index
        Write the index too (numbers or timestamps).

    Returns
    -------
    None

    Raises
    ------
    FrameFileError
        A column or the index holds Python objects that are not text.
    """
    import pandas as pd

    if directory.is_dir():
        for old in directory.iterdir():
            old.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    described: list[dict[str, Any]] = []
    for k, name in enumerate(frame.columns):
        column = frame[name]
        # Named after the column where the name is a plain word: the manifest's checks then name it.
        plain = re.fullmatch(r"[A-Za-z0-9_]+", str(name)) is not None and str(name) != "index"
        entry: dict[str, Any] = {"name": str(name), "file": f"{name}.npy" if plain else f"column_{k}.npy"}
        if isinstance(column.dtype, pd.CategoricalDtype) or column.dtype == object or pd.api.types.is_string_dtype(column):
            categorical = column.astype("category")
            entry |= {"kind": "category", "categories": [_plain(c) for c in categorical.cat.categories]}
            values = categorical.cat.codes.to_numpy()
        else:
            values = column.to_numpy()
            if values.dtype == object:
                raise FrameFileError(f"{directory}: column {name!r} holds Python objects ({column.dtype}), "
                                     f"expected numbers, booleans, timestamps or text")
            entry |= {"kind": "array"}
        entry["dtype"] = values.dtype.str
        np.save(directory / entry["file"], np.ascontiguousarray(values), allow_pickle=False)
        described.append(entry)
    header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "rows": len(frame), "columns": described,
                              "index": None}
    if index:
        values = np.ascontiguousarray(frame.index.to_numpy())
        if values.dtype == object:
            raise FrameFileError(f"{directory}: the index holds Python objects, expected numbers or timestamps")
        np.save(directory / "index.npy", values, allow_pickle=False)
        header["index"] = {"name": frame.index.name, "file": "index.npy", "dtype": values.dtype.str}
    (directory / COLUMNS).write_text(json.dumps(header), encoding="utf-8")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def read_columns(directory: Path) -> Columns:
    """The columns written by :func:`write_frame`, memory-mapped read-only, without pandas.

    Parameters
    ----------
    directory
        The table's folder.

    Returns
    -------
    Columns
        Arrays by name (categoricals as integer codes, -1 for missing), the categories, the index.

    Raises
    ------
    FrameFileError
        A file that is missing, not readable or does not match the header (the message names it).
    """
    path = directory / COLUMNS
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FrameFileError(f"{path} is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise FrameFileError(f"{path}: not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise FrameFileError(f"{path}: not a table of columns (format {FORMAT!r} version {VERSION} expected)")
    rows = int(header["rows"])

    def load(name: str, dtype: str) -> np.ndarray:
        where = directory / name
        try:
            values = np.load(where, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FrameFileError(f"{where}: not a readable array ({exc})") from None
        if values.shape != (rows,) or values.dtype.str != dtype:
            raise FrameFileError(f"{where}: {values.dtype} x {values.shape}, the header records {dtype} x ({rows},)")
        return values

    names: list[str] = []
    arrays: dict[str, np.ndarray] = {}
    categories: dict[str, list[Any]] = {}
    for entry in header["columns"]:
        name = str(entry["name"])
        names.append(name)
        arrays[name] = load(str(entry["file"]), str(entry["dtype"]))
        if entry.get("kind") == "category":
            categories[name] = list(entry["categories"])
            codes = arrays[name]
            if rows and (int(codes.max()) >= len(categories[name]) or int(codes.min()) < -1):
                raise FrameFileError(f"{directory / entry['file']}: codes outside the {len(categories[name])} "
                                     f"categories of column {name!r}")
    index, index_name = None, None
    if header.get("index"):
        index_name = header["index"].get("name")
        index = load(str(header["index"]["file"]), str(header["index"]["dtype"]))
    return Columns(names=tuple(names), arrays=arrays, categories=categories, index=index, index_name=index_name)


def read_frame(directory: Path) -> pd.DataFrame:
    """The DataFrame written by :func:`write_frame` (columns, dtypes, index and its name).

    Parameters
    ----------
    directory
        The table's folder.

    Returns
    -------
    pandas.DataFrame
        Text columns come back as categoricals; the arrays stay memory-mapped where pandas allows.

    Raises
    ------
    FrameFileError
        As :func:`read_columns`.
    """
    import pandas as pd

    table = read_columns(directory)
    data: dict[str, Any] = {}
    for name in table.names:
        values = table.arrays[name]
        if name in table.categories:
            data[name] = pd.Categorical.from_codes(np.asarray(values), categories=table.categories[name])
        else:
            data[name] = np.asarray(values)
    index = None if table.index is None else pd.Index(np.asarray(table.index), name=table.index_name)
    return pd.DataFrame(data, index=index, columns=list(table.names))
