"""What a sweep records in MLflow besides the trials' own reports: trial and parent params, the parent run's name and
descriptions (the grid at the start; the cell verdict table and the claims at the end), each trial's closing summary
and the per-trial numbers that only its whole history gives."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweep.columns import AlpacaColumn, MTBenchColumn
from sweep.config import SweepConfig
from sweep.stability.map import StabilityMap
from sweep.stability.table import format_beta
from sweep.trials.rows import after_start
from trainers.losses import get_loss
from trainers.protocol import Failure, Metric, ReportKey, ReportType, TrialStatus

CHOSEN_DRIFT = "chosen_logps_drift"
"""``trials.csv`` column and ``final/`` metric: the held-out chosen log-prob drift per token at the trial's last
evaluation (nats per token; the evidence of likelihood collapse)."""
NAN_STEP_FRACTION = "nan_step_fraction"
"""``trials.csv`` column and ``final/`` metric: the fraction of reported training steps with a non-finite loss or
gradient."""
SUMMARY_KEYS: tuple[str, ...] = (
    "reason",
    "steps",
    "attempts",
    "diverged_step",
    "eval_accuracy",
    CHOSEN_DRIFT,
    NAN_STEP_FRACTION,
    MTBenchColumn.SCORE,
    MTBenchColumn.REASON,
    AlpacaColumn.LC,
    AlpacaColumn.WIN_RATE,
    AlpacaColumn.REASON,
)
"""``trials.csv`` columns logged on a trial's run at the end: numbers as ``final/<key>``, text as ``dlrml.<key>``."""


def effective_beta_mix(loss: dict[str, Any]) -> float | None:
    """The ``beta_mix`` a trial's loss uses: its own for dLRML, ``beta_kl`` for DiscoPOP (which ties the two), and
    ``None`` for a loss without a mixing sigmoid."""
    spec = get_loss(loss["name"])
    if spec.uses_beta_mix:
        return loss["beta_mix"]
    return loss["beta_kl"] if spec.is_lrml_family else None


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """The MLflow params of a trial's nested run: every value a number or a word a chart can use (``beta_mix`` and
    ``tau`` only for losses that have them), and the betas' base-10 logarithms for log-spaced axes."""
    trial, train = config["trial"], config["train"]
    loss = trial["loss"]
    beta_mix = effective_beta_mix(loss)
    params: dict[str, Any] = {
        "loss": loss["name"],
        "form": loss.get("form", "stable"),
        "beta_kl": loss["beta_kl"],
        "log10_beta_kl": math.log10(loss["beta_kl"]),
    }
    if beta_mix is not None:
        params |= {"beta_mix": beta_mix, "log10_beta_mix": math.log10(beta_mix), "tau": loss["tau"]}
    return params | {
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


def parent_params(config: SweepConfig, n_trials: int) -> dict[str, Any]:
    """The few params of the parent run a user filters sweeps on (the whole config is its ``config.yaml``)."""
    grid, train = config.grid, config.train
    return {
        "name": config.name,
        "model": train.model,
        "data": train.data,
        "losses": ", ".join(grid.losses),
        "beta_kl": ", ".join(f"{b:g}" for b in grid.beta_kl),
        "beta_mix": ", ".join(f"{b:g}" for b in grid.beta_mix),
        "seeds": ", ".join(map(str, grid.seeds)),
        "learning_rate": train.learning_rate,
        "max_steps": train.max_steps,
        "search": config.search,
        "trials": n_trials,
    }


def parent_run_name(config: SweepConfig, n_trials: int) -> str:
    """The MLflow parent run's name, e.g. ``default: dpo, discopop, dlrml x beta_kl 0.05-1 (6 trials)``."""
    grid = config.grid
    betas = sorted(grid.beta_kl)
    span = f"{betas[0]:g}" if len(betas) == 1 else f"{betas[0]:g}-{betas[-1]:g}"
    return f"{config.name}: {', '.join(grid.losses)} x beta_kl {span} ({n_trials} trials)"


def describe_grid(config: SweepConfig, n_trials: int, total_steps: int) -> str:
    """The parent run's description while it runs (markdown): what the sweep maps and how."""
    grid, train = config.grid, config.train
    verdicts = " / ".join(status.value for status in TrialStatus if status.has_verdict)
    lines = [
        f"**{config.name}**: stability map of {', '.join(grid.losses)} on `{train.model}` / `{train.data}`.",
        "",
        f"- beta_kl: {', '.join(f'{b:g}' for b in grid.beta_kl)}",
        f"- beta_mix (LRML family): {', '.join(f'{b:g}' for b in grid.beta_mix) or '-'}",
        f"- forms (LRML family): {', '.join(grid.forms)}; seeds: {', '.join(map(str, grid.seeds))}",
        f"- {n_trials} trials x {total_steps} steps, lr {train.learning_rate:g}, "
        f"batch {train.per_device_batch_size} x {train.grad_accum}, {train.precision}",
        f'- verdicts per trial: {verdicts} (README "Verdicts"); {"; ".join(f.meaning for f in Failure)}',
        "- the full config: `config.yaml`; the map and claims.md: the `stability_map` artifacts",
    ]
    return "\n".join(lines)


def history_numbers(history: pd.DataFrame | None) -> dict[str, float]:
    """A trial's :data:`CHOSEN_DRIFT` and :data:`NAN_STEP_FRACTION` from its reports (Tune's ``metrics_dataframe``);
    NaN where it has no such reports."""
    numbers = {CHOSEN_DRIFT: math.nan, NAN_STEP_FRACTION: math.nan}
    if history is None or history.empty:
        return numbers
    drift = Metric.LOGPS_CHOSEN_DRIFT_PER_TOKEN.held_out
    if drift in history and ReportKey.STEP in history:
        values = after_start(history).sort_values(ReportKey.STEP, kind="stable")[drift].dropna()
        numbers[CHOSEN_DRIFT] = float(values.iloc[-1]) if len(values) else math.nan
    steps = history
    if ReportKey.REPORT_TYPE in history:
        steps = history[history[ReportKey.REPORT_TYPE] == ReportType.TRAIN]
    if Metric.LOSS in steps and len(steps):
        flagged = ~np.isfinite(steps[Metric.LOSS].astype(float))
        for column in (Metric.NAN_INF_LOSS, Metric.NAN_INF_GRAD):
            if column in steps:
                flagged |= steps[column].fillna(0) > 0
        numbers[NAN_STEP_FRACTION] = float(flagged.mean())
    return numbers


def _number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool) and math.isfinite(value)


def trial_summary(row: pd.Series) -> dict[str, Any]:
    """A trial's closing summary for its MLflow run: the :data:`SUMMARY_KEYS` it has, numbers finite (a run never
    gets a NaN placeholder for a value it does not have), text non-empty."""
    summary: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        value = row.get(key)
        if _number(value):
            summary[key] = float(value) if isinstance(value, float | np.floating) else int(value)
        elif isinstance(value, str) and value:
            summary[key] = value
    return summary


def _fraction(statuses: pd.Series, category: Failure) -> str:
    judged = [s for s in statuses if TrialStatus(s).has_verdict]
    return f"{sum(category.includes(s) for s in judged)}/{len(judged)}" if judged else "-"


def _mean(values: pd.Series, spec: str) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return format(values.mean(), spec) if len(values) else "-"


def verdict_table(trials: pd.DataFrame, cells: pd.DataFrame) -> str:
    """The measured cells as a markdown table: point, trial statuses, failed and unstable counts over the trials with
    a verdict, mean scores, the cell's verdict."""
    scores = [(c, label) for c, label in ((MTBenchColumn.SCORE, "MT-Bench"), (AlpacaColumn.LC, "AlpacaEval LC"))]
    scores = [(c, label) for c, label in scores if c in trials and trials[c].notna().any()]
    header = ["loss", "form", "beta_kl", "beta_mix", "trials", Failure.FAILED.value, Failure.UNSTABLE.value]
    header += ["accuracy", *(label for _, label in scores), "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    form = trials["form"].fillna("stable") if "form" in trials else pd.Series("stable", index=trials.index)
    for cell in cells.itertuples(index=False):
        if bool(getattr(cell, "inferred", False)):
            continue
        at = (trials["loss"] == cell.loss) & (form == cell.form) & _near(trials["beta_kl"], cell.beta_kl)
        group = trials[at & _near(trials["beta_mix"], cell.beta_mix)]
        statuses = group["status"]
        counts = ", ".join(f"{n} {s}" for s, n in statuses.value_counts().items())
        row = [cell.loss, cell.form, format_beta(cell.beta_kl), format_beta(cell.beta_mix), counts or "0"]
        row += [_fraction(statuses, Failure.FAILED), _fraction(statuses, Failure.UNSTABLE)]
        row += [_mean(group["eval_accuracy"], ".3f"), *(_mean(group[c], ".2f") for c, _ in scores)]
        row.append(f"**{cell.verdict}**")
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def _near(values: pd.Series, value: float) -> pd.Series:
    """Which values equal a grid value (YAML floats: with a tolerance; NaN, a missing beta_mix, matches NaN)."""
    values = pd.to_numeric(values, errors="coerce")
    if pd.isna(value):
        return values.isna()
    return pd.Series(np.isclose(values, value), index=values.index)


def claims_summary(claims: Path) -> str:
    """The head of ``claims.md``: its verdict line and claim | measured | verdict table (the details stay in the
    file)."""
    text = claims.read_text(encoding="utf-8")
    head = text.split("\n## ", 1)[0].strip().splitlines()
    return "\n".join(line for line in head if not line.startswith("# ")).strip()


def sweep_note(grid: str, trials: pd.DataFrame, stability: StabilityMap, claims: Path) -> str:
    """The parent run's description at the end (markdown): the grid, the cell verdict table, the claims."""
    return "\n\n".join(
        [
            grid,
            "### Cells\n\n" + verdict_table(trials, stability.cells),
            "### Claims (`stability_map/claims.md`)\n\n" + claims_summary(claims),
        ]
    )


def finish_tracker(tracker, trials: pd.DataFrame, stability: StabilityMap, claims: Path) -> int:
    """End every trial's MLflow run with its status and summary, log the map and describe the parent run with the
    verdict table and the claims; returns the MLflow calls left undelivered."""
    for _, row in trials.iterrows():
        tracker.finish_trial(row["trial_id"], row["config"], row["status"], trial_summary(row))
    tracker.log_artifacts([*stability.files, claims])
    tracker.describe_sweep(sweep_note(tracker.description or "", stability.trials, stability, claims))
    return tracker.close()
