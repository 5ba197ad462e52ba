"""What a recommend call asks besides the customers: the length of the lists and every filter, as one
frozen, hashable value (:class:`RecommendOptions`), declared here once.

The model resolves it against its fitted items (``RecommenderModel.rank``); the service builds it
from a request body, ranks the concurrent requests with equal options in one block and answers the
default options from the lists ranked at export. numpy only at import: a service's worker reads a
request's options before it has imported the model's libraries (see :mod:`serving.lookup`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

import numpy as np

from features.errors import RapportError

#: The longest list a recommend call ranks.
MAX_N = 1_000


class RecommenderInputError(RapportError, ValueError):
    """A request the recommender cannot serve, with what was expected."""


def checked_n(n: Any) -> int:
    """``n`` of a list, checked.

    Parameters
    ----------
    n
        The number of items asked for.

    Returns
    -------
    int
        ``n``, a whole number from 1 to :data:`MAX_N`.

    Raises
    ------
    RecommenderInputError
        ``n`` is not a whole number in that range (a boolean is not a number here).
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_N:
        raise RecommenderInputError(f"n must be a whole number from 1 to {MAX_N}, got {n!r}")
    return int(n)


def _values(name: str, given: Iterable[Hashable] | None) -> tuple[Hashable, ...] | None:
    """A list option as a tuple (hashable); a lone string is refused (it would be read letter by letter)."""
    if given is None:
        return None
    if isinstance(given, (str, bytes)):
        raise RecommenderInputError(f"{name} must be a list of values, not a single text")
    try:
        return tuple(given)
    except TypeError:
        raise RecommenderInputError(f"{name} must be a list of values, got a {type(given).__name__}") from None


def _text(name: str, given: str | None) -> None:
    if given is not None and not isinstance(given, str):
        raise RecommenderInputError(f"{name} must be a text or none, got a {type(given).__name__}")


#: The options that are lists (tuples once checked) and texts.
_LISTS = ("categories", "exclude_categories", "exclude_items")
_TEXTS = ("channel", "country")


@dataclass(frozen=True)
class RecommendOptions:
    """The options of one recommend call; equal options give equal lists for the same customer.

    ``n``: items per list (1..:data:`MAX_N`; a customer with fewer allowed candidates gets fewer).
    ``exclude_purchased``: leave out what the customer bought (except the model's repurchasable
    categories). ``categories`` / ``exclude_categories``: only items of these categories / none of
    these (case-insensitive). ``exclude_items``: never these items. ``channel`` / ``country``: the
    segment whose popular items feed the popular source and an unknown customer's list.

    Lists are stored as tuples (so that the options hash); an empty ``exclude_items`` is none.
    Every default means "no filter": :meth:`is_default` reads that. A new filter is a field here
    (with its check in ``__post_init__``), its use in ``RecommenderModel._resolve``, a keyword of
    ``RecommenderModel.recommend`` and a field of the same name in the service's
    ``RecommendRequest`` (``tests/test_recommend_options.py`` checks the three name the same fields).

    Raises
    ------
    RecommenderInputError
        A value of the wrong kind or out of range, naming the option and what was expected.
    """

    n: int = 20
    exclude_purchased: bool = True
    categories: tuple[str, ...] | None = None
    exclude_categories: tuple[str, ...] | None = None
    exclude_items: tuple[Hashable, ...] | None = None
    channel: str | None = None
    country: str | None = None

    def __post_init__(self) -> None:
        # Frozen: a value is set again only where the check changes it (a request's options are
        # built on the service's hot path, most of them with nothing to change).
        setattr_ = object.__setattr__
        if type(self.n) is not int or not 1 <= self.n <= MAX_N:
            setattr_(self, "n", checked_n(self.n))
        if type(self.exclude_purchased) is not bool:
            if not isinstance(self.exclude_purchased, np.bool_):
                raise RecommenderInputError(f"exclude_purchased must be true or false, got {self.exclude_purchased!r}")
            setattr_(self, "exclude_purchased", bool(self.exclude_purchased))
        for name in _LISTS:
            value = getattr(self, name)
            if value is not None and type(value) is not tuple:
                setattr_(self, name, _values(name, value))
        if self.exclude_items == ():
            setattr_(self, "exclude_items", None)
        for name in _TEXTS:
            _text(name, getattr(self, name))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The options' names, in the order of the fields.

        Returns
        -------
        tuple of str
            The names, as the fields of a request body that carry the options are named.
        """
        return _NAMES

    @classmethod
    def from_request(cls, request: Any) -> RecommendOptions:
        """The options of a request body whose fields bear the options' names.

        Parameters
        ----------
        request
            The service's ``RecommendRequest`` (any object with an attribute per option).

        Returns
        -------
        RecommendOptions
            Each option read from the attribute of its name, checked.
        """
        return cls(*_read_options(request))

    def is_default(self, length: int) -> bool:
        """Whether this list is a prefix of the lists ranked with the default options.

        Parameters
        ----------
        length
            Items per list of the lists ranked at export (:mod:`training.recommend.precomputed`).

        Returns
        -------
        bool
            ``n`` at most ``length`` and every filter at its default (no filter).
        """
        return self.n <= length and _read_filters(self) == _DEFAULT_FILTERS


_NAMES = tuple(f.name for f in fields(RecommendOptions))
#: The options of an object in the order of the fields (a request's, on the service's hot path).
_read_options = attrgetter(*_NAMES)
#: The options other than the length, the filters, and their defaults (no filter).
_read_filters = attrgetter(*(name for name in _NAMES if name != "n"))
_DEFAULT_FILTERS = _read_filters(RecommendOptions())
