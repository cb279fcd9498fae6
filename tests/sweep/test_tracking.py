"""MLflow tracking against a real ``mlflow server`` that is stopped and restarted mid-sweep, and against a sqlite
store as a researcher browses it (runs that end with their trial, selection tags, the parent run's description)."""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from sweep.tracking.callback import MLflowTracker
from sweep.tracking.runs import (
    ATTEMPT_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    NOTE_TAG,
    PARENT_TAG,
    SELECTED_TAG,
    SUPERSEDED_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    SweepRuns,
    scrub,
)
from trainers.collapse import DivergenceConfig
from trainers.protocol import Metric, TrialStatus
from trainers.verdicts import VerdictConfig


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
    runs = SweepRuns(
        tracking_uri=uri,
        experiment="tracking-test",
        sweep_name="sweep-a",
        sweep_params={"grid.losses": "['dlrml']", "mt_bench.eval.api_key_env": "OPENAI_API_KEY"},
        trial_params=lambda c: c["params"],
        trial_name=lambda c: c["name"],
    )
    return MLflowTracker(runs, spool_path=spool)


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
    with caplog.at_level(logging.WARNING, logger="sweep.tracking.delivery"):
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
    # The resumed sweep's own summary finds the trial's run again (Tune does not start a finished trial again).
    resumed.finish_trial("t1", trial.config, "diverged", {"reason": "non_finite_loss (numerical)", "steps": 3})
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
    assert len(client.get_metric_history(run.info.run_id, "final/steps")) == 1  # replayed, then logged again: once
    assert run.data.tags["dlrml.status"] == "diverged"
    assert run.data.tags["dlrml.reason"] == "non_finite_loss (numerical)"
    assert run.info.status == "FINISHED"
    assert all(r.info.status != "RUNNING" for r in runs)
    assert run.data.params == {"loss": "dlrml", "beta_kl": "0.05"}


def test_scrub_drops_credentials_but_keeps_env_var_names():
    params = {"judge.api_key": "sk-123", "mlflow_token": "tok", "api_key_env": "OPENAI_API_KEY", "lr": 1e-5}
    assert scrub(params) == {"api_key_env": "OPENAI_API_KEY", "lr": "1e-05"}


# -- as a researcher browses it (a sqlite store: same store code as the server, without its process) -------------


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    """One sqlite tracking store for the module (its schema migration is the slow part); tests use own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _browsed_tracker(
    uri: str, experiment: str, retry_interval_s: float = 15.0, spool_path: Path | None = None, **runs
) -> MLflowTracker:
    runs = SweepRuns(
        tracking_uri=uri,
        experiment=experiment,
        sweep_name=f"{experiment}-sweep",
        sweep_params={"grid.losses": "['dpo', 'dlrml']"},
        trial_params=lambda c: {"loss": c["loss"]},
        trial_name=lambda c: f"{c['loss']} {c['id']}",
        **runs,
    )
    return MLflowTracker(
        runs,
        spool_path=spool_path,
        retry_interval_s=retry_interval_s,
        divergence=DivergenceConfig(),
        verdicts=VerdictConfig(),
    )


def _trial(trial_id: str, loss: str = "dpo") -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={"loss": loss, "id": trial_id})


def _train(step: int, loss: float = 0.69) -> dict:
    return {"step": step, "report/type": 0, "loss": loss, "grad_norm": 1.0}


def _eval(step: int, accuracy: float) -> dict:
    return {"step": step, "report/type": 1, "eval_rewards/accuracies": accuracy}


def _final(step: int, accuracy: float) -> dict:
    return {"step": step, "report/type": 2, "final": 1, "eval/pairs": 16, "eval_rewards/accuracies": accuracy}


def _settled(accuracy: float) -> list[dict]:
    """Three training steps, each with a held-out evaluation at ``accuracy`` (a settled verdict), then the end."""
    steps = [report for step in (1, 2, 3) for report in (_train(step), _eval(step, accuracy))]
    return [*steps, _final(3, accuracy)]


def _report(tracker: MLflowTracker, trial, *results: dict) -> None:
    tracker.on_trial_start(0, [], trial)
    for result in results:
        tracker.on_trial_result(0, [], trial, result)


def _run(tracker: MLflowTracker, trial_id: str):
    return tracker.client.get_run(tracker.trial_runs[trial_id])


def test_trial_run_ends_when_the_trial_ends_and_the_summary_keeps_its_end(sqlite_uri):
    tracker = _browsed_tracker(sqlite_uri, "ends")
    tracker.start()
    stable, stalled, pruned, diverged, errored = (_trial(t) for t in ("ts", "tl", "tp", "td", "te"))
    _report(tracker, stable, *_settled(0.9))
    _report(tracker, stalled, *_settled(0.6))
    _report(tracker, pruned, _train(1), _eval(1, 0.55))
    _report(tracker, diverged, _train(1), _train(2, math.nan))
    _report(tracker, errored, _train(1))
    running = _run(tracker, "ts")
    assert running.info.status == "RUNNING" and running.info.end_time is None

    for trial in (stable, stalled, pruned, diverged):
        tracker.on_trial_complete(0, [], trial)
    tracker.on_trial_error(0, [], errored)

    expected = {
        "ts": ("stable", "FINISHED"),
        "tl": ("stalled", "FINISHED"),
        "tp": ("interrupted", "KILLED"),  # no final report, no error, no ASHA: the sweep was stopped
        "td": ("diverged", "FINISHED"),
        "te": ("errored", "FAILED"),
    }
    ended = {}
    for trial_id, (status, run_status) in expected.items():
        run = _run(tracker, trial_id)  # before close(): the run ended with its trial
        assert (run.info.status, run.data.tags["verdict"], run.data.tags["dlrml.status"]) == (
            run_status,
            status,
            status,
        ), trial_id
        assert run.info.end_time is not None and run.info.end_time >= run.info.start_time
        ended[trial_id] = run.info.end_time
        # The verdict as numbers a chart can plot, and as the run's description with its full reason.
        assert run.data.metrics["final/verdict_code"] == TrialStatus(status).code, trial_id
        note = run.data.tags[NOTE_TAG]
        assert note.startswith(f"**{status}**") and run.data.tags.get("dlrml.reason", "") in note, note
    verdicts = {
        t: {k: _run(tracker, t).data.metrics.get(f"final/{k}") for k in ("failed", "unstable")} for t in expected
    }
    assert verdicts == {
        "ts": {"failed": 0, "unstable": 0},
        "tl": {"failed": 1, "unstable": 0},
        "td": {"failed": 1, "unstable": 1},
        "tp": {"failed": None, "unstable": None},  # no verdict: neither failed nor not (never a placeholder)
        "te": {"failed": None, "unstable": None},
    }
    assert "(failed, unstable)" in _run(tracker, "td").data.tags[NOTE_TAG]
    assert "(no verdict" in _run(tracker, "tp").data.tags[NOTE_TAG]
    assert _run(tracker, "td").data.tags["dlrml.reason"].startswith("non_finite_loss")
    assert (
        _run(tracker, "tp").data.tags["dlrml.reason"]
        == "ended at step 1 without its final report (the sweep was stopped)"
    )
    assert "no error recorded" in _run(tracker, "te").data.tags["dlrml.reason"]
    losses = {m.step: m.value for m in tracker.client.get_metric_history(tracker.trial_runs["td"], "loss")}
    assert losses[1] == 0.69 and math.isnan(losses[2])  # the diverging step's NaN is logged: it is the evidence

    time.sleep(0.05)  # the sweep's summary comes later: it must not move the end of a run that already ended
    tracker.finish_trial("ts", stable.config, "stable", {"reason": "ok", "eval_accuracy": 0.9, "steps": 2})
    tracker.finish_trial("tp", pruned.config, "stable", {"steps": 2})  # judged again after a resume: new status
    assert tracker.close() == 0
    summarised = _run(tracker, "ts")
    assert summarised.info.end_time == ended["ts"] and summarised.info.status == "FINISHED"
    assert summarised.data.metrics["final/eval_accuracy"] == 0.9 and summarised.data.tags["dlrml.reason"] == "ok"
    assert (
        summarised.data.tags[NOTE_TAG].startswith("**stable**")
        and "held-out accuracy 0.900" in summarised.data.tags[NOTE_TAG]
    )
    rejudged = _run(tracker, "tp")
    assert (rejudged.info.status, rejudged.data.tags["verdict"]) == ("FINISHED", "stable")
    assert rejudged.info.end_time == ended["tp"]
    assert (rejudged.data.metrics["final/verdict_code"], rejudged.data.metrics["final/failed"]) == (0, 0)


class _Unreachable:
    """A client whose every call fails, as during a tracking outage."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("tracking server down")

        return fail


def test_a_steps_throughput_reaches_the_trials_run_as_step_metrics(sqlite_uri):
    """The ``perf/*`` metrics a trial reports with each training step (non-pad tokens/s, padding fraction, tokens
    saved, MFU) are logged on its run like any other step metric, one point per step."""
    tracker = _browsed_tracker(sqlite_uri, "perf")
    tracker.start()
    trial = _trial("tperf")
    perf = {
        Metric.PERF_TOKENS_PER_SECOND: 1234.5,
        Metric.PERF_PADDING_FRACTION: 0.0,
        Metric.PERF_TOKENS_SAVED: 321.0,
        Metric.PERF_MFU: 0.42,
    }
    _report(tracker, trial, {**_train(1), **perf}, {**_train(2), **perf, Metric.PERF_TOKENS_SAVED: 300.0})
    assert tracker.flush(force=True)
    run_id = tracker.trial_runs["tperf"]
    for name, value in perf.items():
        history = sorted(tracker.client.get_metric_history(run_id, name), key=lambda m: m.step)
        expected = [value, 300.0 if name == Metric.PERF_TOKENS_SAVED else value]
        assert [(m.step, m.value) for m in history] == list(zip((1, 2), expected, strict=True)), name
    assert tracker.close() == 0


def test_a_trial_ended_during_an_outage_keeps_its_end_time(sqlite_uri):
    tracker = _browsed_tracker(sqlite_uri, "outage-end", retry_interval_s=0.0)
    tracker.start()
    trial = _trial("t1")
    _report(tracker, trial, *_settled(0.9))
    client, tracker.client = tracker.client, _Unreachable()
    before = int(time.time() * 1000)
    tracker.on_trial_complete(0, [], trial)
    after = int(time.time() * 1000)
    assert tracker.pending == 1
    time.sleep(0.05)
    tracker.client = client  # the server is back
    assert tracker.flush(force=True) and tracker.close() == 0
    run = _run(tracker, "t1")
    assert run.info.status == "FINISHED" and before <= run.info.end_time <= after


def test_parent_run_name_description_experiment_kind_selection_and_no_nan_summaries(sqlite_uri):
    description = "DPO-family stability sweep: **dpo, dlrml** x beta_kl 0.05-1"
    tracker = _browsed_tracker(
        sqlite_uri,
        "browse",
        parent_run_name="browse-sweep: dpo, dlrml x beta_kl 0.05-1 (2 trials)",
        description=description,
        experiment_tags={NOTE_TAG: "what the runs are", "mlflow.sharedViewState.v": '{"name": "v"}'},
    )
    tracker.start()
    chosen, other = _trial("t1"), _trial("t2", "dlrml")
    _report(tracker, chosen, _train(1), _train(2, math.inf))  # a diverging step: NaN/Inf step metrics are evidence
    _report(tracker, other, _train(1))
    tracker.mark_selected("t1", chosen.config)
    tracker.log_trial_metrics("t1", chosen.config, {"mt_bench/score": 6.5, "mt_bench/turn_2": math.nan})
    assert tracker.close() == 0

    client = tracker.client
    experiment = client.get_experiment_by_name("browse")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    assert experiment.tags[NOTE_TAG] == "what the runs are" and experiment.tags["mlflow.sharedViewState.v"]
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.run_name == "browse-sweep: dpo, dlrml x beta_kl 0.05-1 (2 trials)"
    assert parent.data.tags[NOTE_TAG] == description and parent.data.tags[SWEEP_TAG] == "browse-sweep"
    assert parent.data.metrics == {}
    selected, unselected = _run(tracker, "t1"), _run(tracker, "t2")
    assert selected.data.tags[SELECTED_TAG] == "mt_bench" and SELECTED_TAG not in unselected.data.tags
    assert selected.data.metrics["mt_bench/score"] == 6.5 and "mt_bench/turn_2" not in selected.data.metrics
    assert [m.step for m in client.get_metric_history(selected.info.run_id, "loss")] == [1, 2]

    # Resumed with a new description: the parent run is found again and described anew, at the end with its results;
    # the experiment keeps its kind, and the description a user edited in the UI.
    client.set_experiment_tag(experiment.experiment_id, NOTE_TAG, "edited in the UI")
    resumed = _browsed_tracker(
        sqlite_uri, "browse", parent_run_name="renamed", description="resumed", experiment_tags={NOTE_TAG: "new"}
    )
    resumed.start()
    assert client.get_run(tracker.parent_run_id).data.tags[NOTE_TAG] == "resumed"
    resumed.describe_sweep("resumed\n\n| cell | verdict |")
    assert resumed.close() == 0 and resumed.parent_run_id == tracker.parent_run_id
    again = client.get_run(tracker.parent_run_id)
    assert again.info.run_name == "renamed" and again.data.tags[NOTE_TAG] == "resumed\n\n| cell | verdict |"
    assert client.get_experiment(experiment.experiment_id).tags[NOTE_TAG] == "edited in the UI"


# -- one point per step and attempt -------------------------------------------------------------------------------


def _versions(tracker: MLflowTracker, trial_id: str) -> list:
    """Every nested run of a trial, superseded attempts included, oldest attempt first."""
    experiment = tracker.client.get_experiment_by_name(tracker.experiment)
    runs = tracker.client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'")
    return sorted(runs, key=lambda r: int(r.data.tags[ATTEMPT_TAG]))


def _loss_steps(tracker: MLflowTracker, run_id: str) -> list[int]:
    return [m.step for m in sorted(tracker.client.get_metric_history(run_id, "loss"), key=lambda m: m.step)]


@pytest.mark.parametrize("how", ["retry", "driver_restart"])
def test_a_trial_started_again_gets_a_fresh_run_with_one_point_per_step(sqlite_uri, how):
    """Tune retries a crashed trial (the same tracker), or a SIGKILLed driver's sweep is resumed (a new tracker with
    no memory of the first): either way the trial restarts from step 1 and must not double its history."""
    experiment = f"attempts-{how}"
    first = _browsed_tracker(sqlite_uri, experiment)
    first.start()
    trial = _trial("t1")
    _report(first, trial, *(_train(step, 0.7) for step in (1, 2, 3)))
    first_run = first.trial_runs["t1"]
    tracker = first if how == "retry" else _browsed_tracker(sqlite_uri, experiment)
    if tracker is not first:
        tracker.start()
    before = int(time.time() * 1000)
    _report(tracker, trial, *(_train(step, 0.6) for step in (1, 2, 3, 4)))

    superseded, current = _versions(tracker, "t1")
    assert superseded.info.run_id == first_run and tracker.trial_runs["t1"] == current.info.run_id != first_run
    assert superseded.data.tags[SUPERSEDED_TAG] == "true" and superseded.data.tags[ATTEMPT_TAG] == "1"
    assert superseded.info.status == "KILLED" and before <= superseded.info.end_time
    assert _loss_steps(tracker, first_run) == [1, 2, 3]  # the first attempt's evidence is kept, on its own run
    assert current.data.tags[SUPERSEDED_TAG] == "false" and current.data.tags[ATTEMPT_TAG] == "2"
    # The README's filter for one run per trial finds the current run only (MLflow never matches an absent tag).
    experiment_id = tracker.experiment_id
    for wanted in (f"tags.`{SUPERSEDED_TAG}` != 'true'", f"tags.`{SUPERSEDED_TAG}` = 'false'"):
        found = tracker.client.search_runs([experiment_id], f"{wanted} and tags.`{TRIAL_TAG}` = 't1'")
        assert [r.info.run_id for r in found] == [current.info.run_id], wanted
    assert current.data.tags[PARENT_TAG] == tracker.parent_run_id == first.parent_run_id
    assert current.data.params == {"loss": "dpo"} and current.info.status == "RUNNING"
    assert _loss_steps(tracker, current.info.run_id) == [1, 2, 3, 4]  # exactly one point per step
    assert {m.value for m in tracker.client.get_metric_history(current.info.run_id, "loss")} == {0.6}

    # The end of the trial and the sweep's summary go to the current attempt; a new tracker (the driver's own, or
    # one more restart) finds that run again by tags, not the superseded one.
    tracker.on_trial_complete(0, [], trial)
    tracker.finish_trial("t1", trial.config, "stalled", {"steps": 4, "attempts": 2})
    assert tracker.close() == 0
    again = _browsed_tracker(sqlite_uri, experiment)
    again.start()
    assert again._ensure_trial_run("t1", trial.config) == current.info.run_id
    assert again.close() == 0
    superseded, current = _versions(tracker, "t1")
    assert (current.info.status, current.data.tags["verdict"], current.data.metrics["final/attempts"]) == (
        "FINISHED",
        "stalled",
        2,
    )
    assert "verdict" not in superseded.data.tags and not any(k.startswith("final/") for k in superseded.data.metrics)
    assert superseded.info.status == "KILLED"


def test_a_trial_restarted_before_it_reported_reuses_its_run(sqlite_uri):
    """A trial killed before its first report holds no points: its run is set running again, not superseded."""
    tracker = _browsed_tracker(sqlite_uri, "attempts-unreported")
    tracker.start()
    trial = _trial("t1")
    tracker.on_trial_start(0, [], trial)
    resumed = _browsed_tracker(sqlite_uri, "attempts-unreported")
    resumed.start()
    _report(resumed, trial, _train(1), _train(2))
    (run,) = _versions(resumed, "t1")
    assert run.info.run_id == tracker.trial_runs["t1"] == resumed.trial_runs["t1"]
    assert run.data.tags[ATTEMPT_TAG] == "1" and run.data.tags[SUPERSEDED_TAG] == "false"
    assert _loss_steps(resumed, run.info.run_id) == [1, 2]


def test_a_reused_run_records_the_attempt_the_trial_counted(sqlite_uri):
    """A driver SIGKILLed after a trial's worker started but before its first report, then ``--resume``: the trial
    starts a second time on the same run (it holds no points), so the run's attempt tag, ``final/attempts`` and
    ``trials.csv`` (the trial's workers' log) must all say 2."""
    first = _browsed_tracker(sqlite_uri, "attempts-reused")
    first.start()
    trial = _trial("t1")
    first.on_trial_start(0, [], trial)  # attempt 1 starts, reports nothing; the driver is killed
    resumed = _browsed_tracker(sqlite_uri, "attempts-reused")
    resumed.start()
    _report(resumed, trial, *_settled(0.9))
    resumed.on_trial_complete(0, [], trial)
    resumed.finish_trial("t1", trial.config, "stable", {"steps": 2, "attempts": 2, "eval_accuracy": 0.9})
    assert resumed.close() == 0
    (run,) = _versions(resumed, "t1")
    assert run.info.run_id == first.trial_runs["t1"]
    assert (run.data.tags[ATTEMPT_TAG], run.data.metrics["final/attempts"]) == ("2", 2)
    assert "attempt 2" in run.data.tags[NOTE_TAG]


def _history_lengths(client: MlflowClient, run_id: str, prefix: str) -> dict[str, int]:
    metrics = client.get_run(run_id).data.metrics
    return {key: len(client.get_metric_history(run_id, key)) for key in metrics if key.startswith(prefix)}


def test_summary_metrics_have_one_point_per_key_after_a_replay_and_a_resume(sqlite_uri, tmp_path):
    """The sweep's summary was spooled during an outage; ``--resume`` replays it, then logs its own summary again."""
    spool = tmp_path / "mlflow_pending.jsonl"
    tracker = _browsed_tracker(sqlite_uri, "summary-twice", spool_path=spool, retry_interval_s=0.0)
    tracker.start()
    trial = _trial("t1")
    _report(tracker, trial, *_settled(0.9))
    tracker.on_trial_complete(0, [], trial)
    summary = {"reason": "ok", "steps": 2, "attempts": 1, "eval_accuracy": 0.9}
    note = "| cell | verdict |\n|---|---|\n| dpo 0.1 | **stable** |"
    client, tracker.client = tracker.client, _Unreachable()
    tracker.finish_trial("t1", trial.config, "stable", summary)
    tracker.describe_sweep(note)
    assert tracker.close() == 3 and spool.is_file()  # finish, parent description, close

    for _ in range(2):  # --resume (the spool is replayed first), then once more
        resumed = _browsed_tracker(sqlite_uri, "summary-twice", spool_path=spool)
        resumed.start()
        assert not spool.exists()
        resumed.finish_trial("t1", trial.config, "stable", summary)
        resumed.finish_trial("t1", trial.config, "stable", summary)
        resumed.describe_sweep(note)
        resumed.describe_sweep(note)
        assert resumed.close() == 0

    run_id = resumed._ensure_trial_run("t1", trial.config)
    assert _history_lengths(client, run_id, "final/") == {
        "final/steps": 1,
        "final/attempts": 1,
        "final/eval_accuracy": 1,
        "final/verdict_code": 1,  # logged as the trial ended, then by every summary: one point
        "final/failed": 1,
        "final/unstable": 1,
    }
    assert client.get_run(resumed.parent_run_id).data.tags[NOTE_TAG] == note
    assert _loss_steps(resumed, run_id) == [1, 2, 3]

    # A value that changed (e.g. a trial judged again) is a new point, and the run shows it.
    resumed.finish_trial("t1", trial.config, "stable", {**summary, "eval_accuracy": 0.95})
    assert resumed.close() == 0
    assert len(client.get_metric_history(run_id, "final/eval_accuracy")) == 2
    assert client.get_run(run_id).data.metrics["final/eval_accuracy"] == 0.95
