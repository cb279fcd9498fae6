"""The adaptive planner and the inference of unmeasured cells, on recorded verdicts (no Ray)."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest

from sweep.config import AdaptiveConfig, GridConfig
from sweep.search.infer import INFERRED_COLUMNS, UNMEASURED, infer_cells, infer_lattice, with_inferred
from sweep.search.lattice import AdaptivePlanner, TrialSpec, coarse_indices, lattices, log_midpoint
from sweep.stability.cells import CELL_COLUMNS, aggregate_cells
from trainers.protocol import TrialStatus

S, D, C, E = TrialStatus.STABLE, TrialStatus.DIVERGED, TrialStatus.COLLAPSED, TrialStatus.ERRORED
BETAS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]


def line_grid(seeds=(0, 1, 2)) -> GridConfig:
    """One loss without beta_mix: a 1-D lattice of 9 beta_kl values."""
    return GridConfig(losses=["dpo"], beta_kl=BETAS, beta_mix=[], seeds=list(seeds))


def square_grid(n: int = 5) -> GridConfig:
    values = BETAS[:n]
    return GridConfig(losses=["dlrml"], forms=["stable"], beta_kl=values, beta_mix=values, seeds=[0, 1, 2])


def run(planner: AdaptivePlanner, oracle, batch: int = 3) -> list[TrialSpec]:
    """Drive the planner to done with ``oracle(spec) -> TrialStatus``; returns every trial in proposal order."""
    trials = []
    while not planner.done:
        specs = planner.propose(batch)
        assert specs, "nothing proposed and nothing pending, yet not done"
        for spec in specs:
            planner.record(spec, oracle(spec))
        trials += specs
    return trials


def threshold(spec: TrialSpec) -> TrialStatus:
    """Diverges above a diagonal in log-beta; no noise."""
    return D if math.log(spec.beta_kl) + math.log(spec.beta_mix or 1.0) > math.log(0.05) else S


# ------------------------------------------------------------------------------------------------ the design


def test_coarse_design_is_the_corners_edges_and_centre_snapped_to_the_grid():
    assert coarse_indices(BETAS, 3) == [0, 4, 8]
    assert coarse_indices(BETAS, 2) == [0, 8]
    assert log_midpoint(BETAS, 0, 8) == 4 and log_midpoint(BETAS, 3, 4) is None
    planner = AdaptivePlanner(AdaptiveConfig(), square_grid(5))
    first = planner.propose(100)
    assert {(s.beta_kl, s.beta_mix) for s in first} == {(a, b) for a in (0.01, 0.05, 0.2) for b in (0.01, 0.05, 0.2)}
    assert {s.seed for s in first} == {0} and {s.loss for s in first} == {"dlrml"}
    assert planner.propose(5) == [] and not planner.done  # the next trials depend on these results


def test_bisection_between_a_stable_and_a_failed_neighbour_down_to_the_lattice():
    planner = AdaptivePlanner(AdaptiveConfig(coarse_points=2, interval_width=0.8), line_grid())
    assert [s.beta_kl for s in planner.propose(5)] == [0.01, 5.0]
    planner.record(TrialSpec("dpo", "stable", 0.01, None, 0), S)
    planner.record(TrialSpec("dpo", "stable", 5.0, None, 0), D)
    probes = []
    boundary = 0.5  # stable below, diverged from here on
    while specs := planner.propose(5):
        assert len(specs) == 1  # one bisection at a time on a line
        probes.append(specs[0].beta_kl)
        planner.record(specs[0], D if specs[0].beta_kl >= boundary else S)
    assert probes == [0.2, 1.0, 0.5]  # log-midpoints: 0.01..5 -> 0.2; 0.2..5 -> 1; 0.2..1 -> 0.5
    assert planner.done and planner.n_proposed == 5


def test_cells_that_agree_are_not_refined():
    planner = AdaptivePlanner(AdaptiveConfig(), square_grid(5))
    trials = run(planner, lambda spec: S)
    assert len(trials) == 9 and planner.done


def test_extra_seeds_only_where_seeds_disagree():
    config = AdaptiveConfig(coarse_points=2, initial_seeds=2, interval_width=0.8)
    planner = AdaptivePlanner(config, line_grid())
    specs = planner.propose(10)
    assert [(s.beta_kl, s.seed) for s in specs] == [(0.01, 0), (0.01, 1), (5.0, 0), (5.0, 1)]
    for spec in specs:
        planner.record(spec, D if (spec.beta_kl, spec.seed) == (5.0, 1) else S)
    # 5.0 disagrees (stable, diverged): a third seed there first; 0.01 agrees: none.
    assert planner.propose(1) == [TrialSpec("dpo", "stable", 5.0, None, 2)]


def test_wide_interval_adds_a_seed_to_a_stable_cell_on_the_boundary_only():
    planner = AdaptivePlanner(AdaptiveConfig(coarse_points=2, interval_width=0.7), line_grid())
    low, high = planner.propose(2)
    planner.record(low, S)
    planner.record(high, D)
    trials = run(planner, lambda spec: D if spec.beta_kl >= 0.5 else S)
    seeds = {}
    for spec in [low, high, *trials]:
        seeds.setdefault(spec.beta_kl, []).append(spec.seed)
    assert seeds[0.2] == [0, 1]  # stable next to 0.5 (diverged): Wilson width 0.79 > 0.7 -> a second seed
    assert seeds[0.5] == [0]  # a failure is already a failure: more seeds cannot make the cell stable
    assert seeds[0.01] == [0]  # stable, but not next to another verdict


def test_a_cell_without_a_verdict_gets_its_next_seed():
    planner = AdaptivePlanner(AdaptiveConfig(coarse_points=2), line_grid())
    a, b = planner.propose(2)
    planner.record(a, E)
    planner.record(b, S)
    assert planner.propose(1) == [dataclasses.replace(a, seed=1)]


def test_budget_stops_proposals_and_the_planner_finishes():
    planner = AdaptivePlanner(AdaptiveConfig(max_trials=4), square_grid(5))
    specs = planner.propose(100)
    assert len(specs) == 4 and planner.propose(1) == [] and not planner.done
    for spec in specs:
        planner.record(spec, S)
    assert planner.done and planner.n_proposed == 4


def test_the_planner_is_deterministic_and_never_repeats_a_trial():
    first = run(AdaptivePlanner(AdaptiveConfig(), square_grid(7)), threshold, batch=4)
    second = run(AdaptivePlanner(AdaptiveConfig(), square_grid(7)), threshold, batch=4)
    assert first == second
    assert len(set(first)) == len(first) < square_grid(7).n_trials


def test_grid_entries_are_the_drivers():
    grid = GridConfig(losses=["dpo", "dlrml"], forms=["stable", "literal"], beta_kl=[0.1, 1.0], beta_mix=[0.2, 2.0])
    driver_grid = [{"loss": dataclasses.asdict(loss), "seed": s} for loss in grid.trials() for s in grid.seeds]
    planner = AdaptivePlanner(AdaptiveConfig(), grid)
    specs = planner.propose(100)
    assert {(s.loss, s.form) for s in specs} == {("dpo", "stable"), ("dlrml", "stable"), ("dlrml", "literal")}
    assert all(planner.grid_entry(spec) in driver_grid for spec in specs)


# ------------------------------------------------------------------------------------------------ inference


def test_a_cell_between_two_of_one_verdict_is_inferred_and_disagreement_stays_unmeasured():
    got = infer_lattice({(0, 0): "stable", (2, 0): "stable", (0, 1): "stable", (2, 1): "diverged"}, (3, 2))
    assert got == {(1, 0): ("stable", (0, 0), (2, 0))}


def test_inference_chains_through_a_box_and_refuses_conflicts():
    corners = {(i, j): "stable" for i in (0, 2) for j in (0, 2)}
    assert set(infer_lattice(corners, (3, 3))) == {(1, 0), (1, 2), (0, 1), (2, 1), (1, 1)}
    conflict = {(0, 1): "stable", (2, 1): "stable", (1, 0): "diverged", (1, 2): "diverged"}
    assert (1, 1) not in infer_lattice(conflict, (3, 3))


def test_infer_cells_rows_are_labelled_and_carry_no_made_up_numbers():
    grid = square_grid(3)
    trials = []
    for n, (kl, mix, status) in enumerate(
        [(0.01, 0.01, S), (0.05, 0.01, S), (0.01, 0.05, S), (0.05, 0.05, D), (0.02, 0.05, C)]
    ):
        trials.append(
            {"trial_id": f"t{n}", "loss": "dlrml", "form": "stable", "beta_kl": kl, "beta_mix": mix, "seed": 0}
            | {"status": status.value, "reason": None, "diverged_step": math.nan, "steps": 10, "eval_accuracy": 0.7}
        )
    cells = aggregate_cells(pd.DataFrame(trials))
    extra = infer_cells(cells, lattices(grid))
    assert list(extra.columns) == list(INFERRED_COLUMNS) == [*CELL_COLUMNS, "inferred", "assumption"]
    assert extra["inferred"].all() and (extra["n_trials"] == 0).all() and extra["failed_rate"].isna().all()
    verdicts = {(r.beta_kl, r.beta_mix): r.verdict for r in extra.itertuples()}
    assert verdicts[(0.02, 0.01)] == "stable"  # between two measured stable cells along beta_kl
    assert verdicts[(0.01, 0.02)] == "stable"  # along beta_mix
    assert verdicts[(0.05, 0.02)] == UNMEASURED  # stable below, diverged above
    row = extra[(extra["beta_kl"] == 0.02) & (extra["beta_mix"] == 0.01)].iloc[0]
    assert "beta_kl=0.01" in row["assumption"] and "beta_kl=0.05" in row["assumption"]
    assert "monotone" in row["assumption"] and bool(row["stable"])
    full = with_inferred(cells, lattices(grid))
    assert len(full) == 9 and int((~full["inferred"]).sum()) == 5
    assert (full.loc[~full["inferred"], "assumption"] == "").all()


def test_a_measured_cell_off_the_lattice_is_refused():
    row = {"trial_id": "t", "loss": "dpo", "form": "stable", "beta_kl": 0.3, "beta_mix": math.nan, "seed": 0}
    row |= {"status": "stable", "reason": None, "diverged_step": math.nan, "steps": 1, "eval_accuracy": 0.6}
    with pytest.raises(ValueError, match="not on the lattice"):
        infer_cells(aggregate_cells(pd.DataFrame([row])), lattices(line_grid()))


def test_adaptive_map_matches_a_monotone_truth_with_fewer_trials():
    grid = square_grid(7)
    planner = AdaptivePlanner(AdaptiveConfig(interval_width=0.8), grid)
    trials = run(planner, threshold, batch=4)
    rows = [
        {"trial_id": f"t{n}", "loss": s.loss, "form": s.form, "beta_kl": s.beta_kl, "beta_mix": s.beta_mix}
        | {"seed": s.seed, "status": threshold(s).value, "reason": None, "diverged_step": math.nan, "steps": 1}
        | {"eval_accuracy": math.nan}
        for n, s in enumerate(trials)
    ]
    mapped = with_inferred(aggregate_cells(pd.DataFrame(rows)), lattices(grid))
    assert len(mapped) == 49 and len(trials) < 49
    for row in mapped.itertuples():
        assert row.verdict == threshold(TrialSpec("dlrml", "stable", row.beta_kl, row.beta_mix, 0)).value


@pytest.mark.parametrize("module", ["sweep/search/lattice.py", "sweep/search/infer.py"])
def test_the_engine_imports_no_ray(module):
    tree = ast.parse((Path(__file__).resolve().parents[2] / module).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [name for name in names if name.split(".")[0] == "ray"]
