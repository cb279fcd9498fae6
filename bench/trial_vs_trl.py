"""Benchmark: one project trial vs a plain TRL ``DPOTrainer`` script, steps/s and peak RSS; the reference pass.

Usage::

    python bench/trial_vs_trl.py                                   # embedded SmolLM2-135M, 3 repeats, both TRLs
    python bench/trial_vs_trl.py --trl tuned --data ../shared/data/hh_rlhf_harmless_test_300.jsonl
    python bench/trial_vs_trl.py --model tiny-random --repeats 2   # quick run

Every side trains the same model on the same pairs (the first 64 of ``--data``; malformed rows dropped), with 4 pairs
per optimizer step and a max length of ``--max-length`` tokens, in fp32 on the same hardware:

* ``project``: :func:`trainers.trial_runner.run_trial` with the sweep's shared reference log-probs precomputed once (by
  :func:`trainers.reference.logps.compute_reference_logps`, in its own process before any training) and no gradient
  checkpointing, exactly as a sweep trial runs: the shared-prefix, padding-free forward (``train.shared_prefix``).
* ``unpacked``: the same trial with ``train.shared_prefix=false`` (TRL's padded concatenated forward) and a reference
  computed that way too.
* ``trl-defaults``: a plain TRL 1.16 script, ``DPOTrainer(model=<checkpoint dir>, args=DPOConfig(...))`` with TRL's
  defaults for everything but the shared settings above: ``gradient_checkpointing=True`` (TRL's default),
  ``precompute_ref_log_probs=False`` (TRL's default: TRL loads a second copy of the model as the reference and
  runs its forward pass at every step), ``loss_type=["sigmoid"]``, ``beta=0.1``, ``logging_steps=10``. TRL's
  ``bf16`` default (``True``) is overridden to the project's precision so both run the same arithmetic.
* ``trl-tuned``: the same script as an expert runs it, ``precompute_ref_log_probs=True`` (one reference pass in
  ``DPOTrainer.__init__``, at TRL's default batch size, before the timed steps) and ``gradient_checkpointing=False``,
  everything else as ``trl-defaults``.

Every measurement is a fresh subprocess; each repeat runs every side once, in the order above. A step-time callback
records the wall clock at the end of every optimizer step; the first step is a warm-up, and steps/s is measured over
the next ``--steps`` steps; the process's CPU time over the same steps (``cpu_s_per_step``, every thread) is recorded
beside it, the work a step takes whatever else shares the cores. Peak RSS is the child's ``ru_maxrss``
(``os.wait4``). With CUDA, tokens/s and MFU (``6 * params * tokens / time / peak FLOPs``, Kaplan et al. 2020, eq. 2.1
with backward = 2x forward; the reference forward and TRL's checkpointing recompute are not counted as useful FLOPs)
are reported as well.

Each repeat also times the shared reference pass both ways (``reference-packed``, ``reference-unpacked``: a fresh
process each, into a fresh directory): its forwards alone (``forward_s``, summed over the batches; ``forward_cpu_s``
their CPU time) and the whole call (model load and tokenisation included, ``total_s``). The first repeat's two
references feed ``project`` and ``unpacked``.
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

PROJECT_SIDES = ("project", "unpacked")
TRL_SIDES = {"tuned": "trl-tuned", "defaults": "trl-defaults"}
REFERENCE_SIDES = {"reference-packed": True, "reference-unpacked": False}
"""Reference-pass children and their ``train.shared_prefix``."""
BATCH_PAIRS = 4
TRAIN_PAIRS = 64
"""Training pairs every side loads (the shared reference pass scores these once; a trial uses (steps + 1) x 4)."""


def bench_train_config(args: argparse.Namespace, output_dir: str, shared_prefix: bool = True):
    """The :class:`~trainers.config.TrainConfig` every side shares (one warm-up step + ``steps`` measured)."""
    from trainers.config import TrainConfig

    return TrainConfig(
        model=args.model,
        data=args.data,
        on_bad_rows="drop",  # the HH sample has rows with empty replies
        max_train_rows=TRAIN_PAIRS,
        per_device_batch_size=BATCH_PAIRS,
        max_length=args.max_length,
        max_steps=args.steps + 1,
        max_eval_rows=8,
        eval_steps=0,
        learning_rate=5e-6,
        seed=args.seed,
        save_model=False,
        gradient_checkpointing=False,
        shared_prefix=shared_prefix,
        output_dir=output_dir,
    )


def _sides(args: argparse.Namespace) -> tuple[str, ...]:
    """The measured sides of one repeat, in the order they run."""
    trl = ("tuned", "defaults") if args.trl == "both" else (args.trl,)
    return (*REFERENCE_SIDES, *PROJECT_SIDES, *(TRL_SIDES[t] for t in trl))


def _step_timer():
    """A transformers callback recording the wall clock and this process's CPU time at the end of every step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall-clock time (``perf_counter``) and process CPU time (``process_time``, every thread) at each step end."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.cpu_ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())

    return StepTimer()


def _tokens_per_pair(tokenizer, dataset, max_length: int) -> float:
    """Mean tokens one pair feeds the policy: prompt + chosen and prompt + rejected, each capped at max length."""
    counts = []
    for row in dataset:
        for completion in (row["chosen"], row["rejected"]):
            text = _as_text(row["prompt"]) + _as_text(completion)
            counts.append(min(len(tokenizer(text)["input_ids"]), max_length))
    return 2 * statistics.fmean(counts) if counts else 0.0


def _as_text(value) -> str:
    if isinstance(value, str):
        return value
    return "".join(str(message.get("content", "")) for message in value)  # conversational rows


def _train_project(args: argparse.Namespace, train, data, timer) -> tuple[int, int | None]:
    """Train with :func:`trainers.trial_runner.run_trial` and the precomputed reference; ``(steps, None)``.

    The trial's own ``perf/*`` metrics (:mod:`trainers.telemetry`), averaged over the measured steps, are kept in
    ``timer.perf``."""
    import torch

    from trainers.config import LossConfig
    from trainers.reference.logps import ReferenceLogps
    from trainers.trial_runner import run_trial

    reference = ReferenceLogps(**json.loads(args.reference))
    peak = args.peak_tflops if torch.cuda.is_available() else None
    loss = LossConfig("dpo", beta_kl=0.1)
    result = run_trial(train, loss, data=data, reference=reference, callbacks=[timer], peak_tflops=peak)
    measured = [h for h in result.history if "loss" in h][1:]  # the first step is the warm-up
    names = sorted({k for h in measured for k in h if k.startswith("perf/")})
    timer.perf = {name: statistics.fmean(h[name] for h in measured if name in h) for name in names}
    return result.steps, None


def _train_trl(args: argparse.Namespace, train, data, timer) -> tuple[int, int]:
    """Train with a plain TRL ``DPOTrainer`` (TRL's defaults but the shared settings, or tuned); ``(steps, params)``."""
    import torch
    from trl import DPOConfig, DPOTrainer

    from trainers.models import load_tokenizer, resolve_model_path

    tuned = args.child == TRL_SIDES["tuned"]
    config = DPOConfig(
        output_dir=train.output_dir,
        per_device_train_batch_size=BATCH_PAIRS,
        max_length=args.max_length,
        max_steps=args.steps + 1,
        learning_rate=train.learning_rate,
        seed=args.seed,
        bf16=train.precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        precompute_ref_log_probs=tuned,
        gradient_checkpointing=not tuned,
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
    tokens_per_step = BATCH_PAIRS * _tokens_per_pair(load_tokenizer(args.model), data.train, args.max_length)
    tokens_per_s = tokens_per_step * args.steps / measured
    return {
        "params": params,
        "tokens_per_s": tokens_per_s,
        "mfu": 6 * params * tokens_per_s / (args.peak_tflops * 1e12),
        "cuda_peak_bytes": torch.cuda.max_memory_allocated(),
    }


def _reference(train, data, root: str) -> dict[str, object]:
    """The shared reference pass into ``root``: the stored artifact, its forwards' time and the whole call's."""
    from trainers.reference.logps import compute_reference_logps
    from trainers.trl_trainer import RegistryDPOTrainer

    forward = {"forward_s": 0.0, "forward_cpu_s": 0.0}
    compute = RegistryDPOTrainer.compute_ref_log_probs

    def timed(self, model, inputs):  # wall and CPU time of each batch's forward (the pass is synchronous on CPU)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = compute(self, model, inputs)
        forward["forward_s"] += time.perf_counter() - started
        forward["forward_cpu_s"] += time.process_time() - cpu_started
        return result

    RegistryDPOTrainer.compute_ref_log_probs = timed
    started = time.perf_counter()
    reference = compute_reference_logps(train, data, root)
    total = time.perf_counter() - started
    return {"reference": dataclasses.asdict(reference), **forward, "total_s": total}


def _child(args: argparse.Namespace) -> dict[str, object]:
    """Run one side in this (fresh) process and return its timings."""
    import torch

    from trainers.trial_runner import load_trial_data

    output_dir = tempfile.mkdtemp(prefix="bench-trial-")
    shared_prefix = REFERENCE_SIDES.get(args.child, args.child != "unpacked")
    train = bench_train_config(args, output_dir, shared_prefix=shared_prefix)
    data = load_trial_data(train)
    if args.child in REFERENCE_SIDES:
        return _reference(train, data, args.reference_root)
    timer = _step_timer()
    started = time.perf_counter()
    train_side = _train_project if args.child in PROJECT_SIDES else _train_trl
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
        # CPU time is the work done, whatever else shares the cores: the figure to compare on a loaded machine.
        "cpu_s_per_step": (timer.cpu_ends[args.steps] - timer.cpu_ends[0]) / args.steps,
        "total_s": total,
    }
    if torch.cuda.is_available():
        out.update(_cuda_metrics(args, data, measured, params))
    out.update(getattr(timer, "perf", {}))  # the project trial's own perf/* metrics
    return out


def _spawn(args: argparse.Namespace, role: str, extra: list[str]) -> tuple[dict[str, object], int]:
    """Run ``role`` in a fresh Python process; return its JSON result and its peak RSS in bytes."""
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        result_file = Path(tmp) / "result.json"
        log_file = Path(tmp) / "log.txt"
        shared = ["--model", args.model, "--data", args.data, "--max-length", str(args.max_length)]
        shared += ["--steps", str(args.steps), "--seed", str(args.seed), "--peak-tflops", str(args.peak_tflops)]
        command = [sys.executable, str(Path(__file__).resolve()), "--child", role, *shared]
        command += ["--result-file", str(result_file), *extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
        if args.threads:
            env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
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
        description="Steps/s and peak RSS of one project trial (shared-prefix forward, and without it) vs a plain "
        "TRL DPOTrainer script (TRL's defaults and/or tuned), and the reference pass both ways (fresh process each).",
    )
    p.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M), 'tiny-random' or a local path")
    p.add_argument("--data", default="embedded", help="'embedded' or a preference file (e.g. the HH sample)")
    p.add_argument("--max-length", type=int, default=128, help="max tokens of prompt + completion (TRL's max_length)")
    p.add_argument(
        "--trl",
        choices=("both", *TRL_SIDES),
        default="both",
        help="TRL side(s): 'defaults' (TRL's defaults), 'tuned' (precompute_ref_log_probs=True, gradient "
        "checkpointing off) or both",
    )
    p.add_argument("--repeats", type=int, default=3, help="measurements per side (each repeat runs every side once)")
    p.add_argument("--steps", type=int, default=6, help="measured optimizer steps after one warm-up step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        help="intra-op threads of every child (OMP_NUM_THREADS); 1 makes CPU s/step the work a step takes even on a "
        "loaded machine, where idle threads of a team spin at barriers while a sibling waits for a core",
    )
    p.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak TFLOP/s for MFU (CUDA only)")
    p.add_argument("--out", default="bench/results/trial_vs_trl.json", help="where to write the JSON results")
    p.add_argument("--child", choices=(*REFERENCE_SIDES, *PROJECT_SIDES, *TRL_SIDES.values()), help=argparse.SUPPRESS)
    p.add_argument("--reference", help=argparse.SUPPRESS)
    p.add_argument("--reference-root", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    return p


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1 or args.max_length < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats, --steps, --max-length and --threads must be >= 1")
    if not args.peak_tflops > 0:
        parser.error("--peak-tflops must be > 0")
    return args


def _measure(args: argparse.Namespace) -> dict[str, list[dict[str, object]]]:
    """``--repeats`` rounds of every side, each in a fresh process; the first round's references feed the trials."""
    sides = _sides(args)
    runs: dict[str, list[dict[str, object]]] = {side: [] for side in sides}
    references: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-reference-") as reference_root:
        for repeat in range(args.repeats):
            for side in sides:
                extra = []
                if side in REFERENCE_SIDES:
                    extra = ["--reference-root", str(Path(reference_root) / f"{side}-{repeat}")]
                elif side in PROJECT_SIDES:
                    reference = "reference-packed" if side == "project" else "reference-unpacked"
                    extra = ["--reference", references[reference]]
                result, peak_rss = _spawn(args, side, extra)
                if side in REFERENCE_SIDES:
                    references.setdefault(side, json.dumps(result.pop("reference")))
                    measured = f"forwards {result['forward_s']:.1f} s ({result['forward_cpu_s']:.1f} CPU s), "
                    measured += f"whole pass {result['total_s']:.1f} s"
                else:
                    measured = f"{result['steps_per_s']:.3f} steps/s, {result['cpu_s_per_step']:.2f} CPU s/step"
                result.update(repeat=repeat, peak_rss_bytes=peak_rss, load_average=load_average())
                runs[side].append(result)
                rss = f"peak RSS {peak_rss / 2**20:.0f} MiB"
                print(f"[{side} #{repeat}] {measured}, {rss}, load {result['load_average']}", flush=True)
    return runs


def _ratios(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    """The project's speed-up over every other trainer (steps/s, CPU time per step), its peak RSS over theirs, and
    the reference pass's speed-up (its forwards' wall and CPU time, the whole call's wall time)."""
    ours, ratios = summary["project"], {}
    for side, theirs in summary.items():
        if side != "project" and side not in REFERENCE_SIDES:
            ratios[f"steps_per_s/project_over_{side}"] = ours["steps_per_s"] / theirs["steps_per_s"]
            ratios[f"cpu_s_per_step/{side}_over_project"] = theirs["cpu_s_per_step"] / ours["cpu_s_per_step"]
            ratios[f"peak_rss/project_over_{side}"] = ours["peak_rss_bytes"] / theirs["peak_rss_bytes"]
    packed, unpacked = summary["reference-packed"], summary["reference-unpacked"]
    for key in ("forward_s", "forward_cpu_s", "total_s"):
        ratios[f"reference_{key}/unpacked_over_packed"] = unpacked[key] / packed[key]
    return ratios


def _print_summary(args: argparse.Namespace, summary: dict[str, dict[str, float]], ratios: dict[str, float]) -> None:
    print()
    print(
        f"model={args.model} data={args.data} batch={BATCH_PAIRS} pairs max_length={args.max_length} "
        f"steps={args.steps} repeats={args.repeats} threads={args.threads or 'default'}"
    )
    header = f"{'side':<18} {'median steps/s':>15} {'CPU s/step':>11} {'median peak RSS (MiB)':>22}"
    has_tokens = "tokens_per_s" in summary["project"]
    if has_tokens:
        header += f" {'tokens/s':>10} {'MFU':>7}"
    print(header)
    for side, row in summary.items():
        if side in REFERENCE_SIDES:
            continue
        line = f"{side:<18} {row['steps_per_s']:>15.3f} {row['cpu_s_per_step']:>11.2f}"
        line += f" {row['peak_rss_bytes'] / 2**20:>22.0f}"
        if has_tokens:
            line += f" {row['tokens_per_s']:>10.0f} {row['mfu']:>7.2%}"
        print(line)
    for side in REFERENCE_SIDES:
        row = summary[side]
        forwards = f"forwards {row['forward_s']:.1f} s ({row['forward_cpu_s']:.1f} CPU s)"
        print(f"{side:<18} {forwards}, whole pass {row['total_s']:.1f} s (median)")
    for key, value in ratios.items():
        print(f"  {key:<42} {value:.2f}x")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden ``--child``, one measurement); returns the exit code."""
    args = _parse_args(argv)
    if args.child:
        Path(args.result_file).write_text(json.dumps(_child(args)))
        return 0

    runs = _measure(args)
    summary = {side: _median(side_runs) for side, side_runs in runs.items()}
    ratios = _ratios(summary)
    _print_summary(args, summary, ratios)
    results = {
        "model": args.model,
        "data": args.data,
        "trl": args.trl,
        "threads": args.threads,
        "batch_pairs": BATCH_PAIRS,
        "max_length": args.max_length,
        "steps": args.steps,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "median": summary,
        "ratios": ratios,
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
