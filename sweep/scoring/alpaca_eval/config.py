"""The sweep's ``alpaca_eval:`` section: which trials AlpacaEval 2.0 scores, and with which settings.

It sits in the config layer (``tests/test_layering.py``) and imports nothing heavier than
:mod:`evaluation.alpaca_eval.config`; the score columns are :class:`sweep.columns.AlpacaColumn`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from evaluation.alpaca_eval.config import AlpacaEvalConfig
from trainers.typed_config import option, validate

AlpacaEvalPolicy = Literal["all", "top_k", "none"]
ALPACA_EVAL_POLICIES: tuple[str, ...] = typing.get_args(AlpacaEvalPolicy)


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
