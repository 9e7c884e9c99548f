"""`depth`: Wang et al. 2019: with the same recipe, Pre-LN trains deeper stacks than Post-LN."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lnexp.core.layouts import POST as POST_LN
from lnexp.core.layouts import PRE as PRE_LN
from lnexp.experiments.reproduce.engine import Grid, Scale, SuiteRuns, per_seed
from lnexp.experiments.reproduce.measure import deepest, final_loss
from lnexp.experiments.reproduce.report import Analysis, Figure
from lnexp.experiments.reproduce.suites import common
from lnexp.experiments.reproduce.suites.common import (
    POST_PRE,
    Suite,
    model_norm,
    n_layers,
    optim_lr,
    warmup_steps,
)
from lnexp.experiments.reproduce.verdicts import GREATER, WITHIN, Claim
from lnexp.experiments.stability import depth_axis


@dataclass(frozen=True)
class Params:
    depths: tuple[int, ...]
    lr: float  # one learning rate for every depth and layout (feature-dimension trains at it too)


PARAMS = {"tiny": Params((3, 6, 12, 24), 3e-3), "cpu": Params((6, 24), 1e-3),
          "small": Params((6, 12, 24, 36), 1e-3)}
EVERY_DEPTH = Claim("Pre-LN trains at every depth", "fraction of depths {{{depths}}} that converge, Pre-LN",
                    WITHIN, (1.0, 1.0), "lnexp's choice: every depth")
DEEPER = Claim("Post-LN stops training beyond some depth at which Pre-LN still trains",
               "deepest depth that converges: Pre-LN − Post-LN", GREATER, 0.0, "lnexp's choice: any depth")
SHALLOW = Claim("(control) Post-LN trains at the shallowest depth, L = {shallow}",
                "converges at L = {shallow} (1 yes, 0 no), Post-LN", WITHIN, (1.0, 1.0),
                "lnexp's choice: it converges")


def recipe(scale: Scale, lr: float) -> dict[str, Any]:
    """Wang et al.'s: both layouts with warm-up, at one learning rate."""
    return {**warmup_steps(scale), **optim_lr(lr)}


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: (layout, depth)."""
    return {(norm, n): per_seed("train", scale.seeds, model_norm(norm), recipe(scale, p.lr), n_layers(n))
            for n in p.depths for norm in POST_PRE}


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds, depths = ctx.scale, ctx.seeds(), list(ctx.params.depths)
    runs = {(norm, n, s): run for norm in POST_PRE for n in depths for s, run in zip(seeds, ctx[norm, n])}
    conv = {k: ctx.converged(r) for k, r in runs.items()}

    def fraction(norm: str, seed: int) -> float | None:
        flags = [conv[norm, n, seed] for n in depths]
        return None if any(f is None for f in flags) else sum(flags) / len(flags)

    def gap(seed: int) -> float | None:
        a = deepest(depths, [conv[PRE_LN.name, n, seed] for n in depths])
        b = deepest(depths, [conv[POST_LN.name, n, seed] for n in depths])
        return None if a is None or b is None else float(a - b)

    shallow = min(depths)
    depth_text = ", ".join(map(str, depths))
    verdicts = [
        EVERY_DEPTH.format(depths=depth_text).test([fraction(PRE_LN.name, s) for s in seeds], seeds),
        DEEPER.test([gap(s) for s in seeds], seeds),
        SHALLOW.format(shallow=shallow).test(
            [None if conv[POST_LN.name, shallow, s] is None else float(conv[POST_LN.name, shallow, s])
             for s in seeds], seeds),
    ]
    definitions = [
        common.loss_definition(), common.converge_definition(ctx),
        f"Both layouts with the same recipe, as in Wang et al.: Adam, lr {ctx.params.lr:g}, warm-up "
        f"{scale.warmup} steps, {scale.train['train']['steps']} steps; depths {depth_text}. The control "
        "row checks that Post-LN's failures come with depth, not at every depth.",
    ]

    def draw(plt: Any):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for i, norm in enumerate(POST_PRE):
            for k, s in enumerate(seeds):
                ys = [final_loss(runs[norm, n, s]) for n in depths]
                shown = [(n, y if y is not None and math.isfinite(y) else ctx.baseline() + 0.5)
                         for n, y in zip(depths, ys) if y is not None]
                if shown:
                    ax.plot(*zip(*shown), color=f"C{i}", marker="o", alpha=0.8,
                            label=f"{norm}-LN" if k == 0 else None)
        ax.axhline(ctx.baseline(), color="grey", linestyle="--", linewidth=0.8,
                   label="unigram baseline (seed mean)")
        ax.axhline(ctx.threshold(), color="grey", linestyle=":", linewidth=0.8,
                   label="converges below (seed mean)")
        depth_axis(ax, depths, "depth (layers)")
        ax.set_ylabel("final validation loss (diverged: top)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    rows = [([f"{norm}-LN", str(n)], [runs[norm, n, s] for s in seeds])
            for n in depths for norm in POST_PRE]
    return Analysis(verdicts, definitions, [
        Figure("loss_vs_depth.png", "Final validation loss against depth, one line per seed", draw)],
        [common.settings_table(ctx, rows, ["layout", "depth"])])


SUITE = Suite("depth", "Pre-LN trains deeper stacks than Post-LN",
                       "Wang et al. 2019, Learning Deep Transformer Models for Machine Translation", PARAMS,
                       grid, analyse)
