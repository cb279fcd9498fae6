"""A saved model's generation backend, as a benchmark config names it.

What the benchmarks' checkpoint writers (a sweep's generation tasks, the evaluation CLIs) open: given a model spec
(a trial's saved policy, the reference model), the config's ``generation_backend`` decides whether a transformers
model is loaded (``hf``) or a vLLM engine is started on the same directory (``vllm``; the transformers model is
then never loaded).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from evaluation.generation.hf import ChatGenerator, hf_generator
from evaluation.generation.vllm import vllm_generator


class GenerationSettings(Protocol):
    """The generation fields of a benchmark config (MT-Bench's and AlpacaEval's)."""

    generation_backend: str
    max_new_tokens: int
    generation_batch_size: int
    vllm_gpu_memory_utilization: float


@contextlib.contextmanager
def open_generator(
    model: str, dtype: str, cfg: GenerationSettings, *, seed: int, device: str | None = None
) -> Iterator[ChatGenerator]:
    """The backend ``cfg.generation_backend`` names, on ``model``, for the duration of the block.

    Args:
        model: A model spec (``trainers.models.resolve_model_path``).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        cfg: The evaluation's settings (``generation_backend``, ``max_new_tokens``, ``generation_batch_size``,
            ``vllm_gpu_memory_utilization``).
        seed: Seed of sampled replies.
        device: ``hf`` only: where the model runs; None: ``cuda`` if available, else the CPU. vLLM uses the GPUs
            ``CUDA_VISIBLE_DEVICES`` shows it (a Ray task's own GPU).

    Yields:
        The :data:`evaluation.generation.hf.ChatGenerator`.
    """
    if cfg.generation_backend == "vllm":
        with vllm_generator(
            model,
            dtype=dtype,
            seed=seed,
            max_new_tokens=cfg.max_new_tokens,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        ) as generate:
            yield generate
        return
    import torch

    from trainers.models import load_model, load_tokenizer

    policy = load_model(model, dtype=dtype)
    device = device or ("cuda" if torch.cuda.is_available() else None)
    if device is not None:
        policy = policy.to(device)
    tokenizer = load_tokenizer(model)
    budget = {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.generation_batch_size}
    with hf_generator(policy, tokenizer, **budget, seed=seed) as generate:
        yield generate
