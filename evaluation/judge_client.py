"""The judge transport both benchmarks share: ``Judge.complete(system, user) -> str`` and an OpenAI-compatible client.

* :class:`OpenAIJudge` talks to any OpenAI-compatible chat-completions endpoint (OpenAI with GPT-4 as in
  FastChat, a vLLM or llama.cpp server with an open judge model) through the official ``openai`` client:
  greedy decoding (temperature 0), bounded concurrency, per-request timeout, and retries with exponential
  backoff on 408/409/429/5xx, timeouts and connection errors. The client's own retries are disabled so
  every retry goes through :meth:`OpenAIJudge.complete` and is counted (``retries``) and logged.

MT-Bench's local judge is :class:`evaluation.mt_bench.judge.LocalJudge`; AlpacaEval's pairwise judges
(:mod:`evaluation.alpaca_eval.judge`) send their requests through :meth:`OpenAIJudge.create`.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import openai

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


def _error_text(err: openai.APIStatusError) -> str:
    """The server's own words for an error status: its JSON ``error.message`` or the start of its body."""
    body = err.body
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:300]
    return (err.response.text.strip() or err.response.reason_phrase)[:300]


def _retry_after_s(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class OpenAIJudgeSettings(Protocol):
    """The judge fields of a benchmark config that :meth:`OpenAIJudge.from_config` reads."""

    judge_base_url: str | None
    api_key_env: str
    concurrency: int
    timeout_s: float
    max_retries: int
    backoff_s: float
    backoff_max_s: float

    @property
    def resolved_judge_model(self) -> str: ...

    @property
    def resolved_judge_max_tokens(self) -> int: ...


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
    def from_config(cls, cfg: OpenAIJudgeSettings) -> OpenAIJudge:
        """Build the judge from a benchmark config with ``judge_backend="openai"``."""
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

    def probe(self, **params):
        """One cheap round trip before any real work, without retries: ``GET /models``, then a 1-token greedy chat
        completion of the judge model with extra request ``params`` (e.g. ``logprobs``).

        Returns:
            The ``ChatCompletion``.

        Raises:
            JudgeError: The endpoint answered either request with an error (naming the request, the HTTP status and
                the endpoint), could not be reached, or returned no choice.
        """
        client = self._client.with_options(max_retries=0)
        endpoint = str(client.base_url).rstrip("/")
        messages = [{"role": "user", "content": "Reply with OK."}]
        requests = (
            ("GET /models", client.models.list),
            (
                f"a 1-token chat completion of {self.name!r}",
                lambda: client.chat.completions.create(
                    model=self.name, messages=messages, n=1, temperature=0, max_tokens=1, **params
                ),
            ),
        )
        response = None
        for what, send in requests:
            try:
                response = send()
            except openai.APIStatusError as err:
                raise JudgeError(
                    f"the judge endpoint {endpoint} answered {what} with HTTP {err.status_code}: {_error_text(err)}"
                ) from None
            except openai.APIConnectionError as err:  # includes APITimeoutError
                raise JudgeError(f"the judge endpoint {endpoint} is not reachable ({what}: {err})") from None
        if not response.choices:
            raise JudgeError(f"the judge endpoint {endpoint} returned a chat completion without choices")
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
