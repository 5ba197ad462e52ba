"""The recommender's configuration, chosen on the validation period within a time budget.

On the temporal split of :mod:`training.recommend.split` (the test period is never looked at
here), :func:`search` runs trials of the settings (Optuna's TPE sampler, the settings as given
first, so the search never ends below them) until the budget is spent, and :func:`choose_champion`
picks among the servable configurations with the promotion gate's rule applied on validation. The
protocol is in :func:`search`, the searched values in :func:`suggest`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import ibis
import numpy as np
import pandas as pd

from training.progress import reporter
from training.recommend.candidates import CANDIDATE_SOURCES, CandidateSizes
from training.recommend.data import InteractionData
from training.recommend.evaluation import (
    ALS,
    CHOSEN,
    CONFIGURATIONS,
    POPULAR,
    RECALL,
    RECALL_NEW,
    TIFU,
    TOP_FREQUENCY,
    als_row,
    configuration_rows,
    popular_rows,
)
from training.recommend.metrics import comparison_table
from training.recommend.model import RecommenderInputError, RecommenderModel, RecommenderSettings
from training.recommend.split import TemporalSplit, purchases_between

logger = logging.getLogger(__name__)

#: Customers of a trial: the ranker learns from at most this many, and the lists of at most this
#: many validation customers (a seeded sample, the same for every trial) are judged, so that a trial
#: costs a fraction of the final fit on a large history.
SEARCH_CUSTOMERS = 5_000
#: Half-lives the search tries (None: no decay).
HALF_LIVES: tuple[float | None, ...] = (30.0, 90.0, 180.0, 365.0, 730.0, None)


@dataclass(frozen=True)
class SearchResult:
    """What the validation period chose: the settings (``ranker`` set to the champion's), the
    champion's row name, the validation table (the champion's rivals), the searched values and
    how the search went. ``model``: the chosen trial's model, fitted as of ``train_end`` (its history
    and candidate models serve the comparison's label period)."""

    settings: RecommenderSettings
    champion: str
    table: pd.DataFrame
    params: dict[str, Any]
    trials: int
    seconds: float
    reasons: tuple[str, ...]
    model: RecommenderModel | None = field(default=None, repr=False)


def _score(row: Mapping[str, float]) -> float:
    value = float(row[RECALL]) + float(row[RECALL_NEW])
    return value if np.isfinite(value) else float("-inf")


def choose_champion(table: pd.DataFrame) -> tuple[str, list[str]]:
    """The champion's row among the servable configurations of a validation ``table`` (rows
    :data:`CHOSEN`, :data:`TIFU`, :data:`TOP_FREQUENCY`, :data:`POPULAR`, :data:`ALS`), and why.

    The blend's best trial and TIFU-KNN's best trial are eligible only when they beat personal top
    frequency on recall@20 AND popularity and plain ALS on recall@20 of new items (the gate's rule,
    applied on validation); of the eligible, the higher ``recall@20 + recall@20_new`` wins; with
    none, personal top frequency is the champion. Ties go to the simpler configuration.

    Parameters
    ----------
    table
        Validation metrics, one row per configuration (:func:`training.recommend.metrics.comparison_table`).

    Returns
    -------
    tuple[str, list[str]]
        The champion's row name, and one sentence per candidate and the verdict.
    """
    reasons: list[str] = []
    eligible: dict[str, float] = {}
    base = table.loc[TOP_FREQUENCY]
    for name in (CHOSEN, TIFU):
        row = table.loc[name]
        beats_all = row[RECALL] > base[RECALL]
        beats_new = all(row[RECALL_NEW] > table.loc[rival, RECALL_NEW] for rival in (POPULAR, ALS))
        reasons.append(f"{name} on validation: recall@20 {row[RECALL]:.4f} vs {base[RECALL]:.4f} for {TOP_FREQUENCY} "
                       f"({'beats' if beats_all else 'does not beat'}), new items {row[RECALL_NEW]:.4f} vs "
                       f"{table.loc[POPULAR, RECALL_NEW]:.4f} popularity / {table.loc[ALS, RECALL_NEW]:.4f} ALS "
                       f"({'beats both' if beats_new else 'does not beat both'})")
        if beats_all and beats_new:
            eligible[name] = _score(row)
    # On a tie the simpler configuration: TIFU-KNN before the blend.
    champion = max(eligible, key=lambda n: (eligible[n], n == TIFU)) if eligible else TOP_FREQUENCY
    reasons.append(f"champion: {champion}")
    return champion, reasons


def suggest(trial: Any, base: RecommenderSettings) -> dict[str, Any]:
    """One trial's values of the searched settings. Every range holds the settings as given
    (``base``), so that they are the first trial's values.

    Searched: the half-life, ALS factors and regularisation, item-KNN neighbours, the candidate
    counts, the ranker's rounds, TIFU-KNN's k and alpha.

    Parameters
    ----------
    trial
        An Optuna trial (or ``optuna.trial.FixedTrial`` to rebuild a trial's settings).
    base
        The settings as given.

    Returns
    -------
    dict[str, Any]
        Setting name -> value, ready for ``dataclasses.replace(base, **values)``.
    """

    def categorical(name: str, choices: tuple[Any, ...], given: Any) -> Any:
        return trial.suggest_categorical(name, list(dict.fromkeys((*choices, given))))

    def integer(name: str, low: int, high: int, given: int, log: bool = False) -> int:
        return trial.suggest_int(name, min(low, given), max(high, given), log=log)

    def real(name: str, low: float, high: float, given: float, log: bool = False) -> float:
        low, high = min(low, given), max(high, given)
        return trial.suggest_float(name, low, high, log=log and low > 0)

    half_life = categorical("half_life_days", tuple(str(h) for h in HALF_LIVES), str(base.half_life_days))
    given = base.candidates
    # Each source's size within the range it registered, in the order of the registry.
    sizes = {name: integer(f"candidates_{name}", *source.search_sizes, getattr(given, name))
             for name, source in CANDIDATE_SOURCES.items()}
    return {
        "half_life_days": None if half_life == "None" else float(half_life),
        "factors": categorical("factors", (32, 64, 128), base.factors),
        "regularization": real("regularization", 0.005, 0.5, base.regularization, log=True),
        "knn_neighbours": integer("knn_neighbours", 20, 300, base.knn_neighbours, log=True),
        "candidates": CandidateSizes(**sizes),
        "n_estimators": integer("n_estimators", 30, 300, base.n_estimators, log=True),
        "tifu_neighbours": integer("tifu_neighbours", 10, 500, base.tifu_neighbours, log=True),
        "tifu_alpha": real("tifu_alpha", 0.3, 1.0, base.tifu_alpha),
    }


def _as_trial_params(settings: RecommenderSettings) -> dict[str, Any]:
    """The settings as given, in the search's parameter names (Optuna's first, enqueued trial)."""
    out: dict[str, Any] = {
        "half_life_days": str(settings.half_life_days), "factors": settings.factors,
        "regularization": settings.regularization, "knn_neighbours": settings.knn_neighbours,
        "n_estimators": settings.n_estimators, "tifu_neighbours": settings.tifu_neighbours,
        "tifu_alpha": settings.tifu_alpha,
    }
    out.update({f"candidates_{name}": size for name, size in settings.candidates.__dict__.items()})
    return out


def search(
    backend: ibis.BaseBackend,
    split: TemporalSplit,
    settings: RecommenderSettings,
    *,
    budget_s: float,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> SearchResult:
    """Search and choose on the validation period, within ``budget_s`` seconds of ``clock``.

    Protocol:

    - every trial fits the model as of ``train_end`` — its ranker learns on the ``label_days``
      before (``[train_end - label_days, train_end)``), its candidate models on everything before
      ``train_end`` — and recommends 20 items to every customer who bought in the validation period
      ``[train_end, valid_end)`` and was known before it, as
      :func:`training.recommend.evaluation.compare` does on the test period (on a large history,
      the ranker learns from and the lists are judged for a seeded sample of
      :data:`SEARCH_CUSTOMERS` customers);
    - the trial is scored by ``recall@20 + recall@20_new`` of the blend (all items, and new items
      with the purchases excluded: the gate's two measures, one number); the same fit also gives
      TIFU-KNN's row with the trial's k and alpha (a rule on the same candidates), so both are
      searched at once;
    - the first trial is the settings as given; Optuna's TPE sampler (seeded with the model's
      ``seed``) proposes the others; a trial starts only when the time spent plus the longest
      trial so far stays within ``budget_s`` (one as long as the mean would still overrun it). The
      first trial always runs, whatever the budget: the champion is chosen on its validation rows.
      A trial under way is not cut short (its fits have no deadline check), so the search can pass
      its budget by a trial longer than every earlier one.

    The champion is then chosen by :func:`choose_champion`.

    Parameters
    ----------
    backend
        Ibis backend holding the unified history.
    split
        The temporal split; only its train and validation periods are read.
    settings
        The recommender's settings as given (the first trial).
    budget_s
        Seconds the search may spend; 0 or less: the first trial only.
    progress
        Called with a line per step (also logged).
    clock
        Seconds, monotonic (a test passes a fake one).

    Returns
    -------
    SearchResult
        The chosen settings, the champion, the validation table, the searched values and the
        trial's model fitted as of ``train_end``.

    Raises
    ------
    RecommenderInputError
        No trial could be judged on the validation period (the message gives the first error).
    """
    import optuna

    step = reporter(logger, progress)

    started = clock()
    label_days = settings.label_days
    label_start = split.train_end - timedelta(days=label_days)
    labels = purchases_between(backend, label_start, split.train_end)
    validation = purchases_between(backend, split.train_end, split.valid_end)
    histories: dict[float | None, tuple[InteractionData, InteractionData]] = {}

    def history(s: RecommenderSettings) -> tuple[InteractionData, InteractionData]:
        if s.half_life_days not in histories:
            model = RecommenderModel(s)
            histories[s.half_life_days] = (model.interaction_data(backend, label_start),
                                           model.interaction_data(backend, split.train_end))
        return histories[s.half_life_days]

    rows: dict[int, dict[str, dict[str, float]]] = {}
    models: dict[int, RecommenderModel] = {}
    durations: list[float] = []
    fixed: dict[str, dict[str, float]] = {}

    def evaluate(s: RecommenderSettings) -> tuple[dict[str, dict[str, float]], RecommenderModel]:
        before, data = history(s)
        trial_settings = replace(s, max_training_customers=min(s.max_training_customers, SEARCH_CUSTOMERS))
        model = RecommenderModel(trial_settings).fit_data(before, labels, data)
        known = data.history_sets()
        customers = np.asarray(sorted(c for c in validation if c in known), dtype=np.int64)
        if len(customers) == 0:
            raise RecommenderInputError(f"no customer known before {split.train_end:%Y-%m-%d} bought in the "
                                        "validation period: nothing to choose on")
        if len(customers) > SEARCH_CUSTOMERS:
            customers = np.sort(np.random.default_rng(s.seed).choice(customers, SEARCH_CUSTOMERS, replace=False))
        relevant = {int(c): validation[int(c)] for c in customers}
        # The rules of thumb do not depend on the searched values (but for the half-life of the
        # popular lists' data, which they do not read): judged once, with the first trial's lists.
        first = not fixed
        out = configuration_rows(model, (CHOSEN, TIFU, TOP_FREQUENCY) if first else (CHOSEN, TIFU),
                                 customers, relevant, known)
        if first:
            fixed[TOP_FREQUENCY] = out[TOP_FREQUENCY]
            fixed.update(popular_rows(data, customers, relevant, known))
        out.update({TOP_FREQUENCY: fixed[TOP_FREQUENCY], POPULAR: fixed[POPULAR]})
        out[ALS] = als_row(model, customers, relevant, known)
        return out, model

    def objective(trial: Any) -> float:
        s = replace(settings, **suggest(trial, settings), ranker="lightgbm")
        t0 = clock()
        try:
            out, model = evaluate(s)
        finally:
            # A trial that fails took its time too: the next one is judged by it as well.
            durations.append(clock() - t0)
        rows[trial.number], models[trial.number] = out, model
        trial.set_user_attr("tifu_score", _score(out[TIFU]))
        step(f"trial {trial.number + 1}: blend {out[CHOSEN][RECALL]:.4f} / {out[CHOSEN][RECALL_NEW]:.4f}, "
             f"TIFU-KNN {out[TIFU][RECALL]:.4f} / {out[TIFU][RECALL_NEW]:.4f} (recall@20 all / new) "
             f"in {durations[-1]:.1f} s")
        # Keep the fitted models of the best blend and TIFU-KNN trials only (memory).
        keep = {max(rows, key=lambda n: (_score(rows[n][CHOSEN]), -n)), max(rows, key=lambda n: (_score(rows[n][TIFU]), -n))}
        for n in list(models):
            if n not in keep:
                del models[n]
        return _score(out[CHOSEN])

    def within_budget(study: Any, trial: Any) -> None:
        if clock() - started + max(durations, default=0.0) > budget_s:
            study.stop()
        elif trial.state == optuna.trial.TrialState.FAIL and not rows:
            # The settings as given cannot be judged (too little history): other values will not be.
            study.stop()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=settings.seed))
    study.enqueue_trial(_as_trial_params(settings))
    step(f"validation {split.train_end:%Y-%m-%d} .. {split.valid_end:%Y-%m-%d}: the settings as given, "
         f"then a search within {budget_s:.0f} s")
    errors: list[str] = []

    def guarded(trial: Any) -> float:
        try:
            return objective(trial)
        except RecommenderInputError as exc:
            errors.append(str(exc))
            raise

    study.optimize(guarded, n_trials=None if budget_s > 0 else 1, callbacks=[within_budget],
                   catch=(RecommenderInputError,))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RecommenderInputError("no configuration could be judged on the validation period: "
                                    + (errors[0] if errors else "no trial ran"))
    best_blend = study.best_trial
    best_tifu = max(done, key=lambda t: (t.user_attrs["tifu_score"], -t.number))
    table_rows = {CHOSEN: rows[best_blend.number][CHOSEN], TIFU: rows[best_tifu.number][TIFU],
                  TOP_FREQUENCY: rows[best_blend.number][TOP_FREQUENCY], POPULAR: rows[best_blend.number][POPULAR],
                  ALS: rows[best_blend.number][ALS]}
    table = comparison_table(table_rows)

    champion, reasons = choose_champion(table)
    # Personal top frequency reads no searched value: it keeps the blend's best (its candidate
    # models still serve similar items and explanations).
    chosen_trial = best_tifu if champion == TIFU else best_blend
    params = dict(suggest(optuna.trial.FixedTrial(chosen_trial.params), settings))
    chosen = replace(settings, **params, ranker=CONFIGURATIONS[champion])
    return SearchResult(settings=chosen, champion=champion, table=table, params=params, trials=len(done),
                        seconds=clock() - started, reasons=tuple(reasons),
                        model=models.get(chosen_trial.number))
