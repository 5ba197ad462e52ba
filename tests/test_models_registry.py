"""The model registry (training.models) is the one place a model's step, registered name, training
function, key metrics, windows and bundle entry are declared: the pipeline, the promotion gate, the
CLI, the bundle and the service read it, and no other module spells a registered name."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from features.errors import ArgumentError, RapportError
from training import models
from training.models import MODELS, REGISTERED_NAMES, STEPS, ModelSpec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_the_registry_keeps_the_names_and_the_bundle_layout_already_in_use():
    # Registries and bundles written before hold exactly these: a change would orphan them.
    assert [(m.key, m.registered_name, m.bundle_key, m.bundle_file) for m in MODELS] == [
        ("clv", "rapport-clv", "clv", "clv.json"),
        ("churn", "rapport-churn", "churn", "churn.json"),
        ("recommend", "rapport-recommender", "recommender", "recommender"),
    ]
    from training import bundle

    assert bundle.MODEL_KEYS == ("clv", "churn", "recommender")
    assert (bundle.CLV_STATE, bundle.CHURN_STATE, bundle.RECOMMENDER_DIR) == ("clv.json", "churn.json", "recommender")


def test_lookups_name_the_choices_when_a_model_is_unknown():
    assert models.by_key("churn") is models.CHURN
    assert models.by_name("rapport-recommender") is models.RECOMMEND
    with pytest.raises(ArgumentError, match="'forecast'; available: clv, churn, recommend"):
        models.by_key("forecast")
    with pytest.raises(RapportError, match="expected one of rapport-clv, rapport-churn, rapport-recommender"):
        models.by_name("rapport-forecast")
    with pytest.raises(ValueError, match="module:function"):
        ModelSpec("x", "rapport-x", "training.x.pipeline.train_x", (), (), "x", "x.json")


def test_every_train_function_resolves_to_a_step_of_the_pipeline_signature():
    for spec in MODELS:
        train = spec.train_function()
        parameters = inspect.signature(train).parameters
        assert list(parameters)[:2] == ["con", "settings"], spec.key
        assert {"cutoff", "progress"} <= {n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY}, spec.key
        # The step registers under the spec's name.
        assert sys.modules[train.__module__].MODEL_NAME == spec.registered_name


def test_importing_the_registry_imports_no_model_library():
    code = ("import sys, training.models; heavy = ('mlflow', 'lightgbm', 'bentoml', 'lifetimes', 'implicit', "
            "'training.clv.pipeline'); print([m for m in heavy if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


class _Registry:
    """The few MlflowClient calls :func:`training.promotion.decide` makes, on two versions of one model:
    1 the champion, 2 the candidate."""

    def __init__(self, name: str, runs: dict[str, SimpleNamespace]) -> None:
        self.name = name
        self.runs = runs

    def get_model_version(self, name: str, version: str) -> SimpleNamespace:
        assert name == self.name
        return SimpleNamespace(version=version, run_id=f"run-{version}", tags={"gate_eligible": "true"})

    def get_run(self, run_id: str) -> SimpleNamespace:
        return SimpleNamespace(data=self.runs[run_id])

    def get_registered_model(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(aliases={"champion": "1"})

    def get_model_version_by_alias(self, name: str, alias: str) -> SimpleNamespace:
        return self.get_model_version(name, "1")


@pytest.mark.parametrize("spec", MODELS, ids=STEPS)
def test_promotion_compares_a_model_on_its_specs_metrics_and_windows(spec):
    from training import promotion

    champion = {k.metric: 0.5 for k in spec.key_metrics}
    # 10 % worse on every key metric, far better on a metric the spec does not name.
    worse = {k.metric: 0.45 if k.higher_is_better else 0.55 for k in spec.key_metrics}
    runs = {
        "run-1": SimpleNamespace(metrics={**champion, "unrelated": 0.0}, tags={},
                                 params={p: "2024-01-01" for p in spec.window_params}),
        "run-2": SimpleNamespace(metrics={**worse, "unrelated": 1.0}, tags={},
                                 params={p: "2024-06-01" for p in spec.window_params}),
    }
    decision = promotion.decide(_Registry(spec.registered_name, runs), spec.registered_name, "2", tolerance=0.05)
    assert decision.alias == promotion.CHALLENGER
    assert set(decision.metrics) == {k.metric for k in spec.key_metrics}
    for key in spec.key_metrics:
        assert any(r.startswith(f"{key.label} ") and "is worse than champion v1" in r for r in decision.reasons)
    note = next(r for r in decision.reasons if r.startswith("note: the champion was evaluated on another period"))
    assert all(f"{p} 2024-01-01 vs 2024-06-01" in note for p in spec.window_params)
    # Within the tolerance the same candidate is promoted.
    assert promotion.decide(_Registry(spec.registered_name, runs), spec.registered_name, "2",
                            tolerance=0.2).alias == promotion.CHAMPION


def test_the_training_summary_labels_each_models_key_metrics_from_its_spec():
    from training.pipeline import PipelineResult, StepOutcome
    from training.promotion import Promotion

    steps = []
    for spec in MODELS:
        metrics = {k.metric: 0.25 for k in spec.key_metrics}
        promoted = Promotion(spec.registered_name, "1", "champion", None, ("no champion yet",), metrics, None)
        steps.append(StepOutcome(step=spec.key, model_name=spec.registered_name, seconds=1.0,
                                 result=SimpleNamespace(gate=SimpleNamespace(eligible=True)), version="1",
                                 promotion=promoted))
    summary = PipelineResult(run_id="r", cutoff=None, steps=steps).summary()
    assert list(summary["model"]) == list(REGISTERED_NAMES)
    assert list(summary["key metrics"]) == [", ".join(f"{k.label} 0.2500" for k in spec.key_metrics)
                                            for spec in MODELS]


def test_the_cli_offers_the_registrys_steps_and_names(monkeypatch):
    from rapport.cli import app

    monkeypatch.setenv("COLUMNS", "250")
    runner = CliRunner()
    helped = runner.invoke(app, ["train", "--help"])
    assert helped.exit_code == 0 and f"Run only these steps ({', '.join(STEPS)})" in helped.output
    refused = runner.invoke(app, ["train", "--only", "clv", "--only", "forecast"])
    assert refused.exit_code != 0 and f"unknown step forecast; available: {', '.join(STEPS)}" in refused.output
    promote = runner.invoke(app, ["models", "promote", "--help"])
    assert promote.exit_code == 0 and "rapport-clv, rapport-churn or rapport-recommender" in promote.output
    unknown = runner.invoke(app, ["models", "promote", "rapport-forecast", "1", "--reason", "r"])
    assert unknown.exit_code != 0 and ", ".join(REGISTERED_NAMES) in unknown.output


#: Strings that read like a registered name and are something else: the recommender artefact's format
#: identifier, written into every saved artefact.
_NOT_A_REGISTERED_NAME = {("training/recommend/artefact.py", "rapport-recommender")}


def _code_strings(source: str) -> list[tuple[int, str]]:
    """The string constants of a module's code (f-string parts included), with their line: not its
    documentation (docstrings and bare string statements)."""
    tree = ast.parse(source)
    strings = [node for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    docs = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [(node.lineno, node.value) for node in strings if id(node) not in docs]


def test_no_module_but_the_registry_spells_a_registered_name():
    found = []
    for package in ("training", "serving", "rapport"):
        for path in sorted((ROOT / package).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            if where == "training/models.py":
                continue
            found += [f"{where}:{line}: {text!r}" for line, text in _code_strings(path.read_text(encoding="utf-8"))
                      if any(name in text for name in REGISTERED_NAMES) and (where, text) not in _NOT_A_REGISTERED_NAME]
    assert found == []


def test_the_scan_sees_a_registered_name_in_code_and_not_in_documentation():
    source = '"""Registers rapport-clv."""\nNAME = "rapport-clv"\nHELP = f"{x} rapport-churn v1"\n'
    assert _code_strings(source) == [(2, "rapport-clv"), (3, " rapport-churn v1")]
