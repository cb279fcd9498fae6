"""The shared reference pass in shards: contiguous row ranges of each split, computed apart, assembled in order.

A multi-GPU trial's workers can split the sweep's one reference pass between them: each shard runs TRL's own
precompute (:class:`trainers.trl_trainer.RegistryDPOTrainer`, ``precompute_ref_log_probs=True``) on a contiguous
range of every split, and :func:`assemble_reference_shards` concatenates the shards into the very dataset one
unsharded pass stores.

The results are the same, float for float, because every forward batch holds exactly the pairs it holds unsharded:

* TRL's precompute reads the prepared split in order, ``batch_size`` pairs at a time (``_precompute_ref_logps`` of
  ``DPOTrainer`` builds its ``DataLoader`` with ``shuffle=False``, trl 1.16), and pads each batch to its own longest
  pair (its collator).
* Shard boundaries fall on multiples of the batch size (:func:`shard_bounds`) of the split *as TRL prepared it*: the
  preparation drops pairs whose prompt alone fills ``max_length`` (``DPOTrainer._prepare_dataset``), so a boundary
  counted in raw rows would shift every later batch by the pairs dropped before it. Each shard therefore tokenises
  the whole split (cheap beside the forwards of a 7B model) and cuts its range out of the prepared pairs.
* ``__row``, the pair's row in the raw split, is added before any of this, so it stays the global row.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import datasets

from trainers.config import LossConfig, TrainConfig
from trainers.data import PreferenceData
from trainers.dpo_config import PRECISION_DTYPES, build_dpo_config
from trainers.models import load_model, load_tokenizer
from trainers.trl_trainer import REF_COLUMNS, TOKENISED_COLUMNS, RegistryDPOTrainer

ROW_COLUMN = "__row"
SPLITS = ("train", "eval")
"""The stored splits; TRL's precompute names them the same (its ``name`` argument)."""


class ShardRange(NamedTuple):
    """The rows ``[start, end)`` one shard computed of a split that TRL prepared to ``rows`` pairs."""

    start: int
    end: int
    rows: int


ShardRanges = dict[str, ShardRange]
"""One shard's :class:`ShardRange` per split (``"train"``, ``"eval"``)."""

RunShards = Callable[[Callable[..., ShardRanges], Sequence[tuple[Any, ...]]], list[ShardRanges]]
"""Runs ``fn(*args)`` for every ``args`` of the list (in any order, in parallel or not) and returns the results in
the list's order: :func:`run_shards_here`, or the sweep's parallel Ray tasks."""


def run_shards_here(fn: Callable[..., ShardRanges], args_list: Sequence[tuple[Any, ...]]) -> list[ShardRanges]:
    """The default :data:`RunShards`: one shard after another, in this process."""
    return [fn(*args) for args in args_list]


def shard_bounds(rows: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """Split ``rows`` pairs into ``shards`` contiguous ranges made of whole batches of ``batch_size``.

    The batches are dealt out as evenly as they go (the first shards take one more); only the last batch may be
    short, and shards beyond the number of batches get an empty range at the end.

    Args:
        rows: Pairs in the split (>= 0).
        batch_size: Pairs per forward (>= 1).
        shards: Number of ranges (>= 1).

    Returns:
        ``shards`` pairs ``(start, end)``; every ``start`` is a multiple of ``batch_size`` or ``rows``, the first
        starts at 0, each starts where the previous one ends, the last ends at ``rows``.
    """
    if rows < 0 or batch_size < 1 or shards < 1:
        raise ValueError(f"need rows >= 0, batch_size >= 1, shards >= 1; got {rows}, {batch_size}, {shards}")
    batches = -(-rows // batch_size)
    per_shard, extra = divmod(batches, shards)
    bounds, start = [], 0
    for shard in range(shards):
        end = min(rows, start + (per_shard + (shard < extra)) * batch_size)
        bounds.append((start, end))
        start = end
    return bounds


class _ShardTrainer(RegistryDPOTrainer):
    """A ``RegistryDPOTrainer`` whose reference precompute covers one shard of each split it prepared."""

    def __init__(self, *args, shard: int, shards: int, **kwargs) -> None:
        self.shard, self.shards = shard, shards
        self.ranges: ShardRanges = {}
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        # TRL calls this from its __init__ with each split after `_prepare_dataset` (tokenised, dropped pairs gone).
        start, end = shard_bounds(len(dataset), batch_size, self.shards)[self.shard]
        self.ranges[name] = ShardRange(start, end, len(dataset))
        if (start, end) == (0, len(dataset)):
            return super()._precompute_ref_logps(dataset, name, batch_size)  # the whole split, as TRL computes it
        if start == end:
            # TRL's precompute cannot take an empty range (it concatenates the batches' results), nor can datasets'
            # contiguous select start at the end.
            return dataset.select([])
        return super()._precompute_ref_logps(dataset.select(range(start, end)), name, batch_size)


def reference_train_config(train: TrainConfig, output_dir: Path) -> TrainConfig:
    """The trial config the reference pass builds its trainer from: the sweep's, for one step of one process.

    No DeepSpeed (the reference forward of a single model needs no sharding across trials), no saved model, and none
    of the trial-length rules (``min_steps``, ``extend_until_settled``), which one step would contradict.
    """
    return TrainConfig(
        **{
            **train.as_dict(),
            "max_steps": 1,
            "min_steps": None,
            "extend_until_settled": 0,
            "save_model": False,
            "deepspeed": None,
            "output_dir": str(output_dir),
        }
    )


def compute_reference_shard(
    train: TrainConfig, data: PreferenceData, out_dir: str | Path, shard: int = 0, shards: int = 1
) -> ShardRanges:
    """Compute shard ``shard`` of ``shards`` of the reference pass into ``out_dir``.

    Loads the reference model in the trial's precision, prepares both splits as TRL does and runs TRL's precompute,
    ``train.reference_batch_size`` pairs per forward, on this shard's range of each (:func:`shard_bounds`).

    Args:
        train: The sweep's base trial config (model, precision, max length, reference batch size).
        data: The preference pairs, as every trial loads them.
        out_dir: Where the shard's datasets go: ``<out_dir>/<split>``, an Arrow dataset of ``__row``, TRL's tokenised
            columns and ``ref_chosen_logps`` / ``ref_rejected_logps``, for each split the shard has rows of.
        shard: Which shard, ``0 <= shard < shards``.
        shards: How many shards the pass is split into (``1``: the whole pass).

    Returns:
        The range this shard computed of each split.
    """
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards} does not exist")
    out_dir = Path(out_dir)
    config = build_dpo_config(reference_train_config(train, out_dir / "run"), LossConfig("dpo", beta_kl=0.1))
    trainer = _ShardTrainer(
        model=load_model(train.model, dtype=PRECISION_DTYPES[train.precision]),
        args=config,
        train_dataset=_with_rows(data.train),
        eval_dataset=_with_rows(data.eval),
        processing_class=load_tokenizer(train.model),
        loss=LossConfig("dpo", beta_kl=0.1),
        shared_prefix=train.shared_prefix,
        shard=shard,
        shards=shards,
    )
    for split, dataset in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset)):
        shutil.rmtree(out_dir / split, ignore_errors=True)  # a retried shard task starts afresh
        if len(dataset):
            dataset.select_columns([ROW_COLUMN, *TOKENISED_COLUMNS, *REF_COLUMNS]).save_to_disk(str(out_dir / split))
    shutil.rmtree(out_dir / "run", ignore_errors=True)
    return trainer.ranges


def assemble_reference_shards(shard_dirs: Sequence[Path], ranges: Sequence[ShardRanges], out_dir: Path) -> None:
    """Concatenate the shards' datasets, in shard order, into ``<out_dir>/<split>`` for every split.

    Args:
        shard_dirs: Each shard's ``out_dir`` (:func:`compute_reference_shard`), in shard order.
        ranges: What each shard returned, in the same order.
        out_dir: Where the assembled datasets go, laid out as one unsharded pass stores them.

    Raises:
        ValueError: If the shards do not tile each prepared split exactly (they prepared different pairs, or a shard
            is missing), or a split has no pairs.
    """
    for split in SPLITS:
        spans = [shard[split] for shard in ranges]
        rows = spans[0].rows
        tiled = all(a.end == b.start for a, b in zip(spans, spans[1:], strict=False))
        if not tiled or (spans[0].start, spans[-1].end) != (0, rows) or any(s.rows != rows for s in spans):
            raise ValueError(f"reference shards do not tile the {split} split: {spans}")
        if not rows:
            raise ValueError(f"the {split} split has no pairs for the reference pass")
        parts = [
            datasets.load_from_disk(str(Path(shard_dir) / split))
            for shard_dir, span in zip(shard_dirs, spans, strict=True)
            if span.end > span.start
        ]
        if [len(part) for part in parts] != [s.end - s.start for s in spans if s.end > s.start]:
            raise ValueError(f"reference shards of the {split} split hold other row counts than {spans}")
        datasets.concatenate_datasets(parts).save_to_disk(str(out_dir / split))


def _with_rows(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.add_column(ROW_COLUMN, list(range(len(dataset))))
