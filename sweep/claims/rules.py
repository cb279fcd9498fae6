"""The proposal's rate claims (a), (b), (f), (g) as explicit decision rules over a sweep's trial rows.

Every rule works on the *measured* trials of one ``form`` (``stable`` log-space or ``literal`` as published): rows
flagged ``inferred`` (cells filled in from neighbours) are dropped first, and only trials whose status carries a
verdict (``stable``, ``stalled``, ``collapsed``, ``diverged``) are counted, so ``pruned`` and ``errored`` trials never
count as a success or a failure (ASHA stopping a trial, or a crash, says nothing about the loss; see
``sweep/stability/cells.py``). Rates get Wilson 95 % intervals (:func:`sweep.confidence.wilson_interval`), and a
verdict is only ``supported`` or ``refuted`` when the interval is on one side of the proposal's number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from sweep.confidence import wilson_interval

Verdict = Literal["supported", "refuted", "not enough data"]
SUPPORTED: Verdict = "supported"
REFUTED: Verdict = "refuted"
NO_DATA: Verdict = "not enough data"

VERDICT_STATUSES = ("stable", "stalled", "collapsed", "diverged")
"""Statuses that say something about the loss at that point; ``pruned`` and ``errored`` do not."""
FAILURE_STATUSES = ("collapsed", "diverged")
STATUS_ALIASES = {"completed": "stable"}
"""``trainers.protocol.TrialStatus`` still writes ``completed`` for a trial that trained to the end undiverged."""
FORMS = ("stable", "literal")
BOX_BETA_KL = (0.01, 0.5)
BOX_BETA_MIX = (0.05, 0.5)
_EPS = 1e-9  # grid values come from YAML floats; compare box edges with a tolerance


@dataclass(frozen=True)
class Claim:
    """One claim of the research proposal, checked against a sweep.

    Attributes:
        id: Short id, the proposal's letter and the form, e.g. ``"b[literal]"``.
        statement: What the proposal expects, in one sentence.
        measured: The headline number(s), one line.
        verdict: ``supported``, ``refuted`` or ``not enough data``.
        reason: The rule applied and the numbers behind the verdict (markdown, may hold a table).
    """

    id: str
    statement: str
    measured: str
    verdict: Verdict
    reason: str


def measured_trials(trials: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The measured trials, normalised, and how many inferred rows were excluded.

    Normalisation: a missing ``form`` is ``stable``; statuses in :data:`STATUS_ALIASES` are renamed; DiscoPOP's
    ``beta_mix`` is set to its ``beta_kl`` (LRML ties the two, and the column may be NaN).

    Args:
        trials: One row per trial (the sweep's contract).

    Returns:
        ``(measured, n_inferred)``.
    """
    df = trials.copy()
    inferred = df["inferred"].fillna(False).astype(bool) if "inferred" in df else pd.Series(False, index=df.index)
    df = df[~inferred].copy()
    df["form"] = df["form"].fillna("stable") if "form" in df else "stable"
    df["status"] = df["status"].replace(STATUS_ALIASES)
    disco = df["loss"] == "discopop"
    df.loc[disco, "beta_mix"] = df.loc[disco, "beta_kl"]
    return df, int(inferred.sum())


def with_verdict(df: pd.DataFrame, loss: str, form: str | None = None) -> pd.DataFrame:
    """The trials of ``loss`` (in ``form``, if given) whose status carries a verdict."""
    keep = (df["loss"] == loss) & df["status"].isin(VERDICT_STATUSES)
    if form is not None:
        keep &= df["form"] == form
    return df[keep]


def column(df: pd.DataFrame, name: str, default: object = np.nan) -> pd.Series:
    """``df[name]``, or a column of ``default`` when the frame lacks it (optional contract columns)."""
    return df[name] if name in df else pd.Series(default, index=df.index)


def reason_has(df: pd.DataFrame, *needles: str) -> pd.Series:
    """Whether each trial's ``reason`` mentions any of ``needles`` (divergence reasons, ``trainers/collapse.py``)."""
    text = column(df, "reason", "").fillna("").astype(str)
    return text.str.contains("|".join(needles), regex=True)


def rate(k: int, n: int) -> str:
    """``"3/10 (30 %, 95 % CI 11-60 %)"``; ``"0/0"`` without data."""
    if n == 0:
        return "0/0"
    low, high = wilson_interval(k, n)
    return f"{k}/{n} ({100 * k / n:.0f} %, 95 % CI {100 * low:.0f}-{100 * high:.0f} %)"


def claim_a(df: pd.DataFrame, form: str, *, max_upper: float = 0.10) -> Claim:
    """(a) No NaN runs for dLRML in the box beta_kl in [0.01, 0.5] x beta_mix in [0.05, 0.5].

    A NaN run is a verdict trial with ``nan_inf_steps > 0``, a ``non_finite_*`` divergence reason, or a
    ``divergence_kind``. Refuted by any NaN run; supported by 0 of ``n`` when the Wilson upper bound on the NaN-run
    rate is at most ``max_upper`` (``n >= 35`` at 10 %); otherwise not enough data.
    """
    rows = with_verdict(df, "dlrml", form)
    box = rows["beta_kl"].between(BOX_BETA_KL[0] - _EPS, BOX_BETA_KL[1] + _EPS) & rows["beta_mix"].between(
        BOX_BETA_MIX[0] - _EPS, BOX_BETA_MIX[1] + _EPS
    )
    rows = rows[box]
    nan_run = (
        (pd.to_numeric(column(rows, "nan_inf_steps"), errors="coerce").fillna(0) > 0)
        | reason_has(rows, "non_finite")
        | column(rows, "divergence_kind").isin(["numerical", "genuine"])
    )
    k, n = int(nan_run.sum()), len(rows)
    upper = wilson_interval(k, n)[1]
    rule = (
        f"Rule: refuted by any NaN run; supported by 0 NaN runs when the 95 % Wilson upper bound is at most "
        f"{100 * max_upper:.0f} %; else not enough data."
    )
    if n == 0:
        verdict, why = NO_DATA, "No dLRML trial with a verdict lies in the box."
    elif k > 0:
        bad = ", ".join(rows.loc[nan_run, "trial_id"].astype(str).head(5))
        verdict, why = REFUTED, f"{k} of {n} trials had non-finite steps (e.g. {bad})."
    elif upper <= max_upper:
        verdict, why = SUPPORTED, f"0 of {n}: the NaN-run rate is below {100 * upper:.1f} % with 95 % confidence."
    else:
        verdict, why = NO_DATA, f"0 of {n}, but the 95 % upper bound is still {100 * upper:.1f} %."
    return Claim(
        id=f"a[{form}]",
        statement=f"dLRML ({form}) has no NaN runs for beta_kl in [0.01, 0.5] x beta_mix in [0.05, 0.5].",
        measured=f"NaN runs {rate(k, n)}",
        verdict=verdict,
        reason=f"{why} {rule}",
    )


def _failures_at_high_beta(df: pd.DataFrame, loss: str, form: str, min_beta: float) -> tuple[int, int]:
    rows = with_verdict(df, loss, form)
    rows = rows[rows["beta_kl"] >= min_beta - _EPS]
    return int(rows["status"].isin(FAILURE_STATUSES).sum()), len(rows)


def claim_b(df: pd.DataFrame, form: str, *, threshold: float = 0.40, min_beta: float = 0.25) -> Claim:
    """(b) DiscoPOP fails in more than 40 % of runs at beta >= 0.25.

    Failure is ``diverged`` or ``collapsed`` among verdict trials. Supported if the Wilson lower bound exceeds
    ``threshold``, refuted if the upper bound is below it, else not enough data.
    """
    k, n = _failures_at_high_beta(df, "discopop", form, min_beta)
    low, high = wilson_interval(k, n)
    if n > 0 and low > threshold:
        verdict, why = SUPPORTED, f"the 95 % interval lies above {100 * threshold:.0f} %"
    elif n > 0 and high < threshold:
        verdict, why = REFUTED, f"the 95 % interval lies below {100 * threshold:.0f} %"
    else:
        verdict, why = NO_DATA, f"the 95 % interval contains {100 * threshold:.0f} % (or there are no trials)"
    return Claim(
        id=f"b[{form}]",
        statement=f"DiscoPOP ({form}) fails (diverges or collapses) in > {100 * threshold:.0f} % of runs at "
        f"beta >= {min_beta:g}.",
        measured=f"failures {rate(k, n)}",
        verdict=verdict,
        reason=f"DiscoPOP failed in {rate(k, n)} verdict trials at beta >= {min_beta:g}: {why}. Rule: supported if "
        f"the Wilson lower bound > {threshold:.2f}, refuted if the upper bound < {threshold:.2f}.",
    )


def claim_b_dlrml(df: pd.DataFrame, form: str, *, min_beta: float = 0.25) -> Claim:
    """(b') dLRML fails less than DiscoPOP at beta_kl >= 0.25 (any beta_mix).

    Conservative: supported only if the two Wilson intervals are disjoint with dLRML's below, refuted if disjoint
    with dLRML's above, else not enough data.
    """
    kd, nd = _failures_at_high_beta(df, "dlrml", form, min_beta)
    kp, np_ = _failures_at_high_beta(df, "discopop", form, min_beta)
    (dl, dh), (pl, ph) = wilson_interval(kd, nd), wilson_interval(kp, np_)
    if nd and np_ and dh < pl:
        verdict, why = SUPPORTED, "dLRML's interval lies entirely below DiscoPOP's"
    elif nd and np_ and dl > ph:
        verdict, why = REFUTED, "dLRML's interval lies entirely above DiscoPOP's"
    else:
        verdict, why = NO_DATA, "the intervals overlap (or a side has no trials)"
    return Claim(
        id=f"b'[{form}]",
        statement=f"dLRML ({form}) fails less often than DiscoPOP at beta_kl >= {min_beta:g}.",
        measured=f"dLRML {rate(kd, nd)} vs DiscoPOP {rate(kp, np_)}",
        verdict=verdict,
        reason=f"Failures at beta_kl >= {min_beta:g}: dLRML {rate(kd, nd)}, DiscoPOP {rate(kp, np_)}; {why}. Rule: "
        "decided only when the two 95 % Wilson intervals are disjoint.",
    )


def claim_f(df: pd.DataFrame, form: str, *, min_rate: float = 0.10) -> Claim:
    """(f) DiscoPOP stalls at its smallest beta and collapses/diverges at its largest.

    A phenomenon is *observed* when its Wilson lower bound exceeds ``min_rate`` and *absent* when its upper bound
    is below ``min_rate``. Supported if both are observed, refuted if either is absent, else not enough data
    (including fewer than two beta values).
    """
    rows = with_verdict(df, "discopop", form)
    betas = sorted(rows["beta_kl"].unique())
    statement = f"DiscoPOP ({form}) stalls at the smallest beta and collapses or diverges at the largest."
    if len(betas) < 2:
        return Claim(f"f[{form}]", statement, "fewer than 2 beta values", NO_DATA, "Needs at least two beta values.")
    small, large = rows[rows["beta_kl"] == betas[0]], rows[rows["beta_kl"] == betas[-1]]
    ks, ns = int((small["status"] == "stalled").sum()), len(small)
    kf, nf = int(large["status"].isin(FAILURE_STATUSES).sum()), len(large)
    bounds = [wilson_interval(ks, ns), wilson_interval(kf, nf)]
    if all(low > min_rate for low, _ in bounds):
        verdict = SUPPORTED
    elif any(high < min_rate for _, high in bounds):
        verdict = REFUTED
    else:
        verdict = NO_DATA
    measured = f"stalls at {betas[0]:g}: {rate(ks, ns)}; failures at {betas[-1]:g}: {rate(kf, nf)}"
    reason = (
        f"At beta = {betas[0]:g}, {rate(ks, ns)} verdict trials stalled; at beta = {betas[-1]:g}, {rate(kf, nf)} "
        f"collapsed or diverged. Rule: a behaviour is observed when its 95 % Wilson lower bound exceeds "
        f"{100 * min_rate:.0f} % and absent when the upper bound is below it; supported if both are observed, "
        "refuted if either is absent."
    )
    return Claim(f"f[{form}]", statement, measured, verdict, reason)


def usable_betas(df: pd.DataFrame, loss: str, form: str) -> tuple[set[float], set[float]]:
    """``(tested, usable)`` beta_kl values: usable when some ``(beta_kl, beta_mix)`` cell has every verdict trial
    ``stable`` (a stalled cell trains but does not learn, so it is not usable either)."""
    rows = with_verdict(df, loss, form)
    cells = rows.assign(ok=rows["status"] == "stable").groupby(["beta_kl", "beta_mix"], dropna=False)["ok"].all()
    usable = {float(b) for (b, _), ok in cells.items() if ok}
    return {float(b) for b in rows["beta_kl"].unique()}, usable


def claim_g(df: pd.DataFrame, form: str, *, min_shared: int = 2) -> Claim:
    """(g) Decoupling widens the range of usable betas: dLRML is usable at more beta_kl values than DiscoPOP.

    Counted over the beta_kl values both losses were tested at. Not enough data with fewer than ``min_shared``
    shared values, or when DiscoPOP is usable at all of them (the grid never reaches DiscoPOP's limit, so it cannot
    show a wider range). Otherwise supported if dLRML's count is larger, refuted if it is not.
    """
    d_tested, d_usable = usable_betas(df, "dlrml", form)
    p_tested, p_usable = usable_betas(df, "discopop", form)
    shared = d_tested & p_tested
    nd, np_ = len(d_usable & shared), len(p_usable & shared)
    measured = f"usable beta_kl: dLRML {nd}/{len(shared)}, DiscoPOP {np_}/{len(shared)}"
    if len(shared) < min_shared:
        verdict, why = NO_DATA, f"only {len(shared)} beta_kl value(s) were tested for both losses"
    elif np_ == len(shared):
        verdict, why = NO_DATA, "DiscoPOP is usable at every shared beta_kl, so the grid cannot show a wider range"
    elif nd > np_:
        verdict, why = SUPPORTED, "dLRML is usable at more beta_kl values"
    else:
        verdict, why = REFUTED, "dLRML is usable at no more beta_kl values than DiscoPOP"
    listing = f"dLRML usable at {sorted(d_usable & shared)}, DiscoPOP at {sorted(p_usable & shared)}"
    return Claim(
        id=f"g[{form}]",
        statement=f"Decoupling widens the range of usable betas ({form}).",
        measured=measured,
        verdict=verdict,
        reason=f"{why}. {listing}, of shared {sorted(shared)}. A beta_kl is usable when some cell there had every "
        "verdict trial stable; note dLRML gets one chance per beta_mix, DiscoPOP one per beta_kl.",
    )
