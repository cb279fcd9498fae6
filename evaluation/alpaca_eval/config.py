"""Configuration of an AlpacaEval 2.0 evaluation (Dubois et al., 2024, "Length-Controlled AlpacaEval",
arXiv:2404.04475).

A policy answers every instruction; a judge compares each answer with a baseline's answer to the same instruction
in AlpacaEval 2.0's weighted pairwise mode (``weighted_alpaca_eval_gpt4_turbo``); the win rate and the
length-controlled win rate summarise the preferences.

Data sources. ``instructions`` is one of

* ``None`` (default): the small instruction set bundled in ``evaluation/data/alpaca_eval_instructions.json``
  (written for this project, in AlpacaEval's model-outputs format). Works offline.
* ``"hub"``: the 805 AlpacaEval instructions, read from the JSON file ``alpaca_eval_gpt4_baseline.json`` of the
  ``tatsu-lab/alpaca_eval`` dataset repository through ``huggingface_hub`` (the repository's loading script does not
  run with ``datasets>=4``, so the file is read directly). Needs network access or a warm Hugging Face cache.
* a path to a local JSON file in AlpacaEval's format (a list of ``{instruction, output, generator, dataset}``).

``baseline`` is one of

* ``None`` (default): the sweep's reference policy (the initial model before preference training), as the DiscoPOP
  paper's "vs SFT" setting. The CLI generates its outputs with ``--baseline-model``. Works offline.
* ``"hub"``: AlpacaEval 2.0's own baseline, GPT-4 Turbo's outputs (``generator`` ``gpt4_1106_preview``), from the
  same hub file.
* a path to a model-outputs JSON file (e.g. a local copy of ``alpaca_eval_gpt4_baseline.json``).

As for MT-Bench, only the *name* of the environment variable holding the judge's API key is stored.
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

DEFAULT_ALPACA_JUDGE_MODELS = {"local": "embedded", "openai": "gpt-4-turbo"}
"""Judge models when ``judge_model`` is null; ``gpt-4-turbo`` is what ``weighted_alpaca_eval_gpt4_turbo`` names."""

_INSTRUCTIONS = f"None (bundled instructions), {HUB!r} (the 805 AlpacaEval instructions) or a file path"
_BASELINE = f"None (the reference policy), {HUB!r} (GPT-4 Turbo's outputs) or a model-outputs file path"


@dataclasses.dataclass(frozen=True)
class AlpacaEvalConfig:
    """Settings for one AlpacaEval 2.0 run (output generation, pairwise judging, win rates)."""

    instructions: str | None = option(
        None, nonempty=True, expected=_INSTRUCTIONS, help=f"Instruction source: null (bundled), {HUB!r} or a path."
    )
    baseline: str | None = option(
        None,
        nonempty=True,
        expected=_BASELINE,
        help=f"Baseline outputs: null (the reference policy, 'vs SFT'), {HUB!r} (GPT-4 Turbo) or a path.",
    )
    limit: int | None = option(None, gt=0, help="Keep only the first ``limit`` instructions (file order).")
    max_new_tokens: int = option(1024, gt=0, help="Generation budget per output (greedy decoding).")
    generation_batch_size: int = option(8, gt=0, help="Number of instructions generated together (left-padded).")
    generation_backend: GenerationBackend = option("hf", help=GENERATION_BACKEND_HELP)
    vllm_gpu_memory_utilization: float = option(0.85, gt=0, le=1, help=VLLM_GPU_MEMORY_HELP)
    judge_backend: JudgeBackend = option(
        "local",
        help="``local`` (in-process transformers model, weighted by its next-token probabilities) or ``openai`` "
        "(an OpenAI-compatible endpoint returning ``top_logprobs``: OpenAI, vLLM, llama.cpp server, ...).",
    )
    judge_model: str | None = option(
        None,
        nonempty=True,
        help="Judge model: a ``trainers.models`` spec (local; null: ``embedded``) or the served model name (openai; "
        "null: ``gpt-4-turbo`` as in AlpacaEval's ``weighted_alpaca_eval_gpt4_turbo``).",
    )
    judge_base_url: str | None = option(
        None,
        pattern=r"https?://.+",
        expected="an http(s) URL",
        help="Base URL of the OpenAI-compatible endpoint; null means api.openai.com. Only with the openai backend.",
    )
    api_key_env: str = option(
        "OPENAI_API_KEY", help="Name of the environment variable holding the API key (never the key itself)."
    )
    top_logprobs: int = option(5, gt=0, le=20, help="Log-probs requested per judgment (AlpacaEval asks for 5).")
    judge_batch_size: int = option(8, gt=0, help="Batch size of the local judge's forward passes.")
    concurrency: int = option(8, gt=0, help="Maximum number of in-flight requests of the openai backend.")
    timeout_s: float = option(120.0, gt=0, help="Per-request timeout of the openai backend, seconds.")
    max_retries: int = option(5, ge=0, help="Retries of one request on 408/409/429/5xx, timeouts, connection errors.")
    backoff_s: float = option(1.0, ge=0, help="First retry delay; it doubles on every further retry.")
    backoff_max_s: float = option(60.0, ge=0, help="Upper bound of one retry delay.")
    order_seed: int = option(
        0,
        ge=0,
        help="Seed of the per-instruction random order of the two outputs in the judge's prompt (position bias); "
        "recorded in every annotation.",
    )

    def __post_init__(self) -> None:
        validate(self, label="AlpacaEvalConfig")

    def _check(self) -> None:
        check_judge_endpoint(self)

    @property
    def resolved_judge_model(self) -> str:
        """``judge_model``, or the backend's default (``"embedded"`` local, ``"gpt-4-turbo"`` openai) when None."""
        return self.judge_model if self.judge_model is not None else DEFAULT_ALPACA_JUDGE_MODELS[self.judge_backend]
