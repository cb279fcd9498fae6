"""Checks, before any trial starts, of everything MT-Bench will need after training (see
:mod:`sweep.scoring.preflight`)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from evaluation.generation.hf import render_chat
from evaluation.judge_client import JudgeError, OpenAIJudge
from evaluation.mt_bench.config import EvalConfig
from evaluation.mt_bench.pipeline import MTBenchData, load_mt_bench_data
from sweep.config import SweepConfig
from sweep.errors import SweepInputError
from sweep.scoring.preflight import check_judge


def check_mt_bench(config: SweepConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Everything MT-Bench will need after training, when ``mt_bench.policy`` selects any trial.

    Args:
        config: The sweep config.
        tokenizer: The policy's tokenizer if the caller has it loaded already (else loaded here).

    Raises:
        SweepInputError: Questions or judge files unreadable, the judge's API key unset, its endpoint unreachable or
            answering an error, or a question's prompt plus the generation budget beyond the policy model's context.
    """
    if config.mt_bench.policy == "none":
        return
    cfg = config.mt_bench.eval
    try:
        data = load_mt_bench_data(cfg)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise SweepInputError(f"mt_bench.eval (questions / judge prompts / references): {err}") from None
    if cfg.judge_backend == "openai":
        _check_openai_judge(cfg)
    _check_context(config.train.model, data, cfg.max_new_tokens, tokenizer)


def _check_openai_judge(cfg: EvalConfig) -> None:
    try:
        judge = OpenAIJudge.from_config(cfg)
    except JudgeError as err:
        raise SweepInputError(f"mt_bench.eval.api_key_env: {err}") from None
    check_judge(judge, "mt_bench.eval.judge_base_url")


def _check_context(
    model: str, data: MTBenchData, max_new_tokens: int, tokenizer: PreTrainedTokenizerBase | None
) -> None:
    """The longest conversation the answers need, with both turns' budgets, must fit the model's context.

    The second turn's prompt holds the first answer (up to ``max_new_tokens``), so a question needs its two user
    turns rendered with the chat template plus ``2 * max_new_tokens`` positions.
    """
    from transformers import AutoConfig

    from trainers.models import load_tokenizer, resolve_model_path

    path = resolve_model_path(model)
    context = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
    if context is None:
        return
    tokenizer = tokenizer or load_tokenizer(model)
    for question in data.questions:
        messages = []
        for turn, text in enumerate(question.turns, start=1):
            messages.append({"role": "user", "content": text})
            tokens = len(tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"])
            needed = tokens + turn * max_new_tokens
            if needed > context:
                raise SweepInputError(
                    f"mt_bench.eval.max_new_tokens: question {question.question_id} turn {turn} needs a prompt of "
                    f"{tokens} tokens + {turn} x max_new_tokens={max_new_tokens} = {needed} positions, beyond the "
                    f"model's context length of {context}; lower mt_bench.eval.max_new_tokens"
                )
            messages.append({"role": "assistant", "content": ""})
