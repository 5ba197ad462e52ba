"""Benchmark: train the churn model on 1,000,000 customer snapshots and score them all.

The snapshots (one row per customer and cutoff, every churn feature of the data set) are drawn with
numpy from a buy-till-you-die process, so the label carries a real but hidden signal: each customer
buys at a rate lambda ~ Gamma(0.8, mean 1 / 50 days); a third of them stopped buying at a uniform
moment of their tenure; ``churned`` = no purchase in the 90 days after the cutoff (a stopped customer,
or no Poisson(90 lambda) arrival). Only customers with an order in the year before the cutoff are
kept, as in the churn population of ``features.churn``. The features are what a store would see of that history: days
since the last order, order and spend windows, their changes, RFM, shares, a noisy BG/NBD-like
probability alive. The rows are split by cutoff like ``training.churn.dataset``: 8 cutoffs to train
on, the 9th to validate (early stopping, calibration), the 10th to test.

    python benchmarks/churn.py [--rows 1000000] [--runs 3] [--agreement-rows 20000]

Prints the median seconds over the runs of ``ChurnModel.fit`` (boosting with early stopping,
calibration, training percentiles), of ``ChurnModel.predict`` on every row without reasons
(probability, risk band, percentile) and with them (every output: path contributions and their
words), and the time of the path contributions alone (LightGBM's leaf of each row in each tree and
the sum of the per-leaf credits, ``PathContributions.contributions``); how often the top reason (the largest positive
contribution) is the same feature as TreeSHAP's (LightGBM's ``pred_contrib``) on
``--agreement-rows`` rows; test-cutoff AUC and expected calibration error; peak RSS. Targets on
2 cores: fit < 90 s, scoring every row with every output < 10 s.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This folder holds a features.py of its own: make sure `features` is the project's package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.special import expit  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from features.churn import CHURN_BASE_FEATURES, CHURNED  # noqa: E402
from training.churn.model import ChurnModel  # noqa: E402
from training.churn.reasons import CLV_EXPECTED_PURCHASES_90D, CLV_PROBABILITY_ALIVE  # noqa: E402

N_CUTOFFS = 10
HORIZON_DAYS = 90
POPULATION_DAYS = 365
FEATURE_NAMES = (*CHURN_BASE_FEATURES, CLV_PROBABILITY_ALIVE, CLV_EXPECTED_PURCHASES_90D)


def _orders_in(rng: np.random.Generator, lam: np.ndarray, start: np.ndarray, end: np.ndarray,
               a: float, b: float) -> np.ndarray:
    """Poisson orders in the window [a, b) days before the cutoff of a customer active from ``start``
    to ``end`` days before it (start > end)."""
    overlap = np.clip(np.minimum(b, start) - np.maximum(a, end), 0.0, None)
    return rng.poisson(lam * overlap)


def synthesise(n: int, seed: int) -> pd.DataFrame:
    """n customer snapshots with every churn feature, a ``cutoff`` number 0..9 and the label: the
    churn population, customers with an order in the year before the cutoff."""
    frame = _snapshots(2 * n, seed)
    frame = frame[frame["days_since_last_order"] < POPULATION_DAYS].head(n)
    if len(frame) < n:
        raise RuntimeError(f"only {len(frame):,} of {2 * n:,} synthetic customers ordered in the last year")
    return frame.reset_index(drop=True)


def _snapshots(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tenure = np.floor(rng.uniform(30.0, 1095.0, n))
    lam = rng.gamma(0.8, 1.0 / (0.8 * 50.0), n)  # orders per day
    stopped = rng.random(n) < 1.0 / 3.0
    # Active from `tenure` days before the cutoff until `end` days before it (0: still active).
    end = np.where(stopped, np.floor(rng.uniform(0.0, 1.0, n) * tenure), 0.0)
    active_days = tenure - end
    n_orders = 1 + rng.poisson(lam * active_days)
    gap_to_end = np.minimum(rng.exponential(1.0 / np.maximum(lam, 1e-6)), active_days)
    days_since = np.where(n_orders > 1, np.floor(end + gap_to_end), tenure)
    span = tenure - days_since
    avg_gap = np.where(n_orders > 1, span / np.maximum(n_orders - 1, 1), np.nan)
    order_value = rng.gamma(6.0, 50.0 / 6.0, n)

    windows = {"30d": (0.0, 30.0), "90d": (0.0, 90.0), "prev_90d": (90.0, 180.0), "prev_180d": (90.0, 270.0)}
    frame = pd.DataFrame({"cutoff": rng.integers(0, N_CUTOFFS, n)})
    for name, (a, b) in windows.items():
        orders = _orders_in(rng, lam, tenure, end, a, b)
        if a == 0.0:  # the last order falls in every recent window that reaches back to it
            orders = np.where(days_since < b, np.maximum(orders, 1), 0)
        frame[f"orders_{name}"] = orders.astype(np.int64)
        frame[f"spend_{name}"] = orders * order_value * rng.lognormal(0.0, 0.2, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        frame["spend_change_90d"] = np.where(frame["spend_prev_90d"] > 0,
                                             frame["spend_90d"] / frame["spend_prev_90d"] - 1.0, np.nan)
        frame["orders_change_90d"] = np.where(frame["orders_prev_90d"] > 0,
                                              frame["orders_90d"] / frame["orders_prev_90d"] - 1.0, np.nan)
    frame["frequency"] = (n_orders - 1).astype(np.float64)
    frame["recency"] = span
    frame["T"] = tenure
    frame["monetary_value"] = np.where(n_orders > 1, order_value * rng.lognormal(0.0, 0.1, n), 0.0)
    frame["historic_clv"] = n_orders * order_value
    frame["n_orders"] = n_orders.astype(np.int64)
    frame["avg_order_value"] = order_value
    frame["avg_days_between_orders"] = avg_gap
    frame["days_since_last_order"] = days_since
    frame["tenure_days"] = tenure
    frame["return_rate"] = rng.beta(1.0, 15.0, n)
    shares = rng.dirichlet([1.0, 1.0, 1.0, 0.3], n)
    for j, channel in enumerate(("web", "app", "store", "marketplace")):
        frame[f"share_{channel}"] = shares[:, j]
    frame["guest_share"] = rng.beta(0.5, 2.0, n)
    frame["n_categories"] = np.minimum(1 + rng.poisson(0.5 * n_orders), 12).astype(np.int64)
    # What a BG/NBD fit would roughly say: alive when the silence is short for the customer's rhythm.
    rhythm = np.where(n_orders > 1, avg_gap, 60.0)
    alive = expit(2.0 - 1.5 * days_since / np.maximum(rhythm, 1.0) + rng.normal(0.0, 0.7, n))
    frame[CLV_PROBABILITY_ALIVE] = alive
    expected = alive * HORIZON_DAYS / np.maximum(rhythm, 1.0)
    frame[CLV_EXPECTED_PURCHASES_90D] = np.where(rng.random(n) < 0.05, np.nan, expected)
    # Churned: stopped, or still active without an arrival in the next 90 days.
    buys = ~stopped & (rng.random(n) < 1.0 - np.exp(-lam * HORIZON_DAYS))
    frame[CHURNED] = (~buys).astype(np.int64)
    return frame[["cutoff", *FEATURE_NAMES, CHURNED]]


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    which = np.minimum((p * bins).astype(int), bins - 1)
    return float(sum((which == b).mean() * abs(y[which == b].mean() - p[which == b].mean())
                     for b in np.unique(which)))


def _top_reason(contributions: np.ndarray) -> np.ndarray:
    """The feature index of each row's largest positive contribution (first on ties), -1 if none."""
    top = np.argmax(contributions, axis=1)
    return np.where(np.take_along_axis(contributions, top[:, None], axis=1)[:, 0] > 0, top, -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--agreement-rows", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    started = time.perf_counter()
    frame = synthesise(args.rows, args.seed)
    train = frame[frame["cutoff"] < N_CUTOFFS - 2]
    valid = frame[frame["cutoff"] == N_CUTOFFS - 2]
    test = frame[frame["cutoff"] == N_CUTOFFS - 1]
    print(f"synthesised {len(frame):,} snapshots x {len(FEATURE_NAMES)} features in "
          f"{time.perf_counter() - started:.1f} s: train {len(train):,}, valid {len(valid):,}, test {len(test):,}; "
          f"churn rate {frame[CHURNED].mean():.3f}", flush=True)

    fit_s, score_s, reasons_s, contributions_s = [], [], [], []
    model = ChurnModel()
    scores = explained = pd.DataFrame()
    x_all = frame[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    for i in range(args.runs):
        t0 = time.perf_counter()
        model = ChurnModel(num_threads=args.threads, seed=args.seed).fit(train, valid, feature_names=FEATURE_NAMES,
                                                                  currency="GBP")
        t1 = time.perf_counter()
        scores = model.predict(frame, top_reasons=0)
        t2 = time.perf_counter()
        explained = model.predict(frame)
        t3 = time.perf_counter()
        model.path_contributions_.contributions(x_all, num_threads=args.threads)
        t4 = time.perf_counter()
        fit_s.append(t1 - t0)
        score_s.append(t2 - t1)
        reasons_s.append(t3 - t2)
        contributions_s.append(t4 - t3)
        print(f"run {i + 1}: fit {fit_s[-1]:.1f} s ({model.best_iteration_} trees), score all {score_s[-1]:.2f} s, "
              f"with reasons {reasons_s[-1]:.2f} s (path contributions alone {contributions_s[-1]:.2f} s)",
              flush=True)

    sample = x_all[np.random.default_rng(args.seed).choice(len(x_all), min(args.agreement_rows, len(x_all)),
                                                            replace=False)]
    path = model.path_contributions_.contributions(sample, num_threads=args.threads)[:, :-1]
    shap = model.booster_.predict(sample, pred_contrib=True, num_threads=args.threads)[:, :-1]
    agree = np.mean(_top_reason(path) == _top_reason(shap))

    y_test = test[CHURNED].to_numpy()
    p_test = scores.loc[test.index, "churn_probability"].to_numpy()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    bands = scores["risk_band"].value_counts(normalize=True).reindex(["low", "medium", "high"])
    print()
    print(f"rows                              {len(frame):,} ({len(FEATURE_NAMES)} features, {args.threads} threads)")
    print(f"fit (median of {args.runs})                  {statistics.median(fit_s):.1f} s   (target < 90 s); "
          f"{model.best_iteration_} of {model.n_estimators} trees")
    print(f"score all rows, no reasons        {statistics.median(score_s):.2f} s   (target < 10 s) -> "
          f"{len(frame) / statistics.median(score_s):,.0f} rows/s")
    print(f"score all rows, every output      {statistics.median(reasons_s):.2f} s   (target < 10 s) -> "
          f"{len(frame) / statistics.median(reasons_s):,.0f} rows/s")
    print(f"path contributions alone          {statistics.median(contributions_s):.2f} s")
    print(f"top reason = TreeSHAP's           {agree:.1%} of {len(sample):,} sampled rows")
    print(f"test AUC                          {roc_auc_score(y_test, p_test):.4f} (raw booster "
          f"{roc_auc_score(y_test, model.raw_probability(test)):.4f})")
    print(f"test ECE (10 bins)                {expected_calibration_error(y_test, p_test):.4f}; mean predicted "
          f"{p_test.mean():.3f} vs observed {y_test.mean():.3f}")
    print(f"risk bands (all rows)             low {bands['low']:.1%}, medium {bands['medium']:.1%}, "
          f"high {bands['high']:.1%}; thresholds {model.risk_thresholds_[0]:.3f} / {model.risk_thresholds_[1]:.3f}")
    print("top features by gain              " + ", ".join(model.feature_importance_gain_.index[:5]))
    print(f"example reasons                   {explained.iloc[0]['reason_1']!r}, {explained.iloc[0]['reason_2']!r}")
    print(f"peak RSS                          {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
