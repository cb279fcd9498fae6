"""Behavioural verdicts of a trial that trained to the end without diverging, and whether they have settled.

The DiscoPOP paper (Lu et al. 2024, Sec. 5 and App. E) reports two failure modes besides numerical divergence: at
small beta LRML gets "stuck in local minima", at large beta the model collapses. Each verdict here names a
behaviour, read only from a trial's held-out evaluations (so a single trial, a sweep and a restarted sweep that
replays the reports reach the same verdict), with ``se = sqrt(0.25 / n)`` the standard error of an accuracy over
``n`` held-out pairs at chance and ``z = stall_z``:

* ``collapsed`` (``likelihood_collapse``): the held-out chosen responses' per-token log-prob has fallen more than
  ``likelihood_collapse_nats`` below the reference's *and* the policy stopped preferring them: its accuracy fell
  significantly from its best earlier evaluation, or lies significantly below chance. A falling chosen likelihood
  alone is DPO's well-known benign drift (the chosen and rejected log-probs fall together while their margin
  grows; Rafailov et al. 2024, Pal et al. 2024), not a collapse;
* ``collapsed`` (``accuracy_back_to_chance``): the policy had learned (best accuracy above ``0.5 + z se``) and is
  back at chance, a significant fall from that best;
* ``reversed`` (``wrong_sign_minimum``): accuracy below ``0.5 - z se`` with no likelihood collapse: the policy
  prefers the rejected responses, the LRML loss's wrong-sign local minimum (README "Why LRML runs stall");
* ``stalled`` (``no_learning``): accuracy within ``0.5 +- z se``;
* ``stable``: accuracy above ``0.5 + z se`` and none of the above.

A fall from the best is *significant* when it exceeds ``z_k * sqrt(2) * se``, ``z_k`` the one-sided normal quantile
at ``alpha / k`` (Bonferroni over the ``k`` earlier evaluations the best is taken from; ``alpha`` the one-sided level
of ``stall_z``): the best of several noisy evaluations is biased upwards, so a plain two-standard-error drop from it
fires on noise. ``sqrt(2) * se`` bounds the noise of a difference of two accuracies on the same pairs.

A verdict is *settled* when the verdicts at each of the last ``settle_evals`` evaluations agree and the accuracy
over them moved by less than ``z * sqrt(2) * se``; an unsettled trial is extended (``train.extend_until_settled``)
or ends ``unsettled``, never with a confident verdict. The reference's own evaluation (step 0, before any update)
is a curve's starting point, not evidence: the rules read evaluations after the first step only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Literal

from trainers.protocol import HELD_OUT_ACCURACY, Metric, ReportKey
from trainers.typed_config import option, validate

CHANCE_ACCURACY = 0.5
"""Preference accuracy of a policy that cannot tell chosen from rejected."""

HELD_OUT_DRIFT = Metric.LOGPS_CHOSEN_DRIFT_PER_TOKEN.held_out
"""Held-out per-token drift of the chosen responses' log-prob from the reference's (nats per token)."""

BehaviourStatus = Literal["stable", "stalled", "reversed", "collapsed"]


@dataclass
class VerdictConfig:
    """Thresholds of the behavioural verdicts (see the module docstring and the README's "Verdicts")."""

    stall_z: float = option(
        2.0,
        gt=0,
        help="Standard errors of a held-out accuracy at chance (sqrt(0.25 / n)) that separate learning (above 0.5) "
        "and a reversal (below) from a stall; also the one-sided level of the other tests (2: ~2.3 %).",
    )
    likelihood_collapse_nats: float = option(
        1.5,
        gt=0,
        help="Per-token fall (nats) of the held-out chosen responses' log-prob below the reference's that, with a "
        "significant fall of held-out accuracy, makes a collapse (1.5: each token ~4.5x less likely than initially).",
    )
    settle_evals: int = option(
        3,
        ge=2,
        help="Held-out evaluations at the end whose verdicts must agree (and whose accuracy must not move beyond its "
        "noise) for the verdict to be settled.",
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
        """e.g. ``eval_rewards/accuracies=0.531 vs 0.677 at step 10``."""
        return f"{self.metric}={self.value:.4g} vs {self.threshold:.4g} at step {self.step}"


@dataclass(frozen=True)
class BehaviourVerdict:
    """The verdict of a trial that trained to the end without diverging.

    Attributes:
        status: The behaviour at the last evaluation.
        reason: Its rule (``likelihood_collapse``, ``accuracy_back_to_chance``, ``wrong_sign_minimum``,
            ``no_learning``), ``None`` for stable.
        evidence: The metric, value, threshold and step behind it.
        settled: Whether the trajectory has settled (see the module docstring).
        unsettled_because: Why it has not, when it has not.
    """

    status: BehaviourStatus
    reason: str | None = None
    evidence: Evidence | None = None
    settled: bool = True
    unsettled_because: str | None = None

    def describe(self) -> str:
        """One line: status, reason and evidence, and why it is not settled."""
        text = self.status if self.evidence is None else f"{self.status} ({self.reason}: {self.evidence.describe()})"
        return text if self.settled else f"{text}; unsettled: {self.unsettled_because}"

    def as_dict(self) -> dict[str, object]:
        """JSON-serialisable form."""
        return asdict(self)


def accuracy_noise(n_pairs: int, z: float) -> float:
    """``z`` binomial standard errors of an accuracy over ``n_pairs`` pairs at chance: ``z * sqrt(0.25 / n)``."""
    return z * math.sqrt(CHANCE_ACCURACY * (1 - CHANCE_ACCURACY) / max(n_pairs, 1))


def learning_threshold(n_pairs: int, config: VerdictConfig) -> float:
    """The held-out accuracy a trial must exceed to count as learning: ``0.5 + stall_z * sqrt(0.25 / n)``."""
    return CHANCE_ACCURACY + accuracy_noise(n_pairs, config.stall_z)


def significant_drop(n_pairs: int, k: int, config: VerdictConfig) -> float:
    """The fall of accuracy from the best of ``k`` earlier evaluations that is significant (module docstring)."""
    alpha = 1 - NormalDist().cdf(config.stall_z)
    z_k = NormalDist().inv_cdf(1 - alpha / max(k, 1))
    return math.sqrt(2) * accuracy_noise(n_pairs, z_k)


def judged_evaluations(evaluations: Sequence[Mapping[str, float]]) -> list[Mapping[str, float]]:
    """The evaluations the rules read: after the first step, with a finite held-out accuracy, in order."""
    return [
        e
        for e in evaluations
        if int(e.get(ReportKey.STEP, 0)) > 0 and math.isfinite(float(e.get(HELD_OUT_ACCURACY, math.nan)))
    ]


def _judge_last(evals: Sequence[Mapping[str, float]], n_pairs: int, config: VerdictConfig) -> BehaviourVerdict:
    """The verdict at the last of ``evals`` (judged evaluations, at least one), its earlier ones as its history."""
    last = evals[-1]
    step = int(last.get(ReportKey.STEP, 0))
    accuracy = float(last[HELD_OUT_ACCURACY])
    noise = accuracy_noise(n_pairs, config.stall_z)
    drift = float(last.get(HELD_OUT_DRIFT, math.nan))
    earlier = [float(e[HELD_OUT_ACCURACY]) for e in evals[:-1]]
    best = max(earlier, default=math.nan)
    dropped = bool(earlier) and best - accuracy > significant_drop(n_pairs, len(earlier), config)
    below_chance = accuracy < CHANCE_ACCURACY - noise
    if math.isfinite(drift) and drift < -config.likelihood_collapse_nats and (dropped or below_chance):
        evidence = Evidence(HELD_OUT_DRIFT, drift, -config.likelihood_collapse_nats, step)
        return BehaviourVerdict("collapsed", "likelihood_collapse", evidence)
    if dropped and best > CHANCE_ACCURACY + noise and accuracy <= CHANCE_ACCURACY + noise:
        threshold = best - significant_drop(n_pairs, len(earlier), config)
        return BehaviourVerdict(
            "collapsed", "accuracy_back_to_chance", Evidence(HELD_OUT_ACCURACY, accuracy, threshold, step)
        )
    if below_chance:
        evidence = Evidence(HELD_OUT_ACCURACY, accuracy, CHANCE_ACCURACY - noise, step)
        return BehaviourVerdict("reversed", "wrong_sign_minimum", evidence)
    if accuracy <= CHANCE_ACCURACY + noise:
        return BehaviourVerdict(
            "stalled", "no_learning", Evidence(HELD_OUT_ACCURACY, accuracy, CHANCE_ACCURACY + noise, step)
        )
    return BehaviourVerdict("stable")


def _unsettled_because(evals: Sequence[Mapping[str, float]], n_pairs: int, config: VerdictConfig) -> str | None:
    """Why the verdict at the last evaluation is not settled, or ``None`` when it is."""
    window = config.settle_evals
    if len(evals) < window:
        return f"{len(evals)} held-out evaluation(s) after the start; settling needs {window}"
    statuses = [_judge_last(evals[: i + 1], n_pairs, config).status for i in range(len(evals) - window, len(evals))]
    steps = [int(e.get(ReportKey.STEP, 0)) for e in evals[-window:]]
    if len(set(statuses)) > 1:
        return "verdict changed over the last evaluations: " + ", ".join(
            f"{s}@{step}" for s, step in zip(statuses, steps, strict=True)
        )
    accuracies = [float(e[HELD_OUT_ACCURACY]) for e in evals[-window:]]
    moved = accuracies[-1] - accuracies[0]
    if abs(moved) > math.sqrt(2) * accuracy_noise(n_pairs, config.stall_z):
        return f"held-out accuracy still moving: {accuracies[0]:.3g} -> {accuracies[-1]:.3g} from step {steps[0]}"
    return None


def judge_behaviour(
    evaluations: Sequence[Mapping[str, float]], n_pairs: int, config: VerdictConfig | None = None
) -> BehaviourVerdict | None:
    """The behavioural verdict from a trial's held-out evaluations, in order, and whether it has settled.

    Args:
        evaluations: Each held-out evaluation's metrics (``eval_*`` keys) with its ``step``; the last one is the
            trial's final evaluation. A step-0 evaluation (the reference) is ignored.
        n_pairs: Held-out pairs each evaluation averages over.
        config: Thresholds.

    Returns:
        The verdict, or ``None`` when no evaluation after the start reported a finite held-out accuracy.
    """
    config = config or VerdictConfig()
    evals = judged_evaluations(evaluations)
    if not evals:
        return None
    verdict = _judge_last(evals, n_pairs, config)
    because = _unsettled_because(evals, n_pairs, config)
    if because is None:
        return verdict
    return BehaviourVerdict(verdict.status, verdict.reason, verdict.evidence, settled=False, unsettled_because=because)


def stops_at(evaluations: Sequence[Mapping[str, float]], n_pairs: int, config: VerdictConfig) -> bool:
    """Whether a trial stops at the last of its held-out ``evaluations`` (once it may stop at all): its verdict has
    settled, or there is nothing to judge. The one rule :class:`trainers.settling.SettleCallback` applies during
    training and :func:`sweep.trials.horizon.status_at_horizon` replays on recorded reports."""
    verdict = judge_behaviour(evaluations, n_pairs, config)
    return verdict is None or verdict.settled
