"""Models and tokenizers by spec: a hub id, a local path, the embedded SmolLM2 GGUF (:mod:`.embedded`) or the tiny
test model (:mod:`.tiny`), loaded by :mod:`.load`; :mod:`.cache` keeps base weights per process for warm trials."""

from trainers.models.embedded import (
    COMPLETE_MARKER,
    EMBEDDED_GGUF_FILENAME,
    EMBEDDED_HUB_ID,
    EMBEDDED_MODEL,
    EMBEDDED_MODEL_DIRNAME,
    EMBEDDED_PACKAGE,
    default_cache_dir,
    embedded_gguf_path,
    ensure_pad_token,
    materialize_embedded_model,
)
from trainers.models.load import DTYPES, load_model, load_tokenizer, resolve_model_path
from trainers.models.tiny import TINY_MODEL, build_tiny_model, materialize_tiny_model, save_tiny_model

__all__ = [
    "COMPLETE_MARKER",
    "DTYPES",
    "EMBEDDED_GGUF_FILENAME",
    "EMBEDDED_HUB_ID",
    "EMBEDDED_MODEL",
    "EMBEDDED_MODEL_DIRNAME",
    "EMBEDDED_PACKAGE",
    "TINY_MODEL",
    "build_tiny_model",
    "default_cache_dir",
    "embedded_gguf_path",
    "ensure_pad_token",
    "load_model",
    "load_tokenizer",
    "materialize_embedded_model",
    "materialize_tiny_model",
    "resolve_model_path",
    "save_tiny_model",
]
