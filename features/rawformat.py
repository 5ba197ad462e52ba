"""How a raw file is read: its exact path, its encoding, its delimiter, its number and date formats.

Retailers' exports are not all UTF-8 with commas: a French back office writes Windows-1252 with
``;`` between fields and ``,`` in numbers, Excel in most of Europe does the same, some tools write
UTF-16. Each of these is either declared (``--encoding``, ``--delimiter``, ``--decimal``,
``--date-format``, or the same keys in a mapping file) or detected, and the ingest says what it
detected. DuckDB reads UTF-8 and Latin-1 itself; any other encoding is transcoded to a temporary
UTF-8 copy first, which also holds for a file whose name contains glob characters (DuckDB would
read ``orders[1].csv`` as a pattern): such a file is read through a link with a plain name, so
that exactly the file given is read.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import re
from dataclasses import dataclass
from pathlib import Path

from features.discovery import IngestError

#: Bytes read to detect an encoding and a delimiter: enough for thousands of lines.
SAMPLE_BYTES = 1 << 20
#: Encodings DuckDB's CSV reader decodes itself (the others are transcoded to UTF-8 first).
_NATIVE = {"utf-8": "utf-8", "iso8859-1": "latin-1"}
_DELIMITERS = {",": ",", ";": ";", "\t": "\t", "tab": "\t", "\\t": "\t", "|": "|"}
_GLOB_CHARACTERS = re.compile(r"[*?\[\]{}]")
#: Date tokens accepted by --date-format besides strftime codes: dd/mm/yyyy, mm/dd/yyyy HH:MM ...
_DATE_TOKENS = (("yyyy", "%Y"), ("yy", "%y"), ("dd", "%d"), ("mm", "%m"), ("HH", "%H"), ("MM", "%M"),
                ("SS", "%S"))


@dataclass(frozen=True)
class CsvOptions:
    """What the user declared about a text file; ``None`` means: detect it."""

    encoding: str | None = None
    delimiter: str | None = None
    decimal: str | None = None
    date_format: str | None = None

    def __post_init__(self) -> None:
        if self.encoding is not None:
            canonical_encoding(self.encoding)
        if self.delimiter is not None:
            delimiter_of(self.delimiter)
        if self.decimal is not None and self.decimal not in (".", ","):
            raise IngestError(f"--decimal {self.decimal!r}: expected '.' or ','")
        if self.date_format is not None:
            strftime_format(self.date_format)


def canonical_encoding(name: str) -> str:
    """Python's name of an encoding (``latin-1`` -> ``iso8859-1``, ``windows-1252`` -> ``cp1252``).

    Parameters
    ----------
    name
        An encoding's name as a user writes it (surrounding spaces ignored).

    Returns
    -------
    str
        Python's canonical name of that encoding.

    Raises
    ------
    IngestError
        Python knows no such encoding.
    """
    try:
        return codecs.lookup(name.strip()).name
    except LookupError:
        raise IngestError(
            f"--encoding {name!r}: unknown encoding; expected e.g. utf-8, utf-16, latin-1, windows-1252"
        ) from None


#: How encodings are named in messages (Python's names are not what users call them).
_SHOWN = {"cp1252": "windows-1252", "iso8859-1": "latin-1", "utf-8-sig": "utf-8 with byte-order mark",
          "utf_16": "utf-16"}


def shown_encoding(name: str) -> str:
    """How an encoding is named in messages: ``cp1252`` is shown as ``windows-1252``.

    Parameters
    ----------
    name
        Python's canonical name of an encoding (:func:`canonical_encoding`).

    Returns
    -------
    str
        The name users know it by, or ``name`` itself when it has no other.
    """
    return _SHOWN.get(name, name)


def delimiter_of(text: str) -> str:
    """The delimiter character a ``--delimiter`` value stands for (``tab`` and ``\\t`` mean a tab).

    Parameters
    ----------
    text
        The declared delimiter: ``,``, ``;``, ``|``, a tab, ``tab`` or ``\\t`` (case-insensitive).

    Returns
    -------
    str
        The single delimiter character.

    Raises
    ------
    IngestError
        ``text`` is none of the accepted delimiters.
    """
    if text in _DELIMITERS:
        return _DELIMITERS[text]
    if text.lower() in _DELIMITERS:
        return _DELIMITERS[text.lower()]
    raise IngestError(f"--delimiter {text!r}: expected one of , ; | tab")


def strftime_format(text: str) -> str:
    """``dd/mm/yyyy HH:MM`` (or a strftime format such as ``%d/%m/%Y``) as a strftime format.

    Parameters
    ----------
    text
        A date format of tokens (``yyyy``, ``yy``, ``dd``, ``mm``, ``HH``, ``MM``, ``SS``) or, when it
        holds a ``%``, a strftime format taken as it is.

    Returns
    -------
    str
        The strftime format.

    Raises
    ------
    IngestError
        ``text`` holds neither a ``%`` nor any token.
    """
    if "%" in text:
        return text
    out = text
    for token, code in _DATE_TOKENS:
        out = out.replace(token, code)
    if "%" not in out:
        raise IngestError(f"--date-format {text!r}: expected tokens such as dd/mm/yyyy or a strftime format (%d/%m/%Y)")
    return out


def date_formats(fmt: str) -> list[str]:
    """The format and, for a format without a time, the same with a time of day.

    Parameters
    ----------
    fmt
        A strftime format (:func:`strftime_format`).

    Returns
    -------
    list[str]
        The formats to try, most precise first: ``fmt`` alone when it has an hour, otherwise ``fmt``
        with seconds, with minutes, and without a time.
    """
    if "%H" in fmt:
        return [fmt]
    return [f"{fmt} %H:%M:%S", f"{fmt} %H:%M", fmt]


@dataclass(frozen=True)
class StagedFile:
    """The file DuckDB reads for one input, with the options it is read with."""

    path: Path
    encoding: str  # DuckDB's name: utf-8 or latin-1
    delimiter: str
    #: Column names from the header line (empty ones named column<N>, repeated ones suffixed _<k>).
    columns: tuple[str, ...]
    #: What was detected or declared, for the ingest's notes.
    detected: tuple[str, ...]


def has_glob_characters(path: Path) -> bool:
    """Whether DuckDB would read ``path`` as a glob pattern (it holds ``*``, ``?``, brackets or braces).

    Parameters
    ----------
    path
        The file's path.

    Returns
    -------
    bool
        True when the path holds a glob character.
    """
    return bool(_GLOB_CHARACTERS.search(str(path)))


def _open(path: Path):  # noqa: ANN202 - a binary file object
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def _sample(path: Path) -> bytes:
    try:
        with _open(path) as handle:
            return handle.read(SAMPLE_BYTES)
    except (OSError, EOFError) as exc:
        raise IngestError(f"{path}: cannot be read ({type(exc).__name__})") from exc


def detect_encoding(sample: bytes) -> tuple[str, str]:
    """(Python encoding, how it was found) of a file from its first bytes.

    Parameters
    ----------
    sample
        The file's first bytes (up to :data:`SAMPLE_BYTES`, decompressed).

    Returns
    -------
    tuple[str, str]
        Python's name of the encoding (UTF-8 with or without a byte-order mark, UTF-16, Windows-1252
        or Latin-1) and a note saying how it was found.
    """
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig", "detected"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", "detected from its byte-order mark"
    # UTF-16 without a byte-order mark: ASCII text has a NUL byte in every other position.
    head = sample[:4096]
    if len(head) >= 4:
        even, odd = head[0::2].count(0), head[1::2].count(0)
        if odd > 0.4 * len(head[1::2]) and even == 0:
            return "utf-16-le", "detected: NUL bytes of UTF-16 little-endian text"
        if even > 0.4 * len(head[0::2]) and odd == 0:
            return "utf-16-be", "detected: NUL bytes of UTF-16 big-endian text"
    with contextlib.suppress(UnicodeDecodeError):  # not UTF-8: tried below
        # A multi-byte character may be cut at the end of the sample: not final.
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8", "valid UTF-8"
    # Not UTF-8: Windows-1252 (Latin-1 plus curly quotes, euro sign...) unless the bytes it leaves
    # undefined occur, then Latin-1, which decodes every byte.
    try:
        sample.decode("cp1252")
        return "cp1252", "detected: not UTF-8"
    except UnicodeDecodeError:
        return "iso8859-1", "detected: neither UTF-8 nor Windows-1252"


def detect_delimiter(header: str) -> str | None:
    """The delimiter of a header line: the candidate found most often outside quotes.

    Parameters
    ----------
    header
        The file's first line, decoded.

    Returns
    -------
    str or None
        One of ``,``, ``;``, a tab or ``|``; ``None`` when none of them occurs outside quotes.
    """
    outside = re.sub(r'"[^"]*"', "", header)
    counts = {d: outside.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else None


def _transcode(source: Path, encoding: str, target: Path) -> None:
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        with _open(source) as raw, target.open("w", encoding="utf-8", newline="") as out:
            for block in iter(lambda: raw.read(1 << 22), b""):
                out.write(decoder.decode(block))
            out.write(decoder.decode(b"", final=True))
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"{source}: byte {exc.start} is not valid {encoding}; declare the file's encoding with --encoding"
        ) from exc


def _plain_name(path: Path) -> str:
    lowered = path.name.lower()
    for ext in (".csv.gz", ".parquet", ".csv", ".tsv"):
        if lowered.endswith(ext):
            return "input" + ext
    return "input"


def literal(path: Path, workdir: Path) -> Path:
    """A path DuckDB reads as exactly this file: the path itself, or a link with a plain name.

    Parameters
    ----------
    path
        The file to read.
    workdir
        A private folder where the link is made (an earlier link of the same name is replaced).

    Returns
    -------
    pathlib.Path
        ``path`` when it holds no glob character, otherwise a symbolic link to it named ``input`` plus
        its extension.
    """
    if not has_glob_characters(path):
        return path
    link = workdir / _plain_name(path)
    link.unlink(missing_ok=True)
    link.symlink_to(path.resolve())
    return link


def stage_csv(path: Path, options: CsvOptions, workdir: Path) -> StagedFile:
    """Detect (or take) the encoding and delimiter of a text file and make it readable by DuckDB.

    Parameters
    ----------
    path
        A text file (``.csv``, ``.tsv`` or gzip-compressed ``.csv.gz``).
    options
        What the user declared; each ``None`` field is detected.
    workdir
        A private folder for a transcoded copy or a link.

    Returns
    -------
    StagedFile
        The file DuckDB is to read (the original, a link to it or a UTF-8 copy), its encoding as
        DuckDB names it, the delimiter, the header's column names and the notes on what was detected.

    Raises
    ------
    IngestError
        The file cannot be read, is empty, holds bytes invalid in its encoding, or a declared encoding
        or delimiter is unknown.
    """
    sample = _sample(path)
    detected: list[str] = []
    if options.encoding is not None:
        encoding = canonical_encoding(options.encoding)
        detected.append(f"encoding {shown_encoding(encoding)} (declared)")
    else:
        encoding, how = detect_encoding(sample)
        if encoding != "utf-8":  # the default is not worth a note
            detected.append(f"encoding {shown_encoding(encoding)} ({how})")
    text = codecs.getincrementaldecoder(encoding)(errors="replace").decode(sample, final=False)
    header = text.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")
    if options.delimiter is not None:
        delimiter = delimiter_of(options.delimiter)
        detected.append(f"delimiter {delimiter!r} (declared)")
    elif path.name.lower().endswith(".tsv"):
        delimiter = "\t"
    else:
        delimiter = detect_delimiter(header) or ","
        if delimiter != ",":
            detected.append(f"delimiter {delimiter!r} (detected from the header)")
    columns = header_names(header, delimiter)
    if not columns:
        raise IngestError(f"{path}: the file is empty; its first line must name the columns")
    if encoding in ("utf-8", "utf-8-sig", "iso8859-1"):
        native = "utf-8" if encoding.startswith("utf-8") else _NATIVE[encoding]
        return StagedFile(literal(path, workdir), native, delimiter, columns, tuple(detected))
    target = workdir / "input.csv"
    _transcode(path, encoding, target)
    return StagedFile(target, "utf-8", delimiter, columns, tuple(detected))


@dataclass(frozen=True)
class LineScan:
    """The lines of a CSV file as DuckDB's reader counts them (see :func:`scan_lines`)."""

    #: The line break the file uses: LF (also for CR LF), or CR in a file of classic Mac line ends.
    newline: bytes
    #: Physical lines: every line break ends one, a last line without a break counts too.
    physical: int
    #: Blank lines outside quoted fields, numbered as the reader numbers lines.
    blank: tuple[int, ...]


def scan_lines(path: Path, until: int | None = None) -> LineScan:
    """Read a CSV file's lines (up to the reader's line ``until`` when given) without parsing fields.

    The reader skips a blank line (it is no row) but counts it in the line numbers of the rows it
    refuses, while a line break inside a quoted field does not start a line there: the header is
    line 1, every row and every blank line between rows the next. So the data row of refused line
    ``L`` is ``L - 1`` minus the blank lines before it. A line break is inside a field when an odd
    number of quotes precede it (a quote inside a field is doubled); the bytes of a quote and of a
    line break are the same in UTF-8 and Latin-1, the encodings the reader is given.

    Parameters
    ----------
    path
        The text file (gzip-compressed when its name ends in ``.gz``).
    until
        Stop after the reader's line ``until``; ``None``: read the whole file.

    Returns
    -------
    LineScan
        The line break used, the number of physical lines read and the numbers of the blank lines.
    """
    blanks: list[int] = []
    line, physical, inside, rest, newline = 0, 0, False, b"", None
    with _open(path) as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            if newline is None:
                newline = b"\r" if b"\n" not in block and b"\r" in block else b"\n"
            pieces = (rest + block).split(newline)
            rest = pieces.pop()
            for piece in pieces:
                physical += 1
                if not inside:
                    line += 1
                    if until is not None and line > until:
                        return LineScan(newline, physical - 1, tuple(blanks))
                    if piece in (b"", b"\r"):
                        blanks.append(line)
                        continue
                if piece.count(b'"') % 2:
                    inside = not inside
    return LineScan(newline or b"\n", physical + (1 if rest else 0), tuple(blanks))


def header_names(header: str, delimiter: str) -> tuple[str, ...]:
    """The column names of a header line, unique and non-empty (the reader needs both).

    Parameters
    ----------
    header
        The header line, decoded.
    delimiter
        The delimiter between its fields (quotes are ``"``).

    Returns
    -------
    tuple[str, ...]
        The names, stripped; an empty one is named ``column<N>`` (its 1-based position), a repeated
        one gets the suffix ``_<k>``.
    """
    fields = next(csv.reader([header], delimiter=delimiter, quotechar='"'), [])
    names: list[str] = []
    for i, name in enumerate(fields, start=1):
        name = name.strip() or f"column{i}"
        base, k = name, 1
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return tuple(names)

