"""The score columns of a sweep's trial rows, defined once: the benchmarks write them, the map, the claims and
MLflow read them (the trial's own columns are :mod:`sweep.trials.rows`'; statuses and metrics are
:mod:`trainers.protocol`'s)."""

from __future__ import annotations

import enum


class MTBenchColumn(enum.StrEnum):
    """Columns of a sweep's trial rows that hold MT-Bench results (1-10 scale)."""

    SCORE = "mt_bench_score"
    """Mean valid judgment score, both turns pooled (FastChat's "Average")."""
    REASON = "mt_bench_reason"
    """Why a trial has no score (not selected, not trained to the end, or ``failed: ...``)."""
    JUDGMENTS = "mt_bench_judgments"
    """Path of the trial's judgments file (driver-internal: not written to ``trials.csv``)."""


class AlpacaColumn(enum.StrEnum):
    """Columns of a sweep's trial rows that hold AlpacaEval results (percent)."""

    LC = "alpaca_lc"
    """Length-controlled win rate: what the proposal's claim (d) is about."""
    WIN_RATE = "alpaca_win_rate"
    STANDARD_ERROR = "alpaca_win_rate_se"
    REASON = "alpaca_reason"
    """Why a trial has no score (not selected, not trained to the end, or ``failed: ...``)."""
    ANNOTATIONS = "alpaca_annotations"
    """Path of the trial's annotations file (driver-internal: not written to ``trials.csv``)."""
