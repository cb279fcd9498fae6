"""Row validation and normalisation to TRL's explicit-prompt format, the HH-RLHF parser and the bad-row policy.

:func:`collect_pairs` validates every record of a :class:`~trainers.data.schema.Reader` and applies the
bad-row policy (raise on the first bad row, or drop and count it). :func:`normalise_record` brings one row to
a :class:`~trainers.data.schema.Pair`: explicit rows (``prompt``, ``chosen``, ``rejected`` as strings or
message lists) and implicit ones (only ``chosen`` and ``rejected``): message lists sharing their leading turns
(the prompt is split off with TRL's :func:`trl.data_utils.extract_prompt`) or Anthropic HH-RLHF transcripts
(:func:`parse_hh_transcript`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from trl.data_utils import extract_prompt

from trainers.data.schema import Messages, Pair, PreferenceDataError, Reader, RowError

MESSAGE_ROLES = ("system", "user", "assistant", "tool")
"""Chat roles accepted in message lists."""

_TRANSCRIPT_TURN = re.compile(r"\n\n(Human|Assistant):")
_TRANSCRIPT_ROLES = {"Human": "user", "Assistant": "assistant"}


def collect_pairs(reader: Reader, on_bad_rows: str, dropped: Counter[str]) -> list[Pair]:
    """Validate every row of ``reader``; raise on the first bad one or drop and count it.

    Args:
        reader: The source's raw rows.
        on_bad_rows: ``"error"`` raises on the first bad row, ``"drop"`` drops it and counts its reason.
        dropped: Drop counts per reason, updated in place.

    Returns:
        The valid rows as pairs, in source order.

    Raises:
        PreferenceDataError: A bad row (with ``on_bad_rows="error"``), a source without rows, or one whose
            rows were all dropped.
    """
    pairs: list[Pair] = []
    n_rows = 0
    for position, record in reader.records:
        n_rows += 1
        try:
            if isinstance(record, RowError):
                raise record
            pairs.append(normalise_record(record))
        except RowError as err:
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


def normalise_record(record: Any) -> Pair:
    """Validate one raw row and bring it to the explicit-prompt format.

    Args:
        record: The raw row, normally a mapping with ``chosen``, ``rejected`` and optionally ``prompt``.

    Returns:
        The validated pair.

    Raises:
        RowError: The row is bad; its ``reason`` is one of :data:`~trainers.data.schema.DROP_REASONS`.
    """
    if not isinstance(record, Mapping):
        raise RowError(
            "invalid_row", None, f"expected an object with 'chosen' and 'rejected', got {_type_name(record)}"
        )
    for name in ("chosen", "rejected"):
        if name not in record:
            raise RowError("missing_column", name, f"missing column {name!r} (row has {sorted(map(str, record))})")
    chosen, rejected = record["chosen"], record["rejected"]
    chosen_kind, rejected_kind = _kind(chosen, "chosen"), _kind(rejected, "rejected")
    prompt = record.get("prompt")
    if prompt is not None:
        pair = _explicit_pair(prompt, chosen, rejected, chosen_kind, rejected_kind)
    elif chosen_kind != rejected_kind:
        raise RowError(
            "invalid_type",
            "rejected",
            f"'chosen' is {_type_name(chosen)} but 'rejected' is {_type_name(rejected)}",
        )
    elif chosen_kind == "messages":
        pair = _split_implicit_messages(chosen, rejected)
    elif "Human:" in chosen or "Human:" in rejected:
        pair = _split_transcripts(chosen, rejected)
    else:
        raise RowError(
            "missing_column",
            "prompt",
            "no 'prompt' column, and 'chosen'/'rejected' are neither message lists nor "
            "'\\n\\nHuman: ...\\n\\nAssistant: ...' transcripts with an implicit prompt",
        )
    _check_pair(pair)
    return pair


def _explicit_pair(prompt: Any, chosen: Any, rejected: Any, chosen_kind: str, rejected_kind: str) -> Pair:
    """Normalise a row with a ``prompt`` column: all strings, or message lists (strings become messages)."""
    prompt_kind = _kind(prompt, "prompt")
    if prompt_kind == chosen_kind == rejected_kind == "text":
        return Pair(
            _text(prompt, "prompt"),
            _text(chosen, "chosen"),
            _text(rejected, "rejected"),
            conversational=False,
        )
    if prompt_kind == "text" and chosen_kind == rejected_kind == "messages" and _repeats_prompt(chosen):
        # A string prompt next to message lists that contain the user turn (e.g. UltraFeedback): TRL's
        # `maybe_extract_prompt` ignores such a prompt column and extracts the prompt from the messages.
        return _split_implicit_messages(chosen, rejected)
    return Pair(
        _as_messages(prompt, "prompt", "user"),
        _as_messages(chosen, "chosen", "assistant"),
        _as_messages(rejected, "rejected", "assistant"),
        conversational=True,
    )


def _check_pair(pair: Pair) -> None:
    """Checks that need the whole pair: non-identical answers, assistant completions after a user turn."""
    if pair.chosen == pair.rejected:
        raise RowError("identical_pair", "rejected", "'chosen' and 'rejected' are identical")
    if not pair.conversational:
        return
    if pair.prompt[-1]["role"] not in ("user", "tool"):
        raise RowError(
            "malformed_message",
            f"prompt[{len(pair.prompt) - 1}].role",
            f"the prompt must end with a user or tool message, got {pair.prompt[-1]['role']!r}",
        )
    for name in ("chosen", "rejected"):
        role = getattr(pair, name)[0]["role"]
        if role != "assistant":
            raise RowError(
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
    raise RowError("invalid_type", name, f"expected a string or a list of chat messages, got {_type_name(value)}")


def _text(value: str, name: str) -> str:
    """A non-blank string field."""
    if not value.strip():
        raise RowError("empty_text", name, "text is empty")
    return value


def _as_messages(value: str | list, name: str, role: str) -> Messages:
    """A validated message list; a string becomes a single ``role`` message."""
    if isinstance(value, str):
        return [{"role": role, "content": _text(value, name)}]
    return _messages(value, name)


def _messages(value: list | tuple, name: str) -> Messages:
    """Validate a chat-message list and keep only ``role`` and ``content`` of each message."""
    if len(value) == 0:
        raise RowError("empty_text", name, "message list is empty")
    messages: Messages = []
    for index, message in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise RowError(
                "malformed_message",
                where,
                f"expected a message with 'role' and 'content', got {message!r:.80}",
            )
        role, content = message["role"], message["content"]
        if role not in MESSAGE_ROLES:
            raise RowError("malformed_message", f"{where}.role", f"unknown role {role!r}; expected {MESSAGE_ROLES}")
        if not isinstance(content, str):
            raise RowError("invalid_type", f"{where}.content", f"content must be a string, got {_type_name(content)}")
        if not content.strip():
            raise RowError("empty_text", f"{where}.content", "message content is empty")
        messages.append({"role": role, "content": content})
    return messages


def _repeats_prompt(messages: list | tuple) -> bool:
    """Whether a completion message list starts with a non-assistant turn (so it contains the prompt)."""
    first = messages[0] if len(messages) else None
    return isinstance(first, Mapping) and first.get("role") != "assistant"


def _split_implicit_messages(chosen: list | tuple, rejected: list | tuple) -> Pair:
    """Split the shared leading turns of two message lists off as the prompt (TRL's ``extract_prompt``)."""
    chosen_messages, rejected_messages = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    if chosen_messages == rejected_messages:
        raise RowError("identical_pair", "rejected", "'chosen' and 'rejected' are identical")
    split = extract_prompt({"chosen": chosen_messages, "rejected": rejected_messages})
    if not split["prompt"]:
        raise RowError(
            "malformed_message",
            "chosen",
            "implicit prompt: 'chosen' and 'rejected' must start with the same prompt turns, but their first "
            "messages differ",
        )
    if not split["chosen"] or not split["rejected"]:
        shorter = "chosen" if not split["chosen"] else "rejected"
        raise RowError("empty_text", shorter, f"implicit prompt: {shorter!r} has no reply after the shared prompt")
    return Pair(split["prompt"], split["chosen"], split["rejected"], conversational=True)


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
        RowError: With reason ``malformed_transcript`` or ``empty_text`` (an empty turn before the last).
    """
    if not transcript.strip():
        raise RowError("empty_text", name, "transcript is empty")
    body = transcript if transcript.startswith("\n\n") else "\n\n" + transcript.lstrip()
    parts = _TRANSCRIPT_TURN.split(body)
    if parts[0].strip():
        raise RowError("malformed_transcript", name, f"text before the first 'Human:' turn: {parts[0]!r:.60}")
    roles, contents = parts[1::2], parts[2::2]
    if not roles:
        raise RowError("malformed_transcript", name, "no '\\n\\nHuman:' / '\\n\\nAssistant:' turns found")
    if roles[0] != "Human":
        raise RowError("malformed_transcript", name, f"the transcript must start with 'Human:', not {roles[0]!r}")
    for index in range(1, len(roles)):
        if roles[index] == roles[index - 1]:
            raise RowError(
                "malformed_transcript",
                name,
                f"turns {index} and {index + 1} are both '{roles[index]}:' turns",
            )
    if roles[-1] != "Assistant":
        raise RowError("malformed_transcript", name, "the transcript must end with an 'Assistant:' reply")
    messages = [
        {"role": _TRANSCRIPT_ROLES[role], "content": content.strip()}
        for role, content in zip(roles, contents, strict=True)
    ]
    for index, message in enumerate(messages[:-1]):
        if not message["content"]:
            raise RowError("empty_text", name, f"turn {index + 1} ('{roles[index]}:') is empty")
    return messages


def _split_transcripts(chosen: str, rejected: str) -> Pair:
    """Parse two HH-RLHF transcripts sharing every turn but the final assistant reply."""
    chosen_messages = parse_hh_transcript(chosen, "chosen")
    rejected_messages = parse_hh_transcript(rejected, "rejected")
    prompt = chosen_messages[:-1]
    if rejected_messages[:-1] != prompt:
        turn = next(
            (i + 1 for i, (a, b) in enumerate(zip(prompt, rejected_messages, strict=False)) if a != b),
            min(len(prompt), len(rejected_messages) - 1) + 1,
        )
        raise RowError(
            "malformed_transcript",
            "rejected",
            f"the conversation before the final 'Assistant:' reply differs from 'chosen' (first at turn {turn})",
        )
    for name, messages in (("chosen", chosen_messages), ("rejected", rejected_messages)):
        if not messages[-1]["content"]:
            raise RowError("empty_text", name, "the final 'Assistant:' reply is empty")
    return Pair(prompt, chosen_messages[-1:], rejected_messages[-1:], conversational=True)


def _type_name(value: Any) -> str:
    """JSON-flavoured type name for error messages."""
    if value is None:
        return "null"
    return {str: "a string", list: "a list", tuple: "a list", dict: "an object", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
