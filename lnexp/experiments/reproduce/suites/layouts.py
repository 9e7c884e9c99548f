"""`layouts`: every registered layout (`--layouts` chooses), and DyT in place of Pre-LN's LayerNorm, at
one depth: what each layout's source claims for it, tested on the largest of the stability map's
learning rates that trains without warm-up, on the trained model's residual stream and gradients, and
(as wiring checks and figures) at initialisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from lnexp.core.config import ConfigError
from lnexp.core.layouts import ADMIN, DEEPNORM, LAYOUTS, MIX, REORDERED, SANDWICH, Where
from lnexp.core.layouts import POST as POST_LN
from lnexp.core.layouts import PRE as PRE_LN
from lnexp.core.stats import usable
from lnexp.experiments.reproduce.engine import Grid, Scale, Spec, SuiteRuns, cell_config, log_final, per_seed
from lnexp.experiments.reproduce.measure import (
    FINAL,
    difference,
    final_loss,
    ratio,
    seedwise,
    stream_growth,
    trend_ratio,
)
from lnexp.experiments.reproduce.report import Analysis, Figure, md_table, mean_pm, num
from lnexp.experiments.reproduce.suites import common, stability_map
from lnexp.experiments.reproduce.suites.common import (
    MARGIN_LOSS,
    Suite,
    model_norm,
    n_layers,
    optim_lr,
    trend_word,
)
from lnexp.experiments.reproduce.verdicts import (
    GREATER,
    LESS,
    Claim,
    Precondition,
    Verdict,
    Wiring,
    grid_edge,
    premise,
)
from lnexp.experiments.stability import largest_index


@dataclass(frozen=True)
class Params:
    depth: int                     # one moderate depth
    seeds: int                     # seeds of its training cells (its init cells: the scale's init_seeds)
    lrs: tuple[float, ...]         # the grid of "largest converging lr"; the first: the trained-model rows'
    layouts: tuple[str, ...] = ()  # `--layouts`; empty: every registered one (the built-ins, a plugin's)


# The stability map's learning rates: its Post-LN and Pre-LN cells at this depth are the same runs.
PARAMS = {"tiny": Params(6, 3, stability_map.PARAMS["tiny"].lrs),
          "cpu": Params(6, 3, stability_map.PARAMS["cpu"].lrs),
          "small": Params(12, 3, stability_map.PARAMS["small"].lrs)}
DYT = "dyt"  # the grid's arm of Pre-LN with DyT in place of LayerNorm
DYT_CELL = {"model.norm": PRE_LN.name, "model.norm_type": "dyt"}

# --- the claims, each declared once with what its source claims ------------------------------------
STEPS = "largest converging lr without warm-up, {a} minus {b}, in grid steps, L = {L}"
ANY_STEP = "lnexp's choice: any gain; one grid step is the grid's resolution"
LESS_THAN_A_STEP = "lnexp's choice: less than one grid step worse, the grid's resolution"
PRE_WHERE_POST_FAILS = Claim(
    "(reference) Pre-LN trains without warm-up at a learning rate where Post-LN fails (Xiong et al. 2020)",
    STEPS, GREATER, 0.0, ANY_STEP)
DEEPNORM_STABLE = Claim(
    "DeepNorm trains without warm-up at a learning rate where Post-LN fails (DeepNet claims stable Post-LN "
    "training at depth, up to 1,000 layers; tested here at L = {L})", STEPS, GREATER, 0.0, ANY_STEP)
ADMIN_STABLE = Claim(
    "Admin trains without warm-up at a learning rate where Post-LN fails (Liu et al. 2020: Admin "
    "stabilises Post-LN's early training)", STEPS, GREATER, 0.0, ANY_STEP)
SANDWICH_STABLE = Claim(
    "Sandwich-LN trains without warm-up at every learning rate Pre-LN does (CogView: it stabilises "
    "training)", STEPS, GREATER, -1.0, LESS_THAN_A_STEP)
REORDERED_STABLE = Claim(
    "The reordered norm trains without warm-up at every learning rate Pre-LN does (OLMo 2: for training "
    "stability)", STEPS, GREATER, -1.0, LESS_THAN_A_STEP)
SANDWICH_TAMES = Claim(
    "Sandwich-LN tames the growth of the residual stream's values (CogView: Pre-LN's values grow in the "
    "deep layers; the branch outputs' LayerNorm keeps them in check)",
    "RMS² of the stream leaving the last layer / leaving layer 0 on the final model, Sandwich-LN ÷ Pre-LN, "
    "lr {lr:g}, L = {L}", LESS, 0.8, "lnexp's choice: a fifth less growth")
MIX_GRADIENTS = Claim(
    "Mix-LN gives its deep layers larger gradients, relative to its early ones, than Pre-LN (Li et al. "
    "2024: Pre-LN's deep layers get small gradients)",
    "fitted last/first ratio of ‖∇W_FC2‖ by layer on the final model, Mix-LN ÷ Pre-LN, lr {lr:g}, L = {L}",
    GREATER, 1.25, "lnexp's choice: a quarter up, the Figure 3 rows' margin")
DYT_MATCHES = Claim(
    "DyT in place of LayerNorm matches it (Zhu et al. 2025: DyT matches normalised Transformers; here "
    "in Pre-LN)", "best final val loss over the grid's learning rates, DyT minus LayerNorm (nats), L = {L}",
    LESS, MARGIN_LOSS, f"lnexp's choice: {MARGIN_LOSS:g} nats (common.MARGIN_LOSS)")
NORMALISED = Wiring("{layout}'s residual stream stays normalised at initialisation",
                    "RMS² of the residual stream leaving layer {last} (the last) / leaving layer 0, L = {L}",
                    1 - 1e-3, 1 + 1e-3, "every block ends in a LayerNorm (γ = 1, β = 0 at initialisation), "
                    "so the stream leaving it has RMS 1 up to the norm's ε, whatever the skip scale")


def layout_names(p: Params) -> tuple[str, ...]:
    return p.layouts or tuple(LAYOUTS)


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: ("init", layout), one-step cells; ("train", layout, lr); ("dyt", lr), Pre-LN with DyT
    (when Pre-LN is chosen). The training cells log their probes at the first and the last step."""
    train = (n_layers(p.depth), log_final(scale))
    return {
        **{("init", name): per_seed("init", scale.init_seeds, model_norm(name), n_layers(p.depth))
           for name in layout_names(p)},
        **{("train", name, lr): per_seed("train", p.seeds, model_norm(name), optim_lr(lr), *train)
           for name in layout_names(p) for lr in p.lrs},
        **({(DYT, lr): per_seed("train", p.seeds, DYT_CELL, optim_lr(lr), *train) for lr in p.lrs}
           if PRE_LN.name in layout_names(p) else {}),
    }


def choose_layouts(scale: Scale, names: Sequence[str]) -> Scale:
    """The scale with `--layouts` chosen (none: unchanged); ConfigError names an unknown layout."""
    unknown = [name for name in names if name not in LAYOUTS]
    if unknown:
        raise ConfigError(f"--layouts: unknown layout {unknown[0]!r}; registered: {', '.join(LAYOUTS)}")
    if not names:
        return scale
    chosen = replace(SUITE.params_at(scale), layouts=tuple(names))
    return replace(scale, suite_params={**scale.suite_params, SUITE.name: chosen})


def _lr_text(index: int | None, lrs: Sequence[float]) -> str:
    return "–" if index is None else ("none" if index < 0 else f"{lrs[index]:g}")


def _label(arm: str) -> str:
    return "Pre-LN + DyT" if arm == DYT else LAYOUTS[arm].label


def _mean(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if usable(v)]
    return sum(xs) / len(xs) if xs else None


def _layouts_findings(lr_index: dict[str, list[int | None]], lrs: Sequence[float],
                      growth: dict[str, list[float | None]], trend: dict[str, list[float | None]],
                      depth: int) -> list[str]:
    """Sentences composed from the measured numbers: the layouts ranked by their largest converging
    lr, the residual stream at initialisation and the gradient profiles."""
    out = []
    ranked = sorted((arm for arm in lr_index if _mean(lr_index[arm]) is not None),
                    key=lambda arm: -_mean(lr_index[arm]))
    if ranked:
        parts = [f"{_label(arm)} {', '.join(_lr_text(i, lrs) for i in lr_index[arm])}" for arm in ranked]
        top = _mean(lr_index[ranked[0]])
        best = [_label(arm) for arm in ranked if _mean(lr_index[arm]) == top]
        sentence = (f"Largest learning rate that converges without warm-up at L = {depth} (per seed), from "
                    f"the most tolerant down: {'; '.join(parts)}. {' and '.join(best)} "
                    f"tolerate{'s' if len(best) == 1 else ''} the largest (seed mean).")
        if top == len(lrs) - 1:
            sentence += (f" The grid's largest learning rate ({lrs[-1]:g}) bounds it: a wider grid would "
                         "separate the layouts that reach it.")
        out.append(sentence)
    listed = ", ".join(f"{LAYOUTS[n].label} {num(_mean(growth[n]))}" for n in growth if _mean(growth[n]))
    if listed:
        out.append(f"Residual stream at initialisation (RMS² leaving layer {depth - 1} / leaving layer 0, "
                   f"seed mean): {listed}.")
    shapes = {n: trend_word(trend[n]) for n in trend}
    if any(m is not None for _, m in shapes.values()):
        out.append(f"‖∇W_FC2‖ by layer at initialisation (fitted last/first, seed mean, L = {depth}): "
                   + "; ".join(f"{LAYOUTS[n].label} {w} ({num(m)})" for n, (w, m) in shapes.items()) + ".")
    return out


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, p = ctx.scale, ctx.params
    n, names, lrs, low = p.depth, layout_names(p), list(p.lrs), p.lrs[0]
    init_seeds, seeds = ctx.seeds("init"), list(range(p.seeds))
    arms = [*names, *([DYT] if (DYT, low) in ctx.grid else [])]
    runs = {(arm, lr): ctx[(DYT, lr) if arm == DYT else ("train", arm, lr)] for arm in arms for lr in lrs}
    losses = {key: [final_loss(r) for r in rs] for key, rs in runs.items()}
    index = {arm: seedwise(lambda *flags: largest_index(flags),
                           *([ctx.converged(r) for r in runs[arm, lr]] for lr in lrs)) for arm in arms}
    best = {arm: seedwise(lambda *ls: min(ls), *(losses[arm, lr] for lr in lrs)) for arm in arms}
    init_act = {name: ctx.profiles(("init", name), "act", "resid") for name in names}
    init_trend = {name: [trend_ratio(g) for g in ctx.profiles(("init", name), "grad", "ffn.fc2")]
                  for name in names}
    init_growth = {name: [stream_growth(a) for a in init_act[name]] for name in names}
    final_growth = {name: [stream_growth(a) for a in ctx.profiles(("train", name, low), "act", "resid",
                                                                  "final")] for name in names}
    final_trend = {name: [trend_ratio(g) for g in ctx.profiles(("train", name, low), "grad", "ffn.fc2",
                                                                "final")] for name in names}

    post, pre = POST_LN.name, PRE_LN.name
    top = len(lrs) - 1
    post_fails = premise(
        "Post-LN without warm-up fails at some learning rate of the grid",
        f"Post-LN without warm-up converged up to the grid's largest learning rate ({lrs[-1]:g}): nothing "
        "for a layout to rescue", "grid steps from Post-LN's largest converging lr to the grid's largest",
        [None if i is None else float(top - i) for i in index.get(post, [])], GREATER, 0.0) \
        if post in names else None

    def lr_row(claim: Claim, a: str, b: str) -> Verdict:
        needs: list[Precondition] = [grid_edge(index[a], index[b], top, f"{_label(a)} and {_label(b)}")]
        if b == post:
            needs.append(post_fails)
        return claim.format(a=_label(a), b=_label(b), L=n).test(
            seedwise(difference, index[a], index[b]), seeds, needs)

    grows = premise("Pre-LN's stream grows on the trained model",
                    "Pre-LN's stream did not grow on the trained model: no value growth to tame",
                    f"RMS² growth, Pre-LN, final model, lr {low:g}", final_growth.get(pre, []), GREATER, 1.25)
    deep_small = premise("Pre-LN's deep layers get smaller gradients than its early ones (trained model)",
                         "Pre-LN's deep layers did not get smaller gradients than its early ones: nothing "
                         "for Mix-LN to lift", f"fitted last/first ‖∇W_FC2‖, Pre-LN, final model, lr {low:g}",
                         final_trend.get(pre, []), LESS, 0.8)
    rows = [  # (the arms a row needs, the row)
        ((pre, post), lambda: lr_row(PRE_WHERE_POST_FAILS, pre, post)),
        ((DEEPNORM.name, post), lambda: lr_row(DEEPNORM_STABLE, DEEPNORM.name, post)),
        ((ADMIN.name, post), lambda: lr_row(ADMIN_STABLE, ADMIN.name, post)),
        ((SANDWICH.name, pre), lambda: lr_row(SANDWICH_STABLE, SANDWICH.name, pre)),
        ((REORDERED.name, pre), lambda: lr_row(REORDERED_STABLE, REORDERED.name, pre)),
        ((SANDWICH.name, pre), lambda: SANDWICH_TAMES.format(lr=low, L=n).test(
            seedwise(ratio, final_growth[SANDWICH.name], final_growth[pre]), seeds, [grows])),
        ((MIX.name, pre), lambda: MIX_GRADIENTS.format(lr=low, L=n).test(
            seedwise(ratio, final_trend[MIX.name], final_trend[pre]), seeds, [deep_small])),
        ((DYT, pre), lambda: DYT_MATCHES.format(L=n).test(seedwise(difference, best[DYT], best[pre]), seeds)),
    ]
    verdicts = [row() for needs, row in rows if set(needs) <= set(arms)]
    verdicts += [NORMALISED.format(layout=LAYOUTS[name].label, last=n - 1, L=n).check(init_growth[name],
                                                                                     init_seeds)
                 for name in names if LAYOUTS[name].norm_at == Where.SUM and not LAYOUTS[name].per_layer]
    ratio_step = lrs[1] / lrs[0] if len(lrs) > 1 else 1
    train_cfg, init_cfg = (cell_config(scale, Spec(family, (), 0)) for family in ("train", "init"))
    definitions = [
        common.converge_definition(ctx, seeds),
        "**largest converging lr**: the largest learning rate of the stability map's grid "
        + ", ".join(f"{lr:g}" for lr in lrs) + f" (one grid step = ×{ratio_step:.3g}) at which the run "
        "converges; \"none\" (one step below the grid) if none does. Per layout and seed. A row comparing "
        "two layouts is \"inconclusive: grid edge\" when both reach the grid's largest learning rate (or "
        "both fail at every one) on every seed; a row against Post-LN needs Post-LN to fail somewhere on "
        "the grid (its precondition).",
        "Layouts (`model.norm`, lnexp/core/layouts.py): " + "; ".join(
            f"{name}: {LAYOUTS[name].formula} ({LAYOUTS[name].source})" for name in names)
        + ". fairseq's init (`model.init: fairseq`) under all of them. Pre-LN + DyT: Pre-LN with "
        "`model.norm_type: dyt` (every norm γ·tanh(α·x) + β, α from 0.5; Zhu et al. 2025).",
        f"Training cells: L = {n}, Adam β = ({train_cfg.optim.betas[0]:g}, {train_cfg.optim.betas[1]:g}), "
        f"no warm-up, {train_cfg.train.steps} steps, linear decay, seeds {', '.join(map(str, seeds))} (the "
        "stability map's Post-LN and Pre-LN cells at this depth are the same runs). The trained-model rows "
        f"read the runs at the grid's lowest learning rate ({low:g}) on the final model: {FINAL}. "
        f"Initialisation cells: one-step runs of the xiong2020-init suite's model (d_model "
        f"{init_cfg.model.d_model}), L = {n}, seeds {', '.join(map(str, init_seeds))}.",
        "The wiring checks (every layout whose norm sits on the sum: each block ends in a LayerNorm) are "
        "identities, not findings: the stream leaving such a block has RMS 1 at initialisation whatever α "
        "or ω, so their ratio is 1.",
    ]

    def lr_plot(plt: Any):
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
        ax = axes[0]
        for i, arm in enumerate(arms):
            for k in range(len(seeds)):
                y = index[arm][k]
                if y is not None:
                    ax.plot(i + (k - (len(seeds) - 1) / 2) * 0.12, y, "o", color=f"C{i}", markersize=7,
                            alpha=0.85, markerfacecolor=f"C{i}" if k == 0 else "none")
        ax.set_xticks(range(len(arms)), [_label(arm) for arm in arms], rotation=25, fontsize=8)
        ax.set_yticks(range(-1, len(lrs)), ["none", *(f"{lr:g}" for lr in lrs)])
        ax.set_ylim(-1.5, len(lrs) - 0.5)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylabel("largest lr that converges")
        ax.set_title(f"no warm-up, L = {n} (filled: seed {seeds[0]}, open: the others)", fontsize=10)
        ax = axes[1]
        baseline, threshold = ctx.baseline(), ctx.threshold()
        for i, arm in enumerate(arms):
            ys = []
            for lr in lrs:
                finite = [v for v in losses[arm, lr] if v is not None and math.isfinite(v)]
                ys.append(sum(finite) / len(finite) if finite
                          else (baseline + 0.5 if any(v is not None for v in losses[arm, lr]) else None))
            shown = [(lr, y) for lr, y in zip(lrs, ys) if y is not None]
            if shown:
                ax.plot(*zip(*shown), marker="o", color=f"C{i}", label=_label(arm))
        ax.axhline(baseline, color="grey", linestyle="--", linewidth=0.8,
                   label="unigram baseline (seed mean)")
        ax.axhline(threshold, color="grey", linestyle=":", linewidth=0.8,
                   label="converges below (seed mean)")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final val loss, seed mean (diverged: top)")
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        return fig

    def profiles_plot(plt: Any):
        from lnexp.report.figures import label_log_axis, seed_band

        fig, axes = plt.subplots(1, 3, figsize=(15, 3.9))
        panels = ((axes[0], "at initialisation",
                   {k: ctx.profiles(("init", k), "grad", "ffn.fc2") for k in names}, "‖∇W_FC2‖",
                   "layer (from 0)"),
                  (axes[1], f"final model, lr {low:g}",
                   {k: ctx.profiles(("train", k, low), "grad", "ffn.fc2", "final") for k in names},
                   "‖∇W_FC2‖", "layer (from 0)"),
                  (axes[2], f"final model, lr {low:g}",
                   {k: ctx.profiles(("train", k, low), "act", "resid", "final") for k in names},
                   "residual-stream RMS", "layer boundary (0: the input)"))
        for ax, title, profiles, ylabel, xlabel in panels:
            for i, name in enumerate(names):
                seed_band(ax, [list(enumerate(q)) for q in profiles[name] if q], f"C{i}", marker=".",
                          label=LAYOUTS[name].label)
            ax.set_yscale("log")
            label_log_axis(ax.yaxis)
            ax.set(title=title, ylabel=ylabel, xlabel=xlabel)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        return fig

    table_rows = [[_label(arm), mean_pm(init_trend.get(arm, [])), mean_pm(init_growth.get(arm, [])),
                   mean_pm(final_growth.get(arm, [])), mean_pm(final_trend.get(arm, [])),
                   ", ".join(_lr_text(i, lrs) for i in index[arm]),
                   " ".join(f"{lr:g}: {mean_pm(losses[arm, lr])}" for lr in lrs)] for arm in arms]
    table = md_table(["layout", "init: fitted last/first ‖∇W_FC2‖", "init: RMS² growth",
                      f"final (lr {low:g}): RMS² growth", f"final (lr {low:g}): fitted last/first ‖∇W_FC2‖",
                      "largest converging lr (per seed)", "final val loss by lr"], table_rows)
    return Analysis(verdicts, definitions, [
        Figure("largest_lr.png", f"Left: the largest learning rate that converges without warm-up, "
               f"L = {n}, per layout and seed. Right: final validation loss against learning rate (seed "
               "mean)", lr_plot),
        Figure("profiles.png", f"L = {n}: ‖∇W_FC2‖ by layer at initialisation and on the final model, and "
               "the residual stream's RMS on the final model (seed mean, min–max band)", profiles_plot),
    ], [table], findings=_layouts_findings(index, lrs, init_growth, init_trend, n))


SUITE = Suite(
    "layouts", "The layouts at one depth: what each one's source claims for it",
    "Post-LN (Vaswani et al. 2017), Pre-LN (Xiong et al. 2020), Sandwich-LN (Ding et al. 2021), DeepNorm "
    "(Wang et al. 2022), Admin (Liu et al. 2020), Mix-LN (Li et al. 2024), the reordered norm (OLMo 2), "
    "DyT (Zhu et al. 2025)", PARAMS, grid, analyse)
