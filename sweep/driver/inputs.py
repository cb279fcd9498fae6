"""The driver's first phase, before any cluster work: every input the sweep will use is loaded and checked once."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from sweep.cluster.connect import joins_cluster
from sweep.config import SweepConfig, to_dict
from sweep.errors import SweepInputError
from sweep.scoring.alpaca_eval.preflight import check_alpaca_eval
from sweep.scoring.mt_bench.preflight import check_mt_bench
from sweep.scoring.preflight import check_generation_backends
from trainers.data import PreferenceData, PreferenceDataError
from trainers.data.summary import DataSummary, summarize_data
from trainers.dpo_config import resolve_deepspeed_config
from trainers.models import load_tokenizer, resolve_model_path
from trainers.trial_runner import load_trial_data
from trainers.verdicts import CHANCE_ACCURACY, VerdictConfig, accuracy_noise

CONFIG_FILE = "sweep_config.json"
"""The sweep's config, stored in its experiment directory: rerunning the same config resumes the sweep."""

EVALUATIONS = ("mt_bench", "alpaca_eval")
"""The config sections of the benchmarks that score trials' saved policies after training."""

LEARNING_THRESHOLD_WARNING = 0.8
"""Above this learning threshold (held-out accuracy a trial must exceed to count as learning) the sweep warns: only
a policy that orders nearly every held-out pair right can be ``stable``."""


@dataclass
class SweepInputs:
    """What validation loaded: the sweep's preference data, what tokenisation makes of it, and warnings to print."""

    data: PreferenceData
    summary: DataSummary
    warnings: list[str] = field(default_factory=list)


def with_policies_saved(config: SweepConfig) -> tuple[SweepConfig, str | None]:
    """The config a sweep runs: ``train.save_model`` turned on when an evaluation scores trials' saved policies.

    MT-Bench and AlpacaEval generate with a trial's saved policy, and which trials ``top_k`` picks is known only once
    every trial has ended, so every trial that trains to the end saves its policy. Decided here, before the stored
    config is compared for a resume, so rerunning the same command decides the same.

    Returns:
        The config (unchanged when nothing is scored or policies are saved already) and the line that says what
        changed, or ``None``.
    """
    scoring = [f"{section}.policy={getattr(config, section).policy}" for section in EVALUATIONS]
    scoring = [policy for policy in scoring if not policy.endswith("=none")]
    if not scoring or config.train.save_model:
        return config, None
    saved = dataclasses.replace(config, train=dataclasses.replace(config.train, save_model=True))
    return saved, (
        f"train.save_model=true (was false): {' and '.join(scoring)} score(s) trials' saved policies, so every trial "
        "that trains to the end saves its policy"
    )


def check_held_out_size(n_pairs: int, verdicts: VerdictConfig) -> str | None:
    """Whether ``n_pairs`` held-out pairs can tell learning from chance under the verdict rules.

    A trial counts as learning when its final held-out accuracy exceeds ``CHANCE_ACCURACY + accuracy_noise(n_pairs,
    stall_z)`` (:mod:`trainers.verdicts`); with few pairs that threshold reaches 1, and every trial that trains to
    the end would be ``stalled`` however well it learned.

    Returns:
        A warning naming the minimum accuracy when the threshold is above :data:`LEARNING_THRESHOLD_WARNING`, else
        ``None``.

    Raises:
        SweepInputError: No accuracy can exceed the threshold; naming the held-out pairs needed.
    """
    threshold = _learning_threshold(n_pairs, verdicts.stall_z)
    why = (
        f"with {n_pairs} held-out pairs (after max_length) a trial counts as learning only above a held-out "
        f"accuracy of {threshold:.3f} ({CHANCE_ACCURACY:g} + train.verdicts.stall_z={verdicts.stall_z:g} standard "
        f"errors)"
    )
    more = "train.max_eval_rows / train.eval_fraction / train.eval_data"
    if threshold >= 1.0:
        need = _pairs_below(1.0, verdicts.stall_z)
        raise SweepInputError(
            f"train.verdicts: {why}, which no accuracy can exceed: every trial would be stalled. Use at least {need} "
            f"held-out pairs ({more}) or lower train.verdicts.stall_z"
        )
    if threshold > LEARNING_THRESHOLD_WARNING:
        need = _pairs_below(LEARNING_THRESHOLD_WARNING, verdicts.stall_z, inclusive=True)
        return (
            f"train.verdicts: {why}: only a trial ordering nearly every held-out pair right is stable; "
            f"{need} held-out pairs bring the threshold to {LEARNING_THRESHOLD_WARNING:g} ({more})"
        )
    return None


def _learning_threshold(n_pairs: int, stall_z: float) -> float:
    return CHANCE_ACCURACY + accuracy_noise(n_pairs, stall_z)


def _pairs_below(threshold: float, stall_z: float, *, inclusive: bool = False) -> int:
    """The fewest held-out pairs whose learning threshold is below ``threshold`` (at most, with ``inclusive``)."""

    def fits(n: int) -> bool:
        value = _learning_threshold(n, stall_z)
        return value <= threshold if inclusive else value < threshold

    high = 1
    while not fits(high):  # the threshold falls as the pairs grow (as 1 / sqrt(n))
        high *= 2
    low = high // 2  # fits(low) is false (or low is 0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def resumes_existing_sweep(config: SweepConfig, storage_path: str, resume: bool) -> bool:
    """Whether the sweep continues an earlier one: rerunning the same config resumes it; a different config under
    the same name needs ``resume``.

    Raises:
        SweepInputError: A different config is stored under this name and ``resume`` is false.
    """
    stored = Path(storage_path) / config.name / CONFIG_FILE
    if not stored.is_file():
        return resume
    current = json.loads(json.dumps(to_dict(config), sort_keys=True))
    if json.loads(stored.read_text()) == current:
        return True
    if not resume:
        raise SweepInputError(
            f"a sweep named {config.name!r} with a different config exists in {stored.parent}; pass --resume "
            "to continue it with this config, or --name to start a new sweep"
        )
    return resume


def load_inputs(config: SweepConfig, address: str | None) -> SweepInputs:
    """Check model spec, data rows, DeepSpeed config and what evaluations will need; materialise the embedded model
    once.

    Args:
        config: The validated sweep config.
        address: The Ray address the sweep will join (``None``: a local instance unless the environment names one).

    Raises:
        SweepInputError: Naming what is wrong.
    """
    train = config.train
    # Before init_ray, which changes what joins_cluster sees.
    check_generation_backends(config, local=not joins_cluster(address))
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
        data = load_trial_data(train)
    except PreferenceDataError as err:
        raise SweepInputError(f"train.data: {err}") from None
    except (FileNotFoundError, ValueError, OSError) as err:
        raise SweepInputError(f"train.data {train.data!r}: {err}") from None
    tokenizer = load_tokenizer(train.model)
    summary = summarize_data(data, tokenizer, train.max_length)
    try:
        summary.check(train.per_device_batch_size * train.grad_accum * config.resources.num_workers)
    except ValueError as err:
        raise SweepInputError(f"train.data: {err}") from None
    warning = check_held_out_size(summary.eval.used, train.verdicts)
    check_mt_bench(config, tokenizer)
    check_alpaca_eval(config, tokenizer)
    return SweepInputs(data, summary, [warning] if warning else [])
