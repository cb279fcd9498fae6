"""Readers of preference sources: the bundled set, local JSON lines / JSON / Parquet files, hub datasets.

:func:`open_source` resolves a source name to a :class:`Reader` of raw records (and, for sources that bring
their own held-out split, a second one); it does not validate rows, it only reports rows it cannot even
decode (bad UTF-8, bad JSON) as :class:`~trainers.data.schema.RowError` records. Problems with a whole file
raise :class:`~trainers.data.schema.PreferenceDataError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from trainers.data.long_form import (
    EMBEDDED_LONG_DATA,
    EMBEDDED_LONG_EVAL_SIZE,
    EMBEDDED_LONG_SEED,
    EMBEDDED_LONG_TRAIN_SIZE,
    generate_long_form_pairs,
)
from trainers.data.schema import PreferenceDataError, Reader, RowError
from trainers.data.synthetic import (
    EMBEDDED_DATA,
    EMBEDDED_EVAL_SIZE,
    EMBEDDED_SEED,
    EMBEDDED_TRAIN_SIZE,
    generate_verifiable_pairs,
)

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
"""File types read as local preference files."""

_BUNDLED = {
    EMBEDDED_DATA: (generate_verifiable_pairs, EMBEDDED_TRAIN_SIZE, EMBEDDED_EVAL_SIZE, EMBEDDED_SEED),
    EMBEDDED_LONG_DATA: (
        generate_long_form_pairs,
        EMBEDDED_LONG_TRAIN_SIZE,
        EMBEDDED_LONG_EVAL_SIZE,
        EMBEDDED_LONG_SEED,
    ),
}
"""The bundled sets by source name: (generator, train pairs, held-out pairs, generator seed)."""


def open_source(source: str, *, split: str, for_eval: bool) -> tuple[Reader, Reader | None]:
    """Resolve ``source`` and return its (train or eval) reader and, if it has one, its own eval reader.

    Args:
        source: A bundled set (:data:`~trainers.data.synthetic.EMBEDDED_DATA`,
            :data:`~trainers.data.long_form.EMBEDDED_LONG_DATA`), a local file or dataset folder, or a hub name.
        split: Split of a hub dataset (or dataset folder) to read.
        for_eval: Whether ``source`` is an ``eval_source``: the bundled set then yields its held-out pairs and a
            hub dataset its ``test`` split if it has one.

    Returns:
        The reader of ``source``'s rows, and the reader of its own held-out rows or ``None``.

    Raises:
        PreferenceDataError: An unknown, missing or unreadable source, or an unsupported file type.
    """
    if source in _BUNDLED:
        generate, train_size, eval_size, seed = _BUNDLED[source]
        pairs = generate(train_size + eval_size, seed)
        train = Reader(f"{source}:train", "row", enumerate(pairs[:train_size], start=1))
        held_out = Reader(f"{source}:eval", "row", enumerate(pairs[train_size:], start=1))
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
            return Reader(source, "row", _read_parquet(path, source)), None
        if suffix == ".json":
            return _read_json(path, source), None
        return Reader(source, "line", _read_json_lines(path.read_bytes())), None
    if suffix in FILE_SUFFIXES:
        raise PreferenceDataError(f"preference data file {path.resolve()} does not exist", source=source)
    return _open_hub(source, split=split, for_eval=for_eval)


def _open_hub(name: str, *, split: str, for_eval: bool) -> tuple[Reader, Reader | None]:
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
            f"unknown preference data source {name!r}. Tried: (1) the bundled sets, named "
            f"{' and '.join(map(repr, _BUNDLED))}; (2) a local {'/'.join(FILE_SUFFIXES)} file or dataset folder at "
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
    reader = Reader(f"{name}:{split}", "row", enumerate(train, start=1))
    eval_reader = Reader(f"{name}:test", "row", enumerate(own_eval, start=1)) if own_eval is not None else None
    return reader, eval_reader


def _read_json_lines(data: bytes) -> Iterator[tuple[int, Any]]:
    """Yield ``(1-based line number, record or RowError)`` for each non-blank line of a JSON-lines file."""
    for line_number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.removeprefix(b"\xef\xbb\xbf") if line_number == 1 else raw
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            yield (
                line_number,
                RowError("invalid_utf8", None, f"not valid UTF-8 at byte {err.start}: {err.reason}"),
            )
            continue
        try:
            yield line_number, json.loads(text)
        except json.JSONDecodeError as err:
            yield (
                line_number,
                RowError("invalid_json", None, f"unparsable JSON: {err.msg} at column {err.colno}"),
            )


def _read_json(path: Path, source: str) -> Reader:
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
        return Reader(source, "line", _read_json_lines(data))
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise PreferenceDataError(
            f"unparsable JSON array: {err.msg} at column {err.colno}",
            source=source,
            row=err.lineno,
            row_label="line",
        ) from err
    return Reader(source, "record", enumerate(records, start=1))


def _read_parquet(path: Path, source: str) -> Iterator[tuple[int, Any]]:
    """Yield ``(1-based row, record)`` for each row of a Parquet file."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise PreferenceDataError(f"unreadable Parquet file: {err}", source=source) from err
    return enumerate(table.to_pylist(), start=1)
