"""What every ``rapport`` command shares: the command groups, the settings, the consoles (no markup,
credentials masked), progress bars, and how an error ends a command (one line and exit code 1 for a
user's error, the traceback and exit code 2 for a bug)."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text
from typer.core import TyperGroup
from typer.exceptions import TyperException

from features.errors import ArgumentError, RapportError
from features.masking import MaskingFormatter, mask_secrets
from features.settings import Settings, load_settings

if TYPE_CHECKING:
    import pandas as pd

#: Width of the output when it is not a terminal (a CI log, a file, a pipe) and COLUMNS is unset:
#: rich would squeeze tables into 80 columns and cut their headers ("recall…").
NON_TERMINAL_WIDTH = 200


class _Console(Console):
    """A console that never interprets rich markup (a column named ``price [eur]`` or ``notes [/]``
    prints as it is) and masks the credentials of every message it prints (URIs with a password)."""

    def print(self, *objects, **kwargs) -> None:  # noqa: ANN002, ANN003 - rich's signature
        super().print(*(mask_secrets(o) if isinstance(o, str) else o for o in objects), **kwargs)


def _console(*, stderr: bool) -> _Console:
    stream = sys.stderr if stderr else sys.stdout
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    wide = not terminal and not os.environ.get("COLUMNS", "").isdigit()
    # Not on a terminal, lines are not wrapped either: a message stays one line for grep.
    return _Console(stderr=stderr, markup=False, width=NON_TERMINAL_WIDTH if wide else None, soft_wrap=not terminal)


console = _console(stderr=False)
err = _console(stderr=True)


def _styled(label: str, style: str, message: object = "") -> Text:
    """``label`` in ``style``, then ``message`` as plain text (never parsed as markup), masked."""
    text = mask_secrets(message)
    return Text.assemble((label, style), " " + text if text else "")


def _error(message: object) -> None:
    err.print(_styled("error:", "bold red", message), highlight=False)


def _traceback(exc: BaseException) -> None:
    # Plain text through the masking console: a URI's password never reaches the terminal or a CI log.
    err.print("".join(traceback.format_exception(exc)).rstrip(), highlight=False)


#: Exit code of an unexpected error (a bug): its traceback is shown. A user's error exits with 1.
BUG_EXIT_CODE = 2

#: Errors of a path the user gave (missing, already there, a folder where a file is expected, not
#: writable): the message names the file. Other ``OSError``s (a full disk, a dropped connection) keep
#: their traceback.
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


class _Commands(TyperGroup):
    """The command group: a user's error that no ``_guard`` caught is one line (exit code 1); an
    exception no command expected is shown with its traceback and exits with :data:`BUG_EXIT_CODE`
    (Python's own code for an uncaught exception, 1, would pass it off as the user's error)."""

    def invoke(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # exit codes and usage errors, typer's own
            raise
        except (RapportError, *_PATH_ERRORS) as exc:
            _user_error(exc)
        except Exception as exc:
            _traceback(exc)
            _error(f"unexpected {type(exc).__name__} (a bug; the traceback is above): {exc}")
            raise typer.Exit(BUG_EXIT_CODE) from exc


app = typer.Typer(cls=_Commands, help="Customer intelligence for omnichannel retailers.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Generate, ingest, inspect and report on the unified customer history.",
                       no_args_is_help=True)
models_app = typer.Typer(help="Registered model versions: list them, promote one by hand.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
serve_app = typer.Typer(help="The BentoML service: export its bundle, start it.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")


class _State:
    settings: Settings | None = None
    verbose: bool = False


_state = _State()


@app.callback()
def main(
    config: Annotated[Path | None, typer.Option("--config", help="TOML settings file (else $RAPPORT_CONFIG or ./rapport.toml).")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="State folder (else $RAPPORT_DATA_DIR or ./data).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details; show the traceback of an "
                                                                     "error too.")] = False,
) -> None:
    _state.verbose = verbose
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    if config is not None:
        os.environ["RAPPORT_CONFIG"] = str(config)
    overrides = {"data_dir": data_dir} if data_dir is not None else {}
    _state.settings = _guard(lambda: load_settings(**overrides))


def settings() -> Settings:
    if _state.settings is None:
        _state.settings = _guard(load_settings)
    return _state.settings


def _user_error(exc: BaseException) -> NoReturn:
    """One red line and exit code 1; the traceback first under ``--verbose``."""
    if _state.verbose:
        _traceback(exc)
    _error(exc)
    raise typer.Exit(1) from exc


def _guard(fn):  # noqa: ANN001, ANN202 - tiny wrapper
    """Run ``fn``; the user's errors (a :class:`RapportError`, a path that cannot be read or written)
    become one red line and exit code 1. Anything else is a bug: :class:`_Commands` shows its traceback."""
    try:
        return fn()
    except (RapportError, *_PATH_ERRORS) as exc:
        _user_error(exc)


@contextmanager
def _progress() -> Iterator[Progress]:
    # Descriptions hold file names and step texts: never markup.
    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        yield progress


def _date(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"expected a date like 2024-06-30, got {value!r}", param_hint=option) from exc


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- batch files ----------------------------------------------------------------------------------


def _check_output(output: Path) -> None:
    from features.output import check_table_path

    try:
        check_table_path(output)
    except ArgumentError as exc:
        raise typer.BadParameter(str(exc), param_hint="--output") from None


def _write_chunks(chunks: Iterable[tuple[int, pd.DataFrame]], output: Path, *, total: int, what: str) -> int:
    """:func:`features.output.write_frames` under a progress bar; each chunk is (the customers it
    covers, its frame). Returns the rows written."""
    from features.output import write_frames

    with _progress() as progress:
        task = progress.add_task(what, total=total)

        def frames() -> Iterator[pd.DataFrame]:
            for done, frame in chunks:
                yield frame
                progress.update(task, advance=done)

        return write_frames(frames(), output)
