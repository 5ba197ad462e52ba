"""The churn model: LightGBM with early stopping, a calibration map, risk bands and reasons in words.

Will a customer stop buying in the next H days (the label ``churned`` of :mod:`features.churn`),
and why? :class:`ChurnModel` is fitted on two frames with one row per (customer, cutoff): the
training cutoffs and the validation cutoff after them (``training.churn.dataset``). Its one scoring
function, :meth:`ChurnModel.predict`, serves batch scores and the service alike, row by row from the
stored state. The fitted state travels as JSON (:meth:`ChurnModel.to_dict`; no pickle, no training
rows) and is checked on load (:class:`ChurnArtefactError` names what is wrong)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import lightgbm as lgb
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from pydantic import Field
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from features.churn import CHURNED
from features.settings import ChurnModelSettings, check_section
from training.artefact import ArtefactReader
from training.churn.calibration import (
    AUTO_CALIBRATION,
    Calibrator,
    calibrator_from_dict,
    choose_calibration,
    fit_calibrator,
    is_finite_number,
    out_of_fold_calibration_errors,
)
from training.churn.contributions import PathContributions
from training.churn.errors import ChurnArtefactError, ChurnInputError, ChurnModelError
from training.churn.reasons import CONTEXT_COLUMNS, reason_texts

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]

#: Risk bands, from the lowest churn probability to the highest (an ordered categorical).
RISK_BANDS: tuple[str, str, str] = ("low", "medium", "high")
#: Default number of reasons per customer.
DEFAULT_TOP_REASONS = 3


def reason_columns(n: int) -> tuple[str, ...]:
    """Names of the reason columns of :meth:`ChurnModel.predict`: ``reason_1`` .. ``reason_<n>``."""
    return tuple(f"reason_{i}" for i in range(1, n + 1))


#: Columns of :meth:`ChurnModel.predict`, in order (with the default three reasons).
CHURN_OUTPUT_COLUMNS: tuple[str, ...] = (
    "churn_probability",
    "risk_band",
    "percentile",
    *reason_columns(DEFAULT_TOP_REASONS),
)
#: Quantiles of the training rows' calibrated probabilities kept for percentile ranks (every 0.1 %).
N_QUANTILES = 1001
#: Percentiles of the training distribution used as default risk thresholds (low | medium | high).
DEFAULT_RISK_PERCENTILES = (50.0, 80.0)

#: Learners: LightGBM, or a logistic regression on the standardised features (fitted as the
#: "logistic regression on RFM" baseline is; served when it beats LightGBM on the validation cutoff).
Learner = Literal["lightgbm", "logistic_rfm"]
LIGHTGBM: Learner = "lightgbm"
LOGISTIC_RFM: Learner = "logistic_rfm"
LEARNERS: tuple[str, ...] = get_args(Learner)

#: Artefact format written by :meth:`ChurnModel.to_dict`.
ARTEFACT_FORMAT = "rapport.churn_model"
ARTEFACT_VERSION = 1

_FITTED = ("feature_names", "label", "booster", "best_iteration", "calibrator", "risk_thresholds",
           "training_probabilities_quantiles", "feature_importance_gain", "base_rate", "validation_base_rate",
           "scale_pos_weight", "currency", "n_train", "n_valid")
#: The fitted section of a ``logistic_rfm`` artefact: coefficients per standard deviation, intercept,
#: the scaler's means and scales, and what both learners share.
_LOGISTIC_FITTED = ("feature_names", "label", "coef", "intercept", "scaler_mean", "scaler_scale", "calibrator",
                    "risk_thresholds", "training_probabilities_quantiles", "base_rate", "validation_base_rate",
                    "currency", "n_train", "n_valid")
#: Settings scoring reads from the instance rather than from the fit (they do not change the model).
_SCORING_SETTINGS = ("top_reasons", "num_threads")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_LIGHTGBM_SPECIAL = re.compile(r'[\[\]{}",:]')


# --- settings -------------------------------------------------------------------------------------


class _Settings(ChurnModelSettings):
    """Every :class:`ChurnModel` parameter, checked: the deployment's section
    (:class:`~features.settings.ChurnModelSettings`, where its bounds are declared) and what the
    training step or the caller sets beside it."""

    top_reasons: int = Field(DEFAULT_TOP_REASONS, ge=0)
    balance_classes: bool = True
    num_threads: int = Field(2, ge=1)
    seed: int = Field(0, ge=0)
    #: Artefacts written before the logistic learner existed have none: LightGBM.
    learner: Learner = LIGHTGBM


#: The settings an artefact stores (the learner is stored beside them, optional in older artefacts).
_SETTINGS = tuple(name for name in _Settings.model_fields if name != "learner")


def _check_settings(values: Mapping[str, Any]) -> _Settings:
    """The settings, checked; ``ValueError`` names the first bad one, its value and what is expected."""
    return check_section(_Settings, values, "ChurnModel")


def _is_whole(value: Any, minimum: int) -> bool:
    return bool(not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= minimum)


def boosting_data(frame: pd.DataFrame, feature_names: Sequence[str], label: str, what: str) -> tuple[FloatArray, FloatArray]:
    """The feature matrix and the 0/1 label of a frame, checked as :meth:`ChurnModel.fit` checks them."""
    names = _check_feature_names(feature_names)
    return _feature_matrix(frame, names, what), _labels(frame, label, what)


def train_booster(
    model_settings: Mapping[str, Any], x_train: FloatArray, y_train: FloatArray, x_valid: FloatArray,
    y_valid: FloatArray, names: Sequence[str], *, callbacks: Sequence[Callable[[Any], None]] = (),
) -> tuple[lgb.Booster, int, float]:
    """LightGBM boosted on the training rows with early stopping on the validation rows, with the
    :class:`ChurnModel` settings ``model_settings`` (``ChurnModel.get_params()``, checked): the booster,
    its best round and the churners' weight (stayers / churners with ``balance_classes``, else 1).
    ``callbacks``: more LightGBM callbacks, called after early stopping's in every round."""
    return _train_booster(_check_settings(model_settings), x_train, y_train, x_valid, y_valid, names,
                          callbacks=callbacks)


def _train_booster(
    settings: _Settings, x_train: FloatArray, y_train: FloatArray, x_valid: FloatArray, y_valid: FloatArray,
    names: Sequence[str], *, callbacks: Sequence[Callable[[Any], None]] = (),
) -> tuple[lgb.Booster, int, float]:
    n_pos = float(y_train.sum())
    scale_pos_weight = (len(y_train) - n_pos) / n_pos if settings.balance_classes else 1.0
    params = {
        "objective": "binary",
        "metric": "binary_logloss",
        "learning_rate": settings.learning_rate,
        "num_leaves": settings.num_leaves,
        "min_child_samples": settings.min_child_samples,
        "scale_pos_weight": scale_pos_weight,
        "num_threads": settings.num_threads,
        "seed": settings.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }
    # The validation loss carries the training's class weights: early stopping then watches the
    # objective the trees optimise, not one that also counts their deliberate shift of the base rate.
    valid_weight = np.where(y_valid == 1, scale_pos_weight, 1.0)
    d_train = lgb.Dataset(x_train, y_train, feature_name=list(names), params={"verbosity": -1})
    d_valid = lgb.Dataset(x_valid, y_valid, weight=valid_weight, reference=d_train)
    booster = lgb.train(
        params, d_train, num_boost_round=settings.n_estimators, valid_sets=[d_valid], valid_names=["valid"],
        callbacks=[lgb.early_stopping(settings.early_stopping_rounds, first_metric_only=True, verbose=False),
                   *callbacks],
    )
    best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
    return booster, int(best), float(scale_pos_weight)


# --- the model ------------------------------------------------------------------------------------


class ChurnModel(BaseEstimator):
    """Calibrated LightGBM churn classifier with risk bands, percentiles and reasons, scikit-learn style.

    Settings (stored as given; checked by :meth:`fit`):

    - ``n_estimators`` (500): the most boosting rounds; early stopping usually ends sooner;
    - ``learning_rate`` (0.05), ``num_leaves`` (31), ``min_child_samples`` (50: customers per leaf);
    - ``early_stopping_rounds`` (50): rounds without a better validation log loss before stopping;
    - ``calibration``: ``"auto"`` (default: chosen on the validation frame, see
      :mod:`training.churn.calibration`),
      ``"isotonic"``, ``"interpolated"`` or ``"sigmoid"`` (Platt), fitted on the validation frame;
    - ``risk_thresholds``: (medium from, high from) churn probabilities; None (default): the 50th and
      80th percentiles of the calibrated probabilities of the training rows, fixed at fit;
    - ``top_reasons`` (3): reasons per customer (0: none, and no contribution computation);
    - ``balance_classes`` (True): weigh churners by stayers / churners while boosting;
    - ``num_threads`` (2): LightGBM's threads in fitting and scoring (its OpenMP pool), and the
      threads finding leaves and summing path contributions for the reasons (chunks of rows, one
      LightGBM thread each; scipy's sparse product, no BLAS, so no BLAS limit is needed);
    - ``seed`` (0): LightGBM's seed; fits are deterministic (``deterministic=True``) for a given
      number of threads;
    - ``learner`` (``"lightgbm"``): or ``"logistic_rfm"``, a logistic regression on the standardised
      ``feature_names`` (the boosting settings are then unused). Its fitted attributes: ``coef_``
      (per standard deviation), ``intercept_``, ``scaler_mean_``, ``scaler_scale_``; ``booster_`` and
      ``path_contributions_`` are None, ``best_iteration_`` None, ``scale_pos_weight_`` 1 and
      ``feature_importance_gain_`` holds |coefficient| per standard deviation.

    Fitted attributes: ``learner_``, ``booster_`` (``lightgbm.Booster`` holding the trees up to the best round
    only), ``path_contributions_`` (its trees' per-leaf credit tables for the reasons, derived, not
    stored), ``best_iteration_``, ``calibrator_`` (:class:`IsotonicCalibrator` x/y arrays or
    :class:`SigmoidCalibrator` slope/intercept), ``feature_names_`` (the columns scoring reads, in
    this order), ``label_``, ``risk_thresholds_`` ((medium from, high from)),
    ``training_probabilities_quantiles_`` (:data:`N_QUANTILES` quantiles of the calibrated training
    probabilities, for percentiles), ``feature_importance_gain_`` (pd.Series: total split gain per
    feature, largest first), ``base_rate_`` (churn rate of the training rows),
    ``validation_base_rate_``, ``scale_pos_weight_`` (1 without ``balance_classes``),
    ``calibration_errors_`` (with ``calibration="auto"``: each map's out-of-fold validation ECE; set
    by fit, not stored in the artefact, empty after loading), ``currency_``
    (amounts in the reasons), ``n_train_``, ``n_valid_``, and ``settings_``, the checked settings the
    fit used: changing a setting needs a refit, except ``top_reasons`` and ``num_threads``, which
    scoring reads from the instance.

    *Boosting*: a LightGBM binary classifier on the given feature columns (any subset, any order,
    NaN allowed: LightGBM sends missing values down the side of each split that lowers the loss).
    Churners and stayers are rarely balanced; with ``balance_classes`` each churner of the training
    set weighs ``scale_pos_weight_`` = stayers / churners (LightGBM's ``scale_pos_weight``), so the
    trees look for churners as hard as for stayers. Boosting stops when the validation log loss (with
    the same class weights, so it measures what the training optimises) has not improved for
    ``early_stopping_rounds`` rounds; the trees after the best round are dropped.

    *Calibration*: the re-weighted booster's probabilities are not probabilities of churn (a churner
    weighed 4 times pulls them up); a monotone map fitted on the validation cutoff only turns them
    into calibrated ones (:mod:`training.churn.calibration`, which says why and how ``auto``
    chooses).

    *Learner* ``logistic_rfm`` (:data:`LEARNERS`): instead of the booster, a logistic regression on
    the standardised features (the RFM baseline's fit, served when it beats LightGBM on the
    validation cutoff). Everything else is the same: its log-odds go through the same calibration
    map, bands and percentiles; its reasons come from the exact decomposition of a linear model,
    coefficient x standardised value (the distance from the training mean in log-odds), worded the
    same way. It needs a number in every feature (no rule for a missing value).
    """

    # Fitted state (set by fit / from_dict): the booster is None for the logistic regression.
    booster_: lgb.Booster | None
    best_iteration_: int | None
    path_contributions_: PathContributions | None

    def __init__(
        self,
        n_estimators: int = 500,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 50,
        early_stopping_rounds: int = 50,
        calibration: str = AUTO_CALIBRATION,
        risk_thresholds: tuple[float, float] | None = None,
        top_reasons: int = DEFAULT_TOP_REASONS,
        balance_classes: bool = True,
        num_threads: int = 2,
        seed: int = 0,
        learner: str = LIGHTGBM,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.early_stopping_rounds = early_stopping_rounds
        self.calibration = calibration
        self.risk_thresholds = risk_thresholds
        self.top_reasons = top_reasons
        self.balance_classes = balance_classes
        self.num_threads = num_threads
        self.seed = seed
        self.learner = learner

    # --- fitting ----------------------------------------------------------------------------------

    def fit(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame,
        *,
        feature_names: Sequence[str],
        label: str = CHURNED,
        currency: str | None = None,
        horizon_days: int | None = None,
        lookback_days: int | None = None,
    ) -> ChurnModel:
        """Boost on ``train``, stop early and calibrate on ``valid`` (the cutoff after the training ones).

        ``feature_names``: the numeric columns to learn from (any subset and order; NaN allowed);
        ``label``: the 0/1 column; ``currency``: ISO code of the amounts, used in the reasons' words
        (None: bare numbers). Other columns (``customer_id``, ``cutoff``) are ignored.
        ``horizon_days`` / ``lookback_days``: the label horizon H and the population lookback of the
        data set, kept in the artefact (``horizon_days_``, ``lookback_days_``) so that every score
        says which horizon its probability is about and scoring draws the same population.

        :class:`ChurnInputError` names a missing column, a non-numeric feature, a label that is not
        0/1 or a frame without both classes; ``ValueError`` names a bad setting.
        """
        settings = self._checked_settings()
        windows = _check_windows({"horizon_days": horizon_days, "lookback_days": lookback_days}, ValueError)
        names = _check_feature_names(feature_names)
        if not isinstance(label, str) or label in names:
            raise ChurnInputError(f"label must be a column name other than the features, got {label!r}")
        if currency is not None and (not isinstance(currency, str) or not _CURRENCY.match(currency)):
            raise ValueError(f"currency must be an ISO 4217 code such as 'GBP' or None, got {currency!r}")
        x_train = _feature_matrix(train, names, "training frame")
        x_valid = _feature_matrix(valid, names, "validation frame")
        y_train = _labels(train, label, "training frame")
        y_valid = _labels(valid, label, "validation frame")

        self.learner_ = settings.learner
        if settings.learner == LOGISTIC_RFM:
            best, scale_pos_weight, gain = None, 1.0, self._fit_logistic(x_train, y_train, x_valid, names)
        else:
            booster, best, scale_pos_weight = _train_booster(settings, x_train, y_train, x_valid, y_valid, names)
            gain = booster.feature_importance(importance_type="gain", iteration=best)
            # Keep the trees up to the best round only, as the artefact does: the fitted and the reloaded
            # model are the same trees, and scoring needs no iteration argument.
            self.booster_ = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
            del booster
            if tuple(self.booster_.feature_name()) != names:
                raise ChurnInputError(f"LightGBM renamed the features {list(names)} to "
                                      f"{self.booster_.feature_name()}: use names without spaces")

        margin_valid = self._margin(x_valid)
        if settings.calibration == AUTO_CALIBRATION:
            self.calibration_errors_ = out_of_fold_calibration_errors(margin_valid, y_valid, seed=settings.seed)
            method = choose_calibration(self.calibration_errors_)
        else:
            self.calibration_errors_ = {}
            method = settings.calibration
        calibrator = fit_calibrator(method, margin_valid, y_valid)
        p_train = calibrator(self._margin(x_train))
        quantiles = np.quantile(p_train, np.linspace(0.0, 1.0, N_QUANTILES))
        if settings.risk_thresholds is None:
            low, high = np.percentile(p_train, DEFAULT_RISK_PERCENTILES)
            thresholds = (float(low), float(high))
        else:
            thresholds = settings.risk_thresholds

        self._set_fitted(
            settings,
            feature_names=names,
            label=label,
            best_iteration=None if best is None else int(best),
            calibrator=calibrator,
            risk_thresholds=thresholds,
            quantiles=quantiles,
            importance=pd.Series(gain, index=list(names), dtype="float64"),
            base_rate=float(y_train.mean()),
            validation_base_rate=float(y_valid.mean()),
            scale_pos_weight=float(scale_pos_weight),
            currency=currency,
            n_train=len(y_train),
            n_valid=len(y_valid),
        )
        self.horizon_days_, self.lookback_days_ = windows
        if settings.learner == LOGISTIC_RFM:
            logger.info("churn model (logistic regression on %s) fitted on %d rows (churn rate %.1f %%); %s "
                        "calibration on %d validation rows (setting %s); risk thresholds %.3f / %.3f",
                        ", ".join(names), len(y_train), 100 * self.base_rate_, calibrator.method, len(y_valid),
                        settings.calibration, *thresholds)
            return self
        logger.info(
            "churn model fitted on %d rows (churn rate %.1f %%), %d trees of at most %d (early stopping on %d "
            "validation rows, churn rate %.1f %%); %s calibration (setting %s); risk thresholds %.3f / %.3f",
            len(y_train), 100 * self.base_rate_, best, settings.n_estimators, len(y_valid),
            100 * self.validation_base_rate_, calibrator.method, settings.calibration, *thresholds,
        )
        return self

    def _fit_logistic(self, x_train: FloatArray, y_train: FloatArray, x_valid: FloatArray,
                      names: tuple[str, ...]) -> FloatArray:
        """Standardise on the training rows and fit the logistic regression there, exactly as the
        RFM baseline is fitted (``training.churn.evaluation.fit_baselines``); returns the importance
        (|coefficient| per standard deviation)."""
        from sklearn.preprocessing import StandardScaler

        _require_finite(x_train, names, "training frame")
        _require_finite(x_valid, names, "validation frame")
        scaler = StandardScaler().fit(x_train)
        # Default L2 penalty (C = 1) and no class weights, as the baseline: its probabilities are
        # those of the training churn rate, and the calibration map then follows the validation cutoff.
        logistic = LogisticRegression(max_iter=1000).fit(scaler.transform(x_train), y_train)
        self.booster_ = None
        self.feature_names_ = names
        self.coef_ = np.asarray(logistic.coef_[0], dtype=np.float64)
        self.intercept_ = float(logistic.intercept_[0])
        self.scaler_mean_ = np.asarray(scaler.mean_, dtype=np.float64)
        self.scaler_scale_ = np.asarray(scaler.scale_, dtype=np.float64)
        return np.abs(self.coef_)

    def _checked_settings(self) -> _Settings:
        return _check_settings({name: getattr(self, name) for name in (*_SETTINGS, "learner")})

    def _set_fitted(
        self, settings: _Settings, *, feature_names: tuple[str, ...], label: str, best_iteration: int | None,
        calibrator: Calibrator, risk_thresholds: tuple[float, float], quantiles: FloatArray, importance: pd.Series,
        base_rate: float, validation_base_rate: float, scale_pos_weight: float, currency: str | None, n_train: int,
        n_valid: int,
    ) -> None:
        self.settings_ = settings
        self.learner_ = settings.learner
        # Derived from the trees, never stored: the artefact holds the model text only.
        self.path_contributions_ = None if self.booster_ is None else PathContributions(self.booster_)
        self.feature_names_ = feature_names
        self.label_ = label
        self.best_iteration_ = best_iteration
        self.calibrator_ = calibrator
        self.risk_thresholds_ = risk_thresholds
        self.training_probabilities_quantiles_ = np.asarray(quantiles, dtype=np.float64)
        self.feature_importance_gain_ = importance.sort_values(ascending=False, kind="stable")
        self.feature_importance_gain_.index.name = "feature"
        self.feature_importance_gain_.name = "gain"
        self.base_rate_ = base_rate
        self.validation_base_rate_ = validation_base_rate
        self.scale_pos_weight_ = scale_pos_weight
        self.currency_ = currency
        self.n_train_ = n_train
        self.n_valid_ = n_valid

    def _check_fitted(self) -> None:
        check_is_fitted(self, ["learner_", "booster_", "calibrator_", "feature_names_",
                               "training_probabilities_quantiles_"])

    # --- scoring ----------------------------------------------------------------------------------

    def _threads(self) -> int:
        return int(self.num_threads) if _is_whole(self.num_threads, 1) else 1

    def _margin(self, x: FloatArray) -> FloatArray:
        """Raw log-odds of the booster (or of the logistic regression) for a feature matrix."""
        if x.shape[0] == 0:
            return np.empty(0)
        if self.learner_ == LOGISTIC_RFM:
            return self._standardised(x) @ self.coef_ + self.intercept_
        return np.asarray(self._booster().predict(x, raw_score=True, num_threads=self._threads()), dtype=np.float64)

    def _booster(self) -> lgb.Booster:
        if self.booster_ is None:
            raise ChurnModelError(f"this churn model is a {self.learner_} model: it has no LightGBM booster")
        return self.booster_

    def _best_iteration(self) -> int:
        self._booster()
        return int(self.best_iteration_ or 0)

    def raw_probability(self, frame: pd.DataFrame) -> FloatArray:
        """The booster's probability before calibration (shifted up by the class weights)."""
        self._check_fitted()
        return expit(self._margin(_feature_matrix(frame, self.feature_names_, "scored frame")))

    def predict_proba(self, frame: pd.DataFrame) -> FloatArray:
        """Calibrated churn probability of every row (a 1-d array, in the rows' order).

        Reads the columns ``feature_names_`` (in that order; others are ignored); a missing one is a
        :class:`ChurnInputError` naming it."""
        self._check_fitted()
        return self.calibrator_(self._margin(_feature_matrix(frame, self.feature_names_, "scored frame")))

    def feature_contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Each feature's contribution to each row's raw log-odds (path contributions,
        :class:`training.churn.contributions.PathContributions`), indexed like ``frame``; the column
        ``expected_value`` is the base value (the sum of the trees' root values), and a row's
        contributions and base value add up to its raw log-odds (to rounding). For the ``logistic_rfm``
        learner: coefficient x standardised value, and the intercept as the base value."""
        self._check_fitted()
        contributions = self._contributions(_feature_matrix(frame, self.feature_names_, "scored frame"))
        return pd.DataFrame(contributions, index=frame.index, columns=[*self.feature_names_, "expected_value"])

    def _contributions(self, x: FloatArray) -> FloatArray:
        return self._margin_and_contributions(x)[1]

    def _standardised(self, x: FloatArray) -> FloatArray:
        _require_finite(x, self.feature_names_, "scored frame")
        return (x - self.scaler_mean_) / self.scaler_scale_

    def _margin_and_contributions(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        if x.shape[0] == 0:
            return np.empty(0), np.empty((0, len(self.feature_names_) + 1))
        if self.learner_ == LOGISTIC_RFM:
            # A linear model's exact decomposition: coefficient x standardised value, i.e. the
            # feature's distance from its training mean in log-odds; the intercept is the base value.
            z = self._standardised(x)
            contributions = np.empty((x.shape[0], len(self.feature_names_) + 1))
            contributions[:, :-1] = z * self.coef_
            contributions[:, -1] = self.intercept_
            return z @ self.coef_ + self.intercept_, contributions
        paths = self.path_contributions_
        if paths is None:
            raise ChurnModelError(f"this churn model is a {self.learner_} model: it has no LightGBM booster")
        return paths.raw_score_and_contributions(x, num_threads=self._threads())

    def percentile(self, probability: FloatArray) -> FloatArray:
        """Percentile rank (0-100) of churn probabilities among the training rows' (stored quantiles)."""
        self._check_fitted()
        return _percentile_rank(np.asarray(probability, dtype=np.float64), self.training_probabilities_quantiles_)

    def risk_band(self, probability: FloatArray) -> pd.Categorical:
        """``low`` below the first threshold, ``high`` from the second, ``medium`` between."""
        self._check_fitted()
        medium, high = self.risk_thresholds_
        p = np.asarray(probability, dtype=np.float64)
        codes = np.where(p >= high, 2, np.where(p >= medium, 1, 0))
        return pd.Categorical.from_codes(codes, categories=list(RISK_BANDS), ordered=True)

    def predict(self, frame: pd.DataFrame, *, top_reasons: int | None = None) -> pd.DataFrame:
        """Every churn output for each row of ``frame``, indexed like it.

        Columns: ``churn_probability``, ``risk_band`` (ordered categorical low < medium < high),
        ``percentile`` (0-100, float), then ``reason_1`` .. ``reason_<k>`` with k = ``top_reasons``
        (default: the model's setting, 3; :data:`CHURN_OUTPUT_COLUMNS`): the features pushing this
        row's risk up the most, strongest first, in words; None where fewer features push it up.
        ``top_reasons=0`` leaves the reasons out and skips their cost. The reasons read related
        columns of ``frame`` when present (:data:`training.churn.reasons.CONTEXT_COLUMNS`, e.g. the
        usual days between orders next to the days since the last one).

        ``risk_band`` comes from two probability thresholds fixed at fit (given, or the 50th and 80th
        percentiles of the calibrated probabilities of the training rows); ``percentile`` is the
        share (0-100) of the training rows with a lower probability, read from 1001 quantiles stored
        at fit. Everything is computed row by row from the stored state, so one customer scored
        alone gets exactly the numbers and words batch scoring gives them. An isotonic map is a step
        function: many customers share a probability, so the default bands hold roughly, not
        exactly, 50 / 30 / 20 % of the training rows (a customer at a threshold is in the higher
        band).

        Reasons come from per-prediction path contributions (Saabas' decomposition,
        "treeinterpreter"; :mod:`training.churn.contributions`), in log-odds of the raw booster: in
        each tree, the change of the node value from a node to the child the customer's values take
        is credited to the node's split feature, so a customer's contributions plus the sum of the
        trees' root values are their raw log-odds. A tree's credits depend only on the leaf the
        customer reaches: they are tabulated per leaf from the trees themselves once after fit or
        load (not stored in the artefact), and scoring asks LightGBM for each customer's leaf in
        every tree (its C++ leaf prediction) and adds up the table rows (a sparse product, chunks of
        rows on ``num_threads`` threads). The same pass gives the raw log-odds, bit for bit those
        LightGBM predicts, so the probabilities with reasons are those without. TreeSHAP's sum over
        feature subsets (LightGBM's ``pred_contrib=True``, Lundberg et al. 2020) would cost about a
        hundred times more; path contributions cost little more than the prediction itself (the
        README's Performance section has the figures of ``benchmarks/churn.py``). Path contributions
        agree with TreeSHAP on the top reason for most customers, not all: a feature split near the
        root gets more of the credit than TreeSHAP gives it. The calibration map is increasing, so a
        feature that raises the raw log-odds raises the calibrated probability as well. Only
        positive contributions are reasons. Their sentences are written per feature for all
        customers at once, once per distinct case (:func:`training.churn.reasons.reason_texts`: many
        customers share "no order for 120 days (usually every 30)").

        Parameters
        ----------
        frame
            One row per customer with the model's ``feature_names_``; other columns are read only
            as the reasons' context.
        top_reasons
            Reasons per row; the model's ``top_reasons`` when None, 0 for none.

        Returns
        -------
        pandas.DataFrame
            The churn outputs, indexed like ``frame``.
        """
        self._check_fitted()
        k = self.top_reasons if top_reasons is None else top_reasons
        if not _is_whole(k, 0):
            raise ValueError(f"top_reasons must be a whole number >= 0, got {k!r}")
        k = min(int(k), len(self.feature_names_))
        x = _feature_matrix(frame, self.feature_names_, "scored frame")
        if k:
            # One pass of LightGBM's leaf prediction gives the raw log-odds (bit for bit those of
            # _margin) and the contributions the reasons rank.
            margin, contributions = self._margin_and_contributions(x)
        else:
            margin, contributions = self._margin(x), None
        probability = self.calibrator_(margin)
        columns: dict[str, Any] = {
            "churn_probability": probability,
            "risk_band": self.risk_band(probability),
            "percentile": self.percentile(probability),
        }
        if contributions is not None:
            reasons = self._reasons(frame, x, contributions, k)
            for i, name in enumerate(reason_columns(k)):
                # object dtype, None for "no further reason", whatever pandas would infer for strings
                # (pandas 3 infers its string dtype with NaN): the same dtype for one row and for many.
                columns[name] = pd.Series(reasons[:, i], index=frame.index, dtype=object)
        return pd.DataFrame(columns, index=frame.index)

    def _reasons(self, frame: pd.DataFrame, x: FloatArray, contributions: FloatArray, k: int) -> NDArray[np.object_]:
        """The k strongest positive contributions of each row, as sentences (None past the last one).

        ``contributions``: rows x (features, then anything else, such as the bias); overwritten."""
        n, n_features = x.shape[0], len(self.feature_names_)
        out = np.full((n, k), None, dtype=object)
        if n == 0:
            return out
        # The k largest per row, largest first, the first feature on ties (argmax takes the first of
        # equal values): the order of a stable sort of the negated values, without sorting all of them.
        # The columns past the features (the bias) are never taken; numpy's argmax is far faster over
        # whole contiguous rows than over a column slice.
        remaining = contributions
        remaining[:, n_features:] = -np.inf
        order = np.empty((n, k), dtype=np.intp)
        pushes_up = np.empty((n, k), dtype=bool)
        all_rows = np.arange(n)
        for j in range(k):
            order[:, j] = np.argmax(remaining, axis=1)
            pushes_up[:, j] = remaining[all_rows, order[:, j]] > 0
            remaining[all_rows, order[:, j]] = -np.inf
        values = {name: x[:, j] for j, name in enumerate(self.feature_names_)}
        for name in CONTEXT_COLUMNS:
            if name not in values and name in frame.columns:
                context = _numeric_or_none(frame[name])
                if context is not None:
                    values[name] = context
        # A later reason exists only after an earlier one (the values are in decreasing order).
        rows, ranks = np.nonzero(pushes_up)
        if rows.size == 0:
            return out
        features = order[rows, ranks]
        by_feature = np.argsort(features, kind="stable")
        starts = np.flatnonzero(np.diff(features[by_feature], prepend=-1))
        for group in np.split(by_feature, starts[1:]):
            name = self.feature_names_[features[group[0]]]
            out[rows[group], ranks[group]] = reason_texts(name, values, rows[group], currency=self.currency_,
                                                          horizon_days=getattr(self, "horizon_days_", None))
        return out

    # --- artefact ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as JSON-serialisable data: LightGBM's model text (or the regression's
        coefficients, intercept and scaler), the calibration map,
        features, thresholds, quantiles and settings (no training rows, no pickles)."""
        self._check_fitted()
        used = {name: getattr(self.settings_, name) for name in (*_SETTINGS, "learner")}
        # The fit's settings, with the scoring-only ones as the instance has them now (checked).
        settings = _check_settings({**used, **{name: getattr(self, name) for name in _SCORING_SETTINGS}})
        thresholds = settings.risk_thresholds
        return {
            "format": ARTEFACT_FORMAT,
            "format_version": ARTEFACT_VERSION,
            "settings": {
                "n_estimators": settings.n_estimators,
                "learning_rate": settings.learning_rate,
                "num_leaves": settings.num_leaves,
                "min_child_samples": settings.min_child_samples,
                "early_stopping_rounds": settings.early_stopping_rounds,
                "calibration": settings.calibration,
                "risk_thresholds": None if thresholds is None else list(thresholds),
                "top_reasons": settings.top_reasons,
                "balance_classes": settings.balance_classes,
                "num_threads": settings.num_threads,
                "seed": settings.seed,
                "learner": settings.learner,
            },
            "fitted": self._logistic_fitted() if settings.learner == LOGISTIC_RFM else {
                "feature_names": list(self.feature_names_),
                "label": self.label_,
                "booster": self._booster().model_to_string(),
                "best_iteration": self._best_iteration(),
                "calibrator": self.calibrator_.to_dict(),
                "risk_thresholds": {"medium": float(self.risk_thresholds_[0]), "high": float(self.risk_thresholds_[1])},
                "training_probabilities_quantiles": self.training_probabilities_quantiles_.tolist(),
                "feature_importance_gain": {str(k): float(v) for k, v in self.feature_importance_gain_.items()},
                "base_rate": float(self.base_rate_),
                "validation_base_rate": float(self.validation_base_rate_),
                "scale_pos_weight": float(self.scale_pos_weight_),
                "currency": self.currency_,
                "n_train": int(self.n_train_),
                "n_valid": int(self.n_valid_),
            },
            "windows": {"horizon_days": self.horizon_days_, "lookback_days": self.lookback_days_},
        }

    def _logistic_fitted(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names_),
            "label": self.label_,
            "coef": self.coef_.tolist(),
            "intercept": float(self.intercept_),
            "scaler_mean": self.scaler_mean_.tolist(),
            "scaler_scale": self.scaler_scale_.tolist(),
            "calibrator": self.calibrator_.to_dict(),
            "risk_thresholds": {"medium": float(self.risk_thresholds_[0]), "high": float(self.risk_thresholds_[1])},
            "training_probabilities_quantiles": self.training_probabilities_quantiles_.tolist(),
            "base_rate": float(self.base_rate_),
            "validation_base_rate": float(self.validation_base_rate_),
            "currency": self.currency_,
            "n_train": int(self.n_train_),
            "n_valid": int(self.n_valid_),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChurnModel:
        """Rebuild a fitted model from :meth:`to_dict` output; :class:`ChurnArtefactError` names what is wrong."""
        reader = ArtefactReader(data, what="churn model", format=ARTEFACT_FORMAT, version=ARTEFACT_VERSION,
                                error=ChurnArtefactError)
        settings_data = reader.section("settings", _SETTINGS)
        try:
            settings = _check_settings(settings_data)
        except ValueError as exc:
            raise ChurnArtefactError(f"churn model artefact settings: {exc}") from exc
        logistic = settings.learner == LOGISTIC_RFM
        fitted = reader.section("fitted", _LOGISTIC_FITTED if logistic else _FITTED)

        try:
            names = _check_feature_names(reader.field(fitted, "feature_names", list))
        except ChurnInputError as exc:
            raise ChurnArtefactError(f"churn model artefact: fitted.feature_names: {exc}") from exc
        label = reader.field(fitted, "label", str)
        if logistic:
            booster, best, linear = None, None, _linear_from_dict(fitted, names)
        else:
            booster = _booster_from_text(reader.field(fitted, "booster", str), names)
            best = reader.field(fitted, "best_iteration", int)
            if best != booster.current_iteration():
                raise ChurnArtefactError(f"churn model artefact: fitted.best_iteration {best} contradicts the "
                                         f"booster, which holds {booster.current_iteration()} trees")
        calibrator = calibrator_from_dict(fitted["calibrator"])
        if settings.calibration != AUTO_CALIBRATION and calibrator.method != settings.calibration:
            raise ChurnArtefactError(f"churn model artefact: fitted.calibrator method {calibrator.method!r} "
                                     f"contradicts settings.calibration {settings.calibration!r}")
        thresholds = reader.field(fitted, "risk_thresholds", Mapping)
        try:
            medium, high = (float(thresholds[key]) for key in ("medium", "high"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ChurnArtefactError("churn model artefact: fitted.risk_thresholds needs numbers 'medium' and "
                                     "'high'") from exc
        if not (0 <= medium <= high <= 1):
            raise ChurnArtefactError(f"churn model artefact: fitted.risk_thresholds must satisfy "
                                     f"0 <= medium <= high <= 1, got {medium!r}, {high!r}")
        if settings.risk_thresholds is not None and settings.risk_thresholds != (medium, high):
            raise ChurnArtefactError(f"churn model artefact: fitted.risk_thresholds ({medium!r}, {high!r}) contradict "
                                     f"settings.risk_thresholds {settings.risk_thresholds!r}")
        try:
            quantiles = np.asarray(reader.field(fitted, "training_probabilities_quantiles", list), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ChurnArtefactError("churn model artefact: fitted.training_probabilities_quantiles must be a "
                                     "list of numbers") from exc
        if (quantiles.ndim != 1 or quantiles.size < 2 or not np.all(np.isfinite(quantiles))
                or np.any(np.diff(quantiles) < 0) or quantiles[0] < 0 or quantiles[-1] > 1):
            raise ChurnArtefactError("churn model artefact: fitted.training_probabilities_quantiles must be at "
                                     "least 2 non-decreasing probabilities")
        if logistic:
            gains = dict(zip(names, np.abs(linear["coef"]).tolist()))
        else:
            gains = reader.field(fitted, "feature_importance_gain", Mapping)
            if set(gains) != set(names) or not all(is_finite_number(v) and v >= 0 for v in gains.values()):
                raise ChurnArtefactError("churn model artefact: fitted.feature_importance_gain must hold a gain >= 0 "
                                         "for every feature and nothing else")
        rates = {}
        for name in ("base_rate", "validation_base_rate"):
            value = fitted.get(name)
            if not (is_finite_number(value) and 0 < value < 1):
                raise ChurnArtefactError(f"churn model artefact: fitted.{name} must be a rate in (0, 1), "
                                         f"got {value!r}")
            rates[name] = float(value)
        scale_pos_weight = 1.0 if logistic else fitted["scale_pos_weight"]
        if not (is_finite_number(scale_pos_weight) and scale_pos_weight > 0):
            raise ChurnArtefactError(f"churn model artefact: fitted.scale_pos_weight must be a number > 0, "
                                     f"got {scale_pos_weight!r}")
        currency = fitted["currency"]
        if currency is not None and (not isinstance(currency, str) or not _CURRENCY.match(currency)):
            raise ChurnArtefactError(f"churn model artefact: fitted.currency must be an ISO 4217 code or null, "
                                     f"got {currency!r}")
        counts = {name: reader.field(fitted, name, int) for name in ("n_train", "n_valid")}
        if min(counts.values()) < 1:
            raise ChurnArtefactError(f"churn model artefact: row counts must be >= 1, got {counts}")

        model = cls(**{name: settings_data[name] for name in _SETTINGS}, learner=settings.learner)
        if model.risk_thresholds is not None:
            medium, high = model.risk_thresholds
            model.risk_thresholds = (medium, high)
        model.booster_ = booster
        if logistic:
            model.coef_, model.intercept_ = linear["coef"], float(linear["intercept"][0])
            model.scaler_mean_, model.scaler_scale_ = linear["scaler_mean"], linear["scaler_scale"]
        model._set_fitted(
            settings,
            feature_names=names,
            label=label,
            best_iteration=best,
            calibrator=calibrator,
            risk_thresholds=(medium, high),
            quantiles=quantiles,
            importance=pd.Series({name: float(gains[name]) for name in names}, dtype="float64"),
            base_rate=rates["base_rate"],
            validation_base_rate=rates["validation_base_rate"],
            scale_pos_weight=float(scale_pos_weight),
            currency=currency,
            n_train=counts["n_train"],
            n_valid=counts["n_valid"],
        )
        # Artefacts written before the windows travelled with the model have none: horizon unknown.
        model.horizon_days_, model.lookback_days_ = _check_windows(data.get("windows") or {}, ChurnArtefactError)
        model.calibration_errors_ = {}
        return model


# --- helpers ------------------------------------------------------------------------------------


def _linear_from_dict(fitted: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, FloatArray]:
    """The logistic learner's coefficients, intercept and scaler, checked: finite numbers, one per
    feature (the intercept alone), scales > 0."""
    out = {}
    for name, size in (("coef", len(names)), ("intercept", 1), ("scaler_mean", len(names)),
                       ("scaler_scale", len(names))):
        value = fitted[name]
        values = [value] if name == "intercept" else value
        if (not isinstance(values, list) or len(values) != size or not all(is_finite_number(v) for v in values)):
            expected = "a finite number" if name == "intercept" else f"a list of {size} finite numbers (one per feature)"
            raise ChurnArtefactError(f"churn model artefact: fitted.{name} must be {expected}, "
                                     f"got {type(value).__name__}" + (f" of {len(value)}" if isinstance(value, list) else ""))
        out[name] = np.asarray(values, dtype=np.float64)
    if np.any(out["scaler_scale"] <= 0):
        raise ChurnArtefactError("churn model artefact: fitted.scaler_scale must hold standard deviations > 0")
    return out


def _require_finite(x: FloatArray, names: Sequence[str], what: str) -> None:
    """The logistic learner has no rule for a missing value (LightGBM has one): name the features."""
    bad = ~np.isfinite(x)
    if bad.any():
        counts = ", ".join(f"{name} ({int(n)} rows)" for name, n in zip(names, bad.sum(axis=0)) if n)
        raise ChurnInputError(f"the logistic churn model needs a number in every feature; the {what} has "
                              f"missing or infinite values in {counts}")


def _check_windows(windows: Any, error: type[Exception]) -> tuple[int | None, int | None]:
    """(horizon_days, lookback_days): whole numbers of days >= 1, or None (not known)."""
    if not isinstance(windows, Mapping):
        raise error(f"churn model windows must be a mapping, got {type(windows).__name__}")
    out = []
    for name in ("horizon_days", "lookback_days"):
        value = windows.get(name)
        if value is not None and not _is_whole(value, 1):
            raise error(f"churn model windows.{name} must be a whole number of days >= 1 or null, got {value!r}")
        out.append(None if value is None else int(value))
    return out[0], out[1]


def _check_feature_names(feature_names: Any) -> tuple[str, ...]:
    if isinstance(feature_names, str) or not isinstance(feature_names, Sequence):
        raise ChurnInputError(f"feature_names must be a sequence of column names, got {feature_names!r}")
    names = tuple(feature_names)
    if not names:
        raise ChurnInputError("feature_names is empty: the model needs at least one feature")
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ChurnInputError(f"feature names must be non-empty strings, got {bad!r}")
    special = [n for n in names if _LIGHTGBM_SPECIAL.search(n)]
    if special:
        raise ChurnInputError(f"LightGBM cannot store feature names with JSON special characters: {special!r}")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ChurnInputError(f"feature names must be unique; repeated: {', '.join(duplicated)}")
    return names


def _feature_matrix(frame: pd.DataFrame, names: Sequence[str], what: str) -> FloatArray:
    """The feature columns as a C-contiguous float64 matrix (rows x features); NaN for missing values."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"the {what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise ChurnInputError(
            f"the {what} lacks {len(missing)} churn feature column(s): {', '.join(missing)} "
            f"(the model reads {', '.join(names)})"
        )
    x = np.empty((len(frame), len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        column = _numeric_or_none(frame[name])
        if column is None:
            values = frame[name]
            bad = values[pd.to_numeric(values, errors="coerce").isna() & values.notna()]
            raise ChurnInputError(
                f"churn feature {name!r} of the {what} must be numeric; {len(bad)} value(s) are not, "
                f"e.g. {bad.iloc[0]!r}" if len(bad) else f"churn feature {name!r} of the {what} must be numeric, "
                f"got dtype {values.dtype}"
            )
        x[:, j] = column
    return x


def _numeric_or_none(values: pd.Series) -> FloatArray | None:
    """A column as float64 (missing values as NaN), or None when it holds something else than numbers."""
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    if pd.api.types.is_object_dtype(dtype):
        converted = pd.to_numeric(values, errors="coerce")
        if bool((converted.isna() & values.notna()).any()):
            return None
        return converted.to_numpy(dtype=np.float64, na_value=np.nan)
    return None


def _labels(frame: pd.DataFrame, label: str, what: str) -> FloatArray:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"the {what} must be a pandas DataFrame, got {type(frame).__name__}")
    if label not in frame.columns:
        raise ChurnInputError(f"the {what} has no label column {label!r}")
    y = _numeric_or_none(frame[label])
    if y is None or not np.all(np.isin(y, (0.0, 1.0))):
        values = frame[label]
        bad = values[~pd.to_numeric(values, errors="coerce").isin((0, 1))]
        raise ChurnInputError(f"label {label!r} of the {what} must be 0 or 1; {len(bad)} value(s) are not, "
                              f"e.g. {bad.iloc[0]!r}")
    if len(y) == 0 or y.min() == y.max():
        raise ChurnInputError(
            f"the {what} needs churners and non-churners; it has {len(y)} rows, {int(y.sum())} with "
            f"{label} = 1"
        )
    return y


def _percentile_rank(p: FloatArray, quantiles: FloatArray) -> FloatArray:
    """Percentile (0-100) of each p in the distribution described by equally spaced quantiles.

    Between two distinct quantiles the level is interpolated linearly; a p equal to a run of tied
    quantiles (a plateau of the isotonic map holds many customers) gets the middle of the run; below
    the minimum 0, above the maximum 100. Each p is ranked on its own: one customer scored alone gets
    the batch value."""
    n = quantiles.shape[0]
    left = np.searchsorted(quantiles, p, side="left")
    right = np.searchsorted(quantiles, p, side="right")
    tied = right > left
    below = np.clip(left - 1, 0, n - 1)
    above = np.clip(left, 0, n - 1)
    gap = quantiles[above] - quantiles[below]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = below + np.where(gap > 0, (p - quantiles[below]) / gap, 0.0)
    level = np.where(tied, (left + right - 1) / 2.0, between)
    level = np.where(~tied & (left == 0), 0.0, level)
    level = np.where(~tied & (left == n), n - 1.0, level)
    return np.clip(100.0 * level / (n - 1), 0.0, 100.0)


def _booster_from_text(text: str, names: tuple[str, ...]) -> lgb.Booster:
    header = text.split("\nTree=", 1)[0]
    if not re.search(r"^objective=binary\b", header, flags=re.MULTILINE):
        raise ChurnArtefactError("churn model artefact: fitted.booster is not a LightGBM binary classifier")
    try:
        booster = lgb.Booster(model_str=text)
    except lgb.basic.LightGBMError as exc:
        raise ChurnArtefactError(f"churn model artefact: fitted.booster is not a LightGBM model: {exc}") from exc
    if tuple(booster.feature_name()) != names:
        raise ChurnArtefactError(
            f"churn model artefact: the booster's features {booster.feature_name()} contradict "
            f"fitted.feature_names {list(names)}"
        )
    return booster


