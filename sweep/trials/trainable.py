"""One sweep trial on Ray: a Tune function trainable that trains in its own process, or on a ``TorchTrainer``.

A one-worker trial trains in the Tune trial's process (:func:`tune_trial`), which Tune reuses across trials, so
imports, the tokenizer and the base weights are paid once per process. A multi-worker trial follows the Tune/Train
interop that Ray 2.60 documents for Train V2: the Tune trial builds a ``TorchTrainer`` whose ``ScalingConfig``
gives the trial its own placement group (one bundle per worker; gloo on CPUs, NCCL on GPUs), and
``TuneReportCallback`` forwards rank 0's ``ray.train.report`` calls to Tune. Either way the divergence stopper,
ASHA and the MLflow callback see the same reports.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray.train
import ray.tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2._internal.constants import WORKER_GROUP_START_TIMEOUT_S_ENV_VAR
from ray.tune.integration.ray_train import TuneReportCallback

from sweep.config import ResourcesConfig
from trainers.config import LossConfig, TrainConfig
from trainers.protocol import HELD_OUT_ACCURACY, Metric, ReportKey, ReportType

if TYPE_CHECKING:
    pass

# transformers, TRL, datasets and the evaluation stack are imported where they are used: this module is also
# imported by each trial's Tune actor and Train controller, which only wait on the workers, and importing them there
# would add seconds to every trial's start on a CPU-bound node.

TRIAL_DRIVER_MEMORY = 256 * 1024**2
"""Bytes of memory the Tune side of a multi-worker trial reserves (it holds no model)."""

CONTROLLER_RETRIES = 3
"""Attempts of a trial's Train controller to start its worker group before the trial fails."""

WORKERS_LOG = "workers.jsonl"
"""In a trial's output dir: one line per worker process that started the trial (rank, pid, node, time).

Tells an operator which processes (and logs) belong to a trial; the rank-0 lines count the trial's attempts.
"""


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric entries only (Tune results must be flat scalars); NaN/Inf are kept: they are evidence."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def quiet_progress_bars() -> None:
    """No progress bars from datasets, transformers and TRL in this process: many trials' bars interleave into noise,
    and the sweep prints one line per trial event instead (:mod:`sweep.trials.progress`)."""
    import datasets
    import transformers

    os.environ["TQDM_DISABLE"] = "1"  # read at each call by TRL's reference pass
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def train_and_report(config: dict[str, Any], report: Callable[[dict[str, float]], None], *, warm: bool) -> None:
    """Train one trial, reporting every logged step, every held-out evaluation and the final verdict.

    Args:
        config: ``{"train": TrainConfig fields, "loss": LossConfig fields, "reference": ReferenceLogps fields or
            None, "storage": check_trial_storage's arguments (its token None: no check), "peak_tflops":
            resources.peak_tflops}``.
        report: ``ray.tune.report`` in a one-process trial, ``ray.train.report`` on each worker of a multi-worker
            one (every rank reports; Ray Train forwards rank 0's reports to Tune).
        warm: Reuse the base weights and tokenizer this process already holds (:mod:`trainers.models.cache`).
    """
    from trainers.reference.logps import ReferenceLogps
    from trainers.trial_runner import run_trial

    started_at = time.time()
    quiet_progress_bars()
    train = TrainConfig(**config["train"])
    loss = LossConfig(**config["loss"])
    latest: dict[str, float] = {}

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        values = _scalar_metrics(metrics)
        if HELD_OUT_ACCURACY in values:
            report(_report(values, step, ReportType.EVAL))
        elif Metric.LOSS in values:
            latest.update(values)
            report(_report(values, step, ReportType.TRAIN))

    if config.get("storage", {}).get("token"):
        from sweep.cluster.storage import check_trial_storage  # its error class pulls in the preflight's ML imports

        check_trial_storage(**config["storage"])  # this node may have joined after the sweep's storage check
    reference = ReferenceLogps(**config["reference"]) if config.get("reference") else None
    peak_tflops = config.get("peak_tflops")
    result = run_trial(train, loss, reference=reference, on_metrics=on_metrics, warm=warm, peak_tflops=peak_tflops)
    verdict = result.verdict
    final = {
        **latest,
        **_scalar_metrics(result.train_metrics),
        **_scalar_metrics(result.eval_metrics),
        ReportKey.FINAL.value: 1,
        ReportKey.EVAL_PAIRS.value: result.eval_pairs,
        ReportKey.STARTED_AT.value: started_at,
        ReportKey.WORK_SECONDS.value: result.work_seconds,
        ReportKey.ENDED_AT.value: time.time(),
        "verdict/diverged": float(verdict.diverged),
        "verdict/step": float(verdict.step) if verdict.step is not None else math.nan,
    }
    report(_report(final, result.steps, ReportType.FINAL))


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker loop of a multi-worker trial (a fresh process per trial: nothing to keep warm)."""
    group = ray.get_runtime_context().get_placement_group_id()
    _log_worker(Path(config["train"]["output_dir"]), ray.train.get_context().get_world_rank(), group)
    train_and_report(config, ray.train.report, warm=False)


def _report(values: dict[str, float], step: int, kind: ReportType) -> dict[str, float]:
    """A report to Tune: the values plus its step and type, keyed by plain strings (Tune's results are pickled)."""
    return {**values, ReportKey.STEP.value: step, ReportKey.REPORT_TYPE.value: int(kind)}


def _log_worker(output_dir: Path, rank: int, placement_group: str | None = None) -> None:
    """Append this worker process to the trial's :data:`WORKERS_LOG` (one short line, atomic on POSIX), with the
    placement group of a Ray Train worker."""
    output_dir.mkdir(parents=True, exist_ok=True)
    line = {"rank": rank, "pid": os.getpid(), "node": socket.gethostname(), "started_at": time.time()}
    if placement_group is not None:
        line["placement_group"] = placement_group
    with (output_dir / WORKERS_LOG).open("a") as log:
        log.write(json.dumps(line) + "\n")


def trial_attempts(output_dir: Path) -> int:
    """How many times the trial started: the rank-0 lines of its :data:`WORKERS_LOG` (0 if it never did)."""
    path = output_dir / WORKERS_LOG
    if not path.is_file():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(line["rank"] == 0 for line in lines)


def release_worker_placement_groups(output_dir: Path) -> list[str]:
    """Remove the placement groups that the trial's Ray Train workers ran in (its :data:`WORKERS_LOG`) and that are
    still there; call it once the trial's ``TorchTrainer.fit`` has returned, when nothing uses them any more.

    A Train run removes its worker group's placement group as its controller shuts down, and a detached cleaner
    removes it if the controller dies first. After a worker is killed, Ray 2.60 can lose it between the two: the
    controller stops the cleaner, the controller's handle is released mid-shutdown, the controller is force-killed
    30 s later, and the group holds its CPUs (GPUs) until the sweep ends, so the next trial waits for them past its
    placement patience (BENCHMARKS.md section 7).

    Returns:
        The ids of the groups removed here.
    """
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    path = output_dir / WORKERS_LOG
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    removed = []
    for group_id in sorted({line["placement_group"] for line in lines if line.get("placement_group")}):
        group = PlacementGroup(PlacementGroupID.from_hex(group_id))
        if placement_group_table(group).get("state", "REMOVED") == "REMOVED":
            continue
        try:
            remove_placement_group(group)
        except Exception as err:  # noqa: BLE001 - removed meanwhile, or the GCS busy: never mask the trial's result
            print(f"[trial] placement group {group_id} left by Ray Train could not be removed: {err}", flush=True)
            continue
        removed.append(group_id)
    return removed


def trial_output_dir(storage_path: str, experiment: str, trial_id: str) -> Path:
    """Where a trial saves its final policy (``model/``), on the sweep's storage so the driver can read it."""
    return Path(storage_path) / experiment / "trials" / trial_id


def trains_in_process(num_workers: int, deepspeed: str | None) -> bool:
    """Whether a trial trains in its Tune trial's own process: one worker and no DeepSpeed.

    DeepSpeed needs the distributed environment (rank, world size, rendezvous) that a Ray Train worker group sets
    up, and ZeRO-3 partitions the weights as it loads them, which a process-wide cached copy would defeat.
    """
    return num_workers == 1 and not deepspeed


def trial_resources(resources: ResourcesConfig, deepspeed: str | None) -> dict[str, float]:
    """What the Tune side of a trial reserves.

    A trial that trains in its own process (:func:`trains_in_process`) holds the worker's CPUs and GPUs. Otherwise
    the Tune side only waits on its ``TorchTrainer``, whose workers hold the CPUs/GPUs on their own placement group:
    it reserves a little memory and no CPU, so a 2-CPU machine can still run a 2-CPU trial.
    """
    if trains_in_process(resources.num_workers, deepspeed):
        needs = {"cpu": resources.cpus_per_worker}
        if resources.use_gpu:
            needs["gpu"] = resources.gpus_per_worker
        return needs
    return {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY}


def tune_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: one trial, in this process or on a ``TorchTrainer`` of several workers.

    With one worker and no DeepSpeed (:func:`trains_in_process`) the trial trains right here: no Train controller,
    no worker group, no DDP wrapper, and a process Tune reuses for the next trial (``reuse_actors``) starts it warm.
    Otherwise it runs a
    ``TorchTrainer`` on its own placement group (one bundle per worker; gloo on CPUs, NCCL on GPUs), whose rank 0
    reports reach Tune through ``TuneReportCallback``. Both report the same metrics.

    Args:
        config: ``{"trial": {"loss": ..., "seed": ...}, "train": base TrainConfig fields, "resources": ...}``
            as built by the sweep driver.
    """
    context = ray.tune.get_context()
    trial = config["trial"]
    resources = config["resources"]
    train = {**config["train"], "seed": trial["seed"]}
    train["output_dir"] = str(trial_output_dir(config["storage_path"], config["experiment"], context.get_trial_id()))
    storage = {
        "storage_path": config["storage_path"],
        "experiment": config["experiment"],
        "token": config.get("storage_token"),
    }
    loop_config = {
        "train": train,
        "loss": trial["loss"],
        "reference": config.get("reference"),
        "storage": storage,
        "peak_tflops": resources.get("peak_tflops"),
    }
    if trains_in_process(resources["num_workers"], train.get("deepspeed")):
        _log_worker(Path(train["output_dir"]), rank=0)
        train_and_report(loop_config, ray.tune.report, warm=True)
        return
    use_gpu = resources["use_gpu"]
    worker_resources = {"CPU": resources["cpus_per_worker"]}
    if use_gpu:
        worker_resources["GPU"] = resources["gpus_per_worker"]
    # Read by the Train controller this trial starts (Ray propagates it from here): how long the worker group may
    # wait for its placement group, e.g. for an autoscaled GPU node to boot, before the attempt counts as failed.
    os.environ[WORKER_GROUP_START_TIMEOUT_S_ENV_VAR] = str(float(resources["placement_timeout_s"]))
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources["num_workers"],
            use_gpu=use_gpu,
            resources_per_worker=worker_resources,
            placement_strategy=resources["placement_strategy"],
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{context.get_trial_id()}",
            storage_path=config["storage_path"],
            callbacks=[TuneReportCallback()],
            # A crashed trial is retried by Tune (resources.max_failures) from a clean start; the controller itself
            # gives up after a few failed attempts to start its workers instead of retrying forever.
            failure_config=ray.train.FailureConfig(max_failures=0, controller_failure_limit=CONTROLLER_RETRIES),
        ),
    )
    try:
        trainer.fit()
    finally:
        if removed := release_worker_placement_groups(Path(train["output_dir"])):
            print(f"[trial] removed placement group(s) {', '.join(removed)} that Ray Train left behind", flush=True)
