"""MLflow tracking against a real ``mlflow server`` that is stopped and restarted mid-sweep."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweep.tracking import PARENT_TAG, SWEEP_TAG, TRIAL_TAG, MLflowTracker, scrub


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MLflowServer:
    """A real tracking server process on 127.0.0.1 that can be stopped and started again on the same port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
        ]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture()
def server(tmp_path):
    srv = MLflowServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


@dataclass
class Trial:
    """The two attributes of a Tune trial the tracker reads."""

    trial_id: str
    config: dict = field(default_factory=dict)


def _tracker(uri: str, spool: Path) -> MLflowTracker:
    return MLflowTracker(
        tracking_uri=uri,
        experiment="tracking-test",
        sweep_name="sweep-a",
        sweep_params={"grid.losses": "['dlrml']", "mt_bench.eval.api_key_env": "OPENAI_API_KEY"},
        trial_params=lambda c: c["params"],
        trial_name=lambda c: c["name"],
        echo=lambda line: None,
        spool_path=spool,
    )


def _result(step: int, loss: float) -> dict:
    return {"step": step, "loss": loss, "grad_norm": 1.0, "report/type": 0, "trial_id": "t1"}


def test_outage_is_queued_spooled_and_replayed_without_duplicates(server, tmp_path, caplog):
    spool = tmp_path / "experiment" / "mlflow_pending.jsonl"
    trial = Trial("t1", {"params": {"loss": "dlrml", "beta_kl": 0.05}, "name": "dlrml bkl=0.05"})
    tracker = _tracker(server.uri, spool)
    tracker.start()
    tracker.on_trial_start(0, [], trial)
    tracker.on_trial_result(0, [], trial, _result(1, 0.7))
    assert tracker.pending == 0

    server.stop()
    with caplog.at_level(logging.WARNING, logger="sweep.tracking"):
        tracker.on_trial_result(0, [], trial, _result(2, 0.6))
        tracker.on_trial_result(0, [], trial, _result(3, float("nan")))
        tracker.finish_trial("t1", trial.config, "diverged", {"reason": "non_finite_loss (numerical)", "steps": 3})
        undelivered = tracker.close()
    assert undelivered == tracker.pending == 4  # metrics x2, finish, close: nothing lost, nothing raised
    assert "unreachable" in caplog.text and spool.is_file()

    # The driver is restarted (--resume) once the server is back: the spool is replayed first.
    server.start()
    resumed = _tracker(server.uri, spool)
    resumed.start()
    assert resumed.pending == 0 and not spool.exists()
    resumed.on_trial_start(0, [], trial)  # a resumed trial finds its run again
    assert resumed.close() == 0

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("tracking-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    nested = [r for r in runs if r.data.tags.get(TRIAL_TAG) == "t1"]
    assert len(runs) == 2 and len(parents) == 1 and len(nested) == 1
    assert parents[0].data.tags[SWEEP_TAG] == "sweep-a"
    assert nested[0].data.tags[PARENT_TAG] == parents[0].info.run_id
    run = nested[0]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert run.data.tags["dlrml.status"] == "diverged"
    assert run.data.tags["dlrml.reason"] == "non_finite_loss (numerical)"
    assert run.info.status == "FINISHED"
    assert all(r.info.status != "RUNNING" for r in runs)
    assert run.data.params == {"loss": "dlrml", "beta_kl": "0.05"}


def test_scrub_drops_credentials_but_keeps_env_var_names():
    params = {"judge.api_key": "sk-123", "mlflow_token": "tok", "api_key_env": "OPENAI_API_KEY", "lr": 1e-5}
    assert scrub(params) == {"api_key_env": "OPENAI_API_KEY", "lr": "1e-05"}
