"""`radam`: Liu et al. 2019: RAdam's rectified early steps do the work of warm-up for Post-LN."""

from __future__ import annotations

from dataclasses import dataclass

from lnexp.experiments.reproduce.engine import Grid, Scale, SuiteRuns, per_seed
from lnexp.experiments.reproduce.measure import difference, final_loss
from lnexp.experiments.reproduce.report import Analysis, Figure
from lnexp.experiments.reproduce.suites import common, xiong_warmup
from lnexp.experiments.reproduce.suites.common import MARGIN_LOSS, POST, RADAM, Suite, optim_lr, warmup_steps
from lnexp.experiments.reproduce.verdicts import GREATER, LESS, Claim


@dataclass(frozen=True)
class Params:
    lrs: tuple[float, ...]


# xiong2020-warmup's learning rates: its Post-LN cells, with and without warm-up, are these Adam cells.
PARAMS = {name: Params(p.lrs) for name, p in xiong_warmup.PARAMS.items()}
BETTER = Claim("Post-LN without warm-up: RAdam ends better than Adam (lr {lr:g})",
               "final val loss: Adam − RAdam (nats)", GREATER, MARGIN_LOSS, xiong_warmup.MARGIN)
AS_WELL = Claim("RAdam without warm-up does as well as Adam with warm-up (lr {lr:g})",
                "final val loss: RAdam no warm-up − Adam warm-up (nats)", LESS, MARGIN_LOSS,
                xiong_warmup.MARGIN)


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: (optimiser, lr), optimiser one of adam, radam, adam+warm-up; all Post-LN."""
    settings = {"adam": POST, "radam": {**POST, **RADAM}, "adam+warm-up": {**POST, **warmup_steps(scale)}}
    return {(name, lr): per_seed("train", scale.seeds, setting, optim_lr(lr))
            for lr in p.lrs for name, setting in settings.items()}


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds = ctx.scale, ctx.seeds()
    verdicts, panels, rows = [], [], []
    for lr in ctx.params.lrs:
        adam, rad, warm = (ctx[name, lr] for name in ("adam", "radam", "adam+warm-up"))
        la, lr_, lw = ([final_loss(r) for r in runs] for runs in (adam, rad, warm))
        verdicts += [
            BETTER.format(lr=lr).test([difference(a, b) for a, b in zip(la, lr_)], seeds),
            AS_WELL.format(lr=lr).test([difference(a, b) for a, b in zip(lr_, lw)], seeds),
        ]
        settings = [("Adam, no warm-up", adam), ("RAdam, no warm-up", rad),
                    (f"Adam, warm-up {scale.warmup}", warm)]
        panels.append((f"Post-LN, lr {lr:g}", settings))
        rows += [([label, f"{lr:g}"], runs) for label, runs in settings]
    beta2 = scale.train["optim"]["betas"][1]
    definitions = [
        common.loss_definition(), common.converge_definition(ctx),
        f"All runs Post-LN, β = (0.9, {beta2:g}), {scale.train['train']['steps']} steps, linear decay. "
        f"`torch.optim.RAdam` takes SGD-with-momentum steps while ρ_t ≤ 5; its implicit warm-up is about "
        f"2/(1 − β2) = {2 / (1 - beta2):.0f} steps (Ma & Yarats 2019), to compare with the explicit "
        f"{scale.warmup}-step warm-up.",
    ]
    return Analysis(verdicts, definitions, [
        Figure("loss_curves.png", "Post-LN without warm-up: Adam against RAdam, and Adam with warm-up",
               common.curves_figure(ctx, panels))],
        [common.settings_table(ctx, rows, ["optimiser", "lr"])])


SUITE = Suite(
    "radam", "RAdam removes Post-LN's need for warm-up",
    "Liu et al. 2019, On the Variance of the Adaptive Learning Rate and Beyond; Xiong et al. 2020 §4.2",
    PARAMS, grid, analyse)
