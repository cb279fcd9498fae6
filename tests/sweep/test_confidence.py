"""Wilson intervals against hand-worked values, and the two-level bootstrap's determinism, coverage and narrowing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sweep.confidence import bootstrap_mean_diff, wilson_interval


def test_wilson_hand_worked_3_of_10() -> None:
    """k=3, n=10, z=1.96, worked from the formula.

    p = 0.3, z^2 = 3.8416, denom = 1 + 3.8416/10 = 1.38416
    centre = (0.3 + 3.8416/20) / 1.38416 = 0.49208 / 1.38416 = 0.355508...
    half = 1.96 * sqrt(0.3*0.7/10 + 3.8416/400) / 1.38416 = 1.96 * sqrt(0.021 + 0.009604) / 1.38416
         = 1.96 * 0.174940 / 1.38416 = 0.247716...
    interval = (0.10779, 0.60322), the textbook value for 3/10.
    """
    low, high = wilson_interval(3, 10)
    z2 = 1.96**2
    denom = 1 + z2 / 10
    centre = (0.3 + z2 / 20) / denom
    half = 1.96 * math.sqrt(0.3 * 0.7 / 10 + z2 / 400) / denom
    assert low == pytest.approx(centre - half, abs=1e-12)
    assert high == pytest.approx(centre + half, abs=1e-12)
    assert (low, high) == pytest.approx((0.10779, 0.60322), abs=1e-5)


def test_wilson_zero_successes_upper_bound_is_z2_over_n_plus_z2() -> None:
    """k=0: centre == half == (z^2/2n)/(1+z^2/n), so low = 0 and high = 2*centre = z^2/(n + z^2)."""
    for n in (1, 5, 35, 100):
        low, high = wilson_interval(0, n)
        assert low == 0.0
        assert high == pytest.approx(1.96**2 / (n + 1.96**2), rel=1e-12)
    # 35 clean runs are the fewest whose 95 % upper bound is below 10 %.
    assert wilson_interval(0, 35)[1] < 0.10 < wilson_interval(0, 34)[1]


def test_wilson_all_successes_mirrors_zero() -> None:
    """k=n is k=0 reflected: (1 - z^2/(n+z^2), 1)."""
    low, high = wilson_interval(7, 7)
    assert high == 1.0
    assert low == pytest.approx(1 - 1.96**2 / (7 + 1.96**2), rel=1e-12)


def test_wilson_empty_and_invalid() -> None:
    low, high = wilson_interval(0, 0)
    assert math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(-1, 2)


def test_wilson_wider_z_gives_wider_interval() -> None:
    narrow, wide = wilson_interval(4, 20, z=1.0), wilson_interval(4, 20, z=2.576)
    assert wide[0] < narrow[0] < 0.2 < narrow[1] < wide[1]


def _groups(rng: np.random.Generator, n_seeds: int, n_questions: int, mean: float) -> list[np.ndarray]:
    # seed offsets (between-seed spread) plus per-question noise
    return [mean + rng.normal(0, 0.3) + rng.normal(0, 1.0, n_questions) for _ in range(n_seeds)]


def test_bootstrap_deterministic_given_seed() -> None:
    rng = np.random.default_rng(1)
    a, b = _groups(rng, 4, 20, 6.0), _groups(rng, 4, 20, 5.5)
    first = bootstrap_mean_diff(a, b, seed=7)
    assert first == bootstrap_mean_diff(a, b, seed=7)
    assert first != bootstrap_mean_diff(a, b, seed=8)


def test_bootstrap_counts_and_point_estimate_is_mean_of_group_means() -> None:
    a = [np.array([1.0, 2.0, 3.0]), 4.0]  # group means 2 and 4 -> 3 (not the pooled mean 2.5)
    b = [1.0, 1.0]
    result = bootstrap_mean_diff(a, b, n_boot=200)
    assert result.estimate == pytest.approx(2.0)
    assert (result.n_groups_a, result.n_groups_b, result.n_values_a, result.n_values_b) == (2, 2, 4, 2)
    assert result.low <= result.estimate <= result.high


def test_bootstrap_covers_true_difference_in_most_constructed_datasets() -> None:
    """Nominal 95 %: over 100 independent datasets with true gap 0.7, the interval covers 0.7 at least 85 times.

    (The percentile bootstrap undercovers somewhat with few seeds, hence the margin below 95.)
    """
    rng = np.random.default_rng(0)
    covered = 0
    for i in range(100):
        result = bootstrap_mean_diff(_groups(rng, 8, 20, 6.7), _groups(rng, 8, 20, 6.0), n_boot=400, seed=i)
        covered += result.low < 0.7 < result.high
    assert covered >= 85


def test_bootstrap_narrows_with_more_data() -> None:
    rng = np.random.default_rng(0)
    small = bootstrap_mean_diff(_groups(rng, 4, 10, 6.7), _groups(rng, 4, 10, 6.0), seed=0)
    large = bootstrap_mean_diff(_groups(rng, 30, 80, 6.7), _groups(rng, 30, 80, 6.0), seed=0)
    assert large.high - large.low < (small.high - small.low) / 2


def test_bootstrap_resamples_questions_within_a_single_seed() -> None:
    """With one group per side, seed resampling is idle; the interval still has width from the questions."""
    result = bootstrap_mean_diff([np.arange(10.0)], [np.zeros(10)], n_boot=500)
    assert result.low < 4.5 < result.high
    assert result.high - result.low > 1.0
    scalar = bootstrap_mean_diff([4.5], [0.0], n_boot=50)
    assert scalar.low == scalar.high == pytest.approx(4.5)


def test_bootstrap_rejects_empty_or_non_finite() -> None:
    with pytest.raises(ValueError):
        bootstrap_mean_diff([], [1.0])
    with pytest.raises(ValueError):
        bootstrap_mean_diff([np.array([1.0, np.nan])], [1.0])
    with pytest.raises(ValueError):
        bootstrap_mean_diff([1.0], [1.0], level=1.0)
