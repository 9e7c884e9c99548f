"""`xiong2020-warmup`: Xiong et al. 2020's Figure 2: Post-LN without warm-up ends worse than with it,
and Pre-LN without warm-up does as well, at learning rates where Post-LN is fragile."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lnexp.core.layouts import POST as POST_LN
from lnexp.core.layouts import PRE as PRE_LN
from lnexp.core.status import Status
from lnexp.experiments.reproduce.engine import Grid, Scale, SuiteRuns, per_seed
from lnexp.experiments.reproduce.measure import difference, final_loss
from lnexp.experiments.reproduce.report import Analysis, Figure
from lnexp.experiments.reproduce.suites import common
from lnexp.experiments.reproduce.suites.common import MARGIN_LOSS, POST, PRE, Suite, optim_lr, warmup_steps
from lnexp.experiments.reproduce.verdicts import GREATER, LESS, Claim
from lnexp.run.reader import Run


@dataclass(frozen=True)
class Params:
    lrs: tuple[float, ...]  # each with and without warm-up (radam trains the same Post-LN cells)


# Tiny models tolerate larger learning rates: the grid is shifted up to where the failure can appear.
PARAMS = {"tiny": Params((3e-3, 1e-2)), "cpu": Params((1e-3, 3e-3)), "small": Params((5e-4, 1e-3))}
WARM = f"{POST_LN.name}+warm-up"
MARGIN = f"lnexp's choice: {MARGIN_LOSS:g} nats (common.MARGIN_LOSS)"
WORSE = Claim("Post-LN without warm-up ends worse than with warm-up (lr {lr:g})",
              "final val loss: Post-LN no warm-up − Post-LN warm-up (nats)", GREATER, MARGIN_LOSS, MARGIN)
AS_WELL = Claim("Pre-LN without warm-up does as well as Post-LN with warm-up (lr {lr:g})",
                "final val loss: Pre-LN no warm-up − Post-LN warm-up (nats)", LESS, MARGIN_LOSS, MARGIN)
AHEAD = Claim("Pre-LN without warm-up is ahead early (lr {lr:g})",
              "val loss at step {early}: Pre-LN no warm-up − Post-LN warm-up (nats)", LESS, 0.0,
              "lnexp's choice: any lead")


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: (setting, lr), setting one of post, post+warm-up, pre."""
    settings = {POST_LN.name: POST, WARM: {**POST, **warmup_steps(scale)}, PRE_LN.name: PRE}
    return {(name, lr): per_seed("train", scale.seeds, setting, optim_lr(lr))
            for lr in p.lrs for name, setting in settings.items()}


def _val_at(run: Run | None, step: int) -> float | None:
    if run is None:
        return None
    for m in run.metrics:
        if m["step"] == step and m.get("val_loss") is not None:
            return float(m["val_loss"])
    return math.inf if run.status == Status.DIVERGED else None


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds = ctx.scale, ctx.seeds()
    early = scale.train["train"]["eval_every"]
    verdicts, panels, rows = [], [], []
    for lr in ctx.params.lrs:
        post, warm, pre = (ctx[name, lr] for name in (POST_LN.name, WARM, PRE_LN.name))
        loss = {k: [final_loss(r) for r in v]
                for k, v in ((POST_LN.name, post), ("warm", warm), (PRE_LN.name, pre))}
        verdicts += [
            WORSE.format(lr=lr).test([difference(a, b) for a, b in zip(loss[POST_LN.name], loss["warm"])],
                                     seeds),
            AS_WELL.format(lr=lr).test([difference(a, b) for a, b in zip(loss[PRE_LN.name], loss["warm"])],
                                       seeds),
            AHEAD.format(lr=lr, early=early).test(
                [difference(_val_at(a, early), _val_at(b, early)) for a, b in zip(pre, warm)], seeds),
        ]
        settings = [("Post-LN, no warm-up", post), (f"Post-LN, warm-up {scale.warmup}", warm),
                    ("Pre-LN, no warm-up", pre)]
        panels.append((f"lr {lr:g}", settings))
        rows += [([label, f"{lr:g}"], runs) for label, runs in settings]
    definitions = [
        common.loss_definition(), common.converge_definition(ctx),
        f"Settings: Adam β = (0.9, 0.98), {scale.train['train']['steps']} steps, linear decay to 0 "
        f"after a linear warm-up of {scale.warmup} steps (or none), learning rates "
        + ", ".join(f"{lr:g}" for lr in ctx.params.lrs) + " (the paper used 5e-4 and 1e-3 with 4000 "
        "warm-up steps on a 6-6 encoder-decoder; the tiny model tolerates larger learning rates, so the "
        "grid is shifted up to where the failure can appear).",
        f"\"Ahead early\": validation loss at step {early} (the end of the warm-up), lower for Pre-LN.",
    ]
    return Analysis(verdicts, definitions, [
        Figure("loss_curves.png", "Figure 2 analogue: training loss (running mean over 10 steps, averaged "
               "over seeds) and validation loss (dots)", common.curves_figure(ctx, panels))],
        [common.settings_table(ctx, rows, ["setting", "lr"])])


SUITE = Suite("xiong2020-warmup", "Post-LN needs warm-up; Pre-LN does not",
                       "Xiong et al. 2020, Figure 2 / Section 3", PARAMS, grid, analyse)
