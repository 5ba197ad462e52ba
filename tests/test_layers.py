"""The architecture's import rules: features is the base layer; training never imports serving;
the synthetic generator is imported by the CLI and the tests only; the lifetimes and MLflow
dependencies stay behind their one module each."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def _offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module, names in _imports(package).items()
        for name in names
        if name.split(".")[0] in forbidden
    )


def test_features_is_the_base_layer():
    assert _offenders("features", ("training", "serving", "rapport", "synthetic", "mlflow", "lightgbm",
                                   "implicit")) == []


def test_training_never_imports_serving_or_the_cli():
    assert _offenders("training", ("serving", "rapport")) == []


def test_the_synthetic_generator_stays_out_of_the_product():
    """The generator writes test and demo data: no layer that ships in the service imports it, and it
    reads the contract (features) only."""
    assert _offenders("training", ("synthetic",)) == []
    assert _offenders("serving", ("synthetic",)) == []
    assert _offenders("synthetic", ("training", "serving", "rapport")) == []


def test_the_bento_does_not_ship_the_generator():
    import yaml

    build = yaml.safe_load((ROOT / "bentofile.yaml").read_text(encoding="utf-8"))
    shipped = {pattern.split("/")[0] for pattern in build["include"]}
    assert "synthetic" not in shipped and {"features", "training", "serving"} <= shipped


def test_lifetimes_stays_behind_its_adapter():
    users = sorted(m for pkg in ("features", "training", "serving") for m, names in _imports(pkg).items()
                   if any(name.split(".")[0] == "lifetimes" for name in names))
    # features/loaders.py only locates the CDNOW files shipped inside the package.
    assert set(users) <= {"training/clv/adapter.py", "features/loaders.py"}, users


#: Training modules that fit models or build data sets: the service never imports them.
_FITTING_MODULES = ("training.pipeline", "training.promotion", "training.churn.dataset")
_FITTING_SUFFIXES = (".pipeline", ".evaluation")


def _fits(name: str) -> bool:
    return name.startswith("training.") and (
        name in _FITTING_MODULES or any(name.startswith(f"{m}.") for m in _FITTING_MODULES)
        or name.endswith(_FITTING_SUFFIXES))


def test_serving_never_imports_code_that_fits_models():
    direct = sorted(f"{module} imports {name}" for module, names in _imports("serving").items()
                    for name in names if _fits(name) or name.split(".")[0] == "rapport")
    assert direct == []
    # What a worker pulls in, transitively: the service module at its start, the runtime right after.
    import subprocess
    import sys

    code = "import sys, serving.service, serving.runtime; print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "BENTOML_DO_NOT_TRACK": "true"})
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = done.stdout.split()
    assert [m for m in loaded if _fits(m)] == []
    assert "training.scoring" in loaded and "training.recommend.model" in loaded
