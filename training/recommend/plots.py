"""The recommender comparison as a picture: recall@20 of every model, over all items and new items.

Drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas (no ``pyplot``), like the churn
plots (:mod:`training.churn.plots`), and written as PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from training.plotting import new_figure, save_png
from training.recommend.evaluation import CHOSEN, RECALL, RECALL_NEW

_ALL, _NEW, _CHOSEN = "#1f4e79", "#1b9e77", "#d95f02"


def plot_comparison(table: pd.DataFrame, path: Path | str, *, title: str | None = None,
                    champion: str = CHOSEN) -> Path:
    """Horizontal bars of recall@20 per model (all items, and new items with purchases excluded);
    the champion's bar (the configuration registered) is highlighted and models without a new-items
    figure show none."""
    names = list(table.index)
    y = np.arange(len(names))[::-1]
    figure = new_figure(8.0, 0.55 * len(names) + 1.6)
    ax = figure.add_subplot(1, 1, 1)
    height = 0.38
    all_items = table[RECALL].to_numpy(dtype=float)
    new_items = table[RECALL_NEW].to_numpy(dtype=float)
    colours_all = [_CHOSEN if n == champion else _ALL for n in names]
    ax.barh(y + height / 2, all_items, height, color=colours_all)
    ax.barh(y - height / 2, np.nan_to_num(new_items), height, color=_NEW, alpha=0.85)
    for yy, a, b in zip(y, all_items, new_items):
        ax.text(a + 0.004, yy + height / 2, f"{a:.3f}", va="center", fontsize=8)
        ax.text((0 if np.isnan(b) else b) + 0.004, yy - height / 2, "—" if np.isnan(b) else f"{b:.3f}",
                va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xlabel("recall@20 (hits / min(purchases, 20), mean over customers)")
    ax.set_xlim(0, max(0.05, float(np.nanmax(np.concatenate([all_items, new_items]))) * 1.18))
    from matplotlib.patches import Patch

    handles = [Patch(color=_ALL, label="recall@20, all test purchases"),
               Patch(color=_CHOSEN, label="recall@20, all test purchases (the champion)"),
               Patch(color=_NEW, alpha=0.85, label="recall@20, items new to the customer (purchases excluded)")]
    # Below the axes: never over a bar.
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1, fontsize=8, frameon=False)
    ax.set_title(title or "Recommenders on the test period", loc="left")
    ax.grid(axis="x", alpha=0.3)
    return save_png(figure, Path(path))
