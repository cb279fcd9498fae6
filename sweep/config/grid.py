"""What a sweep runs: the trial grid (losses x forms x beta_kl x beta_mix x seeds) and, with ``search: adaptive``,
how it is searched (:mod:`sweep.search`)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from trainers.config import LossConfig
from trainers.losses import DISCOPOP_TAU, LOSS_FORMS, LOSSES, LossForm, get_loss
from trainers.typed_config import ConfigError, option, validate

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
        [0], nonempty=True, unique=True, help="Random seeds; the failed rate of a cell is taken across them."
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
class AdaptiveConfig:
    """Adaptive stability mapping (``search: adaptive``, :mod:`sweep.search.lattice`): measure a coarse design of each
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
        "95 % Wilson interval of its failed rate is wider than this (0 failures in 1 seed: 0.79, 2: 0.66, 3: 0.56).",
    )

    def __post_init__(self) -> None:
        validate(self, label="adaptive")

    def _check(self) -> None:
        if self.initial_seeds > self.max_seeds_per_cell:
            raise ConfigError(
                f"= {self.initial_seeds} exceeds max_seeds_per_cell = {self.max_seeds_per_cell}", "initial_seeds"
            )
