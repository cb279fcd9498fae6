"""Stability cells: the validated per-trial frame of a sweep grouped into per-cell verdicts and failure rates.

After a sweep the driver holds one row per Ray Tune trial. This module groups the trials into *cells*
(one cell per ``(loss, form, beta_kl, beta_mix)`` point, the seeds being repeats) and computes how often each
cell fails.

Failure has one definition (:class:`trainers.protocol.Failure`), counted over the trials with a verdict
(:attr:`TrialStatus.has_verdict`: stable, stalled, reversed, collapsed, diverged):

    failed_rate   = (n_stalled + n_reversed + n_collapsed + n_diverged) / n_verdict   (not usable)
    unstable_rate = (n_collapsed + n_diverged) / n_verdict                            (training went wrong)

each with a Wilson score interval over the cell's seeds. These are the failure modes the DiscoPOP paper (Lu et al.,
2024) reports for LRML ("stuck in local minima" at small beta, collapse or divergence at large beta), mapped here for
it and its decoupled variant dLRML. An unsettled trial (still moving at the end of its budget), a trial that ASHA
(Li et al., 2020) pruned (judged *weak* at a rung: it did not fail *yet*), an interrupted and an errored one say
nothing about the loss, so they are left out of the denominator.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sweep.columns import AlpacaColumn, MTBenchColumn
from sweep.confidence import wilson_interval
from trainers.protocol import Failure, TrialStatus


def failure_columns(failure: Failure) -> tuple[str, str, str, str]:
    """The cell-frame columns of a failure category: its count, rate and Wilson interval, e.g. ``n_failed``,
    ``failed_rate``, ``failed_low``, ``failed_high``."""
    return f"n_{failure}", f"{failure}_rate", f"{failure}_low", f"{failure}_high"


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
#: Columns a trial frame may carry (MT-Bench is only run on selected trials; ``form`` defaults to ``stable``).
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "form",
    MTBenchColumn.SCORE,
    MTBenchColumn.REASON,
    AlpacaColumn.LC,
    AlpacaColumn.REASON,
)
#: The point that identifies a cell.
CELL_KEYS: tuple[str, ...] = ("loss", "form", "beta_kl", "beta_mix")
#: A cell's ``verdict`` when none of its trials carries one and none is unsettled.
UNDETERMINED = "undetermined"
#: A cell's ``verdict`` when none of its trials carries one but some trained to the end unsettled.
UNSETTLED = TrialStatus.UNSETTLED.value
#: Cell-frame column counting the trials of each status (``n_stable``, ``n_pruned``, ...).
STATUS_COUNT_COLUMNS: dict[TrialStatus, str] = {status: f"n_{status.value}" for status in TrialStatus}
#: Columns of the frame returned by :func:`aggregate_cells`, in order.
CELL_COLUMNS: tuple[str, ...] = (
    *CELL_KEYS,
    "n_trials",
    *STATUS_COUNT_COLUMNS.values(),
    "n_verdict",
    *(column for failure in Failure for column in failure_columns(failure)),
    "verdict",
    "median_steps_to_divergence",
    "eval_accuracy_mean",
    "eval_accuracy_std",
    "eval_accuracy_median",
    "n_mt_bench",
    "mt_bench_mean",
    "mt_bench_std",
    "n_alpaca",
    "alpaca_lc_mean",
    "alpaca_lc_std",
    "stable",
)
#: MT-Bench single-answer grading is on a 1-10 scale (Zheng et al., 2023, "Judging LLM-as-a-Judge").
MT_BENCH_RANGE: tuple[float, float] = (0.0, 10.0)

# Statuses whose held-out accuracy a cell averages: trials that ran without diverging or crashing.
_SCORED_STATUSES: tuple[TrialStatus, ...] = tuple(s for s in TrialStatus if s.trained_to_end or s is TrialStatus.PRUNED)
# Order in which a mixed cell's failure kinds name its verdict on a tie (the most severe first).
_FAILURE_ORDER: tuple[TrialStatus, ...] = tuple(reversed(Failure.FAILED.statuses))
# Numeric trial columns, coerced to float64.
_NUMERIC_COLUMNS: tuple[str, ...] = (
    "beta_kl",
    "beta_mix",
    "seed",
    "diverged_step",
    "steps",
    "eval_accuracy",
    MTBenchColumn.SCORE,
    AlpacaColumn.LC,
)


# ----------------------------------------------------------------------------------------------------------
# Validation
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
            f"trials row {row!r}, field {str(column)!r}: {frame.at[row, column]!r} {requirement} "
            f"({int(bad.sum())} bad row(s) in all)"
        )


def _check_statuses(frame: pd.DataFrame) -> None:
    """Rejects a status that is not a :class:`TrialStatus` value, naming the first such row.

    Args:
        frame: The trial frame.

    Raises:
        ValueError: On an unknown status.
    """
    known = [status.value for status in TrialStatus]
    unknown = ~frame["status"].isin(known)
    if unknown.any():
        values = sorted({repr(v) for v in frame.loc[unknown, "status"]})
        _check_rows(
            frame,
            "status",
            unknown,
            f"is not a known status (expected one of {', '.join(known)}; unknown values: {', '.join(values)})",
        )


def _check_identity(frame: pd.DataFrame) -> None:
    """Checks ``loss`` and ``trial_id`` and turns trial ids into strings, in place.

    Args:
        frame: The trial frame (a copy owned by the caller).

    Raises:
        ValueError: On an empty loss name, a missing or empty trial id, or a duplicate trial id.
    """
    loss_ok = frame["loss"].map(lambda v: isinstance(v, str) and v.strip() != "")
    _check_rows(frame, "loss", ~loss_ok, "must be a non-empty string")
    trial_ok = frame["trial_id"].map(lambda v: v is not None and not pd.isna(v) and str(v) != "")
    _check_rows(frame, "trial_id", ~trial_ok, "must be a non-empty id")
    frame["trial_id"] = frame["trial_id"].astype(str)
    duplicated = frame["trial_id"].duplicated(keep="first")
    _check_rows(frame, "trial_id", duplicated, "is a duplicate trial id")


def _check_numbers(frame: pd.DataFrame) -> None:
    """Coerces the numeric columns to ``float64`` and checks their ranges, in place.

    Args:
        frame: The trial frame (a copy owned by the caller).

    Raises:
        ValueError: On a value that is not a number or out of its range (row index and field named).
    """
    for column in _NUMERIC_COLUMNS:
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
    mt = frame[MTBenchColumn.SCORE]
    low, high = MT_BENCH_RANGE
    _check_rows(frame, MTBenchColumn.SCORE, mt.notna() & ~mt.between(low, high), f"must lie in [{low}, {high}]")
    lc = frame[AlpacaColumn.LC]
    _check_rows(frame, AlpacaColumn.LC, lc.notna() & ~lc.between(0.0, 100.0), "must lie in [0, 100] (percent)")


def validate_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Checks a per-trial frame and returns a normalised copy.

    Normalisation: numeric columns become ``float64`` (``seed`` and ``steps`` stay float so NaN survives),
    ``trial_id`` becomes ``str`` (``loss`` and ``status`` must already be strings), ``reason`` /
    ``mt_bench_reason`` become ``str`` or ``None``, and the optional MT-Bench columns are added (all
    missing) when absent.

    Args:
        trials: One row per Ray Tune trial with at least :data:`REQUIRED_COLUMNS`; ``status`` holds
            :class:`TrialStatus` values.

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
    defaults = {"form": "stable", MTBenchColumn.SCORE: np.nan, MTBenchColumn.REASON: None}
    defaults |= {AlpacaColumn.LC: np.nan, AlpacaColumn.REASON: None}
    for column in OPTIONAL_COLUMNS:
        if column not in frame.columns:
            frame[column] = defaults[column]
    frame["form"] = frame["form"].fillna("stable")

    _check_statuses(frame)
    _check_identity(frame)
    _check_numbers(frame)
    for column in ("reason", MTBenchColumn.REASON, AlpacaColumn.REASON):
        frame[column] = frame[column].map(lambda v: None if v is None or pd.isna(v) else str(v)).astype(object)

    leading = [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]
    return frame[[*leading, *(c for c in frame.columns if c not in leading)]]


# ----------------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------------


def _mean_or_nan(values: pd.Series) -> float:
    """Mean over non-missing values, NaN when there are none."""
    values = values.dropna()
    return float(values.mean()) if len(values) else math.nan


def _std_or_nan(values: pd.Series) -> float:
    """Sample standard deviation (ddof 1) over non-missing values, NaN with fewer than two."""
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _median_or_nan(values: pd.Series) -> float:
    """Median over non-missing values, NaN when there are none."""
    values = values.dropna()
    return float(values.median()) if len(values) else math.nan


def cell_verdict(counts: dict[TrialStatus, int]) -> str:
    """A cell's verdict from its status counts: ``stable`` when every trial with a verdict is stable, else its most
    frequent failure (ties: the most severe); without any verdict ``unsettled`` when a trial trained to the end
    unsettled, else ``undetermined``."""
    failures = [(counts.get(s, 0), -_FAILURE_ORDER.index(s), s) for s in _FAILURE_ORDER if counts.get(s, 0)]
    if failures:
        return str(max(failures)[2])
    if counts.get(TrialStatus.STABLE, 0):
        return str(TrialStatus.STABLE)
    return UNSETTLED if counts.get(TrialStatus.UNSETTLED, 0) else UNDETERMINED


def _cell_row(key: tuple, group: pd.DataFrame, stable_threshold: float) -> dict[str, object]:
    """The statistics of one cell (see :func:`aggregate_cells`).

    Args:
        key: The cell's ``(loss, form, beta_kl, beta_mix)``.
        group: The cell's rows of the validated trial frame.
        stable_threshold: Largest failed rate still called stable.

    Returns:
        One row of the cell frame, keyed by :data:`CELL_COLUMNS`.
    """
    loss, form, beta_kl, beta_mix = key
    status = group["status"]
    counts = {member: int((status == member.value).sum()) for member in TrialStatus}
    n_verdict = sum(n for member, n in counts.items() if member.has_verdict)
    rates: dict[str, object] = {}
    for failure in Failure:
        n_fail = sum(n for member, n in counts.items() if failure.includes(member))
        rates.update(
            zip(
                failure_columns(failure),
                (n_fail, n_fail / n_verdict if n_verdict else math.nan, *wilson_interval(n_fail, n_verdict)),
                strict=True,
            )
        )

    diverged = group[status == TrialStatus.DIVERGED.value]
    divergence_steps = diverged["diverged_step"].fillna(diverged["steps"])
    judged = group[status.isin([member.value for member in _SCORED_STATUSES])]["eval_accuracy"]
    scores = group[MTBenchColumn.SCORE]
    alpaca = group[AlpacaColumn.LC]
    return {
        "loss": loss,
        "form": form,
        "beta_kl": float(beta_kl),
        "beta_mix": float(beta_mix),
        "n_trials": len(group),
        **{STATUS_COUNT_COLUMNS[member]: n for member, n in counts.items()},
        "n_verdict": n_verdict,
        **rates,
        "verdict": cell_verdict(counts),
        "median_steps_to_divergence": _median_or_nan(divergence_steps),
        "eval_accuracy_mean": _mean_or_nan(judged),
        "eval_accuracy_std": _std_or_nan(judged),
        "eval_accuracy_median": _median_or_nan(judged),
        "n_mt_bench": int(scores.notna().sum()),
        "mt_bench_mean": _mean_or_nan(scores),
        "mt_bench_std": _std_or_nan(scores),
        "n_alpaca": int(alpaca.notna().sum()),
        "alpaca_lc_mean": _mean_or_nan(alpaca),
        "alpaca_lc_std": _std_or_nan(alpaca),
        "stable": bool(n_verdict > 0 and rates["failed_rate"] <= stable_threshold),
    }


def aggregate_cells(trials: pd.DataFrame, *, stable_threshold: float = 0.0) -> pd.DataFrame:
    """Groups trials into ``(loss, form, beta_kl, beta_mix)`` cells and computes their stability statistics.

    Per cell:

    * ``n_<status>`` per :class:`TrialStatus`; ``n_verdict`` counts the trials whose status
      :attr:`~TrialStatus.has_verdict` (stable, stalled, reversed, collapsed, diverged).
    * per :class:`~trainers.protocol.Failure` category (``failed``, ``unstable``): its count ``n_failed``, its rate
      over ``n_verdict`` ``failed_rate`` and the 95 % Wilson interval ``failed_low`` / ``failed_high``; NaN when no
      trial has a verdict (e.g. every seed was pruned).
    * ``verdict``: :func:`cell_verdict` (``unsettled`` or ``undetermined`` without any verdict).
    * ``median_steps_to_divergence`` over diverged trials: their ``diverged_step``, or ``steps`` (where the
      trainer stopped) for a diverged trial that did not record the step. NaN without diverged trials.
    * ``eval_accuracy_mean`` / ``_std`` / ``_median`` over trials that trained to the end or were pruned (held-out
      preference accuracy, :data:`trainers.protocol.HELD_OUT_ACCURACY`), missing values ignored.
    * ``mt_bench_mean`` / ``_std`` over trials with an MT-Bench score, ``n_mt_bench`` their count; likewise
      ``alpaca_lc_mean`` / ``_std`` / ``n_alpaca`` for the AlpacaEval LC win rate (percent).
    * ``stable``: ``failed_rate <= stable_threshold``; a cell without a verdict is never stable.

    A missing ``beta_mix`` (losses without a mixing temperature) is its own group key, not dropped.

    Args:
        trials: One row per trial (see :func:`validate_trials`).
        stable_threshold: Largest failed rate still called stable, in ``[0, 1]``.

    Returns:
        One row per cell with :data:`CELL_COLUMNS`, sorted by loss, form, ``beta_kl`` and ``beta_mix`` (missing
        ``beta_mix`` last).

    Raises:
        ValueError: On an invalid trial frame or a threshold outside ``[0, 1]``.
    """
    if not 0.0 <= stable_threshold <= 1.0:
        raise ValueError(f"stable_threshold must lie in [0, 1], got {stable_threshold!r}")
    frame = validate_trials(trials)
    rows = [
        _cell_row(key, group, stable_threshold)
        for key, group in frame.groupby(list(CELL_KEYS), dropna=False, sort=True)
    ]
    cells = pd.DataFrame(rows, columns=list(CELL_COLUMNS))
    dtypes = {c: "int64" if c.startswith("n_") else "float64" for c in CELL_COLUMNS}
    dtypes.update({"loss": str, "form": str, "verdict": str, "stable": bool})
    return cells.astype(dtypes)
