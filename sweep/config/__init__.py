"""Typed sweep configuration, one dataclass per concern: the grid and its search (:mod:`.grid`), the base trial
(:class:`trainers.config.TrainConfig`), per-trial resources (:mod:`.resources`), ASHA (:mod:`.scheduler`), MLflow
(:mod:`.tracking`), the benchmarks' sections (:mod:`sweep.scoring.mt_bench.config`,
:mod:`sweep.scoring.alpaca_eval.config`), and the whole sweep with its loading (:mod:`.experiment`)."""

from sweep.config.experiment import (
    CONFIG_DIR,
    SweepConfig,
    fields_help,
    load_sweep_config,
    resolve_config_path,
    shipped_configs,
)
from sweep.config.grid import SEARCHES, AdaptiveConfig, GridConfig
from sweep.config.resources import ResourcesConfig
from sweep.config.scheduler import SchedulerConfig
from sweep.config.tracking import MLflowConfig
from sweep.scoring.mt_bench.config import MT_BENCH_POLICIES, MTBenchConfig
from trainers.protocol import HELD_OUT_ACCURACY
from trainers.typed_config import ConfigError, to_dict

__all__ = [
    "CONFIG_DIR",
    "HELD_OUT_ACCURACY",
    "MT_BENCH_POLICIES",
    "SEARCHES",
    "AdaptiveConfig",
    "ConfigError",
    "GridConfig",
    "MLflowConfig",
    "MTBenchConfig",
    "ResourcesConfig",
    "SchedulerConfig",
    "SweepConfig",
    "fields_help",
    "load_sweep_config",
    "resolve_config_path",
    "shipped_configs",
    "to_dict",
]
