"""A whole sweep's config (:class:`SweepConfig`, one section per concern) and its loading: a shipped or user YAML
file, then ``key=value`` overrides, then one validation.

Fields are declared with :func:`trainers.typed_config.option`, whose help ``--help`` prints, and checked by
:func:`trainers.typed_config.validate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from sweep.config.grid import AdaptiveConfig, GridConfig, Search
from sweep.config.resources import ResourcesConfig
from sweep.config.scheduler import SchedulerConfig
from sweep.config.tracking import MLflowConfig
from sweep.scoring.alpaca_eval.config import AlpacaEvalSweepConfig
from sweep.scoring.mt_bench.config import MTBenchConfig
from trainers.config import TrainConfig
from trainers.typed_config import ConfigError, Override, apply_overrides, build, option, validate
from trainers.typed_config import fields_help as _fields_help

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
"""The shipped YAML configs (``sweep/configs``)."""


@dataclass
class SweepConfig:
    """A whole stability sweep."""

    name: str = option(
        "dlrml-sweep",
        pattern=r"[A-Za-z0-9][A-Za-z0-9._-]*",
        expected="a simple identifier (letters, digits, . _ -)",
        help="Experiment name: the Ray Tune experiment directory and the MLflow parent run. Rerunning with the same "
        "name (or ``--resume``) continues that sweep.",
    )
    storage_path: str = option(
        "sweep_results",
        help="Where Ray Tune keeps trial results and checkpoints (a local path or ``s3://...``; on a multi-node "
        "cluster use shared storage).",
    )
    output_dir: str | None = option(
        None, help="Where the stability map (tables, heatmaps) is written; ``null``: ``<storage_path>/<name>/map``."
    )
    share_reference: bool = option(
        True,
        help="Compute the reference log-probs of every pair once, as Ray tasks before the trials "
        "(``resources.reference_shards``), and store them "
        "under ``<storage_path>/reference/<key>`` (the key fingerprints model, data, tokenisation, max length and "
        "precision; a later sweep with the same key reuses them). Trials then never load a reference model. "
        "``false``: every trial precomputes its own.",
    )
    grid: GridConfig = option(GridConfig(), help="The trial grid.")
    search: Search = option(
        "grid",
        help="``grid`` runs every trial of the grid; ``adaptive`` measures a coarse design and refines only where "
        "verdicts disagree (settings under ``adaptive``; unmeasured cells are inferred and labelled so).",
    )
    adaptive: AdaptiveConfig = option(AdaptiveConfig(), help="Adaptive stability mapping (``search: adaptive``).")
    train: TrainConfig = option(
        TrainConfig(eval_steps=10),
        help="The base trial every grid point shares (model, data, optimisation, divergence thresholds).",
    )
    resources: ResourcesConfig = option(ResourcesConfig(), help="Per-trial resources.")
    scheduler: SchedulerConfig = option(SchedulerConfig(), help="ASHA early stopping.")
    mlflow: MLflowConfig = option(MLflowConfig(), help="Experiment tracking.")
    mt_bench: MTBenchConfig = option(MTBenchConfig(), help="MT-Bench scoring of finished trials.")
    alpaca_eval: AlpacaEvalSweepConfig = option(
        AlpacaEvalSweepConfig(), help="AlpacaEval 2.0 scoring of finished trials."
    )

    def __post_init__(self) -> None:
        validate(self)

    def _check(self) -> None:
        if self.scheduler.asha and self.train.eval_steps == 0:
            raise ConfigError(
                "needs periodic held-out evaluation: set train.eval_steps > 0 (or scheduler.asha=false)",
                "scheduler.asha",
            )
        if self.search == "adaptive" and self.scheduler.asha:
            raise ConfigError(
                "= adaptive needs every trial's verdict and never prunes: set scheduler.asha=false", "search"
            )
        for section in ("mt_bench", "alpaca_eval"):
            if getattr(self, section).eval.generation_backend == "vllm" and not self.resources.use_gpu:
                raise ConfigError(
                    "= vllm runs on GPUs only, but resources.use_gpu is false: set resources.use_gpu=true (the "
                    f"generation task then holds a trial's GPU) or {section}.eval.generation_backend=hf",
                    f"{section}.eval.generation_backend",
                )

    def map_dir(self) -> Path:
        """Directory of the stability map."""
        if self.output_dir:
            return Path(self.output_dir)
        return Path(self.storage_path) / self.name / "map"


def resolve_config_path(config: str) -> Path:
    """A shipped config name (``default``, ``smoke``, ``mistral7b_seed``) or a path to a YAML file."""
    path = Path(config)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {config!r} does not exist")
        return path
    shipped = CONFIG_DIR / f"{config}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"unknown config {config!r}; shipped configs: {shipped_configs()} (or pass a .yaml path)")
    return shipped


def shipped_configs() -> list[str]:
    """Names of the YAML configs shipped in ``sweep/configs``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_sweep_config(config: str = "default", overrides: Sequence[Override] = ()) -> SweepConfig:
    """Load a shipped or user YAML config, apply overrides and validate everything.

    Args:
        config: Shipped config name or YAML path.
        overrides: ``dotted.key=value`` strings (or ``(key, value)`` pairs), applied in order.

    Returns:
        The validated :class:`SweepConfig`.

    Raises:
        ConfigError: Naming the file, key or value that is wrong.
    """
    path = resolve_config_path(config)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return build(SweepConfig, apply_overrides(data, overrides, SweepConfig))


def fields_help() -> str:
    """The text ``--help`` prints after the flags: every config field with its type, default and meaning."""
    return _fields_help(
        SweepConfig, "config fields (override any with key=value; values are YAML, e.g. grid.beta_kl=[0.01,0.1]):"
    )
