"""`rapport data report`: the engagement KPIs of a window with the identity and quarantine
summaries of the store, as one value the CLI prints and writes as JSON.

Kept apart from :mod:`features.report` (the KPI expressions, whose source the compiled KPI query is
fingerprinted on) and light to import: the command answers in well under a second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

    from features.identity import IdentitySummary
    from features.report import KpiReport


@dataclass(frozen=True)
class DataReport:
    """What `rapport data report` shows: ``kpis`` of the window, the ``identity`` summary and the
    ``quarantine`` counts by reason (most frequent first) of everything ingested so far."""

    kpis: KpiReport
    identity: IdentitySummary
    quarantine: dict[str, int]

    def payload(self, *, currency: str, generated_at: datetime) -> dict[str, Any]:
        """The JSON document of the report.

        Parameters
        ----------
        currency:
            ISO 4217 code the amounts are in.
        generated_at:
            When the report was made (written as ISO 8601, to the second).

        Returns
        -------
        ``generated_at``, ``currency``, ``kpis`` (:meth:`KpiReport.to_dict`), ``identity`` (keys,
        customers, merges, keys by type) and ``quarantine`` (reason -> rows).
        """
        ident = self.identity
        return {
            "generated_at": generated_at.isoformat(timespec="seconds"),
            "currency": currency,
            "kpis": self.kpis.to_dict(),
            "identity": {"keys": ident.keys, "customers": ident.customers, "merges": ident.merges,
                         "keys_by_type": ident.keys_by_type},
            "quarantine": dict(self.quarantine),
        }

    def write_json(self, path: Path, *, currency: str, generated_at: datetime) -> None:
        """Write :meth:`payload` to ``path`` (its folder created), indented.

        Parameters
        ----------
        path
            The JSON file to write (overwritten when it exists).
        currency
            ISO 4217 code the amounts are in.
        generated_at
            When the report was made.

        Returns
        -------
        None
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.payload(currency=currency, generated_at=generated_at), indent=2,
                                   default=str))


def data_report(con: duckdb.DuckDBPyConnection, *, start: datetime | None = None,
                end: datetime | None = None) -> DataReport:
    """The report of the store open on ``con``.

    Parameters
    ----------
    con:
        An open store (read only is enough).
    start, end:
        The KPI window ``[start, end)`` (naive UTC or aware); None: unbounded on that side. The
        identity and quarantine summaries cover the whole store.

    Returns
    -------
    The :class:`DataReport`.
    """
    from features.identity import identity_summary
    from features.report import kpi_report_duckdb

    quarantine = con.execute("SELECT reason, count(*) FROM quarantine GROUP BY 1 ORDER BY 2 DESC").fetchall()
    return DataReport(kpis=kpi_report_duckdb(con, start=start, end=end), identity=identity_summary(con),
                      quarantine={str(reason): int(n) for reason, n in quarantine})
