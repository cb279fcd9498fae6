"""The sweep driver: validate (:mod:`.inputs`), schedule one Ray Tune trial per grid point (:mod:`.tuner`), collect
statuses (:mod:`.outcome`), score the selected trials (:mod:`sweep.scoring`), draw the map."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from sweep.claims.report import write_claims
from sweep.cluster.connect import init_ray
from sweep.cluster.job_dir import outside_job_dir
from sweep.cluster.reference_pass import reference_in_driver, shared_reference
from sweep.cluster.storage import check_shared_storage
from sweep.columns import AlpacaColumn, MTBenchColumn
from sweep.config import SweepConfig, to_dict
from sweep.driver.inputs import (
    CONFIG_FILE,
    SweepInputs,
    load_inputs,
    resumes_existing_sweep,
    with_policies_saved,
)
from sweep.driver.outcome import SweepOutcome, collect_trials
from sweep.driver.tuner import TunerPlan, build_tuner, max_concurrent
from sweep.errors import SweepOutputError
from sweep.scoring.alpaca_eval.score import finish_alpaca_eval, start_alpaca_eval
from sweep.scoring.mt_bench.score import finish_mt_bench, question_scores, start_mt_bench
from sweep.scoring.preflight import check_vllm_on_gpu_nodes
from sweep.search.lattice import lattices
from sweep.stability.map import write_stability_map
from sweep.tracking.records import describe_grid, finish_tracker, parent_params, parent_run_name, trial_params
from sweep.trials.rows import trial_label

MLFLOW_SPOOL = "mlflow_pending.jsonl"
"""File in the experiment directory holding MLflow updates not yet delivered (replayed on ``--resume``)."""
MLFLOW_CONFIG = "config.yaml"
"""The sweep's whole config as YAML, in the experiment directory and as the MLflow parent run's artifact."""


class SweepDriver:
    """Runs one sweep.

    Args:
        config: The validated sweep config.
        resume: Continue the experiment of the same name from Tune's experiment state.
        address: Ray address to join (``None``: ``RAY_ADDRESS`` / the job's cluster / a local instance).
    """

    def __init__(self, config: SweepConfig, *, resume: bool = False, address: str | None = None) -> None:
        self.config, self.moved = outside_job_dir(config)
        self.resume = resume
        self.address = address
        self.storage_path = str(Path(self.config.storage_path).expanduser().resolve())
        self.inputs: SweepInputs | None = None

    def validate_inputs(self) -> None:
        """Before any cluster work: every input checked once (:func:`sweep.driver.inputs.load_inputs`).

        Raises:
            SweepInputError: Naming what is wrong.
        """
        self.config, saving = with_policies_saved(self.config)
        for line in (self.moved, saving):
            if line:
                print(f"[sweep] {line}")
        self.resume = resumes_existing_sweep(self.config, self.storage_path, self.resume)
        self.inputs = load_inputs(self.config, self.address)
        for warning in self.inputs.warnings:
            print(f"warning: {warning}", file=sys.stderr)

    def total_steps(self) -> int:
        """Optimizer steps one trial runs (ASHA's ``max_t``)."""
        train = self.config.train
        if train.max_steps > 0:
            return train.max_steps
        assert self.inputs is not None
        per_step = train.per_device_batch_size * train.grad_accum * self.config.resources.num_workers
        return max(1, math.ceil(len(self.inputs.data.train) / per_step) * math.ceil(train.epochs))

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
        assert self.inputs is not None
        print(f"sweep {self.config.name}: {len(grid)} trials x {self.total_steps()} steps")
        print(self.inputs.summary.describe())
        for trial in grid:
            print(f"  {trial_label(trial)}")

    def run(self) -> SweepOutcome:
        """Run (or resume) the sweep and write the stability map."""
        import ray

        config = self.config
        if self.inputs is None:
            self.validate_inputs()
        # Training-step reports legitimately lack the held-out metric ASHA ranks on (it comes every eval_steps).
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        # Tune's console output off entirely (its experiment banner too): sweep.trials.progress prints what a user
        # watches.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        # Ray Train's print patch defeats dill's stdout capture (behind datasets' fingerprinting), which then
        # floods the driver log with bytecode listings. Inherited by a local Ray instance's workers.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        # MLflow prints a link to the experiment's GenAI view whenever a run ends; the closing lines print the
        # model-training view's instead (sweep.tracking.views).
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        data = self.inputs.data
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference") as pool:
            # A reference pass in this process overlaps with the start of the local Ray instance.
            in_driver = reference_in_driver(config, self.address)
            early = pool.submit(shared_reference, config, data, self.storage_path, True) if in_driver else None
            init_ray(self.address)
            check_shared_storage(self.storage_path)
            check_vllm_on_gpu_nodes(config)
            concurrency = max_concurrent(config.resources, ray.cluster_resources())
            reference = early.result() if early else None
        experiment_dir = Path(self.storage_path) / config.name
        searched = " in the grid, searched adaptively" if config.search == "adaptive" else ""
        print(
            f"[sweep] {config.name}: {len(self.grid())} trials{searched}, {self.total_steps()} steps each, "
            f"up to {concurrency or 'unbounded'} at once; results in {experiment_dir}"
        )
        print(self.inputs.summary.describe())
        if config.share_reference and reference is None:
            reference = shared_reference(config, data, self.storage_path, in_driver=False)
        tracker = self._start_tracker(experiment_dir)
        plan = TunerPlan(
            experiment_dir,
            self.storage_path,
            self.grid(),
            self.total_steps(),
            concurrency,
            reference,
            tracker,
            self.resume,
        )
        tuner = build_tuner(config, plan)
        experiment_dir.mkdir(parents=True, exist_ok=True)
        (experiment_dir / CONFIG_FILE).write_text(json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")
        trials = collect_trials(tuner.fit(), config, self.storage_path)
        trials = self._evaluate(trials, tracker)
        return self._write_outputs(trials, tracker, experiment_dir)

    def _evaluate(self, trials: pd.DataFrame, tracker) -> pd.DataFrame:
        """MT-Bench and AlpacaEval: every generation of both is submitted before any judging, so AlpacaEval's outputs
        are generated on free workers while MT-Bench's answers are judged."""
        trials, mt_bench = start_mt_bench(trials, self.config, self.storage_path, tracker)
        trials, alpaca_eval = start_alpaca_eval(trials, self.config, self.storage_path, tracker)
        trials = finish_mt_bench(trials, mt_bench, self.config, tracker)
        return finish_alpaca_eval(trials, alpaca_eval, self.config, tracker)

    def _write_outputs(self, trials: pd.DataFrame, tracker, experiment_dir: Path) -> SweepOutcome:
        """The map, the claims and the MLflow summary.

        Raises:
            SweepOutputError: A file could not be written (Tune's experiment state keeps every result).
        """
        config = self.config
        map_dir = config.map_dir().expanduser().resolve()  # the closing lines print where it is, absolute
        try:
            stability = write_stability_map(
                trials.drop(columns=[MTBenchColumn.JUDGMENTS, AlpacaColumn.ANNOTATIONS]),
                map_dir,
                lattices=lattices(config.grid) if config.search == "adaptive" else None,
            )
            claims = write_claims(
                stability.trials, map_dir, sweep_name=config.name, question_scores=question_scores(trials)
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
            experiment_id=tracker.experiment_id if tracker else None,
            sweep_name=config.name,
        )

    def _start_tracker(self, experiment_dir: Path):
        """The MLflow callback with its parent run started, or ``None`` with MLflow off."""
        import yaml

        from sweep.tracking.callback import MLflowTracker
        from sweep.tracking.runs import NOTE_TAG, SweepRuns
        from sweep.tracking.summaries import experiment_description
        from sweep.tracking.views import VIEW_TAG_PREFIX, view_envelope, view_id

        config = self.config
        if not config.mlflow.enabled:
            return None
        n_trials = len(self.grid())
        runs = SweepRuns(
            tracking_uri=config.mlflow.resolved_uri(),
            experiment=config.mlflow.experiment,
            sweep_name=config.name,
            sweep_params=parent_params(config, n_trials),
            trial_params=trial_params,
            trial_name=lambda c: trial_label(c["trial"]),
            parent_run_name=parent_run_name(config, n_trials),
            description=describe_grid(config, n_trials, self.total_steps()),
            experiment_tags={
                NOTE_TAG: experiment_description(config.mlflow.experiment),
                VIEW_TAG_PREFIX + view_id(config.name): view_envelope(config.name),
            },
        )
        tracker = MLflowTracker(
            runs,
            spool_path=experiment_dir / MLFLOW_SPOOL,
            divergence=config.train.divergence,
            verdicts=config.train.verdicts,
            asha_grace=config.scheduler.grace_period if config.scheduler.asha else None,
        )
        tracker.start()
        experiment_dir.mkdir(parents=True, exist_ok=True)
        config_file = experiment_dir / MLFLOW_CONFIG
        config_file.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        tracker.log_artifacts([config_file], artifact_path=None)
        return tracker
