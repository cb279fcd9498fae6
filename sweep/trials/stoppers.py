"""Ray Tune stopping and pruning for stability sweeps.

* :class:`DivergenceStopper` is a Ray ``Stopper`` ending a trial at its first divergence (non-finite loss or
  gradient, grad-norm explosion, loss explosion), with the same :class:`~trainers.collapse.DivergenceMonitor`
  rules the trial applies to itself, so both agree on the step and the reason.
* :class:`FiniteASHAScheduler` is ASHA that never mistakes a non-finite metric for a good one: Ray's ASHA compares
  ``NaN < cutoff`` as ``False`` and would keep such a trial; here it counts as the worst value. It also never prunes
  a trial at its last step, where stopping saves nothing.
* :class:`CellAwareASHA` is what a sweep uses when ASHA is on: one :class:`FiniteASHAScheduler` per loss and form,
  and the first seed of every cell never pruned, so that pruning can never leave a cell without a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.stopper import Stopper

from trainers.collapse import DivergenceConfig, DivergenceMonitor, Verdict


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
        verdict = monitor.update_report(result)
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


def cell_group(config: Mapping[str, object]) -> tuple[str, str]:
    """The ASHA comparison group of a trial: its loss and form (held-out accuracy is comparable only within one)."""
    loss = config["trial"]["loss"]
    return str(loss["name"]), str(loss.get("form", "stable"))


class CellAwareASHA(FIFOScheduler):
    """ASHA that never erases a cell's answer.

    * Trials are compared only within their loss and form (:func:`cell_group`): one
      :class:`FiniteASHAScheduler` per group, so a dLRML trial is never pruned for being behind DPO's.
    * A *protected* trial (by default the first seed of every cell) is never pruned, so every cell keeps at least
      one trial that trains to the end and carries a verdict; ASHA can only save the compute of extra seeds.

    Args:
        protected: Whether a trial (by its Tune config) must never be pruned.
        **asha_kwargs: :class:`FiniteASHAScheduler` arguments (``time_attr``, ``metric``, ``mode``, ...).
    """

    def __init__(self, *, protected: Callable[[Mapping[str, object]], bool], **asha_kwargs) -> None:
        super().__init__()
        self._asha_kwargs = asha_kwargs
        self._protected = protected
        self._groups: dict[tuple[str, str], FiniteASHAScheduler] = {}

    def _group(self, trial) -> FiniteASHAScheduler:
        key = cell_group(trial.config)
        if key not in self._groups:
            self._groups[key] = FiniteASHAScheduler(**self._asha_kwargs)
        return self._groups[key]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        """The metric and mode are fixed at construction."""
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        """Register the trial in its group's ASHA."""
        self._group(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        """Its group's ASHA decision, overridden to continue for a protected trial."""
        decision = self._group(trial).on_trial_result(tune_controller, trial, result)
        return self.CONTINUE if self._protected(trial.config) else decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        """Record a finished trial in its group's rungs."""
        self._group(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        """Forget a removed trial in its group."""
        self._group(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        """One line per comparison group."""
        return "\n".join(f"{'/'.join(key)}: {asha.debug_string()}" for key, asha in sorted(self._groups.items()))


def first_seed_protected(seeds: list[int]) -> Callable[[Mapping[str, object]], bool]:
    """Protects each cell's first (lowest) seed: the trial whose verdict the cell always has."""
    first = min(seeds)
    return lambda config: config["trial"]["seed"] == first
