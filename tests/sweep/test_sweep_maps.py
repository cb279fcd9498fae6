"""Sweeps whose maps must not depend on how they were run: concurrency, adaptive search, workers per trial."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from sweep.config import load_sweep_config
from tests.procs import make_env
from tests.sweeps import DIVERGENT_BETA, STABLE_BETA, run_sweep
from trainers.protocol import HELD_OUT_ACCURACY, ReportKey, ReportType
from trainers.reference.logps import compute_reference_logps, reference_key
from trainers.trial_runner import load_trial_data, run_trial

pytestmark = [pytest.mark.slow, pytest.mark.long]


def test_the_same_config_gives_the_same_map_whatever_the_concurrency(tmp_path, short_tmp):
    """Two runs of one small sweep, one trial at a time and both at once: trial completion order and timing differ,
    the verdicts must not (no ASHA in the smoke config; statuses are pure functions of each trial's own reports)."""
    cells = {}
    for concurrency in (1, 2):
        results = tmp_path / f"c{concurrency}"
        proc = run_sweep(
            *("--config", "smoke", "--no-mlflow", f"storage_path={results}"),
            *("grid.losses=[dlrml]", f"grid.beta_kl=[{STABLE_BETA},{DIVERGENT_BETA}]", "grid.beta_mix=[0.2]"),
            *("train.learning_rate=1e-3", "train.max_steps=3", "train.eval_steps=1", "mt_bench.policy=none"),
            f"resources.max_concurrent_trials={concurrency}",
            cwd=tmp_path,
            env=make_env(short_tmp / f"r{concurrency}"),
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        frame = pd.read_csv(results / "smoke" / "map" / "cells.csv")
        columns = ["loss", "form", "beta_kl", "beta_mix", "verdict", "n_verdict"]
        cells[concurrency] = frame[columns].fillna({"beta_mix": 0.0}).to_dict("records")  # NaN != NaN
    assert cells[1] == cells[2]
    assert {cell["n_verdict"] for cell in cells[1]} == {1}  # every cell determined


def test_adaptive_sweep_measures_part_of_the_grid_and_labels_what_it_inferred(tmp_path, short_tmp):
    """dLRML on a 1 x 3 beta_kl line, adaptive search starting from its two ends (coarse_points=2): both ends
    diverge (beta_kl = 500) or not alike, so the middle is either bisected (measured) or inferred from two equal
    neighbours, and every cell of the lattice is in cells.csv, each labelled measured or inferred."""
    results = tmp_path / "results"
    proc = run_sweep(
        *("--config", "smoke", "--no-mlflow", f"storage_path={results}", "search=adaptive"),
        *("grid.losses=[dlrml]", "grid.beta_kl=[400,450,500]", "grid.beta_mix=[0.2]", "grid.seeds=[0,1]"),
        *("adaptive.coarse_points=2", "adaptive.max_seeds_per_cell=1", "train.learning_rate=1e-3"),
        *("train.max_steps=3", "train.eval_steps=3", "train.divergence.grace_steps=1"),
        cwd=tmp_path,
        env=make_env(short_tmp),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    map_dir = results / "smoke" / "map"
    trials, cells = pd.read_csv(map_dir / "trials.csv"), pd.read_csv(map_dir / "cells.csv")
    assert set(cells["beta_kl"]) == {400.0, 450.0, 500.0}
    measured = cells[~cells["inferred"].astype(bool)]
    assert set(measured["beta_kl"]) == set(trials["beta_kl"]) and {400.0, 500.0} <= set(measured["beta_kl"])
    assert len(trials) <= 3 and (trials["seed"] == 0).all()
    for cell in cells[cells["inferred"].astype(bool)].itertuples():
        assert cell.n_trials == 0 and isinstance(cell.assumption, str) and cell.assumption


def _trial_reports(results: Path) -> list[dict]:
    """Every report Tune recorded for the sweep's only trial (its ``result.json``, one JSON object a line)."""
    (path,) = [p for p in results.rglob("result.json") if p.stat().st_size]
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.distributed
def test_two_worker_trial_reports_what_one_process_reports_on_the_same_global_batch(tmp_path, short_tmp):
    """One dLRML trial of a sweep through Ray Train's TorchTrainer on 2 gloo workers x 2 pairs, against the same
    trial run in this process on the sweep's reference log-probs, accumulating 2 micro-batches of 2 pairs.

    The per-step metrics Tune receives (rank 0's, gathered over ranks by the trainer), the held-out evaluation and
    the verdict must agree to float tolerance: nothing in the sweep path may depend on how the global batch is dealt
    out. Both sides score the same micro-batches against the same reference: pairs that share a packed row
    differently (``trainers/packing.py``) round differently, and on the tiny random model some margins stay within
    rounding of 0, where the accuracy is that rounding's sign.
    """
    overrides = [
        *("grid.losses=[dlrml]", "grid.beta_kl=[0.1]", "grid.beta_mix=[0.2]", "train.learning_rate=1e-3"),
        *("train.max_steps=3", "train.eval_steps=3"),
    ]
    results = tmp_path / "two_workers"
    proc = run_sweep(
        *("--config", "smoke", "--no-mlflow", f"storage_path={results}", *overrides),
        *("train.per_device_batch_size=2", "resources.num_workers=2", "resources.cpus_per_worker=1"),
        cwd=tmp_path,
        env=make_env(short_tmp),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = _trial_reports(results)
    (status,) = pd.read_csv(results / "smoke" / "map" / "trials.csv")["status"].tolist()

    config = load_sweep_config("smoke", [*overrides, "train.per_device_batch_size=2", "train.grad_accum=2"])
    (loss,) = config.grid.trials()
    train = dataclasses.replace(config.train, seed=config.grid.seeds[0], output_dir=str(tmp_path / "one"))
    data = load_trial_data(train)
    assert (results / "reference" / reference_key(config.train, data)).is_dir(), "not the sweep's reference key"
    reference = compute_reference_logps(config.train, data, results / "reference")  # the sweep's, stored already
    single = run_trial(train, loss, data=data, reference=reference)
    assert status == str(single.status)

    by_step = {
        ReportType.TRAIN: {r["step"]: r for r in single.history if "loss" in r},
        ReportType.EVAL: {r["step"]: r for r in single.history if HELD_OUT_ACCURACY in r},
    }
    compared = 0
    for report in reports:
        kind = report.get(ReportKey.REPORT_TYPE)
        if kind not in by_step:
            continue
        theirs = by_step[kind].pop(report[ReportKey.STEP])
        metrics = [k for k in theirs if "/" in k or k in ("loss", "grad_norm", "eval_loss")]
        for key in (k for k in metrics if not any(t in k for t in ("runtime", "per_second"))):
            assert report[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), (report["step"], key)
            compared += 1
    assert by_step == {ReportType.TRAIN: {}, ReportType.EVAL: {}}, "steps one side reported and the other did not"
    assert compared > 30
