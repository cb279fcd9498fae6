"""Experiment tracking settings: the MLflow store a sweep logs to."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from trainers.typed_config import ConfigError, option, validate


@dataclass
class MLflowConfig:
    """Experiment tracking: one parent run per sweep, one nested run per trial."""

    enabled: bool = option(True, help="Log to MLflow.")
    tracking_uri: str | None = option(
        None,
        help="``null``: a SQLite store ``mlflow.db`` in the working directory (``mlflow ui`` browses it); or "
        "``http://host:port`` of a tracking server. Credentials come only from the environment "
        "(``MLFLOW_TRACKING_TOKEN`` / ``MLFLOW_TRACKING_USERNAME`` + ``_PASSWORD``), never from here.",
    )
    experiment: str = option("dlrml-sweep", nonempty=True, help="MLflow experiment name.")

    def __post_init__(self) -> None:
        validate(self, label="mlflow")

    def _check(self) -> None:
        uri = self.tracking_uri
        if uri is None:
            return
        if not re.match(r"^(https?|sqlite|file|postgresql|mysql|databricks)(:|\+)", uri) and not uri.startswith("/"):
            raise ConfigError(
                f"{uri!r} is not a tracking URI (expected http(s)://host:port, sqlite:///path, file:///path or a "
                "database URI)",
                "tracking_uri",
            )
        if re.match(r"^https?://[^/]*@", uri):
            raise ConfigError(
                "must not embed credentials; set MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN in the "
                "environment instead",
                "tracking_uri",
            )

    def resolved_uri(self) -> str:
        """The tracking URI to use (the SQLite default resolved against the working directory)."""
        return self.tracking_uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
