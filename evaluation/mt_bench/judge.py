"""MT-Bench's judges: :func:`build_judge` picks the OpenAI-compatible transport
(:class:`evaluation.judge_client.OpenAIJudge`) or :class:`LocalJudge`.

:class:`LocalJudge` runs a transformers causal LM in process (default: the embedded SmolLM2-135M-Instruct) with
greedy batched generation. Such a small judge rarely follows the ``[[rating]]`` format, so many of its judgments
are invalid; it exists so that the default works offline and still produces a real score.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evaluation.generation.hf import chat_generate, inference_mode, last_logits, render_chat
from evaluation.judge_client import Judge, OpenAIJudge
from evaluation.mt_bench.config import EvalConfig
from evaluation.mt_bench.prompts import parse_rating

logger = logging.getLogger(__name__)


RATING_CUE = "\n\nRating: [["
"""Text appended to a local judgment without rating, after which the rating is decoded under constraint."""


class _RatingTokens:
    """Token ids for greedy decoding of a rating constrained to the grammar ``[1-9] | 10`` then ``]]``.

    Works for tokenizers that encode 1-9 as single tokens and 10 either as one token (e.g. Llama 3) or as
    the tokens of "1" and "0" (digit-splitting tokenizers such as SmolLM2's).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        ids = {k: tokenizer(str(k), add_special_tokens=False)["input_ids"] for k in range(1, 11)}
        if any(len(ids[k]) != 1 for k in range(1, 10)):
            raise ValueError(
                f"tokenizer {tokenizer.name_or_path!r} does not encode the digits 1-9 as single tokens; "
                "the local judge cannot constrain its rating (use force_rating=False)"
            )
        self.first = {ids[k][0]: k for k in range(1, 10)}
        self.zero: int | None = None
        if len(ids[10]) == 1:
            self.first[ids[10][0]] = 10
        elif len(ids[10]) == 2 and ids[10][0] == ids[1][0]:
            self.zero = ids[10][1]
            self.one = ids[1][0]
            self.close = tokenizer("]]", add_special_tokens=False)["input_ids"][0]
        else:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} encodes 10 as {ids[10]}; cannot rate 1-10")

    def decode(self, logits: torch.Tensor) -> int:
        """Greedy constrained rating from logits ``(2, vocab)`` (without "10" as one token: ``(1, vocab)``).

        ``logits[0]`` predicts the token after the cue; with digit-split tokenizers ``logits[1]`` predicts
        the token after the cue plus "1", where "0" (rating 10) competes with "]]" (rating 1).
        """
        first_ids = list(self.first)
        rating = self.first[first_ids[int(torch.argmax(logits[0, first_ids]))]]
        if rating == 1 and self.zero is not None and logits[1, self.zero] > logits[1, self.close]:
            rating = 10
        return rating

    def continuation(self) -> list[int]:
        """Tokens appended after the cue so that one forward pass yields the logits ``decode`` needs."""
        return [self.one] if self.zero is not None else []


class LocalJudge(Judge):
    """Judge running an in-process transformers causal LM with greedy, batched generation.

    The judge first writes its judgment freely (greedy). A small judge such as the embedded
    SmolLM2-135M-Instruct almost never ends it with the ``[[rating]]`` FastChat asks for, which would leave
    every judgment invalid. With ``force_rating`` (default), a judgment in which FastChat's parser finds no
    rating is continued with ``"\n\nRating: [["`` and the judge model itself picks the rating by greedy
    decoding constrained to 1-10 (constrained decoding, as in grammar-guided generation); the appended text
    ``"\n\nRating: [[k]]"`` is part of the recorded judgment. The score is thus the model's own, if weak,
    verdict. Judgments that already contain a rating are left untouched.

    Args:
        model: Causal LM with a chat template on its tokenizer.
        tokenizer: Its tokenizer.
        name: Name recorded in the judgments (e.g. the model spec).
        max_new_tokens: Generation budget of the free-text judgment.
        batch_size: Requests per forward/``generate`` call.
        force_rating: Append a constrained rating to judgments without one (see above).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        *,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        force_rating: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self._rating_tokens = _RatingTokens(tokenizer) if force_rating else None

    @classmethod
    def from_config(cls, cfg: EvalConfig, device: str | torch.device | None = None) -> LocalJudge:
        """Load ``cfg.resolved_judge_model`` (a ``trainers.models`` spec, default ``"embedded"``) as the judge.

        Args:
            cfg: Evaluation settings.
            device: Device to place the judge model on; None keeps it where it loads (CPU).
        """
        from trainers.models import load_model, load_tokenizer

        spec = cfg.resolved_judge_model
        model = load_model(spec)
        if device is not None:
            model = model.to(device)
        return cls(
            model,
            load_tokenizer(spec),
            spec,
            max_new_tokens=cfg.resolved_judge_max_tokens,
            batch_size=cfg.judge_batch_size,
            force_rating=cfg.local_judge_force_rating,
        )

    def __repr__(self) -> str:
        return (
            f"LocalJudge(name={self.name!r}, max_new_tokens={self.max_new_tokens}, "
            f"force_rating={self._rating_tokens is not None})"
        )

    def complete(self, system: str, user: str) -> str:
        """Return the judgment of one request."""
        return self.complete_batch([(system, user)])[0]

    def complete_batch(self, requests: Sequence[tuple[str, str]]) -> list[str]:
        """Return the judgments of the requests, generated in batches of ``batch_size``."""
        conversations = [
            [{"role": "system", "content": system}, {"role": "user", "content": user}] for system, user in requests
        ]
        with inference_mode(self.model):
            replies = chat_generate(
                self.model,
                self.tokenizer,
                conversations,
                max_new_tokens=self.max_new_tokens,
                temperature=0.0,
                batch_size=self.batch_size,
            )
            if self._rating_tokens is None:
                return replies
            missing = [i for i, reply in enumerate(replies) if parse_rating(reply) == -1]
            if missing:
                ratings = self._constrained_ratings(
                    self._rating_tokens, [conversations[i] for i in missing], [replies[i] for i in missing]
                )
                for i, rating in zip(missing, ratings, strict=True):
                    replies[i] = f"{replies[i]}{RATING_CUE}{rating}]]"
        return replies

    def _constrained_ratings(
        self, rating_tokens: _RatingTokens, conversations: list[list[dict[str, str]]], replies: list[str]
    ) -> list[int]:
        """Continue each conversation + reply with ``RATING_CUE`` and decode the constrained rating."""
        sequences = []
        for messages, reply in zip(conversations, replies, strict=True):
            text = render_chat(self.tokenizer, messages) + reply + RATING_CUE
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            sequences.append(ids + rating_tokens.continuation())
        n_last = 1 + len(rating_tokens.continuation())
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        logits = last_logits(self.model, sequences, pad_id, self.batch_size, n_last)
        return [rating_tokens.decode(row) for row in logits]


def build_judge(cfg: EvalConfig, device: str | torch.device | None = None) -> Judge:
    """Create the judge selected by ``cfg.judge_backend`` (``device`` places a local judge model)."""
    if cfg.judge_backend == "openai":
        return OpenAIJudge.from_config(cfg)
    return LocalJudge.from_config(cfg, device=device)
