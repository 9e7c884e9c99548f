"""`xiong2020-init`: Xiong et al. 2020's Theorem 1, Figure 3 and hidden-state lemma, measured on
one-step runs at initialisation: how the last layer's FFN gradient scales with depth, how it varies
across layers (decoder-only, and the paper's encoder-decoder setting), and how the residual stream grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lnexp.core.layouts import LAYOUTS
from lnexp.core.layouts import POST as POST_LN
from lnexp.core.layouts import PRE as PRE_LN
from lnexp.experiments.reproduce.engine import Grid, Scale, SuiteRuns, per_seed
from lnexp.experiments.reproduce.report import Analysis, Figure, md_table, mean_pm, num
from lnexp.experiments.reproduce.suites.common import POST_PRE, Suite, model_norm, n_layers, trend_word
from lnexp.experiments.reproduce.verdicts import (
    above,
    check,
    fit_line,
    power_exponent,
    stream_growth,
    stream_increment,
    trend_ratio,
    usable,
    within,
)
from lnexp.experiments.stability import depth_axis
from lnexp.run.reader import Run
from lnexp.run.rows import layer_profile


@dataclass(frozen=True)
class Params:
    depths: tuple[int, ...]  # Theorem 1's depths (untied and tied)
    figure3_depth: int       # Figure 3's per-layer profile, decoder-only and encoder-decoder


PARAMS = {"tiny": Params((6, 12, 24), 6), "cpu": Params((6, 12, 24), 6), "small": Params((6, 12, 24, 48), 6)}

# Xiong et al.'s Figure 3 setting in miniature: an encoder-decoder (n_layers per stack) on the
# synthetic translation task (32 symbols), otherwise the same model and batch as the decoder-only cells.
ENCDEC = {"model.arch": "encoder_decoder", "data.source": "seq2seq", "data.task": "translate",
          "data.vocab_size": 32}
# lnexp 0.1's default, kept as a labelled variant: the output layer is the (√d-scaled) input table, so
# at initialisation each token predicts itself. Theorem 1 assumes an untied output layer.
TIED = {"model.tie_embeddings": True}


def profile_depths(p: Params) -> list[int]:
    """The depths of the untied cells: Theorem 1's and Figure 3's."""
    return sorted({*p.depths, p.figure3_depth})


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: ("untied" | "tied" | "encdec", layout, depth); every cell one step at initialisation."""
    return {
        **{("untied", norm, n): per_seed("init", scale.init_seeds, model_norm(norm), n_layers(n))
           for norm in POST_PRE for n in profile_depths(p)},
        **{("tied", norm, n): per_seed("init", scale.init_seeds, model_norm(norm), TIED, n_layers(n))
           for norm in POST_PRE for n in p.depths},
        **{("encdec", norm, p.figure3_depth): per_seed("init", scale.init_seeds, model_norm(norm), ENCDEC,
                                                        n_layers(p.figure3_depth))
           for norm in POST_PRE},
    }


def _encdec_findings(ratio: dict[str, list[float | None]], verdicts: dict[str, str], depth: int) -> list[str]:
    """Where decoder-only and encoder-decoder differ, composed from the fitted ratios and verdicts:
    `ratio` and `verdicts` are keyed "post/decoder-only", "post/enc-dec decoder stack", ..."""
    out = []
    places = ("decoder-only", "enc-dec decoder stack", "enc-dec encoder stack")
    for norm in POST_PRE:
        name = LAYOUTS[norm].label
        shapes = {place: trend_word(ratio[f"{norm}/{place}"]) for place in places}
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


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, params, seeds = ctx.scale, ctx.params, ctx.seeds("init")
    depths = sorted(params.depths)
    deepest_l = max(depths)
    grad: dict[tuple[str, int, int], list[float]] = {}
    act: dict[tuple[str, int, int], list[float]] = {}
    for norm in POST_PRE:
        for n in profile_depths(params):
            for seed, run in zip(seeds, ctx["untied", norm, n]):
                grad[norm, n, seed] = layer_profile(run.probes, "grad", "ffn.fc2", 0) if run else []
                act[norm, n, seed] = layer_profile(run.probes, "act", "resid", 0) if run else []

    f3 = params.figure3_depth
    encdec: dict[tuple[str, str, int], list[float]] = {}
    for norm in POST_PRE:
        for seed, run in zip(seeds, ctx["encdec", norm, f3]):
            for stack in ("dec", "enc"):
                profile = layer_profile(run.probes, "grad", f"{stack}.ffn.fc2", 0) if run else []
                encdec[norm, stack, seed] = profile if len(profile) == f3 else []
    ed_ratio = {(norm, stack): [trend_ratio(encdec[norm, stack, s]) for s in seeds]
                for norm in POST_PRE for stack in ("dec", "enc")}

    def last(norm: str, n: int, seed: int) -> float | None:
        profile = grad[norm, n, seed]
        return profile[-1] if len(profile) == n else None

    exponent = {norm: [power_exponent(depths, [last(norm, n, s) for n in depths]) for s in seeds]
                for norm in POST_PRE}

    def last_tied(run: Run | None, n: int) -> float | None:
        profile = layer_profile(run.probes, "grad", "ffn.fc2", 0) if run else []
        return profile[-1] if len(profile) == n else None

    tied_last = {(norm, n, s): last_tied(run, n)
                 for norm in POST_PRE for n in depths for s, run in zip(seeds, ctx["tied", norm, n])}
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
        from lnexp.report.figures import label_log_axis

        shown = profile_depths(params)
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
        from lnexp.report.figures import label_log_axis

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
        from lnexp.report.figures import label_log_axis

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
        for n in profile_depths(params):
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


SUITE = Suite(
    "xiong2020-init", "Gradients at initialisation: Post-LN against Pre-LN",
    "Xiong et al. 2020, On Layer Normalization in the Transformer Architecture — Theorem 1, Figure 3 and "
    "the hidden-state lemma", PARAMS, grid, analyse)
