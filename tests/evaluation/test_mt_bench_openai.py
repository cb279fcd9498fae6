"""The ``openai`` judge backend over real HTTP.

* A small stdlib HTTP server speaking the chat-completions protocol, whose failures are scripted per
  request (500/503/429/401, sleeping past the client timeout), checks retries, backoff, timeouts, bounded
  concurrency, request contents and API-key handling, and a full ``run_mt_bench`` with known ratings.
* An independent OpenAI-compatible server, llama-cpp-python's ``llama_cpp.server`` serving the embedded
  SmolLM2-135M-Instruct GGUF, judges real answers.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from evaluation.judge_client import NO_AUTH_API_KEY, JudgeError, OpenAIJudge
from evaluation.mt_bench.config import EvalConfig
from evaluation.mt_bench.pipeline import judge_answers, load_mt_bench_data, run_mt_bench
from evaluation.mt_bench.prompts import parse_rating, rating_to_score
from tests.http_servers import LocalHTTPServer

KEY_ENV = "DLRML_TEST_JUDGE_KEY"
SECRET = "sk-dlrml-test-3c9e71b2a54f4d08"


class ScriptedChatServer(LocalHTTPServer):
    """A real HTTP server answering ``POST /v1/chat/completions``.

    Each request consumes one scripted action from ``actions`` if any: an int answers with that HTTP
    status, ``("sleep", s)`` sleeps ``s`` seconds before answering normally. A normal answer is a chat
    completion whose content is ``reply(request_body)``, sent after ``delay_s``.
    """

    def __init__(self, reply: Callable[[dict], str]) -> None:
        self.reply = reply
        self.actions: deque = deque()
        self.delay_s = 0.0
        self.requests: list[tuple[dict[str, str], dict]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        super().__init__()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
                pass

            left = False

            def _leave(self) -> None:
                # A request stops counting as in flight before its answer is written: once the client has
                # read the answer its worker may send the next request, possibly before this thread runs again.
                if not self.left:
                    self.left = True
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self._leave()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    action = server.actions.popleft() if server.actions else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if self.path != "/v1/chat/completions":
                        self._send(404, {"error": {"message": f"no route {self.path}"}})
                    elif isinstance(action, int):
                        error = {"error": {"message": f"scripted failure {action}", "type": "server_error"}}
                        self._send(action, error, {"retry-after": "0"} if action == 429 else None)
                    else:
                        if action is not None:
                            time.sleep(action[1])
                        time.sleep(server.delay_s)
                        self._send(200, _completion(body["model"], server.reply(body)))
                finally:
                    self._leave()

        return Handler


def _completion(model: str, content: str) -> dict:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@pytest.fixture
def server() -> Iterator[ScriptedChatServer]:
    srv = ScriptedChatServer(lambda body: "The answer is fine. Rating: [[7]]")
    yield srv
    srv.close()


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, SECRET)
    return KEY_ENV


def _judge(srv: ScriptedChatServer, **kwargs) -> OpenAIJudge:
    options = {"api_key_env": KEY_ENV, "timeout_s": 5.0, "backoff_s": 0.01, "backoff_max_s": 0.05}
    return OpenAIJudge("judge-x", base_url=srv.url, **(options | kwargs))


def test_retries_5xx_and_429_then_returns_rating(server: ScriptedChatServer, key_env: str) -> None:
    server.actions.extend([500, 503, 429])
    judge = _judge(server, max_retries=4, max_tokens=321)
    reply = judge.complete("system text", "user text")
    assert parse_rating(reply) == 7
    assert (judge.retries, judge.attempts, len(server.requests)) == (3, 4, 4)
    for headers, body in server.requests:
        assert headers["authorization"] == f"Bearer {SECRET}"
        assert body["model"] == "judge-x" and body["temperature"] == 0 and body["n"] == 1
        assert body["max_tokens"] == 321
        assert body["messages"] == [
            {"role": "system", "content": "system text"},
            {"role": "user", "content": "user text"},
        ]
    assert SECRET not in repr(judge)


def test_gives_up_after_max_retries(server: ScriptedChatServer, key_env: str) -> None:
    server.actions.extend([500] * 5)
    judge = _judge(server, max_retries=2)
    with pytest.raises(JudgeError, match=r"failed after 2 retries: InternalServerError"):
        judge.complete("s", "u")
    assert (judge.retries, len(server.requests)) == (2, 3)


def test_client_errors_are_not_retried(server: ScriptedChatServer, key_env: str) -> None:
    server.actions.append(401)
    judge = _judge(server, max_retries=3)
    with pytest.raises(JudgeError, match=r"HTTP 401, not retried") as err:
        judge.complete("s", "u")
    assert (judge.retries, len(server.requests)) == (0, 1)
    assert SECRET not in str(err.value)


def test_timeout_is_retried_then_fails_when_persistent(server: ScriptedChatServer, key_env: str) -> None:
    server.actions.append(("sleep", 2.0))
    judge = _judge(server, timeout_s=0.3, max_retries=2)
    assert parse_rating(judge.complete("s", "u")) == 7
    assert (judge.retries, len(server.requests)) == (1, 2)

    server.actions.extend([("sleep", 2.0), ("sleep", 2.0)])
    judge = _judge(server, timeout_s=0.3, max_retries=1)
    with pytest.raises(JudgeError, match=r"after 1 retries: APITimeoutError"):
        judge.complete("s", "u")
    assert judge.retries == 1


def test_concurrency_is_bounded_and_order_kept(key_env: str) -> None:
    srv = ScriptedChatServer(lambda body: f"Rating: [[{body['messages'][1]['content']}]]")
    try:
        srv.delay_s = 0.3
        judge = _judge(srv, concurrency=3)
        replies = judge.complete_batch([("s", str(i)) for i in range(1, 10)])
        assert [parse_rating(r) for r in replies] == list(range(1, 10))
        assert 2 <= srv.max_in_flight <= 3
    finally:
        srv.close()


def test_api_key_resolution(server: ScriptedChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(JudgeError, match=rf"environment variable {KEY_ENV} is not set"):
        OpenAIJudge("gpt-4", api_key_env=KEY_ENV)
    # A self-hosted endpoint without authentication gets the placeholder key.
    _judge(server).complete("s", "u")
    assert server.requests[-1][0]["authorization"] == f"Bearer {NO_AUTH_API_KEY}"


def _rule_based_judge(body: dict) -> str:
    """Ratings by prompt kind, for the bundled prompts: turn 1 -> 6, math turn 1 -> 12 (out of range),
    turn 2 -> 4, math turn 2 -> 3."""
    user = body["messages"][1]["content"]
    if "=== Reference conversation ===" in user:
        return "Wrong second step. Score: [[3]]"
    if "=== Conversation ===" in user:
        return "Decent follow-up. Score: [[4]]"
    if "### Reference solution" in user:
        return "Score: [[12]]"
    return "Good. Score: [[6]]"


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir: Path):
    from trainers.models import load_model

    return load_model(str(tiny_model_dir))


def test_run_mt_bench_over_http(tiny_model, tokenizer, tmp_path: Path, key_env: str) -> None:
    srv = ScriptedChatServer(_rule_based_judge)
    try:
        cfg = EvalConfig(
            categories=("writing", "math"),
            max_new_tokens=4,
            judge_backend="openai",
            judge_model="http-judge",
            judge_base_url=srv.url,
            api_key_env=key_env,
            concurrency=4,
            backoff_s=0.01,
        )
        srv.actions.extend([503, 429])
        result = run_mt_bench(tiny_model, tokenizer, cfg, tmp_path, "tiny-policy")
    finally:
        srv.close()
    # writing: t1 6, 6 / t2 4, 4; math: t1 12, 12 (outside 1-10: invalid) / t2 3, 3.
    assert (result.n_valid, result.n_invalid) == (6, 2)
    assert result.turn_scores == {1: 6.0, 2: 3.5}
    assert result.category_scores == {"math": 3.0, "writing": 5.0}
    assert result.overall == pytest.approx(26 / 6)
    assert result.as_metrics()["mt_bench/score"] == pytest.approx(26 / 6)
    assert len(srv.requests) == 8 + 2
    assert all(headers["authorization"] == f"Bearer {SECRET}" for headers, _ in srv.requests)
    records = [json.loads(line) for line in result.judgments_path.read_text().splitlines()]
    assert result.judgments_path.name == "http-judge_single.jsonl"
    assert {tuple(r["judge"]) for r in records} == {
        ("http-judge", name)
        for name in ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")
    }
    assert sorted(r["score"] for r in records) == [-1, -1, 3, 3, 4, 4, 6, 6]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(), f"API key leaked into {path}"


# ---------------------------------------------------------------- llama.cpp OpenAI-compatible server

LLAMA_ALIAS = "smollm2-135m-instruct"
LLAMA_KEY = "sk-llama-test-58b1e0f2"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` serving the embedded SmolLM2 GGUF on localhost; yields the base URL."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp is not importable: install 'llama-cpp-python[server]' to run this test")
    from trainers.models import embedded_gguf_path

    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_path()),
           "--model_alias", LLAMA_ALIAS, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
           "--n_threads", "2", "--api_key", LLAMA_KEY, "--verbose", "False"]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            request = urllib.request.Request(f"{base_url}/models", headers={"Authorization": f"Bearer {LLAMA_KEY}"})
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if LLAMA_ALIAS in response.read().decode():
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after 120 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_llama_cpp_server_judges_real_answers(llama_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, LLAMA_KEY)
    judge = OpenAIJudge(LLAMA_ALIAS, base_url=llama_server, api_key_env=KEY_ENV, max_tokens=48, timeout_s=120)
    data = load_mt_bench_data(EvalConfig(categories=("math",), limit=1))
    answers = {
        1007: [
            "The width is 5 cm and the length is 10 cm, so the area is 50 square centimetres.",
            "Each side grows by 20%, so the area grows by a factor of 1.44, i.e. by 44%.",
        ]
    }
    records = judge_answers(data, answers, judge, "handwritten")
    assert [(r["turn"], r["judge"]) for r in records] == [
        (1, [LLAMA_ALIAS, "single-math-v1"]),
        (2, [LLAMA_ALIAS, "single-math-v1-multi-turn"]),
    ]
    for rec in records:
        assert isinstance(rec["judgment"], str) and rec["judgment"].strip()
        assert rec["score"] == rating_to_score(parse_rating(rec["judgment"]), True)
        assert rec["score"] == -1 or 1 <= rec["score"] <= 10
    assert judge.retries == 0
    # A single request through the same client answers too (llama.cpp's greedy decoding is not bit-stable across
    # differently batched requests, so the text itself is not compared).
    system = data.prompts["single-math-v1"].system_prompt
    again = judge.complete(system, records[0]["user_prompt"])
    assert isinstance(again, str) and again.strip()
    judge.close()


def test_llama_cpp_server_rejects_wrong_key(llama_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    judge = OpenAIJudge(LLAMA_ALIAS, base_url=llama_server, api_key_env=KEY_ENV, max_tokens=8, max_retries=3)
    with pytest.raises(JudgeError, match=r"HTTP 401, not retried"):
        judge.complete("s", "u")
    assert judge.retries == 0
    judge.close()
