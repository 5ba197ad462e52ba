"""The audit of the test run's logs for personal data (the conftest hooks call it).

Every log record of the session (INFO and above, with tracebacks) and every test's captured
stdout/stderr go into one file; at the end of the session :func:`find_personal_data` searches it
for the e-mail addresses and phone numbers the generator and the test fixtures plant, and the run
fails when it finds one. The finding names the line and the kind of value, never the value itself
(the report would leak it again).

What counts as planted:

- e-mail addresses at the reserved example domains (RFC 2606 / 6761: ``example.com``, ``.org``,
  ``.net``, ``*.example``, ``*.test``, ``*.invalid``; the generator uses ``example.com``,
  ``mail.example``, ``post.example``...) and at ``x.com`` (a fixture's);
- UK mobile numbers in the forms the generator writes them (``+44 7700 900123``, ``07700900123``,
  ``0044-7700-900-123``, ``+447700900123``, ``(07700) 900123``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)*(?:example\.(?:com|org|net)|example|test|invalid|x\.com)(?![A-Za-z0-9-])",
    re.IGNORECASE,
)
_PHONE = re.compile(
    r"(?<![\d.])(?:\+44[\s-]?|0044[\s-]?|\(0|0)7\d{3}\)?[\s-]?\d{3}[\s-]?\d{3}(?![\d.])"
)


@dataclass(frozen=True)
class Finding:
    line: int
    kind: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.kind}"


def find_personal_data(text: str) -> list[Finding]:
    """Each line of ``text`` that holds a planted e-mail address or phone number, with its kind."""
    findings = []
    for number, line in enumerate(text.splitlines(), start=1):
        if _EMAIL.search(line):
            findings.append(Finding(number, "an e-mail address"))
        if _PHONE.search(line):
            findings.append(Finding(number, "a phone number"))
    return findings


def audit_file(path: Path) -> list[Finding]:
    return find_personal_data(path.read_text(encoding="utf-8", errors="replace")) if path.exists() else []
