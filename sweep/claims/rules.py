"""The proposal's rate claims (a), (b), (f), (g) as explicit decision rules over a sweep's trial rows.

Every rule works on the *measured* trials of one ``form`` (``stable`` log-space or ``literal`` as published): rows
flagged ``inferred`` (cells filled in from neighbours) are dropped first, and only trials whose status carries a
verdict (``stable``, ``stalled``, ``reversed``, ``collapsed``, ``diverged``) are counted, so unsettled, pruned,
interrupted and errored trials never count as a success or a failure (see ``sweep/stability/cells.py``). No claim is
decided from a single trial: a cell a claim uses must hold at least ``min_seeds`` verdict trials (3 by default);
thinner cells are left out and named. Failure is counted in the categories of :class:`trainers.protocol.Failure`,
and each claim says which it tests. Rates get Wilson 95 % intervals (:func:`sweep.confidence.wilson_interval`), and a
verdict is only ``supported`` or ``refuted`` when the interval is on one side of the proposal's number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from sweep.confidence import wilson_interval
from trainers.protocol import Failure, TrialStatus

Verdict = Literal["supported", "refuted", "not enough data"]
SUPPORTED: Verdict = "supported"
REFUTED: Verdict = "refuted"
NO_DATA: Verdict = "not enough data"

VERDICT_STATUSES = tuple(status.value for status in TrialStatus if status.has_verdict)
"""Statuses that say something about the loss at that point; unsettled, pruned, interrupted and errored do not."""
STATUS_ALIASES = {"completed": "stable"}
"""Sweeps written before the verdicts had their names recorded ``completed`` for a trial that trained to the end."""
MIN_SEEDS = 3
"""Fewest verdict trials a cell needs before a claim may use it."""
STUCK = (TrialStatus.STALLED.value, TrialStatus.REVERSED.value)
"""What the DiscoPOP paper calls "stuck in local minima": no learning, or the wrong-sign minimum."""
PAPER_SMALL_BETA, PAPER_LARGE_BETA = 0.01, 2.5
"""Where the DiscoPOP paper saw LRML struggle to converge (Lu et al. 2024: "very low (<= 0.01) or very high (>= 2.5)
beta")."""
FORMS = ("stable", "literal")
LABELS = {"dlrml": "dLRML", "discopop": "DiscoPOP", "dpo": "DPO"}
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
        tests: What the claim counts, e.g. ``failed = stalled + reversed + collapsed + diverged``.
    """

    id: str
    statement: str
    measured: str
    verdict: Verdict
    reason: str
    tests: str = ""


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


def decidable(rows: pd.DataFrame, min_seeds: int = MIN_SEEDS, label: str = "") -> tuple[pd.DataFrame, str]:
    """The verdict trials of the cells that hold at least ``min_seeds`` of them, and a note naming the others.

    Args:
        rows: Verdict trials (:func:`with_verdict`).
        min_seeds: Fewest verdict trials per ``(beta_kl, beta_mix)`` cell.
        label: Whose cells they are, for the note (e.g. ``DiscoPOP``).

    Returns:
        ``(kept rows, note)``; the note is empty when no cell was left out.
    """
    sizes = rows.groupby(["beta_kl", "beta_mix"], dropna=False)["trial_id"].transform("size")
    thin = rows[sizes < min_seeds]
    if thin.empty:
        return rows, ""
    cells = thin.groupby(["beta_kl", "beta_mix"], dropna=False).size()
    named = ", ".join(
        f"beta_kl={b:g}" + ("" if pd.isna(m) else f"/beta_mix={m:g}") + f" ({n})" for (b, m), n in cells.items()
    )
    whose = f" ({label})" if label else ""
    note = (
        f" Left out{whose}, with fewer than {min_seeds} verdict trials: {named}; no claim is decided from single "
        f"trials (run grid.seeds with {min_seeds} or more seeds)."
    )
    return rows[sizes >= min_seeds], note


def column(df: pd.DataFrame, name: str, default: object = np.nan) -> pd.Series:
    """``df[name]``, or a column of ``default`` when the frame lacks it (optional contract columns)."""
    return df[name] if name in df else pd.Series(default, index=df.index)


def reason_has(df: pd.DataFrame, *needles: str) -> pd.Series:
    """Whether each trial's ``reason`` mentions any of ``needles`` (divergence reasons, ``trainers/collapse.py``)."""
    text = column(df, "reason", "").fillna("").astype(str)
    return text.str.contains("|".join(needles), regex=True)


def count(rows: pd.DataFrame, failure: Failure) -> int:
    """How many of ``rows`` count in a failure category."""
    return int(rows["status"].map(failure.includes).astype(bool).sum()) if len(rows) else 0


def rate(k: int, n: int) -> str:
    """``"3/10 (30 %, 95 % CI 11-60 %)"``; ``"0/0"`` without data."""
    if n == 0:
        return "0/0"
    low, high = wilson_interval(k, n)
    return f"{k}/{n} ({100 * k / n:.0f} %, 95 % CI {100 * low:.0f}-{100 * high:.0f} %)"


def _in_box(rows: pd.DataFrame) -> pd.Series:
    return rows["beta_kl"].between(BOX_BETA_KL[0] - _EPS, BOX_BETA_KL[1] + _EPS) & rows["beta_mix"].between(
        BOX_BETA_MIX[0] - _EPS, BOX_BETA_MIX[1] + _EPS
    )


def claim_a(df: pd.DataFrame, form: str, *, max_upper: float = 0.10, min_seeds: int = MIN_SEEDS) -> Claim:
    """(a) No NaN runs for dLRML in the box beta_kl in [0.01, 0.5] x beta_mix in [0.05, 0.5].

    A NaN run is a verdict trial with ``nan_inf_steps > 0``, a ``non_finite_*`` divergence reason, or a
    ``divergence_kind``. Over the box's cells with at least ``min_seeds`` verdict trials: refuted by any NaN run;
    supported by 0 of ``n`` when the Wilson upper bound on the NaN-run rate is at most ``max_upper`` (``n >= 35`` at
    10 %); otherwise not enough data.
    """
    rows = with_verdict(df, "dlrml", form)
    rows, left_out = decidable(rows[_in_box(rows)], min_seeds)
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
        verdict, why = NO_DATA, "No dLRML cell in the box has enough verdict trials."
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
        reason=f"{why} {rule}{left_out}",
        tests="NaN runs: a non-finite training or held-out step, whatever the verdict",
    )


def _failed_at_high_beta(
    df: pd.DataFrame, loss: str, form: str, min_beta: float, min_seeds: int
) -> tuple[int, int, str]:
    rows = with_verdict(df, loss, form)
    rows, left_out = decidable(rows[rows["beta_kl"] >= min_beta - _EPS], min_seeds, LABELS.get(loss, loss))
    return count(rows, Failure.FAILED), len(rows), left_out


def claim_b(
    df: pd.DataFrame, form: str, *, threshold: float = 0.40, min_beta: float = 0.25, min_seeds: int = MIN_SEEDS
) -> Claim:
    """(b) DiscoPOP fails in more than 40 % of runs at beta >= 0.25.

    Counts ``failed`` trials (:data:`Failure.FAILED`: not usable) among the verdict trials of cells with at least
    ``min_seeds`` of them. Supported if the Wilson lower bound exceeds ``threshold``, refuted if the upper bound is
    below it, else not enough data.
    """
    k, n, left_out = _failed_at_high_beta(df, "discopop", form, min_beta, min_seeds)
    low, high = wilson_interval(k, n)
    if n > 0 and low > threshold:
        verdict, why = SUPPORTED, f"the 95 % interval lies above {100 * threshold:.0f} %"
    elif n > 0 and high < threshold:
        verdict, why = REFUTED, f"the 95 % interval lies below {100 * threshold:.0f} %"
    else:
        verdict, why = NO_DATA, f"the 95 % interval contains {100 * threshold:.0f} % (or there are no trials)"
    return Claim(
        id=f"b[{form}]",
        statement=f"DiscoPOP ({form}) fails in > {100 * threshold:.0f} % of runs at beta >= {min_beta:g}.",
        measured=f"failed {rate(k, n)}",
        verdict=verdict,
        reason=f"DiscoPOP failed in {rate(k, n)} verdict trials at beta >= {min_beta:g}: {why}. Rule: supported if "
        f"the Wilson lower bound > {threshold:.2f}, refuted if the upper bound < {threshold:.2f}.{left_out}",
        tests=Failure.FAILED.meaning,
    )


def claim_b_dlrml(df: pd.DataFrame, form: str, *, min_beta: float = 0.25, min_seeds: int = MIN_SEEDS) -> Claim:
    """(b') dLRML fails less than DiscoPOP at beta_kl >= 0.25 (any beta_mix), ``failed`` counted as in (b).

    Conservative: supported only if the two Wilson intervals are disjoint with dLRML's below, refuted if disjoint
    with dLRML's above, else not enough data.
    """
    kd, nd, left_d = _failed_at_high_beta(df, "dlrml", form, min_beta, min_seeds)
    kp, np_, left_p = _failed_at_high_beta(df, "discopop", form, min_beta, min_seeds)
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
        reason=f"Failed at beta_kl >= {min_beta:g}: dLRML {rate(kd, nd)}, DiscoPOP {rate(kp, np_)}; {why}. Rule: "
        f"decided only when the two 95 % Wilson intervals are disjoint.{left_d}{left_p}",
        tests=Failure.FAILED.meaning,
    )


def claim_f(df: pd.DataFrame, form: str, *, min_rate: float = 0.10, min_seeds: int = MIN_SEEDS) -> Claim:
    """(f) DiscoPOP is stuck at very small beta and unstable at very large beta, as the DiscoPOP paper saw.

    The paper: LRML "struggles to converge at very low (<= 0.01) or very high (>= 2.5) beta". In this vocabulary:
    *stuck* (``stalled`` or ``reversed``, its "local minima") at the grid's smallest beta and *unstable*
    (:data:`Failure.UNSTABLE`) at its largest, each over at least ``min_seeds`` verdict trials. A behaviour is
    *observed* when its Wilson lower bound exceeds ``min_rate`` and *absent* when its upper bound is below it.
    Supported if both are observed, refuted if either is absent, else not enough data; and never decided when the
    grid does not reach the paper's betas (smallest above 0.01 or largest below 2.5): it is then not the paper's
    claim that is tested.
    """
    rows = with_verdict(df, "discopop", form)
    sizes = rows.groupby("beta_kl")["trial_id"].transform("size")
    rows = rows[sizes >= min_seeds]
    betas = sorted(rows["beta_kl"].unique())
    statement = f"DiscoPOP ({form}) is stuck at the smallest beta and unstable at the largest (the paper's shape)."
    tests = f"stuck = {' + '.join(STUCK)} at the smallest beta; {Failure.UNSTABLE.meaning} at the largest"
    if len(betas) < 2:
        why = f"Needs two or more beta values with at least {min_seeds} DiscoPOP verdict trials each."
        return Claim(f"f[{form}]", statement, "fewer than 2 beta values", NO_DATA, why, tests)
    small, large = rows[rows["beta_kl"] == betas[0]], rows[rows["beta_kl"] == betas[-1]]
    ks, ns = int(small["status"].isin(STUCK).sum()), len(small)
    kf, nf = count(large, Failure.UNSTABLE), len(large)
    bounds = [wilson_interval(ks, ns), wilson_interval(kf, nf)]
    reaches = betas[0] <= PAPER_SMALL_BETA + _EPS and betas[-1] >= PAPER_LARGE_BETA - _EPS
    if not reaches:
        verdict = NO_DATA
    elif all(low > min_rate for low, _ in bounds):
        verdict = SUPPORTED
    elif any(high < min_rate for _, high in bounds):
        verdict = REFUTED
    else:
        verdict = NO_DATA
    measured = f"stuck at {betas[0]:g}: {rate(ks, ns)}; unstable at {betas[-1]:g}: {rate(kf, nf)}"
    reason = (
        f"At beta = {betas[0]:g}, {rate(ks, ns)} verdict trials were stuck; at beta = {betas[-1]:g}, {rate(kf, nf)} "
        f"were unstable. Rule: a behaviour is observed when its 95 % Wilson lower bound exceeds "
        f"{100 * min_rate:.0f} % and absent when the upper bound is below it; supported if both are observed, "
        "refuted if either is absent."
    )
    if not reaches:
        reason += (
            f" The grid's betas span {betas[0]:g}-{betas[-1]:g}, not the paper's <= {PAPER_SMALL_BETA:g} and >= "
            f"{PAPER_LARGE_BETA:g}: not decided (sweep/configs/discopop_beta_sweep.yaml runs the paper's betas)."
        )
    return Claim(f"f[{form}]", statement, measured, verdict, reason, tests)


def usable_betas(
    df: pd.DataFrame, loss: str, form: str, *, min_seeds: int = MIN_SEEDS
) -> tuple[set[float], set[float], set[float]]:
    """``(decided, usable, unusable)`` beta_kl values of a loss, from its cells' failed rates.

    A cell with at least ``min_seeds`` verdict trials is *usable* when the Wilson upper bound of its failed rate is
    below 50 % (most runs work, with 95 % confidence) and *unusable* when the lower bound is above 50 %. A beta_kl is
    usable when some cell there is (dLRML gets one cell per beta_mix), unusable when every decided cell there is.
    """
    rows = with_verdict(df, loss, form)
    usable: set[float] = set()
    unusable: dict[float, bool] = {}
    for (beta_kl, _), cell in rows.groupby(["beta_kl", "beta_mix"], dropna=False):
        if len(cell) < min_seeds:
            continue
        low, high = wilson_interval(count(cell, Failure.FAILED), len(cell))
        beta = float(beta_kl)
        if high < 0.5:
            usable.add(beta)
        unusable[beta] = unusable.get(beta, True) and low > 0.5
    decided = usable | {b for b, bad in unusable.items() if bad}
    return decided, usable, {b for b, bad in unusable.items() if bad and b not in usable}


def claim_g(df: pd.DataFrame, form: str, *, min_seeds: int = MIN_SEEDS) -> Claim:
    """(g) Decoupling widens the range of usable betas: dLRML usable where DiscoPOP is not.

    Over the beta_kl values both losses were decided at (:func:`usable_betas`, Wilson rule, ``min_seeds`` per cell):
    supported if dLRML is usable at some beta_kl where DiscoPOP is unusable and DiscoPOP is usable nowhere dLRML is
    unusable; refuted if DiscoPOP is usable at every beta_kl dLRML is, and dLRML nowhere DiscoPOP is unusable, at
    three or more shared values; otherwise (or when DiscoPOP is usable at every shared value: the grid never reaches
    its limit) not enough data.
    """
    d_decided, d_usable, d_bad = usable_betas(df, "dlrml", form, min_seeds=min_seeds)
    p_decided, p_usable, p_bad = usable_betas(df, "discopop", form, min_seeds=min_seeds)
    shared = d_decided & p_decided
    wins, losses = d_usable & p_bad & shared, p_usable & d_bad & shared
    measured = (
        f"usable beta_kl: dLRML {sorted(d_usable & shared)}, DiscoPOP {sorted(p_usable & shared)} of decided "
        f"{sorted(shared)}"
    )
    if wins and not losses:
        verdict, why = SUPPORTED, f"dLRML is usable where DiscoPOP is not at beta_kl {sorted(wins)}"
    elif not wins and len(shared) >= 3 and (d_usable & shared) <= p_usable:
        verdict, why = REFUTED, "dLRML is usable at no beta_kl where DiscoPOP is not"
    elif shared and shared <= p_usable:
        verdict, why = NO_DATA, "DiscoPOP is usable at every decided beta_kl, so the grid cannot show a wider range"
    else:
        verdict, why = NO_DATA, f"too few beta_kl values are decided for both losses ({sorted(shared)})"
    return Claim(
        id=f"g[{form}]",
        statement=f"Decoupling widens the range of usable betas ({form}).",
        measured=measured,
        verdict=verdict,
        reason=f"{why}. A cell is usable when the 95 % Wilson upper bound of its failed rate is below 50 %, unusable "
        f"when the lower bound is above it, each over at least {min_seeds} verdict trials; a beta_kl is usable when "
        "some cell there is (dLRML has one per beta_mix).",
        tests=f"usable = {Failure.FAILED.value} rate significantly below 50 % ({Failure.FAILED.meaning})",
    )
