"""The shared-prefix, padding-free forward (``trainers.packing``) against TRL's padded concatenated forward.

The packed row is checked without a model (every scored token sees exactly its own sequence's context, at its own
positions; TRL's truncation is kept) and with one: on the tiny model (fp32) the per-sequence log-probs, the
reference pass, one step's loss and gradient norm, and a whole short trial equal the padded path's. The same checks
on the embedded SmolLM2-135M are ``slow``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

from trainers.config import LossConfig, TrainConfig
from trainers.data import PreferenceData, load_preference_data
from trainers.dpo_config import build_dpo_config
from trainers.models import load_model, load_tokenizer
from trainers.packing import (
    CHOSEN,
    REJECTED,
    pack_pairs,
    shared_prefix_mask,
    unsupported_reason,
)
from trainers.reference.logps import reference_key
from trainers.trial_runner import run_trial
from trainers.trl_trainer import RegistryDPOTrainer

LOGP_ATOL = 1e-4
"""Per-sequence log-prob sums (and one step's loss and gradient norm) agree to this, fp32 (the issue's bound)."""

STEP_METRICS = ("loss", "grad_norm", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")


def _ids(generator: torch.Generator, n: int) -> list[int]:
    return torch.randint(100, 20000, (n,), generator=generator).tolist()


def _pairs(shapes: list[tuple[int, int, int]], seed: int = 0) -> list[dict[str, list[int]]]:
    """Tokenised pairs of the given ``(prompt, chosen, rejected)`` lengths, random ids."""
    generator = torch.Generator().manual_seed(seed)
    return [
        {"prompt_ids": _ids(generator, p), "chosen_ids": _ids(generator, c), "rejected_ids": _ids(generator, r)}
        for p, c, r in shapes
    ]


def _collate(pairs, max_length: int | None = 64, mode: str = "keep_start") -> dict[str, torch.Tensor]:
    return DataCollatorForPreference(pad_token_id=0, max_length=max_length, truncation_mode=mode)(pairs)


EDGE_BATCHES = {
    "different-lengths": ([(3, 2, 1), (40, 15, 4), (7, 1, 20), (25, 9, 9)], 128, "keep_start"),
    "one-pair": ([(12, 5, 8)], 64, "keep_start"),
    "prompt-of-1": ([(1, 6, 3), (9, 4, 4)], 64, "keep_start"),
    "response-of-1": ([(10, 1, 1), (5, 1, 7)], 64, "keep_start"),
    "longest-truncated": ([(20, 30, 50), (8, 3, 2)], 48, "keep_start"),
    "keep-end-truncated": ([(30, 10, 25), (8, 3, 2), (40, 20, 20)], 48, "keep_end"),
}
"""Batches of ``(prompt, chosen, rejected)`` lengths, ``max_length`` and TRL's ``truncation_mode``."""


# ------------------------------------------------------------------------------------------ the packed row


@pytest.mark.parametrize("case", EDGE_BATCHES)
def test_every_scored_token_sees_exactly_its_own_sequence(case):
    """Under the packed mask and positions, the context of each scored token is the TRL row's prefix before it."""
    shapes, max_length, mode = EDGE_BATCHES[case]
    batch = _collate(_pairs(shapes), max_length, mode)
    packed = pack_pairs(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    mask = shared_prefix_mask(packed, "sdpa", torch.float32)[0, 0]
    ids, positions = packed.input_ids[0].tolist(), packed.position_ids[0].tolist()
    scored = {seq: [] for seq in range(2 * len(shapes))}
    for index, target, seq, slot in zip(
        *(t.tolist() for t in (packed.score_index, packed.score_targets, packed.score_sequence, packed.score_slot)),
        strict=True,
    ):
        assert slot == len(scored[seq])
        scored[seq].append(target)
        context = sorted((positions[k], ids[k]) for k in range(len(ids)) if mask[index, k])
        row = batch["input_ids"][seq].tolist()
        # The scored token sits at position len(context) of its TRL row, right after that context.
        assert context == list(enumerate(row[: len(context)]))
        assert row[len(context)] == target
    for seq in range(2 * len(shapes)):
        completion = batch["input_ids"][seq][batch["completion_mask"][seq].bool()].tolist()
        # TRL scores every completion token but a row's very first token (its labels are shifted by one).
        first_token_is_completion = bool(batch["completion_mask"][seq, 0])
        assert scored[seq] == completion[first_token_is_completion:], seq


@pytest.mark.parametrize("case", EDGE_BATCHES)
def test_packed_row_has_no_padding_and_holds_each_prompt_once(case):
    """The row is every real token of the batch once, prompts of pairs that kept the same prompt once per pair."""
    shapes, max_length, mode = EDGE_BATCHES[case]
    batch = _collate(_pairs(shapes), max_length, mode)
    packed = pack_pairs(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    pairs = len(shapes)
    prompts = (batch["attention_mask"] - batch["completion_mask"]).sum(dim=1).tolist()
    shared = sum(
        prompts[i]
        for i in range(pairs)
        if prompts[i] == prompts[pairs + i]
        and torch.equal(batch["input_ids"][i, : prompts[i]], batch["input_ids"][pairs + i, : prompts[i]])
    )
    counts = packed.counts
    assert counts.real == int(batch["attention_mask"].sum())
    assert counts.padded == batch["input_ids"].numel()
    assert counts.shared == shared
    assert packed.input_ids.shape == (1, counts.computed) and counts.forward == counts.computed and counts.padding == 0


def test_keep_start_truncation_shares_the_prompt_and_cuts_each_completion_at_max_length():
    """TRL's keep_start: ``(prompt + completion)[:max_length]`` per sequence; the packed segment keeps the same."""
    (pair,) = _pairs([(20, 30, 50)])
    batch = _collate([pair], max_length=32)
    packed = pack_pairs(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    expected = pair["prompt_ids"] + pair["chosen_ids"][:12] + pair["rejected_ids"][:12]
    assert packed.input_ids[0].tolist() == expected
    assert packed.position_ids[0].tolist() == list(range(32)) + list(range(20, 32))
    assert packed.counts.shared == 20


def test_keep_end_truncation_that_cuts_the_prompts_differently_packs_two_plain_segments():
    """TRL's keep_end keeps each sequence's last ``max_length`` tokens: different prompt tails, nothing shared."""
    (pair,) = _pairs([(30, 10, 25)])
    batch = _collate([pair], max_length=32, mode="keep_end")
    packed = pack_pairs(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    chosen, rejected = ((pair["prompt_ids"] + pair[key])[-32:] for key in ("chosen_ids", "rejected_ids"))
    assert packed.input_ids[0].tolist() == chosen + rejected
    assert packed.position_ids[0].tolist() == list(range(32)) * 2
    assert packed.segment_ids.unique().numel() == 2
    assert packed.counts.shared == 0


def test_rejected_tokens_never_see_chosen_tokens():
    (pair,) = _pairs([(6, 5, 4)])
    batch = _collate([pair])
    packed = pack_pairs(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    mask = shared_prefix_mask(packed, "sdpa", torch.float32)[0, 0]
    rejected, chosen = packed.branch_ids == REJECTED, packed.branch_ids == CHOSEN
    assert not mask[rejected][:, chosen].any()
    assert mask[rejected][:, ~chosen & ~rejected].all()  # the whole prompt
    eager = shared_prefix_mask(packed, "eager", torch.float32)[0, 0]
    assert torch.equal(eager == 0, mask)


def test_a_batch_not_laid_out_by_trl_is_refused():
    batch = _collate(_pairs([(4, 3, 2), (5, 2, 2)]))
    left_padded = {k: v.flip(dims=[1]) for k, v in batch.items()}
    with pytest.raises(ValueError, match="right-padded"):
        pack_pairs(left_padded["input_ids"], left_padded["attention_mask"], left_padded["completion_mask"])


# ------------------------------------------------------------------------------------ the tiny model, fp32


@pytest.fixture(scope="module")
def pairs_data() -> PreferenceData:
    """Eight bundled training pairs and four held-out pairs."""
    return load_preference_data("embedded", max_train_rows=8, max_eval_rows=4)


def _trainer(model_dir: Path, output_dir: Path, data: PreferenceData, **train_overrides) -> RegistryDPOTrainer:
    """A registry trainer (dLRML) on ``model_dir``, the shared-prefix forward on, reference computed packed."""
    train = TrainConfig(model=str(model_dir), output_dir=str(output_dir), per_device_batch_size=4, **train_overrides)
    loss = LossConfig("dlrml", beta_kl=0.5, beta_mix=0.2)
    trainer = RegistryDPOTrainer(
        model=load_model(str(model_dir)),
        args=build_dpo_config(train, loss),
        train_dataset=data.train,
        processing_class=load_tokenizer(str(model_dir)),
        loss=loss,
        shared_prefix=train.shared_prefix,
    )
    trainer.model.train()
    return trainer


@pytest.fixture(scope="module")
def tiny_trainer(tiny_model_dir, tmp_path_factory, pairs_data) -> RegistryDPOTrainer:
    trainer = _trainer(tiny_model_dir, tmp_path_factory.mktemp("tiny_packing"), pairs_data)
    assert trainer.shared_prefix
    return trainer


def _both_paths(trainer: RegistryDPOTrainer, fn):
    """``fn()`` with the shared-prefix forward, then with TRL's padded forward, on the same trainer."""
    results = []
    for shared in (True, False):
        trainer.shared_prefix = shared
        results.append(fn())
    trainer.shared_prefix = True
    return results


def _edge_batch(trainer: RegistryDPOTrainer, case: str) -> dict[str, torch.Tensor]:
    shapes, max_length, mode = EDGE_BATCHES[case]
    return trainer._prepare_inputs(_collate(_pairs(shapes), max_length, mode))


def _data_batch(trainer: RegistryDPOTrainer) -> dict[str, torch.Tensor]:
    """Four real pairs, tokenised and collated by TRL (their own lengths, padded to the longest)."""
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))


def _assert_same_logps(trainer: RegistryDPOTrainer, batch: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        (packed, packed_tokens), (padded, padded_tokens) = _both_paths(
            trainer, lambda: trainer._sequence_logps(trainer.model, batch)
        )
    torch.testing.assert_close(packed, padded, rtol=0, atol=LOGP_ATOL)
    assert torch.equal(packed_tokens, padded_tokens)


@pytest.mark.parametrize("case", EDGE_BATCHES)
def test_sequence_logps_equal_the_padded_forward(case, tiny_trainer):
    _assert_same_logps(tiny_trainer, _edge_batch(tiny_trainer, case))


def test_sequence_logps_of_real_pairs_equal_the_padded_forward(tiny_trainer):
    batch = _data_batch(tiny_trainer)
    assert not batch["attention_mask"].all()  # the pairs differ in length: the padded batch pads
    _assert_same_logps(tiny_trainer, batch)


def test_eager_attention_takes_the_additive_mask(tiny_model_dir, tmp_path, pairs_data):
    trainer = _trainer(tiny_model_dir, tmp_path, pairs_data)
    trainer.model.set_attn_implementation("eager")
    _assert_same_logps(trainer, _data_batch(trainer))
    _assert_same_logps(trainer, _edge_batch(trainer, "different-lengths"))


def test_reference_pass_equals_the_padded_forward(tiny_trainer):
    batch = _data_batch(tiny_trainer)
    packed, padded = _both_paths(tiny_trainer, lambda: tiny_trainer.compute_ref_log_probs(tiny_trainer.model, batch))
    for ours, theirs in zip(packed, padded, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=LOGP_ATOL)
    # The stored reference log-probs (computed packed at construction) are these.
    stored = torch.tensor(tiny_trainer.train_dataset[:4]["ref_chosen_logps"])
    torch.testing.assert_close(stored, padded[0], rtol=0, atol=LOGP_ATOL)


def _one_step(trainer: RegistryDPOTrainer, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Loss and pre-clip gradient norm of one backward pass on ``batch``."""
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    return loss.item(), torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()


def test_one_step_loss_and_grad_norm_equal_the_padded_forward(tiny_trainer):
    batch = _data_batch(tiny_trainer)
    (packed_loss, packed_norm), (padded_loss, padded_norm) = _both_paths(
        tiny_trainer, lambda: _one_step(tiny_trainer, batch)
    )
    assert packed_norm > 0
    assert packed_loss == pytest.approx(padded_loss, rel=0, abs=LOGP_ATOL)
    assert packed_norm == pytest.approx(padded_norm, rel=0, abs=LOGP_ATOL)


def test_token_counts_of_both_paths(tiny_trainer):
    batch = _data_batch(tiny_trainer)
    packed, padded = _both_paths(
        tiny_trainer, lambda: (tiny_trainer._sequence_logps(tiny_trainer.model, batch), tiny_trainer.last_token_counts)
    )
    packed_counts, padded_counts = packed[1], padded[1]
    assert packed_counts.real == padded_counts.real == int(batch["attention_mask"].sum())
    assert packed_counts.padded == padded_counts.padded == batch["input_ids"].numel()
    assert padded_counts.shared == 0 < packed_counts.shared
    assert packed_counts.forward == packed_counts.computed < packed_counts.real < packed_counts.padded


def _trial(model_dir: Path, output_dir: Path, data: PreferenceData, shared_prefix: bool, steps: int):
    train = TrainConfig(
        model=str(model_dir),
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_batch_size=4,
        eval_steps=1,
        max_eval_rows=4,
        learning_rate=1e-3,
        save_model=False,
        shared_prefix=shared_prefix,
    )
    return run_trial(train, LossConfig("dlrml", beta_kl=0.5, beta_mix=0.2), data=data)


def _assert_same_trial(packed, padded, atol: float) -> None:
    assert packed.status == padded.status
    assert packed.verdict == padded.verdict
    assert packed.steps == padded.steps
    steps = [[h for h in r.history if "loss" in h] for r in (packed, padded)]
    assert len(steps[0]) == len(steps[1]) == packed.steps
    for ours, theirs in zip(*steps, strict=True):
        for key in STEP_METRICS:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=atol), (ours["step"], key)
    for key, value in padded.eval_metrics.items():
        if isinstance(value, float) and "runtime" not in key and "per_second" not in key:
            assert packed.eval_metrics[key] == pytest.approx(value, rel=1e-4, abs=atol), key


def test_a_whole_trial_reaches_the_same_verdict_and_metrics(tiny_model_dir, tmp_path, pairs_data):
    packed = _trial(tiny_model_dir, tmp_path / "packed", pairs_data, True, steps=2)
    padded = _trial(tiny_model_dir, tmp_path / "padded", pairs_data, False, steps=2)
    _assert_same_trial(packed, padded, atol=1e-4)


# ------------------------------------------------------------------------------------------ fallback, config


def _tiny_llama_family(model_type: str, **config) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    return AutoModelForCausalLM.from_config(
        AutoConfig.for_model(model_type, num_attention_heads=2, num_key_value_heads=1, **sizes, **config)
    )


def test_models_whose_attention_cannot_take_the_mask_are_named():
    assert unsupported_reason(_tiny_llama_family("llama")) is None
    assert unsupported_reason(_tiny_llama_family("mistral", sliding_window=None)) is None
    assert "sliding-window" in unsupported_reason(_tiny_llama_family("mistral", sliding_window=16))
    assert "'gpt2'" in unsupported_reason(_tiny_llama_family("gpt2"))
    flex = _tiny_llama_family("llama")
    flex.config._attn_implementation = "flex_attention"
    assert "'flex_attention' takes no custom 4D mask" in unsupported_reason(flex)


def test_a_model_that_cannot_take_the_mask_falls_back_with_one_log_line(tiny_model_dir, tmp_path, pairs_data, caplog):
    """The trainer keeps TRL's padded forward and says why, once."""
    model = load_model(str(tiny_model_dir))
    model.config.sliding_window = 8  # Llama ignores it; here it trips the check as a windowed model would
    train = TrainConfig(model=str(tiny_model_dir), output_dir=str(tmp_path), per_device_batch_size=4)
    loss = LossConfig("dpo", beta_kl=0.1)
    with caplog.at_level(logging.WARNING, logger="trainers.trl_trainer"):
        trainer = RegistryDPOTrainer(
            model=model,
            args=build_dpo_config(train, loss),
            train_dataset=pairs_data.train,
            processing_class=load_tokenizer(str(tiny_model_dir)),
            loss=loss,
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "trainers.trl_trainer"]
    assert len(lines) == 1 and "sliding-window" in lines[0], lines
    assert not trainer.shared_prefix
    trainer._sequence_logps(trainer.model, _data_batch(trainer))
    assert trainer.last_token_counts.shared == 0


def test_shared_prefix_is_a_config_switch_and_part_of_the_reference_key(pairs_data):
    assert TrainConfig().shared_prefix is True
    off = TrainConfig(shared_prefix=False)
    assert reference_key(off, pairs_data) != reference_key(TrainConfig(), pairs_data)


# ------------------------------------------------------------------------------ the embedded model, fp32


@pytest.fixture(scope="module")
def embedded_trainer(embedded_model_dir, tmp_path_factory, pairs_data) -> RegistryDPOTrainer:
    return _trainer(embedded_model_dir, tmp_path_factory.mktemp("embedded_packing"), pairs_data)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["different-lengths", "prompt-of-1", "longest-truncated", "keep-end-truncated"])
def test_embedded_sequence_logps_equal_the_padded_forward(case, embedded_trainer):
    _assert_same_logps(embedded_trainer, _edge_batch(embedded_trainer, case))


@pytest.mark.slow
def test_embedded_real_pairs_reference_and_one_step_equal_the_padded_forward(embedded_trainer):
    batch = _data_batch(embedded_trainer)
    _assert_same_logps(embedded_trainer, batch)
    packed, padded = _both_paths(
        embedded_trainer, lambda: embedded_trainer.compute_ref_log_probs(embedded_trainer.model, batch)
    )
    for ours, theirs in zip(packed, padded, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=LOGP_ATOL)
    (packed_loss, packed_norm), (padded_loss, padded_norm) = _both_paths(
        embedded_trainer, lambda: _one_step(embedded_trainer, batch)
    )
    assert packed_loss == pytest.approx(padded_loss, rel=0, abs=LOGP_ATOL)
    assert packed_norm == pytest.approx(padded_norm, rel=0, abs=LOGP_ATOL)
    assert math.isfinite(packed_norm) and packed_norm > 0


@pytest.mark.slow
def test_embedded_trial_reaches_the_same_verdict_and_metrics(embedded_model_dir, tmp_path, pairs_data):
    packed = _trial(embedded_model_dir, tmp_path / "packed", pairs_data, True, steps=2)
    padded = _trial(embedded_model_dir, tmp_path / "padded", pairs_data, False, steps=2)
    _assert_same_trial(packed, padded, atol=1e-3)
