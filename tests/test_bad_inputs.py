"""The bad-input corpus (tests/data/bad/): every file through `rapport data ingest` as a user runs it.

Each case states its outcome in manifest.toml: the exit code, what the output says (and must not
say), and for a file that goes in, how many rows were accepted, quarantined (per reason, with row
numbers) and already present. Every row is decided: rows in = accepted + quarantined + present.
A refused file leaves nothing of itself in the store.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from rapport.cli import app

pytestmark = pytest.mark.data

CORPUS = Path(__file__).parent / "data" / "bad"
CASES = tomllib.loads((CORPUS / "manifest.toml").read_text())["case"]


def _flat(text: str) -> str:
    """Output with line wrapping undone: rich wraps long messages at the terminal width."""
    return " ".join(text.split())


def test_the_corpus_files_are_all_in_the_manifest():
    named = {case["file"] for case in CASES} | {f for case in CASES for f in case.get("setup", [])}
    on_disk = {p.name for p in CORPUS.iterdir() if p.name not in ("manifest.toml", "build.py")}
    # orders1.csv and orders_extra.csv are the siblings a glob in a file name would pick up.
    assert on_disk - named == {"orders1.csv", "orders_extra.csv"}
    assert named <= on_disk


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_bad_input(case, settings, monkeypatch, tmp_path):
    monkeypatch.setenv("RAPPORT_DATA_DIR", str(settings.data_dir))
    for name, value in case.get("env", {}).items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    for setup in case.get("setup", []):
        done = runner.invoke(app, ["data", "ingest", str(CORPUS / setup)], catch_exceptions=False)
        assert done.exit_code == 0, done.output
    args = list(case.get("args", []))
    if "mapping" in case:
        mapping = tmp_path / "mapping.toml"
        mapping.write_text(case["mapping"])
        args += ["--mapping", str(mapping)]
    path = CORPUS / case["file"]
    out = runner.invoke(app, ["data", "ingest", str(path), *args], catch_exceptions=False)
    output = _flat(out.output)

    assert out.exit_code == case.get("exit", 0), out.output
    assert "Traceback" not in out.output
    for fragment in case.get("output", []):
        assert _flat(fragment) in output, out.output
    for fragment in case.get("absent", []):
        assert fragment not in output

    con = duckdb.connect(str(settings.database_path), read_only=True)
    try:
        files = con.execute(
            "SELECT rows, accepted, quarantined, already_present, file_id FROM ingested_files WHERE path = ?",
            [str(path)],
        ).fetchall()
        if case.get("exit", 0):
            assert files == [], "a refused file must leave nothing in the store"
            assert con.execute("SELECT count(*) FROM quarantine WHERE source_file = ?", [str(path)]).fetchall()[0][0] == 0
            return
        assert len(files) == 1
        rows, accepted, quarantined, present, file_id = files[0]
        assert rows == case["rows"]
        assert rows == accepted + quarantined + present
        assert (accepted, quarantined, present) == (
            case.get("accepted", 0), case.get("quarantined", 0), case.get("present", 0))
        reasons = dict(con.execute(
            "SELECT reason, count(*) FROM quarantine WHERE file_id = ? GROUP BY 1", [file_id]).fetchall())
        assert reasons == case.get("reasons", {})
        numbers = {r for (r,) in con.execute("SELECT row_number FROM quarantine WHERE file_id = ?", [file_id]).fetchall()}
        assert numbers == set(case.get("quarantined_rows", numbers))
        if "sql" in case:
            got = con.execute(case["sql"]).fetchall()
            assert [list(row) for row in got] == [case["sql_result"]]
    finally:
        con.close()
