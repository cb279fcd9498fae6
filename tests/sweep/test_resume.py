"""Driver restart: a sweep whose driver is SIGKILLed mid-run continues from Ray Tune's experiment state, keeping
the trials it lists as finished (a snapshot the kill cut is aligned first: sweep.search.snapshot), and MLflow ends with
exactly one closed, current (not superseded) nested run per trial holding one point per step; the attempts the kill
interrupted are kept as superseded runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from sweep.search.snapshot import listed_trials
from sweep.tracking.runs import ATTEMPT_TAG, PARENT_TAG, ROLE_TAG, SUPERSEDED_TAG, TRIAL_TAG
from sweep.trials.reports import final_report, read_reports
from tests.procs import MARK_VAR, end_marked, make_env, run

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.long]


def _sweep_cmd(storage: Path, db: Path) -> list[str]:
    return [
        sys.executable,
        str(REPO / "sweep" / "run.py"),
        "--config",
        "smoke",
        "--mlflow-uri",
        f"sqlite:///{db}",
        f"storage_path={storage}",
        "grid.seeds=[0,1]",
        "scheduler.asha=false",
        # One trial at a time: trials take seconds, and the kill must land while later ones have yet to finish.
        "resources.max_concurrent_trials=1",
    ]


def _finished_trials(experiment: Path) -> set[str]:
    """The trials whose final report is in their result.json."""
    finals = (final_report(read_reports(trial_dir)) for trial_dir in experiment.glob("tune_trial_*"))
    return {final["trial_id"] for final in finals if final is not None}


def test_sigkilled_driver_resumes_without_losing_or_duplicating(tmp_path, short_tmp):
    storage, db = tmp_path / "results", tmp_path / "mlflow.db"
    env = make_env(short_tmp)
    log = open(tmp_path / "first.log", "wb")  # noqa: SIM115 - closed below
    first = subprocess.Popen(
        _sweep_cmd(storage, db), cwd=tmp_path, env=env, stdout=log, stderr=log, start_new_session=True
    )
    experiment = storage / "smoke"
    deadline = time.monotonic() + 420
    while not _finished_trials(experiment) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.poll() is None, (
        f"the sweep ended before it could be killed: {(tmp_path / 'first.log').read_text()[-3000:]}"
    )
    assert _finished_trials(experiment), "no trial finished in time"
    os.killpg(first.pid, signal.SIGKILL)  # the driver...
    end_marked(env[MARK_VAR], 0)  # ...and the local Ray instance it started, as a preempted node loses both
    first.wait(timeout=60)
    log.close()
    finished = _finished_trials(experiment)
    assert len(finished) < 4
    # What the resume starts from: Tune's trial list, which Tune copies only every 10 s or so: the trial that had just
    # finished is usually listed running. Every listed trial whose final report is on disk is kept (sweep.search.
    # snapshot); a trial that started after the list was last copied is not in it and runs again.
    # (test_tune_snapshot.py makes that case certain.)
    kept = finished & set(listed_trials(experiment))

    second = run(_sweep_cmd(storage, db), cwd=tmp_path, env=env, timeout=600, linger_s=30)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming smoke" in second.stdout

    trials = pd.read_csv(experiment / "map" / "trials.csv")
    assert len(trials) == 4 and trials["trial_id"].is_unique
    attempts = dict(zip(trials["trial_id"], trials["attempts"], strict=True))
    assert {trial_id: attempts[trial_id] for trial_id in kept} == dict.fromkeys(kept, 1)  # not trained again
    assert not any(f"started ({trial_id})" in second.stdout for trial_id in kept)
    assert set(trials["status"]) <= {"stable", "stalled", "collapsed", "diverged"}

    client = MlflowClient(f"sqlite:///{db}")
    experiment_id = client.get_experiment_by_name("dlrml-sweep").experiment_id
    runs = client.search_runs([experiment_id])
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"]
    trial_runs = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    nested = [r for r in trial_runs if r.data.tags.get(SUPERSEDED_TAG) != "true"]  # each trial's current run
    superseded = [r for r in trial_runs if r.data.tags.get(SUPERSEDED_TAG) == "true"]
    assert len(parents) == 1
    assert sorted(r.data.tags[TRIAL_TAG] for r in nested) == sorted(trials["trial_id"])
    assert all(r.data.tags[PARENT_TAG] == parents[0].info.run_id for r in trial_runs)
    assert all(r.info.status != "RUNNING" for r in runs)
    by_trial = {r.data.tags[TRIAL_TAG]: r.data.tags["dlrml.status"] for r in nested}
    assert by_trial == dict(zip(trials["trial_id"], trials["status"], strict=True))
    steps = dict(zip(trials["trial_id"], trials["steps"], strict=True))
    for r in nested:  # a trial the kill interrupted starts again from step 1 on a fresh run: no doubled history
        history = client.get_metric_history(r.info.run_id, "loss")
        points = sorted(m.step for m in history)
        assert points == list(range(1, int(steps[r.data.tags[TRIAL_TAG]]) + 1)), (r.data.tags[TRIAL_TAG], points)
    current = {r.data.tags[TRIAL_TAG]: int(r.data.tags.get(ATTEMPT_TAG, "1")) for r in nested}
    for r in superseded:  # an interrupted attempt: ended KILLED, followed by a later attempt of the same trial
        assert r.info.status == "KILLED" and r.info.end_time is not None
        assert int(r.data.tags[ATTEMPT_TAG]) < current[r.data.tags[TRIAL_TAG]]
    # Only an attempt the kill interrupted is superseded: a trial kept as finished has its one run, read back.
    assert not {r.data.tags[TRIAL_TAG] for r in superseded} & kept
    assert len(superseded) <= 4 - len(kept)
