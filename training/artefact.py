"""Reading a model's JSON artefact back with errors that name what is wrong.

Every model (CLV, churn, ...) stores its fitted state as ``{"format", "format_version",
"settings", "fitted"}``; :class:`ArtefactReader` checks the header and hands out sections and typed
fields, raising the model's own error class with the field's dotted name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ArtefactReader:
    """Checks an artefact's header on construction; :meth:`section` and :meth:`field` check the rest."""

    def __init__(self, data: Any, *, what: str, format: str, version: int, error: type[Exception]) -> None:
        self.what, self.error = what, error
        if not isinstance(data, Mapping):
            raise error(f"{what} artefact must be a mapping, got {type(data).__name__}")
        if data.get("format") != format:
            raise error(f"not a {what} artefact: format is {data.get('format')!r}, expected {format!r}")
        found = data.get("format_version")
        if found != version:
            raise error(f"{what} artefact format_version {found!r} is not supported (this code reads version {version})")
        self.data = data

    def section(self, name: str, fields: tuple[str, ...]) -> Mapping[str, Any]:
        """The artefact's section ``name``, checked to be a mapping holding every one of ``fields``.

        Parameters
        ----------
        name
            The section's key (``settings``, ``fitted``).
        fields
            The fields the section must hold.

        Returns
        -------
        Mapping[str, Any]
            The section, as stored.

        Raises
        ------
        Exception
            The reader's ``error`` class (e.g. ``ChurnArtefactError``): the section is missing or not a
            mapping, or lacks fields (the message lists them by dotted name).
        """
        section = self.data.get(name)
        if not isinstance(section, Mapping):
            raise self.error(f"{self.what} artefact: missing section {name!r}")
        missing = [f for f in fields if f not in section]
        if missing:
            raise self.error(f"{self.what} artefact: missing field(s) {', '.join(f'{name}.{f}' for f in missing)}")
        return section

    def field(self, section: Mapping[str, Any], name: str, kind: type) -> Any:
        """The field ``name`` of ``section``, checked to be of type ``kind`` (a bool is not an int).

        Parameters
        ----------
        section
            A section returned by :meth:`section`, which checked that the field is there.
        name
            The field's key.
        kind
            The type the value must have.

        Returns
        -------
        Any
            The value, as stored.

        Raises
        ------
        Exception
            The reader's ``error`` class: the value is not of type ``kind``; the message names the field,
            the expected type and the value found.
        """
        value = section[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(f"{self.what} artefact: fitted.{name} must be {getattr(kind, '__name__', kind)}, "
                             f"got {type(value).__name__}: {value!r}")
        return value
