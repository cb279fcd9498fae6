"""Throughput telemetry (``trainers.telemetry``): token counts of both forwards, the ``perf/*`` metrics, MFU, the peak
table, and a short trial that logs them every step."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import TrainerCallback
from trl.trainer.dpo_trainer import DataCollatorForPreference

from trainers.config import LossConfig, TrainConfig
from trainers.data import load_preference_data
from trainers.models import load_model
from trainers.packing import TokenCounts, pack_pairs, padded_counts
from trainers.protocol import Metric
from trainers.telemetry import (
    ThroughputMeter,
    non_embedding_parameters,
    peak_tflops_for,
    resolve_peak_tflops,
    step_metrics,
    training_flops,
)
from trainers.trial_runner import run_trial

PERF = (Metric.PERF_TOKENS_PER_SECOND, Metric.PERF_PADDING_FRACTION, Metric.PERF_TOKENS_SAVED)


def _batch(shapes: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
    """TRL's collated ``[chosen; rejected]`` batch of pairs of ``(prompt, chosen, rejected)`` lengths (ids 1..)."""
    pairs = [{"prompt_ids": [1] * p, "chosen_ids": [2] * c, "rejected_ids": [3] * r} for p, c, r in shapes]
    return DataCollatorForPreference(pad_token_id=0, max_length=None)(pairs)


def _both(shapes: list[tuple[int, int, int]]) -> tuple[TokenCounts, TokenCounts]:
    """The counts of the packed and of the padded forward of one batch."""
    batch = _batch(shapes)
    packed = pack_pairs(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]).counts
    return packed, padded_counts(batch["attention_mask"])


def test_counts_of_a_hand_built_batch():
    """Pairs (prompt, chosen, rejected) = (3, 2, 1) and (5, 4, 6): TRL's rows are 3+2=5, 5+4=9 (chosen), 3+1=4,
    5+6=11 (rejected), padded to L = 11, so real = 5+9+4+11 = 29 and padded = 4 x 11 = 44. The packed row holds each
    prompt once: shared = 3+5 = 8, forward = 29-8 = 21, no padding; the padded forward runs 44 tokens, 15 of them
    pads."""
    packed, padded = _both([(3, 2, 1), (5, 4, 6)])
    assert packed == TokenCounts(real=29, padded=44, forward=21, shared=8)
    assert (packed.computed, packed.padding) == (21, 0)
    assert padded == TokenCounts(real=29, padded=44, forward=44, shared=0)
    assert (padded.computed, padded.padding) == (29, 15)


def test_padding_fraction_packed_and_unpacked_on_very_different_lengths():
    """(2, 1, 1) beside (40, 30, 50): rows of 3, 70, 3 and 90 tokens padded to 90, so the padded forward is
    (360 - 166) / 360 = 54% padding; the packed row has none. Tokens saved are the two prompts, 2 + 40."""
    packed, padded = _both([(2, 1, 1), (40, 30, 50)])
    for counts, fraction, saved in ((packed, 0.0, 42.0), (padded, 194 / 360, 0.0)):
        metrics = step_metrics(counts, seconds=2.0, parameters=1000, peak_tflops=None)
        assert metrics[Metric.PERF_PADDING_FRACTION] == pytest.approx(fraction)
        assert metrics[Metric.PERF_TOKENS_SAVED] == saved
        assert metrics[Metric.PERF_TOKENS_PER_SECOND] == counts.computed / 2.0
        assert Metric.PERF_MFU not in metrics  # no peak known: no MFU
    assert (packed.computed, padded.computed) == (166 - 42, 166)


def test_tokens_saved_are_the_sum_of_the_prompt_lengths():
    shapes = [(7, 3, 2), (1, 5, 5), (12, 1, 9), (4, 4, 4)]
    packed, _ = _both(shapes)
    assert packed.shared == sum(p for p, _, _ in shapes) == packed.real - packed.forward


def test_mfu_of_a_known_parameter_count():
    """N = 10^9 non-embedding parameters, 1000 non-pad tokens in 0.5 s on 2 devices of 100 TFLOP/s: 6 N x 1000 =
    6e12 FLOPs, over 0.5 s x 2 x 1e14 FLOP/s = 1e14: MFU 0.06. A per-step reference forward adds 2 N per token:
    8e12 FLOPs, MFU 0.08."""
    assert training_flops(10**9, 1000) == 6e12
    assert training_flops(10**9, 1000, reference_tokens=1000) == 8e12
    counts = TokenCounts(real=1000, padded=1200, forward=1200)
    metrics = step_metrics(counts, seconds=0.5, parameters=10**9, peak_tflops=100.0, devices=2)
    assert metrics[Metric.PERF_MFU] == pytest.approx(0.06)
    with_reference = step_metrics(counts, 0.5, 10**9, 100.0, devices=2, reference_forward=True)
    assert with_reference[Metric.PERF_MFU] == pytest.approx(0.08)


def test_non_embedding_parameters_leave_out_embeddings_and_count_a_tied_head_once(tiny_model_dir):
    """An embedding (10 x 4) and a linear layer (4 -> 3 with bias): N = 4*3 + 3 = 15. On the tiny model it is what
    transformers' own ``num_parameters(exclude_embeddings=True)`` counts."""
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3))
    assert non_embedding_parameters(model) == 15
    tiny = load_model(str(tiny_model_dir))
    assert non_embedding_parameters(tiny) == tiny.num_parameters(exclude_embeddings=True) > 0


@pytest.mark.parametrize(
    ("name", "precision", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("NVIDIA H100 NVL", "fp32", 60.0),
        ("NVIDIA H200", "bf16", 989.0),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("NVIDIA A100 80GB PCIe", "fp32", 19.5),
        ("NVIDIA GeForce RTX 4090", "bf16", None),
    ],
)
def test_peak_tflops_by_device_name(name, precision, peak):
    assert peak_tflops_for(name, precision) == peak


def test_a_configured_peak_wins_and_a_cpu_has_none():
    assert resolve_peak_tflops(500.0, "bf16", torch.device("cpu")) == 500.0
    assert resolve_peak_tflops(None, "bf16", torch.device("cpu")) is None


def test_the_meter_sums_a_steps_micro_batches_and_ranks():
    """Two micro-batches on each of two ranks (the gather stacks the ranks' totals): the step's metrics are of the
    sum of all four; nothing is logged for a step that scored no tokens."""
    buffer: dict[str, list[float]] = {}
    meter = ThroughputMeter(
        buffer, parameters=10**6, peak_tflops=1.0, devices=2, gather=lambda t: torch.cat([t, t]), device=None
    )
    meter.on_step_begin(None, None, None)
    meter.add(TokenCounts(real=29, padded=44, forward=21, shared=8))
    meter.add(TokenCounts(real=10, padded=12, forward=12))
    meter.on_step_end(None, None, None)
    computed = 2 * (21 + 10)
    assert buffer[Metric.PERF_TOKENS_SAVED] == [16.0]
    assert buffer[Metric.PERF_PADDING_FRACTION] == [pytest.approx(4 / 66)]
    seconds = computed / buffer[Metric.PERF_TOKENS_PER_SECOND][0]
    assert buffer[Metric.PERF_MFU] == [pytest.approx(6e6 * computed / (seconds * 2e12))]
    meter.on_step_begin(None, None, None)
    meter.on_step_end(None, None, None)
    assert sorted(buffer) == sorted((*PERF, Metric.PERF_MFU)) and all(len(v) == 1 for v in buffer.values())


class _Prompts(TrainerCallback):
    """Keeps the prompt token ids of the trial's tokenised training pairs."""

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.prompt_ids = list(train_dataloader.dataset["prompt_ids"])


@pytest.mark.parametrize("shared_prefix", [True, False], ids=["packed", "unpacked"])
def test_a_trial_reports_throughput_every_step(tiny_model_dir, tmp_path, shared_prefix):
    """Two steps of 4 pairs are one epoch over the 8 pairs: the packed trial's tokens saved over its steps are the
    sum of every pair's prompt tokens, with no padding; the unpacked one saves nothing and pads. With a peak given, MFU
    is reported, from the model's non-embedding parameters (on a CPU nothing looks a peak up)."""
    data = load_preference_data("embedded", max_train_rows=8, max_eval_rows=4)
    train = TrainConfig(
        model=str(tiny_model_dir),
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_batch_size=4,
        eval_steps=0,
        save_model=False,
        shared_prefix=shared_prefix,
    )
    prompts = _Prompts()
    peak = 1.0 if shared_prefix else None
    result = run_trial(train, LossConfig("dpo", beta_kl=0.1), data=data, callbacks=[prompts], peak_tflops=peak)
    steps = [h for h in result.history if Metric.LOSS in h]
    assert len(steps) == 2
    for step in steps:
        assert all(math.isfinite(step[name]) for name in PERF)
        assert step[Metric.PERF_TOKENS_PER_SECOND] > 0
        assert (Metric.PERF_MFU in step) == shared_prefix
    saved = sum(step[Metric.PERF_TOKENS_SAVED] for step in steps)
    padding = [step[Metric.PERF_PADDING_FRACTION] for step in steps]
    if shared_prefix:
        assert saved == sum(len(ids) for ids in prompts.prompt_ids) > 0
        assert padding == [0.0, 0.0]
        # MFU = 6 N tokens / (seconds x peak): 6 N (tokens/s) / 1e12 for a peak of 1 TFLOP/s, N the tiny model's.
        n = load_model(str(tiny_model_dir)).num_parameters(exclude_embeddings=True)
        for step in steps:
            assert step[Metric.PERF_MFU] == pytest.approx(6 * n * step[Metric.PERF_TOKENS_PER_SECOND] / 1e12)
    else:
        assert saved == 0 and all(0 < fraction < 1 for fraction in padding)
