"""Verdicts as pure functions of numbers: nothing here knows about runs, files or torch.

A claim is tested once per seed: a measured value (one number per seed) against a stated threshold.
If every seed passes the claim is `reproduced`; if none does it is `not reproduced`; if the seeds
disagree, or no seed produced a number, it is `inconclusive`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lnexp.core.stats import mean_std, usable  # noqa: F401 (the suites read them here too)

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Threshold:
    """A test on one number, with the text the report prints for it."""

    text: str
    test: Callable[[float], bool]

    def __call__(self, value: float) -> bool:
        return bool(self.test(value))


def above(limit: float, what: str = "") -> Threshold:
    return Threshold(f"{what}> {limit:g}", lambda v: v > limit)


def below(limit: float, what: str = "") -> Threshold:
    return Threshold(f"{what}< {limit:g}", lambda v: v < limit)


def within(low: float, high: float, what: str = "") -> Threshold:
    return Threshold(f"{low:g} ≤ {what}≤ {high:g}" if what else f"in [{low:g}, {high:g}]",
                     lambda v: low <= v <= high)


def decide(passes: Sequence[bool | None]) -> str:
    """All seeds pass: reproduced; none: not reproduced; a mix, or no data: inconclusive."""
    known = [p for p in passes if p is not None]
    if not known:
        return INCONCLUSIVE
    if all(known):
        return REPRODUCED
    if not any(known):
        return NOT_REPRODUCED
    return INCONCLUSIVE


@dataclass
class Verdict:
    """One row of a report's verdict table."""

    claim: str
    quantity: str
    threshold: str
    values: list[float | None]           # one per seed (None: that seed gave no number)
    passes: list[bool | None]
    verdict: str
    note: str = ""
    seeds: list[int] = field(default_factory=list)

    @property
    def stats(self) -> tuple[float, float, int]:
        return mean_std(self.values)


def check(claim: str, quantity: str, threshold: Threshold, values: Sequence[float | None],
          seeds: Sequence[int] = (), note: str = "") -> Verdict:
    """Test each seed's value against the threshold and decide the verdict."""
    passes = [threshold(v) if usable(v) else None for v in values]
    return Verdict(claim, quantity, threshold.text, list(values), passes, decide(passes), note, list(seeds))


# --- the measured quantities -----------------------------------------------------------------------

def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept a and slope b of y = a + b·x (needs two distinct x)."""
    n = len(xs)
    if n < 2 or n != len(ys):
        raise ValueError("need at least two points")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("need two distinct x values")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def power_exponent(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """b in y ∝ x^b, fitted as log y = a + b·log x; None if a value is not positive or missing."""
    if any(not usable(y) or y <= 0 for y in ys) or any(x <= 0 for x in xs):
        return None
    return fit_line([math.log(x) for x in xs], [math.log(y) for y in ys])[1]


def trend_ratio(profile: Sequence[float]) -> float | None:
    """Last/first ratio of the log-linear trend fitted through a per-layer profile: > 1 grows with
    the layer index, < 1 shrinks. Less noisy than the raw last/first ratio."""
    if len(profile) < 2 or any(not usable(v) or v <= 0 for v in profile):
        return None
    _, b = fit_line(list(range(len(profile))), [math.log(v) for v in profile])
    return math.exp(b * (len(profile) - 1))


def stream_growth(rms: Sequence[float]) -> float | None:
    """RMS² of the residual stream leaving the last block over RMS² leaving the first, from the `act`
    profile (entry l = the stream entering layer l; the last entry leaves the last layer). From the
    first block's output on, so that the embedding's own scale (√d-scaled tokens plus sinusoidal
    positions have RMS² 1.5, not the 1 a LayerNorm gives) does not count as growth."""
    if len(rms) < 3 or any(not usable(v) or v <= 0 for v in rms):
        return None
    return (rms[-1] / rms[1]) ** 2


def stream_increment(rms: Sequence[float]) -> float | None:
    """RMS² of the stream leaving the last layer minus RMS² of its input: E‖x_L‖²/d − E‖x_0‖²/d, what
    Xiong et al.'s lemma bounds by [L/2, 3L/2] for Pre-LN (their (1 + L/2)·d ≤ E‖x_L‖² ≤ (1 + 3L/2)·d
    with a unit-variance input; each block adds a variance that does not depend on the stream's)."""
    if len(rms) < 2 or any(not usable(v) for v in rms):
        return None
    return rms[-1] ** 2 - rms[0] ** 2


def difference(a: float | None, b: float | None) -> float | None:
    """a − b; None if either is missing or both are infinite (two diverged runs compare as nothing)."""
    if not usable(a) or not usable(b) or (math.isinf(a) and math.isinf(b)):
        return None
    return a - b


def deepest(depths: Sequence[int], flags: Sequence[bool | None]) -> int | None:
    """The deepest depth that converged (0 if none), None if a result is missing."""
    if any(f is None for f in flags):
        return None
    return max((d for d, f in zip(depths, flags) if f), default=0)
