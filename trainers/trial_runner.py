"""One preference-optimisation trial as a library call: data, reference log-probs, TRL trainer, verdict.

:func:`run_trial` is what the sweep's Ray trial and the ``python -m trainers.train`` CLI both call.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from trainers.collapse import DivergenceMonitor, Verdict
from trainers.config import LossConfig, TrainConfig
from trainers.data import PreferenceData, load_preference_data
from trainers.dpo_config import PRECISION_DTYPES, build_dpo_config
from trainers.models import load_model, load_tokenizer
from trainers.models.cache import fresh_model, fresh_tokenizer, release_accelerator_memory
from trainers.protocol import HELD_OUT_ACCURACY, Metric, ReportKey, TrialStatus
from trainers.reference.logps import ReferenceLogps, reference_datasets
from trainers.settling import SettleCallback
from trainers.trl_trainer import CollapseCallback, RegistryDPOTrainer
from trainers.verdicts import BehaviourVerdict, judge_behaviour


@dataclass
class TrialResult:
    """What one trial produced.

    Attributes:
        verdict: The divergence verdict: ``stable`` or ``diverged`` with reason, step and kind.
        steps: Optimizer steps taken.
        behaviour: For a trial that did not diverge, its behavioural verdict (stable / stalled / collapsed) from
            its held-out evaluations (:func:`trainers.verdicts.judge_behaviour`).
        eval_pairs: Held-out pairs each evaluation averaged over (after TRL dropped pairs it cannot fit).
        train_metrics: The last logged training step's metrics.
        eval_metrics: The last held-out evaluation's metrics (``eval_*`` keys), empty if none ran.
        history: Every logged dict, in order, each with its ``step``.
        model_dir: Where the final policy was saved, if it was.
        data_dropped: Malformed rows dropped per reason (``on_bad_rows="drop"``).
        work_seconds: Wall time of the trial's own work: training steps, held-out evaluations and the final save
            (not data or model loading nor the trainer's set-up).
    """

    verdict: Verdict
    steps: int
    behaviour: BehaviourVerdict | None = None
    eval_pairs: int = 0
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    model_dir: str | None = None
    data_dropped: dict[str, int] = field(default_factory=dict)
    work_seconds: float = 0.0

    @property
    def status(self) -> TrialStatus:
        """``diverged``, else the behavioural verdict if it settled, else ``unsettled`` (``collapsed`` when no
        evaluation had a finite accuracy)."""
        if self.verdict.diverged:
            return TrialStatus.DIVERGED
        if self.behaviour is None:
            return TrialStatus.COLLAPSED
        return TrialStatus(self.behaviour.status) if self.behaviour.settled else TrialStatus.UNSETTLED

    @property
    def held_out_accuracy(self) -> float:
        """Final held-out preference accuracy (NaN if no evaluation ran)."""
        return float(self.eval_metrics.get(HELD_OUT_ACCURACY, math.nan))

    def summary(self) -> dict[str, object]:
        """JSON-serialisable summary (no history)."""
        return {
            "status": str(self.status),
            "verdict": self.verdict.as_dict(),
            "behaviour": self.behaviour.as_dict() if self.behaviour else None,
            "eval_pairs": self.eval_pairs,
            "steps": self.steps,
            "train_metrics": self.train_metrics,
            "eval_metrics": self.eval_metrics,
            "model_dir": self.model_dir,
            "data_dropped": self.data_dropped,
        }


def load_trial_data(train: TrainConfig) -> PreferenceData:
    """Load and validate the trial's preference data (fails before any model is loaded)."""
    return load_preference_data(
        train.data,
        eval_fraction=train.eval_fraction,
        eval_source=train.eval_data,
        max_train_rows=train.max_train_rows,
        max_eval_rows=train.max_eval_rows,
        seed=train.data_seed,
        on_bad_rows=train.on_bad_rows,
    )


def _rows_consumed(train: TrainConfig, available: int) -> int | None:
    """Pairs a ``max_steps`` run can consume, when fewer than ``available``; ``None`` otherwise.

    Reference log-probs are precomputed for every training pair, so a short run on a large set would pay
    for pairs it never sees: it trains on a seeded random subset of exactly the pairs it needs instead.
    """
    if train.max_steps < 1:
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # max_steps, not the extension budget: an extended trial goes on into a second pass over the same pairs, so its
    # first max_steps steps are exactly those of a trial without the budget.
    needed = train.max_steps * train.per_device_batch_size * train.grad_accum * world
    return needed if needed < available else None


def _trial_datasets(
    train: TrainConfig, data: PreferenceData, reference: ReferenceLogps | None
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The trial's train and held-out datasets: tokenised with reference log-probs from the shared pass, else raw
    (TRL tokenises them and runs the reference pass itself); the train set cut to what ``max_steps`` consumes."""
    train_rows = _rows_consumed(train, len(data.train))
    if reference is not None:
        return reference_datasets(data, reference, train_rows=train_rows, seed=train.seed)
    if train_rows:
        return data.train.shuffle(seed=train.seed).select(range(train_rows)), data.eval
    return data.train, data.eval


def run_trial(
    train: TrainConfig,
    loss: LossConfig,
    *,
    data: PreferenceData | None = None,
    reference: ReferenceLogps | None = None,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    warm: bool = False,
    peak_tflops: float | None = None,
) -> TrialResult:
    """Fine-tune one (loss, beta_kl, beta_mix, seed) and return its metrics and verdict.

    Args:
        train: Training configuration.
        loss: Loss configuration.
        data: Preloaded preference data (else loaded from ``train.data``).
        reference: Shared reference log-probs of exactly these pairs (a sweep computes them once); without them
            the trial runs TRL's reference precompute itself.
        on_metrics: Called with ``(step, metrics)`` for every logged dict (train steps and evaluations).
        callbacks: Extra transformers callbacks (e.g. checkpoint reporting in a sweep).
        warm: Take the base weights and tokenizer from this process's cache (:mod:`trainers.models.cache`), loading
            them only the first time, and free the accelerator memory the trial used when it ends: for a process
            that runs trial after trial. The trial starts from exactly the weights a cold load gives.
        peak_tflops: Peak TFLOP/s of one accelerator for the ``perf/mfu`` metric (``resources.peak_tflops``);
            ``None``: looked up by the CUDA device's name (:mod:`trainers.telemetry`), no MFU on a CPU.

    Returns:
        The :class:`TrialResult`. A diverged trial returns normally with ``verdict.status == "diverged"``.
    """
    data = data if data is not None else load_trial_data(train)
    train_dataset, eval_dataset = _trial_datasets(train, data, reference)
    dtype = PRECISION_DTYPES[train.precision]
    # The DPOConfig (and with it the DeepSpeed config) exists before the model is loaded, so that under ZeRO-3
    # transformers' from_pretrained partitions the weights at load (zero.Init) instead of each rank holding them all.
    args = build_dpo_config(train, loss)
    if warm:
        release_accelerator_memory()  # what a trial stopped mid-step (by Tune) left behind
        tokenizer, model = fresh_tokenizer(train.model), fresh_model(train.model, dtype)
    else:
        tokenizer, model = load_tokenizer(train.model), load_model(train.model, dtype=dtype)
    collapse = CollapseCallback(DivergenceMonitor(train.divergence), on_metrics=on_metrics)
    trainer = RegistryDPOTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=[collapse, *callbacks],
        loss=loss,
        shared_prefix=train.shared_prefix,
        peak_tflops=peak_tflops,
    )
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    eval_pairs = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    if train.settles_early_or_late:
        from_step = train.min_steps or train.max_steps
        trainer.add_callback(SettleCallback(train.max_steps, from_step, collapse, eval_pairs, train.verdicts))
    work_started = time.monotonic()
    trainer.train()
    verdict = collapse.verdict
    evaluated_last_step = any(
        HELD_OUT_ACCURACY in h and h[ReportKey.STEP] == trainer.state.global_step for h in collapse.history
    )
    if not verdict.diverged and not evaluated_last_step:
        trainer.evaluate()
    model_dir = None
    if train.save_model and not verdict.diverged:
        model_dir = str(Path(train.output_dir) / "model")
        trainer.save_model(model_dir)
        tokenizer.save_pretrained(model_dir)
    work_seconds = time.monotonic() - work_started
    train_steps = [h for h in collapse.history if Metric.LOSS in h]
    evals = [h for h in collapse.history if HELD_OUT_ACCURACY in h]
    steps = trainer.state.global_step
    if warm:
        del trainer, model  # the trial's weights, optimizer state and activations: freed before the next trial
        release_accelerator_memory()
    return TrialResult(
        verdict=verdict,
        behaviour=None if verdict.diverged else judge_behaviour(evals, eval_pairs, train.verdicts),
        eval_pairs=eval_pairs,
        steps=steps,
        train_metrics=dict(train_steps[-1]) if train_steps else {},
        eval_metrics=dict(evals[-1]) if evals else {},
        history=collapse.history,
        model_dir=model_dir,
        data_dropped=dict(data.dropped),
        work_seconds=work_seconds,
    )
