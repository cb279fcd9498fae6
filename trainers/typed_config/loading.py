"""Config data: :func:`build` a config from nested plain data, :func:`apply_overrides`, :func:`to_dict`."""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from trainers.typed_config.fields import ConfigError, _hints, _is_section, _is_sequence, _item_type, _split_optional

Override = str | tuple[str, Any]
"""A ``"dotted.key=value"`` string (value parsed as YAML) or a ``(dotted.key, value)`` pair (value as is)."""

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Minimal coercion of plain data towards a field type; :func:`validate` judges the result."""
    inner, _ = _split_optional(tp)
    if _is_section(inner) and not isinstance(value, inner) and not (value is None and inner is not tp):
        return build(inner, value, path)
    if _is_sequence(inner) and isinstance(value, list | tuple):
        items = [_coerce(item, _item_type(inner), path) for item in value]
        return items if typing.get_origin(inner) is list else tuple(items)
    if inner is float and isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string; so is a CLI value
        try:
            return float(value)
        except ValueError:
            return value
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def build(cls: type, data: Mapping[str, Any] | None, prefix: str = "") -> Any:
    """Construct config dataclass ``cls`` from nested plain data, refusing unknown keys.

    Args:
        cls: The config dataclass.
        data: Field values; sections as nested mappings (``None``: all defaults). Numbers given for float fields
            become floats, also from strings such as ``"1e-5"``; lists become tuples for tuple fields.
        prefix: Dotted path of ``cls`` in the whole config, for error messages.

    Returns:
        The validated config.

    Raises:
        ConfigError: Naming the unknown key, or the field and value that is wrong.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"must be a mapping of fields, got {data!r}", prefix or "config")
    names = [f.name for f in dataclasses.fields(cls)]
    where = f"{prefix}." if prefix else ""
    unknown = sorted(str(key) for key in data if key not in names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {[where + k for k in unknown]}; valid keys under {prefix or 'config'}: {names}"
        )
    hints = _hints(cls)
    kwargs = {key: _coerce(value, hints[key], f"{where}{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.under(prefix) from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f": {err}", prefix or "config") from None


def field_at(cls: type, key: str) -> tuple[dataclasses.Field, Any]:
    """The field at dotted ``key`` of config class ``cls`` and its type.

    Raises:
        ConfigError: If there is no such field, listing the valid keys where the path went wrong.
    """
    node: Any = cls
    parts = key.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i])
        if not _is_section(node):
            raise ConfigError(f"unknown key {key!r}: {where!r} is a field, not a section")
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            raise ConfigError(f"unknown key {key!r}; valid keys under {where or 'config'}: {list(fields)}")
        found, tp = fields[part], _hints(node)[part]
        node = _split_optional(tp)[0]
    return found, tp


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. section.field=[0,1,2])")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not _KEY.fullmatch(key):
        raise ConfigError(f"override key {key!r} is not a dotted field name")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from None


def apply_overrides(data: dict, overrides: Sequence[Override], cls: type | None = None) -> dict:
    """Apply overrides, in order, to nested plain data in place (missing sections are created).

    Args:
        data: The nested dict (e.g. a loaded YAML file).
        overrides: ``"dotted.key=value"`` strings (value parsed as YAML; empty means null) or ``(key, value)``.
        cls: The config class, to refuse a key it does not have right away (else :func:`build` does).

    Returns:
        ``data``.

    Raises:
        ConfigError: For a malformed override or, with ``cls``, an unknown key.
    """
    for override in overrides:
        key, value = _parse_override(override) if isinstance(override, str) else override
        if cls is not None:
            field_at(cls, key)
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {override!r}: {part!r} is not a section")
            node = node[part]
        node[leaf] = value
    return data


def to_dict(obj: Any) -> dict:
    """The config as plain nested data (YAML/JSON-serialisable); :func:`build` turns it back into the config."""
    return dataclasses.asdict(obj)
