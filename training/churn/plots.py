"""Plots of a churn model's held-out evaluation, written as PNG files.

The reliability diagram (are the probabilities right?), the cumulative capture curve (how many
churners does a campaign on the top x % reach?) and the feature importances. Figures are drawn on
:class:`matplotlib.figure.Figure` objects with the Agg canvas, never through ``pyplot``: no global
figure registry, no window, nothing left open after the file is written, safe in a server or a
worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import PercentFormatter
from numpy.typing import ArrayLike

from training.churn.evaluation import (
    RELIABILITY_COLUMNS,
    calibration_error_of,
    capture_curve,
    importance_table,
)
from training.plotting import new_figure as _new_figure
from training.plotting import save_png as _save

_REFERENCE = "#7f7f7f"
#: Colours in the order of the mapping: the model first (strong), then the baselines.
_COLOURS = ("#d95f02", "#1f4e79", "#1b9e77", "#7570b3", "#e7298a", "#66a61e")
_MARKERS = ("o", "s", "^", "D", "v", "P")
#: Probability width the lower panel of the reliability diagram counts customers per.
_DENSITY_UNIT = 0.05
_MIN_BIN_WIDTH = 0.01



def _style(i: int) -> dict[str, Any]:
    """The first series (the model) is drawn thicker and solid; baselines thinner and dashed."""
    return {
        "color": _COLOURS[i % len(_COLOURS)],
        "marker": _MARKERS[i % len(_MARKERS)],
        "linewidth": 2.2 if i == 0 else 1.4,
        "linestyle": "-" if i == 0 else "--",
        "zorder": 3 if i == 0 else 2,
    }


def plot_reliability(curves: Mapping[str, pd.DataFrame], path: Path) -> Path:
    """Reliability diagram: observed churn rate against mean predicted probability per quantile bin
    (frames of :func:`~training.churn.evaluation.reliability_curve`), one line per model, the first
    being the model and the others the baselines that give probabilities; the diagonal is perfect
    calibration and each legend entry carries its ECE. A lower panel shows how the customers spread
    over the probabilities: each bin as a bar spanning its edges, as high as its customers per 0.05 of
    probability (quantile bins hold about equal counts, so their widths carry the information).

    Parameters
    ----------
    curves
        Name -> reliability curve, the model first.
    path
        The PNG file to write (parent folders created).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        ``curves`` is empty or a curve lacks a column of
        :data:`~training.churn.evaluation.RELIABILITY_COLUMNS`.
    """
    if not curves:
        raise ValueError("plot_reliability needs at least one reliability curve")
    for name, curve in curves.items():
        missing = [c for c in RELIABILITY_COLUMNS if c not in curve.columns]
        if missing:
            raise ValueError(
                f"reliability curve {name!r} lacks column(s) {', '.join(missing)} "
                "(expected the frame of training.churn.evaluation.reliability_curve)"
            )

    figure = _new_figure(7.5, 8.0)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color=_REFERENCE, linestyle=":", linewidth=1, label="perfectly calibrated")
    n = int(next(iter(curves.values()))["count"].sum())
    for i, (name, curve) in enumerate(curves.items()):
        style = _style(i)
        top.plot(
            curve["mean_predicted"], curve["observed_rate"], markersize=5,
            label=f"{name} (ECE {calibration_error_of(curve):.3f})", **style,
        )
        # Quantile bins hold about equal counts, so the count per unit of probability (count / bin
        # width) is what shows where the predictions lie; a bin of one tied value is drawn
        # _MIN_BIN_WIDTH wide.
        widths = np.maximum(curve["upper"].to_numpy() - curve["lower"].to_numpy(), _MIN_BIN_WIDTH)
        density = curve["count"].to_numpy() / widths * _DENSITY_UNIT
        bottom.bar(
            curve["lower"], density, width=widths, align="edge", fill=False,
            edgecolor=style["color"], linewidth=1.6 if i == 0 else 1.0, linestyle=style["linestyle"],
        )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("observed churn rate in the bin")
    top.set_title(f"Reliability of the churn probabilities — {n:,} held-out customers, quantile bins")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize="small")
    bottom.set_xlabel("predicted churn probability (top: the mean of each bin; bottom: the bins' edges)")
    bottom.set_ylabel(f"customers per {_DENSITY_UNIT:g}\nof probability")
    bottom.grid(alpha=0.3)
    return _save(figure, path)


def plot_feature_importance(importance: pd.Series, path: Path, top: int = 20) -> Path:
    """The ``top`` features by total split gain, as horizontal bars (largest at the top), each
    labelled with its share of the total gain.

    Parameters
    ----------
    importance
        Total gain by feature name.
    path
        The PNG file to write (parent folders created).
    top
        How many features are shown at most.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        ``top`` is below 1, there is no importance, or a gain is negative or missing.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    table = importance_table(importance)
    if table.empty:
        raise ValueError("no feature importances to plot")
    shown = table.head(top).iloc[::-1]

    figure = _new_figure(8.0, 1.2 + 0.32 * len(shown))
    ax = figure.add_subplot()
    y = np.arange(len(shown))
    ax.barh(y, shown["gain"], color=_COLOURS[1])
    ax.set_yticks(y, [str(name) for name in shown.index])
    for yi, gain, share in zip(y, shown["gain"], shown["share"]):
        ax.annotate(f" {share:.1%}", (gain, yi), va="center", fontsize="small")
    ax.set_xlim(0, float(shown["gain"].max()) * 1.15 or 1.0)
    ax.set_xlabel("total gain of the splits on the feature (label: share of the total gain)")
    subset = f"top {len(shown)} of {len(table)} features" if len(table) > len(shown) else f"all {len(table)} features"
    ax.set_title(f"Churn model feature importance (gain) — {subset}")
    ax.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def plot_lift(y_true: ArrayLike, scores: Mapping[str, np.ndarray], path: Path) -> Path:
    """Cumulative capture curve by decile: the share of all churners among the top 10 %, 20 %, ...
    of customers ranked by each score (the first being the model, the others the baselines),
    against random targeting (the diagonal) and a perfect ranking. Each legend entry carries the
    top-decile lift. Scores with NaN (1 - P(alive) for customers without it) are drawn on the
    customers they have.

    Parameters
    ----------
    y_true
        The 0/1 churn label per customer.
    scores
        Name -> one score per customer (higher for more likely to churn), the model first; NaN where
        a score is unknown.
    path
        The PNG file to write (parent folders created).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        ``scores`` is empty, a label is not 0/1, or a score has no customer left.
    """
    if not scores:
        raise ValueError("plot_lift needs at least one score")
    y = np.asarray(y_true)
    n = len(y)
    positives = float(np.asarray(y, dtype="float64").sum())

    figure = _new_figure(7.5, 6.0)
    ax = figure.add_subplot()
    fractions = np.linspace(0.0, 1.0, 11)
    ax.plot([0, 1], [0, 1], color=_REFERENCE, linestyle=":", linewidth=1, label="random targeting")
    if n and positives:
        base_rate = positives / n
        ax.plot(
            [0.0, base_rate, 1.0], [0.0, 1.0, 1.0], color=_REFERENCE, linewidth=1, alpha=0.6,
            label=f"perfect ranking (churn rate {base_rate:.1%})",
        )
    for i, (name, score) in enumerate(scores.items()):
        values = np.asarray(score, dtype="float64")
        known = ~np.isnan(values)
        curve = capture_curve(y[known], values[known], n_bins=10)
        label = f"{name} (lift@10% {curve['lift'].iloc[0]:.2f})"
        if not known.all():
            label += f", {int(known.sum()):,} of {n:,} customers"
        ax.plot(np.r_[0.0, curve["fraction"]], np.r_[0.0, curve["capture"]], markersize=5, label=label, **_style(i))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(fractions)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("customers targeted, highest churn score first")
    ax.set_ylabel("share of all churners reached (capture)")
    ax.set_title(f"Cumulative capture by decile — {n:,} held-out customers, {int(positives):,} churners")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(figure, path)
