"""One config mechanism: typed dataclass fields declared with :func:`option`, checked by :func:`validate`.

A config is a tree of dataclasses. Each field carries its type annotation (``int``, ``float``, ``bool``, ``str``,
``Literal[...]`` enumerations, ``X | None``, ``list[X]`` / ``tuple[X, ...]``, nested config dataclasses) and, in its
metadata, a help text and constraints. From that one declaration come

* :func:`validate`: type and constraint checks, then each class's own ``_check()`` for cross-field rules, raising
  :class:`ConfigError` naming the dotted field, the bad value and what was expected;
* :func:`build`: a config from nested plain data (YAML, JSON), minimally coerced, unknown keys refused;
* :func:`apply_overrides`: ``dotted.key=value`` overrides, values parsed as YAML;
* :func:`fields_help`: ``--help`` text listing every field with its type, default and help;
* :func:`add_config_arguments` / :func:`overrides_from_args`: CLI flags, short aliases of fields and ``--set``.

Config classes call ``validate(self)`` from ``__post_init__``, so a config object is valid however it was made.
This module imports nothing from the project: every layer may use it.
"""

from trainers.typed_config.cli import (
    OVERRIDES_DEST,
    FieldDoc,
    add_config_arguments,
    config_parser,
    field_docs,
    fields_help,
    overrides_from_args,
)
from trainers.typed_config.fields import ConfigError, option, type_name, validate
from trainers.typed_config.loading import Override, apply_overrides, build, field_at, to_dict

__all__ = [
    "OVERRIDES_DEST",
    "ConfigError",
    "FieldDoc",
    "Override",
    "add_config_arguments",
    "config_parser",
    "apply_overrides",
    "build",
    "field_at",
    "field_docs",
    "fields_help",
    "option",
    "overrides_from_args",
    "to_dict",
    "type_name",
    "validate",
]
