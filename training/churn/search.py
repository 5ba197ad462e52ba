"""The search of the churn booster's hyper-parameters on the validation cutoff, within a time budget.

What suits one retailer's history does not suit another's: a few thousand customers over one year
want small trees, a million over three years bigger ones. Optuna's TPE sampler (seeded) proposes
leaves per tree, minimum customers per leaf and learning rate, scored by the booster's ROC AUC on
the validation cutoff; the test cutoff is never seen. The search runs after the choice of learner
and takes no part in it, and its budget holds within a trial (:func:`search_boosting`)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from features.errors import RapportError
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


class DeadlinePassed(RapportError):
    """Raised out of LightGBM's boosting loop by :class:`StopAtDeadline`: ``rounds`` were boosted."""

    def __init__(self, rounds: int) -> None:
        super().__init__(f"the search's time budget passed after {rounds} boosting rounds")
        self.rounds = rounds


class StopAtDeadline:
    """LightGBM callback: after every round, stop boosting once ``clock()`` has reached ``deadline``
    (raises :class:`DeadlinePassed`). Runs after early stopping (LightGBM orders callbacks by
    ``order``; early stopping's is 30), so a round that ends the trial normally still does."""

    order = 40
    before_iteration = False

    def __init__(self, deadline: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.deadline = deadline
        self.clock = clock

    def __call__(self, env: Any) -> None:
        if self.clock() >= self.deadline:
            raise DeadlinePassed(env.iteration - env.begin_iteration + 1)


@dataclass(frozen=True)
class BoostingSearch:
    """The outcome: the chosen ``params`` (the searched settings), the rounds early stopping kept
    with them (``best_iteration``), their validation ROC AUC and that of the configured values
    (``default_auc``, the first trial), the number of completed ``trials``, of trials ``stopped`` at
    the deadline (pruned), the ``seconds`` spent and the budget. With no completed trial ``params``
    are the configured values, ``best_iteration`` is None and both ROC AUCs are NaN."""

    params: dict[str, Any]
    best_iteration: int | None
    validation_auc: float
    default_auc: float
    trials: int
    seconds: float
    budget_s: float
    stopped: int = 0

    @property
    def completed(self) -> bool:
        """Whether a trial finished within the budget (else the configured values are kept unjudged).

        Returns
        -------
        bool
            True when at least one trial completed.
        """
        return self.best_iteration is not None

    def to_params(self) -> dict[str, Any]:
        """Flat MLflow parameters: ``search.<setting>`` and the search's own numbers.

        Returns
        -------
        dict
            Parameter name -> value.
        """
        judged = {
            "search.best_iteration": self.best_iteration,
            "search.validation_auc": round(self.validation_auc, 6),
            "search.default_validation_auc": round(self.default_auc, 6),
        } if self.completed else {}
        return {
            **{f"search.{name}": value for name, value in self.params.items()},
            **judged,
            "search.trials": self.trials,
            "search.trials_stopped": self.stopped,
            "search.seconds": round(self.seconds, 1),
            "search.budget_s": self.budget_s,
        }

    @property
    def message(self) -> str:
        """What the search did, in one sentence for the run and ``rapport train``.

        Returns
        -------
        str
            The trials, the time and budget, and the values chosen with their validation ROC AUC (or
            why the configured values were kept unjudged).
        """
        stopped = f", {self.stopped} stopped at the deadline" if self.stopped else ""
        head = (f"searched {self.trials} LightGBM configurations{stopped} in {self.seconds:.0f} s "
                f"(budget {self.budget_s:g} s)")
        if not self.completed:
            return (f"{head}: the configured values did not finish boosting within the budget, so they are "
                    "kept unjudged (raise train_search_budget_s to search)")
        chosen = ", ".join(f"{name} {value:g}" for name, value in self.params.items())
        return (f"{head}: {chosen}, {self.best_iteration} rounds; validation ROC AUC {self.validation_auc:.4f} "
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
    clock: Callable[[], float] = time.perf_counter,
) -> BoostingSearch:
    """Search :data:`SEARCH_SPACE` for ``model``'s booster (its other settings as they are, its
    values of the searched ones as the first trial) on ``train`` / ``valid`` within ``budget_s``
    seconds of ``clock``; the model is not fitted.

    Each trial boosts on the training cutoffs with early stopping on the validation cutoff (which
    picks the rounds) and is scored by the booster's ROC AUC on the validation cutoff. The configured
    values are the first trial, so the search can only keep or improve them on validation. The best
    of many trials on one cutoff is flattered there, so the search runs after the choice of learner
    (:func:`training.churn.evaluation.choose_learner`, on the configured values) and takes no part
    in it.

    The budget holds within a trial, not only between trials:

    - every boosting round ends with a look at the clock (:class:`StopAtDeadline`): a trial still
      boosting when ``budget_s`` has passed stops there and is *pruned*, never chosen. Its ROC AUC
      would come from fewer rounds than early stopping keeps, so it is not comparable with the
      completed trials, and the final fit, which boosts until early stopping, would not be the model
      it measured;
    - no trial starts when the time spent plus the longest trial so far would pass the budget;
    - at most ``max_trials`` trials.

    When not even the configured values finish within the budget, nothing is chosen: the configured
    values are kept, as with no search. With the same data and a budget that lets the same trials
    finish the search is reproducible (seeded sampler, deterministic LightGBM), but how many trials
    fit in a time budget depends on the machine's speed and load.

    Raises what :meth:`ChurnModel.fit` raises for bad frames or settings, and ``ValueError`` for a
    negative budget.

    Parameters
    ----------
    model
        The unfitted churn model whose booster is searched (its other settings are kept).
    train, valid
        The training cutoffs' and the validation cutoff's rows.
    feature_names
        The feature columns.
    label
        The 0/1 label column.
    budget_s
        Seconds of ``clock`` the search may spend.
    max_trials
        The most trials run.
    clock
        The clock the budget is measured on.

    Returns
    -------
    BoostingSearch
        The chosen settings, their rounds and ROC AUC, and the search's own numbers.
    """
    if not budget_s >= 0:
        raise ValueError(f"train_search_budget_s must be a number of seconds >= 0, got {budget_s!r}")
    base = model.get_params()
    x_train, y_train = boosting_data(train, feature_names, label, "training frame")
    x_valid, y_valid = boosting_data(valid, feature_names, label, "validation frame")
    names = list(feature_names)
    rounds: dict[int, int] = {}
    durations: list[float] = []
    started = clock()
    deadline = StopAtDeadline(started + budget_s, clock)

    def objective(trial: optuna.Trial) -> float:
        low, high = SEARCH_SPACE["num_leaves"]
        leaves = trial.suggest_int("num_leaves", int(low), int(high), log=True)
        low, high = SEARCH_SPACE["min_child_samples"]
        per_leaf = trial.suggest_int("min_child_samples", int(low), int(high), log=True)
        low, high = SEARCH_SPACE["learning_rate"]
        rate = trial.suggest_float("learning_rate", low, high, log=True)
        settings = {**base, "num_leaves": leaves, "min_child_samples": per_leaf, "learning_rate": rate}
        t0 = clock()
        try:
            booster, best, _ = train_booster(settings, x_train, y_train, x_valid, y_valid, names,
                                             callbacks=[deadline])
        except DeadlinePassed as stop:
            raise optuna.TrialPruned(str(stop)) from None
        finally:
            durations.append(clock() - t0)
        rounds[trial.number] = best
        return float(roc_auc_score(y_valid, expit(booster.predict(x_valid, num_iteration=best, raw_score=True))))

    def within_budget(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # The next trial would likely take as long as the longest so far: start it only if that fits.
        if clock() - started + max(durations) > budget_s:
            study.stop()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=base["seed"]))
    default = {name: base[name] for name in SEARCH_SPACE}
    study.enqueue_trial(default, skip_if_exists=True)
    study.optimize(objective, n_trials=max(1, max_trials), callbacks=[within_budget])
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    stopped = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    seconds = clock() - started
    if not done:
        result = BoostingSearch(params=default, best_iteration=None, validation_auc=math.nan,
                                default_auc=math.nan, trials=0, seconds=seconds, budget_s=float(budget_s),
                                stopped=stopped)
        log.warning("churn: %s", result.message)
        return result
    best = study.best_trial
    first = study.trials[0]
    result = BoostingSearch(
        params={name: best.params[name] for name in SEARCH_SPACE},
        best_iteration=rounds[best.number],
        validation_auc=math.nan if best.value is None else float(best.value),
        default_auc=(float(first.value) if first.state == optuna.trial.TrialState.COMPLETE and first.value is not None
                     else math.nan),
        trials=len(done),
        seconds=seconds,
        budget_s=float(budget_s),
        stopped=stopped,
    )
    log.info("churn: %s", result.message)
    return result


def searched_model(model: ChurnModel, search: BoostingSearch | None) -> ChurnModel:
    """``model`` with the searched settings of ``search`` (a new, unfitted estimator); unchanged without one.

    Parameters
    ----------
    model
        The churn model the search started from.
    search
        The outcome of :func:`search_boosting`, or None.

    Returns
    -------
    ChurnModel
        An unfitted model with the searched settings, or ``model`` itself when there is nothing to
        apply.
    """
    if search is None:
        return model
    return ChurnModel(**{**model.get_params(), **search.params})

