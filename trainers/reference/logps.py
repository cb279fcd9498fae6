"""Reference log-probs computed once per (model, data, tokenisation, max length, precision) and shared by trials.

Every trial of a sweep starts from the same reference policy on the same pairs, so the reference log-probs of
every train and held-out pair are the same for all of them. :func:`compute_reference_logps` computes them once,
through TRL's own precompute path (so they are exactly what a trial would compute for itself), and stores them
under a key that fingerprints exactly the inputs that determine them (:func:`reference_key`). The pairs are stored as
the reference pass tokenised them, so trials (:func:`reference_datasets`) neither tokenise them again nor load a
reference model nor run a reference pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets

from trainers.atomic_dir import build_dir_once
from trainers.config import TrainConfig
from trainers.data import PreferenceData
from trainers.models import resolve_model_path
from trainers.reference.shards import (
    ROW_COLUMN,
    RunShards,
    assemble_reference_shards,
    compute_reference_shard,
    run_shards_here,
)

_KEY_VERSION = "dlrml-reference-v2"  # v2: the tokenised pairs are stored with the log-probs
_DONE = "COMPLETE"


def _hash_file_identity(path: Path, digest: hashlib._Hash) -> None:
    """Feed a file's name, size and first/last MiB into ``digest`` (weights files can be tens of GB)."""
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}:".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read(1 << 20))


def model_identity(spec: str) -> str:
    """A fingerprint of the model a spec resolves to: file identities for a local checkpoint, the id for the hub."""
    resolved = resolve_model_path(spec)
    local = Path(resolved)
    if not local.is_dir():
        return f"hub:{resolved}"
    digest = hashlib.sha256()
    for path in sorted(p for p in local.iterdir() if p.is_file() and not p.name.startswith(".")):
        _hash_file_identity(path, digest)
    return f"local:{digest.hexdigest()}"


def reference_key(train: TrainConfig, data: PreferenceData) -> str:
    """The cache key of a sweep's reference log-probs.

    It covers exactly what determines them: the model weights and tokenizer files (:func:`model_identity`), the
    content and split of the pairs (:meth:`PreferenceData.fingerprint`), the tokenisation limit
    (``max_length``), the precision the reference forward runs in, its batch size (``reference_batch_size``) and
    whether it runs the shared-prefix forward (``shared_prefix``).
    """
    payload = {
        "version": _KEY_VERSION,
        "model": model_identity(train.model),
        "data": data.fingerprint(),
        "max_length": train.max_length,
        "precision": train.precision,
        # Padding to each batch's longest pair, or packing its pairs into one row, can move log-probs in the last
        # float digits.
        "batch": train.reference_batch_size,
        "shared_prefix": train.shared_prefix,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ReferenceLogps:
    """Where a sweep's shared reference log-probs live.

    Attributes:
        key: :func:`reference_key` of the inputs.
        path: Directory with one Arrow dataset per split: ``__row`` (the pair's row in the split), TRL's tokenised
            columns (``prompt_ids``, ``chosen_ids``, ``rejected_ids``), ``ref_chosen_logps``, ``ref_rejected_logps``.
        data_fingerprint: :meth:`PreferenceData.fingerprint` of the pairs they belong to.
    """

    key: str
    path: str
    data_fingerprint: str

    def load(self, split: str) -> datasets.Dataset:
        """The stored log-probs of ``split`` (``"train"`` or ``"eval"``)."""
        return datasets.load_from_disk(str(Path(self.path) / split))


def compute_reference_logps(
    train: TrainConfig,
    data: PreferenceData,
    root: str | Path,
    *,
    shards: int = 1,
    run_shards: RunShards | None = None,
) -> ReferenceLogps:
    """Compute (or find) the reference log-probs of every train and held-out pair.

    Runs TRL's own reference precompute (``precompute_ref_log_probs=True``) with the reference model in the
    trial's precision and max length, ``train.reference_batch_size`` pairs per forward, and stores the per-row
    results under ``<root>/<reference_key>``. A second call with the same key returns at once; concurrent callers
    on shared storage serialise on a lock file (:func:`trainers.atomic_dir.build_dir_once`), held by this process
    while the shards run.

    Split into ``shards``, the pass computes contiguous ranges of whole batches of each split apart
    (:func:`trainers.reference.shards.compute_reference_shard`, each into its own directory inside the build
    directory) and concatenates them in order: every forward batch holds the pairs it holds unsharded, so the
    stored datasets are the same and the key does not depend on ``shards``.

    Args:
        train: The sweep's base trial config (model, precision, max length, batch size).
        data: The preference pairs, as every trial loads them.
        root: Storage directory shared by all nodes (the sweep's storage path); with several shards, also by every
            process that computes one.
        shards: Number of shards (``1``: one pass straight into the stored directory).
        run_shards: Runs the shards (:data:`trainers.reference.shards.RunShards`); defaults to one after another in
            this process. It is not called when the log-probs are stored already.

    Returns:
        The stored :class:`ReferenceLogps`.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    run_shards = run_shards or run_shards_here
    key = reference_key(train, data)
    target = Path(root) / key

    def build(out_dir: Path) -> dict:
        if shards == 1:
            run_shards(compute_reference_shard, [(train, data, out_dir)])
        else:
            shard_dirs = [out_dir / "shards" / str(shard) for shard in range(shards)]
            ranges = run_shards(
                compute_reference_shard, [(train, data, d, shard, shards) for shard, d in enumerate(shard_dirs)]
            )
            assemble_reference_shards(shard_dirs, ranges, out_dir)
            shutil.rmtree(out_dir / "shards")
        return {"key": key, "shards": shards}

    build_dir_once(target, build, marker=_DONE, what=f"reference log-probs {key}")
    return ReferenceLogps(key=key, path=str(target), data_fingerprint=data.fingerprint())


def reference_datasets(
    data: PreferenceData, reference: ReferenceLogps, *, train_rows: int | None = None, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The train and held-out pairs as the reference pass tokenised them, with their reference log-probs.

    A trial trains on these directly: TRL's preparation is skipped for tokenised datasets
    (:meth:`trainers.trl_trainer.RegistryDPOTrainer._prepare_dataset`), so no trial tokenises the pairs again.
    Pairs the reference pass dropped (TRL drops pairs whose prompt alone fills ``max_length``) are absent, as they
    are from a trial that prepares its own data.

    Args:
        data: The trial's preference pairs (checked against the pairs the log-probs were computed for).
        reference: The sweep's stored reference pass.
        train_rows: Train on a seeded random subset of this many pairs (``None``: all of them). The subset is the
            one ``data.train.shuffle(seed=seed).select(range(train_rows))`` gives, so a trial with the shared
            reference trains on exactly the pairs, in exactly the order, of one that prepares its own.
        seed: The subset's shuffle seed.

    Returns:
        ``(train, eval)`` with TRL's tokenised columns and ``ref_chosen_logps`` / ``ref_rejected_logps``.

    Raises:
        ValueError: If the stored log-probs do not belong to these pairs.
    """
    if data.fingerprint() != reference.data_fingerprint:
        raise ValueError(
            f"reference log-probs {reference.path} were computed for other pairs (data fingerprint "
            f"{reference.data_fingerprint[:12]}, these pairs {data.fingerprint()[:12]}): the data, its subset "
            "(max_*_rows, data_seed) or its split differ"
        )
    train, held_out = reference.load("train"), reference.load("eval")
    for split, stored, raw in (("train", train, data.train), ("eval", held_out, data.eval)):
        rows = stored[ROW_COLUMN]
        if rows and max(rows) >= len(raw):
            raise ValueError(
                f"reference log-probs {reference.path} ({split}) do not match the data: row {max(rows)} of {len(raw)}"
            )
    if train_rows is not None:
        # Datasets' shuffle permutation depends only on the length and the seed: shuffling the row numbers draws the
        # same one as shuffling the pairs.
        rows = datasets.Dataset.from_dict({ROW_COLUMN: list(range(len(data.train)))})
        order = rows.shuffle(seed=seed).select(range(train_rows))[ROW_COLUMN]
        position = {row: i for i, row in enumerate(train[ROW_COLUMN])}
        train = train.select([position[row] for row in order if row in position])
    return train.remove_columns(ROW_COLUMN), held_out.remove_columns(ROW_COLUMN)
