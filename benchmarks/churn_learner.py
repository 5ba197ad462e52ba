"""Measure: how each rule for choosing the churn learner fares on one history.

The churn data set is built as ``rapport train`` builds it (windows ``auto``, default settings) from
Online Retail II (``--online-retail full|year|months``: the whole file, or cut to its last year or its
last four months as ``tests/test_real_data_windows.py`` cuts it) or from a generated history
(``--shape``, ``--customers``, ``--seed``). Then, on the same rows:

- LightGBM with its configured values and the logistic regression on RFM, each fitted on the
  training cutoffs, scored on the validation cutoff (LightGBM before calibration, as the step
  compares them) and on the test cutoff;
- the search of LightGBM's leaves, leaf size and learning rate on the validation cutoff
  (``--budget`` seconds, the default 40), its chosen model scored the same way;
- a paired bootstrap of the validation customers (``--resamples``, seeded) of the searched
  LightGBM's ROC AUC minus the regression's.

and prints, for each rule, the learner it serves and that learner's test ROC AUC against the best
remaining baseline (the gate):

- ``searched vs logistic``: the searched LightGBM against the regression on the validation cutoff;
- ``configured vs logistic``: the configured LightGBM against the regression decides, the search then
  tunes the LightGBM chosen;
- ``bootstrap margin``: the searched LightGBM must beat the regression in 95 % of the resamples.

    python benchmarks/churn_learner.py --online-retail year [--budget 40]
    python benchmarks/churn_learner.py --shape one-year [--customers 10000] [--seed 7]

The search's trials depend on the machine's speed and load (``os.getloadavg`` is printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This folder holds a features.py of its own: make sure `features` is the project's package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))
for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(name, "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

RETAIL = ROOT.parent / "shared" / "data" / "online_retail_ii" / "online_retail_ii.csv.gz"
#: The first day kept of Online Retail II, by cut.
CUTS = {"full": None, "year": "2010-12-10", "months": "2011-08-10"}


def _store(folder: Path, args: argparse.Namespace):
    import duckdb

    from features.discovery import RawInput, discover
    from features.generate import generate
    from features.ingest import ingest
    from features.loaders import load_online_retail_ii
    from features.settings import load_settings
    from features.store import connect

    settings = load_settings(data_dir=folder / "state", train_search_budget_s=args.budget)
    con = connect(settings)
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    if args.online_retail:
        source, since = RETAIL, CUTS[args.online_retail]
        if since is not None:
            source = folder / "cut.csv"
            duckdb.sql(f"COPY (SELECT * FROM read_csv('{RETAIL}', all_varchar = true) WHERE "
                       f"CAST(InvoiceDate AS TIMESTAMP) >= TIMESTAMP '{since}') TO '{source}' (HEADER, DELIMITER ',')")
        tables = load_online_retail_ii(source, settings)
        ingest(con, [RawInput(name, name, table=tables[name]) for name in tables], settings, now=now,
               accept_quarantine=True)
    else:
        generate(folder / "raw", args.customers, args.seed, shape=args.shape)
        inputs, ignored = discover(folder / "raw")
        ingest(con, inputs, settings, now=now, ignored_paths=ignored)
    return settings, con


def _bootstrap_lower(y, first, second, resamples: int, seed: int, level: float = 0.05) -> tuple[float, float]:
    """The ``level`` quantile of ROC AUC(first) - ROC AUC(second) over paired resamples of the rows,
    and the share of resamples where first wins."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        rows = rng.integers(0, len(y), len(y))
        if 0 < y[rows].sum() < len(rows):
            diffs.append(roc_auc_score(y[rows], first[rows]) - roc_auc_score(y[rows], second[rows]))
    diffs = np.asarray(diffs)
    return float(np.quantile(diffs, level)), float((diffs > 0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--online-retail", choices=sorted(CUTS))
    parser.add_argument("--shape", default="default")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--budget", type=float, default=40.0)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()

    from features.store import ibis_backend
    from features.windows import churn_cutoffs
    from training.churn.dataset import build_dataset
    from training.churn.evaluation import (LABEL, RFM_BASELINE, RFM_FEATURES, baseline_metrics, churn_gate,
                                           classifier_metrics, fit_baselines)
    from training.churn.model import LOGISTIC_RFM, ChurnModel
    from training.churn.pipeline import configured_model, resolve_windows
    from training.churn.search import search_boosting, searched_model

    name = f"Online Retail II {args.online_retail}" if args.online_retail else \
        f"{args.shape}, {args.customers:,} customers, seed {args.seed}"
    with tempfile.TemporaryDirectory(prefix="rapport-churn-learner-") as tmp:
        t0 = time.perf_counter()
        settings, con = _store(Path(tmp), args)
        windows = resolve_windows(con, settings)
        horizon, lookback = int(windows["horizon_days"]), int(windows["lookback_days"])
        dataset = build_dataset(ibis_backend(con), cutoffs=churn_cutoffs(windows, settings.churn.max_cutoffs),
                                horizon_days=horizon, lookback_days=lookback, time_unit=settings.time_unit,
                                with_clv=settings.churn.with_clv_features)
        con.close()
        train, valid, test = dataset.split()
        print(f"{name}: H {horizon} d, lookback {lookback} d, spacing {windows['cutoff_spacing']}; "
              f"{train['cutoff'].nunique()} training cutoffs, {len(train):,} / {len(valid):,} / {len(test):,} rows; "
              f"data set in {time.perf_counter() - t0:.0f} s")

        y_valid, y_test = valid[LABEL].to_numpy(), test[LABEL].to_numpy()
        fit = {"feature_names": dataset.feature_names, "label": LABEL, "horizon_days": horizon,
               "lookback_days": lookback}
        configured = configured_model(settings)
        baselines = fit_baselines(train, label=LABEL)
        base = baseline_metrics(baselines, test)
        plain = configured.fit(train, valid, **fit)
        logistic = ChurnModel(**{**configured.get_params(), "learner": LOGISTIC_RFM}).fit(
            train, valid, **{**fit, "feature_names": RFM_FEATURES})
        t1 = time.perf_counter()
        search = search_boosting(configured, train, valid, feature_names=dataset.feature_names, label=LABEL,
                                 budget_s=args.budget)
        searched = searched_model(configured, search).fit(train, valid, **fit)
        print(f"search: {search.message} (load average {os.getloadavg()[0]:.1f}, {time.perf_counter() - t1:.0f} s)")

        def auc(y, p) -> float:
            return classifier_metrics("m", y, p).roc_auc

        valid_auc = {"configured": auc(y_valid, plain.raw_probability(valid)),
                     "searched": auc(y_valid, searched.raw_probability(valid)),
                     "logistic": auc(y_valid, baselines.rfm_probability(valid))}
        test_auc = {"configured": auc(y_test, plain.predict_proba(test)),
                    "searched": auc(y_test, searched.predict_proba(test)),
                    "logistic": auc(y_test, logistic.predict_proba(test))}
        lower, wins = _bootstrap_lower(y_valid, searched.raw_probability(valid), baselines.rfm_probability(valid),
                                       args.resamples, args.seed)
        print("validation ROC AUC: " + ", ".join(f"{k} {v:.4f}" for k, v in valid_auc.items())
              + f"; bootstrap of searched - logistic: 5 % quantile {lower:+.4f}, searched wins in {wins:.0%}")
        print("test ROC AUC: " + ", ".join(f"{k} {v:.4f}" for k, v in test_auc.items())
              + "; baselines " + ", ".join(f"{k} {m.roc_auc:.4f}" for k, m in base.items()))

        def verdict(learner: str) -> str:
            served = classifier_metrics(learner, y_test, {"configured": plain, "searched": searched,
                                                          "logistic": logistic}[learner].predict_proba(test))
            rivals = {k: m for k, m in base.items() if not (learner == "logistic" and k == RFM_BASELINE)}
            gate = churn_gate(served, rivals)
            return (f"{learner}: test {served.roc_auc:.4f} vs {gate.best_baseline} "
                    f"{served.roc_auc - gate.margin:.4f}, gate {'passes' if gate.eligible else 'fails'}")

        old = "searched" if not valid_auc["logistic"] > valid_auc["searched"] else "logistic"
        equal = "searched" if not valid_auc["logistic"] > valid_auc["configured"] else "logistic"
        margin = "searched" if lower > 0 else "logistic"
        for rule, learner in (("searched vs logistic", old), ("configured vs logistic", equal),
                              ("bootstrap margin", margin)):
            print(f"  {rule:24s} -> {verdict(learner)}")


if __name__ == "__main__":
    main()
