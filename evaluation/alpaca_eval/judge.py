"""AlpacaEval 2.0's weighted pairwise judge (``weighted_alpaca_eval_gpt4_turbo``), over HTTP or in process.

The judge sees the instruction and two outputs labelled ``m`` (shown first) and ``M`` (shown second) in AlpacaEval's
``alpaca_eval_clf_gpt4_turbo`` prompt, and answers with one token, the label of the better output. AlpacaEval
requests ``max_tokens=1``, ``logprobs=true``, ``top_logprobs=5`` and reads the preference from the log-probs of
that first token (``completion_parsers.logprob_parser`` with ``numerator_token="m"``,
``denominator_tokens=["m", "M"]``): ``P(first better) = P(m) / (P(m) + P(M))``, a label absent from the top
log-probs counting as probability 0; neither present means no judgment (NaN).

* :class:`OpenAIPairJudge` sends those requests through :meth:`evaluation.judge_client.OpenAIJudge.create`, so it
  has the MT-Bench judge's key handling, timeouts, retries, backoff and bounded concurrency. It decodes greedily
  (temperature 0; AlpacaEval sends temperature 1 and notes it has no effect on the log-probs) and also accepts a
  label token with surrounding whitespace (``" M"``), which space-prefixing tokenizers emit.
* :class:`LocalPairJudge` is the analogue for offline use: a transformers model reads the same prompt and the two
  labels' next-token probabilities are taken from its logits (one forward pass per judgment), so, like the MT-Bench
  local judge's constrained rating, every judgment is the model's own, if weak, verdict.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evaluation.alpaca_eval.config import AlpacaEvalConfig
from evaluation.generation.hf import inference_mode, last_logits, render_chat
from evaluation.judge_client import JudgeError, OpenAIJudge

FIRST, SECOND = "m", "M"
"""Labels of the output shown first and second (AlpacaEval's numerator and other denominator token)."""

SYSTEM_PROMPT = (
    "You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) based on "
    "the quality of their responses to a given instruction. This process will be used to create a leaderboard "
    "reflecting the most accurate and human-preferred answers."
)
USER_TEMPLATE = """I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.

## Instruction

{{
    "instruction": \"\"\"{instruction}\"\"\",
}}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{{
    {{
        "model_identifier": "m",
        "output": \"\"\"{output_1}\"\"\"
    }},
    {{
        "model_identifier": "M",
        "output": \"\"\"{output_2}\"\"\"
    }}
}}

## Task

Evaluate the models based on the quality and relevance of their outputs, and select the model that generated the best output. Answer by providing the model identifier of the best model. We will use your output as the name of the best model, so make sure your output only contains one of the following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): m or M.

## Best Model Identifier"""  # noqa: E501 - AlpacaEval's prompt (alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt), verbatim


def render_pair_prompt(instruction: str, first: str, second: str) -> tuple[str, str]:
    """The ``(system, user)`` messages asking which of ``first`` (``m``) and ``second`` (``M``) is better."""
    return SYSTEM_PROMPT, USER_TEMPLATE.format(instruction=instruction, output_1=first, output_2=second)


@dataclasses.dataclass(frozen=True)
class PairJudgment:
    """One weighted judgment.

    Attributes:
        p_first: Probability that the output shown first (``m``) is the better one; NaN when unusable.
        raw: What the judge returned, for the record (the completion and its top log-probs).
        problem: Why ``p_first`` is NaN, else None.
    """

    p_first: float
    raw: str
    problem: str | None = None


def parse_top_logprobs(top_logprobs: Any) -> PairJudgment:
    """AlpacaEval's weighted preference from the top log-probs of the judge's first token.

    Args:
        top_logprobs: A sequence of ``(token, logprob)`` pairs or of objects / dicts with ``token`` and ``logprob``.

    Returns:
        The judgment; NaN with a ``problem`` when the list is malformed (a non-numeric, non-finite or positive
        log-prob, an entry without token) or holds neither label.
    """
    raw = repr(top_logprobs)[:500]
    if not isinstance(top_logprobs, Sequence) or isinstance(top_logprobs, str | bytes):
        return PairJudgment(math.nan, raw, f"top_logprobs is not a list: {type(top_logprobs).__name__}")
    probs = {FIRST: 0.0, SECOND: 0.0}
    found = False
    for entry in top_logprobs:
        token, logprob = _token_logprob(entry)
        if not isinstance(token, str):
            return PairJudgment(math.nan, raw, f"malformed top_logprobs entry {entry!r}")
        if isinstance(logprob, bool) or not isinstance(logprob, int | float) or not logprob <= 1e-6:
            return PairJudgment(math.nan, raw, f"malformed log-prob {logprob!r} for token {token!r}")
        if token.strip() in probs:
            probs[token.strip()] += math.exp(logprob)
            found = True
    if not found:
        return PairJudgment(math.nan, raw, f"neither {FIRST!r} nor {SECOND!r} among the top log-probs")
    return PairJudgment(probs[FIRST] / (probs[FIRST] + probs[SECOND]), raw)


def _token_logprob(entry: Any) -> tuple[Any, Any]:
    if isinstance(entry, dict):
        return entry.get("token"), entry.get("logprob")
    if isinstance(entry, tuple | list) and len(entry) == 2:
        return entry[0], entry[1]
    return getattr(entry, "token", None), getattr(entry, "logprob", None)


class PairJudge(abc.ABC):
    """A judge answering ``(system, user)`` pairwise prompts with a :class:`PairJudgment` each.

    Attributes:
        name: The annotator name recorded in the annotations.
    """

    name: str

    @abc.abstractmethod
    def judge_pairs(self, requests: Sequence[tuple[str, str]]) -> list[PairJudgment]:
        """Judge every request, in order."""

    def close(self) -> None:  # noqa: B027 - only network judges hold something to close
        """Release what the judge holds."""


class OpenAIPairJudge(PairJudge):
    """Weighted judge over an OpenAI-compatible chat-completions endpoint that returns ``top_logprobs``.

    Raises (from :meth:`judge_pairs`):
        JudgeError: A request failed for good, or the endpoint returned a completion without log-probs (it does not
            support ``logprobs`` on chat completions, so no judgment could ever be read).
    """

    def __init__(self, judge: OpenAIJudge, top_logprobs: int = 5) -> None:
        self.judge = judge
        self.name = judge.name
        self.top_logprobs = top_logprobs

    @classmethod
    def from_config(cls, cfg: AlpacaEvalConfig) -> OpenAIPairJudge:
        """Build it from an :class:`AlpacaEvalConfig` (``judge_backend="openai"``); JudgeError if the key is unset."""
        judge = OpenAIJudge(
            cfg.resolved_judge_model,
            base_url=cfg.judge_base_url,
            api_key_env=cfg.api_key_env,
            max_tokens=1,
            concurrency=cfg.concurrency,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            backoff_s=cfg.backoff_s,
            backoff_max_s=cfg.backoff_max_s,
        )
        return cls(judge, cfg.top_logprobs)

    def __repr__(self) -> str:
        return f"OpenAIPairJudge({self.judge!r}, top_logprobs={self.top_logprobs})"

    def _one(self, request: tuple[str, str]) -> PairJudgment:
        system, user = request
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        response = self.judge.create(messages, max_tokens=1, logprobs=True, top_logprobs=self.top_logprobs)
        choice = response.choices[0]
        content = getattr(choice.logprobs, "content", None) if choice.logprobs is not None else None
        if not content:
            raise JudgeError(
                f"judge {self.name!r} returned no log-probs (completion {choice.message.content!r}); AlpacaEval's "
                "weighted judge needs an endpoint that supports logprobs/top_logprobs on chat completions"
            )
        judgment = parse_top_logprobs(content[0].top_logprobs)
        return dataclasses.replace(judgment, raw=f"{choice.message.content!r} top_logprobs={judgment.raw}")

    def judge_pairs(self, requests: Sequence[tuple[str, str]]) -> list[PairJudgment]:
        """Judge with at most ``concurrency`` requests in flight; the first failure cancels the rest and is raised."""
        pool = ThreadPoolExecutor(max_workers=self.judge.concurrency)
        try:
            futures = [pool.submit(self._one, request) for request in requests]
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Close the HTTP client."""
        self.judge.close()


class LocalPairJudge(PairJudge):
    """Weighted judge on an in-process causal LM: ``P(m)`` and ``P(M)`` from its next-token logits.

    Args:
        model: Causal LM with a chat template on its tokenizer.
        tokenizer: Its tokenizer; must encode ``m`` and ``M`` as single tokens.
        name: Annotator name recorded in the annotations.
        batch_size: Prompts per forward pass.

    Raises:
        ValueError: The tokenizer splits a label into several tokens.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, batch_size: int = 8):
        self.model, self.tokenizer, self.name, self.batch_size = model, tokenizer, name, batch_size
        ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in (FIRST, SECOND)]
        if any(len(i) != 1 for i in ids):
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} does not encode 'm' and 'M' as single tokens")
        self.label_ids = [i[0] for i in ids]

    @classmethod
    def from_config(cls, cfg: AlpacaEvalConfig, device: Any = None) -> LocalPairJudge:
        """Load ``cfg.resolved_judge_model`` (a ``trainers.models`` spec, default ``"embedded"``) as the judge."""
        from trainers.models import load_model, load_tokenizer

        spec = cfg.resolved_judge_model
        model = load_model(spec)
        if device is not None:
            model = model.to(device)
        return cls(model, load_tokenizer(spec), spec, batch_size=cfg.judge_batch_size)

    def __repr__(self) -> str:
        return f"LocalPairJudge(name={self.name!r})"

    def judge_pairs(self, requests: Sequence[tuple[str, str]]) -> list[PairJudgment]:
        """One forward pass per prompt (batched); the two labels' probabilities renormalised between themselves."""
        sequences = []
        for system, user in requests:
            text = render_chat(
                self.tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": user}]
            )
            sequences.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with inference_mode(self.model):
            logits = last_logits(self.model, sequences, pad_id, self.batch_size, 1)[:, -1]
        logprobs = logits.log_softmax(-1)[:, self.label_ids]
        judgments = []
        for first, second in logprobs.tolist():
            top = [(FIRST, first), (SECOND, second)]
            judgments.append(parse_top_logprobs(top))
        return judgments


def build_pair_judge(cfg: AlpacaEvalConfig, device: Any = None) -> PairJudge:
    """The judge ``cfg.judge_backend`` selects (``device`` places a local judge model)."""
    if cfg.judge_backend == "openai":
        return OpenAIPairJudge.from_config(cfg)
    return LocalPairJudge.from_config(cfg, device=device)
