"""`radam`: Liu et al. 2019: RAdam's rectified early steps do the work of warm-up for Post-LN.

Four Post-LN arms per learning rate, so that "RAdam removes the need for warm-up" is told apart from
"RAdam takes smaller steps": Adam and RAdam without warm-up; Adam with a linear warm-up over 2/(1 − β2)
steps, which Ma & Yarats 2019 report to match RAdam; and Adam without warm-up at RAdam's mean effective
learning rate (the same mean step size as RAdam, spread evenly instead of held back early)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lnexp.experiments.reproduce.engine import Grid, Scale, Spec, SuiteRuns, cell_config, per_seed
from lnexp.experiments.reproduce.measure import difference, seedwise
from lnexp.experiments.reproduce.report import Analysis, Figure
from lnexp.experiments.reproduce.suites import common, xiong_warmup
from lnexp.experiments.reproduce.suites.common import (
    CAPPED,
    MARGIN,
    MARGIN_LOSS,
    POST,
    RADAM,
    Suite,
    capped,
    converges,
    fails,
    optim_lr,
)
from lnexp.experiments.reproduce.verdicts import GREATER, LESS, Claim


@dataclass(frozen=True)
class Params:
    lrs: tuple[float, ...]


# xiong2020-warmup's learning rates: its Post-LN cells without warm-up are the Adam arm here.
PARAMS = {name: Params(p.lrs) for name, p in xiong_warmup.PARAMS.items()}
ADAM, RADAM_ARM, WARM, MATCHED = "adam", "radam", "adam+warm-up", "adam at radam's mean lr"  # grid keys

RESCUES = Claim("RAdam rescues Post-LN without warm-up (lr {lr:g})",
                f"{CAPPED}: Adam − RAdam, both without warm-up (nats)", GREATER, MARGIN_LOSS, MARGIN)
AS_WELL = Claim(
    "RAdam without warm-up ends no worse than Adam with a 2/(1 − β2) = {warmup}-step warm-up (lr {lr:g})",
    f"{CAPPED}: RAdam − Adam with warm-up (nats)", LESS, MARGIN_LOSS,
    f"{MARGIN}, a non-inferiority margin (Ma & Yarats 2019 find the two on par)")
NOT_SMALLER = Claim(
    "RAdam does more than take smaller steps: it ends better than Adam at its mean effective learning "
    "rate (lr {lr:g}; Adam at {matched:g})",
    f"{CAPPED}: Adam at RAdam's mean effective lr − RAdam, both without warm-up (nats)", GREATER,
    MARGIN_LOSS, MARGIN)


def ma_yarats_warmup(scale: Scale) -> int:
    """2/(1 − β2) steps, β2 of the scale's optimiser: Ma & Yarats 2019's warm-up that matches RAdam (at
    most the run's length)."""
    config = cell_config(scale, Spec("train", (), 0))
    return min(round(2 / (1 - config.optim.betas[1])), config.train.steps)


def rectification(step: int, beta2: float) -> float:
    """torch.optim.RAdam's step size relative to Adam's at update `step` (0-based): the rectifier
    r_t = √((ρ_t − 4)(ρ_t − 2)ρ_∞ / ((ρ_∞ − 4)(ρ_∞ − 2)ρ_t)) once ρ_t > 5. Before that RAdam takes
    SGD-with-momentum steps, lr · m̂_t without Adam's division by √v̂_t: relative to an Adam step that is
    the gradient's size per weight (about 1e-2 here), counted as 0."""
    from lnexp.run.probes import radam_rho  # the trainer's own ρ_t (it logs it); lnexp.run imports torch

    rho, rho_inf = radam_rho(step, beta2), 2 / (1 - beta2) - 1
    if rho <= 5:
        return 0.0
    return math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))


def mean_lr_factors(scale: Scale, overrides: dict[str, Any]) -> tuple[float, float]:
    """The schedule's mean learning-rate factor over the run, for the Post-LN cell with `overrides`,
    and the same weighted by RAdam's rectification (what RAdam's steps amount to, relative to Adam's)."""
    from lnexp.run.train import lr_factor  # the trainer's own schedule

    config = cell_config(scale, Spec.of("train", 0, POST, overrides))
    steps, beta2 = config.train.steps, config.optim.betas[1]
    factors = [lr_factor(config, t) for t in range(steps)]
    return sum(factors) / steps, sum(f * rectification(t, beta2) for t, f in enumerate(factors)) / steps


def matched_lr(scale: Scale, lr: float) -> float:
    """Adam's learning rate (no warm-up, the same decay) whose mean over the run equals RAdam's mean
    effective one: lr × mean(schedule × rectifier) / mean(schedule), to 3 significant digits."""
    plain, rectified = mean_lr_factors(scale, optim_lr(lr))
    return float(f"{lr * rectified / plain:.3g}")


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: (arm, lr), arm one of adam, radam, adam+warm-up, adam at radam's mean lr; all Post-LN."""
    def arms(lr: float) -> dict[str, dict[str, Any]]:
        return {ADAM: {**POST, **optim_lr(lr)}, RADAM_ARM: {**POST, **RADAM, **optim_lr(lr)},
                WARM: {**POST, **optim_lr(lr), "schedule.warmup_steps": ma_yarats_warmup(scale)},
                MATCHED: {**POST, **optim_lr(matched_lr(scale, lr))}}

    return {(name, lr): per_seed("train", scale.seeds, setting)
            for lr in p.lrs for name, setting in arms(lr).items()}


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds = ctx.scale, ctx.seeds()
    warmup, beta2 = ma_yarats_warmup(scale), cell_config(scale, Spec("train", (), 0)).optim.betas[1]
    verdicts, panels, rows = [], [], []
    for lr in ctx.params.lrs:
        runs = {name: ctx[name, lr] for name in (ADAM, RADAM_ARM, WARM, MATCHED)}
        loss = {name: capped(r) for name, r in runs.items()}
        adam_fails = fails(ctx, (ADAM, lr), f"Post-LN with Adam without warm-up at lr {lr:g}")
        matched = matched_lr(scale, lr)
        verdicts += [
            RESCUES.format(lr=lr).test(seedwise(difference, loss[ADAM], loss[RADAM_ARM]), seeds,
                                       [adam_fails]),
            AS_WELL.format(lr=lr, warmup=warmup).test(
                seedwise(difference, loss[RADAM_ARM], loss[WARM]), seeds,
                [converges(ctx, (WARM, lr), f"Adam with a {warmup}-step warm-up at lr {lr:g}")]),
            NOT_SMALLER.format(lr=lr, matched=matched).test(
                seedwise(difference, loss[MATCHED], loss[RADAM_ARM]), seeds,
                [adam_fails, converges(ctx, (RADAM_ARM, lr), f"RAdam without warm-up at lr {lr:g}")]),
        ]
        settings = [("Adam, no warm-up", runs[ADAM]), ("RAdam, no warm-up", runs[RADAM_ARM]),
                    (f"Adam, warm-up {warmup}", runs[WARM]),
                    (f"Adam at lr {matched:g}, no warm-up", runs[MATCHED])]
        panels.append((f"Post-LN, lr {lr:g}", settings))
        rows += [([label, f"{lr:g}"], r) for label, r in settings]
    plain, rectified = mean_lr_factors(scale, {})
    warm_mean, _ = mean_lr_factors(scale, {"schedule.warmup_steps": warmup})
    definitions = [
        common.loss_definition(), common.converge_definition(ctx),
        f"All runs Post-LN, β = (0.9, {beta2:g}), {scale.train['train']['steps']} steps, linear decay. "
        f"`torch.optim.RAdam` takes SGD-with-momentum steps while ρ_t ≤ 5, then Adam steps scaled by the "
        f"rectifier r_t; its implicit warm-up is about 2/(1 − β2) = {warmup} steps (Ma & Yarats 2019), "
        f"the explicit warm-up of the third arm.",
        f"**Mean effective learning rate** (as a factor of the peak lr, averaged over the "
        f"{scale.train['train']['steps']} updates): Adam without warm-up {plain:.3f}; RAdam {rectified:.3f} "
        "(the schedule times RAdam's step size relative to Adam's: r_t once ρ_t > 5, from the trainer's "
        "own ρ_t, lnexp.run.probes.radam_rho; 0 before, where RAdam's SGD steps are the gradient's size "
        f"per weight, ~1e-2 of an Adam step); Adam with the {warmup}-step warm-up {warm_mean:.3f}. The "
        f"fourth arm is Adam without warm-up at lr × {rectified / plain:.3f} (the lr whose mean equals "
        "RAdam's, rounded to 3 digits): if it ends as well as RAdam, RAdam's rescue is its smaller steps, "
        "not their early shape.",
        "Preconditions: the rescue and the smaller-steps rows need Adam without warm-up to fail at that "
        "learning rate; the non-inferiority row needs Adam with warm-up to converge.",
    ]
    return Analysis(verdicts, definitions, [
        Figure("loss_curves.png", "Post-LN: Adam and RAdam without warm-up, Adam with warm-up, and Adam at "
               "RAdam's mean effective learning rate", common.curves_figure(ctx, panels))],
        [common.settings_table(ctx, rows, ["optimiser", "lr"])])


SUITE = Suite(
    "radam", "RAdam removes Post-LN's need for warm-up",
    "Liu et al. 2019, On the Variance of the Adaptive Learning Rate and Beyond; Xiong et al. 2020 §4.2; "
    "Ma & Yarats 2019", PARAMS, grid, analyse)
