"""An end-to-end sweep on real Ray, as a user runs it: ``python sweep/run.py``.

One sweep of the tiny random model (a 2 x 2 grid, one beta_kl so large that its cells diverge at step 2) runs as a
subprocess on a local Ray instance and logs to a real ``mlflow server`` on 127.0.0.1. Its results, stability map and
MLflow runs are checked by several tests that share that one run. A Ray cluster (``ray start --head``) is up while it
runs, so that the sweep's local instance is not the only one on the machine. The cluster sweeps are in
``test_sweep_cluster.py``, the maps that must not depend on how a sweep ran in ``test_sweep_maps.py``.

Every process these tests start carries a marker variable in its environment; the fixtures end exactly the
processes carrying it (Ray workers included), never Ray instances started by anyone else.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from sweep.tracking.runs import PARENT_TAG, ROLE_TAG, SWEEP_TAG, TRIAL_TAG
from sweep.trials.trainable import WORKERS_LOG
from tests.procs import Finished, make_env
from tests.sweeps import (
    DIVERGENT_BETA,
    STABLE_BETA,
    TRAINED_TO_END,
    MlflowServer,
    RayCluster,
    run_sweep,
    start_mlflow_server,
    superseded,
)
from trainers.collapse import REASONS
from trainers.protocol import TrialStatus

VERDICT_REASONS = {"no_learning", "likelihood_collapse", "accuracy_below_chance", "accuracy_back_to_chance"}

pytestmark = [pytest.mark.slow, pytest.mark.long]


MAX_STEPS = 5
LOSSES = ("dpo", "dlrml")
SWEEP_NAME = "smoke-divergent"
DIVERGENT_OVERRIDES = [
    f"grid.losses=[{','.join(LOSSES)}]",
    f"grid.beta_kl=[{STABLE_BETA},{DIVERGENT_BETA}]",
    "grid.beta_mix=[0.2]",
    # At beta_kl = 500 the first Adam step already moves the log-ratio margins enough that DPO's loss jumps
    # ~60x (loss explosion, 1 grace step) and dLRML's overflows (non-finite) at step 2; at beta_kl = 0.1 both
    # stay within 10% of their starting loss, their grad norms far below 10x their running median.
    "train.learning_rate=1e-3",
    "train.divergence.grace_steps=1",
    f"train.max_steps={MAX_STEPS}",
    "train.eval_steps=2",
    # ASHA's first rung (step 4) comes after the divergent cells have stopped, so only stable trials compete there
    # and the first to arrive is always promoted: at least one stable trial completes.
    "scheduler.grace_period=4",
]
N_TRIALS = len(LOSSES) * 2
FAKE_SECRETS = {
    "OPENAI_API_KEY": "sk-test-SECRET123",
    "MLFLOW_TRACKING_TOKEN": "tok-SECRET456",
    "HF_TOKEN": "hf_test_SECRET789",
}


# ------------------------------------------------------------------------------------------------ MLflow server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    yield from start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"))


# ------------------------------------------------------------------------------------------------ the sweep


@dataclass
class SweepRun:
    """One finished sweep and where it wrote."""

    proc: Finished
    cwd: Path
    results: Path
    ray_tmp: Path
    trials: pd.DataFrame
    cells: pd.DataFrame
    mlflow: MlflowServer

    @property
    def map_dir(self) -> Path:
        return self.results / SWEEP_NAME / "map"


@pytest.fixture(scope="module")
def divergent_sweep(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: MlflowServer, ray_cluster: RayCluster
) -> Iterator[SweepRun]:
    """The sweep, on its own local Ray instance while another one (``ray_cluster``) runs on the machine.

    With two instances, Ray's address auto-detection fails; Ray Train's placement-group cleaner relies on it, so
    the sweep must tell its workers which cluster is theirs, or a stopped trial's CPUs are never freed and the
    last trial never starts.
    """
    cwd = tmp_path_factory.mktemp("sweep_cwd")
    results = tmp_path_factory.mktemp("sweep") / "results"
    ray_tmp = Path(tempfile.mkdtemp(prefix="dlrml-ray-", dir="/tmp"))
    try:
        proc = run_sweep(
            *("--config", "smoke", "--name", SWEEP_NAME, "--mlflow-uri", mlflow_server.url),
            f"storage_path={results}",
            *DIVERGENT_OVERRIDES,
            cwd=cwd,
            env=make_env(ray_tmp, **FAKE_SECRETS),
        )
        assert proc.returncode == 0, f"sweep failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
        map_dir = results / SWEEP_NAME / "map"
        yield SweepRun(
            proc=proc,
            cwd=cwd,
            results=results,
            ray_tmp=ray_tmp,
            trials=pd.read_csv(map_dir / "trials.csv"),
            cells=pd.read_csv(map_dir / "cells.csv"),
            mlflow=mlflow_server,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def expected_grid() -> set[tuple[str, float, int]]:
    return {(loss, beta, 0) for loss in LOSSES for beta in (STABLE_BETA, DIVERGENT_BETA)}


def test_sweep_prints_its_summary(divergent_sweep):
    out = divergent_sweep.proc.stdout
    assert f"[sweep] {SWEEP_NAME}: {N_TRIALS} trials, {MAX_STEPS} steps each" in out
    assert f"trials: {N_TRIALS} (" in out
    assert f"stability map: {divergent_sweep.map_dir}" in out
    assert f"MLflow: {divergent_sweep.mlflow.url}" in out
    assert "WARNING" not in out.split(f"trials: {N_TRIALS}")[1]  # every MLflow call was delivered


def test_trials_run_in_reused_processes_and_print_one_line_per_event(divergent_sweep):
    """One-worker trials train in their Tune trial's process, which Tune reuses: fewer processes than trials.

    The terminal shows one line per trial start and end, not Tune's per-trial config tables nor workers' output.
    """
    logs = list((divergent_sweep.results / SWEEP_NAME / "trials").glob(f"*/{WORKERS_LOG}"))
    pids = [json.loads(line)["pid"] for log in logs for line in log.read_text().splitlines()]
    assert len(pids) == N_TRIALS and len(set(pids)) < N_TRIALS, pids
    out = divergent_sweep.proc.stdout
    assert out.count(": started (") == N_TRIALS
    assert len(re.findall(rf"^\[trial\] .*: ({TRAINED_TO_END}|diverged|pruned) at step \d+", out, re.M)) == N_TRIALS
    assert "started with configuration" not in out and "Loading weights" not in out


def test_sweep_shuts_its_local_ray_instance_down(divergent_sweep):
    assert divergent_sweep.proc.lingering == []


def test_every_grid_point_ran_exactly_once(divergent_sweep):
    trials = divergent_sweep.trials
    assert len(trials) == N_TRIALS
    assert trials["trial_id"].is_unique
    assert {(r.loss, r.beta_kl, int(r.seed)) for r in trials.itertuples()} == expected_grid()
    assert set(trials.loc[trials["loss"] == "dlrml", "beta_mix"]) == {0.2}
    assert trials.loc[trials["loss"] == "dpo", "beta_mix"].isna().all()


def test_divergent_cells_are_stopped_early_with_a_reason(divergent_sweep):
    divergent = divergent_sweep.trials[divergent_sweep.trials["beta_kl"] == DIVERGENT_BETA]
    assert len(divergent) == len(LOSSES)
    for row in divergent.itertuples():
        assert row.status == "diverged", row
        assert str(row.reason).split(" ")[0] in REASONS, row.reason
        assert 1 <= row.diverged_step < MAX_STEPS
        assert row.diverged_step <= row.steps < MAX_STEPS
    cells = divergent_sweep.cells[divergent_sweep.cells["beta_kl"] == DIVERGENT_BETA]
    assert list(cells["failed_rate"]) == [1.0] * len(LOSSES)
    assert list(cells["verdict"]) == ["diverged"] * len(LOSSES)
    assert not cells["stable"].any()


def test_stable_beta_cells_train_to_the_end_with_a_verdict(divergent_sweep):
    """No ASHA in the smoke config: every non-divergent trial trains all its steps and its cell has a verdict."""
    stable = divergent_sweep.trials[divergent_sweep.trials["beta_kl"] == STABLE_BETA]
    assert len(stable) == len(LOSSES)
    cells = divergent_sweep.cells[divergent_sweep.cells["beta_kl"] == STABLE_BETA].set_index("loss")
    for row in stable.itertuples():
        assert TrialStatus(row.status).trained_to_end, row
        assert math.isnan(row.diverged_step) and row.steps == MAX_STEPS
        assert pd.isna(row.reason) if row.status == "stable" else str(row.reason).split(":")[0] in VERDICT_REASONS
        assert 0.0 <= row.eval_accuracy <= 1.0
        cell = cells.loc[row.loss]  # one seed per cell: the cell's verdict is the trial's
        assert (cell["verdict"], cell["n_verdict"]) == (row.status, 1)
        assert cell["failed_rate"] == (0.0 if row.status == "stable" else 1.0)


def test_stability_map_is_written(divergent_sweep):
    map_dir = divergent_sweep.map_dir
    names = {p.name for p in map_dir.iterdir()}
    figures = {f"{kind}_{loss}.png" for kind in ("failed", "score") for loss in LOSSES} | {"stability_overview.png"}
    assert {"trials.csv", "cells.csv", "claims.md", *figures} <= names
    assert "# Claims" in (map_dir / "claims.md").read_text() or "claim" in (map_dir / "claims.md").read_text().lower()
    for name in figures:
        assert (map_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(divergent_sweep.cells) == N_TRIALS  # one seed: one trial per cell


# ------------------------------------------------------------------------------------------------ MLflow contents


@pytest.fixture(scope="module")
def mlflow_runs(divergent_sweep):
    """``(client, parent run, {trial_id: current nested run}, every run)`` as the tracking server has them (a trial
    Tune started again has its earlier attempts as superseded runs: they are in every run, not in the mapping)."""
    client = MlflowClient(divergent_sweep.mlflow.url)
    experiment = client.get_experiment_by_name("dlrml-sweep")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(SWEEP_TAG) == SWEEP_NAME and PARENT_TAG not in r.data.tags]
    assert len(parents) == 1, f"expected one parent run, got {[r.info.run_id for r in parents]}"
    parent = parents[0]
    nested = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id and not superseded(r)]
    return client, parent, {r.data.tags[TRIAL_TAG]: r for r in nested}, runs


def test_mlflow_has_one_parent_and_one_nested_run_per_trial(divergent_sweep, mlflow_runs):
    _, parent, nested, runs = mlflow_runs
    assert len([r for r in runs if not superseded(r)]) == 1 + N_TRIALS
    assert (
        parent.info.run_name
        == f"{SWEEP_NAME}: dpo, dlrml x beta_kl {STABLE_BETA:g}-{DIVERGENT_BETA:g} ({N_TRIALS} trials)"
    )
    assert "stability map of dpo, dlrml" in parent.data.tags["mlflow.note.content"]
    assert parent.data.tags[ROLE_TAG] == "sweep"
    assert {run.data.tags[ROLE_TAG] for run in nested.values()} == {"trial"}
    assert set(nested) == set(divergent_sweep.trials["trial_id"])
    for row in divergent_sweep.trials.itertuples():
        run = nested[row.trial_id]
        params = run.data.params
        assert params["loss"] == row.loss
        assert float(params["beta_kl"]) == row.beta_kl
        assert int(params["seed"]) == row.seed
        assert float(params["learning_rate"]) == 1e-3
        assert run.data.tags["dlrml.status"] == run.data.tags["verdict"] == row.status
        assert run.data.tags[SWEEP_TAG] == SWEEP_NAME


def test_mlflow_runs_are_all_closed(divergent_sweep, mlflow_runs):
    _, parent, nested, runs = mlflow_runs
    assert all(r.info.status != "RUNNING" for r in runs)
    assert parent.info.status == "FINISHED"
    for row in divergent_sweep.trials.itertuples():
        assert nested[row.trial_id].info.status == TrialStatus(row.status).mlflow_run_status
        assert RunStatus.is_terminated(RunStatus.from_string(nested[row.trial_id].info.status))


def test_mlflow_has_per_step_metric_histories(divergent_sweep, mlflow_runs):
    client, _, nested, _ = mlflow_runs
    for row in divergent_sweep.trials.itertuples():
        run_id = nested[row.trial_id].info.run_id
        history = client.get_metric_history(run_id, "loss")
        steps = sorted({m.step for m in history})
        # Exactly one loss point for every optimizer step up to the one the trial stopped at (the divergence
        # evidence included): the final report, which repeats the last step, is not logged again.
        assert steps == list(range(1, int(row.steps) + 1)), (row.trial_id, steps)
        assert len(history) == len(steps), (row.trial_id, sorted(m.step for m in history))
        assert not {"step", "report/type", "final"} & set(nested[row.trial_id].data.metrics)
        if row.status == "diverged":
            assert steps[-1] == row.diverged_step >= 2
        else:
            assert len(steps) >= 4
            accuracy = client.get_metric_history(run_id, "eval_rewards/accuracies")
            assert {2, 4} <= {m.step for m in accuracy}  # held-out evaluations every train.eval_steps=2


def test_mlflow_parent_holds_the_stability_map(divergent_sweep, mlflow_runs):
    client, parent, _, _ = mlflow_runs
    names = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "stability_map")}
    assert {p.name for p in divergent_sweep.map_dir.iterdir()} <= names
    stored = {p.name for p in divergent_sweep.mlflow.artifacts.rglob("*") if p.is_file()}
    assert {"trials.csv", "cells.csv", "stability_overview.png"} <= stored
    assert parent.data.metrics == {}  # the cells are in cells.csv and in the description, not 1-bar metric charts
    assert "| loss | form | beta_kl | beta_mix |" in parent.data.tags["mlflow.note.content"]


def test_no_secret_from_the_environment_is_written_anywhere(divergent_sweep):
    sweep = divergent_sweep
    roots = [sweep.cwd, sweep.results, sweep.ray_tmp, sweep.mlflow.artifacts, sweep.mlflow.backend]
    files = [p for root in roots for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()]
    scanned = {p.name for p in files}
    assert {"trials.csv", "cells.csv", "mlflow.db", "progress.csv", "params.json"} <= scanned
    leaks = [
        (str(path), name)
        for path in files
        for name, value in FAKE_SECRETS.items()
        if value.encode() in path.read_bytes()
    ]
    assert leaks == []
    for value in FAKE_SECRETS.values():
        assert value not in sweep.proc.stdout + sweep.proc.stderr
