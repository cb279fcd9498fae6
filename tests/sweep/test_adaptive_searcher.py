"""The adaptive planner as a Tune ``Searcher``: suggestions shaped like the driver's grid, statuses replayed from
recorded reports (a trial the divergence stopper ended has no final report); its saved state set to a resumed
sweep's trial list. No Ray cluster is started."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ray.tune.search import Searcher

from sweep.config import load_sweep_config
from sweep.search.lattice import spec_of
from sweep.search.searcher import AdaptiveSearcher, trial_result_status
from sweep.search.snapshot import align_adaptive_searcher
from sweep.trials.reports import RESULT_FILE
from tests.sweep.test_trial_rows import DIVERGENCE, VERDICTS, held_out_run, train
from trainers.protocol import TrialStatus


def report(record: dict) -> dict:
    """A result as Tune hands it to a searcher: plain string keys."""
    return {str(k): v for k, v in record.items()}


def status(records: list[dict], error: bool = False, last: dict | None = None) -> TrialStatus:
    history = [report(r) for r in records]
    return trial_result_status(
        history, last if last is not None else (history[-1] if history else None), error, DIVERGENCE, VERDICTS
    )


def test_status_of_a_trial_that_learned_and_one_at_chance():
    assert status(held_out_run(0.9, 0.9, 0.9)) is TrialStatus.STABLE
    assert status(held_out_run(0.5, 0.5, 0.5)) is TrialStatus.STALLED
    assert status(held_out_run(0.5, 0.9)) is TrialStatus.UNSETTLED


def test_a_trial_the_stopper_ended_has_no_final_report_and_is_diverged():
    assert status([train(1), train(2), train(3, loss=float("nan"))]) is TrialStatus.DIVERGED


def test_an_errored_trial_carries_no_verdict():
    assert status([train(1)], error=True, last={}) is TrialStatus.ERRORED
    assert status([], error=True) is TrialStatus.ERRORED


def test_the_last_result_is_not_counted_twice_and_is_added_when_missing():
    records = held_out_run(0.9, 0.9, 0.9)
    history = [report(r) for r in records[:-1]]
    assert trial_result_status(history, report(records[-1]), False, DIVERGENCE, VERDICTS) is TrialStatus.STABLE


def test_suggestions_are_driver_grid_entries_then_wait_then_finish():
    config = load_sweep_config(
        "smoke", ["search=adaptive", "grid.losses=[dpo]", "grid.beta_mix=[]", "grid.beta_kl=[0.1,1.0]"]
    )
    driver_grid = [{"loss": dataclasses.asdict(c), "seed": s} for c in config.grid.trials() for s in config.grid.seeds]
    searcher = AdaptiveSearcher(config)
    assert searcher.num_samples == config.grid.n_trials
    first, second = searcher.suggest("a"), searcher.suggest("b")
    assert first["trial"] in driver_grid and second["trial"] in driver_grid and first != second
    assert searcher.suggest("c") is None  # both cells running: nothing to propose until a result comes back
    for trial_id in ("a", "b"):
        records = held_out_run(0.9, 0.9, 0.9)
        for record in records:
            searcher.on_trial_result(trial_id, report(record))
        searcher.on_trial_complete(trial_id, report(records[-1]))
    assert searcher.suggest("d") == Searcher.FINISHED  # both stable: nothing disagrees


def test_state_round_trip(tmp_path):
    config = load_sweep_config("smoke", ["search=adaptive"])
    searcher = AdaptiveSearcher(config)
    suggested = searcher.suggest("a")
    searcher.save(str(tmp_path / "state.pkl"))
    restored = AdaptiveSearcher(config)
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.planner.pending == searcher.planner.pending and suggested is not None
    restored.on_trial_complete("a", report(train(1, loss=float("inf"))))
    assert not restored.planner.pending


def _snapshot(experiment: Path, searcher: AdaptiveSearcher, listed: dict[str, tuple[str, dict]], live: set[str]):
    """Write what Tune saves of an adaptive sweep: the trial list (``listed``: trial id -> (status, grid entry)), each
    listed trial's result.json (a stable trial's reports for a finished one), the searcher's state, and the search
    generator's with its concurrency limiter counting ``live``."""
    import ray.cloudpickle as cloudpickle

    experiment.mkdir()
    trial_data = []
    for trial_id, (status_, entry) in listed.items():
        state = {"trial_id": trial_id, "status": status_, "config": {"trial": entry}, "relative_logdir": trial_id}
        (experiment / trial_id).mkdir()
        if status_ == "TERMINATED":
            reports = [report(r) | {"trial_id": trial_id} for r in held_out_run(0.9, 0.9, 0.9)]
            (experiment / trial_id / RESULT_FILE).write_text("".join(json.dumps(r) + "\n" for r in reports))
        trial_data.append([json.dumps(state), json.dumps({"last_result": {}, "last_result_time": 0})])
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}))
    searcher.save(str(experiment / "searcher-state-2026-01-01_00-00-00.pkl"))
    limiter = {"live_trials": set(live), "num_unfinished_live_trials": len(live), "max_concurrent": 2}
    generator = {"counter": 3, "total_samples": 9, "finished": False, "name:ConcurrencyLimiter": limiter}
    (experiment / "search_gen_state-2026-01-01_00-00-00.json").write_bytes(cloudpickle.dumps(generator))


def test_a_cut_adaptive_snapshot_is_set_to_the_trial_list(tmp_path):
    """The searcher's state ahead of the trial list (it proposed ``c``, which the list lacks) and behind it (the list
    holds ``d``, which it never proposed; ``a`` finished, which it still waits on): aligned, ``a`` is recorded from
    its result.json, ``c``'s trial is proposed again, ``d`` is adopted, and Tune's limiter and counter count the
    list."""
    import ray.cloudpickle as cloudpickle

    config = load_sweep_config(
        "smoke",
        ["search=adaptive", "grid.losses=[dpo]", "grid.beta_mix=[]", "grid.beta_kl=[0.01,0.1,1]", "grid.seeds=[0,1]"],
    )
    searcher = AdaptiveSearcher(config)
    a, b, c = (searcher.suggest(trial_id)["trial"] for trial_id in "abc")
    d = {**b, "seed": 1}  # a second seed of b's cell, proposed by a later state the kill lost
    listed = {"a": ("TERMINATED", a), "b": ("RUNNING", b), "d": ("PENDING", d)}
    experiment = tmp_path / "sweep"
    _snapshot(experiment, searcher, listed, live={"a", "b", "c"})

    line = align_adaptive_searcher(experiment, config)
    assert line is not None and "c proposed again" in line and "d adopted" in line and "a recorded stable" in line
    restored = AdaptiveSearcher(config)
    restored.restore(str(next(experiment.glob("searcher-state-*.pkl"))))
    planner = restored.planner
    assert planner.results == {spec_of(a).cell: [TrialStatus.STABLE]}
    assert planner.pending == {spec_of(b), spec_of(d)} and set(restored.get_state()["trials"]) == {"b", "d"}
    assert restored.suggest("e")["trial"] == c  # the lost proposal comes again, under a new id
    generator = cloudpickle.loads(next(experiment.glob("search_gen_state-*.json")).read_bytes())
    limiter = generator["name:ConcurrencyLimiter"]
    assert (generator["counter"], limiter["live_trials"], limiter["num_unfinished_live_trials"]) == (3, {"b", "d"}, 2)
    assert align_adaptive_searcher(experiment, config) is None  # consistent now
