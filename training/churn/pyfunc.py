"""The churn model as an MLflow pyfunc: what the registry stores and the service loads.

As for CLV (:mod:`training.clv.pyfunc`), the logged model holds no pickle. Its fitted state is the
JSON of ``ChurnModel.to_dict()`` (the ``churn_model`` artefact: LightGBM's model text, the
calibration map, features, thresholds, quantiles; no customer data), and the pyfunc is logged as
code (MLflow's "models from code"): a short script that builds :class:`ChurnPyfunc`. Loading it
needs the ``rapport`` package importable and the pinned requirements recorded with the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema

from features.schema import Col
from training.churn.reasons import CONTEXT_COLUMNS
from training.clv.pyfunc import flatten_cashflows, pip_requirements
from training.json_pyfunc import JsonModelPyfunc, indexed, log_json_pyfunc, pinned

log = logging.getLogger(__name__)

#: Name of the JSON artefact that holds ``ChurnModel.to_dict()``.
ARTIFACT_KEY = "churn_model"
#: The model class the pyfunc rebuilds, as ``module:qualified name`` (kept in the model's config).
DEFAULT_MODEL_CLASS = "training.churn.model:ChurnModel"
#: Third-party distributions the churn scoring path adds to the CLV pyfunc's (pinned the same way).
CHURN_RUNTIME_DISTRIBUTIONS = ("lightgbm",)

# The "model as code" entry point written next to the model. It only builds the wrapper: what the
# model knows comes from the JSON artefact, which class reads it from the model config.
_MODEL_CODE = '''"""Rapport churn pyfunc: MLflow loads this file to build the model (see training/churn/pyfunc.py)."""
import mlflow

from training.churn.pyfunc import ChurnPyfunc

mlflow.models.set_model(ChurnPyfunc())
'''


def pyfunc_output(predictions: pd.DataFrame) -> pd.DataFrame:
    """``ChurnModel.predict`` output as the pyfunc returns it: categorical columns (``risk_band``) as
    plain strings (a pyfunc's output travels as JSON, CSV or Parquet), everything else and the index
    unchanged. Batch scoring writes the same layout.

    Parameters
    ----------
    predictions
        The frame of ``ChurnModel.predict``.

    Returns
    -------
    pandas.DataFrame
        The same columns and index, no categorical dtype.
    """
    return flatten_cashflows(predictions)


class ChurnPyfunc(JsonModelPyfunc):
    """Rebuilds the fitted churn model from its JSON artefact and scores churn features with it.

    Input: one row per customer with the model's feature columns (``ChurnModel.feature_names_``),
    either indexed by ``customer_id`` or with ``customer_id`` as a column (a request body or a CSV
    has no index): the column then becomes the index. The signature lists the features as required
    inputs and ``customer_id`` and the columns the reasons read for context
    (``avg_days_between_orders`` next to ``days_since_last_order``, ...;
    :data:`training.churn.reasons.CONTEXT_COLUMNS`) as optional ones. Other columns of a request (a
    training frame's ``cutoff`` or label) are ignored.

    Output: ``ChurnModel.predict`` indexed like the input: ``churn_probability``, ``risk_band`` (a
    plain string), ``percentile``, ``reason_1`` .. ``reason_3`` (None where fewer features push the
    risk up).
    """

    artifact_key = ARTIFACT_KEY
    default_class = DEFAULT_MODEL_CLASS

    @staticmethod
    def output(predictions: pd.DataFrame) -> pd.DataFrame:
        """The pyfunc's answer for the model's predictions (:func:`pyfunc_output`).

        Parameters
        ----------
        predictions
            The frame of ``ChurnModel.predict``.

        Returns
        -------
        pandas.DataFrame
            ``risk_band`` as plain strings, the rest unchanged.
        """
        return pyfunc_output(predictions)


def _request_columns(model: Any, frame: pd.DataFrame) -> tuple[pd.DataFrame, set[str]]:
    """The example as a request carries it (``customer_id`` a column, features, context columns;
    nothing else), and the names of its optional columns."""
    rows = indexed(frame)
    features = list(model.feature_names_)
    context = [c for c in CONTEXT_COLUMNS if c in rows.columns and c not in features]
    request = rows.loc[:, [*features, *context]]
    optional = set(context)
    if rows.index.name == Col.CUSTOMER_ID:
        request = request.reset_index()
        optional.add(Col.CUSTOMER_ID)
    return request, optional


def _signature(model: Any, example: pd.DataFrame) -> tuple[ModelSignature, pd.DataFrame]:
    """The signature (features required; ``customer_id`` and context columns optional) and the
    example as a request carries it."""
    request, optional = _request_columns(model, example)
    inferred = infer_signature(request, pyfunc_output(model.predict(indexed(request))))
    inputs = Schema([
        ColSpec(spec.type, spec.name, required=spec.required and spec.name not in optional)
        for spec in inferred.inputs.inputs
    ])
    return ModelSignature(inputs=inputs, outputs=inferred.outputs), request


def churn_pip_requirements() -> list[str]:
    """The CLV pyfunc's pinned runtime requirements plus LightGBM's.

    Returns
    -------
    list[str]
        ``name==version`` pins of the installed distributions.
    """
    return [*pip_requirements(), *pinned(CHURN_RUNTIME_DISTRIBUTIONS)]


def log_churn_model(
    model: Any,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    input_example: pd.DataFrame | None = None,
    tags: Mapping[str, Any] | None = None,
) -> ModelInfo:
    """Log a fitted ``ChurnModel`` as a pyfunc in the active run and, optionally, register it.

    ``input_example`` (a few rows of churn features, indexed by ``customer_id`` or with it as a
    column; other columns such as ``cutoff`` or the label are dropped) is stored with the model and
    gives it its signature. With ``registered_model_name`` the model becomes a new version of that
    registered model, tagged with the code version and ``tags``, without an alias: promotion is the
    caller's decision.

    Parameters
    ----------
    model
        A fitted ``ChurnModel``.
    input_example
        A few rows of churn features (see above); ``None``: no example and no signature.
    name, registered_model_name, tags
        As in :func:`training.clv.pyfunc.log_clv_model`.

    Returns
    -------
    mlflow.models.model.ModelInfo
        As :func:`training.clv.pyfunc.log_clv_model`, which also says what it raises.
    """
    return log_json_pyfunc(
        model, what="churn", name=name, artifact_key=ARTIFACT_KEY, model_code=_MODEL_CODE,
        requirements=churn_pip_requirements(), signature=_signature, input_example=input_example,
        registered_model_name=registered_model_name, tags=tags,
    )
