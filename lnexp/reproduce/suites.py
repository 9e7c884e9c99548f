"""The suites: the cells each one needs, and how its claims are measured from their runs.

Every number in a verdict comes from the run folders (metrics.jsonl, probes.jsonl, summary.json);
the thresholds are constants stated in each report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lnexp.layouts import ADMIN, DEEPNORM, LAYOUTS, MIX, REORDERED, SANDWICH
from lnexp.layouts import POST as POST_LN
from lnexp.layouts import PRE as PRE_LN
from lnexp.reproduce.engine import (
    PRE_GPT2,
    Scale,
    Spec,
    SuiteRuns,
    cell_config,
    final_loss,
    loss_curve,
    stability_recipes,
)
from lnexp.reproduce.report import Analysis, Figure, md_table, mean_curve, mean_pm, num
from lnexp.reproduce.verdicts import (
    Threshold,
    above,
    below,
    check,
    deepest,
    difference,
    fit_line,
    power_exponent,
    stream_growth,
    stream_increment,
    trend_ratio,
    usable,
    within,
)
from lnexp.runs import Run, layer_profile, logged_steps
from lnexp.stability import depth_axis, largest_index, largest_lr_panel

POST, PRE = {"model.norm": POST_LN.name}, {"model.norm": PRE_LN.name}  # as cell overrides
POST_PRE = (POST_LN.name, PRE_LN.name)
# Xiong et al.'s Figure 3 setting in miniature: an encoder-decoder (n_layers per stack) on the
# synthetic translation task (32 symbols), otherwise the same model and batch as the decoder-only cells.
ENCDEC = {"model.arch": "encoder_decoder", "data.source": "seq2seq", "data.task": "translate",
          "data.vocab_size": 32}
# lnexp 0.1's default, kept as a labelled variant: the output layer is the (√d-scaled) input table, so
# at initialisation each token predicts itself. Theorem 1 assumes an untied output layer.
TIED = {"model.tie_embeddings": True}
MARGIN_LOSS = 0.1  # nats: "worse" means more than this much higher final validation loss


def _lr(value: float) -> dict[str, Any]:
    return {"optim.lr": value}


def _depth(n: int) -> dict[str, Any]:
    return {"model.n_layers": n}


def _warm(scale: Scale) -> dict[str, Any]:
    return {"schedule.warmup_steps": scale.warmup}


def _equals(value: float) -> Threshold:
    return Threshold(f"= {value:g}", lambda v: v == value)


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    source: str
    specs: Callable[[Scale], list[Spec]]
    analyse: Callable[[SuiteRuns], Analysis]


def _converge_definition(ctx: SuiteRuns, seeds: Sequence[int] | None = None) -> str:
    seeds = ctx.seeds() if seeds is None else seeds
    per_seed = ", ".join(f"seed {s}: {ctx.baseline(s):.3f} − {ctx.scale.margin:g} = "
                         f"**{ctx.threshold(s):.3f}**" for s in seeds)
    return (f"**converges**: the run completed (no NaN, no loss above 2·ln 256) and its final "
            f"validation loss is below the unigram baseline minus {ctx.scale.margin:g} nats ({per_seed}). "
            "The unigram baseline is the cross-entropy of the run's own validation windows (they "
            "depend on the seed) under the training bytes' unigram frequencies: the loss of a model that "
            "has collapsed to ignoring context. Differences between settings are taken per seed, on "
            "the same validation windows.")


def _loss_definition() -> str:
    return ("**final loss**: validation loss of the final model (`summary.json` final_val_loss); a "
            f"diverged run counts as +∞. A difference in final loss is called \"worse\" above "
            f"+{MARGIN_LOSS:g} nats.")


# --- plotting helpers ------------------------------------------------------------------------------

def _curves_figure(ctx: SuiteRuns, panels: list[tuple[str, list[tuple[str, list[Run | None]]]]]):
    """One panel per entry: training loss (running mean, averaged over seeds) per setting, validation
    loss as dots, the unigram baseline and the convergence threshold dashed."""

    def draw(plt: Any):
        from lnexp.plots import smooth  # drawing already pays for matplotlib

        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False,
                                 sharey=True)
        for ax, (title, settings) in zip(axes[0], panels):
            for i, (label, runs) in enumerate(settings):
                color = f"C{i}"
                curves = [loss_curve(r) for r in runs if r is not None]
                steps, mean = mean_curve([list(zip([s for s, _ in c], smooth([v for _, v in c], 10)))
                                          for c in curves if c])
                if steps:
                    ax.plot(steps, mean, color=color, label=label)
                vsteps, vmean = mean_curve([loss_curve(r, "val_loss") for r in runs if r is not None])
                if vsteps:
                    ax.plot(vsteps, vmean, "o", color=color, markersize=4)
                for r in runs:
                    if r is not None and r.status == "diverged":
                        ax.axvline(r.summary.get("diverged_step") or 0, color=color, linestyle=":")
            ax.axhline(ctx.baseline(), color="grey", linestyle="--", linewidth=0.8,
                       label="unigram baseline (seed mean)")
            ax.axhline(ctx.threshold(), color="grey", linestyle=":", linewidth=0.8,
                       label="converges below (seed mean)")
            ax.set_title(title)
            ax.set_xlabel("step")
        axes[0][0].set_ylabel("loss (nats/byte); dots: validation")
        axes[0][-1].legend(fontsize=8)
        fig.tight_layout()
        return fig

    return draw


def _settings_table(ctx: SuiteRuns, rows: list[tuple[list[str], list[Run | None]]], header: list[str]) -> str:
    out = []
    for labels, runs in rows:
        losses = [final_loss(r) for r in runs]
        conv = [ctx.converged(r) for r in runs]
        out.append([*labels, mean_pm(losses), f"{sum(c is True for c in conv)}/{len(runs)}",
                    f"{sum(r is not None and r.status == 'diverged' for r in runs)}/{len(runs)}",
                    ", ".join(r.name if r else "missing" for r in runs)])
    return md_table([*header, "final val loss (mean ± std, n)", "converged", "diverged", "runs"], out)


# --- xiong2020-init --------------------------------------------------------------------------------

def _init_depths(scale: Scale) -> list[int]:
    return sorted({*scale.init_depths, scale.figure3_depth})


def init_specs(scale: Scale) -> list[Spec]:
    return [Spec.of("init", seed, norm, _depth(n)) for norm in (POST, PRE) for n in _init_depths(scale)
            for seed in range(scale.init_seeds)] + \
        [Spec.of("init", seed, norm, TIED, _depth(n)) for norm in (POST, PRE) for n in scale.init_depths
         for seed in range(scale.init_seeds)] + \
        [Spec.of("init", seed, norm, ENCDEC, _depth(scale.figure3_depth)) for norm in (POST, PRE)
         for seed in range(scale.init_seeds)]


def _shape(values: Sequence[float | None]) -> tuple[str, float | None]:
    """A per-layer trend in a word, from the seed mean of fitted last/first ratios, by Figure 3's
    thresholds: "grows" (> 1.25), "stays about flat" ([0.8, 1.25]), "falls" (< 0.8)."""
    xs = [v for v in values if usable(v)]
    if not xs:
        return "has no number", None
    mean = sum(xs) / len(xs)
    return ("grows" if mean > 1.25 else "stays about flat" if mean >= 0.8 else "falls"), mean


def _encdec_findings(ratio: dict[str, list[float | None]], verdicts: dict[str, str], depth: int) -> list[str]:
    """Where decoder-only and encoder-decoder differ, composed from the fitted ratios and verdicts:
    `ratio` and `verdicts` are keyed "post/decoder-only", "post/enc-dec decoder stack", ..."""
    out = []
    places = ("decoder-only", "enc-dec decoder stack", "enc-dec encoder stack")
    for norm in POST_PRE:
        name = LAYOUTS[norm].label
        shapes = {place: _shape(ratio[f"{norm}/{place}"]) for place in places}
        words = {w for w, _ in shapes.values()}
        listed = "; ".join(f"{place} {word} ({num(mean)})" for place, (word, mean) in shapes.items())
        if len(words) == 1:
            out.append(f"{name}, L = {depth}: decoder-only and encoder-decoder agree — ∇W_FC2 "
                       f"{next(iter(words))} with the layer index (seed-mean fitted last/first: {listed}).")
        else:
            out.append(f"{name}, L = {depth}: decoder-only and encoder-decoder differ — {listed} "
                       "(fitted last/first, seed mean; grows > 1.25, flat in [0.8, 1.25], falls < 0.8).")
        differing = [place for place in places[1:]
                     if verdicts[f"{norm}/{place}"] != verdicts[f"{norm}/decoder-only"]]
        if differing:
            out.append(f"{name}'s Figure 3 verdict at L = {depth} is {verdicts[f'{norm}/decoder-only']} "
                       "decoder-only but " + " and ".join(f"{verdicts[f'{norm}/{p}']} in the {p}"
                                                          for p in differing) + ".")
    return out


def init_analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds = ctx.scale, ctx.seeds("init")
    depths = sorted(scale.init_depths)
    deepest_l = max(depths)
    grad: dict[tuple[str, int, int], list[float]] = {}
    act: dict[tuple[str, int, int], list[float]] = {}
    for norm in POST_PRE:
        for n in _init_depths(scale):
            for seed in seeds:
                run = ctx.run("init", seed, {"model.norm": norm}, _depth(n))
                grad[norm, n, seed] = layer_profile(run.probes, "grad", "ffn.fc2", 0) if run else []
                act[norm, n, seed] = layer_profile(run.probes, "act", "resid", 0) if run else []

    f3 = scale.figure3_depth
    encdec: dict[tuple[str, str, int], list[float]] = {}
    for norm in POST_PRE:
        for seed in seeds:
            run = ctx.run("init", seed, {"model.norm": norm}, ENCDEC, _depth(f3))
            for stack in ("dec", "enc"):
                p = layer_profile(run.probes, "grad", f"{stack}.ffn.fc2", 0) if run else []
                encdec[norm, stack, seed] = p if len(p) == f3 else []
    ed_ratio = {(norm, stack): [trend_ratio(encdec[norm, stack, s]) for s in seeds]
                for norm in POST_PRE for stack in ("dec", "enc")}

    def last(norm: str, n: int, seed: int) -> float | None:
        profile = grad[norm, n, seed]
        return profile[-1] if len(profile) == n else None

    exponent = {norm: [power_exponent(depths, [last(norm, n, s) for n in depths]) for s in seeds]
                for norm in POST_PRE}

    def last_tied(norm: str, n: int, seed: int) -> float | None:
        run = ctx.run("init", seed, {"model.norm": norm}, TIED, _depth(n))
        profile = layer_profile(run.probes, "grad", "ffn.fc2", 0) if run else []
        return profile[-1] if len(profile) == n else None

    tied_last = {(norm, n, s): last_tied(norm, n, s)
                 for norm in POST_PRE for n in depths for s in seeds}
    exponent_tied = {norm: [power_exponent(depths, [tied_last[norm, n, s] for n in depths]) for s in seeds]
                     for norm in POST_PRE}
    ratio = {(norm, n): [trend_ratio(grad[norm, n, s]) for s in seeds]
             for norm in POST_PRE for n in {f3, deepest_l}}

    def full(norm: str, seed: int) -> list[float]:
        a = act[norm, deepest_l, seed]
        return a if len(a) == deepest_l + 1 else []

    lemma = {PRE_LN.name: [stream_increment(full(PRE_LN.name, s)) for s in seeds],
             POST_LN.name: [stream_growth(full(POST_LN.name, s)) for s in seeds]}
    depth_text = ", ".join(map(str, depths))
    quantity_b = f"exponent b of ‖∇W_FC2‖ ∝ L^b in the last layer, fitted over L ∈ {{{depth_text}}}"
    quantity_r = "last/first-layer ratio of the log-linear trend of ‖∇W_FC2‖ by layer, L = {}"
    quantity_i = (f"RMS² of the residual stream leaving layer {deepest_l - 1} (the last) minus RMS² of its "
                  "input "
                  f"(E‖x_L‖²/d − E‖x_0‖²/d), L = {deepest_l}")
    quantity_g = (f"RMS² of the residual stream leaving layer {deepest_l - 1} (the last) / leaving layer 0, "
                  f"L = {deepest_l}")
    low, high = deepest_l / 2, 3 * deepest_l / 2
    verdicts = [
        check("Theorem 1: Post-LN's last-layer FFN gradient at initialisation does not shrink with depth",
              quantity_b, above(-0.25, "b "), exponent[POST_LN.name], seeds),
        check("Theorem 1: Pre-LN's shrinks like 1/√L", quantity_b, within(-0.75, -0.25, "b "),
              exponent[PRE_LN.name], seeds),
        check("Theorem 1 with tied input/output embeddings (not the theorem's setting; lnexp 0.1's "
              "default): Post-LN's does not shrink with depth", quantity_b, above(-0.25, "b "),
              exponent_tied[POST_LN.name], seeds),
        check("Theorem 1 with tied input/output embeddings (not the theorem's setting; lnexp 0.1's "
              "default): Pre-LN's shrinks like 1/√L", quantity_b, within(-0.75, -0.25, "b "),
              exponent_tied[PRE_LN.name], seeds),
        *(v for n in sorted({f3, deepest_l}) for v in (
            check(f"Figure 3: Post-LN's ∇W_FC2 at initialisation grows with the layer index (L = {n})",
                  quantity_r.format(n), above(1.25, "ratio "), ratio[POST_LN.name, n], seeds),
            check(f"Figure 3: Pre-LN's stays about the same across layers (L = {n})", quantity_r.format(n),
                  within(0.8, 1.25, "ratio "), ratio[PRE_LN.name, n], seeds))),
        *(v for stack, label in (("dec", "decoder stack"), ("enc", "encoder stack")) for v in (
            check(f"Figure 3, encoder-decoder {label}: Post-LN's ∇W_FC2 at initialisation grows with the "
                  f"layer index (L = {f3} per stack)",
                  quantity_r.format(f3) + f" per stack, `{stack}.ffn.fc2`", above(1.25, "ratio "),
                  ed_ratio[POST_LN.name, stack], seeds),
            check(f"Figure 3, encoder-decoder {label}: Pre-LN's stays about the same across layers "
                  f"(L = {f3} per stack)", quantity_r.format(f3) + f" per stack, `{stack}.ffn.fc2`",
                  within(0.8, 1.25, "ratio "), ed_ratio[PRE_LN.name, stack], seeds))),
        check("Lemma: Pre-LN's residual stream grows linearly with depth, L/2 ≤ (E‖x_L‖² − E‖x_0‖²)/d ≤ "
              "3L/2", quantity_i, within(low, high, "growth "), lemma[PRE_LN.name], seeds),
        check("Lemma: Post-LN's stays constant (each LayerNorm resets it)", quantity_g,
              within(0.8, 1.25, "ratio "), lemma[POST_LN.name], seeds),
    ]
    definitions = [
        "All numbers are measured at step 0 of one-step runs (`log.grad_every: 1`): the gradient of the "
        f"loss of one batch of {scale.init['train']['batch_size']} × {scale.init['train']['seq_len']} "
        "bytes at the initial weights (fairseq's init; an untied output layer, fairseq's architecture "
        "default and the theorem's setting), seeds "
        + ", ".join(map(str, seeds)) + " (each seed a different initialisation and batch).",
        "Tied rows: the same cells with `model.tie_embeddings: true` (the output layer is the input "
        "embedding table, which fairseq multiplies by √d on input only). At initialisation each token "
        "then predicts itself, the initial loss exceeds ln V, and the output layer's gradient is not "
        "the theorem's. The rows show how much tying moves the exponent; they are not the claim.",
        "Theorem 1 thresholds: the two hypotheses are b = 0 (Post-LN) and b = −0.5 (Pre-LN); a seed "
        "passes when its b is on the hypothesis' side of the midpoint −0.25 (and, for Pre-LN, not "
        "steeper than −0.75).",
        "Figure 3 thresholds: \"grows\" is a fitted last/first ratio above 1.25; \"about the same\" "
        "is a ratio in [0.8, 1.25]. The trend is fitted by least squares to log ‖∇W_FC2‖ against the "
        "layer index (less noisy than the raw last/first ratio, which the table also shows). Tested at "
        f"L = {f3} (the paper's depth) and at L = {deepest_l}.",
        f"Lemma thresholds: the paper's bounds (1 + L/2)·d ≤ E‖x_L‖² ≤ (1 + 3L/2)·d assume a "
        "unit-variance input; each Pre-LN block adds a variance independent of the stream's, so the "
        f"bound on the growth is [L/2, 3L/2] = [{low:g}, {high:g}] for L = {deepest_l} whatever the "
        "input's scale (fairseq's √d-scaled tokens plus sinusoidal positions give RMS² ≈ 1.5). For "
        "Post-LN, constant means the stream leaving the last layer and the first have RMS² within a "
        "ratio [0.8, 1.25]. The residual stream is the `act` probe (RMS of the input of each layer "
        "and the output of the last).",
        f"Encoder-decoder rows (the paper's Figure 3 setting): `model.arch: encoder_decoder` with L = {f3} "
        "layers in each stack, on the synthetic translation task (`data.source: seq2seq`, `data.task: "
        f"translate`, {ENCDEC['data.vocab_size']} symbols; nothing downloaded), otherwise the decoder-only "
        "cells' model, batch and seeds. The encoder stack's profile is `enc.ffn.fc2`, the decoder's "
        "`dec.ffn.fc2` (each layer's index within its stack), with the same Figure 3 thresholds.",
    ]

    def profiles(plt: Any):
        from lnexp.plots import label_log_axis

        shown = _init_depths(scale)
        fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6), squeeze=False)
        for ax, n in zip(axes[0], shown):
            for i, norm in enumerate(POST_PRE):
                for k, seed in enumerate(seeds):
                    p = grad[norm, n, seed]
                    if p:
                        ax.plot(range(len(p)), p, color=f"C{i}", alpha=0.8, marker=".",
                                label=f"{norm}-LN" if k == 0 else None)
            ax.set_yscale("log")
            label_log_axis(ax.yaxis)
            ax.set_xticks(range(n))
            ax.set_title(f"L = {n}")
            ax.set_xlabel("layer (from 0)")
        axes[0][0].set_ylabel("‖∇W_FC2‖ at initialisation")
        axes[0][0].legend()
        fig.tight_layout()
        return fig

    def depth_plot(plt: Any):
        """Measured points, and the fitted power law a·L^b each verdict is about, per seed."""
        from lnexp.plots import label_log_axis

        def power_law(ys: list[float]) -> list[float]:
            a, b = fit_line([math.log(n) for n in depths], [math.log(y) for y in ys])
            return [math.exp(a) * n**b for n in depths]

        fig, ax = plt.subplots(figsize=(5.6, 4.2))
        for i, norm in enumerate(POST_PRE):
            for k, seed in enumerate(seeds):
                untied = [last(norm, n, seed) for n in depths]
                tied = [tied_last[norm, n, seed] for n in depths]
                for ys, b, marker, style, what in ((untied, exponent[norm][k], "o", "-", ""),
                                                   (tied, exponent_tied[norm][k], "x", ":", " tied")):
                    if all(usable(y) and y > 0 for y in ys):
                        ax.plot(depths, ys, color=f"C{i}", marker=marker, linestyle="none", alpha=0.8)
                        ax.plot(depths, power_law(ys), color=f"C{i}", linestyle=style, alpha=0.7,
                                label=f"{norm}-LN{what}, seed {seed}: fit b = {num(b, 2)}")
        pre = [y for y in (last(PRE_LN.name, min(depths), s) for s in seeds) if usable(y)]
        if pre:  # Theorem 1's Pre-LN rate, through the Pre-LN seeds' mean at the shallowest depth
            anchor = sum(pre) / len(pre)
            ax.plot(depths, [anchor * math.sqrt(min(depths) / n) for n in depths], color="grey",
                    linestyle="--", linewidth=1.2, label="1/√L reference")
        ax.set_yscale("log")
        depth_axis(ax, depths, "depth L")
        label_log_axis(ax.yaxis)
        ax.set_ylabel("last layer ‖∇W_FC2‖ at initialisation")
        ax.legend(fontsize=6.5)
        fig.tight_layout()
        return fig

    def lemma_plot(plt: Any):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for i, norm in enumerate(POST_PRE):
            for k, seed in enumerate(seeds):
                a = act[norm, deepest_l, seed]
                if a:
                    ax.plot(range(len(a)), [v**2 - a[0] ** 2 for v in a], color=f"C{i}",
                            label=f"{norm}-LN" if k == 0 else None)
        xs = list(range(deepest_l + 1))
        ax.fill_between(xs, [x / 2 for x in xs], [1.5 * x for x in xs], color="grey", alpha=0.2,
                        label="lemma (Pre-LN): [l/2, 3l/2]")
        ax.set_xticks(xs)
        ax.set_xlabel("layer boundary l (0: the input; l: leaving layer l − 1)")
        ax.set_ylabel("RMS² − RMS² of the input")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    stacks = (("decoder-only", lambda norm, seed: grad[norm, f3, seed] if len(grad[norm, f3, seed]) == f3
                                                    else [], "ffn.fc2"),
              ("enc-dec decoder stack", lambda norm, seed: encdec[norm, "dec", seed], "dec.ffn.fc2"),
              ("enc-dec encoder stack", lambda norm, seed: encdec[norm, "enc", seed], "enc.ffn.fc2"))

    def encdec_plot(plt: Any):
        from lnexp.plots import label_log_axis

        fig, axes = plt.subplots(1, len(stacks), figsize=(4.4 * len(stacks), 3.7), squeeze=False, sharey=True)
        for ax, (title, get, role) in zip(axes[0], stacks):
            for i, norm in enumerate(POST_PRE):
                fitted = [trend_ratio(get(norm, s)) for s in seeds]
                for k, seed in enumerate(seeds):
                    p = get(norm, seed)
                    if p:
                        label = f"{norm}-LN (fitted last/first {mean_pm(fitted)})"
                        ax.plot(range(len(p)), p, color=f"C{i}", alpha=0.8, marker=".",
                                label=label if k == 0 else None)
            ax.set_yscale("log")
            label_log_axis(ax.yaxis)
            ax.set_title(f"{title}, L = {f3}\n{role}", fontsize=10)
            ax.set_xlabel("layer within its stack (from 0)")
            ax.set_xticks(range(f3))
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("‖∇W_FC2‖ at initialisation")
        fig.tight_layout()
        return fig

    by_claim = {v.claim: v.verdict for v in verdicts}
    f3_verdicts = {}
    for norm, head in ((POST_LN.name, "Post-LN's ∇W_FC2 at initialisation grows with the layer index"),
                       (PRE_LN.name, "Pre-LN's stays about the same across layers")):
        f3_verdicts[f"{norm}/decoder-only"] = by_claim[f"Figure 3: {head} (L = {f3})"]
        for label in ("decoder stack", "encoder stack"):
            f3_verdicts[f"{norm}/enc-dec {label}"] = by_claim[
                f"Figure 3, encoder-decoder {label}: {head} (L = {f3} per stack)"]
    findings = _encdec_findings(
        {f"{norm}/{title}": [trend_ratio(get(norm, s)) for s in seeds] for norm in POST_PRE
         for title, get, _ in stacks}, f3_verdicts, f3)

    rows = []
    for norm in POST_PRE:
        for n in _init_depths(scale):
            lasts = [last(norm, n, s) for s in seeds]
            raw = [grad[norm, n, s][-1] / grad[norm, n, s][0] if grad[norm, n, s] else None for s in seeds]
            fitted = [trend_ratio(grad[norm, n, s]) for s in seeds]
            rows.append([f"{norm}-LN", n, mean_pm(lasts), mean_pm(raw), mean_pm(fitted)])
        for n in depths:
            rows.append([f"{norm}-LN, tied embeddings", n, mean_pm([tied_last[norm, n, s] for s in seeds]),
                         "", ""])
        for stack, label in (("dec", "decoder stack"), ("enc", "encoder stack")):
            ps = [encdec[norm, stack, s] for s in seeds]
            rows.append([f"{norm}-LN, enc-dec {label} (`{stack}.ffn.fc2`)", f"{f3} + {f3}",
                         mean_pm([p[-1] if p else None for p in ps]),
                         mean_pm([p[-1] / p[0] if p and p[0] > 0 else None for p in ps]),
                         mean_pm([trend_ratio(p) for p in ps])])
    table = md_table(["layout", "L", "last layer ‖∇W_FC2‖", "raw last/first", "fitted last/first"], rows)
    return Analysis(verdicts, definitions, [
        Figure("grad_by_layer.png", "Figure 3 analogue: ‖∇W_FC2‖ by layer at initialisation, one line "
               "per seed", profiles),
        Figure("grad_by_layer_encdec.png", f"Figure 3, decoder-only against encoder-decoder (the paper's "
               f"setting): ‖∇W_FC2‖ by layer at initialisation, L = {f3} (per stack), one line per seed",
               encdec_plot),
        Figure("grad_vs_depth.png", "Theorem 1: the last layer's ‖∇W_FC2‖ against depth (log-log), with "
               "the fitted exponent b per seed", depth_plot),
        Figure("residual_growth.png", f"Lemma: residual-stream RMS² by layer at initialisation, L = "
               f"{deepest_l}, against the paper's bounds", lemma_plot),
    ], [table], findings=findings)


# --- xiong2020-warmup ------------------------------------------------------------------------------

def warmup_specs(scale: Scale) -> list[Spec]:
    return [Spec.of("train", seed, setting, _lr(lr)) for lr in scale.lrs
            for setting in (POST, {**POST, **_warm(scale)}, PRE) for seed in range(scale.seeds)]


def _val_at(run: Run | None, step: int) -> float | None:
    if run is None:
        return None
    for m in run.metrics:
        if m["step"] == step and m.get("val_loss") is not None:
            return float(m["val_loss"])
    return math.inf if run.status == "diverged" else None


def warmup_analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds = ctx.scale, ctx.seeds()
    early = scale.train["train"]["eval_every"]
    verdicts, panels, rows = [], [], []
    for lr in scale.lrs:
        post = [ctx.run("train", s, POST, _lr(lr)) for s in seeds]
        warm = [ctx.run("train", s, POST, _warm(scale), _lr(lr)) for s in seeds]
        pre = [ctx.run("train", s, PRE, _lr(lr)) for s in seeds]
        loss = {k: [final_loss(r) for r in v]
                for k, v in ((POST_LN.name, post), ("warm", warm), (PRE_LN.name, pre))}
        verdicts += [
            check(f"Post-LN without warm-up ends worse than with warm-up (lr {lr:g})",
                  "final val loss: Post-LN no warm-up − Post-LN warm-up (nats)", above(MARGIN_LOSS),
                  [difference(a, b) for a, b in zip(loss[POST_LN.name], loss["warm"])], seeds),
            check(f"Pre-LN without warm-up does as well as Post-LN with warm-up (lr {lr:g})",
                  "final val loss: Pre-LN no warm-up − Post-LN warm-up (nats)", below(MARGIN_LOSS),
                  [difference(a, b) for a, b in zip(loss[PRE_LN.name], loss["warm"])], seeds),
            check(f"Pre-LN without warm-up is ahead early (lr {lr:g})",
                  f"val loss at step {early}: Pre-LN no warm-up − Post-LN warm-up (nats)", below(0),
                  [difference(_val_at(a, early), _val_at(b, early)) for a, b in zip(pre, warm)], seeds),
        ]
        settings = [("Post-LN, no warm-up", post), (f"Post-LN, warm-up {scale.warmup}", warm),
                    ("Pre-LN, no warm-up", pre)]
        panels.append((f"lr {lr:g}", settings))
        rows += [([label, f"{lr:g}"], runs) for label, runs in settings]
    definitions = [
        _loss_definition(), _converge_definition(ctx),
        f"Settings: Adam β = (0.9, 0.98), {scale.train['train']['steps']} steps, linear decay to 0 "
        f"after a linear warm-up of {scale.warmup} steps (or none), learning rates "
        + ", ".join(f"{lr:g}" for lr in scale.lrs) + " (the paper used 5e-4 and 1e-3 with 4000 warm-up "
        "steps on a 6-6 encoder-decoder; the tiny model tolerates larger learning rates, so the grid is "
        "shifted up to where the failure can appear).",
        f"\"Ahead early\": validation loss at step {early} (the end of the warm-up), lower for Pre-LN.",
    ]
    return Analysis(verdicts, definitions, [
        Figure("loss_curves.png", "Figure 2 analogue: training loss (running mean over 10 steps, averaged "
               "over seeds) and validation loss (dots)", _curves_figure(ctx, panels))],
        [_settings_table(ctx, rows, ["setting", "lr"])])


# --- radam -----------------------------------------------------------------------------------------

def radam_specs(scale: Scale) -> list[Spec]:
    radam = {"optim.name": "radam"}
    return [Spec.of("train", seed, setting, _lr(lr)) for lr in scale.lrs
            for setting in (POST, {**POST, **radam}, {**POST, **_warm(scale)}) for seed in range(scale.seeds)]


def radam_analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds = ctx.scale, ctx.seeds()
    radam = {"optim.name": "radam"}
    verdicts, panels, rows = [], [], []
    for lr in scale.lrs:
        adam = [ctx.run("train", s, POST, _lr(lr)) for s in seeds]
        rad = [ctx.run("train", s, POST, radam, _lr(lr)) for s in seeds]
        warm = [ctx.run("train", s, POST, _warm(scale), _lr(lr)) for s in seeds]
        la, lr_, lw = ([final_loss(r) for r in runs] for runs in (adam, rad, warm))
        verdicts += [
            check(f"Post-LN without warm-up: RAdam ends better than Adam (lr {lr:g})",
                  "final val loss: Adam − RAdam (nats)", above(MARGIN_LOSS),
                  [difference(a, b) for a, b in zip(la, lr_)], seeds),
            check(f"RAdam without warm-up does as well as Adam with warm-up (lr {lr:g})",
                  "final val loss: RAdam no warm-up − Adam warm-up (nats)", below(MARGIN_LOSS),
                  [difference(a, b) for a, b in zip(lr_, lw)], seeds),
        ]
        settings = [("Adam, no warm-up", adam), ("RAdam, no warm-up", rad),
                    (f"Adam, warm-up {scale.warmup}", warm)]
        panels.append((f"Post-LN, lr {lr:g}", settings))
        rows += [([label, f"{lr:g}"], runs) for label, runs in settings]
    beta2 = scale.train["optim"]["betas"][1]
    definitions = [
        _loss_definition(), _converge_definition(ctx),
        f"All runs Post-LN, β = (0.9, {beta2:g}), {scale.train['train']['steps']} steps, linear decay. "
        f"`torch.optim.RAdam` takes SGD-with-momentum steps while ρ_t ≤ 5; its implicit warm-up is about "
        f"2/(1 − β2) = {2 / (1 - beta2):.0f} steps (Ma & Yarats 2019), to compare with the explicit "
        f"{scale.warmup}-step warm-up.",
    ]
    return Analysis(verdicts, definitions, [
        Figure("loss_curves.png", "Post-LN without warm-up: Adam against RAdam, and Adam with warm-up",
               _curves_figure(ctx, panels))],
        [_settings_table(ctx, rows, ["optimiser", "lr"])])


# --- depth -----------------------------------------------------------------------------------------

def depth_specs(scale: Scale) -> list[Spec]:
    return [Spec.of("train", seed, norm, _warm(scale), _depth(n), _lr(scale.depth_lr))
            for n in scale.depths for norm in (POST, PRE) for seed in range(scale.seeds)]


def depth_analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds, depths = ctx.scale, ctx.seeds(), list(ctx.scale.depths)
    runs = {(norm, n, s): ctx.run("train", s, {"model.norm": norm}, _warm(scale), _depth(n),
                                  _lr(scale.depth_lr))
            for norm in POST_PRE for n in depths for s in seeds}
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
        check("Pre-LN trains at every depth", f"fraction of depths {{{depth_text}}} that converge, Pre-LN",
              _equals(1), [fraction(PRE_LN.name, s) for s in seeds], seeds),
        check("Post-LN stops training beyond some depth at which Pre-LN still trains",
              "deepest depth that converges: Pre-LN − Post-LN", above(0), [gap(s) for s in seeds], seeds),
        check(f"(control) Post-LN trains at the shallowest depth, L = {shallow}",
              f"converges at L = {shallow} (1 yes, 0 no), Post-LN", _equals(1),
              [None if conv[POST_LN.name, shallow, s] is None else float(conv[POST_LN.name, shallow, s])
               for s in seeds],
              seeds),
    ]
    definitions = [
        _loss_definition(), _converge_definition(ctx),
        f"Both layouts with the same recipe, as in Wang et al.: Adam, lr {scale.depth_lr:g}, warm-up "
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
        [_settings_table(ctx, rows, ["layout", "depth"])])


# --- stability-map ---------------------------------------------------------------------------------

def map_specs(scale: Scale) -> list[Spec]:
    return [Spec.of("train", seed, layout, _depth(n), _lr(lr)) for layout in stability_recipes(scale).values()
            for n in scale.map_depths for lr in scale.map_lrs for seed in range(scale.seeds)]


def map_analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds = ctx.scale, ctx.seeds()
    lrs, depths, named = list(scale.map_lrs), list(scale.map_depths), stability_recipes(scale)
    runs = {(name, n, lr, s): ctx.run("train", s, layout, _depth(n), _lr(lr))
            for name, layout in named.items() for n in depths for lr in lrs for s in seeds}
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

    quantity = "largest stable lr, {a} minus {b}, in grid steps, averaged over depths"
    verdicts = [
        check("Warm-up widens Post-LN's stable learning-rate range",
              quantity.format(a="post+warm-up", b=POST_LN.name), above(0),
              [widening("post+warm-up", POST_LN.name, s) for s in seeds], seeds),
        check("RAdam (no warm-up) widens Post-LN's stable range",
              quantity.format(a="post+RAdam", b=POST_LN.name), above(0),
              [widening("post+RAdam", POST_LN.name, s) for s in seeds], seeds),
        check("Pre-LN (no warm-up) is stable at larger learning rates than Post-LN (no warm-up)",
              quantity.format(a=PRE_LN.name, b=POST_LN.name), above(0),
              [widening(PRE_LN.name, POST_LN.name, s) for s in seeds],
              seeds),
        check("Depth narrows Post-LN's stable range more than Pre-LN's",
              f"change of the largest stable lr from L = {min(depths)} to L = {max(depths)} (grid steps): "
              "Pre-LN minus Post-LN with warm-up", above(0), [depth_gap(s) for s in seeds], seeds),
    ]
    ratio = lrs[1] / lrs[0] if len(lrs) > 1 else 1
    definitions = [
        _converge_definition(ctx),
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
                                           for name in named})
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


# --- layouts ---------------------------------------------------------------------------------------

def layout_names(scale: Scale) -> tuple[str, ...]:
    """The layouts the suite compares: `--layouts` (the scale's `layouts`), else every registered one
    (the built-ins and any plugin's)."""
    return scale.layouts or tuple(LAYOUTS)


def _layout(name: str) -> dict[str, Any]:
    return {"model.norm": name}


def layouts_specs(scale: Scale) -> list[Spec]:
    n = scale.layout_depth
    names = layout_names(scale)
    return [Spec.of("init", seed, _layout(name), _depth(n)) for name in names
            for seed in range(scale.init_seeds)] + \
        [Spec.of("train", seed, _layout(name), _depth(n), _lr(lr)) for name in names
         for lr in scale.map_lrs for seed in range(scale.layout_seeds)]


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
    shapes = {n: _shape(ratio[n]) for n in ratio}
    if any(m is not None for _, m in shapes.values()):
        out.append(f"‖∇W_FC2‖ by layer at initialisation (fitted last/first, seed mean, L = {depth}): "
                   + "; ".join(f"{LAYOUTS[n].label} {w} ({num(m)})" for n, (w, m) in shapes.items()) + ".")
    return out


def layouts_analyse(ctx: SuiteRuns) -> Analysis:
    scale, n = ctx.scale, ctx.scale.layout_depth
    names = layout_names(scale)
    init_seeds, seeds, lrs = ctx.seeds("init"), list(range(scale.layout_seeds)), list(scale.map_lrs)
    grad: dict[tuple[str, int], list[float]] = {}
    act: dict[tuple[str, int], list[float]] = {}
    for name in names:
        for s in init_seeds:
            run = ctx.run("init", s, _layout(name), _depth(n))
            g = layer_profile(run.probes, "grad", "ffn.fc2", 0) if run else []
            a = layer_profile(run.probes, "act", "resid", 0) if run else []
            grad[name, s] = g if len(g) == n else []
            act[name, s] = a if len(a) == n + 1 and a[0] > 0 else []
    ratio = {name: [trend_ratio(grad[name, s]) for s in init_seeds] for name in names}
    growth = {name: [stream_growth(act[name, s]) for s in init_seeds] for name in names}
    runs = {(name, lr, s): ctx.run("train", s, _layout(name), _depth(n), _lr(lr))
            for name in names for lr in lrs for s in seeds}
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
        _converge_definition(ctx, seeds),
        "**largest converging lr**: the largest learning rate of the stability map's grid "
        + ", ".join(f"{lr:g}" for lr in lrs) + f" (one grid step = ×{ratio_step:.3g}) at which the run "
        "converges; \"none\" (one step below the grid) if none does. Per layout and seed.",
        "Layouts (`model.norm`, lnexp/layouts.py): " + "; ".join(
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
        from lnexp.plots import label_log_axis

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


# --- gpt2-scaling ----------------------------------------------------------------------------------

def _gpt2(scaled: bool) -> dict[str, Any]:
    return {**PRE_GPT2, "model.residual_scaling": "gpt2" if scaled else "none"}


def gpt2_specs(scale: Scale) -> list[Spec]:
    return [Spec.of("train", seed, _gpt2(scaled), _depth(scale.gpt2_depth), _lr(scale.gpt2_lr))
            for scaled in (False, True) for seed in range(scale.seeds)]


def gpt2_analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds, n = ctx.scale, ctx.seeds(), ctx.scale.gpt2_depth
    runs = {(scaled, s): ctx.run("train", s, _gpt2(scaled), _depth(n), _lr(scale.gpt2_lr))
            for scaled in (False, True) for s in seeds}

    def profile(scaled: bool, seed: int, which: str) -> list[float]:
        run = runs[scaled, seed]
        if run is None:
            return []
        steps = logged_steps(run.probes, "act")
        if not steps:
            return []
        return layer_profile(run.probes, "act", "resid", steps[0] if which == "init" else steps[-1])

    def growth(scaled: bool, seed: int, which: str) -> float | None:
        p = profile(scaled, seed, which)
        return p[-1] / p[0] if len(p) == n + 1 and p[0] > 0 else None

    last_step = {s: (logged_steps(runs[False, s].probes, "act") or [None])[-1] if runs[False, s] else None
                 for s in seeds}
    step_text = ", ".join(str(v) for v in sorted({v for v in last_step.values() if v is not None})) or "–"
    quantity = "RMS leaving the last layer / entering the first: with scaling ÷ without"
    verdicts = [
        check("Without scaling, the Pre-LN residual stream grows with depth (initialisation)",
              "RMS leaving the last layer / entering the first, unscaled, step 0", above(1.25),
              [growth(False, s, "init") for s in seeds], seeds),
        check("1/√N scaling keeps that growth in check at initialisation", quantity + ", step 0", below(0.8),
              [_ratio(growth(True, s, "init"), growth(False, s, "init")) for s in seeds], seeds),
        check("…and after training", quantity + f", last probe step ({step_text})", below(0.8),
              [_ratio(growth(True, s, "end"), growth(False, s, "end")) for s in seeds], seeds),
    ]
    definitions = [
        f"Both Pre-LN with GPT-2's init (all weights N(0, 0.02)), L = {n}, Adam lr {scale.gpt2_lr:g}, no "
        f"warm-up, {scale.train['train']['steps']} steps; \"scaled\" multiplies the output projections of "
        f"every residual branch (attn.out, ffn.fc2) by 1/√N, N = 2·L = {2 * n}.",
        "The residual stream is the `act` probe: the RMS of each layer's input and of the last layer's "
        "output, on a training batch.",
        "Thresholds: \"grows\" is a last/first RMS ratio above 1.25; \"in check\" is a growth with scaling "
        "below 0.8 × the growth without.",
    ]

    def draw(plt: Any):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        for ax, which in zip(axes, ("init", "end")):
            for i, scaled in enumerate((False, True)):
                for k, s in enumerate(seeds):
                    p = profile(scaled, s, which)
                    if p:
                        ax.plot(range(len(p)), p, color=f"C{i}", marker=".",
                                label=("1/√N scaling" if scaled else "no scaling") if k == 0 else None)
            ax.set_yscale("log")
            ax.set_title("initialisation" if which == "init" else f"step {step_text}")
            ax.set_xlabel("layer boundary")
        axes[0].set_ylabel("residual-stream RMS")
        axes[0].legend()
        fig.tight_layout()
        return fig

    rows = [[("scaled" if scaled else "unscaled"), mean_pm([growth(scaled, s, "init") for s in seeds]),
             mean_pm([growth(scaled, s, "end") for s in seeds]),
             mean_pm([final_loss(runs[scaled, s]) for s in seeds])] for scaled in (False, True)]
    table = md_table(["residual scaling", "RMS growth at init", "RMS growth at the last probe",
                      "final val loss"], rows)
    return Analysis(verdicts, definitions, [
        Figure("residual_norms.png", "Residual-stream RMS by layer, with and without 1/√N scaling, one "
               "line per seed", draw)], [table])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if usable(a) and usable(b) and b else None


SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("xiong2020-init", "Gradients at initialisation: Post-LN against Pre-LN",
          "Xiong et al. 2020, On Layer Normalization in the Transformer Architecture — Theorem 1, "
          "Figure 3 and the hidden-state lemma", init_specs, init_analyse),
    Suite("xiong2020-warmup", "Post-LN needs warm-up; Pre-LN does not",
          "Xiong et al. 2020, Figure 2 / Section 3", warmup_specs, warmup_analyse),
    Suite("radam", "RAdam removes Post-LN's need for warm-up",
          "Liu et al. 2019, On the Variance of the Adaptive Learning Rate and Beyond; Xiong et al. 2020 §4.2",
          radam_specs, radam_analyse),
    Suite("depth", "Pre-LN trains deeper stacks than Post-LN",
          "Wang et al. 2019, Learning Deep Transformer Models for Machine Translation", depth_specs,
          depth_analyse),
    Suite("stability-map", "The largest stable learning rate by layout and depth",
          "A phase diagram generalising Xiong et al. 2020, Liu et al. 2019 and Wang et al. 2019",
          map_specs, map_analyse),
    Suite("gpt2-scaling", "GPT-2's 1/√N residual scaling and the residual stream's growth",
          "Radford et al. 2019 (GPT-2), Language Models are Unsupervised Multitask Learners", gpt2_specs,
          gpt2_analyse),
    Suite("layouts", "The layouts at one depth: the residual stream at initialisation and the largest "
          "learning rate that trains without warm-up",
          "Post-LN (Vaswani et al. 2017), Pre-LN (Xiong et al. 2020), Sandwich-LN (Ding et al. 2021), "
          "DeepNorm (Wang et al. 2022), Admin (Liu et al. 2020)", layouts_specs, layouts_analyse),
)}


def register(suite: Suite) -> Suite:
    """Add a suite to SUITES (the CLI, `all` and the index read it from there)."""
    SUITES[suite.name] = suite
    return suite
