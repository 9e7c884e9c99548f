"""The statistics lnexp reports over seeds and runs, in one place."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def usable(value: float | None) -> bool:
    """A measured number (not missing, not nan); ±inf counts (a diverged run's loss)."""
    return value is not None and not math.isnan(value)


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the usable values.

    Infinite values (a diverged run's loss) make the mean infinite; nan when there are none."""
    xs = [v for v in values if usable(v)]
    if not xs:
        return math.nan, math.nan, 0
    mean = sum(xs) / len(xs)
    if len(xs) < 2 or not math.isfinite(mean):
        return mean, 0.0 if len(xs) < 2 else math.nan, len(xs)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)), len(xs)


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and its two-sided confidence interval [low, high] (`level`, e.g. 0.95)."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval | None:
    """Student's t-interval for the mean of `values` (one number per seed): mean ± t_{n−1}·s/√n, the
    quantile from scipy.stats.t. None when it does not exist: fewer than two values, or a value that
    is not finite (a diverged run's +∞ has no place in a mean: a claim whose statistic can be infinite
    defines a finite one, or makes divergence a precondition). Identical values give a zero-width
    interval (the seeds agree exactly: an integer statistic such as a grid step often does)."""
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return None
    from scipy.stats import t  # imported here: scipy.stats takes a second or more to import

    mean, std, n = mean_std(values)
    half = float(t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, level)
