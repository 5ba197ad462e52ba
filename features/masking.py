"""Credentials never leave the process in clear: one function masks them in any text.

A tracking URI such as ``https://user:pass@host`` or a database URL such as
``postgresql://app:s3cret@db/mlflow?password=s3cret`` carries a password. :func:`mask_secrets`
replaces the password of every URI in a text (the user name stays: it says which account is used)
and the value of password-like query parameters, so that ``rapport config``, error messages and log
lines can show which server is meant without showing how to log into it.

It is the one masking function of the project: the CLI passes every message through it and
:class:`MaskingFormatter` every log line.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

#: ``scheme://user:password@`` — the password is everything between the first ``:`` after ``//`` and
#: the last ``@`` before the host (passwords may contain ``@`` when not percent-encoded; user names
#: rarely contain ``:``). A URI without a password (``https://user@host``) has no ``:`` there.
_USERINFO = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s/:@]*):(?P<password>[^\s/]*)@")
#: ``password=...``, ``token=...``, ``secret=...``, ``api_key=...`` in a query string or a DSN.
_PARAMETER = re.compile(
    r"(?P<head>(?<![a-zA-Z0-9_])(?:password|passwd|pwd|token|access_token|secret|api_key|apikey)=)(?P<value>[^\s&;#'\"]+)",
    re.IGNORECASE,
)


def mask_secrets(text: object) -> str:
    """``text`` as a string with the password of every URI and every password-like parameter masked.

    Parameters
    ----------
    text
        Any value; it is turned into a string first (an exception, a URI, a log line).

    Returns
    -------
    str
        The text with every URI password and every ``password=``/``token=``/``secret=``/``api_key=``
        value replaced by ``***``; the user name of a URI stays.

    Examples
    --------
    >>> mask_secrets("https://ana:pa55@mlflow.example:5000/api")
    'https://ana:***@mlflow.example:5000/api'
    >>> mask_secrets("postgresql://db/mlflow?user=ana&password=pa55")
    'postgresql://db/mlflow?user=ana&password=***'
    """
    value = str(text)
    if "=" not in value and "@" not in value:
        return value  # the common case: nothing that could hold a credential
    value = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", value)
    return _PARAMETER.sub(lambda m: f"{m['head']}{MASK}", value)


class MaskingFormatter(logging.Formatter):
    """A log formatter whose lines (message, arguments and traceback) have their credentials masked."""

    def format(self, record: logging.LogRecord) -> str:
        """The record formatted as :class:`logging.Formatter` does, its credentials masked.

        Parameters
        ----------
        record
            The log record (message, arguments and any traceback).

        Returns
        -------
        str
            The formatted line passed through :func:`mask_secrets`.
        """
        return mask_secrets(super().format(record))
