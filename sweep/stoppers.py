"""Ray Tune stopping and pruning for stability sweeps.

* :class:`DivergenceStopper` is a Ray ``Stopper`` ending a trial at its first divergence (non-finite loss or
  gradient, grad-norm explosion, loss explosion), with the same :class:`~trainers.collapse.DivergenceMonitor`
  rules the trial applies to itself, so both agree on the step and the reason.
* :class:`FiniteASHAScheduler` is ASHA that never mistakes a non-finite metric for a good one: Ray's ASHA compares
  ``NaN < cutoff`` as ``False`` and would keep such a trial; here it counts as the worst value. It also never prunes
  a trial at its last step, where stopping saves nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ray.tune.schedulers import ASHAScheduler
from ray.tune.stopper import Stopper

from trainers.collapse import DivergenceConfig, DivergenceMonitor, Verdict
from trainers.protocol import ReportKey, ReportType


class DivergenceStopper(Stopper):
    """Stop a trial at its first divergence; remember each trial's verdict.

    Args:
        config: Divergence thresholds (the trial config's ``train.divergence``).
    """

    def __init__(self, config: DivergenceConfig | None = None) -> None:
        self.config = config or DivergenceConfig()
        self._monitors: dict[str, DivergenceMonitor] = {}

    def __call__(self, trial_id: str, result: Mapping[str, object]) -> bool:
        """Feed one result; ``True`` stops the trial (Ray's ``Stopper`` protocol)."""
        monitor = self._monitors.setdefault(trial_id, DivergenceMonitor(self.config))
        step = result.get(ReportKey.STEP)
        if step is None or result.get(ReportKey.REPORT_TYPE, ReportType.TRAIN) != ReportType.TRAIN:
            return False
        verdict = monitor.update(int(step), result)
        return verdict is not None and verdict.diverged

    def stop_all(self) -> bool:
        """A divergent trial never ends the sweep."""
        return False

    def verdict(self, trial_id: str) -> Verdict | None:
        """The divergence verdict the stopper reached for a trial, if any."""
        monitor = self._monitors.get(trial_id)
        return monitor.verdict if monitor else None


class FiniteASHAScheduler(ASHAScheduler):
    """ASHA (Li et al. 2020) on a bounded metric, with non-finite values ranked worst.

    Args:
        worst_value: The value a NaN/Inf metric is replaced with (for an accuracy in mode ``max``: 0).
        final_step: A trial's last step (``time_attr`` value), if known. A rung there (e.g. step 10 of 10 with a
            grace period of 5 and a reduction factor of 2) would stop a fully trained trial just before its final
            report, saving no compute and recording it as pruned; results at or past it are never pruned.
        **kwargs: ``ASHAScheduler`` arguments (``time_attr``, ``metric``, ``mode``, ``max_t``, ...).
    """

    def __init__(self, *, worst_value: float = 0.0, final_step: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.worst_value = worst_value
        self.final_step = final_step

    def _finite(self, result: dict) -> dict:
        value = result.get(self._metric)
        if value is None or math.isfinite(float(value)):
            return result
        return {**result, self._metric: self.worst_value}

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        """ASHA's decision on a result whose metric is made finite first; never a stop at the final step."""
        decision = super().on_trial_result(tune_controller, trial, self._finite(result))
        at_end = self.final_step is not None and result.get(self._time_attr, -math.inf) >= self.final_step
        return self.CONTINUE if at_end else decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        """Record a finished trial's (finite) metric in its rung."""
        super().on_trial_complete(tune_controller, trial, self._finite(result))
