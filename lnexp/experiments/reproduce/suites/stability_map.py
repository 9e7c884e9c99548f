"""`stability-map`: the largest learning rate that still converges, by layout, recipe and depth: a
phase diagram generalising Xiong et al. 2020 (warm-up), Liu et al. 2019 (RAdam) and Wang et al. 2019
(depth)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lnexp.core.layouts import POST as POST_LN
from lnexp.core.layouts import PRE as PRE_LN
from lnexp.experiments.reproduce.engine import Grid, Scale, SuiteRuns, per_seed
from lnexp.experiments.reproduce.measure import difference, final_loss
from lnexp.experiments.reproduce.report import Analysis, Figure, md_table, mean_pm
from lnexp.experiments.reproduce.suites import common
from lnexp.experiments.reproduce.suites.common import (
    POST,
    PRE,
    PRE_GPT2,
    RADAM,
    Suite,
    n_layers,
    optim_lr,
    warmup_steps,
)
from lnexp.experiments.reproduce.verdicts import GREATER, Claim
from lnexp.experiments.stability import largest_index, largest_lr_panel


@dataclass(frozen=True)
class Params:
    depths: tuple[int, ...]
    lrs: tuple[float, ...]  # the grid, in order: "grid steps" count along it (the layouts suite's too)


PARAMS = {"tiny": Params((3, 6, 12), (1e-3, 3e-3, 1e-2, 3e-2)), "cpu": Params((3, 6), (1e-3, 3e-3)),
          "small": Params((6, 12, 24), (3e-4, 1e-3, 3e-3, 1e-2))}
WIDER = "largest stable lr, {a} minus {b}, in grid steps, averaged over depths"
ANY_STEP = "lnexp's choice: any gain on the grid"
WARMUP_WIDENS = Claim("Warm-up widens Post-LN's stable learning-rate range",
                      WIDER.format(a="post+warm-up", b=POST_LN.name), GREATER, 0.0, ANY_STEP)
RADAM_WIDENS = Claim("RAdam (no warm-up) widens Post-LN's stable range",
                     WIDER.format(a="post+RAdam", b=POST_LN.name), GREATER, 0.0, ANY_STEP)
PRE_WIDER = Claim("Pre-LN (no warm-up) is stable at larger learning rates than Post-LN (no warm-up)",
                  WIDER.format(a=PRE_LN.name, b=POST_LN.name), GREATER, 0.0, ANY_STEP)
DEPTH_NARROWS = Claim("Depth narrows Post-LN's stable range more than Pre-LN's",
                      "change of the largest stable lr from L = {low} to L = {high} (grid steps): Pre-LN "
                      "minus Post-LN with warm-up", GREATER, 0.0, ANY_STEP)


def recipes(scale: Scale) -> dict[str, dict[str, Any]]:
    """The five training recipes of the map (a layout, with or without warm-up, RAdam, GPT-2's
    scaling), as overrides of the training base."""
    return {
        POST_LN.name: POST,
        f"{POST_LN.name}+warm-up": {**POST, **warmup_steps(scale)},
        f"{POST_LN.name}+RAdam": {**POST, **RADAM},
        PRE_LN.name: PRE,
        f"{PRE_LN.name}+gpt2": PRE_GPT2,
    }


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: (recipe, depth, lr)."""
    return {(name, n, lr): per_seed("train", scale.seeds, recipe, n_layers(n), optim_lr(lr))
            for name, recipe in recipes(scale).items() for n in p.depths for lr in p.lrs}


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds = ctx.scale, ctx.seeds()
    lrs, depths, named = list(ctx.params.lrs), list(ctx.params.depths), list(recipes(scale))
    runs = {(name, n, lr, s): run for name in named for n in depths for lr in lrs
            for s, run in zip(seeds, ctx[name, n, lr])}
    conv = {k: ctx.converged(r) for k, r in runs.items()}
    index = {(name, n, s): largest_index([conv[name, n, lr, s] for lr in lrs])
             for name in named for n in depths for s in seeds}

    def widening(a: str, b: str, seed: int) -> float | None:
        diffs = [difference(index[a, n, seed], index[b, n, seed]) for n in depths]
        return None if any(d is None for d in diffs) else sum(diffs) / len(diffs)

    def depth_cost(name: str, seed: int) -> float | None:
        return difference(index[name, max(depths), seed], index[name, min(depths), seed])

    def depth_gap(seed: int) -> float | None:
        return difference(depth_cost(PRE_LN.name, seed), depth_cost("post+warm-up", seed))

    verdicts = [
        WARMUP_WIDENS.test([widening("post+warm-up", POST_LN.name, s) for s in seeds], seeds),
        RADAM_WIDENS.test([widening("post+RAdam", POST_LN.name, s) for s in seeds], seeds),
        PRE_WIDER.test([widening(PRE_LN.name, POST_LN.name, s) for s in seeds], seeds),
        DEPTH_NARROWS.format(low=min(depths), high=max(depths)).test([depth_gap(s) for s in seeds], seeds),
    ]
    ratio = lrs[1] / lrs[0] if len(lrs) > 1 else 1
    definitions = [
        common.converge_definition(ctx),
        "**largest stable lr**: the largest learning rate of the grid " + ", ".join(f"{lr:g}" for lr in lrs)
        + f" (one grid step = ×{ratio:.3g}) at which the run converges; \"none\" (one step below the "
        "grid) if none does. Measured per layout, depth and seed.",
        "Layouts: post = Post-LN, Adam, no warm-up; post+warm-up = the same with a "
        f"{scale.warmup}-step linear warm-up; post+RAdam = RAdam, no warm-up; pre = Pre-LN, Adam, no "
        "warm-up; pre+gpt2 = Pre-LN with GPT-2's init and 1/√N residual scaling, no warm-up (shown for "
        f"comparison; no claim is tested on it). Depths {', '.join(map(str, depths))}, "
        f"{scale.train['train']['steps']} steps, linear decay.",
        "Thresholds: a layout is \"wider\" when its largest stable lr is higher by more than 0 grid "
        "steps on average over the depths, for that seed.",
    ]

    def heatmaps(plt: Any):
        fig, axes = plt.subplots(1, len(named), figsize=(3.3 * len(named), 3.2), squeeze=False, sharey=True)
        image = None
        for ax, name in zip(axes[0], named):
            grid = []
            for n in depths:
                row = []
                for lr in lrs:
                    losses = [final_loss(runs[name, n, lr, s]) for s in seeds]
                    finite = [v for v in losses if v is not None and math.isfinite(v)]
                    row.append(min(sum(finite) / len(finite), ctx.baseline()) if finite else ctx.baseline())
                grid.append(row)
            image = ax.imshow(grid, origin="lower", cmap="viridis_r", aspect="auto",
                              vmin=ctx.baseline() - 1.0, vmax=ctx.baseline())
            for y, n in enumerate(depths):
                for x, lr in enumerate(lrs):
                    flags = [conv[name, n, lr, s] for s in seeds]
                    ax.text(x, y, f"{sum(f is True for f in flags)}/{len(flags)}", ha="center", va="center",
                            color="white" if sum(f is True for f in flags) else "black", fontsize=8)
            ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], rotation=45)
            ax.set_yticks(range(len(depths)), [str(n) for n in depths])
            ax.set_title(name)
            ax.set_xlabel("learning rate")
        axes[0][0].set_ylabel("depth")
        if image is not None:
            fig.colorbar(image, ax=axes[0].tolist(), label="mean final val loss (clipped at baseline)")
        return fig

    def lines(plt: Any):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        largest_lr_panel(ax, lrs, depths, {name: [[index[name, n, s] for n in depths] for s in seeds]
                                           for name in named}, "largest learning rate that converges")
        fig.tight_layout()
        return fig

    rows = []
    for name in named:
        for n in depths:
            per_seed = [index[name, n, s] for s in seeds]
            rows.append([name, n, ", ".join("–" if i is None else ("none" if i < 0 else f"{lrs[i]:g}")
                                            for i in per_seed),
                         " ".join(f"{lr:g}: {mean_pm([final_loss(runs[name, n, lr, s]) for s in seeds])}"
                                  for lr in lrs)])
    table = md_table(["layout", "depth", "largest stable lr (per seed)", "final val loss by lr"], rows)
    return Analysis(verdicts, definitions, [
        Figure("stability_map.png", "Phase diagram: mean final validation loss by learning rate and depth "
               "for each layout; the numbers are the fraction of seeds that converge", heatmaps),
        Figure("largest_stable_lr.png", "Largest learning rate that converges, by depth, one line per "
               "layout and seed", lines),
    ], [table])


SUITE = Suite("stability-map", "The largest stable learning rate by layout and depth",
                       "A phase diagram generalising Xiong et al. 2020, Liu et al. 2019 and Wang et al. 2019",
                       PARAMS, grid, analyse)
