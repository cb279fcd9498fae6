"""Processes the slow tests start, and ending exactly those.

Every process a test starts carries a marker variable in its environment (``MARK_VAR``, inherited by every Ray
process it starts); the helpers here end exactly the processes carrying a given marker, never Ray instances or
servers started by anyone else on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent
"""The virtualenv's ``bin``: ``ray``, ``mlflow`` and the ``python`` a Ray job's entrypoint resolves to."""
MARK_VAR = "DLRML_TEST_PROCESS_GROUP"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def marked_pids(mark: str) -> list[int]:
    """Live processes whose environment carries ``MARK_VAR=mark`` (inherited by every Ray process they start)."""
    needle = f"{MARK_VAR}={mark}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def end_marked(mark: str, grace_s: float) -> list[int]:
    """Wait up to ``grace_s`` for the marked processes to exit, then SIGKILL the rest; returns those killed."""
    deadline = time.monotonic() + grace_s
    while (left := marked_pids(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def make_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Environment of a test's processes: the venv first on PATH, offline hub, a private Ray temp dir, a marker.

    The Ray temp dir is short (Unix socket paths are limited to 107 bytes) and private, so a local
    ``ray.init()`` never joins a cluster someone else started on this machine.
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        PATH=f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}",
        # The checkout under test first, for every process (Ray workers included): an editable install of the
        # project may point at another checkout (a git worktree shares its parent's virtualenv).
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")])),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        RAY_TMPDIR=str(tmp),
        RAY_USAGE_STATS_ENABLED="0",
        # Ray Train gives a trial's worker group 60 s to start; a 2-core box busy with other jobs can need more.
        RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="300",
        **{MARK_VAR: uuid.uuid4().hex},
        **extra,
    )
    return env


class Finished(subprocess.CompletedProcess):
    """A finished command, plus the processes it started that were still alive ``linger_s`` after it."""

    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str, lingering: list[int]) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.lingering = lingering


def run(command: list[str], *, cwd: Path, env: dict[str, str], timeout: float, linger_s: float = 5) -> Finished:
    """Run ``command`` in its own process group, under a fresh marker.

    Whatever it started (a local Ray instance) gets ``linger_s`` to exit after it returns, and is then ended;
    on a timeout, the command and everything it started are ended at once.
    """
    env = {**env, MARK_VAR: uuid.uuid4().hex}
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            end_marked(env[MARK_VAR], 0)
            stdout, stderr = process.communicate()
            pytest.fail(f"{command} still running after {timeout} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    lingering = end_marked(env[MARK_VAR], linger_s)
    return Finished(command, process.returncode, stdout, stderr, lingering)


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Wait until ``url`` answers HTTP at all (any status: it may want a token) while ``process`` lives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} not answering after {timeout} s:\n{log.read_text()[-3000:]}")


def stop_group(process: subprocess.Popen, mark: str, grace_s: float) -> list[int]:
    """SIGTERM a server's process group, then end every marked process still alive after ``grace_s``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    killed = end_marked(mark, grace_s)
    process.wait(timeout=30)
    return killed
