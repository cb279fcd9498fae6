"""The adaptive planner as a Tune ``Searcher``: suggestions shaped like the driver's grid, statuses replayed from
recorded reports (a trial the divergence stopper ended has no final report). No Ray cluster is started."""

from __future__ import annotations

import dataclasses

from ray.tune.search import Searcher

from sweep.config import load_sweep_config
from sweep.search.searcher import AdaptiveSearcher, trial_result_status
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
