"""Ablation statistics against scipy and against values worked out by hand."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats as scipy_stats

from convrepro.ablate import stats

A = [91.2, 90.7, 91.9, 91.4]
B = [90.1, 90.9, 89.8]


@pytest.fixture(autouse=True)
def no_runtime_warnings():
    """Degenerate inputs must give NaN and a note, not numpy warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_summary_is_mean_sample_std_and_t_interval():
    summary = stats.summarize(A)
    assert summary.n == 4
    assert summary.mean == pytest.approx(np.mean(A))
    assert summary.std == pytest.approx(np.std(A, ddof=1))
    low, high = scipy_stats.t.interval(0.95, 3, loc=np.mean(A), scale=scipy_stats.sem(A))
    assert (summary.ci_low, summary.ci_high) == pytest.approx((low, high))


def test_prediction_interval_is_where_one_more_run_lands():
    summary = stats.summarize(A)
    # One new value x: (x - mean) / (s sqrt(1 + 1/n)) follows t with n - 1 df.
    scale = np.std(A, ddof=1) * math.sqrt(1 + 1 / len(A))
    low, high = scipy_stats.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=scale)
    assert summary.prediction_interval() == pytest.approx((low, high))
    assert high - low > summary.ci_high - summary.ci_low  # wider than the mean's
    # Simulated: about 95% of new normal runs fall inside, over many small grids.
    rng = np.random.default_rng(0)
    inside = []
    for _ in range(4000):
        runs = rng.normal(size=6)
        low, high = stats.summarize(runs[:5]).prediction_interval()
        inside.append(low <= runs[5] <= high)
    assert np.mean(inside) == pytest.approx(0.95, abs=0.015)
    assert all(math.isnan(v) for v in stats.summarize([1.0]).prediction_interval())


def test_welch_matches_scipy():
    result = stats.welch_test(A, B)
    reference = scipy_stats.ttest_ind(A, B, equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert result.difference == pytest.approx(np.mean(A) - np.mean(B))
    assert result.t == pytest.approx(reference.statistic)
    assert result.df == pytest.approx(reference.df)
    assert result.p == pytest.approx(reference.pvalue)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high))


def test_welch_by_hand():
    # means 2 and 5, both variances 1: se = sqrt(2/3), t = -3 * sqrt(3/2), df = 4 exactly
    result = stats.welch_test([1, 2, 3], [4, 5, 6])
    assert result.t == pytest.approx(-3 * math.sqrt(1.5))
    assert result.df == pytest.approx(4.0)
    assert result.p == pytest.approx(2 * scipy_stats.t.sf(3 * math.sqrt(1.5), 4))
    half = scipy_stats.t.ppf(0.975, 4) * math.sqrt(2 / 3)
    assert (result.ci_low, result.ci_high) == pytest.approx((-3 - half, -3 + half))


def test_paired_matches_scipy():
    a, b = A[:3], B
    result = stats.paired_test(a, b)
    reference = scipy_stats.ttest_rel(a, b)
    interval = reference.confidence_interval(0.95)
    assert result.t == pytest.approx(reference.statistic)
    assert result.df == reference.df == 2
    assert result.p == pytest.approx(reference.pvalue)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high))


def test_permutation_matches_scipy_exact_test():
    def mean_difference(x, y, axis):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    a, b = [91.2, 90.7, 91.9], [90.1, 90.9, 89.8]
    reference = scipy_stats.permutation_test(
        (a, b), mean_difference, permutation_type="independent", n_resamples=np.inf
    )
    result = stats.permutation_test(a, b)
    assert result.splits == 20
    assert result.p == pytest.approx(reference.pvalue)


def test_permutation_by_hand():
    # 3 vs 3 fully separated: only the 2 extreme splits of 20 reach |diff| = 3.
    assert stats.permutation_test([1, 2, 3], [4, 5, 6]).p == pytest.approx(2 / 20)
    # 2 vs 3 over 1..5: |diff| = |5 s - 30| / 6 for subset sum s; s <= 3 or s >= 9: 2 of 10.
    result = stats.permutation_test([1, 2], [3, 4, 5])
    assert (result.p, result.splits) == (pytest.approx(0.2), 10)


def test_permutation_counts_ties_reached_in_another_summation_order():
    # 0.1 + 0.2 != 0.3 in floating point; equal differences must still count as ties.
    assert stats.permutation_test([0.1, 0.2], [0.3, 0.0]).p == pytest.approx(1.0)


def test_permutation_refuses_too_many_splits():
    result = stats.permutation_test(range(12), range(12), max_splits=1000)
    assert math.isnan(result.p)
    assert "too many" in result.note


def test_compare_pairs_runs_by_seed():
    arm = {0: 91.0, 1: 92.5, 2: 91.5, 5: 93.0}
    baseline = {2: 90.0, 1: 91.0, 0: 90.5}
    comparison = stats.compare("lrn", arm, "no-lrn", baseline)
    assert comparison.paired_seeds == (0, 1, 2)
    reference = scipy_stats.ttest_rel([91.0, 92.5, 91.5], [90.5, 91.0, 90.0])
    assert comparison.paired.p == pytest.approx(reference.pvalue)
    assert comparison.welch.p == pytest.approx(
        scipy_stats.ttest_ind(list(arm.values()), list(baseline.values()), equal_var=False).pvalue
    )
    assert comparison.permutation.splits == math.comb(7, 4)
    assert comparison.notes == []


def test_one_run_gives_nan_and_notes():
    summary = stats.summarize([90.0])
    assert summary.mean == 90.0
    assert math.isnan(summary.std) and math.isnan(summary.ci_low)
    assert "one run" in summary.note
    comparison = stats.compare("b", {0: 91.0}, "a", {0: 90.0})
    assert comparison.welch.difference == pytest.approx(1.0)
    assert math.isnan(comparison.welch.p) and math.isnan(comparison.paired.p)
    assert comparison.permutation.p == 1.0  # 2 splits, both reach |diff| = 1
    assert any("fewer than 2 runs" in note for note in comparison.notes)
    assert stats.summarize([]).n == 0


def test_zero_spread_gives_nan_and_notes():
    welch = stats.welch_test([90.0, 90.0, 90.0], [91.0, 91.0, 91.0])
    assert welch.difference == pytest.approx(-1.0)
    assert math.isnan(welch.t) and math.isnan(welch.p) and math.isnan(welch.ci_low)
    assert "no spread" in welch.note
    paired = stats.paired_test([91.0, 92.0, 93.0], [90.0, 91.0, 92.0])
    assert math.isnan(paired.p)
    assert "same difference" in paired.note
    # equal up to rounding (83.00000000000001 - 80.0) is still no spread
    rounded = stats.paired_test([100 * (0.80 + 0.01 * s + 0.02) for s in range(3)], [80, 81, 82])
    assert math.isnan(rounded.p)
    # one arm without spread is fine: Welch's df falls to the other arm's n - 1
    assert stats.welch_test([90.0, 90.0, 90.0], [91.0, 92.0, 93.0]).df == pytest.approx(2.0)


C = [88.4, 89.1, 88.0, 88.9, 88.6]
D = [92.3, 91.0, 92.8]


def test_contrast_of_two_arms_is_welch_and_scipy():
    assert stats.contrast_test([A, B], [1, -1]) == stats.welch_test(A, B)
    reference = scipy_stats.ttest_ind(B, A, equal_var=False)
    result = stats.contrast_test([A, B], [-1, 1])
    assert (result.t, result.df, result.p) == pytest.approx(
        (reference.statistic, reference.df, reference.pvalue)
    )


def test_contrast_of_four_arms_by_hand():
    """A 2x2 main effect: (mean A + mean D - mean B - mean C) / 2; its variance adds the four
    variances of the means, each times w^2 = 1/4; Satterthwaite's df."""
    weights = [0.5, -0.5, -0.5, 0.5]
    groups = [A, B, C, D]
    result = stats.contrast_test(groups, weights)
    means = [np.mean(g) for g in groups]
    parts = [w**2 * np.var(g, ddof=1) / len(g) for w, g in zip(weights, groups, strict=True)]
    df = sum(parts) ** 2 / sum(v**2 / (len(g) - 1) for v, g in zip(parts, groups, strict=True))
    se = math.sqrt(sum(parts))
    estimate = float(np.dot(weights, means))
    half = scipy_stats.t.ppf(0.975, df) * se
    assert result.difference == pytest.approx(estimate)
    assert result.df == pytest.approx(df)
    assert (result.ci_low, result.ci_high) == pytest.approx((estimate - half, estimate + half))
    assert result.p == pytest.approx(2 * scipy_stats.t.sf(abs(estimate / se), df))
    # An arm with weight 0 plays no part, whatever it holds.
    assert stats.contrast_test([A, B, []], [1, -1, 0]) == stats.welch_test(A, B)


@pytest.mark.parametrize(
    "weights", [(0.5, 0.5, -0.5, -0.5), (1, -1, -1, 1), (-1, 0, 0, 1)], ids=["main", "x", "both"]
)
def test_contrast_interval_covers_the_truth_95_percent_of_grids(weights):
    """Simulated 4-arm grids of 5 seeds, unequal spreads: the interval holds the true contrast
    about 95% of the time (Satterthwaite's df keeps it close with unequal variances)."""
    rng = np.random.default_rng(1)
    means, sds = np.array([60.0, 61.0, 62.5, 64.0]), np.array([0.3, 0.8, 0.4, 1.2])
    truth = float(np.dot(weights, means))
    covered = []
    for _ in range(4000):
        groups = [rng.normal(m, s, size=5) for m, s in zip(means, sds, strict=True)]
        result = stats.contrast_test(groups, weights)
        covered.append(result.ci_low <= truth <= result.ci_high)
    assert np.mean(covered) == pytest.approx(0.95, abs=0.015)


def test_paired_contrast_over_shared_seeds():
    arms = [dict(enumerate(A)), dict(enumerate(B)), {0: 1.0, 1: 2.0, 2: 3.5}]
    result, seeds = stats.paired_contrast_test(arms, [1, -1, 0.5])
    assert seeds == (0, 1, 2)  # the seeds all three arms ran
    per_seed = [A[s] - B[s] + 0.5 * arms[2][s] for s in seeds]
    reference = scipy_stats.ttest_1samp(per_seed, 0.0)
    assert (result.difference, result.p) == pytest.approx((np.mean(per_seed), reference.pvalue))


def test_contrast_degenerate_cases_give_nan_and_a_note():
    assert "no runs" in stats.contrast_test([A, []], [1, -1]).note
    one = stats.contrast_test([A, [90.0]], [1, -1])
    assert math.isnan(one.ci_low) and "fewer than 2 runs" in one.note
    assert one.difference == pytest.approx(np.mean(A) - 90.0)
    flat = stats.contrast_test([[1.0, 1.0], [2.0, 2.0]], [1, -1])
    assert math.isnan(flat.p) and "no spread" in flat.note
