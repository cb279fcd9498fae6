"""The entry point :func:`load_preference_data`: read, validate, split and subsample preference pairs."""

from __future__ import annotations

from collections import Counter

from trainers.data.rows import collect_pairs
from trainers.data.schema import DROP_REASONS, PreferenceData
from trainers.data.sources import open_source
from trainers.data.splits import carve_eval, subsample, to_dataset

ON_BAD_ROWS = ("error", "drop")
"""Accepted values of ``on_bad_rows``."""


def load_preference_data(
    source: str,
    *,
    eval_fraction: float = 0.1,
    eval_source: str | None = None,
    max_train_rows: int | None = None,
    max_eval_rows: int | None = None,
    seed: int = 0,
    on_bad_rows: str = "error",
    split: str = "train",
) -> PreferenceData:
    """Load, validate and split preference pairs.

    Args:
        source: A bundled set (``"embedded"``, ``"embedded-long"``), a ``.jsonl``/``.json``/``.parquet`` file, a
            local dataset folder or a HuggingFace hub dataset name.
        eval_fraction: Fraction of the training rows held out for evaluation when the source brings no eval
            split of its own (no ``eval_source``, no hub ``test`` split, not a bundled set). Rows are held
            out by whole prompt, so no held-out prompt is also trained on. In ``(0, 1)``.
        eval_source: Where the eval pairs come from instead (same kinds as ``source``; for a hub dataset its
            ``test`` split if it has one, else its ``split`` split).
        max_train_rows: Keep a seeded random subset of at most this many training rows (original order).
        max_eval_rows: Same for the eval rows.
        seed: Seed of the eval carve-out and of the subsets; a bundled set's split does not depend on it.
        on_bad_rows: ``"error"`` raises on the first bad row; ``"drop"`` drops bad rows and counts them per
            reason in :attr:`PreferenceData.dropped`.
        split: Split of a hub dataset (or dataset folder) to train on, e.g. ``"train"`` or
            ``"train_prefs"``; slicing syntax such as ``"train[:1000]"`` works. Unused for files and for the
            embedded set.

    Returns:
        The validated :class:`PreferenceData`.

    Raises:
        PreferenceDataError: An unknown or unreadable source, a bad row (with ``on_bad_rows="error"``), an
            empty source, or a source whose rows were all dropped.
        ValueError: An invalid argument.
    """
    _check_arguments(source, eval_fraction, max_train_rows, max_eval_rows, on_bad_rows, split)
    dropped: Counter[str] = Counter()
    train_reader, source_eval_reader = open_source(source, split=split, for_eval=False)
    train_pairs = collect_pairs(train_reader, on_bad_rows, dropped)
    if eval_source is not None:
        eval_reader, _ = open_source(eval_source, split=split, for_eval=True)
        eval_pairs = collect_pairs(eval_reader, on_bad_rows, dropped)
    elif source_eval_reader is not None:
        eval_pairs = collect_pairs(source_eval_reader, on_bad_rows, dropped)
    else:
        train_pairs, eval_pairs = carve_eval(train_pairs, eval_fraction, seed, source)

    train_pairs = subsample(train_pairs, max_train_rows, seed)
    eval_pairs = subsample(eval_pairs, max_eval_rows, seed + 1)
    conversational = any(pair.conversational for pair in (*train_pairs, *eval_pairs))
    counts = {reason: dropped[reason] for reason in DROP_REASONS if dropped[reason]}
    return PreferenceData(
        train=to_dataset(train_pairs, conversational),
        eval=to_dataset(eval_pairs, conversational),
        source=source,
        n_dropped=sum(counts.values()),
        dropped=counts,
    )


def _check_arguments(
    source: str,
    eval_fraction: float,
    max_train_rows: int | None,
    max_eval_rows: int | None,
    on_bad_rows: str,
    split: str,
) -> None:
    """Validate the arguments of :func:`load_preference_data` before any source is read.

    Raises:
        ValueError: For the first invalid argument.
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source must be a non-empty string, got {source!r}")
    if not isinstance(eval_fraction, (int, float)) or not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
    for name, value in (("max_train_rows", max_train_rows), ("max_eval_rows", max_eval_rows)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    if on_bad_rows not in ON_BAD_ROWS:
        raise ValueError(f"on_bad_rows must be one of {ON_BAD_ROWS}, got {on_bad_rows!r}")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty split name, got {split!r}")
