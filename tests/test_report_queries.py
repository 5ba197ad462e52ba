"""The KPI report as ``rapport data report`` computes it: by the query compiled ahead of time from
the report's Ibis expression (``features/kpi_queries.py``), which must give the Ibis report itself."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import duckdb
import pytest

from features import kpi_queries
from features.report import compile_kpi_queries, kpi_query_fingerprint, kpi_report, kpi_report_duckdb
from features.store import create_tables, ibis_backend
from tests.fixtures_history import TINY_AS_OF, random_history, store_with, tiny_history

pytestmark = pytest.mark.data

#: Every kind of window: none, an end, a start, both; an aware bound is converted to UTC.
WINDOWS = [
    (None, None),
    (None, TINY_AS_OF),
    (TINY_AS_OF, None),
    (datetime(2024, 1, 15, 12, tzinfo=timezone(timedelta(hours=2))), TINY_AS_OF),
]


@pytest.fixture(scope="module")
def tiny():
    con = store_with(tiny_history())
    yield con
    con.close()


def test_the_compiled_kpi_query_is_its_expression_compiled_now():
    # Fails when the report, the history, the contract or the store changed without `make kpi-queries`.
    assert kpi_queries.FINGERPRINT == kpi_query_fingerprint(), "features/kpi_queries.py is stale: make kpi-queries"
    con = duckdb.connect(":memory:")
    create_tables(con)
    try:
        assert kpi_queries.QUERIES == compile_kpi_queries(ibis_backend(con)), "stale: make kpi-queries"
    finally:
        con.close()


@pytest.mark.parametrize(("start", "end"), WINDOWS)
def test_the_compiled_report_is_the_ibis_report(tiny, start, end):
    compiled = kpi_report_duckdb(tiny, start=start, end=end)
    assert compiled == kpi_report(ibis_backend(tiny), start=start, end=end)
    assert compiled.to_dict() == kpi_report(ibis_backend(tiny), start=start, end=end).to_dict()


def test_the_compiled_report_is_the_ibis_report_on_a_random_history():
    con = store_with(random_history(7))
    # One thread: a parallel sum of doubles adds in an order that changes from run to run (the last
    # bits of the refunds differ between two runs of the same query), which is not what is compared.
    con.execute("SET threads = 1")
    try:
        for start, end in [(None, None), (datetime(2022, 6, 1), datetime(2023, 3, 1))]:
            assert kpi_report_duckdb(con, start=start, end=end) == kpi_report(ibis_backend(con), start=start, end=end)
    finally:
        con.close()


def test_a_window_that_ends_before_it_starts_is_refused(tiny):
    with pytest.raises(ValueError, match="end"):
        kpi_report_duckdb(tiny, start=TINY_AS_OF, end=datetime(2024, 1, 1))


def test_a_stale_compiled_query_is_never_run(tiny, monkeypatch, caplog):
    expected = kpi_report(ibis_backend(tiny), end=TINY_AS_OF)
    monkeypatch.setattr(kpi_queries, "FINGERPRINT", "0" * 64)
    monkeypatch.setattr(kpi_queries, "QUERIES", {})  # running a compiled query would raise KeyError
    with caplog.at_level(logging.INFO, logger="features.report"):
        assert kpi_report_duckdb(tiny, end=TINY_AS_OF) == expected
    assert "make kpi-queries" in caplog.text
