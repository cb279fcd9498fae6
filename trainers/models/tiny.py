"""Tiny randomly initialised models with SmolLM2's architecture and vocabulary, for smoke sweeps and tests.

:func:`build_tiny_model` builds one in memory, :func:`save_tiny_model` writes it with the SmolLM2 tokenizer as a
regular checkpoint, and :func:`materialize_tiny_model` caches one per seed under the model spec
``"tiny-random"`` (:data:`TINY_MODEL`), so CI smoke sweeps exercise the full training stack in seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from trainers.atomic_dir import build_dir_once
from trainers.models.embedded import (
    COMPLETE_MARKER,
    MARKER_FORMAT,
    default_cache_dir,
    ensure_pad_token,
    load_embedded_tokenizer,
)

__all__ = ["TINY_MODEL", "build_tiny_model", "materialize_tiny_model", "save_tiny_model"]

TINY_MODEL = "tiny-random"
"""Spec of a tiny random model of SmolLM2's architecture and tokenizer, for smoke sweeps (not a trained model)."""

# Architecture constants of SmolLM2 (HuggingFaceTB/SmolLM2-135M-Instruct config.json) that the tiny
# model keeps so it exercises the same code paths (RoPE base, RMSNorm epsilon, SwiGLU MLP, tied head).
_SMOLLM2_ROPE_THETA = 100000.0
_SMOLLM2_RMS_NORM_EPS = 1e-5
_SMOLLM2_HIDDEN_ACT = "silu"


def _check_sizes(sizes: dict[str, int]) -> None:
    """Raise ``ValueError`` unless every size is a positive integer and the head counts divide evenly."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    hidden_size, num_heads, num_kv_heads = sizes["hidden_size"], sizes["num_heads"], sizes["num_kv_heads"]
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} must be divisible by num_kv_heads={num_kv_heads}")


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
    _check_sizes(
        {
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "num_kv_heads": num_kv_heads,
            "intermediate_size": intermediate_size,
            "max_position_embeddings": max_position_embeddings,
        }
    )
    ensure_pad_token(tokenizer)
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
    tokenizer = load_embedded_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def materialize_tiny_model(cache_dir: Path | None = None, seed: int = 0) -> Path:
    """Materialise the tiny random SmolLM2-architecture model (spec ``"tiny-random"``) in the cache.

    Built once per seed from the embedded tokenizer (see :func:`save_tiny_model`), with the same locking and
    atomic rename as :func:`trainers.models.embedded.materialize_embedded_model`, so that smoke sweeps on any
    node resolve it offline.

    Args:
        cache_dir: Root cache directory; defaults to :func:`trainers.models.embedded.default_cache_dir`.
        seed: Weight-initialisation seed.

    Returns:
        Path of the checkpoint directory.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    def build(out_dir: Path) -> dict:
        save_tiny_model(out_dir, seed=seed)
        return {"format": MARKER_FORMAT, "seed": seed}

    return build_dir_once(
        root / f"{TINY_MODEL}-seed{seed}",
        build,
        marker=COMPLETE_MARKER,
        what=f"tiny random model (seed {seed})",
        public=True,
    )
