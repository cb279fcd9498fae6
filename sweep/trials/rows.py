"""A finished Tune trial as one row of ``trials.csv``: its status, reason and numbers, from what it reported.

Pure functions of a trial's recorded results (its config, reported history, last result and error), so the status
rules are unit-tested on recorded result dicts without Ray, and a resumed sweep recomputes exactly the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from trainers.collapse import DivergenceConfig, DivergenceMonitor, Verdict
from trainers.protocol import HELD_OUT_ACCURACY, Metric, ReportKey, ReportType, TrialStatus
from trainers.verdicts import BehaviourVerdict, VerdictConfig, judge_behaviour


def trial_label(trial: Mapping[str, Any]) -> str:
    """Human-readable trial name, e.g. ``dlrml bkl=0.05 bmix=0.2 seed=0`` (``dlrml[literal] ...`` for that form)."""
    loss = trial["loss"]
    form = f"[{loss['form']}]" if loss.get("form", "stable") != "stable" else ""
    mix = f" bmix={loss['beta_mix']:g}" if loss.get("beta_mix") is not None else ""
    return f"{loss['name']}{form} bkl={loss['beta_kl']:g}{mix} seed={trial['seed']}"


def replay_verdict(history: pd.DataFrame | None, divergence: DivergenceConfig) -> Verdict:
    """The divergence verdict of a trial's reported training steps and held-out evaluations, with the rules the trial
    and the stopper apply.

    Recomputed from the history rather than taken from driver memory, so that a restarted driver agrees.

    Args:
        history: The trial's reports, one row each (Tune's ``metrics_dataframe``), or ``None``.
        divergence: The sweep's divergence thresholds.
    """
    monitor = DivergenceMonitor(divergence)
    if history is not None and ReportKey.STEP in history:
        for record in history.sort_values(ReportKey.STEP, kind="stable").to_dict("records"):
            monitor.update_report(record)
    return monitor.final()


def replay_behaviour(
    history: pd.DataFrame | None, last: Mapping[str, Any], verdicts: VerdictConfig
) -> BehaviourVerdict | None:
    """The behavioural verdict of a trial from its reported held-out evaluations, as the trial itself judged it.

    Args:
        history: The trial's reports (Tune's ``metrics_dataframe``), or ``None``.
        last: Its last result; the final report carries the number of held-out pairs.
        verdicts: The sweep's verdict thresholds.
    """
    if history is None or HELD_OUT_ACCURACY not in history or ReportKey.STEP not in history:
        return None
    evals = history[history[HELD_OUT_ACCURACY].notna()]
    if ReportKey.REPORT_TYPE in evals:
        # The final report repeats the last evaluation: read the evaluations themselves when there are any.
        kinds = evals[ReportKey.REPORT_TYPE]
        wanted = kinds == ReportType.EVAL if (kinds == ReportType.EVAL).any() else kinds != ReportType.TRAIN
        evals = evals[wanted]
    records = evals.sort_values(ReportKey.STEP, kind="stable").to_dict("records")
    return judge_behaviour(records, int(last.get(ReportKey.EVAL_PAIRS, 0) or 0), verdicts)


def trial_status(
    verdict: Verdict,
    behaviour: BehaviourVerdict | None,
    last: Mapping[str, Any],
    error: BaseException | None,
    *,
    asha_grace: int | None = None,
) -> tuple[TrialStatus, str | None]:
    """A trial's status and the reason for it.

    An error wins (the trial never finished); then a divergence (a verdict even if ASHA stopped the trial at the
    same step); then, for a trial with its final report, its behavioural verdict if settled, else ``unsettled``; a
    trial that ended without any of these was stopped by ASHA if ASHA was on and it had reached a rung, else it was
    interrupted.

    Args:
        verdict: From :func:`replay_verdict`.
        behaviour: From :func:`replay_behaviour`.
        last: The trial's last reported result.
        error: The error Tune recorded for it, if any.
        asha_grace: ASHA's grace period (its first rung) when the sweep prunes with ASHA, else ``None``.
    """
    if error is not None:
        return TrialStatus.ERRORED, _first_line(error)
    if verdict.diverged:
        kind = f" ({verdict.kind})" if verdict.kind else ""
        return TrialStatus.DIVERGED, f"{verdict.reason}{kind}"
    steps = _steps(last)
    if last.get(ReportKey.FINAL):
        if behaviour is None:
            return TrialStatus.COLLAPSED, "no finite held-out accuracy"
        reason = f"{behaviour.reason}: {behaviour.evidence.describe()}" if behaviour.evidence else None
        if not behaviour.settled:
            provisional = f"{behaviour.status} ({reason})" if reason else behaviour.status
            return TrialStatus.UNSETTLED, f"provisionally {provisional}; {behaviour.unsettled_because}"
        return TrialStatus(behaviour.status), reason
    if asha_grace is not None and steps >= asha_grace:
        return TrialStatus.PRUNED, f"asha at step {steps}"
    return TrialStatus.INTERRUPTED, f"ended at step {steps} without its final report (the sweep was stopped)"


def trial_row(
    config: Mapping[str, Any],
    history: pd.DataFrame | None,
    last: Mapping[str, Any] | None,
    error: BaseException | None,
    *,
    trial_id: str,
    divergence: DivergenceConfig,
    verdicts: VerdictConfig,
    attempts: int,
    asha_grace: int | None = None,
) -> dict[str, Any]:
    """One row of ``trials.csv`` (plus the trial's ``config``) for a finished Tune trial.

    Args:
        config: The trial's Tune config (``{"trial": {"loss": ..., "seed": ...}, ...}``).
        history: Its reports (Tune's ``metrics_dataframe``).
        last: Its last result (Tune's ``Result.metrics``).
        error: Its error, if it failed.
        trial_id: Tune's trial id.
        divergence: The sweep's divergence thresholds.
        verdicts: The sweep's verdict thresholds.
        attempts: How many times the trial was started.
        asha_grace: ASHA's first rung when the sweep prunes with ASHA (see :func:`trial_status`).
    """
    last = last or {}
    trial, loss = config["trial"], config["trial"]["loss"]
    verdict = replay_verdict(history, divergence)
    status, reason = trial_status(
        verdict, replay_behaviour(history, last, verdicts), last, error, asha_grace=asha_grace
    )
    return {
        "trial_id": trial_id,
        "loss": loss["name"],
        "form": loss.get("form", "stable"),
        "beta_kl": loss["beta_kl"],
        "beta_mix": loss["beta_mix"] if loss["beta_mix"] is not None else math.nan,
        "seed": trial["seed"],
        "status": status.value,
        "reason": reason,
        "diverged_step": verdict.step if verdict.diverged else math.nan,
        "divergence_kind": verdict.kind if verdict.diverged else None,
        "steps": _steps(last),
        "attempts": attempts,
        "eval_accuracy": _last_value(after_start(history), HELD_OUT_ACCURACY),
        **training_statistics(history),
        "config": config,
    }


def training_statistics(history: pd.DataFrame | None) -> dict[str, float]:
    """Per-trial statistics of its training steps: how many had a non-finite loss or gradient, and the largest and
    95th-percentile (pre-clip) gradient norm over the finite ones (the proposal's "safe range" of gradient norms)."""
    nan = {"nan_inf_steps": 0, "grad_norm_max": math.nan, "grad_norm_p95": math.nan}
    if history is None or ReportKey.STEP not in history:
        return nan
    steps = history[history[ReportKey.REPORT_TYPE] == ReportType.TRAIN] if ReportKey.REPORT_TYPE in history else history
    flagged = pd.Series(False, index=steps.index)
    for column in (Metric.NAN_INF_LOSS, Metric.NAN_INF_GRAD):
        if column in steps:
            flagged |= steps[column].fillna(0) > 0
    if Metric.LOSS in steps:
        flagged |= ~np.isfinite(steps[Metric.LOSS].astype(float))
    norms = steps[Metric.GRAD_NORM].astype(float) if Metric.GRAD_NORM in steps else pd.Series(dtype=float)
    norms = norms[np.isfinite(norms)]
    return {
        "nan_inf_steps": int(flagged.sum()),
        "grad_norm_max": float(norms.max()) if len(norms) else math.nan,
        "grad_norm_p95": float(norms.quantile(0.95)) if len(norms) else math.nan,
    }


def after_start(history: pd.DataFrame | None) -> pd.DataFrame | None:
    """The reports after the first step: the reference's own evaluation (step 0) starts a curve but is not the
    trial's result (a trial that diverged at its first step has no held-out accuracy of its own)."""
    if history is None or ReportKey.STEP not in history:
        return history
    return history[history[ReportKey.STEP] > 0]


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


def status_of_reports(
    results: list[Mapping[str, Any]],
    error: BaseException | None,
    divergence: DivergenceConfig,
    verdicts: VerdictConfig,
    asha_grace: int | None = None,
) -> tuple[TrialStatus, str | None]:
    """A trial's status and reason from the reports Tune received, as it ends (the driver later judges the same
    reports from Tune's results with the same rules).

    Args:
        results: The trial's reports in order (flat dicts, as Tune passes them to callbacks).
        error: The error Tune recorded if the trial failed (:func:`tune_trial_error`), else ``None``.
        divergence: The sweep's divergence rules.
        verdicts: The sweep's verdict thresholds.
        asha_grace: ASHA's first rung when the sweep prunes with ASHA (see :func:`trial_status`).
    """
    history = pd.DataFrame(results) if results else None
    last = results[-1] if results else {}
    verdict = replay_verdict(history, divergence)
    return trial_status(verdict, replay_behaviour(history, last, verdicts), last, error, asha_grace=asha_grace)


def tune_trial_error(trial) -> BaseException:
    """The error Tune recorded for a failed trial, as the driver's results will carry it (a placeholder if none)."""
    try:
        error = trial.get_pickled_error() or trial.get_error()
    except Exception:  # noqa: BLE001 - a stand-in trial or an unreadable error file: the status is errored anyway
        error = None
    if isinstance(error, BaseException):
        return error
    return RuntimeError(str(error).strip() if error else "trial errored (no error recorded)")
