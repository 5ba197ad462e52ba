"""The house style of module docstrings: short (what the module is and why, in ten lines at most),
no measured timings (they go stale in code; the README's Performance section holds them), and
every public function of the documented modules says what it takes and returns."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("features", "serving", "training", "synthetic")
MAX_MODULE_DOCSTRING_LINES = 10

# Modules whose docstrings are not yet short or still quote timings. This list only shrinks: a
# module brought into line must leave it (test_allow_list_is_current says so), and a module that is
# not on it must keep to the rules.
NOT_YET_SHORT: frozenset[str] = frozenset()

# Modules whose public functions and methods all document their parameters and what they return
# (numpy style). This list only grows.
DOCUMENTED: tuple[str, ...] = (
    "features/__init__.py",
    "features/churn.py",
    "features/customer.py",
    "features/data_report.py",
    "features/discovery.py",
    "features/errors.py",
    "features/history.py",
    "features/identity.py",
    "features/ingest.py",
    "features/interactions.py",
    "features/kpi_queries.py",
    "features/loaders.py",
    "features/masking.py",
    "features/moments.py",
    "features/output.py",
    "features/purchases.py",
    "features/rawformat.py",
    "features/report.py",
    "features/schema.py",
    "features/store.py",
    "features/windows.py",
    "serving/gate.py",
    "serving/openapi.py",
    "serving/service.py",
    "synthetic/generate.py",
    "training/__init__.py",
    "training/artefact.py",
    "training/bundle.py",
    "training/churn/__init__.py",
    "training/churn/calibration.py",
    "training/churn/contributions.py",
    "training/churn/dataset.py",
    "training/churn/errors.py",
    "training/churn/evaluation.py",
    "training/churn/pipeline.py",
    "training/churn/plots.py",
    "training/churn/pyfunc.py",
    "training/churn/reasons.py",
    "training/churn/search.py",
    "training/clv/__init__.py",
    "training/clv/adapter.py",
    "training/clv/evaluation.py",
    "training/clv/plots.py",
    "training/clv/pyfunc.py",
    "training/cutoff.py",
    "training/frames.py",
    "training/json_pyfunc.py",
    "training/models.py",
    "training/pipeline.py",
    "training/plotting.py",
    "training/progress.py",
    "training/promotion.py",
    "training/recommend/artefact.py",
    "training/recommend/block.py",
    "training/recommend/candidate_models.py",
    "training/recommend/candidates.py",
    "training/recommend/data.py",
    "training/recommend/metrics.py",
    "training/recommend/options.py",
    "training/recommend/pipeline.py",
    "training/recommend/precomputed.py",
    "training/recommend/pyfunc.py",
    "training/recommend/ranker.py",
    "training/recommend/reasons.py",
    "training/recommend/search.py",
    "training/recommend/similar.py",
    "training/recommend/split.py",
    "training/recommend/tifu.py",
    "training/recommend/topk.py",
    "training/scoring.py",
    "training/tracking.py",
)

# A duration as prose writes one: a number, then "ms" or a spaced " s" (not "1990s", not "m/s" or
# "s^-1"). It is a measured timing when "measured", "benchmark" or "cores" stands within
# TIMING_CONTEXT characters: a unit in a formula has no such word beside it.
DURATION = re.compile(r"(?<![\w.,])\d+(?:[.,]\d+)*(?: ?ms| s)(?![\w²^/])")
TIMING_WORDS = re.compile(r"measur|benchmark|\bcores?\b", re.IGNORECASE)
TIMING_CONTEXT = 200


def _modules() -> list[str]:
    return sorted(str(path.relative_to(ROOT)) for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def _docstring(module: str) -> str:
    return ast.get_docstring(ast.parse((ROOT / module).read_text(encoding="utf-8"))) or ""


def timings(text: str) -> list[str]:
    """The measured timings quoted in ``text``: each duration with a timing word near it."""
    found = []
    for match in DURATION.finditer(text):
        around = text[max(0, match.start() - TIMING_CONTEXT): match.end() + TIMING_CONTEXT]
        if TIMING_WORDS.search(around):
            found.append(match.group(0))
    return found


def _problems(module: str) -> list[str]:
    text = _docstring(module)
    problems = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_DOCSTRING_LINES:
        problems.append(f"{lines}-line module docstring (at most {MAX_MODULE_DOCSTRING_LINES}: move the detail to "
                        f"the function or class it explains)")
    quoted = timings(text)
    if quoted:
        problems.append(f"measured timings {quoted} in the module docstring (they belong in the README's "
                        f"Performance section)")
    return problems


@pytest.mark.parametrize("text", [
    "Scoring takes 12 s on two cores.",
    "Ranked in one block (see benchmarks/serve.py: 1.3 ms).",
    "A million customers score in about 3 s (benchmarks/clv.py).",
    "measured on Online Retail II: 0.27 s at 300,000 customers",
    "about 0.6 ms\nper customer on two cores",
])
def test_a_quoted_timing_is_found(text: str) -> None:
    assert timings(text)


@pytest.mark.parametrize("text", [
    "purchases per day: lambda ~ Gamma(r, rate=alpha), a rate in 1/s or s^-1 as measured by the model",
    "the 1990s, as measured by the benchmark of Fader & Hardie",
    "age in days = seconds / 86,400 s per day",
    "a horizon of 90 days, measured from the cutoff",
    "Speed is measured by scripts in benchmarks/, never by timed tests.",
    "0.5^(age / half_life), 12 items, 3 s-curves",
])
def test_a_unit_or_count_is_not_a_timing(text: str) -> None:
    assert timings(text) == []


def test_every_module_docstring_is_short_and_quotes_no_timing() -> None:
    failing = {module: problems for module in _modules() if module not in NOT_YET_SHORT
               for problems in [_problems(module)] if problems}
    assert failing == {}, "\n".join(f"{m}: {'; '.join(p)}" for m, p in failing.items())


def test_allow_list_is_current() -> None:
    modules = set(_modules())
    assert sorted(NOT_YET_SHORT - modules) == [], "allow-listed modules that no longer exist: remove them"
    brought_into_line = sorted(m for m in NOT_YET_SHORT if not _problems(m))
    assert brought_into_line == [], f"remove from NOT_YET_SHORT, they keep to the rules now: {brought_into_line}"


def _undocumented(module: str) -> list[str]:
    """Public functions and methods without a Parameters section (when they take arguments) or
    without a Returns / Yields section."""
    missing = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and not child.name.startswith("_"):
                doc = ast.get_docstring(child) or ""
                a = child.args
                takes = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs) if x.arg not in ("self", "cls")]
                if takes or a.vararg or a.kwarg:
                    if "Parameters\n----------" not in doc:
                        missing.append(f"{prefix}{child.name}: no Parameters")
                if "Returns\n-------" not in doc and "Yields\n------" not in doc:
                    missing.append(f"{prefix}{child.name}: no Returns")

    visit(ast.parse((ROOT / module).read_text(encoding="utf-8")), "")
    return missing


@pytest.mark.parametrize("module", DOCUMENTED)
def test_public_functions_document_parameters_and_returns(module: str) -> None:
    assert _undocumented(module) == []
