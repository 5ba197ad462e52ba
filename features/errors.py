"""The base of the project's own errors: a problem the user can fix (a file, a setting, the data at
hand, an argument), whose message names what is at fault and what was expected. ``rapport`` prints
a :class:`RapportError` as one line with exit code 1; anything else is a bug, shown with its
traceback (exit code 2). Every error class derives from it, keeping its standard base
(``class SettingsError(RapportError, ValueError)``) so that ``except ValueError`` still catches it."""

from __future__ import annotations


class RapportError(Exception):
    """A problem the user can fix; the message names the file, field, setting or argument at fault."""


class NoDataError(RapportError, ValueError):
    """The store, or the period asked for, holds nothing the command works on (no sale, no customer)."""


class ArgumentError(RapportError, ValueError):
    """An argument or option outside the values accepted; the message names it and those values."""
