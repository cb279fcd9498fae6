"""Uncertainty for the sweep's claims: Wilson intervals for failure rates, a two-level bootstrap for score gaps.

Pure numpy, no pandas, so the intervals are unit-tested on hand-worked numbers. (Deliberately not called
``statistics.py``: that name would shadow the standard library when ``sweep/run.py`` runs as a script.)

* :func:`wilson_interval` -- the Wilson (1927) score interval for a binomial proportion. Unlike the Wald interval
  ``p +- z*sqrt(p(1-p)/n)`` it stays inside [0, 1] and does not collapse to a zero-width interval at ``k = 0`` or
  ``k = n``, which matters here: "0 NaN runs out of n" is exactly the case the sweep has to quantify (Brown, Cai &
  DasGupta, 2001, "Interval Estimation for a Binomial Proportion", recommend Wilson for small ``n``).
* :func:`bootstrap_mean_diff` -- a percentile bootstrap (Efron & Tibshirani, 1993, ch. 13) of a difference of
  means whose data are nested: seeds (groups), each with per-question scores. Both levels are resampled (Davison &
  Hinkley, 1997, sec. 3.8, "multi-stage sampling"), so the interval reflects seed-to-seed variation as well as the
  finite question set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Group = float | Sequence[float] | np.ndarray
"""One seed's data: its per-question scores, or a single (already averaged) score."""


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for ``k`` successes in ``n`` trials.

    With ``p = k/n``::

        centre    = (p + z^2 / (2n)) / (1 + z^2/n)
        halfwidth = z * sqrt(p(1-p)/n + z^2 / (4n^2)) / (1 + z^2/n)

    and the interval is ``[centre - halfwidth, centre + halfwidth]``, clipped to [0, 1] against rounding. At
    ``k = 0`` the lower bound is exactly 0 and the upper bound is ``z^2 / (n + z^2)`` (about ``3.84/(n+3.84)`` at
    95 %), the "how many clean runs before zero failures means something" bound claim (a) states.

    Args:
        k: Number of successes (here: failing or NaN runs), ``0 <= k <= n``.
        n: Number of trials.
        z: Standard-normal quantile of the two-sided level (1.96 for 95 %).

    Returns:
        ``(low, high)``; ``(nan, nan)`` when ``n == 0`` (no data, no interval).

    Raises:
        ValueError: If ``n < 0`` or ``k`` is outside ``[0, n]``.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At k = 0 (k = n) centre == half exactly in real arithmetic; clip the rounding residue.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)


@dataclass(frozen=True)
class BootstrapResult:
    """A bootstrap confidence interval of ``mean(a) - mean(b)``.

    Attributes:
        estimate: The point estimate on the original data (mean of group means, a minus b).
        low: Lower percentile bound.
        high: Upper percentile bound.
        n_groups_a: Number of groups (seeds / trials) on side a.
        n_groups_b: Number of groups on side b.
        n_values_a: Number of individual scores on side a (questions summed over groups).
        n_values_b: Number of individual scores on side b.
        n_boot: Number of bootstrap replicates.
        level: Confidence level of ``[low, high]``.
    """

    estimate: float
    low: float
    high: float
    n_groups_a: int
    n_groups_b: int
    n_values_a: int
    n_values_b: int
    n_boot: int
    level: float


def bootstrap_mean_diff(
    a_groups: Sequence[Group],
    b_groups: Sequence[Group],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapResult:
    """Percentile bootstrap CI of ``mean(a) - mean(b)``, resampling groups and, within each, their values.

    The statistic is the *mean of group means* (every seed weighs the same, however many questions it was scored
    on). One bootstrap replicate, done independently for side a and side b (the two losses' trials are independent
    samples):

    1. draw ``G`` groups with replacement from that side's ``G`` groups (seed-level resampling);
    2. for each drawn group with ``Q`` per-question scores, draw ``Q`` scores with replacement from that group
       (question-level resampling) and take their mean -- a scalar group has nothing to resample at this level;
    3. average the ``G`` resampled group means.

    The replicate difference is side a's average minus side b's. The interval is the ``(1-level)/2`` and
    ``(1+level)/2`` quantiles of the ``n_boot`` replicate differences. Each resampled group draws fresh questions,
    so a seed drawn twice contributes two independent question resamples (the standard two-stage scheme).

    Args:
        a_groups: Side a's groups: each an array of per-question scores or a single score.
        b_groups: Side b's groups, likewise.
        n_boot: Number of bootstrap replicates.
        seed: Seed of the random generator; the result is a deterministic function of the inputs and ``seed``.
        level: Two-sided confidence level, in (0, 1).

    Returns:
        The estimate, the interval and the counts.

    Raises:
        ValueError: If a side has no groups, a group is empty or non-finite, or ``level``/``n_boot`` is invalid.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    a, b = _as_groups(a_groups, "a"), _as_groups(b_groups, "b")
    rng = np.random.default_rng(seed)
    # Side a is drawn entirely before side b so that adding groups to b does not change a's replicates.
    diffs = _replicate_means(a, n_boot, rng) - _replicate_means(b, n_boot, rng)
    alpha = (1 - level) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return BootstrapResult(
        estimate=_mean_of_means(a) - _mean_of_means(b),
        low=float(low),
        high=float(high),
        n_groups_a=len(a),
        n_groups_b=len(b),
        n_values_a=sum(g.size for g in a),
        n_values_b=sum(g.size for g in b),
        n_boot=n_boot,
        level=level,
    )


def _as_groups(groups: Sequence[Group], side: str) -> list[np.ndarray]:
    arrays = [np.atleast_1d(np.asarray(g, dtype=float)).ravel() for g in groups]
    if not arrays:
        raise ValueError(f"side {side} has no groups")
    for i, g in enumerate(arrays):
        if g.size == 0 or not np.all(np.isfinite(g)):
            raise ValueError(f"side {side}, group {i}: need at least one value, all finite")
    return arrays


def _mean_of_means(groups: list[np.ndarray]) -> float:
    return float(np.mean([g.mean() for g in groups]))


def _replicate_means(groups: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` two-level resampled means of group means (see :func:`bootstrap_mean_diff`)."""
    n = len(groups)
    picks = rng.integers(0, n, size=(n_boot, n))  # stage 1: which group fills each slot of each replicate
    slot_means = np.empty((n_boot, n))
    for g, values in enumerate(groups):
        mask = picks == g
        count = int(mask.sum())
        if count == 0:
            continue
        if values.size == 1:
            slot_means[mask] = values[0]
            continue
        # stage 2: every slot that drew this group resamples its questions afresh
        draws = rng.integers(0, values.size, size=(count, values.size))
        slot_means[mask] = values[draws].mean(axis=1)
    return slot_means.mean(axis=1)
