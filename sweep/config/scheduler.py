"""ASHA early stopping (off in every shipped config: README "Verdicts")."""

from __future__ import annotations

from dataclasses import dataclass

from trainers.protocol import HELD_OUT_ACCURACY
from trainers.typed_config import ConfigError, option, validate


@dataclass
class SchedulerConfig:
    """ASHA early stopping on held-out preference accuracy (comparable across losses and betas)."""

    asha: bool = option(
        True, help="Prune weak trials with ASHA; ``false`` runs every trial to the end (divergence still stops)."
    )
    metric: str = option(
        HELD_OUT_ACCURACY,
        help="Metric ASHA compares; must be an evaluation metric (``eval_*``) reported at ``train.eval_steps``.",
    )
    grace_period: int = option(10, ge=1, help="Optimizer steps before ASHA may prune a trial.")
    reduction_factor: float = option(2.0, gt=1, help="ASHA's halving rate.")

    def __post_init__(self) -> None:
        validate(self, label="scheduler")

    def _check(self) -> None:
        if not self.metric.startswith("eval_"):
            raise ConfigError(
                f"must be a held-out metric (eval_*), got {self.metric!r}: raw training losses are not comparable "
                "across losses and betas",
                "metric",
            )
