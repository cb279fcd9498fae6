"""MLflow tracking of a sweep from the Tune driver: one parent run, one nested run per trial.

All MLflow traffic happens in the driver process (a Tune ``Callback``), so trial workers need neither network
access to the tracking server nor its credentials. Runs are found again by tags (``dlrml.sweep`` on the parent,
``dlrml.trial_id`` on each nested run), so a resumed sweep reuses them instead of creating duplicates.

One run per trial *attempt*, so every metric has exactly one point per step: when a trial starts again (Tune retries
it after a crash, ``resources.max_failures``, or a restarted driver runs it again on ``--resume``) and its run
already holds metric points, that run is tagged ``dlrml.superseded=true`` with its ``dlrml.attempt=<n>`` and ended
``KILLED``, and a fresh nested run (``dlrml.attempt=<n+1>``, the same ``dlrml.trial_id``) takes the new attempt's
history. This is decided from the run's data in MLflow, not from the tracker's memory, so it also holds after a
driver restart. "The trial's run" (summary, tags, MT-Bench scores) is always the one that is not superseded; a run
started but killed before it reported anything is simply reused.

A trial's nested run ends as soon as Tune ends the trial, with the status :mod:`sweep.trials.rows` gives its reported
results (so run durations are training times, not queue positions); at the end of the sweep the driver logs each
trial's final summary and authoritative status, which re-terminates a run only when its status changed.

If the tracking server is unreachable, training goes on: updates are queued, retried, spooled at the end of the sweep
and replayed by the next run of it (``--resume``), as :mod:`sweep.tracking.delivery` describes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

from sweep.tracking.delivery import MLflowDelivery
from sweep.tracking.runs import (
    SELECTED_TAG,
    SweepRuns,
    is_number,
)
from sweep.trials.rows import status_of_reports, tune_trial_error
from trainers.collapse import DivergenceConfig
from trainers.protocol import BOOKKEEPING_KEYS, ReportKey, ReportType
from trainers.verdicts import VerdictConfig

logger = logging.getLogger(__name__)


class MLflowTracker(MLflowDelivery, Callback):
    """Logs a sweep to MLflow and survives tracking outages (delivery:
    :class:`~sweep.tracking.delivery.MLflowDelivery`).

    Args:
        runs: The sweep's runs (URI, experiment, names, parameters).
        spool_path: File that keeps undelivered operations across driver restarts.
        retry_interval_s: Seconds between delivery attempts while the server is down.
        divergence: The sweep's divergence thresholds (``train.divergence``), to judge a trial when it ends.
        verdicts: The sweep's verdict thresholds (``train.verdicts``), to judge a trial when it ends.
        asha_grace: ASHA's first rung when the sweep prunes with ASHA (a trial ending without its final report after
            it was pruned, before it interrupted).
    """

    def __init__(
        self,
        runs: SweepRuns,
        spool_path: str | Path | None = None,
        retry_interval_s: float = 15.0,
        divergence: DivergenceConfig | None = None,
        verdicts: VerdictConfig | None = None,
        asha_grace: int | None = None,
    ) -> None:
        super().__init__(runs, spool_path=spool_path, retry_interval_s=retry_interval_s)
        self.divergence = divergence or DivergenceConfig()
        self.verdicts = verdicts or VerdictConfig()
        self.asha_grace = asha_grace
        self._results: dict[str, list[dict[str, Any]]] = {}
        """Each running trial's reported results (numbers only), to judge it when it ends."""

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks into the experiment state: keep settings, drop the client, queue and results."""
        state = super().__getstate__()
        state["_results"] = {}
        return state

    def start(self) -> None:
        """Replay spooled updates of an earlier run, then create (or find again) the parent run."""
        self._load_spool()
        self._submit({"op": "parent"})
        self.spool()

    # -- Tune callback hooks --------------------------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        """Create the trial's nested run and log its parameters; a trial that starts again after it reported
        metrics gets a fresh run for the new attempt (see the module docstring)."""
        config = trial.config
        self._results[trial.trial_id] = []  # a restarted trial is judged on its new attempt's history
        self._submit(
            {"op": "trial", "trial_id": trial.trial_id, "config": config, "timestamp": int(time.time() * 1000)}
        )

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        """Log one reported step's metrics (NaN/Inf included: they are the evidence of divergence).

        The final report repeats the last step's and evaluation's values (it exists to carry the verdict), so its
        metrics are not logged again: every metric has exactly one point per step.
        """
        step = int(result.get(ReportKey.STEP, 0))
        timestamp = int(time.time() * 1000)
        metrics = [
            (key, float(value), timestamp, step)
            for key, value in result.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and _is_metric(key)
        ]
        config = trial.config
        self._results.setdefault(trial.trial_id, []).append(
            {k: v for k, v in result.items() if isinstance(v, int | float | None)}
        )
        if result.get(ReportKey.REPORT_TYPE) != ReportType.FINAL:
            self._submit({"op": "metrics", "trial_id": trial.trial_id, "config": config, "metrics": metrics})

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """End the trial's nested run now, with the status its reported results give."""
        self._end(trial, error=None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """End the trial's nested run now as errored (Tune calls this once its retries are spent)."""
        self._end(trial, error=tune_trial_error(trial))

    def _end(self, trial, error: BaseException | None) -> None:
        """Judge a trial from its reported results (as the driver will) and queue the end of its run."""
        results = self._results.pop(trial.trial_id, None)
        if results is None:  # never started under this driver: its run ends with the sweep's summary
            return
        try:
            status, reason = status_of_reports(results, error, self.divergence, self.verdicts, self.asha_grace)
        except Exception as err:  # noqa: BLE001 - a judging bug must not stop the sweep: the summary ends the run
            logger.warning("could not judge trial %s as it ended (%s); its MLflow run ends with the sweep", trial, err)
            return
        self._submit(
            {
                "op": "end_trial",
                "trial_id": trial.trial_id,
                "config": trial.config,
                "status": status.value,
                "reason": reason,
                "timestamp": int(time.time() * 1000),
            }
        )

    # -- end of sweep ---------------------------------------------------------------------------------------------

    def finish_trial(self, trial_id: str, config: dict, status: str, summary: Mapping[str, Any]) -> None:
        """Log a trial's final summary and status on its nested run, and end the run if it has not ended yet.

        A run that :meth:`on_trial_complete` / :meth:`on_trial_error` already ended with the same MLflow status keeps
        its end time; one whose status changed (e.g. judged on a partial history after a resume) is re-terminated
        at its recorded end.

        Args:
            trial_id: Tune trial id.
            config: The trial's Tune config.
            status: A :class:`~trainers.protocol.TrialStatus` value (also the run's ``verdict`` tag).
            summary: Flat final values (reason, steps, held-out accuracy, MT-Bench...).
        """
        self._submit(
            {
                "op": "finish",
                "trial_id": trial_id,
                "config": config,
                "status": status,
                "summary": dict(summary),
                "timestamp": int(time.time() * 1000),
            }
        )

    def mark_selected(self, trial_id: str, config: dict, benchmark: str = "mt_bench") -> None:
        """Tag a trial's nested run as selected for a benchmark (``selected_for=mt_bench``).

        Args:
            trial_id: Tune trial id.
            config: The trial's Tune config.
            benchmark: The benchmark it was selected for.
        """
        self._submit({"op": "trial_tags", "trial_id": trial_id, "config": config, "tags": {SELECTED_TAG: benchmark}})

    def log_trial_metrics(self, trial_id: str, config: dict, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log extra metrics (e.g. MT-Bench scores) on a trial's nested run; NaN values are left out."""
        timestamp = int(time.time() * 1000)
        rows = [(k, float(v), timestamp, step) for k, v in metrics.items() if _is_value(v)]
        self._submit({"op": "metrics", "trial_id": trial_id, "config": config, "metrics": rows})

    def log_trial_artifacts(self, trial_id: str, config: dict, paths: Iterable[Path], artifact_path: str) -> None:
        """Upload files (e.g. MT-Bench answers and judgments) to a trial's nested run."""
        self._submit(
            {
                "op": "trial_artifacts",
                "trial_id": trial_id,
                "config": config,
                "paths": [str(p) for p in paths],
                "artifact_path": artifact_path,
            }
        )

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str | None = "stability_map") -> None:
        """Upload files (tables, heatmaps; ``artifact_path=None``: at the top) to the parent run."""
        self._submit({"op": "artifacts", "paths": [str(p) for p in paths], "artifact_path": artifact_path})

    def describe_sweep(self, text: str) -> None:
        """Set the parent run's description (markdown), e.g. the cell verdict table and the claims at the end."""
        self._submit({"op": "parent_note", "text": text})

    def close(self, status: str = "FINISHED") -> int:
        """Terminate the parent run, flush, spool what is left; returns the number of undelivered updates."""
        self._submit({"op": "close", "status": status}, force=True)
        return self.spool()


def _is_value(value: Any) -> bool:
    """A number MLflow's UI shows: summary metrics skip NaN (step metrics keep it, as evidence of divergence)."""
    return is_number(value) and not math.isnan(value)


_NOT_METRICS = frozenset(
    {
        "timestamp",
        "time_this_iter_s",
        "time_total_s",
        "pid",
        "training_iteration",
        "iterations_since_restore",
        *BOOKKEEPING_KEYS,
    }
)


def _is_metric(key: str) -> bool:
    return key not in _NOT_METRICS and not key.startswith(("config/", "time_since"))
