"""A trial's status at a shorter horizon, read from the recorded reports of a longer trial of the same cell.

With a constant learning-rate schedule a trial's first steps do not depend on how many it is given (the data order,
the optimizer and the evaluations are the same), so a trial planned for ``max_steps`` (extended by up to
``extend_until_settled`` while its verdict is unsettled, stopped from ``min_steps`` once it settles) would have
reported exactly the longer trial's reports up to the step where it stops. :func:`status_at_horizon` finds that step
with the trial's own rules (:func:`trainers.verdicts.stops_at`, the divergence monitor) and applies
:func:`sweep.trials.rows.trial_status` to the reports up to it: one long run answers both horizons of
``bench/horizon.py``, and recorded runs test the verdict rules at any horizon without training.
"""

from __future__ import annotations

import pandas as pd

from trainers.collapse import DivergenceConfig
from trainers.protocol import HELD_OUT_ACCURACY, ReportKey, ReportType, TrialStatus
from trainers.verdicts import VerdictConfig, judge_behaviour, stops_at

from .rows import replay_verdict, trial_status


def status_at_horizon(
    history: pd.DataFrame,
    *,
    max_steps: int,
    extend_until_settled: int,
    min_steps: int | None,
    n_pairs: int,
    verdicts: VerdictConfig,
    divergence: DivergenceConfig,
) -> tuple[TrialStatus, str | None, int]:
    """The status a trial of ``max_steps`` would have ended with, from a longer trial's reports.

    Args:
        history: The longer trial's reports (Tune's ``metrics_dataframe`` or the same columns): ``step``,
            ``report/type`` and the metrics; a constant learning-rate schedule, evaluated at every step the shorter
            trial evaluates (``max_steps`` among them).
        max_steps: The shorter trial's planned steps.
        extend_until_settled: Its extension budget.
        min_steps: The first step a settled verdict may stop it at (``None``: ``max_steps``).
        n_pairs: Held-out pairs per evaluation.
        verdicts: Verdict thresholds.
        divergence: Divergence thresholds.

    Returns:
        ``(status, reason, step)``: the shorter trial's status and reason, and the step it ends at.

    Raises:
        ValueError: When the longer trial does not cover the shorter one: it ended (without diverging) before the
            step the shorter one would stop at, or has no evaluation at ``max_steps``.
    """
    reports = history[history[ReportKey.REPORT_TYPE] != ReportType.FINAL].sort_values(ReportKey.STEP, kind="stable")
    evals = reports[(reports[ReportKey.REPORT_TYPE] == ReportType.EVAL) & reports[HELD_OUT_ACCURACY].notna()]
    records = evals.to_dict("records")
    end = max_steps + extend_until_settled
    first = min_steps if min_steps is not None else max_steps
    for i, record in enumerate(records):
        step = int(record[ReportKey.STEP])
        if first <= step <= end and stops_at(records[: i + 1], n_pairs, verdicts):
            end = step
            break
    verdict = replay_verdict(reports[reports[ReportKey.STEP] <= end], divergence)
    if verdict.diverged:
        status, reason = trial_status(verdict, None, {ReportKey.STEP: verdict.step}, None)
        return status, reason, int(verdict.step)
    if max_steps not in set(evals[ReportKey.STEP]):
        raise ValueError(
            f"the recorded trial has no held-out evaluation at step {max_steps}, where a trial of {max_steps} steps "
            "is always evaluated"
        )
    if int(reports[ReportKey.STEP].max()) < end:
        raise ValueError(
            f"the recorded trial ends at step {int(reports[ReportKey.STEP].max())}, before step {end} where the "
            "shorter one would"
        )
    judged = [r for r in records if int(r[ReportKey.STEP]) <= end]
    last = {ReportKey.STEP: end, ReportKey.FINAL: True, ReportKey.EVAL_PAIRS: n_pairs}
    status, reason = trial_status(verdict, judge_behaviour(judged, n_pairs, verdicts), last, None)
    return status, reason, end
