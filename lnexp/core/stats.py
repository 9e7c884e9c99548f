"""The statistics lnexp reports over seeds and runs, in one place."""

from __future__ import annotations

import math
from collections.abc import Sequence


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
