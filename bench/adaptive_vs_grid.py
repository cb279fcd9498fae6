"""Adaptive stability mapping vs the full grid, on a cheap stand-in trial whose boundary is known.

The stand-in (:func:`stand_in`) is a deterministic function of (form, beta_kl, beta_mix, seed) with seed noise:
it diverges above a line in log(beta_kl) x log(beta_mix) (lower for the ``literal`` form), collapses at the smallest
beta_kl and stalls at the largest, with per-seed Gaussian noise (seeded from the trial) so that cells near each
boundary have seeds that disagree. A diverged trial stops early (the deeper past the line, the earlier); every
other trial runs all its steps. No model is trained: the whole benchmark takes seconds.

Both runs go through the real map code: trial rows -> :func:`sweep.stability.cells.aggregate_cells`; the adaptive
one adds :func:`sweep.search.infer.with_inferred`. Reported: the fraction of lattice cells whose adaptive verdict
(measured or inferred; ``unmeasured`` counts as a disagreement) equals the full grid's, and the fraction of the
grid's trial-steps (and trials) the adaptive run used, for a few adaptive settings; each is repeated on four other
noise realisations of the stand-in. Writes ``bench/results/adaptive_vs_grid.json``.

Usage: ``python bench/adaptive_vs_grid.py [--concurrency 4] [--max-trials N]``
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import zlib
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sweep.config import AdaptiveConfig, GridConfig  # noqa: E402
from sweep.search.infer import UNMEASURED, with_inferred  # noqa: E402
from sweep.search.lattice import AdaptivePlanner, TrialSpec, lattices  # noqa: E402
from sweep.stability.cells import aggregate_cells  # noqa: E402
from trainers.protocol import TrialStatus  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "adaptive_vs_grid.json"
MAX_STEPS = 200
NOISE_SD = 0.12  # per-seed noise, in log10(beta) units (the lattice step is 0.29 in beta_kl, 0.43 in beta_mix)
DIVERGENCE_OFFSET = {"stable": 0.6, "literal": 0.0}  # diverged where log10 bmix > 0.8 log10 bkl + offset
COLLAPSE_BELOW, STALL_ABOVE = -1.75, -0.25  # log10 beta_kl
GRID = GridConfig(
    losses=["dlrml"],
    forms=["stable", "literal"],
    beta_kl=[round(10 ** (-2 + 2 * k / 7), 4) for k in range(8)],
    beta_mix=[round(10 ** (-2 + 3 * k / 7), 4) for k in range(8)],
    seeds=[0, 1, 2],
)
LETTERS = {"stable": "S", "stalled": "T", "collapsed": "C", "diverged": "D", UNMEASURED: "?", "undetermined": "u"}


def stand_in(spec: TrialSpec, draw: int = 0) -> tuple[TrialStatus, int]:
    """The stand-in trial's status and the optimizer steps it ran (``draw`` picks another noise realisation)."""
    u, v = math.log10(spec.beta_kl), math.log10(spec.beta_mix)
    rng = random.Random(zlib.crc32(f"{spec.form}|{spec.beta_kl}|{spec.beta_mix}|{spec.seed}|{draw}".encode()))
    noise_div, noise_kl = rng.gauss(0, NOISE_SD), rng.gauss(0, NOISE_SD)
    past = v - 0.8 * u - DIVERGENCE_OFFSET[spec.form] + noise_div
    if past > 0:
        return TrialStatus.DIVERGED, max(5, int(MAX_STEPS * (1 - min(0.95, 0.6 * past + 0.2))))
    if u + noise_kl < COLLAPSE_BELOW:
        return TrialStatus.COLLAPSED, MAX_STEPS
    if u + noise_kl > STALL_ABOVE:
        return TrialStatus.STALLED, MAX_STEPS
    return TrialStatus.STABLE, MAX_STEPS


def trial_row(spec: TrialSpec, status: TrialStatus, steps: int, n: int) -> dict[str, object]:
    """A ``trials.csv`` row of a stand-in trial."""
    diverged = status is TrialStatus.DIVERGED
    return {
        "trial_id": f"t{n:05d}",
        "loss": spec.loss,
        "form": spec.form,
        "beta_kl": spec.beta_kl,
        "beta_mix": spec.beta_mix,
        "seed": spec.seed,
        "status": status.value,
        "reason": None,
        "diverged_step": steps if diverged else math.nan,
        "steps": steps,
        "eval_accuracy": math.nan,
    }


def run_grid(grid: GridConfig, draw: int = 0) -> pd.DataFrame:
    """Every trial of the grid."""
    specs = [TrialSpec(c.name, c.form, c.beta_kl, c.beta_mix, seed) for c in grid.trials() for seed in grid.seeds]
    return pd.DataFrame([trial_row(spec, *stand_in(spec, draw), n) for n, spec in enumerate(specs)])


def run_adaptive(planner: AdaptivePlanner, concurrency: int, draw: int = 0) -> pd.DataFrame:
    """The planner's trials, ``concurrency`` at a time (each batch finishes before the next is proposed)."""
    rows = []
    while not planner.done:
        batch = planner.propose(concurrency)
        if not batch:
            raise RuntimeError("planner proposes nothing with nothing pending, yet is not done")
        for spec in batch:
            status, steps = stand_in(spec, draw)
            planner.record(spec, status)
            rows.append(trial_row(spec, status, steps, len(rows)))
    return pd.DataFrame(rows)


def compare(grid_cells: pd.DataFrame, adaptive_cells: pd.DataFrame) -> pd.DataFrame:
    """One row per lattice cell: the grid's verdict, the adaptive one, whether it was inferred, seeds measured."""
    keys = ["loss", "form", "beta_kl", "beta_mix"]
    left = grid_cells[[*keys, "verdict"]].rename(columns={"verdict": "grid"})
    right = adaptive_cells[[*keys, "verdict", "inferred", "n_trials"]].rename(columns={"verdict": "adaptive"})
    both = left.merge(right, on=keys, how="left", validate="one_to_one")
    both["agree"] = both["grid"] == both["adaptive"]
    return both


def print_table(table: pd.DataFrame) -> None:
    """Per (loss, form): rows beta_mix (high first), columns beta_kl; ``grid/adaptive`` letters, the adaptive one
    lower-case when inferred, ``*`` on a disagreement, then the seeds the adaptive run measured."""
    for (loss, form), group in table.groupby(["loss", "form"], sort=False):
        print(f"\n{loss}[{form}]  grid/adaptive (lower-case: inferred; *: disagree; n: adaptive seeds)")
        kls = sorted(group["beta_kl"].unique())
        print("bmix \\ bkl " + "".join(f"{kl:>10g}" for kl in kls))
        for mix in sorted(group["beta_mix"].unique(), reverse=True):
            cells = []
            for kl in kls:
                row = group[(group["beta_kl"] == kl) & (group["beta_mix"] == mix)].iloc[0]
                mine = LETTERS[row["adaptive"]]
                mine = mine.lower() if row["inferred"] else mine
                mark = " " if row["agree"] else "*"
                cells.append(f"{LETTERS[row['grid']]}/{mine}{mark} n{int(row['n_trials'])}".rjust(10))
            print(f"{mix:>10g} " + "".join(cells))


SETTINGS: dict[str, dict[str, object]] = {
    "default": {},
    "max_seeds_per_cell=2": {"max_seeds_per_cell": 2},
    "interval_width=0.8 (no width seeds)": {"interval_width": 0.8},
}
"""Adaptive settings compared (overrides of :class:`AdaptiveConfig`'s defaults)."""


def figures(table: pd.DataFrame, grid_trials: pd.DataFrame, adaptive_trials: pd.DataFrame) -> dict[str, object]:
    """Agreement and compute figures of one adaptive run against the grid."""
    measured = ~table["inferred"]
    out = {
        "cells": len(table),
        "agreement": round(float(table["agree"].mean()), 4),
        "agreement_measured": round(float(table.loc[measured, "agree"].mean()), 4),
        "agreement_inferred": round(float(table.loc[~measured, "agree"].mean()), 4) if (~measured).any() else None,
        "cells_measured": int(measured.sum()),
        "cells_inferred": int((~measured & (table["adaptive"] != UNMEASURED)).sum()),
        "cells_unmeasured": int((table["adaptive"] == UNMEASURED).sum()),
        "trials_grid": len(grid_trials),
        "trials_adaptive": len(adaptive_trials),
        "trial_fraction": round(len(adaptive_trials) / len(grid_trials), 4),
        "steps_grid": int(grid_trials["steps"].sum()),
        "steps_adaptive": int(adaptive_trials["steps"].sum()),
        "step_fraction": round(float(adaptive_trials["steps"].sum() / grid_trials["steps"].sum()), 4),
    }
    out["target_met"] = bool(out["agreement"] >= 0.95 and out["step_fraction"] <= 0.40)
    return out


def noise_draws(config: AdaptiveConfig, concurrency: int, draws: int = 4) -> list[dict[str, object]]:
    """The same comparison on other noise realisations of the stand-in (draws 1..``draws``): how much the figures
    depend on the one realisation the tables show."""
    out = []
    for draw in range(1, draws + 1):
        grid_trials = run_grid(GRID, draw)
        adaptive_trials = run_adaptive(AdaptivePlanner(config, GRID), concurrency, draw)
        table = compare(aggregate_cells(grid_trials), with_inferred(aggregate_cells(adaptive_trials), lattices(GRID)))
        result = figures(table, grid_trials, adaptive_trials)
        out.append({"draw": draw, **{k: result[k] for k in ("agreement", "step_fraction", "target_met")}})
    return out


def main() -> None:
    """Run the grid once and the planner per setting, print the tables and figures, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4, help="trials proposed per round (default 4)")
    parser.add_argument("--max-trials", type=int, default=None, help="adaptive.max_trials (default: no cap)")
    args = parser.parse_args()
    started = time.perf_counter()
    grid_trials = run_grid(GRID)
    grid_cells = aggregate_cells(grid_trials)
    runs = {}
    for name, overrides in SETTINGS.items():
        config = AdaptiveConfig(**{"max_trials": args.max_trials, **overrides})
        adaptive_trials = run_adaptive(AdaptivePlanner(config, GRID), args.concurrency)
        table = compare(grid_cells, with_inferred(aggregate_cells(adaptive_trials), lattices(GRID)))
        print(f"\n=== adaptive setting: {name}")
        print_table(table)
        result = figures(table, grid_trials, adaptive_trials)
        print("\n" + "  ".join(f"{k}={v}" for k, v in result.items()))
        runs[name] = {"adaptive": vars(config), **result, "noise_draws": noise_draws(config, args.concurrency)}
        print(
            "other noise draws (agreement, step_fraction): "
            + ", ".join(f"({d['agreement']}, {d['step_fraction']})" for d in runs[name]["noise_draws"])
        )
        runs[name]["cells_table"] = json.loads(table.to_json(orient="records"))
    wall = time.perf_counter() - started
    print(f"\nwall_s={wall:.2f}")
    report = {
        "benchmark": "adaptive_vs_grid",
        "stand_in": {
            "max_steps": MAX_STEPS,
            "noise_sd_log10": NOISE_SD,
            "divergence_offset": DIVERGENCE_OFFSET,
            "collapse_below_log10_bkl": COLLAPSE_BELOW,
            "stall_above_log10_bkl": STALL_ABOVE,
        },
        "grid": {k: getattr(GRID, k) for k in ("losses", "forms", "beta_kl", "beta_mix", "seeds")},
        "concurrency": args.concurrency,
        "target": "agreement >= 0.95 at step_fraction <= 0.40",
        "runs": runs,
        "wall_s": round(wall, 3),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
