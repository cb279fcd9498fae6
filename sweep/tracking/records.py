"""What a sweep records in MLflow besides the trials' own reports: trial params, the parent run's name and
description, each trial's closing summary and the per-cell metrics of the parent run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from sweep.columns import AlpacaColumn, MTBenchColumn
from sweep.config import SweepConfig
from sweep.stability.map import StabilityMap


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """The MLflow params of a trial's nested run."""
    trial, train = config["trial"], config["train"]
    loss = trial["loss"]
    return {
        "loss": loss["name"],
        "beta_kl": loss["beta_kl"],
        "beta_mix": loss["beta_mix"],
        "tau": loss["tau"],
        "form": loss.get("form", "stable"),
        "seed": trial["seed"],
        "learning_rate": train["learning_rate"],
        "model": train["model"],
        "data": train["data"],
        "per_device_batch_size": train["per_device_batch_size"],
        "grad_accum": train["grad_accum"],
        "max_steps": train["max_steps"],
        "epochs": train["epochs"],
        "precision": train["precision"],
        "max_length": train["max_length"],
        "num_workers": config["resources"]["num_workers"],
    }


def parent_run_name(config: SweepConfig, n_trials: int) -> str:
    """The MLflow parent run's name, e.g. ``default: dpo, discopop, dlrml x beta_kl 0.05-1 (6 trials)``."""
    grid = config.grid
    betas = sorted(grid.beta_kl)
    span = f"{betas[0]:g}" if len(betas) == 1 else f"{betas[0]:g}-{betas[-1]:g}"
    return f"{config.name}: {', '.join(grid.losses)} x beta_kl {span} ({n_trials} trials)"


def describe_grid(config: SweepConfig, n_trials: int, total_steps: int) -> str:
    """The parent run's description (markdown): what the sweep maps and how."""
    grid, train = config.grid, config.train
    lines = [
        f"**{config.name}**: stability map of {', '.join(grid.losses)} on `{train.model}` / `{train.data}`.",
        "",
        f"- beta_kl: {', '.join(f'{b:g}' for b in grid.beta_kl)}",
        f"- beta_mix (LRML family): {', '.join(f'{b:g}' for b in grid.beta_mix) or '-'}",
        f"- forms (LRML family): {', '.join(grid.forms)}; seeds: {', '.join(map(str, grid.seeds))}",
        f"- {n_trials} trials x {total_steps} steps, lr {train.learning_rate:g}, "
        f"batch {train.per_device_batch_size} x {train.grad_accum}, {train.precision}",
        '- verdicts per trial: stable / stalled / collapsed / diverged (README "Verdicts"); map and claims.md '
        "under the `stability_map` artifacts",
    ]
    return "\n".join(lines)


def finish_tracker(tracker, trials: pd.DataFrame, stability: StabilityMap, claims: Path) -> int:
    """End every trial's MLflow run with its status, log the map; returns the MLflow calls left undelivered."""
    keys = ("reason", "steps", "attempts", "diverged_step", "eval_accuracy", MTBenchColumn.SCORE, MTBenchColumn.REASON)
    keys += (AlpacaColumn.LC, AlpacaColumn.WIN_RATE, AlpacaColumn.REASON)
    for _, row in trials.iterrows():
        summary = {k: row[k] for k in keys if k in row}
        tracker.finish_trial(row["trial_id"], row["config"], row["status"], _clean(summary))
    tracker.log_artifacts([*stability.files, claims])
    tracker.log_parent_metrics(cell_metrics(stability.cells))
    return tracker.close()


def _clean(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


_CELL_METRICS = (
    ("failed_rate", "failed_rate"),
    ("eval_accuracy", "eval_accuracy_mean"),
    ("mt_bench", "mt_bench_mean"),
    ("alpaca_lc", "alpaca_lc_mean"),
)
"""(metric name, cell column) of the parent run's per-cell metrics."""


def cell_metrics(cells: pd.DataFrame) -> dict[str, float]:
    """The parent run's per-cell metrics; NaN results (no verdict, no score) are left out: MLflow's UI hides them."""
    metrics = {}
    for _, cell in cells.iterrows():
        form = "" if cell.get("form", "stable") == "stable" else f"_{cell['form']}"
        mix = "" if pd.isna(cell["beta_mix"]) else f"_bmix{cell['beta_mix']:g}"
        prefix = f"cell/{cell['loss']}{form}_bkl{cell['beta_kl']:g}{mix}"
        for name, column in _CELL_METRICS:
            if not pd.isna(cell.get(column, math.nan)):
                metrics[f"{prefix}/{name}"] = float(cell[column])
    return metrics
