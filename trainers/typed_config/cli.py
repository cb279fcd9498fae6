"""Help text and command-line flags generated from config fields."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import textwrap
import typing
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from trainers.typed_config.fields import _hints, _is_section, _is_sequence, _item_type, _split_optional, type_name
from trainers.typed_config.loading import Override, field_at

OVERRIDES_DEST = "config_overrides"
"""Namespace attribute where :func:`add_config_arguments`' flags collect their overrides, in command-line order."""


class FieldDoc(NamedTuple):
    """One row of :func:`fields_help`: a field (or a section, with empty type and default)."""

    key: str
    type: str
    default: str
    help: str
    section: bool


def field_docs(cls: type, prefix: str = "", defaults: Any = None) -> list[FieldDoc]:
    """Every field of ``cls`` in declaration order, sections followed by their fields (defaults from ``cls()``)."""
    defaults = cls() if defaults is None else defaults
    rows = []
    for f in dataclasses.fields(cls):
        key, tp, value = prefix + f.name, _hints(cls)[f.name], getattr(defaults, f.name)
        if _is_section(tp):
            rows.append(FieldDoc(key, "", "", f.metadata.get("help", ""), True))
            rows.extend(field_docs(tp, key + ".", value))
        else:
            rows.append(FieldDoc(key, type_name(tp), json.dumps(value, default=str), f.metadata.get("help", ""), False))
    return rows


def fields_help(cls: type, title: str = "config fields (set any with key=value; values are YAML):") -> str:
    """``--help`` text: every field of ``cls`` with its type (choices of an enumeration), default and help."""
    lines = [title]
    for row in field_docs(cls):
        if row.section:
            lines.append(f"\n  [{row.key}] {row.help}")
        else:
            lines.append(f"  {row.key} ({row.type}, default {row.default})")
            lines.append(textwrap.fill(row.help, 118, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


class _SetField(argparse.Action):
    """Appends ``(field, value)``, or a raw ``key=value`` for ``--set``, to the namespace's override list."""

    def __init__(self, option_strings: list[str], dest: str, field: str | None = None, **kwargs: Any) -> None:
        self.field = field
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        items = list(getattr(namespace, OVERRIDES_DEST, None) or [])
        items.append(values if self.field is None else (self.field, self.const if self.nargs == 0 else values))
        setattr(namespace, OVERRIDES_DEST, items)


def _flag_kind(key: str, tp: Any, negate: bool) -> dict[str, Any]:
    inner, _ = _split_optional(tp)
    if inner is bool:
        return {"nargs": 0, "const": not negate}
    if negate:
        raise TypeError(f"alias '!{key}': only a bool field can be negated")
    if typing.get_origin(inner) is Literal:  # no argparse choices: validate() names the allowed values
        choices = typing.get_args(inner)
        return {"metavar": "{" + ",".join(map(str, choices)) + "}", "type": type(choices[0])}
    if _is_sequence(inner) and _item_type(inner) in (int, float, str):
        return {"nargs": "+", "type": _item_type(inner)}
    if inner in (int, float, str):
        return {"type": inner}
    raise TypeError(f"alias for {key!r}: no command-line form for type {type_name(tp)}")


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, aliases: Mapping[str, str] | None = None, *, positional: bool = False
) -> None:
    """Make every field of config class ``cls`` settable from the command line.

    Adds ``--set KEY=VALUE`` (repeatable), optionally positional ``key=value`` arguments, and one flag per alias.
    Read the result with :func:`overrides_from_args`.

    Args:
        parser: The parser to extend.
        cls: The root config class (dotted keys are relative to it).
        aliases: Flag -> dotted field, e.g. ``{"--beta-kl": "loss.beta_kl"}``. A bool field's flag sets it true;
            ``"!field"`` makes a flag that sets it false (``{"--no-save": "!train.save_model"}``). A list field's
            flag takes one or more values.
        positional: Also accept ``key=value`` positional arguments (they apply before the flags).

    Raises:
        ConfigError: If an alias names no field of ``cls``.
        TypeError: If an alias's field has no command-line form (a section) or ``!`` negates a non-bool field.
    """
    defaults = cls()
    for flag, target in (aliases or {}).items():
        key = target.removeprefix("!")
        found, tp = field_at(cls, key)
        kind = _flag_kind(key, tp, negate=target.startswith("!"))
        default = functools.reduce(getattr, key.split("."), defaults)
        if kind.get("nargs") == 0:
            doc = f"set {key} to {str(kind['const']).lower()}: {found.metadata.get('help', '')}"
        else:
            doc = f"{found.metadata.get('help', '')} [{key}, default {json.dumps(default, default=str)}]"
        parser.add_argument(
            flag, action=_SetField, field=key, default=argparse.SUPPRESS, help=doc.replace("%", "%%"), **kind
        )
    parser.add_argument(
        "--set",
        action=_SetField,
        default=argparse.SUPPRESS,
        metavar="KEY=VALUE",
        help="set any config field by its dotted key (repeatable; the value is YAML, e.g. --set a.b=[1,2])",
    )
    if positional:
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, like --set")


def config_parser(
    prog: str, description: str, cls: type, aliases: Mapping[str, str] | None = None, *, title: str
) -> argparse.ArgumentParser:
    """A CLI parser over config class ``cls``: ``--help`` ends with every field (:func:`fields_help` under ``title``)
    and every field is settable (:func:`add_config_arguments`); callers add their own extra arguments."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=fields_help(cls, title),
    )
    add_config_arguments(parser, cls, aliases)
    return parser


def overrides_from_args(args: argparse.Namespace) -> list[Override]:
    """The overrides a parser extended by :func:`add_config_arguments` collected: positional ones, then the flags
    and ``--set`` in command-line order (a later one wins)."""
    return [*(getattr(args, "overrides", None) or []), *(getattr(args, OVERRIDES_DEST, None) or [])]
