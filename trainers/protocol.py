"""The result protocol shared by the trial, the stoppers, the tracker, the map and ``bench/``.

Every name a trial reports, a stopper reads, MLflow logs or the stability map aggregates is defined here once, in the
style of open-instruct's ``DPOLossType``: string enums whose members compare equal to the plain strings Ray Tune,
TRL and pandas carry, with properties for what callers need to know about them.
"""

from __future__ import annotations

import enum


class Metric(enum.StrEnum):
    """Per-step training metrics, named as TRL's ``DPOTrainer`` names them (plus the collapse statistics).

    A held-out evaluation logs the same statistics with TRL's ``eval_`` prefix (:attr:`held_out`).
    """

    LOSS = "loss"
    GRAD_NORM = "grad_norm"
    REWARDS_CHOSEN = "rewards/chosen"
    REWARDS_REJECTED = "rewards/rejected"
    REWARDS_MARGINS = "rewards/margins"
    REWARDS_ACCURACIES = "rewards/accuracies"
    LOGPS_CHOSEN = "logps/chosen"
    LOGPS_REJECTED = "logps/rejected"
    KL_REF = "kl/ref"
    """Sequence log-ratio to the reference over both completions: a cheap proxy of KL(pi || ref)."""
    LOGPS_CHOSEN_DRIFT = "logps/chosen_drift"
    """Drift of the chosen log-probs since the start (the reference is the initial policy)."""
    LOGPS_CHOSEN_DRIFT_PER_TOKEN = "logps/chosen_drift_per_token"
    """The same drift per completion token (nats per token): what likelihood collapse is judged on."""
    MIX_MEAN = "mix/mean"
    MIX_SATURATED_FRAC = "mix/saturated_frac"
    BETA_MIX_VALUE = "beta_mix/value"
    NAN_INF_LOSS = "nan_inf/loss"
    NAN_INF_GRAD = "nan_inf/grad"
    NAN_INF_GENUINE = "nan_inf/genuine"
    PERF_TOKENS_PER_SECOND = "perf/tokens_per_second"
    """Non-pad tokens the policy forward processed per second of optimizer step (:mod:`trainers.telemetry`)."""
    PERF_PADDING_FRACTION = "perf/padding_fraction"
    """Pad tokens over all tokens of the forward actually run (0 with the shared-prefix forward)."""
    PERF_TOKENS_SAVED = "perf/tokens_saved"
    """Prompt tokens per step the shared-prefix forward did not compute twice (0 without it)."""
    PERF_MFU = "perf/mfu"
    """Model FLOPs utilisation (0-1), reported where the accelerator's peak FLOP/s is known."""

    @property
    def held_out(self) -> str:
        """The name TRL gives this metric in a held-out evaluation (``eval_`` prefix)."""
        return f"eval_{self.value}"


HELD_OUT_ACCURACY = Metric.REWARDS_ACCURACIES.held_out
"""The metric comparable across losses and betas: held-out preference accuracy (ASHA ranks on it)."""

STEP_METRICS: tuple[Metric, ...] = (
    Metric.LOSS,
    Metric.GRAD_NORM,
    Metric.REWARDS_MARGINS,
    Metric.REWARDS_ACCURACIES,
    Metric.LOGPS_CHOSEN_DRIFT,
    Metric.KL_REF,
    Metric.MIX_MEAN,
    Metric.MIX_SATURATED_FRAC,
    Metric.BETA_MIX_VALUE,
    Metric.NAN_INF_LOSS,
    Metric.NAN_INF_GRAD,
    Metric.PERF_TOKENS_PER_SECOND,
    Metric.PERF_MFU,
)
"""The metrics a one-line step report shows, in order."""


class ReportKey(enum.StrEnum):
    """Bookkeeping keys of a trial's reports to Ray Tune (not metrics: never logged as such)."""

    STEP = "step"
    """Optimizer steps so far: the time attribute of ASHA and the stopper."""
    REPORT_TYPE = "report/type"
    """A :class:`ReportType`."""
    FINAL = "final"
    """Set to 1 on a trial's last report, which carries its verdict."""
    EVAL_PAIRS = "eval/pairs"
    """On the final report: held-out pairs each evaluation averaged over (the verdicts' noise level)."""
    STARTED_AT = "timing/started_at"
    """On the final report: when the trial's process began the trial (seconds since the epoch)."""
    WORK_SECONDS = "timing/work_s"
    """On the final report: seconds of the trial's own work (steps, held-out evaluations, final save); the rest of
    its wall time is overhead (``bench/sweep_overhead.py``)."""
    ENDED_AT = "timing/ended_at"
    """On the final report: when the trial finished its work (seconds since the epoch)."""


BOOKKEEPING_KEYS: frozenset[str] = frozenset(
    {*(key.value for key in ReportKey), "verdict/diverged", "verdict/step", "trial_id", "done", "date", "hostname"}
)
"""Report keys that are bookkeeping, not measurements: never logged as MLflow metrics."""


class ReportType(enum.IntEnum):
    """What a report to Ray Tune holds (the value of :attr:`ReportKey.REPORT_TYPE`)."""

    TRAIN = 0
    EVAL = 1
    FINAL = 2


class TrialStatus(enum.StrEnum):
    """How a sweep trial ended, as ``trials.csv``, the map and MLflow record it (README "Verdicts").

    The first five are verdicts about the loss at the trial's point; the others are not (:attr:`has_verdict`).
    """

    STABLE = "stable"
    """Trained to the end and learned: held-out accuracy above chance beyond its noise, no collapse, settled."""
    STALLED = "stalled"
    """Trained to the end without learning: held-out accuracy at chance within its noise, settled."""
    REVERSED = "reversed"
    """Trained to the end preferring the *rejected* responses (held-out accuracy significantly below chance) while the
    chosen likelihood did not collapse: the loss's wrong-sign minimum, the DiscoPOP paper's "stuck in local minima"."""
    COLLAPSED = "collapsed"
    """Trained to the end without any NaN but degenerated: the chosen likelihood fell and the policy stopped preferring
    the chosen responses (a significant fall of held-out accuracy from its best), or learned and fell back to chance."""
    DIVERGED = "diverged"
    """Stopped at its first divergence (non-finite values, exploding gradient norm or loss)."""
    UNSETTLED = "unsettled"
    """Trained to the end (and any extension budget) with a trajectory still moving: no confident verdict."""
    PRUNED = "pruned"
    """Stopped early by ASHA at a rung: it had not diverged yet, which is not a verdict."""
    INTERRUPTED = "interrupted"
    """Ended without its final report, an error or a divergence, and not at an ASHA rung (the sweep was stopped)."""
    ERRORED = "errored"
    """Crashed (after Tune's retries)."""

    @property
    def has_verdict(self) -> bool:
        """Whether the trial says anything about its cell's stability."""
        return self in (
            TrialStatus.STABLE,
            TrialStatus.STALLED,
            TrialStatus.REVERSED,
            TrialStatus.COLLAPSED,
            TrialStatus.DIVERGED,
        )

    @property
    def is_failure(self) -> bool:
        """Whether the trial counts as ``failed`` (:data:`Failure.FAILED`)."""
        return Failure.FAILED.includes(self)

    @property
    def trained_to_end(self) -> bool:
        """Whether the trial ran all its steps (so its final policy can be evaluated)."""
        return self in (
            TrialStatus.STABLE,
            TrialStatus.STALLED,
            TrialStatus.REVERSED,
            TrialStatus.COLLAPSED,
            TrialStatus.UNSETTLED,
        )

    @property
    def code(self) -> int:
        """The status as a number a chart can plot (MLflow's ``final/verdict_code``): its position in this enum, so
        ``0`` is stable, ``1``-``4`` the failures from a stall to a divergence, ``5``-``8`` no verdict."""
        return list(TrialStatus).index(self)

    @property
    def mlflow_run_status(self) -> str:
        """The MLflow run status its nested run ends with."""
        return {
            TrialStatus.ERRORED: "FAILED",
            TrialStatus.PRUNED: "KILLED",
            TrialStatus.INTERRUPTED: "KILLED",
        }.get(self, "FINISHED")


class Failure(enum.StrEnum):
    """The one definition of failure, used with these words by the cells, heatmaps, table, claims and MLflow.

    Both count over the trials with a verdict (:attr:`TrialStatus.has_verdict`); ``unsettled``, ``pruned``,
    ``interrupted`` and ``errored`` trials are neither successes nor failures.
    """

    FAILED = "failed"
    """Not usable: stalled, reversed, collapsed or diverged (anything but stable)."""
    UNSTABLE = "unstable"
    """Training went wrong: collapsed or diverged (a stall or a reversal is a loss that did not learn, not one that
    broke)."""

    @property
    def statuses(self) -> tuple[TrialStatus, ...]:
        """The trial statuses this category counts."""
        if self is Failure.FAILED:
            return (TrialStatus.STALLED, TrialStatus.REVERSED, TrialStatus.COLLAPSED, TrialStatus.DIVERGED)
        return (TrialStatus.COLLAPSED, TrialStatus.DIVERGED)

    def includes(self, status: str) -> bool:
        """Whether a trial of ``status`` counts in this category."""
        return TrialStatus(status) in self.statuses

    @property
    def meaning(self) -> str:
        """One line for tables and reports, e.g. ``failed = stalled + reversed + collapsed + diverged``."""
        return f"{self.value} = {' + '.join(status.value for status in self.statuses)}"
