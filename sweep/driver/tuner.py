"""The driver's Tune wiring: how many trials run at once, the scheduler, and the Tuner (new or restored)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sweep.cluster.storage import mark_sweep_storage
from sweep.config import ResourcesConfig, SweepConfig
from sweep.errors import SweepInputError
from trainers.protocol import ReportKey
from trainers.reference.logps import ReferenceLogps

PROGRESS_TABLE_EVERY_S = 30.0
"""Seconds between the status tables a running sweep prints."""


def max_concurrent(resources: ResourcesConfig, cluster: dict[str, float]) -> int | None:
    """Trials that fit the cluster at once (``None``: unbounded, on an autoscaling cluster without a cap).

    Raises:
        SweepInputError: One trial needs more of a resource than the cluster has.
    """
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


def asha_scheduler(config: SweepConfig, total_steps: int):
    """Cell-aware ASHA on the held-out metric (see :class:`sweep.trials.stoppers.CellAwareASHA`), or ``None``."""
    from sweep.trials.stoppers import CellAwareASHA, first_seed_protected

    scheduler = config.scheduler
    if not scheduler.asha:
        return None
    return CellAwareASHA(
        protected=first_seed_protected(config.grid.seeds),
        time_attr=ReportKey.STEP.value,
        metric=scheduler.metric,
        mode="max",
        max_t=total_steps + 1,
        final_step=total_steps,
        grace_period=scheduler.grace_period,
        reduction_factor=scheduler.reduction_factor,
        stop_last_trials=False,
    )


@dataclasses.dataclass
class TunerPlan:
    """What the Tuner is built from besides the config.

    Attributes:
        experiment_dir: ``<storage_path>/<name>``.
        storage_path: The sweep's resolved storage path.
        grid: One entry per trial (:meth:`sweep.driver.SweepDriver.grid`).
        total_steps: Optimizer steps one trial runs.
        concurrency: Trials at once (``None``: unbounded).
        reference: The shared reference log-probs, or ``None``.
        tracker: The MLflow callback, or ``None``.
        resume: Whether an existing experiment may be restored.
    """

    experiment_dir: Path
    storage_path: str
    grid: list[dict[str, Any]]
    total_steps: int
    concurrency: int | None
    reference: ReferenceLogps | None
    tracker: Any
    resume: bool


def build_tuner(config: SweepConfig, plan: TunerPlan):
    """A new Tuner over the grid, or the restored one of a sweep being resumed.

    Raises:
        SweepInputError: The experiment exists and ``plan.resume`` is false.
    """
    from ray import tune

    from sweep.search.snapshot import align_snapshot
    from sweep.trials.trainable import trial_resources, tune_trial

    trainable = tune.with_resources(tune_trial, trial_resources(config.resources, config.train.deepspeed))
    param_space = {
        "train": dataclasses.asdict(config.train),
        "resources": dataclasses.asdict(config.resources),
        "storage_path": plan.storage_path,
        "experiment": config.name,
        "storage_token": mark_sweep_storage(plan.storage_path, config.name),
        "reference": dataclasses.asdict(plan.reference) if plan.reference else None,
    }
    if config.search == "grid":
        param_space["trial"] = tune.grid_search(plan.grid)
    if tune.Tuner.can_restore(str(plan.experiment_dir)):
        if not plan.resume:
            raise SweepInputError(
                f"a sweep named {config.name!r} already exists in {plan.experiment_dir}; pass --resume to continue "
                "it, or --name to start a new one"
            )
        print(f"[sweep] resuming {config.name} from {plan.experiment_dir}")
        for line in align_snapshot(plan.experiment_dir, config):
            print(f"[sweep] {line}")
        return tune.Tuner.restore(
            str(plan.experiment_dir), trainable=trainable, param_space=param_space, resume_errored=True
        )
    return tune.Tuner(
        trainable, param_space=param_space, tune_config=_tune_config(config, plan), run_config=_run_config(config, plan)
    )


def _run_config(config: SweepConfig, plan: TunerPlan):
    from ray import tune

    from sweep.trials.progress import TrialProgress
    from sweep.trials.stoppers import DivergenceStopper

    progress = TrialProgress(
        config.train.divergence,
        config.train.verdicts,
        table_every_s=PROGRESS_TABLE_EVERY_S,
        asha_grace=config.scheduler.grace_period if config.scheduler.asha else None,
    )
    return tune.RunConfig(
        name=config.name,
        storage_path=plan.storage_path,
        stop=DivergenceStopper(config.train.divergence),
        callbacks=[progress, plan.tracker] if plan.tracker else [progress],
        failure_config=tune.FailureConfig(max_failures=config.resources.max_failures),
        verbose=0,  # TrialProgress prints one line per trial event instead of a config table per trial
    )


def _tune_config(config: SweepConfig, plan: TunerPlan):
    from ray import tune

    if config.search == "adaptive":
        from sweep.search.searcher import AdaptiveSearcher

        # Never pruned (validation refuses ASHA with adaptive search): the divergence stopper alone ends trials.
        searcher = AdaptiveSearcher(config)
        return tune.TuneConfig(
            search_alg=searcher,
            num_samples=searcher.num_samples,
            max_concurrent_trials=plan.concurrency,
            reuse_actors=True,
        )
    # A finished one-worker trial's process (imports, tokenizer, base weights loaded) runs the next trial.
    return tune.TuneConfig(
        scheduler=asha_scheduler(config, plan.total_steps), max_concurrent_trials=plan.concurrency, reuse_actors=True
    )
