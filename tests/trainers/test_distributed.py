"""Multi-worker trials on CPU: 2 real gloo ranks (DDP, DeepSpeed ZeRO-2 and ZeRO-3) against one process.

A trial on 2 ranks of ``per_device_batch_size`` 2 sees the same micro-batches as one process of batch 2 that
accumulates gradients over 2 of them (accelerate deals the same seeded batch order out to the ranks), so its per-step
metrics — gathered across ranks — and its verdict must be the one-process trial's to float tolerance. (The same pairs
scored in one batch of 4 would share a packed row differently, ``trainers/packing.py``, and round differently: at step
1 every margin is 0 up to that rounding, and Adam's first step moves the learnable ``beta_mix`` by its learning rate in
the direction of its sign.) The learnable ``beta_mix`` of ``dlrml_learnable`` is read back per rank (each
rank logs its own, ungathered value): ranks that did not all-reduce its gradient would drift apart, as each rank
trains on different pairs. DeepSpeed 0.19's CPU accelerator runs ZeRO over the gloo group (no oneCCL here).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from tests.distributed import run_ranks
from trainers.config import LossConfig, TrainConfig
from trainers.data import PreferenceData, load_preference_data
from trainers.reference.logps import ReferenceLogps, compute_reference_logps
from trainers.trl_trainer import BETA_MIX_MODULE

pytestmark = pytest.mark.distributed

LOSS = LossConfig("dlrml_learnable", beta_kl=0.1, beta_mix=0.2, beta_mix_lr=0.1)
GLOBAL_BATCH = 4
STEPS = 3
COMPARED = (
    "loss",
    "grad_norm",
    "rewards/chosen",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "logps/chosen_drift",
    "mix/mean",
    "beta_mix/value",
)
"""Per-step metrics that must agree between one process and two ranks."""


def _data() -> PreferenceData:
    return load_preference_data("embedded", max_train_rows=12, max_eval_rows=4)


def _train(model_dir: Path, output_dir: Path, world: int, deepspeed: str | None = None) -> TrainConfig:
    return TrainConfig(
        model=str(model_dir),
        max_steps=STEPS,
        per_device_batch_size=GLOBAL_BATCH // 2,
        grad_accum=2 // world,
        max_eval_rows=4,
        learning_rate=1e-3,
        save_model=True,
        output_dir=str(output_dir),
        deepspeed=deepspeed,
    )


class LoadedWeights(TrainerCallback):
    """Records, when the trainer is built (before DeepSpeed's engine exists), which weights ZeRO-3 already owns."""

    def __init__(self) -> None:
        self.partitioned: list[bool] = []

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self.partitioned = [hasattr(p, "ds_id") for n, p in model.named_parameters() if BETA_MIX_MODULE not in n]


def trial_on_rank(train: TrainConfig, reference: ReferenceLogps) -> dict:
    """One rank's trial (module level, so that spawned ranks can import it): its history, verdict and model dir."""
    from trainers.trial_runner import run_trial

    loaded = LoadedWeights()
    result = run_trial(train, LOSS, data=_data(), reference=reference, callbacks=[loaded])
    return {
        "history": result.history,
        "status": str(result.status),
        "model_dir": result.model_dir,
        "partitioned_at_load": loaded.partitioned,
    }


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ReferenceLogps:
    """The shared reference log-probs a sweep would attach (TRL's own precompute is per-rank-cache only)."""
    train = _train(tiny_model_dir, tmp_path_factory.mktemp("ref_run"), world=1)
    return compute_reference_logps(train, _data(), tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def one_process(tiny_model_dir: Path, reference: ReferenceLogps, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same trial in this process, no process group: 2 micro-batches of 2 per step."""
    return trial_on_rank(_train(tiny_model_dir, tmp_path_factory.mktemp("single"), world=1), reference)


def _steps(history: list[dict]) -> list[dict]:
    return [record for record in history if "loss" in record]


@pytest.mark.parametrize("deepspeed", [None, "zero2_bf16.json", "zero3_bf16.json"], ids=["ddp", "zero2", "zero3"])
def test_two_ranks_match_one_process_and_keep_one_beta_mix(deepspeed, tiny_model_dir, reference, one_process, tmp_path):
    """Same per-step metrics and verdict as one process; one beta_mix on both ranks; a loadable saved model."""
    train = _train(tiny_model_dir, tmp_path / "trial", world=2, deepspeed=deepspeed)
    ranks = run_ranks(trial_on_rank, train, reference, out_dir=tmp_path / "ranks")

    single = _steps(one_process["history"])
    assert len(single) == STEPS
    for rank in ranks:
        steps = _steps(rank["history"])
        assert [record["step"] for record in steps] == list(range(1, STEPS + 1))
        for ours, theirs in zip(steps, single, strict=True):
            for key in COMPARED:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), (deepspeed, ours["step"], key)
        assert rank["status"] == one_process["status"]
    # Under ZeRO-3 from_pretrained partitions every weight at load (zero.Init), not the engine after a full load.
    for rank in ranks:
        assert rank["partitioned_at_load"] and all(rank["partitioned_at_load"]) == (deepspeed == "zero3_bf16.json")
    beta_mix = [[record["beta_mix/value"] for record in _steps(rank["history"])] for rank in ranks]
    assert beta_mix[0] == beta_mix[1]
    assert beta_mix[0][-1] != pytest.approx(LOSS.beta_mix, rel=1e-4), "beta_mix never trained: nothing to compare"

    model_dir = Path(ranks[0]["model_dir"])
    saved = load_file(model_dir / "model.safetensors")
    assert not [key for key in saved if BETA_MIX_MODULE in key], "the learnable beta_mix must not be saved"
    # DeepSpeed's consolidated state dict also writes the tied lm_head: loading checks every key either way.
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    initial = load_file(tiny_model_dir / "model.safetensors")
    trained = model.state_dict()
    assert all(torch.isfinite(trained[name]).all() for name in initial)
    assert any(not trained[name].equal(initial[name]) for name in initial), "the saved policy never trained"
