"""MT-Bench answers and AlpacaEval outputs of a saved model, with the generation backend its config names.

What a sweep's generation tasks and the evaluation CLIs call: given a model spec (a trial's saved policy, the
reference model), the config's ``generation_backend`` decides whether a transformers model is loaded (``hf``) or a
vLLM engine is started on the same directory (``vllm``; the transformers model is then never loaded).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from evaluation.alpaca_eval import AlpacaEvalData, load_alpaca_eval_data, write_outputs_with
from evaluation.alpaca_eval_config import AlpacaEvalConfig
from evaluation.config import EvalConfig
from evaluation.generation import ChatGenerator, hf_generator
from evaluation.mt_bench import MTBenchData, load_mt_bench_data, write_answers_with
from evaluation.vllm_generation import vllm_generator

ALPACA_SEED = 0
"""Engine seed of AlpacaEval generation: its decoding is greedy, so the seed changes nothing."""


@contextlib.contextmanager
def open_generator(
    model: str, dtype: str, cfg: EvalConfig | AlpacaEvalConfig, *, seed: int, device: str | None = None
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
        The :data:`evaluation.generation.ChatGenerator`.
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


def write_mt_bench_answers(
    model: str,
    dtype: str,
    cfg: EvalConfig,
    out_dir: Path,
    model_id: str,
    *,
    device: str | None = None,
    data: MTBenchData | None = None,
) -> Path:
    """Answer the MT-Bench questions with a saved model and write ``<out_dir>/model_answer/<model_id>.jsonl``.

    Args:
        model: A model spec (a trial's saved policy directory, ``embedded``, a hub id).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        cfg: MT-Bench settings; ``generation_backend`` picks transformers or vLLM.
        out_dir: Output directory.
        model_id: Name of the evaluated model (file name of the answers).
        device: See :func:`open_generator`.
        data: Already loaded questions (else loaded here, before any model).

    Returns:
        The answers file.
    """
    data = data or load_mt_bench_data(cfg)
    with open_generator(model, dtype, cfg, seed=cfg.seed, device=device) as generate:
        return write_answers_with(generate, cfg, Path(out_dir), model_id, data=data)


def write_alpaca_outputs(
    model: str,
    dtype: str,
    cfg: AlpacaEvalConfig,
    out_dir: Path,
    generator: str,
    *,
    device: str | None = None,
    data: AlpacaEvalData | None = None,
) -> Path:
    """Answer the AlpacaEval instructions (greedy) with a saved model and write ``<out_dir>/model_outputs.json``.

    Args:
        model: A model spec (a trial's saved policy directory, the reference model's spec).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        cfg: AlpacaEval settings; ``generation_backend`` picks transformers or vLLM.
        out_dir: Output directory.
        generator: Name recorded in every output row.
        device: See :func:`open_generator`.
        data: Already loaded instructions (else loaded here, before any model).

    Returns:
        The model-outputs file.
    """
    data = data or load_alpaca_eval_data(cfg)
    with open_generator(model, dtype, cfg, seed=ALPACA_SEED, device=device) as generate:
        return write_outputs_with(generate, cfg, Path(out_dir), generator, data=data)
