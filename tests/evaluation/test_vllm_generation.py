"""The generation backends: FastChat settings mapped to vLLM's ``SamplingParams``, the turn logic both backends share,
the backend dispatch for a saved model, the clear errors without vLLM, and (on a GPU with the ``vllm`` extra) the vLLM
backend end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from evaluation.alpaca_eval.config import AlpacaEvalConfig
from evaluation.alpaca_eval.pipeline import write_alpaca_outputs
from evaluation.generation.vllm import VLLMUnavailableError, request_seed, require_vllm, sampling_kwargs
from evaluation.mt_bench.answers import answer_questions, generate_answers
from evaluation.mt_bench.config import EvalConfig
from evaluation.mt_bench.pipeline import load_mt_bench_data, write_mt_bench_answers
from trainers.typed_config import ConfigError

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_no_vllm = pytest.mark.skipif(HAS_VLLM, reason="checks the error raised where vLLM is not installed")

# ---------------------------------------------------------------- FastChat settings -> SamplingParams


def test_greedy_categories_map_to_vllm_greedy_without_a_seed() -> None:
    # math/reasoning/coding/extraction are 0.0 in FastChat; anything below 1e-4 decodes greedily there.
    expected = {"temperature": 0.0, "max_tokens": 1024, "skip_special_tokens": True}
    assert sampling_kwargs(0.0, 1024, seed=7) == expected
    assert sampling_kwargs(5e-5, 1024, seed=7) == expected


def test_sampled_categories_map_to_pure_temperature_sampling_with_the_request_seed() -> None:
    # writing/roleplay 0.7, stem/humanities 0.1: no top-k (0 = all tokens in vLLM >= 0.8), no top-p.
    assert sampling_kwargs(0.7, 256, seed=123) == {
        "temperature": 0.7,
        "top_p": 1.0,
        "top_k": 0,
        "seed": 123,
        "max_tokens": 256,
        "skip_special_tokens": True,
    }
    # The threshold itself samples, as in the hf backend (``temperature >= GREEDY_BELOW``).
    at_threshold = sampling_kwargs(1e-4, 8, seed=0)
    assert at_threshold["temperature"] == 1e-4 and at_threshold["top_k"] == 0 and at_threshold["seed"] == 0


def test_request_seed_depends_on_the_seed_and_the_conversation_only() -> None:
    chat = [{"role": "user", "content": "Write a haiku."}]
    seed = request_seed(0, chat)
    assert 0 <= seed < 2**31
    assert request_seed(0, [{"content": "Write a haiku.", "role": "user"}]) == seed  # key order is not content
    assert request_seed(1, chat) != seed
    assert request_seed(0, [{"role": "user", "content": "Write a limerick."}]) != seed
    longer = [*chat, {"role": "assistant", "content": "..."}, {"role": "user", "content": "Another."}]
    assert request_seed(0, longer) != seed
    # The format, pinned: the first 8 bytes of the SHA-256 of this JSON text, big-endian, mod 2**31.
    assert seed == _sha_seed('[0, [{"content": "Write a haiku.", "role": "user"}]]')


def _sha_seed(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % 2**31


# ---------------------------------------------------------------- the turn logic both backends share


def test_turns_are_asked_in_order_grouped_by_temperature_with_the_models_own_first_answer() -> None:
    questions = load_mt_bench_data(EvalConfig(categories=("writing", "math", "stem"))).questions
    calls: list[tuple[float, list[list[dict[str, str]]]]] = []

    def backend(conversations, temperature):
        calls.append((temperature, [list(c) for c in conversations]))
        return [f"answer {len(c)} to {c[-1]['content'][:12]} at {temperature}" for c in conversations]

    rows = answer_questions(backend, questions, "fake")
    # Turn 1 of every question, then turn 2; within a turn, ascending temperature (math 0.0, stem 0.1, writing 0.7).
    assert [(t, len(convs), len(convs[0])) for t, convs in calls] == [
        (0.0, 2, 1),
        (0.1, 2, 1),
        (0.7, 2, 1),
        (0.0, 2, 3),
        (0.1, 2, 3),
        (0.7, 2, 3),
    ]
    by_id = {q.question_id: q for q in questions}
    math_turn2 = calls[3][1][0]
    q = by_id[1007]
    first = f"answer 1 to {q.turns[0][:12]} at 0.0"
    assert math_turn2 == [
        {"role": "user", "content": q.turns[0]},
        {"role": "assistant", "content": first},
        {"role": "user", "content": q.turns[1]},
    ]
    assert [r["question_id"] for r in rows] == [q.question_id for q in questions]
    row = next(r for r in rows if r["question_id"] == 1007)
    assert row["model_id"] == "fake" and row["choices"] == [
        {"index": 0, "turns": [first, f"answer 3 to {q.turns[1][:12]} at 0.0"]}
    ]


def test_hf_backend_of_a_saved_model_gives_the_answers_of_the_loaded_model(
    tiny_model_dir: Path, tokenizer, tmp_path: Path
) -> None:
    """The dispatch path the sweep's task and the CLI take (``hf``) answers exactly as ``generate_answers`` does."""
    from trainers.models import load_model

    cfg = EvalConfig(categories=("writing", "math"), max_new_tokens=5, generation_batch_size=2, seed=3)
    path = write_mt_bench_answers(str(tiny_model_dir), "float32", cfg, tmp_path, "tiny", device="cpu")
    saved = [json.loads(line) for line in path.read_text().splitlines()]
    data = load_mt_bench_data(cfg)
    direct = generate_answers(
        load_model(str(tiny_model_dir)), tokenizer, data.questions, "tiny", max_new_tokens=5, batch_size=2, seed=3
    )
    assert [r["choices"] for r in saved] == [r["choices"] for r in direct]


# ---------------------------------------------------------------- config and errors without vLLM


@pytest.mark.parametrize("config_cls", [EvalConfig, AlpacaEvalConfig])
def test_both_configs_take_the_backend_and_a_memory_fraction_in_0_1(config_cls) -> None:
    assert config_cls().generation_backend == "hf"
    assert config_cls(generation_backend="vllm", vllm_gpu_memory_utilization=1.0).generation_backend == "vllm"
    with pytest.raises(ConfigError, match="generation_backend must be one of"):
        config_cls(generation_backend="tgi")
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
            config_cls(vllm_gpu_memory_utilization=bad)


@needs_no_vllm
def test_missing_vllm_names_the_field_and_the_extra() -> None:
    with pytest.raises(VLLMUnavailableError) as info:
        require_vllm("mt_bench.eval.generation_backend")
    assert "mt_bench.eval.generation_backend=vllm needs vLLM" in str(info.value)
    assert "pip install '.[vllm]'" in str(info.value)


@needs_no_vllm
def test_vllm_backend_fails_clearly_before_loading_anything(tmp_path: Path) -> None:
    cfg = AlpacaEvalConfig(generation_backend="vllm")
    with pytest.raises(VLLMUnavailableError, match=r"pip install '\.\[vllm\]'"):
        write_alpaca_outputs("/nonexistent/model", "bfloat16", cfg, tmp_path, "m", data=_no_data())
    assert not any(tmp_path.iterdir())


def _no_data():
    """AlpacaEval inputs that are never read (the backend fails first)."""
    from evaluation.alpaca_eval.pipeline import AlpacaEvalData

    return AlpacaEvalData([], None, [], False)


@needs_no_vllm
@pytest.mark.parametrize("benchmark", ["mt_bench", "alpaca_eval"])
def test_cli_with_vllm_backend_and_no_vllm_exits_2_before_loading(benchmark: str, tmp_path: Path, capsys) -> None:
    if benchmark == "mt_bench":
        from evaluation.mt_bench.__main__ import main

        backend = ["--generation-backend", "vllm"]
    else:
        from evaluation.alpaca_eval.__main__ import main

        backend = ["--set", "generation_backend=vllm"]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        # A model that does not exist: the backend check must come first.
        main(["--model", "/nonexistent/model", "--out", str(out), *backend])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "generation_backend=vllm needs vLLM" in err and "pip install '.[vllm]'" in err
    assert not out.exists()


# ---------------------------------------------------------------- vLLM end to end (GPU machine with the extra)


@pytest.fixture
def gpu_vllm():
    pytest.importorskip("vllm", reason="the vllm extra (pip install '.[vllm]') is installed on GPU images only")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM runs on a GPU")


def test_vllm_answers_mt_bench_and_alpaca_eval_reproducibly(gpu_vllm, embedded_model_dir: Path, tmp_path: Path):
    """SmolLM2-135M-Instruct through vLLM: FastChat rows, both turns, reproducible sampled answers, greedy outputs."""
    cfg = EvalConfig(
        categories=("writing", "math"), max_new_tokens=16, generation_backend="vllm", vllm_gpu_memory_utilization=0.3
    )
    model = str(embedded_model_dir)
    first = write_mt_bench_answers(model, "bfloat16", cfg, tmp_path / "a", "smol")
    again = write_mt_bench_answers(model, "bfloat16", cfg, tmp_path / "b", "smol")
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [1001, 1002, 1007, 1008]
    for row in rows:
        turns = row["choices"][0]["turns"]
        assert row["model_id"] == "smol" and len(turns) == 2 and all(t and t == t.strip() for t in turns)
    # Per-request seeds: the sampled (writing, T=0.7) answers repeat in a fresh engine.
    assert [r["choices"] for r in rows] == [json.loads(line)["choices"] for line in again.read_text().splitlines()]

    alpaca = AlpacaEvalConfig(limit=3, max_new_tokens=16, generation_backend="vllm", vllm_gpu_memory_utilization=0.3)
    outputs = json.loads(write_alpaca_outputs(model, "bfloat16", alpaca, tmp_path / "ae", "smol").read_text())
    assert len(outputs) == 3 and all(o["generator"] == "smol" and o["output"] for o in outputs)
