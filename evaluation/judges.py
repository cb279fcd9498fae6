"""MT-Bench judges behind one interface: ``Judge.complete(system, user) -> str``.

* :class:`OpenAIJudge` talks to any OpenAI-compatible chat-completions endpoint (OpenAI with GPT-4 as in
  FastChat, a vLLM or llama.cpp server with an open judge model) through the official ``openai`` client:
  greedy decoding (temperature 0), bounded concurrency, per-request timeout, and retries with exponential
  backoff on 408/409/429/5xx, timeouts and connection errors. The client's own retries are disabled so
  every retry goes through :meth:`OpenAIJudge.complete` and is counted (``retries``) and logged.
* :class:`LocalJudge` runs a transformers causal LM in process (default: the embedded SmolLM2-135M-Instruct)
  with greedy batched generation. Such a small judge rarely follows the ``[[rating]]`` format, so many of
  its judgments are invalid; it exists so that the default works offline and still produces a real score.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import openai
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evaluation.config import EvalConfig
from evaluation.generation import chat_generate, inference_mode, last_logits, render_chat
from evaluation.mt_bench_judge_prompts import parse_rating

logger = logging.getLogger(__name__)

NO_AUTH_API_KEY = "EMPTY"
"""Key sent to a self-hosted endpoint (``base_url`` set) when the key variable is unset (vLLM convention)."""

_RETRY_STATUS = frozenset({408, 409, 429})


class JudgeError(RuntimeError):
    """A judge request failed for good (non-retryable error, or retries exhausted)."""


class Judge(abc.ABC):
    """A judge model answering a (system prompt, user prompt) request with free text.

    Attributes:
        name: Judge model name recorded in FastChat's ``judge`` field of each judgment.
    """

    name: str

    @abc.abstractmethod
    def complete(self, system: str, user: str) -> str:
        """Return the judge's reply to one request."""

    def complete_batch(self, requests: Sequence[tuple[str, str]]) -> list[str]:
        """Return the replies to ``(system, user)`` requests, in order. Backends override to batch."""
        return [self.complete(system, user) for system, user in requests]


def _is_retryable(err: Exception) -> bool:
    if isinstance(err, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(err, openai.APIStatusError):
        return err.status_code in _RETRY_STATUS or err.status_code >= 500
    return False


def _retry_after_s(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class OpenAIJudge(Judge):
    """Judge served by an OpenAI-compatible chat-completions endpoint.

    Args:
        model: Served model name (``"gpt-4"``, or the name a vLLM/llama.cpp server exposes).
        base_url: Endpoint base URL such as ``http://127.0.0.1:8000/v1``; None means api.openai.com.
        api_key_env: Name of the environment variable holding the key. The key is read once here and only
            handed to the client; it is not stored on this object or logged.
        max_tokens: Completion budget per judgment.
        concurrency: Maximum number of requests in flight in :meth:`complete_batch`.
        timeout_s: Per-request timeout, seconds.
        max_retries: Retries per request on retryable errors.
        backoff_s: First retry delay; doubled on each further retry, capped by ``backoff_max_s``; a larger
            ``Retry-After`` header (up to the cap) is honoured.
        backoff_max_s: Maximum delay between two attempts.

    Raises:
        JudgeError: ``api_key_env`` is unset and no custom ``base_url`` is given.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_tokens: int = 2048,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ) -> None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            if base_url is None:
                raise JudgeError(
                    f"environment variable {api_key_env} is not set; it must hold the API key of the "
                    "OpenAI judge (or pass a base_url for a self-hosted endpoint without authentication)"
                )
            logger.info("%s is unset; sending key %r to %s", api_key_env, NO_AUTH_API_KEY, base_url)
            api_key = NO_AUTH_API_KEY
        self.name = model
        self.base_url = base_url
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0)
        self._lock = threading.Lock()
        self._retries = 0
        self._attempts = 0

    @classmethod
    def from_config(cls, cfg: EvalConfig) -> OpenAIJudge:
        """Build the judge from an :class:`EvalConfig` with ``judge_backend="openai"``."""
        return cls(
            cfg.resolved_judge_model,
            base_url=cfg.judge_base_url,
            api_key_env=cfg.api_key_env,
            max_tokens=cfg.resolved_judge_max_tokens,
            concurrency=cfg.concurrency,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            backoff_s=cfg.backoff_s,
            backoff_max_s=cfg.backoff_max_s,
        )

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.name!r}, base_url={self.base_url!r})"

    @property
    def retries(self) -> int:
        """Number of retried requests so far (all threads)."""
        return self._retries

    @property
    def attempts(self) -> int:
        """Number of HTTP requests sent so far, retries included."""
        return self._attempts

    def complete(self, system: str, user: str) -> str:
        """Send one greedy chat completion, retrying retryable failures with exponential backoff.

        Raises:
            JudgeError: A non-retryable HTTP error (e.g. 400, 401, 404), or the last retry failed.
        """
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        response = self.create(messages, max_tokens=self.max_tokens)
        return response.choices[0].message.content or ""

    def create(self, messages: list[dict[str, str]], **params):
        """One greedy chat completion with extra request ``params`` (e.g. ``logprobs``), retried as :meth:`complete`.

        Shared by every request kind (free-text judgments, AlpacaEval's one-token log-prob judgments), so they all
        get the same timeouts, retries, backoff and counting.

        Returns:
            The ``ChatCompletion`` (with at least one choice).

        Raises:
            JudgeError: A non-retryable HTTP error (e.g. 400, 401, 404), or the last retry failed.
        """
        attempt = 0
        while True:
            with self._lock:
                self._attempts += 1
            try:
                response = self._client.chat.completions.create(
                    model=self.name, messages=messages, n=1, temperature=0, **params
                )
            except openai.OpenAIError as err:
                if not _is_retryable(err):
                    status = getattr(err, "status_code", None)
                    raise JudgeError(f"judge {self.name!r} request failed (HTTP {status}, not retried): {err}") from err
                if attempt == self.max_retries:
                    raise JudgeError(
                        f"judge {self.name!r} request failed after {self.max_retries} retries: "
                        f"{type(err).__name__}: {err}"
                    ) from err
                self._wait_before_retry(err, attempt)
                attempt += 1
                continue
            if not response.choices:
                raise JudgeError(f"judge {self.name!r} returned a completion without choices")
            return response

    def _wait_before_retry(self, err: Exception, attempt: int) -> None:
        delay = min(self.backoff_max_s, self.backoff_s * 2**attempt)
        retry_after = _retry_after_s(err)
        if retry_after is not None:
            delay = min(self.backoff_max_s, max(delay, retry_after))
        with self._lock:
            self._retries += 1
        logger.warning(
            "judge %r: %s on attempt %d/%d, retrying in %.2fs",
            self.name,
            type(err).__name__,
            attempt + 1,
            self.max_retries + 1,
            delay,
        )
        time.sleep(delay)

    def complete_batch(self, requests: Sequence[tuple[str, str]]) -> list[str]:
        """Send the requests with at most ``concurrency`` in flight; replies keep the request order.

        The first request that fails for good cancels the requests not yet started and is raised.
        """
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures = [pool.submit(self.complete, system, user) for system, user in requests]
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()


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
