"""The recommender as an MLflow pyfunc: what the registry stores as ``rapport-recommender``.

The logged model holds no pickle: its state is the artefact directory of
:mod:`training.recommend.artefact` (header JSON, numeric arrays, LightGBM's model text), and the
pyfunc is logged as code (a short script that builds :class:`RecommenderPyfunc`). Loading it needs
the ``rapport`` package importable and the pinned requirements recorded with the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc.model import PythonModel, PythonModelContext

from features.schema import Col
from training.clv.pyfunc import pip_requirements
from training.json_pyfunc import log_json_pyfunc, pinned
from training.recommend import artefact

ARTIFACT_KEY = "recommender"
DEFAULT_MODEL_CLASS = "training.recommend.model:RecommenderModel"
RECOMMENDER_RUNTIME_DISTRIBUTIONS = ("lightgbm", "implicit")
DEFAULT_N = 20

_MODEL_CODE = '''"""Rapport recommender pyfunc: MLflow loads this file to build the model (see training/recommend/pyfunc.py)."""
import mlflow

from training.recommend.pyfunc import RecommenderPyfunc

mlflow.models.set_model(RecommenderPyfunc())
'''


class RecommenderPyfunc(PythonModel):
    """Rebuilds the recommender from its artefact directory and recommends for a frame of customers."""

    def load_context(self, context: PythonModelContext) -> None:
        """Load the recommender from the logged artefact directory (MLflow calls this once).

        Parameters
        ----------
        context
            MLflow's context; ``context.artifacts["recommender"]`` is the directory.

        Returns
        -------
        None

        Raises
        ------
        RecommenderArtefactError
            The directory cannot be read (:func:`training.recommend.artefact.load`).
        """
        self.model = artefact.load(context.artifacts[ARTIFACT_KEY])

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Top-n items for each customer of ``model_input``.

        Parameters
        ----------
        context
            MLflow's context (unused: the model was loaded by :meth:`load_context`).
        model_input
            A frame with a ``customer_id`` column, one row per customer.
        params
            Optional: ``n`` (items per customer, default 20) and ``exclude_purchased`` (default
            true).

        Returns
        -------
        pandas.DataFrame
            The long frame of :meth:`training.recommend.model.RecommenderModel.recommend`:
            ``customer_id``, ``rank``, ``item_id``, ``score``, ``source``, ``reason``, ``fallback``.

        Raises
        ------
        ValueError
            ``model_input`` has no ``customer_id`` column.
        RuntimeError
            Called before :meth:`load_context`.
        """
        if not hasattr(self, "model"):
            raise RuntimeError("RecommenderPyfunc.predict before load_context: load it with mlflow.pyfunc.load_model")
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if Col.CUSTOMER_ID not in frame.columns:
            raise ValueError(f"the recommender's input needs a {Col.CUSTOMER_ID!r} column, got {list(frame.columns)}")
        params = params or {}
        return self.model.recommend(frame[Col.CUSTOMER_ID].tolist(), int(params.get("n", DEFAULT_N)),
                                    exclude_purchased=bool(params.get("exclude_purchased", True)))


def _write_directory(model: Any, stem: Path) -> Path:
    return artefact.save(model, stem)


def _signature(model: Any, example: pd.DataFrame) -> tuple[ModelSignature, pd.DataFrame]:
    request = example[[Col.CUSTOMER_ID]].reset_index(drop=True)
    output = model.recommend(request[Col.CUSTOMER_ID].tolist(), DEFAULT_N)
    return infer_signature(request, output, params={"n": DEFAULT_N, "exclude_purchased": True}), request


def recommender_pip_requirements() -> list[str]:
    """The requirements recorded with the logged recommender: the CLV pyfunc's plus LightGBM and implicit.

    Returns
    -------
    list[str]
        ``name==version`` pins of the installed distributions.
    """
    return [*pip_requirements(), *pinned(RECOMMENDER_RUNTIME_DISTRIBUTIONS)]


def log_recommender_model(
    model: Any,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    input_example: pd.DataFrame | None = None,
    tags: Mapping[str, Any] | None = None,
) -> ModelInfo:
    """Log a fitted ``RecommenderModel`` as a pyfunc in the active run and, with
    ``registered_model_name``, register it as a new version (no alias: promotion is the caller's).

    Parameters
    ----------
    model
        A fitted ``RecommenderModel``.
    input_example
        A frame with ``customer_id`` to infer the signature from; ``None``: no signature.
    name, registered_model_name, tags
        As in :func:`training.clv.pyfunc.log_clv_model`.

    Returns
    -------
    mlflow.models.model.ModelInfo
        As :func:`training.clv.pyfunc.log_clv_model`, which also says what it raises.
    """
    return log_json_pyfunc(
        model, what="recommender", name=name, artifact_key=ARTIFACT_KEY, model_code=_MODEL_CODE,
        requirements=recommender_pip_requirements(), signature=_signature, input_example=input_example,
        registered_model_name=registered_model_name, tags=tags, write_state=_write_directory,
    )
