"""The shape of loaded preference data: columns, features, drop reasons, errors and the result type.

Everything the other :mod:`trainers.data` modules share lives here: :data:`COLUMNS` and the ``datasets``
features of a split, :data:`DROP_REASONS`, the public :class:`PreferenceDataError`, the internal
:class:`RowError` (one bad row) and :class:`Pair` (one validated pair), and the result
:class:`PreferenceData` with its content fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import datasets

COLUMNS = ("prompt", "chosen", "rejected")
"""Columns of every loaded split, in TRL's explicit-prompt preference format."""

DROP_REASONS = {
    "invalid_utf8": "the line is not valid UTF-8",
    "invalid_json": "the line is not parsable JSON",
    "invalid_row": "the row is not a JSON object",
    "missing_column": "a required column is missing",
    "invalid_type": "a field is neither a string nor a list of chat messages",
    "empty_text": "a text or message content is empty",
    "malformed_message": "a chat message or message list is malformed",
    "malformed_transcript": "a Human/Assistant transcript is malformed",
    "identical_pair": "chosen and rejected are identical",
}
"""Why a row can be rejected; the keys of :attr:`PreferenceData.dropped`."""

_FINGERPRINT_VERSION = b"dlrml-preference-data-v1\n"

MESSAGES_FEATURE = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
"""Feature of a chat-message list (``role`` and ``content`` of each message)."""

CONVERSATIONAL_FEATURES = datasets.Features({name: MESSAGES_FEATURE for name in COLUMNS})
"""Features of a conversational split: every column a chat-message list."""

STANDARD_FEATURES = datasets.Features({name: datasets.Value("string") for name in COLUMNS})
"""Features of a standard split: every column a plain string."""

Messages = list[dict[str, str]]
"""A chat-message list, each message ``{"role": ..., "content": ...}``."""


class PreferenceDataError(ValueError):
    """A preference source or one of its rows cannot be used.

    Attributes:
        source: The file path or dataset name the problem is in, if known.
        row: 1-based position of the bad row (the line number for JSON lines), or ``None`` for a problem
            with the whole source.
        field: The offending field, e.g. ``"chosen"`` or ``"prompt[1].content"``, or ``None``.
        reason: One of :data:`DROP_REASONS` for a row problem, ``None`` for a whole-source problem.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        row: int | None = None,
        row_label: str = "row",
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.source = source
        self.row = row
        self.field = field
        self.reason = reason
        location = [part for part in (source, f"{row_label} {row}" if row is not None else None) if part]
        prefix = " ".join(location)
        if field is not None:
            prefix = f"{prefix}, field {field!r}" if prefix else f"field {field!r}"
        suffix = f" [{reason}]" if reason is not None else ""
        super().__init__(f"{prefix}: {message}{suffix}" if prefix else f"{message}{suffix}")


class RowError(Exception):
    """One bad row, turned into a :class:`PreferenceDataError` or a drop count by the caller.

    Internal to :mod:`trainers.data`.

    Attributes:
        reason: One of :data:`DROP_REASONS`.
        field: The offending field, or ``None`` for the whole row.
        message: What is wrong, for the error message.
    """

    def __init__(self, reason: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message


class Pair(NamedTuple):
    """One validated preference pair; ``conversational`` tells whether the fields are message lists."""

    prompt: str | Messages
    chosen: str | Messages
    rejected: str | Messages
    conversational: bool


class Reader(NamedTuple):
    """Raw rows of one source, before validation.

    Attributes:
        name: The source name used in error messages (e.g. ``"embedded:train"`` or a file path).
        row_label: What a position counts, ``"row"``, ``"line"`` or ``"record"``, for error messages.
        records: Yields ``(1-based position, raw record or RowError)``; a :class:`RowError` stands for a row
            that could not even be decoded.
    """

    name: str
    row_label: str
    records: Iterable[tuple[int, Any]]


@dataclass(frozen=True)
class PreferenceData:
    """Validated train and held-out preference pairs, ready for ``trl.DPOTrainer``.

    Attributes:
        train: Training pairs with columns :data:`COLUMNS`.
        eval: Held-out pairs with the same columns and features as ``train``.
        source: The source the training pairs were loaded from.
        n_dropped: Number of rows dropped under ``on_bad_rows="drop"`` (train and eval sources together).
        dropped: Dropped-row counts per reason (keys from :data:`DROP_REASONS`); sums to ``n_dropped``.
    """

    train: datasets.Dataset
    eval: datasets.Dataset
    source: str
    n_dropped: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("train", "eval"):
            split = getattr(self, name)
            if not isinstance(split, datasets.Dataset):
                raise TypeError(f"PreferenceData.{name} must be a datasets.Dataset, got {type(split).__name__}")
            if tuple(split.column_names) != COLUMNS:
                raise ValueError(f"PreferenceData.{name} must have columns {COLUMNS}, got {split.column_names}")
            if len(split) == 0:
                raise ValueError(f"PreferenceData.{name} is empty")
        if self.train.features != self.eval.features:
            raise ValueError(
                f"PreferenceData train and eval features differ: {self.train.features} vs {self.eval.features}"
            )
        if not self.source:
            raise ValueError("PreferenceData.source must be a non-empty string")
        unknown = set(self.dropped) - set(DROP_REASONS)
        if unknown:
            raise ValueError(f"PreferenceData.dropped has unknown reasons {sorted(unknown)}")
        if any(not isinstance(count, int) or count <= 0 for count in self.dropped.values()):
            raise ValueError(f"PreferenceData.dropped counts must be positive integers, got {self.dropped}")
        if self.n_dropped != sum(self.dropped.values()):
            raise ValueError(
                f"PreferenceData.n_dropped={self.n_dropped} does not equal the sum of dropped={self.dropped}"
            )

    @property
    def is_conversational(self) -> bool:
        """Whether the fields are chat-message lists (``True``) or plain strings (``False``)."""
        return self.train.features == CONVERSATIONAL_FEATURES

    def fingerprint(self) -> str:
        """Stable SHA-256 of the rows' content and split membership, for use as a cache key.

        It depends only on the ``prompt``/``chosen``/``rejected`` values of every train and eval row, in
        order; not on the source name, on drop counts or on the process.

        Returns:
            64 lowercase hex characters.
        """
        digest = hashlib.sha256(_FINGERPRINT_VERSION)
        for name, split in (("train", self.train), ("eval", self.eval)):
            digest.update(f"[{name} {len(split)}]\n".encode())
            for row in split.to_list():
                record = [row[column] for column in COLUMNS]
                digest.update(json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8"))
                digest.update(b"\n")
        return digest.hexdigest()
