"""The adaptive planner (:mod:`sweep.search.lattice`) as a Ray Tune ``Searcher`` for ``search: adaptive``.

``suggest`` hands Tune the planner's next trial as ``{"trial": {"loss": LossConfig fields, "seed": int}}`` -- one
entry of :meth:`sweep.driver.SweepDriver.grid`, which Tune merges into the driver's param space -- ``None`` while
the next trials depend on running ones, and ``Searcher.FINISHED`` once the planner is done.

A trial's status is computed as the driver computes it for ``trials.csv`` (:func:`trial_result_status`, with
:mod:`sweep.trials.rows`): ``on_trial_result`` keeps every report of the trial and ``on_trial_complete`` replays
them. A trial the divergence stopper ended has no final report, but its reports hold the diverging step, so the
replayed :class:`~trainers.collapse.DivergenceMonitor` calls it ``diverged``, exactly as ``trials.csv`` will; a
trial that errored is ``errored`` (no verdict: the planner gives its cell the next seed). The searcher never stops
or prunes a trial: the driver runs it with its divergence stopper and no scheduler.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune.search import Searcher

from sweep.config import SweepConfig
from sweep.search.lattice import AdaptivePlanner, TrialSpec
from sweep.trials.rows import replay_behaviour, replay_verdict, trial_status
from trainers.collapse import DivergenceConfig
from trainers.protocol import ReportKey, TrialStatus
from trainers.verdicts import VerdictConfig


class TrialErrored(RuntimeError):
    """Stands for the error Tune reports only as ``error=True`` to a searcher."""


def trial_result_status(
    history: Sequence[Mapping[str, Any]],
    last: Mapping[str, Any] | None,
    error: bool,
    divergence: DivergenceConfig,
    verdicts: VerdictConfig,
) -> TrialStatus:
    """A finished trial's status from its reports, by the rules of :func:`sweep.trials.rows.trial_status`.

    Args:
        history: Every result the trial reported, in order.
        last: The result Tune passed to ``on_trial_complete`` (``None`` after an error); appended to the history
            unless it is its last entry.
        error: Whether the trial errored.
        divergence: The sweep's divergence thresholds.
        verdicts: The sweep's verdict thresholds.
    """
    records = [dict(r) for r in history]
    if last is not None and (not records or not _same_report(records[-1], last)):
        records.append(dict(last))
    frame = pd.DataFrame(records) if records else None
    final = records[-1] if records else {}
    verdict = replay_verdict(frame, divergence)
    behaviour = replay_behaviour(frame, final, verdicts)
    status, _ = trial_status(verdict, behaviour, final, TrialErrored("trial errored") if error else None)
    return status


def _same_report(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("training_iteration", ReportKey.STEP.value, ReportKey.REPORT_TYPE.value)
    return all(a.get(k) == b.get(k) for k in keys)


class AdaptiveSearcher(Searcher):
    """Tune searcher running an :class:`~sweep.search.lattice.AdaptivePlanner` over the sweep's grid.

    Args:
        config: The sweep config (``grid``, ``adaptive``, ``train.divergence``, ``train.verdicts``).
        planner: A planner to continue (default: a new one for ``config``).
    """

    def __init__(self, config: SweepConfig, planner: AdaptivePlanner | None = None) -> None:
        super().__init__(metric=None, mode=None)
        self.planner = planner or AdaptivePlanner(config.adaptive, config.grid)
        self.divergence = config.train.divergence
        self.verdicts = config.train.verdicts
        self._trials: dict[str, TrialSpec] = {}
        self._history: dict[str, list[dict[str, Any]]] = {}

    @property
    def num_samples(self) -> int:
        """The most trials the planner will propose: what ``tune.TuneConfig(num_samples=...)`` should be."""
        return self.planner.max_trials

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next trial's config, ``None`` while waiting on running trials, ``Searcher.FINISHED`` when done."""
        if self.planner.done:
            return Searcher.FINISHED
        specs = self.planner.propose(1)
        if not specs:
            return None
        self._trials[trial_id] = specs[0]
        self._history[trial_id] = []
        return {"trial": self.planner.grid_entry(specs[0])}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Keep the report: the status is replayed from all of them when the trial ends."""
        if trial_id in self._history:
            self._history[trial_id].append(dict(result))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Record the trial's status (:func:`trial_result_status`) with the planner."""
        spec = self._trials.pop(trial_id, None)
        history = self._history.pop(trial_id, [])
        if spec is None:
            return
        self.planner.record(spec, trial_result_status(history, result, error, self.divergence, self.verdicts))

    def get_state(self) -> dict[str, Any]:
        """Everything a resumed sweep needs: the planner and the running trials' reports."""
        return {"planner": self.planner, "trials": self._trials, "history": self._history}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`get_state`. A trial still running then restarts from scratch on resume and reports
        again from its first step, so its kept reports are dropped."""
        self.planner, self._trials = state["planner"], state["trials"]
        self._history = {trial_id: [] for trial_id in self._trials}

    def save(self, checkpoint_path: str) -> None:
        """Pickle :meth:`get_state` (Tune calls this to checkpoint the experiment)."""
        Path(checkpoint_path).write_bytes(pickle.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        """Load what :meth:`save` wrote."""
        self.set_state(pickle.loads(Path(checkpoint_path).read_bytes()))
