"""`stability-map`: how sensitive each layout and recipe is to the learning rate, by depth: Wortsman et
al. 2023's learning-rate sensitivity over a log grid of learning rates, a phase diagram generalising
Xiong et al. 2020 (warm-up), Liu et al. 2019 (RAdam) and Wang et al. 2019 (depth)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from lnexp.core.layouts import POST as POST_LN
from lnexp.core.layouts import PRE as PRE_LN
from lnexp.experiments.reproduce.engine import Grid, Scale, SuiteRuns, per_seed
from lnexp.experiments.reproduce.measure import TRAINING, difference, lr_sensitivity, seedwise
from lnexp.experiments.reproduce.report import Analysis, Figure, md_table, mean_pm
from lnexp.experiments.reproduce.suites import common
from lnexp.experiments.reproduce.suites.common import (
    CAPPED,
    MARGIN_LOSS,
    POST,
    PRE,
    RADAM,
    Suite,
    below_line,
    capped,
    n_layers,
    optim_lr,
    outcomes,
    warmup_steps,
)
from lnexp.experiments.reproduce.verdicts import GREATER, GRID_EDGE, Claim, Precondition, premise
from lnexp.experiments.stability import largest_index, largest_lr_panel


@dataclass(frozen=True)
class Params:
    depths: tuple[int, ...]
    lrs: tuple[float, ...]  # the grid, in order, about √10 apart (the layouts suite's too)


# Half-decade grids (×3 and ×3.33 alternately, as Wortsman et al.'s 3e-4 … 3e-1) from where every recipe
# trains to where the most tolerant fails. Measured at tiny (seed 0): Post-LN without warm-up stuck from
# 1e-2 (L 6) and 3e-2 (L 3), with warm-up or RAdam at 1e-1, Pre-LN (L 3 and 6) trains at 1e-1 and ends
# above the convergence line at 3e-1. Not yet measured at cpu and small.
PARAMS = {"tiny": Params((3, 6), (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)),
          "cpu": Params((3, 6), (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
          "small": Params((6, 12, 24), (1e-4, 3e-4, 1e-3, 3e-3, 1e-2))}
SENSITIVITY = "learning-rate sensitivity"
WORTSMAN = (f"lnexp's choice: {MARGIN_LOSS:g} nats, the loss margin (a sensitivity is a mean loss gap; "
            "Wortsman et al. 2023 give no threshold)")
LESS_SENSITIVE = "{sensitivity}, {a} minus {b}, mean over depths {depths} (nats)"
WARMUP_STEADIES = Claim("Warm-up makes Post-LN less sensitive to the learning rate", LESS_SENSITIVE,
                        GREATER, MARGIN_LOSS, WORTSMAN)
RADAM_STEADIES = Claim("RAdam (no warm-up) makes Post-LN less sensitive to the learning rate", LESS_SENSITIVE,
                       GREATER, MARGIN_LOSS, WORTSMAN)
PRE_STEADIER = Claim("Pre-LN is less sensitive to the learning rate than Post-LN (both without warm-up)",
                     LESS_SENSITIVE, GREATER, MARGIN_LOSS, WORTSMAN)
DEPTH_UNSTEADIES = Claim(
    "Depth makes Post-LN more sensitive to the learning rate than Pre-LN (both without warm-up)",
    "change of the {sensitivity} from L = {low} to L = {high}: Post-LN minus Pre-LN (nats)", GREATER,
    MARGIN_LOSS, WORTSMAN)
WARM, WITH_RADAM = f"{POST_LN.name}+warm-up", f"{POST_LN.name}+RAdam"


def recipes(scale: Scale) -> dict[str, dict[str, Any]]:
    """The four training recipes of the map, as overrides of the training base."""
    return {POST_LN.name: POST, WARM: {**POST, **warmup_steps(scale)}, WITH_RADAM: {**POST, **RADAM},
            PRE_LN.name: PRE}


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: (recipe, depth, lr)."""
    return {(name, n, lr): per_seed("train", scale.seeds, recipe, n_layers(n), optim_lr(lr))
            for name, recipe in recipes(scale).items() for n in p.depths for lr in p.lrs}


def sensitivities(ctx: SuiteRuns, keys: Sequence[Any]) -> list[float | None]:
    """Per seed, the learning-rate sensitivity over the cells `keys` (one per learning rate of the
    grid, in order): the mean of [capped final loss − the best over the grid] (measure.lr_sensitivity)."""
    return seedwise(lambda *losses: lr_sensitivity(losses), *(capped(ctx[key]) for key in keys))


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds = ctx.scale, ctx.seeds()
    lrs, depths, named = list(ctx.params.lrs), list(ctx.params.depths), list(recipes(scale))
    post, pre = POST_LN.name, PRE_LN.name
    sens = {(name, n): sensitivities(ctx, [(name, n, lr) for lr in lrs]) for name in named for n in depths}

    def mean_over_depths(name: str) -> list[float | None]:
        return seedwise(lambda *xs: sum(xs) / len(xs), *(sens[name, n] for n in depths))

    def steadier(a: str, b: str) -> list[float | None]:
        return seedwise(difference, mean_over_depths(a), mean_over_depths(b))

    low, high = min(depths), max(depths)
    depth_cost = {name: seedwise(difference, sens[name, high], sens[name, low]) for name in (post, pre)}
    # Post-LN must fail at the grid's largest lr, at every depth: else the grid stops short of its
    # instability, and no recipe can show how much steadier it is there
    reaches = premise(
        f"Post-LN (no warm-up) fails at the grid's largest learning rate ({lrs[-1]:g}) at every depth",
        f"Post-LN (no warm-up) trains at the grid's largest learning rate ({lrs[-1]:g}): the grid stops "
        "short of its instability",
        f"smallest over depths of [{CAPPED} − convergence line], Post-LN, lr {lrs[-1]:g}",
        seedwise(lambda *xs: min(xs), *(below_line(ctx, (post, n, lrs[-1])) for n in depths)),
        GREATER, 0.0)
    edge: Precondition = replace(reaches, outcome=GRID_EDGE)
    fields = {"sensitivity": SENSITIVITY, "depths": "{" + ", ".join(map(str, depths)) + "}"}
    verdicts = [
        WARMUP_STEADIES.format(a=post, b=WARM, **fields).test(steadier(post, WARM), seeds, [edge]),
        RADAM_STEADIES.format(a=post, b=WITH_RADAM, **fields).test(steadier(post, WITH_RADAM), seeds, [edge]),
        PRE_STEADIER.format(a=post, b=pre, **fields).test(steadier(post, pre), seeds, [edge]),
        DEPTH_UNSTEADIES.format(low=low, high=high, **fields).test(
            seedwise(difference, depth_cost[post], depth_cost[pre]), seeds, [edge]),
    ]
    ratio = lrs[1] / lrs[0] if len(lrs) > 1 else 1
    definitions = [
        common.loss_definition(), common.converge_definition(ctx),
        f"**{SENSITIVITY}** (Wortsman et al. 2023, *Small-scale proxies for large-scale Transformer training "
        "instabilities*): over the log grid of learning rates " + ", ".join(f"{lr:g}" for lr in lrs)
        + f" (about ×{math.sqrt(10):.3g} apart), the mean of [min(final loss, loss at init) − the best "
        "final loss over the grid], per recipe, depth and seed. A recipe that trains as well at every "
        "learning rate has 0; every learning rate where it diverges or sticks at the unigram baseline adds "
        f"its gap. Its smallest effect: {MARGIN_LOSS:g} nats, the loss margin of the other suites.",
        "Recipes: post = Post-LN, Adam, no warm-up; post+warm-up = the same with a "
        f"{scale.warmup}-step linear warm-up; post+RAdam = RAdam, no warm-up; pre = Pre-LN, Adam, no "
        f"warm-up. Depths {', '.join(map(str, depths))}, {scale.train['train']['steps']} steps, linear "
        "decay.",
        "Precondition (a grid edge otherwise): Post-LN without warm-up fails at the grid's largest learning "
        "rate at every depth, so that the grid reaches its instability. The largest learning rate that "
        f"converges (one grid step = ×{ratio:.3g}) is drawn as a figure only: no claim rests on it.",
    ]

    def heatmaps(plt: Any):
        fig, axes = plt.subplots(1, len(named), figsize=(3.3 * len(named), 3.2), squeeze=False, sharey=True)
        image = None
        for ax, name in zip(axes[0], named):
            cells = [[mean_or(capped(ctx[name, n, lr]), ctx.baseline()) for lr in lrs] for n in depths]
            image = ax.imshow(cells, origin="lower", cmap="viridis_r", aspect="auto",
                              vmin=ctx.baseline() - 1.0, vmax=ctx.baseline())
            for y, n in enumerate(depths):
                for x, lr in enumerate(lrs):
                    trained = sum(o == TRAINING for o in outcomes(ctx, ctx[name, n, lr]))
                    ax.text(x, y, f"{trained}/{len(seeds)}", ha="center", va="center",
                            color="white" if trained else "black", fontsize=8)
            ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], rotation=45)
            ax.set_yticks(range(len(depths)), [str(n) for n in depths])
            ax.set_title(name)
            ax.set_xlabel("learning rate")
        axes[0][0].set_ylabel("depth")
        if image is not None:
            fig.colorbar(image, ax=axes[0].tolist(), label=f"mean {CAPPED} (clipped at the baseline)")
        return fig

    def lines(plt: Any):
        index = {name: [[largest_index(flags) for flags in zip(
            *([o == TRAINING if o else None for o in outcomes(ctx, ctx[name, n, lr])] for lr in lrs))]
            for n in depths] for name in named}
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        largest_lr_panel(ax, lrs, depths, {name: [list(per_seed) for per_seed in zip(*index[name])]
                                           for name in named}, "largest learning rate that converges")
        fig.tight_layout()
        return fig

    rows = [[name, n, ", ".join("–" if v is None else f"{v:.3f}" for v in sens[name, n]),
             " ".join(f"{lr:g}: {mean_pm(capped(ctx[name, n, lr]))}" for lr in lrs)]
            for name in named for n in depths]
    table = md_table(["recipe", "depth", f"{SENSITIVITY} (per seed)", f"{CAPPED} by lr"], rows)
    return Analysis(verdicts, definitions, [
        Figure("stability_map.png", f"Phase diagram: mean {CAPPED} by learning rate and depth for each "
               "recipe; the numbers are the fraction of seeds that converge", heatmaps),
        Figure("largest_stable_lr.png", "Largest learning rate that converges, by depth, one line per "
               "recipe and seed (a figure: the claims rest on the sensitivity)", lines),
    ], [table])


def mean_or(values: Sequence[float | None], ceiling: float) -> float:
    """The mean of the values, clipped at `ceiling` (the ceiling where there are none)."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    return min(sum(xs) / len(xs), ceiling) if xs else ceiling


SUITE = Suite("stability-map", "Learning-rate sensitivity by layout, recipe and depth",
              "Wortsman et al. 2023's learning-rate sensitivity; a phase diagram generalising Xiong et al. "
              "2020, Liu et al. 2019 and Wang et al. 2019", PARAMS, grid, analyse)
