"""DPO-family preference losses as pure functions, plus the registry that names them.

Every loss takes the four sequence log-probabilities of a batch of preference pairs and its
hyper-parameters, and returns per-example losses and (detached) implicit rewards:

    rho = (pi_c - pi_r) - (ref_c - ref_r)                                   (the DPO log-ratio margin)

* ``dpo``        Rafailov et al. 2023, Eq. 7:            L = -log sigma(beta_kl * rho)
* ``ipo``        Azar et al. 2023, Eq. 17:               L = (rho - 1 / (2 beta_kl))^2  (mean token logps)
* ``hinge``      Zhao et al. 2023 (SLiC), Eq. 3:         L = max(0, 1 - beta_kl * rho)
* ``discopop``   Lu et al. 2024 (LRML), Eq. 5:           dLRML with beta_mix = beta_kl
* ``dlrml``      decoupled LRML:                         z = beta_kl * rho,  m = sigma(beta_mix * rho / tau),
                                                         L = (1 - m) * (-log sigma(z)) + m * exp(-z)
* ``dlrml_learnable``  dLRML whose beta_mix is a positive scalar trained with the policy.

The LRML blend is evaluated in log space so that it stays finite wherever its mathematical value is:

    (1 - m) * (-log sigma(z)) = sigma(-a) * softplus(-z),     a = beta_mix * rho / tau
    m * exp(-z)               = exp(log sigma(a) - z)

The published ``sigmoid(a) * exp(-z)`` evaluates ``0 * inf = NaN`` once ``-z`` exceeds the dtype's exp range
(~88 in fp32 and bf16), although the product tends to 0; that is the *numerical* failure of DiscoPOP at
large beta. It stays available as the ``literal`` form (:data:`LossForm`) so that a sweep can show which failures
are numerical (gone in the ``stable`` form) and which survive the fix. When ``beta_kl > beta_mix / tau`` and
``rho -> -inf`` the exponent ``log sigma(a) - z`` grows without bound and the loss itself is infinite: a *genuine*
divergence, reported as such, never clamped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from trainers.protocol import Metric

DISCOPOP_TAU = 0.05
"""Temperature of the LRML mixing sigmoid (Lu et al. 2024, Sec. 5; TRL's ``discopop_tau`` default)."""

LossForm = Literal["stable", "literal"]
"""How an LRML-family loss is evaluated: ``stable`` in log space (finite wherever the true value is), or
``literal``: the published expression as written, in the training dtype (Lu et al. 2024's code, TRL 1.16's
``discopop``), whose ``sigmoid(a) * exp(-z)`` is ``0 * inf = NaN`` once ``-z`` passes the dtype's exp range."""
LOSS_FORMS: tuple[str, ...] = get_args(LossForm)
"""The names of the loss forms (a sweep axis: ``grid.forms``)."""

MIX_SATURATION_EPS = 0.01
"""A mixing coefficient within this distance of 0 or 1 counts as saturated."""


@dataclass(frozen=True)
class LossOutput:
    """What every loss returns.

    Attributes:
        losses: Per-example losses, shape ``(B,)``; differentiable.
        chosen_rewards: ``beta_kl * (pi_c - ref_c)``, shape ``(B,)``; detached.
        rejected_rewards: ``beta_kl * (pi_r - ref_r)``, shape ``(B,)``; detached.
        mix: LRML mixing coefficient ``m``, shape ``(B,)``, detached; ``None`` for other losses.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    mix: torch.Tensor | None = None


def _margin(pi_c: torch.Tensor, pi_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor) -> torch.Tensor:
    """The DPO margin ``rho = (pi_c - pi_r) - (ref_c - ref_r)``, shape ``(B,)``."""
    return (pi_c - pi_r) - (ref_c - ref_r)


def _rewards(
    pi_c: torch.Tensor, pi_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor, beta_kl: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Implicit DPO rewards ``beta_kl * log(pi / ref)`` for chosen and rejected, detached, each ``(B,)``."""
    return beta_kl * (pi_c - ref_c).detach(), beta_kl * (pi_r - ref_r).detach()


def dpo_loss(
    pi_c: torch.Tensor, pi_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor, *, beta_kl: float
) -> LossOutput:
    """DPO / sigmoid loss (Rafailov et al. 2023, Eq. 7): ``-log sigma(beta_kl * rho)``.

    Args:
        pi_c: Policy log-prob of the chosen completions, shape ``(B,)``.
        pi_r: Policy log-prob of the rejected completions, shape ``(B,)``.
        ref_c: Reference log-prob of the chosen completions, shape ``(B,)``.
        ref_r: Reference log-prob of the rejected completions, shape ``(B,)``.
        beta_kl: KL-regularisation strength beta.

    Returns:
        A :class:`LossOutput` with per-example losses of shape ``(B,)``.
    """
    rho = _margin(pi_c, pi_r, ref_c, ref_r)
    chosen, rejected = _rewards(pi_c, pi_r, ref_c, ref_r, beta_kl)
    return LossOutput(F.softplus(-beta_kl * rho), chosen, rejected)


def ipo_loss(
    pi_c: torch.Tensor, pi_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor, *, beta_kl: float
) -> LossOutput:
    """IPO loss (Azar et al. 2023, Eq. 17): ``(rho - 1 / (2 beta_kl))^2``.

    As in TRL, the log-probs are expected to be length-normalised (mean over completion tokens), so that
    beta is comparable across completion lengths; the registry marks this loss ``logp_reduction="mean"``.

    Args:
        pi_c: Policy mean token log-prob of the chosen completions, shape ``(B,)``.
        pi_r: Policy mean token log-prob of the rejected completions, shape ``(B,)``.
        ref_c: Reference mean token log-prob of the chosen completions, shape ``(B,)``.
        ref_r: Reference mean token log-prob of the rejected completions, shape ``(B,)``.
        beta_kl: Regularisation strength (the paper's tau).

    Returns:
        A :class:`LossOutput` with per-example losses of shape ``(B,)``.
    """
    rho = _margin(pi_c, pi_r, ref_c, ref_r)
    chosen, rejected = _rewards(pi_c, pi_r, ref_c, ref_r, beta_kl)
    return LossOutput((rho - 1.0 / (2.0 * beta_kl)) ** 2, chosen, rejected)


def hinge_loss(
    pi_c: torch.Tensor, pi_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor, *, beta_kl: float
) -> LossOutput:
    """Hinge loss (SLiC, Zhao et al. 2023, Eq. 3, as in TRL): ``max(0, 1 - beta_kl * rho)``.

    Args:
        pi_c: Policy log-prob of the chosen completions, shape ``(B,)``.
        pi_r: Policy log-prob of the rejected completions, shape ``(B,)``.
        ref_c: Reference log-prob of the chosen completions, shape ``(B,)``.
        ref_r: Reference log-prob of the rejected completions, shape ``(B,)``.
        beta_kl: Inverse margin scale.

    Returns:
        A :class:`LossOutput` with per-example losses of shape ``(B,)``.
    """
    rho = _margin(pi_c, pi_r, ref_c, ref_r)
    chosen, rejected = _rewards(pi_c, pi_r, ref_c, ref_r, beta_kl)
    return LossOutput(torch.relu(1.0 - beta_kl * rho), chosen, rejected)


def dlrml_loss(
    pi_c: torch.Tensor,
    pi_r: torch.Tensor,
    ref_c: torch.Tensor,
    ref_r: torch.Tensor,
    *,
    beta_kl: float,
    beta_mix: float | torch.Tensor,
    tau: float = DISCOPOP_TAU,
    form: LossForm = "stable",
) -> LossOutput:
    """Decoupled log-ratio modulated loss (dLRML).

    ``z = beta_kl * rho``, ``a = beta_mix * rho / tau``, ``m = sigma(a)`` and
    ``L = (1 - m) * (-log sigma(z)) + m * exp(-z)`` (Lu et al. 2024, Eq. 5, with the mixing sigmoid's
    beta decoupled from the KL beta); the ``stable`` form evaluates it as
    ``sigma(-a) * softplus(-z) + exp(log sigma(a) - z)``, the ``literal`` form as written.

    Args:
        pi_c: Policy log-prob of the chosen completions, shape ``(B,)``.
        pi_r: Policy log-prob of the rejected completions, shape ``(B,)``.
        ref_c: Reference log-prob of the chosen completions, shape ``(B,)``.
        ref_r: Reference log-prob of the rejected completions, shape ``(B,)``.
        beta_kl: KL-regularisation strength inside the logistic and exponential terms.
        beta_mix: Sharpness of the mixing coefficient; a float, or a 0-d tensor when learnable
            (gradients then flow into it).
        tau: Temperature of the mixing sigmoid.
        form: :data:`LossForm`: ``stable`` (log space) or ``literal`` (as published).

    Returns:
        A :class:`LossOutput` with per-example losses ``(B,)`` and the detached mixing coefficient ``(B,)``.
    """
    rho = _margin(pi_c, pi_r, ref_c, ref_r)
    z = beta_kl * rho
    a = beta_mix * rho / tau
    m = torch.sigmoid(a)
    if form == "literal":
        # As published (Lu et al. 2024, Eq. 5; TRL 1.16 ``discopop``): no rewriting, so it overflows as theirs does.
        losses = (1 - m) * (-F.logsigmoid(z)) + m * torch.exp(-z)
    else:
        losses = torch.sigmoid(-a) * F.softplus(-z) + torch.exp(F.logsigmoid(a) - z)
    chosen, rejected = _rewards(pi_c, pi_r, ref_c, ref_r, beta_kl)
    return LossOutput(losses, chosen, rejected, mix=m.detach())


def discopop_loss(
    pi_c: torch.Tensor,
    pi_r: torch.Tensor,
    ref_c: torch.Tensor,
    ref_r: torch.Tensor,
    *,
    beta_kl: float,
    tau: float = DISCOPOP_TAU,
    form: LossForm = "stable",
) -> LossOutput:
    """DiscoPOP / LRML (Lu et al. 2024, Eq. 5): dLRML with the coupled ``beta_mix = beta_kl``.

    Args:
        pi_c: Policy log-prob of the chosen completions, shape ``(B,)``.
        pi_r: Policy log-prob of the rejected completions, shape ``(B,)``.
        ref_c: Reference log-prob of the chosen completions, shape ``(B,)``.
        ref_r: Reference log-prob of the rejected completions, shape ``(B,)``.
        beta_kl: The single beta of LRML.
        tau: Temperature of the mixing sigmoid.
        form: :data:`LossForm`.

    Returns:
        A :class:`LossOutput` as :func:`dlrml_loss` returns it.
    """
    return dlrml_loss(pi_c, pi_r, ref_c, ref_r, beta_kl=beta_kl, beta_mix=beta_kl, tau=tau, form=form)


def lrml_is_genuinely_divergent(beta_kl: float, beta_mix: float, tau: float = DISCOPOP_TAU) -> bool:
    """Whether the dLRML loss itself is unbounded as ``rho -> -inf``.

    For ``rho -> -inf``, ``log sigma(a) - z ~ (beta_mix / tau - beta_kl) * rho``, which grows without bound
    exactly when ``beta_kl > beta_mix / tau``.
    """
    return beta_kl > beta_mix / tau


def lrml_initial_margin_gradient(beta_kl: float, beta_mix: float, tau: float = DISCOPOP_TAU) -> float:
    """``dL/drho`` of the dLRML loss at ``rho = 0``, where every pair starts (the reference is the initial policy).

    With ``m = sigma(a)``, ``a = beta_mix * rho / tau``, ``z = beta_kl * rho``, at ``rho = 0``: ``m = 1/2``,
    ``dm/drho = beta_mix / (4 tau)``, ``-log sigma(0) = ln 2``, ``exp(0) = 1``, so

        dL/drho = (beta_mix / (4 tau)) (1 - ln 2) - (1/2)(beta_kl / 2) - (1/2) beta_kl
                = (beta_mix / (4 tau)) (1 - ln 2) - (3/4) beta_kl.

    A positive value means gradient descent first *lowers* every margin (the wrong way): it happens whenever
    ``beta_kl < beta_mix (1 - ln 2) / (3 tau)`` (about ``2.05 beta_mix`` at ``tau = 0.05``) — always for DiscoPOP
    (``beta_mix = beta_kl``) at ``tau = 0.05`` — and is one mechanism behind LRML runs that stall.
    """
    return beta_mix / (4 * tau) * (1 - math.log(2)) - 0.75 * beta_kl


@dataclass(frozen=True)
class LossSpec:
    """A registered loss.

    Attributes:
        name: Registry key (the ``--loss`` value).
        fn: The pure loss function.
        params: Hyper-parameters ``fn`` takes as keywords, e.g. ``("beta_kl", "beta_mix", "tau")``.
        logp_reduction: ``"sum"`` (sequence log-prob) or ``"mean"`` (per-token mean, IPO).
        learnable: Hyper-parameters trained with the policy (kept positive via a log parameterisation). The trainer
            registers them as parameters *of the policy model*, so that DDP all-reduces their gradients and DeepSpeed
            ZeRO partitions them like any weight (``trainers.trl_trainer.attach_learnable_beta_mix``).
        trl_loss_type: TRL ``DPOConfig.loss_type`` this loss reproduces (for cross-checks), if any.
        defaults: Default values of optional hyper-parameters.
    """

    name: str
    fn: Callable[..., LossOutput]
    params: tuple[str, ...]
    logp_reduction: str = "sum"
    learnable: tuple[str, ...] = ()
    trl_loss_type: str | None = None
    defaults: dict[str, float] = field(default_factory=dict)

    @property
    def uses_beta_mix(self) -> bool:
        """Whether ``beta_mix`` is a free axis of this loss (so a sweep grids over it)."""
        return "beta_mix" in self.params

    @property
    def has_forms(self) -> bool:
        """Whether the loss exists in both :data:`LOSS_FORMS` (a sweep grids over them)."""
        return "form" in self.params

    @property
    def is_lrml_family(self) -> bool:
        """Whether the loss has an LRML mixing coefficient to monitor."""
        return "tau" in self.params


_LRML_DEFAULTS = {"tau": DISCOPOP_TAU, "form": "stable"}

LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec("dpo", dpo_loss, ("beta_kl",), trl_loss_type="sigmoid"),
        LossSpec("ipo", ipo_loss, ("beta_kl",), logp_reduction="mean", trl_loss_type="ipo"),
        LossSpec("hinge", hinge_loss, ("beta_kl",), trl_loss_type="hinge"),
        LossSpec(
            "discopop", discopop_loss, ("beta_kl", "tau", "form"), trl_loss_type="discopop", defaults=_LRML_DEFAULTS
        ),
        LossSpec("dlrml", dlrml_loss, ("beta_kl", "beta_mix", "tau", "form"), defaults=_LRML_DEFAULTS),
        LossSpec(
            "dlrml_learnable",
            dlrml_loss,
            ("beta_kl", "beta_mix", "tau", "form"),
            learnable=("beta_mix",),
            defaults=_LRML_DEFAULTS,
        ),
    )
}
"""The one list of loss names: every other module validates against these keys."""


class UnknownLossError(ValueError):
    """Raised for a loss name that is not registered."""


def get_loss(name: str) -> LossSpec:
    """Look up a loss by name.

    Raises:
        UnknownLossError: If ``name`` is not registered; the message lists the known names.
    """
    try:
        return LOSSES[name]
    except KeyError:
        raise UnknownLossError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}") from None


def compute_loss(
    name: str,
    pi_c: torch.Tensor,
    pi_r: torch.Tensor,
    ref_c: torch.Tensor,
    ref_r: torch.Tensor,
    **hparams: float | torch.Tensor | str,
) -> LossOutput:
    """Evaluate a registered loss, passing only the hyper-parameters it takes.

    Args:
        name: Registry key.
        pi_c: Policy log-prob of the chosen completions, shape ``(B,)``.
        pi_r: Policy log-prob of the rejected completions, shape ``(B,)``.
        ref_c: Reference log-prob of the chosen completions, shape ``(B,)``.
        ref_r: Reference log-prob of the rejected completions, shape ``(B,)``.
        **hparams: Hyper-parameters; unused ones (e.g. ``beta_mix`` for ``dpo``) are ignored.

    Returns:
        The loss's :class:`LossOutput`.

    Raises:
        ValueError: If a required hyper-parameter is missing.
    """
    spec = get_loss(name)
    kwargs = {**spec.defaults, **{k: v for k, v in hparams.items() if k in spec.params}}
    missing = [p for p in spec.params if p not in kwargs]
    if missing:
        raise ValueError(f"loss {name!r} needs hyper-parameter(s) {missing}")
    return spec.fn(pi_c, pi_r, ref_c, ref_r, **kwargs)


def mix_statistics(mix: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean of the LRML mixing coefficient and the fraction of saturated entries, as 0-d tensors (no host sync).

    Args:
        mix: Mixing coefficients ``m``, shape ``(B,)``.

    Returns:
        ``{"mix/mean": ..., "mix/saturated_frac": ...}``, each of shape ``()``.
    """
    saturated = (mix < MIX_SATURATION_EPS) | (mix > 1.0 - MIX_SATURATION_EPS)
    return {Metric.MIX_MEAN: mix.float().mean(), Metric.MIX_SATURATED_FRAC: saturated.float().mean()}
