"""The sweep's ``mt_bench:`` section: which trials MT-Bench scores, and with which settings.

It sits in the config layer (``tests/test_layering.py``) and imports nothing heavier than
:mod:`evaluation.mt_bench.config`; the score columns are :class:`sweep.columns.MTBenchColumn`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from evaluation.mt_bench.config import EvalConfig
from trainers.typed_config import option, validate

MTBenchPolicy = Literal["all", "top_k", "none"]
MT_BENCH_POLICIES: tuple[str, ...] = typing.get_args(MTBenchPolicy)


@dataclass
class MTBenchConfig:
    """Which trials get MT-Bench-scored after the sweep, and how."""

    policy: MTBenchPolicy = option(
        "top_k", help="``all`` completed non-diverged trials, ``top_k`` of them by held-out accuracy, or ``none``."
    )
    top_k: int = option(1, ge=1, help="Number of trials scored under ``top_k``.")
    eval: EvalConfig = option(
        EvalConfig(), help="MT-Bench settings (questions, judge backend and model, generation lengths, retries)."
    )

    def __post_init__(self) -> None:
        validate(self, label="mt_bench")
