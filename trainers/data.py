"""Preference data for DPO-family training: loading, validation, normalisation and the bundled set.

:func:`load_preference_data` turns one of three kinds of source into a train/eval pair of
:class:`datasets.Dataset` objects in the *explicit-prompt* preference format that TRL 1.16's
``DPOTrainer`` consumes (``trl/trainer/dpo_trainer.py``, ``_prepare_dataset``): columns ``prompt``,
``chosen`` and ``rejected``, either all chat-message lists (conversational, the chat template applies) or
all plain strings (standard):

* ``"embedded"`` (:data:`EMBEDDED_DATA`): verifiable preference pairs made by
  :func:`generate_verifiable_pairs` at load time (arithmetic, unit conversion, sorting, letter counting,
  decimal comparison, weekday and date arithmetic). The chosen answer is correct, the rejected one is a
  plausible mistake (off-by-one, wrong unit factor, one adjacent swap, ...). Train and held-out rows ask
  different questions, so held-out preference accuracy measures generalisation, not recall.
* a HuggingFace hub dataset name (production: ``argilla/dpo-mix-7k``) or a local dataset folder, read with
  :func:`datasets.load_dataset`; its ``test`` split, when present, is the eval split.
* a local ``.jsonl`` / ``.json`` / ``.parquet`` file, either *explicit* (``prompt``, ``chosen``,
  ``rejected`` as strings or message lists) or *implicit* (only ``chosen`` and ``rejected``): message lists
  sharing their leading turns (the prompt is split off with TRL's :func:`trl.data_utils.extract_prompt`)
  or Anthropic HH-RLHF transcripts ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` (Bai et al. 2022), parsed
  into multi-turn user/assistant prompt messages and the final assistant reply.

Every row is validated before any training. A bad row raises :class:`PreferenceDataError` naming the
source, the row (the 1-based line for JSON lines) and the field; with ``on_bad_rows="drop"`` it is dropped
and counted under its reason in :attr:`PreferenceData.dropped` instead. Problems with a whole file
(undecodable ``.json``, broken JSON array, unreadable Parquet, no rows, every row dropped) always raise.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from trl.data_utils import extract_prompt

__all__ = [
    "COLUMNS",
    "DROP_REASONS",
    "EMBEDDED_DATA",
    "EMBEDDED_EVAL_SIZE",
    "EMBEDDED_SEED",
    "EMBEDDED_TRAIN_SIZE",
    "PreferenceData",
    "PreferenceDataError",
    "generate_verifiable_pairs",
    "load_preference_data",
    "parse_hh_transcript",
]

EMBEDDED_DATA = "embedded"
"""Source name of the bundled verifiable preference set."""

EMBEDDED_SEED = 1729
"""Generator seed of the bundled set; fixed so that its train/eval split never moves."""

EMBEDDED_TRAIN_SIZE = 512
"""Number of training pairs in the bundled set."""

EMBEDDED_EVAL_SIZE = 128
"""Number of held-out pairs in the bundled set (questions disjoint from the training questions)."""

COLUMNS = ("prompt", "chosen", "rejected")
"""Columns of every loaded split, in TRL's explicit-prompt preference format."""

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
"""File types read as local preference files."""

ON_BAD_ROWS = ("error", "drop")
"""Accepted values of ``on_bad_rows``."""

MESSAGE_ROLES = ("system", "user", "assistant", "tool")
"""Chat roles accepted in message lists."""

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
_TRANSCRIPT_TURN = re.compile(r"\n\n(Human|Assistant):")
_TRANSCRIPT_ROLES = {"Human": "user", "Assistant": "assistant"}
_MESSAGES_FEATURE = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
_CONVERSATIONAL_FEATURES = datasets.Features({name: _MESSAGES_FEATURE for name in COLUMNS})
_STANDARD_FEATURES = datasets.Features({name: datasets.Value("string") for name in COLUMNS})

Messages = list[dict[str, str]]


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


class _RowError(Exception):
    """Internal: one bad row, turned into a :class:`PreferenceDataError` or a drop count by the caller."""

    def __init__(self, reason: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message


class _Pair(NamedTuple):
    """One validated preference pair; ``conversational`` tells whether the fields are message lists."""

    prompt: str | Messages
    chosen: str | Messages
    rejected: str | Messages
    conversational: bool


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
        return self.train.features == _CONVERSATIONAL_FEATURES

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
        source: :data:`EMBEDDED_DATA`, a ``.jsonl``/``.json``/``.parquet`` file, a local dataset folder or a
            HuggingFace hub dataset name.
        eval_fraction: Fraction of the training rows held out for evaluation when the source brings no eval
            split of its own (no ``eval_source``, no hub ``test`` split, not the embedded set). Rows are held
            out by whole prompt, so no held-out prompt is also trained on. In ``(0, 1)``.
        eval_source: Where the eval pairs come from instead (same kinds as ``source``; for a hub dataset its
            ``test`` split if it has one, else its ``split`` split).
        max_train_rows: Keep a seeded random subset of at most this many training rows (original order).
        max_eval_rows: Same for the eval rows.
        seed: Seed of the eval carve-out and of the subsets; the embedded split does not depend on it.
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

    dropped: Counter[str] = Counter()
    train_reader, source_eval_reader = _open_source(source, split=split, for_eval=False)
    train_pairs = _collect(train_reader, on_bad_rows, dropped)
    if eval_source is not None:
        eval_reader, _ = _open_source(eval_source, split=split, for_eval=True)
        eval_pairs = _collect(eval_reader, on_bad_rows, dropped)
    elif source_eval_reader is not None:
        eval_pairs = _collect(source_eval_reader, on_bad_rows, dropped)
    else:
        train_pairs, eval_pairs = _carve_eval(train_pairs, eval_fraction, seed, source)

    train_pairs = _subsample(train_pairs, max_train_rows, seed)
    eval_pairs = _subsample(eval_pairs, max_eval_rows, seed + 1)
    conversational = any(pair.conversational for pair in (*train_pairs, *eval_pairs))
    counts = {reason: dropped[reason] for reason in DROP_REASONS if dropped[reason]}
    return PreferenceData(
        train=_to_dataset(train_pairs, conversational),
        eval=_to_dataset(eval_pairs, conversational),
        source=source,
        n_dropped=sum(counts.values()),
        dropped=counts,
    )


# --------------------------------------------------------------------------------------------- sources


class _Reader(NamedTuple):
    """Rows of one source: ``records`` yields ``(1-based position, record or _RowError)``."""

    name: str
    row_label: str
    records: Iterable[tuple[int, Any]]


def _open_source(source: str, *, split: str, for_eval: bool) -> tuple[_Reader, _Reader | None]:
    """Resolve ``source`` and return its (train or eval) reader and, if it has one, its own eval reader."""
    if source == EMBEDDED_DATA:
        pairs = generate_verifiable_pairs(EMBEDDED_TRAIN_SIZE + EMBEDDED_EVAL_SIZE, EMBEDDED_SEED)
        train = _Reader(f"{EMBEDDED_DATA}:train", "row", enumerate(pairs[:EMBEDDED_TRAIN_SIZE], start=1))
        held_out = _Reader(f"{EMBEDDED_DATA}:eval", "row", enumerate(pairs[EMBEDDED_TRAIN_SIZE:], start=1))
        return (held_out, None) if for_eval else (train, held_out)
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix not in FILE_SUFFIXES:
            raise PreferenceDataError(
                f"unsupported preference file type {path.suffix!r}; expected one of {FILE_SUFFIXES}",
                source=source,
            )
        if suffix == ".parquet":
            return _Reader(source, "row", _read_parquet(path, source)), None
        if suffix == ".json":
            return _read_json(path, source), None
        return _Reader(source, "line", _read_json_lines(path.read_bytes())), None
    if suffix in FILE_SUFFIXES:
        raise PreferenceDataError(f"preference data file {path.resolve()} does not exist", source=source)
    return _open_hub(source, split=split, for_eval=for_eval)


def _open_hub(name: str, *, split: str, for_eval: bool) -> tuple[_Reader, _Reader | None]:
    """Read a hub dataset (or a local dataset folder) with :func:`datasets.load_dataset`."""
    try:
        splits = datasets.load_dataset(name)
    except (OSError, ValueError) as err:  # DatasetNotFoundError, ConnectionError, offline mode, bad config
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
        why = (
            " (HF_HUB_OFFLINE=1: downloads are disabled and it is not in the local datasets cache)"
            if offline or datasets.config.HF_HUB_OFFLINE
            else ""
        )
        raise PreferenceDataError(
            f"unknown preference data source {name!r}. Tried: (1) the bundled set, whose name is "
            f"{EMBEDDED_DATA!r}; (2) a local {'/'.join(FILE_SUFFIXES)} file or dataset folder at "
            f"{Path(name).expanduser().resolve()}, which does not exist; (3) datasets.load_dataset({name!r}) "
            f"from the HuggingFace hub, which failed{why}: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(splits, datasets.DatasetDict):
        raise PreferenceDataError(f"expected a dataset with named splits, got {type(splits).__name__}", source=name)
    if for_eval and "test" in splits:
        split = "test"
    if split in splits:
        train = splits[split]
    else:
        try:
            train = datasets.load_dataset(name, split=split)
        except (OSError, ValueError) as err:
            raise PreferenceDataError(
                f"cannot load split {split!r} (available splits: {sorted(splits)}): {err}", source=name
            ) from err
    own_eval = splits["test"] if not for_eval and split != "test" and "test" in splits else None
    reader = _Reader(f"{name}:{split}", "row", enumerate(train, start=1))
    eval_reader = _Reader(f"{name}:test", "row", enumerate(own_eval, start=1)) if own_eval is not None else None
    return reader, eval_reader


def _read_json_lines(data: bytes) -> Iterator[tuple[int, Any]]:
    """Yield ``(1-based line number, record or _RowError)`` for each non-blank line of a JSON-lines file."""
    for line_number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.removeprefix(b"\xef\xbb\xbf") if line_number == 1 else raw
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            yield (
                line_number,
                _RowError("invalid_utf8", None, f"not valid UTF-8 at byte {err.start}: {err.reason}"),
            )
            continue
        try:
            yield line_number, json.loads(text)
        except json.JSONDecodeError as err:
            yield (
                line_number,
                _RowError("invalid_json", None, f"unparsable JSON: {err.msg} at column {err.colno}"),
            )


def _read_json(path: Path, source: str) -> _Reader:
    """Read a ``.json`` file: a JSON array of records, or else JSON lines."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise PreferenceDataError(
            f"file is not valid UTF-8 ({err.reason} at byte {err.start})",
            source=source,
            row=line,
            row_label="line",
        ) from err
    if not text.lstrip().startswith("["):
        return _Reader(source, "line", _read_json_lines(data))
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise PreferenceDataError(
            f"unparsable JSON array: {err.msg} at column {err.colno}",
            source=source,
            row=err.lineno,
            row_label="line",
        ) from err
    return _Reader(source, "record", enumerate(records, start=1))


def _read_parquet(path: Path, source: str) -> Iterator[tuple[int, Any]]:
    """Yield ``(1-based row, record)`` for each row of a Parquet file."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise PreferenceDataError(f"unreadable Parquet file: {err}", source=source) from err
    return enumerate(table.to_pylist(), start=1)


# ---------------------------------------------------------------------------------------- validation


def _collect(reader: _Reader, on_bad_rows: str, dropped: Counter[str]) -> list[_Pair]:
    """Validate every row of ``reader``; raise on the first bad one or drop and count it."""
    pairs: list[_Pair] = []
    n_rows = 0
    for position, record in reader.records:
        n_rows += 1
        try:
            if isinstance(record, _RowError):
                raise record
            pairs.append(_normalise_record(record))
        except _RowError as err:
            if on_bad_rows == "error":
                raise PreferenceDataError(
                    err.message,
                    source=reader.name,
                    row=position,
                    row_label=reader.row_label,
                    field=err.field,
                    reason=err.reason,
                ) from None
            dropped[err.reason] += 1
    if n_rows == 0:
        raise PreferenceDataError("the dataset is empty: it has no preference rows", source=reader.name)
    if not pairs:
        reasons = ", ".join(f"{reason}={count}" for reason, count in sorted(dropped.items()))
        raise PreferenceDataError(
            f"all {n_rows} rows were dropped as invalid ({reasons}); rerun with on_bad_rows='error' to see "
            "the first bad row",
            source=reader.name,
        )
    return pairs


def _normalise_record(record: Any) -> _Pair:
    """Validate one raw row and bring it to the explicit-prompt format."""
    if not isinstance(record, Mapping):
        raise _RowError(
            "invalid_row", None, f"expected an object with 'chosen' and 'rejected', got {_type_name(record)}"
        )
    for name in ("chosen", "rejected"):
        if name not in record:
            raise _RowError("missing_column", name, f"missing column {name!r} (row has {sorted(map(str, record))})")
    chosen, rejected = record["chosen"], record["rejected"]
    chosen_kind, rejected_kind = _kind(chosen, "chosen"), _kind(rejected, "rejected")
    prompt = record.get("prompt")
    if prompt is not None:
        prompt_kind = _kind(prompt, "prompt")
        if prompt_kind == chosen_kind == rejected_kind == "text":
            pair = _Pair(
                _text(prompt, "prompt"),
                _text(chosen, "chosen"),
                _text(rejected, "rejected"),
                conversational=False,
            )
        elif prompt_kind == "text" and chosen_kind == rejected_kind == "messages" and _repeats_prompt(chosen):
            # A string prompt next to message lists that contain the user turn (e.g. UltraFeedback): TRL's
            # `maybe_extract_prompt` ignores such a prompt column and extracts the prompt from the messages.
            pair = _split_implicit_messages(chosen, rejected)
        else:
            pair = _Pair(
                _as_messages(prompt, "prompt", "user"),
                _as_messages(chosen, "chosen", "assistant"),
                _as_messages(rejected, "rejected", "assistant"),
                conversational=True,
            )
    elif chosen_kind != rejected_kind:
        raise _RowError(
            "invalid_type",
            "rejected",
            f"'chosen' is {_type_name(chosen)} but 'rejected' is {_type_name(rejected)}",
        )
    elif chosen_kind == "messages":
        pair = _split_implicit_messages(chosen, rejected)
    elif "Human:" in chosen or "Human:" in rejected:
        pair = _split_transcripts(chosen, rejected)
    else:
        raise _RowError(
            "missing_column",
            "prompt",
            "no 'prompt' column, and 'chosen'/'rejected' are neither message lists nor "
            "'\\n\\nHuman: ...\\n\\nAssistant: ...' transcripts with an implicit prompt",
        )
    _check_pair(pair)
    return pair


def _check_pair(pair: _Pair) -> None:
    """Checks that need the whole pair: non-identical answers, assistant completions after a user turn."""
    if pair.chosen == pair.rejected:
        raise _RowError("identical_pair", "rejected", "'chosen' and 'rejected' are identical")
    if not pair.conversational:
        return
    if pair.prompt[-1]["role"] not in ("user", "tool"):
        raise _RowError(
            "malformed_message",
            f"prompt[{len(pair.prompt) - 1}].role",
            f"the prompt must end with a user or tool message, got {pair.prompt[-1]['role']!r}",
        )
    for name in ("chosen", "rejected"):
        role = getattr(pair, name)[0]["role"]
        if role != "assistant":
            raise _RowError(
                "malformed_message",
                f"{name}[0].role",
                f"the completion must start with an assistant message, got {role!r} (does it repeat the prompt?)",
            )


def _kind(value: Any, name: str) -> str:
    """``"text"`` for a string, ``"messages"`` for a list; anything else is an ``invalid_type`` row."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "messages"
    raise _RowError("invalid_type", name, f"expected a string or a list of chat messages, got {_type_name(value)}")


def _text(value: str, name: str) -> str:
    """A non-blank string field."""
    if not value.strip():
        raise _RowError("empty_text", name, "text is empty")
    return value


def _as_messages(value: str | list, name: str, role: str) -> Messages:
    """A validated message list; a string becomes a single ``role`` message."""
    if isinstance(value, str):
        return [{"role": role, "content": _text(value, name)}]
    return _messages(value, name)


def _messages(value: list | tuple, name: str) -> Messages:
    """Validate a chat-message list and keep only ``role`` and ``content`` of each message."""
    if len(value) == 0:
        raise _RowError("empty_text", name, "message list is empty")
    messages: Messages = []
    for index, message in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise _RowError(
                "malformed_message",
                where,
                f"expected a message with 'role' and 'content', got {message!r:.80}",
            )
        role, content = message["role"], message["content"]
        if role not in MESSAGE_ROLES:
            raise _RowError("malformed_message", f"{where}.role", f"unknown role {role!r}; expected {MESSAGE_ROLES}")
        if not isinstance(content, str):
            raise _RowError("invalid_type", f"{where}.content", f"content must be a string, got {_type_name(content)}")
        if not content.strip():
            raise _RowError("empty_text", f"{where}.content", "message content is empty")
        messages.append({"role": role, "content": content})
    return messages


def _repeats_prompt(messages: list | tuple) -> bool:
    """Whether a completion message list starts with a non-assistant turn (so it contains the prompt)."""
    first = messages[0] if len(messages) else None
    return isinstance(first, Mapping) and first.get("role") != "assistant"


def _split_implicit_messages(chosen: list | tuple, rejected: list | tuple) -> _Pair:
    """Split the shared leading turns of two message lists off as the prompt (TRL's ``extract_prompt``)."""
    chosen_messages, rejected_messages = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    if chosen_messages == rejected_messages:
        raise _RowError("identical_pair", "rejected", "'chosen' and 'rejected' are identical")
    split = extract_prompt({"chosen": chosen_messages, "rejected": rejected_messages})
    if not split["prompt"]:
        raise _RowError(
            "malformed_message",
            "chosen",
            "implicit prompt: 'chosen' and 'rejected' must start with the same prompt turns, but their first "
            "messages differ",
        )
    if not split["chosen"] or not split["rejected"]:
        shorter = "chosen" if not split["chosen"] else "rejected"
        raise _RowError("empty_text", shorter, f"implicit prompt: {shorter!r} has no reply after the shared prompt")
    return _Pair(split["prompt"], split["chosen"], split["rejected"], conversational=True)


def parse_hh_transcript(transcript: str, name: str = "transcript") -> Messages:
    """Parse an Anthropic HH-RLHF transcript into chat messages.

    ``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` becomes ``[{"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"}]``. Only ``Human:``/``Assistant:`` markers that open a
    paragraph (after a blank line) start a turn; the same words elsewhere stay in the text. Contents are
    stripped of surrounding whitespace.

    Args:
        transcript: The whole conversation; must start with a ``Human:`` turn, alternate roles and end with
            an ``Assistant:`` turn.
        name: Field name used in error messages.

    Returns:
        The alternating user/assistant messages; the last one is the assistant reply (possibly empty: the
        caller decides whether an empty reply is acceptable).

    Raises:
        _RowError: With reason ``malformed_transcript`` or ``empty_text`` (an empty turn before the last).
    """
    if not transcript.strip():
        raise _RowError("empty_text", name, "transcript is empty")
    body = transcript if transcript.startswith("\n\n") else "\n\n" + transcript.lstrip()
    parts = _TRANSCRIPT_TURN.split(body)
    if parts[0].strip():
        raise _RowError("malformed_transcript", name, f"text before the first 'Human:' turn: {parts[0]!r:.60}")
    roles, contents = parts[1::2], parts[2::2]
    if not roles:
        raise _RowError("malformed_transcript", name, "no '\\n\\nHuman:' / '\\n\\nAssistant:' turns found")
    if roles[0] != "Human":
        raise _RowError("malformed_transcript", name, f"the transcript must start with 'Human:', not {roles[0]!r}")
    for index in range(1, len(roles)):
        if roles[index] == roles[index - 1]:
            raise _RowError(
                "malformed_transcript",
                name,
                f"turns {index} and {index + 1} are both '{roles[index]}:' turns",
            )
    if roles[-1] != "Assistant":
        raise _RowError("malformed_transcript", name, "the transcript must end with an 'Assistant:' reply")
    messages = [
        {"role": _TRANSCRIPT_ROLES[role], "content": content.strip()}
        for role, content in zip(roles, contents, strict=True)
    ]
    for index, message in enumerate(messages[:-1]):
        if not message["content"]:
            raise _RowError("empty_text", name, f"turn {index + 1} ('{roles[index]}:') is empty")
    return messages


def _split_transcripts(chosen: str, rejected: str) -> _Pair:
    """Parse two HH-RLHF transcripts sharing every turn but the final assistant reply."""
    chosen_messages = parse_hh_transcript(chosen, "chosen")
    rejected_messages = parse_hh_transcript(rejected, "rejected")
    prompt = chosen_messages[:-1]
    if rejected_messages[:-1] != prompt:
        turn = next(
            (i + 1 for i, (a, b) in enumerate(zip(prompt, rejected_messages, strict=False)) if a != b),
            min(len(prompt), len(rejected_messages) - 1) + 1,
        )
        raise _RowError(
            "malformed_transcript",
            "rejected",
            f"the conversation before the final 'Assistant:' reply differs from 'chosen' (first at turn {turn})",
        )
    for name, messages in (("chosen", chosen_messages), ("rejected", rejected_messages)):
        if not messages[-1]["content"]:
            raise _RowError("empty_text", name, "the final 'Assistant:' reply is empty")
    return _Pair(prompt, chosen_messages[-1:], rejected_messages[-1:], conversational=True)


def _type_name(value: Any) -> str:
    """JSON-flavoured type name for error messages."""
    if value is None:
        return "null"
    return {str: "a string", list: "a list", tuple: "a list", dict: "an object", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


# ----------------------------------------------------------------------------------- splits, datasets


def _prompt_key(pair: _Pair) -> str:
    return json.dumps(pair.prompt, ensure_ascii=False, sort_keys=True)


def _carve_eval(pairs: list[_Pair], fraction: float, seed: int, source: str) -> tuple[list[_Pair], list[_Pair]]:
    """Hold out whole prompts (about ``fraction`` of the rows) so no eval prompt is also trained on."""
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


def _subsample(pairs: list[_Pair], limit: int | None, seed: int) -> list[_Pair]:
    """A seeded random subset of at most ``limit`` pairs, in their original order."""
    if limit is None or len(pairs) <= limit:
        return pairs
    keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
    return [pairs[index] for index in keep]


def _to_dataset(pairs: list[_Pair], conversational: bool) -> datasets.Dataset:
    """Build a split; string pairs become user/assistant messages when the data is conversational."""
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for pair in pairs:
        for name, role in zip(COLUMNS, ("user", "assistant", "assistant"), strict=True):
            value = getattr(pair, name)
            if conversational and isinstance(value, str):
                value = [{"role": role, "content": value}]
            columns[name].append(value)
    features = _CONVERSATIONAL_FEATURES if conversational else _STANDARD_FEATURES
    return datasets.Dataset.from_dict(columns, features=features)


# ------------------------------------------------------------------------------ verifiable bundled set

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_UNIT_FACTORS = (
    ("km", "m", 1000),
    ("m", "cm", 100),
    ("cm", "mm", 10),
    ("kg", "g", 1000),
    ("L", "mL", 1000),
    ("h", "min", 60),
    ("min", "s", 60),
    ("days", "h", 24),
)
_CONFUSED_FACTORS = (10, 24, 60, 100, 1000)
_WORDS = (
    "strawberry", "banana", "mississippi", "letter", "bookkeeper", "committee", "balloon", "coffee",
    "address", "necessary", "occurrence", "parallel", "pepper", "sassafras", "tomorrow", "yellow",
    "assessment", "accommodate", "millennium", "possession", "embarrass", "cinnamon", "giraffe", "kiwi",
    "referee", "success", "vacuum", "zucchini", "puzzle", "raspberry", "blueberry", "engineer",
    "grammar", "harassment", "independent", "kangaroo", "llama", "mammal", "noodle", "pineapple",
    "questionnaire", "recommend", "scissors", "tattoo", "umbrella", "volleyball", "waterfall", "excellent",
    "apple", "programming", "statistics", "algorithm", "preference", "optimization", "entropy", "gradient",
    "calendar", "beekeeper", "assassin", "bubble", "cheese", "dessert", "effervescent", "furniture",
)  # fmt: skip


def _arith_add(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    answer = a + b
    wrong = answer + rng.choice((-10, -1, 1, 10))  # off-by-one or a dropped/extra carry
    return f"What is {a} + {b}?", str(answer), str(wrong)


def _arith_subtract(rng: random.Random) -> tuple[str, str, str]:
    a = rng.randint(20, 99)
    b = rng.randint(10, a - 1)
    answer = a - b
    wrong = answer + rng.choice((-10, -1, 1, 10))  # off-by-one or a borrow error
    return f"What is {a} - {b}?", str(answer), str(wrong)


def _arith_multiply(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(3, 19), rng.randint(3, 12)
    wrong = a * (b + rng.choice((-1, 1)))  # one group too many or too few
    return f"What is {a} × {b}?", str(a * b), str(wrong)


def _unit_conversion(rng: random.Random) -> tuple[str, str, str]:
    source_unit, target_unit, factor = rng.choice(_UNIT_FACTORS)
    quantity = rng.randint(2, 95)
    wrong_factor = rng.choice([f for f in _CONFUSED_FACTORS if f != factor])
    question = f"Convert {quantity} {source_unit} to {target_unit}."
    return question, f"{quantity * factor} {target_unit}", f"{quantity * wrong_factor} {target_unit}"


def _sort_numbers(rng: random.Random) -> tuple[str, str, str]:
    descending = rng.random() < 0.5
    numbers = rng.sample(range(1, 100), rng.randint(4, 6))
    ordered = sorted(numbers, reverse=descending)
    while numbers == ordered:  # an already sorted question would test nothing
        rng.shuffle(numbers)
    swap = rng.randrange(len(ordered) - 1)
    mis_sorted = list(ordered)
    mis_sorted[swap], mis_sorted[swap + 1] = mis_sorted[swap + 1], mis_sorted[swap]
    order = "descending" if descending else "ascending"
    question = f"Sort these numbers in {order} order: {', '.join(map(str, numbers))}"
    return question, ", ".join(map(str, ordered)), ", ".join(map(str, mis_sorted))


def _count_letter(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(_WORDS)
    letter = rng.choice(sorted(set(word)))
    answer = word.count(letter)
    wrong = answer + rng.choice((-1, 1))  # the classic miscount
    return f'How many times does the letter "{letter}" appear in "{word}"?', str(answer), str(wrong)


def _compare_decimals(rng: random.Random) -> tuple[str, str, str]:
    # a.b versus a.cd with cd > b as integers but a.cd < a.b: the "9.11 > 9.9" confusion.
    whole = rng.randint(0, 20)
    tenths = rng.randint(2, 9)
    hundredths = rng.randint(10, 10 * tenths - 1)
    if hundredths % 10 == 0:  # "x.30" would read as "x.3"
        hundredths += 1
    larger, smaller = f"{whole}.{tenths}", f"{whole}.{hundredths:02d}"
    first, second = (larger, smaller) if rng.random() < 0.5 else (smaller, larger)
    return f"Which is larger: {first} or {second}?", larger, smaller


def _weekday_shift(rng: random.Random) -> tuple[str, str, str]:
    start = rng.randrange(7)
    days = rng.randint(2, 60)
    answer = _WEEKDAYS[(start + days) % 7]
    wrong = _WEEKDAYS[(start + days + rng.choice((-1, 1))) % 7]  # fencepost error
    question = f"If today is {_WEEKDAYS[start]}, what day of the week will it be in {days} days?"
    return question, answer, wrong


def _date_add(rng: random.Random) -> tuple[str, str, str]:
    start = dt.date(2023, 1, 1) + dt.timedelta(days=rng.randrange(3 * 365))
    days = rng.randint(3, 45)
    answer = start + dt.timedelta(days=days)
    wrong = answer + dt.timedelta(days=rng.choice((-1, 1)))  # fencepost / month-length error
    return f"What date is {days} days after {start.isoformat()}?", answer.isoformat(), wrong.isoformat()


_TASKS: tuple[tuple[str, Callable[[random.Random], tuple[str, str, str]]], ...] = (
    ("add", _arith_add),
    ("subtract", _arith_subtract),
    ("multiply", _arith_multiply),
    ("unit_conversion", _unit_conversion),
    ("sort", _sort_numbers),
    ("count_letter", _count_letter),
    ("compare_decimals", _compare_decimals),
    ("weekday_shift", _weekday_shift),
    ("date_add", _date_add),
)
TASK_NAMES = tuple(name for name, _ in _TASKS)
"""Task families of :func:`generate_verifiable_pairs`, in round-robin order."""


def generate_verifiable_pairs(n: int, seed: int) -> list[dict[str, Any]]:
    """Generate preference pairs whose chosen answer is verifiably correct and rejected one plausibly wrong.

    Tasks cycle round-robin through :data:`TASK_NAMES`; every question is unique within one call, so any
    two disjoint slices of the result ask different questions. The output is a pure function of
    ``(n, seed)`` and ``generate_verifiable_pairs(m, seed)`` is a prefix of it for ``m <= n``.

    Args:
        n: Number of pairs, at least 1.
        seed: Seed of the generator.

    Returns:
        ``n`` conversational rows ``{"prompt": [user message], "chosen": [assistant message],
        "rejected": [assistant message], "task": task name}``; answers are a few tokens long.

    Raises:
        ValueError: ``n`` is not a positive integer, or a task ran out of distinct questions.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        task, make = _TASKS[len(rows) % len(_TASKS)]
        for _ in range(1000):
            question, answer, wrong = make(rng)
            if question not in seen:
                break
        else:
            raise ValueError(f"task {task!r} has no new question left after {len(rows)} pairs; lower n")
        seen.add(question)
        rows.append(
            {
                "prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": answer}],
                "rejected": [{"role": "assistant", "content": wrong}],
                "task": task,
            }
        )
    return rows
