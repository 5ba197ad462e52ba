"""The CLV model as an MLflow pyfunc: what the registry stores and the service loads.

The logged model holds no pickle. Its fitted state is the JSON of ``ClvModel.to_dict()`` (the
``clv_model`` artefact: parameters, cutoff, time unit, currency; no customer data), and the pyfunc
itself is logged as code (MLflow's "models from code"): a three-line script that builds
:class:`ClvPyfunc`. Loading it needs the ``rapport`` package importable (the serving image installs
it) and the pinned third-party requirements recorded with the model.

Input: one row per customer with the columns of ``features.customer.customer_features``, either
as that function returns them (indexed by ``customer_id``) or with ``customer_id`` as a column (a
request body or a CSV has no index): the column then becomes the index. The signature lists
``customer_id`` as an optional column, so both forms pass MLflow's input check.

Output: the model's outputs indexed like the input (by ``customer_id``), as ``ClvModel.predict``.
``ClvModel.predict`` returns the expected cash flow of each future month as one array per customer
(``clv_cashflows``); a pyfunc's output has to travel as JSON, CSV or Parquet, so the array becomes
one float column per month, ``clv_cashflow_month_1`` … ``clv_cashflow_month_<H>`` (month 1 is the
first month after the cutoff; a shorter array is padded with NaN), and categorical columns
(``value_segment``) become plain strings. Every other column is passed through unchanged. Write the
index along (``reset_index()``, or JSON with ``orient="split"``) to keep the customer ids.
"""

from __future__ import annotations

import importlib
import json
import logging
import tempfile
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema

from features.schema import Col
from training import tracking

log = logging.getLogger(__name__)

#: Name of the JSON artefact that holds ``ClvModel.to_dict()``.
ARTIFACT_KEY = "clv_model"
#: The model class the pyfunc rebuilds, as ``module:qualified name`` (kept in the model's config).
DEFAULT_MODEL_CLASS = "training.clv.model:ClvModel"
#: Column of ``ClvModel.predict`` with one array of monthly cash flows per customer.
CASHFLOWS_COLUMN = "clv_cashflows"
#: Prefix of the per-month columns that replace it in the pyfunc's output.
CASHFLOW_MONTH_PREFIX = "clv_cashflow_month_"
#: Third-party distributions the scoring path imports (the model, its adapter and the feature
#: contract it validates with); pinned to this environment's versions.
RUNTIME_DISTRIBUTIONS = (
    "mlflow", "numpy", "pandas", "scipy", "scikit-learn", "lifetimes", "threadpoolctl", "pydantic",
    "pydantic-settings", "ibis-framework", "duckdb", "pyarrow",
)

# The "model as code" entry point written next to the model. It only builds the wrapper: what the
# model knows comes from the JSON artefact, which class reads it from the model config.
_MODEL_CODE = '''"""Rapport CLV pyfunc: MLflow loads this file to build the model (see training/clv/pyfunc.py)."""
import mlflow

from training.clv.pyfunc import ClvPyfunc

mlflow.models.set_model(ClvPyfunc())
'''


def cashflow_columns(months: int) -> list[str]:
    """Names of the per-month cash-flow columns of the pyfunc output, month 1 first."""
    return [f"{CASHFLOW_MONTH_PREFIX}{month}" for month in range(1, months + 1)]


def flatten_cashflows(predictions: pd.DataFrame) -> pd.DataFrame:
    """``ClvModel.predict`` output in the pyfunc layout: ``clv_cashflows`` spread into month columns,
    categorical columns as strings, the index kept.

    Batch scoring writes the same layout, so a file of scores and the service agree column by column.
    """
    frame = predictions
    categorical = [name for name in frame.columns if isinstance(frame[name].dtype, pd.CategoricalDtype)]
    if categorical:
        frame = frame.astype({name: object for name in categorical})
    if CASHFLOWS_COLUMN not in frame.columns:
        return frame
    arrays = [np.asarray([] if _is_empty(flows) else flows, dtype=float).ravel() for flows in frame[CASHFLOWS_COLUMN]]
    months = max((len(flows) for flows in arrays), default=0)
    matrix = np.full((len(arrays), months), np.nan)
    for row, flows in enumerate(arrays):
        matrix[row, : len(flows)] = flows
    months_frame = pd.DataFrame(matrix, columns=cashflow_columns(months), index=frame.index)
    at = frame.columns.get_loc(CASHFLOWS_COLUMN)
    return pd.concat([frame.iloc[:, :at], months_frame, frame.iloc[:, at + 1 :]], axis=1)


def _is_empty(flows: Any) -> bool:
    return flows is None or (np.ndim(flows) == 0 and pd.isna(flows))


def _import_class(path: str) -> type:
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise ValueError(f"model class must be given as 'module:Class', got {path!r}")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _class_path(model: Any) -> str:
    cls = type(model)
    return f"{cls.__module__}:{cls.__qualname__}"


class ClvPyfunc(mlflow.pyfunc.PythonModel):
    """Rebuilds the fitted CLV model from its JSON artefact and scores customer features with it."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = context.model_config or {}
        model_class = _import_class(config.get("model_class", DEFAULT_MODEL_CLASS))
        state = json.loads(Path(context.artifacts[ARTIFACT_KEY]).read_text(encoding="utf-8"))
        self.model = model_class.from_dict(state)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Per-customer CLV outputs for a frame of customer features (``features.customer``)."""
        if not hasattr(self, "model"):
            raise RuntimeError("ClvPyfunc.predict before load_context: load it with mlflow.pyfunc.load_model")
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return flatten_cashflows(self.model.predict(_indexed(frame)))


def _indexed(features: pd.DataFrame) -> pd.DataFrame:
    """Features indexed by customer id: a ``customer_id`` column (a request) becomes the index."""
    return features.set_index(Col.CUSTOMER_ID) if Col.CUSTOMER_ID in features.columns else features


def _signature(model: Any, example: pd.DataFrame) -> tuple[ModelSignature, pd.DataFrame]:
    """The signature (``customer_id`` an optional input column) and the example as a request carries it."""
    indexed = _indexed(example)
    request = indexed.reset_index() if indexed.index.name == Col.CUSTOMER_ID else indexed
    inferred = infer_signature(request, flatten_cashflows(model.predict(indexed)))
    inputs = Schema([
        ColSpec(spec.type, spec.name, required=spec.required and spec.name != Col.CUSTOMER_ID)
        for spec in inferred.inputs.inputs
    ])
    return ModelSignature(inputs=inputs, outputs=inferred.outputs), request


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    raise TypeError(f"ClvModel.to_dict() holds a {type(value).__name__}, which JSON cannot store: {value!r}")


def pip_requirements() -> list[str]:
    """The runtime requirements recorded with the model, pinned to the installed versions."""
    pinned = []
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            log.warning("%s is not installed: left out of the model's requirements", name)
    return pinned


def _rapport_version() -> str:
    try:
        return metadata.version("rapport")
    except metadata.PackageNotFoundError:
        return "unknown"


def log_clv_model(
    model: Any,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    input_example: pd.DataFrame | None = None,
    tags: Mapping[str, Any] | None = None,
) -> ModelInfo:
    """Log a fitted ``ClvModel`` as a pyfunc in the active run and, optionally, register it.

    ``input_example`` (a few rows of customer features, indexed by ``customer_id`` or with it as a
    column) is stored with the model, with ``customer_id`` as a column, and gives it its signature:
    every column of the example becomes an input a request must carry. With
    ``registered_model_name`` the model becomes a new version of that registered model, tagged with
    the code version and ``tags``, without an alias: promotion is the caller's decision.
    ``ModelInfo.registered_model_version`` holds the new version.
    """
    run_id = tracking.require_active_run("log_clv_model")
    version = tracking.code_version()
    with tempfile.TemporaryDirectory(prefix="rapport-clv-") as tmp, warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values: customer ids and counts of
        # the feature contract never miss, so the hint is noise in every training run.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        signature = None
        if input_example is not None:
            signature, input_example = _signature(model, input_example)
        state_path = Path(tmp, f"{ARTIFACT_KEY}.json")
        state_path.write_text(
            json.dumps(model.to_dict(), default=_json_default, sort_keys=True, indent=1), encoding="utf-8"
        )
        code_path = Path(tmp, "clv_pyfunc_model.py")
        code_path.write_text(_MODEL_CODE, encoding="utf-8")
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(code_path),
            artifacts={ARTIFACT_KEY: str(state_path)},
            model_config={"model_class": _class_path(model)},
            pip_requirements=pip_requirements(),
            signature=signature,
            input_example=input_example,
            metadata={"rapport_version": _rapport_version(), "code_version": version or "unknown"},
        )
    if registered_model_name is not None:
        registered = tracking.register_model(
            tracking.current_client(),
            run_id=run_id,
            artifact_name=name,
            model_name=registered_model_name,
            tags={tracking.CODE_VERSION_TAG: version or "unknown", **(tags or {})},
            model_id=info.model_id,
        )
        info.registered_model_version = registered.version
    return info
