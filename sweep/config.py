"""Typed sweep configuration, loaded from the shipped YAML files with ``key=value`` overrides.

A config is a tree of dataclasses, one per concern: the grid (losses x beta_kl x beta_mix x seeds), the base
trial (:class:`trainers.config.TrainConfig`), per-trial resources, the ASHA scheduler, MLflow and MT-Bench
evaluation. Fields are declared with :func:`trainers.typed_config.option`, whose help ``--help`` prints, and checked
by :func:`trainers.typed_config.validate`.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from evaluation.config import EvalConfig
from sweep.alpaca_eval_config import AlpacaEvalSweepConfig
from sweep.resources_config import ResourcesConfig
from trainers.config import LossConfig, TrainConfig
from trainers.losses import DISCOPOP_TAU, LOSS_FORMS, LOSSES, LossForm, get_loss
from trainers.protocol import HELD_OUT_ACCURACY
from trainers.typed_config import ConfigError, Override, apply_overrides, build, option, to_dict, validate
from trainers.typed_config import fields_help as _fields_help

__all__ = [
    "CONFIG_DIR",
    "SEARCHES",
    "HELD_OUT_ACCURACY",
    "MT_BENCH_POLICIES",
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

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MTBenchPolicy = Literal["all", "top_k", "none"]
MT_BENCH_POLICIES: tuple[str, ...] = typing.get_args(MTBenchPolicy)
Search = Literal["grid", "adaptive"]
SEARCHES: tuple[str, ...] = typing.get_args(Search)


def _mix_losses() -> list[str]:
    return [name for name, spec in LOSSES.items() if spec.uses_beta_mix]


@dataclass
class GridConfig:
    """The trial grid: one fine-tune per (loss, beta_kl, beta_mix, seed)."""

    losses: list[str] = option(
        ["dpo", "discopop", "dlrml"], nonempty=True, unique=True, help=f"Loss names: any of {', '.join(LOSSES)}."
    )
    beta_kl: list[float] = option(
        [0.05, 0.5], gt=0, nonempty=True, unique=True, help="KL-strength values (every loss)."
    )
    beta_mix: list[float] = option(
        [0.2],
        gt=0,
        unique=True,
        help="LRML mixing-beta values, crossed only with losses that take it (``dlrml``, ``dlrml_learnable``); other "
        "losses run once per (beta_kl, seed). Empty when no such loss is swept.",
    )
    forms: list[LossForm] = option(
        ["stable"],
        nonempty=True,
        unique=True,
        help=f"Loss forms ({', '.join(LOSS_FORMS)}), crossed only with the LRML family (``discopop``, ``dlrml*``): "
        "``literal`` is the published expression as written, ``stable`` its log-space rewrite.",
    )
    seeds: list[int] = option(
        [0], nonempty=True, unique=True, help="Random seeds; the failure rate of a cell is taken across them."
    )
    tau: float = option(DISCOPOP_TAU, gt=0, help="LRML mixing temperature.")
    beta_mix_lr: float = option(1e-2, gt=0, help="Learning rate of the learnable beta_mix (``dlrml_learnable``).")

    def __post_init__(self) -> None:
        validate(self, label="grid")

    def _check(self) -> None:
        for name in self.losses:
            try:
                get_loss(name)
            except ValueError as err:
                raise ConfigError(f": {err}", "losses") from None
        with_mix = [name for name in self.losses if LOSSES[name].uses_beta_mix]
        if with_mix and not self.beta_mix:
            raise ConfigError(f"must be a non-empty list for the losses {with_mix}, got {self.beta_mix!r}", "beta_mix")
        if not with_mix and self.beta_mix:
            raise ConfigError(
                f"= {self.beta_mix} but none of the losses {self.losses} takes beta_mix (only {_mix_losses()} do): "
                "set grid.beta_mix=[] or add such a loss",
                "beta_mix",
            )

    def trials(self) -> list[LossConfig]:
        """Expand the grid into loss configs, in a stable order, with no duplicate trials.

        Returns:
            One :class:`LossConfig` per (loss, form, beta_kl, beta_mix) cell; seeds are crossed by the caller.
        """
        cells = []
        for name in self.losses:
            mixes = self.beta_mix if LOSSES[name].uses_beta_mix else [None]
            forms = self.forms if LOSSES[name].has_forms else ["stable"]
            for form in forms:
                for beta_kl in self.beta_kl:
                    for beta_mix in mixes:
                        cells.append(
                            LossConfig(name, beta_kl, beta_mix, self.tau, form=form, beta_mix_lr=self.beta_mix_lr)
                        )
        return cells

    @property
    def n_trials(self) -> int:
        """Number of trials the grid expands to."""
        return len(self.trials()) * len(self.seeds)


@dataclass
class SchedulerConfig:
    """ASHA early stopping on held-out preference accuracy (comparable across losses and betas)."""

    asha: bool = option(
        True, help="Prune weak trials with ASHA; ``false`` runs every trial to the end (divergence still stops)."
    )
    metric: str = option(
        HELD_OUT_ACCURACY,
        help="Metric ASHA compares; must be an evaluation metric (``eval_*``) reported at ``train.eval_steps``.",
    )
    grace_period: int = option(10, ge=1, help="Optimizer steps before ASHA may prune a trial.")
    reduction_factor: float = option(2.0, gt=1, help="ASHA's halving rate.")

    def __post_init__(self) -> None:
        validate(self, label="scheduler")

    def _check(self) -> None:
        if not self.metric.startswith("eval_"):
            raise ConfigError(
                f"must be a held-out metric (eval_*), got {self.metric!r}: raw training losses are not comparable "
                "across losses and betas",
                "metric",
            )


@dataclass
class MLflowConfig:
    """Experiment tracking: one parent run per sweep, one nested run per trial."""

    enabled: bool = option(True, help="Log to MLflow.")
    tracking_uri: str | None = option(
        None,
        help="``null``: a SQLite store ``mlflow.db`` in the working directory (``mlflow ui`` browses it); or "
        "``http://host:port`` of a tracking server. Credentials come only from the environment "
        "(``MLFLOW_TRACKING_TOKEN`` / ``MLFLOW_TRACKING_USERNAME`` + ``_PASSWORD``), never from here.",
    )
    experiment: str = option("dlrml-sweep", nonempty=True, help="MLflow experiment name.")

    def __post_init__(self) -> None:
        validate(self, label="mlflow")

    def _check(self) -> None:
        uri = self.tracking_uri
        if uri is None:
            return
        if not re.match(r"^(https?|sqlite|file|postgresql|mysql|databricks)(:|\+)", uri) and not uri.startswith("/"):
            raise ConfigError(
                f"{uri!r} is not a tracking URI (expected http(s)://host:port, sqlite:///path, file:///path or a "
                "database URI)",
                "tracking_uri",
            )
        if re.match(r"^https?://[^/]*@", uri):
            raise ConfigError(
                "must not embed credentials; set MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN in the "
                "environment instead",
                "tracking_uri",
            )

    def resolved_uri(self) -> str:
        """The tracking URI to use (the SQLite default resolved against the working directory)."""
        return self.tracking_uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


@dataclass
class MTBenchConfig:
    """Which trials get MT-Bench-scored after the sweep, and how."""

    policy: MTBenchPolicy = option(
        "top_k", help="``all`` completed non-diverged trials, ``top_k`` of them by held-out accuracy, or ``none``."
    )
    top_k: int = option(1, ge=1, help="Number of trials scored under ``top_k``.")
    eval: EvalConfig = option(
        EvalConfig(), help="MT-Bench settings (questions, judge backend and model, generation lengths, retries)."
    )

    def __post_init__(self) -> None:
        validate(self, label="mt_bench")


@dataclass
class AdaptiveConfig:
    """Adaptive stability mapping (``search: adaptive``, :mod:`sweep.adaptive`): measure a coarse design of each
    (loss, form) beta_kl x beta_mix lattice, then bisect only where measured verdicts disagree."""

    max_trials: int | None = option(
        None, gt=0, help="Trial budget over the whole sweep; ``null``: no cap (never more than the grid's trials)."
    )
    coarse_points: int = option(
        3,
        ge=2,
        help="Points per beta axis of the starting design, evenly spaced in log-beta and snapped to the grid's values "
        "(3: corners, edge midpoints and centre).",
    )
    initial_seeds: int = option(1, ge=1, help="Seeds every newly measured cell starts with (the grid's first ones).")
    max_seeds_per_cell: int = option(
        3, ge=1, help="Most seeds a cell gets (never more than ``grid.seeds``); extra seeds go where seeds disagree."
    )
    interval_width: float = option(
        0.7,
        gt=0,
        le=1,
        help="A cell on the stability boundary, all of whose seeds are stable so far, gets another seed while the "
        "95 % Wilson interval of its failure rate is wider than this (0 failures in 1 seed: 0.79, 2: 0.66, 3: 0.56).",
    )

    def __post_init__(self) -> None:
        validate(self, label="adaptive")

    def _check(self) -> None:
        if self.initial_seeds > self.max_seeds_per_cell:
            raise ConfigError(
                f"= {self.initial_seeds} exceeds max_seeds_per_cell = {self.max_seeds_per_cell}", "initial_seeds"
            )


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


# ---------------------------------------------------------------------------------------------------------------
# Loading: YAML file -> dict -> key=value overrides -> dataclasses


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
