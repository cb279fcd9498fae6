"""The terminal table of a sweep's stability cells (the driver prints it at the end of a sweep)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from sweep.stability.cells import CELL_COLUMNS, failure_columns
from trainers.protocol import Failure, TrialStatus

_HEADER: tuple[str, ...] = (
    "loss",
    "form",
    "beta_kl",
    "beta_mix",
    "n",
    "stab/stall/rev/coll/div",
    "unset/pruned/intr/err",
    "failed [95% CI]",
    "unstable [95% CI]",
    "div@step",
    "acc (sd)",
    "mt_bench (sd)",
    "alpaca_lc (sd)",
    "verdict",
)
# Leading text columns (loss, betas) are left-aligned, counts and scores right-aligned.
_TEXT_COLUMNS = 4


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


def _table_line(row: tuple) -> tuple[str, ...]:
    """The cells of one table line, in :data:`_HEADER` order.

    Args:
        row: One row of the cell frame, from ``itertuples``.

    Returns:
        The formatted fields.
    """
    verdicts = "/".join(str(getattr(row, f"n_{s.value}")) for s in TrialStatus if s.has_verdict)
    others = "/".join(str(getattr(row, f"n_{s.value}")) for s in TrialStatus if not s.has_verdict)
    rates = [
        f"{getattr(row, rate):.2f} [{getattr(row, low):.2f}, {getattr(row, high):.2f}]" if row.n_verdict else "-"
        for _, rate, low, high in (failure_columns(failure) for failure in Failure)
    ]
    return (
        str(row.loss),
        str(row.form),
        format_beta(row.beta_kl),
        format_beta(row.beta_mix),
        str(row.n_trials),
        verdicts,
        others,
        *rates,
        _fmt(row.median_steps_to_divergence, ".0f"),
        f"{_fmt(row.eval_accuracy_mean, '.3f')} ({_fmt(row.eval_accuracy_std, '.3f')})",
        f"{_fmt(row.mt_bench_mean, '.2f')} ({_fmt(row.mt_bench_std, '.2f')})",
        f"{_fmt(row.alpaca_lc_mean, '.1f')} ({_fmt(row.alpaca_lc_std, '.1f')})",
        _verdict_text(row),
    )


def _verdict_text(row: tuple) -> str:
    """A cell's verdict as the table shows it: measured, inferred (adaptive sweeps, labelled so) or none."""
    if getattr(row, "inferred", False):
        return f"inferred: {row.verdict}"
    return str(row.verdict) if row.n_verdict or row.verdict == TrialStatus.UNSETTLED else "? (no verdict)"


def format_cells_table(cells: pd.DataFrame) -> str:
    """Renders the cell frame as a compact fixed-width table for the terminal.

    Args:
        cells: Output of :func:`sweep.stability.cells.aggregate_cells`.

    Returns:
        The table, one line per cell under a header: the counts of each verdict, of the trials without one
        (unsettled, pruned, interrupted, errored), the failed and unstable rates (:class:`trainers.protocol.Failure`)
        with their Wilson intervals, the mean (sd) held-out accuracy and scores, and the cell's verdict
        (``unsettled``, or ``?`` for a cell without any other reason). Missing numbers print ``-``.

    Raises:
        ValueError: If ``cells`` lacks any of :data:`CELL_COLUMNS`.
    """
    missing = [c for c in CELL_COLUMNS if c not in cells.columns]
    if missing:
        raise ValueError(f"cells frame is missing column(s): {', '.join(missing)}")
    body = [_table_line(row) for row in cells.itertuples(index=False)]
    if not body:
        return "(no cells)"
    widths = [max(len(line[i]) for line in (_HEADER, *body)) for i in range(len(_HEADER))]

    def render(line: Sequence[str]) -> str:
        parts = [
            v.ljust(w) if i < _TEXT_COLUMNS else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(_HEADER), rule, *(render(line) for line in body)])
