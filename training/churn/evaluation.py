"""Held-out evaluation of a churn classifier, its baselines, and the gate it must pass.

Everything is measured on one frame: the customers of the held-out (latest) cutoff, with the 0/1
label ``churned`` (no purchase in the horizon after the cutoff). A score is read as "higher means
more likely to churn". The metrics (ranking, probabilities, top-decile targeting, calibration) are
defined on :class:`ClassifierMetrics`, the baselines on :class:`Baselines`; :func:`choose_learner`
picks the learner served and :func:`churn_gate` whether it may be promoted."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from features.churn import CHURNED
from features.schema import Feature

logger = logging.getLogger(__name__)

#: Column of the 0/1 churn label (:func:`features.churn.churn_labels`).
LABEL = CHURNED
#: Column of the BG/NBD probability that the customer is alive at the cutoff (NaN without a CLV fit),
#: as the churn dataset names it.
PROBABILITY_ALIVE = "clv_probability_alive"

#: Share of the customers the targeting metrics look at (the top decile).
TOP_FRACTION = 0.1

#: Baseline names, as rows of :func:`metrics_table` and keys of :func:`baseline_metrics`.
P_ALIVE_BASELINE = "1 - P(alive) (BG/NBD)"
RECENCY_BASELINE = "days since last purchase"
RFM_BASELINE = "logistic regression on RFM"
BASELINE_NAMES: tuple[str, ...] = (P_ALIVE_BASELINE, RECENCY_BASELINE, RFM_BASELINE)

#: Metric-name prefix of each baseline (MLflow metric names allow neither parentheses nor most punctuation).
BASELINE_METRIC_PREFIXES: dict[str, str] = {
    P_ALIVE_BASELINE: "baseline_p_alive",
    RECENCY_BASELINE: "baseline_days_since_last_purchase",
    RFM_BASELINE: "baseline_rfm_logistic",
}

#: Features of the RFM logistic regression, in this order.
RFM_FEATURES: tuple[str, ...] = (Feature.FREQUENCY, Feature.RECENCY, Feature.T, Feature.MONETARY_VALUE)
#: The one feature of the days-since-last-purchase baseline.
RECENCY_FEATURE = Feature.DAYS_SINCE_LAST_ORDER

#: Columns of :func:`metrics_table`, in order.
TABLE_COLUMNS: tuple[str, ...] = ("ROC AUC", "PR AUC", "Brier", "log loss", "ECE", "lift@10%", "capture@10%")

#: Columns of :func:`reliability_curve`.
RELIABILITY_COLUMNS: tuple[str, ...] = ("lower", "upper", "mean_predicted", "observed_rate", "count")

#: Columns of :func:`capture_curve`.
CAPTURE_COLUMNS: tuple[str, ...] = ("fraction", "customers", "churners", "capture", "lift")

#: Columns of :func:`importance_table`.
IMPORTANCE_COLUMNS: tuple[str, ...] = ("gain", "share")


# --- metrics --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierMetrics:
    """How well one classifier (or score) separates churners on the held-out customers.

    ``n`` customers of which ``positives`` churned (``base_rate`` = positives / n). ``roc_auc`` and
    ``pr_auc`` (average precision) are NaN when only one class is present; ``brier`` and
    ``log_loss`` are NaN for a score that is not a probability; ``top_decile_lift`` and
    ``top_decile_capture`` (the top decile and its ties below) are NaN without churners. ``ece``:
    the expected calibration error on 10 quantile bins (NaN for a score that is not a probability);
    ``distinct_values``: how many different scores the customers get (a step-function calibration
    puts many of them on one value, hiding their order).

    - *Ranking*: ROC AUC (ties count one half, as in the Mann-Whitney U statistic) and PR AUC as
      scikit-learn's average precision (the step-wise sum of precision x recall increments, which
      does not interpolate and so does not flatter a model the way the trapezoidal PR area does).
    - *Probabilities*: Brier score (mean squared error of the probability) and log loss.
    - *Targeting*: the lift and capture rate of the top decile, i.e. of the k = ceil(n / 10)
      customers with the highest scores: lift = churn rate among them / churn rate overall, capture
      = share of all churners found among them. Customers tied with the k-th highest score share the
      places left at the boundary: each of the t tied customers counts with weight (k - customers
      strictly above) / t. The result is the expected value under a random tie-break, the same for
      every order of the rows (sorting with a tie-break on position would make the number depend on
      how the frame was sorted).
    - *Calibration*: the reliability curve on quantile bins of the predicted probability
      (:func:`reliability_curve`) and the ECE over the same bins.
    """

    name: str
    n: int
    positives: int
    base_rate: float
    roc_auc: float
    pr_auc: float
    brier: float
    log_loss: float
    top_decile_lift: float
    top_decile_capture: float
    ece: float = math.nan
    distinct_values: int = 0

    def to_metrics(self, prefix: str) -> dict[str, float]:
        """The numbers under stable metric names, ``{prefix}_{name}`` (just ``{name}`` for an empty
        prefix), in the order of :data:`METRIC_FIELDS`; NaN where undefined.

        Parameters
        ----------
        prefix
            The metric names' prefix (``model``, a baseline's :data:`BASELINE_METRIC_PREFIXES`); empty:
            none.

        Returns
        -------
        dict[str, float]
            Metric name -> value.
        """
        head = f"{prefix}_" if prefix else ""
        return {f"{head}{name}": float(getattr(self, field)) for name, field in METRIC_FIELDS.items()}


#: Metric name -> :class:`ClassifierMetrics` field, in the order :meth:`ClassifierMetrics.to_metrics` returns.
METRIC_FIELDS: dict[str, str] = {
    "customers": "n",
    "churners": "positives",
    "churn_rate": "base_rate",
    "roc_auc": "roc_auc",
    "pr_auc": "pr_auc",
    "brier": "brier",
    "log_loss": "log_loss",
    "top_decile_lift": "top_decile_lift",
    "top_decile_capture": "top_decile_capture",
    "ece": "ece",
    "distinct_values": "distinct_values",
}


def _labels(y_true: ArrayLike, what: str = "y_true") -> np.ndarray:
    """The label as int64 0/1, or a ValueError naming the offending values."""
    raw = np.asarray(y_true)
    if raw.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {raw.shape}")
    if raw.dtype == bool:
        return raw.astype("int64")
    values = pd.to_numeric(pd.Series(raw), errors="coerce").to_numpy(dtype="float64")
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        examples = pd.unique(pd.Series(raw[bad]).astype(str))[:5]
        raise ValueError(
            f"{what} must hold only 0 and 1 (churned or not); {int(bad.sum())} value(s) are not, "
            f"e.g. {', '.join(examples)}"
        )
    return values.astype("int64")


def _scores(values: ArrayLike, n: int, name: str, *, is_probability: bool) -> np.ndarray:
    scores = np.asarray(values, dtype="float64")
    if scores.shape != (n,):
        raise ValueError(f"{name}: expected {n} scores (one per label), got shape {scores.shape}")
    not_finite = ~np.isfinite(scores)
    if not_finite.any():
        raise ValueError(f"{name}: {int(not_finite.sum())} of {n} scores are NaN or infinite")
    if is_probability and ((scores < 0) | (scores > 1)).any():
        outside = scores[(scores < 0) | (scores > 1)]
        raise ValueError(
            f"{name}: probabilities must lie in [0, 1]; {len(outside)} do not (e.g. {outside[0]:g}); "
            "pass is_probability=False for a plain score"
        )
    return scores


def _top_count(n: int, fraction: float) -> int:
    """ceil(fraction x n), at least 1 (the small tolerance keeps 0.1 x 30 at 3, not 4)."""
    return max(1, math.ceil(fraction * n - 1e-9))


def _positives_in_top(y: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Churners among the k highest scores; the customers tied with the k-th score share the places
    left at the boundary equally (the expected count under a random tie-break)."""
    if k >= len(scores):
        return float(y.sum())
    threshold = np.partition(scores, len(scores) - k)[len(scores) - k]  # the k-th highest score
    above = scores > threshold
    tied = scores == threshold
    places = k - int(above.sum())
    return float(y[above].sum()) + float(y[tied].sum()) * places / int(tied.sum())


def classifier_metrics(
    name: str, y_true: ArrayLike, probability_or_score: ArrayLike, *, is_probability: bool = True
) -> ClassifierMetrics:
    """Ranking, probability and top-decile metrics of one classifier on the held-out customers.

    ``probability_or_score``: higher means more likely to churn. With ``is_probability=False`` (a
    score such as days since the last purchase) Brier score and log loss are NaN. Raises
    ``ValueError`` for labels other than 0/1, non-finite scores, probabilities outside [0, 1] or no
    customers.

    Parameters
    ----------
    name
        The classifier's name, kept in the result and used in messages.
    y_true
        The 0/1 churn label per customer (bools accepted).
    probability_or_score
        One score per customer, higher for more likely to churn.
    is_probability
        Whether the scores are probabilities of churn (Brier score, log loss and ECE need them).

    Returns
    -------
    ClassifierMetrics
        The metrics; NaN where undefined (see :class:`ClassifierMetrics`).

    Raises
    ------
    ValueError
        A label is not 0/1, a score is not finite or (for a probability) outside [0, 1], their
        lengths differ, or there is no customer.
    """
    y = _labels(y_true)
    n = len(y)
    if n == 0:
        raise ValueError(f"{name}: no customers to evaluate")
    scores = _scores(probability_or_score, n, name, is_probability=is_probability)
    positives = int(y.sum())
    both_classes = 0 < positives < n

    k = _top_count(n, TOP_FRACTION)
    in_top = _positives_in_top(y, scores, k)
    base_rate = positives / n
    return ClassifierMetrics(
        name=name,
        n=n,
        positives=positives,
        base_rate=base_rate,
        roc_auc=float(roc_auc_score(y, scores)) if both_classes else math.nan,
        pr_auc=float(average_precision_score(y, scores)) if both_classes else math.nan,
        brier=float(brier_score_loss(y, scores, pos_label=1)) if is_probability else math.nan,
        log_loss=float(log_loss(y, scores, labels=[0, 1])) if is_probability else math.nan,
        top_decile_lift=(in_top / k) / base_rate if positives else math.nan,
        top_decile_capture=in_top / positives if positives else math.nan,
        ece=expected_calibration_error(y, scores) if is_probability else math.nan,
        distinct_values=int(np.unique(scores).size),
    )


def capture_curve(y_true: ArrayLike, score: ArrayLike, n_bins: int = 10) -> pd.DataFrame:
    """Cumulative capture by targeted share: for j = 1..``n_bins``, the ceil(j n / n_bins) customers
    with the highest scores (ties shared as in the top decile), how many churners they hold
    (``churners``, fractional at a shared tie), the share of all churners (``capture``) and
    ``lift`` = capture / share targeted. Row j = n_bins / 10 is the top decile of
    :func:`classifier_metrics`.

    Parameters
    ----------
    y_true
        The 0/1 churn label per customer (bools accepted).
    score
        One finite score per customer, higher for more likely to churn.
    n_bins
        Number of targeted shares (``j / n_bins``, j = 1..n_bins).

    Returns
    -------
    pandas.DataFrame
        The columns :data:`CAPTURE_COLUMNS`, one row per share; ``capture`` and ``lift`` are NaN
        without churners.

    Raises
    ------
    ValueError
        ``n_bins`` is below 1, a label is not 0/1, a score is not finite, or there is no customer.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y = _labels(y_true)
    if len(y) == 0:
        raise ValueError("capture_curve: no customers")
    scores = _scores(score, len(y), "capture_curve", is_probability=False)
    positives = int(y.sum())
    rows = []
    for j in range(1, n_bins + 1):
        k = _top_count(len(y), j / n_bins)
        churners = _positives_in_top(y, scores, k)
        capture = churners / positives if positives else math.nan
        rows.append((j / n_bins, k, churners, capture, capture / (k / len(y))))
    return pd.DataFrame(rows, columns=list(CAPTURE_COLUMNS)).astype({"customers": "int64"})


# --- calibration ----------------------------------------------------------------------------------


def reliability_curve(y_true: ArrayLike, probability: ArrayLike, n_bins: int = 10) -> pd.DataFrame:
    """Observed churn rate against mean predicted probability on quantile bins.

    The edges are the 0, 1/n_bins, ..., 1 quantiles of ``probability``; bins are closed on the right
    (the first also on the left), as ``pandas.qcut`` cuts. Edges that coincide (many customers with
    one probability, as isotonic calibration produces) are merged, so there may be fewer than
    ``n_bins`` bins and a tied value never straddles two. One row per non-empty bin: its edges
    (``lower``, ``upper``), ``mean_predicted``, ``observed_rate`` and ``count``.

    Parameters
    ----------
    y_true
        The 0/1 churn label per customer (bools accepted).
    probability
        The predicted probability of churn per customer, in [0, 1].
    n_bins
        Number of quantile bins before coinciding edges are merged.

    Returns
    -------
    pandas.DataFrame
        The columns :data:`RELIABILITY_COLUMNS`, one row per non-empty bin, on a RangeIndex ``bin``.

    Raises
    ------
    ValueError
        ``n_bins`` is below 1, a label is not 0/1, a probability is not finite or outside [0, 1], or
        there is no customer.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y = _labels(y_true)
    if len(y) == 0:
        raise ValueError("reliability_curve: no customers")
    p = _scores(probability, len(y), "reliability_curve", is_probability=True)
    edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
    # searchsorted(side="left") on the inner edges: a value equal to an edge falls in the bin below it.
    bins = np.searchsorted(edges[1:-1], p, side="left")
    frame = pd.DataFrame({"bin": bins, "p": p, "y": y})
    grouped = frame.groupby("bin").agg(
        mean_predicted=("p", "mean"), observed_rate=("y", "mean"), count=("y", "size")
    )
    lower, upper = (edges[:-1], edges[1:]) if len(edges) > 1 else (edges, edges)
    grouped["lower"] = lower[grouped.index]
    grouped["upper"] = upper[grouped.index]
    grouped.index = pd.RangeIndex(len(grouped), name="bin")
    grouped["count"] = grouped["count"].astype("int64")
    return grouped[list(RELIABILITY_COLUMNS)]


def calibration_error_of(curve: pd.DataFrame) -> float:
    """ECE of a :func:`reliability_curve`: sum over bins of count / n x |observed rate - mean predicted|.

    Parameters
    ----------
    curve
        A reliability curve (its ``count``, ``observed_rate`` and ``mean_predicted`` columns).

    Returns
    -------
    float
        The ECE, in [0, 1].
    """
    counts = curve["count"].to_numpy(dtype="float64")
    gaps = np.abs(curve["observed_rate"].to_numpy(dtype="float64") - curve["mean_predicted"].to_numpy(dtype="float64"))
    return float((counts * gaps).sum() / counts.sum())


def expected_calibration_error(y_true: ArrayLike, probability: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error on the quantile bins of :func:`reliability_curve` (Naeini, Cooper &
    Hauskrecht 2015): the count-weighted mean gap between observed rate and mean predicted probability.
    0 for perfect calibration; even a calibrated model shows a small value from sampling noise.

    Parameters
    ----------
    y_true
        The 0/1 churn label per customer (bools accepted).
    probability
        The predicted probability of churn per customer, in [0, 1].
    n_bins
        Number of quantile bins (:func:`reliability_curve`).

    Returns
    -------
    float
        The ECE, in [0, 1].

    Raises
    ------
    ValueError
        As :func:`reliability_curve`.
    """
    return calibration_error_of(reliability_curve(y_true, probability, n_bins))


# --- baselines ------------------------------------------------------------------------------------


def _require(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the {what} frame lacks column(s) {', '.join(missing)} (it has {list(frame.columns)})")


def _features(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> np.ndarray:
    _require(frame, columns, what)
    values = frame[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype="float64")
    bad = ~np.isfinite(values)
    if bad.any():
        counts = {c: int(n) for c, n in zip(columns, bad.sum(axis=0)) if n}
        described = ", ".join(f"{c} ({n} rows)" for c, n in counts.items())
        raise ValueError(f"the {what} frame has missing or non-numeric values in {described}")
    return values


@dataclass(frozen=True)
class Baselines:
    """The two baselines that are fitted, both on the training rows only.

    ``rfm``: standardised frequency, recency, T, monetary value -> logistic regression.
    ``recency``: standardised days since the last purchase -> logistic regression (turns the score
    into a probability for Brier score and log loss). ``n_train`` / ``train_positives``: the rows and
    churners they were fitted on.

    The baselines of the comparison (:func:`fit_baselines`, :func:`baseline_metrics`), on the same
    customers as the model:

    - ``1 - P(alive) (BG/NBD)``: the CLV model's probability of having dropped out, from the
      ``clv_probability_alive`` feature (nothing to fit; skipped, with a note, when that column is
      missing or all NaN);
    - ``days since last purchase``: the ranking metrics use the number of days itself; for Brier and
      log loss it is turned into a probability by the one-feature logistic regression ``recency`` (a
      monotone map when its slope is positive, so it ranks as the raw days do);
    - ``logistic regression on RFM``: ``rfm``, on frequency, recency, T and monetary value.
    """

    rfm: Pipeline
    recency: Pipeline
    n_train: int
    train_positives: int
    label: str = LABEL

    def rfm_probability(self, frame: pd.DataFrame) -> np.ndarray:
        """P(churn) of the RFM logistic regression for each row of ``frame``.

        Parameters
        ----------
        frame
            Rows with finite ``frequency``, ``recency``, ``T`` and ``monetary_value``.

        Returns
        -------
        numpy.ndarray
            One probability per row.

        Raises
        ------
        ValueError
            A feature a baseline reads is missing or not a finite number.
        """
        return self.rfm.predict_proba(_features(frame, RFM_FEATURES, "scored"))[:, 1]

    def recency_probability(self, frame: pd.DataFrame) -> np.ndarray:
        """P(churn) of the logistic fit on days since the last purchase for each row of ``frame``.

        Parameters
        ----------
        frame
            Rows with finite ``days_since_last_order``.

        Returns
        -------
        numpy.ndarray
            One probability per row.

        Raises
        ------
        ValueError
            A feature a baseline reads is missing or not a finite number.
        """
        return self.recency.predict_proba(_features(frame, (RECENCY_FEATURE,), "scored"))[:, 1]

    def scores(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Each baseline's ranking score on ``frame`` (:func:`baseline_scores`), for the lift plot.

        Parameters
        ----------
        frame
            The rows to score (:func:`baseline_scores`).

        Returns
        -------
        dict[str, numpy.ndarray]
            Baseline name -> one score per row.

        Raises
        ------
        ValueError
            A feature a baseline reads is missing or not a finite number.
        """
        return baseline_scores(self, frame)

    def reliability_curves(self, frame: pd.DataFrame, n_bins: int = 10) -> dict[str, pd.DataFrame]:
        """The reliability curve of each baseline's probability on ``frame`` (rows with the label;
        1 - P(alive) on the customers that have it), for the reliability plot.

        Parameters
        ----------
        frame
            The rows, with the label column and the features the baselines read.
        n_bins
            Number of quantile bins of each curve (:func:`reliability_curve`).

        Returns
        -------
        dict[str, pandas.DataFrame]
            Baseline name -> its reliability curve.

        Raises
        ------
        ValueError
            A feature a baseline reads is missing or not a finite number.
        """
        y = _labels(frame[self.label], f"column {self.label!r}")
        curves: dict[str, pd.DataFrame] = {}
        for name, probability in baseline_probabilities(self, frame).items():
            known = ~np.isnan(probability)
            curves[name] = reliability_curve(y[known], probability[known], n_bins)
        return curves

    def to_params(self) -> dict[str, float]:
        """The fitted coefficients (per standard deviation of each feature) and intercepts, for tracking.

        Returns
        -------
        dict[str, float]
            ``<prefix>_coef_<feature>`` and ``<prefix>_intercept`` of the RFM and the recency regressions.
        """
        params: dict[str, float] = {}
        for prefix, pipeline, columns in (
            (BASELINE_METRIC_PREFIXES[RFM_BASELINE], self.rfm, RFM_FEATURES),
            (BASELINE_METRIC_PREFIXES[RECENCY_BASELINE], self.recency, (RECENCY_FEATURE,)),
        ):
            model: LogisticRegression = pipeline[-1]
            for column, coefficient in zip(columns, model.coef_[0]):
                params[f"{prefix}_coef_{column}"] = float(coefficient)
            params[f"{prefix}_intercept"] = float(model.intercept_[0])
        return params


def _logistic() -> Pipeline:
    # Default L2 penalty (C = 1) on standardised features: negligible with thousands of training
    # rows, and it keeps the fit finite when a feature separates the classes.
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def fit_baselines(train: pd.DataFrame, *, label: str = LABEL) -> Baselines:
    """Fit the RFM logistic regression and the logistic transform of days since the last purchase on
    ``train`` (the training rows: every customer at every training cutoff). The held-out rows are
    never seen. Raises ``ValueError`` naming missing columns or values, a label that is not 0/1, or a
    training set with only one class.

    Parameters
    ----------
    train
        The training rows: the RFM features, ``days_since_last_order`` and the label.
    label
        The label's column.

    Returns
    -------
    Baselines
        The two fitted regressions and the rows and churners they were fitted on.

    Raises
    ------
    ValueError
        A column is missing, a feature is not a finite number, a label is not 0/1, or the rows hold
        a single class.
    """
    _require(train, (label,), "training")
    y = _labels(train[label], f"training column {label!r}")
    positives = int(y.sum())
    if not 0 < positives < len(y):
        raise ValueError(
            f"the training rows need churners and non-churners to fit the baselines; "
            f"{label!r} has {positives} churners among {len(y)} rows"
        )
    rfm = _logistic().fit(_features(train, RFM_FEATURES, "training"), y)
    recency = _logistic().fit(_features(train, (RECENCY_FEATURE,), "training"), y)
    slope = float(recency[-1].coef_[0, 0])
    if slope <= 0:
        logger.warning(
            "on the training rows churn does not rise with days since the last purchase (slope %.3g per "
            "standard deviation): its probability ranks customers the other way round from the raw days",
            slope,
        )
    return Baselines(rfm=rfm, recency=recency, n_train=len(y), train_positives=positives, label=label)


def _p_alive_scores(test: pd.DataFrame) -> tuple[np.ndarray | None, str | None]:
    """1 - P(alive) on the rows that have it (a mask applied by the caller) and a note, or None and why."""
    if PROBABILITY_ALIVE not in test.columns:
        return None, f"baseline {P_ALIVE_BASELINE!r} skipped: the test frame has no {PROBABILITY_ALIVE} column"
    p_alive = pd.to_numeric(test[PROBABILITY_ALIVE], errors="coerce").to_numpy(dtype="float64")
    if np.isnan(p_alive).all():
        return None, (
            f"baseline {P_ALIVE_BASELINE!r} skipped: {PROBABILITY_ALIVE} is empty (NaN) for all "
            f"{len(test)} test customers (no CLV fit at this cutoff)"
        )
    missing = int(np.isnan(p_alive).sum())
    note = None
    if missing:
        note = (
            f"baseline {P_ALIVE_BASELINE!r} is measured on the {len(test) - missing} of {len(test)} test "
            f"customers that have {PROBABILITY_ALIVE} ({missing} are NaN)"
        )
    return 1.0 - p_alive, note


def baseline_scores(baselines: Baselines, test: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each baseline's ranking score on the rows of ``test`` (higher = more likely to churn):
    1 - P(alive) (NaN where P(alive) is), the raw days since the last purchase, and the RFM model's
    probability. For :func:`~training.churn.plots.plot_lift`.

    Parameters
    ----------
    baselines
        The baselines fitted on the training rows (:func:`fit_baselines`).
    test
        The held-out rows: the features the baselines read (and ``clv_probability_alive`` when known).

    Returns
    -------
    dict[str, numpy.ndarray]
        Baseline name -> one score per row; 1 - P(alive) is left out when the column is missing or
        all NaN.

    Raises
    ------
    ValueError
        A feature a baseline reads is missing or not a finite number.
    """
    scores: dict[str, np.ndarray] = {}
    p_alive, _ = _p_alive_scores(test)
    if p_alive is not None:
        scores[P_ALIVE_BASELINE] = p_alive
    scores[RECENCY_BASELINE] = _features(test, (RECENCY_FEATURE,), "test")[:, 0]
    scores[RFM_BASELINE] = baselines.rfm_probability(test)
    return scores


def baseline_probabilities(baselines: Baselines, test: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each baseline's churn probability on the rows of ``test``: 1 - P(alive) (NaN where P(alive) is),
    the logistic transform of days since the last purchase, and the RFM model. For reliability curves.

    Parameters
    ----------
    baselines
        The baselines fitted on the training rows (:func:`fit_baselines`).
    test
        The held-out rows: the features the baselines read (and ``clv_probability_alive`` when known).

    Returns
    -------
    dict[str, numpy.ndarray]
        Baseline name -> one probability per row; 1 - P(alive) is left out when the column is missing
        or all NaN.

    Raises
    ------
    ValueError
        A feature a baseline reads is missing or not a finite number.
    """
    probabilities: dict[str, np.ndarray] = {}
    p_alive, _ = _p_alive_scores(test)
    if p_alive is not None:
        probabilities[P_ALIVE_BASELINE] = p_alive
    probabilities[RECENCY_BASELINE] = baselines.recency_probability(test)
    probabilities[RFM_BASELINE] = baselines.rfm_probability(test)
    return probabilities


def baseline_notes(baselines: Baselines, test: pd.DataFrame) -> tuple[str, ...]:
    """What a reader of the baseline rows must know: how days since the last purchase got a probability,
    and why 1 - P(alive) is missing or measured on fewer customers.

    Parameters
    ----------
    baselines
        The baselines fitted on the training rows (:func:`fit_baselines`).
    test
        The held-out rows: the features the baselines read (and ``clv_probability_alive`` when known).

    Returns
    -------
    tuple[str, ...]
        The note on the recency baseline, then the one on 1 - P(alive) when it is missing or partial.
    """
    notes = [
        f"baseline {RECENCY_BASELINE!r}: ROC AUC, PR AUC and top-decile lift rank the customers by the days "
        f"themselves; its Brier score and log loss use a logistic fit of churn on those days over the "
        f"{baselines.n_train:,} training rows"
    ]
    _, note = _p_alive_scores(test)
    if note:
        notes.append(note)
    return tuple(notes)


def baseline_metrics(baselines: Baselines, test: pd.DataFrame) -> dict[str, ClassifierMetrics]:
    """The baselines' metrics on the held-out customers, keyed by name (:data:`BASELINE_NAMES`).

    ``1 - P(alive) (BG/NBD)`` is left out when ``clv_probability_alive`` is missing or all NaN, and
    measured on the customers that have it otherwise; :func:`baseline_notes` says so (and it is
    logged). ``days since last purchase`` ranks by the days and takes Brier score and log loss from
    the logistic transform fitted on the training rows.

    Parameters
    ----------
    baselines
        The baselines fitted on the training rows (:func:`fit_baselines`).
    test
        The held-out rows with the label and the features the baselines read.

    Returns
    -------
    dict[str, ClassifierMetrics]
        Baseline name -> its metrics on the held-out customers.

    Raises
    ------
    ValueError
        The label column is missing or not 0/1, or a feature is missing or not a finite number.
    """
    _require(test, (baselines.label,), "test")
    y = _labels(test[baselines.label], f"test column {baselines.label!r}")
    results: dict[str, ClassifierMetrics] = {}

    p_alive, note = _p_alive_scores(test)
    if note:
        logger.warning("%s", note)
    if p_alive is not None:
        known = ~np.isnan(p_alive)
        results[P_ALIVE_BASELINE] = classifier_metrics(P_ALIVE_BASELINE, y[known], p_alive[known])

    days = _features(test, (RECENCY_FEATURE,), "test")[:, 0]
    ranking = classifier_metrics(RECENCY_BASELINE, y, days, is_probability=False)
    calibrated = classifier_metrics(RECENCY_BASELINE, y, baselines.recency_probability(test))
    results[RECENCY_BASELINE] = replace(ranking, brier=calibrated.brier, log_loss=calibrated.log_loss,
                                        ece=calibrated.ece)

    results[RFM_BASELINE] = classifier_metrics(RFM_BASELINE, y, baselines.rfm_probability(test))
    return results


# --- the learner served ---------------------------------------------------------------------------

#: The name of the model served in the tables, by learner (:data:`training.churn.model.LEARNERS`).
SERVED_NAMES: dict[str, str] = {"lightgbm": "LightGBM", "logistic_rfm": f"{RFM_BASELINE} (served)"}


@dataclass(frozen=True)
class LearnerChoice:
    """Which learner is served, from the ROC AUCs on the validation cutoff (``n`` customers):
    LightGBM's raw probability (before the calibration map, which is fitted on those rows) with its
    configured values, not the searched ones, and the RFM logistic regression's (fitted on the
    training rows only): each learner fitted once, as given, so neither is the best of many tries
    on the rows that judge them."""

    learner: str
    lightgbm_roc_auc: float
    logistic_rfm_roc_auc: float
    n: int

    @property
    def message(self) -> str:
        """The choice in one sentence, with both ROC AUCs.

        Returns
        -------
        str
            Which learner is served and why.
        """
        numbers = (f"validation ROC AUC on {self.n:,} customers: LightGBM with its configured values "
                   f"{self.lightgbm_roc_auc:.3f}, {RFM_BASELINE} {self.logistic_rfm_roc_auc:.3f}")
        if self.learner == "lightgbm":
            return f"learner LightGBM ({numbers}); a search tunes it after this choice"
        return (f"learner {RFM_BASELINE}: it ranks the validation cutoff better than LightGBM ({numbers}), "
                f"so it is the model fitted, judged on the test cutoff and registered")

    def to_params(self) -> dict[str, object]:
        """The choice as run parameters, for tracking.

        Returns
        -------
        dict[str, object]
            ``learner``, what was compared, both validation ROC AUCs (6 decimals) and the customers.
        """
        return {"learner": self.learner, "learner.compared": "configured LightGBM vs logistic_rfm",
                "validation_roc_auc.lightgbm": round(self.lightgbm_roc_auc, 6),
                "validation_roc_auc.logistic_rfm": round(self.logistic_rfm_roc_auc, 6), "validation_customers": self.n}


def choose_learner(lightgbm_probability: ArrayLike, baselines: Baselines, valid: pd.DataFrame) -> LearnerChoice:
    """LightGBM unless the RFM logistic regression's ROC AUC on ``valid`` is strictly higher (a tie
    keeps LightGBM). ``lightgbm_probability``: LightGBM's raw probability on ``valid`` with its
    configured values. Its number is a little optimistic, its early stopping watched these rows: the
    logistic regression has to win despite that. A searched LightGBM's would be much more so (the
    best of up to 40 trials on these rows, an edge that did not carry to the test cutoff on Online
    Retail II's last year): the search runs after the choice.

    Parameters
    ----------
    lightgbm_probability
        LightGBM's raw probability of churn per row of ``valid``.
    baselines
        The baselines fitted on the training rows (:func:`fit_baselines`).
    valid
        The validation rows, with the label and the RFM features.

    Returns
    -------
    LearnerChoice
        The learner (``lightgbm`` or ``logistic_rfm``) and both ROC AUCs.

    Raises
    ------
    ValueError
        The label column is missing or not 0/1, a feature is not a finite number, or the
        probabilities do not match the rows.
    """
    _require(valid, (baselines.label,), "validation")
    y = _labels(valid[baselines.label], f"validation column {baselines.label!r}")
    lightgbm = classifier_metrics("LightGBM", y, lightgbm_probability).roc_auc
    logistic = classifier_metrics(RFM_BASELINE, y, baselines.rfm_probability(valid)).roc_auc
    learner = "logistic_rfm" if math.isfinite(logistic) and not logistic <= lightgbm else "lightgbm"
    return LearnerChoice(learner=learner, lightgbm_roc_auc=lightgbm, logistic_rfm_roc_auc=logistic, n=len(y))


# --- gate and tables ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChurnGate:
    """Whether the churn model may be promoted: only if its ROC AUC beats the best baseline's.

    ``best_baseline``: the name of the baseline with the highest ROC AUC (None when no baseline has
    one); ``margin`` = model ROC AUC - best baseline ROC AUC (NaN when either is undefined);
    ``reasons``: sentences with the numbers.

    The model compared is the one served (:func:`choose_learner`: LightGBM or the logistic
    regression on RFM); when it is the RFM regression, that baseline is not its own competitor and
    it must beat the remaining ones.
    """

    eligible: bool
    best_baseline: str | None
    margin: float
    reasons: tuple[str, ...]

    @property
    def message(self) -> str:
        """The verdict and its reasons in one line.

        Returns
        -------
        str
            ``eligible for promotion: ...`` or ``not eligible for promotion: ...``.
        """
        verdict = "eligible for promotion" if self.eligible else "not eligible for promotion"
        return f"{verdict}: " + "; ".join(self.reasons)

    def to_metrics(self) -> dict[str, float]:
        """``gate_eligible`` (1 or 0) and ``gate_roc_auc_margin``, for tracking.

        Returns
        -------
        dict[str, float]
            ``gate_eligible`` and ``gate_roc_auc_margin`` (NaN when undefined).
        """
        return {"gate_eligible": float(self.eligible), "gate_roc_auc_margin": float(self.margin)}


def churn_gate(model: ClassifierMetrics, baselines: Mapping[str, ClassifierMetrics]) -> ChurnGate:
    """The model is eligible only if its ROC AUC is strictly higher than every baseline's; a tie is not
    a win. An undefined model AUC, or no baseline with an AUC to beat, makes it ineligible: nothing
    shows it beats the baselines.

    Parameters
    ----------
    model
        The served model's metrics on the test cutoff.
    baselines
        The baselines' metrics on the same customers, by name.

    Returns
    -------
    ChurnGate
        The verdict, the best baseline, the margin and the reasons.
    """
    ranked = sorted(
        ((name, m.roc_auc) for name, m in baselines.items() if math.isfinite(m.roc_auc)),
        key=lambda item: item[1],
        reverse=True,
    )
    others = "; ".join(f"{name} {auc:.3f}" for name, auc in ranked[1:])
    others_text = f" (other baselines: {others})" if others else ""

    if not math.isfinite(model.roc_auc):
        return ChurnGate(
            eligible=False,
            best_baseline=ranked[0][0] if ranked else None,
            margin=math.nan,
            reasons=(
                f"{model.name}'s ROC AUC is undefined on the test cutoff ({model.positives} churners among "
                f"{model.n} customers): it cannot be compared with the baselines",
            ),
        )
    if not ranked:
        return ChurnGate(
            eligible=False,
            best_baseline=None,
            margin=math.nan,
            reasons=(
                f"no baseline has a ROC AUC to compare {model.name}'s {model.roc_auc:.3f} with "
                f"(baselines: {', '.join(baselines) or 'none'})",
            ),
        )
    best, best_auc = ranked[0]
    margin = model.roc_auc - best_auc
    comparison = (
        f"{model.name}'s ROC AUC {model.roc_auc:.3f} vs the best baseline, {best}, {best_auc:.3f}: "
        f"margin {margin:+.3f}{others_text}"
    )
    if margin > 0:
        return ChurnGate(True, best, margin, (f"{comparison}; it beats the best baseline by {margin:.3f}",))
    shortfall = (
        "only ties with the best baseline" if margin == 0 else f"falls short of the best baseline by {-margin:.3f}"
    )
    return ChurnGate(False, best, margin, (f"{comparison}; it {shortfall} and must beat it to be promoted",))


def metrics_table(model: ClassifierMetrics, baselines: Mapping[str, ClassifierMetrics]) -> pd.DataFrame:
    """One row for the model (named by ``model.name``) then one per baseline (named by its key), with
    the columns of :data:`TABLE_COLUMNS`; floats, NaN where a metric is undefined.

    Parameters
    ----------
    model
        The served model's metrics.
    baselines
        The baselines' metrics, by name.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``model`` (the names), columns :data:`TABLE_COLUMNS`.

    Raises
    ------
    ValueError
        The model's name is also a baseline's.
    """
    rows = {model.name: model, **baselines}
    if len(rows) != 1 + len(baselines):
        raise ValueError(f"the model's name {model.name!r} is also the name of a baseline")
    values = [
        (m.roc_auc, m.pr_auc, m.brier, m.log_loss, m.ece, m.top_decile_lift, m.top_decile_capture)
        for m in rows.values()
    ]
    return pd.DataFrame(values, index=pd.Index(list(rows), name="model"), columns=list(TABLE_COLUMNS)).astype(
        "float64"
    )


def importance_table(importance: pd.Series) -> pd.DataFrame:
    """Feature importances (total gain of the splits on each feature) sorted from the largest, with
    each feature's ``share`` of the total gain. Raises ``ValueError`` for negative or missing gains.

    Parameters
    ----------
    importance
        Total gain by feature name.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``feature``, columns :data:`IMPORTANCE_COLUMNS`, largest gain first; the shares are
        0 when the total gain is 0.

    Raises
    ------
    ValueError
        A gain is negative, missing or not a number.
    """
    gain = pd.to_numeric(importance, errors="coerce").astype("float64")
    bad = gain[~np.isfinite(gain) | (gain < 0)]
    if not bad.empty:
        raise ValueError(
            f"feature importances must be finite gains >= 0; {len(bad)} are not, "
            f"e.g. {bad.index[0]!r} = {bad.iloc[0]}"
        )
    total = float(gain.sum())
    table = pd.DataFrame({"gain": gain, "share": gain / total if total > 0 else 0.0})
    table = table.sort_values("gain", ascending=False, kind="stable")
    table.index.name = "feature"
    return table[list(IMPORTANCE_COLUMNS)]
