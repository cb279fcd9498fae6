"""Everything an evaluation needs after training is checked before any trial starts (no Ray needed)."""

from __future__ import annotations

import importlib.util
import socket

import pytest

from sweep.config import load_sweep_config
from sweep.errors import SweepInputError
from sweep.scoring.mt_bench.preflight import check_mt_bench
from sweep.scoring.preflight import check_generation_backends

SCORED = ["mt_bench.policy=all", "train.save_model=true"]


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
