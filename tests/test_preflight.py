"""Everything an evaluation needs after training is checked before any trial starts (no Ray needed)."""

from __future__ import annotations

import socket

import pytest

from sweep.config import load_sweep_config
from sweep.preflight import SweepInputError, check_mt_bench

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
