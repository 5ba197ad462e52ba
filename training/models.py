"""The models Rapport trains, registers and serves, each declared once: :class:`ModelSpec`.

The pipeline, promotion, the CLI, the bundle and the service read a model's step name, registered
name, training function, key metrics and bundle entry from here. :data:`MODELS` lists them in
pipeline order: CLV, then churn (it fits a BG/NBD per cutoff for its features), then the
recommender. Importing this module loads neither MLflow nor a model library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from features.errors import ArgumentError


@dataclass(frozen=True)
class KeyMetric:
    """A metric of a model's training run that the champion comparison reads."""

    metric: str
    label: str
    higher_is_better: bool


@dataclass(frozen=True)
class ModelSpec:
    """One model: its step, its registered name, its training function, its key metrics and its bundle entry.

    - ``key``: the training step's name (``rapport train --only clv``, the runs' ``step`` tag, the
      ``<reports>/<key>/`` folder of its plots);
    - ``registered_name``: the model in the MLflow registry (``rapport models promote rapport-clv ...``);
    - ``train_path``: where its training step is, as ``"module:function"``; the module is imported only
      when the step runs (:meth:`ModelSpec.train_function`);
    - ``key_metrics`` and ``window_params``: what the promotion gate compares with the champion, and
      the run parameters that name the period those metrics were measured on (:mod:`training.promotion`);
    - ``bundle_key`` and ``bundle_file``: the model's entry in the serving bundle's manifest and the file
      (or folder) its state is written to (:mod:`training.bundle`).

    The registered names and the bundle's layout are those of the registries and bundles already
    written: changing one orphans them.
    """

    key: str
    registered_name: str
    #: ``"package.module:function"``; the function takes ``(con, settings, *, cutoff, progress)`` and
    #: returns a result with ``model_version`` (None when nothing was registered).
    train_path: str
    key_metrics: tuple[KeyMetric, ...]
    window_params: tuple[str, ...]
    bundle_key: str
    bundle_file: str

    def __post_init__(self) -> None:
        module, _, function = self.train_path.partition(":")
        if not module or not function:
            raise ValueError(f"{self.key}: train_path must read 'module:function', got {self.train_path!r}")

    def train_function(self) -> Callable[..., Any]:
        """The training step's function, its module imported now.

        Returns
        -------
        Callable[..., Any]
            The function named by :attr:`train_path`.

        Raises
        ------
        ImportError
            The module of :attr:`train_path` cannot be imported.
        AttributeError
            The module has no such function.
        """
        module, _, function = self.train_path.partition(":")
        return getattr(importlib.import_module(module), function)


CLV = ModelSpec(
    key="clv",
    registered_name="rapport-clv",
    train_path="training.clv.pipeline:train_clv",
    key_metrics=(KeyMetric("holdout_mae", "holdout MAE of repeat purchases", False),),
    window_params=("calibration_end", "cutoff"),
    bundle_key="clv",
    bundle_file="clv.json",
)

CHURN = ModelSpec(
    key="churn",
    registered_name="rapport-churn",
    train_path="training.churn.pipeline:train_churn",
    key_metrics=(KeyMetric("model_roc_auc", "ROC AUC on the held-out cutoff", True),),
    # The horizon too: with ``auto`` windows a new history may change it, and AUCs over other
    # horizons are not the same test.
    window_params=("test_cutoff", "horizon_days"),
    bundle_key="churn",
    bundle_file="churn.json",
)

RECOMMEND = ModelSpec(
    key="recommend",
    registered_name="rapport-recommender",
    train_path="training.recommend.pipeline:train_recommender",
    key_metrics=(
        KeyMetric("model.recall_at_20", "recall@20 over all items", True),
        KeyMetric("model.recall_at_20_new", "recall@20 over new items", True),
    ),
    window_params=("valid_end", "test_end"),
    bundle_key="recommender",
    bundle_file="recommender",
)

#: Every model, in pipeline order.
MODELS: tuple[ModelSpec, ...] = (CLV, CHURN, RECOMMEND)
#: The training steps' names, in pipeline order.
STEPS: tuple[str, ...] = tuple(spec.key for spec in MODELS)
#: The registered models' names, in pipeline order.
REGISTERED_NAMES: tuple[str, ...] = tuple(spec.registered_name for spec in MODELS)
#: Keys of the serving bundle's ``manifest["models"]``, in the order the service reports them.
BUNDLE_KEYS: tuple[str, ...] = tuple(spec.bundle_key for spec in MODELS)


def by_key(key: str) -> ModelSpec:
    """The model trained by step ``key``; :class:`ArgumentError` listing the steps otherwise.

    Parameters
    ----------
    key
        A training step's name (``clv``, ``churn``, ``recommend``).

    Returns
    -------
    ModelSpec
        The model of that step.

    Raises
    ------
    ArgumentError
        No model has that step; the message lists the steps.
    """
    for spec in MODELS:
        if spec.key == key:
            return spec
    raise ArgumentError(f"unknown training step {key!r}; available: {', '.join(STEPS)}")


def by_name(registered_name: str) -> ModelSpec:
    """The model registered as ``registered_name``; :class:`ArgumentError` listing the names otherwise.

    Parameters
    ----------
    registered_name
        A registered model's name (``rapport-clv``, ``rapport-churn``, ``rapport-recommender``).

    Returns
    -------
    ModelSpec
        The model registered under that name.

    Raises
    ------
    ArgumentError
        No model has that name; the message lists the names.
    """
    for spec in MODELS:
        if spec.registered_name == registered_name:
            return spec
    raise ArgumentError(f"unknown model {registered_name!r}; expected one of {', '.join(REGISTERED_NAMES)}")


def names_text() -> str:
    """The registered names as a sentence: "rapport-clv, rapport-churn or rapport-recommender".

    Returns
    -------
    str
        The registered names, joined with commas and a final "or".
    """
    return ", ".join(REGISTERED_NAMES[:-1]) + f" or {REGISTERED_NAMES[-1]}"
