"""Files the commands write for the retailer (scores, recommendations, features): Parquet or CSV by
extension, and never half-written — a file appears under its name only once it is complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from features.errors import ArgumentError, NoDataError

if TYPE_CHECKING:
    import pandas as pd

#: The extensions a written table may have (compared case-insensitively).
TABLE_SUFFIXES = (".parquet", ".csv")


def check_table_path(path: Path) -> None:
    """Refuse an output path whose extension is neither ``.parquet`` nor ``.csv``.

    Parameters
    ----------
    path:
        The file the table is to be written to.

    Returns
    -------
    None

    Raises
    ------
    ArgumentError
        The extension is not one of :data:`TABLE_SUFFIXES`.
    """
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise ArgumentError(f"expected a .parquet or .csv file, got {path.name!r}")


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def write_frames(chunks: Iterable[pd.DataFrame], output: Path, *, index: bool = False,
                 written: Callable[[pd.DataFrame], None] | None = None) -> int:
    """Append each frame to ``output`` and rename it into place when all are written.

    The rows go to ``<output>.partial`` first; the file appears under its own name only complete,
    and a failure (or an interrupt) leaves no partial file behind.

    Parameters
    ----------
    chunks:
        Frames with the same columns, in the order their rows are to be written.
    output:
        A ``.parquet`` or ``.csv`` file (case-insensitive); its folder is created.
    index:
        Whether the frames' index is written as a column.
    written:
        Called with each frame once it is written (progress).

    Returns
    -------
    The number of rows written.

    Raises
    ------
    ArgumentError
        The extension is neither ``.parquet`` nor ``.csv``.
    NoDataError
        ``chunks`` held no frame: nothing would be written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_table_path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(output)
    csv = output.suffix.lower() == ".csv"
    writer = None
    rows = 0
    started = False
    try:
        for frame in chunks:
            if csv:
                frame.to_csv(tmp, mode="a" if started else "w", header=not started, index=index)
            else:
                table = pa.Table.from_pandas(frame, preserve_index=index)
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            started = True
            rows += len(frame)
            if written is not None:
                written(frame)
        if writer is not None:
            writer.close()
            writer = None
        if not started:
            raise NoDataError(f"nothing to write to {output}: no rows")
        tmp.replace(output)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return rows
