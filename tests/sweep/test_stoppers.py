"""The sweep's Ray Tune stopping rules, driven directly with the result dicts a trial reports.

:class:`sweep.trials.stoppers.DivergenceStopper` gets hand-made training/eval/final reports; the ASHA schedulers get
results for trial stand-ins carrying only ``trial_id`` (all ASHA's bookkeeping reads), with no Tune controller.
"""

from __future__ import annotations

import math
import types

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from sweep.trials.stoppers import CellAwareASHA, DivergenceStopper, FiniteASHAScheduler, first_seed_protected
from trainers.collapse import DivergenceConfig
from trainers.protocol import HELD_OUT_ACCURACY as ACCURACY
from trainers.protocol import ReportKey, ReportType

STEP, REPORT_TYPE = ReportKey.STEP.value, ReportKey.REPORT_TYPE.value
TRAIN_REPORT, EVAL_REPORT, FINAL_REPORT = (int(kind) for kind in ReportType)


def train_report(step: int, loss: float = 0.69, grad_norm: float = 1.0, **extra: float) -> dict[str, float]:
    """A training step's report as :func:`sweep.trials.trainable.train_fn_per_worker` sends it."""
    return {STEP: step, REPORT_TYPE: TRAIN_REPORT, "loss": loss, "grad_norm": grad_norm, **extra}


@pytest.fixture
def stopper() -> DivergenceStopper:
    return DivergenceStopper(
        DivergenceConfig(grace_steps=2, grad_norm_factor=10.0, window=50, loss_explosion_factor=10.0)
    )


def feed(stopper: DivergenceStopper, trial_id: str, reports: list[dict[str, float]]) -> list[bool]:
    return [stopper(trial_id, report) for report in reports]


# ---------------------------------------------------------------------------------------------- DivergenceStopper


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_stops_at_that_step(stopper, loss):
    assert feed(stopper, "t", [train_report(1), train_report(2, loss=loss)]) == [False, True]
    verdict = stopper.verdict("t")
    assert verdict.diverged and verdict.reason == "non_finite_loss" and verdict.step == 2


def test_non_finite_per_example_loss_stops_even_when_the_mean_is_finite(stopper):
    assert stopper("t", train_report(1, **{"nan_inf/loss": 1.0})) is True
    assert stopper.verdict("t").reason == "non_finite_loss"


def test_genuine_non_finite_value_keeps_its_kind(stopper):
    assert stopper("t", train_report(1, loss=math.inf, **{"nan_inf/genuine": 1.0})) is True
    assert stopper.verdict("t").kind == "genuine"


@pytest.mark.parametrize("extra", [{"grad_norm": math.nan}, {"grad_norm": math.inf}, {"nan_inf/grad": 3.0}])
def test_non_finite_gradient_stops(stopper, extra):
    assert feed(stopper, "t", [train_report(1), train_report(2, **extra)]) == [False, True]
    verdict = stopper.verdict("t")
    assert verdict.reason == "non_finite_grad" and verdict.step == 2


def test_grad_norm_explosion_only_counts_after_the_grace_period(stopper):
    reports = [
        train_report(1, grad_norm=1.0),
        train_report(2, grad_norm=50.0),  # within grace: a large early norm is not an explosion
        train_report(3, grad_norm=60.0),  # 60 < 10 x median(1, 50)
        train_report(4, grad_norm=400.0),  # 400 < 10 x median(1, 50, 60) = 500
        train_report(5, grad_norm=6000.0),  # > 10 x median(1, 50, 60, 400) = 550
    ]
    assert feed(stopper, "t", reports) == [False, False, False, False, True]
    verdict = stopper.verdict("t")
    assert verdict.reason == "grad_norm_explosion" and verdict.step == 5
    assert verdict.kind is None and "6000" in verdict.detail


def test_loss_explosion_against_the_grace_period_median(stopper):
    reports = [
        train_report(1, loss=0.7),
        train_report(2, loss=0.69),
        train_report(3, loss=6.0),  # < 10 x 0.695
        train_report(4, loss=7.5),  # > 10 x 0.695
    ]
    assert feed(stopper, "t", reports) == [False, False, False, True]
    verdict = stopper.verdict("t")
    assert verdict.reason == "loss_explosion" and verdict.step == 4


def test_a_diverged_trial_stays_stopped(stopper):
    feed(stopper, "t", [train_report(1, loss=math.nan)])
    assert stopper("t", train_report(2)) is True
    assert stopper.verdict("t").step == 1


@pytest.mark.parametrize("report_type", [EVAL_REPORT, FINAL_REPORT])
def test_eval_and_final_reports_are_ignored(stopper, report_type):
    """Held-out evaluations and the final summary carry no new training step: they never stop a trial."""
    bad = {STEP: 1, REPORT_TYPE: report_type, "loss": math.nan, "grad_norm": math.inf, ACCURACY: 0.5}
    assert stopper("t", bad) is False
    assert stopper.verdict("t") is None


@pytest.mark.parametrize("report_type", [EVAL_REPORT, FINAL_REPORT])
def test_eval_and_final_reports_do_not_use_up_the_grace_period(stopper, report_type):
    quiet = {STEP: 1, REPORT_TYPE: report_type, "loss": 0.69, "grad_norm": 1.0}
    assert feed(stopper, "t", [quiet, {**quiet, STEP: 2}]) == [False, False]
    # Had those counted, step 2 would be past the 2 grace steps and 100 > 10 x 1 an explosion.
    assert feed(stopper, "t", [train_report(1, grad_norm=1.0), train_report(2, grad_norm=100.0)]) == [False, False]
    assert stopper.verdict("t") is None


def test_results_without_a_step_are_ignored(stopper):
    assert stopper("t", {"loss": math.nan, REPORT_TYPE: TRAIN_REPORT}) is False
    assert stopper.verdict("t") is None


def test_trials_are_judged_independently(stopper):
    assert stopper("a", train_report(1, loss=math.nan)) is True
    assert feed(stopper, "b", [train_report(1), train_report(2), train_report(3)]) == [False, False, False]
    assert stopper.verdict("a").diverged
    assert stopper.verdict("b") is None
    assert stopper.verdict("never-seen") is None


def test_each_trial_has_its_own_grace_baseline(stopper):
    feed(stopper, "low", [train_report(1, loss=0.01), train_report(2, loss=0.01)])
    feed(stopper, "high", [train_report(1, loss=0.7), train_report(2, loss=0.7)])
    # 0.8 is an explosion against trial "low"'s baseline (10 x 0.01) but not against trial "high"'s.
    assert stopper("high", train_report(3, loss=0.8)) is False
    assert stopper("low", train_report(3, loss=0.8)) is True
    assert stopper.verdict("low").reason == "loss_explosion"
    assert stopper.verdict("high") is None


def test_a_divergent_trial_never_stops_the_sweep(stopper):
    assert stopper.stop_all() is False
    stopper("a", train_report(1, loss=math.inf))
    assert stopper.stop_all() is False


def test_default_thresholds_are_the_monitor_defaults():
    assert DivergenceStopper().config == DivergenceConfig()


# ---------------------------------------------------------------------------------------------- ASHA with NaN


def make_scheduler(cls: type[ASHAScheduler], **kwargs) -> ASHAScheduler:
    return cls(
        time_attr=STEP,
        metric=ACCURACY,
        mode="max",
        max_t=9,
        grace_period=2,
        reduction_factor=2,
        stop_last_trials=False,
        **kwargs,
    )


def run_rung(scheduler: ASHAScheduler, accuracies: dict[str, float], step: int = 2) -> dict[str, str]:
    """Add one trial per entry and report its held-out accuracy at ``step``; returns each decision."""
    decisions = {}
    for trial_id, accuracy in accuracies.items():
        trial = types.SimpleNamespace(trial_id=trial_id)
        scheduler.on_trial_add(None, trial)
        decisions[trial_id] = scheduler.on_trial_result(None, trial, {STEP: step, ACCURACY: accuracy})
    return decisions


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_plain_asha_keeps_a_non_finite_trial_that_finite_asha_stops(bad):
    rung = {"good": 0.8, "fair": 0.7, "broken": bad}
    plain = run_rung(make_scheduler(ASHAScheduler), rung)
    ours = run_rung(make_scheduler(FiniteASHAScheduler), rung)
    # Ray's ASHA: NaN < cutoff is False (and +Inf beats it), so the broken trial is promoted.
    assert plain["broken"] == TrialScheduler.CONTINUE
    assert ours["broken"] == TrialScheduler.STOP
    # Everything else is plain ASHA: the first trial has no cutoff yet, the second is below it either way.
    assert plain["good"] == ours["good"] == TrialScheduler.CONTINUE
    assert plain["fair"] == ours["fair"] == TrialScheduler.STOP


def test_finite_asha_ranks_a_non_finite_metric_as_worst_value():
    scheduler = make_scheduler(FiniteASHAScheduler, worst_value=0.0)
    decisions = run_rung(scheduler, {"broken": math.nan, "weak": 0.1, "strong": 0.9})
    # The NaN trial was recorded as 0.0 (not skipped): 0.1 beats the cutoff of {0.0}, 0.9 that of {0.0, 0.1}.
    assert decisions == {
        "broken": TrialScheduler.CONTINUE,
        "weak": TrialScheduler.CONTINUE,
        "strong": TrialScheduler.CONTINUE,
    }
    rung = next(recorded for milestone, recorded in scheduler._brackets[0]._rungs if milestone == 2)
    assert rung == {"broken": 0.0, "weak": 0.1, "strong": 0.9}


def test_finite_asha_leaves_results_without_the_metric_alone():
    scheduler = make_scheduler(FiniteASHAScheduler)
    trial = types.SimpleNamespace(trial_id="t")
    scheduler.on_trial_add(None, trial)
    # A training-step report has no held-out accuracy: no decision is taken on it.
    assert scheduler.on_trial_result(None, trial, {STEP: 4, "loss": math.nan}) == TrialScheduler.CONTINUE


def test_finite_asha_records_a_completed_trials_metric_as_finite():
    scheduler = make_scheduler(FiniteASHAScheduler)
    run_rung(scheduler, {"good": 0.8})
    finished = types.SimpleNamespace(trial_id="finished")
    scheduler.on_trial_add(None, finished)
    scheduler.on_trial_complete(None, finished, {STEP: 2, ACCURACY: math.nan})
    rung = next(recorded for milestone, recorded in scheduler._brackets[0]._rungs if milestone == 2)
    assert rung == {"good": 0.8, "finished": 0.0}
    assert all(math.isfinite(v) for v in rung.values())


def test_finite_asha_never_prunes_at_the_final_step():
    """With 8-step trials, ASHA's rungs are steps 2, 4 and 8; a rung at step 8 could only relabel a fully trained
    trial as pruned. Plain ASHA stops the weaker of two trials there; with ``final_step=8`` both go on, while the
    same pair is still pruned at the earlier rung."""
    at_end = {"strong": 0.9, "weak": 0.1}
    plain = run_rung(make_scheduler(FiniteASHAScheduler), at_end, step=8)
    assert plain == {"strong": TrialScheduler.CONTINUE, "weak": TrialScheduler.STOP}
    final = make_scheduler(FiniteASHAScheduler, final_step=8)
    assert run_rung(final, at_end, step=8) == {"strong": TrialScheduler.CONTINUE, "weak": TrialScheduler.CONTINUE}
    earlier = run_rung(make_scheduler(FiniteASHAScheduler, final_step=8), at_end, step=4)
    assert earlier == {"strong": TrialScheduler.CONTINUE, "weak": TrialScheduler.STOP}


# ------------------------------------------------------------------------------------------------ CellAwareASHA


def cell_trial(trial_id: str, loss: str, seed: int, form: str = "stable") -> types.SimpleNamespace:
    config = {"trial": {"loss": {"name": loss, "form": form, "beta_kl": 0.1, "beta_mix": None}, "seed": seed}}
    return types.SimpleNamespace(trial_id=trial_id, config=config)


def cell_aware(seeds: list[int]) -> CellAwareASHA:
    return make_scheduler(CellAwareASHA, protected=first_seed_protected(seeds))


def run_cell_rung(scheduler: CellAwareASHA, trials: list[tuple[types.SimpleNamespace, float]]) -> dict[str, str]:
    decisions = {}
    for trial, accuracy in trials:
        scheduler.on_trial_add(None, trial)
        decisions[trial.trial_id] = scheduler.on_trial_result(None, trial, {STEP: 2, ACCURACY: accuracy})
    return decisions


def test_cell_aware_asha_compares_trials_only_within_their_loss_and_form():
    """A dLRML trial far behind DPO's is not pruned for it: each (loss, form) has its own rung. Seeds 1 only
    (seed 0 would be protected), so every decision is ASHA's own."""
    scheduler = cell_aware(seeds=[0, 1])
    decisions = run_cell_rung(
        scheduler,
        [
            (cell_trial("dpo-a", "dpo", 1), 0.9),
            (cell_trial("dlrml-a", "dlrml", 1), 0.3),
            (cell_trial("dlrml-lit", "dlrml", 1, form="literal"), 0.1),
            (cell_trial("dpo-b", "dpo", 1), 0.2),
        ],
    )
    # First in its group: no cutoff yet, continues; dpo-b is below dpo-a's cutoff in the dpo group.
    assert decisions == {
        "dpo-a": TrialScheduler.CONTINUE,
        "dlrml-a": TrialScheduler.CONTINUE,
        "dlrml-lit": TrialScheduler.CONTINUE,
        "dpo-b": TrialScheduler.STOP,
    }
    # The same four trials under one plain rung: both weak dLRML trials would have been pruned behind DPO.
    plain = run_rung(make_scheduler(FiniteASHAScheduler), {"dpo-a": 0.9, "dlrml-a": 0.3, "dlrml-lit": 0.1})
    assert plain["dlrml-a"] == plain["dlrml-lit"] == TrialScheduler.STOP


def test_cell_aware_asha_never_prunes_a_cells_first_seed():
    scheduler = cell_aware(seeds=[3, 7])
    decisions = run_cell_rung(
        scheduler, [(cell_trial("strong", "dpo", 7), 0.9), (cell_trial("weak-first-seed", "dpo", 3), 0.1)]
    )
    assert decisions["weak-first-seed"] == TrialScheduler.CONTINUE
    weak_other = cell_trial("weak-other-seed", "dpo", 7)
    assert run_cell_rung(scheduler, [(weak_other, 0.1)]) == {"weak-other-seed": TrialScheduler.STOP}


def test_with_one_seed_cell_aware_asha_prunes_nothing():
    scheduler = cell_aware(seeds=[0])
    trials = [(cell_trial(f"t{i}", "dlrml", 0), acc) for i, acc in enumerate([0.9, 0.1, 0.05])]
    assert set(run_cell_rung(scheduler, trials).values()) == {TrialScheduler.CONTINUE}
