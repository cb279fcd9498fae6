"""A sweep run as a Ray job writes where its user finds it again, not into Ray's temporary copy of the working dir.

``ray job submit --working-dir . -- python sweep/run.py ...`` runs the driver in a copy of the uploaded directory,
``<ray session>/runtime_resources/working_dir_files/_ray_pkg_<hash>/``, which Ray deletes with its session (or
sooner, when it garbage-collects unused packages). A relative ``storage_path`` (the shipped default
``sweep_results``), ``output_dir`` or the default MLflow store (``mlflow.db`` in the working directory) would put the
sweep's results there. :func:`outside_job_dir` resolves each such relative path against the driver's home directory
instead (``~/sweep_results``, ``~/mlflow.db``: on a ``ray up`` cluster the head node's), as Ray Tune does with its own
default ``~/ray_results``; absolute paths, URLs and ``s3://`` storage are left as they are. Inputs (data files,
configs) stay relative to the uploaded copy, where the user put them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sweep.config import SweepConfig

JOB_DIR_PARENT = "working_dir_files"
"""The directory under a Ray session's ``runtime_resources`` that holds jobs' working-dir copies."""
JOB_DIR_PREFIX = "_ray_pkg_"
"""The name prefix of one job's copy of its working dir."""
SQLITE = "sqlite:///"


def job_working_dir(cwd: Path | None = None) -> Path | None:
    """Ray's temporary copy of a job's working dir that ``cwd`` (default: the current directory) lies in, if any."""
    here = (cwd or Path.cwd()).resolve()
    for path in (here, *here.parents):
        if path.name.startswith(JOB_DIR_PREFIX) and path.parent.name == JOB_DIR_PARENT:
            return path
    return None


def outside_job_dir(
    config: SweepConfig, cwd: Path | None = None, home: Path | None = None
) -> tuple[SweepConfig, str | None]:
    """The config with every relative output path resolved against ``home`` when the driver runs in a Ray job's
    temporary working dir.

    Args:
        config: The validated sweep config.
        cwd: The driver's working directory (default: the current one).
        home: Where the moved paths go (default: the driver's home directory).

    Returns:
        The config (unchanged outside a job, or with nothing to move) and one line naming the new places, or ``None``.
    """
    package = job_working_dir(cwd)
    if package is None:
        return config, None
    home = (home or Path.home()).resolve()

    def persistent(path: str) -> str:
        local = Path(path).expanduser()
        if "://" in path or local.is_absolute():  # s3://, gs://, or a place the user chose
            return path
        return str((home / local).resolve())

    changed = {"storage_path": persistent(config.storage_path)}
    if config.output_dir is not None:
        changed["output_dir"] = persistent(config.output_dir)
    uri = config.mlflow.tracking_uri
    if config.mlflow.enabled and (uri is None or uri.startswith(SQLITE)):
        database = "mlflow.db" if uri is None else uri.removeprefix(SQLITE)  # relative, or /absolute
        changed["mlflow.tracking_uri"] = SQLITE + persistent(database)  # sqlite:////abs/path for an absolute one
    current = {"storage_path": config.storage_path, "output_dir": config.output_dir, "mlflow.tracking_uri": uri}
    changed = {key: value for key, value in changed.items() if value != current[key]}
    if not changed:
        return config, None
    config = dataclasses.replace(
        config,
        storage_path=changed.get("storage_path", config.storage_path),
        output_dir=changed.get("output_dir", config.output_dir),
        mlflow=dataclasses.replace(config.mlflow, tracking_uri=changed.get("mlflow.tracking_uri", uri)),
    )
    where = ", ".join(f"{key}={value}" for key, value in changed.items())
    return config, (
        f"running as a Ray job in Ray's temporary copy of the working dir ({package}), which Ray deletes: "
        f"results go under the home directory instead ({where})"
    )
