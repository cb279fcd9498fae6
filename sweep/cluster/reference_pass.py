"""The sweep's one shared reference pass: in the driver while a local Ray instance starts, or as Ray tasks.

With one shard it runs whole, in the driver (local CPU) or as one Ray task on one trial worker's resources. With
several (``resources.reference_shards``; by default one per worker of a GPU trial) each shard is a Ray task on one
worker's resources, all at once, and the driver, which holds the build lock, assembles them: the sweep has checked
that the storage path is one directory on every node (:func:`sweep.cluster.storage.check_shared_storage`) before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sweep.cluster.connect import joins_cluster, on_worker_resources
from sweep.config import ResourcesConfig, SweepConfig
from trainers.config import TrainConfig
from trainers.data import PreferenceData
from trainers.reference.logps import ReferenceLogps, compute_reference_logps
from trainers.reference.shards import RunShards, ShardRanges, run_shards_here


def reference_in_driver(config: SweepConfig, address: str | None) -> bool:
    """Whether the reference pass runs in the driver process, while a local Ray instance starts.

    On CPU with a local instance, the driver has already imported the ML stack (to check the data), and a Ray task
    would start a fresh process that imports it again; on a cluster or a GPU the pass runs as a Ray task on one trial
    worker's resources (its GPU, its node's view of the shared storage), and in several shards (more than one asked
    for) as parallel Ray tasks. Decide before :func:`init_ray`, which changes what :func:`joins_cluster` sees.
    """
    resources = config.resources
    return (
        config.share_reference
        and not resources.use_gpu
        and resources.reference_shard_count() == 1
        and not joins_cluster(address)
    )


def _on_workers(resources: ResourcesConfig) -> RunShards:
    """A :data:`RunShards` that runs every shard at once, each as a Ray task on one trial worker's resources."""

    def run(fn: Callable[..., ShardRanges], args_list: Sequence[tuple[Any, ...]]) -> list[ShardRanges]:
        import ray

        task = on_worker_resources(fn, resources)
        # Every argument goes to the object store once (the pairs are the same for every shard), not once per task.
        stored: dict[int, Any] = {}
        for arg in (arg for args in args_list for arg in args):
            if id(arg) not in stored:
                stored[id(arg)] = ray.put(arg)
        pending = [task.remote(*(stored[id(arg)] for arg in args)) for args in args_list]
        try:
            return ray.get(pending)
        except BaseException:
            # The build directory the others write into is about to be removed: stop them.
            for ref in pending:
                ray.cancel(ref)
            raise

    return run


def _computed(
    train: TrainConfig, data: PreferenceData, root: str, shards: int, run_shards: RunShards | None
) -> tuple[ReferenceLogps, int]:
    """:func:`compute_reference_logps`, and how many shards it ran (0: the log-probs were stored already)."""
    ran: list[int] = []

    def counted(fn: Callable[..., ShardRanges], args_list: Sequence[tuple[Any, ...]]) -> list[ShardRanges]:
        ran.append(len(args_list))
        return (run_shards or run_shards_here)(fn, args_list)

    return compute_reference_logps(train, data, root, shards=shards, run_shards=counted), sum(ran)


def shared_reference(config: SweepConfig, data: PreferenceData, storage_path: str, in_driver: bool) -> ReferenceLogps:
    """Compute (or find stored) the sweep's reference log-probs and tokenised pairs, here or as Ray tasks."""
    started = time.monotonic()
    root = str(Path(storage_path) / "reference")
    shards = config.resources.reference_shard_count()
    if in_driver:
        from sweep.trials.trainable import quiet_progress_bars

        quiet_progress_bars()
        reference, ran = _computed(config.train, data, root, shards, None)
        where = "in the driver"
    elif shards == 1:
        import ray

        task = on_worker_resources(_computed, config.resources)
        reference, ran = ray.get(task.remote(config.train, data, root, shards, None))
        where = "as a Ray task"
    else:
        reference, ran = _computed(config.train, data, root, shards, _on_workers(config.resources))
        where = "as parallel Ray tasks"
    done = f"{ran} shard{'s' if ran != 1 else ''} {where}" if ran else "stored already"
    print(
        f"[sweep] reference log-probs {reference.key} ready in {time.monotonic() - started:.1f} s ({done}): "
        f"{reference.path}"
    )
    return reference
