"""Calibration maps of the churn model: from the booster's (or the regression's) raw log-odds to a
probability of churn that means what it says.

Isotonic regression, isotonic interpolated between its plateau centres (keeps the ranking) and
Platt's sigmoid; ``auto`` chooses among them by out-of-fold ECE on the validation cutoff.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from training.churn.errors import ChurnArtefactError

FloatArray = NDArray[np.float64]

#: Calibration maps: isotonic regression, isotonic interpolated between its plateau centres, and
#: Platt's sigmoid (scikit-learn's name for it).
CALIBRATIONS: tuple[str, ...] = ("isotonic", "interpolated", "sigmoid")
#: The ``calibration`` setting that chooses among :data:`CALIBRATIONS` on the validation cutoff.
AUTO_CALIBRATION = "auto"
#: Maps that keep the booster's ranking (strictly increasing), in the order ``auto`` prefers on a tie.
RANK_PRESERVING_CALIBRATIONS: tuple[str, ...] = ("interpolated", "sigmoid")
#: ``auto`` takes a ranking-preserving map whose out-of-fold ECE exceeds isotonic's by at most this.
CALIBRATION_TOLERANCE = 0.005
#: Folds of the validation rows for the out-of-fold ECE of ``auto``.
CALIBRATION_FOLDS = 5


def is_finite_number(value: Any) -> TypeGuard[float]:
    """A finite int or float (numpy's included), not a bool.

    Parameters
    ----------
    value
        Any value (an artefact's field).

    Returns
    -------
    bool
        True for a finite number; False for a bool, NaN, an infinity or anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return False
    return math.isfinite(float(value))


@dataclass(frozen=True)
class IsotonicCalibrator:
    """Isotonic regression of the label on the raw probability: the piecewise-linear map through
    (``x``, ``y``) (scikit-learn's ``X_thresholds_`` / ``y_thresholds_``), constant beyond the ends."""

    x: FloatArray
    y: FloatArray
    method: str = "isotonic"

    @classmethod
    def fit(cls, raw_probability: FloatArray, label: FloatArray) -> IsotonicCalibrator:
        """Fit scikit-learn's isotonic regression (increasing, in [0, 1], clipped beyond the ends).

        Parameters
        ----------
        raw_probability
            The booster's raw probability of churn, ``expit`` of its log-odds, per validation row.
        label
            1 for a churner, 0 for a stayer, per row.

        Returns
        -------
        IsotonicCalibrator
            The map through the regression's thresholds.
        """
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(raw_probability, label)
        return cls(np.asarray(iso.X_thresholds_, dtype=np.float64), np.asarray(iso.y_thresholds_, dtype=np.float64))

    def __call__(self, margin: FloatArray) -> FloatArray:
        return np.interp(expit(margin), self.x, self.y)

    def to_dict(self) -> dict[str, Any]:
        """The map as an artefact stores it (:func:`calibrator_from_dict` reads it back).

        Returns
        -------
        dict[str, Any]
            ``method``, ``x`` and ``y`` (lists of floats).
        """
        return {"method": self.method, "x": self.x.tolist(), "y": self.y.tolist()}


@dataclass(frozen=True)
class SigmoidCalibrator:
    """Platt scaling: P(churn) = 1 / (1 + exp(-(slope * m + intercept))) of the raw log-odds m
    (Platt 1999; a logistic regression of the label on m without penalty)."""

    slope: float
    intercept: float
    method: str = "sigmoid"

    @classmethod
    def fit(cls, margin: FloatArray, label: FloatArray) -> SigmoidCalibrator:
        """Fit the slope and intercept by an unpenalised logistic regression.

        Parameters
        ----------
        margin
            The raw log-odds per validation row.
        label
            1 for a churner, 0 for a stayer, per row.

        Returns
        -------
        SigmoidCalibrator
            The fitted map.
        """
        logistic = LogisticRegression(C=np.inf, max_iter=1000).fit(margin[:, None], label)
        return cls(float(logistic.coef_[0, 0]), float(logistic.intercept_[0]))

    def __call__(self, margin: FloatArray) -> FloatArray:
        return expit(self.slope * margin + self.intercept)

    def to_dict(self) -> dict[str, Any]:
        """The map as an artefact stores it (:func:`calibrator_from_dict` reads it back).

        Returns
        -------
        dict[str, Any]
            ``method``, ``slope`` and ``intercept``.
        """
        return {"method": self.method, "slope": self.slope, "intercept": self.intercept}


@dataclass(frozen=True)
class InterpolatedIsotonicCalibrator(IsotonicCalibrator):
    """Isotonic regression without its plateaus: the piecewise-linear map through the centre of each
    plateau (the midpoint of its raw-probability range, at its level), anchored at (0, 0) and (1, 1).
    Strictly increasing, so customers the booster tells apart stay apart; a plateau's mean level is
    kept at its centre, so calibration is about that of the step function."""

    method: str = "interpolated"

    @classmethod
    def fit(cls, raw_probability: FloatArray, label: FloatArray) -> InterpolatedIsotonicCalibrator:
        """Fit the isotonic regression, then keep one point per plateau, at its centre.

        Parameters
        ----------
        raw_probability
            The booster's raw probability of churn, ``expit`` of its log-odds, per validation row.
        label
            1 for a churner, 0 for a stayer, per row.

        Returns
        -------
        InterpolatedIsotonicCalibrator
            The map through (0, 0), the centres of the plateaus strictly inside the unit square, and (1, 1).
        """
        steps = IsotonicCalibrator.fit(raw_probability, label)
        # sklearn's thresholds run through both ends of every plateau: group them by level.
        levels, first = np.unique(steps.y, return_index=True)
        last = np.append(first[1:], steps.x.size) - 1
        centres = (steps.x[first] + steps.x[last]) / 2.0
        inside = (centres > 0.0) & (centres < 1.0) & (levels > 0.0) & (levels < 1.0)
        x = np.concatenate(([0.0], centres[inside], [1.0]))
        y = np.concatenate(([0.0], levels[inside], [1.0]))
        return cls(x, y)


Calibrator = IsotonicCalibrator | SigmoidCalibrator

#: The isotonic maps by name (the sigmoid is fitted and stored another way).
_ISOTONIC_CLASSES: dict[str, type[IsotonicCalibrator]] = {
    "isotonic": IsotonicCalibrator, "interpolated": InterpolatedIsotonicCalibrator,
}


def fit_calibrator(method: str, margin: FloatArray, label: FloatArray) -> Calibrator:
    """The calibration map ``method`` (one of :data:`CALIBRATIONS`) of the label on the raw log-odds.

    Parameters
    ----------
    method
        ``isotonic``, ``interpolated`` or ``sigmoid``.
    margin
        The raw log-odds per validation row.
    label
        1 for a churner, 0 for a stayer, per row.

    Returns
    -------
    IsotonicCalibrator or SigmoidCalibrator
        The fitted map; calling it on log-odds gives probabilities of churn.

    Raises
    ------
    KeyError
        ``method`` is not one of :data:`CALIBRATIONS`.
    """
    if method == "sigmoid":
        return SigmoidCalibrator.fit(margin, label)
    return _ISOTONIC_CLASSES[method].fit(expit(margin), label)


def out_of_fold_calibration_errors(margin: FloatArray, label: FloatArray, *, seed: int,
                                   folds: int = CALIBRATION_FOLDS) -> dict[str, float]:
    """Each map's expected calibration error on the validation rows, out of fold: the rows are
    split into ``folds`` stratified folds (seeded), each map fitted on the other folds scores each
    one, and the ECE (10 quantile bins, ``evaluation.expected_calibration_error``) is taken over
    the pooled out-of-fold probabilities. Fewer churners or stayers than folds: one fit on all rows.

    Parameters
    ----------
    margin
        The raw log-odds per validation row.
    label
        1 for a churner, 0 for a stayer, per row.
    seed
        Seed of the fold split.
    folds
        Number of stratified folds.

    Returns
    -------
    dict[str, float]
        Out-of-fold ECE by map, for every map of :data:`CALIBRATIONS`.
    """
    # Imported here, at fit time: the evaluation module fits the baselines, and the service, which
    # imports this module to score, must not load code that fits models.
    from training.churn.evaluation import expected_calibration_error

    n_minority = int(min(label.sum(), label.size - label.sum()))
    out = {method: np.empty(label.size) for method in CALIBRATIONS}
    if n_minority < folds:
        splits = [(np.arange(label.size), np.arange(label.size))]
    else:
        splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(margin[:, None], label))
    for fit_rows, score_rows in splits:
        for method in CALIBRATIONS:
            out[method][score_rows] = fit_calibrator(method, margin[fit_rows], label[fit_rows])(margin[score_rows])
    return {method: expected_calibration_error(label, np.clip(p, 0.0, 1.0)) for method, p in out.items()}


def choose_calibration(errors: Mapping[str, float], tolerance: float = CALIBRATION_TOLERANCE) -> str:
    """The ranking-preserving map with the lowest ECE when it is within ``tolerance`` of isotonic's,
    else isotonic.

    Why: the re-weighted booster's probabilities are not probabilities of churn (a churner
    weighed 4 times pulls them up). A monotone map fitted on the validation cutoff only turns them
    into calibrated ones: isotonic regression on the raw probability (``"isotonic"``), the same with
    linear interpolation between the centres of its plateaus (``"interpolated"``), or Platt's sigmoid
    on the raw log-odds (``"sigmoid"``). Isotonic regression is a step function: it puts thousands
    of customers on one probability (ties that hide their order from whoever sorts by risk); the
    other two are strictly increasing and keep every distinction the booster makes. ``"auto"``
    (default) measures each map's expected calibration error out of fold on the validation cutoff
    (:data:`CALIBRATION_FOLDS` folds: fitted on the others, scored on each) and takes the better of
    the two that keep the ranking unless it is worse than isotonic by more than
    :data:`CALIBRATION_TOLERANCE` in ECE. Calibrating on the set that also chose the number of trees
    is deliberate: that set picked one integer, so the map's optimism from it is small, and the
    training rows, which the trees have seen, would bias the map far more. Being monotone, every map
    keeps the booster's ROC AUC (isotonic's ties can only lower it).

    Parameters
    ----------
    errors:
        Out-of-fold ECE by map (:func:`out_of_fold_calibration_errors`).
    tolerance:
        How much worse than isotonic's ECE a ranking-preserving map may be and still be chosen.

    Returns
    -------
    The chosen map's name, one of :data:`CALIBRATIONS`.
    """
    best = min(RANK_PRESERVING_CALIBRATIONS, key=lambda method: (errors[method], RANK_PRESERVING_CALIBRATIONS.index(method)))
    return best if errors[best] <= errors["isotonic"] + tolerance else "isotonic"


def calibrator_from_dict(data: Any) -> Calibrator:
    """The calibration map of a churn artefact's ``fitted.calibrator``; :class:`ChurnArtefactError`
    names what is wrong.

    Parameters
    ----------
    data
        What :meth:`IsotonicCalibrator.to_dict` or :meth:`SigmoidCalibrator.to_dict` wrote.

    Returns
    -------
    IsotonicCalibrator or SigmoidCalibrator
        The map, of the class its ``method`` names.

    Raises
    ------
    ChurnArtefactError
        ``data`` is not a mapping, names no known method, or its points or coefficients are missing,
        not finite, decreasing, of unequal length or outside [0, 1].
    """
    if not isinstance(data, Mapping):
        raise ChurnArtefactError(f"churn model artefact: fitted.calibrator must be a mapping, got {data!r}")
    method = data.get("method")
    if method in ("isotonic", "interpolated"):
        try:
            x = np.asarray(data["x"], dtype=np.float64)
            y = np.asarray(data["y"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ChurnArtefactError("churn model artefact: fitted.calibrator needs number lists 'x' and 'y'") from exc
        if x.ndim != 1 or x.shape != y.shape or x.size == 0:
            raise ChurnArtefactError(f"churn model artefact: fitted.calibrator x and y must be non-empty lists of "
                                     f"equal length, got {x.size} and {y.size}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ChurnArtefactError("churn model artefact: fitted.calibrator x and y must be finite")
        if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
            raise ChurnArtefactError("churn model artefact: fitted.calibrator x and y must be non-decreasing")
        if x[0] < 0 or x[-1] > 1 or y[0] < 0 or y[-1] > 1:
            raise ChurnArtefactError("churn model artefact: fitted.calibrator x and y must lie in [0, 1]")
        return _ISOTONIC_CLASSES[method](x, y)
    if method == "sigmoid":
        slope, intercept = data.get("slope"), data.get("intercept")
        if not (is_finite_number(slope) and is_finite_number(intercept)):
            raise ChurnArtefactError(f"churn model artefact: fitted.calibrator needs finite numbers 'slope' and "
                                     f"'intercept', got {slope!r} and {intercept!r}")
        return SigmoidCalibrator(float(slope), float(intercept))
    raise ChurnArtefactError(f"churn model artefact: fitted.calibrator method {method!r} is not one of "
                             f"{', '.join(CALIBRATIONS)}")
