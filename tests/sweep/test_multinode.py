"""A real 2-node Ray cluster on this machine: the storage check and trial placement.

The second node's raylet runs in its own mount namespace (``unshare -m``) where one directory is bind-mounted over
by another: at that path it sees a different, real directory, exactly as a node with node-local storage would. The
placement test asks for 2 one-CPU workers with ``STRICT_PACK`` on two one-CPU nodes, which Ray can never place: the
trial's worker group must give up after ``placement_timeout_s`` (Ray Train's own error says how long it waited).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sweep.cluster.storage import PROBE_PREFIX, StorageNotSharedError
from tests.procs import BIN_DIR, MARK_VAR, free_port, make_env, run, stop_group

pytestmark = pytest.mark.slow


@dataclass
class TwoNodes:
    """The cluster's GCS address, a directory both nodes share, and one the second node sees differently."""

    address: str
    shared: Path
    node_local: Path
    node_local_reason: str | None
    """Why the second node could not get its own view of ``node_local`` (the actual error), if it could not."""
    env: dict[str, str]


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_started(process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while "Ray runtime started" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{process.args} failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _mount_namespace_error(tmp: Path) -> str | None:
    """``None`` if this process may bind-mount in a private mount namespace, else the actual error."""
    (tmp / "probe_a").mkdir()
    (tmp / "probe_b").mkdir()
    command = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "mount",
        "--bind",
        str(tmp / "probe_b"),
        str(tmp / "probe_a"),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except OSError as err:
        return f"{command[0]}: {err}"
    return None if done.returncode == 0 else done.stderr.strip() or f"exit {done.returncode}"


def _driver(cluster: TwoNodes, code: str, cwd: Path) -> object:
    """Run ``code`` as a Ray driver of ``cluster`` in its own process; returns the JSON its last line prints.

    A separate process keeps this cluster's token authentication away from the test process's own Ray use.
    """
    script = f"import json, ray\nray.init(address={cluster.address!r})\n{code}\n"
    done = run([sys.executable, "-c", script], cwd=cwd, env=cluster.env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[TwoNodes]:
    tmp = Path(tempfile.mkdtemp(prefix="dlrml-2n-", dir="/tmp"))
    shared, node_local, other = tmp / "shared", tmp / "local", tmp / "other"
    for path in (shared, node_local, other):
        path.mkdir()
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    # Token authentication for every process of the cluster and its drivers (as tests/sweep/test_sweep.py's cluster).
    env = make_env(tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    port = free_port()
    head_log, worker_log = tmp / "head.log", tmp / "worker.log"
    ray_bin = str(BIN_DIR / "ray")
    head = _start(
        [ray_bin, "start", "--head", "--block", "--disable-usage-stats", f"--port={port}", "--num-cpus=1"]
        + ["--include-dashboard=false", f"--temp-dir={tmp / 'ray'}"],
        head_log,
        env,
    )
    worker = None
    try:
        _wait_started(head, head_log)
        start_worker = [ray_bin, "start", "--block", f"--address=127.0.0.1:{port}", "--num-cpus=1"]
        reason = _mount_namespace_error(tmp)
        if reason is None:
            # The worker node's processes see `other` at `node_local`: a real, different directory of the same name.
            script = f'mount --bind "{other}" "{node_local}" && exec "$@"'
            start_worker = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *start_worker]
        worker = _start(start_worker, worker_log, env)
        _wait_started(worker, worker_log)
        cluster = TwoNodes(f"127.0.0.1:{port}", shared, node_local, reason, env)
        alive = _driver(cluster, "import ray; print(json.dumps(sum(n['Alive'] for n in ray.nodes())))", tmp)
        assert alive == 2
        yield cluster
    finally:
        for process in (worker, head):
            if process is not None:
                stop_group(process, env[MARK_VAR], grace_s=5)
        shutil.rmtree(tmp, ignore_errors=True)


CHECK = """
from sweep.cluster.storage import check_shared_storage
try:
    print(json.dumps({{"nodes": check_shared_storage({path!r})}}))
except Exception as err:
    head = ray.get_runtime_context().get_node_id()
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    print(json.dumps({{"error": type(err).__name__, "message": str(err), "head": head, "nodes": nodes}}))
"""


def test_storage_shared_by_both_nodes_passes(two_nodes, tmp_path):
    assert _driver(two_nodes, CHECK.format(path=str(two_nodes.shared)), tmp_path) == {"nodes": 2}
    assert not list(two_nodes.shared.glob(f"{PROBE_PREFIX}*")), "the check leaves no probe files behind"


def test_node_local_storage_is_refused_naming_the_node(two_nodes, tmp_path):
    if two_nodes.node_local_reason:
        pytest.skip(f"cannot give a Ray node its own mount namespace here: {two_nodes.node_local_reason}")
    out = _driver(two_nodes, CHECK.format(path=str(two_nodes.node_local)), tmp_path)
    assert out.get("error") == StorageNotSharedError.__name__, out
    message = out["message"]
    assert "is not one shared directory on all 2 nodes" in message
    (worker,) = [node for node in out["nodes"] if node != out["head"]]
    assert f"node {worker[:12]}" in message and f"node {out['head'][:12]}" not in message
    assert "(a different directory on this node)" in message
    assert not list(two_nodes.node_local.glob(f"{PROBE_PREFIX}*"))


PLACEMENT = """
import dataclasses
from ray import tune
from sweep.config import ResourcesConfig
from sweep.trials.trainable import trial_resources, tune_trial
from trainers.config import LossConfig, TrainConfig

resources = ResourcesConfig(num_workers=2, cpus_per_worker=1, placement_timeout_s=2.5, max_failures=0)
config = {{
    "trial": {{"seed": 0, "loss": dataclasses.asdict(LossConfig("dpo"))}},
    "train": TrainConfig(model="unused", save_model=False).as_dict(),
    "resources": dataclasses.asdict(resources),
    "storage_path": {storage!r},
    "experiment": "placement",
    "reference": None,
}}
tuner = tune.Tuner(
    tune.with_resources(tune_trial, trial_resources(resources, None)),
    param_space=config,
    run_config=tune.RunConfig(storage_path={storage!r}, name="placement"),
)
results = tuner.fit()
print(json.dumps({{"strategy": resources.placement_strategy, "errors": [str(e) for e in results.errors]}}))
"""


def test_strict_pack_trial_gives_up_after_its_placement_timeout(two_nodes, tmp_path):
    """2 one-CPU workers, STRICT_PACK (the default), two one-CPU nodes: never placed, each attempt waits 2.5 s.

    With ``PACK`` Ray would place the two workers on the two nodes; ``STRICT_PACK`` must refuse to.
    """
    out = _driver(two_nodes, PLACEMENT.format(storage=str(tmp_path / "storage")), tmp_path)
    assert out["strategy"] == "STRICT_PACK"
    assert len(out["errors"]) == 1
    assert "The worker group startup timed out after 2.5 seconds waiting for 2 workers" in out["errors"][0]
