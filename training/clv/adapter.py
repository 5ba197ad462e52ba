"""The one module that imports ``lifetimes``: fitting the purchase and spend models, and their
predictions from fitted parameters alone.

Keeping lifetimes behind this one adapter means a move to another library touches one file. The
likelihoods are lifetimes'; the loop around the optimiser is ours (compression, warm starts,
convergence checks with :class:`ClvFitError`, the covariance from the Hessian: see
:func:`fit_purchase_model`). Predictions are closed forms from the parameters alone, vectorised
over numpy arrays that broadcast like lifetimes' arguments, each citing the equation it implements.
Durations are in the unit of the inputs (so are the fitted rate parameters); amounts in their currency.
"""

from __future__ import annotations

import logging
import math
import types
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import autograd.numpy as anp
import numpy as np
from autograd import grad, value_and_grad  # lifetimes' differentiation library
from autograd.scipy.special import gammaln
from lifetimes import BetaGeoFitter, GammaGammaFitter, ModifiedBetaGeoFitter, ParetoNBDFitter
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import OptimizeResult, minimize
from scipy.special import expit, hyp2f1

from features.errors import RapportError

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]

#: Purchase (transaction) models, as ``kind`` names them.
PURCHASE_MODELS: tuple[str, ...] = ("bgnbd", "mbgnbd", "paretonbd")
#: The spend model.
SPEND_MODEL = "gammagamma"
#: A fitted parameter (on the optimiser's scale, durations divided by the longest T) outside this
#: range has run off towards 0 or infinity: the likelihood has no interior maximum in that direction.
PARAMETER_RANGE: tuple[float, float] = (1e-6, 1e6)
#: Largest condition number of the Hessian (of the mean negative log-likelihood in log-parameters)
#: that still counts as non-singular; well-identified fits are below 1e5.
MAX_HESSIAN_CONDITION = 1e10
#: BFGS stops when every component of the gradient of the mean negative log-likelihood per customer
#: is below this.
GRADIENT_TOLERANCE = 1e-9
#: BFGS may stop with "precision loss" when the gradient cannot shrink further in floating point; that
#: counts as converged when the gradient is at most this (it does at a proper optimum, e.g. CDNOW).
PRECISION_LOSS_GRADIENT = 1e-5
#: The limit is accepted when twice the log-likelihood gained by the failed full fit is at most the
#: 95 % point of chi-squared with 2 degrees of freedom (the two drop-out parameters).
NO_DROPOUT_LR_CRITICAL = 5.991
#: Start of the optimiser in log-parameters (lifetimes' start: every parameter e^0.1).
_START = 0.1
#: Steps in log-parameters of the finite differences: the Hessian (differences of gradients) and the
#: gradient of the Pareto/NBD likelihood (differences of values).
_HESSIAN_STEP = 1e-4
_GRADIENT_STEP = 1e-5
#: Above this many (compressed) rows BFGS first runs on a seeded subsample of this many rows, then on
#: all rows from the subsample's optimum with the subsample's inverse Hessian as its initial inverse
#: Hessian: a handful of full-data iterations instead of a few dozen. The estimate is the full-data
#: optimum either way.
WARM_START_ROWS = 50_000
_WARM_START_SEED = 20_050_101


class ClvFitError(RapportError, RuntimeError):
    """A CLV model could not be fitted: the optimiser did not converge, or it converged to the
    boundary of the parameter space (a parameter running to 0 or infinity, non-finite values, a
    singular Hessian). ``kind`` is the model, ``reason`` what went wrong and ``optimiser_message``
    scipy's message for the last attempt (all ``None`` when raised with a message only)."""

    def __init__(
        self, message: str, *, kind: str | None = None, reason: str | None = None,
        optimiser_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason
        self.optimiser_message = optimiser_message


@dataclass(frozen=True)
class FittedParams:
    """Fitted parameters of one model and what the fit left behind.

    ``values`` and ``covariance`` (from the inverse Hessian of the log-likelihood: the asymptotic
    covariance of the maximum-likelihood estimate) are in the order of ``names``; the rate
    parameters are per unit of the durations the model was fitted on. ``log_likelihood`` is the
    total over customers, without the penalty, in the durations' unit (on CDNOW in weeks it is
    comparable with the -9582.4 of Fader, Hardie & Lee 2005). ``penalizer`` is the one the accepted
    fit used; ``retried`` says whether that was the retry after a failed fit. ``n_rows`` is the
    number of distinct rows the likelihood was evaluated on after compression. ``fixed`` names the
    parameters held at :data:`NO_DROPOUT` instead of estimated (their covariance is 0): the model's
    no-drop-out limit, the NBD, accepted when the data do not reject it.
    """

    kind: str
    names: tuple[str, ...]
    values: tuple[float, ...]
    covariance: tuple[tuple[float, ...], ...]
    log_likelihood: float
    penalizer: float
    retried: bool
    message: str
    n_customers: int
    n_rows: int
    fixed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in PARAMETER_NAMES:
            raise ValueError(f"kind must be one of {tuple(PARAMETER_NAMES)}, got {self.kind!r}")
        expected = PARAMETER_NAMES[self.kind]
        if tuple(self.names) != expected:
            raise ValueError(f"{self.kind} parameters must be named {expected}, got {tuple(self.names)}")
        k = len(expected)
        if len(self.values) != k or not all(math.isfinite(v) and v > 0 for v in self.values):
            raise ValueError(f"{self.kind} needs {k} finite positive parameter values, got {tuple(self.values)}")
        if len(self.covariance) != k or any(len(row) != k for row in self.covariance):
            raise ValueError(f"{self.kind} covariance must be {k} x {k}")
        if not all(math.isfinite(c) for row in self.covariance for c in row):
            raise ValueError(f"{self.kind} covariance must be finite")
        if not set(self.fixed) <= set(expected):
            raise ValueError(f"{self.kind} fixed parameters must be among {expected}, got {tuple(self.fixed)}")

    @property
    def without_dropout(self) -> bool:
        """The purchase model was fitted in its no-drop-out limit (:data:`NO_DROPOUT`): the NBD.

        Returns
        -------
        bool
            ``True`` when a parameter was held fixed.
        """
        return bool(self.fixed)

    @property
    def label(self) -> str:
        """The model as tables, tags and messages name it: the kind, and its NBD limit when fitted so.

        Returns
        -------
        str
            ``"bgnbd"``, or ``"bgnbd without drop-out (NBD)"``.
        """
        return f"{self.kind} without drop-out (NBD)" if self.fixed else self.kind

    def as_dict(self) -> dict[str, float]:
        """Parameter values by name.

        Returns
        -------
        dict[str, float]
            Name -> value, in the order of ``names``.
        """
        return dict(zip(self.names, self.values))

    def standard_errors(self) -> dict[str, float]:
        """Standard errors by name: square roots of the covariance diagonal.

        Returns
        -------
        dict[str, float]
            Name -> standard error (0 for a fixed parameter).
        """
        return {name: math.sqrt(max(self.covariance[i][i], 0.0)) for i, name in enumerate(self.names)}

    def covariance_matrix(self) -> FloatArray:
        """The covariance as an array.

        Returns
        -------
        numpy.ndarray
            float64 (k, k), in the order of ``names``.
        """
        return np.array(self.covariance, dtype=np.float64)

    def with_values(self, values: ArrayLike) -> FittedParams:
        """The same fit with other parameter values (for sensitivities: finite differences).

        Parameters
        ----------
        values
            k positive values, in the order of ``names``.

        Returns
        -------
        FittedParams
            A copy with ``values`` replaced.

        Raises
        ------
        ValueError
            A value that is not finite and positive, or the wrong number of values.
        """
        return FittedParams(
            self.kind, self.names, tuple(float(v) for v in np.asarray(values, dtype=np.float64)), self.covariance,
            self.log_likelihood, self.penalizer, self.retried, self.message, self.n_customers, self.n_rows,
            self.fixed,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: lists, floats, ints, strings and a bool.

        Returns
        -------
        dict[str, Any]
            Every field by name, read back by :meth:`from_dict`.
        """
        return {
            "kind": self.kind,
            "names": list(self.names),
            "values": [float(v) for v in self.values],
            "covariance": [[float(c) for c in row] for row in self.covariance],
            "log_likelihood": float(self.log_likelihood),
            "penalizer": float(self.penalizer),
            "retried": bool(self.retried),
            "message": str(self.message),
            "n_customers": int(self.n_customers),
            "n_rows": int(self.n_rows),
            "fixed": list(self.fixed),
        }

    @classmethod
    def from_dict(cls, data: Any) -> FittedParams:
        """Inverse of :meth:`to_dict`.

        Parameters
        ----------
        data
            A mapping as written by :meth:`to_dict` (``fixed`` may be absent in older artefacts).

        Returns
        -------
        FittedParams
            The fit, validated.

        Raises
        ------
        ValueError
            ``data`` is no mapping, or a field is missing or malformed (the message names it).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"fitted parameters must be a mapping, got {type(data).__name__}")
        missing = [name for name in _FIELDS if name not in data]
        if missing:
            raise ValueError(f"fitted parameters lack field(s) {', '.join(missing)}")
        try:
            return cls(
                kind=_typed(data, "kind", str),
                names=tuple(_typed(n, "names", str) for n in _typed(data, "names", list)),
                values=tuple(_number(v, "values") for v in _typed(data, "values", list)),
                covariance=tuple(
                    tuple(_number(c, "covariance") for c in _typed(row, "covariance", list))
                    for row in _typed(data, "covariance", list)
                ),
                log_likelihood=_number(data["log_likelihood"], "log_likelihood"),
                penalizer=_number(data["penalizer"], "penalizer"),
                retried=_typed(data, "retried", bool),
                message=_typed(data, "message", str),
                n_customers=_typed(data, "n_customers", int),
                n_rows=_typed(data, "n_rows", int),
                # Artefacts written before the no-drop-out limit existed have no such field.
                fixed=tuple(_typed(n, "fixed", str) for n in _typed(data, "fixed", list)) if "fixed" in data else (),
            )
        except TypeError as exc:
            raise ValueError(str(exc)) from exc


_FIELDS = ("kind", "names", "values", "covariance", "log_likelihood", "penalizer", "retried", "message",
           "n_customers", "n_rows")


def _typed(data: Any, field: str, kind: type) -> Any:
    value = data[field] if isinstance(data, Mapping) else data
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"field {field!r} must be {kind.__name__}, got {type(value).__name__}: {value!r}")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"field {field!r} must hold numbers, got {type(value).__name__}: {value!r}")
    return float(value)


# --- Compression --------------------------------------------------------------------------------


def unique_rows(*columns: ArrayLike) -> tuple[tuple[FloatArray, ...], NDArray[np.intp], NDArray[np.int64]]:
    """Distinct rows of equally long columns: ``(unique columns, inverse, counts)``.

    ``unique[j][inverse]`` gives back column ``j``; ``counts`` is how many rows each distinct row
    stands for. Rows are sorted by the first column, then the second, ... (one lexsort).

    Parameters
    ----------
    *columns
        Equally long 1-d columns (read as float64).

    Returns
    -------
    tuple
        ``(unique columns, inverse, counts)``: a float64 array per column, intp of the input's
        length, int64 of the number of distinct rows.

    Raises
    ------
    ValueError
        Columns of different lengths.
    """
    arrays = [np.asarray(c, dtype=np.float64).ravel() for c in columns]
    n = arrays[0].shape[0] if arrays else 0
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"columns must be equally long, got lengths {[a.shape[0] for a in arrays]}")
    if n == 0:
        return tuple(np.empty(0) for _ in arrays), np.empty(0, dtype=np.intp), np.empty(0, dtype=np.int64)
    order = np.lexsort(arrays[::-1])
    ordered = [a[order] for a in arrays]
    new = np.zeros(n, dtype=bool)
    new[0] = True
    for a in ordered:
        new[1:] |= a[1:] != a[:-1]
    starts = np.flatnonzero(new)
    inverse = np.empty(n, dtype=np.intp)
    inverse[order] = np.cumsum(new) - 1
    counts = np.diff(np.append(starts, n)).astype(np.int64)
    return tuple(a[starts] for a in ordered), inverse, counts


# --- Fitting ------------------------------------------------------------------------------------


def _pareto_nbd_negative_log_likelihood(
    log_params: FloatArray, frequency: FloatArray, recency: FloatArray, T: FloatArray, weights: FloatArray,
    penalizer: float,
) -> float:
    # lifetimes' ParetoNBDFitter works on the parameters themselves and divides by the mean weight;
    # here it is put on the footing of the others: log-parameters, mean per customer.
    params = np.exp(log_params)
    ll = ParetoNBDFitter._conditional_log_likelihood(params, frequency, recency, T)  # note 009, eq. (18)
    return float(-(weights * ll).sum() / weights.sum() + penalizer * (params**2).sum())


@dataclass(frozen=True)
class _Likelihood:
    """Mean negative log-likelihood per customer plus penalty, as a function of
    ``(log_params, *data, weights, penalizer)``."""

    function: Callable[..., Any]
    time_parameters: tuple[int, ...]  # indices of the parameters measured per unit of time
    differentiable: bool  # autograd can differentiate it




@contextmanager
def _quiet() -> Iterator[None]:
    """The optimiser explores regions where the likelihood overflows; lifetimes' likelihoods also
    reset warning filters on every call. Keep both inside the fit."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


@dataclass(frozen=True)
class _Attempt:
    penalizer: float
    result: OptimizeResult
    reason: str | None  # None: accepted
    log_params: FloatArray  # on the optimiser's scale
    hessian: FloatArray | None

    @property
    def optimiser_message(self) -> str:
        return f"{self.result.message} ({int(self.result.get('nit', 0))} iterations)"


def _minimise(likelihood: _Likelihood, args: tuple[Any, ...], k: int) -> OptimizeResult:
    """Minimise the likelihood over log-parameters with BFGS; ``args`` = (*data, weights, penalizer)."""
    x0 = np.full(k, _START)
    objective, gradient = _objective(likelihood)
    options: dict[str, Any] = {}
    n_rows = args[0].shape[0]
    if n_rows > WARM_START_ROWS:
        rng = np.random.default_rng(_WARM_START_SEED)
        rows = np.sort(rng.choice(n_rows, size=WARM_START_ROWS, replace=False))
        sample = (*(a[rows] for a in args[:-1]), args[-1])
        warm = minimize(objective, x0, jac=True, args=sample, method="BFGS", tol=GRADIENT_TOLERANCE)
        if np.all(np.isfinite(warm.x)):
            h = _hessian_from_gradient(gradient, warm.x, sample, _HESSIAN_STEP)
            if _hessian_problem(h) is None:
                inverse = np.linalg.inv(h)
                x0, options["hess_inv0"] = warm.x, (inverse + inverse.T) / 2
    return minimize(objective, x0, jac=True, args=args, method="BFGS", tol=GRADIENT_TOLERANCE, options=options)


def _objective(likelihood: _Likelihood) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(value and gradient, gradient) of the likelihood: autograd's exact gradient, or central
    differences (step :data:`_GRADIENT_STEP`) for the likelihood autograd cannot differentiate."""
    if likelihood.differentiable:
        return value_and_grad(likelihood.function), grad(likelihood.function)

    def gradient(x: FloatArray, *args: Any) -> FloatArray:
        g = np.empty_like(x)
        for i in range(x.shape[0]):
            e = np.zeros_like(x)
            e[i] = _GRADIENT_STEP
            g[i] = (likelihood.function(x + e, *args) - likelihood.function(x - e, *args)) / (2 * _GRADIENT_STEP)
        return g

    def value_and_gradient(x: FloatArray, *args: Any) -> tuple[float, FloatArray]:
        return likelihood.function(x, *args), gradient(x, *args)

    return value_and_gradient, gradient


def _hessian_from_gradient(
    gradient: Callable[..., Any], x: FloatArray, args: tuple[Any, ...], step: float
) -> FloatArray:
    """Central differences of the exact (autograd) gradient, symmetrised: 2k gradient evaluations,
    a fraction of the cost of autograd's nested-derivative Hessian on large data."""
    k = x.shape[0]
    h = np.empty((k, k))
    for i in range(k):
        e = np.zeros(k)
        e[i] = step
        h[:, i] = (np.asarray(gradient(x + e, *args)) - np.asarray(gradient(x - e, *args))) / (2 * step)
    return (h + h.T) / 2


def _problem(result: OptimizeResult, names: tuple[str, ...]) -> str | None:
    """Why the optimiser's result is not an acceptable interior optimum, or None."""
    if not result.success:
        gradient = np.asarray(result.get("jac", np.full(len(names), np.inf)), dtype=np.float64)
        precision_loss = result.status == 2
        if not (precision_loss and np.all(np.abs(gradient) <= PRECISION_LOSS_GRADIENT)):
            return "the optimiser did not converge"
    if not (np.isfinite(result.fun) and np.all(np.isfinite(result.x))):
        return "the optimum is not finite"
    low, high = PARAMETER_RANGE
    for name, value in zip(names, np.exp(result.x)):
        if not low < value < high:
            side = "0" if value <= low else "infinity"
            return (f"parameter {name} ran off towards {side} ({value:.3g} on the optimiser's scale, outside "
                    f"{low:g}..{high:g}): the data do not pin it down")
    return None


def _hessian_problem(h: FloatArray) -> str | None:
    if not np.all(np.isfinite(h)):
        return "the Hessian is not finite"
    eigenvalues = np.linalg.eigvalsh((h + h.T) / 2)
    if eigenvalues[0] <= 0 or eigenvalues[-1] / eigenvalues[0] > MAX_HESSIAN_CONDITION:
        return (f"the Hessian is singular (eigenvalues {eigenvalues[0]:.3g} .. {eigenvalues[-1]:.3g}): "
                "some parameter is not identified by the data")
    return None


def _attempt(likelihood: _Likelihood, names: tuple[str, ...], args: tuple[Any, ...], penalizer: float) -> _Attempt:
    full_args = (*args, penalizer)
    with _quiet():
        result = _minimise(likelihood, full_args, len(names))
        reason = _problem(result, names)
        h = None
        if reason is None:
            h = _hessian_from_gradient(_objective(likelihood)[1], result.x, full_args, _HESSIAN_STEP)
            reason = _hessian_problem(h)
    return _Attempt(penalizer, result, reason, np.asarray(result.x, dtype=np.float64), h)


def _nbd_negative_log_likelihood(
    log_params: Any, frequency: FloatArray, recency: FloatArray, T: FloatArray, weights: FloatArray, penalizer: float,
) -> Any:
    """The no-drop-out limit shared by the three purchase models: x purchases in (0, T] at a rate
    lambda ~ Gamma(r, alpha), likelihood Gamma(r + x) / Gamma(r) alpha^r / (alpha + T)^(r + x) (the
    BG/NBD likelihood of Fader, Hardie & Lee 2005a eq. (6) at p = 0). Recency does not enter."""
    params = anp.exp(log_params)
    r, alpha = params[0], params[1]
    ll = gammaln(r + frequency) - gammaln(r) + r * anp.log(alpha) - (r + frequency) * anp.log(alpha + T)
    return -(weights * ll).sum() / weights.sum() + penalizer * (params**2).sum()


_NBD = _Likelihood(_nbd_negative_log_likelihood, (1,), True)


def _fit(
    kind: str, data: tuple[FloatArray, ...], weights: FloatArray, scale: float, n_customers: int,
    penalizer: float, retry_penalizer: float | None, check: Callable[[dict[str, float]], str | None] | None = None,
) -> FittedParams:
    """Fit ``kind`` on (scaled) ``data`` with the retry policy; ``data`` are in the caller's units.

    A purchase model whose full fit fails is then fitted in its no-drop-out limit
    (:data:`NO_DROPOUT`), accepted when the failed fit's likelihood is not significantly higher
    (:data:`NO_DROPOUT_LR_CRITICAL`): the data then show no drop-out to estimate, as in a history
    that starts at a cut (every old customer looks new, nobody is visibly gone yet).
    """
    if not penalizer >= 0:
        raise ValueError(f"penalizer must be >= 0, got {penalizer!r}")
    form = _FORMS[kind]
    likelihood, names = form.likelihood, form.parameter_names
    scaled = _scaled(kind, data, scale)
    k = len(names)

    def run(pen: float, fixed: Mapping[int, float]) -> tuple[_Attempt, FloatArray | None]:
        free = [i for i in range(k) if i not in fixed]
        attempt = _attempt(_NBD if fixed else likelihood, tuple(names[i] for i in free), (*scaled, weights), pen)
        if attempt.reason is not None:
            return attempt, None
        values = np.empty(k)
        values[free] = np.exp(attempt.log_params)
        for i, value in fixed.items():
            values[i] = value
        values[list(likelihood.time_parameters)] /= scale
        if check is not None:
            problem = check(dict(zip(names, values)))
            if problem is not None:
                return _Attempt(pen, attempt.result, problem, attempt.log_params, attempt.hessian), None
        return attempt, values

    first, values = run(penalizer, {})
    attempts = [first]
    if values is None and retry_penalizer is not None and retry_penalizer > penalizer:
        logger.warning("%s fit failed (%s; %s); retrying with penalizer %g", kind, first.reason,
                       first.optimiser_message, retry_penalizer)
        second, values = run(retry_penalizer, {})
        attempts.append(second)
    fixed: dict[int, float] = {}
    if values is None and form.no_dropout:
        fixed = {names.index(name): value for name, value in form.no_dropout.items()}
        limit, values = run(penalizer, fixed)
        if values is not None:
            # Likelihood-ratio test of the limit against the best point the failed fits reached, both
            # without the penalty; a failed fit with no finite likelihood is no evidence against it.
            with _quiet():
                reached = [float(likelihood.function(a.log_params, *scaled, weights, 0.0)) for a in attempts
                           if np.all(np.isfinite(a.log_params))]
                own = float(_NBD.function(limit.log_params, *scaled, weights, 0.0))
            reached = [v for v in reached if math.isfinite(v)]
            statistic = 2 * float(weights.sum()) * (own - min(reached)) if reached else 0.0
            if not statistic <= NO_DROPOUT_LR_CRITICAL:
                limit = _Attempt(penalizer, limit.result,
                                 f"the data reject no drop-out (likelihood-ratio statistic {statistic:.3g} above "
                                 f"{NO_DROPOUT_LR_CRITICAL:g})", limit.log_params, None)
                values = None
        attempts.append(limit)
    accepted = attempts[-1]
    if values is None:
        detail = "; ".join(
            f"{'without drop-out' if a is attempts[-1] and fixed else f'with penalizer {a.penalizer:g}'}: "
            f"{a.reason} (optimiser: {a.optimiser_message})" for a in attempts
        )
        reason = f"{first.reason}; without drop-out: {accepted.reason}" if fixed else first.reason
        raise ClvFitError(f"{kind} fit failed {detail}", kind=kind, reason=reason,
                          optimiser_message=accepted.optimiser_message)

    assert accepted.hessian is not None
    # Var(log theta) = H^-1 / N (H: Hessian of the mean per customer); theta = exp(log theta), so
    # Cov(theta) = D Var(log theta) D with D = diag(theta) (delta method). Rescaling time shifts
    # log alpha by a constant, which leaves Var(log theta) unchanged. Fixed parameters have none.
    total = float(weights.sum())
    free = [i for i in range(k) if i not in fixed]
    log_covariance = np.zeros((k, k))
    log_covariance[np.ix_(free, free)] = np.linalg.inv((accepted.hessian + accepted.hessian.T) / 2) / total
    covariance = log_covariance * np.outer(values, values)
    with _quiet():
        mean_nll = (_NBD.function(np.log(values[free]), *data, weights, 0.0) if fixed
                    else likelihood.function(np.log(values), *data, weights, 0.0))
    message = accepted.optimiser_message
    if fixed:
        message += (f"; without drop-out (NBD: {', '.join(f'{names[i]}={fixed[i]:g}' for i in fixed)} fixed on the "
                    f"optimiser's scale) after: {first.reason}")
    elif len(attempts) > 1:
        message += f"; retried with penalizer {accepted.penalizer:g} after: {first.reason}"
    params = FittedParams(
        kind=kind, names=names, values=tuple(float(v) for v in values),
        covariance=tuple(tuple(float(c) for c in row) for row in covariance),
        log_likelihood=-float(mean_nll) * total, penalizer=float(accepted.penalizer),
        retried=len(attempts) > 1 and not fixed, message=message, n_customers=n_customers,
        n_rows=int(weights.shape[0]), fixed=tuple(names[i] for i in sorted(fixed)),
    )
    logger.info("%s fitted on %d customers (%d distinct rows): %s, log-likelihood %.1f", params.label, n_customers,
                params.n_rows, ", ".join(f"{k}={v:.4g}" for k, v in params.as_dict().items()),
                params.log_likelihood)
    return params


def _scaled(kind: str, data: tuple[FloatArray, ...], scale: float) -> tuple[FloatArray, ...]:
    if kind == SPEND_MODEL:
        return data
    frequency, recency, T = data
    return frequency, recency * scale, T * scale


def _columns(*columns: ArrayLike, names: tuple[str, ...]) -> tuple[FloatArray, ...]:
    arrays = tuple(np.asarray(c, dtype=np.float64).ravel() for c in columns)
    lengths = {a.shape[0] for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"{', '.join(names)} must be equally long, got lengths {[a.shape[0] for a in arrays]}")
    for name, a in zip(names, arrays):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite numbers")
    if arrays[0].shape[0] == 0:
        raise ValueError("cannot fit a model on no customers")
    return arrays


def fit_purchase_model(
    kind: str,
    frequency: ArrayLike,
    recency: ArrayLike,
    T: ArrayLike,
    *,
    penalizer: float = 0.0,
    retry_penalizer: float | None = 0.001,
    compress: bool = True,
) -> FittedParams:
    """Fit a purchase model (``"bgnbd"``, ``"mbgnbd"`` or ``"paretonbd"``) by maximum likelihood.

    ``frequency``/``recency``/``T`` follow the lifetimes convention (validate them first with
    ``features.customer.validate_rfm``); the fitted alpha (and beta) are per unit of their durations.
    With ``compress`` customers with identical (frequency, recency, T) are fitted as one weighted
    row. A fit that does not converge or lands on the boundary is retried once with
    ``retry_penalizer`` (when larger than ``penalizer``; ``None``: never), then fitted in its
    no-drop-out limit (the NBD, accepted when a likelihood-ratio test does not reject it), before
    :class:`ClvFitError` is raised; the returned parameters record the retry or the limit (``fixed``).

    The likelihoods are lifetimes' (``BetaGeoFitter``, ``ModifiedBetaGeoFitter``,
    ``ParetoNBDFitter``), minimised the way lifetimes' BG/NBD fitter minimises them: in
    log-parameters from lifetimes' start, durations divided by the longest ``T``, the mean negative
    log-likelihood per customer plus ``penalizer * sum(params ** 2)``, BFGS with autograd's gradient
    (central differences for Pareto/NBD, whose likelihood autograd cannot differentiate; lifetimes
    uses Nelder-Mead there, which needs hundreds of evaluations). The loop around the optimiser is
    ours so that it can

    - fit on compressed sufficient statistics: customers with identical (frequency, recency, T) are
      one row weighted by their count (lifetimes' ``weights=``): the same likelihood on far fewer
      rows;
    - on large data, start from the optimum of a seeded subsample (:data:`WARM_START_ROWS`);
    - check convergence and fail with :class:`ClvFitError` naming the model, the reason and the
      optimiser's message (lifetimes prints the optimiser's result and raises a generic error, or,
      for Pareto/NBD, does not check at all), retrying once with a small penalizer first;
    - compute the covariance of the parameters from the Hessian (lifetimes' own
      ``variance_matrix_`` scales the off-diagonal terms by one parameter instead of two, and
      Pareto/NBD has none).

    Parameters
    ----------
    kind
        ``"bgnbd"``, ``"mbgnbd"`` or ``"paretonbd"``.
    frequency, recency, T
        Repeat purchases, time from first to last purchase, time from first purchase to the end of
        calibration, one per customer, in one time unit.
    penalizer
        L2 penalty on the parameters (>= 0).
    retry_penalizer
        Penalty of the one retry; ``None``: no retry.
    compress
        Fit distinct (frequency, recency, T) rows weighted by their counts.

    Returns
    -------
    FittedParams
        Values, covariance, log-likelihood and what the fit did.

    Raises
    ------
    ClvFitError
        No accepted fit (the message names the model, the reason and the optimiser's message).
    ValueError
        An unknown ``kind``, inputs of different lengths or not finite, no customer, or ``T``
        negative (or 0 for everybody).
    """
    if kind not in PURCHASE_MODELS:
        raise ValueError(f"kind must be one of {PURCHASE_MODELS}, got {kind!r}")
    f, r, t = _columns(frequency, recency, T, names=("frequency", "recency", "T"))
    if not (np.all(t >= 0) and t.max() > 0):
        raise ValueError("T must be >= 0 for every customer and > 0 for some (durations since the first purchase)")
    n = f.shape[0]
    if compress:
        (f, r, t), _, counts = unique_rows(f, r, t)
        weights = counts.astype(np.float64)
    else:
        weights = np.ones(n)
    # lifetimes' time scaling (utils._scale_time): the longest T becomes 1.
    return _fit(kind, (f, r, t), weights, 1.0 / float(t.max()), n, penalizer, retry_penalizer)


def fit_spend_model(
    frequency: ArrayLike,
    monetary_value: ArrayLike,
    *,
    penalizer: float = 0.0,
    retry_penalizer: float | None = 0.001,
) -> FittedParams:
    """Fit the Gamma-Gamma spend model (Fader & Hardie 2013) by maximum likelihood.

    Give it the repeat customers only (``frequency`` > 0) with a positive ``monetary_value`` (their
    mean spend per repeat period): the model is a density on positive averages of ``frequency``
    transactions. Customers with identical (frequency, monetary_value) are fitted as one weighted
    row. The likelihood is lifetimes' ``GammaGammaFitter``'s, minimised as in
    :func:`fit_purchase_model` (without the time scaling). Fails like :func:`fit_purchase_model`,
    and also when q <= 1 (an infinite mean order value).

    Parameters
    ----------
    frequency
        Repeat purchases (> 0), one per customer.
    monetary_value
        The customer's mean spend per repeat period (> 0), in the data's currency.
    penalizer, retry_penalizer
        As in :func:`fit_purchase_model`.

    Returns
    -------
    FittedParams
        ``kind`` ``"gammagamma"``: p, q, v.

    Raises
    ------
    ClvFitError
        No accepted fit, or q <= 1.
    ValueError
        A customer with ``frequency`` 0 or ``monetary_value`` <= 0, or inputs of different lengths.
    """
    f, m = _columns(frequency, monetary_value, names=("frequency", "monetary_value"))
    if not np.all(f > 0):
        raise ValueError(f"the Gamma-Gamma model is fitted on repeat customers only: {int((f <= 0).sum())} "
                         "customer(s) have frequency 0")
    if not np.all(m > 0):
        raise ValueError(f"the Gamma-Gamma model needs a positive monetary_value: {int((m <= 0).sum())} "
                         "customer(s) have monetary_value <= 0")
    n = f.shape[0]
    (f, m), _, counts = unique_rows(f, m)

    def finite_mean(values: dict[str, float]) -> str | None:
        if values["q"] <= 1:
            return f"q = {values['q']:.3g} <= 1: the population mean order value p*v/(q-1) is not finite"
        return None

    return _fit(SPEND_MODEL, (f, m), counts.astype(np.float64), 1.0, n, penalizer, retry_penalizer,
                check=finite_mean)


# --- Predictions from parameters ----------------------------------------------------------------


def _require(params: FittedParams, kinds: tuple[str, ...]) -> None:
    if params.kind not in kinds:
        raise ValueError(f"expected parameters of {' or '.join(kinds)}, got {params.kind!r}")


def _as_float(*values: ArrayLike) -> tuple[FloatArray, ...]:
    return tuple(np.asarray(v, dtype=np.float64) for v in values)


# --- the purchase models ----------------------------------------------------------------------------
#
# One class per purchase model with the same methods (as PyMC-Marketing's ``clv/models/``): the
# closed forms in which the models differ. What they share stays in the module functions below: the
# argument checks, the NBD limit of a fit without drop-out, and the Gamma(r + x, alpha + T) posterior
# of the purchase rate of a customer alive at T.


class ModelForm:
    """What fitting a model needs: its name, its parameters' names (as lifetimes names them; ``v``
    is the papers' gamma), its likelihood and, for a purchase model, its no-drop-out limit."""

    #: The model's name in artefacts, settings and tables.
    kind: str = ""
    parameter_names: tuple[str, ...] = ()
    likelihood: _Likelihood
    #: The no-drop-out limit on the optimiser's scale (durations divided by the longest T): a
    #: drop-out probability p ~ Beta(a, b) of mean 1e-6 per purchase (BG/NBD, MBG/NBD), a drop-out
    #: rate mu ~ Gamma(s, beta) of mean 1e-6 per longest T (Pareto/NBD). There each reduces to the
    #: NBD (Ehrenberg 1959): Poisson purchases with Gamma(r, alpha) rates, nobody leaving. A fit that
    #: runs to a bound (a or s towards 0) is a fit heading to this limit. Empty: none (Gamma-Gamma).
    no_dropout: Mapping[str, float] = types.MappingProxyType({})


class _GammaGamma(ModelForm):
    # Fader & Hardie (2013), "The Gamma-Gamma Model of Monetary Value", eq. (1a) summed over customers.
    kind = SPEND_MODEL
    parameter_names = ("p", "q", "v")
    likelihood = _Likelihood(GammaGammaFitter._negative_log_likelihood, (), True)


class PurchaseModel(ModelForm, ABC):
    """The closed forms of one purchase model, on a fit's parameter ``values`` (in the order of
    ``parameter_names``) and float arrays x = frequency, t_x = recency, T, t that broadcast
    together. A subclass declares its form (:class:`ModelForm`) and implements the private methods;
    errors of floating point (0 / 0 at a boundary) are left to the caller's ``np.errstate``."""

    def probability_alive(self, values: tuple[float, ...], x: FloatArray, tx: FloatArray,
                          t_age: FloatArray) -> FloatArray:
        """P(alive at T | x, t_x, T).

        Parameters
        ----------
        values
            The fit's parameter values.
        x, tx, t_age
            Frequency, recency and T, in the fit's time unit.

        Returns
        -------
        numpy.ndarray
            float64 in [0, 1], of the broadcast shape.
        """
        return self._probability_alive(values, x, tx, t_age)

    def expected_given_alive(self, values: tuple[float, ...], t: FloatArray, x: FloatArray,
                             t_age: FloatArray) -> FloatArray:
        """E[X(t) | alive at T, x, T]: expected repeat purchases in (T, T + t].

        Parameters
        ----------
        values
            The fit's parameter values.
        t, x, t_age
            The window's length, frequency and T, in the fit's time unit.

        Returns
        -------
        numpy.ndarray
            float64 >= 0, of the broadcast shape.
        """
        return self._expected_given_alive(values, t, x, t_age)

    def alive_at_acquisition(self, values: tuple[float, ...]) -> float | None:
        """P(alive) of a customer at their first purchase, where the model makes it less than 1.

        Parameters
        ----------
        values
            The fit's parameter values.

        Returns
        -------
        float or None
            The probability; None where it is 1 (BG/NBD, Pareto/NBD).
        """
        return self._alive_at_acquisition(values)

    @abstractmethod
    def _probability_alive(self, values: tuple[float, ...], x: FloatArray, tx: FloatArray,
                           t_age: FloatArray) -> FloatArray:
        """The model's P(alive) (see :meth:`probability_alive`)."""

    @abstractmethod
    def _expected_given_alive(self, values: tuple[float, ...], t: FloatArray, x: FloatArray,
                              t_age: FloatArray) -> FloatArray:
        """The model's expected purchases of a customer alive (see :meth:`expected_given_alive`)."""

    def _alive_at_acquisition(self, values: tuple[float, ...]) -> float | None:
        return None


class BGNBD(PurchaseModel):
    """BG/NBD (Fader, Hardie & Lee 2005a): a customer may drop out after each repeat purchase."""

    kind = "bgnbd"
    parameter_names = ("r", "alpha", "a", "b")
    # Fader, Hardie & Lee (2005a), eq. (6), in the log form of their section 7.
    likelihood = _Likelihood(BetaGeoFitter._negative_log_likelihood, (1,), True)
    no_dropout = types.MappingProxyType({"a": 1e-3, "b": 1e3})

    def _probability_alive(self, values: tuple[float, ...], x: FloatArray, tx: FloatArray,
                           t_age: FloatArray) -> FloatArray:
        r, alpha, a, b = values
        log_ratio = (r + x) * (np.log(alpha + t_age) - np.log(alpha + tx))
        return self._alive(a, b, x, log_ratio)

    def _alive(self, a: float, b: float, x: FloatArray, log_ratio: FloatArray) -> FloatArray:
        # 1 for x = 0: drop-out happens only after a repeat purchase.
        log_odds = np.log(a) - np.log(b + np.maximum(x, 1.0) - 1.0) + log_ratio
        return np.where(x > 0, expit(-log_odds), 1.0)

    def _hypergeometric(self, r: float, a: float, b: float,
                        x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """The arguments a', b', c' of the 2F1 of the conditional expectation, and its lead factor."""
        return r + x, b + x, a + b + x - 1, (a + b + x - 1) / (a - 1)

    def _expected_given_alive(self, values: tuple[float, ...], t: FloatArray, x: FloatArray,
                              t_age: FloatArray) -> FloatArray:
        r, alpha, a, b = values
        z = t / (alpha + t_age + t)
        a_, b_, c_, lead = self._hypergeometric(r, a, b, x)
        tail = _survival_times_hyp2f1(r + x, z, a_, b_, c_, c_ - a_, c_ - b_)
        return lead * (1.0 - tail)


class MBGNBD(BGNBD):
    """MBG/NBD (Batislam, Denizel & Filiztekin 2007): BG/NBD with a drop-out chance at the first
    purchase too, so a customer without repeat purchases can be gone."""

    kind = "mbgnbd"
    # Batislam, Denizel & Filiztekin (2007): the BG/NBD with a drop-out chance at time 0 as well.
    likelihood = _Likelihood(ModifiedBetaGeoFitter._negative_log_likelihood, (1,), True)

    def _alive(self, a: float, b: float, x: FloatArray, log_ratio: FloatArray) -> FloatArray:
        return expit(-(np.log(a) - np.log(b + x) + log_ratio))

    def _hypergeometric(self, r: float, a: float, b: float,
                        x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        return r + x, b + x + 1, a + b + x, (a + b + x) / (a - 1)

    def _alive_at_acquisition(self, values: tuple[float, ...]) -> float | None:
        _, _, a, b = values
        return b / (a + b)


class ParetoNBD(PurchaseModel):
    """Pareto/NBD (Schmittlein, Morrison & Colombo 1987; Fader, Hardie & Lee 2005, note 009): an
    exponential lifetime with a Gamma-distributed drop-out rate."""

    kind = "paretonbd"
    parameter_names = ("r", "alpha", "s", "beta")
    # Fader, Hardie & Lee (2005), "A Note on Deriving the Pareto/NBD Model", eq. (18)-(20).
    likelihood = _Likelihood(_pareto_nbd_negative_log_likelihood, (1, 3), False)
    no_dropout = types.MappingProxyType({"s": 1e-3, "beta": 1e3})

    def _probability_alive(self, values: tuple[float, ...], x: FloatArray, tx: FloatArray,
                           t_age: FloatArray) -> FloatArray:
        r, alpha, s, beta = values
        x, tx, t_age = np.broadcast_arrays(x, tx, t_age)
        shape = x.shape
        x, tx, t_age = (np.ravel(v) for v in (x, tx, t_age))
        log_a0 = ParetoNBDFitter._log_A_0([r, alpha, s, beta], x, tx, t_age)
        log_odds = (np.log(s) - np.log(r + s + x) + (r + x) * np.log(alpha + t_age) + s * np.log(beta + t_age)
                    + log_a0)
        return np.asarray(expit(-log_odds), dtype=np.float64).reshape(shape)

    def _expected_given_alive(self, values: tuple[float, ...], t: FloatArray, x: FloatArray,
                              t_age: FloatArray) -> FloatArray:
        r, alpha, s, beta = values
        u = np.log1p(t / (beta + t_age))  # log((beta + T + t) / (beta + T))
        growth = u if abs(s - 1) < 1e-12 else -np.expm1(-(s - 1) * u) / (s - 1)
        return (r + x) * (beta + t_age) / (alpha + t_age) * growth


#: The purchase models by ``kind``, in the order :data:`PURCHASE_MODELS` lists them.
PURCHASE_MODEL_CLASSES: dict[str, PurchaseModel] = {model.kind: model for model in (BGNBD(), MBGNBD(), ParetoNBD())}
_FORMS: dict[str, ModelForm] = {**PURCHASE_MODEL_CLASSES, SPEND_MODEL: _GammaGamma()}
#: Parameter names of each model by ``kind`` (read from the models' forms).
PARAMETER_NAMES: dict[str, tuple[str, ...]] = {kind: form.parameter_names for kind, form in _FORMS.items()}
#: The no-drop-out limit of each purchase model by ``kind`` (:attr:`ModelForm.no_dropout`).
NO_DROPOUT: dict[str, dict[str, float]] = {kind: dict(m.no_dropout) for kind, m in PURCHASE_MODEL_CLASSES.items()}


def purchase_model(kind: str) -> PurchaseModel:
    """The purchase model named ``kind``.

    Parameters
    ----------
    kind
        One of :data:`PURCHASE_MODELS`.

    Returns
    -------
    PurchaseModel
        Its closed forms.

    Raises
    ------
    ValueError
        ``kind`` is not a purchase model's name.
    """
    try:
        return PURCHASE_MODEL_CLASSES[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {PURCHASE_MODELS}, got {kind!r}") from None


def probability_alive(params: FittedParams, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> FloatArray:
    """P(alive at T | x = frequency, t_x = recency, T).

    - BG/NBD: 1 / (1 + [x > 0] a / (b + x - 1) ((alpha + T) / (alpha + t_x))^(r + x)), the reciprocal
      of the denominator of Fader, Hardie & Lee (2005a) eq. (10) (their note "Computing P(alive)
      using the BG/NBD model"); 1 for x = 0, since drop-out happens only after a repeat purchase.
    - MBG/NBD: the same without [x > 0] and with b + x (Batislam et al. 2007, appendix A, eq. (5)).
    - Pareto/NBD: 1 / (1 + s / (r + s + x) (alpha + T)^(r + x) (beta + T)^s A_0) (Fader, Hardie &
      Lee 2005, note 009, eq. (36)-(37), with A_0 of eq. (19)-(20)).
    - Any of them fitted in the no-drop-out limit (``params.fixed``): 1.

    Parameters
    ----------
    params
        A purchase model's fit.
    frequency, recency, T
        x, t_x and T in the fit's time unit (array-likes that broadcast together).

    Returns
    -------
    numpy.ndarray
        float64 in [0, 1], of the broadcast shape.

    Raises
    ------
    ValueError
        ``params`` is not a purchase model's.
    """
    _require(params, PURCHASE_MODELS)
    x, tx, t_age = _as_float(frequency, recency, T)
    if params.without_dropout:  # the NBD: nobody leaves
        return np.ones(np.broadcast_shapes(x.shape, tx.shape, t_age.shape))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return purchase_model(params.kind).probability_alive(params.values, x, tx, t_age)


def _survival_times_hyp2f1(
    power: FloatArray, z: FloatArray, a_: FloatArray, b_: FloatArray, c_: FloatArray, euler_a: FloatArray,
    euler_b: FloatArray,
) -> FloatArray:
    """(1 - z)^power * 2F1(a_, b_; c_; z), falling back on Euler's transformation
    2F1(a, b; c; z) = (1 - z)^(c - a - b) 2F1(c - a, c - b; c; z) where the direct value overflows
    (z near 1); ``euler_a``/``euler_b`` are c - a and c - b."""
    log_1mz = np.log1p(-z)
    direct = np.exp(power * log_1mz) * hyp2f1(a_, b_, c_, z)
    bad = ~np.isfinite(direct)
    if np.any(bad):
        alt = np.exp((power + c_ - a_ - b_) * log_1mz) * hyp2f1(euler_a, euler_b, c_, z)
        direct = np.where(bad, alt, direct)
    return direct


def expected_purchases_given_alive(
    params: FittedParams, t: ArrayLike, frequency: ArrayLike, T: ArrayLike
) -> FloatArray:
    """E[X(t) | alive at T, x = frequency, T]: expected repeat purchases in (T, T + t] of a customer
    known to be alive at T. Does not depend on recency.

    - BG/NBD: (a + b + x - 1) / (a - 1) [1 - ((alpha + T) / (alpha + T + t))^(r + x)
      2F1(r + x, b + x; a + b + x - 1; t / (alpha + T + t))], the numerator of Fader, Hardie & Lee
      (2005a) eq. (10).
    - MBG/NBD: (a + b + x) / (a - 1) [1 - (...)^(r + x) 2F1(r + x, b + x + 1; a + b + x; ...)]
      (Batislam et al. 2007; Wagner & Hoppe 2008).
    - Pareto/NBD: (r + x)(beta + T) / ((alpha + T)(s - 1)) [1 - ((beta + T) / (beta + T + t))^(s - 1)]
      (note 009, eq. (41) without its P(alive) factor; the limit (r + x)/(alpha + T) (beta + T)
      log((beta + T + t) / (beta + T)) at s = 1).
    - Any of them in the no-drop-out limit, the NBD: (r + x) t / (alpha + T).

    The conditional expectation of every purchase model factors as P(alive | x, t_x, T) times this,
    and this does not depend on recency, so callers evaluate the expensive hypergeometric part once
    per distinct (frequency, T) pair.

    Parameters
    ----------
    params
        A purchase model's fit.
    t
        Length of the prediction window, in the fit's time unit.
    frequency, T
        x and T (array-likes that broadcast with ``t``).

    Returns
    -------
    numpy.ndarray
        float64 >= 0, of the broadcast shape.

    Raises
    ------
    ValueError
        ``params`` is not a purchase model's.
    """
    _require(params, PURCHASE_MODELS)
    t_, x, t_age = _as_float(t, frequency, T)
    if params.without_dropout:  # the NBD: the posterior mean rate (r + x) / (alpha + T) times t
        r, alpha = params.values[0], params.values[1]
        return (r + x) * t_ / (alpha + t_age)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return purchase_model(params.kind).expected_given_alive(params.values, t_, x, t_age)


def expected_purchases(
    params: FittedParams, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
) -> FloatArray:
    """E[X(t) | x, t_x, T]: expected repeat purchases in (T, T + t] given the customer's history
    (BG/NBD: Fader, Hardie & Lee 2005a eq. (10); Pareto/NBD: note 009 eq. (41)), computed as
    :func:`probability_alive` * :func:`expected_purchases_given_alive`.

    Parameters
    ----------
    params
        A purchase model's fit.
    t
        Length of the prediction window, in the fit's time unit.
    frequency, recency, T
        x, t_x and T (array-likes that broadcast together).

    Returns
    -------
    numpy.ndarray
        float64 >= 0, of the broadcast shape.

    Raises
    ------
    ValueError
        ``params`` is not a purchase model's.
    """
    return probability_alive(params, frequency, recency, T) * expected_purchases_given_alive(params, t, frequency, T)


def unconditional_expected_purchases(params: FittedParams, t: ArrayLike) -> FloatArray:
    """E[X(t)]: expected repeat purchases in (0, t] of a customer just acquired.

    - BG/NBD: (a + b - 1) / (a - 1) [1 - (alpha / (alpha + t))^r 2F1(r, b; a + b - 1; t / (alpha + t))],
      Fader, Hardie & Lee (2005a) eq. (9).
    - MBG/NBD: b / (a - 1) [1 - (alpha / (alpha + t))^r 2F1(r, b + 1; a + b; t / (alpha + t))]
      (Batislam et al. 2007).
    - Pareto/NBD: r beta / (alpha (s - 1)) [1 - (beta / (beta + t))^(s - 1)], note 009 eq. (27).

    Parameters
    ----------
    params
        A purchase model's fit.
    t
        Time since acquisition, in the fit's time unit.

    Returns
    -------
    numpy.ndarray
        float64 >= 0, the shape of ``t``.

    Raises
    ------
    ValueError
        ``params`` is not a purchase model's.
    """
    _require(params, PURCHASE_MODELS)
    (t_,) = _as_float(t)
    zero = np.zeros_like(t_)
    if not params.without_dropout:
        alive = purchase_model(params.kind).alive_at_acquisition(params.values)
        if alive is not None:
            return alive * expected_purchases_given_alive(params, t_, zero, zero)
    return expected_purchases_given_alive(params, t_, zero, zero)


def expected_order_value(spend_params: FittedParams, frequency: ArrayLike, monetary_value: ArrayLike) -> FloatArray:
    """E[M | p, q, v, m = monetary_value, x = frequency]: the expected value of a future order.

    Fader & Hardie (2013) eq. (5): (q - 1) / (p x + q - 1) * p v / (q - 1) + p x / (p x + q - 1) * m, a
    weighted mean of the population mean order value p v / (q - 1) and the customer's own mean. For
    x = 0 the weight of ``monetary_value`` is 0: the population mean, as the model implies.

    Parameters
    ----------
    spend_params
        The Gamma-Gamma fit.
    frequency
        x, repeat purchases.
    monetary_value
        m, the customer's mean spend per repeat period (ignored where x = 0).

    Returns
    -------
    numpy.ndarray
        float64, in the data's currency, of the broadcast shape.

    Raises
    ------
    ValueError
        ``spend_params`` is not a Gamma-Gamma fit.
    """
    _require(spend_params, (SPEND_MODEL,))
    p, q, v = spend_params.values
    x, m = _as_float(frequency, monetary_value)
    individual = p * x / (p * x + q - 1)
    return (1 - individual) * (p * v / (q - 1)) + individual * np.where(x > 0, m, 0.0)


def population_order_value(spend_params: FittedParams) -> float:
    """p v / (q - 1): the mean order value of the population (eq. (5) of Fader & Hardie 2013 at x = 0).

    Parameters
    ----------
    spend_params
        The Gamma-Gamma fit.

    Returns
    -------
    float
        In the data's currency.

    Raises
    ------
    ValueError
        ``spend_params`` is not a Gamma-Gamma fit.
    """
    _require(spend_params, (SPEND_MODEL,))
    p, q, v = spend_params.values
    return p * v / (q - 1)


def probability_no_purchase(
    params: FittedParams, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
) -> FloatArray:
    """P(no repeat purchase in (T, T + t] | x = frequency, t_x = recency, T), in the model's time unit.

    Dead customers never buy; a customer alive at T with x repeat purchases has the purchase-rate
    posterior Gamma(r + x, alpha + T) (see :func:`median_time_to_next_purchase`), so
    P(no purchase | alive) = ((alpha + T) / (alpha + T + t))^(r + x) and

        P(no purchase) = (1 - P(alive)) + P(alive) ((alpha + T) / (alpha + T + t))^(r + x).

    Exact for BG/NBD and MBG/NBD, where drop-out happens only right after a purchase. For
    Pareto/NBD, where a customer can also drop out inside the window before buying, it is a lower
    bound.

    Parameters
    ----------
    params
        A purchase model's fit.
    t
        Length of the window, in the fit's time unit.
    frequency, recency, T
        x, t_x and T (array-likes that broadcast together).

    Returns
    -------
    numpy.ndarray
        float64 in [0, 1], of the broadcast shape.

    Raises
    ------
    ValueError
        ``params`` is not a purchase model's.
    """
    _require(params, PURCHASE_MODELS)
    t_, x, t_age = _as_float(t, frequency, T)
    r, alpha = params.values[0], params.values[1]
    alive = probability_alive(params, frequency, recency, T)
    quiet_if_alive = np.exp((r + x) * (np.log(alpha + t_age) - np.log(alpha + t_age + t_)))
    return (1.0 - alive) + alive * quiet_if_alive


def median_time_to_next_purchase(params: FittedParams, frequency: ArrayLike, T: ArrayLike) -> FloatArray:
    """Median time from T to the next purchase of a customer alive at T, in the model's time unit.

    In BG/NBD, MBG/NBD and Pareto/NBD the purchase rate of a customer alive at T with x repeat
    purchases has the posterior Gamma(r + x, alpha + T) (the Poisson likelihood lambda^x e^(-lambda T)
    times the Gamma(r, alpha) prior; Fader, Hardie & Lee 2005a, section 3). The waiting time W is
    exponential given lambda, so P(W > w) = ((alpha + T) / (alpha + T + w))^(r + x), whose median is
    (alpha + T)(2^(1 / (r + x)) - 1). Drop-out is not counted: this is the wait if they stay.

    Parameters
    ----------
    params
        A purchase model's fit.
    frequency, T
        x and T (array-likes that broadcast together).

    Returns
    -------
    numpy.ndarray
        float64 > 0, in the fit's time unit, of the broadcast shape.

    Raises
    ------
    ValueError
        ``params`` is not a purchase model's.
    """
    _require(params, PURCHASE_MODELS)
    x, t_age = _as_float(frequency, T)
    r, alpha = params.values[0], params.values[1]
    return (alpha + t_age) * np.expm1(math.log(2.0) / (r + x))
