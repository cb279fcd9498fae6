"""A grid sweep whose Tune snapshot was cut by a kill resumes and runs every grid entry (sweep.search.snapshot).

A real Tune experiment (a four-entry grid of a function that only reports, one trial at a time) is run to the end,
then its snapshot is cut the way a driver killed during Tune's background copy leaves it (seen in
``test_resume.py``): the trial list of an early save (trial 0 running) beside the searcher of a later one (four
trials proposed, trial 3 running). Restored as it is, the searcher proposes nothing more and the sweep waits forever;
aligned, the resumed sweep runs the three missing entries.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import ray.cloudpickle as cloudpickle
from ray.tune.search.basic_variant import BasicVariantGenerator

from sweep.search.snapshot import GRID_SEARCHER_GLOB, TRIAL_LIST_GLOB, align_grid_searcher, listed_trials
from sweep.trials.reports import final_report, read_reports
from tests.procs import MARK_VAR, end_marked, make_env, run

GRID = [0, 1, 2, 3]
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import ray
    from ray import tune
    from sweep.search.snapshot import align_grid_searcher

    def report(config):
        tune.report({"i": config["i"]})

    storage, phase, grid = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    ray.init(num_cpus=1, include_dashboard=False)
    if phase == "first":
        tuner = tune.Tuner(
            report,
            param_space={"i": tune.grid_search(grid)},
            tune_config=tune.TuneConfig(max_concurrent_trials=1),
            run_config=tune.RunConfig(name="grid", storage_path=storage, verbose=0),
        )
    else:
        alignment = align_grid_searcher(Path(storage) / "grid")
        print(json.dumps({"aligned": alignment.describe() if alignment else None}))
        tuner = tune.Tuner.restore(str(Path(storage) / "grid"), trainable=report, resume_errored=True)
    results = tuner.fit()
    print(json.dumps(sorted([r.metrics["i"], r.metrics["trial_id"]] for r in results)))
    """
)


def _cut_snapshot(experiment: Path) -> str:
    """Leave the trial list of an early save beside the searcher of a later one; return trial 3's id."""
    trial_list = sorted(experiment.glob(TRIAL_LIST_GLOB))[-1]
    saved = json.loads(trial_list.read_text())
    first = json.loads(saved["trial_data"][0][0])
    first["status"] = "RUNNING"
    saved["trial_data"] = [[json.dumps(first), saved["trial_data"][0][1]]]
    trial_list.write_text(json.dumps(saved))
    searcher_file = sorted(experiment.glob(GRID_SEARCHER_GLOB))[-1]
    state = cloudpickle.loads(searcher_file.read_bytes())
    last = f"{state['_uuid_prefix']}{len(GRID) - 1:05d}"
    state["_live_trials"], state["_finished"] = {last}, False
    searcher_file.write_bytes(cloudpickle.dumps(state))
    return last


def _searcher(experiment: Path) -> BasicVariantGenerator:
    searcher = BasicVariantGenerator(max_concurrent=1)
    searcher.restore_from_dir(str(experiment))
    return searcher


def test_a_cut_snapshot_is_aligned_and_the_resumed_grid_runs_every_entry(tmp_path: Path, short_tmp: Path) -> None:
    storage, env = tmp_path / "results", make_env(short_tmp)
    first = run(
        [sys.executable, "-c", SCRIPT, str(storage), "first", json.dumps(GRID)], cwd=tmp_path, env=env, timeout=300
    )
    assert first.returncode == 0, first.stderr[-3000:]
    ran = json.loads(first.stdout.splitlines()[-1])
    assert [i for i, _ in ran] == GRID
    experiment = storage / "grid"
    last = _cut_snapshot(experiment)

    # As cut, the searcher counts trial 3 as running (the one trial allowed at once) and proposes nothing more,
    # while the restored trial list lacks it: Tune would wait for the searcher forever.
    cut = _searcher(experiment)
    assert cut.next_trial() is None and not cut.is_finished()

    resumed = run(
        [sys.executable, "-c", SCRIPT, str(storage), "resume", json.dumps(GRID)], cwd=tmp_path, env=env, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    lines = resumed.stdout.splitlines()
    aligned = next(json.loads(line) for line in lines if line.startswith('{"aligned"'))
    results = json.loads(lines[-1])
    assert f"proposed 4 trials with {last} running, its trial list holds 1" in aligned["aligned"]
    assert [i for i, _ in results] == GRID  # every grid entry, each once
    assert [trial_id for _, trial_id in results] == [trial_id for _, trial_id in ran]  # under the same trial ids
    assert last in {trial_id for _, trial_id in results}
    assert align_grid_searcher(experiment) is None  # the resumed sweep saved a consistent snapshot


FINISHED_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import ray
    from ray import tune
    from sweep.config import load_sweep_config
    from sweep.search.searcher import AdaptiveSearcher
    from sweep.search.snapshot import align_snapshot
    from trainers.protocol import HELD_OUT_ACCURACY, ReportKey, ReportType

    storage, phase, overrides = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    config = load_sweep_config("smoke", overrides)
    starts = storage / "starts.txt"

    def trial(config):
        with starts.open("a") as out:  # one line per start of a trial
            out.write(tune.get_context().get_trial_id() + "\\n")
        common = {ReportKey.STEP.value: 1, HELD_OUT_ACCURACY: 1.0}
        tune.report({**common, ReportKey.REPORT_TYPE.value: int(ReportType.TRAIN), "loss": 0.6})
        tune.report({**common, ReportKey.REPORT_TYPE.value: int(ReportType.EVAL)})
        final = {ReportKey.FINAL.value: 1, ReportKey.EVAL_PAIRS.value: 32, "loss": 0.6}
        tune.report({**common, ReportKey.REPORT_TYPE.value: int(ReportType.FINAL), **final})
        if phase == "first" and len(starts.read_text().split()) == 3:
            time.sleep(3600)  # the last trial has sent its final report; the driver is killed while it lingers

    ray.init(num_cpus=1, include_dashboard=False)
    experiment = storage / "sweep"
    if phase == "first":
        if config.search == "adaptive":
            searcher = AdaptiveSearcher(config)
            samples = searcher.num_samples
            tune_config = tune.TuneConfig(search_alg=searcher, num_samples=samples, max_concurrent_trials=1)
            space = {}
        else:
            tune_config = tune.TuneConfig(max_concurrent_trials=1)
            space = {"trial": tune.grid_search([{"seed": seed} for seed in config.grid.seeds])}
        run_config = tune.RunConfig(name="sweep", storage_path=str(storage), verbose=0)
        tuner = tune.Tuner(trial, param_space=space, tune_config=tune_config, run_config=run_config)
    else:
        print(json.dumps({"aligned": align_snapshot(experiment, config)}))
        tuner = tune.Tuner.restore(str(experiment), trainable=trial, resume_errored=True)
    results = tuner.fit()
    print(json.dumps(sorted([r.metrics["trial_id"], r.metrics.get("final")] for r in results)))
    """
)

SEARCHES = {
    "grid": ["grid.seeds=[0,1,2]"],
    "adaptive": [
        *("search=adaptive", "grid.losses=[dpo]", "grid.beta_kl=[0.01,0.1,1]", "grid.beta_mix=[]"),
        *("grid.seeds=[0]", "scheduler.asha=false"),
    ],
}


@pytest.mark.parametrize("search", SEARCHES)
def test_a_trial_that_finished_before_the_kill_is_kept_though_listed_running(search, tmp_path, short_tmp):
    """Three trials, one at a time; the third sends its final report and lingers, and the driver (with its Ray
    instance) is SIGKILLed once Tune's snapshot lists that trial running. The resume keeps it (its final report is
    in result.json): it is not started again, the searcher -- grid or adaptive, with Tune's concurrency limiter --
    does not wait for it, and every trial ends with its final report."""
    storage, env = tmp_path / "results", make_env(short_tmp)
    storage.mkdir()
    overrides = json.dumps(SEARCHES[search])
    command = [sys.executable, "-c", FINISHED_SCRIPT, str(storage), "first", overrides]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log, start_new_session=True)
    experiment, starts = storage / "sweep", storage / "starts.txt"
    deadline = time.monotonic() + 300
    try:
        while True:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the snapshot never listed the last trial running"
            started = starts.read_text().split() if starts.is_file() else []
            if len(started) == 3 and listed_trials(experiment).get(started[2]) == "RUNNING":
                trial_dir = next(experiment.glob(f"*{started[2]}*"), None)
                if trial_dir is not None and final_report(read_reports(trial_dir)) is not None:
                    break
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        end_marked(env[MARK_VAR], 0)
        first.wait(timeout=60)
        log.close()
    last = started[2]

    resumed = run(
        [sys.executable, "-c", FINISHED_SCRIPT, str(storage), "resume", overrides], cwd=tmp_path, env=env, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    lines = resumed.stdout.splitlines()
    assert starts.read_text().split() == started  # nothing started again
    assert json.loads(lines[-1]) == sorted([trial_id, 1] for trial_id in started)  # each with its final report
    aligned = next(json.loads(line) for line in lines if line.startswith('{"aligned"'))["aligned"]
    assert f"kept, not trained again ({last})" in aligned[0]
    assert listed_trials(experiment) == dict.fromkeys(started, "TERMINATED")
