"""A trial's status from its recorded results (what ``SweepDriver.collect`` does for every Tune result), without Ray."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sweep.trials.rows import replay_verdict, trial_label, trial_row, trial_status
from trainers.collapse import DivergenceConfig
from trainers.protocol import HELD_OUT_ACCURACY, Failure, ReportKey, ReportType, TrialStatus
from trainers.verdicts import VerdictConfig

DIVERGENCE = DivergenceConfig(grace_steps=1)
VERDICTS = VerdictConfig(stall_z=2.0)
N_PAIRS = 16
"""Held-out pairs: learning needs an accuracy above 0.5 + 2 * sqrt(0.25 / 16) = 0.75."""
CONFIG = {"trial": {"loss": {"name": "dlrml", "beta_kl": 0.05, "beta_mix": 0.2}, "seed": 1}}


def train(step: int, loss: float = 0.69, grad_norm: float = 1.0) -> dict[str, float]:
    return {ReportKey.STEP: step, ReportKey.REPORT_TYPE: ReportType.TRAIN, "loss": loss, "grad_norm": grad_norm}


def held_out(step: int, accuracy: float) -> dict[str, float]:
    return {ReportKey.STEP: step, ReportKey.REPORT_TYPE: ReportType.EVAL, HELD_OUT_ACCURACY: accuracy}


def final(step: int, accuracy: float) -> dict[str, float]:
    return {
        ReportKey.STEP: step,
        ReportKey.REPORT_TYPE: ReportType.FINAL,
        ReportKey.FINAL: 1,
        ReportKey.EVAL_PAIRS: N_PAIRS,
        "loss": 0.6,
        HELD_OUT_ACCURACY: accuracy,
    }


def held_out_run(*accuracies: float, drifts: tuple[float, ...] = ()) -> list[dict[str, float]]:
    """A trial that trained one step per evaluation: a training step then a held-out evaluation at each step (and
    the reference's evaluation at step 0), with the given accuracies and held-out chosen drifts, then its final
    report."""
    reports = [held_out(0, 0.0)]
    for step, accuracy in enumerate(accuracies, start=1):
        reports += [train(step), held_out(step, accuracy)]
        if drifts:
            reports[-1]["eval_logps/chosen_drift_per_token"] = drifts[step - 1]
    return [*reports, final(len(accuracies), accuracies[-1])]


def row(reports: list[dict[str, float]], error: BaseException | None = None, **kwargs) -> dict:
    history = pd.DataFrame([{str(k): v for k, v in r.items()} for r in reports]) if reports else None
    last = {str(k): v for k, v in reports[-1].items()} if reports else {}
    return trial_row(
        CONFIG, history, last, error, trial_id="t0", divergence=DIVERGENCE, verdicts=VERDICTS, attempts=1, **kwargs
    )


def test_a_trial_that_learned_beyond_noise_is_stable():
    out = row(held_out_run(0.6, 0.8125, 0.875, 0.8125))
    assert out["status"] == TrialStatus.STABLE and out["reason"] is None
    assert out["steps"] == 4 and out["eval_accuracy"] == 0.8125 and math.isnan(out["diverged_step"])
    assert (out["loss"], out["form"], out["beta_kl"], out["beta_mix"], out["seed"]) == ("dlrml", "stable", 0.05, 0.2, 1)
    assert out["nan_inf_steps"] == 0 and out["grad_norm_max"] == 1.0


def test_a_trial_at_chance_within_noise_stalled():
    """0.75 is exactly the noise bound 0.5 + 2 * 0.125 over 16 pairs: not above it, so no learning is shown."""
    out = row(held_out_run(0.5625, 0.625, 0.75))
    assert out["status"] == TrialStatus.STALLED
    assert out["reason"].startswith("no_learning: eval_rewards/accuracies=0.75 vs 0.75 at step 3")


def test_a_trial_that_learned_then_fell_back_to_chance_collapsed():
    """Best 0.9375, then 0.5: a fall of 0.44 beats the best-of-2..4 significance bar over 16 pairs (0.40-0.45)."""
    out = row(held_out_run(0.875, 0.9375, 0.5, 0.5, 0.4375))
    assert out["status"] == TrialStatus.COLLAPSED and out["reason"].startswith("accuracy_back_to_chance")


def test_likelihood_collapse_needs_the_chosen_likelihood_to_fall_and_the_preference_to_go():
    drifts = (-0.5, -1.0, -2.0, -2.2, -2.5)
    out = row(held_out_run(0.875, 0.9375, 0.5, 0.5, 0.4375, drifts=drifts))
    assert out["status"] == TrialStatus.COLLAPSED
    assert out["reason"] == "likelihood_collapse: eval_logps/chosen_drift_per_token=-2.5 vs -1.5 at step 5"
    kept = row(held_out_run(0.875, 0.9375, 0.875, 0.875, 0.9375, drifts=drifts))
    assert kept["status"] == TrialStatus.STABLE, "a falling chosen likelihood with the preference kept is DPO's drift"


def test_a_trial_whose_verdict_still_changes_at_its_end_is_unsettled():
    out = row(held_out_run(0.5, 0.625, 0.8125))
    assert out["status"] == TrialStatus.UNSETTLED
    assert out["reason"].startswith("provisionally stable; verdict changed over the last evaluations")


@pytest.mark.parametrize(("asha_grace", "expected"), [(None, TrialStatus.INTERRUPTED), (2, TrialStatus.PRUNED)])
def test_a_trial_without_final_report_or_divergence_was_pruned_only_under_asha(asha_grace, expected):
    out = row([train(1), train(2), held_out(2, 0.4)], asha_grace=asha_grace)
    assert out["status"] == expected
    assert out["reason"] == (
        "asha at step 2" if asha_grace else "ended at step 2 without its final report (the sweep was stopped)"
    )
    assert out["eval_accuracy"] == 0.4


def test_a_non_finite_loss_is_a_divergence_at_its_step_even_if_asha_also_stopped_it():
    out = row([train(1), train(2, grad_norm=3.0), train(3, loss=math.nan)], asha_grace=2)
    assert out["status"] == TrialStatus.DIVERGED
    assert out["diverged_step"] == 3
    assert out["reason"].startswith("non_finite_loss")
    assert out["nan_inf_steps"] == 1 and out["grad_norm_max"] == 3.0


def test_a_non_finite_held_out_loss_diverges_the_trial_like_a_training_one():
    """Defect 6 of issue 23: NaN during held-out evaluation was not counted."""
    nan_eval = {**held_out(2, 0.5), "eval_loss": math.nan, "eval_nan_inf/loss": 3.0}
    out = row([train(1), train(2), nan_eval, train(3), final(3, 0.9)])
    assert out["status"] == TrialStatus.DIVERGED and out["diverged_step"] == 2
    assert out["reason"] == "non_finite_loss (numerical)"


def test_an_evaluation_row_is_read_from_its_own_values():
    """A row of Tune's frame carries every column: an evaluation's NaN ``loss`` (a training column) is no step."""
    out = row([*held_out_run(0.875, 0.9375, 0.875)[:-1], {**held_out(3, 0.875), "loss": math.nan}, final(3, 0.875)])
    assert out["status"] == TrialStatus.STABLE and out["nan_inf_steps"] == 0


def test_an_error_wins_over_everything_and_keeps_its_last_line():
    out = row([train(1), train(2, loss=math.nan)], error=RuntimeError("worker died\nActorDiedError: node lost"))
    assert out["status"] == TrialStatus.ERRORED
    assert out["reason"] == "RuntimeError: ActorDiedError: node lost"


def test_a_trial_that_never_reported_and_failed_is_errored_with_zero_steps():
    out = row([], error=TimeoutError("placement group"))
    assert out["status"] == TrialStatus.ERRORED and out["steps"] == 0 and math.isnan(out["eval_accuracy"])


def test_reports_out_of_order_are_replayed_by_step():
    history = pd.DataFrame([train(2, loss=math.inf), train(1)])
    verdict = replay_verdict(history, DIVERGENCE)
    assert verdict.diverged and verdict.step == 2


@pytest.mark.parametrize(
    ("last", "expected"),
    [({"final": 1}, TrialStatus.COLLAPSED), ({"step": 3}, TrialStatus.INTERRUPTED)],
)
def test_status_without_divergence_or_evaluation(last, expected):
    """A trial that reported its end but no finite held-out accuracy is collapsed; one that did not end and was not
    under ASHA, interrupted."""
    assert trial_status(replay_verdict(None, DIVERGENCE), None, last, None)[0] == expected


def test_trial_label_names_loss_betas_and_seed():
    assert trial_label(CONFIG["trial"]) == "dlrml bkl=0.05 bmix=0.2 seed=1"
    assert trial_label({"loss": {"name": "dpo", "beta_kl": 0.1, "beta_mix": None}, "seed": 0}) == "dpo bkl=0.1 seed=0"


@pytest.mark.parametrize("status", list(TrialStatus))
def test_status_properties(status):
    """The verdicts are the five statuses that say something about the loss; failed is every verdict but stable,
    unstable only the two where training broke (README "Verdicts"); no-verdict statuses are neither."""
    verdicts = ("stable", "stalled", "reversed", "collapsed", "diverged")
    assert status.has_verdict == (status in verdicts)
    assert status.is_failure == (status in verdicts[1:]) == Failure.FAILED.includes(status)
    assert Failure.UNSTABLE.includes(status) == (status in ("collapsed", "diverged"))
    assert status.trained_to_end == (status in (*verdicts[:4], "unsettled"))
    assert status.mlflow_run_status in ("FINISHED", "FAILED", "KILLED")


def test_a_trial_that_diverged_at_its_first_step_has_no_held_out_accuracy_of_its_own():
    """Its only evaluation is the reference's (step 0, every margin 0): not the trial's result."""
    out = row([held_out(0, 0.0), train(1, loss=math.nan)])
    assert out["status"] == TrialStatus.DIVERGED and math.isnan(out["eval_accuracy"])
