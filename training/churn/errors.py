"""The churn model's errors: what a user can fix about its inputs or its artefact."""

from __future__ import annotations

from features.errors import RapportError


class ChurnModelError(RapportError, ValueError):
    """What a user can fix about the churn model's inputs or artefact (the CLI prints it in one line)."""


class ChurnInputError(ChurnModelError):
    """A frame given to :class:`ChurnModel` lacks a feature or the label, or holds values that are not
    numbers (or, for the label, not 0/1)."""


class ChurnArtefactError(ChurnModelError):
    """A churn model artefact (``ChurnModel.to_dict()`` output) cannot be loaded: wrong format or
    version, a missing or malformed field, or fields that contradict each other."""
