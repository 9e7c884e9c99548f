"""`layouts`: every registered layout (`--layouts` chooses) at one depth: the residual stream and the
FFN gradient profile at initialisation, and the largest of the stability map's learning rates that
trains without warm-up."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from lnexp.core.config import ConfigError
from lnexp.core.layouts import ADMIN, DEEPNORM, LAYOUTS, MIX, REORDERED, SANDWICH
from lnexp.core.layouts import POST as POST_LN
from lnexp.core.layouts import PRE as PRE_LN
from lnexp.experiments.reproduce.engine import Grid, Scale, Spec, SuiteRuns, cell_config, final_loss, per_seed
from lnexp.experiments.reproduce.report import Analysis, Figure, md_table, mean_pm, num
from lnexp.experiments.reproduce.suites import common, stability_map
from lnexp.experiments.reproduce.suites.common import Suite, model_norm, n_layers, optim_lr, trend_word
from lnexp.experiments.reproduce.verdicts import (
    Threshold,
    above,
    check,
    difference,
    stream_growth,
    trend_ratio,
    usable,
    within,
)
from lnexp.experiments.stability import largest_index
from lnexp.run.rows import layer_profile


@dataclass(frozen=True)
class Params:
    depth: int                     # one moderate depth
    seeds: int                     # seeds of its training cells (its init cells: the scale's init_seeds)
    lrs: tuple[float, ...]         # the grid of "largest converging lr"
    layouts: tuple[str, ...] = ()  # `--layouts`; empty: every registered one (the built-ins, a plugin's)


# The stability map's learning rates: its Post-LN and Pre-LN cells at this depth are the same runs.
PARAMS = {"tiny": Params(6, 1, stability_map.PARAMS["tiny"].lrs),
          "cpu": Params(6, 1, stability_map.PARAMS["cpu"].lrs),
          "small": Params(12, 2, stability_map.PARAMS["small"].lrs)}


def layout_names(p: Params) -> tuple[str, ...]:
    return p.layouts or tuple(LAYOUTS)


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: ("init", layout), one-step cells; ("train", layout, lr)."""
    return {
        **{("init", name): per_seed("init", scale.init_seeds, model_norm(name), n_layers(p.depth))
           for name in layout_names(p)},
        **{("train", name, lr): per_seed("train", p.seeds, model_norm(name), n_layers(p.depth), optim_lr(lr))
           for name in layout_names(p) for lr in p.lrs},
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


def _layouts_findings(lr_index: dict[str, list[int | None]], lrs: Sequence[float],
                      growth: dict[str, list[float | None]], ratio: dict[str, list[float | None]],
                      depth: int) -> list[str]:
    """Sentences composed from the measured numbers: the layouts ranked by their largest converging
    lr, which keep the residual stream normalised at initialisation, and their gradient profiles."""
    out = []

    def mean(values: Sequence[float | None]) -> float | None:
        xs = [v for v in values if usable(v)]
        return sum(xs) / len(xs) if xs else None

    ranked = sorted((name for name in lr_index if mean(lr_index[name]) is not None),
                    key=lambda name: -mean(lr_index[name]))
    if ranked:
        parts = [f"{LAYOUTS[name].label} {', '.join(_lr_text(i, lrs) for i in lr_index[name])}"
                 for name in ranked]
        top = mean(lr_index[ranked[0]])
        best = [LAYOUTS[name].label for name in ranked if mean(lr_index[name]) == top]
        sentence = (f"Largest learning rate that converges without warm-up at L = {depth} (per seed), from "
                    f"the most tolerant layout down: {'; '.join(parts)}. {' and '.join(best)} "
                    f"tolerate{'s' if len(best) == 1 else ''} the largest (seed mean).")
        if POST_LN.name in ranked:
            post = mean(lr_index[POST_LN.name])
            for word, test in (("Above", lambda m: m > post), ("The same as", lambda m: m == post),
                               ("Below", lambda m: m < post)):
                names = [LAYOUTS[name].label for name in ranked
                         if name != POST_LN.name and test(mean(lr_index[name]))]
                if names:
                    sentence += f" {word} Post-LN's: {', '.join(names)}."
        out.append(sentence)
    flat = [n for n in growth if mean(growth[n]) is not None and 0.8 <= mean(growth[n]) <= 1.25]
    grows = [n for n in growth if mean(growth[n]) is not None and mean(growth[n]) > 1.25]
    if flat or grows:
        listed = ", ".join(f"{LAYOUTS[n].label} {num(mean(growth[n]))}" for n in growth
                           if mean(growth[n]) is not None)
        out.append(f"Residual stream at initialisation (RMS² leaving layer {depth - 1} / leaving layer 0, "
                   f"seed mean): {listed}. "
                   + (f"{', '.join(LAYOUTS[n].label for n in flat)} keep it normalised (in [0.8, 1.25])"
                      if flat else "No layout keeps it in [0.8, 1.25]")
                   + (f"; {', '.join(LAYOUTS[n].label for n in grows)} let it grow (> 1.25)." if grows
                      else "."))
    shapes = {n: trend_word(ratio[n]) for n in ratio}
    if any(m is not None for _, m in shapes.values()):
        out.append(f"‖∇W_FC2‖ by layer at initialisation (fitted last/first, seed mean, L = {depth}): "
                   + "; ".join(f"{LAYOUTS[n].label} {w} ({num(m)})" for n, (w, m) in shapes.items()) + ".")
    return out


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, p = ctx.scale, ctx.params
    n, names = p.depth, layout_names(p)
    init_seeds, seeds, lrs = ctx.seeds("init"), list(range(p.seeds)), list(p.lrs)
    grad: dict[tuple[str, int], list[float]] = {}
    act: dict[tuple[str, int], list[float]] = {}
    for name in names:
        for s, run in zip(init_seeds, ctx["init", name]):
            g = layer_profile(run.probes, "grad", "ffn.fc2", 0) if run else []
            a = layer_profile(run.probes, "act", "resid", 0) if run else []
            grad[name, s] = g if len(g) == n else []
            act[name, s] = a if len(a) == n + 1 and a[0] > 0 else []
    ratio = {name: [trend_ratio(grad[name, s]) for s in init_seeds] for name in names}
    growth = {name: [stream_growth(act[name, s]) for s in init_seeds] for name in names}
    runs = {(name, lr, s): run for name in names for lr in lrs
            for s, run in zip(seeds, ctx["train", name, lr])}
    conv = {k: ctx.converged(r) for k, r in runs.items()}
    index = {name: [largest_index([conv[name, lr, s] for lr in lrs]) for s in seeds] for name in names}

    def steps(a: str, b: str) -> list[float | None]:
        return [difference(x, y) for x, y in zip(index[a], index[b])]

    quantity_g = (f"RMS² of the residual stream leaving layer {n - 1} (the last) / leaving layer 0 at "
                  "initialisation, "
                  f"L = {n}")
    quantity_lr = "largest converging lr without warm-up, {a} minus {b}, in grid steps, L = " + str(n)
    post, pre, sandwich, deepnorm, admin, mix, reordered = (
        x.name for x in (POST_LN, PRE_LN, SANDWICH, DEEPNORM, ADMIN, MIX, REORDERED))
    rows = [  # (the layouts a row needs, the row)
        ((deepnorm,), lambda: check(
            "DeepNorm keeps Post-LN's normalised residual stream at initialisation", quantity_g,
            within(0.8, 1.25, "ratio "), growth[deepnorm], init_seeds)),
        ((admin,), lambda: check(
            "Admin keeps Post-LN's normalised residual stream at initialisation", quantity_g,
            within(0.8, 1.25, "ratio "), growth[admin], init_seeds)),
        ((sandwich,), lambda: check(
            "Sandwich-LN, like Pre-LN, lets the residual stream grow at initialisation", quantity_g,
            above(1.25, "ratio "), growth[sandwich], init_seeds)),
        ((post,), lambda: check(
            "(control) Post-LN without warm-up fails at some learning rate of the grid",
            f"grid steps from Post-LN's largest converging lr to the grid's largest ({lrs[-1]:g}), L = {n}",
            above(0), [None if i is None else float(len(lrs) - 1 - i) for i in index[post]], seeds)),
        ((pre, post), lambda: check(
            "(reference) Pre-LN trains without warm-up at a learning rate where Post-LN fails",
            quantity_lr.format(a="Pre-LN", b="Post-LN"), above(0), steps(pre, post), seeds)),
        ((deepnorm, post), lambda: check(
            "DeepNorm keeps Post-LN's normalised outputs but trains at a learning rate where Post-LN fails",
            quantity_lr.format(a="DeepNorm", b="Post-LN"), above(0), steps(deepnorm, post), seeds)),
        ((admin, post), lambda: check(
            "Admin keeps Post-LN's normalised outputs but trains at a learning rate where Post-LN fails",
            quantity_lr.format(a="Admin", b="Post-LN"), above(0), steps(admin, post), seeds)),
        ((sandwich, pre), lambda: check(
            "Sandwich-LN, like Pre-LN, trains without warm-up (at every learning rate Pre-LN does)",
            quantity_lr.format(a="Sandwich-LN", b="Pre-LN"), Threshold("≥ 0", lambda v: v >= 0),
            steps(sandwich, pre), seeds)),
        ((mix, post), lambda: check(  # Li, Yin, Liu 2024: Post-LN's early layers, Pre-LN's stability
            "Mix-LN trains without warm-up at a learning rate where Post-LN fails",
            quantity_lr.format(a="Mix-LN", b="Post-LN"), above(0), steps(mix, post), seeds)),
        ((reordered, pre), lambda: check(  # OLMo 2: the reordered norm for training stability
            "The reordered norm (OLMo 2) trains without warm-up at every learning rate Pre-LN does",
            quantity_lr.format(a="Reordered", b="Pre-LN"), Threshold("≥ 0", lambda v: v >= 0),
            steps(reordered, pre), seeds)),
    ]
    verdicts = [row() for needs, row in rows if set(needs) <= set(names)]
    ratio_step = lrs[1] / lrs[0] if len(lrs) > 1 else 1
    train_cfg, init_cfg = (cell_config(scale, Spec(family, (), 0)) for family in ("train", "init"))
    definitions = [
        common.converge_definition(ctx, seeds),
        "**largest converging lr**: the largest learning rate of the stability map's grid "
        + ", ".join(f"{lr:g}" for lr in lrs) + f" (one grid step = ×{ratio_step:.3g}) at which the run "
        "converges; \"none\" (one step below the grid) if none does. Per layout and seed.",
        "Layouts (`model.norm`, lnexp/core/layouts.py): " + "; ".join(
            f"{name}: {LAYOUTS[name].formula} ({LAYOUTS[name].source})" for name in names)
        + ". fairseq's init (`model.init: fairseq`) under all of them.",
        f"Training cells: L = {n}, Adam β = ({train_cfg.optim.betas[0]:g}, {train_cfg.optim.betas[1]:g}), "
        f"no warm-up, {train_cfg.train.steps} steps, linear decay, seeds {', '.join(map(str, seeds))} (the "
        "stability map's Post-LN and Pre-LN cells at this depth are the same runs). Initialisation cells: "
        f"one-step runs of the xiong2020-init suite's model (d_model {init_cfg.model.d_model}), "
        f"L = {n}, seeds {', '.join(map(str, init_seeds))}.",
        "Thresholds: \"normalised\" is an RMS² ratio in [0.8, 1.25]; \"grows\" above 1.25; \"trains "
        "at a learning rate where Post-LN fails\" is a largest converging lr more than 0 grid steps above "
        "Post-LN's, for that seed; \"like Pre-LN\" is at least Pre-LN's (≥ 0 grid steps). The control "
        "row checks that Post-LN fails somewhere on the grid, without which the lr rows cannot pass.",
        "The init gradient profile (‖∇W_FC2‖ by layer; fitted last/first as in xiong2020-init) is shown "
        "and described from the numbers, but no claim is tested on it. The DeepNorm and Admin "
        "initialisation rows check the wiring more than a finding: each of their blocks ends in a "
        "LayerNorm (γ = 1, β = 0 at initialisation), so the stream leaving the last block has RMS 1 and "
        "their ratio equals Post-LN's, 1/RMS² of the embedding, whatever α or ω.",
    ]

    def lr_plot(plt: Any):
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
        ax = axes[0]
        for i, name in enumerate(names):
            for k, s in enumerate(seeds):
                y = index[name][k]
                if y is not None:
                    ax.plot(i + (k - (len(seeds) - 1) / 2) * 0.12, y, "o", color=f"C{i}", markersize=8,
                            alpha=0.85, label=f"seed {s}" if i == 0 else None,
                            markerfacecolor=f"C{i}" if k == 0 else "none")
        ax.set_xticks(range(len(names)), [LAYOUTS[name].label for name in names],
                      rotation=20)
        ax.set_yticks(range(-1, len(lrs)), ["none", *(f"{lr:g}" for lr in lrs)])
        ax.set_ylim(-1.5, len(lrs) - 0.5)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylabel("largest lr that converges")
        ax.set_title(f"no warm-up, L = {n}" + (f" (filled: seed {seeds[0]}, open: others)"
                                                 if len(seeds) > 1 else f", seed {seeds[0]}"), fontsize=10)
        ax = axes[1]
        baseline = sum(ctx.baseline(s) for s in seeds) / len(seeds)
        threshold = sum(ctx.threshold(s) for s in seeds) / len(seeds)
        top = baseline + 0.5
        for i, name in enumerate(names):
            ys = []
            for lr in lrs:
                losses = [final_loss(runs[name, lr, s]) for s in seeds]
                finite = [v for v in losses if v is not None and math.isfinite(v)]
                ys.append(sum(finite) / len(finite) if finite
                          else (top if any(v is not None for v in losses) else None))
            shown = [(lr, y) for lr, y in zip(lrs, ys) if y is not None]
            if shown:
                ax.plot(*zip(*shown), marker="o", color=f"C{i}", label=LAYOUTS[name].label)
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

    def init_plot(plt: Any):
        from lnexp.report.figures import label_log_axis

        fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
        for i, name in enumerate(names):
            for k, s in enumerate(init_seeds):
                g, a = grad[name, s], act[name, s]
                label = LAYOUTS[name].label if k == 0 else None
                if g:
                    axes[0].plot(range(len(g)), g, color=f"C{i}", marker=".", alpha=0.8, label=label)
                if a:  # a[l + 1]: the stream leaving layer l
                    axes[1].plot(range(len(a) - 1), [(v / a[1]) ** 2 for v in a[1:]], color=f"C{i}",
                                 marker=".", alpha=0.8, label=label)
        axes[0].set_yscale("log")
        axes[0].set_xlabel("layer (from 0)")
        axes[0].set_xticks(range(n))
        axes[0].set_ylabel("‖∇W_FC2‖ at initialisation")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=len(names), fontsize=8,
                   bbox_to_anchor=(0.5, 1.07))
        axes[1].set_yscale("log")
        axes[1].set_xlabel("leaving layer (from 0)")
        axes[1].set_xticks(range(n))
        axes[1].set_ylabel("residual-stream RMS² / RMS² leaving layer 0")
        axes[1].axhspan(0.8, 1.25, color="grey", alpha=0.15, label="normalised: [0.8, 1.25]")
        axes[1].legend(fontsize=7)
        for ax in axes:
            label_log_axis(ax.yaxis)
        fig.tight_layout()
        return fig

    rows = [[LAYOUTS[name].label, mean_pm(ratio[name]), mean_pm(growth[name]),
             ", ".join(_lr_text(i, lrs) for i in index[name]),
             " ".join(f"{lr:g}: {mean_pm([final_loss(runs[name, lr, s]) for s in seeds])}" for lr in lrs)]
            for name in names]
    table = md_table(["layout", "init: fitted last/first ‖∇W_FC2‖", "init: RMS² growth",
                      "largest converging lr (per seed)", "final val loss by lr"], rows)
    return Analysis(verdicts, definitions, [
        Figure("largest_lr.png", f"Left: the largest learning rate that converges without warm-up, "
               f"L = {n}, per layout and seed. Right: final validation loss against learning rate (seed "
               "mean)", lr_plot),
        Figure("init_profiles.png", f"At initialisation, L = {n}: ‖∇W_FC2‖ by layer (left) and the residual "
               "stream's RMS² relative to the input (right), one line per seed. In the right panel Post-LN, "
               "DeepNorm and Admin coincide: every block ends in a LayerNorm, so the stream leaving it has "
               "RMS 1 at initialisation whatever the skip scale", init_plot),
    ], [table], findings=_layouts_findings(index, lrs, growth, ratio, n))


SUITE = Suite(
    "layouts", "The layouts at one depth: the residual stream at initialisation and the largest learning "
    "rate that trains without warm-up",
    "Post-LN (Vaswani et al. 2017), Pre-LN (Xiong et al. 2020), Sandwich-LN (Ding et al. 2021), DeepNorm "
    "(Wang et al. 2022), Admin (Liu et al. 2020)", PARAMS, grid, analyse)
