"""Configuration of an MT-Bench evaluation (Zheng et al., 2023, "Judging LLM-as-a-Judge with MT-Bench and
Chatbot Arena", arXiv:2306.05685), single-answer grading on a 1-10 scale as in FastChat's ``llm_judge``.

Data sources. Each of ``questions``, ``judge_prompts`` and ``reference_answers`` is one of

* ``None`` (default): the small question set, judge prompts and reference answers bundled in
  ``evaluation/data/`` (written for this project in FastChat's formats). Works offline.
* ``"hub"``: the official MT-Bench files (80 questions, FastChat's judge prompts, GPT-4 reference answers),
  downloaded through ``huggingface_hub`` from the ``lmsys/mt-bench`` Space that FastChat itself downloads
  from (``data/mt_bench/question.jsonl``, ``data/judge_prompts.jsonl``,
  ``data/mt_bench/reference_answer/gpt-4.jsonl``). This is the production setting; it needs network access
  (or a warm Hugging Face cache).
* a path to a local JSONL file in FastChat's format (e.g. a checkout of FastChat's
  ``fastchat/llm_judge/data``).

The judge API key is never part of the configuration: only the *name* of the environment variable that
holds it (``api_key_env``) is stored, so ``repr(cfg)`` and ``dataclasses.asdict(cfg)`` cannot leak it.
"""

from __future__ import annotations

import dataclasses

from evaluation.options import (
    GENERATION_BACKEND_HELP,
    HUB,
    VLLM_GPU_MEMORY_HELP,
    GenerationBackend,
    JudgeBackend,
    check_judge_endpoint,
)
from trainers.typed_config import option, validate

DEFAULT_JUDGE_MODELS = {"local": "embedded", "openai": "gpt-4"}
DEFAULT_JUDGE_MAX_TOKENS = {"local": 256, "openai": 2048}

_SOURCE = f"None (bundled data), {HUB!r} (official MT-Bench files) or a file path"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings for one MT-Bench run (answer generation, judging, scoring)."""

    questions: str | None = option(
        None,
        nonempty=True,
        expected=_SOURCE,
        help=f"Question source: null (bundled), {HUB!r} or a FastChat ``question.jsonl`` path.",
    )
    judge_prompts: str | None = option(
        None,
        nonempty=True,
        expected=_SOURCE,
        help=f"Judge prompt source: null (bundled), {HUB!r} or a ``judge_prompts.jsonl`` path.",
    )
    reference_answers: str | None = option(
        None,
        nonempty=True,
        expected=_SOURCE,
        help=f"Reference answers for math/reasoning/coding: null (bundled), {HUB!r} (GPT-4 references) or a path "
        "to a FastChat ``model_answer``-format JSONL file.",
    )
    limit: int | None = option(
        None,
        gt=0,
        help="Keep only the first ``limit`` questions (in file order, after the category filter), like FastChat's "
        "``--first-n``. Null keeps all.",
    )
    categories: tuple[str, ...] | None = option(
        None,
        nonempty=True,
        unique=True,
        help="Keep only questions of these categories (a non-empty list). Null keeps all.",
    )
    max_new_tokens: int = option(1024, gt=0, help="Generation budget per answer turn (FastChat's ``--max-new-token``).")
    generation_batch_size: int = option(8, gt=0, help="Number of conversations generated together (left-padded).")
    seed: int = option(
        0, ge=0, help="Seed for sampled categories (writing/roleplay at T=0.7, stem/humanities at T=0.1)."
    )
    generation_backend: GenerationBackend = option("hf", help=GENERATION_BACKEND_HELP)
    vllm_gpu_memory_utilization: float = option(0.85, gt=0, le=1, help=VLLM_GPU_MEMORY_HELP)
    judge_backend: JudgeBackend = option(
        "local",
        help="``local`` (in-process transformers model) or ``openai`` (any OpenAI-compatible endpoint: OpenAI, "
        "vLLM, llama.cpp server, ...).",
    )
    judge_model: str | None = option(
        None,
        nonempty=True,
        help="Judge model. Local backend: a model spec for ``trainers.models.load_model`` (null: ``embedded``, the "
        "bundled SmolLM2-135M-Instruct). OpenAI backend: the served model name (null: ``gpt-4`` as in FastChat). "
        "Defaults are applied by ``resolved_judge_model`` so that ``dataclasses.replace(cfg, judge_backend=...)`` "
        "picks the new backend's default.",
    )
    judge_base_url: str | None = option(
        None,
        pattern=r"https?://.+",
        expected="an http(s) URL",
        help="Base URL of the OpenAI-compatible endpoint (e.g. ``http://host:8000/v1`` for vLLM); null means "
        "api.openai.com. Only valid with the openai backend.",
    )
    api_key_env: str = option(
        "OPENAI_API_KEY", help="Name of the environment variable holding the API key (never the key itself)."
    )
    judge_max_tokens: int | None = option(
        None,
        gt=0,
        help="Completion budget of one judgment. Null (``resolved_judge_max_tokens``): 2048 for the openai backend "
        "(as FastChat uses for GPT-4), 256 for the local backend (a CPU-friendly budget for small judges).",
    )
    judge_batch_size: int = option(8, gt=0, help="Batch size of the local judge.")
    concurrency: int = option(8, gt=0, help="Maximum number of in-flight requests of the openai backend.")
    timeout_s: float = option(120.0, gt=0, help="Per-request timeout of the openai backend, seconds.")
    max_retries: int = option(
        5, ge=0, help="Retries of one request on 408/409/429/5xx, timeouts and connection errors."
    )
    backoff_s: float = option(
        1.0, ge=0, help="First retry delay; it doubles on every further retry (exponential backoff)."
    )
    backoff_max_s: float = option(60.0, ge=0, help="Upper bound of one retry delay.")
    strict_rating_range: bool = option(
        True,
        help="Treat a parsed rating outside [1, 10] as an invalid judgment (score -1). FastChat keeps such ratings; "
        "set false to reproduce that exactly.",
    )
    local_judge_force_rating: bool = option(
        True,
        help="Local backend only: when a judgment has no rating, let the judge model append one by greedy decoding "
        "constrained to 1-10 (see ``evaluation.mt_bench.judge.LocalJudge``).",
    )

    def __post_init__(self) -> None:
        if isinstance(self.categories, list):
            object.__setattr__(self, "categories", tuple(self.categories))
        validate(self, label="EvalConfig")

    def _check(self) -> None:
        check_judge_endpoint(self)

    @property
    def resolved_judge_model(self) -> str:
        """``judge_model``, or the backend's default (``"embedded"`` local, ``"gpt-4"`` openai) when None."""
        return self.judge_model if self.judge_model is not None else DEFAULT_JUDGE_MODELS[self.judge_backend]

    @property
    def resolved_judge_max_tokens(self) -> int:
        """``judge_max_tokens``, or the backend's default (256 local, 2048 openai) when None."""
        if self.judge_max_tokens is not None:
            return self.judge_max_tokens
        return DEFAULT_JUDGE_MAX_TOKENS[self.judge_backend]
