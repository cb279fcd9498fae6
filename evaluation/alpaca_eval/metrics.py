"""AlpacaEval 2.0 metrics: win rate with its standard error, and the length-controlled (LC) win rate.

Preferences follow AlpacaEval: ``p`` in [1, 2] per instruction, 1 when the baseline (``output_1``) is preferred, 2
when the evaluated model (``output_2``) is, 1.5 a tie; weighted judges give any value in between. A NaN preference
(no usable judgment) is left out and counted in ``n_invalid``.

* ``win_rate = 100 * mean(p - 1)`` and ``standard_error = 100 * std(p - 1, ddof=1) / sqrt(n)``, as
  ``alpaca_eval.metrics.get_winrate`` (its ``AbsoluteScoringRule``) computes them; ``discrete_win_rate`` counts a
  win as 1, a tie as 1/2.
* LC win rate (Dubois et al., 2024): a logistic GLM of ``y = p - 1`` (soft labels) on the model's quality, the
  length difference ``tanh((len(output_1) - len(output_2)) / std)`` (characters) and, in the full
  ``length_controlled_v1``, a per-instruction difficulty; the LC win rate is the GLM's predicted win probability with
  the length term set to 0, averaged over instructions, times 100.

``alpaca_eval``'s own ``get_length_controlled_winrate`` fetches two tables from the hub at call time
(``df_gamed.csv``, used to regularise towards the leaderboard's baseline, and ``instruction_difficulty.csv``, indexed
by the position in the 805 instructions) and needs ``patsy``. It is used when the package is installed (extra
``alpaca``), the instructions are the real 805 and the call succeeds. Otherwise (always offline, and on our bundled
instructions, which have no difficulty) the fallback here fits ``alpaca_eval``'s ``length_controlled_minimal``
formula, ``preference ~ tanh(std_delta_len) + intercept``, by Newton's method on the soft-label log loss with an L2
penalty ``||w||^2 / 2`` against ``C = 100`` times the loss (``alpaca_eval`` uses ``C`` chosen by 5-fold CV with an L1
penalty); ``lc_method`` in the output says which was used and why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

FALLBACK_C = 100.0
"""Inverse strength of the fallback GLM's L2 penalty (``alpaca_eval``'s default ``C``)."""
LC_PACKAGE = "alpaca_eval.get_length_controlled_winrate (length_controlled_v1)"
LC_FALLBACK = (
    "fallback GLM length_controlled_minimal (tanh(std_delta_len) + intercept, L2 C=100), no instruction-difficulty "
    "term: {why}"
)


def win_rate(preferences: Sequence[float]) -> dict[str, float]:
    """Win rate, its standard error and counts over the valid preferences (NaN left out).

    Returns:
        ``win_rate``, ``standard_error`` (NaN with fewer than 2 valid), ``discrete_win_rate``, ``n_wins``,
        ``n_draws``, ``n_wins_base``, ``n_total`` (valid), ``n_invalid``; ``win_rate`` is NaN without a valid one.
    """
    p = np.asarray(preferences, dtype=float)
    valid = p[~np.isnan(p)]
    y = valid - 1.0
    n = len(y)
    wins, draws = int((valid > 1.5).sum()), int((valid == 1.5).sum())
    return {
        "win_rate": float(100 * y.mean()) if n else math.nan,
        "standard_error": float(100 * y.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "discrete_win_rate": float(100 * (wins + 0.5 * draws) / n) if n else math.nan,
        "n_wins": float(wins),
        "n_draws": float(draws),
        "n_wins_base": float(n - wins - draws),
        "n_total": float(n),
        "n_invalid": float(len(p) - n),
    }


def length_features(baseline_lengths: Sequence[int], model_lengths: Sequence[int]) -> np.ndarray:
    """``tanh(std_delta_len)``: length difference baseline minus model, divided by its std (0 where std is 0)."""
    delta = np.asarray(baseline_lengths, dtype=float) - np.asarray(model_lengths, dtype=float)
    std = delta.std(ddof=1) if len(delta) > 1 else 0.0
    return np.tanh(delta / std) if std > 0 else np.zeros_like(delta)


def fit_soft_logistic(x: np.ndarray, y: np.ndarray, c: float = FALLBACK_C, iterations: int = 100) -> np.ndarray:
    """Weights ``w`` minimising ``c * sum(log loss(sigmoid(x @ w), y)) + ||w||^2 / 2`` with soft labels ``y``.

    Newton's method; the penalty keeps ``w`` finite when the labels are separable (e.g. every preference 2).

    Args:
        x: Design matrix ``(n, k)``.
        y: Labels in [0, 1], shape ``(n,)``.
        c: Inverse penalty strength.
        iterations: Newton steps at most (the loss is strictly convex; it converges in a handful).
    """
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        prob = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = c * x.T @ (prob - y) + w
        hess = c * (x.T * (prob * (1 - prob))) @ x + np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def fallback_lc_win_rate(preferences: Sequence[float], baseline_lengths: Sequence[int], model_lengths: Sequence[int]):
    """The fallback LC win rate (see the module docstring) and the fitted ``(intercept, length)`` weights."""
    p = np.asarray(preferences, dtype=float)
    keep = ~np.isnan(p)
    if not keep.any():
        return math.nan, (math.nan, math.nan)
    feature = length_features(np.asarray(baseline_lengths)[keep], np.asarray(model_lengths)[keep])
    x = np.column_stack([np.ones(len(feature)), feature])
    intercept, length = fit_soft_logistic(x, p[keep] - 1.0)
    return float(100 / (1 + math.exp(-intercept))), (float(intercept), float(length))


def _package_lc(annotations: list[dict[str, Any]]) -> tuple[float, str] | str:
    """``alpaca_eval``'s LC win rate, or the reason it cannot be had."""
    try:
        import pandas as pd
        from alpaca_eval.metrics import get_length_controlled_winrate
    except ImportError as err:
        return f"alpaca_eval's metric code is not importable ({err}; pip install 'dlrml-sweep[alpaca]')"
    try:
        frame = pd.DataFrame(annotations)
        frame["index"] = [row["hub_index"] for row in annotations]
        metrics = get_length_controlled_winrate(frame, save_weights_dir=None, is_add_glm_preference_inplace=False)
        return float(metrics["length_controlled_winrate"]), LC_PACKAGE
    except Exception as err:  # noqa: BLE001 - hub tables unreachable offline, or a package change: fall back, say why
        return f"alpaca_eval's get_length_controlled_winrate failed ({type(err).__name__}: {str(err)[:200]})"


def alpaca_metrics(annotations: list[dict[str, Any]], *, real_instructions: bool) -> dict[str, Any]:
    """Every metric of one annotations list: :func:`win_rate`'s, ``length_controlled_winrate``, ``lc_method``.

    Args:
        annotations: AlpacaEval annotations (``output_1`` baseline, ``output_2`` model, ``preference``); with
            ``real_instructions``, each also carries ``hub_index``, its position in the 805 instructions.
        real_instructions: Whether the instructions are AlpacaEval's 805 (only then can ``alpaca_eval``'s
            difficulty table apply).
    """
    preferences = [float(a["preference"]) for a in annotations]
    metrics: dict[str, Any] = win_rate(preferences)
    metrics["avg_length"] = float(np.mean([len(a["output_2"]) for a in annotations]))
    package = _package_lc(annotations) if real_instructions else "the instructions are not AlpacaEval's 805"
    if isinstance(package, tuple):
        metrics["length_controlled_winrate"], metrics["lc_method"] = package
        return metrics
    lc, (intercept, length) = fallback_lc_win_rate(
        preferences, [len(a["output_1"]) for a in annotations], [len(a["output_2"]) for a in annotations]
    )
    metrics["length_controlled_winrate"] = lc
    metrics["lc_method"] = LC_FALLBACK.format(why=package)
    metrics["lc_weights"] = {"intercept": intercept, "tanh_std_delta_len": length}
    return metrics
