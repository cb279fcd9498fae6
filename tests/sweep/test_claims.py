"""The claim rules on constructed trial frames: each outcome reachable, pruned/errored and inferred rows never count."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweep.claims.report import Claim, evaluate_claims, render_claims, write_claims
from sweep.claims.rules import claim_a, claim_b, claim_b_dlrml, claim_f, claim_g, measured_trials
from sweep.claims.scores import claim_c, claim_d, claim_e, score_groups

BOX_KL = (0.01, 0.05, 0.1, 0.25, 0.5)
BOX_MIX = (0.05, 0.1, 0.2, 0.3, 0.5)


def trial(loss: str, beta_kl: float, beta_mix: float = math.nan, seed: int = 0, **fields) -> dict:
    """One contract row; ``fields`` override the clean, stable defaults."""
    row = {
        "trial_id": f"{loss}-{fields.get('form', 'stable')}-{beta_kl:g}-{beta_mix:g}-{seed}",
        "loss": loss,
        "form": "stable",
        "beta_kl": beta_kl,
        "beta_mix": beta_mix,
        "seed": seed,
        "status": "stable",
        "reason": math.nan,
        "divergence_kind": math.nan,
        "steps": 100,
        "nan_inf_steps": 0,
        "grad_norm_max": 2.0,
        "grad_norm_p95": 1.0,
        "eval_accuracy": 0.6,
    }
    row.update(fields)
    return row


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def dlrml_box(seeds: int, **fields) -> list[dict]:
    return [trial("dlrml", kl, mix, s, **fields) for kl in BOX_KL for mix in BOX_MIX for s in range(seeds)]


def measured(rows: list[dict]) -> pd.DataFrame:
    return measured_trials(frame(rows))[0]


# (a) ---------------------------------------------------------------------------------------------------------------


def test_a_supported_when_many_clean_runs_bound_the_rate() -> None:
    claim = claim_a(measured(dlrml_box(seeds=3)), "stable")  # 75 clean: upper bound 3.84/78.84 = 4.9 % <= 10 %
    assert claim.verdict == "supported"
    assert "0/75" in claim.measured and "4.9 %" in claim.reason
    assert claim.tests.startswith("NaN runs")


def test_a_uses_no_cell_with_fewer_than_three_seeds() -> None:
    """50 clean runs in 25 cells of 2 seeds decided (a) before; a cell of two trials decides nothing now."""
    claim = claim_a(measured(dlrml_box(seeds=2)), "stable")
    assert claim.verdict == "not enough data" and "0/0" in claim.measured
    assert "fewer than 3 verdict trials" in claim.reason


def test_a_refuted_by_a_single_nan_run_or_non_finite_divergence() -> None:
    rows = dlrml_box(seeds=3)
    rows[3]["nan_inf_steps"] = 2
    assert claim_a(measured(rows), "stable").verdict == "refuted"
    rows = dlrml_box(seeds=3)
    rows[7].update(status="diverged", reason="non_finite_loss (numerical)", nan_inf_steps=0)
    assert claim_a(measured(rows), "stable").verdict == "refuted"


def test_a_not_enough_data_with_few_clean_runs_and_ignores_outside_box() -> None:
    rows = [trial("dlrml", kl, 0.1, s) for kl in BOX_KL for s in range(3)]  # 0/15: upper bound 20 %
    rows += [trial("dlrml", 1.0, 0.1, s, nan_inf_steps=5) for s in range(3)]  # outside the box: not counted
    claim = claim_a(measured(rows), "stable")
    assert claim.verdict == "not enough data"
    assert "0/15" in claim.measured


def test_a_pruned_and_errored_never_count() -> None:
    rows = [trial("dlrml", kl, 0.1, s) for kl in BOX_KL for s in range(3)]
    rows += [
        trial("dlrml", kl, mix, 9 + i, status=status, nan_inf_steps=3)
        for kl in BOX_KL
        for mix in BOX_MIX
        for i, status in enumerate(("pruned", "errored", "unsettled", "interrupted"))
    ]
    claim = claim_a(measured(rows), "stable")
    assert claim.verdict == "not enough data"
    assert "0/15" in claim.measured


def test_a_is_per_form() -> None:
    rows = dlrml_box(seeds=3) + dlrml_box(seeds=3, form="literal", status="diverged", nan_inf_steps=4)
    df = measured(rows)
    assert claim_a(df, "stable").verdict == "supported"
    assert claim_a(df, "literal").verdict == "refuted"


def test_inferred_rows_are_excluded_and_counted() -> None:
    rows = dlrml_box(seeds=3, inferred=False)
    rows.append(trial("dlrml", 0.1, 0.1, 5, nan_inf_steps=9, inferred=True))
    claims = {c.id: c for c in evaluate_claims(frame(rows))}
    assert claims["a[stable]"].verdict == "supported"
    assert "1 inferred row(s) excluded" in claims["a[stable]"].reason


# (b) ---------------------------------------------------------------------------------------------------------------


def discopop(betas: tuple[float, ...], statuses: list[str], form: str = "stable") -> list[dict]:
    return [trial("discopop", b, seed=s, status=st, form=form) for b in betas for s, st in enumerate(statuses)]


def test_b_supported_refuted_not_enough_data() -> None:
    failing = discopop((0.25, 0.5), ["diverged"] * 6 + ["collapsed"] * 2 + ["stable"] * 2)  # 16/20, CI 58-92 %
    assert claim_b(measured(failing), "stable").verdict == "supported"
    clean = discopop((0.25, 0.5), ["stable"] * 10)  # 0/20, CI 0-16 %
    assert claim_b(measured(clean), "stable").verdict == "refuted"
    few = discopop((0.25,), ["diverged", "stable", "stalled", "diverged", "stable"])  # 2/5, CI 12-77 %
    assert claim_b(measured(few), "stable").verdict == "not enough data"


def test_b_counts_only_high_beta_and_verdict_trials() -> None:
    rows = discopop((0.05,), ["diverged"] * 10)  # below 0.25: not counted
    rows += discopop((0.25,), ["stable"] * 3)
    rows += [trial("discopop", 0.5, seed=20 + i, status=st) for i, st in enumerate(["pruned", "errored"] * 10)]
    claim = claim_b(measured(rows), "stable")
    assert claim.verdict == "not enough data"
    assert "0/3" in claim.measured


def test_b_prime_dlrml_fails_less() -> None:
    rows = discopop((0.25, 0.5), ["diverged"] * 8 + ["stable"] * 2)
    rows += [trial("dlrml", kl, mix, s) for kl in (0.25, 0.5) for mix in (0.1, 0.3) for s in range(5)]
    assert claim_b_dlrml(measured(rows), "stable").verdict == "supported"


# (c), (d) ---------------------------------------------------------------------------------------------------------


def scored(loss: str, mean: float, seeds: int, spread: float = 0.05, beta_kl: float = 0.1) -> list[dict]:
    mix = 0.2 if loss == "dlrml" else math.nan
    offsets = np.linspace(-spread, spread, seeds) if seeds > 1 else [0.0]
    return [trial(loss, beta_kl, mix, s, mt_bench_score=mean + o) for s, o in enumerate(offsets)]


def test_c_supported_when_gap_ci_is_positive_and_overlaps_target() -> None:
    claim = claim_c(measured(scored("dlrml", 7.2, 6) + scored("discopop", 6.5, 6)), "stable")
    assert claim.verdict == "supported"
    assert claim.measured.startswith("+0.70")


def test_c_refuted_below_and_above_target() -> None:
    below = claim_c(measured(scored("dlrml", 6.6, 6) + scored("discopop", 6.5, 6)), "stable")
    assert below.verdict == "refuted" and "below 0.5" in below.reason
    above = claim_c(measured(scored("dlrml", 8.5, 6) + scored("discopop", 6.5, 6)), "stable")
    assert above.verdict == "refuted" and "above 1" in above.reason


def test_c_not_enough_data_with_one_scored_trial_or_a_ci_reaching_zero() -> None:
    one = claim_c(measured(scored("dlrml", 7.2, 1) + scored("discopop", 6.5, 6)), "stable")
    assert one.verdict == "not enough data"
    noisy = claim_c(measured(scored("dlrml", 7.0, 3, spread=2.0) + scored("discopop", 6.5, 3, spread=2.0)), "stable")
    assert noisy.verdict == "not enough data"


def test_c_matches_beta_kl_and_skips_pruned_scores() -> None:
    rows = scored("dlrml", 7.2, 6) + scored("discopop", 6.5, 6, beta_kl=0.5)  # no shared beta_kl
    assert claim_c(measured(rows), "stable").verdict == "not enough data"
    rows = scored("dlrml", 7.2, 1) + scored("discopop", 6.5, 6)
    rows += [trial("dlrml", 0.1, 0.2, 10 + s, status="pruned", mt_bench_score=7.2) for s in range(5)]
    assert claim_c(measured(rows), "stable").verdict == "not enough data"


def test_c_against_dpo_and_question_scores_feed_the_bootstrap() -> None:
    rows = scored("dlrml", 7.2, 4) + scored("dpo", 6.5, 4)
    df = measured(rows)
    questions = pd.DataFrame(
        [{"trial_id": r["trial_id"], "question_id": q, "score": r["mt_bench_score"]} for r in rows for q in range(10)]
    )
    groups = score_groups(df[df["loss"] == "dlrml"], "mt_bench_score", questions)
    assert len(groups) == 4 and all(isinstance(g, np.ndarray) and g.size == 10 for g in groups)
    claim = claim_c(df, "stable", questions, baseline="dpo")
    assert claim.id == "c-dpo[stable]" and claim.verdict == "supported"
    assert "40 vs 40 scores" in claim.reason


def test_d_not_enough_data_without_alpaca_and_supported_with_it() -> None:
    assert claim_d(measured(scored("dlrml", 7.2, 4)), "stable").verdict == "not enough data"
    rows = scored("dlrml", 7.2, 4) + scored("discopop", 6.5, 4)
    for r in rows:
        r["alpaca_lc"] = (22.5 if r["loss"] == "dlrml" else 20.0) + r["seed"] * 0.01
    assert claim_d(measured(rows), "stable").verdict == "supported"


# (e), (f), (g) ----------------------------------------------------------------------------------------------------


def test_e_supported_and_refuted_by_growth_or_explosion() -> None:
    rows = [trial("dlrml", 0.1, mix, s, grad_norm_p95=1.0 + mix) for mix in (0.05, 0.5) for s in range(3)]
    claim = claim_e(measured(rows), "stable")
    assert claim.verdict == "supported" and "| 0.5 | 3 |" in claim.reason
    rows.append(trial("dlrml", 0.1, 0.5, 9, status="diverged", reason="grad_norm_explosion - grad_norm=1e4"))
    assert claim_e(measured(rows), "stable").verdict == "refuted"
    rows = [
        trial("dlrml", 0.1, mix, s, grad_norm_p95=50.0 if mix == 0.5 else 1.0) for mix in (0.05, 0.5) for s in range(3)
    ]
    assert claim_e(measured(rows), "stable").verdict == "refuted"
    assert claim_e(measured(rows[:5]), "stable").verdict == "not enough data", (
        "two trials at beta_mix 0.5 decide nothing"
    )


def test_f_stuck_at_the_papers_small_beta_unstable_at_its_large_beta() -> None:
    """Stuck is stalled or reversed (the paper's local minima); unstable is collapsed or diverged."""
    stuck = ["stalled", "reversed", "reversed", "stalled", "reversed"]
    rows = discopop((0.01,), stuck) + discopop((0.1,), ["stable"] * 5) + discopop((2.5,), ["collapsed", "diverged"] * 3)
    claim = claim_f(measured(rows), "stable")
    assert claim.verdict == "supported" and "stuck at 0.01: 5/5" in claim.measured
    assert claim.tests.startswith("stuck = stalled + reversed")
    rows = discopop((0.01,), ["stable"] * 40) + discopop((2.5,), ["collapsed"] * 5)  # stuck 0/40: CI 0-8.8 %
    assert claim_f(measured(rows), "stable").verdict == "refuted"
    assert claim_f(measured(discopop((2.5,), ["collapsed"] * 5)), "stable").verdict == "not enough data"


def test_f_is_not_decided_on_a_grid_short_of_the_papers_betas() -> None:
    rows = discopop((0.05,), ["reversed"] * 5) + discopop((1.0,), ["collapsed"] * 5)
    claim = claim_f(measured(rows), "stable")
    assert claim.verdict == "not enough data" and "not the paper's <= 0.01 and >= 2.5" in claim.reason


def test_g_usable_where_discopop_is_not_by_the_wilson_rule() -> None:
    """Five stable seeds make a cell usable (failed 0/5: upper bound 43 %), five reversed ones unusable (lower
    bound 57 %); two seeds decide nothing."""
    rows = discopop((0.05, 0.1), ["stable"] * 5) + discopop((0.25, 0.5), ["reversed"] * 5)
    rows += [trial("dlrml", kl, 0.1, s) for kl in (0.05, 0.1, 0.25, 0.5) for s in range(5)]
    claim = claim_g(measured(rows), "stable")
    assert claim.verdict == "supported" and "at beta_kl [0.25, 0.5]" in claim.reason
    assert "dLRML [0.05, 0.1, 0.25, 0.5], DiscoPOP [0.05, 0.1]" in claim.measured
    ceiling = discopop((0.05, 0.1), ["stable"] * 5) + [
        trial("dlrml", kl, 0.1, s) for kl in (0.05, 0.1) for s in range(5)
    ]
    assert claim_g(measured(ceiling), "stable").verdict == "not enough data"
    worse = discopop((0.05, 0.1, 0.25), ["stable"] * 5) + [
        trial("dlrml", kl, 0.1, s, status="stalled") for kl in (0.05, 0.1, 0.25) for s in range(5)
    ]
    assert claim_g(measured(worse), "stable").verdict == "refuted"


def test_g_is_not_decided_from_single_trials() -> None:
    """Issue 23, defect 4: one trial per cell called claim g supported (the quick start's map)."""
    rows = [trial("discopop", kl, status="stalled") for kl in (0.05, 1.0)] + [
        trial("dlrml", 0.05, 0.2, status="collapsed"),
        trial("dlrml", 1.0, 0.2),
    ]
    claim = claim_g(measured(rows), "stable")
    assert claim.verdict == "not enough data" and "too few beta_kl values are decided" in claim.reason


# evaluate / render / write ----------------------------------------------------------------------------------------


def test_measured_trials_normalises_discopop_beta_mix_and_completed_status() -> None:
    df, n_inferred = measured_trials(frame([trial("discopop", 0.3, status="completed")]))
    assert df["beta_mix"].iloc[0] == 0.3 and df["status"].iloc[0] == "stable" and n_inferred == 0


def test_evaluate_claims_covers_every_claim_for_each_form_run() -> None:
    rows = dlrml_box(seeds=1) + dlrml_box(seeds=1, form="literal")
    ids = [c.id for c in evaluate_claims(frame(rows))]
    for form in ("stable", "literal"):
        for letter in ("a", "b", "b'", "c", "c-dpo", "d", "e", "f", "g"):
            assert f"{letter}[{form}]" in ids


def test_render_says_too_small_when_nothing_is_decided() -> None:
    rows = [trial("dlrml", 0.1, 0.1), trial("discopop", 0.1)]
    claims = evaluate_claims(frame(rows))
    assert all(c.verdict == "not enough data" for c in claims)
    text = render_claims(claims, sweep_name="smoke", n_trials=2)
    assert "too small to decide anything" in text
    assert "| claim | tests | measured | verdict |" in text and "## a[stable]" in text


def test_render_reports_counts_when_something_is_decided() -> None:
    claims = [Claim("x", "s", "1/2", "supported", "r"), Claim("y", "s|t", "m", "not enough data", "r")]
    text = render_claims(claims, sweep_name="big", n_trials=100)
    assert "too small" not in text and "1 claim(s) supported" in text and "s\\|t" in text


def test_write_claims_writes_the_file(tmp_path: Path) -> None:
    rows = dlrml_box(seeds=2) + discopop((0.25, 0.5), ["diverged"] * 8 + ["stable"] * 2)
    path = write_claims(frame(rows), tmp_path / "map", sweep_name="demo", question_scores=None)
    assert path == tmp_path / "map" / "claims.md"
    text = path.read_text()
    assert text.startswith("# Claims: demo") and "| supported |" in text


@pytest.mark.parametrize("missing", ["mt_bench_score", "alpaca_lc", "divergence_kind", "grad_norm_p95"])
def test_optional_columns_may_be_absent(missing: str) -> None:
    df = frame(dlrml_box(seeds=1))
    claims = evaluate_claims(df.drop(columns=[missing], errors="ignore"))
    assert len(claims) == 10


def test_d_over_dpo_targets_six_to_eight_points() -> None:
    def rows(gap: float) -> list[dict]:
        out = scored("dlrml", 7.2, 4) + scored("dpo", 6.5, 4)
        for r in out:
            r["alpaca_lc"] = (20.0 + gap if r["loss"] == "dlrml" else 20.0) + r["seed"] * 0.01
        return out

    supported = claim_d(measured(rows(7.0)), "stable", baseline="dpo")
    assert supported.id == "d-dpo[stable]" and supported.verdict == "supported"
    assert "+6 to +8" in supported.statement
    assert claim_d(measured(rows(2.5)), "stable", baseline="dpo").verdict == "refuted"
