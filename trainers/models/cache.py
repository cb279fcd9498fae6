"""Base weights and tokenizers kept for the life of a process, so a warm trial process loads them once.

A sweep reuses its trial processes (Ray Tune's ``reuse_actors``): the second and later trials a process runs
would otherwise pay the model load and the tokenizer load again. :func:`fresh_model` returns a deep copy of the
pristine base model, loaded once on CPU, so every trial starts from exactly the weights a cold
``from_pretrained`` gives (and training one copy never touches the base); the copy is moved to the accelerator
by the trainer, and :func:`release_accelerator_memory` hands that memory back between trials.
"""

from __future__ import annotations

import copy
import gc

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainers.models.load import load_model, load_tokenizer

_MODELS: dict[tuple[str, str], PreTrainedModel] = {}
_TOKENIZERS: dict[str, PreTrainedTokenizerBase] = {}


def fresh_model(spec: str, dtype: str = "float32") -> PreTrainedModel:
    """A new model with the base weights of ``spec`` in ``dtype``; loaded from disk on the first call only.

    Args:
        spec: Model spec (see :func:`trainers.models.resolve_model_path`).
        dtype: Parameter dtype, as for :func:`trainers.models.load_model`.

    Returns:
        A deep copy of the cached base model (on CPU, in eval mode as ``from_pretrained`` returns it).
    """
    key = (spec, dtype)
    if key not in _MODELS:
        _MODELS[key] = load_model(spec, dtype=dtype)
    return copy.deepcopy(_MODELS[key])


def fresh_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """A copy of the tokenizer of ``spec`` (training may set attributes on it; the cached one stays as loaded)."""
    if spec not in _TOKENIZERS:
        _TOKENIZERS[spec] = load_tokenizer(spec)
    return copy.deepcopy(_TOKENIZERS[spec])


def cached_models() -> list[tuple[str, str]]:
    """The ``(spec, dtype)`` pairs whose base weights this process holds."""
    return list(_MODELS)


def clear() -> None:
    """Forget every cached model and tokenizer (the next call loads from disk again, as a cold process does)."""
    _MODELS.clear()
    _TOKENIZERS.clear()
    release_accelerator_memory()


def release_accelerator_memory() -> None:
    """Free what the last trial left on the accelerator (its model, optimizer state and activations)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
