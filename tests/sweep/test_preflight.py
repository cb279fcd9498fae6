"""Everything an evaluation needs after training is checked before any trial starts (no Ray needed)."""

from __future__ import annotations

import importlib.util
import json
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from sweep.config import load_sweep_config
from sweep.errors import SweepInputError
from sweep.scoring.alpaca_eval.preflight import check_alpaca_eval
from sweep.scoring.mt_bench.preflight import check_mt_bench
from sweep.scoring.preflight import check_generation_backends
from tests.evaluation.test_mt_bench_openai import LLAMA_ALIAS, LLAMA_KEY, llama_server  # noqa: F401 - the shared fixture
from tests.http_servers import LocalHTTPServer

SCORED = ["mt_bench.policy=all", "train.save_model=true"]
KEY_ENV = "DLRML_TEST_JUDGE_KEY"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def test_unset_judge_key_is_reported_before_any_trial(monkeypatch):
    monkeypatch.delenv("DLRML_TEST_JUDGE_KEY", raising=False)
    config = load_sweep_config(
        "smoke", [*SCORED, "mt_bench.eval.judge_backend=openai", "mt_bench.eval.api_key_env=DLRML_TEST_JUDGE_KEY"]
    )
    with pytest.raises(
        SweepInputError, match=r"mt_bench\.eval\.api_key_env: environment variable DLRML_TEST_JUDGE_KEY"
    ):
        check_mt_bench(config)


def test_unreachable_judge_endpoint_is_reported(monkeypatch):
    monkeypatch.setenv("DLRML_TEST_JUDGE_KEY", "sk-test")
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    config = load_sweep_config(
        "smoke",
        [
            *SCORED,
            "mt_bench.eval.judge_backend=openai",
            "mt_bench.eval.api_key_env=DLRML_TEST_JUDGE_KEY",
            f"mt_bench.eval.judge_base_url={url}",
        ],
    )
    with pytest.raises(SweepInputError, match=r"mt_bench\.eval\.judge_base_url: .* is not reachable"):
        check_mt_bench(config)


class FailingServer(LocalHTTPServer):
    """A real HTTP server that accepts every connection and answers every request (any method, any path) with an
    error status, except the methods listed in ``ok`` (answered ``200 {}``); it counts the requests."""

    def __init__(self, status: int, ok: tuple[str, ...] = ()) -> None:
        self.status, self.ok, self.requests = status, ok, []
        super().__init__()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
                pass

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests.append((self.command, self.path))
                ok = self.command in server.ok
                body = {"object": "list", "data": []} if ok else {"error": {"message": "the judge is overloaded"}}
                data = json.dumps(body).encode()
                self.send_response(200 if ok else server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        return Handler


@pytest.fixture
def failing_server(request) -> Iterator[FailingServer]:
    server = FailingServer(*getattr(request, "param", (503,)))
    yield server
    server.close()


def _openai_judge(benchmark: str, url: str) -> list[str]:
    return [
        f"{benchmark}.policy=all",
        f"{benchmark}.eval.judge_backend=openai",
        f"{benchmark}.eval.api_key_env={KEY_ENV}",
        f"{benchmark}.eval.judge_base_url={url}",
        f"{benchmark}.eval.max_new_tokens=64",
    ]


CHECKS = {"mt_bench": check_mt_bench, "alpaca_eval": check_alpaca_eval}


@pytest.mark.parametrize("benchmark", ["mt_bench", "alpaca_eval"])
def test_a_judge_that_answers_every_request_with_an_error_is_refused(benchmark, failing_server, monkeypatch):
    """It accepts connections (a TCP check passes it) but answers 503 to everything: refused on the first request,
    which is not retried, naming the field, the request, the status and the endpoint."""
    monkeypatch.setenv(KEY_ENV, "sk-test")
    config = load_sweep_config("smoke", _openai_judge(benchmark, failing_server.url))
    socket.create_connection(("127.0.0.1", failing_server.httpd.server_address[1]), timeout=5).close()
    with pytest.raises(SweepInputError) as info:
        CHECKS[benchmark](config)
    assert str(info.value) == (
        f"{benchmark}.eval.judge_base_url: the judge endpoint {failing_server.url} answered GET /models with HTTP 503: "
        "the judge is overloaded"
    )
    assert failing_server.requests == [("GET", "/v1/models")]


@pytest.mark.parametrize("failing_server", [(404, ("GET",))], indirect=True)
def test_a_judge_that_lists_models_but_cannot_complete_is_refused(failing_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    config = load_sweep_config("smoke", _openai_judge("mt_bench", failing_server.url))
    with pytest.raises(SweepInputError, match=r"answered a 1-token chat completion of 'gpt-4' with HTTP 404: "):
        check_mt_bench(config)
    assert failing_server.requests == [("GET", "/v1/models"), ("POST", "/v1/chat/completions")]


def test_a_failing_judge_stops_the_sweep_before_any_cluster_work(failing_server, monkeypatch, capsys, tmp_path):
    """Not a dry run: the sweep exits 2 at its input phase, before Ray starts or its experiment directory exists."""
    monkeypatch.setenv(KEY_ENV, "sk-test")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from sweep import run

    argv = ["--config", "smoke", f"storage_path={tmp_path}", *_openai_judge("alpaca_eval", failing_server.url)]
    assert run.main(argv) == run.EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert f"the judge endpoint {failing_server.url} answered GET /models with HTTP 503" in captured.err
    assert "Started a local Ray instance" not in captured.out + captured.err and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_real_llama_cpp_judge_passes_the_preflight_and_a_wrong_key_does_not(
    llama_server: str,  # noqa: F811 - the fixture imported above
    monkeypatch,
):
    for benchmark, check in CHECKS.items():
        config = load_sweep_config(
            "smoke", [*_openai_judge(benchmark, llama_server), f"{benchmark}.eval.judge_model={LLAMA_ALIAS}"]
        )
        monkeypatch.setenv(KEY_ENV, LLAMA_KEY)
        check(config)  # AlpacaEval's also finds the log-probs its weighted judge reads
        monkeypatch.setenv(KEY_ENV, "sk-wrong")
        with pytest.raises(SweepInputError, match=rf"endpoint {llama_server} answered GET /models with HTTP 401"):
            check(config)


def test_generation_budget_beyond_the_context_is_reported():
    """The smoke model's context is 2048 positions: a first turn (~60 prompt tokens + 1000) fits, but the second
    holds the first answer too (prompt + 2 x 1000 > 2048)."""
    config = load_sweep_config("smoke", [*SCORED, "mt_bench.eval.max_new_tokens=1000"])
    with pytest.raises(SweepInputError, match=r"turn 2 needs a prompt of \d+ tokens \+ 2 x max_new_tokens=1000"):
        check_mt_bench(config)


def test_a_sweep_that_scores_nothing_checks_nothing(monkeypatch):
    monkeypatch.delenv("DLRML_TEST_JUDGE_KEY", raising=False)
    config = load_sweep_config(
        "smoke",
        [
            "mt_bench.policy=none",
            "mt_bench.eval.judge_backend=openai",
            "mt_bench.eval.api_key_env=DLRML_TEST_JUDGE_KEY",
        ],
    )
    check_mt_bench(config)  # nothing will be judged: no key needed


def test_the_local_judge_with_a_fitting_budget_passes():
    check_mt_bench(load_sweep_config("smoke", [*SCORED, "mt_bench.eval.max_new_tokens=64"]))


VLLM_ON_GPU = ["resources.use_gpu=true", "train.save_model=true"]
needs_no_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="checks the error raised where vLLM is not installed"
)


@needs_no_vllm
@pytest.mark.parametrize("benchmark", ["mt_bench", "alpaca_eval"])
def test_vllm_backend_without_vllm_is_reported_naming_the_field_and_the_extra(benchmark):
    config = load_sweep_config(
        "smoke", [*VLLM_ON_GPU, f"{benchmark}.policy=all", f"{benchmark}.eval.generation_backend=vllm"]
    )
    with pytest.raises(SweepInputError) as info:
        check_generation_backends(config, local=True)
    assert f"{benchmark}.eval.generation_backend=vllm needs vLLM" in str(info.value)
    assert "pip install '.[vllm]'" in str(info.value)


def test_vllm_is_not_required_of_the_driver_on_a_cluster_or_when_nothing_is_scored():
    """On a cluster the GPU workers generate (their image holds vLLM, not the head's); policy none generates nothing."""
    on_cluster = load_sweep_config(
        "smoke", [*VLLM_ON_GPU, "mt_bench.policy=all", "mt_bench.eval.generation_backend=vllm"]
    )
    check_generation_backends(on_cluster, local=False)
    unscored = load_sweep_config(
        "smoke", [*VLLM_ON_GPU, "mt_bench.policy=none", "mt_bench.eval.generation_backend=vllm"]
    )
    check_generation_backends(unscored, local=True)


@needs_no_vllm
def test_dry_run_reports_missing_vllm_before_any_ray_work(monkeypatch, capsys, tmp_path):
    from sweep import run

    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local sweep: this machine generates
    argv = ["--config", "smoke", "--dry-run", f"storage_path={tmp_path}", *VLLM_ON_GPU]
    code = run.main([*argv, "mt_bench.policy=all", "mt_bench.eval.generation_backend=vllm"])
    assert code == run.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "mt_bench.eval.generation_backend=vllm needs vLLM" in err and "pip install '.[vllm]'" in err
    # Without resources.use_gpu the config itself is refused, naming both fields (exit 2 from argparse).
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--config", "smoke", "--dry-run", "mt_bench.policy=all", "mt_bench.eval.generation_backend=vllm"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "mt_bench.eval.generation_backend" in err and "resources.use_gpu" in err
