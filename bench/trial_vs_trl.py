"""Benchmark: one project trial vs a plain TRL ``DPOTrainer`` script, steps/s and peak RSS.

Usage::

    python bench/trial_vs_trl.py                                   # embedded SmolLM2-135M, 3 repeats
    python bench/trial_vs_trl.py --model tiny-random --repeats 2   # quick run

Both sides train the same model on the same pairs (the first 64 of the embedded verifiable pairs), with 4 pairs per
optimizer step and a max length of 128 tokens, in fp32 on the same hardware:

* ``project``: :func:`trainers.trial_runner.run_trial` with the sweep's shared reference log-probs precomputed once (by
  :func:`trainers.reference.logps.compute_reference_logps`, in its own process before any measurement) and no gradient
  checkpointing, exactly as a sweep trial runs.
* ``trl``: a plain TRL 1.16 script, ``DPOTrainer(model=<checkpoint dir>, args=DPOConfig(...))`` with TRL's
  defaults for everything but the shared settings above: ``gradient_checkpointing=True`` (TRL's default),
  ``precompute_ref_log_probs=False`` (TRL's default: TRL loads a second copy of the model as the reference and
  runs its forward pass at every step), ``loss_type=["sigmoid"]``, ``beta=0.1``, ``logging_steps=10``. TRL's
  ``bf16`` default (``True``) is overridden to the project's precision so both run the same arithmetic.

Every measurement is a fresh subprocess (alternating project / TRL, ``--repeats`` times each). A step-time
callback records the wall clock at the end of every optimizer step; the first step is a warm-up, and steps/s is
measured over the next ``--steps`` steps. Peak RSS is the child's ``ru_maxrss`` (``os.wait4``). With CUDA, tokens/s
and MFU (``6 * params * tokens / time / peak FLOPs``, Kaplan et al. 2020, eq. 2.1 with backward = 2x forward; the
reference forward and TRL's checkpointing recompute are not counted as useful FLOPs) are reported as well.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import load_average

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script (python bench/trial_vs_trl.py): make the project importable
    sys.path.insert(0, str(ROOT))

SIDES = ("project", "trl")
BATCH_PAIRS = 4
MAX_LENGTH = 128
TRAIN_PAIRS = 64
"""Training pairs both sides load (the shared reference pass scores these once; a trial uses (steps + 1) x 4)."""


def bench_train_config(model: str, steps: int, output_dir: str, seed: int):
    """The :class:`~trainers.config.TrainConfig` both sides share (one warm-up step + ``steps`` measured)."""
    from trainers.config import TrainConfig

    return TrainConfig(
        model=model,
        data="embedded",
        max_train_rows=TRAIN_PAIRS,
        per_device_batch_size=BATCH_PAIRS,
        max_length=MAX_LENGTH,
        max_steps=steps + 1,
        max_eval_rows=8,
        eval_steps=0,
        learning_rate=5e-6,
        seed=seed,
        save_model=False,
        gradient_checkpointing=False,
        output_dir=output_dir,
    )


def _step_timer():
    """A transformers callback recording ``time.perf_counter()`` at the end of every optimizer step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall-clock time at the end of each optimizer step."""

        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    return StepTimer()


def _tokens_per_pair(tokenizer, dataset) -> float:
    """Mean tokens one pair feeds the policy: prompt + chosen and prompt + rejected, each capped at max length."""
    counts = []
    for row in dataset:
        for completion in (row["chosen"], row["rejected"]):
            text = _as_text(row["prompt"]) + _as_text(completion)
            counts.append(min(len(tokenizer(text)["input_ids"]), MAX_LENGTH))
    return 2 * statistics.fmean(counts) if counts else 0.0


def _as_text(value) -> str:
    if isinstance(value, str):
        return value
    return "".join(str(message.get("content", "")) for message in value)  # conversational rows


def _train_project(args: argparse.Namespace, train, data, timer) -> tuple[int, int | None]:
    """Train with :func:`trainers.trial_runner.run_trial` and the precomputed reference; ``(steps, None)``."""
    from trainers.config import LossConfig
    from trainers.reference.logps import ReferenceLogps
    from trainers.trial_runner import run_trial

    reference = ReferenceLogps(**json.loads(args.reference))
    result = run_trial(train, LossConfig("dpo", beta_kl=0.1), data=data, reference=reference, callbacks=[timer])
    return result.steps, None


def _train_trl(args: argparse.Namespace, train, data, timer) -> tuple[int, int]:
    """Train with a plain TRL ``DPOTrainer`` (TRL's defaults but the shared settings); ``(steps, params)``."""
    import torch
    from trl import DPOConfig, DPOTrainer

    from trainers.models import load_tokenizer, resolve_model_path

    config = DPOConfig(
        output_dir=train.output_dir,
        per_device_train_batch_size=BATCH_PAIRS,
        max_length=MAX_LENGTH,
        max_steps=args.steps + 1,
        learning_rate=train.learning_rate,
        seed=args.seed,
        bf16=train.precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=resolve_model_path(args.model),
        args=config,
        train_dataset=data.train,
        processing_class=load_tokenizer(args.model),
        callbacks=[timer],
    )
    trainer.train()
    return trainer.state.global_step, sum(p.numel() for p in trainer.model.parameters())


def _cuda_metrics(args: argparse.Namespace, data, measured: float, params: int | None) -> dict[str, object]:
    """Parameters, tokens/s, MFU and peak CUDA memory of a measurement that took ``measured`` seconds."""
    import torch

    from trainers.models import load_model, load_tokenizer

    if params is None:
        params = sum(p.numel() for p in load_model(args.model).parameters())
    tokens_per_step = BATCH_PAIRS * _tokens_per_pair(load_tokenizer(args.model), data.train)
    tokens_per_s = tokens_per_step * args.steps / measured
    return {
        "params": params,
        "tokens_per_s": tokens_per_s,
        "mfu": 6 * params * tokens_per_s / (args.peak_tflops * 1e12),
        "cuda_peak_bytes": torch.cuda.max_memory_allocated(),
    }


def _child(args: argparse.Namespace) -> dict[str, object]:
    """Run one side in this (fresh) process and return its timings."""
    import torch

    from trainers.reference.logps import compute_reference_logps
    from trainers.trial_runner import load_trial_data

    train = bench_train_config(args.model, args.steps, tempfile.mkdtemp(prefix="bench-trial-"), args.seed)
    data = load_trial_data(train)
    if args.child == "reference":
        reference = compute_reference_logps(train, data, args.reference_root)
        return dataclasses.asdict(reference)
    timer = _step_timer()
    started = time.perf_counter()
    train_side = _train_project if args.child == "project" else _train_trl
    steps, params = train_side(args, train, data, timer)
    total = time.perf_counter() - started
    if len(timer.ends) < args.steps + 1:
        raise RuntimeError(f"{args.child}: only {len(timer.ends)} optimizer steps ran, wanted {args.steps + 1}")
    measured = timer.ends[args.steps] - timer.ends[0]
    out: dict[str, object] = {
        "steps": steps,
        "measured_steps": args.steps,
        "measured_s": measured,
        "steps_per_s": args.steps / measured,
        "total_s": total,
    }
    if torch.cuda.is_available():
        out.update(_cuda_metrics(args, data, measured, params))
    return out


def _spawn(args: argparse.Namespace, role: str, extra: list[str]) -> tuple[dict[str, object], int]:
    """Run ``role`` in a fresh Python process; return its JSON result and its peak RSS in bytes."""
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        result_file = Path(tmp) / "result.json"
        log_file = Path(tmp) / "log.txt"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            role,
            "--model",
            args.model,
            "--steps",
            str(args.steps),
            "--seed",
            str(args.seed),
            "--peak-tflops",
            str(args.peak_tflops),
            "--result-file",
            str(result_file),
            *extra,
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
        with open(log_file, "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0 or not result_file.is_file():
            tail = log_file.read_text()[-4000:]
            raise RuntimeError(f"{role} child failed (exit {process.returncode}):\n{tail}")
        return json.loads(result_file.read_text()), usage.ru_maxrss * 1024  # Linux reports KiB


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/trial_vs_trl.py",
        description="Steps/s and peak RSS of one project trial vs a plain TRL DPOTrainer script (fresh process each).",
    )
    p.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M), 'tiny-random' or a local path")
    p.add_argument("--repeats", type=int, default=3, help="measurements per side (alternating project/TRL)")
    p.add_argument("--steps", type=int, default=6, help="measured optimizer steps after one warm-up step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak TFLOP/s for MFU (CUDA only)")
    p.add_argument("--out", default="bench/results/trial_vs_trl.json", help="where to write the JSON results")
    p.add_argument("--child", choices=("reference", *SIDES), help=argparse.SUPPRESS)
    p.add_argument("--reference", help=argparse.SUPPRESS)
    p.add_argument("--reference-root", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    return p


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps must be >= 1")
    if not args.peak_tflops > 0:
        parser.error("--peak-tflops must be > 0")
    return args


def _measure(args: argparse.Namespace) -> tuple[dict[str, list[dict[str, object]]], float]:
    """The shared reference pass once, then ``--repeats`` runs per side, alternating; ``(runs, reference_s)``."""
    runs: dict[str, list[dict[str, object]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="bench-reference-") as reference_root:
        started = time.perf_counter()
        reference, _ = _spawn(args, "reference", ["--reference-root", reference_root])
        reference_s = time.perf_counter() - started
        print(f"shared reference log-probs computed once in {reference_s:.1f} s (load {load_average()})", flush=True)
        for repeat in range(args.repeats):
            for side in SIDES:
                extra = ["--reference", json.dumps(reference)] if side == "project" else []
                result, peak_rss = _spawn(args, side, extra)
                result.update(repeat=repeat, peak_rss_bytes=peak_rss, load_average=load_average())
                runs[side].append(result)
                print(
                    f"[{side} #{repeat}] {result['steps_per_s']:.3f} steps/s, peak RSS {peak_rss / 2**20:.0f} MiB, "
                    f"load {result['load_average']}",
                    flush=True,
                )
    return runs, reference_s


def _print_summary(args: argparse.Namespace, summary: dict[str, dict[str, float]], ratio: dict[str, float]) -> None:
    print()
    print(
        f"model={args.model} batch={BATCH_PAIRS} pairs max_length={MAX_LENGTH} steps={args.steps} "
        f"repeats={args.repeats}"
    )
    header = f"{'side':<8} {'median steps/s':>15} {'median peak RSS (MiB)':>22}"
    has_tokens = "tokens_per_s" in summary["project"]
    if has_tokens:
        header += f" {'tokens/s':>10} {'MFU':>7}"
    print(header)
    for side in SIDES:
        row = summary[side]
        line = f"{side:<8} {row['steps_per_s']:>15.3f} {row['peak_rss_bytes'] / 2**20:>22.0f}"
        if has_tokens:
            line += f" {row['tokens_per_s']:>10.0f} {row['mfu']:>7.2%}"
        print(line)
    print(f"{'ratio':<8} {ratio['steps_per_s']:>14.2f}x {ratio['peak_rss']:>21.2f}x   (project / TRL)")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden ``--child``, one measurement); returns the exit code."""
    args = _parse_args(argv)
    if args.child:
        Path(args.result_file).write_text(json.dumps(_child(args)))
        return 0

    runs, reference_s = _measure(args)
    summary = {side: _median(runs[side]) for side in SIDES}
    ratio = {
        "steps_per_s": summary["project"]["steps_per_s"] / summary["trl"]["steps_per_s"],
        "peak_rss": summary["project"]["peak_rss_bytes"] / summary["trl"]["peak_rss_bytes"],
    }
    _print_summary(args, summary, ratio)
    results = {
        "model": args.model,
        "batch_pairs": BATCH_PAIRS,
        "max_length": MAX_LENGTH,
        "steps": args.steps,
        "repeats": args.repeats,
        "reference_precompute_s": reference_s,
        "cpu_count": os.cpu_count(),
        "median": summary,
        "ratio_project_over_trl": ratio,
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out}")
    return 0


def _median(runs: list[dict[str, object]]) -> dict[str, float]:
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and k != "repeat"]
    return {k: statistics.median(float(run[k]) for run in runs) for k in keys}


if __name__ == "__main__":
    sys.exit(main())
