"""Shared reference log-probs: the cache key covers exactly its inputs, and trials reading them match trials that
compute their own reference, number for number."""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
from trl.trainer import dpo_trainer as trl_dpo_trainer

from trainers.config import LossConfig, TrainConfig
from trainers.data import load_preference_data
from trainers.models import save_tiny_model
from trainers.reference.logps import compute_reference_logps, reference_datasets, reference_key
from trainers.trial_runner import run_trial
from trainers.trl_trainer import RegistryDPOTrainer

TIMING_KEYS = ("runtime", "per_second")


@pytest.fixture(scope="module")
def base(tiny_model_dir) -> TrainConfig:
    return TrainConfig(
        model=str(tiny_model_dir),
        max_train_rows=8,
        max_eval_rows=4,
        per_device_batch_size=2,
        max_steps=-1,
        epochs=1,
        max_length=64,
        save_model=False,
        output_dir="unused",
    )


@pytest.fixture(scope="module")
def data(base):
    return load_preference_data("embedded", max_train_rows=8, max_eval_rows=4)


def test_key_changes_with_every_input_and_only_then(base, data, tmp_path_factory, tiny_model_dir):
    key = reference_key(base, data)
    assert reference_key(dataclasses.replace(base), data) == key
    # Things that do not change the reference log-probs keep the key.
    assert reference_key(dataclasses.replace(base, learning_rate=1e-3, seed=7, output_dir="x"), data) == key
    # Tokenisation limit, precision, data and model each change it.
    assert reference_key(dataclasses.replace(base, max_length=32), data) != key
    assert reference_key(dataclasses.replace(base, precision="bf16"), data) != key
    assert reference_key(dataclasses.replace(base, reference_batch_size=3), data) != key
    other_rows = load_preference_data("embedded", max_train_rows=9, max_eval_rows=4)
    assert reference_key(base, other_rows) != key
    other_model = save_tiny_model(tmp_path_factory.mktemp("other-model"), seed=1)
    assert reference_key(dataclasses.replace(base, model=str(other_model)), data) != key
    # A changed tokenizer file with the same weights changes it too.
    retokenized = tmp_path_factory.mktemp("retokenized") / "model"
    shutil.copytree(tiny_model_dir, retokenized)
    config = retokenized / "tokenizer_config.json"
    config.write_text(
        config.read_text().replace('"model_max_length"', '"model_max_length_note": 1, "model_max_length"')
    )
    assert reference_key(dataclasses.replace(base, model=str(retokenized)), data) != key


def test_second_sweep_reuses_stored_logps(base, data, tmp_path):
    first = compute_reference_logps(base, data, tmp_path)
    marker = tmp_path / first.key / "COMPLETE"
    stamp = marker.stat().st_mtime_ns
    again = compute_reference_logps(base, data, tmp_path)
    assert again == first and marker.stat().st_mtime_ns == stamp
    train, held_out = reference_datasets(data, first)
    assert len(train) == len(data.train) and len(held_out) == len(data.eval)
    values = list(train["ref_chosen_logps"]) + list(held_out["ref_rejected_logps"])
    assert all(math.isfinite(v) and v < 0 for v in values)
    # The pairs come tokenised: the prompt ids followed by the completion ids are the tokenised prompt + completion.
    assert all(len(ids) > 0 for ids in train["chosen_ids"]) and all(len(ids) > 0 for ids in held_out["prompt_ids"])


@pytest.mark.parametrize(
    ("loss", "max_steps"), [(LossConfig("dlrml", 0.1, 0.2), -1), (LossConfig("ipo", 0.5), 3)], ids=["all", "subset"]
)
def test_trial_with_shared_reference_matches_its_own_precompute(base, data, tmp_path, loss, max_steps, monkeypatch):
    """Same numbers whether a trial tokenises its pairs and runs its own reference pass, or takes both from the
    shared pass; ``max_steps=3`` trains on a seeded subset of 6 of the 8 pairs, which must be the same subset."""
    base = dataclasses.replace(base, max_steps=max_steps)
    reference = compute_reference_logps(base, data, tmp_path / "ref")
    hashed: list[str] = []
    original = trl_dpo_trainer.hash_module
    monkeypatch.setattr(trl_dpo_trainer, "hash_module", lambda module: hashed.append("own") or original(module))
    own = run_trial(dataclasses.replace(base, output_dir=str(tmp_path / "own")), loss, data=data)
    # TRL hashes the whole model for its own reference pass; a trial given the shared reference skips both.
    assert hashed == ["own"]
    shared = run_trial(
        dataclasses.replace(base, output_dir=str(tmp_path / "shared")), loss, data=data, reference=reference
    )
    assert hashed == ["own"], "TRL hashed the model although the shared reference log-probs were attached"
    assert own.steps == shared.steps == (4 if max_steps < 0 else max_steps)
    assert len(own.history) == len(shared.history)
    compared = 0
    for mine, theirs in zip(own.history, shared.history, strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in mine.items():
            if any(marker in key for marker in TIMING_KEYS):
                continue
            assert value == theirs[key] or (math.isnan(value) and math.isnan(theirs[key])), key
            compared += 1
    assert compared > 40


def test_logps_of_other_pairs_are_refused(base, data, tmp_path):
    """A trial whose pairs differ (another subset seed) must not silently read another subset's log-probs."""
    reference = compute_reference_logps(base, data, tmp_path)
    other = load_preference_data("embedded", max_train_rows=8, max_eval_rows=4, seed=1)
    assert other.fingerprint() != data.fingerprint()
    with pytest.raises(ValueError, match="computed for other pairs"):
        reference_datasets(other, reference)


def test_reference_pass_runs_in_batches_of_reference_batch_size(base, data, tmp_path, monkeypatch):
    """The shared pass takes ``reference_batch_size`` pairs per forward, not the training batch (2 here)."""
    sizes: list[int] = []
    original = RegistryDPOTrainer.compute_ref_log_probs

    def spy(self, model, inputs):
        sizes.append(inputs["input_ids"].shape[0] // 2)  # rows are [chosen; rejected]
        return original(self, model, inputs)

    monkeypatch.setattr(RegistryDPOTrainer, "compute_ref_log_probs", spy)
    compute_reference_logps(dataclasses.replace(base, reference_batch_size=3), data, tmp_path)
    assert sizes == [3, 3, 2, 3, 1]  # 8 train pairs, then 4 held-out pairs
