"""Benchmark: fit BG/NBD + Gamma-Gamma and score every customer, on 1,000,000 synthetic customers.

The customers' RFM features are drawn directly from the generative processes (numpy, vectorised;
no raw files): first purchase uniform over three years (at least 90 days before the end), purchase
rate lambda ~ Gamma(r, alpha) per day, drop-out p ~ Beta(a, b) after each repeat purchase (BG/NBD,
Fader, Hardie & Lee 2005a), order value ~ Gamma(p, nu) with nu ~ Gamma(q, gamma) (Gamma-Gamma,
Fader & Hardie 2013); recency and T in whole days, as ``features.customer`` measures them.

    python benchmarks/clv.py [--customers 1000000] [--runs 3]

Prints the median seconds of ``ClvModel.fit`` (both models, compressed likelihood, segment
thresholds) and of ``ClvModel.predict`` (every output, intervals included) over the runs, the
BG/NBD fit alone with and without compressing identical (frequency, recency, T) rows, and peak
RSS. Targets on 2 cores: fit < 5 s, predict < 30 s.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This folder holds a features.py of its own: make sure `features` is the project's package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from synthetic.generate import TrueParameters  # noqa: E402
from training.clv.adapter import fit_purchase_model  # noqa: E402
from training.clv.model import ClvModel  # noqa: E402

WINDOW_DAYS = 3 * 365
MIN_OBSERVATION_DAYS = 90
CUTOFF = datetime(2026, 1, 1)


def synthesise(n: int, seed: int, truth: TrueParameters) -> pd.DataFrame:
    """RFM features of ``n`` customers drawn from BG/NBD + Gamma-Gamma with parameters ``truth`` (days)."""
    rng = np.random.default_rng(seed)
    T = np.floor(rng.uniform(MIN_OBSERVATION_DAYS, WINDOW_DAYS, n))
    lam = rng.gamma(truth.r, 1.0 / truth.alpha, n)
    p_drop = rng.beta(truth.a, truth.b, n)
    # Repeat purchases before dropping out J ~ Geometric(p); arrivals in (0, T] N ~ Poisson(lambda T);
    # the customer makes x = min(J, N) of them. The x-th of N uniform arrivals is T * Beta(x, N - x + 1).
    j = rng.geometric(np.maximum(p_drop, 1e-300))
    arrivals = rng.poisson(lam * T)
    x = np.minimum(j, arrivals)
    buyer = x > 0
    recency = np.zeros(n)
    recency[buyer] = np.floor(T[buyer] * rng.beta(x[buyer], arrivals[buyer] - x[buyer] + 1))
    nu = rng.gamma(truth.q, 1.0 / truth.gamma, n)
    # The mean of x order values Gamma(p, rate nu) is Gamma(p x, rate nu x).
    monetary = np.zeros(n)
    monetary[buyer] = rng.gamma(truth.p * x[buyer], 1.0 / (nu[buyer] * x[buyer]))
    first_order = rng.gamma(truth.p, 1.0 / nu)
    return pd.DataFrame(
        {
            "frequency": x.astype(np.float64),
            "recency": recency,
            "T": T,
            "monetary_value": monetary,
            "historic_clv": first_order + monetary * x,
        },
        index=pd.RangeIndex(n, name="customer_id"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    truth = TrueParameters()
    started = time.perf_counter()
    features = synthesise(args.customers, args.seed, truth)
    print(f"synthesised {len(features):,} customers in {time.perf_counter() - started:.1f} s "
          f"({int((features['frequency'] > 0).sum()):,} repeat customers)", flush=True)

    fit_s, predict_s, compressed_s, uncompressed_s = [], [], [], []
    model = ClvModel()
    scores = pd.DataFrame()
    for i in range(args.runs):
        t0 = time.perf_counter()
        model = ClvModel().fit(features, cutoff=CUTOFF)
        t1 = time.perf_counter()
        scores = model.predict(features)
        t2 = time.perf_counter()
        rfm = (features["frequency"], features["recency"], features["T"])
        with threadpool_limits(limits=1, user_api="blas"):
            fit_purchase_model("bgnbd", *rfm)
            t3 = time.perf_counter()
            fit_purchase_model("bgnbd", *rfm, compress=False)
        t4 = time.perf_counter()
        fit_s.append(t1 - t0)
        predict_s.append(t2 - t1)
        compressed_s.append(t3 - t2)
        uncompressed_s.append(t4 - t3)
        print(f"run {i + 1}: fit {fit_s[-1]:.2f} s, predict {predict_s[-1]:.2f} s, BG/NBD alone "
              f"{compressed_s[-1]:.2f} s compressed / {uncompressed_s[-1]:.2f} s uncompressed", flush=True)

    purchase, spend = model.purchase_params_, model.spend_params_
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print()
    print(f"customers                       {len(features):,}")
    print(f"distinct (frequency, recency, T) {purchase.n_rows:,}  (Gamma-Gamma: {spend.n_rows:,} of "
          f"{spend.n_customers:,})")
    print("BG/NBD fitted vs true           "
          + ", ".join(f"{k} {v:.4g} ({getattr(truth, k):g})" for k, v in purchase.as_dict().items()))
    print("Gamma-Gamma fitted vs true      "
          + ", ".join(f"{k} {v:.4g} ({getattr(truth, 'gamma' if k == 'v' else k):g})"
                      for k, v in spend.as_dict().items()))
    print(f"fit, both models (median)       {statistics.median(fit_s):.2f} s   (target < 5 s)")
    print(f"predict, all outputs (median)   {statistics.median(predict_s):.2f} s   (target < 30 s) -> "
          f"{len(features) / statistics.median(predict_s):,.0f} customers/s")
    print(f"BG/NBD fit alone (median)       {statistics.median(compressed_s):.2f} s compressed, "
          f"{statistics.median(uncompressed_s):.2f} s uncompressed")
    print(f"total CLV                       {scores['clv'].sum():,.0f} {model.currency_}")
    print(f"peak RSS                        {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
