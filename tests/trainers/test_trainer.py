"""One trial end to end: the registry trainer against TRL's own DPOTrainer, collapse metrics, divergence, CLI.

Every training test runs the real stack (TRL 1.16 ``DPOTrainer`` + transformers ``Trainer``) on the tiny
SmolLM2-architecture model of ``conftest.tiny_model_dir``; one ``slow`` test trains the real embedded 135M model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from trainers.collapse import REASONS, Verdict
from trainers.config import LossConfig, TrainConfig
from trainers.data import PreferenceData, load_preference_data
from trainers.dpo_config import build_dpo_config
from trainers.losses import DISCOPOP_TAU, LOSSES, get_loss, lrml_is_genuinely_divergent
from trainers.models import load_model, load_tokenizer
from trainers.protocol import HELD_OUT_ACCURACY
from trainers.train import main
from trainers.trial_runner import run_trial
from trainers.trl_trainer import PROFILE_RANGES, RegistryDPOTrainer

CROSS_CHECK_PAIRS = 4
"""Preference pairs in the one batch both trainers score."""

PERTURBATION_STD = 0.2
PERTURBATION_SEED = 0
"""Noise added to the policy after the reference log-probs were precomputed, so that ``rho != 0``.

With the tiny model (seed 0) this gives margins ``rho`` of both signs and of order 1 on the cross-check batch.
"""

TRL_LOGGED_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)
"""Metrics that TRL's ``DPOTrainer`` logs and that the registry trainer logs under the same names."""

COLLAPSE_METRICS = (
    "loss",
    "grad_norm",
    *TRL_LOGGED_METRICS,
    "kl/ref",
    "logps/chosen_drift",
    "nan_inf/loss",
    "nan_inf/grad",
)
"""Keys every training step's logged dict must carry, whatever the loss."""

LRML_METRICS = ("mix/mean", "mix/saturated_frac")


@pytest.fixture(scope="module")
def trial_data() -> PreferenceData:
    """Eight bundled training pairs and four held-out pairs."""
    return load_preference_data("embedded", max_train_rows=8, max_eval_rows=4)


def _train_steps(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The per-step training dicts of a trial's history (not evaluations, not the end-of-training summary)."""
    return [record for record in history if "loss" in record]


def _trial_config(model_dir: Path, output_dir: Path, **overrides) -> TrainConfig:
    values = {
        "model": str(model_dir),
        "max_steps": 3,
        "per_device_batch_size": 2,
        "max_eval_rows": 4,
        "eval_steps": 0,
        "save_model": False,
        "output_dir": str(output_dir),
    }
    return TrainConfig(**{**values, **overrides})


# ------------------------------------------------------------------------------------- TRL cross-checks


def _perturb(model: torch.nn.Module) -> None:
    """Add the same seeded Gaussian noise to every parameter of ``model``, in parameter-name order."""
    generator = torch.Generator().manual_seed(PERTURBATION_SEED)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            param.add_(torch.randn(param.shape, generator=generator).to(param.device) * PERTURBATION_STD)


def _score_with_both_trainers(
    model_dir: Path, output_dir: Path, data: PreferenceData, loss: LossConfig, trl_loss_type: str
) -> tuple[RegistryDPOTrainer, DPOTrainer, torch.Tensor, torch.Tensor]:
    """Score one batch with the registry trainer and with a stock TRL ``DPOTrainer`` on the same weights.

    Both trainers precompute the reference log-probs with the initial weights; then both policies get the same
    perturbation and each trainer's ``compute_loss`` scores the same collated batch in train mode.

    Returns:
        ``(ours, stock, our_loss, stock_loss)``, the losses 0-d tensors.
    """
    rows = data.train.select(range(CROSS_CHECK_PAIRS))
    tokenizer = load_tokenizer(str(model_dir))
    train = TrainConfig(
        model=str(model_dir), per_device_batch_size=CROSS_CHECK_PAIRS, output_dir=str(output_dir / "ours")
    )
    ours_args = build_dpo_config(train, loss)
    # TRL's padded forward on both sides, so that the batches and reference log-probs are bit-identical; the
    # shared-prefix forward equals it within float rounding (tests/trainers/test_packing.py).
    ours = RegistryDPOTrainer(
        model=load_model(str(model_dir)),
        args=ours_args,
        train_dataset=rows,
        processing_class=tokenizer,
        loss=loss,
        shared_prefix=False,
    )
    stock_args = DPOConfig(
        output_dir=str(output_dir / "stock"),
        beta=loss.beta_kl,
        loss_type=[trl_loss_type],
        discopop_tau=DISCOPOP_TAU,
        precompute_ref_log_probs=True,
        per_device_train_batch_size=CROSS_CHECK_PAIRS,
        max_length=train.max_length,
        bf16=False,
        use_cpu=ours_args.use_cpu,
        report_to=[],
        disable_tqdm=True,
    )
    stock = DPOTrainer(
        model=load_model(str(model_dir)), args=stock_args, train_dataset=rows, processing_class=tokenizer
    )
    batches = [
        trainer.data_collator([trainer.train_dataset[i] for i in range(CROSS_CHECK_PAIRS)]) for trainer in (ours, stock)
    ]
    # Same tokenisation and the same precomputed reference log-probs on both sides.
    assert batches[0].keys() == batches[1].keys()
    for key in batches[0]:
        assert torch.equal(batches[0][key], batches[1][key]), key
    losses = []
    for trainer, batch in zip((ours, stock), batches, strict=True):
        _perturb(trainer.model)
        trainer.model.train()
        losses.append(trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch)).detach())
    return ours, stock, losses[0], losses[1]


def _margins(ours: RegistryDPOTrainer) -> torch.Tensor:
    """``rho`` of the last batch the registry trainer scored, shape ``(B,)``, float64."""
    pi_c, pi_r, ref_c, ref_r = (t.double() for t in ours._last_logps)
    return (pi_c - pi_r) - (ref_c - ref_r)


@pytest.mark.parametrize("beta", [0.05, 2.0])
@pytest.mark.parametrize(
    ("name", "trl_loss_type"), [("dlrml", "discopop"), ("dpo", "sigmoid"), ("hinge", "hinge"), ("ipo", "ipo")]
)
def test_registry_loss_matches_trl_dpo_trainer(name, trl_loss_type, beta, tiny_model_dir, tmp_path, trial_data):
    """The registry trainer's loss and logged metrics equal TRL's own ``_compute_loss`` on the same batch.

    dLRML with ``beta_mix = beta_kl`` is DiscoPOP (Lu et al. 2024, Eq. 5), which TRL implements as ``discopop``.
    """
    if name != "dlrml":
        assert get_loss(name).trl_loss_type == trl_loss_type
    loss = LossConfig(name, beta_kl=beta, beta_mix=beta)
    ours, stock, our_loss, stock_loss = _score_with_both_trainers(
        tiny_model_dir, tmp_path, trial_data, loss, trl_loss_type
    )
    rho = _margins(ours)
    assert (rho.abs() > 1e-3).all(), rho
    assert (rho > 0).any() and (rho < 0).any(), rho
    assert torch.isfinite(stock_loss)
    torch.testing.assert_close(our_loss, stock_loss, rtol=1e-5, atol=1e-6)
    ours_metrics, stock_metrics = ours._metrics["train"], stock._metrics["train"]
    for key in TRL_LOGGED_METRICS:
        assert len(ours_metrics[key]) == len(stock_metrics[key]) == 1, key
        assert ours_metrics[key][0] == pytest.approx(stock_metrics[key][0], rel=1e-5, abs=1e-6), key
    # The registry path really ran: only it logs the collapse statistics.
    assert ours_metrics["nan_inf/loss"] == [0.0]
    assert ("mix/mean" in ours_metrics) == get_loss(name).is_lrml_family
    assert "kl/ref" not in stock_metrics


def test_naive_trl_discopop_is_nan_where_registry_dlrml_is_finite(tiny_model_dir, tmp_path, trial_data):
    """At ``beta * rho < -88`` TRL's ``sigmoid(z / tau) * exp(-z)`` is ``0 * inf = NaN`` in fp32; ours is finite.

    The registry value equals Eq. 5 of Lu et al. 2024 evaluated naively in float64, where ``exp(-z)`` still fits.
    """
    beta = 100.0
    loss = LossConfig("dlrml", beta_kl=beta, beta_mix=beta)
    ours, stock, our_loss, stock_loss = _score_with_both_trainers(
        tiny_model_dir, tmp_path, trial_data, loss, "discopop"
    )
    z = beta * _margins(ours)
    assert (z < -math.log(torch.finfo(torch.float32).max)).any(), z
    assert torch.isnan(stock_loss)
    assert torch.isfinite(our_loss)
    mix = torch.sigmoid(z / DISCOPOP_TAU)
    expected = ((1 - mix) * -F.logsigmoid(z) + mix * torch.exp(-z)).mean()
    assert our_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert ours._metrics["train"]["nan_inf/loss"] == [0.0]
    for key in TRL_LOGGED_METRICS:
        assert ours._metrics["train"][key][0] == pytest.approx(stock._metrics["train"][key][0], rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------------ trial smoke


@pytest.mark.parametrize(
    ("loss", "max_grad_norm", "extra_metrics"),
    [
        (LossConfig("dlrml", beta_kl=0.1, beta_mix=0.2), 1.0, LRML_METRICS),
        (
            LossConfig("dlrml_learnable", beta_kl=0.1, beta_mix=0.2, beta_mix_lr=0.1),
            0.0,
            (*LRML_METRICS, "beta_mix/value"),
        ),
    ],
    ids=["dlrml", "dlrml_learnable-no_clipping"],
)
def test_trial_trains_and_logs_collapse_metrics(
    loss, max_grad_norm, extra_metrics, tiny_model_dir, tmp_path, trial_data
):
    """Three steps on the tiny model: weights move, every step logs every collapse metric, verdict stable."""
    train = _trial_config(tiny_model_dir, tmp_path, learning_rate=1e-3, max_grad_norm=max_grad_norm, save_model=True)
    sink: list[tuple[int, dict[str, float]]] = []
    result = run_trial(train, loss, data=trial_data, on_metrics=lambda step, metrics: sink.append((step, metrics)))

    assert result.verdict == Verdict()
    assert result.steps == 3
    assert [metrics for _, metrics in sink] == result.history
    steps = _train_steps(result.history)
    assert [record["step"] for record in steps] == [1, 2, 3]
    for record in steps:
        missing = {*COLLAPSE_METRICS, *extra_metrics} - record.keys()
        assert not missing, f"step {record['step']} lacks {sorted(missing)}"
        for key in (*COLLAPSE_METRICS, *extra_metrics):
            assert math.isfinite(record[key]), (record["step"], key, record[key])
        assert record["nan_inf/loss"] == record["nan_inf/grad"] == 0
        assert 0 <= record["rewards/accuracies"] <= 1
        assert 0 < record["mix/mean"] < 1
        assert 0 <= record["mix/saturated_frac"] <= 1
        assert record["rewards/margins"] == pytest.approx(
            record["rewards/chosen"] - record["rewards/rejected"], abs=1e-6
        )
    # The reference is the initial policy: no drift before the first update (up to batch-shape rounding), some after.
    assert steps[0]["kl/ref"] == pytest.approx(0, abs=1e-4)
    assert steps[0]["logps/chosen_drift"] == pytest.approx(0, abs=1e-4)
    assert steps[-1]["logps/chosen_drift"] != pytest.approx(0, abs=1e-4)
    assert result.train_metrics == steps[-1]
    if "beta_mix/value" in extra_metrics:
        values = [record["beta_mix/value"] for record in steps]
        assert values[0] == pytest.approx(0.2)
        assert values[-1] != pytest.approx(values[0], rel=1e-4), values
        assert all(value > 0 for value in values)

    accuracy = result.eval_metrics[HELD_OUT_ACCURACY]
    assert 0 <= accuracy <= 1
    assert result.held_out_accuracy == accuracy

    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(Path(result.model_dir) / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.isfinite(tensor).all() for tensor in after.values())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert "model.layers.0.self_attn.q_proj.weight" in changed
    assert (Path(result.model_dir) / "tokenizer_config.json").is_file()


# ---------------------------------------------------------------------------------------- injected NaNs


class NaNGradientAtStep(TrainerCallback):
    """Replaces one parameter's gradient by NaN during one optimizer step, through a tensor backward hook.

    Args:
        step: The 1-based optimizer step whose backward pass is corrupted.
        param_name: Name of the parameter (as in ``model.named_parameters()``).
    """

    def __init__(self, step: int, param_name: str) -> None:
        self.step = step
        self.param_name = param_name
        self.numel = 0
        self.fired_at: list[int] = []
        self._current_step = 0
        self._handle = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        param = dict(model.named_parameters())[self.param_name]
        self.numel = param.numel()
        self._handle = param.register_hook(self._hook)

    def on_step_begin(self, args, state, control, **kwargs):
        self._current_step = state.global_step + 1

    def on_train_end(self, args, state, control, **kwargs):
        self._handle.remove()

    def _hook(self, grad: torch.Tensor) -> torch.Tensor | None:
        if self._current_step != self.step:
            return None
        self.fired_at.append(self._current_step)
        return torch.full_like(grad, math.nan)


class NaNLogProbsAtStep(TrainerCallback):
    """Makes the final hidden states (hence the policy log-probs) NaN during one optimizer step's forward pass.

    Args:
        step: The 1-based optimizer step whose forward pass is corrupted.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self.fired_at: list[int] = []
        self._current_step = 0
        self._handle = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._handle = model.model.norm.register_forward_hook(self._hook)

    def on_step_begin(self, args, state, control, **kwargs):
        self._current_step = state.global_step + 1

    def on_train_end(self, args, state, control, **kwargs):
        self._handle.remove()

    def _hook(self, module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        if self._current_step != self.step:
            return None
        self.fired_at.append(self._current_step)
        return torch.full_like(output, math.nan)


def _assert_stopped_at(result, step: int) -> dict[str, float]:
    """Training stopped at ``step``: no later training step, no evaluation, no saved model."""
    steps = _train_steps(result.history)
    assert [record["step"] for record in steps] == list(range(1, step + 1))
    assert result.steps == step
    assert result.eval_metrics == {}
    assert result.model_dir is None
    return steps[-1]


def test_injected_nan_gradient_is_a_numerical_non_finite_grad(tiny_model_dir, tmp_path, trial_data):
    """A NaN gradient at step 2 (finite loss) -> diverged, ``non_finite_grad``, numerical, training stops at 2."""
    injector = NaNGradientAtStep(step=2, param_name="model.norm.weight")
    train = _trial_config(tiny_model_dir, tmp_path, max_steps=4, save_model=True)
    result = run_trial(train, LossConfig("dlrml"), data=trial_data, callbacks=[injector])

    assert injector.fired_at == [2]
    assert result.verdict.status == "diverged"
    assert (result.verdict.reason, result.verdict.step, result.verdict.kind) == ("non_finite_grad", 2, "numerical")
    last = _assert_stopped_at(result, 2)
    assert math.isfinite(last["loss"]) and last["nan_inf/loss"] == 0
    assert math.isnan(last["grad_norm"])
    # Counted before clipping: exactly the corrupted parameter's elements.
    assert last["nan_inf/grad"] == injector.numel
    assert last["nan_inf/genuine"] == 0


def test_injected_nan_log_probs_are_a_genuine_non_finite_loss(tiny_model_dir, tmp_path, trial_data):
    """NaN policy log-probs at step 2 -> ``non_finite_loss``, genuine, and the logged loss is NaN (not filtered)."""
    injector = NaNLogProbsAtStep(step=2)
    train = _trial_config(tiny_model_dir, tmp_path, max_steps=4)
    result = run_trial(train, LossConfig("dlrml"), data=trial_data, callbacks=[injector])

    assert injector.fired_at == [2]
    assert result.verdict.status == "diverged"
    assert (result.verdict.reason, result.verdict.step, result.verdict.kind) == ("non_finite_loss", 2, "genuine")
    last = _assert_stopped_at(result, 2)
    # transformers' logging_nan_inf_filter would have logged the running mean instead.
    assert math.isnan(last["loss"])
    assert last["nan_inf/loss"] == train.per_device_batch_size
    assert last["nan_inf/genuine"] == 1
    assert math.isnan(last["logps/chosen"])


# ------------------------------------------------------------------------------------------- divergence


def test_absurd_learning_rate_with_unbounded_dlrml_diverges(tiny_model_dir, tmp_path, trial_data):
    """dLRML with ``beta_kl > beta_mix / tau`` (unbounded as rho -> -inf) and lr = 1 diverges within 15 steps.

    Adam's first step moves every weight by about the learning rate, so |rho| reaches the hundreds: on a pair with
    rho < 0 the exponential term ``exp(log sigma(a) - z)`` overflows fp32 (seed 1: ``non_finite_loss``, genuine,
    at step 2); where the policy separates the pairs instead, the loss or gradient later jumps by orders of
    magnitude (seeds 0 and 2: ``loss_explosion``). Every seed tried diverged within 6 steps.
    """
    loss = LossConfig("dlrml", beta_kl=5.0, beta_mix=0.05)
    assert lrml_is_genuinely_divergent(loss.beta_kl, loss.beta_mix, loss.tau)
    train = _trial_config(tiny_model_dir, tmp_path, max_steps=15, learning_rate=1.0, seed=1)
    result = run_trial(train, loss, data=trial_data)

    verdict = result.verdict
    assert verdict.diverged, result.train_metrics
    assert verdict.reason in REASONS
    assert verdict.step < train.max_steps
    last = _assert_stopped_at(result, verdict.step)
    # beta_kl > beta_mix / tau: the loss itself is unbounded, so a non-finite value is the true (float64) value
    # leaving the training dtype's range, never an artefact of evaluation order.
    if verdict.reason == "non_finite_loss":
        assert not math.isfinite(last["loss"]) or last["nan_inf/loss"] > 0
        assert verdict.kind == "genuine"
    elif verdict.reason == "non_finite_grad":
        assert not math.isfinite(last["grad_norm"]) or last["nan_inf/grad"] > 0
        assert verdict.kind == "genuine"
    else:
        assert verdict.kind is None
    assert verdict.describe().startswith(f"diverged at step {verdict.step}: {verdict.reason}")


# -------------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--loss", "nope"], ["unknown loss 'nope'", *sorted(LOSSES)]),
        (["--beta-kl", "0"], ["beta_kl must be a finite number > 0, got 0.0"]),
        (["--loss", "dpo", "--beta-kl", "-0.5"], ["beta_kl must be a finite number > 0, got -0.5"]),
        (["--beta-kl", "nan"], ["beta_kl must be a finite number > 0"]),
        (["--loss", "dlrml", "--beta-mix", "0"], ["beta_mix must be a finite number > 0"]),
        (["--precision", "fp16"], ["precision must be one of ('fp32', 'bf16'), got 'fp16'"]),
        (["--beta-kl", "abc"], ["argument --beta-kl: invalid float value: 'abc'"]),
        (["--max-steps", "0"], ["max_steps must be -1"]),
        (["--data", "no-such-dir/pairs.jsonl"], ["preference data file", "pairs.jsonl does not exist"]),
    ],
    ids=[
        "unknown-loss",
        "beta-zero",
        "beta-negative",
        "beta-nan",
        "beta-mix-zero",
        "precision",
        "not-a-float",
        "steps",
        "missing-data",
    ],
)
def test_cli_rejects_bad_flags_before_loading_a_model(flags, expected, tmp_path, capsys):
    """Bad flags exit with argparse's status 2 and a message naming the problem; no model is touched.

    The model path does not exist, so reaching the model loader would raise instead of exiting with 2.
    """
    output_dir = tmp_path / "out"
    argv = ["--model", str(tmp_path / "no-such-model"), "--output-dir", str(output_dir), *flags]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: python -m trainers.train")
    for text in expected:
        assert text in captured.err
    assert not output_dir.exists()


def test_cli_trains_one_trial_and_prints_json_summary(tiny_model_dir, tmp_path, capsys):
    """``main`` trains the tiny model, prints per-step statistics and the verdict, returns 0."""
    argv = [
        "--model",
        str(tiny_model_dir),
        "--loss",
        "dpo",
        "--beta-kl",
        "0.1",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--max-train-rows",
        "8",
        "--max-eval-rows",
        "4",
        "--output-dir",
        str(tmp_path / "out"),
        "--no-save",
        "--json",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("trial: loss=dpo {'beta_kl': 0.1}")
    assert any(line.startswith("[step 2] loss=") and "nan_inf/grad=0" in line for line in lines)
    assert any(line.startswith("[eval step 2] held-out preference accuracy") for line in lines)
    summary = json.loads(lines[-1])
    # 4 held-out pairs: learning needs an accuracy above 0.5 + 2 * sqrt(0.25 / 4) = 1, so the last evaluation
    # reads stalled; two steps of a tiny model move nothing far enough to collapse. One evaluation after the start
    # cannot settle a verdict (settling needs 3), so the trial ends unsettled and says why.
    behaviour = summary["behaviour"]
    assert (behaviour["status"], behaviour["reason"], behaviour["settled"]) == ("stalled", "no_learning", False)
    assert "settling needs 3" in behaviour["unsettled_because"]
    assert summary["status"] == "unsettled"
    assert any(line.startswith("verdict: unsettled (stable") for line in lines)
    assert summary["loss"]["name"] == "dpo" and summary["loss"]["beta_mix"] is None
    assert summary["verdict"]["status"] == "stable"  # the divergence monitor's verdict
    assert summary["eval_pairs"] == 4
    assert summary["steps"] == 2
    assert summary["model_dir"] is None
    assert 0 <= summary["eval_metrics"][HELD_OUT_ACCURACY] <= 1
    assert not (tmp_path / "out" / "model").exists()


# ------------------------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_real_embedded_model_trains_two_stable_steps(embedded_model_dir, tmp_path):
    """Two dLRML steps of the embedded SmolLM2-135M-Instruct: finite collapse metrics, stable verdict."""
    train = TrainConfig(
        model="embedded",
        max_train_rows=4,
        max_eval_rows=4,
        per_device_batch_size=2,
        max_length=96,
        max_steps=2,
        save_model=False,
        output_dir=str(tmp_path),
    )
    result = run_trial(train, LossConfig("dlrml", beta_kl=0.05, beta_mix=0.2))

    assert result.verdict == Verdict()
    steps = _train_steps(result.history)
    assert [record["step"] for record in steps] == [1, 2]
    for record in steps:
        for key in (*COLLAPSE_METRICS, *LRML_METRICS):
            assert math.isfinite(record[key]), (record["step"], key, record[key])
        assert record["logps/chosen"] < 0 and record["logps/rejected"] < 0
    assert 0 <= result.held_out_accuracy <= 1


def test_step_phases_are_labelled_in_a_profiler_trace(tiny_model_dir, tmp_path, trial_data):
    """The ranges ``bench/profile_step.py`` splits a step into appear once per training step in any trace."""
    train = _trial_config(tiny_model_dir, tmp_path, max_steps=2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        run_trial(train, LossConfig("dlrml", beta_kl=0.1, beta_mix=0.2), data=trial_data)
    counts = {event.key: event.count for event in profiler.key_averages() if event.key in PROFILE_RANGES}
    # 2 training steps, then the held-out evaluation at the end: 4 pairs in batches of 2, no gradient to clip.
    assert counts == {"dlrml/forward": 4, "dlrml/loss": 4, "dlrml/metrics": 4, "dlrml/clip_grad_norm": 2}


# ------------------------------------------------------------------------------------- odd batches


def test_short_last_batches_train_and_evaluate(tiny_model_dir, tmp_path):
    """5 train pairs in batches of 2 over 3 steps (the third batch holds one pair) and 3 held-out pairs in batches of
    2 (the last holds one): ``gather_for_metrics`` trims each last batch, which broke splitting a gathered
    ``[chosen; rejected]`` concatenation (``not enough values to unpack``, the trial errored)."""
    data = load_preference_data("embedded", max_train_rows=5, max_eval_rows=3)
    assert (len(data.train), len(data.eval)) == (5, 3)
    train = _trial_config(tiny_model_dir, tmp_path, max_steps=3, eval_steps=3, max_train_rows=5, max_eval_rows=3)
    result = run_trial(train, LossConfig("dpo", beta_kl=0.1), data=data)
    assert not result.verdict.diverged and result.steps == 3
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    # Each held-out batch's accuracy is a fraction of its pairs: (a/2 + b/1) / 2 over a 2-pair and a 1-pair batch.
    possible = {(a / 2 + b) / 2 for a in range(3) for b in range(2)}
    assert any(math.isclose(result.eval_metrics[HELD_OUT_ACCURACY], p) for p in possible)
