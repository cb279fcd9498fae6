"""What each stability heatmap shows, without drawing it: a loss's cells on the ``beta_kl x beta_mix`` grid,
the panel kinds with their colour ranges, and the text written into each cell.

:mod:`sweep.stability.plots` draws these with matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweep.stability.cells import MT_BENCH_RANGE, STATUS_COUNT_COLUMNS
from trainers.protocol import HELD_OUT_ACCURACY, Failure, TrialStatus

_FAILED_CMAP = "Reds"
_SCORE_CMAP = "viridis"
# Failed-panel labels (overview, per-loss figure) of a cell without a verdict whose trials all ended alike.
_NO_VERDICT_LABELS: dict[TrialStatus, tuple[str, str]] = {
    TrialStatus.PRUNED: (TrialStatus.PRUNED.value, f"all\n{TrialStatus.PRUNED}"),
    TrialStatus.ERRORED: ("err", f"all\n{TrialStatus.ERRORED}"),
    TrialStatus.UNSETTLED: ("unset", f"all\n{TrialStatus.UNSETTLED}"),
    TrialStatus.INTERRUPTED: ("intr", f"all\n{TrialStatus.INTERRUPTED}"),
}
# ... and of one whose trials ended in different ways without a verdict (some pruned, some errored).
_MIXED_NO_VERDICT_LABELS: tuple[str, str] = ("n/a", "no\nverdict")


@dataclass(frozen=True)
class Grid:
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

    def cell(self, i: int, j: int) -> pd.Series | None:
        """The cell-frame row at grid row ``i`` (``beta_mix``) and column ``j`` (``beta_kl``).

        Returns:
            The row, or None where the sweep has no such cell.
        """
        beta_mix = self.cells["beta_mix"]
        on_row = beta_mix.isna() if np.isnan(self.beta_mix[i]) else beta_mix == self.beta_mix[i]
        match = self.cells[on_row & (self.cells["beta_kl"] == self.beta_kl[j])]
        return match.iloc[0] if len(match) else None

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


def series_label(loss: str, form: str) -> str:
    """The name of one map series: the loss, with its form when it is not ``stable`` (``discopop[literal]``)."""
    return loss if form == "stable" else f"{loss}[{form}]"


def by_series(cells: pd.DataFrame) -> pd.DataFrame:
    """The cell frame with ``loss`` replaced by :func:`series_label`, so that each (loss, form) is its own map."""
    if "form" not in cells:
        return cells
    labels = [series_label(loss, form) for loss, form in zip(cells["loss"], cells["form"], strict=True)]
    return cells.assign(loss=labels)


def loss_grid(cells: pd.DataFrame, loss: str) -> Grid:
    """Builds the grid of one loss from the cell frame.

    Args:
        cells: Output of :func:`sweep.stability.cells.aggregate_cells`.
        loss: The loss whose cells are laid out.

    Returns:
        The loss's grid; ``beta_mix`` ends with NaN when a cell of the loss has no mixing temperature.
    """
    own = cells[cells["loss"] == loss]
    beta_kl = np.sort(own["beta_kl"].unique())
    mix = own["beta_mix"]
    beta_mix = np.sort(mix.dropna().unique())
    if mix.isna().any():
        beta_mix = np.append(beta_mix, np.nan)
    return Grid(beta_kl=beta_kl.astype(float), beta_mix=beta_mix.astype(float), cells=own)


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
class Panel:
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


def panel_kinds(cells: pd.DataFrame) -> dict[str, Panel]:
    """The panel kinds with colour ranges shared by every loss of the sweep.

    Args:
        cells: Output of :func:`sweep.stability.cells.aggregate_cells` (every loss).

    Returns:
        ``"failed"``, ``"accuracy"``, ``"mt_bench"`` and ``"alpaca"`` panels; the score ranges span the sweep's
        values.
    """
    acc_low, acc_high = _score_range(cells["eval_accuracy_mean"], (0.0, 1.0), 0.05)
    mt_low, mt_high = _score_range(cells["mt_bench_mean"], MT_BENCH_RANGE, 0.5)
    lc_low, lc_high = _score_range(cells["alpaca_lc_mean"], (0.0, 100.0), 5.0)
    return {
        "failed": Panel(
            "failed_rate",
            "failed rate",
            f"failed / verdicts ({Failure.FAILED.meaning})",
            _FAILED_CMAP,
            0.0,
            1.0,
            ".2f",
        ),
        "accuracy": Panel(
            "eval_accuracy_mean",
            "held-out accuracy",
            f"mean {HELD_OUT_ACCURACY} (trials that did not diverge)",
            _SCORE_CMAP,
            acc_low,
            acc_high,
            ".2f",
        ),
        "mt_bench": Panel(
            "mt_bench_mean",
            "MT-Bench score",
            "mean MT-Bench score (1-10)",
            _SCORE_CMAP,
            mt_low,
            mt_high,
            ".1f",
        ),
        "alpaca": Panel(
            "alpaca_lc_mean",
            "AlpacaEval LC",
            "mean AlpacaEval 2.0 LC win rate (%)",
            _SCORE_CMAP,
            lc_low,
            lc_high,
            ".0f",
        ),
    }


def _no_verdict_label(cell: pd.Series, *, detailed: bool) -> str:
    """Failed-panel label of a cell without any verdict: what ended its trials.

    Args:
        cell: A cell-frame row with ``n_verdict == 0``.
        detailed: Whether the label is the per-loss figure's (longer) rather than the overview's.

    Returns:
        e.g. ``"pruned"`` when ASHA stopped every trial, ``"err"`` when every trial crashed, ``"n/a"`` for a mix.
    """
    ended = [status for status in TrialStatus if cell[STATUS_COUNT_COLUMNS[status]] > 0]
    labels = _MIXED_NO_VERDICT_LABELS
    if len(ended) == 1:
        labels = _NO_VERDICT_LABELS.get(ended[0], _MIXED_NO_VERDICT_LABELS)
    return labels[1] if detailed else labels[0]


def _annotation(panel: Panel, cell: pd.Series | None, *, detailed: bool) -> str:
    """Text written into one heatmap cell.

    Args:
        panel: What the heatmap shows.
        cell: The cell-frame row, or None where the sweep has no such cell.
        detailed: Whether failed rates also show ``failed/verdicts`` counts and the verdict (per-loss figures).

    Returns:
        The formatted value; for a missing value, why it is missing (``"n/a"`` on score panels, see
        :func:`_no_verdict_label` on the failed panel); empty without a cell.
    """
    if cell is None:
        return ""
    if bool(cell.get("inferred", False)):
        # Never shown as measured: an adaptive sweep's cell whose verdict comes from its neighbours.
        return f"inferred\n{cell['verdict']}" if detailed else f"({cell['verdict']})"
    value = float(cell[panel.column])
    if panel.column != "failed_rate":
        return "n/a" if np.isnan(value) else f"{value:{panel.spec}}"
    if np.isnan(value):
        return _no_verdict_label(cell, detailed=detailed)
    if detailed:
        return f"{value:{panel.spec}}\n{int(cell['n_failed'])}/{int(cell['n_verdict'])}\n{cell['verdict']}"
    return f"{value:{panel.spec}}"


def cell_labels(grid: Grid, panel: Panel, *, detailed: bool) -> list[list[str]]:
    """The text written into every cell of a grid (see :func:`_annotation`).

    Args:
        grid: One loss's grid.
        panel: What the heatmap shows.
        detailed: Whether failed rates also show ``failed/verdicts`` counts and the verdict (per-loss figures).

    Returns:
        One list per grid row with one label per column; ``""`` where the sweep has no such cell.
    """
    return [
        [_annotation(panel, grid.cell(i, j), detailed=detailed) for j in range(len(grid.beta_kl))]
        for i in range(len(grid.beta_mix))
    ]


def heatmap_labels(cells: pd.DataFrame, loss: str, kind: str = "failed", *, detailed: bool = False) -> list[list[str]]:
    """The texts the heatmaps write into one loss's cells.

    Args:
        cells: Output of :func:`sweep.stability.cells.aggregate_cells`.
        loss: The map series whose grid is labelled (:func:`series_label`, e.g. ``dlrml[literal]``).
        kind: Panel kind: ``"failed"``, ``"accuracy"`` or ``"mt_bench"``.
        detailed: Labels of the per-loss figures (failed rates with ``failed/verdicts``) rather than of
            the overview.

    Returns:
        One list per grid row (``beta_mix`` ascending, a missing ``beta_mix`` last) with one label per
        ``beta_kl`` (ascending); ``""`` where the sweep has no such cell.

    Raises:
        KeyError: On an unknown panel kind.
    """
    cells = by_series(cells)
    return cell_labels(loss_grid(cells, loss), panel_kinds(cells)[kind], detailed=detailed)
