"""TRL's ``DPOConfig`` built from a trial's dataclasses, and the DeepSpeed config it points at."""

from __future__ import annotations

import math
from pathlib import Path

from trl import DPOConfig

from trainers.config import LossConfig, TrainConfig
from trainers.losses import LOSSES

PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
"""torch dtype names of the ``train.precision`` choices."""

DEEPSPEED_CONFIG_DIR = Path(__file__).resolve().parent / "deepspeed"
"""The DeepSpeed configs shipped with the project (``zero2_bf16.json``, ``zero3_bf16.json``)."""


def resolve_deepspeed_config(path: str) -> Path:
    """A DeepSpeed JSON config: ``path`` itself if it exists (absolute, or relative to the working directory), else
    the same relative path inside the project (``trainers/deepspeed/zero3_bf16.json`` from anywhere), else a
    shipped config by file name (``zero3_bf16.json``).

    Raises:
        FileNotFoundError: Naming every place looked in.
    """
    candidates = [Path(path)]
    if not Path(path).is_absolute():
        candidates += [DEEPSPEED_CONFIG_DIR.parents[1] / path, DEEPSPEED_CONFIG_DIR / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"DeepSpeed config {path!r} not found (looked in: {', '.join(map(str, candidates))})")


def build_dpo_config(train: TrainConfig, loss: LossConfig, *, precompute_ref: bool = True) -> DPOConfig:
    """Translate the trial's dataclasses into TRL's ``DPOConfig``.

    Args:
        train: Training configuration.
        loss: Loss configuration (``beta`` and ``loss_type`` mirror it for TRL's bookkeeping only: the loss
            itself comes from the registry).
        precompute_ref: Let TRL compute reference log-probs once before training (no reference model in
            memory). Off when the datasets already carry them.

    Returns:
        The ``DPOConfig``.
    """
    spec = LOSSES[loss.name]
    return DPOConfig(
        output_dir=train.output_dir,
        per_device_train_batch_size=train.per_device_batch_size,
        per_device_eval_batch_size=train.per_device_batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.learning_rate,
        max_steps=train.step_budget,
        num_train_epochs=train.epochs,
        lr_scheduler_type=train.lr_scheduler,
        # A float in [0, 1) is a ratio of the total steps; with an extension, of the planned steps (as transformers
        # rounds it), so the schedule of a trial does not depend on its extension budget.
        warmup_steps=math.ceil(train.warmup_ratio * train.max_steps)
        if train.extend_until_settled
        else train.warmup_ratio,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        bf16=train.precision == "bf16",
        max_length=train.max_length,
        seed=train.seed,
        data_seed=train.seed,
        activation_checkpointing=train.gradient_checkpointing,
        deepspeed=str(resolve_deepspeed_config(train.deepspeed)) if train.deepspeed else None,
        beta=loss.beta_kl,
        loss_type=[spec.trl_loss_type or "sigmoid"],
        discopop_tau=loss.tau,
        precompute_ref_log_probs=precompute_ref,
        precompute_ref_batch_size=train.reference_batch_size,
        logging_steps=1,
        # HF's default replaces a NaN/Inf loss by the running average: a diverged step would look healthy.
        logging_nan_inf_filter=False,
        eval_strategy="steps" if train.eval_steps else "no",
        # The reference's own point (step 0) starts every held-out curve; the verdicts read only later ones.
        eval_on_start=bool(train.eval_steps),
        eval_steps=train.eval_steps or None,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        # Every parameter gets a gradient every step (a causal LM uses all its weights; a learnable beta_mix is used
        # by the loss). Searching for unused ones would also mark that beta_mix, which the loss uses after the
        # forward, ready before its gradient exists: DDP fails ("marked as ready twice").
        ddp_find_unused_parameters=False,
        use_cpu=not _has_accelerator(),
    )


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()
