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

A trial's nested run ends as soon as Tune ends the trial, with the status :mod:`sweep.trial_rows` gives its reported
results (so run durations are training times, not queue positions); at the end of the sweep the driver logs each
trial's final summary and authoritative status, which re-terminates a run only when its status changed.

If the tracking server is unreachable, training goes on: every operation that fails is queued in order (as
plain data) with a warning, retried on the next one, and flushed when the server is back. Whatever is still
queued when the sweep ends is spooled to a JSON-lines file in the experiment directory and replayed first by
the next run of the same sweep (``--resume``). Summary metrics (a trial's ``final/*``, the parent's ``cell/*``, all
at step 0) are idempotent: a key whose latest value on the run is already the one being logged is skipped, so a
replayed spool followed by the resumed sweep's own summary leaves one point per key.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from sweep.trial_rows import replay_behaviour, replay_verdict, trial_status
from trainers.collapse import DivergenceConfig
from trainers.protocol import BOOKKEEPING_KEYS, HELD_OUT_ACCURACY, ReportKey, ReportType, TrialStatus
from trainers.verdicts import VerdictConfig

logger = logging.getLogger(__name__)

SWEEP_TAG = "dlrml.sweep"
TRIAL_TAG = "dlrml.trial_id"
ROLE_TAG = "dlrml.role"
"""``sweep`` on the parent run, ``trial`` on nested runs (both carry the sweep tag)."""
SUPERSEDED_TAG = "dlrml.superseded"
"""``true`` on a trial's nested run whose attempt was followed by another (a retry, or a restart after ``--resume``)."""
ATTEMPT_TAG = "dlrml.attempt"
"""On a trial's nested run: which start of the trial it records (1, 2, ...; a run without it is attempt 1)."""
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"
"""The run's description, shown (as markdown) on its overview page (``mlflow.utils.mlflow_tags.MLFLOW_RUN_NOTE``)."""
SELECTED_TAG = "selected_for"
"""On a trial's nested run: the benchmark the driver selected it for (``mt_bench``)."""
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


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class MLflowTracker(Callback):
    """Logs a sweep to MLflow and survives tracking outages.

    Args:
        tracking_uri: MLflow tracking URI.
        experiment: Experiment name.
        sweep_name: The sweep's name (the ``dlrml.sweep`` tag, and the parent run's name unless ``parent_run_name``).
        sweep_params: Flat parameters of the whole sweep (logged on the parent run).
        trial_params: Maps a Tune trial config to the nested run's params.
        trial_name: Maps a Tune trial config to the nested run's name.
        echo: Where progress lines go (``print`` by default).
        spool_path: File that keeps undelivered operations across driver restarts.
        retry_interval_s: Seconds between delivery attempts while the server is down.
        divergence: The sweep's divergence thresholds (``train.divergence``), to judge a trial when it ends.
        verdicts: The sweep's verdict thresholds (``train.verdicts``), to judge a trial when it ends.
        parent_run_name: The parent run's display name, e.g. ``"<sweep>: dpo, dlrml x beta_kl 0.05-1 (10 trials)"``
            (``sweep_name`` when ``None``).
        description: The parent run's description (markdown, MLflow's ``mlflow.note.content`` tag), or ``None``.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        sweep_name: str,
        sweep_params: Mapping[str, Any],
        trial_params: Callable[[dict], Mapping[str, Any]],
        trial_name: Callable[[dict], str],
        echo: Callable[[str], None] | None = None,
        spool_path: str | Path | None = None,
        retry_interval_s: float = 15.0,
        divergence: DivergenceConfig | None = None,
        verdicts: VerdictConfig | None = None,
        parent_run_name: str | None = None,
        description: str | None = None,
    ) -> None:
        _bound_http_retries()
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.sweep_params = dict(sweep_params)
        self.trial_params = trial_params
        self.trial_name = trial_name
        self.echo = echo or _echo
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.trial_runs: dict[str, str] = {}
        self.spool_path = Path(spool_path) if spool_path else None
        self.retry_interval_s = retry_interval_s
        self.divergence = divergence or DivergenceConfig()
        self.verdicts = verdicts or VerdictConfig()
        self.parent_run_name = parent_run_name or sweep_name
        self.description = description
        self._results: dict[str, list[dict[str, Any]]] = {}
        """Each running trial's reported results (numbers only), to judge it when it ends."""
        self._pending: deque[dict[str, Any]] = deque()
        self._down_since: float | None = None
        self._next_attempt = 0.0

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks into the experiment state: keep settings, drop the client and the queue."""
        state = self.__dict__.copy()
        state.pop("client")
        state["_pending"] = deque()
        state["_down_since"] = None
        state["_results"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.client = MlflowClient(self.tracking_uri)

    # -- outage-tolerant execution ----------------------------------------------------------------------------

    def _submit(self, op: dict[str, Any]) -> None:
        """Queue an operation behind everything still pending and try to deliver the queue."""
        self._pending.append(op)
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Deliver queued operations in order; ``True`` when nothing is left pending.

        While the server is down, delivery is retried at most every ``retry_interval_s`` seconds (or when
        ``force``), so an outage never stalls the Tune loop on every reported result.
        """
        if self._down_since is not None and not force and time.monotonic() < self._next_attempt:
            return False
        while self._pending:
            op = self._pending[0]
            try:
                self._execute(op)
            except Exception as err:  # noqa: BLE001 - any transport/server failure means "retry later"
                self._next_attempt = time.monotonic() + self.retry_interval_s
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    logger.warning(
                        "MLflow tracking at %s is unreachable (%s: %s); training continues, MLflow updates are "
                        "queued from %s on and retried",
                        self.tracking_uri,
                        type(err).__name__,
                        str(err).splitlines()[0][:200] if str(err) else "",
                        op["op"],
                    )
                return False
            self._pending.popleft()
            if self._down_since is not None:
                logger.warning(
                    "MLflow tracking at %s is back after %.0f s; delivering %d queued updates",
                    self.tracking_uri,
                    time.monotonic() - self._down_since,
                    len(self._pending) + 1,
                )
                self._down_since = None
        return True

    def _execute(self, op: dict[str, Any]) -> None:
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
        elif kind == "parent_metrics":
            parent = self._ensure_parent()
            logged = self.client.get_run(parent).data.metrics
            metrics = _unlogged([Metric(k, v, op["timestamp"], 0) for k, v in op["metrics"].items()], logged)
            if metrics:
                self.client.log_batch(parent, metrics=metrics)
        elif kind == "trial_artifacts":
            run_id = self._ensure_trial_run(op["trial_id"], op["config"])
            for path in op["paths"]:
                self.client.log_artifact(run_id, path, op["artifact_path"])
        elif kind == "close":
            self.client.set_terminated(self._ensure_parent(), op["status"])
        else:
            raise ValueError(f"unknown MLflow operation {kind!r}")

    def spool(self) -> int:
        """Write undelivered operations to the spool file (or remove it when none are left); returns their count."""
        if self.spool_path is None:
            return len(self._pending)
        if self._pending:
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.spool_path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(op) + "\n" for op in self._pending))
            tmp.replace(self.spool_path)
        elif self.spool_path.exists():
            self.spool_path.unlink()
        return len(self._pending)

    def _load_spool(self) -> None:
        """Put operations spooled by an earlier run of this sweep at the front of the queue."""
        if self.spool_path is None or not self.spool_path.exists():
            return
        ops = [json.loads(line) for line in self.spool_path.read_text().splitlines() if line.strip()]
        logger.warning("replaying %d MLflow updates spooled by an earlier run of this sweep", len(ops))
        self._pending.extendleft(reversed(ops))

    @property
    def pending(self) -> int:
        """Number of MLflow calls still queued."""
        return len(self._pending)

    # -- runs ---------------------------------------------------------------------------------------------------

    def _ensure_parent(self) -> str:
        if self.parent_run_id is not None:
            return self.parent_run_id
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                self.experiment, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        else:
            self.experiment_id = experiment.experiment_id
            if EXPERIMENT_KIND_TAG not in experiment.tags:  # a kind a user picked in the UI is kept
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
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
            self.client.set_tag(self.parent_run_id, NOTE_TAG, self.description[:5000])
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
        self.echo(f"[sweep] started {trial.trial_id}: {self.trial_name(config)}")

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
        if result.get(ReportKey.REPORT_TYPE) in (ReportType.EVAL, ReportType.FINAL):
            acc = result.get(HELD_OUT_ACCURACY, math.nan)
            ending = " -> finished training" if result.get(ReportKey.FINAL) else ""
            self.echo(f"[sweep] {self.trial_name(config)} step {step}: held-out acc={acc:.3f}{ending}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """End the trial's nested run now, with the status its reported results give."""
        self._end(trial, error=None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """End the trial's nested run now as errored (Tune calls this once its retries are spent)."""
        self._end(trial, error=_trial_error(trial))

    def _end(self, trial, error: BaseException | None) -> None:
        """Judge a trial from its reported results (as the driver will) and queue the end of its run."""
        results = self._results.pop(trial.trial_id, None)
        if results is None:  # never started under this driver: its run ends with the sweep's summary
            return
        try:
            history = pd.DataFrame(results) if results else None
            last = results[-1] if results else {}
            verdict = replay_verdict(history, self.divergence)
            status, reason = trial_status(verdict, replay_behaviour(history, last, self.verdicts), last, error)
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
        self.echo(f"[sweep] {self.trial_name(trial.config)} ended: {status.value}" + (f" ({reason})" if reason else ""))

    def _end_trial(self, trial_id: str, config: dict, status: str, reason: str | None, timestamp: int) -> None:
        run_id = self._ensure_trial_run(trial_id, config)
        tags = [RunTag("dlrml.status", status), RunTag("verdict", status)]
        if reason:
            tags.append(RunTag("dlrml.reason", reason[:5000]))
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, TrialStatus(status).mlflow_run_status, end_time=timestamp)

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

    def _finish(self, trial_id: str, config: dict, status: str, summary: Mapping[str, Any], timestamp: int) -> None:
        run_status = RunStatus.from_string(TrialStatus(status).mlflow_run_status)
        run_id = self._ensure_trial_run(trial_id, config)
        tags = [RunTag("dlrml.status", status), RunTag("verdict", status)]
        tags += [RunTag(f"dlrml.{k}", str(v)[:5000]) for k, v in summary.items() if not _is_number(v)]
        run = self.client.get_run(run_id)
        metrics = [Metric(f"final/{k}", float(v), timestamp, 0) for k, v in summary.items() if _is_number(v)]
        self.client.log_batch(run_id, metrics=_unlogged(metrics, run.data.metrics), tags=tags)
        info = run.info
        wanted = RunStatus.to_string(run_status)
        ended = RunStatus.is_terminated(RunStatus.from_string(info.status)) and info.end_time is not None
        if not ended:
            self.client.set_terminated(run_id, wanted, end_time=timestamp)
        elif info.status != wanted:
            self.client.set_terminated(run_id, wanted, end_time=info.end_time)

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

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str = "stability_map") -> None:
        """Upload files (tables, heatmaps) to the parent run."""
        self._submit({"op": "artifacts", "paths": [str(p) for p in paths], "artifact_path": artifact_path})

    def log_parent_metrics(self, metrics: Mapping[str, float]) -> None:
        """Log sweep-level metrics (e.g. collapse rates) on the parent run; NaN values are left out."""
        clean = {k: float(v) for k, v in metrics.items() if _is_value(v)}
        self._submit({"op": "parent_metrics", "metrics": clean, "timestamp": int(time.time() * 1000)})

    def close(self, status: str = "FINISHED") -> int:
        """Terminate the parent run, flush, spool what is left; returns the number of undelivered updates."""
        self._pending.append({"op": "close", "status": status})
        self.flush(force=True)
        return self.spool()


def _bound_http_retries() -> None:
    """MLflow's HTTP client retries a dead server for minutes per call by default; the queue retries instead."""
    for name, value in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20"),
    ):
        os.environ.setdefault(name, value)


def _echo(line: str) -> None:
    print(line, flush=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_value(value: Any) -> bool:
    """A number MLflow's UI shows: summary metrics skip NaN (step metrics keep it, as evidence of divergence)."""
    return _is_number(value) and not math.isnan(value)


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


def _trial_error(trial) -> BaseException:
    """The error Tune recorded for a failed trial, as the driver's results will carry it (a placeholder if none)."""
    try:
        error = trial.get_pickled_error() or trial.get_error()
    except Exception:  # noqa: BLE001 - a stand-in trial or an unreadable error file: the status is errored anyway
        error = None
    if isinstance(error, BaseException):
        return error
    return RuntimeError(str(error).strip() if error else "trial errored (no error recorded)")


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
