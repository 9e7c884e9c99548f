"""`depth`: Wang et al. 2019: with the same recipe, Pre-LN trains deeper stacks than Post-LN.

Each run is classified diverged, stuck or training (measure.outcome). A run that is stuck after the
scale's steps may be slow rather than failed, so the cells where that can happen (the deepest depths,
declared per layout in the suite's parameters) also train twice as long, and a (layout, depth,
seed) trains when its short run or its longer run does. A precondition checks that every stuck short run
has a longer run: where one lacks it, the verdict says so instead of reporting slow as failed."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lnexp.core.layouts import POST as POST_LN
from lnexp.core.layouts import PRE as PRE_LN
from lnexp.experiments.reproduce.engine import Grid, Scale, Spec, SuiteRuns, per_seed
from lnexp.experiments.reproduce.measure import STUCK, TRAINING, capped_loss, difference, seedwise
from lnexp.experiments.reproduce.report import Analysis, Figure, md_table
from lnexp.experiments.reproduce.suites import common
from lnexp.experiments.reproduce.suites.common import (
    POST_PRE,
    Suite,
    model_norm,
    n_layers,
    optim_lr,
    outcomes,
    warmup_steps,
)
from lnexp.experiments.reproduce.verdicts import GREATER, WITHIN, Claim, Precondition, grid_edge, premise
from lnexp.experiments.stability import depth_axis, largest_index

LONGER = 2  # a longer run's steps, in multiples of the scale's


@dataclass(frozen=True)
class Params:
    depths: tuple[int, ...]
    lr: float  # one learning rate for every depth and layout (feature-dimension trains at it too)
    # layout -> the depths that also get a run LONGER times as long: where its short runs can end stuck
    long: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


# Where Post-LN's short runs end stuck or near the line (measured at tiny: L 12 within 0.03 nats of it,
# L 24 at the unigram baseline); Pre-LN trains at every depth of these grids.
PARAMS = {"tiny": Params((3, 6, 12, 24), 3e-3, {POST_LN.name: (12, 24)}),
          "cpu": Params((6, 24), 1e-3, {POST_LN.name: (24,)}),
          "small": Params((6, 12, 24, 36), 1e-3, {POST_LN.name: (24, 36)})}
EVERY_DEPTH = Claim("Pre-LN trains at every depth", "fraction of depths {{{depths}}} that train, Pre-LN",
                    WITHIN, (1.0, 1.0), "lnexp's choice: every depth")
DEEPER = Claim("Post-LN stops training beyond some depth at which Pre-LN still trains",
               "deepest depth that trains: Pre-LN − Post-LN (layers)", GREATER, 0.0,
               "lnexp's choice: any depth of the grid")


def recipe(scale: Scale, lr: float) -> dict[str, Any]:
    """Wang et al.'s: both layouts with warm-up, at one learning rate."""
    return {**warmup_steps(scale), **optim_lr(lr)}


def longer(scale: Scale) -> dict[str, Any]:
    return {"train.steps": scale.train["train"]["steps"] * LONGER}


def cell(scale: Scale, p: Params, norm: str, n: int, *more: dict[str, Any]) -> tuple[Spec, ...]:
    """A layout at one depth with the suite's recipe, one spec per seed."""
    return per_seed("train", scale.seeds, model_norm(norm), recipe(scale, p.lr), n_layers(n), *more)


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: (layout, depth); ("long", layout, depth) for the longer runs."""
    return {**{(norm, n): cell(scale, p, norm, n) for n in p.depths for norm in POST_PRE},
            **{("long", norm, n): cell(scale, p, norm, n, longer(scale))
               for norm, depths in p.long.items() for n in depths}}


def trains(ctx: SuiteRuns, keys: Mapping[int, Hashable], long_keys: Mapping[int, Hashable]
           ) -> dict[int, list[bool | None]]:
    """Per depth, per seed: whether it trains, i.e. its short run (`keys`: depth -> the cell's key) or
    its longer run (`long_keys`, where the grid has one) converges; None: a run is missing."""
    out = {}
    for n, key in keys.items():
        found = [outcomes(ctx, ctx[key])] + ([outcomes(ctx, ctx[long_keys[n]])] if n in long_keys else [])
        out[n] = [True if TRAINING in f else None if None in f else False for f in zip(*found)]
    return out


def deepest_index(flags: Mapping[int, list[bool | None]]) -> list[int | None]:
    """Per seed, the index in the depth grid of the deepest depth that trains (−1: none)."""
    return [largest_index(per_depth) for per_depth in zip(*flags.values())]


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds, p = ctx.scale, ctx.seeds(), ctx.params
    depths, steps = list(p.depths), scale.train["train"]["steps"]
    pre, post = PRE_LN.name, POST_LN.name
    long = {norm: {n: ("long", norm, n) for n in p.long.get(norm, ())} for norm in POST_PRE}
    flags = {norm: trains(ctx, {n: (norm, n) for n in depths}, long[norm]) for norm in POST_PRE}
    index = {norm: deepest_index(flags[norm]) for norm in POST_PRE}
    deepest = {norm: [None if i is None else float(depths[i]) if i >= 0 else 0.0 for i in index[norm]]
               for norm in POST_PRE}

    def covered(*norms: str) -> Precondition:
        """Every stuck short run of these layouts has a longer run: else slow could pass for failed."""
        stuck = [f"{norm}-LN L {n} seed {s}" for norm in norms for n in depths if n not in long[norm]
                 for s, o in zip(seeds, outcomes(ctx, ctx[norm, n])) if o == STUCK]
        return Precondition(f"every run stuck after {steps} steps has a run {LONGER}× as long (slow is not "
                            "failed)", "", None if stuck else True,
                            f"stuck, without a longer run: {', '.join(stuck) or 'none'}")

    shallow = min(depths)
    shallow_trains = premise(
        f"Post-LN trains at the shallowest depth, L = {shallow} (the control: its failures come with depth)",
        f"Post-LN did not train at L = {shallow}: its failures do not come with depth",
        f"trains at L = {shallow} (1 yes, 0 no), Post-LN",
        [None if f is None else float(f) for f in flags[post][shallow]], GREATER, 0.5)
    edge = grid_edge(index[pre], index[post], len(depths) - 1,
                     "Pre-LN's and Post-LN's deepest depths that train")
    fraction = [None if None in per_depth else sum(map(bool, per_depth)) / len(depths)
                for per_depth in zip(*flags[pre].values())]
    verdicts = [
        EVERY_DEPTH.format(depths=", ".join(map(str, depths))).test(fraction, seeds, [covered(pre)]),
        DEEPER.test(seedwise(difference, deepest[pre], deepest[post]), seeds,
                    [shallow_trains, covered(pre, post), edge]),
    ]
    long_text = "; ".join(f"{norm}-LN at L {', '.join(map(str, ns))}" for norm, ns in p.long.items())
    definitions = [
        common.loss_definition(), common.converge_definition(ctx),
        f"Both layouts with the same recipe, as in Wang et al.: Adam, lr {p.lr:g}, warm-up {scale.warmup} "
        f"steps, {steps} steps, linear decay; depths {', '.join(map(str, depths))}. Longer runs "
        f"({LONGER * steps} steps, the same warm-up, linear decay over the longer run): "
        f"{long_text or 'none'}, the cells whose short runs can end stuck at this scale. A (layout, depth, "
        "seed) **trains** when its short run or its longer run converges; the **deepest depth that trains** "
        "is the largest such depth of the grid (0 if none).",
        "Preconditions: Post-LN trains at the shallowest depth (the control: its failures come with "
        "depth); every stuck short run has a longer run (else the verdict is inconclusive, naming them); "
        "both layouts' deepest depths at the grid's deepest on every seed is a grid edge.",
    ]

    def draw(plt: Any):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for i, norm in enumerate(POST_PRE):
            for k in range(len(seeds)):
                for keys, marker, label in (
                        ({n: (norm, n) for n in depths}, "o-", f"{norm}-LN, {steps} steps"),
                        (long[norm], "s--", f"{norm}-LN, {LONGER * steps} steps")):
                    ys = [(n, capped_loss(ctx[key][k])) for n, key in keys.items()]
                    shown = [(n, y) for n, y in ys if y is not None and math.isfinite(y)]
                    if shown:
                        ax.plot(*zip(*shown), marker[0], linestyle=marker[1:], color=f"C{i}", alpha=0.8,
                                label=label if k == 0 else None)
        ax.axhline(ctx.baseline(), color="grey", linestyle="--", linewidth=0.8,
                   label="unigram baseline (seed mean)")
        ax.axhline(ctx.threshold(), color="grey", linestyle=":", linewidth=0.8,
                   label="converges below (seed mean)")
        depth_axis(ax, depths, "depth (layers)")
        ax.set_ylabel(f"final validation loss ({common.CAPPED})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    rows = [([f"{norm}-LN", str(n), str(steps)], ctx[norm, n]) for n in depths for norm in POST_PRE]
    rows += [([f"{norm}-LN", str(n), str(LONGER * steps)], ctx[key]) for norm in POST_PRE
             for n, key in long[norm].items()]
    summary = md_table(["layout", "deepest depth that trains (per seed)"],
                       [[f"{norm}-LN", ", ".join("–" if d is None else f"{d:g}" for d in deepest[norm])]
                        for norm in POST_PRE])
    return Analysis(verdicts, definitions, [
        Figure("loss_vs_depth.png", "Final validation loss (capped at the loss at init) against depth, one "
               "line per seed; squares: the longer runs", draw)],
        [summary, common.settings_table(ctx, rows, ["layout", "depth", "steps"])])


SUITE = Suite("depth", "Pre-LN trains deeper stacks than Post-LN",
              "Wang et al. 2019, Learning Deep Transformer Models for Machine Translation", PARAMS, grid,
              analyse)
