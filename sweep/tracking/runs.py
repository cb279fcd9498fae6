"""A sweep's MLflow runs and the client operations that write them: one parent run per sweep, one nested run per
trial attempt, found again by tags after a restart (:class:`RunOperations`). Every operation is plain data (a
JSON-ready ``{"op": ...}`` dict), so :class:`sweep.tracking.delivery.MLflowDelivery` can queue and spool it.

Summary metrics (a trial's ``final/*``, all at step 0) are idempotent: a key whose latest value on the run is already
the one being logged is skipped, so a replayed spool followed by the resumed sweep's own summary leaves one point per
key. A trial's verdict is logged as numbers and as the run's description (:mod:`sweep.tracking.summaries`) as soon as
its trial ends, and again (unchanged unless judged anew) with the sweep's summary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from sweep.tracking.summaries import trial_note, verdict_metrics
from trainers.protocol import TrialStatus

logger = logging.getLogger(__name__)

SWEEP_TAG = "dlrml.sweep"
TRIAL_TAG = "dlrml.trial_id"
ROLE_TAG = "dlrml.role"
"""``sweep`` on the parent run, ``trial`` on nested runs (both carry the sweep tag)."""
SUPERSEDED_TAG = "dlrml.superseded"
"""``true`` on a trial's nested run whose attempt was followed by another (a retry, or a restart after ``--resume``),
``false`` on its current run (MLflow's search never matches a run that lacks a tag, so both values are set)."""
ATTEMPT_TAG = "dlrml.attempt"
"""On a trial's nested run: which start of the trial it records (1, 2, ...; a run without it is attempt 1)."""
SELECTED_TAG = "selected_for"
"""On a trial's nested run: the benchmark the driver selected it for (``mt_bench``)."""
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"
"""The run's description, shown (as markdown) on its overview page (``mlflow.utils.mlflow_tags.MLFLOW_RUN_NOTE``)."""
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3's UI opens an experiment tagged ``mlflow.experimentKind=custom_model_development`` in its model-training
view rather than the GenAI one (``ExperimentKind.CUSTOM_MODEL_DEVELOPMENT`` in MLflow's
``mlflow/server/js/src/experiment-tracking/constants.ts``; the UI sets the same tag key when a user picks the kind)."""
_SECRET_MARKERS = ("key", "token", "secret", "password", "credential")


def scrub(params: Mapping[str, Any]) -> dict[str, str]:
    """Stringify params, dropping any whose name looks like a credential (only env-var *names* may pass).

    Args:
        params: Flat parameter mapping.

    Returns:
        MLflow-ready ``{name: value}`` strings (values truncated to MLflow's 6000-character limit).
    """
    clean = {}
    for key, value in params.items():
        lowered = key.lower()
        if any(marker in lowered for marker in _SECRET_MARKERS) and not lowered.endswith("_env"):
            continue
        clean[key] = str(value)[:6000]
    return clean


@dataclass(frozen=True)
class SweepRuns:
    """What a sweep's MLflow runs are: where they go, how they are named, which parameters they carry.

    Attributes:
        tracking_uri: MLflow tracking URI.
        experiment: Experiment name.
        sweep_name: The sweep's name (the ``dlrml.sweep`` tag, and the parent run's name unless ``parent_run_name``).
        sweep_params: Flat parameters of the whole sweep (logged on the parent run).
        trial_params: Maps a Tune trial config to the nested run's params.
        trial_name: Maps a Tune trial config to the nested run's name.
        parent_run_name: The parent run's display name, e.g. ``"<sweep>: dpo, dlrml x beta_kl 0.05-1 (10 trials)"``
            (``sweep_name`` when ``None``).
        description: The parent run's description (markdown, MLflow's ``mlflow.note.content`` tag), or ``None``.
        experiment_tags: Tags the experiment gets where it lacks them (its description, saved views): what a user
            changed in the UI is kept.
    """

    tracking_uri: str
    experiment: str
    sweep_name: str
    sweep_params: Mapping[str, Any]
    trial_params: Callable[[dict], Mapping[str, Any]]
    trial_name: Callable[[dict], str]
    parent_run_name: str | None = None
    description: str | None = None
    experiment_tags: Mapping[str, str] = field(default_factory=dict)


class RunOperations:
    """Applies one MLflow operation at a time to the sweep's runs (:meth:`execute`).

    Args:
        runs: The sweep's runs.
    """

    def __init__(self, runs: SweepRuns) -> None:
        self.client = MlflowClient(runs.tracking_uri)
        self.tracking_uri = runs.tracking_uri
        self.experiment = runs.experiment
        self.sweep_name = runs.sweep_name
        self.sweep_params = dict(runs.sweep_params)
        self.trial_params = runs.trial_params
        self.trial_name = runs.trial_name
        self.parent_run_name = runs.parent_run_name or runs.sweep_name
        self.description = runs.description
        self.experiment_tags = dict(runs.experiment_tags)
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.trial_runs: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks into the experiment state: keep settings, drop the client."""
        state = self.__dict__.copy()
        state.pop("client")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.client = MlflowClient(self.tracking_uri)

    def execute(self, op: dict[str, Any]) -> None:
        """Apply one operation (raises whatever the client raises while the server is unreachable)."""
        kind = op["op"]
        if kind == "parent":
            self._ensure_parent()
        elif kind == "trial":
            self._start_attempt(op["trial_id"], op["config"], op.get("timestamp") or int(time.time() * 1000))
        elif kind == "metrics":
            run_id = self._ensure_trial_run(op["trial_id"], op["config"])
            metrics = [Metric(k, v, ts, step) for k, v, ts, step in op["metrics"]]
            for start in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[start : start + 1000])
        elif kind == "end_trial":
            self._end_trial(op["trial_id"], op["config"], op["status"], op["reason"], op["timestamp"])
        elif kind == "trial_tags":
            run_id = self._ensure_trial_run(op["trial_id"], op["config"])
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])
        elif kind == "finish":
            self._finish(op["trial_id"], op["config"], op["status"], op["summary"], op["timestamp"])
        elif kind == "artifacts":
            parent = self._ensure_parent()
            for path in op["paths"]:
                self.client.log_artifact(parent, path, op["artifact_path"])
        elif kind == "parent_note":
            self.client.set_tag(self._ensure_parent(), NOTE_TAG, op["text"][:_NOTE_LIMIT])
        elif kind == "parent_metrics":
            pass  # per-cell metrics, spooled by an earlier version of the sweep: the description has the cells now
        elif kind == "trial_artifacts":
            run_id = self._ensure_trial_run(op["trial_id"], op["config"])
            for path in op["paths"]:
                self.client.log_artifact(run_id, path, op["artifact_path"])
        elif kind == "close":
            self.client.set_terminated(self._ensure_parent(), op["status"])
        else:
            raise ValueError(f"unknown MLflow operation {kind!r}")

    def _ensure_parent(self) -> str:
        if self.parent_run_id is not None:
            return self.parent_run_id
        experiment = self.client.get_experiment_by_name(self.experiment)
        tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, **self.experiment_tags}
        if experiment is None:
            self.experiment_id = self.client.create_experiment(self.experiment, tags=tags)
        else:
            self.experiment_id = experiment.experiment_id
            for key, value in tags.items():
                if key not in experiment.tags:  # a kind, description or view a user changed in the UI is kept
                    self.client.set_experiment_tag(self.experiment_id, key, value)
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{SWEEP_TAG}` = '{self.sweep_name}' and tags.`{ROLE_TAG}` = 'sweep'",
            max_results=1,
        )
        if found:
            self.parent_run_id = found[0].info.run_id
            self.client.update_run(
                self.parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING), name=self.parent_run_name
            )
        else:
            run = self.client.create_run(
                self.experiment_id, run_name=self.parent_run_name, tags={SWEEP_TAG: self.sweep_name, ROLE_TAG: "sweep"}
            )
            self.parent_run_id = run.info.run_id
            self._log_params(self.parent_run_id, self.sweep_params)
        if self.description:
            self.client.set_tag(self.parent_run_id, NOTE_TAG, self.description[:_NOTE_LIMIT])
        return self.parent_run_id

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, v) for k, v in scrub(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def _trial_run_versions(self, trial_id: str) -> list[Run]:
        """Every nested run of the trial under this sweep's parent run, superseded attempts included."""
        parent = self._ensure_parent()
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{parent}'",
            max_results=1000,
        )

    def _create_trial_run(self, trial_id: str, config: dict, attempt: int) -> str:
        parent = self._ensure_parent()
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.trial_name(config),
            tags={
                PARENT_TAG: parent,
                TRIAL_TAG: trial_id,
                SWEEP_TAG: self.sweep_name,
                ROLE_TAG: "trial",
                ATTEMPT_TAG: str(attempt),
                SUPERSEDED_TAG: "false",
            },
        )
        run_id = run.info.run_id
        self._log_params(run_id, self.trial_params(config))
        self.trial_runs[trial_id] = run_id
        return run_id

    def _ensure_trial_run(self, trial_id: str, config: dict) -> str:
        """The trial's current (not superseded) nested run, found again or created; a run found again keeps its
        status, so that logging a summary on an ended run keeps its end."""
        if trial_id in self.trial_runs:
            return self.trial_runs[trial_id]
        runs = self._trial_run_versions(trial_id)
        current = _current_attempt(runs)
        if current is None:
            return self._create_trial_run(trial_id, config, _last_attempt(runs) + 1)
        self.trial_runs[trial_id] = current.info.run_id
        return current.info.run_id

    def _start_attempt(self, trial_id: str, config: dict, timestamp: int) -> str:
        """The run for a trial that (re)starts: its current run set running again if it holds no metric yet, else
        that run superseded (tagged, ended ``KILLED``) and a fresh run created for the new attempt.

        Decided from the runs in MLflow (not from ``trial_runs``), so a tracker restored by a restarted driver and
        a retry within one driver behave alike; a delivery that failed halfway is completed when retried.
        """
        runs = self._trial_run_versions(trial_id)
        current = _current_attempt(runs)
        if current is not None and not current.data.metrics:
            run_id = current.info.run_id
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            if not current.data.params:  # created by a delivery that failed before its params
                self._log_params(run_id, self.trial_params(config))
            self.trial_runs[trial_id] = run_id
            return run_id
        if current is not None:
            info = current.info
            self.client.log_batch(
                info.run_id, tags=[RunTag(SUPERSEDED_TAG, "true"), RunTag(ATTEMPT_TAG, str(_attempt(current)))]
            )
            ended = RunStatus.is_terminated(RunStatus.from_string(info.status)) and info.end_time is not None
            killed = RunStatus.to_string(RunStatus.KILLED)
            if not ended or info.status != killed:
                self.client.set_terminated(info.run_id, killed, end_time=info.end_time if ended else timestamp)
            logger.info("trial %s starts again: run %s superseded by a new attempt", trial_id, info.run_id)
        return self._create_trial_run(trial_id, config, _last_attempt(runs) + 1)

    def _end_trial(self, trial_id: str, config: dict, status: str, reason: str | None, timestamp: int) -> None:
        run_id = self._ensure_trial_run(trial_id, config)
        tags = [RunTag("dlrml.status", status), RunTag("verdict", status), RunTag(NOTE_TAG, trial_note(status, reason))]
        if reason:
            tags.append(RunTag("dlrml.reason", reason[:_NOTE_LIMIT]))
        logged = self.client.get_run(run_id).data.metrics
        metrics = [Metric(f"final/{k}", v, timestamp, 0) for k, v in verdict_metrics(status).items()]
        self.client.log_batch(run_id, metrics=_unlogged(metrics, logged), tags=tags)
        self.client.set_terminated(run_id, TrialStatus(status).mlflow_run_status, end_time=timestamp)

    def _finish(self, trial_id: str, config: dict, status: str, summary: Mapping[str, Any], timestamp: int) -> None:
        run_status = RunStatus.from_string(TrialStatus(status).mlflow_run_status)
        run_id = self._ensure_trial_run(trial_id, config)
        reason = summary.get("reason")
        tags = [RunTag("dlrml.status", status), RunTag("verdict", status)]
        tags += [RunTag(f"dlrml.{k}", str(v)[:_NOTE_LIMIT]) for k, v in summary.items() if not is_number(v)]
        tags.append(RunTag(NOTE_TAG, trial_note(status, reason if isinstance(reason, str) else None, summary)))
        if is_number(summary.get("attempts")) and summary["attempts"] >= 1:
            # The trial's own count (its workers' log) wins: a run reused by a restart that came before the trial's
            # first report was created for an earlier start.
            tags.append(RunTag(ATTEMPT_TAG, str(int(summary["attempts"]))))
        run = self.client.get_run(run_id)
        numbers = {**{k: v for k, v in summary.items() if is_number(v)}, **verdict_metrics(status)}
        metrics = [Metric(f"final/{k}", float(v), timestamp, 0) for k, v in numbers.items()]
        self.client.log_batch(run_id, metrics=_unlogged(metrics, run.data.metrics), tags=tags)
        info = run.info
        wanted = RunStatus.to_string(run_status)
        ended = RunStatus.is_terminated(RunStatus.from_string(info.status)) and info.end_time is not None
        if not ended:
            self.client.set_terminated(run_id, wanted, end_time=timestamp)
        elif info.status != wanted:
            self.client.set_terminated(run_id, wanted, end_time=info.end_time)


_NOTE_LIMIT = 5000
"""Characters of a description or text tag kept (MLflow takes 8000; a long table is cut, its file has it all)."""


def is_number(value: Any) -> bool:
    """An int or a float (not a bool): what MLflow can take as a metric value."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _unlogged(metrics: list[Metric], logged: Mapping[str, float]) -> list[Metric]:
    """Summary metrics (all at step 0) whose value is not already the key's latest value on the run: logging a
    summary twice (a replayed spool, then the resumed sweep's own) leaves one point per key."""
    return [m for m in metrics if m.key not in logged or logged[m.key] != m.value]


def _attempt(run: Run) -> int:
    """The attempt a trial run records (``dlrml.attempt``; runs created before that tag are attempt 1)."""
    try:
        return int(run.data.tags.get(ATTEMPT_TAG, "1"))
    except ValueError:
        return 1


def _last_attempt(runs: list[Run]) -> int:
    return max((_attempt(r) for r in runs), default=0)


def _current_attempt(runs: list[Run]) -> Run | None:
    """The trial's run that is not superseded (the latest attempt, should there be several), or ``None``."""
    live = [r for r in runs if r.data.tags.get(SUPERSEDED_TAG) != "true"]
    return max(live, key=lambda r: (_attempt(r), r.info.start_time or 0), default=None)
