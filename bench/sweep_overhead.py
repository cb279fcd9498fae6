"""Benchmark: wall time of an N-trial sweep vs the same trials run standalone, and launch-to-first-step time.

Usage::

    python bench/sweep_overhead.py                                  # embedded SmolLM2-135M, 2 trials
    python bench/sweep_overhead.py --model tiny-random --trials 2   # quick run

The sweep is ``python sweep/run.py --config smoke --no-mlflow`` in a temporary directory, with ``--trials`` DPO
trials (seeds ``0..N-1``), ASHA off (every trial runs all its steps, as standalone runs do) and
``resources.cpus_per_worker`` = every CPU, so trials run one at a time with the same thread count as a standalone
run. The standalone side runs ``python -m trainers.train`` with exactly the same settings, once per trial, one
after the other, and its trial compute is the sum of those processes' wall times (each pays its own start-up,
model load and reference pass; the sweep pays the reference pass once).

* overhead = (sweep wall - sum of standalone walls) / sum of standalone walls (negative: the sweep is faster).
* per-trial overhead = a trial's wall time minus its own work (steps, evaluations, save: ``timing/work_s``); a
  later trial's wall runs from the previous trial's end (trials run one at a time).
* first step = the earliest training-step report in Tune's ``result.json`` files (``timestamp``, 1 s resolution)
  minus the time ``sweep/run.py`` was launched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from _common import ROOT, load_average, run_logged, sweep_command, trials_table, tune_results

sys.path.insert(0, str(ROOT))  # run as a script (python bench/sweep_overhead.py): make the project importable

from trainers.protocol import ReportKey, ReportType  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/sweep_overhead.py",
        description="Sweep wall time vs the sum of the same trials run standalone; launch-to-first-step time.",
    )
    p.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M), 'tiny-random' or a local path")
    p.add_argument("--trials", type=int, default=2, help="number of trials (DPO, seeds 0..N-1)")
    p.add_argument("--max-steps", type=int, default=4, help="optimizer steps per trial")
    p.add_argument("--out", default="bench/results/sweep_overhead.json", help="where to write the JSON results")
    return p


def _shared_settings(args: argparse.Namespace) -> dict[str, object]:
    """The trial settings both sides use (the smoke config's, with the model and step count of the bench)."""
    return {
        "loss": "dpo",
        "beta_kl": 0.1,
        "model": args.model,
        "data": "embedded",
        "max_train_rows": 16,
        "max_eval_rows": 8,
        "lr": 1e-4,
        "batch_size": 2,
        "max_steps": args.max_steps,
        "max_length": 64,
        "eval_steps": 2,
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.trials < 1 or args.max_steps < 1:
        parser.error("--trials and --max-steps must be >= 1")
    return args


def _sweep_overrides(args: argparse.Namespace, settings: dict[str, object], seeds: list[int], cpus: int) -> list[str]:
    """The smoke sweep's overrides: ``--trials`` DPO seeds, ASHA off, every CPU for each trial."""
    return [
        "grid.losses=[dpo]",
        "grid.beta_mix=[]",
        f"grid.beta_kl=[{settings['beta_kl']}]",
        f"grid.seeds=[{','.join(map(str, seeds))}]",
        f"train.model={args.model}",
        f"train.max_steps={args.max_steps}",
        "scheduler.asha=false",
        f"resources.cpus_per_worker={cpus}",
    ]


def _run_sweep(overrides: list[str], tmp_path: Path) -> dict[str, object]:
    """Run the sweep; its wall time, launch-to-first-step time, reference pass time, statuses and load averages."""
    storage = tmp_path / "storage"
    load_before = load_average()
    launched, sweep_wall = run_logged(sweep_command("overhead", storage, overrides), tmp_path / "sweep.log")
    load_sweep = load_average()
    results = tune_results(storage, "overhead")
    reports = [r for r in results if r.get(ReportKey.REPORT_TYPE) == ReportType.TRAIN]
    if not reports:
        raise RuntimeError(f"no training-step report in {storage / 'overhead'}")
    finals = [r for r in results if r.get(ReportKey.REPORT_TYPE) == ReportType.FINAL]
    log = (tmp_path / "sweep.log").read_text()
    match = re.search(r"reference log-probs \S+ ready in ([\d.]+) s", log)
    return {
        "sweep_wall_s": sweep_wall,
        "first_step_s": min(r["timestamp"] for r in reports) - launched,
        "reference_s": float(match.group(1)) if match else None,
        **_per_trial_overhead(finals),
        "sweep_statuses": trials_table(storage, "overhead")["status"].value_counts().to_dict(),
        "load_average_before": load_before,
        "load_average_after_sweep": load_sweep,
    }


def _per_trial_overhead(finals: list[dict]) -> dict[str, object]:
    """Per-trial overhead of trials that ran one after another: wall time minus the trial's own work.

    A trial's own work (steps, held-out evaluations, final save) is its ``timing/work_s``. The first trial's wall
    is from when its process began the trial to its end (the process start before it counts in the first step);
    a later trial's wall is from the previous trial's end to its own end: Tune's scheduling, the reused process's
    reset, data, model copy and trainer set-up are all overhead.
    """
    finals = sorted(finals, key=lambda r: r[ReportKey.ENDED_AT])
    if not finals:
        return {"first_trial_overhead_s": None, "later_trial_overhead_s": []}
    first = finals[0]
    later = [
        cur[ReportKey.ENDED_AT] - prev[ReportKey.ENDED_AT] - cur[ReportKey.WORK_SECONDS]
        for prev, cur in zip(finals, finals[1:], strict=False)
    ]
    return {
        "first_trial_overhead_s": first[ReportKey.ENDED_AT]
        - first[ReportKey.STARTED_AT]
        - first[ReportKey.WORK_SECONDS],
        "later_trial_overhead_s": later,
        "trial_work_s": [r[ReportKey.WORK_SECONDS] for r in finals],
    }


def _run_standalone(seeds: list[int], settings: dict[str, object], tmp_path: Path) -> list[dict[str, object]]:
    """Run ``python -m trainers.train`` once per seed, one after the other; per run its seed, wall time and load."""
    standalone = []
    for seed in seeds:
        command = [sys.executable, "-m", "trainers.train", "--no-save", "--seed", str(seed)]
        for key, value in settings.items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        command += ["--output-dir", str(tmp_path / f"trial-{seed}")]
        _, wall = run_logged(command, tmp_path / f"standalone-{seed}.log")
        standalone.append({"seed": seed, "wall_s": wall, "load_average": load_average()})
        print(f"[standalone seed={seed}] {wall:.1f} s (load {standalone[-1]['load_average']})", flush=True)
    return standalone


def _print_summary(results: dict[str, object]) -> None:
    load_sweep = results["load_average_after_sweep"]
    print()
    print(
        f"model={results['model']} trials={results['trials']} max_steps={results['max_steps']} "
        f"cpus/trial={results['cpus_per_trial']}"
    )
    print(f"{'measure':<36} {'value':>10}   load (1/5/15 min)")
    print(f"{'sweep wall (s)':<36} {results['sweep_wall_s']:>10.1f}   {load_sweep}")
    print(
        f"{'sum of standalone walls (s)':<36} {results['standalone_total_s']:>10.1f}   "
        f"{results['standalone'][-1]['load_average']}"
    )
    print(f"{'sweep overhead':<36} {results['overhead_fraction']:>10.1%}")
    print(f"{'launch -> first trial step (s)':<36} {results['first_step_s']:>10.1f}   {load_sweep}")
    if results["reference_s"] is not None:
        print(f"{'  of which shared reference pass (s)':<36} {results['reference_s']:>10.1f}")
    if results["first_trial_overhead_s"] is not None:
        print(f"{'first trial overhead (s)':<36} {results['first_trial_overhead_s']:>10.1f}")
    for i, overhead in enumerate(results["later_trial_overhead_s"], start=2):
        print(f"{f'trial {i} overhead (s, warm process)':<36} {overhead:>10.1f}")
    print(f"sweep trial statuses: {results['sweep_statuses']}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    args = _parse_args(argv)
    settings = _shared_settings(args)
    seeds = list(range(args.trials))
    cpus = os.cpu_count() or 1
    overrides = _sweep_overrides(args, settings, seeds, cpus)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        sweep = _run_sweep(overrides, Path(tmp))
        standalone = _run_standalone(seeds, settings, Path(tmp))

    total_standalone = sum(run["wall_s"] for run in standalone)
    results = {
        "model": args.model,
        "trials": args.trials,
        "max_steps": args.max_steps,
        "cpus_per_trial": cpus,
        "sweep_overrides": overrides,
        "standalone_settings": settings,
        "sweep_wall_s": sweep["sweep_wall_s"],
        "standalone": standalone,
        "standalone_total_s": total_standalone,
        "overhead_fraction": (sweep["sweep_wall_s"] - total_standalone) / total_standalone,
        "first_step_s": sweep["first_step_s"],
        "reference_s": sweep["reference_s"],
        "first_trial_overhead_s": sweep["first_trial_overhead_s"],
        "later_trial_overhead_s": sweep["later_trial_overhead_s"],
        "trial_work_s": sweep.get("trial_work_s", []),
        "sweep_statuses": sweep["sweep_statuses"],
        "load_average_before": sweep["load_average_before"],
        "load_average_after_sweep": sweep["load_average_after_sweep"],
    }
    _print_summary(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
