"""Statistics for arms trained with a few seeds each.

Per arm: mean, sample standard deviation (ddof=1), the t-interval of the mean and the prediction
interval of one more run (where a run with another seed should land: wider than the interval of the
mean by sqrt(n + 1), as one run scatters as much as any seed did). Between an arm
and the baseline, three tests of "same mean", each two-sided:

* Welch's t-test (unequal variances, Welch-Satterthwaite degrees of freedom), with the confidence
  interval of the difference of means. The headline test: it assumes neither equal variances nor
  that seeds pair up.
* The paired t-test over the seeds both arms ran. The runner gives seed N the same value in every
  arm, so runs of one seed share data order and augmentation; where that shared randomness
  matters, pairing removes it and the test is more powerful.
* An exact permutation test of the difference of means: every split of the pooled values into
  groups of the arms' sizes, no normality assumed. Its smallest possible p-value is set by the
  number of splits: 3 vs 3 seeds have 20 splits, so p >= 0.1.

Degenerate cases (one seed, zero spread) give NaN with a note saying why, never an exception.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
#: Beyond this many splits (10 vs 10 seeds has 184,756) the t-tests are reliable anyway.
MAX_EXACT_PERMUTATIONS = 200_000
NAN = math.nan


@dataclass(frozen=True)
class ArmSummary:
    """Mean, sample std (ddof=1) and confidence interval of the mean of one arm's values."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    note: str = ""

    def prediction_interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        """Where one more run of this arm falls with probability ``confidence`` (normal runs):
        mean ± t(n-1) · std · sqrt(1 + 1/n). NaN with fewer than two runs."""
        if self.n < 2 or math.isnan(self.std):
            return NAN, NAN
        half = _t_quantile(confidence, self.n - 1) * self.std * math.sqrt(1 + 1 / self.n)
        return self.mean - half, self.mean + half


@dataclass(frozen=True)
class TTest:
    """A t-test of ``mean(a) - mean(b)``, with the confidence interval of that difference."""

    difference: float
    ci_low: float
    ci_high: float
    t: float
    df: float
    p: float
    note: str = ""


@dataclass(frozen=True)
class PermutationTest:
    """An exact two-sided permutation test; ``splits`` is how many relabellings it enumerated."""

    p: float
    splits: int
    note: str = ""


@dataclass(frozen=True)
class Comparison:
    """An arm against the baseline: Welch, paired over ``paired_seeds``, exact permutation."""

    arm: str
    baseline: str
    welch: TTest
    paired: TTest
    paired_seeds: tuple[int, ...]
    permutation: PermutationTest

    @property
    def notes(self) -> list[str]:
        """Why some statistic is NaN, one line per reason."""
        tests = (self.welch, self.paired, self.permutation)
        return list(dict.fromkeys(t.note for t in tests if t.note))


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> ArmSummary:
    """n, mean, sample std and the t confidence interval of the mean."""
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        return ArmSummary(0, NAN, NAN, NAN, NAN, "no finished runs")
    mean = float(x.mean())
    if n == 1:
        return ArmSummary(1, mean, NAN, NAN, NAN, "one run: no spread estimate")
    std = float(x.std(ddof=1))
    half = _t_quantile(confidence, n - 1) * std / math.sqrt(n)
    note = "all runs equal: no spread" if std <= _rounding_noise(x) else ""
    return ArmSummary(n, mean, std, mean - half, mean + half, note)


def welch_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> TTest:
    """Welch's unequal-variance t-test; df by Welch-Satterthwaite (the contrast ``a - b``)."""
    return contrast_test([a, b], [1.0, -1.0], confidence)


def contrast_test(
    groups: Sequence[Sequence[float]], weights: Sequence[float], confidence: float = CONFIDENCE
) -> TTest:
    """A t-test of the contrast ``sum(w_i * mean(group_i))`` of independent groups, with its
    confidence interval: standard error ``sqrt(sum(w_i^2 s_i^2 / n_i))``, degrees of freedom by
    Welch-Satterthwaite. Welch's test is the contrast (1, -1); a 2x2 design's main effect is
    (1/2, 1/2, -1/2, -1/2) of its four arms, its interaction (1, -1, -1, 1)."""
    samples = [np.asarray(g, dtype=float) for g in groups]
    used = [(w, x) for w, x in zip(weights, samples, strict=True) if w != 0]
    if any(x.size == 0 for _, x in used):
        return _undefined(NAN, "an arm has no runs: no t-test")
    estimate = float(sum(w * x.mean() for w, x in used))
    if any(x.size < 2 for _, x in used):
        return _undefined(estimate, "an arm has fewer than 2 runs: no t-test")
    parts = [w**2 * x.var(ddof=1) / x.size for w, x in used]
    se = math.sqrt(sum(parts))
    if se <= _rounding_noise(*(x for _, x in used)):
        return _undefined(estimate, "no spread in any arm: t-tests undefined")
    df = sum(parts) ** 2 / sum(v**2 / (x.size - 1) for v, (_, x) in zip(parts, used, strict=True))
    return _t_test(estimate, se, df, confidence)


def paired_contrast_test(
    groups: Sequence[Mapping[int, float]], weights: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[TTest, tuple[int, ...]]:
    """The contrast computed seed by seed over the seeds every weighted arm ran (runs of one seed
    share data in every arm), then its t-interval over seeds; and those seeds."""
    used = [(w, g) for w, g in zip(weights, groups, strict=True) if w != 0]
    seeds = tuple(sorted(set.intersection(*(set(g) for _, g in used)))) if used else ()
    per_seed = [sum(w * g[seed] for w, g in used) for seed in seeds]
    return paired_test(per_seed, [0.0] * len(per_seed), confidence), seeds


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> TTest:
    """Paired t-test of ``a[i] - b[i]`` (the t-interval of the mean difference)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = a - b
    difference = float(d.mean()) if d.size else NAN
    if d.size < 2:
        return _undefined(difference, "fewer than 2 seeds ran in both arms: no paired test")
    se = float(d.std(ddof=1)) / math.sqrt(d.size)
    if se <= _rounding_noise(a, b):
        return _undefined(difference, "the same difference for every seed: paired test undefined")
    return _t_test(difference, se, d.size - 1, confidence)


def permutation_test(
    a: Sequence[float], b: Sequence[float], max_splits: int = MAX_EXACT_PERMUTATIONS
) -> PermutationTest:
    """Exact two-sided test: the share of splits with ``|mean difference|`` >= the observed one."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        return PermutationTest(NAN, 0, "an arm has no runs: no permutation test")
    splits = math.comb(a.size + b.size, a.size)
    if splits > max_splits:
        return PermutationTest(
            NAN, 0, f"{splits} splits: too many for the exact test, use the t-tests"
        )
    pooled = np.concatenate([a, b])
    in_a = np.array(list(itertools.combinations(range(pooled.size), a.size)))
    sum_a = pooled[in_a].sum(axis=1)
    differences = np.abs(sum_a / a.size - (pooled.sum() - sum_a) / b.size)
    observed = abs(a.mean() - b.mean())
    # Equal differences reached by another summation order must count as ties, not as smaller.
    at_least = differences >= observed - _rounding_noise(a, b)
    return PermutationTest(float(at_least.mean()), splits)


def compare(
    arm: str,
    values: Mapping[int, float],
    baseline: str,
    baseline_values: Mapping[int, float],
    confidence: float = CONFIDENCE,
) -> Comparison:
    """All three tests of ``arm`` against ``baseline``; values are keyed by seed."""
    a, b = list(values.values()), list(baseline_values.values())
    seeds = tuple(sorted(set(values) & set(baseline_values)))
    paired = paired_test(
        [values[s] for s in seeds], [baseline_values[s] for s in seeds], confidence
    )
    return Comparison(
        arm=arm,
        baseline=baseline,
        welch=welch_test(a, b, confidence),
        paired=paired,
        paired_seeds=seeds,
        permutation=permutation_test(a, b),
    )


def _rounding_noise(*samples: np.ndarray) -> float:
    """Differences this small are floating-point rounding (80.0 + 3.0 vs 0.83 * 100), not data."""
    return 1e-9 * max(float(np.abs(x).max()) for x in samples)


def _t_quantile(confidence: float, df: float) -> float:
    return float(stats.t.ppf(0.5 + confidence / 2, df))


def _t_test(difference: float, se: float, df: float, confidence: float) -> TTest:
    t = difference / se
    half = _t_quantile(confidence, df) * se
    p = float(2 * stats.t.sf(abs(t), df))
    return TTest(difference, difference - half, difference + half, t, float(df), p)


def _undefined(difference: float, note: str) -> TTest:
    return TTest(difference, NAN, NAN, NAN, NAN, NAN, note)
