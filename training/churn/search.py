"""The search of the churn booster's hyper-parameters on the validation cutoff, within a time budget.

What suits one retailer's history does not suit another's: a few thousand customers over one year
want small trees, a million over three years bigger ones. Optuna's TPE sampler (seeded) proposes
leaves per tree, minimum customers per leaf and learning rate; each trial boosts on the training
cutoffs with early stopping on the validation cutoff (which picks the rounds) and is scored by the
booster's ROC AUC on the validation cutoff, the number the gate compares with the baselines. The
configured values are the first trial, so the search can only keep or improve them on validation.
The test cutoff is never seen. Trials stop when ``budget_s`` seconds have passed (a trial under
way finishes) or after ``max_trials``; a budget of 0 skips the search.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from training.churn.model import ChurnModel, boosting_data, train_booster

log = logging.getLogger(__name__)

#: The searched settings of :class:`~training.churn.model.ChurnModel` and their ranges (log scale).
SEARCH_SPACE: dict[str, tuple[float, float]] = {
    "num_leaves": (7, 127),
    "min_child_samples": (10, 300),
    "learning_rate": (0.02, 0.2),
}
#: Trials at most, whatever the budget (the sampler has explored three parameters well by then).
MAX_TRIALS = 40


@dataclass(frozen=True)
class BoostingSearch:
    """The outcome: the chosen ``params`` (the searched settings), the rounds early stopping kept
    with them (``best_iteration``), their validation ROC AUC and that of the configured values
    (``default_auc``, the first trial), the number of ``trials`` and the ``seconds`` spent."""

    params: dict[str, Any]
    best_iteration: int
    validation_auc: float
    default_auc: float
    trials: int
    seconds: float
    budget_s: float

    def to_params(self) -> dict[str, Any]:
        """Flat MLflow parameters: ``search.<setting>`` and the search's own numbers."""
        return {
            **{f"search.{name}": value for name, value in self.params.items()},
            "search.best_iteration": self.best_iteration,
            "search.validation_auc": round(self.validation_auc, 6),
            "search.default_validation_auc": round(self.default_auc, 6),
            "search.trials": self.trials,
            "search.seconds": round(self.seconds, 1),
            "search.budget_s": self.budget_s,
        }

    @property
    def message(self) -> str:
        chosen = ", ".join(f"{name} {value:g}" for name, value in self.params.items())
        return (f"searched {self.trials} LightGBM configurations in {self.seconds:.0f} s (budget {self.budget_s:g} s): "
                f"{chosen}, {self.best_iteration} rounds; validation ROC AUC {self.validation_auc:.4f} "
                f"(configured values {self.default_auc:.4f})")


def search_boosting(
    model: ChurnModel,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    *,
    feature_names: Sequence[str],
    label: str,
    budget_s: float,
    max_trials: int = MAX_TRIALS,
) -> BoostingSearch:
    """Search :data:`SEARCH_SPACE` for ``model``'s booster (its other settings as they are, its
    values of the searched ones as the first trial) on ``train`` / ``valid``; the model is not fitted.

    Raises what :meth:`ChurnModel.fit` raises for bad frames or settings, and ``ValueError`` for a
    negative budget.
    """
    if not budget_s >= 0:
        raise ValueError(f"train_search_budget_s must be a number of seconds >= 0, got {budget_s!r}")
    base = model.get_params()
    x_train, y_train = boosting_data(train, feature_names, label, "training frame")
    x_valid, y_valid = boosting_data(valid, feature_names, label, "validation frame")
    names = list(feature_names)
    rounds: dict[int, int] = {}

    def objective(trial: optuna.Trial) -> float:
        low, high = SEARCH_SPACE["num_leaves"]
        leaves = trial.suggest_int("num_leaves", int(low), int(high), log=True)
        low, high = SEARCH_SPACE["min_child_samples"]
        per_leaf = trial.suggest_int("min_child_samples", int(low), int(high), log=True)
        low, high = SEARCH_SPACE["learning_rate"]
        rate = trial.suggest_float("learning_rate", low, high, log=True)
        settings = {**base, "num_leaves": leaves, "min_child_samples": per_leaf, "learning_rate": rate}
        booster, best, _ = train_booster(settings, x_train, y_train, x_valid, y_valid, names)
        rounds[trial.number] = best
        return float(roc_auc_score(y_valid, expit(booster.predict(x_valid, num_iteration=best, raw_score=True))))

    started = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=base["seed"]))
    default = {name: base[name] for name in SEARCH_SPACE}
    study.enqueue_trial(default, skip_if_exists=True)
    # The configured values always run, even with a tiny budget, so there is something to compare.
    study.optimize(objective, n_trials=1)
    remaining = budget_s - (time.perf_counter() - started)
    if remaining > 0 and max_trials > 1:
        study.optimize(objective, n_trials=max_trials - 1, timeout=remaining)
    best = study.best_trial
    result = BoostingSearch(
        params={name: best.params[name] for name in SEARCH_SPACE},
        best_iteration=rounds[best.number],
        validation_auc=float(best.value),
        default_auc=float(study.trials[0].value),
        trials=len(study.trials),
        seconds=time.perf_counter() - started,
        budget_s=float(budget_s),
    )
    log.info("churn: %s", result.message)
    return result


def searched_model(model: ChurnModel, search: BoostingSearch | None) -> ChurnModel:
    """``model`` with the searched settings of ``search`` (a new, unfitted estimator); unchanged without one."""
    if search is None:
        return model
    return ChurnModel(**{**model.get_params(), **search.params})

