"""Helpers the sweep benchmarks share: run ``sweep/run.py`` in a fresh process and read its Tune results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}


def load_average() -> list[float]:
    """The 1/5/15-minute load averages (``uptime``), rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def run_logged(command: list[str], log_path: Path) -> tuple[float, float]:
    """Run ``command`` from the repo root with output to ``log_path``.

    Returns:
        ``(launch_epoch_s, wall_s)``: when it was launched (``time.time()``) and how long it ran.

    Raises:
        RuntimeError: With the log's tail, if the command fails.
    """
    launched, started = time.time(), time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CHILD_ENV}, cwd=ROOT)
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {code}):\n{log_path.read_text()[-4000:]}")
    return launched, wall


def sweep_command(name: str, storage: Path, overrides: list[str], config: str = "smoke") -> list[str]:
    """``python sweep/run.py --config CONFIG --no-mlflow`` with the bench's storage and overrides."""
    return [
        sys.executable,
        str(ROOT / "sweep" / "run.py"),
        "--config",
        config,
        "--no-mlflow",
        "--name",
        name,
        f"storage_path={storage}",
        *overrides,
    ]


def tune_results(storage: Path, name: str) -> list[dict]:
    """Every result row Tune wrote for the experiment (``<storage>/<name>/*/result.json``, one JSON per line)."""
    rows = []
    for path in sorted((storage / name).glob("*/result.json")):
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append({**json.loads(line), "_trial_dir": path.parent.name})
    return rows


def trials_table(storage: Path, name: str) -> pd.DataFrame:
    """The sweep's ``map/trials.csv``."""
    return pd.read_csv(storage / name / "map" / "trials.csv")
