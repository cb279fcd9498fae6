"""Typed configuration of the resources one sweep trial holds (``resources:`` in a sweep YAML)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainers.typed_config import ConfigError, option, validate

PlacementStrategy = Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"]
"""Ray placement-group strategies (``ray.util.placement_group``)."""


@dataclass
class ResourcesConfig:
    """Resources of one trial: one worker trains in its Tune trial process, several on a Ray Train ``TorchTrainer``."""

    num_workers: int = option(
        1, gt=0, help="Data-parallel training workers per trial (its placement group has one bundle each)."
    )
    use_gpu: bool = option(False, help="Train on GPUs (NCCL backend) instead of CPUs (gloo backend).")
    cpus_per_worker: float = option(2, gt=0, help="CPUs reserved per worker (torch uses as many threads).")
    gpus_per_worker: float = option(1, help="GPUs reserved per worker when ``use_gpu`` (then it must be > 0).")
    max_concurrent_trials: int | None = option(
        None, gt=0, help="Cap on trials running at once; ``null`` derives it from the cluster's resources."
    )
    autoscale: bool = option(
        False,
        help="The cluster grows on demand (``ray up`` / KubeRay autoscaling): skip the check that one trial fits the "
        "resources present at launch, and leave concurrency to ``max_concurrent_trials``.",
    )
    placement_strategy: PlacementStrategy = option(
        "STRICT_PACK",
        help="Placement of a trial's workers (its placement group): ``STRICT_PACK`` keeps all of them on one node, so "
        "an 8-GPU ZeRO-3 trial never gathers its weights across nodes; ``PACK`` may spread them when no single node "
        "has room (needs a fast inter-node network).",
    )
    placement_timeout_s: float = option(
        900.0,
        gt=0,
        help="How long a trial's worker group waits for its placement group before the attempt fails (Ray Train's "
        "worker-group start timeout, 60 s by default); on an autoscaling cluster it must cover a GPU node's boot and "
        "image pull. A trial fails after 3 such attempts.",
    )
    max_failures: int = option(
        1,
        ge=0,
        help="Retries of a trial whose process crashed (exception, OOM, killed worker); a diverged trial is a result "
        "and is never retried.",
    )
    reference_shards: int | None = option(
        None,
        gt=0,
        help="Shards of the sweep's shared reference pass, run as parallel Ray tasks on one trial worker's resources "
        "each (contiguous ranges of whole reference batches, so the log-probs are the same as from one pass); "
        "``null``: one per trial worker with ``use_gpu`` (the 8 GPUs of an 8-worker trial score 1/8 of the pairs "
        "each), else 1 (in the driver on a local CPU instance).",
    )
    peak_tflops: float | None = option(
        None,
        gt=0,
        help="Peak TFLOP/s of one accelerator at the trial's precision, for the ``perf/mfu`` metric (model FLOPs "
        "utilisation); ``null``: looked up by the CUDA device's name for H100, H200 and A100 (dense bf16 or fp32 "
        "peak, ``trainers/telemetry.py``), no MFU on other devices or on CPUs.",
    )

    def __post_init__(self) -> None:
        validate(self, label="resources")

    def _check(self) -> None:
        if self.use_gpu and not self.gpus_per_worker > 0:
            raise ConfigError(f"must be > 0 with use_gpu, got {self.gpus_per_worker!r}", "gpus_per_worker")

    def reference_shard_count(self) -> int:
        """How many shards the shared reference pass runs in (``reference_shards``, else its default)."""
        if self.reference_shards is not None:
            return self.reference_shards
        return self.num_workers if self.use_gpu else 1

    def per_trial(self) -> dict[str, float]:
        """Total resources one trial's workers reserve (``{"CPU": .., "GPU": ..}``)."""
        total = {"CPU": self.cpus_per_worker * self.num_workers}
        if self.use_gpu:
            total["GPU"] = self.gpus_per_worker * self.num_workers
        return total
