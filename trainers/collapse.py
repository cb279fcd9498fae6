"""Collapse detection shared by a single trial and the sweep's Ray stopper.

A trial is *diverged* at the first step where one of these holds (checked on the per-step metrics that the
trainer logs under TRL's names):

* ``non_finite_loss``: the logged loss, or any per-example loss (``nan_inf/loss`` > 0), is NaN/Inf;
* ``non_finite_grad``: the pre-clip gradient norm is NaN/Inf, or ``nan_inf/grad`` > 0;
* ``grad_norm_explosion``: after ``grace_steps``, the pre-clip gradient norm exceeds ``grad_norm_factor`` times
  the running median of the previous ``window`` norms, or of the grace period's norms if that is larger. The floor
  keeps the rule about explosions: once a trial fits its training pairs (loss ~0, margins of 10-20 nats), its norms
  vanish and the running median with them, and one ordinary batch (norm 132 after a median of 9.9, on the default
  grid's dLRML at beta_kl 1, step 30; its held-out accuracy 0.63) would read as a 10x explosion, while the same
  norm inside the grace period (177 for DPO at beta 1) is how these losses start;
* ``loss_explosion``: after ``grace_steps``, the loss exceeds ``loss_explosion_factor`` times the largest loss of
  the grace period (losses of every family start near their value at ``rho = 0``).

A non-finite value is *genuine* when the mathematics demands it: the loss (or its gradient) re-evaluated in float64
at the batch's log-probs is infinite or beyond the training dtype's range (no formula could represent it), or the
policy's log-probs themselves are non-finite. It is *numerical* when that true value fits the training dtype, i.e.
the formula or its evaluation order produced the overflow (e.g. ``0 * inf`` in a naive DiscoPOP).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch

from trainers.losses import LossSpec, compute_loss
from trainers.protocol import Metric, ReportKey, ReportType
from trainers.typed_config import option, validate

REASONS = ("non_finite_loss", "non_finite_grad", "grad_norm_explosion", "loss_explosion")
EVAL_LOSS = Metric.LOSS.held_out
"""A held-out evaluation's mean loss (TRL's ``eval_loss``)."""


@dataclass
class DivergenceConfig:
    """Thresholds of the divergence monitor."""

    grace_steps: int = option(3, ge=1, help="Steps before the explosion rules apply (non-finite values always count).")
    grad_norm_factor: float = option(
        10.0,
        gt=1,
        help="``k``: a pre-clip grad norm above ``k`` x the running median (or the grace period's median, if larger) "
        "is an explosion.",
    )
    window: int = option(50, ge=1, help="Number of past grad norms in the running median.")
    loss_explosion_factor: float = option(
        10.0, gt=1, help="A loss above this multiple of the largest grace-period loss is an explosion."
    )

    def __post_init__(self) -> None:
        validate(self, label="divergence")


@dataclass(frozen=True)
class Verdict:
    """The outcome of a trial.

    Attributes:
        status: ``"stable"`` or ``"diverged"``.
        reason: One of :data:`REASONS` when diverged.
        step: The optimizer step at which divergence was detected.
        kind: ``"numerical"`` or ``"genuine"`` for non-finite reasons, else ``None``.
        detail: Human-readable evidence (the offending value and threshold).
    """

    status: str = "stable"
    reason: str | None = None
    step: int | None = None
    kind: str | None = None
    detail: str = ""

    @property
    def diverged(self) -> bool:
        """Whether the trial diverged."""
        return self.status == "diverged"

    def describe(self) -> str:
        """One line, e.g. ``diverged at step 7: non_finite_loss (numerical) - loss=nan``."""
        if not self.diverged:
            return "stable"
        kind = f" ({self.kind})" if self.kind else ""
        return f"diverged at step {self.step}: {self.reason}{kind} - {self.detail}"

    def as_dict(self) -> dict[str, object]:
        """Plain-dict form for JSON, MLflow tags and Ray results."""
        return asdict(self)


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _finite(value: object) -> bool:
    return value is None or math.isfinite(float(value))


@dataclass
class DivergenceMonitor:
    """Feeds on per-step metric dicts and returns the first divergence verdict.

    Pure Python: the same object serves the trial callback and the Ray ``Stopper`` (one per trial).
    """

    config: DivergenceConfig = field(default_factory=DivergenceConfig)
    verdict: Verdict | None = None
    _grace_losses: list[float] = field(default_factory=list)
    _grace_norms: list[float] = field(default_factory=list)
    _grad_norms: deque = field(default_factory=deque)
    _steps_seen: int = 0

    def update_report(self, report: Mapping[str, object]) -> Verdict | None:
        """Consume one of a trial's reports to Tune (a training step, a held-out evaluation or the final summary).

        An evaluation is read from its own ``eval_*`` values only (a row of Tune's results frame carries every
        column, NaN where the report had none); the final summary repeats earlier reports and is skipped, as is a
        report without a step.
        """
        step, kind = report.get(ReportKey.STEP), report.get(ReportKey.REPORT_TYPE, ReportType.TRAIN)
        if step is None or _is_nan(step) or kind == ReportType.FINAL:
            return self.verdict
        if kind == ReportType.EVAL:
            report = {k: v for k, v in report.items() if str(k).startswith("eval_") and not _is_nan(v)}
        return self.update(int(step), report)  # type: ignore[arg-type]

    def _update_held_out(self, step: int, metrics: Mapping[str, float]) -> Verdict | None:
        """A held-out evaluation diverges the trial on the same non-finite rule as a training step (its loss and
        per-pair losses); the explosion rules, which compare training steps, do not apply."""
        loss = metrics.get(EVAL_LOSS)
        count = metrics.get(Metric.NAN_INF_LOSS.held_out, 0)
        if (loss is not None and not _finite(loss)) or count:
            kind = "genuine" if metrics.get(Metric.NAN_INF_GENUINE.held_out, 0) else "numerical"
            return self._diverge(
                step,
                "non_finite_loss",
                kind,
                f"held-out evaluation: {EVAL_LOSS}={loss}, {Metric.NAN_INF_LOSS.held_out}={count}",
            )
        return None

    def update(self, step: int, metrics: Mapping[str, float]) -> Verdict | None:
        """Consume one training step's metrics.

        Args:
            step: Optimizer step (1-based) the metrics belong to.
            metrics: A training step's (at least ``loss`` and ``grad_norm``; optionally ``nan_inf/loss``,
                ``nan_inf/grad`` and ``nan_inf/genuine``) or a held-out evaluation's (``eval_loss``,
                ``eval_nan_inf/loss``, ``eval_nan_inf/genuine``): a non-finite value in either diverges the trial.

        Returns:
            The divergence verdict the first time a rule fires (and every later call), else ``None``.
        """
        if self.verdict is not None:
            return self.verdict
        if "loss" not in metrics:
            return self._update_held_out(step, metrics)
        loss = metrics["loss"]
        grad_norm = metrics.get("grad_norm")
        kind = "genuine" if metrics.get("nan_inf/genuine", 0) else "numerical"
        if not _finite(loss) or metrics.get("nan_inf/loss", 0):
            return self._diverge(
                step, "non_finite_loss", kind, f"loss={loss}, nan_inf/loss={metrics.get('nan_inf/loss', 0)}"
            )
        if not _finite(grad_norm) or metrics.get("nan_inf/grad", 0):
            return self._diverge(
                step,
                "non_finite_grad",
                kind,
                f"grad_norm={grad_norm}, nan_inf/grad={metrics.get('nan_inf/grad', 0)}",
            )
        self._steps_seen += 1
        if self._steps_seen <= self.config.grace_steps:
            self._grace_losses.append(float(loss))
        else:
            baseline = max(self._grace_losses)
            threshold = self.config.loss_explosion_factor * max(abs(baseline), 1e-3)
            if loss > threshold:
                return self._diverge(step, "loss_explosion", None, f"loss={loss:.4g} > {threshold:.4g}")
        if grad_norm is not None:
            if self._steps_seen > self.config.grace_steps and self._grad_norms:
                median = max(statistics.median(self._grad_norms), statistics.median(self._grace_norms or [0.0]))
                threshold = self.config.grad_norm_factor * median
                if median > 0 and grad_norm > threshold:
                    return self._diverge(
                        step, "grad_norm_explosion", None, f"grad_norm={grad_norm:.4g} > {threshold:.4g}"
                    )
            if self._steps_seen <= self.config.grace_steps:
                self._grace_norms.append(float(grad_norm))
            self._grad_norms.append(float(grad_norm))
            if len(self._grad_norms) > self.config.window:
                self._grad_norms.popleft()
        return None

    def final(self) -> Verdict:
        """The trial's verdict: the divergence if one was seen, else stable."""
        return self.verdict or Verdict()

    def _diverge(self, step: int, reason: str, kind: str | None, detail: str) -> Verdict:
        self.verdict = Verdict("diverged", reason, step, kind, detail)
        return self.verdict


def classify_non_finite(
    spec: LossSpec,
    hparams: Mapping[str, float | str],
    logps: tuple[torch.Tensor, ...],
    *,
    check_grad: bool,
    dtype: torch.dtype = torch.float32,
) -> str:
    """Decide whether a non-finite loss or gradient is genuine or numerical.

    Args:
        spec: The loss that produced it.
        hparams: Its hyper-parameters (floats; a learnable one at its current value).
        logps: ``(pi_c, pi_r, ref_c, ref_r)``, each of shape ``(B,)``, from the offending batch.
        check_grad: Also check the float64 gradient w.r.t. the policy log-probs.
        dtype: The training dtype whose range the true values must fit.

    Returns:
        ``"genuine"`` if the policy log-probs are non-finite or the float64 loss (or its gradient) is non-finite
        or beyond ``dtype``'s range, else ``"numerical"``.
    """
    limit = torch.finfo(dtype).max

    def representable(t: torch.Tensor) -> bool:
        return bool(torch.isfinite(t).all() and t.abs().max() <= limit)

    pi_c, pi_r, ref_c, ref_r = (t.detach().double() for t in logps)
    if not (torch.isfinite(pi_c).all() and torch.isfinite(pi_r).all()):
        return "genuine"
    pi_c.requires_grad_(check_grad)
    pi_r.requires_grad_(check_grad)
    with torch.enable_grad():
        # The true value is the stable form's, in float64, whichever form the trial trains with.
        numeric = {k: float(v) for k, v in hparams.items() if k != "form"}
        losses = compute_loss(spec.name, pi_c, pi_r, ref_c, ref_r, **numeric, form="stable").losses
        if not representable(losses):
            return "genuine"
        if check_grad:
            grads = torch.autograd.grad(losses.sum(), (pi_c, pi_r))
            if not all(representable(g) for g in grads):
                return "genuine"
    return "numerical"
