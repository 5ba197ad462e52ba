"""The CLV model as an MLflow pyfunc: what the registry stores and the service loads.

The logged model holds no pickle. Its fitted state is the JSON of ``ClvModel.to_dict()`` (the
``clv_model`` artefact: parameters, cutoff, time unit, currency; no customer data), and the pyfunc
itself is logged as code (MLflow's "models from code"): a three-line script that builds
:class:`ClvPyfunc`. Loading it needs the ``rapport`` package importable (the serving image installs
it) and the pinned third-party requirements recorded with the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema

from features.schema import Col
from training.json_pyfunc import JsonModelPyfunc, indexed, log_json_pyfunc, pinned

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
    """Names of the per-month cash-flow columns of the pyfunc output, month 1 first.

    Parameters
    ----------
    months
        Number of months H (>= 0).

    Returns
    -------
    list[str]
        ``clv_cashflow_month_1`` … ``clv_cashflow_month_<H>``.
    """
    return [f"{CASHFLOW_MONTH_PREFIX}{month}" for month in range(1, months + 1)]


def flatten_cashflows(predictions: pd.DataFrame) -> pd.DataFrame:
    """``ClvModel.predict`` output in the pyfunc layout: ``clv_cashflows`` spread into month columns,
    categorical columns as strings, the index kept.

    ``ClvModel.predict`` returns the expected cash flow of each future month as one array per
    customer (``clv_cashflows``); a pyfunc's output has to travel as JSON, CSV or Parquet, so the
    array becomes one float column per month (month 1 is the first month after the cutoff; a
    shorter array is padded with NaN). Batch scoring writes the same layout, so a file of scores
    and the service agree column by column.

    Parameters
    ----------
    predictions
        The frame of ``ClvModel.predict`` (or of ``ChurnModel.predict``: no cash-flow column).

    Returns
    -------
    pandas.DataFrame
        The same index; ``clv_cashflows`` replaced in place by :func:`cashflow_columns` (float64),
        categorical columns as object, every other column unchanged.
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


class ClvPyfunc(JsonModelPyfunc):
    """Rebuilds the fitted CLV model from its JSON artefact and scores customer features with it.

    Input: one row per customer with the columns of ``features.customer.customer_features``, either
    as that function returns them (indexed by ``customer_id``) or with ``customer_id`` as a column
    (a request body or a CSV has no index): the column then becomes the index. The signature lists
    ``customer_id`` as an optional column, so both forms pass MLflow's input check.

    Output: the model's outputs indexed like the input (by ``customer_id``), as ``ClvModel.predict``
    in the layout of :func:`flatten_cashflows`. Write the index along (``reset_index()``, or JSON
    with ``orient="split"``) to keep the customer ids.
    """

    artifact_key = ARTIFACT_KEY
    default_class = DEFAULT_MODEL_CLASS

    @staticmethod
    def output(predictions: pd.DataFrame) -> pd.DataFrame:
        """The pyfunc's answer for the model's predictions (:func:`flatten_cashflows`).

        Parameters
        ----------
        predictions
            The frame of ``ClvModel.predict``.

        Returns
        -------
        pandas.DataFrame
            One column per month of cash flow, categorical columns as strings.
        """
        return flatten_cashflows(predictions)


def _signature(model: Any, example: pd.DataFrame) -> tuple[ModelSignature, pd.DataFrame]:
    """The signature (``customer_id`` an optional input column) and the example as a request carries it."""
    rows = indexed(example)
    request = rows.reset_index() if rows.index.name == Col.CUSTOMER_ID else rows
    inferred = infer_signature(request, flatten_cashflows(model.predict(rows)))
    inputs = Schema([
        ColSpec(spec.type, spec.name, required=spec.required and spec.name != Col.CUSTOMER_ID)
        for spec in inferred.inputs.inputs
    ])
    return ModelSignature(inputs=inputs, outputs=inferred.outputs), request


def pip_requirements() -> list[str]:
    """The runtime requirements recorded with the model, pinned to the installed versions.

    Returns
    -------
    list[str]
        ``name==version`` of :data:`RUNTIME_DISTRIBUTIONS` (a missing one is logged and left out).
    """
    return pinned(RUNTIME_DISTRIBUTIONS)


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

    Parameters
    ----------
    model
        A fitted ``ClvModel``.
    name
        The logged model's name in the run (MLflow 3's ``name=``).
    registered_model_name
        Registry name to register a new version under; ``None``: log only.
    input_example
        A few rows of customer features; ``None``: no example and no signature.
    tags
        Tags of the registered version, besides the code version.

    Returns
    -------
    mlflow.models.model.ModelInfo
        The logged model; ``registered_model_version`` holds the new version when registered.

    Raises
    ------
    RuntimeError
        No active run (open one with :func:`training.tracking.start_run`).
    """
    return log_json_pyfunc(
        model, what="clv", name=name, artifact_key=ARTIFACT_KEY, model_code=_MODEL_CODE,
        requirements=pip_requirements(), signature=_signature, input_example=input_example,
        registered_model_name=registered_model_name, tags=tags,
    )
