"""Behavioural verdicts of a trial that trained to the end without diverging: stable, stalled or collapsed.

The DiscoPOP paper (Lu et al. 2024, Sec. 5 and App. E) reports two failure modes besides numerical divergence: at
small beta training gets *stuck* (no learning), at large beta the model *collapses* (with gradient clipping this
shows as the likelihood of the chosen responses falling far below the reference's, not as NaN). The rules below
read only a trial's held-out evaluations, so a single trial, a sweep and a restarted sweep (replaying the reports)
reach the same verdict:

* ``collapsed`` if, at the last evaluation, the mean per-token log-probability of the held-out chosen responses has
  fallen more than ``likelihood_collapse_nats`` below the reference's (likelihood collapse), or the held-out
  preference accuracy is significantly below chance (``acc < 0.5 - stall_z * se``), or it had been significantly
  above chance at an earlier evaluation and is back at or below chance (``acc <= 0.5``);
* ``stalled`` if the final held-out accuracy is not above chance beyond its noise (``acc <= 0.5 + stall_z * se``);
* ``stable`` otherwise.

``se = sqrt(0.25 / n)`` is the binomial standard error of an accuracy over ``n`` held-out pairs at chance: with
``n = 32`` and ``stall_z = 2`` a trial must reach 0.68 to count as learning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from trainers.protocol import HELD_OUT_ACCURACY, Metric, ReportKey
from trainers.typed_config import option, validate

CHANCE_ACCURACY = 0.5
"""Preference accuracy of a policy that cannot tell chosen from rejected."""

HELD_OUT_DRIFT = Metric.LOGPS_CHOSEN_DRIFT_PER_TOKEN.held_out
"""Held-out per-token drift of the chosen responses' log-prob from the reference's (nats per token)."""

BehaviourStatus = Literal["stable", "stalled", "collapsed"]


@dataclass
class VerdictConfig:
    """Thresholds of the behavioural verdicts (see the module docstring and the README's "Verdicts")."""

    stall_z: float = option(
        2.0,
        gt=0,
        help="Standard errors above chance (0.5) the final held-out accuracy must reach to count as learning; "
        "below it the trial is stalled.",
    )
    likelihood_collapse_nats: float = option(
        1.5,
        gt=0,
        help="Per-token fall (nats) of the held-out chosen responses' log-prob below the reference's that counts "
        "as likelihood collapse (1.5: each token about 4.5x less likely than under the initial policy).",
    )

    def __post_init__(self) -> None:
        validate(self, label="verdicts.")


@dataclass(frozen=True)
class Evidence:
    """What a verdict rests on: a metric's value against its threshold at a step."""

    metric: str
    value: float
    threshold: float
    step: int

    def describe(self) -> str:
        """e.g. ``eval_rewards/accuracies=0.531 <= 0.677 at step 10``."""
        return f"{self.metric}={self.value:.4g} vs {self.threshold:.4g} at step {self.step}"


@dataclass(frozen=True)
class BehaviourVerdict:
    """The verdict of a trial that trained to the end without diverging."""

    status: BehaviourStatus
    reason: str | None = None
    evidence: Evidence | None = None

    def describe(self) -> str:
        """One line: status, reason and evidence."""
        if self.evidence is None:
            return self.status
        return f"{self.status} ({self.reason}: {self.evidence.describe()})"

    def as_dict(self) -> dict[str, object]:
        """JSON-serialisable form."""
        return asdict(self)


def accuracy_noise(n_pairs: int, z: float) -> float:
    """``z`` binomial standard errors of an accuracy over ``n_pairs`` pairs at chance: ``z * sqrt(0.25 / n)``."""
    return z * math.sqrt(CHANCE_ACCURACY * (1 - CHANCE_ACCURACY) / max(n_pairs, 1))


def judge_behaviour(
    evaluations: Sequence[Mapping[str, float]], n_pairs: int, config: VerdictConfig | None = None
) -> BehaviourVerdict | None:
    """The behavioural verdict from a trial's held-out evaluations, in order.

    Args:
        evaluations: Each held-out evaluation's metrics (``eval_*`` keys) with its ``step``; the last one is the
            trial's final evaluation.
        n_pairs: Held-out pairs each evaluation averages over.
        config: Thresholds.

    Returns:
        The verdict, or ``None`` when no evaluation reported a finite held-out accuracy.
    """
    config = config or VerdictConfig()
    evals = [e for e in evaluations if math.isfinite(float(e.get(HELD_OUT_ACCURACY, math.nan)))]
    if not evals:
        return None
    final = evals[-1]
    step = int(final.get(ReportKey.STEP, 0))
    accuracy = float(final[HELD_OUT_ACCURACY])
    noise = accuracy_noise(n_pairs, config.stall_z)
    drift = float(final.get(HELD_OUT_DRIFT, math.nan))
    if math.isfinite(drift) and drift < -config.likelihood_collapse_nats:
        evidence = Evidence(HELD_OUT_DRIFT, drift, -config.likelihood_collapse_nats, step)
        return BehaviourVerdict("collapsed", "likelihood_collapse", evidence)
    if accuracy < CHANCE_ACCURACY - noise:
        evidence = Evidence(HELD_OUT_ACCURACY, accuracy, CHANCE_ACCURACY - noise, step)
        return BehaviourVerdict("collapsed", "accuracy_below_chance", evidence)
    best = max(float(e[HELD_OUT_ACCURACY]) for e in evals)
    if best > CHANCE_ACCURACY + noise and accuracy <= CHANCE_ACCURACY:
        evidence = Evidence(HELD_OUT_ACCURACY, accuracy, CHANCE_ACCURACY, step)
        return BehaviourVerdict("collapsed", "accuracy_back_to_chance", evidence)
    if accuracy <= CHANCE_ACCURACY + noise:
        evidence = Evidence(HELD_OUT_ACCURACY, accuracy, CHANCE_ACCURACY + noise, step)
        return BehaviourVerdict("stalled", "no_learning", evidence)
    return BehaviourVerdict("stable")
