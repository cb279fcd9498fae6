"""The proposal's score and gradient claims (c), (d), (e) as explicit decision rules over a sweep's trial rows.

Score gaps get a two-level percentile bootstrap (:func:`sweep.confidence.bootstrap_mean_diff`): a *group* is one
scored trial (one seed at one grid point), holding its per-question MT-Bench scores when ``question_scores`` has
them and its single ``mt_bench_score`` (or ``alpaca_lc``) otherwise. Trials and, within each, questions are
resampled. Only verdict trials (see :mod:`sweep.claims.rules`) of the measured rows are used.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sweep.claims.rules import MIN_SEEDS, NO_DATA, REFUTED, SUPPORTED, Claim, column, reason_has, with_verdict
from sweep.columns import AlpacaColumn, MTBenchColumn
from sweep.confidence import BootstrapResult, bootstrap_mean_diff

MIN_SCORED = MIN_SEEDS
"""Fewest scored trials per loss before a gap is estimated (no claim is decided from single trials)."""
UNSAFE_REASONS = ("grad_norm_explosion", "non_finite_grad")
"""Divergence reasons that mean the gradient norm left any safe range (``trainers/collapse.py``)."""


def score_groups(rows: pd.DataFrame, score_column: str, question_scores: pd.DataFrame | None = None) -> pd.Series:
    """Each trial's bootstrap group: its per-question scores if known, else its scalar score, else ``None``.

    Row-aligned (same index as ``rows``) rather than keyed by ``trial_id``, so a repeated id cannot merge trials.

    Args:
        rows: Trials (with ``trial_id`` and, optionally, ``score_column``).
        score_column: ``mt_bench_score`` or ``alpaca_lc``.
        question_scores: Optional ``trial_id, question_id, score`` frame (MT-Bench only).
    """
    per_question: dict[str, np.ndarray] = {}
    if question_scores is not None and len(question_scores):
        finite = question_scores[np.isfinite(pd.to_numeric(question_scores["score"], errors="coerce"))]
        per_question = {str(t): g["score"].to_numpy(float) for t, g in finite.groupby("trial_id")}
    scalars = pd.to_numeric(column(rows, score_column), errors="coerce")
    groups = [
        per_question.get(trial_id, float(value) if np.isfinite(value) else None)
        for trial_id, value in zip(rows["trial_id"].astype(str), scalars, strict=True)
    ]
    return pd.Series(groups, index=rows.index, dtype=object)


def _gap(
    df: pd.DataFrame,
    a: tuple[str, str],
    b: tuple[str, str],
    score_column: str,
    question_scores: pd.DataFrame | None,
) -> tuple[BootstrapResult | None, str]:
    """Bootstrap the score gap of ``a`` over ``b`` (``(loss, form)`` each) at the beta_kl values both were scored at.

    Matching beta_kl keeps a grid that covers different betas for the two losses from manufacturing a gap.
    """
    picked = []
    for loss, form in (a, b):
        rows = with_verdict(df, loss, form)
        groups = score_groups(rows, score_column, question_scores)
        picked.append(rows.assign(group=groups)[groups.notna()])
    totals = [len(p) for p in picked]
    shared = set(picked[0]["beta_kl"]) & set(picked[1]["beta_kl"])
    picked = [p[p["beta_kl"].isin(shared)] for p in picked]
    counts = [len(p) for p in picked]
    note = (
        f"{counts[0]} vs {counts[1]} scored trials at the {len(shared)} shared beta_kl value(s) {sorted(shared)} "
        f"({a[0]} {totals[0]}, {b[0]} {totals[1]} scored in all)"
    )
    if min(counts) < MIN_SCORED:
        return None, note
    return bootstrap_mean_diff(list(picked[0]["group"]), list(picked[1]["group"])), note


def _gap_claim(
    claim_id: str,
    statement: str,
    result: BootstrapResult | None,
    note: str,
    target: tuple[float, float],
    unit: str,
    tests: str,
) -> Claim:
    """Verdict on a bootstrapped gap against the proposal's ``target`` range.

    Supported if the CI lies above 0 and overlaps ``target``; refuted if it lies entirely below ``target[0]`` or
    entirely above ``target[1]``; else not enough data (also with fewer than :data:`MIN_SCORED` trials a side).
    """
    lo_t, hi_t = target
    rule = (
        f"Rule: supported if the 95 % CI is above 0 and overlaps [{lo_t:g}, {hi_t:g}]; refuted if it lies entirely "
        f"below {lo_t:g} or above {hi_t:g}; needs >= {MIN_SCORED} scored trials per loss."
    )
    if result is None:
        return Claim(claim_id, statement, "too few scored trials", NO_DATA, f"Only {note}. {rule}", tests)
    low, high = result.low, result.high
    if high < lo_t:
        verdict, why = REFUTED, f"the CI lies entirely below {lo_t:g}"
    elif low > hi_t:
        verdict, why = REFUTED, f"the CI lies entirely above {hi_t:g} (a larger gap than proposed)"
    elif low > 0:
        verdict, why = SUPPORTED, f"the CI is above 0 and overlaps [{lo_t:g}, {hi_t:g}]"
    else:
        verdict, why = NO_DATA, "the CI reaches the target range but also 0"
    measured = f"{result.estimate:+.2f}{unit} (95 % CI {low:+.2f} to {high:+.2f})"
    detail = (
        f"Gap {measured} from {note}; {result.n_values_a} vs {result.n_values_b} scores, "
        f"{result.n_boot} bootstrap replicates over trials and questions. {why[0].upper()}{why[1:]}. {rule}"
    )
    return Claim(claim_id, statement, measured, verdict, detail, tests)


def claim_c(df: pd.DataFrame, form: str, question_scores: pd.DataFrame | None = None, *, baseline: str = "discopop"):
    """(c) dLRML scores +0.5 to +1.0 MT-Bench over ``baseline`` (DiscoPOP in ``form``; DPO is always stable)."""
    base_form = "stable" if baseline == "dpo" else form
    result, note = _gap(df, ("dlrml", form), (baseline, base_form), MTBenchColumn.SCORE, question_scores)
    suffix = "" if baseline == "discopop" else f"-{baseline}"
    statement = f"dLRML ({form}) scores +0.5 to +1.0 MT-Bench over {baseline} ({base_form})."
    tests = f"MT-Bench score gap over scored verdict trials, >= {MIN_SCORED} per loss at shared beta_kl"
    return _gap_claim(f"c{suffix}[{form}]", statement, result, note, (0.5, 1.0), "", tests)


ALPACA_TARGETS = {"discopop": (2.0, 3.0), "dpo": (6.0, 8.0)}
"""The proposal's AlpacaEval 2.0 LC win-rate gains of dLRML (percentage points) over each baseline."""


def claim_d(df: pd.DataFrame, form: str, *, baseline: str = "discopop") -> Claim:
    """(d) dLRML gains +2 to +3 points of AlpacaEval 2.0 LC win rate (in %) over DiscoPOP, +6 to +8 over DPO."""
    base_form = "stable" if baseline == "dpo" else form
    low, high = ALPACA_TARGETS[baseline]
    claim_id = f"d{'' if baseline == 'discopop' else '-' + baseline}[{form}]"
    statement = (
        f"dLRML ({form}) gains +{low:g} to +{high:g} % AlpacaEval 2.0 LC win rate over {baseline} ({base_form})."
    )
    lc = AlpacaColumn.LC
    tests = f"AlpacaEval LC win-rate gap over scored verdict trials, >= {MIN_SCORED} per loss at shared beta_kl"
    if lc not in df or not np.isfinite(pd.to_numeric(df[lc], errors="coerce")).any():
        return Claim(claim_id, statement, "no AlpacaEval scores", NO_DATA, f"The sweep has no {lc} scores.", tests)
    result, note = _gap(df, ("dlrml", form), (baseline, base_form), lc, None)
    return _gap_claim(claim_id, statement, result, note, (low, high), " pts", tests)


def grad_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per ``beta_mix``: trials, max of ``grad_norm_max``, median and max of ``grad_norm_p95``, unsafe divergences."""
    rows = rows.assign(
        gmax=pd.to_numeric(column(rows, "grad_norm_max"), errors="coerce"),
        p95=pd.to_numeric(column(rows, "grad_norm_p95"), errors="coerce"),
        unsafe=reason_has(rows, *UNSAFE_REASONS) & (rows["status"] == "diverged"),
    )
    return rows.groupby("beta_mix").agg(
        n=("trial_id", "size"),
        grad_norm_max=("gmax", "max"),
        p95_median=("p95", "median"),
        p95_max=("p95", "max"),
        unsafe=("unsafe", "sum"),
    )


def claim_e(df: pd.DataFrame, form: str, *, safe_factor: float = 10.0) -> Claim:
    """(e) dLRML's gradient norms stay in a safe range when beta_mix is high.

    Supported if, at the highest beta_mix, the largest per-trial p95 gradient norm is at most ``safe_factor`` times
    the median p95 at the lowest beta_mix *and* no trial there diverged with an exploding or non-finite gradient;
    refuted if either fails; not enough data with fewer than two beta_mix values of at least ``MIN_SEEDS`` verdict
    trials each or no p95 at either end.
    """
    table = grad_table(with_verdict(df, "dlrml", form))
    table = table[table["n"] >= MIN_SEEDS]
    statement = f"dLRML ({form}) gradient norms stay in a safe range at high beta_mix."
    tests = "p95 and max pre-clip gradient norm per beta_mix, and divergences with an exploding or non-finite gradient"
    if len(table) < 2 or not np.isfinite(table["p95_median"].iloc[0]) or not np.isfinite(table["p95_max"].iloc[-1]):
        why = f"Needs gradient norms (grad_norm_p95) at two or more beta_mix values of >= {MIN_SEEDS} verdict trials."
        return Claim(f"e[{form}]", statement, "fewer than 2 beta_mix values with gradient norms", NO_DATA, why, tests)
    low_mix, high_mix = table.index[0], table.index[-1]
    limit = safe_factor * table["p95_median"].iloc[0]
    top, unsafe = table["p95_max"].iloc[-1], int(table["unsafe"].iloc[-1])
    verdict = SUPPORTED if top <= limit and unsafe == 0 else REFUTED
    measured = f"p95 at beta_mix={high_mix:g}: {top:.3g} (limit {limit:.3g}); {unsafe} gradient divergences"
    lines = [
        "| beta_mix | trials | max grad norm | median p95 | max p95 | grad divergences |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.Index:g} | {r.n} | {r.grad_norm_max:.3g} | {r.p95_median:.3g} | {r.p95_max:.3g} | {int(r.unsafe)} |"
        for r in table.itertuples()
    ]
    reason = (
        f"Rule: at the highest beta_mix ({high_mix:g}) the largest p95 gradient norm must be at most {safe_factor:g} "
        f"x the median p95 at the lowest beta_mix ({low_mix:g}), and no trial there may diverge with "
        f"{' or '.join(UNSAFE_REASONS)}.\n\n" + "\n".join(lines)
    )
    return Claim(f"e[{form}]", statement, measured, verdict, reason, tests)
