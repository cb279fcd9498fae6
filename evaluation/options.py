"""What the MT-Bench and AlpacaEval configs share, defined once: data-source sentinel, generation and judge backend
vocabularies with their help, the checks of a judge endpoint's settings, and file-safe model names."""

from __future__ import annotations

import re
import typing
from typing import Literal, Protocol

from trainers.typed_config import ConfigError

HUB = "hub"
"""Sentinel for a data source (questions, judge prompts, instructions, baseline outputs): fetch the official files."""

GenerationBackend = Literal["hf", "vllm"]
"""How answers are generated: transformers ``generate`` in left-padded batches, or vLLM (GPU only, the ``vllm``
extra)."""
GENERATION_BACKENDS: tuple[str, ...] = typing.get_args(GenerationBackend)
GENERATION_BACKEND_HELP = (
    "``hf`` (transformers ``generate``, left-padded batches; CPU or GPU) or ``vllm`` (vLLM's continuous batching, "
    "~10x faster for a 7B model; GPU only, needs ``pip install '.[vllm]'``; sampled answers differ from ``hf``'s "
    "for the same seed, greedy ones agree up to kernel numerics). ``generation_batch_size`` applies to ``hf`` only: "
    "vLLM schedules its own batches."
)
VLLM_GPU_MEMORY_HELP = (
    "With ``generation_backend=vllm``: the fraction of the GPU's memory vLLM takes (weights + KV cache)."
)

JudgeBackend = Literal["local", "openai"]
"""Where a judge runs: an in-process transformers model, or any OpenAI-compatible endpoint."""
JUDGE_BACKENDS: tuple[str, ...] = typing.get_args(JudgeBackend)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class JudgeEndpoint(Protocol):
    """The judge settings both benchmark configs carry."""

    judge_backend: str
    judge_base_url: str | None
    api_key_env: str
    backoff_s: float
    backoff_max_s: float


def check_judge_endpoint(cfg: JudgeEndpoint) -> None:
    """Refuse judge settings that contradict each other or that hold a key where its variable's name belongs.

    Raises:
        ConfigError: Naming the field.
    """
    if cfg.judge_base_url is not None and cfg.judge_backend != "openai":
        raise ConfigError(
            f"only applies to judge_backend='openai' (judge_backend is {cfg.judge_backend!r})", "judge_base_url"
        )
    # The value is deliberately not echoed: a user who pastes the key here must not see it in logs.
    if not _ENV_NAME.fullmatch(cfg.api_key_env):
        raise ConfigError(
            "must be the NAME of an environment variable (letters, digits, underscores, e.g. 'OPENAI_API_KEY'), "
            "not the key itself",
            "api_key_env",
        )
    if cfg.backoff_max_s < cfg.backoff_s:
        raise ConfigError(f"({cfg.backoff_max_s}) must be >= backoff_s ({cfg.backoff_s})", "backoff_max_s")


def safe_name(name: str) -> str:
    """File-name-safe form of a model or judge name (runs of other characters become ``_``)."""
    return _UNSAFE_NAME_CHARS.sub("_", name).strip("_") or "model"
