"""AlpacaEval's weighted judge over real HTTP.

* A stdlib HTTP server speaking the chat-completions protocol with ``logprobs``: it prefers the longer output with
  scripted log-probs, can fail requests (retries), omit the log-probs or send malformed ones.
* llama-cpp-python's OpenAI-compatible server (the one the MT-Bench tests use, serving the embedded
  SmolLM2-135M-Instruct GGUF), which implements ``logprobs`` / ``top_logprobs`` on chat completions, judges real pairs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from evaluation.alpaca_eval.config import AlpacaEvalConfig
from evaluation.alpaca_eval.data import BUNDLED_FILE, ModelOutput, load_annotations, write_model_outputs
from evaluation.alpaca_eval.judge import OpenAIPairJudge
from evaluation.alpaca_eval.pipeline import score_outputs
from evaluation.judge_client import JudgeError
from tests.evaluation.test_alpaca_eval import shown_outputs
from tests.evaluation.test_mt_bench_openai import LLAMA_ALIAS, LLAMA_KEY, llama_server  # noqa: F401 - the shared fixture
from tests.http_servers import LocalHTTPServer

KEY_ENV = "DLRML_TEST_JUDGE_KEY"
SECRET = "sk-alpaca-test-7f1d20c9"


class LogprobChatServer(LocalHTTPServer):
    """``POST /v1/chat/completions`` answering one token with ``top_logprobs``: ``m`` at log-prob -0.2 and ``M`` at
    -1.7 when the first output is longer, the reverse otherwise. ``mode`` is ``"ok"``, ``"no_logprobs"`` or
    ``"malformed"``; ``actions`` holds HTTP statuses to answer the next requests with."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.actions: deque[int] = deque()
        self.requests: list[tuple[dict[str, str], dict]] = []
        self._lock = threading.Lock()
        super().__init__()

    def completion(self, body: dict) -> dict:
        first, second = shown_outputs((body["messages"][0]["content"], body["messages"][1]["content"]))
        best, other = ("m", "M") if len(first) > len(second) else ("M", "m")
        top = [{"token": best, "logprob": -0.2}, {"token": other, "logprob": -1.7}, {"token": "The", "logprob": -6.0}]
        if self.mode == "malformed":
            top[0]["logprob"] = "-0.2?"
        logprobs = {"content": [{"token": best, "logprob": -0.2, "top_logprobs": top}]}
        choice = {"index": 0, "message": {"role": "assistant", "content": best}, "finish_reason": "length"}
        if self.mode != "no_logprobs":
            choice["logprobs"] = logprobs
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    action = server.actions.popleft() if server.actions else None
                status, payload = (action, {"error": {"message": "scripted"}}) if action else (200, None)
                data = json.dumps(payload or server.completion(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LogprobChatServer]:
    monkeypatch.setenv(KEY_ENV, SECRET)
    srv = LogprobChatServer()
    yield srv
    srv.close()


def _files(tmp_path: Path, n: int = 4) -> tuple[AlpacaEvalConfig, Path]:
    """Config with the bundled outputs as baseline, and model outputs longer on even rows, shorter on odd ones."""
    cfg = AlpacaEvalConfig(baseline=str(BUNDLED_FILE), limit=n, judge_backend="openai", api_key_env=KEY_ENV)
    rows = json.loads(BUNDLED_FILE.read_text())[:n]
    outputs = [
        ModelOutput(r["instruction"], r["output"] + " More detail." if k % 2 == 0 else "Short.", "model", r["dataset"])
        for k, r in enumerate(rows)
    ]
    return cfg, write_model_outputs(tmp_path / "model_outputs.json", outputs)


def _judge(cfg: AlpacaEvalConfig, url: str) -> OpenAIPairJudge:
    cfg = dataclasses.replace(cfg, judge_base_url=url, backoff_s=0.01, backoff_max_s=0.05)
    return OpenAIPairJudge.from_config(cfg)


def test_weighted_judgments_over_http_with_retries(server: LogprobChatServer, tmp_path: Path) -> None:
    cfg, outputs = _files(tmp_path)
    server.actions.extend([503, 429])
    judge = _judge(cfg, server.url)
    result = score_outputs(outputs, cfg, tmp_path, judge=judge)
    judge.close()
    p_best = 1 / (1 + math.exp(-1.5))  # exp(-0.2) / (exp(-0.2) + exp(-1.7))
    annotations = load_annotations(result.annotations_path)
    expected = [1 + p_best if k % 2 == 0 else 2 - p_best for k in range(4)]
    assert [a["preference"] for a in annotations] == pytest.approx(expected)
    assert result.win_rate == pytest.approx(50.0) and judge.judge.retries == 2
    headers, body = server.requests[-1]
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert (body["max_tokens"], body["logprobs"], body["top_logprobs"], body["temperature"]) == (1, True, 5, 0)
    assert SECRET not in result.annotations_path.read_text()


def test_endpoint_without_logprobs_is_a_clear_error(server: LogprobChatServer, tmp_path: Path) -> None:
    cfg, outputs = _files(tmp_path, n=2)
    server.mode = "no_logprobs"
    with pytest.raises(JudgeError, match="returned no log-probs .* supports logprobs/top_logprobs"):
        score_outputs(outputs, cfg, tmp_path, judge=_judge(cfg, server.url))


def test_malformed_logprobs_are_recorded_as_unusable(server: LogprobChatServer, tmp_path: Path) -> None:
    cfg, outputs = _files(tmp_path, n=2)
    server.mode = "malformed"
    result = score_outputs(outputs, cfg, tmp_path, judge=_judge(cfg, server.url))
    annotations = load_annotations(result.annotations_path)
    assert all(math.isnan(a["preference"]) and "malformed log-prob '-0.2?'" in a["problem"] for a in annotations)
    assert result.metrics["n_invalid"] == 2 and math.isnan(result.win_rate)


def test_llama_cpp_server_judges_real_pairs(
    llama_server: str,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv(KEY_ENV, LLAMA_KEY)
    cfg, outputs = _files(tmp_path, n=2)
    cfg = dataclasses.replace(cfg, judge_model=LLAMA_ALIAS, top_logprobs=20)
    judge = _judge(cfg, llama_server)
    result = score_outputs(outputs, cfg, tmp_path, judge=judge)
    judge.close()
    annotations = load_annotations(result.annotations_path)
    assert all("top_logprobs=" in a["raw_completion"] for a in annotations)
    usable = [a for a in annotations if not math.isnan(a["preference"])]
    assert usable, [a["problem"] for a in annotations]  # the 135M judge puts m or M among its top 20 tokens
    assert all(1 <= a["preference"] <= 2 for a in usable)
    assert 0 <= result.win_rate <= 100
