"""A finished Tune trial as one row of ``trials.csv``: its status, reason and numbers, from what it reported.

Pure functions of a trial's recorded results (its config, reported history, last result and error), so the status
rules are unit-tested on recorded result dicts without Ray, and a resumed sweep recomputes exactly the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from trainers.collapse import DivergenceConfig, DivergenceMonitor, Verdict
from trainers.protocol import HELD_OUT_ACCURACY, ReportKey, ReportType, TrialStatus


def trial_label(trial: Mapping[str, Any]) -> str:
    """Human-readable trial name, e.g. ``dlrml bkl=0.05 bmix=0.2 seed=0``."""
    loss = trial["loss"]
    mix = f" bmix={loss['beta_mix']:g}" if loss.get("beta_mix") is not None else ""
    return f"{loss['name']} bkl={loss['beta_kl']:g}{mix} seed={trial['seed']}"


def replay_verdict(history: pd.DataFrame | None, divergence: DivergenceConfig) -> Verdict:
    """The divergence verdict of a trial's reported training steps, with the rules the trial and the stopper apply.

    Recomputed from the history rather than taken from driver memory, so that a restarted driver agrees.

    Args:
        history: The trial's reports, one row each (Tune's ``metrics_dataframe``), or ``None``.
        divergence: The sweep's divergence thresholds.
    """
    monitor = DivergenceMonitor(divergence)
    if history is not None and ReportKey.STEP in history:
        if ReportKey.REPORT_TYPE in history:
            history = history[history[ReportKey.REPORT_TYPE] == ReportType.TRAIN]
        for record in history.sort_values(ReportKey.STEP, kind="stable").to_dict("records"):
            monitor.update(int(record[ReportKey.STEP]), record)
    return monitor.final()


def trial_status(
    verdict: Verdict, last: Mapping[str, Any], error: BaseException | None
) -> tuple[TrialStatus, str | None]:
    """A trial's status and the reason for it.

    An error wins (the trial never finished); then a divergence (a verdict even if ASHA stopped the trial at the
    same step); then the final report; a trial that ended without any of these was stopped by ASHA.

    Args:
        verdict: From :func:`replay_verdict`.
        last: The trial's last reported result.
        error: The error Tune recorded for it, if any.
    """
    if error is not None:
        return TrialStatus.ERRORED, _first_line(error)
    if verdict.diverged:
        kind = f" ({verdict.kind})" if verdict.kind else ""
        return TrialStatus.DIVERGED, f"{verdict.reason}{kind}"
    if last.get(ReportKey.FINAL):
        return TrialStatus.COMPLETED, None
    return TrialStatus.PRUNED, f"asha at step {_steps(last)}"


def trial_row(
    config: Mapping[str, Any],
    history: pd.DataFrame | None,
    last: Mapping[str, Any] | None,
    error: BaseException | None,
    *,
    trial_id: str,
    divergence: DivergenceConfig,
    attempts: int,
) -> dict[str, Any]:
    """One row of ``trials.csv`` (plus the trial's ``config``) for a finished Tune trial.

    Args:
        config: The trial's Tune config (``{"trial": {"loss": ..., "seed": ...}, ...}``).
        history: Its reports (Tune's ``metrics_dataframe``).
        last: Its last result (Tune's ``Result.metrics``).
        error: Its error, if it failed.
        trial_id: Tune's trial id.
        divergence: The sweep's divergence thresholds.
        attempts: How many times the trial was started.
    """
    last = last or {}
    trial, loss = config["trial"], config["trial"]["loss"]
    verdict = replay_verdict(history, divergence)
    status, reason = trial_status(verdict, last, error)
    return {
        "trial_id": trial_id,
        "loss": loss["name"],
        "beta_kl": loss["beta_kl"],
        "beta_mix": loss["beta_mix"] if loss["beta_mix"] is not None else math.nan,
        "seed": trial["seed"],
        "status": status.value,
        "reason": reason,
        "diverged_step": verdict.step if verdict.diverged else math.nan,
        "steps": _steps(last),
        "attempts": attempts,
        "eval_accuracy": _last_value(history, HELD_OUT_ACCURACY),
        "config": config,
    }


def _steps(last: Mapping[str, Any]) -> int:
    return int(last.get(ReportKey.STEP, 0) or 0)


def _last_value(history: pd.DataFrame | None, column: str) -> float:
    if history is None or column not in history:
        return math.nan
    values = history[column].dropna()
    return float(values.iloc[-1]) if len(values) else math.nan


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"[:500]
