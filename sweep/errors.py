"""The sweep's two failures that are the user's to fix, each with its exit code (``sweep/run.py``)."""

from __future__ import annotations


class SweepInputError(ValueError):
    """An input (config, model, data, resources, evaluation) cannot work; raised before any trial starts (exit 2)."""


class SweepOutputError(OSError):
    """The map, the claims or the MLflow spool could not be written after the trials ran (exit 1)."""
