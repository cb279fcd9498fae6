"""What a trial's MLflow run says about its verdict, in the words of :mod:`trainers.protocol`: numbers a chart can
plot and the run's description.

A trial's verdict is a tag (``verdict``), which MLflow's charts cannot plot, so it is also logged as numbers:
``final/failed`` and ``final/unstable`` (0/1, :class:`~trainers.protocol.Failure`; absent for a trial without a
verdict, which is neither) and ``final/verdict_code`` (:attr:`~trainers.protocol.TrialStatus.code`, always).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainers.protocol import Failure, TrialStatus

VERDICT_CODE = "verdict_code"
"""Summary key of :attr:`TrialStatus.code` (logged as ``final/verdict_code``)."""


def verdict_metrics(status: str) -> dict[str, float]:
    """A trial's verdict as summary numbers (logged as ``final/<key>``): its code, and 0/1 per failure category
    where it has a verdict."""
    trial_status = TrialStatus(status)
    metrics = {VERDICT_CODE: float(trial_status.code)}
    if trial_status.has_verdict:
        metrics |= {category.value: float(category.includes(trial_status)) for category in Failure}
    return metrics


def verdict_codes() -> str:
    """The mapping of ``final/verdict_code``, e.g. ``0 stable, 1 stalled, ...``."""
    return ", ".join(f"{status.code} {status.value}" for status in TrialStatus)


def verdict_words(status: str) -> str:
    """Which failure categories a status falls in, e.g. ``failed, not unstable`` or ``no verdict``."""
    trial_status = TrialStatus(status)
    if not trial_status.has_verdict:
        return "no verdict: neither stable nor failed"
    return ", ".join(
        category.value if category.includes(trial_status) else f"not {category.value}" for category in Failure
    )


def trial_note(status: str, reason: str | None, summary: Mapping[str, Any] | None = None) -> str:
    """A trial run's description (markdown): the verdict, its failure categories, the full reason, the key numbers.

    Args:
        status: A :class:`~trainers.protocol.TrialStatus` value.
        reason: Why (the metric, value, threshold and step), or ``None``.
        summary: The trial's closing numbers (``steps``, ``attempts``, ``eval_accuracy``, ...), if known.
    """
    lines = [f"**{status}** ({verdict_words(status)})", ""]
    if reason or status != TrialStatus.STABLE:  # a stable trial needs no reason: it learned
        lines += [reason or "no reason recorded", ""]
    summary = summary or {}
    facts = []
    if "eval_accuracy" in summary:
        facts.append(f"held-out accuracy {summary['eval_accuracy']:.3f}")
    if "chosen_logps_drift" in summary:
        facts.append(f"chosen log-prob drift {summary['chosen_logps_drift']:+.3f} nats/token")
    if "steps" in summary:
        facts.append(f"{int(summary['steps'])} steps")
    if "attempts" in summary:
        facts.append(f"attempt {int(summary['attempts'])}")
    if facts:
        lines += ["; ".join(facts), ""]
    lines.append(" · ".join(category.meaning for category in Failure))
    return "\n".join(lines)


def experiment_description(experiment: str) -> str:
    """The experiment's description (markdown, shown above its runs): what the runs are and how to read them."""
    return "\n".join(
        [
            f"**{experiment}**: stability sweeps of DPO-family losses (dlrml-sweep). One parent run per sweep (its "
            "description: the cell verdict table and the claims; `config.yaml` and the stability map as "
            "artifacts), one nested run per trial (its description: the verdict and its full reason).",
            "",
            "Open a sweep's saved view from **Views** (`<sweep>: stability`): its trials grouped by verdict and, in "
            "the chart view, parallel-coordinates charts of loss, beta_kl, beta_mix, held-out accuracy and failure.",
            "",
            f"Per trial: `final/{Failure.FAILED.value}` ({Failure.FAILED.meaning}) and "
            f"`final/{Failure.UNSTABLE.value}` ({Failure.UNSTABLE.meaning}), 0/1, absent for a trial without a "
            f"verdict; `final/{VERDICT_CODE}` ({verdict_codes()}); the `verdict` tag. MLflow's own run status "
            "(Finished, Killed, Failed) only says how the trial's process ended.",
        ]
    )
