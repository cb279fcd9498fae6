"""Typed sweep configuration, loaded from the shipped YAML files with ``key=value`` overrides.

A config is a tree of dataclasses, one per concern: the grid (losses x beta_kl x beta_mix x seeds), the base
trial (:class:`trainers.config.TrainConfig`), per-trial resources, the ASHA scheduler, MLflow and MT-Bench
evaluation. Every field is documented in its class's ``Attributes:`` section, which ``--help`` prints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evaluation.config import EvalConfig
from trainers.config import LossConfig, TrainConfig
from trainers.losses import DISCOPOP_TAU, LOSSES, get_loss

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
HELD_OUT_ACCURACY = "eval_rewards/accuracies"


class ConfigError(ValueError):
    """A sweep config value, key or file is invalid; the message names it."""


def _check_axis(name: str, values: object, *, positive: bool) -> None:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"grid.{name} must be a non-empty list, got {values!r}")
    for value in values:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (positive and value <= 0):
            kind = "finite numbers > 0" if positive else "integers"
            raise ConfigError(f"grid.{name} must contain {kind}, got {value!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"grid.{name} has duplicate values: {values}")


@dataclass
class GridConfig:
    """The trial grid: one fine-tune per (loss, beta_kl, beta_mix, seed).

    Attributes:
        losses: Loss names (see ``trainers.losses.LOSSES``).
        beta_kl: KL-strength values (every loss).
        beta_mix: LRML mixing-beta values, crossed only with losses that take it (``dlrml``,
            ``dlrml_learnable``); other losses run once per (beta_kl, seed). Empty when no such loss is swept.
        seeds: Random seeds; the collapse rate of a cell is taken across them.
        tau: LRML mixing temperature.
        beta_mix_lr: Learning rate of the learnable beta_mix (``dlrml_learnable``).
    """

    losses: list[str] = field(default_factory=lambda: ["dpo", "discopop", "dlrml"])
    beta_kl: list[float] = field(default_factory=lambda: [0.05, 0.5])
    beta_mix: list[float] = field(default_factory=lambda: [0.2])
    seeds: list[int] = field(default_factory=lambda: [0])
    tau: float = DISCOPOP_TAU
    beta_mix_lr: float = 1e-2

    def __post_init__(self) -> None:
        if not isinstance(self.losses, list) or not self.losses:
            raise ConfigError(f"grid.losses must be a non-empty list of loss names, got {self.losses!r}")
        for name in self.losses:
            try:
                get_loss(name)
            except ValueError as err:
                raise ConfigError(f"grid.losses: {err}") from None
        if len(set(self.losses)) != len(self.losses):
            raise ConfigError(f"grid.losses has duplicates: {self.losses}")
        _check_axis("beta_kl", self.beta_kl, positive=True)
        _check_axis("seeds", self.seeds, positive=False)
        if any(not isinstance(s, int) for s in self.seeds):
            raise ConfigError(f"grid.seeds must be integers, got {self.seeds}")
        with_mix = [name for name in self.losses if LOSSES[name].uses_beta_mix]
        if with_mix:
            _check_axis("beta_mix", self.beta_mix, positive=True)
        elif self.beta_mix:
            raise ConfigError(
                f"grid.beta_mix = {self.beta_mix} but none of the losses {self.losses} takes beta_mix "
                f"(only {[n for n, s in LOSSES.items() if s.uses_beta_mix]} do): set grid.beta_mix=[] "
                "or add such a loss"
            )
        for name in ("tau", "beta_mix_lr"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"grid.{name} must be a finite number > 0, got {value!r}")

    def trials(self) -> list[LossConfig]:
        """Expand the grid into loss configs, in a stable order, with no duplicate trials.

        Returns:
            One :class:`LossConfig` per (loss, beta_kl, beta_mix) cell; seeds are crossed by the caller.
        """
        cells = []
        for name in self.losses:
            mixes = self.beta_mix if LOSSES[name].uses_beta_mix else [None]
            for beta_kl in self.beta_kl:
                for beta_mix in mixes:
                    cells.append(LossConfig(name, beta_kl, beta_mix, self.tau, self.beta_mix_lr))
        return cells

    @property
    def n_trials(self) -> int:
        """Number of trials the grid expands to."""
        return len(self.trials()) * len(self.seeds)


@dataclass
class ResourcesConfig:
    """Resources of one trial; each trial runs its training on a Ray Train ``TorchTrainer``.

    Attributes:
        num_workers: Data-parallel training workers per trial (its placement group has one bundle each).
        use_gpu: Train on GPUs (NCCL backend) instead of CPUs (gloo backend).
        cpus_per_worker: CPUs reserved per worker (torch uses as many threads).
        gpus_per_worker: GPUs reserved per worker when ``use_gpu``.
        max_concurrent_trials: Cap on trials running at once; ``null`` derives it from the cluster's resources.
        autoscale: The cluster grows on demand (``ray up`` / KubeRay autoscaling): skip the check that one trial
            fits the resources present at launch, and leave concurrency to ``max_concurrent_trials``.
        max_failures: Retries of a trial whose process crashed (exception, OOM, killed worker); a diverged
            trial is a result and is never retried.
    """

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 2
    gpus_per_worker: float = 1
    max_concurrent_trials: int | None = None
    autoscale: bool = False
    max_failures: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ConfigError(f"resources.num_workers must be an integer >= 1, got {self.num_workers!r}")
        if not isinstance(self.cpus_per_worker, int | float) or self.cpus_per_worker <= 0:
            raise ConfigError(f"resources.cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        if self.use_gpu and (not isinstance(self.gpus_per_worker, int | float) or self.gpus_per_worker <= 0):
            raise ConfigError(f"resources.gpus_per_worker must be > 0 with use_gpu, got {self.gpus_per_worker!r}")
        if self.max_concurrent_trials is not None and (
            not isinstance(self.max_concurrent_trials, int) or self.max_concurrent_trials < 1
        ):
            raise ConfigError(
                f"resources.max_concurrent_trials must be null or an integer >= 1, got {self.max_concurrent_trials!r}"
            )
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ConfigError(f"resources.max_failures must be an integer >= 0, got {self.max_failures!r}")

    def per_trial(self) -> dict[str, float]:
        """Total resources one trial's workers reserve (``{"CPU": .., "GPU": ..}``)."""
        total = {"CPU": self.cpus_per_worker * self.num_workers}
        if self.use_gpu:
            total["GPU"] = self.gpus_per_worker * self.num_workers
        return total


@dataclass
class SchedulerConfig:
    """ASHA early stopping on held-out preference accuracy (comparable across losses and betas).

    Attributes:
        asha: Prune weak trials with ASHA; ``false`` runs every trial to the end (divergence still stops).
        metric: Metric ASHA compares; must be an evaluation metric reported at ``train.eval_steps``.
        grace_period: Optimizer steps before ASHA may prune a trial.
        reduction_factor: ASHA's halving rate.
    """

    asha: bool = True
    metric: str = HELD_OUT_ACCURACY
    grace_period: int = 10
    reduction_factor: float = 2.0

    def __post_init__(self) -> None:
        if not self.metric.startswith("eval_"):
            raise ConfigError(
                f"scheduler.metric must be a held-out metric (eval_*), got {self.metric!r}: raw training losses "
                "are not comparable across losses and betas"
            )
        if not isinstance(self.grace_period, int) or self.grace_period < 1:
            raise ConfigError(f"scheduler.grace_period must be an integer >= 1, got {self.grace_period!r}")
        if not isinstance(self.reduction_factor, int | float) or self.reduction_factor <= 1:
            raise ConfigError(f"scheduler.reduction_factor must be > 1, got {self.reduction_factor!r}")


@dataclass
class MLflowConfig:
    """Experiment tracking: one parent run per sweep, one nested run per trial.

    Attributes:
        enabled: Log to MLflow.
        tracking_uri: ``null``: a SQLite store ``mlflow.db`` in the working directory (``mlflow ui`` browses it);
            or ``http://host:port`` of a tracking server. Credentials come only from the environment
            (``MLFLOW_TRACKING_TOKEN`` / ``MLFLOW_TRACKING_USERNAME`` + ``_PASSWORD``), never from here.
        experiment: MLflow experiment name.
    """

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "dlrml-sweep"

    def __post_init__(self) -> None:
        if self.tracking_uri is not None:
            if not re.match(r"^(https?|sqlite|file|postgresql|mysql|databricks)(:|\+)", self.tracking_uri) and not (
                self.tracking_uri.startswith("/")
            ):
                raise ConfigError(
                    f"mlflow.tracking_uri {self.tracking_uri!r} is not a tracking URI "
                    "(expected http(s)://host:port, sqlite:///path, file:///path or a database URI)"
                )
            if re.match(r"^https?://[^/]*@", self.tracking_uri):
                raise ConfigError(
                    "mlflow.tracking_uri must not embed credentials; set MLFLOW_TRACKING_USERNAME/PASSWORD or "
                    "MLFLOW_TRACKING_TOKEN in the environment instead"
                )
        if not isinstance(self.experiment, str) or not self.experiment.strip():
            raise ConfigError(f"mlflow.experiment must be a non-empty string, got {self.experiment!r}")

    def resolved_uri(self) -> str:
        """The tracking URI to use (the SQLite default resolved against the working directory)."""
        return self.tracking_uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


MT_BENCH_POLICIES = ("all", "top_k", "none")


@dataclass
class MTBenchConfig:
    """Which trials get MT-Bench-scored after the sweep, and how.

    Attributes:
        policy: ``all`` completed non-diverged trials, ``top_k`` of them by held-out accuracy, or ``none``.
        top_k: Number of trials scored under ``top_k``.
        eval: MT-Bench settings (questions, judge backend and model, generation lengths, retries).
    """

    policy: str = "top_k"
    top_k: int = 1
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.policy not in MT_BENCH_POLICIES:
            raise ConfigError(f"mt_bench.policy must be one of {MT_BENCH_POLICIES}, got {self.policy!r}")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"mt_bench.top_k must be an integer >= 1, got {self.top_k!r}")


@dataclass
class SweepConfig:
    """A whole stability sweep.

    Attributes:
        name: Experiment name: the Ray Tune experiment directory and the MLflow parent run. Rerunning with the
            same name (or ``--resume``) continues that sweep.
        storage_path: Where Ray Tune keeps trial results and checkpoints (a local path or ``s3://...``; on a
            multi-node cluster use shared storage).
        output_dir: Where the stability map (tables, heatmaps) is written; ``null``: ``<storage_path>/<name>/map``.
        share_reference: Compute the reference log-probs of every pair once, as a Ray task before the trials, and
            store them under ``<storage_path>/reference/<key>`` (the key fingerprints model, data, tokenisation,
            max length and precision; a later sweep with the same key reuses them). Trials then never load a
            reference model. ``false``: every trial precomputes its own.
        grid: The trial grid.
        train: The base trial every grid point shares (model, data, optimisation, divergence thresholds).
        resources: Per-trial resources.
        scheduler: ASHA early stopping.
        mlflow: Experiment tracking.
        mt_bench: MT-Bench scoring of finished trials.
    """

    name: str = "dlrml-sweep"
    storage_path: str = "sweep_results"
    output_dir: str | None = None
    share_reference: bool = True
    grid: GridConfig = field(default_factory=GridConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(eval_steps=10))
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    mt_bench: MTBenchConfig = field(default_factory=MTBenchConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ConfigError(f"name must be a simple identifier (letters, digits, . _ -), got {self.name!r}")
        if self.scheduler.asha and self.train.eval_steps == 0:
            raise ConfigError(
                "scheduler.asha needs periodic held-out evaluation: set train.eval_steps > 0 (or scheduler.asha=false)"
            )

    def map_dir(self) -> Path:
        """Directory of the stability map."""
        if self.output_dir:
            return Path(self.output_dir)
        return Path(self.storage_path) / self.name / "map"


# ---------------------------------------------------------------------------------------------------------------
# Loading: YAML file -> dict -> key=value overrides -> dataclasses


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and minimally coerce) a YAML value against a field's annotated type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrapping validation errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key(s) {[where + k for k in unknown]}; valid keys under {prefix or 'config'}: {names}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{prefix or 'config'}: {err}") from None


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


def apply_override(data: dict, override: str) -> None:
    """Apply one ``dotted.key=value`` override (value parsed as YAML) to a nested dict in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value (e.g. grid.seeds=[0,1,2])")
    key, raw = override.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(f"override key {key!r} is not a dotted field name")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({err})") from None
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[leaf] = value


def load_sweep_config(config: str = "default", overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Load a shipped or user YAML config, apply overrides and validate everything.

    Args:
        config: Shipped config name or YAML path.
        overrides: ``dotted.key=value`` strings, applied in order.

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
    for override in overrides:
        apply_override(data, override)
    return _build(SweepConfig, data, "")


def to_dict(config: Any) -> dict:
    """The config as plain data (YAML/JSON-serialisable)."""
    return dataclasses.asdict(config)


# ---------------------------------------------------------------------------------------------------------------
# --help: every field, from the Attributes sections of the dataclass docstrings


def _attribute_docs(cls: type) -> dict[str, str]:
    doc = cls.__doc__ or ""
    if "Attributes:" not in doc:
        return {}
    body = doc.split("Attributes:", 1)[1]
    docs: dict[str, str] = {}
    current = None
    for line in body.splitlines():
        match = re.match(r"^\s{4,8}(\w+): (.*)$", line)
        if match and match.group(1) in {f.name for f in dataclasses.fields(cls)}:
            current = match.group(1)
            docs[current] = match.group(2).strip()
        elif current and line.strip():
            docs[current] += " " + line.strip()
    return docs


def describe_fields(cls: type = SweepConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every leaf field as ``(dotted key, type, default, help)``, walking nested dataclasses."""
    rows = []
    hints = typing.get_type_hints(cls)
    docs = _attribute_docs(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.append((key, "section", "", docs.get(f.name, "")))
            rows.extend(describe_fields(tp, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((key, _type_name(tp), json.dumps(default), docs.get(f.name, "")))
    return rows


def fields_help() -> str:
    """The text ``--help`` prints after the flags: every config field with its type, default and meaning."""
    lines = ["config fields (override any with key=value; values are YAML, e.g. grid.beta_kl=[0.01,0.1]):"]
    for key, tp, default, doc in describe_fields():
        if tp == "section":
            lines.append(f"\n  [{key}] {doc}")
        else:
            lines.append(f"  {key} ({tp}, default {default})\n      {doc}")
    return "\n".join(lines)
