"""Stability maps: per-cell collapse rates and scores of a finished sweep.

After a sweep the driver holds one row per Ray Tune trial. This module groups the trials into *cells*
(one cell per ``(loss, beta_kl, beta_mix)`` hyperparameter point, the seeds being repeats), computes how
often each cell collapses, and draws the result as heatmaps over the ``beta_kl x beta_mix`` grid.

Collapse here means the trial *diverged* (non-finite loss or gradients, gradient-norm explosion, ...), the
training instability the sweep maps for DiscoPOP / LRML (Lu et al., 2024, "Discovering Preference
Optimization Algorithms with and for Large Language Models") and its decoupled variant dLRML, whose mixing
temperature ``beta_mix`` is a second axis next to the KL strength ``beta_kl``. Only a trial that trained to
the end (completed) or diverged carries a stability verdict. A trial that ASHA (Li et al., 2020, "A System for
Massively Parallel Hyperparameter Tuning") pruned was judged *weak* at a rung and stopped: it did not diverge
*yet*, which says nothing about the steps it never ran (``bench/early_stopping.py`` found cells whose trials ASHA
pruned at step 2 and which diverged later in the full grid). Pruned and errored (crash, lost worker) trials are
therefore left out of the denominator:

    collapse_rate = n_diverged / (n_completed + n_diverged)

Figures are drawn with matplotlib's Agg canvas directly (no ``pyplot``), so importing this module never
changes the process-wide backend and drawing is safe inside a headless driver.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
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

#: Columns every trial frame must carry.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "trial_id",
    "loss",
    "beta_kl",
    "beta_mix",
    "seed",
    "status",
    "reason",
    "diverged_step",
    "steps",
    "eval_accuracy",
)
#: Columns a trial frame may carry (MT-Bench is only run on selected trials).
OPTIONAL_COLUMNS: tuple[str, ...] = ("mt_bench_score", "mt_bench_reason")
#: Trial verdicts, as the driver records them.
STATUSES: tuple[str, ...] = ("completed", "pruned", "diverged", "errored")
#: The hyperparameter point that identifies a cell.
CELL_KEYS: tuple[str, ...] = ("loss", "beta_kl", "beta_mix")
#: Columns of the frame returned by :func:`aggregate_cells`, in order.
CELL_COLUMNS: tuple[str, ...] = (
    *CELL_KEYS,
    "n_trials",
    "n_completed",
    "n_pruned",
    "n_diverged",
    "n_errored",
    "n_verdict",
    "collapse_rate",
    "median_steps_to_divergence",
    "eval_accuracy_mean",
    "eval_accuracy_median",
    "n_mt_bench",
    "mt_bench_mean",
    "stable",
)

# MT-Bench single-answer grading is on a 1-10 scale (Zheng et al., 2023, "Judging LLM-as-a-Judge").
_MT_BENCH_RANGE = (0.0, 10.0)
# Outline colour of the stable region: pure-ish blue, absent from the "Reds" and "viridis" colour maps.
_OUTLINE_COLOUR = "#0073ff"
_MISSING_COLOUR = "#d9d9d9"
_COLLAPSE_CMAP = "Reds"
_SCORE_CMAP = "viridis"


# ----------------------------------------------------------------------------------------------------------
# Validation and aggregation
# ----------------------------------------------------------------------------------------------------------


def _numeric_column(frame: pd.DataFrame, column: str) -> pd.Series:
    """Coerces ``column`` to float, naming the first row that is not a number.

    Args:
        frame: The trial frame.
        column: Column to coerce; ``None`` / NaN entries stay NaN.

    Returns:
        The column as ``float64``.

    Raises:
        ValueError: If an entry is neither missing nor numeric.
    """
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").astype("float64")
    bad = values.isna() & raw.notna()
    if bad.any():
        row = bad.idxmax()
        raise ValueError(f"trials row {row!r}, field {column!r}: {raw.loc[row]!r} is not a number")
    return values


def _check_rows(frame: pd.DataFrame, column: str, bad: pd.Series, requirement: str) -> None:
    """Raises a ValueError naming the first row where ``bad`` holds.

    Args:
        frame: The (normalised) trial frame.
        column: Field that is checked.
        bad: Boolean mask over the rows, True where the requirement fails.
        requirement: Human-readable requirement, e.g. ``"must be finite and > 0"``.

    Raises:
        ValueError: If any row fails.
    """
    if bad.any():
        row = bad.idxmax()
        raise ValueError(
            f"trials row {row!r}, field {column!r}: {frame.at[row, column]!r} {requirement} "
            f"({int(bad.sum())} bad row(s) in all)"
        )


def validate_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Checks a per-trial frame and returns a normalised copy.

    Normalisation: numeric columns become ``float64`` (``seed`` and ``steps`` stay float so NaN survives),
    ``trial_id`` becomes ``str`` (``loss`` and ``status`` must already be strings), ``reason`` /
    ``mt_bench_reason`` become ``str`` or ``None``, and the optional MT-Bench columns are added (all
    missing) when absent.

    Args:
        trials: One row per Ray Tune trial with at least :data:`REQUIRED_COLUMNS`.

    Returns:
        A validated copy with :data:`REQUIRED_COLUMNS` followed by :data:`OPTIONAL_COLUMNS` and then any
        extra columns of the input, in their original order.

    Raises:
        ValueError: On missing columns (all of them named), unknown statuses, duplicate trial ids, or
            out-of-range values (row index and field named).
    """
    if not isinstance(trials, pd.DataFrame):
        raise ValueError(f"trials must be a pandas DataFrame, got {type(trials).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in trials.columns]
    if missing:
        raise ValueError(f"trials frame is missing required column(s): {', '.join(missing)}")

    frame = trials.copy()
    for column in OPTIONAL_COLUMNS:
        if column not in frame.columns:
            frame[column] = np.nan if column == "mt_bench_score" else None

    unknown = ~frame["status"].isin(STATUSES)
    if unknown.any():
        values = sorted({repr(v) for v in frame.loc[unknown, "status"]})
        _check_rows(
            frame,
            "status",
            unknown,
            f"is not a known status (expected one of {', '.join(STATUSES)}; unknown values: {', '.join(values)})",
        )

    loss_ok = frame["loss"].map(lambda v: isinstance(v, str) and v.strip() != "")
    _check_rows(frame, "loss", ~loss_ok, "must be a non-empty string")
    trial_ok = frame["trial_id"].map(lambda v: v is not None and not pd.isna(v) and str(v) != "")
    _check_rows(frame, "trial_id", ~trial_ok, "must be a non-empty id")
    frame["trial_id"] = frame["trial_id"].astype(str)
    duplicated = frame["trial_id"].duplicated(keep="first")
    _check_rows(frame, "trial_id", duplicated, "is a duplicate trial id")

    for column in (
        "beta_kl",
        "beta_mix",
        "seed",
        "diverged_step",
        "steps",
        "eval_accuracy",
        "mt_bench_score",
    ):
        frame[column] = _numeric_column(frame, column)

    beta_kl = frame["beta_kl"]
    _check_rows(frame, "beta_kl", ~(np.isfinite(beta_kl) & (beta_kl > 0)), "must be finite and > 0")
    beta_mix = frame["beta_mix"]
    _check_rows(frame, "beta_mix", beta_mix.notna() & ~(np.isfinite(beta_mix) & (beta_mix > 0)), "must be > 0 or NaN")
    seed = frame["seed"]
    _check_rows(frame, "seed", ~np.isfinite(seed) | (seed != np.round(seed)), "must be an integer")
    for column in ("steps", "diverged_step"):
        values = frame[column]
        _check_rows(
            frame,
            column,
            values.notna() & ~(np.isfinite(values) & (values >= 0) & (values == np.round(values))),
            "must be a non-negative integer or NaN",
        )
    acc = frame["eval_accuracy"]
    _check_rows(frame, "eval_accuracy", acc.notna() & ~acc.between(0.0, 1.0), "must lie in [0, 1] or be NaN")
    mt = frame["mt_bench_score"]
    low, high = _MT_BENCH_RANGE
    _check_rows(frame, "mt_bench_score", mt.notna() & ~mt.between(low, high), f"must lie in [{low}, {high}]")

    for column in ("reason", "mt_bench_reason"):
        frame[column] = frame[column].map(lambda v: None if v is None or pd.isna(v) else str(v)).astype(object)

    leading = [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]
    return frame[[*leading, *(c for c in frame.columns if c not in leading)]]


def _mean_or_nan(values: pd.Series) -> float:
    """Mean over non-missing values, NaN when there are none."""
    values = values.dropna()
    return float(values.mean()) if len(values) else math.nan


def _median_or_nan(values: pd.Series) -> float:
    """Median over non-missing values, NaN when there are none."""
    values = values.dropna()
    return float(values.median()) if len(values) else math.nan


def aggregate_cells(trials: pd.DataFrame, *, stable_threshold: float = 0.0) -> pd.DataFrame:
    """Groups trials into ``(loss, beta_kl, beta_mix)`` cells and computes their stability statistics.

    Per cell:

    * ``collapse_rate = n_diverged / n_verdict`` with ``n_verdict = n_completed + n_diverged``; pruned and
      errored trials carry no verdict. NaN when no trial has one (e.g. every seed was pruned).
    * ``median_steps_to_divergence`` over diverged trials: their ``diverged_step``, or ``steps`` (where the
      trainer stopped) for a diverged trial that did not record the step. NaN without diverged trials.
    * ``eval_accuracy_mean`` / ``eval_accuracy_median`` over completed and pruned trials (held-out preference
      accuracy ``eval_rewards/accuracies``), missing values ignored.
    * ``mt_bench_mean`` over trials with an MT-Bench score, ``n_mt_bench`` their count.
    * ``stable``: ``collapse_rate <= stable_threshold``; a cell without a verdict is never stable.

    A missing ``beta_mix`` (losses without a mixing temperature) is its own group key, not dropped.

    Args:
        trials: One row per trial (see :func:`validate_trials`).
        stable_threshold: Largest collapse rate still called stable, in ``[0, 1]``.

    Returns:
        One row per cell with :data:`CELL_COLUMNS`, sorted by loss, ``beta_kl`` and ``beta_mix`` (missing
        ``beta_mix`` last).

    Raises:
        ValueError: On an invalid trial frame or a threshold outside ``[0, 1]``.
    """
    if not 0.0 <= stable_threshold <= 1.0:
        raise ValueError(f"stable_threshold must lie in [0, 1], got {stable_threshold!r}")
    frame = validate_trials(trials)

    rows = []
    for (loss, beta_kl, beta_mix), group in frame.groupby(list(CELL_KEYS), dropna=False, sort=True):
        status = group["status"]
        counts = {s: int((status == s).sum()) for s in STATUSES}
        n_verdict = counts["completed"] + counts["diverged"]
        collapse_rate = counts["diverged"] / n_verdict if n_verdict else math.nan

        diverged = group[status == "diverged"]
        divergence_steps = diverged["diverged_step"].fillna(diverged["steps"])
        judged = group[status.isin(("completed", "pruned"))]["eval_accuracy"]
        scores = group["mt_bench_score"]
        rows.append(
            {
                "loss": loss,
                "beta_kl": float(beta_kl),
                "beta_mix": float(beta_mix),
                "n_trials": len(group),
                "n_completed": counts["completed"],
                "n_pruned": counts["pruned"],
                "n_diverged": counts["diverged"],
                "n_errored": counts["errored"],
                "n_verdict": n_verdict,
                "collapse_rate": collapse_rate,
                "median_steps_to_divergence": _median_or_nan(divergence_steps),
                "eval_accuracy_mean": _mean_or_nan(judged),
                "eval_accuracy_median": _median_or_nan(judged),
                "n_mt_bench": int(scores.notna().sum()),
                "mt_bench_mean": _mean_or_nan(scores),
                "stable": bool(n_verdict > 0 and collapse_rate <= stable_threshold),
            }
        )

    cells = pd.DataFrame(rows, columns=list(CELL_COLUMNS))
    dtypes = {c: "int64" if c.startswith("n_") else "float64" for c in CELL_COLUMNS}
    dtypes.update({"loss": str, "stable": bool})
    return cells.astype(dtypes)


# ----------------------------------------------------------------------------------------------------------
# Terminal table
# ----------------------------------------------------------------------------------------------------------


def format_beta(value: float) -> str:
    """Formats a beta value compactly for tick labels and tables.

    Sweep grids are log-spaced, so values below ``1e-3`` (or from ``1e4`` up) switch to a short scientific
    form; the rest keep at most three significant digits.

    Args:
        value: A beta value, or NaN for "no such axis".

    Returns:
        e.g. ``0.1 -> "0.1"``, ``0.0005 -> "5e-4"``, ``2.5 -> "2.5"``, ``NaN -> "none"``.
    """
    if value is None or not math.isfinite(value):
        return "none"
    if value != 0 and not 1e-3 <= abs(value) < 1e4:
        return np.format_float_scientific(value, precision=2, trim="-", exp_digits=1).replace("e+", "e")
    return np.format_float_positional(value, precision=3, fractional=False, trim="-")


def _fmt(value: float, spec: str) -> str:
    """Formats a number, printing ``-`` for NaN."""
    return "-" if value is None or pd.isna(value) else format(value, spec)


def format_cells_table(cells: pd.DataFrame) -> str:
    """Renders the cell frame as a compact fixed-width table for the terminal.

    Args:
        cells: Output of :func:`aggregate_cells`.

    Returns:
        The table, one line per cell under a header; ``collapse`` shows ``rate (diverged/verdicts)`` and
        ``stable`` a ``yes``/``no``, or ``?`` for a cell without any verdict (every trial pruned or errored).
        Missing numbers print as ``-``.

    Raises:
        ValueError: If ``cells`` lacks any of :data:`CELL_COLUMNS`.
    """
    missing = [c for c in CELL_COLUMNS if c not in cells.columns]
    if missing:
        raise ValueError(f"cells frame is missing column(s): {', '.join(missing)}")
    header = (
        "loss",
        "beta_kl",
        "beta_mix",
        "n",
        "div",
        "err",
        "pruned",
        "collapse",
        "div@step",
        "acc_mean",
        "acc_med",
        "mt_bench",
        "stable",
    )
    body = [
        (
            str(row.loss),
            format_beta(row.beta_kl),
            format_beta(row.beta_mix),
            str(row.n_trials),
            str(row.n_diverged),
            str(row.n_errored),
            str(row.n_pruned),
            f"{_fmt(row.collapse_rate, '.2f')} ({row.n_diverged}/{row.n_verdict})",
            _fmt(row.median_steps_to_divergence, ".0f"),
            _fmt(row.eval_accuracy_mean, ".3f"),
            _fmt(row.eval_accuracy_median, ".3f"),
            _fmt(row.mt_bench_mean, ".2f"),
            "yes" if row.stable else ("no" if row.n_verdict else "?"),
        )
        for row in cells.itertuples(index=False)
    ]
    if not body:
        return "(no cells)"
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def render(line: Sequence[str]) -> str:
        # Text columns (loss, betas) left-aligned, counts and scores right-aligned.
        parts = [v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths, strict=True))]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *(render(line) for line in body)])


# ----------------------------------------------------------------------------------------------------------
# Heatmaps
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """One loss's cells laid out on the ``beta_kl`` (x) by ``beta_mix`` (y) grid.

    Attributes:
        beta_kl: Column values, ascending; shape ``(n_x,)``.
        beta_mix: Row values, ascending, a missing ``beta_mix`` last (NaN); shape ``(n_y,)``.
        cells: The loss's rows of the cell frame.
    """

    beta_kl: np.ndarray
    beta_mix: np.ndarray
    cells: pd.DataFrame

    def values(self, column: str) -> np.ndarray:
        """Cell values of ``column`` on the grid, NaN where the sweep has no such cell.

        Returns:
            Array of shape ``(n_y, n_x)``.
        """
        grid = np.full((len(self.beta_mix), len(self.beta_kl)), np.nan)
        for row in self.cells.itertuples(index=False):
            grid[self._row(row.beta_mix), self._col(row.beta_kl)] = float(getattr(row, column))
        return grid

    def stable_mask(self) -> np.ndarray:
        """True on stable cells; shape ``(n_y, n_x)``."""
        return np.nan_to_num(self.values("stable"), nan=0.0).astype(bool)

    def _row(self, beta_mix: float) -> int:
        if pd.isna(beta_mix):
            return int(np.flatnonzero(np.isnan(self.beta_mix))[0])
        return int(np.flatnonzero(self.beta_mix == beta_mix)[0])

    def _col(self, beta_kl: float) -> int:
        return int(np.flatnonzero(self.beta_kl == beta_kl)[0])

    @property
    def has_mix_axis(self) -> bool:
        """Whether any cell of the loss sets ``beta_mix``."""
        return bool(np.isfinite(self.beta_mix).any())


def _grid_for(cells: pd.DataFrame, loss: str) -> _Grid:
    """Builds the grid of one loss from the cell frame."""
    own = cells[cells["loss"] == loss]
    beta_kl = np.sort(own["beta_kl"].unique())
    mix = own["beta_mix"]
    beta_mix = np.sort(mix.dropna().unique())
    if mix.isna().any():
        beta_mix = np.append(beta_mix, np.nan)
    return _Grid(beta_kl=beta_kl.astype(float), beta_mix=beta_mix.astype(float), cells=own)


def _score_range(values: pd.Series, bounds: tuple[float, float], pad: float) -> tuple[float, float]:
    """Shared colour range over a score column, clipped to ``bounds``; padded when the data are constant."""
    values = values.dropna()
    if values.empty:
        return bounds
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-9:
        low, high = low - pad, high + pad
    return max(bounds[0], low), min(bounds[1], high)


@dataclass(frozen=True)
class _Panel:
    """What one heatmap panel shows.

    Attributes:
        column: Cell-frame column drawn.
        title: Panel title (the loss name is prefixed).
        colorbar_label: Colour-bar label.
        cmap: Colour-map name.
        vmin: Lower end of the colour range.
        vmax: Upper end of the colour range.
        spec: Format spec for the cell annotations.
    """

    column: str
    title: str
    colorbar_label: str
    cmap: str
    vmin: float
    vmax: float
    spec: str


def _panels(cells: pd.DataFrame) -> dict[str, _Panel]:
    """The panel kinds with colour ranges shared by every loss of the sweep."""
    acc_low, acc_high = _score_range(cells["eval_accuracy_mean"], (0.0, 1.0), 0.05)
    mt_low, mt_high = _score_range(cells["mt_bench_mean"], _MT_BENCH_RANGE, 0.5)
    return {
        "collapse": _Panel(
            "collapse_rate",
            "collapse rate",
            "diverged / (completed + diverged)",
            _COLLAPSE_CMAP,
            0.0,
            1.0,
            ".2f",
        ),
        "accuracy": _Panel(
            "eval_accuracy_mean",
            "eval preference accuracy",
            "mean eval_rewards/accuracies (non-diverged)",
            _SCORE_CMAP,
            acc_low,
            acc_high,
            ".2f",
        ),
        "mt_bench": _Panel(
            "mt_bench_mean",
            "MT-Bench score",
            "mean MT-Bench score (1-10)",
            _SCORE_CMAP,
            mt_low,
            mt_high,
            ".1f",
        ),
    }


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


def _annotation(panel: _Panel, grid: _Grid, i: int, j: int, value: float, detailed: bool) -> str:
    """Text written into one heatmap cell (empty where the sweep has no such cell)."""
    n_trials = grid.values("n_trials")[i, j]
    if np.isnan(n_trials):
        return ""
    if panel.column == "collapse_rate":
        if np.isnan(value):
            return "all\nerrored" if detailed else "err"
        if detailed:
            diverged, verdicts = grid.values("n_diverged")[i, j], grid.values("n_verdict")[i, j]
            return f"{value:{panel.spec}}\n{int(diverged)}/{int(verdicts)}"
        return f"{value:{panel.spec}}"
    return "n/a" if np.isnan(value) else f"{value:{panel.spec}}"


def _draw_heatmap(ax: Axes, grid: _Grid, panel: _Panel, *, detailed: bool, fontsize: float):
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

    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            text = _annotation(panel, grid, i, j, values[i, j], detailed)
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
        [f"stable region (collapse rate \u2264 {stable_threshold:g})"],
        loc="outside lower center",
        frameon=False,
        fontsize=9,
    )


def _save(fig: Figure, path: Path) -> Path:
    """Renders ``fig`` with the Agg canvas to ``path`` (PNG)."""
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, format="png")
    return path


def _loss_figure(grid: _Grid, loss: str, panels: Sequence[_Panel], stable_threshold: float) -> Figure:
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


def _overview_figure(
    grids: dict[str, _Grid], panels: Sequence[_Panel], stable_threshold: float, n_seeds: int
) -> Figure:
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
        fig.colorbar(images[-1], ax=list(row), shrink=0.9).set_label(panel.colorbar_label, fontsize=8)
    fig.suptitle(f"Stability overview (up to {n_seeds} trial(s) per cell)", fontsize=12)
    _outline_legend(fig, stable_threshold)
    return fig


def _file_stem(loss: str) -> str:
    """File-name-safe version of a loss name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", loss)


# ----------------------------------------------------------------------------------------------------------
# Output bundle
# ----------------------------------------------------------------------------------------------------------


@dataclass
class StabilityMap:
    """Everything :func:`write_stability_map` wrote.

    Attributes:
        out_dir: Directory holding every file.
        trials: Validated per-trial frame (as written to ``trials.csv`` / ``trials.parquet``).
        cells: Per-cell frame from :func:`aggregate_cells` (as written to ``cells.csv`` / ``cells.parquet``).
        tables: ``trials.csv``, ``trials.parquet``, ``cells.csv``, ``cells.parquet``.
        figures: Every PNG: per loss ``collapse_<loss>.png`` and ``score_<loss>.png``, then
            ``stability_overview.png``.
        files: ``tables`` followed by ``figures``.
    """

    out_dir: Path
    trials: pd.DataFrame
    cells: pd.DataFrame
    tables: list[Path]
    figures: list[Path]
    files: list[Path] = field(init=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if not self.out_dir.is_dir():
            raise ValueError(f"out_dir {self.out_dir} is not a directory")
        for name in ("trials", "cells"):
            if not isinstance(getattr(self, name), pd.DataFrame):
                raise ValueError(f"{name} must be a pandas DataFrame")
        self.tables = [Path(p) for p in self.tables]
        self.figures = [Path(p) for p in self.figures]
        self.files = [*self.tables, *self.figures]
        if len(set(self.files)) != len(self.files):
            raise ValueError("StabilityMap lists a file twice")
        for path in self.files:
            if path.parent != self.out_dir or not path.is_file():
                raise ValueError(f"{path} is not a file written into {self.out_dir}")

    def figure(self, name: str) -> Path:
        """Path of the figure called ``name`` (e.g. ``"collapse_dlrml.png"``).

        Raises:
            KeyError: If no such figure was written.
        """
        for path in self.figures:
            if path.name == name:
                return path
        raise KeyError(f"no figure {name!r}; written: {', '.join(p.name for p in self.figures)}")


def write_stability_map(trials: pd.DataFrame, out_dir: Path, *, stable_threshold: float = 0.0) -> StabilityMap:
    """Writes the per-trial and per-cell tables and the stability heatmaps of a sweep.

    Per loss, ``collapse_<loss>.png`` shows the collapse rate on the ``beta_kl`` (x) by ``beta_mix`` (y) grid,
    each cell annotated with the rate and ``diverged/verdicts``; ``score_<loss>.png`` shows the mean
    held-out preference accuracy and, when any trial of the loss has one, the mean MT-Bench score. Losses
    without a ``beta_mix`` axis get a one-row strip over ``beta_kl``. Stable cells are outlined in blue on
    every panel; grey cells have no value (absent from the sweep, all errored, or all diverged for scores).
    ``stability_overview.png`` puts every loss side by side (one column each) with shared colour ranges.

    Args:
        trials: One row per trial (see :func:`validate_trials`).
        out_dir: Output directory, created if needed.
        stable_threshold: Largest collapse rate still called stable, in ``[0, 1]``.

    Returns:
        The written files and the two frames.

    Raises:
        ValueError: On an invalid trial frame, an empty one, or two loss names that map to the same file name.
    """
    frame = validate_trials(trials)
    if frame.empty:
        raise ValueError("trials frame has no rows: nothing to map")
    cells = aggregate_cells(frame, stable_threshold=stable_threshold)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tables = []
    for name, table in (("trials", frame), ("cells", cells)):
        csv_path, parquet_path = out_dir / f"{name}.csv", out_dir / f"{name}.parquet"
        table.to_csv(csv_path, index=False)
        table.to_parquet(parquet_path, index=False)
        tables += [csv_path, parquet_path]

    losses = sorted(cells["loss"].unique())
    stems = [_file_stem(loss) for loss in losses]
    if len(set(stems)) != len(stems):
        raise ValueError(f"loss names {losses} collide once made file-name safe ({stems})")
    panels = _panels(cells)
    grids = {loss: _grid_for(cells, loss) for loss in losses}

    figures = []
    for loss, stem in zip(losses, stems, strict=True):
        grid = grids[loss]
        figures.append(
            _save(
                _loss_figure(grid, loss, [panels["collapse"]], stable_threshold),
                out_dir / f"collapse_{stem}.png",
            )
        )
        score_panels = [panels["accuracy"]]
        if grid.cells["mt_bench_mean"].notna().any():
            score_panels.append(panels["mt_bench"])
        figures.append(_save(_loss_figure(grid, loss, score_panels, stable_threshold), out_dir / f"score_{stem}.png"))

    overview_panels = [panels["collapse"], panels["accuracy"]]
    if cells["mt_bench_mean"].notna().any():
        overview_panels.append(panels["mt_bench"])
    n_seeds = int(cells["n_trials"].max())
    figures.append(
        _save(
            _overview_figure(grids, overview_panels, stable_threshold, n_seeds),
            out_dir / "stability_overview.png",
        )
    )
    return StabilityMap(out_dir=out_dir, trials=frame, cells=cells, tables=tables, figures=figures)
