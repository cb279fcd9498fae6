"""Benchmark: trial-steps spent by ASHA + divergence stopping vs the full grid, and whether both agree.

Usage::

    python bench/early_stopping.py                       # tiny-random, dpo x beta_kl [0.1, 0.5, 500] x 2 seeds
    python bench/early_stopping.py --beta-kl 0.1 500 --seeds 1 --max-steps 6

Two sweeps of the same grid (``python sweep/run.py --config smoke --no-mlflow`` in a temporary directory):

* ``early``: ASHA (``scheduler.asha=true``, grace period / reduction factor as given) and the divergence stopper
  with the smoke config's thresholds.
* ``full``: ``scheduler.asha=false`` and divergence thresholds that never fire (grace period longer than the run,
  factors of 1e30), so every trial runs all its steps. Non-finite losses and gradients still stop a trial: the
  monitor always counts them (a NaN policy cannot train on), so such a trial's full-grid steps are short too.

The full grid's verdicts are then recomputed offline from its complete step history with the *same* divergence
rules the early sweep used (:class:`trainers.collapse.DivergenceMonitor`), which is what the full grid would
conclude. Compared: per-trial verdicts (a pruned trial has none), per-cell verdicts as the stability map gives them
(``diverged`` when any seed diverged, ``stable`` when a seed completed and none diverged, ``undetermined`` when every
seed was pruned; undetermined cells are counted, not compared), the best cell (max mean ``eval_accuracy`` among
stable cells), and trial-steps (sum of ``steps`` in ``map/trials.csv``) as a
fraction of the full grid's nominal ``n_trials x max_steps``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import pandas as pd
from _common import ROOT, load_average, run_logged, sweep_command, trials_table, tune_results

sys.path.insert(0, str(ROOT))  # run as a script (python bench/early_stopping.py): make the project importable

from trainers.collapse import DivergenceConfig, DivergenceMonitor  # noqa: E402
from trainers.protocol import ReportKey, ReportType, TrialStatus  # noqa: E402

CELL = ["loss", "beta_kl", "beta_mix"]
NEVER = {"grace_steps": 10**6, "grad_norm_factor": 1e30, "loss_explosion_factor": 1e30}
"""Divergence thresholds that never fire on finite values."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/early_stopping.py",
        description="Trial-steps of ASHA + divergence stopping vs the full grid; same verdicts and best cell?",
    )
    p.add_argument("--model", default="tiny-random", help="'tiny-random', 'embedded' or a local path")
    p.add_argument("--losses", nargs="+", default=["dpo"], help="grid.losses")
    p.add_argument("--beta-kl", nargs="+", type=float, default=[0.1, 0.5, 500.0], help="grid.beta_kl")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1")
    p.add_argument("--lr", type=float, default=0.05, help="train.learning_rate (high, so that a cell diverges)")
    p.add_argument("--max-steps", type=int, default=8, help="train.max_steps")
    p.add_argument("--eval-steps", type=int, default=2, help="train.eval_steps (ASHA's rung metric)")
    p.add_argument("--grace-period", type=int, default=2, help="scheduler.grace_period")
    p.add_argument("--reduction-factor", type=float, default=2.0, help="scheduler.reduction_factor")
    p.add_argument("--divergence-grace", type=int, default=1, help="train.divergence.grace_steps of the early sweep")
    p.add_argument("--out", default="bench/results/early_stopping.json", help="where to write the JSON results")
    return p


def _recomputed_verdicts(storage: Path, name: str, config: DivergenceConfig) -> dict[str, dict[str, object]]:
    """Per Tune trial directory: the verdict ``config`` reaches on that trial's full step history."""
    by_trial: dict[str, list[dict]] = {}
    for row in tune_results(storage, name):
        if row.get(ReportKey.REPORT_TYPE) == ReportType.TRAIN and ReportKey.STEP in row:
            by_trial.setdefault(row["_trial_dir"], []).append(row)
    verdicts = {}
    for rows in by_trial.values():
        monitor = DivergenceMonitor(config)
        for row in sorted(rows, key=lambda r: r[ReportKey.STEP]):
            monitor.update(int(row[ReportKey.STEP]), row)
        verdict = monitor.final()
        verdicts[rows[0]["trial_id"]] = {"diverged": verdict.diverged, "step": verdict.step, "reason": verdict.reason}
    return verdicts


def _cells(trials: pd.DataFrame) -> pd.DataFrame:
    """Per cell, as the stability map judges it (:func:`sweep.stability.map.aggregate_cells`): ``diverged`` when any
    seed diverged, ``stable`` when some seed trained to the end and none diverged, ``undetermined`` when every seed
    was pruned (a pruned trial has no verdict); plus the mean held-out accuracy of the non-diverged seeds."""
    trials = trials.assign(
        beta_mix=trials["beta_mix"].fillna(-1.0),
        judged=trials["diverged"] | trials["status"].map(lambda s: TrialStatus(s).trained_to_end),
    )
    grouped = trials.groupby(CELL, sort=True)
    cells = pd.DataFrame(
        {
            "n_diverged": grouped["diverged"].sum(),
            "n_verdict": grouped["judged"].sum(),
            "eval_accuracy": grouped.apply(
                lambda g: g.loc[~g["diverged"], "eval_accuracy"].mean(), include_groups=False
            ),
            "steps": grouped["steps"].sum(),
        }
    ).reset_index()
    cells["verdict"] = [
        "diverged" if n_div else ("stable" if n_verdict else "undetermined")
        for n_div, n_verdict in zip(cells["n_diverged"], cells["n_verdict"], strict=True)
    ]
    return cells


def _best(cells: pd.DataFrame) -> list[object] | None:
    stable = cells[(cells["verdict"] == "stable") & cells["eval_accuracy"].notna()]
    if stable.empty:
        return None
    best = stable.loc[stable["eval_accuracy"].idxmax()]
    return [best["loss"], float(best["beta_kl"]), None if best["beta_mix"] < 0 else float(best["beta_mix"])]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.max_steps < 1 or args.eval_steps < 1:
        parser.error("--seeds, --max-steps and --eval-steps must be >= 1")
    return args


def _overrides(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """``(common, early, full)``: the grid both sweeps share, and each sweep's full override list."""
    common = [
        f"grid.losses=[{','.join(args.losses)}]",
        f"grid.beta_kl=[{','.join(f'{b:g}' for b in args.beta_kl)}]",
        f"grid.seeds=[{','.join(str(s) for s in range(args.seeds))}]",
        f"train.model={args.model}",
        f"train.learning_rate={args.lr}",
        f"train.max_steps={args.max_steps}",
        f"train.eval_steps={args.eval_steps}",
    ]
    if not any(loss.startswith("dlrml") for loss in args.losses):
        common.append("grid.beta_mix=[]")
    early = [
        *common,
        "scheduler.asha=true",
        f"scheduler.grace_period={args.grace_period}",
        f"scheduler.reduction_factor={args.reduction_factor}",
        f"train.divergence.grace_steps={args.divergence_grace}",
    ]
    full = [*common, "scheduler.asha=false", *(f"train.divergence.{k}={v}" for k, v in NEVER.items())]
    return common, early, full


def _run_sweeps(early: list[str], full: list[str], divergence: DivergenceConfig) -> dict[str, dict[str, object]]:
    """Run the early and the full sweep; per sweep its wall time, load average and trials (with ``diverged``)."""
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-early-") as tmp:
        tmp_path = Path(tmp)
        for name, overrides in (("early", early), ("full", full)):
            storage = tmp_path / name
            _, wall = run_logged(sweep_command(name, storage, overrides), tmp_path / f"{name}.log")
            trials = trials_table(storage, name)
            if name == "early":
                trials["diverged"] = trials["status"] == TrialStatus.DIVERGED
            else:
                verdicts = _recomputed_verdicts(storage, name, divergence)
                trials["diverged"] = [
                    verdicts.get(t, {}).get("diverged", s == TrialStatus.DIVERGED)
                    for t, s in zip(trials["trial_id"], trials["status"], strict=True)
                ]
            runs[name] = {"wall_s": wall, "load_average": load_average(), "trials": trials}
            print(f"[{name}] sweep {wall:.1f} s (load {runs[name]['load_average']})", flush=True)
    return runs


def _compare(
    runs: dict[str, dict[str, object]], max_steps: int, common: list[str]
) -> tuple[dict[str, object], pd.DataFrame]:
    """The JSON report (per sweep, then the comparisons) and the per-cell table of both sweeps side by side."""
    nominal = len(runs["full"]["trials"]) * max_steps
    report: dict[str, object] = {"nominal_full_trial_steps": nominal}
    cells = {}
    for name, run in runs.items():
        trials = run["trials"]
        cells[name] = _cells(trials)
        report[name] = {
            "wall_s": run["wall_s"],
            "load_average": run["load_average"],
            "trial_steps": int(trials["steps"].sum()),
            "statuses": trials["status"].value_counts().to_dict(),
            "best_cell": _best(cells[name]),
            "trials": json.loads(trials.to_json(orient="records")),
            "cells": json.loads(cells[name].to_json(orient="records")),
        }
    key = ["loss", "beta_kl", "seed"]
    per_trial = runs["early"]["trials"].merge(runs["full"]["trials"], on=key, suffixes=("_early", "_full"))
    # A pruned trial has no verdict of its own; the others are compared with the full grid's.
    judged = per_trial[per_trial["status_early"] != TrialStatus.PRUNED]
    merged = cells["early"].merge(cells["full"], on=CELL, suffixes=("_early", "_full"))
    determined = merged[merged["verdict_early"] != "undetermined"]
    report.update(
        same_trial_verdicts=bool((judged["diverged_early"] == judged["diverged_full"]).all()),
        same_cell_verdicts=bool((determined["verdict_early"] == determined["verdict_full"]).all()),
        undetermined_cells_early=int((merged["verdict_early"] == "undetermined").sum()),
        same_best_cell=report["early"]["best_cell"] == report["full"]["best_cell"],
        early_fraction_of_full=report["early"]["trial_steps"] / nominal,
        grid=common,
    )
    return report, merged


def _print_summary(args: argparse.Namespace, report: dict[str, object], merged: pd.DataFrame) -> None:
    print()
    print(
        f"model={args.model} grid: losses={args.losses} beta_kl={args.beta_kl} seeds={args.seeds} "
        f"lr={args.lr} max_steps={args.max_steps}"
    )
    print(
        f"{'cell (loss, beta_kl)':<24} {'early: verdict':>15} {'acc':>6} {'steps':>6} "
        f"{'full: verdict':>15} {'acc':>6} {'steps':>6}"
    )
    for _, row in merged.iterrows():
        label = f"{row['loss']} {row['beta_kl']:g}" + ("" if row["beta_mix"] < 0 else f" {row['beta_mix']:g}")
        cells_text = []
        for side in ("early", "full"):
            verdict = row[f"verdict_{side}"]
            acc = row[f"eval_accuracy_{side}"]
            acc_text = "-" if isinstance(acc, float) and math.isnan(acc) else f"{acc:.3f}"
            cells_text.append(f"{verdict:>15} {acc_text:>6} {int(row[f'steps_{side}']):>6}")
        print(f"{label:<24} {' '.join(cells_text)}")
    early, full = report["early"], report["full"]
    print(
        f"trial-steps: early {early['trial_steps']} / full {full['trial_steps']} "
        f"(nominal full grid {report['nominal_full_trial_steps']}) = {report['early_fraction_of_full']:.0%} "
        "of the full grid"
    )
    print(
        f"same verdicts: per trial (pruned ones have none) {report['same_trial_verdicts']}, "
        f"per cell {report['same_cell_verdicts']} ({report['undetermined_cells_early']} cells undetermined early); "
        f"best cell early {early['best_cell']} vs full {full['best_cell']}: {report['same_best_cell']}"
    )
    print(f"load average: early {early['load_average']}, full {full['load_average']}")


def _write_report(report: dict[str, object], path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"results: {out}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    args = _parse_args(argv)
    common, early, full = _overrides(args)
    runs = _run_sweeps(early, full, DivergenceConfig(grace_steps=args.divergence_grace))
    report, merged = _compare(runs, args.max_steps, common)
    _print_summary(args, report, merged)
    _write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
