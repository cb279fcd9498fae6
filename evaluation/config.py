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
import re

HUB = "hub"
"""Sentinel for ``questions`` / ``judge_prompts`` / ``reference_answers``: fetch the official files."""

JUDGE_BACKENDS = ("local", "openai")
DEFAULT_JUDGE_MODELS = {"local": "embedded", "openai": "gpt-4"}
DEFAULT_JUDGE_MAX_TOKENS = {"local": 256, "openai": 2048}

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"EvalConfig.{name} must be a positive integer, got {value!r}")


def _check_positive_float(name: str, value: object, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"EvalConfig.{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"EvalConfig.{name} must be {bound}, got {value!r}")


def _check_source(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(
            f"EvalConfig.{name} must be None (bundled data), {HUB!r} (official MT-Bench files) or a file "
            f"path, got {value!r}"
        )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings for one MT-Bench run (answer generation, judging, scoring).

    Attributes:
        questions: Question source: None (bundled), ``"hub"`` or a FastChat ``question.jsonl`` path.
        judge_prompts: Judge prompt source: None (bundled), ``"hub"`` or a ``judge_prompts.jsonl`` path.
        reference_answers: Reference answers for math/reasoning/coding: None (bundled), ``"hub"`` (GPT-4
            references) or a path to a FastChat ``model_answer``-format JSONL file.
        limit: Keep only the first ``limit`` questions (in file order, after the category filter), like
            FastChat's ``--first-n``. None keeps all.
        categories: Keep only questions of these categories. None keeps all.
        max_new_tokens: Generation budget per answer turn (FastChat's ``--max-new-token``).
        generation_batch_size: Number of conversations generated together (left-padded).
        seed: Seed for sampled categories (writing/roleplay at T=0.7, stem/humanities at T=0.1).
        judge_backend: ``"local"`` (in-process transformers model) or ``"openai"`` (any OpenAI-compatible
            endpoint: OpenAI, vLLM, llama.cpp server, ...).
        judge_model: Judge model. Local backend: a model spec for ``trainers.models.load_model`` (None:
            ``"embedded"``, the bundled SmolLM2-135M-Instruct). OpenAI backend: the served model name
            (None: ``"gpt-4"`` as in FastChat). Defaults are applied by ``resolved_judge_model`` so that
            ``dataclasses.replace(cfg, judge_backend=...)`` picks the new backend's default.
        judge_base_url: Base URL of the OpenAI-compatible endpoint (e.g. ``http://host:8000/v1`` for vLLM);
            None means api.openai.com. Only valid with the openai backend.
        api_key_env: Name of the environment variable holding the API key (never the key itself).
        judge_max_tokens: Completion budget of one judgment. None (``resolved_judge_max_tokens``): 2048 for
            the openai backend (as FastChat uses for GPT-4), 256 for the local backend (a CPU-friendly budget
            for small judges).
        judge_batch_size: Batch size of the local judge.
        concurrency: Maximum number of in-flight requests of the openai backend.
        timeout_s: Per-request timeout of the openai backend, seconds.
        max_retries: Retries of one request on 408/409/429/5xx, timeouts and connection errors.
        backoff_s: First retry delay; it doubles on every further retry (exponential backoff).
        backoff_max_s: Upper bound of one retry delay.
        strict_rating_range: Treat a parsed rating outside [1, 10] as an invalid judgment (score -1).
            FastChat keeps such ratings; set False to reproduce that exactly.
        local_judge_force_rating: Local backend only: when a judgment has no rating, let the judge model
            append one by greedy decoding constrained to 1-10 (see ``evaluation.judges.LocalJudge``).
    """

    questions: str | None = None
    judge_prompts: str | None = None
    reference_answers: str | None = None
    limit: int | None = None
    categories: tuple[str, ...] | None = None
    max_new_tokens: int = 1024
    generation_batch_size: int = 8
    seed: int = 0
    judge_backend: str = "local"
    judge_model: str | None = None
    judge_base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    judge_max_tokens: int | None = None
    judge_batch_size: int = 8
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    strict_rating_range: bool = True
    local_judge_force_rating: bool = True

    def __post_init__(self) -> None:
        for name in ("questions", "judge_prompts", "reference_answers"):
            _check_source(name, getattr(self, name))
        if self.limit is not None:
            _check_positive_int("limit", self.limit)
        if self.categories is not None:
            if isinstance(self.categories, str) or not isinstance(self.categories, (list, tuple)):
                raise ValueError(f"EvalConfig.categories must be a list of category names, got {self.categories!r}")
            cats = tuple(self.categories)
            if not cats:
                raise ValueError("EvalConfig.categories must not be empty (use None to keep all categories)")
            for cat in cats:
                if not isinstance(cat, str) or not cat.strip():
                    raise ValueError(f"EvalConfig.categories entries must be non-empty strings, got {cat!r}")
            if len(set(cats)) != len(cats):
                raise ValueError(f"EvalConfig.categories has duplicates: {list(cats)}")
            object.__setattr__(self, "categories", cats)
        _check_positive_int("max_new_tokens", self.max_new_tokens)
        _check_positive_int("generation_batch_size", self.generation_batch_size)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"EvalConfig.seed must be a non-negative integer, got {self.seed!r}")
        if self.judge_backend not in JUDGE_BACKENDS:
            raise ValueError(f"EvalConfig.judge_backend must be one of {JUDGE_BACKENDS}, got {self.judge_backend!r}")
        if self.judge_model is not None and (not isinstance(self.judge_model, str) or not self.judge_model.strip()):
            raise ValueError(f"EvalConfig.judge_model must be a non-empty string, got {self.judge_model!r}")
        if self.judge_base_url is not None:
            if self.judge_backend != "openai":
                raise ValueError(
                    "EvalConfig.judge_base_url only applies to judge_backend='openai' "
                    f"(judge_backend is {self.judge_backend!r})"
                )
            if not isinstance(self.judge_base_url, str) or not self.judge_base_url.startswith(("http://", "https://")):
                raise ValueError(f"EvalConfig.judge_base_url must be an http(s) URL, got {self.judge_base_url!r}")
        # The value is deliberately not echoed: a user who pastes the key here must not see it in logs.
        if not isinstance(self.api_key_env, str) or not _ENV_NAME.fullmatch(self.api_key_env):
            raise ValueError(
                "EvalConfig.api_key_env must be the NAME of an environment variable (letters, digits, "
                "underscores, e.g. 'OPENAI_API_KEY'), not the key itself"
            )
        if self.judge_max_tokens is not None:
            _check_positive_int("judge_max_tokens", self.judge_max_tokens)
        _check_positive_int("judge_batch_size", self.judge_batch_size)
        _check_positive_int("concurrency", self.concurrency)
        _check_positive_float("timeout_s", self.timeout_s)
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"EvalConfig.max_retries must be a non-negative integer, got {retries!r}")
        _check_positive_float("backoff_s", self.backoff_s, allow_zero=True)
        _check_positive_float("backoff_max_s", self.backoff_max_s, allow_zero=True)
        if self.backoff_max_s < self.backoff_s:
            raise ValueError(f"EvalConfig.backoff_max_s ({self.backoff_max_s}) must be >= backoff_s ({self.backoff_s})")
        for name in ("strict_rating_range", "local_judge_force_rating"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"EvalConfig.{name} must be a bool, got {getattr(self, name)!r}")

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
