"""What the evaluation CLIs (``python -m evaluation.mt_bench``, ``python -m evaluation.alpaca_eval``) share: the model
and output flags, the config built from flags and ``--set`` overrides, and checks of model specs and device, all
reported through ``parser.error`` (exit code 2) before any model is loaded."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from evaluation.generation.vllm import VLLMUnavailableError, require_vllm
from evaluation.options import safe_name
from trainers.typed_config import apply_overrides, build, overrides_from_args

DTYPES = ("float32", "bfloat16", "float16")
"""``--dtype`` choices: what ``trainers.models.load_model`` and vLLM both accept."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--out``, ``--model-id``, ``--device`` and ``--dtype``."""
    parser.add_argument("--model", required=True, help="model spec: 'embedded', a checkpoint dir or a hub id")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--model-id", help="name of the evaluated model (default: derived from --model)")
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda:1', ...")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the evaluated model(s)")


def model_name(spec: str) -> str:
    """A file-name-safe model name derived from a model spec (its last path component)."""
    return safe_name(Path(spec.rstrip("/")).name)


def parse_config(parser: argparse.ArgumentParser, args: argparse.Namespace, config_cls: type) -> tuple[Any, str]:
    """Set up logging, build the config from the flags and check ``--model-id`` and ``--out``.

    Returns:
        The validated config and the model id.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = build(config_cls, apply_overrides({}, overrides_from_args(args), config_cls))
    except ValueError as err:
        parser.error(str(err))
    model_id = args.model_id or model_name(args.model)
    if safe_name(model_id) != model_id:
        parser.error(f"--model-id must consist of letters, digits, '.', '_' or '-', got {model_id!r}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")
    return cfg, model_id


def check_model_specs(parser: argparse.ArgumentParser, specs: Iterable[tuple[str, str | None]]) -> None:
    """Every ``(flag, spec)`` names a loadable model (the embedded model always is; None is skipped)."""
    from trainers.models import EMBEDDED_MODEL, resolve_model_path

    for flag, spec in specs:
        if spec and spec != EMBEDDED_MODEL:
            try:
                resolve_model_path(spec)
            except (ValueError, FileNotFoundError) as err:
                parser.error(f"{flag}: {err}")


def resolve_device(parser: argparse.ArgumentParser, device: str) -> str:
    """``--device``, with ``auto`` resolved to ``cuda`` if available, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError as err:
        parser.error(f"--device: {err}")
    return device


def check_generation_backend(parser: argparse.ArgumentParser, backend: str, device: str) -> None:
    """With ``generation_backend=vllm``: vLLM is installed and ``--device`` is a GPU it can use."""
    if backend != "vllm":
        return
    try:
        require_vllm()
    except VLLMUnavailableError as err:
        parser.error(str(err))
    if device != "cuda":
        # vLLM takes the GPUs CUDA_VISIBLE_DEVICES shows; it has no device argument to honour "cuda:1" with.
        parser.error(
            f"generation_backend=vllm runs on the GPU(s) CUDA_VISIBLE_DEVICES shows, but --device is {device!r}: use "
            "--device auto or cuda (select a GPU with CUDA_VISIBLE_DEVICES)"
        )
