"""wmcore.stats: bootstrap CIs (scipy) and the paired verdict, on samples with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from wmcore.stats import VERDICTS, curve_ci, paired_delta


def bootstrap_ci(x, n_resamples=2000, seed=0):
    """The BCa CI of a sample's mean through curve_ci (one column: the mean curve is the mean)."""
    _, lo, hi = curve_ci([np.asarray(x, dtype=np.float64)[:, None]], lambda m: m[..., 0], n_resamples=n_resamples, seed=seed)
    return lo, hi


def test_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(200):
        lo, hi = bootstrap_ci(rng.normal(1.0, 2.0, 32), n_resamples=999, seed=i)
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99  # nominal 0.95; BCa at n = 32 is close


def test_ci_is_seeded_and_degenerate_samples_collapse():
    x = np.random.default_rng(1).normal(size=20)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(np.full(8, 0.25)) == (0.25, 0.25)
    assert bootstrap_ci(np.array([2.0])) == (2.0, 2.0)
    lo, hi = bootstrap_ci(np.array([0.0] * 9 + [1.0]))  # BCa undefined here: percentile fallback
    assert 0.0 <= lo <= 0.1 <= hi <= 0.4


def test_identical_runs_give_exactly_zero_and_no_change():
    x = np.random.default_rng(2).uniform(0.3, 0.9, 16)
    r = paired_delta(x, x.copy(), 0.02)
    assert (r.delta, r.lo, r.hi, r.verdict, r.episodes) == (0.0, 0.0, 0.0, "no significant change", 16)


def test_a_clear_drop_regresses_and_a_clear_gain_improves():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.4, 0.9, 32)  # episodes differ a lot; the versions differ by 0.05 +- 0.01
    worse = base - 0.05 + rng.normal(0, 0.01, 32)
    r = paired_delta(base, worse, 0.02)
    assert r.verdict == "regressed" and r.hi < 0 and abs(r.delta + 0.05) < 0.01
    assert paired_delta(worse, base, 0.02).verdict == "improved"
    # lower is better (an MSE): the sign flips
    assert paired_delta(base, base + 0.05 + rng.normal(0, 0.01, 32), 0.02, higher_is_better=False).verdict == "regressed"


def test_a_drop_within_the_tolerance_is_no_regression():
    rng = np.random.default_rng(4)
    base = rng.uniform(0.4, 0.9, 32)
    r = paired_delta(base, base - 0.01 + rng.normal(0, 0.002, 32), 0.02)
    assert r.hi < 0 and r.verdict == "no significant change"  # significant, but smaller than tolerated


def test_noisy_few_episodes_are_inconclusive_and_say_how_many_are_needed():
    rng = np.random.default_rng(5)
    base = rng.uniform(0.4, 0.9, 6)
    r = paired_delta(base, base + rng.normal(0, 0.1, 6), 0.02)
    assert r.verdict == "inconclusive" and r.lo < -0.02 and r.needed > 6
    assert set(VERDICTS) >= {r.verdict}


@pytest.mark.parametrize("base, new", [(np.zeros(3), np.zeros(4)), (np.zeros((2, 2)), np.zeros((2, 2))),
                                       (np.zeros(0), np.zeros(0))])
def test_mismatched_samples_are_refused(base, new):
    with pytest.raises(ValueError, match="same episodes"):
        paired_delta(base, new, 0.02)


def test_a_statistic_of_the_mean_curve_resamples_episodes_jointly():
    rng = np.random.default_rng(6)
    base = rng.uniform(0.5, 1.0, (16, 10))
    new = base - 0.05  # every episode, every step worse by 0.05
    r = paired_delta(base, new, 0.02, statistic=lambda mb, mn: mn.mean(-1) - mb.mean(-1))
    assert r.verdict == "regressed" and abs(r.delta + 0.05) < 1e-12 and abs(r.lo + 0.05) < 1e-9 and abs(r.hi + 0.05) < 1e-9
    same = paired_delta(base, base.copy(), 0.02, statistic=lambda mb, mn: mn.mean(-1) - mb.mean(-1))
    assert (same.delta, same.lo, same.hi, same.verdict) == (0.0, 0.0, 0.0, "no significant change")
    # the mean-curve statistic agrees with the per-episode mean where the two are the same number
    step1 = paired_delta(base, new + rng.normal(0, 0.01, new.shape), 0.02, statistic=lambda mb, mn: mn[..., 0] - mb[..., 0])
    flat = paired_delta(base[:, 0], (new + rng.normal(0, 0.01, new.shape))[:, 0], 0.02)
    assert step1.verdict == flat.verdict == "regressed"


def test_t_interval_of_a_mean_misses_on_the_low_side_at_about_the_nominal_rate():
    from wmcore.stats import mean_ci

    rng = np.random.default_rng(7)
    low = sum(mean_ci(rng.standard_t(5, 8))[1] < 0 for _ in range(2000)) / 2000  # heavy tails, 8 episodes
    assert 0.01 <= low <= 0.04  # nominal 0.025
    assert mean_ci(np.full(5, 0.3)) == (0.3, 0.3) and mean_ci(np.array([1.5])) == (1.5, 1.5)
