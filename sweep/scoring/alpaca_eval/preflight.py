"""Checks, before any trial starts, of everything AlpacaEval will need after training (see
:mod:`sweep.scoring.preflight`)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from evaluation.alpaca_eval.judge import SYSTEM_PROMPT, OpenAIPairJudge, render_pair_prompt
from evaluation.alpaca_eval.pipeline import load_alpaca_eval_data
from evaluation.generation.hf import render_chat
from evaluation.judge_client import JudgeError
from sweep.config import SweepConfig
from sweep.errors import SweepInputError
from sweep.scoring.preflight import check_judge


def check_alpaca_eval(config: SweepConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Everything AlpacaEval will need after training, when ``alpaca_eval.policy`` selects any trial.

    Args:
        config: The sweep config.
        tokenizer: The policy's tokenizer if the caller has it loaded already (else loaded here).

    Raises:
        SweepInputError: Instruction or baseline files unreadable or mismatched, the judge's API key unset, its
            endpoint unreachable or answering an error (or without log-probs), or an instruction plus the generation
            budget beyond the policy's context (or, with the local judge, a judge prompt holding two outputs of that
            budget beyond the judge's context).
    """
    if config.alpaca_eval.policy == "none":
        return
    cfg = config.alpaca_eval.eval
    try:
        data = load_alpaca_eval_data(cfg)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise SweepInputError(f"alpaca_eval.eval (instructions / baseline): {err}") from None
    if cfg.judge_backend == "openai":
        _check_openai_judge(cfg)
    from trainers.models import load_tokenizer

    tokenizer = tokenizer or load_tokenizer(config.train.model)
    longest = max((i.instruction for i in data.instructions), key=len)
    policy_prompt = render_chat(tokenizer, [{"role": "user", "content": longest}])
    _fits(config.train.model, tokenizer, policy_prompt, cfg.max_new_tokens, "the policy's prompt")
    if cfg.judge_backend == "local":
        # The judge reads the instruction and both outputs; each output holds up to max_new_tokens tokens.
        _, user = render_pair_prompt(longest, "", "")
        judge_prompt = render_chat(
            tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
        )
        _fits(cfg.resolved_judge_model, tokenizer, judge_prompt, 2 * cfg.max_new_tokens + 1, "the local judge's prompt")


def _check_openai_judge(cfg) -> None:
    """The key is set and the endpoint answers a 1-token completion with the log-probs the weighted judge reads."""
    try:
        judge = OpenAIPairJudge.from_config(cfg).judge
    except JudgeError as err:
        raise SweepInputError(f"alpaca_eval.eval.api_key_env: {err}") from None
    field = "alpaca_eval.eval.judge_base_url"
    response = check_judge(judge, field, logprobs=True, top_logprobs=cfg.top_logprobs)
    logprobs = response.choices[0].logprobs
    if not (getattr(logprobs, "content", None) if logprobs is not None else None):
        raise SweepInputError(
            f"{field}: the judge {cfg.resolved_judge_model!r} at {judge.base_url or 'api.openai.com'} returned no "
            "log-probs on a chat completion; AlpacaEval's weighted judge needs logprobs/top_logprobs"
        )


def _fits(model: str, tokenizer: PreTrainedTokenizerBase, prompt: str, budget: int, what: str) -> None:
    from transformers import AutoConfig

    from trainers.models import resolve_model_path

    context = getattr(AutoConfig.from_pretrained(resolve_model_path(model)), "max_position_embeddings", None)
    tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if context is not None and tokens + budget > context:
        raise SweepInputError(
            f"alpaca_eval.eval.max_new_tokens: {what} for the longest instruction needs {tokens} tokens + {budget} "
            f"generated/judged = {tokens + budget} positions, beyond the context length {context} of {model}; lower "
            "alpaca_eval.eval.max_new_tokens"
        )
