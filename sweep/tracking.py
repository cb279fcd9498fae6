"""MLflow tracking of a sweep from the Tune driver: one parent run, one nested run per trial.

All MLflow traffic happens in the driver process (a Tune ``Callback``), so trial workers need neither network
access to the tracking server nor its credentials. Runs are found again by tags (``dlrml.sweep`` on the parent,
``dlrml.trial_id`` on each nested run), so a resumed sweep reuses them instead of creating duplicates.

If the tracking server is unreachable, training goes on: every call that fails is queued in order with a
warning, retried on the next call, and flushed at the end of the sweep (results also stay in Tune's own
experiment state).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

logger = logging.getLogger(__name__)

SWEEP_TAG = "dlrml.sweep"
TRIAL_TAG = "dlrml.trial_id"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
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
        sweep_name: The sweep's name (the parent run's name and ``dlrml.sweep`` tag).
        sweep_params: Flat parameters of the whole sweep (logged on the parent run).
        trial_params: Maps a Tune trial config to the nested run's params.
        trial_name: Maps a Tune trial config to the nested run's name.
        echo: Where progress lines go (``print`` by default).
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
    ) -> None:
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
        self._pending: deque[tuple[str, Callable[[], None]]] = deque()
        self._down_since: float | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks into the experiment state: keep settings, drop the client and the queue."""
        state = self.__dict__.copy()
        state.pop("client")
        state["_pending"] = deque()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.client = MlflowClient(self.tracking_uri)

    # -- outage-tolerant execution ----------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` after everything queued before it; on failure queue it (order preserved) and warn."""
        self._pending.append((what, fn))
        self.flush()

    def flush(self) -> bool:
        """Retry queued MLflow calls in order; ``True`` when nothing is left pending."""
        while self._pending:
            what, fn = self._pending[0]
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - any transport/server failure means "retry later"
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    logger.warning(
                        "MLflow tracking at %s is unreachable (%s: %s); training continues, %s and later calls "
                        "are queued and will be retried",
                        self.tracking_uri,
                        type(err).__name__,
                        str(err).splitlines()[0][:200],
                        what,
                    )
                return False
            self._pending.popleft()
            if self._down_since is not None:
                logger.warning(
                    "MLflow tracking at %s is back after %.0f s; flushing queued calls",
                    self.tracking_uri,
                    time.monotonic() - self._down_since,
                )
                self._down_since = None
        return True

    @property
    def pending(self) -> int:
        """Number of MLflow calls still queued."""
        return len(self._pending)

    # -- runs ---------------------------------------------------------------------------------------------------

    def _ensure_parent(self) -> str:
        if self.parent_run_id is not None:
            return self.parent_run_id
        experiment = self.client.get_experiment_by_name(self.experiment)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.experiment)
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{self.sweep_name}'", max_results=1
        )
        if found:
            self.parent_run_id = found[0].info.run_id
            self.client.update_run(self.parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        else:
            run = self.client.create_run(
                self.experiment_id, run_name=self.sweep_name, tags={SWEEP_TAG: self.sweep_name}
            )
            self.parent_run_id = run.info.run_id
            self._log_params(self.parent_run_id, self.sweep_params)
        return self.parent_run_id

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, v) for k, v in scrub(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def _ensure_trial_run(self, trial_id: str, config: dict) -> str:
        if trial_id in self.trial_runs:
            return self.trial_runs[trial_id]
        parent = self._ensure_parent()
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{parent}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=self.trial_name(config),
                tags={PARENT_TAG: parent, TRIAL_TAG: trial_id, SWEEP_TAG: self.sweep_name},
            )
            run_id = run.info.run_id
            self._log_params(run_id, self.trial_params(config))
        self.trial_runs[trial_id] = run_id
        return run_id

    def start(self) -> None:
        """Create (or find again) the parent run before any trial starts."""
        self._call("creating the parent run", self._ensure_parent)

    # -- Tune callback hooks --------------------------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        """Create the trial's nested run and log its parameters."""
        config = trial.config
        self._call(f"creating the run of {trial.trial_id}", lambda: self._ensure_trial_run(trial.trial_id, config))
        self.echo(f"[sweep] started {trial.trial_id}: {self.trial_name(config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        """Log one reported step's metrics (NaN/Inf included: they are the evidence of divergence)."""
        step = int(result.get("step", 0))
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), timestamp, step)
            for key, value in result.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and _is_metric(key)
        ]
        config = trial.config

        def log() -> None:
            run_id = self._ensure_trial_run(trial.trial_id, config)
            for start in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[start : start + 1000])

        self._call(f"metrics of {trial.trial_id} step {step}", log)
        if any(key.startswith("eval_") for key in result) or result.get("final"):
            acc = result.get("eval_rewards/accuracies", math.nan)
            self.echo(
                f"[sweep] {self.trial_name(config)} step {step}: loss={result.get('loss', math.nan):.4g} "
                f"held-out acc={acc:.3f}"
            )

    # -- end of sweep ---------------------------------------------------------------------------------------------

    def finish_trial(self, trial_id: str, config: dict, status: str, summary: Mapping[str, Any]) -> None:
        """Tag a trial's nested run with its final status and close it.

        Args:
            trial_id: Tune trial id.
            config: The trial's Tune config.
            status: ``completed``, ``pruned``, ``diverged`` or ``errored``.
            summary: Flat final values (reason, steps, held-out accuracy, MT-Bench...).
        """
        run_status = {"errored": RunStatus.FAILED, "pruned": RunStatus.KILLED}.get(status, RunStatus.FINISHED)

        def finish() -> None:
            run_id = self._ensure_trial_run(trial_id, config)
            tags = [RunTag("dlrml.status", status)]
            tags += [RunTag(f"dlrml.{k}", str(v)[:5000]) for k, v in summary.items() if not _is_number(v)]
            metrics = [
                Metric(f"final/{k}", float(v), int(time.time() * 1000), 0) for k, v in summary.items() if _is_number(v)
            ]
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
            self.client.set_terminated(run_id, RunStatus.to_string(run_status))

        self._call(f"final status of {trial_id}", finish)

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str = "stability_map") -> None:
        """Upload files (tables, heatmaps) to the parent run."""
        files = list(paths)

        def upload() -> None:
            for path in files:
                self.client.log_artifact(self._ensure_parent(), str(path), artifact_path)

        self._call("uploading the stability map", upload)

    def log_parent_metrics(self, metrics: Mapping[str, float]) -> None:
        """Log sweep-level metrics (e.g. collapse rates) on the parent run."""
        timestamp = int(time.time() * 1000)
        items = [Metric(k, float(v), timestamp, 0) for k, v in metrics.items() if _is_number(v)]
        self._call("sweep metrics", lambda: self.client.log_batch(self._ensure_parent(), metrics=items))

    def close(self, status: str = "FINISHED") -> bool:
        """Terminate the parent run and flush; ``True`` if MLflow has everything."""
        self._call("closing the parent run", lambda: self.client.set_terminated(self._ensure_parent(), status))
        return self.flush()


def _echo(line: str) -> None:
    print(line, flush=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_NOT_METRICS = frozenset(
    {"timestamp", "time_this_iter_s", "time_total_s", "pid", "training_iteration", "iterations_since_restore"}
)


def _is_metric(key: str) -> bool:
    return key not in _NOT_METRICS and not key.startswith(("config/", "time_since"))
