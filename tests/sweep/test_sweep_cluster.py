"""Sweeps on a real Ray cluster started with ``ray start --head`` (token authentication on, its own temp dir).

* The smoke sweep submitted with ``ray job submit --working-dir <repo>`` runs there, and a GPU sweep is refused
  before any trial starts.
* A sweep whose trial worker is SIGKILLed by pid retries the trial, then records it ``errored``.

Every process these tests start carries a marker variable in its environment; the fixtures end exactly the
processes carrying it (Ray workers included), never Ray instances started by anyone else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from sweep.tracking.runs import ATTEMPT_TAG, ROLE_TAG, TRIAL_TAG
from sweep.trials.trainable import WORKERS_LOG
from tests.procs import BIN_DIR, MARK_VAR, end_marked, run
from tests.sweeps import (
    RAY_STARTED,
    REPO_ROOT,
    RUN_SCRIPT,
    SWEEP_TIMEOUT_S,
    TRAINED_TO_END,
    run_sweep,
    start_ray_head,
    superseded,
)
from trainers.protocol import TrialStatus

pytestmark = [pytest.mark.slow, pytest.mark.long]


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


def _readme_job_submit() -> tuple[list[str], dict[str, str]]:
    """The README's job-submit command (its "What you can run" row) and the variables its row says to export on a
    token-auth cluster, as written there (the token path still a placeholder)."""
    row = next(line for line in (REPO_ROOT / "README.md").read_text().splitlines() if line.startswith("| `ray job"))
    command = re.match(r"\| `([^`]+)`", row).group(1)
    exports = re.search(r"`export ([^`]+)`", row).group(1)
    return command.split(), dict(re.findall(r"(\w+)=(<[^>]*>|\S+)", exports))


def _checkout(tmp_path: Path) -> Path:
    """A copy of this checkout's files as a fresh clone has them (tracked, and untracked but not ignored)."""
    listed = run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, env=dict(os.environ), timeout=60
    )
    checkout = tmp_path / "checkout"
    for name in filter(None, listed.stdout.split("\0")):
        source = REPO_ROOT / name
        if source.is_file() and not source.is_symlink():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, checkout / name)
    return checkout


def test_the_readme_job_submit_line_runs_the_sweep_and_keeps_its_results(ray_cluster, tmp_path):
    """The README's ``ray job submit --working-dir . -- python sweep/run.py --config smoke``, run from a clone on a
    token-auth cluster with the exports its row names: the job's driver runs in Ray's temporary copy of the working
    dir, so the default relative ``storage_path`` and MLflow store go to the cluster's home directory, and the
    closing lines print them absolute."""
    command, exports = _readme_job_submit()
    assert command[:3] == ["ray", "job", "submit"] and exports.keys() == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"}
    auth = {key: ray_cluster.env[key] if value.startswith("<") else value for key, value in exports.items()}
    client = {k: v for k, v in ray_cluster.env.items() if k not in auth} | {"RAY_ADDRESS": ray_cluster.dashboard_url}
    fast = ["grid.losses=[dpo]", "grid.beta_mix=[]", "train.max_steps=2"]
    checkout = _checkout(tmp_path)
    refused = run([str(BIN_DIR / "ray"), *command[1:], *fast], cwd=checkout, env=client, timeout=SWEEP_TIMEOUT_S)
    assert refused.returncode != 0  # without the exports the job CLI cannot talk to a token-auth cluster
    submit = run([str(BIN_DIR / "ray"), *command[1:], *fast], cwd=checkout, env=client | auth, timeout=SWEEP_TIMEOUT_S)
    output = submit.stdout + submit.stderr
    assert submit.returncode == 0, output[-5000:]
    submission_id = re.search(r"Job '(raysubmit_\w+)' succeeded", output).group(1)
    assert re.search(rf"trials: 1 \(1 ({TRAINED_TO_END})\)", output), output[-3000:]
    status = run(
        [str(BIN_DIR / "ray"), "job", "status", "--address", ray_cluster.dashboard_url, submission_id],
        cwd=tmp_path,
        env=ray_cluster.env,
        timeout=120,
    )
    assert f"Job '{submission_id}' succeeded" in status.stdout + status.stderr

    home = ray_cluster.home.resolve()
    results, database = home / "sweep_results" / "smoke", home / "mlflow.db"
    assert f"results go under the home directory instead (storage_path={home / 'sweep_results'}, " in output
    assert f"stability map: {results / 'map'} (claims: {results / 'map' / 'claims.md'})" in output
    assert (
        f"MLflow: sqlite:///{database}; browse it with `mlflow ui --backend-store-uri sqlite:///{database}`" in output
    )
    assert "(runs by verdict; parent run " in output
    trials = pd.read_csv(results / "map" / "trials.csv")
    assert TrialStatus(trials["status"].iloc[0]).trained_to_end and len(trials) == 1
    assert list(trials["steps"]) == [2]
    assert (results / "map" / "stability_overview.png").is_file() and (results / "map" / "claims.md").is_file()
    runs = MlflowClient(f"sqlite:///{database}").search_runs(
        [MlflowClient(f"sqlite:///{database}").get_experiment_by_name("dlrml-sweep").experiment_id]
    )
    assert {r.data.tags.get(ROLE_TAG) for r in runs} == {"sweep", "trial"} and len(runs) == 2
    assert not list(checkout.rglob("mlflow.db")) and not list(checkout.rglob("sweep_results"))


PROBE = """
import json, os, sys
import ray
from ray.util.state import get_actor
from sweep.cluster.connect import init_ray

init_ray(sys.argv[1])

@ray.remote(num_cpus=0)
class Probe:
    def look(self):
        try:
            state = get_actor(ray.get_runtime_context().get_actor_id(), timeout=30)
            found = state is not None and state.state == "ALIVE"
        except Exception as error:  # what the state API says when it cannot tell which cluster
            found = repr(error)
        return os.environ.get("RAY_ADDRESS"), found

probe = Probe.options(lifetime="detached").remote()  # like Ray Train's placement-group cleaner
print(json.dumps(ray.get(probe.look.remote())))
ray.kill(probe)
"""


def test_a_detached_actor_of_a_sweep_that_joined_a_cluster_finds_it_beside_another_ray_instance(ray_cluster, tmp_path):
    """Ray Train's placement-group cleaner (a detached actor) asks the state API whether its trial's controller lives;
    without ``RAY_ADDRESS`` the state API auto-detects a cluster. A sweep that joins a cluster tells every worker, a
    detached one included, the cluster's address (``sweep.cluster.connect.init_ray``), and the actor finds itself
    through the state API while a second Ray instance runs on the machine (as beside a test process running a local
    sweep)."""
    from ray._private.services import canonicalize_bootstrap_address

    other = start_ray_head()
    next(other)
    try:
        done = run(
            [sys.executable, "-c", PROBE, ray_cluster.gcs_address],
            cwd=tmp_path,
            env=ray_cluster.env,
            timeout=180,
        )
    finally:
        other.close()
    assert done.returncode == 0, done.stderr[-3000:]
    address, found = json.loads(done.stdout.strip().splitlines()[-1])
    assert address == canonicalize_bootstrap_address(ray_cluster.gcs_address)
    assert found is True


LEFT_BEHIND = """
import json, sys
from pathlib import Path
import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from sweep.cluster.connect import init_ray
from sweep.trials.trainable import WORKERS_LOG, release_worker_placement_groups

init_ray(sys.argv[1])
trial_dir = Path(sys.argv[2])
gone = placement_group([{"CPU": 1}])
ray.get(gone.ready())
remove_placement_group(gone)
held = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")  # the cluster's 2 CPUs
ray.get(held.ready())
workers = [(0, held), (1, held), (0, gone)]
lines = [{"rank": rank, "pid": 0, "placement_group": group.id.hex()} for rank, group in workers]
(trial_dir / WORKERS_LOG).write_text("".join(json.dumps(line) + "\\n" for line in [*lines, {"rank": 0, "pid": 0}]))
removed = release_worker_placement_groups(trial_dir)
again = release_worker_placement_groups(trial_dir)
print(json.dumps([removed, held.id.hex(), placement_group_table(held)["state"], again]))
"""


def test_placement_groups_a_trials_workers_ran_in_are_removed_once_it_ended(ray_cluster, tmp_path):
    """What a multi-worker trial does after its TorchTrainer returned (sweep.trials.trainable): the group its workers
    logged that is still there (both CPUs of the cluster) is removed, one already removed is left alone."""
    done = run(
        [sys.executable, "-c", LEFT_BEHIND, ray_cluster.gcs_address, str(tmp_path)],
        cwd=tmp_path,
        env=ray_cluster.env,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    removed, held, state, again = json.loads(done.stdout.strip().splitlines()[-1])
    assert (removed, state, again) == ([held], "REMOVED", [])


@pytest.mark.parametrize(
    "workers",
    # Ray Train's own placement patience (60 s) on this fixed local cluster: a worker group that cannot get its CPUs
    # in time is started again by its controller instead of waiting the default 900 s meant for autoscaled nodes.
    [[], ["resources.num_workers=2", "resources.cpus_per_worker=1", "resources.placement_timeout_s=60"]],
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
            if time.monotonic() > deadline:
                pytest.fail(f"no worker to kill:\n{log.read_text()[-3000:]}\n{ray_cluster.diagnostics()}")
            for worker_log in (results / name / "trials").glob(f"*/{WORKERS_LOG}"):
                if victim not in (None, worker_log.parent.name):
                    continue
                lines = [json.loads(line) for line in worker_log.read_text().splitlines() if line.strip()]
                pids = [line["pid"] for line in lines if line["rank"] == 0 and line["pid"] not in killed]
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    victim = worker_log.parent.name
                    killed.append(pids[0])
            time.sleep(0.1)
        try:
            code = sweep.wait(timeout=SWEEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sweep still runs:\n{log.read_text()[-3000:]}\n{ray_cluster.diagnostics()}")
        assert code == 0, log.read_text()[-5000:]
    finally:
        if sweep.poll() is None:
            sweep.kill()
        end_marked(env[MARK_VAR], 30)

    trials = pd.read_csv(results / name / "map" / "trials.csv").set_index("trial_id")
    assert len(trials) == 2
    logged = [json.loads(line) for line in (results / name / "trials" / victim / WORKERS_LOG).read_text().splitlines()]
    # A Ray Train worker logs its placement group, which the trial removes if Ray Train left it (BENCHMARKS.md 7).
    assert all(bool(line.get("placement_group")) == bool(workers) for line in logged)
    errored = trials.loc[victim]
    assert (errored["status"], errored["attempts"]) == ("errored", 2)
    assert "worker process has died" in errored["reason"]  # the error Ray gave for the SIGKILLed actor
    others = trials.drop(index=victim)
    assert [TrialStatus(s).trained_to_end for s in others["status"]] == [True] and list(others["attempts"]) == [1]
    assert re.search(rf"trials: 2 \(1 ({TRAINED_TO_END}|errored), 1 ({TRAINED_TO_END}|errored)\)", log.read_text())
    assert "1 errored" in log.read_text()

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("dlrml-sweep").experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    nested = {r.data.tags[TRIAL_TAG]: r for r in trial_runs if not superseded(r)}
    assert set(nested) == set(trials.index) and len(nested) == len([r for r in trial_runs if not superseded(r)])
    # The victim's first attempt, if it had reported before its worker was killed, is a superseded run (ended
    # KILLED); the retry's run is the trial's run. The other trial ran once: one run.
    earlier = [r for r in trial_runs if superseded(r)]
    assert {r.data.tags[TRIAL_TAG] for r in earlier} <= {victim} and len(earlier) <= 1
    assert all((r.info.status, r.data.tags[ATTEMPT_TAG]) == ("KILLED", "1") for r in earlier)
    assert (nested[victim].info.status, nested[victim].data.tags["dlrml.status"]) == ("FAILED", "errored")
    assert nested[victim].data.metrics["final/attempts"] == 2
    assert all(r.info.status != "RUNNING" for r in runs)
