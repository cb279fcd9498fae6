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
    """How a sweep trial ended, as ``trials.csv``, the map and MLflow record it (README "Verdicts")."""

    STABLE = "stable"
    """Trained to the end and learned: held-out accuracy above chance beyond its noise, no collapse."""
    STALLED = "stalled"
    """Trained to the end without learning: held-out accuracy not above chance beyond its noise."""
    COLLAPSED = "collapsed"
    """Trained to the end without any NaN but degenerated: likelihood collapse or accuracy back at chance."""
    DIVERGED = "diverged"
    """Stopped at its first divergence (non-finite values, exploding gradient norm or loss)."""
    PRUNED = "pruned"
    """Stopped early by ASHA: it had not diverged yet, which is not a verdict."""
    ERRORED = "errored"
    """Crashed (after Tune's retries)."""

    @property
    def has_verdict(self) -> bool:
        """Whether the trial says anything about its cell's stability."""
        return self not in (TrialStatus.PRUNED, TrialStatus.ERRORED)

    @property
    def is_failure(self) -> bool:
        """Whether the trial counts against its cell's stability (any verdict but ``stable``)."""
        return self.has_verdict and self is not TrialStatus.STABLE

    @property
    def trained_to_end(self) -> bool:
        """Whether the trial ran all its steps (so its final policy can be evaluated)."""
        return self in (TrialStatus.STABLE, TrialStatus.STALLED, TrialStatus.COLLAPSED)

    @property
    def mlflow_run_status(self) -> str:
        """The MLflow run status its nested run ends with."""
        return {TrialStatus.ERRORED: "FAILED", TrialStatus.PRUNED: "KILLED"}.get(self, "FINISHED")
