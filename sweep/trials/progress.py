"""What a user watching a sweep sees: one line per trial event and a compact status table.

Tune's own console output is turned off (``verbose=0``): it prints a 50-line config table for every trial, and
the output of every Ray worker (progress bars, library warnings) goes to the logs on disk instead of the driver's
terminal (``log_to_driver=False`` in :func:`sweep.cluster.connect.init_ray`). :class:`TrialProgress` prints, instead,

* one line when a trial starts, at each held-out evaluation, and when it ends (with its verdict and reason), and
* every ``table_every_s`` seconds, a table of the trials with the numbers a user watches: step, loss, gradient
  norm, held-out accuracy, status, non-pad tokens/s and, where the accelerator's peak is known, MFU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from sweep.trials.reports import read_reports
from sweep.trials.rows import status_of_reports, trial_label, tune_trial_error
from trainers.collapse import DivergenceConfig
from trainers.protocol import HELD_OUT_ACCURACY, Metric, ReportKey, ReportType
from trainers.verdicts import VerdictConfig

RESTORED_FINISHED = frozenset({Trial.TERMINATED, Trial.ERROR})
"""Tune statuses of a trial that has ended: one a resumed sweep restored so is never started again."""
TOKENS_COLUMN, MFU_COLUMN = "tok/s", "mfu"
TABLE_COLUMNS = (
    "trial",
    "status",
    ReportKey.STEP.value,
    Metric.LOSS.value,
    Metric.GRAD_NORM.value,
    "held-out acc",
    TOKENS_COLUMN,
    MFU_COLUMN,
)
"""The status table's columns: what a user watches while a sweep runs (``mfu`` only while some trial reports it)."""


def _print_line(line: str) -> None:
    print(line, flush=True)


def _number(value: Any) -> str:
    """A metric for the table: 4 significant digits, ``-`` when not reported yet."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return f"{value:.4g}" if not math.isnan(value) else "nan"


def _rate(value: Any) -> str:
    """Tokens/s, short: ``850``, ``12.3k``, ``1.2M``; ``-`` when not reported yet."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return _number(value)
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}"


def _percent(value: Any) -> str:
    """A fraction as a percentage with one decimal (MFU); ``-`` when not reported."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return _number(value)
    return f"{100 * value:.1f}%"


_FORMATS: dict[str, Callable[[Any], str]] = {TOKENS_COLUMN: _rate, MFU_COLUMN: _percent}
"""How a column's cells are written (:func:`_number` for the others)."""


class TrialProgress(Callback):
    """Tune callback: one line per trial event and, every ``table_every_s`` seconds, a compact status table.

    Args:
        divergence: The sweep's divergence rules (a trial's verdict as it ends is judged as the map will).
        verdicts: The sweep's verdict thresholds.
        table_every_s: Seconds between status tables (``0``: no tables).
        echo: Where lines go (``print`` with flush by default).
        asha_grace: ASHA's first rung when the sweep prunes with ASHA (a trial that ends without its final report
            after it was pruned, before it interrupted).
    """

    def __init__(
        self,
        divergence: DivergenceConfig,
        verdicts: VerdictConfig,
        *,
        table_every_s: float = 60.0,
        echo: Callable[[str], None] | None = None,
        asha_grace: int | None = None,
    ) -> None:
        self.divergence = divergence
        self.verdicts = verdicts
        self.asha_grace = asha_grace
        self.table_every_s = table_every_s
        self.echo = echo or _print_line
        self._results: dict[str, list[dict[str, Any]]] = {}
        self._rows: dict[str, dict[str, Any]] = {}
        self._last_table = time.monotonic()

    def _row(self, trial) -> dict[str, Any]:
        row = self._rows.get(trial.trial_id)
        if row is None:
            row = self._rows[trial.trial_id] = {"trial": trial_label(trial.config["trial"]), "status": "pending"}
            if getattr(trial, "status", None) in RESTORED_FINISHED:
                self._restored(trial, row)
        return row

    def _restored(self, trial, row: dict[str, Any]) -> None:
        """A trial a resumed sweep restored as finished (this driver never starts it): its numbers and the status its
        reports give, read from its ``result.json`` (its last result where that cannot be read)."""
        reports = read_reports(trial.path) if trial.path and Path(trial.path).is_dir() else []
        reports = reports or ([trial.last_result] if trial.last_result else [])
        for result in reports:
            self._note(row, result)
        error = tune_trial_error(trial) if trial.status == Trial.ERROR else None
        if reports or error is not None:
            row["status"] = status_of_reports(reports, error, self.divergence, self.verdicts)[0].value
        else:
            row["status"] = "finished"

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        """A trial (or a retry of one) started: its reports so far no longer count."""
        self._results[trial.trial_id] = []
        row = self._row(trial)
        row["status"] = "running"
        self.echo(f"[trial] {row['trial']}: started ({trial.trial_id})")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        """Remember the report; print a line for a held-out evaluation."""
        self._results.setdefault(trial.trial_id, []).append(
            {k: v for k, v in result.items() if isinstance(v, int | float | None)}
        )
        row = self._row(trial)
        if (accuracy := self._note(row, result)) is not None:
            self.echo(f"[trial] {row['trial']}: step {result.get(ReportKey.STEP)}, held-out accuracy {accuracy:.3f}")

    @staticmethod
    def _note(row: dict[str, Any], result: Mapping[str, Any]) -> float | None:
        """Put a report's numbers in the trial's row; returns its held-out accuracy if it is an evaluation."""
        kind = result.get(ReportKey.REPORT_TYPE)
        row[ReportKey.STEP.value] = result.get(ReportKey.STEP)
        if kind == ReportType.TRAIN:
            row[Metric.LOSS.value] = result.get(Metric.LOSS)
            row[Metric.GRAD_NORM.value] = result.get(Metric.GRAD_NORM)
            row[TOKENS_COLUMN] = result.get(Metric.PERF_TOKENS_PER_SECOND)
            row[MFU_COLUMN] = result.get(Metric.PERF_MFU)
        if kind == ReportType.EVAL:
            row["held-out acc"] = result.get(HELD_OUT_ACCURACY, math.nan)
            return row["held-out acc"]
        return None

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """The trial ended (finished, or stopped by a stopper or the scheduler): print its verdict."""
        self._ended(trial, error=None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """The trial failed and its retries are spent."""
        self._ended(trial, error=tune_trial_error(trial))

    def _ended(self, trial, error: BaseException | None) -> None:
        row = self._row(trial)
        results = self._results.pop(trial.trial_id, [])
        status, reason = status_of_reports(results, error, self.divergence, self.verdicts, self.asha_grace)
        row["status"] = status.value
        step = row.get(ReportKey.STEP.value)
        at = f" at step {step}" if step is not None else ""
        self.echo(f"[trial] {row['trial']}: {status.value}{at}" + (f" ({reason})" if reason else ""))

    def on_step_end(self, iteration, trials, **info) -> None:
        """Every ``table_every_s`` seconds, the status table."""
        if self.table_every_s <= 0 or time.monotonic() - self._last_table < self.table_every_s:
            return
        self._last_table = time.monotonic()
        for trial in trials:
            self._row(trial)
        counts = ", ".join(f"{n} {status}" for status, n in trial_counts(self._rows).items())
        self.echo(f"[sweep] trials: {counts}\n{status_table(self._rows.values())}")


def status_table(rows: Any) -> str:
    """The rows (dicts keyed by :data:`TABLE_COLUMNS`) as an aligned plain-text table; the ``mfu`` column only when
    some row has an MFU (the accelerator's peak is known)."""
    rows = list(rows)
    columns = [c for c in TABLE_COLUMNS if c != MFU_COLUMN or any(row.get(c) is not None for row in rows)]
    cells = [columns]
    for row in rows:
        numbers = (_FORMATS.get(c, _number)(row.get(c)) for c in columns[2:])
        cells.append([str(row["trial"]), str(row["status"]), *numbers])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


def trial_counts(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """How many trials are in each status (``running``, ``stable``, ...)."""
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts
