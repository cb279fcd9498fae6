"""The behavioural verdicts on recorded held-out evaluations: each defect of issue 23 with the trajectory that showed
it, the significance rules worked by hand, and settling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trainers.protocol import HELD_OUT_ACCURACY, ReportKey
from trainers.verdicts import (
    HELD_OUT_DRIFT,
    VerdictConfig,
    judge_behaviour,
    learning_threshold,
    significant_drop,
)

N_PAIRS = 64
"""The default config's held-out pairs: learning needs an accuracy above 0.5 + 2 * sqrt(0.25 / 64) = 0.625."""


def evaluations(steps, accuracies, drifts=None) -> list[dict[str, float]]:
    """Held-out evaluations as a trial records them (the reference's own point at step 0 first)."""
    drifts = drifts or [0.0] * len(accuracies)
    reference = {ReportKey.STEP: 0, HELD_OUT_ACCURACY: 0.0, HELD_OUT_DRIFT: 0.0}
    return [reference] + [
        {ReportKey.STEP: s, HELD_OUT_ACCURACY: a, HELD_OUT_DRIFT: d}
        for s, a, d in zip(steps, accuracies, drifts, strict=True)
    ]


def test_learning_threshold_and_significant_drop_worked_by_hand():
    """``0.5 + 2 * sqrt(0.25 / 64) = 0.625``. A fall from the best of k = 3 earlier evaluations: alpha = 1 - Phi(2)
    = 0.02275, z_3 = Phi^-1(1 - alpha / 3) = 2.4286, drop = sqrt(2) * 2.4286 * sqrt(0.25 / 64) = 0.2147."""
    config = VerdictConfig()
    assert learning_threshold(N_PAIRS, config) == pytest.approx(0.625)
    assert significant_drop(N_PAIRS, 3, config) == pytest.approx(math.sqrt(2) * 2.4286 * 0.0625, abs=1e-4)
    assert significant_drop(N_PAIRS, 1, config) == pytest.approx(math.sqrt(2) * 2 * 0.0625, abs=1e-4)
    assert significant_drop(N_PAIRS, 6, config) > significant_drop(N_PAIRS, 3, config), "more looks, higher bar"


def test_dpo_that_trains_longer_stays_stable():
    """Defect 1 (recorded in issue 23): DPO, beta 1, 24 steps, embedded model and data. Its chosen log-prob falls
    -1.01 / -2.99 / -3.23 / -3.08 nats per token while its accuracy holds 0.72-0.77: the benign DPO drift. The old
    rule (drift below -1.5) called it collapsed."""
    evals = evaluations([6, 12, 18, 24], [0.719, 0.703, 0.750, 0.766], [-1.01, -2.99, -3.23, -3.08])
    verdict = judge_behaviour(evals, N_PAIRS)
    assert verdict.status == "stable" and verdict.settled


RECORDED = json.loads((Path(__file__).parent / "data" / "recorded_dpo_trajectories.json").read_text())
"""Two DPO trials on the embedded model, 30 steps, a held-out evaluation every 3 (see its ``_about``)."""


@pytest.mark.parametrize("trial", ["dpo_bkl1", "dpo_bkl0.05"])
def test_recorded_dpo_trials_are_stable_at_every_horizon(trial):
    """Both learn by step 3 (accuracy 0.69-0.73 to the end) while the chosen log-prob falls to -3.2 / -3.4 nats per
    token: the old rules called both collapsed from step 9 on. Judged on every prefix from the third evaluation, the
    verdict is stable and settled at each horizon."""
    recorded = RECORDED[trial]
    evals = recorded["evaluations"]
    for end in range(3, len(evals) + 1):
        verdict = judge_behaviour(evals[:end], recorded["eval_pairs"])
        assert (verdict.status, verdict.settled) == ("stable", True), f"at step {evals[end - 1]['step']}"


def test_a_policy_at_the_wrong_sign_minimum_is_reversed_not_collapsed():
    """Defect 2: DiscoPOP at beta 0.05 sits at accuracy 0.28-0.30 with its chosen likelihood *rising* (+0.3 nats per
    token): the loss's wrong-sign minimum (the paper's "stuck in local minima"), which the old rule called
    collapsed (accuracy below chance)."""
    evals = evaluations([6, 12, 18, 24], [0.297, 0.281, 0.281, 0.297], [0.25, 0.31, 0.30, 0.32])
    verdict = judge_behaviour(evals, N_PAIRS)
    assert (verdict.status, verdict.reason, verdict.settled) == ("reversed", "wrong_sign_minimum", True)
    assert verdict.evidence.threshold == pytest.approx(0.375)


def test_back_to_chance_needs_a_fall_beyond_the_best_of_k_noise():
    """Defect 5: a best of 0.64 followed by 0.50 over 64 pairs is ~1.6 standard errors of a difference, picked as
    the best of three: not significant (the bar is 0.215), so this is a stall, not a collapse."""
    evals = evaluations([3, 6, 9, 12, 15], [0.55, 0.64, 0.58, 0.50, 0.52])
    verdict = judge_behaviour(evals, N_PAIRS)
    assert verdict.status == "stalled" and verdict.reason == "no_learning"


def test_a_real_fall_back_to_chance_collapses():
    evals = evaluations([3, 6, 9, 12, 15], [0.80, 0.84, 0.55, 0.50, 0.48])
    verdict = judge_behaviour(evals, N_PAIRS)
    assert verdict.status == "collapsed" and verdict.reason == "accuracy_back_to_chance" and verdict.settled


def test_likelihood_collapse_needs_the_preference_to_go_as_well():
    drifts = [-0.5, -1.2, -2.0, -2.6, -3.0]
    falling = evaluations([3, 6, 9, 12, 15], [0.78, 0.80, 0.52, 0.45, 0.40], drifts)
    verdict = judge_behaviour(falling, N_PAIRS)
    assert verdict.status == "collapsed" and verdict.reason == "likelihood_collapse" and verdict.settled
    assert verdict.evidence.value == -3.0
    below_chance = evaluations([3, 6, 9, 12], [0.30, 0.28, 0.27, 0.25], [-1.0, -1.6, -1.8, -2.0])
    assert judge_behaviour(below_chance, N_PAIRS).status == "collapsed", "preferring rejected as chosen collapses"


def test_a_verdict_that_changes_at_the_end_is_unsettled():
    learning = evaluations([3, 6, 9], [0.55, 0.60, 0.70])
    verdict = judge_behaviour(learning, N_PAIRS)
    assert verdict.status == "stable" and not verdict.settled
    assert verdict.unsettled_because == "verdict changed over the last evaluations: stalled@3, stalled@6, stable@9"
    too_few = judge_behaviour(evaluations([5, 10], [0.75, 0.77]), N_PAIRS)
    assert not too_few.settled and too_few.unsettled_because.startswith("2 held-out evaluation(s)")


def test_an_accuracy_still_moving_beyond_its_noise_is_unsettled():
    """All three verdicts stable, but 0.66 -> 0.95 is beyond sqrt(2) * 2 * 0.0625 = 0.177."""
    verdict = judge_behaviour(evaluations([3, 6, 9], [0.66, 0.80, 0.95]), N_PAIRS)
    assert verdict.status == "stable" and not verdict.settled
    assert verdict.unsettled_because.startswith("held-out accuracy still moving: 0.66 -> 0.95")


def test_the_reference_evaluation_is_not_evidence():
    """At step 0 the policy is the reference: every margin is 0 and TRL's accuracy (margin > 0) reads 0. It starts a
    curve; a verdict never reads it (it would be a best of 0 or a reversal)."""
    assert judge_behaviour(evaluations([], []), N_PAIRS) is None
    verdict = judge_behaviour(evaluations([3, 6, 9], [0.5, 0.52, 0.49]), N_PAIRS)
    assert verdict.status == "stalled" and verdict.settled
