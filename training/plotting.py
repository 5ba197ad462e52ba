"""What every model's plots share: a figure on the Agg canvas and its PNG file.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never through
``pyplot``: no global figure registry, no window, nothing left open after the file is written, safe
in a server or a worker thread.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 120


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches on its own Agg canvas.

    Parameters
    ----------
    width, height
        The figure's size in inches.

    Returns
    -------
    matplotlib.figure.Figure
        An empty figure at :data:`DPI`, attached to a ``FigureCanvasAgg``.
    """
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: Path | str) -> Path:
    """Write ``figure`` as a PNG at ``path`` (parent folders created), clear it and return the path.

    Parameters
    ----------
    figure
        The figure to write; it is cleared afterwards.
    path
        The PNG file to write (overwritten when it exists).

    Returns
    -------
    pathlib.Path
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    figure.clear()
    return path


def run_plot_dir(reports_dir: Path, step: str, run_id: str) -> Path:
    """Where a training run writes its plots: ``<reports>/<step>/runs/<run id>/``.

    One folder per run, so that a challenger or a backtest never overwrites the plots of the
    champion; the champion's are copied to :func:`champion_plot_dir` when it is promoted.

    Parameters
    ----------
    reports_dir
        The reports folder (``settings.reports_dir``).
    step
        The training step (``clv``, ``churn``, ``recommend``).
    run_id
        The MLflow run's id.

    Returns
    -------
    pathlib.Path
        The run's plot folder (not created).
    """
    return Path(reports_dir) / step / "runs" / run_id


def champion_plot_dir(reports_dir: Path, step: str) -> Path:
    """The stable place of the current champion's plots: ``<reports>/<step>/champion/``.

    Parameters
    ----------
    reports_dir
        The reports folder (``settings.reports_dir``).
    step
        The training step (``clv``, ``churn``, ``recommend``).

    Returns
    -------
    pathlib.Path
        The champion's plot folder (not created).
    """
    return Path(reports_dir) / step / "champion"
