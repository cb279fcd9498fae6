"""The sweep's ``alpaca_eval:`` section and the ``trials.csv`` columns AlpacaEval scores go to (defined once here).

Kept apart from :mod:`sweep.config` so the section can grow without touching the shared config module; it sits in the
config layer (``tests/test_layering.py``) and imports nothing heavier than :mod:`evaluation.alpaca_eval_config`.
"""

from __future__ import annotations

import enum
import typing
from dataclasses import dataclass
from typing import Literal

from evaluation.alpaca_eval_config import AlpacaEvalConfig
from trainers.typed_config import option, validate

AlpacaEvalPolicy = Literal["all", "top_k", "none"]
ALPACA_EVAL_POLICIES: tuple[str, ...] = typing.get_args(AlpacaEvalPolicy)


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


@dataclass
class AlpacaEvalSweepConfig:
    """Which trials get AlpacaEval 2.0-scored after the sweep, and how."""

    policy: AlpacaEvalPolicy = option(
        "none", help="``all`` completed trials, ``top_k`` of them by held-out accuracy, or ``none`` (the default)."
    )
    top_k: int = option(1, ge=1, help="Number of trials scored under ``top_k``.")
    eval: AlpacaEvalConfig = option(
        AlpacaEvalConfig(),
        help="AlpacaEval settings (instructions, baseline: null = the sweep's reference policy, judge, lengths).",
    )

    def __post_init__(self) -> None:
        validate(self, label="alpaca_eval")
