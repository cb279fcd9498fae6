"""Divergence monitor and non-finite classification on hand-made inputs (no trainer, no Ray)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from trainers.collapse import REASONS, DivergenceConfig, DivergenceMonitor, Verdict, classify_non_finite
from trainers.losses import get_loss


def _step(loss: float = 1.0, grad_norm: float | None = 1.0, **extra: float) -> dict[str, float]:
    """One training step's logged metrics, as the trainer logs them."""
    metrics = {"loss": loss, "learning_rate": 1e-5, "rewards/accuracies": 0.5, **extra}
    if grad_norm is not None:
        metrics["grad_norm"] = grad_norm
    return metrics


def _feed(monitor: DivergenceMonitor, steps: list[dict[str, float]]) -> list[Verdict | None]:
    return [monitor.update(i, metrics) for i, metrics in enumerate(steps, start=1)]


# ------------------------------------------------------------------------------------------- stable runs


def test_healthy_run_is_stable():
    monitor = DivergenceMonitor(DivergenceConfig(grace_steps=2))
    losses = [0.69, 0.6, 0.5, 0.45, 0.4, 0.42, 0.38, 0.3]
    norms = [3.0, 4.0, 2.5, 5.0, 3.5, 6.0, 2.0, 4.5]
    assert _feed(monitor, [_step(loss, norm) for loss, norm in zip(losses, norms, strict=True)]) == [None] * 8
    assert monitor.verdict is None
    assert monitor.final() == Verdict()
    assert monitor.final().status == "stable" and not monitor.final().diverged
    assert monitor.final().describe() == "stable"


# ------------------------------------------------------------------------------------------ non-finite


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_non_finite_loss(loss):
    monitor = DivergenceMonitor()
    assert monitor.update(1, _step()) is None
    verdict = monitor.update(2, _step(loss=loss))
    assert (verdict.status, verdict.reason, verdict.step, verdict.kind) == (
        "diverged",
        "non_finite_loss",
        2,
        "numerical",
    )
    assert f"loss={loss}" in verdict.detail


def test_counted_non_finite_per_example_loss_diverges_with_finite_mean():
    """``nan_inf/loss`` > 0 is a divergence even where the logged (averaged) loss is finite."""
    verdict = DivergenceMonitor().update(1, _step(**{"nan_inf/loss": 1.0, "nan_inf/genuine": 1.0}))
    assert (verdict.reason, verdict.step, verdict.kind) == ("non_finite_loss", 1, "genuine")
    assert "nan_inf/loss=1.0" in verdict.detail


@pytest.mark.parametrize(
    ("metrics", "kind"),
    [
        (_step(grad_norm=math.nan), "numerical"),
        (_step(grad_norm=math.inf, **{"nan_inf/genuine": 1.0}), "genuine"),
        (_step(grad_norm=2.0, **{"nan_inf/grad": 64.0}), "numerical"),
    ],
    ids=["nan-norm", "inf-norm-genuine", "counted-non-finite-grads"],
)
def test_non_finite_grad(metrics, kind):
    verdict = DivergenceMonitor().update(3, metrics)
    assert (verdict.status, verdict.reason, verdict.step, verdict.kind) == ("diverged", "non_finite_grad", 3, kind)
    assert verdict.describe().startswith(f"diverged at step 3: non_finite_grad ({kind}) - grad_norm=")


def test_non_finite_loss_takes_precedence_over_non_finite_grad():
    verdict = DivergenceMonitor().update(1, _step(loss=math.nan, grad_norm=math.nan, **{"nan_inf/grad": 5.0}))
    assert verdict.reason == "non_finite_loss"


def test_non_finite_values_count_inside_the_grace_period():
    monitor = DivergenceMonitor(DivergenceConfig(grace_steps=10))
    assert monitor.update(1, _step()) is None
    assert monitor.update(2, _step(grad_norm=math.inf)).reason == "non_finite_grad"


# ------------------------------------------------------------------------------------------ explosions


def test_loss_explosion_against_largest_grace_period_loss():
    """Grace losses [1, 3, 2] -> largest 3 -> threshold 10 x 3 = 30, strictly exceeded at the third later step."""
    monitor = DivergenceMonitor(DivergenceConfig(grace_steps=3, loss_explosion_factor=10.0))
    steps = [_step(loss) for loss in (1.0, 3.0, 2.0, 29.9, 30.0, 30.5)]
    verdicts = _feed(monitor, steps)
    assert verdicts[:5] == [None] * 5
    verdict = verdicts[5]
    assert (verdict.reason, verdict.step, verdict.kind) == ("loss_explosion", 6, None)
    assert verdict.detail == "loss=30.5 > 30"


def test_huge_losses_and_norms_inside_the_grace_period_do_not_fire():
    monitor = DivergenceMonitor(DivergenceConfig(grace_steps=3))
    steps = [_step(1.0, 1.0), _step(500.0, 1e6), _step(2.0, 1.0)]
    assert _feed(monitor, steps) == [None] * 3
    # The largest grace loss (500), not the last one, is the baseline: 4999 < 10 x 500.
    assert monitor.update(4, _step(4999.0, 1.0)) is None


def test_loss_explosion_baseline_is_floored_for_vanishing_grace_losses():
    """Grace losses of 0 give the threshold 10 x 1e-3 instead of 0."""
    monitor = DivergenceMonitor(DivergenceConfig(grace_steps=2, loss_explosion_factor=10.0))
    assert _feed(monitor, [_step(0.0), _step(0.0), _step(0.009)]) == [None] * 3
    assert monitor.update(4, _step(0.011)).reason == "loss_explosion"


def test_grad_norm_explosion_against_running_median():
    monitor = DivergenceMonitor(DivergenceConfig(grace_steps=1, grad_norm_factor=10.0))
    assert _feed(monitor, [_step(grad_norm=n) for n in (1.0, 2.0, 3.0, 4.0)]) == [None] * 4
    # Previous norms [1, 2, 3, 4] -> median 2.5 -> threshold 25.
    verdict = monitor.update(5, _step(grad_norm=25.5))
    assert (verdict.reason, verdict.step, verdict.kind) == ("grad_norm_explosion", 5, None)
    assert verdict.detail == "grad_norm=25.5 > 25"


def _recorded_steps(loss: str, beta_kl: float) -> list[dict[str, float]]:
    """A trial's training steps from ``data/recorded_default_grid_30_steps.json`` (the default grid at 30 steps)."""
    recorded = json.loads((Path(__file__).parent / "data" / "recorded_default_grid_30_steps.json").read_text())
    (trial,) = [t for t in recorded["trials"] if (t["loss"], t["beta_kl"]) == (loss, beta_kl)]
    return [_step(r["loss"], r["grad_norm"]) for r in trial["reports"] if r["report/type"] == 0]


def test_a_trial_that_fits_its_pairs_does_not_explode_on_one_ordinary_batch():
    """Recorded: the default grid's dLRML at beta_kl 1 (beta_mix 0.2) fits its 40 training pairs by step 11 (loss
    ~0, norms down to 0.001), so the running median of its norms falls to 9.9 by step 29; at step 30 one batch has
    loss 1.61 and norm 131.7, more than 10 x 9.9. The grace period's norms (35.7, 52.1, 167.8; median 52.1) put the
    floor at 521: that batch is ordinary for this loss (step 8 had 196.9), not an explosion, and the rule without the
    floor (the running median alone) stopped this trial as diverged. Trained on (the recorded rerun), it reaches
    step 36 without another such batch."""
    steps = _recorded_steps("dlrml", 1.0)
    norms = [s["grad_norm"] for s in steps]
    assert len(steps) == 36 and norms[29] > 10 * statistics.median(norms[:29])  # what the median alone saw
    monitor = DivergenceMonitor(DivergenceConfig())
    assert _feed(monitor, steps) == [None] * 36
    # An explosion after the same history still fires: above 10 x the grace period's median.
    verdict = monitor.update(37, _step(1.0, 10 * statistics.median(norms[:3]) + 1))
    assert (verdict.reason, verdict.step) == ("grad_norm_explosion", 37)


def test_the_grace_floor_never_lowers_the_threshold():
    """Small grace norms (1, 1, 1; floor 10) then seven of 9: the running median (9, threshold 90) sets the bar."""
    monitor = DivergenceMonitor(DivergenceConfig(grace_steps=3, grad_norm_factor=10.0))
    assert _feed(monitor, [_step(grad_norm=n) for n in (1.0, 1.0, 1.0, *[9.0] * 7)]) == [None] * 10
    assert monitor.update(11, _step(grad_norm=89.0)) is None
    assert monitor.update(12, _step(grad_norm=91.0)).reason == "grad_norm_explosion"


@pytest.mark.parametrize(("window", "fires"), [(3, False), (50, True)])
def test_grad_norm_median_covers_only_the_window(window, fires):
    """Norms 1, 1, 1, 8, 8, 8 then 50: a window of 3 holds [8, 8, 8] (threshold 80), a window of 50 all six
    (median 4.5, threshold 45)."""
    monitor = DivergenceMonitor(DivergenceConfig(grace_steps=1, grad_norm_factor=10.0, window=window))
    assert _feed(monitor, [_step(grad_norm=n) for n in (1.0, 1.0, 1.0, 8.0, 8.0, 8.0)]) == [None] * 6
    verdict = monitor.update(7, _step(grad_norm=50.0))
    assert (verdict is not None) == fires
    if fires:
        assert verdict.reason == "grad_norm_explosion"


def test_zero_median_grad_norm_never_explodes():
    """A run whose gradients vanished (median 0) has no scale to explode against."""
    monitor = DivergenceMonitor(DivergenceConfig(grace_steps=1))
    assert _feed(monitor, [_step(grad_norm=0.0)] * 3 + [_step(grad_norm=1e3)]) == [None] * 4


def test_missing_grad_norm_skips_the_gradient_rules():
    monitor = DivergenceMonitor(DivergenceConfig(grace_steps=1))
    assert _feed(monitor, [_step(grad_norm=None)] * 4) == [None] * 4
    assert monitor.update(5, _step(loss=100.0, grad_norm=None)).reason == "loss_explosion"


# ------------------------------------------------------------------------------- bookkeeping and verdict


def test_eval_and_summary_dicts_do_not_use_up_the_grace_period():
    """With grace 2, ``train, eval, train(100)`` is still inside the grace period; had the evaluation counted as
    a step, the third dict would be checked against threshold 10. HF's end-of-training summary is no step either."""
    monitor = DivergenceMonitor(DivergenceConfig(grace_steps=2, loss_explosion_factor=10.0))
    assert monitor.update(1, _step(1.0)) is None
    assert monitor.update(1, {"eval_loss": 0.7, "eval_rewards/accuracies": 0.5, "eval_nan_inf/loss": 0.0}) is None
    assert monitor.update(1, {"train_loss": math.inf, "train_runtime": 3.0}) is None
    assert monitor.update(2, _step(100.0)) is None
    assert monitor.verdict is None


@pytest.mark.parametrize(
    ("evaluation", "kind"),
    [
        ({"eval_loss": math.nan, "eval_rewards/accuracies": 0.5}, "numerical"),
        ({"eval_loss": 0.7, "eval_nan_inf/loss": 2.0, "eval_nan_inf/genuine": 1.0}, "genuine"),
    ],
)
def test_a_non_finite_held_out_evaluation_diverges_like_a_training_step(evaluation, kind):
    """Non-finite values in a held-out evaluation are counted like those in training (issue 23, defect 6)."""
    monitor = DivergenceMonitor()
    verdict = monitor.update(4, evaluation)
    assert verdict.diverged and verdict.reason == "non_finite_loss" and verdict.step == 4 and verdict.kind == kind
    assert verdict.detail.startswith("held-out evaluation: eval_loss=")


def test_verdict_is_sticky():
    monitor = DivergenceMonitor()
    first = monitor.update(4, _step(loss=math.nan))
    assert monitor.update(5, _step()) is first
    assert monitor.update(6, {"eval_loss": 0.1}) is first
    assert monitor.final() is first
    assert first.step == 4


def test_verdict_forms():
    verdict = Verdict("diverged", "non_finite_loss", 7, "numerical", "loss=nan")
    assert verdict.diverged
    assert verdict.describe() == "diverged at step 7: non_finite_loss (numerical) - loss=nan"
    assert verdict.as_dict() == {
        "status": "diverged",
        "reason": "non_finite_loss",
        "step": 7,
        "kind": "numerical",
        "detail": "loss=nan",
    }
    explosion = Verdict("diverged", "loss_explosion", 3, None, "loss=50 > 20")
    assert explosion.describe() == "diverged at step 3: loss_explosion - loss=50 > 20"
    assert set(REASONS) == {"non_finite_loss", "non_finite_grad", "grad_norm_explosion", "loss_explosion"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"grace_steps": 0}, "grace_steps"),
        ({"grad_norm_factor": 1.0}, "grad_norm_factor"),
        ({"grad_norm_factor": math.inf}, "grad_norm_factor"),
        ({"window": 0}, "window"),
        ({"loss_explosion_factor": math.nan}, "loss_explosion_factor"),
    ],
)
def test_divergence_config_rejects_bad_thresholds(kwargs, field):
    with pytest.raises(ValueError, match=f"divergence.{field}"):
        DivergenceConfig(**kwargs)


# -------------------------------------------------------------------------------- classify_non_finite


def _logps_with_margin(rho: float) -> tuple[torch.Tensor, ...]:
    """``(pi_c, pi_r, ref_c, ref_r)`` of two pairs, the first with margin ``rho``, the second with margin 0.5."""
    return torch.tensor([rho, 0.5]), torch.zeros(2), torch.zeros(2), torch.zeros(2)


UNBOUNDED_DLRML = {"beta_kl": 5.0, "beta_mix": 0.05}
"""dLRML with beta_kl > beta_mix / tau: for rho -> -inf the loss grows like exp(4 |rho|)."""


def test_non_finite_policy_log_probs_are_genuine():
    pi_c, pi_r, ref_c, ref_r = _logps_with_margin(0.0)
    pi_c[1] = math.nan
    kind = classify_non_finite(get_loss("dpo"), {"beta_kl": 0.1}, (pi_c, pi_r, ref_c, ref_r), check_grad=False)
    assert kind == "genuine"


def test_loss_beyond_float64_is_genuine():
    """rho = -200: exponent 4 x 200 = 800 > log(float64 max) = 709.8."""
    kind = classify_non_finite(get_loss("dlrml"), UNBOUNDED_DLRML, _logps_with_margin(-200.0), check_grad=False)
    assert kind == "genuine"


def test_naive_discopop_overflow_is_numerical():
    """DiscoPOP at beta = 2, rho = -50: TRL's fp32 ``sigmoid(z / tau) * exp(-z)`` is ``0 * inf``, but the true loss
    is about softplus(100) = 100, well inside fp32."""
    kind = classify_non_finite(get_loss("discopop"), {"beta_kl": 2.0}, _logps_with_margin(-50.0), check_grad=True)
    assert kind == "numerical"


@pytest.mark.parametrize(("dtype", "kind"), [(torch.float32, "genuine"), (torch.float64, "numerical")])
def test_loss_beyond_the_training_dtype_is_genuine(dtype, kind):
    """rho = -32.5: loss ~ exp(130) ~ 3e56, finite in float64 but beyond fp32's 3.4e38."""
    logps = _logps_with_margin(-32.5)
    assert classify_non_finite(get_loss("dlrml"), UNBOUNDED_DLRML, logps, check_grad=False, dtype=dtype) == kind


@pytest.mark.parametrize(("check_grad", "kind"), [(False, "numerical"), (True, "genuine")])
def test_gradient_beyond_the_training_dtype_is_genuine_only_when_checked(check_grad, kind):
    """rho = -22: loss ~ exp(88) ~ 1.7e38 fits fp32, its derivative ~ -4 exp(88) ~ -6.6e38 does not."""
    logps = _logps_with_margin(-22.0)
    assert classify_non_finite(get_loss("dlrml"), UNBOUNDED_DLRML, logps, check_grad=check_grad) == kind


def test_learnable_beta_mix_is_classified_at_its_current_value():
    """A 0-d tensor hyper-parameter (learnable beta_mix) is read as a float; beta_mix = 1 bounds the loss."""
    hparams = {"beta_kl": 5.0, "beta_mix": torch.tensor(1.0)}
    kind = classify_non_finite(get_loss("dlrml_learnable"), hparams, _logps_with_margin(-32.5), check_grad=True)
    assert kind == "numerical"
