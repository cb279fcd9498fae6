"""A trial's status at a shorter horizon read from a longer trial's reports (``sweep.trials.horizon``), on hand-made
histories and on the default grid recorded at 30 steps (``tests/trainers/data/recorded_default_grid_30_steps.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sweep.trials.horizon import status_at_horizon
from tests.sweep.test_trial_rows import held_out, train
from trainers.collapse import DivergenceConfig
from trainers.protocol import Failure, TrialStatus
from trainers.verdicts import VerdictConfig

N_PAIRS = 64
"""Learning needs an accuracy above 0.5 + 2 * sqrt(0.25 / 64) = 0.625; a settled window moves < 0.177."""
RECORDED = json.loads(
    (Path(__file__).parents[1] / "trainers" / "data" / "recorded_default_grid_30_steps.json").read_text()
)


def _history(accuracies: dict[int, float], last_step: int, norms: dict[int, float] | None = None) -> pd.DataFrame:
    """Training steps 1..last_step (grad norm 1 unless given) and held-out evaluations at the given steps."""
    rows = []
    for step in range(1, last_step + 1):
        rows.append(train(step, loss=0.6, grad_norm=(norms or {}).get(step, 1.0)))
        if step in accuracies:
            rows.append(held_out(step, accuracies[step]))
    return pd.DataFrame(rows)


def _at(history: pd.DataFrame, max_steps: int, extend: int = 6, min_steps: int | None = None):
    return status_at_horizon(
        history,
        max_steps=max_steps,
        extend_until_settled=extend,
        min_steps=min_steps,
        n_pairs=N_PAIRS,
        verdicts=VerdictConfig(),
        divergence=DivergenceConfig(),
    )


def test_a_verdict_settled_at_max_steps_ends_there():
    history = _history({3: 0.70, 6: 0.70, 9: 0.72, 12: 0.71, 15: 0.50, 18: 0.50}, 18)
    assert _at(history, 12) == (TrialStatus.STABLE, None, 12)


def test_an_unsettled_verdict_is_extended_until_it_settles_within_the_budget():
    """At 12 the window (6, 9, 12) is stalled, stalled, stable: unsettled. At 15 (9, 12, 15) still mixed; at 18
    (12, 15, 18) all stable and within 0.177: the 12-step trial would have stopped there."""
    history = _history({3: 0.50, 6: 0.50, 9: 0.55, 12: 0.70, 15: 0.70, 18: 0.72, 21: 0.72}, 21)
    status, _, step = _at(history, 12)
    assert (status, step) == (TrialStatus.STABLE, 18)


def test_a_verdict_still_moving_at_the_end_of_the_budget_is_unsettled():
    history = _history({3: 0.50, 6: 0.50, 9: 0.55, 12: 0.70, 15: 0.70, 18: 0.72}, 18)
    status, reason, step = _at(history, 12, extend=3)
    assert (status, step) == (TrialStatus.UNSETTLED, 15) and "provisionally stable" in reason


def test_min_steps_stops_a_settled_trial_before_max_steps():
    history = _history({3: 0.70, 6: 0.70, 9: 0.72, 12: 0.71}, 12)
    assert _at(history, 12, min_steps=9) == (TrialStatus.STABLE, None, 9)


def test_a_divergence_counts_only_if_it_comes_before_the_shorter_trial_stops():
    """Grad norm 1 for 20 steps, then 100 (> 10 x 1) at step 21: a 12-step trial settled at 12 never saw it; a
    trial of 21 steps diverges there."""
    history = _history({s: 0.70 for s in range(3, 25, 3)}, 24, norms={21: 100.0})
    assert _at(history, 12)[0] is TrialStatus.STABLE
    status, reason, step = _at(history, 21)
    assert (status, step) == (TrialStatus.DIVERGED, 21) and reason == "grad_norm_explosion"


def test_a_record_that_cannot_answer_is_refused():
    with pytest.raises(ValueError, match="no held-out evaluation at step 10"):
        _at(_history({3: 0.7, 6: 0.7, 9: 0.7, 12: 0.7}, 12), 10)
    with pytest.raises(ValueError, match="ends at step 12, before step 15"):
        _at(_history({3: 0.5, 6: 0.5, 9: 0.6, 12: 0.7}, 12), 12, extend=3)


def _recorded(max_steps: int) -> dict[tuple[str, float], tuple[TrialStatus, int]]:
    statuses = {}
    for trial in RECORDED["trials"]:
        status, _, step = _at(pd.DataFrame(trial["reports"]), max_steps)
        statuses[trial["loss"], trial["beta_kl"]] = (status, step)
    return statuses


def test_the_replayed_12_step_map_is_the_12_step_sweep_run_on_its_own():
    """The default config's own 12-step sweep, run separately on 2026-12-07 (``bench/horizon.py`` at 3d708ad, its
    ``status_short``): every trial ended at step 12 with these verdicts. Reading them from the 30-step trials'
    reports gives the same: the replay is exact for a constant schedule."""
    separately = {
        ("dpo", 0.05): TrialStatus.STABLE,
        ("dpo", 1.0): TrialStatus.STABLE,
        ("discopop", 0.05): TrialStatus.REVERSED,
        ("discopop", 1.0): TrialStatus.STALLED,
        ("dlrml", 0.05): TrialStatus.REVERSED,
        ("dlrml", 1.0): TrialStatus.STABLE,
    }
    assert _recorded(12) == {cell: (status, 12) for cell, status in separately.items()}


def test_at_2_5x_the_steps_issue_23s_cases_hold_and_no_verdict_crosses_a_failure_category():
    """12 steps vs 30 (round(2.5 x 12)), each with its 6 extension steps, on the recorded default grid: DPO at beta 1
    is stable and DiscoPOP at beta 0.05 reversed at 30 (issue 23). Every 12-step verdict is settled, and none changes
    between failed and usable, or unstable and not. The one label that changes, dLRML at beta_kl 0.05 (reversed at 12,
    accuracy 0.31; stalled at 33, 0.50), stays failed: it climbs out of the wrong-sign minimum after step 15."""
    short, long = _recorded(12), _recorded(30)
    assert long["dpo", 1.0][0] is TrialStatus.STABLE and long["discopop", 0.05][0] is TrialStatus.REVERSED
    assert all(status.has_verdict for status, _ in short.values())
    for cell, (status, _) in short.items():
        assert [f.includes(status) for f in Failure] == [f.includes(long[cell][0]) for f in Failure], cell
    changed = {cell for cell in short if short[cell][0] is not long[cell][0]}
    assert changed == {("dlrml", 0.05)} and long["dlrml", 0.05][0] is TrialStatus.STALLED
