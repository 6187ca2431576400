"""report/stats.py: each statistic against a hand example or scipy's own routine on the same data,
and the paired test calibrated by simulation (its false-positive rate and its power)."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from rlhf_bench.report import stats


def test_bootstrap_of_two_values_by_hand():
    # the mean of 2 draws from {1, 3}: 1 (p 1/4), 2 (1/2), 3 (1/4): the 2.5% and 97.5% points are 1 and 3
    point, low, high = stats.bootstrap_ci([np.array([1.0, 3.0])], n_resamples=4000)
    assert (point, low, high) == (2.0, 1.0, 3.0)


def test_bootstrap_matches_scipy_percentile_bootstrap():
    values = np.random.default_rng(1).normal(0.3, 0.1, size=12)
    _, low, high = stats.bootstrap_ci([values], n_resamples=40_000)
    ref = sps.bootstrap((values,), np.mean, method="percentile", n_resamples=40_000, rng=2).confidence_interval
    width = ref.high - ref.low
    assert low == pytest.approx(ref.low, abs=0.03 * width) and high == pytest.approx(ref.high, abs=0.03 * width)


def test_stratified_bootstrap_resamples_within_each_task():
    # task 1 has one run (always drawn), task 2 has two equal runs: every resample is the same set
    point, low, high = stats.bootstrap_ci([np.array([0.0]), np.array([2.0, 2.0])], n_resamples=100)
    assert point == low == high == pytest.approx(4 / 3)
    # two tasks of two runs each: the mean of 4 drawn runs, 2 from {0, 1} and 2 from {10, 11}
    _, low, high = stats.bootstrap_ci([np.array([0.0, 1.0]), np.array([10.0, 11.0])], n_resamples=20_000)
    assert (low, high) == (5.0, 6.0)  # P(all four low) = 1/16 > 2.5%: the extremes (0+0+10+10)/4, (1+1+11+11)/4


def test_clustered_se_by_hand_and_singletons_are_naive():
    # clusters {1, 3} and {2, 6}: mean 3, residual sums -2 and 2, SE^2 = 2/1 * (4 + 4) / 16 = 1
    assert stats.clustered_se(np.array([1.0, 3.0, 2.0, 6.0]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    y = np.random.default_rng(0).normal(size=50)
    assert stats.clustered_se(y, np.arange(50)) == pytest.approx(y.std(ddof=1) / math.sqrt(50))
    # perfectly correlated pairs: the clustered SE is the naive SE of the 25 cluster means
    z = np.repeat(y[:25], 2)
    assert stats.clustered_se(z, np.repeat(np.arange(25), 2)) == pytest.approx(y[:25].std(ddof=1) / 5)


def test_iqm_is_scipy_trim_mean_and_by_hand():
    assert stats.iqm(np.array([1.0, 2.0, 3.0, 4.0, 100.0, -50.0, 5.0, 6.0])) == pytest.approx(3.5)  # mean of 2..5
    x = np.random.default_rng(3).normal(size=(7, 9))
    np.testing.assert_allclose(stats.iqm(x, axis=1), sps.trim_mean(x, 0.25, axis=1))


def test_paired_difference_is_ttest_rel_of_the_run_means():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 30)) + 0.2, rng.normal(size=(5, 30))
    c = stats.paired_difference(a, b)
    ref = sps.ttest_rel(a.mean(axis=1), b.mean(axis=1))
    assert float(c.p) == pytest.approx(ref.pvalue) and float(c.dof) == 4
    ci = ref.confidence_interval()
    assert (float(c.low), float(c.high)) == (pytest.approx(ci.low), pytest.approx(ci.high))
    one = stats.paired_difference(a[:1], b[:1])  # one seed: over prompts
    assert float(one.p) == pytest.approx(sps.ttest_rel(a[0], b[0]).pvalue) and "no seed variance" in one.method


def test_welch_difference_is_scipy_welch():
    a, b = np.array([0.7, 0.8, 0.9]), np.array([0.5, 0.55])
    c = stats.welch_difference(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert float(c.p) == pytest.approx(ref.pvalue) and float(c.diff) == pytest.approx(0.275)
    ci = ref.confidence_interval()
    assert (float(c.low), float(c.high)) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_pairing_removes_the_prompts_shared_difficulty():
    rng = np.random.default_rng(5)
    difficulty = rng.normal(0, 1.0, size=200)  # shared by both configurations
    a = difficulty + rng.normal(0, 0.1, size=(3, 200)) + 0.05
    b = difficulty + rng.normal(0, 0.1, size=(3, 200))
    unpaired, paired = stats.prompt_level_widths(a, b)
    # unpaired ~ 2 * 1.96 * sqrt(2 * 1 / 200) (the difficulty counted twice); paired ~ 2 * 1.96 * sqrt(2 * 0.01 / 600)
    assert unpaired == pytest.approx(2 * 1.96 * math.sqrt(2 / 200), rel=0.15)
    assert paired == pytest.approx(2 * 1.96 * math.sqrt(0.02 / 600), rel=0.15)


def test_probability_of_improvement_is_mann_whitney():
    a, b = np.array([0.1, 0.5, 0.5, 0.9]), np.array([0.5, 0.2, 0.3])
    u = sps.mannwhitneyu(a, b).statistic  # U of a: pairs a > b plus half the ties
    assert stats.probability_of_improvement([a], [b]) == pytest.approx(u / 12)
    # two tasks weigh the same: 1 (A always better) and 0 (always worse) average to 0.5
    assert stats.probability_of_improvement([[2.0], [0.0]], [[1.0], [1.0]]) == 0.5


def test_performance_profile_by_hand():
    profile = stats.performance_profile([np.array([0.1, 0.4, 0.6, 0.9]), np.array([0.5])], np.array([0.0, 0.5, 1.0]))
    # task 1: 4/4, 2/4, 0/4 above; task 2: 1, 0, 0 -> averaged over the two tasks
    np.testing.assert_allclose(profile, [1.0, 0.25, 0.0])


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03, max(0.03, 2 x 0.03) = 0.06, max(0.06, 1 x 0.04) = 0.06
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, float("nan")]), [0.03, 0.06, 0.06, float("nan")])
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    marks = stats.mark_against_best([float("nan"), 0.03, 0.06, float("nan")], [True, False, False, False])
    assert marks == ["best", "< best", "≈ best", "untested"]


def test_variance_components_recover_the_planted_ones():
    rng = np.random.default_rng(6)
    seeds, prompts, draws = 6, 80, 400
    x = (
        rng.normal(0, 0.3, size=(draws, seeds, 1))
        + rng.normal(0, 0.5, size=(draws, 1, prompts))
        + rng.normal(0, 0.2, size=(draws, seeds, prompts))
    )
    comps = np.array([stats.variance_components(x[i]) for i in range(draws)]).mean(axis=0)
    np.testing.assert_allclose(comps, [0.09, 0.25, 0.04], rtol=0.1)  # the moment estimates are unbiased (floor aside)


def test_power_in_the_normal_limit_and_its_inverse():
    # many degrees of freedom: 80% power at (z_0.975 + z_0.8) = 1.959964 + 0.841621 standard errors
    assert float(stats.power_t(2.801585, 10**6)) == pytest.approx(0.8, abs=1e-4)
    assert float(stats.power_t(0.0, 4)) == pytest.approx(0.05)  # no difference: the test's size
    mdd = stats.min_detectable_difference(se=0.02, dof=4)
    assert float(stats.power_t(mdd / 0.02, 4)) == pytest.approx(0.8)
    assert stats.seeds_needed(0.1, var_seed=0.01, var_resid=0.0, prompts=100) == 10  # checked below by hand
    # by hand: se(S) = 0.1 / sqrt(S); the power at S = 9 (t 8 dof, 3 se) is 0.75 < 0.8, at 10 (9 dof, 3.16 se) 0.81
    assert float(stats.power_t(3.0, 8)) < 0.8 <= float(stats.power_t(math.sqrt(10), 9))


def test_prompts_needed_and_when_prompts_cannot_help():
    # seed variance 0: prompts alone decide; 3 seeds need se = delta / k with k the 2-dof noncentral root
    p = stats.prompts_needed(0.1, var_seed=0.0, var_resid=1.0, seeds=3)
    k = stats.min_detectable_difference(se=1.0, dof=2)
    assert p == math.ceil(1.0 / (3 * (0.1 / k) ** 2))
    assert stats.prompts_needed(0.1, var_seed=1.0, var_resid=1.0, seeds=3) is None  # seed variance too large


def _simulate(delta: float, draws: int, seeds: int, prompts: int, rng) -> np.ndarray:
    """[draws, 2, S, P]: two configurations on the same prompts (shared difficulty), own seeds and noise."""
    difficulty = rng.normal(0, 0.4, size=(draws, 1, 1, prompts))
    seed_effect = rng.normal(0, 0.05, size=(draws, 2, seeds, 1))
    noise = rng.normal(0, 0.3, size=(draws, 2, seeds, prompts))
    x = difficulty + seed_effect + noise
    x[:, 0] += delta
    return x


def test_calibration_by_simulation():
    """2,000 synthetic comparisons of identical configurations reject at about 5%; a planted
    difference is found about as often as the power function predicts."""
    rng = np.random.default_rng(7)
    seeds, prompts, draws = 5, 64, 2000
    same = _simulate(0.0, draws, seeds, prompts, rng)
    reject = float(np.mean(stats.paired_difference(same[:, 0], same[:, 1]).p < 0.05))
    assert 0.03 <= reject <= 0.08, reject
    welch = stats.welch_difference(same[:, 0].mean(-1), same[:, 1].mean(-1))
    assert 0.03 <= float(np.mean(welch.p < 0.05)) <= 0.08
    # the power the leaderboard predicts, from the true components of the difference: each side
    # adds its seed variance 0.05^2 and noise 0.3^2 (the shared difficulty cancels)
    var_seed, var_resid, delta = 2 * 0.05**2, 2 * 0.3**2, 0.1
    predicted = float(stats.power_t(delta / stats.paired_se(var_seed, var_resid, seeds, prompts), seeds - 1))
    assert 0.3 < predicted < 0.9  # a difference that is neither always nor never found
    planted = _simulate(delta, draws, seeds, prompts, rng)
    found = float(np.mean(stats.paired_difference(planted[:, 0], planted[:, 1]).p < 0.05))
    assert found == pytest.approx(predicted, abs=0.04), (found, predicted)  # 0.04 ~ 3.5 binomial s.e.
    # the components estimated from one draw's differences are what the power analysis uses
    d = planted[:, 0] - planted[:, 1]
    est = np.array([stats.variance_components(d[i]) for i in range(200)]).mean(axis=0)
    assert est[0] == pytest.approx(var_seed, rel=0.35) and est[2] == pytest.approx(var_resid, rel=0.05)
