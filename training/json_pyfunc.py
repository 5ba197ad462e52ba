"""What every model's MLflow pyfunc shares: the fitted state as a JSON artefact (no pickle), the
pyfunc logged as code, pinned requirements, registration.

A model class only has to offer ``to_dict()`` / ``from_dict()`` and ``predict(frame)``; its pyfunc
module supplies the wrapper class (in the small script MLflow loads), the signature and the
requirements, and calls :func:`log_json_pyfunc`.
"""

from __future__ import annotations

import importlib
import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc.model import PythonModel, PythonModelContext

from features.schema import Col
from training import tracking

log = logging.getLogger(__name__)


def import_class(path: str) -> Any:
    """The class named ``module:Qualified.Name``.

    Parameters
    ----------
    path
        ``package.module:Class`` (a nested class as ``Outer.Inner``).

    Returns
    -------
    Any
        The class, its module imported.

    Raises
    ------
    ValueError
        ``path`` lacks the module or the class.
    ImportError
        The module cannot be imported.
    AttributeError
        The module has no such class.
    """
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise ValueError(f"model class must be given as 'module:Class', got {path!r}")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def class_path(model: Any) -> str:
    """The ``module:Qualified.Name`` of a model's class, as :func:`import_class` reads it back.

    Parameters
    ----------
    model
        A model instance.

    Returns
    -------
    str
        Its class's module and qualified name.
    """
    cls = type(model)
    return f"{cls.__module__}:{cls.__qualname__}"


def indexed(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows indexed by customer id: a ``customer_id`` column (a request) becomes the index.

    Parameters
    ----------
    frame
        Features, with ``customer_id`` as a column or already as the index.

    Returns
    -------
    pandas.DataFrame
        The frame indexed by ``customer_id`` (``frame`` itself when it has no such column).
    """
    return frame.set_index(Col.CUSTOMER_ID) if Col.CUSTOMER_ID in frame.columns else frame


def json_default(value: Any) -> Any:
    """The JSON form of a value :func:`json.dumps` cannot store by itself (its ``default=``).

    Parameters
    ----------
    value
        A NumPy scalar, a NumPy array or a pandas ``Timestamp``.

    Returns
    -------
    Any
        The Python scalar, the nested list, or the ISO 8601 text.

    Raises
    ------
    TypeError
        Any other type; the message names it.
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    raise TypeError(f"a model's to_dict() holds a {type(value).__name__}, which JSON cannot store: {value!r}")


def pinned(distributions: Iterable[str]) -> list[str]:
    """``name==version`` of the installed distributions (a missing one is logged and left out).

    Parameters
    ----------
    distributions
        Distribution names (``lifetimes``, ``lightgbm``, ...).

    Returns
    -------
    list[str]
        One requirement per installed distribution, in the order given.
    """
    out = []
    for name in distributions:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            log.warning("%s is not installed: left out of the model's requirements", name)
    return out


def rapport_version() -> str:
    """The installed version of the ``rapport`` distribution, recorded in every logged model's metadata.

    Returns
    -------
    str
        The version, or ``"unknown"`` when the distribution is not installed.
    """
    try:
        return metadata.version("rapport")
    except metadata.PackageNotFoundError:
        return "unknown"


def load_state(context: PythonModelContext, artifact_key: str, default_class: str) -> Any:
    """The fitted model rebuilt from the JSON artefact, by the class the model config names.

    Parameters
    ----------
    context
        The pyfunc's context: ``model_config["model_class"]`` and the artefact's local path.
    artifact_key
        The key of the JSON artefact in ``context.artifacts``.
    default_class
        The class (``module:Class``) used when the model config names none.

    Returns
    -------
    Any
        The model, from ``model_class.from_dict`` of the JSON state.

    Raises
    ------
    ValueError
        The class is not given as ``module:Class``.
    """
    config = context.model_config or {}
    model_class = import_class(config.get("model_class", default_class))
    return model_class.from_dict(json.loads(Path(context.artifacts[artifact_key]).read_text(encoding="utf-8")))


class JsonModelPyfunc(PythonModel):
    """A pyfunc that rebuilds a fitted model from its JSON artefact and scores frames with it.

    Subclasses name the artefact and the default model class, and turn the model's output into
    what a pyfunc can return (:meth:`output`)."""

    artifact_key: str
    default_class: str

    def load_context(self, context: PythonModelContext) -> None:
        """Rebuild the fitted model from the artefact (MLflow calls it once when the model is loaded).

        Parameters
        ----------
        context
            The pyfunc's context (:func:`load_state`).

        Returns
        -------
        None
        """
        self.model = load_state(context, self.artifact_key, self.default_class)

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """The model's per-customer outputs for a frame of features (``customer_id`` as index or column).

        Parameters
        ----------
        context
            The pyfunc's context (unused: the model was rebuilt by :meth:`load_context`).
        model_input
            The features, one row per customer; anything ``pandas.DataFrame`` accepts.
        params
            Unused; part of MLflow's pyfunc interface.

        Returns
        -------
        pandas.DataFrame
            :meth:`output` of the model's ``predict`` on the frame indexed by ``customer_id``.

        Raises
        ------
        RuntimeError
            :meth:`load_context` has not run.
        """
        if not hasattr(self, "model"):
            raise RuntimeError(f"{type(self).__name__}.predict before load_context: load it with "
                               "mlflow.pyfunc.load_model")
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.output(self.model.predict(indexed(frame)))

    @staticmethod
    def output(predictions: pd.DataFrame) -> pd.DataFrame:
        """What the pyfunc returns of the model's predictions; subclasses reshape them.

        Parameters
        ----------
        predictions
            The model's ``predict`` output.

        Returns
        -------
        pandas.DataFrame
            ``predictions`` unchanged.
        """
        return predictions


def write_json_state(model: Any, stem: Path) -> Path:
    """The model's ``to_dict()`` as ``<stem>.json``; returns the file written.

    Parameters
    ----------
    model
        A fitted model with ``to_dict()``.
    stem
        The file's path without its extension.

    Returns
    -------
    pathlib.Path
        The JSON file (keys sorted; NumPy and pandas values by :func:`json_default`).

    Raises
    ------
    TypeError
        ``to_dict()`` holds a value JSON cannot store.
    """
    path = stem.with_suffix(".json")
    path.write_text(json.dumps(model.to_dict(), default=json_default, sort_keys=True), encoding="utf-8")
    return path


def log_json_pyfunc(
    model: Any,
    *,
    what: str,
    name: str,
    artifact_key: str,
    model_code: str,
    requirements: list[str],
    signature: Callable[[Any, pd.DataFrame], tuple[ModelSignature, pd.DataFrame]],
    input_example: pd.DataFrame | None,
    registered_model_name: str | None,
    tags: Mapping[str, Any] | None,
    write_state: Callable[[Any, Path], Path] | None = None,
) -> ModelInfo:
    """Log ``model`` in the active run as a pyfunc built by ``model_code`` from its JSON state and,
    with ``registered_model_name``, register it as a new version (tagged with the code version and
    ``tags``; no alias: promotion is the caller's decision). ``ModelInfo.registered_model_version``
    holds the new version.

    Parameters
    ----------
    model
        The fitted model (``to_dict()``, ``predict(frame)``).
    what
        The model's kind (``clv``, ``churn``), used in file names and messages.
    name
        The name the model is logged under in the run (``log_model(name=...)``).
    artifact_key
        The key (and file stem) of the JSON state among the pyfunc's artifacts.
    model_code
        The source of the script MLflow loads the pyfunc from.
    requirements
        The pinned pip requirements of the logged model.
    signature
        ``(model, example) -> (signature, example)``, the model signature inferred from an example.
    input_example
        An example input (logged with the model); ``None``: no signature or example.
    registered_model_name
        The registered model the version is added to; ``None``: logged, not registered.
    tags
        Tags of the new version.
    write_state
        Writes the state to a stem and returns the file; ``None``: :func:`write_json_state`.

    Returns
    -------
    mlflow.models.model.ModelInfo
        What MLflow logged; ``registered_model_version`` holds the new version when registered.

    Raises
    ------
    RuntimeError
        No run is active.
    """
    run_id = tracking.require_active_run(f"log_{what}_model")
    version = tracking.code_version()
    with tempfile.TemporaryDirectory(prefix=f"rapport-{what}-") as tmp, warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values: customer ids and counts of
        # the feature contract never miss, so the hint is noise in every training run.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        model_signature = None
        if input_example is not None:
            model_signature, input_example = signature(model, input_example)
        state_path = (write_state or write_json_state)(model, Path(tmp, artifact_key))
        code_path = Path(tmp, f"{what}_pyfunc_model.py")
        code_path.write_text(model_code, encoding="utf-8")
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(code_path),
            artifacts={artifact_key: str(state_path)},
            model_config={"model_class": class_path(model)},
            pip_requirements=requirements,
            signature=model_signature,
            input_example=input_example,
            metadata={"rapport_version": rapport_version(), "code_version": version or "unknown"},
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
