"""`placebo`: negative controls for the training claims. Each comparison tests a claim's own statistic,
direction and smallest effect (`Claim.placebo`) on an arm A against the same arm A′ on disjoint seeds
(A: seeds 0–2, the very cells another suite trains; A′: the same config on seeds 3–5, paired seed by
seed in order). Nothing differs but the seeds, so every "reproduced" is a false positive, and their
share is the verdict rule's false-positive rate, with its exact binomial interval.

The arms are the claims' own where a claim compares single cells (Post-LN + warm-up, Pre-LN and RAdam at
the warm-up suite's learning rates; GPT-2's unscaled stack), and, for the statistics read off a whole
learning-rate grid (the stability map's sensitivity, the layouts suite's largest converging learning rate
and its final-model ratios), a ladder of Post-LN and Pre-LN over the stability map's grid at its
shallowest depth, whose cells also give the steps-to-the-line statistic at every learning rate."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lnexp.core.layouts import POST as POST_LN
from lnexp.core.layouts import PRE as PRE_LN
from lnexp.experiments.reproduce.engine import Grid, Scale, Spec, SuiteRuns, disjoint, log_final
from lnexp.experiments.reproduce.measure import (
    TRAINING,
    difference,
    profile,
    ratio,
    seedwise,
    stream_growth,
    trend_ratio,
)
from lnexp.experiments.reproduce.report import Analysis
from lnexp.experiments.reproduce.suites import gpt2, layouts, radam, stability_map, xiong_warmup
from lnexp.experiments.reproduce.suites.common import Suite, capped, outcomes
from lnexp.experiments.reproduce.verdicts import Claim, Precondition, Tally, Verdict, grid_edge
from lnexp.experiments.stability import largest_index

A, A2 = "A", "A′"  # the arm on the suites' seeds, and on the next as many


@dataclass(frozen=True)
class Params:
    # the depth of the Post-LN and Pre-LN learning-rate ladders (one of the map's); None: no ladders
    ladder_depth: int | None


# The ladders at `tiny` only: there they bring the comparisons past 20 for 30 runs of 3 layers; at `cpu`
# the same would add a fifth to `all`'s training.
PARAMS = {"tiny": Params(min(stability_map.PARAMS["tiny"].depths)), "cpu": Params(None),
          "small": Params(None)}
LADDER = "ladder"


def _with_log(specs: tuple[Spec, ...], log: dict[str, Any]) -> tuple[Spec, ...]:
    return tuple(replace(s, overrides=tuple(sorted({**dict(s.overrides), **log}.items()))) for s in specs)


def arms(scale: Scale, p: Params) -> dict[Hashable, tuple[Spec, ...]]:
    """Each arm A, as the suite that trains it declares it (so A is that suite's very cell)."""
    warm, rad = xiong_warmup.SUITE.grid_at(scale), radam.SUITE.grid_at(scale)
    smap, growth = stability_map.SUITE.grid_at(scale), gpt2.SUITE.grid_at(scale)
    lrs = stability_map.SUITE.params_at(scale).lrs
    out: dict[Hashable, tuple[Spec, ...]] = {}
    for lr in xiong_warmup.SUITE.params_at(scale).lrs:
        out[xiong_warmup.WARM, lr] = warm[xiong_warmup.WARM, lr]
        out[PRE_LN.name, lr] = warm[PRE_LN.name, lr]
        out[radam.RADAM_ARM, lr] = rad[radam.RADAM_ARM, lr]
    for norm in (POST_LN.name, PRE_LN.name) if p.ladder_depth is not None else ():
        for lr in lrs:  # the final-model ratios of the layouts suite read its lowest learning rate
            specs = smap[norm, p.ladder_depth, lr]
            out[LADDER, norm, lr] = _with_log(specs, log_final(scale)) if lr == lrs[0] else specs
    out[gpt2.SUITE.name] = growth[False]
    return out


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: (arm, A) and (arm, A′) for each arm of `arms`."""
    return {(key, side): specs if side == A else disjoint(specs)
            for key, specs in arms(scale, p).items() for side in (A, A2)}


@dataclass
class Placebos:
    """The rows of one analysis, each a claim's statistic on an arm A against A′ (seed k of A′ paired
    with seed k of A)."""

    ctx: SuiteRuns
    seeds: list[int]        # A's
    later: list[int]        # A′'s
    line: float | None      # the training-loss line of the steps statistic (xiong2020-warmup's)
    rows: list[Verdict] = field(default_factory=list)

    def sides(self, key: Hashable, of: Callable[[Sequence[Any]], list[Any]]) -> list[list[Any]]:
        """The per-seed numbers of arm A and of A′ (`of` turns a side's runs into them)."""
        return [of(self.ctx[key, A]), of(self.ctx[key, A2])]

    def steps(self, runs: Sequence[Any]) -> list[float | None]:
        return xiong_warmup.steps_to(runs, self.line)

    def ahead(self, claim: Claim, arm: str, key: Hashable) -> None:
        """A steps-to-the-line row: A against A′, which must not both miss the line on a seed."""
        later, sooner = self.sides(key, self.steps)
        steps = self.ctx.scale.train["train"]["steps"]
        self.place(claim, arm, seedwise(difference, later, sooner),
                   [xiong_warmup.reach_line(later, sooner, steps, f"{arm} and its copy")])

    def place(self, claim: Claim, arm: str, values: list[float | None],
              needs: Sequence[Precondition] = ()) -> None:
        arms = f"{arm} against itself on seeds {self.later[0]}–{self.later[-1]}"
        self.rows.append(claim.placebo(arms).test(values, self.seeds, needs))


def diff_of_diffs(a: float | None, a2: float | None, b: float | None, b2: float | None) -> float | None:
    return difference(difference(a, a2), difference(b, b2))


def final_profiles(runs: Sequence[Any], probe: str, param: str) -> list[list[float] | None]:
    """The runs' profiles on the final model (measure.profile)."""
    return [profile(r, probe, param, "final") for r in runs]


def claim_arms(p: Placebos, lrs: Sequence[float], line: str) -> None:
    """The rows on the claims' own arms: the warm-up suite's and RAdam, at each of its learning rates."""
    for lr in lrs:
        warm, pre, rad = (xiong_warmup.WARM, lr), (PRE_LN.name, lr), (radam.RADAM_ARM, lr)
        p.place(xiong_warmup.RESCUES.format(lr=lr), "Post-LN + warm-up",
                seedwise(difference, *p.sides(warm, capped)))
        p.place(xiong_warmup.INTERACTION.format(lr=lr), "Post-LN + warm-up and Pre-LN, each",
                seedwise(xiong_warmup.interaction, *p.sides(warm, capped), *p.sides(pre, capped)))
        p.ahead(xiong_warmup.AHEAD.format(lr=lr, line=line), "Pre-LN", pre)
        p.ahead(xiong_warmup.AHEAD_MATCHED.format(lr=lr, line=line), "Post-LN + warm-up", warm)
        p.place(radam.RESCUES.format(lr=lr), "RAdam", seedwise(difference, *p.sides(rad, capped)))


def ladder_rows(p: Placebos, n: int, lrs: Sequence[float], line: str) -> None:
    """The rows read off the Post-LN and Pre-LN ladders at depth n: the stability map's sensitivity,
    the layouts suite's largest converging lr and final-model ratios, and the steps at each rung."""
    post, pre = POST_LN.name, PRE_LN.name

    def ladder(norm: str) -> list[Hashable]:
        return [(LADDER, norm, lr) for lr in lrs]

    def sensitivity(norm: str) -> list[list[float | None]]:
        return [stability_map.sensitivities(p.ctx, [(key, side) for key in ladder(norm)]) for side in (A, A2)]

    def largest(norm: str, side: str) -> list[float | None]:
        found = [outcomes(p.ctx, p.ctx[key, side]) for key in ladder(norm)]
        return seedwise(lambda *per_lr: largest_index([o == TRAINING for o in per_lr]), *found)

    fields = {"sensitivity": stability_map.SENSITIVITY, "depths": f"{{{n}}}"}
    for norm, claim in ((post, stability_map.WARMUP_STEADIES), (pre, stability_map.PRE_STEADIER)):
        p.place(claim.format(a=norm, b=f"{norm}′", **fields), f"{norm} at L = {n}",
                seedwise(difference, *sensitivity(norm)))
    p.place(stability_map.DEPTH_UNSTEADIES.format(low=f"{n}′", high=n, **fields),
            f"post and pre at L = {n}, each", seedwise(diff_of_diffs, *sensitivity(post), *sensitivity(pre)))
    for layout in (POST_LN, PRE_LN):
        label, at = layout.label, f"{layout.label} at L = {n}"
        index = [largest(layout.name, side) for side in (A, A2)]
        p.place(layouts.PRE_WHERE_POST_FAILS.format(a=label, b=f"{label}′", L=n), at,
                seedwise(difference, *index), [grid_edge(*index, len(lrs) - 1, f"{label} and {label}′")])
        for lr, key in zip(lrs, ladder(layout.name)):
            p.ahead(xiong_warmup.AHEAD.format(lr=lr, line=line), at, key)
    low = (LADDER, pre, lrs[0])
    growth = p.sides(low, lambda runs: [stream_growth(a) for a in final_profiles(runs, "act", "resid")])
    trend = p.sides(low, lambda runs: [trend_ratio(g) for g in final_profiles(runs, "grad", "ffn.fc2")])
    p.place(layouts.SANDWICH_TAMES.format(lr=lrs[0], L=n), f"Pre-LN at L = {n}", seedwise(ratio, *growth))
    p.place(layouts.MIX_GRADIENTS.format(lr=lrs[0], L=n), f"Pre-LN at L = {n}", seedwise(ratio, *trend))


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, n = ctx.scale, ctx.params.ladder_depth
    first = next(iter(arms(scale, ctx.params)))
    p = Placebos(ctx, ctx.seeds_of((first, A)), ctx.seeds_of((first, A2)),
                 xiong_warmup.line_of([r for key in ctx.grid for r in ctx[key]], scale.margin))
    line = f"the unigram entropy − {scale.margin:g}" + ("" if p.line is None else f" = {p.line:.3f} nats")
    claim_arms(p, xiong_warmup.SUITE.params_at(scale).lrs, line)
    if n is not None:
        ladder_rows(p, n, stability_map.SUITE.params_at(scale).lrs, line)
    growth = p.sides(gpt2.SUITE.name,
                     lambda runs: [gpt2.growth_of(a) for a in final_profiles(runs, "act", "resid")])
    p.place(gpt2.IN_CHECK_TRAINED, "Pre-LN with GPT-2's init, unscaled", seedwise(ratio, *growth))

    definitions = [
        "A placebo tests a claim's statistic, direction and smallest effect on two arms that differ in "
        f"nothing but their seeds: A on seeds {', '.join(map(str, p.seeds))}, the very runs the claim's "
        f"suite trains, and A′, the same config on seeds {', '.join(map(str, p.later))}, paired in that "
        "order. The verdict rule calls an effect reproduced only when the 95% interval clears the smallest "
        "effect; with no effect that should happen in at most 2.5% of the comparisons whose smallest effect "
        "is 0, and far less where it lies beyond 0.",
        *([f"The learning-rate ladders: Post-LN and Pre-LN without warm-up at L = {n}, at each learning "
           "rate of the stability map (its cells); the sensitivity, largest-converging-lr and final-model "
           "rows read a whole ladder, the steps rows each rung."] if n is not None else []),
        f"\"Steps to the line\": {line} (xiong2020-warmup's definition).",
        "Left out: claims that the no-effect value satisfies (non-inferiority and equivalence rows: \"no "
        "worse than\", \"matches\", \"within\"), where a placebo would measure power, not false "
        "positives; initialisation claims (not training claims); the depth suite's deepest-depth "
        "statistic (its placebo needs a second Post-LN depth ladder with its longer runs, about a tenth "
        "of `all`'s training at tiny); feature-dimension's ad-hoc rows. Comparisons that share runs (the "
        "rows of one ladder) are not independent, while the interval on the rate treats them as if they "
        "were.",
    ]
    tally = Tally.of(p.rows)
    edge = len(p.rows) - tally.placebo_judged
    return Analysis(p.rows, definitions, findings=[
        *tally.sentences(), *([f"{edge} comparison(s) at a grid edge, not judged."] if edge else [])])


SUITE = Suite("placebo", "Negative controls: each training claim's statistic on an arm against itself",
              "lnexp's own check of its verdict rule", PARAMS, grid, analyse)
