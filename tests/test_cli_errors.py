"""How ``rapport`` ends on an error: a user's error (a :class:`~features.errors.RapportError`, a path
that cannot be read) is one line and exit code 1, its traceback only under ``--verbose``; anything
else is a bug, shown with its traceback, exit code 2."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest
from typer.testing import CliRunner

import rapport.app
from features.errors import RapportError
from rapport.cli import app

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("RAPPORT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("RAPPORT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no rapport.toml of the working directory

    def invoke(*args: str):
        return CliRunner().invoke(app, list(args), catch_exceptions=False)

    return invoke


def _raising(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc

    return fail


def test_a_user_error_is_one_line_and_exit_code_1(run):
    out = run("data", "report")
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == [
        f"error: no database at {Path('data').resolve() / 'rapport.duckdb'}: ingest data first "
        "(rapport data ingest DIR) or set RAPPORT_DATA_DIR"]


def test_verbose_shows_the_traceback_of_a_user_error(run):
    out = run("--verbose", "data", "report")
    assert out.exit_code == 1
    assert "Traceback (most recent call last)" in out.output and "features/store.py" in out.output
    assert out.output.strip().splitlines()[-1].startswith("error: no database at ")


def test_a_rapport_error_raised_outside_a_guard_is_one_line(run, monkeypatch):
    # The command group itself turns a RapportError that no _guard wrapped into the one line.
    from features.errors import NoDataError
    from features.settings import Settings

    monkeypatch.setattr(Settings, "leaves", _raising(NoDataError("the store holds no sale")))
    out = run("config")
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == ["error: the store holds no sale"]


@pytest.mark.parametrize("exc", [ZeroDivisionError("division by zero"), ValueError("cannot reshape array"),
                                 KeyError("customer_id"), OSError(28, "No space left on device")])
def test_an_unexpected_exception_shows_its_traceback_and_exit_code_2(run, monkeypatch, exc):
    # A bug inside a library (numpy's ValueError, pandas' KeyError) is not presented as the user's error.
    monkeypatch.setattr(rapport.app, "load_settings", _raising(exc))
    out = run("config")
    assert out.exit_code == 2
    assert "Traceback (most recent call last)" in out.output
    assert f"{type(exc).__name__}" in out.output and "rapport/app.py" in out.output
    assert out.output.strip().splitlines()[-1].startswith(f"error: unexpected {type(exc).__name__} (a bug")


def test_a_missing_file_is_one_line(run, tmp_path):
    out = run("data", "ingest", str(tmp_path / "absent.csv"))
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) == 1 and "absent.csv" in out.output


def test_a_refused_argument_is_one_line(run, tmp_path):
    out = run("data", "generate", "--customers", "10", "--start", "2025-01-01", "--end", "2025-02-01",
              "--output", str(tmp_path / "raw"))
    assert out.exit_code == 1 and "Traceback" not in out.output
    [line] = out.output.strip().splitlines()
    assert line.startswith("error: the history from start=2025-01-01 to end=2025-02-01 covers 32 days")


def test_usage_errors_keep_their_usage_message(run):
    out = run("data", "features", "--as-of", "yesterday", "--output", "x.csv")
    assert out.exit_code == 2 and "expected a date like 2024-06-30" in out.output and "Traceback" not in out.output


def test_an_output_that_is_neither_parquet_nor_csv_is_refused_before_any_work(run, tmp_path):
    for command in (("data", "features", "--as-of", "2025-06-30"), ("score",), ("recommend",)):
        out = run(*command, "--output", str(tmp_path / "scores.xlsx"))
        assert out.exit_code == 2, out.output
        shown = " ".join(out.output.replace("│", " ").split())  # the usage box wraps long lines
        assert "expected a .parquet or .csv file, got 'scores.xlsx'" in shown and "--output" in shown
    assert list(tmp_path.iterdir()) == []


class _Store:
    def close(self) -> None:
        pass


@pytest.mark.parametrize(("cause", "code"), [(ZeroDivisionError("division by zero"), 2),
                                             (RapportError("rapport_churn_horizon_days leaves no label"), 1)])
def test_a_failed_training_step_shows_the_traceback_of_a_bug_only(run, monkeypatch, cause, code):
    import features.store
    import training.pipeline

    def failing(*args, **kwargs):
        try:
            raise cause
        except Exception as exc:
            raise training.pipeline.PipelineError("churn", exc, None) from exc

    monkeypatch.setattr(features.store, "connect", lambda *args, **kwargs: _Store())
    monkeypatch.setattr(training.pipeline, "run_pipeline", failing)
    out = run("train", "--only", "churn")
    assert out.exit_code == code
    assert out.output.strip().splitlines()[-1].startswith("error: training step 'churn' failed: ")
    assert ("Traceback (most recent call last)" in out.output) == (code == 2)


def _classes() -> dict[str, tuple[str, list[str]]]:
    """Every class of the project's packages: name -> (module:Class, the names of its bases)."""
    found = {}
    for package in ("features", "training", "serving", "rapport"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    bases = [base.id if isinstance(base, ast.Name) else ast.unparse(base) for base in node.bases]
                    found[node.name] = (f"{path.relative_to(ROOT)}:{node.name}", bases)
    return found


def _builtin_exception(name: str) -> bool:
    kind = getattr(builtins, name, None)
    return isinstance(kind, type) and issubclass(kind, Exception)


def test_every_error_class_of_the_project_derives_from_rapport_error():
    classes = _classes()

    def derives(name: str) -> bool:
        return name == "RapportError" or any(derives(base) for base in classes[name][1] if base in classes)

    errors = [name for name, (_, bases) in classes.items() if any(_builtin_exception(base) for base in bases)]
    assert len(errors) >= 15
    assert [classes[name][0] for name in errors if not derives(name)] == []
