"""Diagnostic plots of a fitted CLV model, written as PNG files.

The four views of Fader, Hardie & Lee (2005) and of ``lifetimes.plotting``: calibration vs holdout
purchases per frequency, the frequency/recency matrix of expected purchases, the probability-alive
matrix, and cumulative expected vs actual repeat purchases over time. Figures are drawn on
:class:`matplotlib.figure.Figure` objects with the Agg canvas, never through ``pyplot``: no global
figure registry, no window, nothing left open after the file is written, safe in a server or a
worker thread.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.colors import Colormap
from matplotlib.ticker import MaxNLocator

from features.customer import DAYS_PER_UNIT
from features.history import utc_naive
from features.purchases import DAY, REPEAT_PURCHASES
from features.schema import Feature, Holdout
from training.clv.evaluation import (
    UNIT_NAMES,
    ClvPredictor,
    expected_cumulative_repeat_purchases,
    holdout_by_frequency,
)
from training.plotting import new_figure as _new_figure
from training.plotting import save_png as _save

#: Most recency columns a matrix shows (beyond it the recency axis is sampled evenly).
MAX_RECENCY_STEPS = 200

_ACTUAL = "#1f4e79"
_MODEL = "#d95f02"
_NAIVE = "#7f7f7f"


def _unit(model: ClvPredictor) -> str:
    return UNIT_NAMES.get(model.time_unit_, model.time_unit_)


def _unit_singular(model: ClvPredictor) -> str:
    return _unit(model).removesuffix("s")


def _name(model: ClvPredictor) -> str:
    """The model as a title names it: its label when it has one (a blend, the naive rate), else its kind."""
    return str(getattr(model, "label_", model.kind_))



def plot_calibration_vs_holdout(
    model: ClvPredictor, calibration_holdout: pd.DataFrame, path: Path, max_frequency: int = 7
) -> Path:
    """Mean actual, predicted and naive holdout repeat purchases per calibration frequency bucket
    (0, 1, ..., ``max_frequency``+), with the number of customers of each bucket under its label.

    Parameters
    ----------
    model
        A fitted CLV model.
    calibration_holdout
        The frame of :func:`features.customer.calibration_holdout`, in the model's time unit.
    path
        The PNG file to write (parent folders created).
    max_frequency
        The frequency from which customers share the last bucket.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        As :func:`~training.clv.evaluation.holdout_by_frequency` (a missing column, an empty frame,
        ``max_frequency`` below 1, or a row breaking an RFM invariant).
    """
    table = holdout_by_frequency(model, calibration_holdout, max_frequency=max_frequency)
    duration = float(calibration_holdout[Holdout.DURATION].mean())
    x = np.arange(len(table))

    figure = _new_figure(8.0, 5.0)
    ax = figure.add_subplot()
    ax.plot(x, table["actual"], marker="o", color=_ACTUAL, linewidth=2, label="actual")
    ax.plot(x, table["predicted"], marker="s", color=_MODEL, linewidth=2, label=f"model ({_name(model)})")
    ax.plot(x, table["naive"], marker="^", color=_NAIVE, linestyle="--", label="naive (historic rate)")
    ax.set_xticks(x, [f"{label}\nn={n:,}" for label, n in zip(table.index, table["n_customers"])])
    ax.set_xlabel("repeat purchases in the calibration period (frequency)")
    ax.set_ylabel(f"mean repeat purchases in the holdout ({duration:g} {_unit(model)})")
    ax.set_title(f"Calibration vs holdout purchases — {_name(model)}, time unit: {_unit(model)}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return _save(figure, path)


def _matrix_bounds(
    model: ClvPredictor, max_frequency: float | None, max_T: float | None, rfm: pd.DataFrame | None
) -> tuple[int, float]:
    if max_frequency is None or max_T is None:
        if rfm is None or rfm.empty:
            raise ValueError(
                "the matrix needs max_frequency and max_T, or rfm (a frame with frequency and T, such as the "
                "model's training data) to take them from"
            )
        if max_frequency is None:
            max_frequency = float(rfm[Feature.FREQUENCY].max())
        if max_T is None:
            max_T = float(rfm[Feature.T].max())
    if max_frequency < 0 or not max_T > 0:
        raise ValueError(f"max_frequency must be >= 0 and max_T > 0 ({_unit(model)}), got {max_frequency} and {max_T}")
    return int(max_frequency), float(max_T)


def _frequency_recency_grid(
    model: ClvPredictor, max_frequency: int, max_T: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frequencies (rows), recencies (columns) and the mask of impossible cells: a customer with f
    repeat purchase days has a recency of at least f days, and a recency of 0 without any."""
    frequencies = np.arange(max_frequency + 1, dtype="float64")
    steps = int(np.floor(max_T))
    if steps <= MAX_RECENCY_STEPS:
        recencies = np.arange(steps + 1, dtype="float64")
        if recencies[-1] < max_T:
            recencies = np.append(recencies, max_T)
    else:
        recencies = np.linspace(0.0, max_T, MAX_RECENCY_STEPS + 1)
    f, r = np.meshgrid(frequencies, recencies, indexing="ij")
    recency_days = r * DAYS_PER_UNIT[model.time_unit_]
    impossible = ((f == 0) & (r > 0)) | ((f > 0) & (recency_days < f - 1e-9))
    return frequencies, recencies, impossible


def _plot_matrix(
    model: ClvPredictor,
    values: np.ndarray,
    frequencies: np.ndarray,
    recencies: np.ndarray,
    impossible: np.ndarray,
    *,
    title: str,
    colorbar_label: str,
    cmap: str | Colormap,
    vmin: float | None,
    vmax: float | None,
    path: Path,
) -> Path:
    masked = np.ma.masked_array(values, mask=impossible | ~np.isfinite(values))
    figure = _new_figure(8.5, 6.0)
    ax = figure.add_subplot()
    ax.set_facecolor("#eeeeee")
    half_r = (recencies[1] - recencies[0]) / 2 if len(recencies) > 1 else 0.5
    image = ax.imshow(
        masked,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        extent=(recencies[0] - half_r, recencies[-1] + half_r, frequencies[0] - 0.5, frequencies[-1] + 0.5),
    )
    colorbar = figure.colorbar(image, ax=ax)
    colorbar.set_label(colorbar_label)
    ax.set_xlabel(
        f"recency: time of the last purchase after the first ({_unit(model)})\n"
        "grey: impossible combinations (f repeat purchase days need a recency of at least f days)"
    )
    ax.set_ylabel("frequency: repeat purchases")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    return _save(figure, path)


def plot_frequency_recency_matrix(
    model: ClvPredictor,
    path: Path,
    *,
    t: float = 1.0,
    max_frequency: int | None = None,
    max_T: float | None = None,
    rfm: pd.DataFrame | None = None,
) -> Path:
    """Expected repeat purchases in the next ``t`` time units of a customer observed for ``max_T``
    units, by frequency (rows) and recency (columns). Bounds left out are taken from ``rfm`` (the
    largest frequency and T of, say, the calibration customers).

    Parameters
    ----------
    model
        A fitted CLV model.
    path
        The PNG file to write (parent folders created).
    t
        The horizon of the expected purchases, in the model's time unit.
    max_frequency
        The largest frequency shown; ``None``: the largest of ``rfm``.
    max_T
        How long the customer has been observed, in the model's time unit; ``None``: the largest T of
        ``rfm``.
    rfm
        A frame with ``frequency`` and ``T`` the bounds left out are taken from.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        A bound is left out without a non-empty ``rfm``, ``max_frequency`` is negative or ``max_T`` is
        not positive.
    """
    max_frequency, max_T = _matrix_bounds(model, max_frequency, max_T, rfm)
    frequencies, recencies, impossible = _frequency_recency_grid(model, max_frequency, max_T)
    f, r = np.meshgrid(frequencies, recencies, indexing="ij")
    values = np.asarray(
        model.expected_purchases(np.full(f.size, t), f.ravel(), r.ravel(), np.full(f.size, max_T)), dtype="float64"
    ).reshape(f.shape)
    unit = _unit(model) if t != 1 else _unit_singular(model)
    return _plot_matrix(
        model, values, frequencies, recencies, impossible,
        title=(
            f"Expected repeat purchases in the next {t:g} {unit} — {_name(model)}\n"
            f"customers observed for T = {max_T:g} {_unit(model)}"
        ),
        colorbar_label=f"expected repeat purchases in the next {t:g} {unit}",
        cmap="viridis", vmin=0.0, vmax=None, path=path,
    )


def plot_probability_alive_matrix(
    model: ClvPredictor,
    path: Path,
    *,
    max_frequency: int | None = None,
    max_T: float | None = None,
    rfm: pd.DataFrame | None = None,
) -> Path:
    """Probability that a customer observed for ``max_T`` units is still active, by frequency (rows)
    and recency (columns). Bounds left out are taken from ``rfm``.

    Parameters
    ----------
    model
        A fitted CLV model.
    path
        The PNG file to write (parent folders created).
    max_frequency
        The largest frequency shown; ``None``: the largest of ``rfm``.
    max_T
        How long the customer has been observed, in the model's time unit; ``None``: the largest T of
        ``rfm``.
    rfm
        A frame with ``frequency`` and ``T`` the bounds left out are taken from.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        A bound is left out without a non-empty ``rfm``, ``max_frequency`` is negative or ``max_T`` is
        not positive.
    """
    max_frequency, max_T = _matrix_bounds(model, max_frequency, max_T, rfm)
    frequencies, recencies, impossible = _frequency_recency_grid(model, max_frequency, max_T)
    f, r = np.meshgrid(frequencies, recencies, indexing="ij")
    values = np.asarray(
        model.probability_alive(f.ravel(), r.ravel(), np.full(f.size, max_T)), dtype="float64"
    ).reshape(f.shape)
    return _plot_matrix(
        model, values, frequencies, recencies, impossible,
        title=(
            f"Probability a customer is still active — {_name(model)}\n"
            f"customers observed for T = {max_T:g} {_unit(model)}"
        ),
        colorbar_label="probability alive",
        cmap="RdYlGn", vmin=0.0, vmax=1.0, path=path,
    )


def plot_cumulative_transactions(
    model: ClvPredictor,
    first_purchases: pd.Series,
    daily_actual: pd.DataFrame,
    calibration_end: datetime,
    path: Path,
) -> Path:
    """Cumulative expected vs actual repeat purchases, and both per week, over the days of ``daily_actual``.

    ``first_purchases``: the first purchase time of each customer the model describes (the
    ``first_purchase`` column of the calibration features); ``daily_actual``: the frame of
    :func:`features.purchases.daily_repeat_purchases` for those customers (``born_before`` =
    ``calibration_end``) over calibration and holdout. Each point is the count through the end of its
    day; a vertical line marks the calibration end.

    Parameters
    ----------
    model
        A fitted CLV model.
    first_purchases
        Each customer's first purchase time.
    daily_actual
        Columns ``day`` and ``repeat_purchases``, one row per day.
    calibration_end
        Where the vertical line is drawn.
    path
        The PNG file to write (parent folders created).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        ``daily_actual`` lacks a column or has no day, or its days are not in increasing order.
    """
    missing = [c for c in (DAY, REPEAT_PURCHASES) if c not in daily_actual.columns]
    if missing:
        raise ValueError(
            f"daily_actual lacks column(s) {', '.join(missing)} (expected the frame of "
            f"features.purchases.daily_repeat_purchases; it has {list(daily_actual.columns)})"
        )
    if daily_actual.empty:
        raise ValueError("daily_actual has no days: nothing to plot")
    days = pd.DatetimeIndex(pd.to_datetime(daily_actual[DAY]))
    actual_daily = daily_actual[REPEAT_PURCHASES].to_numpy(dtype="float64")
    expected = expected_cumulative_repeat_purchases(model, first_purchases, days)
    actual = np.cumsum(actual_daily)

    # Each count is as of the midnight that ends its day; the curves start at 0 on the first day.
    ends = days + timedelta(days=1)
    x = np.concatenate([[days[0].to_pydatetime()], ends.to_pydatetime()])
    expected_line = np.concatenate([[0.0], expected])
    actual_line = np.concatenate([[0.0], actual])
    cal_end = utc_naive(calibration_end)

    figure = _new_figure(10.0, 7.0)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    top.plot(x, actual_line, color=_ACTUAL, linewidth=2, label="actual")
    top.plot(x, expected_line, color=_MODEL, linewidth=2, linestyle="--", label=f"expected ({_name(model)})")
    top.set_ylabel("cumulative repeat purchases")
    top.set_title(
        f"Cumulative repeat purchases: actual vs expected — {_name(model)}, time unit: {_unit(model)}\n"
        f"{len(first_purchases.dropna()):,} customers born before the calibration end"
    )

    # Per week: complete weeks of 7 days from the first day (a shorter last week would look like a drop).
    n_weeks = len(days) // 7
    if n_weeks:
        expected_daily = np.diff(np.concatenate([[0.0], expected]))[: 7 * n_weeks]
        edges = np.concatenate([days[: 7 * n_weeks : 7].to_pydatetime(), [ends[7 * n_weeks - 1].to_pydatetime()]])
        for values, style in (
            (actual_daily[: 7 * n_weeks].reshape(n_weeks, 7).sum(axis=1), {"color": _ACTUAL, "label": "actual"}),
            (expected_daily.reshape(n_weeks, 7).sum(axis=1), {"color": _MODEL, "linestyle": "--", "label": "expected"}),
        ):
            bottom.step(edges, np.append(values, values[-1]), where="post", **style)
    bottom.set_ylabel("repeat purchases per week")
    bottom.set_ylim(bottom=0)

    for ax in (top, bottom):
        if days[0] <= pd.Timestamp(cal_end) <= ends[-1]:
            ax.axvline(cal_end, color="black", linewidth=1, linestyle=":", label="calibration end")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    locator = mdates.AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    bottom.set_xlabel("date (UTC)")
    return _save(figure, path)
