"""The stability map's files: everything the package builds, written into one directory (:func:`write_stability_map`).

The map is built in layers, one module each:

* :mod:`sweep.stability.cells` validates the per-trial frame and aggregates it into ``(loss, form, beta_kl,
  beta_mix)`` cells with their failure rate and scores;
* :mod:`sweep.stability.table` renders the cells as the terminal table the driver prints;
* :mod:`sweep.stability.heatmap_grid` lays each loss's cells out on the beta grid and says what each heatmap cell
  shows;
* :mod:`sweep.stability.plots` draws the heatmaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sweep.search.infer import with_inferred
from sweep.search.lattice import Lattice
from sweep.stability.cells import (
    aggregate_cells,
    validate_trials,
)
from sweep.stability.plots import write_figures


@dataclass
class StabilityMap:
    """Everything :func:`write_stability_map` wrote.

    Attributes:
        out_dir: Directory holding every file.
        trials: Validated per-trial frame (as written to ``trials.csv`` / ``trials.parquet``).
        cells: Per-cell frame from :func:`aggregate_cells` (as written to ``cells.csv`` / ``cells.parquet``).
        tables: ``trials.csv``, ``trials.parquet``, ``cells.csv``, ``cells.parquet``.
        figures: Every PNG: per loss ``failed_<loss>.png`` and ``score_<loss>.png``, then
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
        """Path of the figure called ``name`` (e.g. ``"failed_dlrml.png"``).

        Raises:
            KeyError: If no such figure was written.
        """
        for path in self.figures:
            if path.name == name:
                return path
        raise KeyError(f"no figure {name!r}; written: {', '.join(p.name for p in self.figures)}")


def _write_tables(frames: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Writes each frame as ``<name>.csv`` and ``<name>.parquet`` (without the index).

    Args:
        frames: Tables by file stem, in the order written.
        out_dir: Existing output directory.

    Returns:
        The paths written, the CSV before the Parquet file of each table.
    """
    tables = []
    for name, table in frames.items():
        csv_path, parquet_path = out_dir / f"{name}.csv", out_dir / f"{name}.parquet"
        table.to_csv(csv_path, index=False)
        table.to_parquet(parquet_path, index=False)
        tables += [csv_path, parquet_path]
    return tables


def write_stability_map(
    trials: pd.DataFrame, out_dir: Path, *, stable_threshold: float = 0.0, lattices: Sequence[Lattice] | None = None
) -> StabilityMap:
    """Writes the per-trial and per-cell tables and the stability heatmaps of a sweep.

    Per loss, ``failed_<loss>.png`` shows the failed rate on the ``beta_kl`` (x) by ``beta_mix`` (y) grid,
    each cell annotated with the rate and ``diverged/verdicts``; ``score_<loss>.png`` shows the mean
    held-out preference accuracy and, when any trial of the loss has one, the mean MT-Bench score. Losses
    without a ``beta_mix`` axis get a one-row strip over ``beta_kl``. Stable cells are outlined in blue on
    every panel; grey cells have no value: a failed-rate cell without a verdict is labelled by what ended its
    trials (``pruned``, ``err``, or ``n/a`` for a mix), a score cell without a score ``n/a``, and a point
    absent from the sweep is left blank.
    ``stability_overview.png`` puts every loss side by side (one column each) with shared colour ranges.

    Args:
        trials: One row per trial (see :func:`validate_trials`).
        out_dir: Output directory, created if needed.
        stable_threshold: Largest failed rate still called stable, in ``[0, 1]``.
        lattices: For an adaptive sweep, the grid lattices (:func:`sweep.search.lattice.lattices`): every lattice cell
            the sweep did not measure is added to ``cells.csv`` and the heatmaps with ``inferred=True`` and the
            assumption its verdict rests on (or ``unmeasured``); measured cells get ``inferred=False``.

    Returns:
        The written files and the two frames.

    Raises:
        ValueError: On an invalid trial frame, an empty one, or two loss names that map to the same file name.
    """
    frame = validate_trials(trials)
    if frame.empty:
        raise ValueError("trials frame has no rows: nothing to map")
    cells = aggregate_cells(frame, stable_threshold=stable_threshold)
    if lattices is not None:
        cells = with_inferred(cells, lattices)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = _write_tables({"trials": frame, "cells": cells}, out_dir)
    figures = write_figures(cells, out_dir, stable_threshold=stable_threshold)
    return StabilityMap(out_dir=out_dir, trials=frame, cells=cells, tables=tables, figures=figures)
