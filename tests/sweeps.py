"""What the end-to-end sweep tests share: running ``sweep/run.py`` as a user does, a real Ray cluster started with
``ray start --head`` (token authentication on, its own temp dir) and a real ``mlflow server``.

The sweep tests are in three files (``test_sweep.py``, ``test_sweep_cluster.py``, ``test_sweep_maps.py``) so that the
suite's two processes (pytest-xdist, one file at a time) share them out.
"""

from __future__ import annotations

import os
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

from sweep.tracking.runs import SUPERSEDED_TAG
from tests.procs import BIN_DIR, MARK_VAR, Finished, free_port, make_env, run, stop_group, wait_http
from trainers.protocol import TrialStatus

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_SCRIPT = "sweep/run.py"
RAY_STARTED = "Started a local Ray instance"

SWEEP_TIMEOUT_S = 540
# A regular-expression alternation of the statuses a trial that ran all its steps can end with.
TRAINED_TO_END = "|".join(status.value for status in TrialStatus if status.trained_to_end)

STABLE_BETA, DIVERGENT_BETA = 0.1, 500.0


def run_sweep(*args: str, cwd: Path, env: dict[str, str]) -> Finished:
    """``python sweep/run.py ARGS`` from ``cwd``."""
    return run(
        [sys.executable, str(REPO_ROOT / RUN_SCRIPT), *args], cwd=cwd, env=env, timeout=SWEEP_TIMEOUT_S, linger_s=30
    )


def superseded(run) -> bool:
    """Whether an MLflow trial run was superseded by a later attempt of its trial."""
    return run.data.tags.get(SUPERSEDED_TAG) == "true"


@dataclass
class RayCluster:
    """A head node started with ``ray start --head --block`` (token authentication, private temp dir)."""

    gcs_address: str
    dashboard_url: str
    env: dict[str, str]
    temp_dir: Path

    @property
    def home(self) -> Path:
        """The home directory of every process of the cluster (a job's driver included)."""
        return Path(self.env["HOME"])

    def diagnostics(self) -> str:
        """Where a trial waits, for a test's failure message: ``ray status`` (resources in use, pending placement
        groups), the live actors, and the ends of the newest Ray Train logs and of the raylet's log."""
        ray = str(BIN_DIR / "ray")
        parts = []
        for command in (
            [ray, "status", "--address", self.gcs_address, "-v"],
            [ray, "list", "actors", "--address", self.gcs_address, "--filter", "state!=DEAD", "--limit", "50"],
            [ray, "list", "placement-groups", "--address", self.gcs_address, "--limit", "50"],
        ):
            try:
                done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
                parts.append(f"$ {' '.join(command[1:3])}\n{done.stdout[-4000:]}{done.stderr[-2000:]}")
            except subprocess.TimeoutExpired:
                parts.append(f"$ {' '.join(command[1:3])}: no answer in 60 s")
        logs = self.temp_dir / "ray" / "session_latest" / "logs"
        newest = sorted((logs / "train").glob("*.log"), key=lambda path: path.stat().st_mtime)[-3:]
        for path in [*newest, logs / "raylet.out"]:
            if path.is_file():
                lines = [line for line in path.read_text(errors="replace").splitlines() if "[state-dump]" not in line]
                parts.append(f"--- {path.name} (end)\n" + "\n".join(lines[-25:]))
        return "\n".join(parts)


def start_ray_head() -> Iterator[RayCluster]:
    """Start a Ray head node, yield it, and end every process it started (the ``ray_cluster`` fixture)."""
    tmp = Path(tempfile.mkdtemp(prefix="dlrml-cluster-", dir="/tmp"))
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    home = tmp / "home"  # the cluster's own home directory: a job writes its results there (sweep/cluster/job_dir.py)
    home.mkdir()
    # Token authentication on for the cluster and for every client (the job CLI, the job's driver). The caches stay
    # the machine's (models, tokenizers, matplotlib's font list), as they would on a real head node.
    caches = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    env = make_env(tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), HOME=str(home), XDG_CACHE_HOME=caches)
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
    cluster = RayCluster(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", env, tmp)
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


@dataclass
class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with a SQLite backend and proxied artifacts in a temp dir."""

    url: str
    backend: Path
    artifacts: Path


def start_mlflow_server(tmp: Path) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` in ``tmp``, yield it once it answers, and end every process it started."""
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
