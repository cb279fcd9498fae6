"""The reference pass in shards: boundaries on whole batches, and the same stored datasets as one pass."""

from __future__ import annotations

import pytest

from trainers.config import TrainConfig
from trainers.data import load_preference_data
from trainers.reference.logps import compute_reference_logps
from trainers.reference.shards import ROW_COLUMN, ShardRange, assemble_reference_shards, shard_bounds
from trainers.trl_trainer import RegistryDPOTrainer


@pytest.mark.parametrize(
    ("rows", "batch", "shards", "expected"),
    [
        (10, 3, 2, [(0, 6), (6, 10)]),  # 4 batches, the last one short
        (10, 3, 3, [(0, 6), (6, 9), (9, 10)]),  # the first shard takes the extra batch
        (16, 4, 4, [(0, 4), (4, 8), (8, 12), (12, 16)]),
        (5, 3, 3, [(0, 3), (3, 5), (5, 5)]),  # more shards than batches: the last is empty
        (7, 16, 3, [(0, 7), (7, 7), (7, 7)]),  # one short batch
        (0, 4, 2, [(0, 0), (0, 0)]),
        (9, 3, 1, [(0, 9)]),
    ],
)
def test_shard_bounds_examples(rows, batch, shards, expected):
    assert shard_bounds(rows, batch, shards) == expected


def test_shards_are_whole_batches_that_tile_the_split():
    for rows in range(40):
        for batch in range(1, 6):
            for shards in range(1, 8):
                bounds = shard_bounds(rows, batch, shards)
                assert len(bounds) == shards
                assert bounds[0][0] == 0 and bounds[-1][1] == rows
                assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
                # Each boundary starts a batch of the unsharded pass (or is the end of the split).
                assert all(start % batch == 0 or start == rows for start, _ in bounds)
                batches = [-(-(end - start) // batch) for start, end in bounds]
                assert max(batches) - min(batches) <= 1, (rows, batch, shards, bounds)
                assert batches == sorted(batches, reverse=True)  # empty shards come last


@pytest.mark.parametrize(("rows", "batch", "shards"), [(-1, 2, 2), (4, 0, 2), (4, 2, 0)])
def test_shard_bounds_refuse_nonsense(rows, batch, shards):
    with pytest.raises(ValueError, match="need rows >= 0"):
        shard_bounds(rows, batch, shards)


def test_shards_that_do_not_tile_a_split_are_refused(tmp_path):
    ranges = [
        {"train": ShardRange(0, 4, 8), "eval": ShardRange(0, 2, 2)},
        {"train": ShardRange(5, 8, 8), "eval": ShardRange(2, 2, 2)},  # row 4 of train is in no shard
    ]
    with pytest.raises(ValueError, match="do not tile the train split"):
        assemble_reference_shards([tmp_path / "0", tmp_path / "1"], ranges, tmp_path)


def test_sharded_pass_stores_what_one_pass_stores(tiny_model_dir, tmp_path, monkeypatch):
    """Three shards of a batch-3 pass store the same datasets as one pass, log-probs bit for bit.

    They are equal, not just close: every forward batch holds the same pairs (the boundaries fall on whole batches
    of the split as TRL prepared it, and TRL's precompute does not shuffle), so each batch is padded to the same
    length and runs the same computation. ``max_length=50`` makes TRL drop the train pairs whose prompt alone fills
    it (2 of 12), so a boundary counted in raw rows would have moved the later batches. The eval split (2 batches)
    leaves the third shard without eval pairs. On this tiny fp32 model on CPU other batches happen to give the same
    floats too (a bf16 model on a GPU need not), so the forward batches themselves are compared as well.
    """
    train = TrainConfig(model=str(tiny_model_dir), max_length=50, reference_batch_size=3, output_dir="unused")
    data = load_preference_data("embedded", max_train_rows=12, max_eval_rows=5)
    batches: list[tuple] = []
    original = RegistryDPOTrainer.compute_ref_log_probs

    def spy(self, model, inputs):
        batches.append(tuple(map(tuple, inputs["input_ids"].tolist())))  # the padded [chosen; rejected] rows
        return original(self, model, inputs)

    monkeypatch.setattr(RegistryDPOTrainer, "compute_ref_log_probs", spy)
    calls = []

    def run_shards(fn, args_list):
        calls.append([args[3:] for args in args_list])
        return [fn(*args) for args in args_list]

    whole = compute_reference_logps(train, data, tmp_path / "whole")
    whole_batches, batches[:] = list(batches), []
    sharded = compute_reference_logps(train, data, tmp_path / "sharded", shards=3, run_shards=run_shards)
    assert calls == [[(0, 3), (1, 3), (2, 3)]]
    assert len(whole_batches) == 4 + 2 and sorted(batches) == sorted(whole_batches)
    assert sharded.key == whole.key and sharded.data_fingerprint == whole.data_fingerprint
    for split, raw in (("train", data.train), ("eval", data.eval)):
        mine, theirs = sharded.load(split), whole.load(split)
        assert mine.features == theirs.features and mine.column_names == theirs.column_names
        for column in theirs.column_names:
            assert mine[column] == theirs[column], (split, column)
        rows = mine[ROW_COLUMN]
        assert rows == sorted(set(rows)) and max(rows) < len(raw)
    assert len(whole.load("train")) == 10  # TRL dropped 2 train pairs: the boundaries are on the prepared split
    shard_files = {p.relative_to(sharded.path) for p in (tmp_path / "sharded" / sharded.key).rglob("*")}
    whole_files = {p.relative_to(whole.path) for p in (tmp_path / "whole" / whole.key).rglob("*")}
    assert shard_files == whole_files  # the same layout (no shard directories left)
