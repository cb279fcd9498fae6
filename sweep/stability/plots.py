"""Stability heatmaps: a sweep's cells drawn over the ``beta_kl x beta_mix`` grid, one set of figures per loss.

Per loss, ``failed_<loss>.png`` shows the failed rate and ``score_<loss>.png`` the mean held-out preference
accuracy (and the mean MT-Bench score where any trial has one); ``stability_overview.png`` puts every loss side
by side. Stable cells are outlined in blue on every panel. What each panel shows, and the text in each cell,
comes from :mod:`sweep.stability.heatmap_grid`.

Figures are drawn with matplotlib's Agg canvas directly (no ``pyplot``), so importing this module never
changes the process-wide backend and drawing is safe inside a headless driver.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sweep.stability.heatmap_grid import Grid, Panel, by_series, cell_labels, loss_grid, panel_kinds
from sweep.stability.table import format_beta

# Outline colour of the stable region: pure-ish blue, absent from the "Reds" and "viridis" colour maps.
_OUTLINE_COLOUR = "#0073ff"
_MISSING_COLOUR = "#d9d9d9"
_BENCHMARKS = (("mt_bench", "mt_bench_mean"), ("alpaca", "alpaca_lc_mean"))
"""Score panels drawn when any cell has the score: (panel kind, cell column)."""


def _outline_segments(mask: np.ndarray) -> list[list[tuple[float, float]]]:
    """Boundary edges of the True region of ``mask`` in ``imshow`` cell coordinates.

    An edge of a True cell is on the boundary when the neighbour across it is False or off the grid; the
    union of those edges outlines every connected stable region (holes included).

    Args:
        mask: Boolean grid; shape ``(n_y, n_x)``.

    Returns:
        Line segments ``[(x0, y0), (x1, y1)]``; cell ``(i, j)`` spans
        ``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]``.
    """
    n_y, n_x = mask.shape
    segments = []
    for i, j in zip(*np.nonzero(mask), strict=True):
        left, right, bottom, top = j - 0.5, j + 0.5, i - 0.5, i + 0.5
        if i == 0 or not mask[i - 1, j]:
            segments.append([(left, bottom), (right, bottom)])
        if i == n_y - 1 or not mask[i + 1, j]:
            segments.append([(left, top), (right, top)])
        if j == 0 or not mask[i, j - 1]:
            segments.append([(left, bottom), (left, top)])
        if j == n_x - 1 or not mask[i, j + 1]:
            segments.append([(right, bottom), (right, top)])
    return segments


def _draw_heatmap(ax: Axes, grid: Grid, panel: Panel, *, detailed: bool, fontsize: float):
    """Draws one panel: coloured cells, annotations, categorical beta ticks and the stable outline.

    Args:
        ax: Target axes.
        grid: The loss's cell grid.
        panel: What to draw.
        detailed: Whether annotations also show ``diverged/verdicts`` counts.
        fontsize: Annotation font size.

    Returns:
        The ``AxesImage`` (for a colour bar).
    """
    values = grid.values(panel.column)
    cmap = colormaps[panel.cmap].with_extremes(bad=_MISSING_COLOUR)
    norm = mcolors.Normalize(vmin=panel.vmin, vmax=panel.vmax)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, origin="lower", aspect="equal")

    labels = cell_labels(grid, panel, detailed=detailed)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            text = labels[i][j]
            if not text:
                continue
            red, green, blue, _ = cmap(norm(values[i, j])) if np.isfinite(values[i, j]) else (0.85,) * 4
            luminance = 0.299 * red + 0.587 * green + 0.114 * blue
            colour = "white" if luminance < 0.5 else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colour)

    ax.set_xticks(range(len(grid.beta_kl)), [format_beta(v) for v in grid.beta_kl])
    ax.set_xlabel(r"$\beta_{\mathrm{KL}}$")
    if grid.has_mix_axis:
        ax.set_yticks(range(len(grid.beta_mix)), [format_beta(v) for v in grid.beta_mix])
        ax.set_ylabel(r"$\beta_{\mathrm{mix}}$")
    else:  # one-row strip: the loss has no mixing temperature
        ax.set_yticks([0], [r"no $\beta_{\mathrm{mix}}$"])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)

    segments = _outline_segments(grid.stable_mask())
    if segments:
        ax.add_collection(
            LineCollection(segments, colors=_OUTLINE_COLOUR, linewidths=3.0, capstyle="projecting", zorder=3)
        )
    return image


def _outline_legend(fig: Figure, stable_threshold: float) -> None:
    """Adds the figure-level legend entry explaining the stable outline, below every axes."""
    handle = Line2D([], [], color=_OUTLINE_COLOUR, linewidth=3.0)
    fig.legend(
        [handle],
        [
            "stable region (no failed trial)"
            if stable_threshold == 0
            else f"stable region (failed rate \u2264 {stable_threshold:g})"
        ],
        loc="outside lower center",
        frameon=False,
        fontsize=9,
    )


def _save(fig: Figure, path: Path) -> Path:
    """Renders ``fig`` with the Agg canvas to ``path`` (PNG)."""
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, format="png")
    return path


def _loss_figure(grid: Grid, loss: str, panels: Sequence[Panel], stable_threshold: float) -> Figure:
    """One figure for one loss with the given panels side by side, each with its own colour bar."""
    unit = 0.95  # inches per heatmap cell
    width = max(unit * len(grid.beta_kl), 2.5) + 2.4  # tick labels, axis label and colour bar
    height = max(unit * len(grid.beta_mix), 1.6) + 1.6  # title, tick labels, axis label and legend
    fig = Figure(figsize=(len(panels) * width, height), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        image = _draw_heatmap(ax, grid, panel, detailed=True, fontsize=8.5)
        ax.set_title(f"{loss}: {panel.title}", fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.9).set_label(panel.colorbar_label, fontsize=8)
    _outline_legend(fig, stable_threshold)
    return fig


def _overview_figure(grids: dict[str, Grid], panels: Sequence[Panel], stable_threshold: float, n_seeds: int) -> Figure:
    """One column per loss, one row per panel kind; colour ranges shared along each row."""
    unit = 0.6  # inches per heatmap cell
    widths = [unit * len(g.beta_kl) + 0.9 for g in grids.values()]
    row_height = unit * max(len(g.beta_mix) for g in grids.values()) + 1.0
    fig = Figure(
        figsize=(sum(widths) + 1.4, len(panels) * row_height + 1.0),
        layout="constrained",
    )
    axes = fig.subplots(len(panels), len(grids), squeeze=False, gridspec_kw={"width_ratios": widths})
    for panel, row in zip(panels, axes, strict=True):
        images = [
            _draw_heatmap(ax, grid, panel, detailed=False, fontsize=7.5)
            for ax, grid in zip(row, grids.values(), strict=True)
        ]
        for ax, loss in zip(row, grids, strict=True):
            ax.set_title(f"{loss}\n{panel.title}", fontsize=9)
        # The short panel title, not the long label: rotated long labels of stacked colour bars overlap.
        fig.colorbar(images[-1], ax=list(row), shrink=0.9, pad=0.02).set_label(panel.title, fontsize=8)
    fig.suptitle(f"Stability overview (up to {n_seeds} trial(s) per cell)", fontsize=12)
    _outline_legend(fig, stable_threshold)
    return fig


def _file_stem(loss: str) -> str:
    """File-name-safe version of a loss name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", loss)


def write_figures(cells: pd.DataFrame, out_dir: Path, *, stable_threshold: float) -> list[Path]:
    """Draws every heatmap of a sweep into ``out_dir``.

    Per loss, ``failed_<loss>.png`` shows the failed rate on the ``beta_kl`` (x) by ``beta_mix`` (y) grid,
    each cell annotated with the rate and ``diverged/verdicts``; ``score_<loss>.png`` shows the mean
    held-out preference accuracy and, when any trial of the loss has one, the mean MT-Bench score. Losses
    without a ``beta_mix`` axis get a one-row strip over ``beta_kl``. ``stability_overview.png`` puts every
    loss side by side (one column each) with shared colour ranges.

    Args:
        cells: Output of :func:`sweep.stability.cells.aggregate_cells` (at least one cell).
        out_dir: Existing output directory.
        stable_threshold: The threshold ``cells`` was aggregated with (named in the outline legend).

    Returns:
        The PNGs written: per loss (sorted) the failed then the score figure, then the overview.

    Raises:
        ValueError: If two loss names map to the same file name.
    """
    cells = by_series(cells)
    losses = sorted(cells["loss"].unique())
    stems = [_file_stem(loss) for loss in losses]
    if len(set(stems)) != len(stems):
        raise ValueError(f"loss names {losses} collide once made file-name safe ({stems})")
    panels = panel_kinds(cells)
    grids = {loss: loss_grid(cells, loss) for loss in losses}

    figures = []
    for loss, stem in zip(losses, stems, strict=True):
        grid = grids[loss]
        failed = _loss_figure(grid, loss, [panels["failed"]], stable_threshold)
        figures.append(_save(failed, out_dir / f"failed_{stem}.png"))
        score_panels = [panels["accuracy"]]
        score_panels += [panels[k] for k, column in _BENCHMARKS if grid.cells[column].notna().any()]
        figures.append(_save(_loss_figure(grid, loss, score_panels, stable_threshold), out_dir / f"score_{stem}.png"))

    overview_panels = [panels["failed"], panels["accuracy"]]
    overview_panels += [panels[k] for k, column in _BENCHMARKS if cells[column].notna().any()]
    n_seeds = int(cells["n_trials"].max())
    overview = _overview_figure(grids, overview_panels, stable_threshold, n_seeds)
    figures.append(_save(overview, out_dir / "stability_overview.png"))
    return figures
