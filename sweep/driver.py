"""The sweep driver: validate, schedule one Ray Tune trial per grid point, collect statuses, draw the map."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sweep.adaptive import lattices
from sweep.alpaca_eval_config import AlpacaColumn
from sweep.alpaca_eval_preflight import check_alpaca_eval
from sweep.alpaca_eval_scoring import failed_evaluations, finish_alpaca_eval, start_alpaca_eval
from sweep.claims import write_claims
from sweep.config import SweepConfig, to_dict
from sweep.evaluation_tasks import EVALUATION_FAILED
from sweep.mlflow_records import describe_grid, finish_tracker, parent_run_name, trial_params
from sweep.mt_bench_scoring import finish_mt_bench, question_scores, start_mt_bench
from sweep.preflight import SweepInputError, check_generation_backends, check_mt_bench, check_vllm_on_gpu_nodes
from sweep.ray_cluster import init_ray, joins_cluster
from sweep.reference_pass import reference_in_driver, shared_reference
from sweep.stability import StabilityMap, format_cells_table, write_stability_map
from sweep.storage_check import check_shared_storage, mark_sweep_storage
from sweep.trial_rows import trial_label, trial_row
from trainers.data import PreferenceData, PreferenceDataError
from trainers.data_summary import DataSummary, summarize_data
from trainers.dpo_config import resolve_deepspeed_config
from trainers.models import load_tokenizer, resolve_model_path
from trainers.protocol import ReportKey, TrialStatus
from trainers.reference import ReferenceLogps
from trainers.trial_runner import load_trial_data


class SweepOutputError(OSError):
    """The map, the claims or the MLflow spool could not be written after the trials ran."""


CONFIG_FILE = "sweep_config.json"
"""The sweep's config, stored in its experiment directory: rerunning the same config resumes the sweep."""

PROGRESS_TABLE_EVERY_S = 30.0
"""Seconds between the status tables a running sweep prints."""

MLFLOW_SPOOL = "mlflow_pending.jsonl"
"""File in the experiment directory holding MLflow updates not yet delivered (replayed on ``--resume``)."""


@dataclass
class SweepOutcome:
    """What a finished sweep produced."""

    stability_map: StabilityMap
    trials: pd.DataFrame
    tracking_uri: str | None
    parent_run_id: str | None
    mlflow_pending: int = 0

    @property
    def n_trials(self) -> int:
        """Number of trials in the sweep."""
        return len(self.trials)

    @property
    def failure(self) -> str | None:
        """Why the sweep is incomplete (every trial errored, or an evaluation failed after training), or ``None``."""
        if self.trials.empty:
            return "the sweep ran no trials"
        if (self.trials["status"] == TrialStatus.ERRORED).all():
            return f"all {self.n_trials} trials errored (see the reason column of trials.csv and the trial logs)"
        reasons = self.trials.get("mt_bench_reason", pd.Series(dtype=object)).astype(str)
        failed = int(reasons.str.startswith(EVALUATION_FAILED).sum())
        if failed:
            return f"MT-Bench failed after training for {failed} trial(s) (mt_bench_reason in trials.csv); map written"
        if failed_evaluations(self.trials):
            return (
                f"AlpacaEval failed after training for {failed_evaluations(self.trials)} trial(s) "
                f"({AlpacaColumn.REASON} in trials.csv); map written"
            )
        return None

    def describe(self) -> str:
        """The closing summary printed by ``sweep/run.py``."""
        counts = self.trials["status"].value_counts().to_dict()
        lines = [
            format_cells_table(self.stability_map.cells),
            "",
            f"trials: {self.n_trials} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))})",
            f"stability map: {self.stability_map.out_dir} (claims: {self.stability_map.out_dir / 'claims.md'})",
        ]
        if self.tracking_uri:
            lines.append(f"MLflow: {self.tracking_uri} (parent run {self.parent_run_id}); browse with `mlflow ui`")
            if self.mlflow_pending:
                lines.append(
                    f"WARNING: {self.mlflow_pending} MLflow calls could not be delivered; rerun with --resume once "
                    "the tracking server is back to log them (results are kept in Ray Tune's experiment state)"
                )
        return "\n".join(lines)


class SweepDriver:
    """Runs one sweep.

    Args:
        config: The validated sweep config.
        resume: Continue the experiment of the same name from Tune's experiment state.
        address: Ray address to join (``None``: ``RAY_ADDRESS`` / the job's cluster / a local instance).
    """

    def __init__(self, config: SweepConfig, *, resume: bool = False, address: str | None = None) -> None:
        self.config = config
        self.resume = resume
        self.address = address
        self.storage_path = str(Path(config.storage_path).expanduser().resolve())
        self.data: PreferenceData | None = None
        self.data_summary: DataSummary | None = None

    # -- before any cluster work -------------------------------------------------------------------------------

    def validate_inputs(self) -> None:
        """Check model spec, data rows, DeepSpeed config and what evaluations will need; materialise the embedded
        model once.

        Raises:
            SweepInputError: Naming what is wrong.
        """
        train = self.config.train
        self._check_existing_sweep()
        # Before init_ray, which changes what joins_cluster sees.
        check_generation_backends(self.config, local=not joins_cluster(self.address))
        try:
            resolve_model_path(train.model)
        except (FileNotFoundError, ValueError) as err:
            raise SweepInputError(f"train.model: {err}") from None
        if train.deepspeed:
            try:
                resolve_deepspeed_config(train.deepspeed)
            except FileNotFoundError as err:
                raise SweepInputError(f"train.deepspeed: {err}") from None
        try:
            self.data = load_trial_data(train)
        except PreferenceDataError as err:
            raise SweepInputError(f"train.data: {err}") from None
        except (FileNotFoundError, ValueError, OSError) as err:
            raise SweepInputError(f"train.data {train.data!r}: {err}") from None
        tokenizer = load_tokenizer(train.model)
        self.data_summary = summarize_data(self.data, tokenizer, train.max_length)
        try:
            self.data_summary.check(train.per_device_batch_size * train.grad_accum * self.config.resources.num_workers)
        except ValueError as err:
            raise SweepInputError(f"train.data: {err}") from None
        check_mt_bench(self.config, tokenizer)
        check_alpaca_eval(self.config, tokenizer)

    def _check_existing_sweep(self) -> None:
        """Rerunning the same sweep resumes it; a different config under the same name needs ``--resume``."""
        stored = Path(self.storage_path) / self.config.name / CONFIG_FILE
        if not stored.is_file():
            return
        current = json.loads(json.dumps(to_dict(self.config), sort_keys=True))
        if json.loads(stored.read_text()) == current:
            self.resume = True
        elif not self.resume:
            raise SweepInputError(
                f"a sweep named {self.config.name!r} with a different config exists in {stored.parent}; pass --resume "
                "to continue it with this config, or --name to start a new sweep"
            )

    def total_steps(self) -> int:
        """Optimizer steps one trial runs (ASHA's ``max_t``)."""
        train = self.config.train
        if train.max_steps > 0:
            return train.max_steps
        assert self.data is not None
        per_step = train.per_device_batch_size * train.grad_accum * self.config.resources.num_workers
        return max(1, math.ceil(len(self.data.train) / per_step) * math.ceil(train.epochs))

    def grid(self) -> list[dict[str, Any]]:
        """One entry per trial: ``{"loss": LossConfig fields, "seed": int}``."""
        return [
            {"loss": dataclasses.asdict(loss), "seed": seed}
            for loss in self.config.grid.trials()
            for seed in self.config.grid.seeds
        ]

    def print_plan(self) -> None:
        """Print the trials the sweep would run."""
        grid = self.grid()
        assert self.data is not None
        print(f"sweep {self.config.name}: {len(grid)} trials x {self.total_steps()} steps")
        print(self.data_summary.describe())
        for trial in grid:
            print(f"  {trial_label(trial)}")

    # -- cluster work ---------------------------------------------------------------------------------------------

    def _max_concurrent(self, cluster: dict[str, float]) -> int | None:
        resources = self.config.resources
        per_trial = resources.per_trial()
        if resources.autoscale:
            return resources.max_concurrent_trials
        for key, need in per_trial.items():
            have = cluster.get(key, 0.0)
            if need > have:
                raise SweepInputError(
                    f"resources: one trial needs {need:g} {key} ({resources.num_workers} workers x "
                    f"{need / resources.num_workers:g}) but the Ray cluster has {have:g} {key}; lower "
                    "resources.num_workers / *_per_worker, or set resources.autoscale=true on an autoscaling cluster"
                )
        fit = min(int(cluster.get(key, 0.0) // need) for key, need in per_trial.items())
        return min(fit, resources.max_concurrent_trials or fit)

    def run(self) -> SweepOutcome:
        """Run (or resume) the sweep and write the stability map."""
        import ray

        config = self.config
        if self.data is None:
            self.validate_inputs()
        # Training-step reports legitimately lack the held-out metric ASHA ranks on (it comes every eval_steps).
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        # Tune's console output off entirely (its experiment banner too): sweep.progress prints what a user watches.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        # Ray Train's print patch defeats dill's stdout capture (behind datasets' fingerprinting), which then
        # floods the driver log with bytecode listings. Inherited by a local Ray instance's workers.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference") as pool:
            # A reference pass in this process overlaps with the start of the local Ray instance.
            in_driver = reference_in_driver(config, self.address)
            early = pool.submit(shared_reference, config, self.data, self.storage_path, True) if in_driver else None
            init_ray(self.address)
            check_shared_storage(self.storage_path)
            check_vllm_on_gpu_nodes(config)
            concurrency = self._max_concurrent(ray.cluster_resources())
            reference = early.result() if early else None
        experiment_dir = Path(self.storage_path) / config.name
        searched = " in the grid, searched adaptively" if config.search == "adaptive" else ""
        print(
            f"[sweep] {config.name}: {len(self.grid())} trials{searched}, {self.total_steps()} steps each, "
            f"up to {concurrency or 'unbounded'} at once; results in {experiment_dir}"
        )
        print(self.data_summary.describe())
        if config.share_reference and reference is None:
            reference = shared_reference(config, self.data, self.storage_path, in_driver=False)
        tracker = self._start_tracker(experiment_dir)
        tuner = self._tuner(experiment_dir, concurrency, reference, tracker)
        experiment_dir.mkdir(parents=True, exist_ok=True)
        (experiment_dir / CONFIG_FILE).write_text(json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")
        trials = self.collect(tuner.fit())
        trials = self._evaluate(trials, tracker)
        try:
            stability = write_stability_map(
                trials.drop(columns=["mt_bench_judgments", AlpacaColumn.ANNOTATIONS]),
                config.map_dir(),
                lattices=lattices(config.grid) if config.search == "adaptive" else None,
            )
            claims = write_claims(
                stability.trials, config.map_dir(), sweep_name=config.name, question_scores=question_scores(trials)
            )
            mlflow_pending = finish_tracker(tracker, trials, stability, claims) if tracker is not None else 0
        except OSError as err:
            raise SweepOutputError(f"{err} (Tune's experiment state in {experiment_dir} keeps every result)") from err
        return SweepOutcome(
            stability_map=stability,
            trials=trials.drop(columns=["config"]),
            tracking_uri=config.mlflow.resolved_uri() if tracker else None,
            parent_run_id=tracker.parent_run_id if tracker else None,
            mlflow_pending=mlflow_pending,
        )

    def _evaluate(self, trials: pd.DataFrame, tracker) -> pd.DataFrame:
        """MT-Bench and AlpacaEval: every generation of both is submitted before any judging, so AlpacaEval's outputs
        are generated on free workers while MT-Bench's answers are judged."""
        trials, mt_bench = start_mt_bench(trials, self.config, self.storage_path, tracker)
        trials, alpaca_eval = start_alpaca_eval(trials, self.config, self.storage_path, tracker)
        trials = finish_mt_bench(trials, mt_bench, self.config, tracker)
        return finish_alpaca_eval(trials, alpaca_eval, self.config, tracker)

    def _start_tracker(self, experiment_dir: Path):
        """The MLflow callback with its parent run started, or ``None`` with MLflow off."""
        from sweep.tracking import MLflowTracker, flatten

        config = self.config
        if not config.mlflow.enabled:
            return None
        tracker = MLflowTracker(
            tracking_uri=config.mlflow.resolved_uri(),
            experiment=config.mlflow.experiment,
            sweep_name=config.name,
            sweep_params=flatten(to_dict(config)),
            trial_params=trial_params,
            trial_name=lambda c: trial_label(c["trial"]),
            spool_path=experiment_dir / MLFLOW_SPOOL,
            divergence=config.train.divergence,
            verdicts=config.train.verdicts,
            parent_run_name=parent_run_name(config, len(self.grid())),
            description=describe_grid(config, len(self.grid()), self.total_steps()),
        )
        tracker.start()
        return tracker

    def _scheduler(self):
        """Cell-aware ASHA on the held-out metric (see :class:`sweep.stoppers.CellAwareASHA`), or ``None``."""
        from sweep.stoppers import CellAwareASHA, first_seed_protected

        scheduler = self.config.scheduler
        if not scheduler.asha:
            return None
        return CellAwareASHA(
            protected=first_seed_protected(self.config.grid.seeds),
            time_attr=ReportKey.STEP.value,
            metric=scheduler.metric,
            mode="max",
            max_t=self.total_steps() + 1,
            final_step=self.total_steps(),
            grace_period=scheduler.grace_period,
            reduction_factor=scheduler.reduction_factor,
            stop_last_trials=False,
        )

    def _tuner(self, experiment_dir: Path, concurrency: int | None, reference: ReferenceLogps | None, tracker):
        """A new Tuner over the grid, or the restored one of a sweep being resumed."""
        from ray import tune

        from sweep.progress import TrialProgress
        from sweep.ray_trial import trial_resources, tune_trial
        from sweep.stoppers import DivergenceStopper
        from sweep.tune_snapshot import align_grid_searcher

        config = self.config
        trainable = tune.with_resources(tune_trial, trial_resources(config.resources, config.train.deepspeed))
        param_space = {
            "train": dataclasses.asdict(config.train),
            "resources": dataclasses.asdict(config.resources),
            "storage_path": self.storage_path,
            "experiment": config.name,
            "storage_token": mark_sweep_storage(self.storage_path, config.name),
            "reference": dataclasses.asdict(reference) if reference else None,
        }
        if config.search == "grid":
            param_space["trial"] = tune.grid_search(self.grid())
        if tune.Tuner.can_restore(str(experiment_dir)):
            if not self.resume:
                raise SweepInputError(
                    f"a sweep named {config.name!r} already exists in {experiment_dir}; pass --resume to continue "
                    "it, or --name to start a new one"
                )
            print(f"[sweep] resuming {config.name} from {experiment_dir}")
            if config.search == "grid" and (alignment := align_grid_searcher(experiment_dir)):
                print(f"[sweep] {alignment.describe()}")
            return tune.Tuner.restore(
                str(experiment_dir), trainable=trainable, param_space=param_space, resume_errored=True
            )
        progress = TrialProgress(config.train.divergence, config.train.verdicts, table_every_s=PROGRESS_TABLE_EVERY_S)
        run_config = tune.RunConfig(
            name=config.name,
            storage_path=self.storage_path,
            stop=DivergenceStopper(config.train.divergence),
            callbacks=[progress, tracker] if tracker else [progress],
            failure_config=tune.FailureConfig(max_failures=config.resources.max_failures),
            verbose=0,  # TrialProgress prints one line per trial event instead of a config table per trial
        )
        if config.search == "adaptive":
            from sweep.adaptive_searcher import AdaptiveSearcher

            # Never pruned (validation refuses ASHA with adaptive search): the divergence stopper alone ends trials.
            searcher = AdaptiveSearcher(config)
            tune_config = tune.TuneConfig(
                search_alg=searcher,
                num_samples=searcher.num_samples,
                max_concurrent_trials=concurrency,
                reuse_actors=True,
            )
        else:
            # A finished one-worker trial's process (imports, tokenizer, base weights loaded) runs the next trial.
            tune_config = tune.TuneConfig(
                scheduler=self._scheduler(), max_concurrent_trials=concurrency, reuse_actors=True
            )
        return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)

    def collect(self, results) -> pd.DataFrame:
        """One row per trial with its final status, from Tune's results (also after a resume); see
        :func:`sweep.trial_rows.trial_row`."""
        from sweep.ray_trial import trial_attempts, trial_output_dir

        rows = []
        for result in results:
            metrics = result.metrics or {}
            trial_id = metrics.get("trial_id") or Path(result.path).name
            attempts = trial_attempts(trial_output_dir(self.storage_path, self.config.name, trial_id))
            rows.append(
                trial_row(
                    result.config,
                    result.metrics_dataframe,
                    metrics,
                    result.error,
                    trial_id=trial_id,
                    divergence=self.config.train.divergence,
                    verdicts=self.config.train.verdicts,
                    attempts=attempts,
                )
            )
        return pd.DataFrame(rows)
