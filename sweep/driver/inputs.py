"""The driver's first phase, before any cluster work: every input the sweep will use is loaded and checked once."""

from __future__ import annotations

import json
from dataclasses import dataclass
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

CONFIG_FILE = "sweep_config.json"
"""The sweep's config, stored in its experiment directory: rerunning the same config resumes the sweep."""


@dataclass
class SweepInputs:
    """What validation loaded: the sweep's preference data and what tokenisation makes of it."""

    data: PreferenceData
    summary: DataSummary


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
    check_mt_bench(config, tokenizer)
    check_alpaca_eval(config, tokenizer)
    return SweepInputs(data, summary)
