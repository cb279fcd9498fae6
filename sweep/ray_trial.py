"""One sweep trial on Ray: a Tune function trainable that runs a Ray Train ``TorchTrainer``.

This follows the Tune/Train interop that Ray 2.60 documents for Train V2: the Tune trial
(:func:`tune_trial`) builds a ``TorchTrainer`` whose ``ScalingConfig`` gives the trial its own placement group
(one bundle per worker; gloo on CPUs, NCCL on GPUs), and ``TuneReportCallback`` forwards rank 0's
``ray.train.report`` calls to Tune, where the divergence stopper, ASHA and the MLflow callback see them.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray.train
import ray.tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2._internal.constants import WORKER_GROUP_START_TIMEOUT_S_ENV_VAR
from ray.tune.integration.ray_train import TuneReportCallback

from trainers.config import LossConfig, TrainConfig
from trainers.protocol import HELD_OUT_ACCURACY, Metric, ReportKey, ReportType

if TYPE_CHECKING:
    from evaluation.config import EvalConfig

# transformers, TRL, datasets and the evaluation stack are imported where they are used: this module is also
# imported by each trial's Tune actor and Train controller, which only wait on the workers, and importing them there
# would add seconds to every trial's start on a CPU-bound node.

CONTROLLER_RETRIES = 3
"""Attempts of a trial's Train controller to start its worker group before the trial fails."""

WORKERS_LOG = "workers.jsonl"
"""In a trial's output dir: one line per worker process that started the trial (rank, pid, node, time).

Tells an operator which processes (and logs) belong to a trial; the rank-0 lines count the trial's attempts.
"""


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric entries only (Tune results must be flat scalars); NaN/Inf are kept: they are evidence."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker loop: train one trial, reporting every logged step and the final verdict.

    Args:
        config: ``{"train": TrainConfig fields, "loss": LossConfig fields, "reference": ReferenceLogps fields or
            None}``.
    """
    import datasets

    from trainers.reference import ReferenceLogps
    from trainers.trial_runner import run_trial

    os.environ["TQDM_DISABLE"] = "1"  # progress bars of many workers interleave into noise in the driver log
    datasets.disable_progress_bars()
    train = TrainConfig(**config["train"])
    loss = LossConfig(**config["loss"])
    _log_worker(Path(train.output_dir), ray.train.get_context().get_world_rank())
    latest: dict[str, float] = {}

    def report(step: int, metrics: dict[str, float]) -> None:
        values = _scalar_metrics(metrics)
        if HELD_OUT_ACCURACY in values:
            ray.train.report(_report(values, step, ReportType.EVAL))
        elif Metric.LOSS in values:
            latest.update(values)
            ray.train.report(_report(values, step, ReportType.TRAIN))

    reference = ReferenceLogps(**config["reference"]) if config.get("reference") else None
    result = run_trial(train, loss, reference=reference, on_metrics=report)
    verdict = result.verdict
    final = {
        **latest,
        **_scalar_metrics(result.train_metrics),
        **_scalar_metrics(result.eval_metrics),
        ReportKey.FINAL.value: 1,
        ReportKey.EVAL_PAIRS.value: result.eval_pairs,
        "verdict/diverged": float(verdict.diverged),
        "verdict/step": float(verdict.step) if verdict.step is not None else math.nan,
    }
    ray.train.report(_report(final, result.steps, ReportType.FINAL))


def _report(values: dict[str, float], step: int, kind: ReportType) -> dict[str, float]:
    """A report to Tune: the values plus its step and type, keyed by plain strings (Tune's results are pickled)."""
    return {**values, ReportKey.STEP.value: step, ReportKey.REPORT_TYPE.value: int(kind)}


def _log_worker(output_dir: Path, rank: int) -> None:
    """Append this worker process to the trial's :data:`WORKERS_LOG` (one short line, atomic on POSIX)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    line = {"rank": rank, "pid": os.getpid(), "node": socket.gethostname(), "started_at": time.time()}
    with (output_dir / WORKERS_LOG).open("a") as log:
        log.write(json.dumps(line) + "\n")


def trial_attempts(output_dir: Path) -> int:
    """How many times the trial started: the rank-0 lines of its :data:`WORKERS_LOG` (0 if it never did)."""
    path = output_dir / WORKERS_LOG
    if not path.is_file():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(line["rank"] == 0 for line in lines)


def trial_output_dir(storage_path: str, experiment: str, trial_id: str) -> Path:
    """Where a trial saves its final policy (``model/``), on the sweep's storage so the driver can read it."""
    return Path(storage_path) / experiment / "trials" / trial_id


def generate_mt_bench_answers(model_dir: str, precision: str, cfg: EvalConfig, out_dir: str, model_id: str) -> str:
    """Ray task: answer the MT-Bench questions with a trial's saved policy; returns the answers file.

    Runs on a trial's resources (the GPU a 7B policy needs); judging happens in the driver.
    """
    import torch

    from evaluation.mt_bench import write_answers
    from trainers.dpo_config import PRECISION_DTYPES
    from trainers.models import load_model, load_tokenizer

    model = load_model(model_dir, dtype=PRECISION_DTYPES[precision])
    if torch.cuda.is_available():
        model = model.to("cuda")
    return str(write_answers(model, load_tokenizer(model_dir), cfg, Path(out_dir), model_id))


def tune_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: run the trial's ``TorchTrainer`` on its own placement group.

    Args:
        config: ``{"trial": {"loss": ..., "seed": ...}, "train": base TrainConfig fields, "resources": ...}``
            as built by the sweep driver.
    """
    context = ray.tune.get_context()
    trial = config["trial"]
    resources = config["resources"]
    train = {**config["train"], "seed": trial["seed"]}
    train["output_dir"] = str(trial_output_dir(config["storage_path"], config["experiment"], context.get_trial_id()))
    use_gpu = resources["use_gpu"]
    worker_resources = {"CPU": resources["cpus_per_worker"]}
    if use_gpu:
        worker_resources["GPU"] = resources["gpus_per_worker"]
    # Read by the Train controller this trial starts (Ray propagates it from here): how long the worker group may
    # wait for its placement group, e.g. for an autoscaled GPU node to boot, before the attempt counts as failed.
    os.environ[WORKER_GROUP_START_TIMEOUT_S_ENV_VAR] = str(float(resources["placement_timeout_s"]))
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"train": train, "loss": trial["loss"], "reference": config.get("reference")},
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
    trainer.fit()
