"""Train/held-out splitting, seeded subsets, and the ``datasets.Dataset`` of a split."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import datasets

from trainers.data.schema import COLUMNS, CONVERSATIONAL_FEATURES, STANDARD_FEATURES, Pair, PreferenceDataError


def _prompt_key(pair: Pair) -> str:
    """The prompt of ``pair`` as a canonical JSON string, to group pairs by prompt."""
    return json.dumps(pair.prompt, ensure_ascii=False, sort_keys=True)


def carve_eval(pairs: list[Pair], fraction: float, seed: int, source: str) -> tuple[list[Pair], list[Pair]]:
    """Hold out whole prompts (about ``fraction`` of the rows) so no eval prompt is also trained on.

    Args:
        pairs: All pairs of the source.
        fraction: Target fraction of the rows to hold out; at least one prompt is held out and one kept.
        seed: Seed of the choice of held-out prompts.
        source: The source name, for the error message.

    Returns:
        The training pairs and the held-out pairs, each in source order.

    Raises:
        PreferenceDataError: The source has fewer than two distinct prompts.
    """
    sizes = Counter(_prompt_key(pair) for pair in pairs)
    if len(sizes) < 2:
        raise PreferenceDataError(
            f"cannot hold out an eval split: the source has {len(sizes)} distinct prompt; pass eval_source",
            source=source,
        )
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    target = max(1, round(fraction * len(pairs)))
    held_out: set[str] = set()
    n_held_out = 0
    for key in order[:-1]:  # at least one prompt stays in train
        if n_held_out >= target:
            break
        held_out.add(key)
        n_held_out += sizes[key]
    train = [pair for pair in pairs if _prompt_key(pair) not in held_out]
    held = [pair for pair in pairs if _prompt_key(pair) in held_out]
    return train, held


def subsample(pairs: list[Pair], limit: int | None, seed: int) -> list[Pair]:
    """A seeded random subset of at most ``limit`` pairs, in their original order.

    Args:
        pairs: The pairs.
        limit: Most pairs to keep; ``None`` keeps all.
        seed: Seed of the subset.

    Returns:
        ``pairs`` itself when it is short enough, else the subset.
    """
    if limit is None or len(pairs) <= limit:
        return pairs
    keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
    return [pairs[index] for index in keep]


def to_dataset(pairs: list[Pair], conversational: bool) -> datasets.Dataset:
    """Build a split; string pairs become user/assistant messages when the data is conversational.

    Args:
        pairs: The split's pairs.
        conversational: Whether any pair of the data (either split) is conversational.

    Returns:
        The dataset with columns :data:`~trainers.data.schema.COLUMNS` and the matching features.
    """
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for pair in pairs:
        for name, role in zip(COLUMNS, ("user", "assistant", "assistant"), strict=True):
            value = getattr(pair, name)
            if conversational and isinstance(value, str):
                value = [{"role": role, "content": value}]
            columns[name].append(value)
    features = CONVERSATIONAL_FEATURES if conversational else STANDARD_FEATURES
    return datasets.Dataset.from_dict(columns, features=features)
