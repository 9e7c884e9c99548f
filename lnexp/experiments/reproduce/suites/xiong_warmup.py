"""`xiong2020-warmup`: Xiong et al. 2020's Figure 2: Post-LN needs warm-up at learning rates where it is
fragile, Pre-LN does not, and Pre-LN without warm-up gets ahead sooner.

Four cells per learning rate (Post-LN and Pre-LN, each with and without warm-up), so that "Pre-LN does
not need warm-up" is tested as an interaction (warm-up's gain for Post-LN minus its gain for Pre-LN),
and "ahead early" both as the paper has it (Pre-LN without warm-up against Post-LN with it) and at
matched learning rates (both with warm-up: the same cumulative learning rate at every step)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lnexp.core.layouts import POST as POST_LN
from lnexp.core.layouts import PRE as PRE_LN
from lnexp.core.stats import usable
from lnexp.experiments.reproduce.engine import Grid, Scale, SuiteRuns, per_seed
from lnexp.experiments.reproduce.measure import difference, seedwise, steps_below
from lnexp.experiments.reproduce.report import Analysis, Figure, num
from lnexp.experiments.reproduce.suites import common
from lnexp.experiments.reproduce.suites.common import (
    CAPPED,
    MARGIN,
    MARGIN_LOSS,
    POST,
    PRE,
    Suite,
    capped,
    converges,
    fails,
    optim_lr,
    warmup_steps,
)
from lnexp.experiments.reproduce.verdicts import GREATER, LESS, Claim, Precondition
from lnexp.run.reader import Run


@dataclass(frozen=True)
class Params:
    lrs: tuple[float, ...]  # each with and without warm-up (radam trains the same Post-LN cells)


# Tiny models tolerate larger learning rates: the grid is shifted up to where the failure can appear.
PARAMS = {"tiny": Params((3e-3, 1e-2)), "cpu": Params((1e-3, 3e-3)), "small": Params((5e-4, 1e-3))}
WARM = f"{POST_LN.name}+warm-up"
PRE_WARM = f"{PRE_LN.name}+warm-up"
SETTINGS = {POST_LN.name: "Post-LN, no warm-up", WARM: "Post-LN, warm-up", PRE_LN.name: "Pre-LN, no warm-up",
            PRE_WARM: "Pre-LN, warm-up"}  # grid key -> label
ANY_LEAD = "lnexp's choice: any lead (every step's training loss is logged: one step is the resolution)"

RESCUES = Claim("Warm-up rescues Post-LN (lr {lr:g})",
                f"{CAPPED}: Post-LN no warm-up − Post-LN warm-up (nats)", GREATER, MARGIN_LOSS, MARGIN)
INTERACTION = Claim(
    "Warm-up helps Post-LN more than Pre-LN: Pre-LN does not need it (lr {lr:g})",
    f"warm-up's gain for Post-LN − its gain for Pre-LN (gain: {CAPPED} without − with warm-up, nats)",
    GREATER, MARGIN_LOSS, MARGIN)
AS_WELL = Claim("Pre-LN without warm-up ends no worse than Post-LN with warm-up (lr {lr:g})",
                f"{CAPPED}: Pre-LN no warm-up − Post-LN warm-up (nats)", LESS, MARGIN_LOSS,
                f"{MARGIN}, a non-inferiority margin")
AHEAD = Claim("Pre-LN without warm-up gets ahead sooner than Post-LN with warm-up (lr {lr:g})",
              "steps until the training loss is below {line}: Post-LN warm-up − Pre-LN no warm-up", GREATER,
              0.0, ANY_LEAD)
AHEAD_MATCHED = Claim(
    "Pre-LN gets ahead sooner than Post-LN at matched learning rates: both with warm-up (lr {lr:g})",
    "steps until the training loss is below {line}: Post-LN warm-up − Pre-LN warm-up", GREATER, 0.0, ANY_LEAD)


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: (setting, lr), setting one of post, post+warm-up, pre, pre+warm-up."""
    warm = warmup_steps(scale)
    settings = {POST_LN.name: POST, WARM: {**POST, **warm}, PRE_LN.name: PRE, PRE_WARM: {**PRE, **warm}}
    return {(name, lr): per_seed("train", scale.seeds, setting, optim_lr(lr))
            for lr in p.lrs for name, setting in settings.items()}


def gain(without: float | None, with_: float | None) -> float | None:
    """Warm-up's gain on one seed: the capped final loss without warm-up minus with it."""
    return difference(without, with_)


def interaction(post: float | None, post_warm: float | None, pre: float | None,
                pre_warm: float | None) -> float | None:
    """Warm-up's gain for Post-LN minus its gain for Pre-LN, on one seed."""
    return difference(gain(post, post_warm), gain(pre, pre_warm))


def line_of(runs: Sequence[Run | None], margin: float) -> float | None:
    """The training-loss line of "ahead": the training bytes' unigram entropy (a context-blind model's
    training loss; summary.json) minus the scale's margin: the convergence line, on the training loss."""
    entropy = next((r.summary.get("unigram_entropy") for r in runs if r is not None
                    and usable(r.summary.get("unigram_entropy"))), None)
    return None if entropy is None else float(entropy) - margin


def steps_to(runs: Sequence[Run | None], line: float | None) -> list[float | None]:
    return [None if line is None else steps_below(r, line) for r in runs]


def reach_line(later: Sequence[float | None], sooner: Sequence[float | None], steps: int,
               what: str) -> Precondition:
    """A lead needs one of the two arms to reach the line: a seed on which neither does within `steps`
    (both censored at `steps`) has no lead to measure, only a 0 that would read as "no lead"."""
    pairs = list(zip(later, sooner))
    neither = [i for i, (a, b) in enumerate(pairs) if a is not None and b is not None and min(a, b) >= steps]
    holds = False if neither else None if any(a is None or b is None for a, b in pairs) else True
    return Precondition(f"{what} reach the training-loss line", f"neither of {what} reaches the line within "
                        f"{steps} steps on {len(neither)} of {len(pairs)} seed(s): no lead to measure", holds,
                        "steps to the line: " + "; ".join(f"{a} and {b}" for a, b in pairs))


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds = ctx.scale, ctx.seeds()
    runs = {(name, lr): ctx[name, lr] for name in SETTINGS for lr in ctx.params.lrs}
    line = line_of([r for rs in runs.values() for r in rs], scale.margin)
    line_text = f"the unigram entropy − {scale.margin:g}" + ("" if line is None else f" = {line:.3f} nats")
    verdicts, panels, rows = [], [], []
    total = scale.train["train"]["steps"]
    for lr in ctx.params.lrs:
        loss = {name: capped(runs[name, lr]) for name in SETTINGS}
        steps = {name: steps_to(runs[name, lr], line) for name in SETTINGS}
        post_fails = fails(ctx, (POST_LN.name, lr), f"Post-LN without warm-up at lr {lr:g}")
        warm_converges = converges(ctx, (WARM, lr), f"Post-LN with warm-up at lr {lr:g}")
        ahead = {"lr": lr, "line": line_text}
        verdicts += [
            RESCUES.format(lr=lr).test(seedwise(gain, loss[POST_LN.name], loss[WARM]), seeds, [post_fails]),
            INTERACTION.format(lr=lr).test(
                seedwise(interaction, loss[POST_LN.name], loss[WARM], loss[PRE_LN.name], loss[PRE_WARM]),
                seeds, [post_fails, warm_converges]),
            AS_WELL.format(lr=lr).test(seedwise(difference, loss[PRE_LN.name], loss[WARM]), seeds,
                                       [warm_converges]),
            *(claim.format(**ahead).test(seedwise(difference, steps[WARM], steps[other]), seeds,
                                         [reach_line(steps[WARM], steps[other], total, "the two arms")])
              for claim, other in ((AHEAD, PRE_LN.name), (AHEAD_MATCHED, PRE_WARM))),
        ]
        panels.append((f"lr {lr:g}", [(label, runs[name, lr]) for name, label in SETTINGS.items()]))
        rows += [([label, f"{lr:g}", ", ".join(num(s) for s in steps[name])], runs[name, lr])
                 for name, label in SETTINGS.items()]
    definitions = [
        common.loss_definition(), common.converge_definition(ctx),
        f"Settings: Adam β = (0.9, 0.98), {scale.train['train']['steps']} steps, linear decay to 0 "
        f"after a linear warm-up of {scale.warmup} steps (or none), learning rates "
        + ", ".join(f"{lr:g}" for lr in ctx.params.lrs) + " (the paper used 5e-4 and 1e-3 with 4000 "
        "warm-up steps on a 6-6 encoder-decoder; the tiny model tolerates larger learning rates, so the "
        "grid is shifted up to where the failure can appear).",
        "Preconditions: the rescue and the interaction need Post-LN without warm-up to fail at that "
        "learning rate (else there is nothing to rescue: *not applicable*, with the numbers); the "
        "interaction and the non-inferiority row need Post-LN with warm-up to converge (the arm they "
        "measure against).",
        f"\"Ahead\": the first logged step at which the training loss is below {line_text}: the training "
        "bytes' unigram entropy (the training loss of a model that ignores context, summary.json) minus "
        f"the scale's margin, i.e. the convergence line on the training loss (lnexp's choice: the point "
        f"where a run starts to use context). Every step's training loss is logged; a run that never "
        f"gets there counts as {scale.train['train']['steps']} (a lower bound). Without warm-up Pre-LN "
        "takes larger steps early (over the first warm-up steps about twice the cumulative learning "
        "rate), so the second row compares Pre-LN and Post-LN under the same warm-up: the same cumulative "
        "learning rate at every step.",
    ]
    return Analysis(verdicts, definitions, [
        Figure("loss_curves.png", "Figure 2 analogue: training loss (running mean over 10 steps, averaged "
               "over seeds) and validation loss (dots)", common.curves_figure(ctx, panels))],
        [common.settings_table(ctx, rows, ["setting", "lr", "steps to the line (per seed)"])])


SUITE = Suite("xiong2020-warmup", "Post-LN needs warm-up; Pre-LN does not",
              "Xiong et al. 2020, Figure 2 / Section 3", PARAMS, grid, analyse)
