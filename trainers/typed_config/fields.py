"""Declaring config fields (:func:`option`) and checking them (:func:`validate`), with :class:`ConfigError`."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal


class ConfigError(ValueError):
    """A config value, key, override or file is invalid; the message names it.

    Attributes:
        text: What is wrong, without the field's name.
        field: Dotted path of the field relative to the object validated; ``""`` when ``text`` says it all.

    Args:
        text: See above; a text starting with ``:`` follows the field name without a space.
        field: See above.
        label: Shown before ``field`` only (e.g. ``"divergence"`` for a config validated on its own).
    """

    def __init__(self, text: str, field: str = "", label: str = "") -> None:
        self.text, self.field = text, field
        where = ".".join(part for part in (label, field) if part)
        sep = "" if not where or text.startswith(":") else " "
        super().__init__(f"{where}{sep}{text}")

    def under(self, prefix: str) -> ConfigError:
        """The same error for a config that sits at dotted path ``prefix`` of a larger one."""
        if not prefix or not self.field:
            return self
        return ConfigError(self.text, f"{prefix}.{self.field}")


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    nonempty: bool = False,
    unique: bool = False,
    pattern: str | None = None,
    check: Callable[[Any], bool] | None = None,
    expected: str | None = None,
) -> Any:
    """A dataclass field with its help text and constraints in ``metadata``.

    Args:
        default: The default; a list, dict or dataclass instance is deep-copied per object.
        help: What the field means (``--help`` prints it).
        default_factory: Alternative to ``default``.
        gt: Numbers (a list's items) must be > this.
        ge: Numbers (a list's items) must be >= this.
        lt: Numbers (a list's items) must be < this.
        le: Numbers (a list's items) must be <= this.
        nonempty: A string, or a list and its string items, must not be empty (or blank).
        unique: A list must not repeat a value.
        pattern: A string (a list's string items) must fully match this regular expression.
        check: Extra predicate on the (non-None) value.
        expected: Words for the valid values in errors, replacing the ones derived from type and constraints.

    Returns:
        A ``dataclasses.field``.
    """
    if isinstance(default, list | dict | set) or (dataclasses.is_dataclass(default) and not isinstance(default, type)):
        default, default_factory = dataclasses.MISSING, functools.partial(copy.deepcopy, default)
    metadata = {"help": help, "gt": gt, "ge": ge, "lt": lt, "le": le, "nonempty": nonempty, "unique": unique}
    metadata |= {"pattern": pattern, "check": check, "expected": expected}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


# ---------------------------------------------------------------------------------------------------------------
# Types: what a field accepts, in words


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if len(args) == 1 < len(typing.get_args(tp)):
            return args[0], True
    return tp, False


def _is_sequence(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, tuple)


def _item_type(tp: Any) -> Any:
    args = typing.get_args(tp)
    return args[0] if args else Any


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _bounds(meta: Mapping[str, Any]) -> str:
    ops = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
    parts = [f"{op} {meta[name]}" for name, op in ops if meta.get(name) is not None]
    return " " + " and ".join(parts) if parts else ""


def _words(tp: Any, meta: Mapping[str, Any], plural: bool = False) -> str:
    """What a non-None value of type ``tp`` must be, e.g. ``a finite number > 0`` (``finite numbers > 0``)."""
    bounds, nonempty = _bounds(meta), " non-empty" if meta.get("nonempty") else ""
    if typing.get_origin(tp) is Literal:
        return f"{'values in' if plural else 'one of'} {typing.get_args(tp)!r}"
    if _is_sequence(tp):
        return f"a list of {_words(_item_type(tp), meta, plural=True)}"
    if tp is bool:
        return "bools (true/false)" if plural else "a bool (true/false)"
    if tp is int:
        if bounds in (" > 0", " >= 0"):
            kind = "positive" if bounds == " > 0" else "non-negative"
            return f"{kind} integers" if plural else f"a {kind} integer"
        return ("integers" if plural else "an integer") + bounds
    if tp is float:
        return ("finite numbers" if plural else "a finite number") + bounds
    if tp is str:
        return f"{nonempty.strip()} strings".strip() if plural else f"a{nonempty} string"
    if _is_section(tp):
        article = "an" if tp.__name__[0] in "AEIOU" else "a"
        return f"{tp.__name__} sections" if plural else f"{article} {tp.__name__} section"
    return getattr(tp, "__name__", str(tp))


def _expected(tp: Any, meta: Mapping[str, Any]) -> str:
    """What a value of field type ``tp`` must be, in words (``(or None)`` for an optional field)."""
    if meta.get("expected"):
        return meta["expected"]
    inner, optional = _split_optional(tp)
    return _words(inner, meta) + (" (or None)" if optional else "")


def type_name(tp: Any) -> str:
    """A field type as ``--help`` shows it: ``float``, ``{fp32,bf16}``, ``list[float]``, ``int | None``."""
    inner, optional = _split_optional(tp)
    if typing.get_origin(inner) is Literal:
        name = "{" + ",".join(str(arg) for arg in typing.get_args(inner)) + "}"
    elif _is_sequence(inner):
        name = f"list[{type_name(_item_type(inner))}]"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} | None" if optional else name


# ---------------------------------------------------------------------------------------------------------------
# validate


def _in_bounds(value: float, meta: Mapping[str, Any]) -> bool:
    gt, ge, lt, le = (meta.get(name) for name in ("gt", "ge", "lt", "le"))
    return (
        (gt is None or value > gt)
        and (ge is None or value >= ge)
        and (lt is None or value < lt)
        and (le is None or value <= le)
    )


def _ok(value: Any, tp: Any, meta: Mapping[str, Any]) -> bool:
    """Whether a scalar ``value`` has type ``tp`` (not optional, not a list) and meets the constraints."""
    if typing.get_origin(tp) is Literal:
        return any(value == arg and type(value) is type(arg) for arg in typing.get_args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp in (int, float):
        number = int if tp is int else int | float
        if isinstance(value, bool) or not isinstance(value, number):
            return False
        return math.isfinite(value) and _in_bounds(value, meta)
    if tp is str:
        if not isinstance(value, str) or (meta.get("nonempty") and not value.strip()):
            return False
        return meta.get("pattern") is None or re.fullmatch(meta["pattern"], value) is not None
    if _is_section(tp):
        return isinstance(value, tp)
    return True


def _check_value(value: Any, tp: Any, meta: Mapping[str, Any], path: str) -> None:
    """Check one field's value against its type and constraints."""
    inner, optional = _split_optional(tp)
    if value is None and optional:
        return
    if not _is_sequence(inner):
        if not _ok(value, inner, meta):
            raise ConfigError(f"must be {_expected(tp, meta)}, got {value!r}", path)
    elif not isinstance(value, list | tuple):
        raise ConfigError(f"must be {_expected(tp, meta)}, got {value!r}", path)
    elif meta.get("nonempty") and not value:
        raise ConfigError(f"must not be empty (expected a non-empty {_words(inner, meta)[2:]}), got {value!r}", path)
    else:
        item_tp = _item_type(inner)
        for item in value:
            if not _ok(item, item_tp, meta):
                raise ConfigError(f"must contain {_words(item_tp, meta, plural=True)}, got {item!r}", path)
        if meta.get("unique") and len(set(value)) != len(value):
            raise ConfigError(f"has duplicates: {list(value)}", path)
    if meta.get("check") is not None and not meta["check"](value):
        raise ConfigError(f"must be {_expected(tp, meta)}, got {value!r}", path)


def _validate(obj: Any, prefix: str) -> None:
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        path = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        _check_value(value, hints[f.name], f.metadata, path)
        if dataclasses.is_dataclass(value):
            _validate(value, path)
    hook = getattr(obj, "_check", None)
    if hook is not None:
        try:
            hook()
        except ConfigError as err:
            raise err.under(prefix) from None


def validate(obj: Any, *, label: str = "") -> None:
    """Check every field of a (nested) config dataclass, then each object's ``_check()`` cross-field rules.

    Args:
        obj: A dataclass instance whose fields were declared with :func:`option` (plain fields are type-checked).
        label: Name shown before the field path when ``obj`` stands alone (e.g. ``"divergence"``); a config built
            inside a larger one is named by its path there instead.

    Raises:
        ConfigError: Naming the dotted field, the bad value and what is expected.
    """
    try:
        _validate(obj, "")
    except ConfigError as err:
        if label and err.field:
            raise ConfigError(err.text, err.field, label) from None
        raise
