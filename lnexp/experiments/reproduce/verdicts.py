"""The verdict rule, as statistics: pure functions of numbers (nothing here reads runs, files or torch).

A suite declares each claim once (`Claim`): its statistic (one number per seed), the claimed direction
(`greater`, `less`, or `within` a band), the smallest effect that counts and whose number that is
(the paper's, or lnexp's choice and why). Tested on the seeds' values (`Claim.test`), the verdict
comes from the 95% t-interval of their mean (lnexp.core.stats.t_interval):

- **reproduced**: the interval lies beyond the smallest effect, in the claimed direction (inside the
  band, for `within`);
- **not reproduced**: the interval lies on the other side of it, or ends at it (outside the band);
- **inconclusive**: the interval contains the smallest effect (crosses an edge of the band), or there
  is no interval (fewer than two seeds with a number, or an infinite value);
- **not applicable**: a precondition failed: the data refute the premise the claim needs, and the
  verdict names it with its numbers (`premise`); **inconclusive: grid edge** when the arms compared
  sit at the same edge of a learning-rate grid on every seed (`grid_edge`). A premise the data can
  neither establish nor refute makes the claim inconclusive.

A `Wiring` check is an identity the code must satisfy (every block ends in a LayerNorm, so the stream
leaving it has RMS 1): it holds when every seed's value is in its range. It is reported in its own
section and never counted as a reproduction. A placebo (`Claim.placebo`) tests a claim's statistic on
two arms that differ in nothing but their seeds: its share of "reproduced" rows is the false-positive
rate of the rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from lnexp.core.stats import Interval, binomial_interval, mean_std, t_interval, usable

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
NOT_APPLICABLE = "not applicable"
GRID_EDGE = "inconclusive: grid edge"
HOLDS, BROKEN = "holds", "broken"  # a wiring check's verdicts

CLAIM, WIRING, PLACEBO = "claim", "wiring", "placebo"  # a verdict's kind
Direction = Literal["greater", "less", "within"]
GREATER, LESS, WITHIN = "greater", "less", "within"
Bound = float | tuple[float, float]  # the smallest effect; for `within`, the band (low, high)


def num(value: float | None, digits: int = 3) -> str:
    """A number for a table: 3 significant digits, integers as integers, ∞, – for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.{digits}g}"


def rule_text(direction: Direction, bound: Bound) -> str:
    """The claimed direction and smallest effect: `> 0.1`, `< 0.8`, `in [-0.25, 0.25]`."""
    if direction == WITHIN:
        low, high = bound
        return f"in [{low:g}, {high:g}]"
    return f"{'>' if direction == GREATER else '<'} {bound:g}"


def interval_text(interval: Interval | None, values: Sequence[float | None] = ()) -> str:
    """`mean [low, high] (n)`, or the mean and count alone where there is no interval."""
    if interval is not None:
        return f"{num(interval.mean)} [{num(interval.low)}, {num(interval.high)}] ({interval.n})"
    mean, _, n = mean_std(values)
    return f"{num(mean)} ({n})" if n else "– (0)"


def compare(interval: Interval, direction: Direction, bound: Bound) -> tuple[str, str]:
    """The verdict of an interval against the claim's direction and smallest effect, and why."""
    ci = f"{round(interval.level * 100):d}% CI [{num(interval.low)}, {num(interval.high)}]"
    if direction == WITHIN:
        low, high = bound
        if low <= interval.low and interval.high <= high:
            return REPRODUCED, f"{ci} lies inside [{low:g}, {high:g}]"
        if interval.high < low or interval.low > high:
            return NOT_REPRODUCED, f"{ci} lies outside [{low:g}, {high:g}]"
        return INCONCLUSIVE, f"{ci} crosses an edge of [{low:g}, {high:g}]"
    # "not reproduced" includes an interval that ends at the smallest effect: seeds that agree exactly
    # on a null integer statistic (0 grid steps) show no effect, they do not leave it open
    beyond, short = (interval.low > bound, interval.high <= bound) if direction == GREATER else \
        (interval.high < bound, interval.low >= bound)
    side, other = ("above", "below") if direction == GREATER else ("below", "above")
    if beyond:
        return REPRODUCED, f"{ci} lies {side} {bound:g}"
    if short:
        return NOT_REPRODUCED, f"{ci} lies at or {other} {bound:g}"
    return INCONCLUSIVE, f"{ci} contains {bound:g}"


@dataclass(frozen=True)
class Precondition:
    """What a claim needs before its statistic can speak to it. `holds` is computed from measured
    values: False makes the verdict `outcome` (not applicable, or inconclusive: grid edge) with
    `failed` and the numbers as its reason; None (the data cannot tell) makes it inconclusive."""

    premise: str          # "Post-LN without warm-up fails at lr 0.003"
    failed: str           # "Post-LN without warm-up trained at lr 0.003: nothing for warm-up to rescue"
    holds: bool | None
    numbers: str = ""     # the measurement behind `holds`, shown with it
    outcome: str = NOT_APPLICABLE


def premise(text: str, failed: str, statistic: str, values: Sequence[float | None], direction: Direction,
            bound: Bound) -> Precondition:
    """A premise measured on the seeds with the claims' own rule: it holds when the interval
    establishes it, fails when the interval refutes it, and is unknown otherwise."""
    verdict, _, interval = judge(values, direction, bound)
    numbers = f"{statistic}: {interval_text(interval, values)}, premise {rule_text(direction, bound)}"
    return Precondition(text, failed, {REPRODUCED: True, NOT_REPRODUCED: False}.get(verdict), numbers)


def grid_edge(a: Sequence[int | None], b: Sequence[int | None], top: int, what: str) -> Precondition:
    """The two arms' largest passing grid index per seed (−1: none passes) must not sit at the same
    edge of the grid on every seed: both at its largest value (`top`), or both passing none. There the
    grid, not the arms, sets the difference (0), and a wider grid is needed."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    edge = bool(pairs) and all(x == y and x in (top, -1) for x, y in pairs)
    where = ("at the grid's largest learning rate" if all(x == top for x, _ in pairs) else
             "failing at its every learning rate" if all(x == -1 for x, _ in pairs) else
             "at the same edge of the grid")
    return Precondition(f"{what}: not both at an edge of the grid", f"{what}: both {where} on every seed",
                        not edge if pairs else None, outcome=GRID_EDGE)


def judge(values: Sequence[float | None], direction: Direction, bound: Bound,
          preconditions: Sequence[Precondition] = ()) -> tuple[str, str, Interval | None]:
    """The verdict, its reason and the interval (None where there is none) for one claim's values
    (one per seed; None: that seed gave no number)."""
    xs = [float(v) for v in values if usable(v)]
    interval = t_interval(xs)
    failed = [p for p in preconditions if p.holds is False]
    if failed:
        return failed[0].outcome, "; ".join(f"{p.failed} ({p.numbers})" if p.numbers else p.failed
                                            for p in failed), interval
    infinite = [i for i, v in enumerate(xs) if math.isinf(v)]
    if infinite:
        return INCONCLUSIVE, (f"{len(infinite)} of {len(xs)} seeds' value is infinite (a diverged run): no "
                              "interval"), None
    if interval is None:
        return INCONCLUSIVE, f"{len(xs)} seed(s) with a number: an interval needs 2", None
    unknown = [p for p in preconditions if p.holds is None]
    if unknown:
        return INCONCLUSIVE, "premise not established: " + "; ".join(
            f"{p.premise} ({p.numbers})" if p.numbers else p.premise for p in unknown), interval
    verdict, reason = compare(interval, direction, bound)
    return verdict, reason, interval


@dataclass
class Verdict:
    """One row of a report: a claim's (or a wiring check's, or a placebo's) values per seed, their
    interval and the verdict with its reason. verdicts.json stores it (`to_json`), and every table —
    a suite's report, the index, the terminal, the docs — is printed from what is stored."""

    kind: str
    claim: str
    statistic: str
    rule: str                         # direction and smallest effect: "> 0.1", "in [-0.25, 0.25]"
    effect_source: str                # whose number the smallest effect is
    values: list[float | None]        # one per seed (None: that seed gave no number)
    seeds: list[int]
    verdict: str
    reason: str
    interval: Interval | None = None
    note: str = ""

    @property
    def summary(self) -> str:
        return interval_text(self.interval, self.values)

    def to_json(self) -> dict[str, Any]:
        i = self.interval
        return {"kind": self.kind, "claim": self.claim, "statistic": self.statistic, "rule": self.rule,
                "effect_source": self.effect_source, "values": [_json_number(v) for v in self.values],
                "seeds": self.seeds, "mean": _json_number(i.mean if i else mean_std(self.values)[0]),
                "low": i and i.low, "high": i and i.high, "n": i.n if i else mean_std(self.values)[2],
                "level": i and i.level, "verdict": self.verdict, "reason": self.reason, "note": self.note}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Verdict:
        """A stored row (KeyError or TypeError for one that is not)."""
        interval = Interval(row["mean"], row["low"], row["high"], row["n"], row["level"]) \
            if row["low"] is not None else None
        return cls(row["kind"], row["claim"], row["statistic"], row["rule"], row["effect_source"],
                   [None if v is None else float(v) for v in row["values"]], list(row["seeds"]),
                   row["verdict"], row["reason"], interval, row["note"])


def _json_number(value: float | None) -> float | str | None:
    """JSON has no ∞: a diverged run's +∞ is stored as the string "inf" (float() reads it back)."""
    if value is None or math.isnan(value):
        return None
    return value if math.isfinite(value) else str(value)


@dataclass(frozen=True)
class Claim:
    """A claim, declared once in its suite module. `statistic` says what one seed's number is;
    `direction` and `smallest_effect` what the claim asserts about its mean (`within`: a band);
    `effect_source` whose number that is ("Xiong et al. 2020, Theorem 1" or "lnexp's choice: why").
    `text` and `statistic` may hold {fields} that `format` fills in (a depth, a learning rate), and a
    smallest effect that depends on them (the lemma's band [L/2, 3L/2]) is declared None and given
    there."""

    text: str
    statistic: str
    direction: Direction
    smallest_effect: Bound | None
    effect_source: str
    kind: str = CLAIM

    def __post_init__(self) -> None:
        if self.smallest_effect is not None and \
                (self.direction == WITHIN) != isinstance(self.smallest_effect, tuple):
            raise ValueError(f"claim {self.text!r}: `within` takes a band (low, high), the others a number")

    @property
    def rule(self) -> str:
        return rule_text(self.direction, self.smallest_effect)

    def format(self, smallest_effect: Bound | None = None, **fields: Any) -> Claim:
        return replace(self, text=self.text.format(**fields), statistic=self.statistic.format(**fields),
                       smallest_effect=self.smallest_effect if smallest_effect is None else smallest_effect)

    def placebo(self, arms: str) -> Claim:
        """The same statistic and rule on two arms that differ only in their seeds (`arms` names them:
        "Post-LN against Post-LN′, seeds 3–5"): a "reproduced" here is a false positive."""
        return replace(self, text=f"placebo, {arms}: {self.text}", kind=PLACEBO)

    def test(self, values: Sequence[float | None], seeds: Sequence[int],
             preconditions: Sequence[Precondition] = (), note: str = "") -> Verdict:
        if self.smallest_effect is None:
            raise ValueError(f"claim {self.text!r}: give its smallest effect with `format`")
        verdict, reason, interval = judge(values, self.direction, self.smallest_effect, preconditions)
        return Verdict(self.kind, self.text, self.statistic, self.rule, self.effect_source, list(values),
                       list(seeds), verdict, reason, interval, note)


@dataclass(frozen=True)
class Wiring:
    """An identity the code must satisfy, checked on every seed: `holds` when each value is in
    [low, high], `broken` when one is not. `why` says why it must hold: such a row cannot fail unless
    the code is wrong, so it is not evidence about a paper."""

    text: str
    statistic: str
    low: float
    high: float
    why: str

    def format(self, **fields: Any) -> Wiring:
        return replace(self, text=self.text.format(**fields), statistic=self.statistic.format(**fields))

    def check(self, values: Sequence[float | None], seeds: Sequence[int], note: str = "") -> Verdict:
        xs = [v for v in values if usable(v)]
        outside = [v for v in xs if not self.low <= v <= self.high]
        verdict = BROKEN if outside else HOLDS if xs and len(xs) == len(values) else INCONCLUSIVE
        reason = (f"{len(outside)} of {len(xs)} seeds outside [{self.low:g}, {self.high:g}]" if outside
                  else f"every seed in [{self.low:g}, {self.high:g}]" if verdict == HOLDS
                  else f"{len(values) - len(xs)} seed(s) without a number")
        return Verdict(WIRING, self.text, self.statistic, f"in [{self.low:g}, {self.high:g}]", self.why,
                       list(values), list(seeds), verdict, reason, t_interval(xs) if not outside else None,
                       note)


@dataclass
class Tally:
    """The counts a report states: claims by verdict, wiring checks broken, placebo false positives."""

    claims: dict[str, int] = field(default_factory=dict)
    wiring: dict[str, int] = field(default_factory=dict)
    placebo_reproduced: int = 0
    placebo_judged: int = 0

    @classmethod
    def of(cls, verdicts: Sequence[Verdict]) -> Tally:
        tally = cls()
        for v in verdicts:
            if v.kind == PLACEBO:
                # judged: an interval was computed (a row without one, missing runs or values, could
                # never come out "reproduced" and would only lower the rate)
                if v.verdict in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE) and v.interval is not None:
                    tally.placebo_judged += 1
                    tally.placebo_reproduced += v.verdict == REPRODUCED
                continue
            counts = tally.wiring if v.kind == WIRING else tally.claims
            word = "missing a run" if v.verdict.startswith("missing") else v.verdict
            counts[word] = counts.get(word, 0) + 1
        return tally

    def false_positive_rate(self) -> float | None:
        return self.placebo_reproduced / self.placebo_judged if self.placebo_judged else None

    def sentences(self) -> list[str]:
        out = []
        if self.claims:
            out.append("Claims: " + ", ".join(f"{n} {k}" for k, n in self.claims.items()) + ".")
        if self.wiring:
            out.append("Wiring checks (not evidence): "
                       + ", ".join(f"{n} {k}" for k, n in self.wiring.items()) + ".")
        rate = self.false_positive_rate()
        if rate is not None:
            low, high = binomial_interval(self.placebo_reproduced, self.placebo_judged)
            out.append(f"Placebo comparisons: {self.placebo_reproduced} of {self.placebo_judged} came out "
                       f"\"reproduced\": a false-positive rate of {rate:.0%} (95% CI {low:.0%}–{high:.0%}, "
                       "Clopper–Pearson; the rule aims at 5% or less).")
        return out
