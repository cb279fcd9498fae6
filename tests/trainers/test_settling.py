"""A trial's length set by when its verdict settles: the callback on recorded evaluations, then real trials on the
tiny model (a step-0 evaluation, an early stop from ``min_steps``, an extension, exactly ``max_steps`` otherwise)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from trainers.collapse import DivergenceConfig, DivergenceMonitor
from trainers.config import ConfigError, LossConfig, TrainConfig
from trainers.data import load_preference_data
from trainers.protocol import HELD_OUT_ACCURACY, ReportKey
from trainers.settling import SettleCallback
from trainers.trial_runner import run_trial
from trainers.trl_trainer import CollapseCallback
from trainers.verdicts import VerdictConfig

N_PAIRS = 16
"""Held-out pairs of the recorded evaluations: learning needs an accuracy above 0.75."""


def _callback(planned: int, from_step: int, accuracies: dict[int, float]) -> SettleCallback:
    collapse = CollapseCallback(DivergenceMonitor(DivergenceConfig()))
    collapse.history = [{ReportKey.STEP: step, HELD_OUT_ACCURACY: acc} for step, acc in accuracies.items()]
    return SettleCallback(planned, from_step, collapse, N_PAIRS, VerdictConfig())


def _stops(callback: SettleCallback, step: int) -> bool:
    control = SimpleNamespace(should_training_stop=False, should_evaluate=False)
    callback.on_evaluate(None, SimpleNamespace(global_step=step), control)
    return control.should_training_stop


def test_the_callback_stops_only_from_its_first_step_and_only_when_settled():
    settled = {0: 0.0, 1: 0.875, 2: 0.9375, 3: 0.875}
    assert not _stops(_callback(planned=6, from_step=6, accuracies=settled), 3), "before max_steps: no early stop"
    assert _stops(_callback(planned=6, from_step=2, accuracies=settled), 3), "settled after min_steps: stop"
    moving = {0: 0.0, 1: 0.5, 2: 0.625, 3: 0.875}
    assert not _stops(_callback(planned=3, from_step=3, accuracies=moving), 3), "unsettled: train on"
    control = SimpleNamespace(should_evaluate=False)
    _callback(planned=3, from_step=3, accuracies=moving).on_step_end(None, SimpleNamespace(global_step=3), control)
    assert control.should_evaluate, "the planned end is always evaluated"


def test_extending_or_stopping_early_is_validated():
    with pytest.raises(ConfigError, match="constant learning-rate schedule"):
        TrainConfig(max_steps=4, eval_steps=1, extend_until_settled=4, lr_scheduler="linear")
    with pytest.raises(ConfigError, match="min_steps"):
        TrainConfig(max_steps=4, eval_steps=1, min_steps=6)
    assert TrainConfig(max_steps=4, eval_steps=1, extend_until_settled=4, lr_scheduler="constant").step_budget == 8


@pytest.fixture(scope="module")
def data():
    return load_preference_data("embedded", max_train_rows=8, max_eval_rows=4)


def _run(tiny_model_dir: Path, tmp_path: Path, data, **train) -> list[int]:
    """The steps of a real trial's held-out evaluations (the tiny model at chance: a stall that settles at once)."""
    config = TrainConfig(
        model=str(tiny_model_dir),
        per_device_batch_size=2,
        max_eval_rows=4,
        eval_steps=1,
        lr_scheduler="constant",
        save_model=False,
        output_dir=str(tmp_path),
        **train,
    )
    result = run_trial(config, LossConfig("dpo", 0.1), data=data)
    assert result.behaviour is not None and result.behaviour.status == "stalled" and result.behaviour.settled
    return [int(h[ReportKey.STEP]) for h in result.history if HELD_OUT_ACCURACY in h]


def test_a_settled_trial_stops_at_min_steps_trains_max_steps_without_it(tiny_model_dir, tmp_path, data):
    """Evaluations at 0 (the reference), 1, 2, 3, ...: a stall settles at step 3 (three agreeing evaluations)."""
    assert _run(tiny_model_dir, tmp_path / "a", data, max_steps=6, min_steps=2) == [0, 1, 2, 3]
    assert _run(tiny_model_dir, tmp_path / "b", data, max_steps=4) == [0, 1, 2, 3, 4]
    assert _run(tiny_model_dir, tmp_path / "c", data, max_steps=4, extend_until_settled=4) == [0, 1, 2, 3, 4]
