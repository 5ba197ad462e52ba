"""The CLV model: a purchase model (BG/NBD by default) and the Gamma-Gamma spend model, fitted on
customer features and scoring every customer with one function (batch scores and the service alike).

:class:`ClvModel` follows scikit-learn's conventions; :meth:`ClvModel.predict` gives every output
(:data:`CLV_OUTPUT_COLUMNS`: expected purchases, P(alive), order value, discounted CLV with
parameter-uncertainty intervals by the delta method, next-order wait, value segment) and says how
each is computed. The fitted state travels as JSON (:meth:`ClvModel.to_dict`)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from pydantic import Field, field_validator, model_validator
from scipy.special import ndtri
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import ThreadpoolController

from features.customer import DAYS_PER_UNIT, RFMValidationError, validate_rfm
from features.errors import RapportError
from features.history import utc_naive
from features.schema import Feature
from features.settings import ClvModelSettings, check_section
from training.artefact import ArtefactReader
from training.clv.adapter import (
    PURCHASE_MODELS,
    SPEND_MODEL,
    ClvFitError,
    FittedParams,
    expected_order_value,
    expected_purchases,
    expected_purchases_given_alive,
    fit_purchase_model,
    fit_spend_model,
    median_time_to_next_purchase,
    population_order_value,
    probability_alive,
    probability_no_purchase,
    unconditional_expected_purchases,
    unique_rows,
)

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]

#: Columns of :meth:`ClvModel.predict`, in order.
CLV_OUTPUT_COLUMNS: tuple[str, ...] = (
    "expected_purchases_30d",
    "expected_purchases_90d",
    "expected_purchases_365d",
    "expected_purchases_365d_lower",
    "expected_purchases_365d_upper",
    "probability_alive",
    "expected_order_value",
    "clv",
    "clv_lower",
    "clv_upper",
    "clv_cashflows",
    "historic_clv",
    "expected_next_order_date",
    "days_to_next_order",
    "value_segment",
)

#: Unit of each output column; "currency" means the model's ``currency_`` (``predict`` puts the
#: resolved units in the frame's ``attrs["units"]``).
CLV_OUTPUT_UNITS: dict[str, str] = {
    "expected_purchases_30d": "repeat purchases in the next 30 days",
    "expected_purchases_90d": "repeat purchases in the next 90 days",
    "expected_purchases_365d": "repeat purchases in the next 365 days",
    "expected_purchases_365d_lower": "repeat purchases in the next 365 days",
    "expected_purchases_365d_upper": "repeat purchases in the next 365 days",
    "probability_alive": "probability",
    "expected_order_value": "currency per order",
    "clv": "currency, discounted, over the horizon",
    "clv_lower": "currency, discounted, over the horizon",
    "clv_upper": "currency, discounted, over the horizon",
    "clv_cashflows": "currency per month, discounted, month 1 first",
    "historic_clv": "currency, net spend to date",
    "expected_next_order_date": "timestamp (naive UTC)",
    "days_to_next_order": "days after the cutoff",
    "value_segment": "label",
}

#: Horizons of the expected-purchases outputs, in days.
PURCHASE_HORIZON_DAYS: tuple[int, ...] = (30, 90, 365)
#: Length of a month of the CLV horizon: 365.25 / 12 days.
DAYS_PER_MONTH = 30.4375
#: Supported time units (days, weeks of 7 days).
TIME_UNITS: tuple[str, ...] = tuple(DAYS_PER_UNIT)
#: Relative step of the central finite differences of the delta method.
SENSITIVITY_STEP = 1e-4
#: Label of the customers between the two segment thresholds.
MIDDLE_SEGMENT = "middle"

#: Artefact format written by :meth:`ClvModel.to_dict`.
ARTEFACT_FORMAT = "rapport.clv_model"
ARTEFACT_VERSION = 1

#: Settings added after the first artefacts were written: read when present, their defaults otherwise.
_OPTIONAL_SETTINGS = {"rate_weight": 0.0, "alive_kind": None}
#: Purchase models in which a customer without a repeat purchase can be inactive: the ones
#: ``alive_kind`` may name (BG/NBD gives every such customer P(alive) = 1 by construction).
ALIVE_KINDS: tuple[str, ...] = ("mbgnbd", "paretonbd")
_FITTED = ("kind", "time_unit", "cutoff", "currency", "purchase_params", "spend_params", "segment_thresholds",
           "n_customers", "n_spend_customers", "n_spend_excluded")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class ClvArtefactError(RapportError, ValueError):
    """A CLV model artefact (``ClvModel.to_dict()`` output) cannot be loaded: wrong format or
    version, a missing or malformed field, or fields that contradict each other."""


class _Settings(ClvModelSettings):
    """Every :class:`ClvModel` parameter, checked: the deployment's section
    (:class:`~features.settings.ClvModelSettings`, where its bounds are declared) and what the
    training step chooses beside it."""

    kind: str = "bgnbd"
    time_unit: str = "D"
    interval: float = Field(0.8, gt=0, lt=1)
    segment_shares: tuple[float, float] = (0.2, 0.2)
    rate_weight: float = 0.0
    alive_kind: str | None = None

    @field_validator("rate_weight")
    @classmethod
    def _weight(cls, value: float) -> float:
        if not 0 <= value <= 1:  # NaN fails too
            raise ValueError("a weight in [0, 1] (0: the purchase model alone, 1: the historic rate alone)")
        return value

    @field_validator("kind")
    @classmethod
    def _purchase_model(cls, value: str) -> str:
        if value not in PURCHASE_MODELS:
            raise ValueError(f"one of {', '.join(PURCHASE_MODELS)}")
        return value

    @field_validator("time_unit")
    @classmethod
    def _time_unit(cls, value: str) -> str:
        if value not in TIME_UNITS:
            raise ValueError(f"one of {', '.join(TIME_UNITS)}")
        return value

    @field_validator("segment_shares")
    @classmethod
    def _shares(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 < share < 1 for share in value) or sum(value) > 1:
            raise ValueError("(bottom share, top share), each in (0, 1), summing to at most 1")
        return value

    @model_validator(mode="after")
    def _alive_companion(self) -> _Settings:
        kind, alive_kind = self.kind, self.alive_kind
        if alive_kind is not None and (alive_kind not in ALIVE_KINDS or alive_kind == kind):
            others = ", ".join(k for k in ALIVE_KINDS if k != kind)
            raise ValueError(f"alive_kind must be None or one of {others} (a model other than kind {kind!r} in "
                             f"which a one-order customer can be inactive), got {alive_kind!r}")
        return self

    @property
    def days_per_unit(self) -> float:
        return float(DAYS_PER_UNIT[self.time_unit])

    def segment_labels(self) -> tuple[str, str, str]:
        bottom, top = self.segment_shares
        return f"bottom {bottom * 100:g} %", MIDDLE_SEGMENT, f"top {top * 100:g} %"


#: The settings every artefact stores.
_SETTINGS = tuple(name for name in _Settings.model_fields if name not in _OPTIONAL_SETTINGS)


def _check_settings(values: Mapping[str, Any]) -> _Settings:
    """The settings, checked; ``ValueError`` names the first bad one, its value and what is expected."""
    return check_section(_Settings, values, "ClvModel")


@dataclass(frozen=True)
class _Rows:
    """Customers compressed: distinct (frequency, recency, T) rows, and distinct (frequency, T) pairs."""

    frequency: FloatArray
    recency: FloatArray
    T: FloatArray
    inverse: NDArray[np.intp]  # customer -> row
    pair_frequency: FloatArray
    pair_T: FloatArray
    pair_of_row: NDArray[np.intp]  # row -> pair

    @classmethod
    def of(cls, frequency: FloatArray, recency: FloatArray, T: FloatArray) -> _Rows:
        (f, r, t), inverse, _ = unique_rows(frequency, recency, T)
        (pf, pt), pair_of_row, _ = unique_rows(f, t)
        return cls(f, r, t, inverse, pf, pt, pair_of_row)


@dataclass(frozen=True)
class _Scores:
    purchases: FloatArray  # (len(PURCHASE_HORIZON_DAYS), customers)
    purchases_365d_sd: FloatArray | None
    probability_alive: FloatArray
    order_value: FloatArray
    cashflows: FloatArray  # (customers, horizon_months)
    clv: FloatArray
    clv_sd: FloatArray | None
    days_to_next_order: FloatArray


class ClvModel(BaseEstimator):
    """Purchase model + Gamma-Gamma spend model, scikit-learn style.

    Settings (stored as given; checked by :meth:`fit`):

    - ``kind``: purchase model, ``"bgnbd"`` (default), ``"mbgnbd"`` or ``"paretonbd"``;
    - ``time_unit``: ``"D"`` (days) or ``"W"`` (weeks of 7 days), the unit the features' recency and
      T are measured in (``customer_features(..., time_unit=...)``); stored with the fit;
    - ``penalizer``: lifetimes' L2 penalty on the parameters (0: plain maximum likelihood; a failed
      fit is retried once with 0.001, then fitted without drop-out, see ``adapter.fit_purchase_model``);
    - ``horizon_months`` (12) and ``monthly_discount_rate`` (0.01): the CLV horizon and discounting;
    - ``interval`` (0.8): coverage of the parameter-uncertainty intervals;
    - ``segment_shares`` ((0.2, 0.2)): shares of the fitted population in the bottom and top value
      segments;
    - ``rate_weight`` (0): expected purchases are (1 - w) x the purchase model's + w x the customer's
      historic rate, frequency / T repeat purchases per time unit (0 for T = 0) times t, a forecast
      combination (Bates & Granger 1969) whose weight the training step chooses on a validation split
      of the calibration period. 1 serves the naive rate itself (with Gamma-Gamma spend); 0 the model
      alone. The rate carries no parameter uncertainty, so the intervals shrink by 1 - w;
    - ``alive_kind`` (None): a second purchase model (``"mbgnbd"`` or ``"paretonbd"``) fitted on the
      same features whose P(alive) is reported instead of the purchase model's: BG/NBD gives every
      customer without a repeat purchase P(alive) = 1 by construction, however long ago their order.
      Expected purchases, CLV and the next-order wait stay the purchase model's.

    Fitted attributes: ``purchase_params_``/``spend_params_`` (``adapter.FittedParams``), ``kind_``,
    ``time_unit_``, ``penalizer_``, ``horizon_months_``, ``monthly_discount_rate_``, ``interval_``,
    ``segment_shares_`` (the settings the fit used: scoring uses these, so changing a setting needs a
    refit), ``cutoff_`` (naive UTC), ``currency_``, ``n_customers_``, ``n_spend_customers_`` (repeat
    customers with positive spend, the Gamma-Gamma sample), ``n_spend_excluded_`` (the others: no
    repeat purchase, or repeat purchases all returned), ``population_order_value_``,
    ``segment_thresholds_`` (CLV at the bottom and top quantiles of the fitted population),
    ``rate_weight_``, ``alive_params_`` (the ``alive_kind`` fit, or None), ``label_`` (the model as
    tables and titles name it).
    """

    def __init__(
        self,
        kind: str = "bgnbd",
        time_unit: str = "D",
        penalizer: float = 0.0,
        horizon_months: int = 12,
        monthly_discount_rate: float = 0.01,
        interval: float = 0.8,
        segment_shares: tuple[float, float] = (0.2, 0.2),
        rate_weight: float = 0.0,
        alive_kind: str | None = None,
    ) -> None:
        self.kind = kind
        self.time_unit = time_unit
        self.penalizer = penalizer
        self.horizon_months = horizon_months
        self.monthly_discount_rate = monthly_discount_rate
        self.interval = interval
        self.segment_shares = segment_shares
        self.rate_weight = rate_weight
        self.alive_kind = alive_kind

    # --- fitting ----------------------------------------------------------------------------------

    def fit(self, features: pd.DataFrame, *, cutoff: datetime | date, currency: str = "GBP") -> ClvModel:
        """Fit on customer features as of ``cutoff`` (``features.customer.customer_features`` or
        ``calibration_holdout`` output, recency and T in ``time_unit``; amounts in ``currency``).

        Raises ``RFMValidationError`` for features that break the RFM rules, ``ValueError`` for bad
        settings and :class:`~training.clv.adapter.ClvFitError` when a model cannot be fitted.
        """
        settings = self._checked_settings()
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            raise ValueError(f"currency must be an ISO 4217 code such as 'GBP', got {currency!r}")
        cutoff_ = utc_naive(cutoff)
        f, r, t, m = _rfm_arrays(features)
        spend = (f > 0) & (m > 0)
        n_spend = int(spend.sum())
        with _single_threaded_blas():
            purchase_params = fit_purchase_model(settings.kind, f, r, t, penalizer=settings.penalizer)
            alive_params = None
            if settings.alive_kind is not None:
                alive_params = fit_purchase_model(settings.alive_kind, f, r, t, penalizer=settings.penalizer)
            if n_spend == 0:
                raise ClvFitError(
                    f"{SPEND_MODEL} fit failed: none of the {len(f)} customers has a repeat purchase with positive "
                    "net spend", kind=SPEND_MODEL, reason="no repeat customer with positive spend",
                )
            spend_params = fit_spend_model(f[spend], m[spend], penalizer=settings.penalizer)

            self._set_fitted(settings, cutoff_, currency, purchase_params, spend_params,
                             thresholds=(0.0, 0.0), n_customers=len(f), n_spend_customers=n_spend,
                             alive_params=alive_params)
            clv = self._score(f, r, t, m, intervals=False).clv
        bottom, top = settings.segment_shares
        low, high = np.quantile(clv, [bottom, 1.0 - top])
        self.segment_thresholds_ = (float(low), float(high))
        logger.info(
            "CLV model %s fitted on %d customers as of %s (%d in the spend model); segment thresholds %.2f / %.2f %s",
            self.label_, len(f), cutoff_.date(), n_spend, low, high, currency,
        )
        return self

    def _checked_settings(self) -> _Settings:
        return _check_settings(self.get_params())

    def _set_fitted(
        self, settings: _Settings, cutoff: datetime, currency: str, purchase_params: FittedParams,
        spend_params: FittedParams, *, thresholds: tuple[float, float], n_customers: int, n_spend_customers: int,
        alive_params: FittedParams | None = None,
    ) -> None:
        self.kind_ = settings.kind
        self.time_unit_ = settings.time_unit
        self.penalizer_ = settings.penalizer
        self.horizon_months_ = settings.horizon_months
        self.monthly_discount_rate_ = settings.monthly_discount_rate
        self.interval_ = settings.interval
        self.segment_shares_ = settings.segment_shares
        self.cutoff_ = cutoff
        self.currency_ = currency
        self.purchase_params_ = purchase_params
        self.spend_params_ = spend_params
        self.population_order_value_ = population_order_value(spend_params)
        self.n_customers_ = n_customers
        self.n_spend_customers_ = n_spend_customers
        self.n_spend_excluded_ = n_customers - n_spend_customers
        self.segment_thresholds_ = thresholds
        self.rate_weight_ = settings.rate_weight
        self.alive_params_ = alive_params

    @property
    def label_(self) -> str:
        """The fitted model as tables, titles and messages name it."""
        self._check_fitted()
        purchase = self.purchase_params_.label
        if self.rate_weight_ >= 1.0:
            text = "naive (historic rate)"
        elif self.rate_weight_ > 0.0:
            text = f"{purchase} blended with the historic rate (rate weight {self.rate_weight_:.2f})"
        else:
            text = purchase
        if self.alive_params_ is not None:
            text += f", P(alive) from {self.alive_params_.label}"
        elif self.rate_weight_ >= 1.0:
            text += f", P(alive) from {purchase}"
        return text

    def _check_fitted(self) -> None:
        check_is_fitted(self, ["purchase_params_", "spend_params_", "segment_thresholds_"])

    def _fitted_settings(self) -> _Settings:
        return _Settings(kind=self.kind_, time_unit=self.time_unit_, penalizer=self.penalizer_,
                         horizon_months=self.horizon_months_, monthly_discount_rate=self.monthly_discount_rate_,
                         interval=self.interval_, segment_shares=self.segment_shares_, rate_weight=self.rate_weight_,
                         alive_kind=None if self.alive_params_ is None else self.alive_params_.kind)

    # --- the model's functions (durations in the model's time unit) --------------------------------

    def expected_purchases(self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> FloatArray:
        """Expected repeat purchases in (T, T + t] given (frequency, recency, T); t, recency, T in
        ``time_unit_``; blended with the historic rate by ``rate_weight_``. Arguments broadcast like
        numpy arrays."""
        self._check_fitted()
        model = expected_purchases(self.purchase_params_, t, frequency, recency, T)
        if self.rate_weight_ == 0.0:
            return model
        w = self.rate_weight_
        return (1.0 - w) * model + w * historic_rate(frequency, T) * np.asarray(t, dtype=np.float64)

    def probability_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> FloatArray:
        """Probability that the customer is still active at T: from ``alive_params_`` when fitted."""
        self._check_fitted()
        return probability_alive(self._alive_source(), frequency, recency, T)

    def _alive_source(self) -> FittedParams:
        return self.alive_params_ if self.alive_params_ is not None else self.purchase_params_

    def probability_no_purchase(
        self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> FloatArray:
        """P(no repeat purchase in the next ``t`` units) given each customer's history."""
        self._check_fitted()
        return probability_no_purchase(self.purchase_params_, t, frequency, recency, T)

    def unconditional_expected_purchases(self, t: ArrayLike) -> FloatArray:
        """Expected repeat purchases in the first t (``time_unit_``) of a new customer's life; the
        historic-rate share of a blend contributes nothing (a new customer has no rate yet)."""
        self._check_fitted()
        return (1.0 - self.rate_weight_) * unconditional_expected_purchases(self.purchase_params_, t)

    def expected_order_value(self, frequency: ArrayLike, monetary_value: ArrayLike) -> FloatArray:
        """Expected value of a future order (``currency_``), Gamma-Gamma eq. (5) of Fader & Hardie 2013."""
        self._check_fitted()
        return expected_order_value(self.spend_params_, frequency, monetary_value)

    # --- scoring ----------------------------------------------------------------------------------

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        """Every CLV output (:data:`CLV_OUTPUT_COLUMNS`) for each row of ``features``, indexed like it.

        ``features`` needs frequency, recency, T (in ``time_unit_``), monetary_value and historic_clv
        as of ``cutoff_`` (other columns are ignored). Units: see :data:`CLV_OUTPUT_UNITS`, and the
        returned frame's ``attrs`` (currency, time unit, cutoff, horizon, discount rate, interval).

        Outputs per customer (money in the currency of the data, ``currency_``):

        - ``expected_purchases_30d`` / ``_90d`` / ``_365d``: expected repeat purchases in the next
          30, 90 and 365 days, E[X(t) | frequency, recency, T] with t converted into the model's
          time unit;
        - ``probability_alive``; ``expected_order_value`` (Gamma-Gamma, Fader & Hardie 2013 eq. (5):
          the population mean p v / (q - 1) for customers without repeat purchases; a repeat
          customer whose repeat purchases were all returned, monetary_value 0, is shrunk towards 0
          by the same formula);
        - ``clv``: the discounted value of the next ``horizon_months`` months, the sum of
          ``clv_cashflows``. Month m ends at t_m = m * 30.4375 days; its cash flow is
          (E[X(t_m) | history] - E[X(t_(m-1)) | history]) * expected_order_value / (1 + d)^m,
          lifetimes' ``customer_lifetime_value`` convention with calendar-exact months;
        - ``clv_lower``/``clv_upper`` and ``expected_purchases_365d_lower``/``_upper``: an
          ``interval`` (default 80 %) interval from the uncertainty of the fitted parameters, by the
          delta method (below);
        - with ``rate_weight`` w > 0 every expected-purchases output (and so CLV) is the blend
          (1 - w) E[X(t) | history] + w (frequency / T) t with the customer's historic rate; with
          ``alive_kind`` set, ``probability_alive`` comes from that second model (BG/NBD's one-order
          customers are otherwise all at 1);
        - ``historic_clv`` (passed through from the features: net spend to date);
        - ``days_to_next_order``: the median wait for the next purchase of a customer who is still
          active, (alpha + T)(2^(1 / (r + x)) - 1) (see ``adapter.median_time_to_next_purchase``),
          in days, and ``expected_next_order_date`` = cutoff + that many days (a naive UTC
          timestamp; NaT past the year 2262, the end of datetime64[ns]);
        - ``value_segment``: "top 20 %" (clv >= the 80 % quantile of the fitted population's CLV) /
          "middle" / "bottom 20 %" (clv <= the 20 % quantile; shares set by ``segment_shares``):
          thresholds fixed at fit time and stored with the model, so one customer scored alone lands
          where batch scoring puts them. A population with many equal CLVs (e.g. one-time buyers of
          the same age) can put more than 20 % at a threshold.

        Intervals (delta method). Every output y is a smooth function of the parameters theta of the
        purchase model and phi of the spend model, fitted by two separate likelihoods (so their
        covariance is block-diagonal). Var(y) ~ grad_theta(y)' Cov(theta) grad_theta(y) +
        grad_phi(y)' Cov(phi) grad_phi(y), with gradients by central finite differences (relative
        step :data:`SENSITIVITY_STEP`) and the covariances of the fits (inverse Hessians). CLV
        factorises as S(theta) * v(phi) (S: discounted expected purchases, v: expected order value),
        so its variance is v^2 Var(S) + S^2 Var(v). The interval is y +- z sd with z the normal
        quantile, clipped at 0. It reflects parameter uncertainty only, not the randomness of a
        customer's purchases. On CDNOW it matches the central 80 % of scores under parameters drawn
        from the fits' normal approximation on log-parameters (the scale of the Hessian) to within a
        few percent (tests/test_clv_model.py). The delta method costs 2 x 4 extra evaluations of the
        purchase model, done on distinct (frequency, recency, T) rows with the hypergeometric part
        on distinct (frequency, T) pairs; sampling would need hundreds.

        Parameters
        ----------
        features
            One row per customer: frequency, recency, T, monetary_value, historic_clv.

        Returns
        -------
        pandas.DataFrame
            The columns of :data:`CLV_OUTPUT_COLUMNS`, indexed like ``features``.
        """
        self._check_fitted()
        f, r, t, m = _rfm_arrays(features)
        if Feature.HISTORIC_CLV not in features.columns:
            raise RFMValidationError(Feature.HISTORIC_CLV, "being a column of the features", [], [], len(features))
        historic = pd.to_numeric(features[Feature.HISTORIC_CLV], errors="coerce").to_numpy(dtype=np.float64)
        with _single_threaded_blas():
            scores = self._score(f, r, t, m, intervals=True)
        return self._frame(features.index, scores, historic)

    def _score(self, f: FloatArray, r: FloatArray, t: FloatArray, m: FloatArray, *, intervals: bool) -> _Scores:
        """The one scoring function: every number of :meth:`predict` for arrays of customers."""
        settings = self._fitted_settings()
        purchase = self.purchase_params_
        rows = _Rows.of(f, r, t)
        horizons = np.asarray(PURCHASE_HORIZON_DAYS, dtype=np.float64) / settings.days_per_unit
        months = np.arange(1, settings.horizon_months + 1, dtype=np.float64) * DAYS_PER_MONTH / settings.days_per_unit
        discount: FloatArray = (1.0 + settings.monthly_discount_rate) ** -np.arange(
            1, settings.horizon_months + 1, dtype=np.float64)

        times = np.concatenate([horizons, months])
        expected = _purchases_by_row(purchase, rows, times)
        w = settings.rate_weight
        if w > 0.0:
            expected = (1.0 - w) * expected + w * historic_rate(rows.frequency, rows.T)[None, :] * times[:, None]
        k = horizons.shape[0]
        increments = np.diff(expected[k:], axis=0, prepend=0.0)  # (months, rows): purchases in each month
        order_value = expected_order_value(self.spend_params_, f, m)
        cashflows = (increments.T * discount)[rows.inverse] * order_value[:, None]
        clv = cashflows.sum(axis=1)

        purchases_sd = clv_sd = None
        if intervals:
            grad_discounted, grad_365 = _purchase_sensitivities(purchase, rows, horizons[-1], months, discount)
            # The historic-rate share has no parameters: only the model's share is uncertain.
            grad_discounted, grad_365 = (1.0 - w) * grad_discounted, (1.0 - w) * grad_365
            cov = purchase.covariance_matrix()
            var_discounted = _quadratic_form(grad_discounted, cov)
            var_365 = _quadratic_form(grad_365, cov)
            grad_value = _spend_sensitivities(self.spend_params_, f, m)
            var_value = _quadratic_form(grad_value, self.spend_params_.covariance_matrix())
            discounted = _discounted_sum(increments, discount)[rows.inverse]
            # CLV = S(theta) v(phi), two independent fits: Var = v^2 Var(S) + S^2 Var(v).
            clv_sd = np.sqrt(np.maximum(order_value**2 * var_discounted[rows.inverse] + discounted**2 * var_value, 0.0))
            purchases_sd = np.sqrt(np.maximum(var_365, 0.0))[rows.inverse]

        wait = median_time_to_next_purchase(purchase, f, t) * settings.days_per_unit
        return _Scores(
            purchases=expected[:k][:, rows.inverse],
            purchases_365d_sd=purchases_sd,
            probability_alive=probability_alive(self._alive_source(), rows.frequency, rows.recency,
                                                rows.T)[rows.inverse],
            order_value=order_value,
            cashflows=cashflows,
            clv=clv,
            clv_sd=clv_sd,
            days_to_next_order=wait,
        )

    def _frame(self, index: pd.Index, scores: _Scores, historic: FloatArray) -> pd.DataFrame:
        settings = self._fitted_settings()
        z = float(ndtri(0.5 + settings.interval / 2))
        assert scores.clv_sd is not None and scores.purchases_365d_sd is not None
        e30, e90, e365 = scores.purchases
        bottom_label, middle_label, top_label = settings.segment_labels()
        low, high = self.segment_thresholds_
        segment = np.where(scores.clv >= high, 2, np.where(scores.clv <= low, 0, 1))
        columns: dict[str, Any] = {
            "expected_purchases_30d": e30,
            "expected_purchases_90d": e90,
            "expected_purchases_365d": e365,
            "expected_purchases_365d_lower": np.maximum(e365 - z * scores.purchases_365d_sd, 0.0),
            "expected_purchases_365d_upper": e365 + z * scores.purchases_365d_sd,
            "probability_alive": scores.probability_alive,
            "expected_order_value": scores.order_value,
            "clv": scores.clv,
            "clv_lower": np.maximum(scores.clv - z * scores.clv_sd, 0.0),
            "clv_upper": scores.clv + z * scores.clv_sd,
            "clv_cashflows": pd.Series(list(scores.cashflows), dtype=object).to_numpy(),  # one array per row
            "historic_clv": historic,
            "expected_next_order_date": _dates_after(self.cutoff_, scores.days_to_next_order),
            "days_to_next_order": scores.days_to_next_order,
            "value_segment": pd.Categorical.from_codes(segment, categories=[bottom_label, middle_label, top_label],
                                                       ordered=True),
        }
        out = pd.DataFrame(columns, index=index, columns=list(CLV_OUTPUT_COLUMNS))
        out.attrs = {
            "currency": self.currency_,
            "time_unit": self.time_unit_,
            "cutoff": self.cutoff_.isoformat(),
            "horizon_months": settings.horizon_months,
            "monthly_discount_rate": settings.monthly_discount_rate,
            "interval": settings.interval,
            "units": {name: unit.replace("currency", self.currency_) for name, unit in CLV_OUTPUT_UNITS.items()},
        }
        return out

    # --- artefact ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as JSON-serialisable data (no training data, no pickles)."""
        self._check_fitted()
        s = self._fitted_settings()
        low, high = self.segment_thresholds_
        return {
            "format": ARTEFACT_FORMAT,
            "format_version": ARTEFACT_VERSION,
            "settings": {
                "kind": s.kind, "time_unit": s.time_unit, "penalizer": s.penalizer,
                "horizon_months": s.horizon_months, "monthly_discount_rate": s.monthly_discount_rate,
                "interval": s.interval, "segment_shares": list(s.segment_shares),
                "rate_weight": s.rate_weight, "alive_kind": s.alive_kind,
            },
            "fitted": {
                "kind": self.kind_,
                "time_unit": self.time_unit_,
                "cutoff": self.cutoff_.isoformat(),
                "currency": self.currency_,
                "purchase_params": self.purchase_params_.to_dict(),
                "spend_params": self.spend_params_.to_dict(),
                "alive_params": None if self.alive_params_ is None else self.alive_params_.to_dict(),
                "segment_thresholds": {"bottom": float(low), "top": float(high)},
                "n_customers": int(self.n_customers_),
                "n_spend_customers": int(self.n_spend_customers_),
                "n_spend_excluded": int(self.n_spend_excluded_),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClvModel:
        """Rebuild a fitted model from :meth:`to_dict` output; :class:`ClvArtefactError` names what is wrong."""
        reader = ArtefactReader(data, what="CLV model", format=ARTEFACT_FORMAT, version=ARTEFACT_VERSION,
                                error=ClvArtefactError)
        settings_data = reader.section("settings", _SETTINGS)
        fitted = reader.section("fitted", _FITTED)
        optional = {name: settings_data.get(name, default) for name, default in _OPTIONAL_SETTINGS.items()}
        try:
            settings = _check_settings({**settings_data, **optional})
        except ValueError as exc:
            raise ClvArtefactError(f"CLV model artefact settings: {exc}") from exc
        for name in ("kind", "time_unit"):
            if fitted[name] != getattr(settings, name):
                raise ClvArtefactError(
                    f"CLV model artefact: fitted.{name} {fitted[name]!r} contradicts settings.{name} "
                    f"{getattr(settings, name)!r}"
                )
        params = {}
        for name, kind in (("purchase_params", settings.kind), ("spend_params", SPEND_MODEL)):
            try:
                params[name] = FittedParams.from_dict(fitted[name])
            except ValueError as exc:
                raise ClvArtefactError(f"CLV model artefact: fitted.{name}: {exc}") from exc
            if params[name].kind != kind:
                raise ClvArtefactError(f"CLV model artefact: fitted.{name} holds {params[name].kind!r} parameters, "
                                       f"expected {kind!r}")
        alive_params = None
        if settings.alive_kind is not None:
            try:
                alive_params = FittedParams.from_dict(fitted.get("alive_params"))
            except ValueError as exc:
                raise ClvArtefactError(f"CLV model artefact: fitted.alive_params (settings.alive_kind "
                                       f"{settings.alive_kind!r}): {exc}") from exc
            if alive_params.kind != settings.alive_kind:
                raise ClvArtefactError(f"CLV model artefact: fitted.alive_params holds {alive_params.kind!r} "
                                       f"parameters, expected {settings.alive_kind!r}")
        if params["spend_params"].values[1] <= 1:
            raise ClvArtefactError("CLV model artefact: fitted.spend_params q must exceed 1")
        try:
            cutoff = datetime.fromisoformat(reader.field(fitted, "cutoff", str))
        except ValueError as exc:
            raise ClvArtefactError(f"CLV model artefact: fitted.cutoff is not an ISO timestamp: {exc}") from exc
        currency = reader.field(fitted, "currency", str)
        if not _CURRENCY.match(currency):
            raise ClvArtefactError(f"CLV model artefact: fitted.currency must be an ISO 4217 code, got {currency!r}")
        thresholds = reader.field(fitted, "segment_thresholds", Mapping)
        try:
            low, high = (float(thresholds[k]) for k in ("bottom", "top"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ClvArtefactError(
                "CLV model artefact: fitted.segment_thresholds needs numbers 'bottom' and 'top'"
            ) from exc
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ClvArtefactError(f"CLV model artefact: fitted.segment_thresholds must be finite with bottom <= top, "
                                   f"got {low!r}, {high!r}")
        counts = {name: reader.field(fitted, name, int) for name in ("n_customers", "n_spend_customers", "n_spend_excluded")}
        spend_total = counts["n_spend_customers"] + counts["n_spend_excluded"]
        if min(counts.values()) < 0 or spend_total != counts["n_customers"]:
            raise ClvArtefactError(f"CLV model artefact: inconsistent customer counts {counts}")

        model = cls(**{name: settings_data[name] for name in _SETTINGS}, **optional)
        bottom, top = model.segment_shares
        model.segment_shares = (bottom, top)
        model._set_fitted(settings, utc_naive(cutoff), currency, params["purchase_params"], params["spend_params"],
                          thresholds=(low, high), n_customers=counts["n_customers"],
                          n_spend_customers=counts["n_spend_customers"], alive_params=alive_params)
        return model


# --- helpers ------------------------------------------------------------------------------------


def historic_rate(frequency: ArrayLike, T: ArrayLike) -> FloatArray:
    """The customer's own repeat-purchase rate, frequency / T per time unit; 0 for T = 0 (a customer
    born at the cutoff has no rate yet). The naive baseline of ``evaluation.naive_holdout_purchases``."""
    f, t = np.asarray(frequency, dtype=np.float64), np.asarray(T, dtype=np.float64)
    f, t = np.broadcast_arrays(f, t)
    return np.divide(f, t, out=np.zeros(f.shape), where=t > 0)


@cache
def _blas_controller() -> ThreadpoolController:
    # Finding the loaded BLAS libraries reads the process's memory map (milliseconds): once.
    return ThreadpoolController()


def _single_threaded_blas() -> AbstractContextManager[Any]:
    """Multi-threaded BLAS on two cores is slower than one thread for these small dense products."""
    return _blas_controller().limit(limits=1, user_api="blas")


def _rfm_arrays(features: pd.DataFrame) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    if not isinstance(features, pd.DataFrame):
        raise TypeError(f"features must be a pandas DataFrame, got {type(features).__name__}")
    validate_rfm(features, monetary=True)
    return tuple(
        pd.to_numeric(features[c]).to_numpy(dtype=np.float64)
        for c in (Feature.FREQUENCY, Feature.RECENCY, Feature.T, Feature.MONETARY_VALUE)
    )


def _purchases_by_row(params: FittedParams, rows: _Rows, times: FloatArray) -> FloatArray:
    """E[X(t) | x, t_x, T] for every time (axis 0) and distinct row (axis 1): P(alive) per row times
    the expectation given alive per distinct (x, T) pair (where the hypergeometric functions are)."""
    alive = probability_alive(params, rows.frequency, rows.recency, rows.T)
    given_alive = expected_purchases_given_alive(params, times[:, None], rows.pair_frequency[None, :],
                                                 rows.pair_T[None, :])
    return alive[None, :] * given_alive[:, rows.pair_of_row]


# Batch scoring must equal one-by-one scoring to the last bit: sums over months and parameters are
# written as elementwise operations in a fixed order, not as matrix products or reductions, whose
# summation order (BLAS kernels, pairwise sums) depends on the number of customers.


def _discounted_sum(increments: FloatArray, discount: FloatArray) -> FloatArray:
    """sum_m increments[m] * discount[m] for (months, rows) increments."""
    total = np.zeros(increments.shape[1])
    for month in range(increments.shape[0]):
        total = total + increments[month] * discount[month]
    return total


def _quadratic_form(gradient: FloatArray, covariance: FloatArray) -> FloatArray:
    """g' C g for every row g of ``gradient`` (rows x parameters)."""
    total = np.zeros(gradient.shape[0])
    for i in range(covariance.shape[0]):
        for j in range(covariance.shape[1]):
            total = total + gradient[:, i] * covariance[i, j] * gradient[:, j]
    return total


def _purchase_sensitivities(
    params: FittedParams, rows: _Rows, t_365: float, months: FloatArray, discount: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Gradients (rows x parameters) of the discounted expected purchases over the horizon,
    sum_m (E[X(t_m)] - E[X(t_(m-1))]) / (1 + d)^m, and of E[X(365 days)], by central differences."""
    theta = np.asarray(params.values, dtype=np.float64)
    times = np.concatenate([[t_365], months])
    n_rows, k = rows.frequency.shape[0], theta.shape[0]
    grad_discounted = np.empty((n_rows, k))
    grad_365 = np.empty((n_rows, k))
    for i in range(k):
        h = SENSITIVITY_STEP * theta[i]
        sides = []
        for sign in (1.0, -1.0):
            shifted = theta.copy()
            shifted[i] += sign * h
            e = _purchases_by_row(params.with_values(shifted), rows, times)
            sides.append((_discounted_sum(np.diff(e[1:], axis=0, prepend=0.0), discount), e[0]))
        (d_up, e_up), (d_down, e_down) = sides
        grad_discounted[:, i] = (d_up - d_down) / (2 * h)
        grad_365[:, i] = (e_up - e_down) / (2 * h)
    return grad_discounted, grad_365


def _spend_sensitivities(params: FittedParams, frequency: FloatArray, monetary_value: FloatArray) -> FloatArray:
    """Gradient (customers x (p, q, v)) of the expected order value, by central differences."""
    phi = np.asarray(params.values, dtype=np.float64)
    grad = np.empty((frequency.shape[0], phi.shape[0]))
    for i in range(phi.shape[0]):
        h = SENSITIVITY_STEP * phi[i]
        up, down = phi.copy(), phi.copy()
        up[i] += h
        down[i] -= h
        grad[:, i] = (expected_order_value(params.with_values(up), frequency, monetary_value)
                      - expected_order_value(params.with_values(down), frequency, monetary_value)) / (2 * h)
    return grad


def _dates_after(cutoff: datetime, days: FloatArray) -> NDArray[np.datetime64]:
    """cutoff + days as datetime64[ns]; NaT where that lies beyond datetime64[ns] (year 2262)."""
    start = np.datetime64(cutoff, "ns")
    limit_days = (pd.Timestamp.max - pd.Timestamp(cutoff)) / pd.Timedelta(days=1) - 1
    ok = np.isfinite(days) & (days <= limit_days)
    offsets = np.round(np.where(ok, days, 0.0) * 86_400e9).astype("timedelta64[ns]")
    return np.where(ok, start + offsets, np.datetime64("NaT", "ns"))


