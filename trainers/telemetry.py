"""Throughput telemetry of a trial, per optimizer step: non-pad tokens/s, padding fraction, tokens saved, MFU.

Per optimizer step, summed over its micro-batches and over the ranks of a multi-worker trial (rank 0's report is the
one Tune sees), from the :class:`~trainers.packing.TokenCounts` of every policy forward:

* ``perf/tokens_per_second``: non-pad tokens the policy forward processed (``computed``: every prompt once with the
  shared-prefix forward, twice without it) over the step's wall time, from ``on_step_begin`` to ``on_step_end``
  (forward and backward of every micro-batch, clipping, the optimizer step; not the held-out evaluation after it).
  A packed step counts each prompt once, so compare the two forwards by steps/s (or add ``perf/tokens_saved``).
* ``perf/padding_fraction``: pad tokens over all tokens of the forward actually run (0 packed; TRL's padded batch
  pads every sequence to the longest).
* ``perf/tokens_saved``: prompt tokens the shared-prefix forward did not compute a second time (one prompt copy per
  pair instead of two; 0 unpacked).
* ``perf/mfu``: model FLOPs utilisation, where the accelerator's peak is known (``resources.peak_tflops``, else
  :func:`peak_tflops_for` the CUDA device's name): the model FLOPs of the step's non-pad tokens over the step's wall
  time and the peak of all ranks' devices (PaLM, Chowdhery et al. 2022, appendix B: padding and recomputation are
  not useful FLOPs). FLOPs per token are Kaplan et al. 2020 (section 2.1, eq. 2.1): ``2 N`` for a forward and ``4 N``
  for its backward, ``N`` the non-embedding parameters, so :func:`training_flops` is ``6 N`` per policy token plus
  ``2 N`` per token of a per-step reference forward (none when the reference log-probs are precomputed, as in every
  trial of this project); the attention term (``12 L H Q T`` in PaLM's count) and the LM head of a tied embedding
  are left out, so a small model's MFU is a slight underestimate. transformers' ``floating_point_ops`` counts the
  same ``6 N`` per token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping

import torch
from transformers import TrainerCallback

from trainers.packing import TokenCounts
from trainers.protocol import Metric

PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIE", {"bf16": 756.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp32": 60.0}),
    ("H200 NVL", {"bf16": 835.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0}),
    ("H200", {"bf16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
)
"""Dense peak TFLOP/s by CUDA device name (first match; NVIDIA's data sheets, without sparsity): bf16 on the tensor
cores, fp32 on the CUDA cores (torch's default ``float32_matmul_precision="highest"`` uses no TF32). An SXM part's
name carries no form factor (``NVIDIA H100 80GB HBM3``), so the PCIe and NVL parts come first."""


def peak_tflops_for(device_name: str, precision: str) -> float | None:
    """The dense peak TFLOP/s of a device in :data:`PEAK_TFLOPS` (``None`` for any other device).

    Args:
        device_name: As ``torch.cuda.get_device_name`` gives it, e.g. ``"NVIDIA H100 80GB HBM3"``.
        precision: ``"bf16"`` or ``"fp32"`` (``train.precision``).
    """
    name = device_name.upper().replace("-", " ")
    for part, peaks in PEAK_TFLOPS:
        if part in name:
            return peaks.get(precision)
    return None


def resolve_peak_tflops(configured: float | None, precision: str, device: torch.device) -> float | None:
    """``configured`` when set, else the table's peak of the CUDA ``device`` (``None`` on a CPU or unknown device)."""
    if configured is not None:
        return configured
    if device.type != "cuda":
        return None
    return peak_tflops_for(torch.cuda.get_device_name(device), precision)


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """``N`` of Kaplan et al. 2020: parameters not in an ``nn.Embedding`` (a tied LM head shares its weight, so it is
    not counted either); a ZeRO-3 partitioned parameter counts its full size (``ds_numel``)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if id(p) not in embeddings)


def training_flops(parameters: int, tokens: int, reference_tokens: int = 0) -> float:
    """Model FLOPs of a training step: ``6 N`` per policy token (forward ``2 N`` + backward ``4 N``, Kaplan et al.
    2020 eq. 2.1) plus ``2 N`` per token of a reference forward (``reference_tokens``: 0 when precomputed)."""
    return 6.0 * parameters * tokens + 2.0 * parameters * reference_tokens


def model_flops_utilisation(flops: float, seconds: float, peak_tflops: float, devices: int = 1) -> float:
    """``flops / seconds`` over the peak of ``devices`` accelerators of ``peak_tflops`` TFLOP/s each (PaLM's MFU)."""
    return flops / (seconds * peak_tflops * 1e12 * devices)


def step_metrics(
    counts: TokenCounts,
    seconds: float,
    parameters: int,
    peak_tflops: float | None,
    devices: int = 1,
    reference_forward: bool = False,
) -> dict[str, float]:
    """The ``perf/*`` metrics of one optimizer step (module docstring).

    Args:
        counts: The step's token counts, summed over micro-batches and ranks.
        seconds: The step's wall time.
        parameters: Non-embedding parameters of the policy (:func:`non_embedding_parameters`).
        peak_tflops: Peak TFLOP/s of one device; ``None``: no ``perf/mfu``.
        devices: Devices the step ran on (the trial's ranks).
        reference_forward: A reference forward over the same tokens ran in the step (not precomputed).
    """
    metrics = {
        Metric.PERF_TOKENS_PER_SECOND.value: counts.computed / seconds,
        Metric.PERF_PADDING_FRACTION.value: counts.padding / counts.forward if counts.forward else 0.0,
        Metric.PERF_TOKENS_SAVED.value: float(counts.shared),
    }
    if peak_tflops is not None:
        reference_tokens = counts.computed if reference_forward else 0
        flops = training_flops(parameters, counts.computed, reference_tokens)
        metrics[Metric.PERF_MFU.value] = model_flops_utilisation(flops, seconds, peak_tflops, devices)
    return metrics


class ThroughputMeter(TrainerCallback):
    """Times every optimizer step, sums the token counts of its policy forwards, and appends its ``perf/*`` metrics
    to the trainer's metric buffer before the step is logged (TRL averages the buffer over a logging interval).

    Args:
        buffer: The trainer's training-metric buffer (``trainer._metrics["train"]``: name to list of values).
        parameters: Non-embedding parameters of the policy.
        peak_tflops: Peak TFLOP/s of one device (``None``: no MFU).
        devices: The trial's ranks.
        reference_forward: Whether each step also runs a reference forward (reference not precomputed).
        gather: Gathers a tensor from every rank (``accelerator.gather``), to sum the counts over ranks.
        device: Where the counts tensor goes for ``gather`` (the accelerator's device: NCCL gathers CUDA tensors).
    """

    def __init__(
        self,
        buffer: MutableMapping[str, list[float]],
        parameters: int,
        peak_tflops: float | None,
        *,
        devices: int = 1,
        reference_forward: bool = False,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.buffer = buffer
        self.parameters = parameters
        self.peak_tflops = peak_tflops
        self.devices = devices
        self.reference_forward = reference_forward
        self.gather = gather
        self.device = device or torch.device("cpu")
        self._totals = [0, 0, 0, 0]
        self._started: float | None = None

    def add(self, counts: TokenCounts) -> None:
        """Count one training micro-batch's policy forward."""
        for i, value in enumerate((counts.real, counts.padded, counts.forward, counts.shared)):
            self._totals[i] += value

    def on_step_begin(self, args, state, control, **kwargs):
        self._totals = [0, 0, 0, 0]
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._started is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the step's kernels are queued asynchronously
        seconds = time.perf_counter() - self._started
        self._started = None
        totals = torch.tensor([self._totals], dtype=torch.long, device=self.device)
        if self.gather is not None:  # every rank reaches on_step_end, so the collective is matched
            totals = self.gather(totals)
        real, padded, forward, shared = totals.reshape(-1, 4).sum(dim=0).tolist()
        if not forward or seconds <= 0:
            return
        counts = TokenCounts(real=real, padded=padded, forward=forward, shared=shared)
        metrics = step_metrics(counts, seconds, self.parameters, self.peak_tflops, self.devices, self.reference_forward)
        for name, value in metrics.items():
            self.buffer.setdefault(name, []).append(value)
