"""A finished sweep's answer to the research proposal: each claim supported, refuted or not enough data.

The proposal for dLRML (decoupled DiscoPOP) expects:

* (a) no NaN runs for dLRML across beta_kl in [0.01, 0.5] x beta_mix in [0.05, 0.5];
* (b) DiscoPOP failing (not usable) in > 40 % of runs at beta >= 0.25, and (b') dLRML failing less there;
* (c) +0.5 to +1.0 MT-Bench for dLRML over DiscoPOP, and over DPO;
* (d) +2 to +3 % AlpacaEval 2.0 LC win rate over DiscoPOP, and +6 to +8 % over DPO;
* (e) safe gradient norms at high beta_mix;
* (f) DiscoPOP stuck at very small beta and unstable at very large beta, as the DiscoPOP paper (Lu et al., 2024) saw;
* (g) decoupling widening the range of usable betas.

The rules live in :mod:`sweep.claims.rules` (rates) and :mod:`sweep.claims.scores` (scores, gradients); each is
documented on its function and restated in the claim's reason. Claims that depend on the numerical form are
checked per form (``stable`` log-space, ``literal`` as published), for every form the sweep ran dLRML or DiscoPOP in.
Rows flagged ``inferred`` are excluded from every measurement and the count excluded is reported.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sweep.claims.rules import (
    FORMS,
    MIN_SEEDS,
    NO_DATA,
    Claim,
    claim_a,
    claim_b,
    claim_b_dlrml,
    claim_f,
    claim_g,
    measured_trials,
)
from sweep.claims.scores import claim_c, claim_d, claim_e
from trainers.protocol import Failure

__all__ = ["Claim", "evaluate_claims", "render_claims", "write_claims"]

CLAIMS_FILE = "claims.md"


def _forms(df: pd.DataFrame) -> list[str]:
    """The forms dLRML or DiscoPOP ran in (``stable`` if neither ran, so every claim still reports)."""
    ran = set(df.loc[df["loss"].isin(["dlrml", "discopop"]), "form"])
    return [form for form in FORMS if form in ran] or ["stable"]


def evaluate_claims(trials: pd.DataFrame, question_scores: pd.DataFrame | None = None) -> list[Claim]:
    """Check every claim of the proposal against a sweep's trials.

    Args:
        trials: One row per trial (the sweep's contract: ``trial_id, loss, form, beta_kl, beta_mix, seed, status,
            ...``; ``mt_bench_score``, ``alpaca_lc`` and ``inferred`` are optional).
        question_scores: Optional per-question MT-Bench scores (``trial_id, question_id, score``); when given, the
            MT-Bench bootstrap resamples questions within each trial too.

    Returns:
        The claims in the proposal's order, each form's after the other.
    """
    df, n_inferred = measured_trials(trials)
    claims: list[Claim] = []
    for form in _forms(df):
        claims += [
            claim_a(df, form),
            claim_b(df, form),
            claim_b_dlrml(df, form),
            claim_c(df, form, question_scores),
            claim_c(df, form, question_scores, baseline="dpo"),
            claim_d(df, form),
            claim_d(df, form, baseline="dpo"),
            claim_e(df, form),
            claim_f(df, form),
            claim_g(df, form),
        ]
    if n_inferred:
        note = f" ({n_inferred} inferred row(s) excluded: only measured trials count.)"
        claims = [Claim(c.id, c.statement, c.measured, c.verdict, c.reason + note) for c in claims]
    return claims


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_claims(claims: list[Claim], *, sweep_name: str, n_trials: int) -> str:
    """The claims as markdown: a header, a claim | measured | verdict table, then one paragraph per claim.

    The header says plainly when the sweep is too small to decide anything (every claim is ``not enough data``).

    Args:
        claims: From :func:`evaluate_claims`.
        sweep_name: The sweep's name, for the title.
        n_trials: Number of trial rows the claims were evaluated on.
    """
    counts = {v: sum(c.verdict == v for c in claims) for v in ("supported", "refuted", NO_DATA)}
    lines = [f"# Claims: {sweep_name}", ""]
    if not claims or counts[NO_DATA] == len(claims):
        lines += [
            f"**This sweep is too small to decide anything.** With {n_trials} trial(s), every claim below is "
            "'not enough data': the numbers are reported, but none of them supports or refutes the proposal.",
            "",
        ]
    else:
        lines += [
            f"{n_trials} trial(s): {counts['supported']} claim(s) supported, {counts['refuted']} refuted, "
            f"{counts[NO_DATA]} with not enough data. Unsettled, pruned, interrupted and errored trials carry no "
            f"verdict and are not counted; no claim uses a cell of fewer than {MIN_SEEDS} verdict trials; failure is "
            f"{Failure.FAILED.meaning} ({Failure.UNSTABLE.meaning}); intervals are 95 % (Wilson for rates, bootstrap "
            "over trials and questions for scores).",
            "",
        ]
    lines += ["| claim | tests | measured | verdict |", "|---|---|---|---|"]
    lines += [
        f"| {c.id}: {_cell(c.statement)} | {_cell(c.tests)} | {_cell(c.measured)} | {c.verdict} |" for c in claims
    ]
    for c in claims:
        lines += [
            "",
            f"## {c.id}: {c.statement}",
            "",
            f"**{c.verdict}**. Tests: {c.tests}. Measured: {c.measured}. {c.reason}",
        ]
    return "\n".join(lines) + "\n"


def write_claims(
    trials: pd.DataFrame,
    out_dir: str | Path,
    *,
    sweep_name: str = "sweep",
    question_scores: pd.DataFrame | None = None,
) -> Path:
    """Evaluate the claims and write them to ``out_dir/claims.md``.

    Args:
        trials: One row per trial (see :func:`evaluate_claims`).
        out_dir: Directory to write into (created if missing).
        sweep_name: The sweep's name, for the title.
        question_scores: Optional per-question MT-Bench scores.

    Returns:
        The path of the written file.
    """
    claims = evaluate_claims(trials, question_scores)
    path = Path(out_dir) / CLAIMS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_claims(claims, sweep_name=sweep_name, n_trials=len(trials)), encoding="utf-8")
    return path
