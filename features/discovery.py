"""Finding raw inputs: which source a file is, folders of files, and column mappings.

A file or folder named after a contract source (``orders.csv``, ``orders_2024-06-01.parquet``, a
folder ``orders/``) feeds that source; anything else needs ``--source`` and, for an export with
other column names, a mapping (``--map`` options or a small TOML file).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from features.errors import RapportError
from features.schema import FILE_EXTENSIONS, SOURCES

if TYPE_CHECKING:
    from features.rawformat import CsvOptions


class IngestError(RapportError):
    """A file-level problem: the message names the file, the column and what was expected."""


@dataclass(frozen=True)
class RawInput:
    """One raw input: a file on disk or an in-memory Arrow table, and the source it feeds."""

    source: str
    label: str
    path: Path | None = None
    table: pa.Table | None = None
    #: contract column -> column name in the file, for exports whose names differ.
    mapping: Mapping[str, str] = field(default_factory=dict)
    #: Declared encoding, delimiter, decimal mark and date format of a text file (None: detected).
    options: CsvOptions | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise IngestError(f"{self.label}: unknown source {self.source!r}; expected one of {', '.join(SOURCES)}")
        if (self.path is None) == (self.table is None):
            raise ValueError("RawInput needs exactly one of path or table")


def _strip_extension(name: str) -> str | None:
    lowered = name.lower()
    for ext in sorted(FILE_EXTENSIONS, key=len, reverse=True):
        if lowered.endswith(ext):
            return name[: -len(ext)]
    return None


def source_of(name: str) -> str | None:
    """The contract source a file or folder name stands for (its name starts with the source's name).

    Parameters
    ----------
    name
        A file or folder name, with or without its extension (``orders_2024-06-01.parquet``).

    Returns
    -------
    str or None
        The source (the longest matching name, followed by nothing, ``_`` or ``-``); ``None`` when the
        name stands for none.
    """
    stem = (_strip_extension(name) or name).lower()
    for source in sorted(SOURCES, key=len, reverse=True):
        if stem == source or stem.startswith(source + "_") or stem.startswith(source + "-"):
            return source
    return None


def discover(
    path: Path, *, source: str | None = None, mapping: Mapping[str, str] | None = None,
    options: CsvOptions | None = None,
) -> tuple[list[RawInput], list[tuple[str, str]]]:
    """Inputs found at ``path`` (a file, or a folder of source files / per-source folders).

    Returns the inputs and the paths that were ignored with why, so that nothing is skipped unsaid.

    Parameters
    ----------
    path
        A file, or a folder of source files and per-source folders (names starting with ``.`` or
        ``_`` are ignored).
    source
        The source every file found feeds; ``None``: each file's source is told by its name
        (:func:`source_of`).
    mapping
        Contract column -> column name in the files, given to every input.
    options
        Declared text-file format, given to every input; ``None``: detected per file.

    Returns
    -------
    tuple[list[RawInput], list[tuple[str, str]]]
        The inputs, in name order, and the ignored paths with the reason each was ignored.

    Raises
    ------
    IngestError
        ``path`` does not exist; a file's source cannot be told or its type is not supported; a
        folder holds no recognised source file; ``source`` is not a contract source.
    """
    mapping = dict(mapping or {})

    def found(kind: str, file: Path) -> RawInput:
        return RawInput(kind, str(file), path=file, mapping=mapping, options=options)

    if not path.exists():
        raise IngestError(f"{path}: no such file or folder")
    if path.is_file():
        kind = source or source_of(path.name)
        if kind is None:
            raise IngestError(
                f"{path}: cannot tell which source this file is; name it after one of "
                f"{', '.join(SOURCES)} (e.g. orders.csv) or pass --source"
            )
        if _strip_extension(path.name) is None:
            raise IngestError(f"{path}: unsupported file type; expected one of {', '.join(FILE_EXTENSIONS)}")
        return [found(kind, path)], []

    inputs: list[RawInput] = []
    ignored: list[tuple[str, str]] = []
    for entry in sorted(path.iterdir()):
        if entry.name.startswith((".", "_")):
            ignored.append((str(entry), "hidden or underscore-prefixed"))
            continue
        kind = source or source_of(entry.name)
        if kind is None:
            ignored.append((str(entry), f"name does not start with a source name ({', '.join(SOURCES)})"))
            continue
        if entry.is_dir():
            for child in sorted(entry.iterdir()):
                if child.is_file() and _strip_extension(child.name) is not None and not child.name.startswith((".", "_")):
                    inputs.append(found(kind, child))
                else:
                    ignored.append((str(child), "not a data file"))
        elif _strip_extension(entry.name) is not None:
            inputs.append(found(kind, entry))
        else:
            ignored.append((str(entry), f"unsupported file type (expected {', '.join(FILE_EXTENSIONS)})"))
    if not inputs:
        raise IngestError(
            f"{path}: no recognised source file; expected files named after {', '.join(SOURCES)} "
            f"with extension {', '.join(FILE_EXTENSIONS)}"
        )
    return inputs, ignored


#: Keys of a mapping file that describe how its text file is written (like the CLI options).
FORMAT_KEYS: tuple[str, ...] = ("encoding", "delimiter", "decimal", "date_format")


@dataclass(frozen=True)
class MappingFile:
    """A column-mapping TOML: the source, contract column -> file column, and the file's format."""

    source: str | None
    columns: dict[str, str]
    formats: dict[str, str]


def load_mapping_file(path: Path) -> MappingFile:
    """Read a column-mapping TOML: ``source = "transactions"``, optional ``encoding``, ``delimiter``,
    ``decimal`` and ``date_format``, and a ``[columns]`` table of ``contract_column = "column in the file"``.

    Parameters
    ----------
    path
        The TOML file.

    Returns
    -------
    MappingFile
        Its source (``None`` when not given), column mapping and format keys.

    Raises
    ------
    IngestError
        The file cannot be read or parsed, ``[columns]`` is not a table of text, a key is unknown, or
        a format key is not text.
    """
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise IngestError(f"{path}: cannot read the mapping file: {exc}") from exc
    source = data.get("source")
    columns = data.get("columns", {})
    if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        raise IngestError(f"{path}: [columns] must map contract column names to column names (text)")
    unknown = sorted(set(data) - {"source", "columns", *FORMAT_KEYS})
    if unknown:
        raise IngestError(f"{path}: unknown key(s) {', '.join(unknown)}; expected source, {', '.join(FORMAT_KEYS)} and a columns table")
    formats = {key: data[key] for key in FORMAT_KEYS if key in data}
    if not all(isinstance(v, str) for v in formats.values()):
        raise IngestError(f"{path}: {', '.join(FORMAT_KEYS)} must be text")
    return MappingFile(source, dict(columns), formats)


def parse_map_options(options: list[str]) -> dict[str, str]:
    """``["customer_key=Customer ID", ...]`` from repeated ``--map`` options.

    Parameters
    ----------
    options
        The options' values, each ``CONTRACT_COLUMN=FILE_COLUMN``.

    Returns
    -------
    dict[str, str]
        Contract column -> column name in the file, both stripped; a later option for the same contract
        column wins.

    Raises
    ------
    IngestError
        An option lacks the ``=`` or one of its sides.
    """
    mapping: dict[str, str] = {}
    for option in options:
        contract, sep, raw = option.partition("=")
        if not sep or not contract.strip() or not raw.strip():
            raise IngestError(f"--map {option!r}: expected CONTRACT_COLUMN=FILE_COLUMN, e.g. customer_key='Customer ID'")
        mapping[contract.strip()] = raw.strip()
    return mapping
