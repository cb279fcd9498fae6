"""Benchmark answers of several trials generated at once on free trial workers, each judged as soon as it exists.

A benchmark (MT-Bench, AlpacaEval) has a generation half, a Ray task that loads one trial's saved policy on one trial
worker's resources (its GPU), and a judging half in the driver (which alone holds the judge's key). Every selected
trial's generation is submitted at once, so Ray runs as many as there are free workers (eight on an 8-GPU node after
a sweep of 8-GPU trials), and the driver judges each trial's answers the moment they arrive, while the other trials'
answers are still being generated: generation and judging overlap instead of alternating.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.cluster.connect import on_worker_resources
from sweep.config import SweepConfig
from sweep.config.resources import ResourcesConfig

EVALUATION_FAILED = "failed:"
"""Prefix of a benchmark reason (``mt_bench_reason``, ``alpaca_reason``) whose evaluation failed after training; the
sweep then exits incomplete, with its map written."""
GENERATION_SECONDS = "generation_s"
"""Metric suffix of a trial's answer generation time (``mt_bench/generation_s``), queueing for a worker excluded."""


def failure_reason(err: BaseException) -> str:
    """The reason recorded on a trial whose evaluation failed: the prefix, the error type and its last line."""
    last_line = (str(err).strip().splitlines() or [""])[-1]
    return f"{EVALUATION_FAILED} {type(err).__name__}: {last_line}"[:500]


def no_policy_reason(config: SweepConfig, model_dir: Path) -> str:
    """Why a selected trial that trained to the end has no saved policy where the driver looks for it."""
    if not config.train.save_model:
        return "no saved policy (train.save_model=false)"
    # The trial saved it on its own node: storage_path is not one directory on every node (a node that joined after
    # the sweep's storage check, or a mount that failed there).
    return f"saved policy not found at {model_dir}: is storage_path shared by every node? (cluster/README.md)"


def timed_call(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """Run ``fn(*args)``; return its result and how long it ran (on the worker, after any wait for resources)."""
    started = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - started


@dataclass(frozen=True)
class Generated:
    """One finished generation task.

    Attributes:
        key: The key it was submitted under (a trial row's index).
        value: What the task returned (an answers file), None if it failed.
        seconds: How long it ran on its worker (NaN if it failed).
        error: Why it failed (after Ray's retries), None if it succeeded.
    """

    key: Hashable
    value: Any
    seconds: float
    error: BaseException | None


def submit_generations(
    fn: Callable[..., Any], resources: ResourcesConfig, jobs: Mapping[Hashable, tuple]
) -> dict[Any, Hashable]:
    """Submit ``fn(*args)`` for every job as a Ray task on one trial worker's resources, all at once.

    Returns:
        The pending tasks: object ref -> job key, for :func:`as_completed`.
    """
    if not jobs:
        return {}
    task = on_worker_resources(timed_call, resources)
    return {task.remote(fn, *args): key for key, args in jobs.items()}


def as_completed(pending: Mapping[Any, Hashable]) -> Iterator[Generated]:
    """The pending tasks' outcomes in the order they finish (a failure is yielded, never raised)."""
    import ray

    waiting = dict(pending)
    while waiting:
        (ref,), _ = ray.wait(list(waiting), num_returns=1)
        key = waiting.pop(ref)
        try:
            value, seconds = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - a failed generation is the caller's to record on its trial
            yield Generated(key, None, math.nan, err)
            continue
        yield Generated(key, value, seconds, None)


def cancel(pending: Mapping[Any, Hashable]) -> None:
    """Cancel generations whose results can no longer be judged (the judge or the baseline failed)."""
    import ray

    for ref in pending:
        ray.cancel(ref)
