"""End-to-end sweeps on real Ray, as a user runs them: ``python sweep/run.py`` and ``ray job submit``.

* One sweep of the tiny random model (a 2 x 2 grid, one beta_kl so large that its cells diverge at step 2)
  runs as a subprocess on a local Ray instance and logs to a real ``mlflow server`` on 127.0.0.1. Its
  results, stability map and MLflow runs are checked by several tests that share that one run.
* A real Ray cluster started with ``ray start --head`` (token authentication on, its own temp dir) runs the smoke
  sweep submitted with ``ray job submit --working-dir <repo>``, and refuses a GPU sweep before any trial starts.
  It is up while the first sweep runs, so that sweep's local instance is not the only one on the machine.
* On that cluster, a sweep whose trial worker is SIGKILLed by pid retries the trial, then records it ``errored``.

Every process these tests start carries a marker variable in its environment; the fixtures end exactly the
processes carrying it (Ray workers included), never Ray instances started by anyone else.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from sweep.config import load_sweep_config
from sweep.ray_trial import WORKERS_LOG
from sweep.tracking import ATTEMPT_TAG, PARENT_TAG, ROLE_TAG, SUPERSEDED_TAG, SWEEP_TAG, TRIAL_TAG
from tests.procs import BIN_DIR, MARK_VAR, Finished, end_marked, free_port, make_env, run, stop_group, wait_http
from trainers.collapse import REASONS
from trainers.protocol import HELD_OUT_ACCURACY, ReportKey, ReportType, TrialStatus
from trainers.trial_runner import run_trial

VERDICT_REASONS = {"no_learning", "likelihood_collapse", "accuracy_below_chance", "accuracy_back_to_chance"}

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_SCRIPT = "sweep/run.py"
RAY_STARTED = "Started a local Ray instance"

MAX_STEPS = 5
STABLE_BETA, DIVERGENT_BETA = 0.1, 500.0
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
SWEEP_TIMEOUT_S = 540
UPLOAD_EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "sweep_results",
    "ray_results",
    "mlruns",
    "mlartifacts",
    "mlflow.db",
    "outputs",
    "**/__pycache__",
]
"""Never uploaded with a job's working directory (``.gitignore`` is honoured too)."""


# ------------------------------------------------------------------------------------------------ sweeps


def run_sweep(*args: str, cwd: Path, env: dict[str, str]) -> Finished:
    """``python sweep/run.py ARGS`` from ``cwd``."""
    return run(
        [sys.executable, str(REPO_ROOT / RUN_SCRIPT), *args], cwd=cwd, env=env, timeout=SWEEP_TIMEOUT_S, linger_s=30
    )


# ------------------------------------------------------------------------------------------------ MLflow server


@dataclass
class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with a SQLite backend and proxied artifacts in a temp dir."""

    url: str
    backend: Path
    artifacts: Path


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    server = MlflowServer(f"http://127.0.0.1:{port}", tmp / "mlflow.db", tmp / "artifacts")
    env = make_env(tmp)
    log = tmp / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "server"),
                *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
                *("--backend-store-uri", f"sqlite:///{server.backend}"),
                *("--artifacts-destination", str(server.artifacts)),
            ],
            cwd=tmp,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_http(f"{server.url}/health", process, log)
        yield server
    finally:
        stop_group(process, env[MARK_VAR], grace_s=10)


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
    assert (
        len(re.findall(r"^\[trial\] .*: (stable|stalled|collapsed|diverged|pruned) at step \d+", out, re.M)) == N_TRIALS
    )
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
    assert list(cells["failure_rate"]) == [1.0] * len(LOSSES)
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
        assert cell["failure_rate"] == (0.0 if row.status == "stable" else 1.0)


def test_stability_map_is_written(divergent_sweep):
    map_dir = divergent_sweep.map_dir
    names = {p.name for p in map_dir.iterdir()}
    figures = {f"{kind}_{loss}.png" for kind in ("collapse", "score") for loss in LOSSES} | {"stability_overview.png"}
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
    nested = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id and not _superseded(r)]
    return client, parent, {r.data.tags[TRIAL_TAG]: r for r in nested}, runs


def _superseded(run) -> bool:
    return run.data.tags.get(SUPERSEDED_TAG) == "true"


def test_mlflow_has_one_parent_and_one_nested_run_per_trial(divergent_sweep, mlflow_runs):
    _, parent, nested, runs = mlflow_runs
    assert len([r for r in runs if not _superseded(r)]) == 1 + N_TRIALS
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
    assert any(key.endswith("/failure_rate") for key in parent.data.metrics)
    assert all(math.isfinite(value) for value in parent.data.metrics.values())


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


# ------------------------------------------------------------------------------------------------ a Ray cluster


@dataclass
class RayCluster:
    """A head node started with ``ray start --head --block`` (token authentication, private temp dir)."""

    gcs_address: str
    dashboard_url: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    tmp = Path(tempfile.mkdtemp(prefix="dlrml-cluster-", dir="/tmp"))
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    # Token authentication on for the cluster and for every client (the job CLI, the job's driver).
    env = make_env(tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    gcs_port, dashboard_port, *ports = (free_port() for _ in range(7))
    log = tmp / "ray-start.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                *(str(BIN_DIR / "ray"), "start", "--head", "--block", "--disable-usage-stats"),
                *(f"--port={gcs_port}", "--num-cpus=2", f"--temp-dir={tmp / 'ray'}"),
                *("--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"),
                f"--ray-client-server-port={ports[0]}",
                f"--dashboard-agent-listen-port={ports[1]}",
                f"--dashboard-agent-grpc-port={ports[2]}",
                f"--runtime-env-agent-port={ports[3]}",
                f"--metrics-export-port={ports[4]}",
            ],
            cwd=tmp,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    cluster = RayCluster(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", env)
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        wait_http(f"{cluster.dashboard_url}/api/version", process, log)
        yield cluster
    finally:
        stop_group(process, env[MARK_VAR], grace_s=5)
        shutil.rmtree(tmp, ignore_errors=True)


def test_more_gpus_per_trial_than_the_cluster_has_fails_before_any_trial(ray_cluster, tmp_path):
    results = tmp_path / "results"
    proc = run_sweep(
        *("--config", "smoke", "--address", ray_cluster.gcs_address, "--no-mlflow"),
        *(f"storage_path={results}", "resources.use_gpu=true", "resources.gpus_per_worker=1"),
        cwd=tmp_path,
        env=ray_cluster.env,
    )
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: resources: one trial needs 1 GPU")
    assert "the Ray cluster has 0 GPU" in error
    assert "resources.autoscale" in error
    output = proc.stdout + proc.stderr
    assert RAY_STARTED not in output  # it joined the cluster at --address
    # The driver announces the trials it schedules ("[sweep] smoke: 2 trials, ...", as in
    # test_sweep_prints_its_summary) only after the resource check.
    assert "Trial status" not in output and "[sweep] smoke:" not in output
    assert not (results / "smoke").exists()


def test_job_submit_runs_the_sweep_on_the_cluster(ray_cluster, tmp_path):
    results = tmp_path / "results"  # absolute: the job's working directory is the uploaded package
    submission_id = f"dlrml-test-{uuid.uuid4().hex[:8]}"
    ray = str(BIN_DIR / "ray")
    submit = run(
        [
            *(ray, "job", "submit", "--address", ray_cluster.dashboard_url, "--submission-id", submission_id),
            *("--working-dir", str(REPO_ROOT), "--runtime-env-json", json.dumps({"excludes": UPLOAD_EXCLUDES})),
            *("--", "python", RUN_SCRIPT, "--config", "smoke", "--no-mlflow"),
            *(f"storage_path={results}", "grid.losses=[dpo]", "grid.beta_mix=[]", "train.max_steps=2"),
        ],
        cwd=tmp_path,
        env=ray_cluster.env,
        timeout=SWEEP_TIMEOUT_S,
    )
    output = submit.stdout + submit.stderr
    assert submit.returncode == 0, output[-5000:]
    assert f"Job '{submission_id}' succeeded" in output
    assert re.search(r"trials: 1 \(1 (stable|stalled|collapsed)\)", output), output[-3000:]
    status = run(
        [ray, "job", "status", "--address", ray_cluster.dashboard_url, submission_id],
        cwd=tmp_path,
        env=ray_cluster.env,
        timeout=120,
    )
    assert f"Job '{submission_id}' succeeded" in status.stdout + status.stderr
    trials = pd.read_csv(results / "smoke" / "map" / "trials.csv")
    assert TrialStatus(trials["status"].iloc[0]).trained_to_end and len(trials) == 1
    assert list(trials["steps"]) == [2]
    assert (results / "smoke" / "map" / "stability_overview.png").is_file()


@pytest.mark.parametrize(
    "workers",
    [[], ["resources.num_workers=2", "resources.cpus_per_worker=1"]],
    ids=["in-process", "worker-group"],
)
def test_killed_trial_worker_is_retried_then_errored_while_others_carry_on(ray_cluster, tmp_path, workers):
    """SIGKILL the process that trains one trial (its Tune trial process when it trains in process, its rank-0
    Ray Train worker with two workers) by pid, twice: with ``resources.max_failures=1`` Tune restarts the trial
    once, then records it ``errored`` with its error; the other trial completes, and MLflow agrees."""
    results, name, db = tmp_path / "results", "killed-worker", tmp_path / "mlflow.db"
    env = {**ray_cluster.env, MARK_VAR: uuid.uuid4().hex}
    command = [
        *(sys.executable, str(REPO_ROOT / RUN_SCRIPT), "--config", "smoke", "--name", name),
        *("--address", ray_cluster.gcs_address, "--mlflow-uri", f"sqlite:///{db}", f"storage_path={results}"),
        *("grid.losses=[dpo]", "grid.beta_kl=[0.1,0.2]", "grid.beta_mix=[]", "scheduler.asha=false"),
        *("resources.max_failures=1", "resources.max_concurrent_trials=1", *workers),
    ]
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        sweep = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        victim, killed = None, []
        deadline = time.monotonic() + SWEEP_TIMEOUT_S
        while len(killed) < 2:  # the first attempt, then its retry
            assert sweep.poll() is None, f"the sweep ended before its worker was killed twice:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no worker to kill:\n{log.read_text()[-3000:]}"
            for workers in (results / name / "trials").glob(f"*/{WORKERS_LOG}"):
                if victim not in (None, workers.parent.name):
                    continue
                lines = [json.loads(line) for line in workers.read_text().splitlines() if line.strip()]
                pids = [line["pid"] for line in lines if line["rank"] == 0 and line["pid"] not in killed]
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    victim = workers.parent.name
                    killed.append(pids[0])
            time.sleep(0.1)
        assert sweep.wait(timeout=SWEEP_TIMEOUT_S) == 0, log.read_text()[-5000:]
    finally:
        if sweep.poll() is None:
            sweep.kill()
        end_marked(env[MARK_VAR], 30)

    trials = pd.read_csv(results / name / "map" / "trials.csv").set_index("trial_id")
    assert len(trials) == 2
    errored = trials.loc[victim]
    assert (errored["status"], errored["attempts"]) == ("errored", 2)
    assert "worker process has died" in errored["reason"]  # the error Ray gave for the SIGKILLed actor
    others = trials.drop(index=victim)
    assert [TrialStatus(s).trained_to_end for s in others["status"]] == [True] and list(others["attempts"]) == [1]
    assert re.search(r"trials: 2 \(1 (collapsed|errored|stable|stalled), 1 (errored|stable|stalled)\)", log.read_text())
    assert "1 errored" in log.read_text()

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("dlrml-sweep").experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    nested = {r.data.tags[TRIAL_TAG]: r for r in trial_runs if not _superseded(r)}
    assert set(nested) == set(trials.index) and len(nested) == len([r for r in trial_runs if not _superseded(r)])
    # The victim's first attempt, if it had reported before its worker was killed, is a superseded run (ended
    # KILLED); the retry's run is the trial's run. The other trial ran once: one run.
    superseded = [r for r in trial_runs if _superseded(r)]
    assert {r.data.tags[TRIAL_TAG] for r in superseded} <= {victim} and len(superseded) <= 1
    assert all((r.info.status, r.data.tags[ATTEMPT_TAG]) == ("KILLED", "1") for r in superseded)
    assert (nested[victim].info.status, nested[victim].data.tags["dlrml.status"]) == ("FAILED", "errored")
    assert nested[victim].data.metrics["final/attempts"] == 2
    assert all(r.info.status != "RUNNING" for r in runs)


def test_the_same_config_gives_the_same_map_whatever_the_concurrency(tmp_path, short_tmp):
    """Two runs of one small sweep, one trial at a time and both at once: trial completion order and timing differ,
    the verdicts must not (no ASHA in the smoke config; statuses are pure functions of each trial's own reports)."""
    cells = {}
    for concurrency in (1, 2):
        results = tmp_path / f"c{concurrency}"
        proc = run_sweep(
            *("--config", "smoke", "--no-mlflow", f"storage_path={results}"),
            *("grid.losses=[dlrml]", f"grid.beta_kl=[{STABLE_BETA},{DIVERGENT_BETA}]", "grid.beta_mix=[0.2]"),
            *("train.learning_rate=1e-3", "train.max_steps=3", "train.eval_steps=3", "mt_bench.policy=none"),
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
    trial run in this process on 1 x 4 pairs.

    The per-step metrics Tune receives (rank 0's, gathered over ranks by the trainer), the held-out evaluation and
    the verdict must agree to float tolerance: nothing in the sweep path may depend on how the global batch is split.
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

    config = load_sweep_config("smoke", [*overrides, "train.per_device_batch_size=4"])
    (loss,) = config.grid.trials()
    train = dataclasses.replace(config.train, seed=config.grid.seeds[0], output_dir=str(tmp_path / "one"))
    single = run_trial(train, loss)
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
