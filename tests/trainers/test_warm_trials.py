"""Warm trials: a process that runs trial after trial (a reused Tune actor) keeps the base weights and tokenizer,
and each trial still starts from exactly the weights and RNG state of a cold start."""

from __future__ import annotations

import dataclasses
import math

import pytest

from trainers.config import LossConfig, TrainConfig
from trainers.models import cache as model_cache
from trainers.trial_runner import run_trial

TIMING_MARKERS = ("runtime", "per_second")


@pytest.fixture
def base(tiny_model_dir, tmp_path) -> TrainConfig:
    return TrainConfig(
        model=str(tiny_model_dir),
        max_train_rows=8,
        max_eval_rows=4,
        per_device_batch_size=2,
        learning_rate=1e-3,
        max_steps=3,
        eval_steps=2,
        max_length=64,
        save_model=False,
        output_dir=str(tmp_path / "trial"),
    )


def _numbers(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The logged values without wall-clock timings (NaN made comparable)."""
    return [
        {k: ("nan" if math.isnan(v) else v) for k, v in h.items() if not any(m in k for m in TIMING_MARKERS)}
        for h in history
    ]


def test_warm_trial_starts_exactly_where_a_cold_one_does(base):
    """Cold; then, in the same process, another trial (other seed, loss and a large learning rate) loads the cache,
    trains its copy and moves every RNG; then a warm trial from the cache logs exactly what the cold one logs."""
    loss = LossConfig("dlrml", beta_kl=0.1, beta_mix=0.2)
    model_cache.clear()
    cold = run_trial(base, loss)
    assert model_cache.cached_models() == []  # a cold trial leaves nothing behind
    run_trial(dataclasses.replace(base, seed=7, learning_rate=1e-1), LossConfig("ipo", beta_kl=0.5), warm=True)
    assert model_cache.cached_models() == [(base.model, "float32")]
    warm = run_trial(base, loss, warm=True)
    model_cache.clear()
    assert cold.steps == warm.steps == 3
    # The first step's loss is the first forward of the trained model: equal only if it starts from the base weights;
    # later steps are equal only if the data order and every RNG draw are too.
    assert _numbers(warm.history) == _numbers(cold.history)


def test_fresh_model_is_a_copy_training_cannot_touch(tiny_model_dir):
    model_cache.clear()
    first = model_cache.fresh_model(str(tiny_model_dir))
    weight = next(first.parameters())
    original = weight.detach().clone()
    weight.data.add_(1.0)
    second = model_cache.fresh_model(str(tiny_model_dir))
    model_cache.clear()
    assert second is not first
    assert next(second.parameters()).equal(original)
