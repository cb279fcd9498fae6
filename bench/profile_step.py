"""Benchmark: where one training step of a sweep trial spends its time (``torch.profiler``).

Usage::

    python bench/profile_step.py                                # embedded SmolLM2-135M, dLRML, 4 profiled steps
    python bench/profile_step.py --model tiny-random --steps 2  # quick run
    python bench/profile_step.py --gradient-checkpointing       # the same step with activation checkpointing
    python bench/profile_step.py --trace trace.json             # also write a Chrome / Perfetto trace

The trial runs exactly as in a sweep (:func:`trainers.trial_runner.run_trial` with reference log-probs precomputed once,
here in the same process before the clock starts), on the pairs, batch and max length of ``bench/trial_vs_trl.py``.
After ``--warmup`` optimizer steps the profiler records ``--steps`` steps and splits their wall time into phases:

* ``forward``, ``loss``, ``metrics``, ``clip_grad_norm``: the ranges :class:`trainers.trl_trainer.RegistryDPOTrainer`
  labels (``trainers.trl_trainer.PROFILE_RANGES``): the concatenated chosen/rejected forward with TRL's fused LM head,
  the registry loss, the collapse statistics (one host sync), and the pre-clip norm with its non-finite count;
* ``backward``: autograd's engine (``autograd::engine::evaluate_function: ...`` events);
* ``optimizer``: ``Optimizer.step`` and ``Optimizer.zero_grad``;
* ``data``: the dataloader's ``__next__`` (collation and padding);
* ``other``: the rest of the step's wall time (transformers' Trainer loop, callbacks, logging, Python).

It also counts host syncs per step by phase (``aten::_local_scalar_dense``: every ``.item()`` or tensor truth
test) and lists the operators with the most self time. With CUDA, device time is recorded too and the table
adds each phase's CUDA time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import load_average
from trial_vs_trl import bench_train_config

PHASES = ("data", "forward", "loss", "metrics", "backward", "clip_grad_norm", "optimizer")
HOST_SYNC_OP = "aten::_local_scalar_dense"


def _phase(name: str) -> str | None:
    """The phase a profiler event's name belongs to, or ``None`` for an event inside a phase / not one."""
    from trainers.trl_trainer import PROFILE_RANGES

    if name in PROFILE_RANGES:
        return name.split("/", 1)[1]
    if name.startswith("autograd::engine::evaluate_function"):
        return "backward"
    if name.startswith(("Optimizer.step#", "Optimizer.zero_grad#")):
        return "optimizer"
    if name.startswith("enumerate(DataLoader)"):
        return "data"
    return None


def _host_syncs_by_phase(events, steps: int) -> dict[str, float]:
    """Host syncs per step, by the phase of the innermost enclosing labelled event (``other`` when none)."""
    counts: dict[str, float] = defaultdict(float)
    for event in events:
        if event.name != HOST_SYNC_OP:
            continue
        parent, phase = event.cpu_parent, None
        while parent is not None and phase is None:
            phase, parent = _phase(parent.name), parent.cpu_parent
        counts[phase or "other"] += 1 / steps
    return dict(sorted(counts.items()))


def _profiler_callback(warmup: int, steps: int, trace: Path | None):
    """A transformers callback running ``torch.profiler`` over optimizer steps ``warmup + 1 .. warmup + steps``."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])

    class StepProfiler(TrainerCallback):
        """Starts the profiler when step ``warmup`` ends and stops it when step ``warmup + steps`` ends."""

        def __init__(self) -> None:
            self.profiler = profile(activities=activities)
            self.step_ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.step_ends.append(time.perf_counter())
            if state.global_step == warmup:
                self.profiler.start()
            elif state.global_step == warmup + steps:
                self.profiler.stop()
                if trace is not None:
                    self.profiler.export_chrome_trace(str(trace))

    return StepProfiler()


def profile_trial(args: argparse.Namespace) -> dict[str, object]:
    """Train ``warmup + steps`` steps of one trial, profiling the last ``steps``; returns the breakdown."""
    import torch

    from trainers.config import LossConfig
    from trainers.reference.logps import compute_reference_logps
    from trainers.trial_runner import load_trial_data, run_trial

    output_dir = tempfile.mkdtemp(prefix="bench-profile-")
    train = dataclasses.replace(
        bench_train_config(args.model, args.warmup + args.steps - 1, output_dir, args.seed),
        gradient_checkpointing=args.gradient_checkpointing,
    )
    data = load_trial_data(train)
    started = time.perf_counter()
    reference = compute_reference_logps(train, data, output_dir)
    reference_s = time.perf_counter() - started
    loss = LossConfig(
        args.loss, beta_kl=args.beta_kl, beta_mix=args.beta_mix if args.loss.startswith("dlrml") else None
    )
    callback = _profiler_callback(args.warmup, args.steps, args.trace)
    run_trial(train, loss, data=data, reference=reference, callbacks=[callback])

    ends = callback.step_ends
    if len(ends) < args.warmup + args.steps:
        raise RuntimeError(f"only {len(ends)} optimizer steps ran, wanted {args.warmup + args.steps}")
    step_walls = [b - a for a, b in zip(ends[args.warmup - 1 : -1], ends[args.warmup :], strict=True)]
    wall_ms = 1e3 * statistics.fmean(step_walls)
    cuda = torch.cuda.is_available()
    cpu_ms: dict[str, float] = defaultdict(float)
    cuda_ms: dict[str, float] = defaultdict(float)
    syncs = _host_syncs_by_phase(callback.profiler.events(), args.steps)
    for event in callback.profiler.key_averages():
        phase = _phase(event.key)
        if phase is not None:
            cpu_ms[phase] += event.cpu_time_total / 1e3 / args.steps
            if cuda:
                cuda_ms[phase] += event.device_time_total / 1e3 / args.steps
    phases = {name: round(cpu_ms[name], 2) for name in PHASES}
    phases["other"] = round(max(wall_ms - sum(cpu_ms.values()), 0.0), 2)
    top = sorted(callback.profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    return {
        "model": args.model,
        "loss": args.loss,
        "gradient_checkpointing": args.gradient_checkpointing,
        "pairs_per_step": train.per_device_batch_size,
        "max_length": train.max_length,
        "profiled_steps": args.steps,
        "step_wall_ms": round(wall_ms, 2),
        "step_walls_ms": [round(1e3 * w, 2) for w in step_walls],
        "phases_cpu_ms": phases,
        "phases_cuda_ms": {name: round(cuda_ms[name], 2) for name in PHASES} if cuda else None,
        "host_syncs_per_step": syncs,
        "top_ops_self_cpu_ms": {e.key: round(e.self_cpu_time_total / 1e3 / args.steps, 2) for e in top},
        "reference_pass_s": round(reference_s, 2),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "load_average": load_average(),
    }


def print_table(result: dict[str, object]) -> None:
    """The phase breakdown (ms per step, share of the step) and the top operators."""
    wall = result["step_wall_ms"]
    cuda = result["phases_cuda_ms"]
    print(
        f"\n{result['model']} / {result['loss']}: {result['pairs_per_step']} pairs x {result['max_length']} tokens, "
        f"checkpointing {'on' if result['gradient_checkpointing'] else 'off'}, {result['device']}, "
        f"{result['torch_threads']} threads, load {result['load_average']}"
    )
    print(f"{'phase':<16}{'ms/step':>10}{'share':>8}" + (f"{'cuda ms':>10}" if cuda else ""))
    for name, ms in result["phases_cpu_ms"].items():
        line = f"{name:<16}{ms:>10.1f}{100 * ms / wall:>7.1f}%"
        if cuda:
            line += f"{cuda.get(name, float('nan')):>10.1f}"
        print(line)
    print(f"{'step (wall)':<16}{wall:>10.1f}{100.0:>7.1f}%")
    syncs = result["host_syncs_per_step"]
    print(f"host syncs per step: {sum(syncs.values()):g} ({', '.join(f'{k} {v:g}' for k, v in syncs.items())})")
    print(f"reference pass (once per sweep, not in the step): {result['reference_pass_s']:.1f} s")
    print("\ntop operators by self CPU time (ms/step):")
    for name, ms in result["top_ops_self_cpu_ms"].items():
        print(f"  {ms:>9.1f}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="embedded", help="model spec (embedded, tiny-random, path or hub id)")
    parser.add_argument("--loss", default="dlrml", help="registry loss name")
    parser.add_argument("--beta-kl", type=float, default=0.1)
    parser.add_argument("--beta-mix", type=float, default=0.2)
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps before profiling starts (>= 1)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps profiled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="profile with activation checkpointing")
    parser.add_argument("--top", type=int, default=12, help="operators listed by self CPU time")
    parser.add_argument("--trace", type=Path, default=None, help="also write a Chrome/Perfetto trace here")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default bench/results/profile_step.json)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    result = profile_trial(args)
    print_table(result)
    suffix = "_checkpointing" if args.gradient_checkpointing else ""
    output = args.output or Path(__file__).parent / "results" / f"profile_step{suffix}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
