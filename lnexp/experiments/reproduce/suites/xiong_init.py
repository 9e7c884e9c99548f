"""`xiong2020-init`: Xiong et al. 2020's Theorem 1, Figure 3 and hidden-state lemma, measured on
one-step runs at initialisation: how the last layer's FFN gradient scales with depth and with width,
how it varies across layers (decoder-only, and the paper's encoder-decoder setting), and how the
residual stream grows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lnexp.core.layouts import LAYOUTS
from lnexp.core.layouts import POST as POST_LN
from lnexp.core.layouts import PRE as PRE_LN
from lnexp.experiments.reproduce.engine import Grid, Scale, SuiteRuns, per_seed
from lnexp.experiments.reproduce.measure import (
    fit_line,
    last_layer,
    power_exponent,
    seedwise,
    stream_growth,
    stream_increment,
    trend_ratio,
)
from lnexp.experiments.reproduce.report import Analysis, Figure, md_table, mean_pm, num
from lnexp.experiments.reproduce.suites.common import POST_PRE, Suite, model_norm, n_layers, trend_word
from lnexp.experiments.reproduce.verdicts import GREATER, WITHIN, Claim, Verdict, Wiring
from lnexp.experiments.stability import depth_axis


@dataclass(frozen=True)
class Params:
    depths: tuple[int, ...]  # Theorem 1's depths (untied and tied)
    figure3_depth: int       # Figure 3's profile (decoder-only, encoder-decoder); the width rows' L
    widths: tuple[int, ...]  # Theorem 1's widths d_model (d_ff = 4·d), at L = figure3_depth


PARAMS = {"tiny": Params((6, 12, 24), 6, (32, 64, 128)), "cpu": Params((6, 12, 24), 6, (32, 64, 128)),
          "small": Params((6, 12, 24, 48), 6, (64, 128, 256))}

# Xiong et al.'s Figure 3 setting in miniature: an encoder-decoder (n_layers per stack) on the
# synthetic translation task (32 symbols), otherwise the same model and batch as the decoder-only cells.
ENCDEC = {"model.arch": "encoder_decoder", "data.source": "seq2seq", "data.task": "translate",
          "data.vocab_size": 32}
# lnexp 0.1's default, kept as a labelled variant: the output layer is the (√d-scaled) input table, so
# at initialisation each token predicts itself. Theorem 1 assumes an untied output layer.
TIED = {"model.tie_embeddings": True}
STACKS = {"dec": "decoder stack", "enc": "encoder stack"}

# --- the claims, each declared once ----------------------------------------------------------------
# Theorem 1's depth hypotheses are b = 0 (Post-LN) and b = −0.5 (Pre-LN); each band reaches their
# midpoint −0.25, so that no exponent is inside both. Its width rate d·√(ln d) is the same for both.
EXPONENT = "exponent b of ‖∇W_FC2‖ ∝ L^b in the last layer, fitted over L ∈ {{{depths}}}"
MIDPOINT = "lnexp's choice: Theorem 1's rate ± 0.25, the midpoint between its two rates (b = 0, b = −0.5)"
THEOREM1_POST = Claim("Theorem 1: Post-LN's last-layer FFN gradient at initialisation does not depend on "
                      "depth", EXPONENT, WITHIN, (-0.25, 0.25), MIDPOINT)
THEOREM1_PRE = Claim("Theorem 1: Pre-LN's shrinks like 1/√L", EXPONENT, WITHIN, (-0.75, -0.25), MIDPOINT)
UNTIED_NOTE = "Theorem 1 with tied input/output embeddings (not the theorem's setting; lnexp 0.1's default): "
THEOREM1_POST_TIED = Claim(UNTIED_NOTE + "Post-LN's does not depend on depth", EXPONENT, WITHIN,
                           (-0.25, 0.25), MIDPOINT)
THEOREM1_PRE_TIED = Claim(UNTIED_NOTE + "Pre-LN's shrinks like 1/√L", EXPONENT, WITHIN, (-0.75, -0.25),
                          MIDPOINT)
WIDTH = Claim("Theorem 1: {layout}'s last-layer FFN gradient at initialisation grows with width like "
              "d·√(ln d)",
              "exponent a of ‖∇W_FC2‖ ∝ (d·√ln d)^a in the last layer, L = {L}, fitted over d ∈ {{{widths}}}",
              WITHIN, (0.75, 1.25), "lnexp's choice: Theorem 1's O(d·√ln d) read as a rate (a = 1), as the "
              "depth rows read theirs, ± the depth rows' 0.25")
TREND = "last/first-layer ratio of the log-linear trend of ‖∇W_FC2‖ by layer, L = {L}{where}"
FIGURE3_POST = Claim("Figure 3{setting}: Post-LN's ∇W_FC2 at initialisation grows with the layer index "
                     "(L = {L}{per_stack})", TREND, GREATER, 1.25,
                     "lnexp's choice: a quarter up over the stack (the paper shows a trend, no number)")
FIGURE3_PRE = Claim("Figure 3{setting}: Pre-LN's stays about the same across layers (L = {L}{per_stack})",
                    TREND, WITHIN, (0.8, 1.25), "lnexp's choice: within a quarter of flat (1/1.25 to 1.25)")
LEMMA_PRE = Claim("Lemma: Pre-LN's residual stream grows linearly with depth, "
                  "L/2 ≤ (E‖x_L‖² − E‖x_0‖²)/d ≤ 3L/2",
                  "RMS² of the residual stream leaving layer {last} (the last) minus RMS² of its input "
                  "(E‖x_L‖²/d − E‖x_0‖²/d), L = {L}", WITHIN, None,
                  "Xiong et al. 2020, the lemma's bounds [L/2, 3L/2] (unit input variance)")
LEMMA_POST = Wiring("Lemma: Post-LN's residual stream stays constant (every block ends in a LayerNorm)",
                    "RMS² of the residual stream leaving the last layer / leaving layer 0, L = {L}",
                    1 - 1e-3, 1 + 1e-3, "each block's output is a LayerNorm's, RMS 1 at initialisation "
                    "(γ = 1, β = 0) up to its ε")


def profile_depths(p: Params) -> list[int]:
    """The depths of the untied cells: Theorem 1's and Figure 3's."""
    return sorted({*p.depths, p.figure3_depth})


def width(scale: Scale, d: int) -> dict[str, Any]:
    """d_model = d, d_ff in the scale's proportion (4·d)."""
    model = scale.init["model"]
    return {"model.d_model": d, "model.d_ff": d * model["d_ff"] // model["d_model"]}


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: ("untied" | "tied" | "encdec", layout, depth), ("width", layout, d_model); every cell one
    step at initialisation (the width cell of the scale's own d_model is the untied cell at that L)."""
    def cell(norm: str, *parts: dict[str, Any]) -> tuple:
        return per_seed("init", scale.init_seeds, model_norm(norm), *parts)

    return {
        **{("untied", norm, n): cell(norm, n_layers(n)) for norm in POST_PRE for n in profile_depths(p)},
        **{("tied", norm, n): cell(norm, TIED, n_layers(n)) for norm in POST_PRE for n in p.depths},
        **{("encdec", norm, p.figure3_depth): cell(norm, ENCDEC, n_layers(p.figure3_depth))
           for norm in POST_PRE},
        **{("width", norm, d): cell(norm, width(scale, d), n_layers(p.figure3_depth)) for norm in POST_PRE
           for d in p.widths},
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


def _width_finding(exponent: dict[str, list[float | None]], widths: Sequence[int], depth: int) -> str:
    """What Theorem 1 predicts for the width rows, and what they measure."""
    ds = ", ".join(map(str, widths))
    measured = "; ".join(f"{LAYOUTS[norm].label} {mean_pm(exponent[norm])}" for norm in POST_PRE)
    slope = 1 + 0.5 / math.log(math.sqrt(widths[0] * widths[-1]))
    return (f"Width, L = {depth}: Theorem 1 bounds the last layer's ‖∇W_FC2‖ by O(d·√ln d) for both layouts "
            f"(Pre-LN's also shrinks with L, not with d), so read as a rate it predicts an exponent a = 1 "
            f"against d·√ln d (≈ {slope:.2f} against d alone over d ∈ {{{ds}}}); measured a (mean ± std, n): "
            f"{measured}.")


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, params, seeds = ctx.scale, ctx.params, ctx.seeds("init")
    depths, f3, widths = sorted(params.depths), params.figure3_depth, list(params.widths)
    deepest_l = max(depths)
    grad = {key: ctx.profiles(key, "grad", "ffn.fc2") for key in ctx.grid if key[0] != "encdec"}
    grad.update({("encdec", norm, stack): ctx.profiles(("encdec", norm, f3), "grad", f"{stack}.ffn.fc2")
                 for norm in POST_PRE for stack in STACKS})
    act = {norm: ctx.profiles(("untied", norm, deepest_l), "act", "resid") for norm in POST_PRE}

    def lasts(key: tuple) -> list[float | None]:
        return [last_layer(p) for p in grad[key]]

    def exponent(kind: str, norm: str) -> list[float | None]:
        return seedwise(lambda *ys: power_exponent(depths, ys), *(lasts((kind, norm, n)) for n in depths))

    def width_exponent(norm: str) -> list[float | None]:
        return seedwise(lambda *ys: power_exponent([d * math.sqrt(math.log(d)) for d in widths], ys),
                        *(lasts(("width", norm, d)) for d in widths))

    def trend(key: tuple) -> list[float | None]:
        return [trend_ratio(p) for p in grad[key]]

    depth_text, width_text = ", ".join(map(str, depths)), ", ".join(map(str, widths))
    widths_b = {norm: width_exponent(norm) for norm in POST_PRE}
    figure3 = {}  # (place, layout) -> its verdict
    for n in sorted({f3, deepest_l}):
        for norm, claim in ((POST_LN.name, FIGURE3_POST), (PRE_LN.name, FIGURE3_PRE)):
            figure3["decoder-only", norm, n] = claim.format(setting="", L=n, per_stack="", where="").test(
                trend(("untied", norm, n)), seeds)
    for stack, label in STACKS.items():
        for norm, claim in ((POST_LN.name, FIGURE3_POST), (PRE_LN.name, FIGURE3_PRE)):
            figure3[f"enc-dec {label}", norm, f3] = claim.format(
                setting=f", encoder-decoder {label}", L=f3, per_stack=" per stack",
                where=f" per stack, `{stack}.ffn.fc2`").test(trend(("encdec", norm, stack)), seeds)
    verdicts: list[Verdict] = [
        THEOREM1_POST.format(depths=depth_text).test(exponent("untied", POST_LN.name), seeds),
        THEOREM1_PRE.format(depths=depth_text).test(exponent("untied", PRE_LN.name), seeds),
        *(WIDTH.format(layout=LAYOUTS[norm].label, L=f3, widths=width_text).test(widths_b[norm], seeds)
          for norm in POST_PRE),
        THEOREM1_POST_TIED.format(depths=depth_text).test(exponent("tied", POST_LN.name), seeds),
        THEOREM1_PRE_TIED.format(depths=depth_text).test(exponent("tied", PRE_LN.name), seeds),
        *figure3.values(),
        LEMMA_PRE.format(last=deepest_l - 1, L=deepest_l, smallest_effect=(deepest_l / 2, 3 * deepest_l / 2))
        .test([stream_increment(a) for a in act[PRE_LN.name]], seeds),
        LEMMA_POST.format(L=deepest_l).check([stream_growth(a) for a in act[POST_LN.name]], seeds),
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
        "Theorem 1, depth: b is fitted per seed by least squares to log ‖∇W_FC2‖ (last layer) against "
        f"log L over L ∈ {{{depth_text}}}; Post-LN's band is two-sided, so a gradient that grows with depth "
        "fails it as one that shrinks does.",
        f"Theorem 1, width: the same last-layer gradient at L = {f3} with d_model ∈ {{{width_text}}} (d_ff = "
        "4·d, 4 heads; the other cells' batch), a fitted per seed against d·√(ln d).",
        "Figure 3: the trend is fitted by least squares to log ‖∇W_FC2‖ against the layer index (less "
        "noisy than the raw last/first ratio, which the table also shows). Tested at "
        f"L = {f3} (the paper's depth) and at L = {deepest_l}.",
        f"Lemma: the paper's bounds (1 + L/2)·d ≤ E‖x_L‖² ≤ (1 + 3L/2)·d assume a unit-variance input; "
        "each Pre-LN block adds a variance independent of the stream's, so the bound on the growth is "
        f"[L/2, 3L/2] = [{deepest_l / 2:g}, {3 * deepest_l / 2:g}] for L = {deepest_l} whatever the input's "
        "scale (fairseq's √d-scaled tokens plus sinusoidal positions give RMS² ≈ 1.5). Post-LN's half "
        "is a wiring check: every block ends in a LayerNorm. The residual stream is the `act` probe (RMS "
        "of the input of each layer and the output of the last).",
        f"Encoder-decoder rows (the paper's Figure 3 setting): `model.arch: encoder_decoder` with L = {f3} "
        "layers in each stack, on the synthetic translation task (`data.source: seq2seq`, `data.task: "
        f"translate`, {ENCDEC['data.vocab_size']} symbols; nothing downloaded), otherwise the decoder-only "
        "cells' model, batch and seeds. The encoder stack's profile is `enc.ffn.fc2`, the decoder's "
        "`dec.ffn.fc2` (each layer's index within its stack), with the same Figure 3 rule.",
    ]

    def profiles_plot(plt: Any):
        from lnexp.report.figures import label_log_axis, seed_band

        shown = profile_depths(params)
        fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6), squeeze=False)
        for ax, n in zip(axes[0], shown):
            for i, norm in enumerate(POST_PRE):
                seed_band(ax, [list(enumerate(p)) for p in grad["untied", norm, n] if p], f"C{i}", marker=".",
                          label=LAYOUTS[norm].label)
            ax.set_yscale("log")
            label_log_axis(ax.yaxis)
            ax.set_xticks(range(0, n, max(1, n // 12)))
            ax.set_title(f"L = {n}")
            ax.set_xlabel("layer (from 0)")
        axes[0][0].set_ylabel("‖∇W_FC2‖ at initialisation")
        axes[0][0].legend()
        fig.tight_layout()
        return fig

    def power_law(xs: list[float], ys: list[float]) -> list[float]:
        a, b = fit_line([math.log(x) for x in xs], [math.log(y) for y in ys])
        return [math.exp(a) * x**b for x in xs]

    def scaling_plot(plt: Any):
        """Last-layer gradient against depth (untied and tied) and against width, with the fitted power
        law each verdict is about, per seed."""
        from lnexp.report.figures import label_log_axis

        fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
        for i, norm in enumerate(POST_PRE):
            for kind, marker, style in (("untied", "o", "-"), ("tied", "x", ":")):
                for k, ys in enumerate(zip(*(lasts((kind, norm, n)) for n in depths))):
                    if all(y is not None and y > 0 for y in ys):
                        ax.plot(depths, ys, color=f"C{i}", marker=marker, linestyle="none", alpha=0.8)
                        label = f"{LAYOUTS[norm].label}{' tied' if kind == 'tied' else ''}"
                        ax.plot(depths, power_law(depths, list(ys)), color=f"C{i}", linestyle=style,
                                alpha=0.6, label=label if k == 0 else None)
            for k, ys in enumerate(zip(*(lasts(("width", norm, d)) for d in widths))):
                if all(y is not None and y > 0 for y in ys):
                    bx.plot(widths, ys, color=f"C{i}", marker="o", linestyle="none", alpha=0.8)
                    bx.plot(widths, power_law(widths, list(ys)), color=f"C{i}", alpha=0.6,
                            label=LAYOUTS[norm].label if k == 0 else None)
        pre = [y for y in lasts(("untied", PRE_LN.name, min(depths))) if y]
        if pre:  # Theorem 1's Pre-LN rate through the seeds' mean at the shallowest depth
            anchor = sum(pre) / len(pre)
            ax.plot(depths, [anchor * math.sqrt(min(depths) / n) for n in depths], color="grey",
                    linestyle="--", linewidth=1.2, label="1/√L")
        post = [y for y in lasts(("width", POST_LN.name, widths[0])) if y]
        if post:  # Theorem 1's width rate through the Post-LN seeds' mean at the narrowest width
            anchor, rate = sum(post) / len(post), [d * math.sqrt(math.log(d)) for d in widths]
            bx.plot(widths, [anchor * r / rate[0] for r in rate], color="grey", linestyle="--", linewidth=1.2,
                    label="∝ d·√(ln d)")
        for axis, xs, label in ((ax, depths, "depth L"), (bx, widths, f"d_model (L = {f3})")):
            axis.set_yscale("log")
            depth_axis(axis, xs, label)
            label_log_axis(axis.yaxis)
            axis.legend(fontsize=7)
        ax.set_ylabel("last layer ‖∇W_FC2‖ at initialisation")
        fig.tight_layout()
        return fig

    def lemma_plot(plt: Any):
        from lnexp.report.figures import seed_band

        fig, ax = plt.subplots(figsize=(5, 3.6))
        for i, norm in enumerate(POST_PRE):
            seed_band(ax, [[(x, v**2 - a[0] ** 2) for x, v in enumerate(a)] for a in act[norm] if a], f"C{i}",
                      label=LAYOUTS[norm].label)
        xs = list(range(deepest_l + 1))
        ax.fill_between(xs, [x / 2 for x in xs], [1.5 * x for x in xs], color="grey", alpha=0.2,
                        label="lemma (Pre-LN): [l/2, 3l/2]")
        ax.set_xticks(xs[::max(1, deepest_l // 12)])
        ax.set_xlabel("layer boundary l (0: the input; l: leaving layer l − 1)")
        ax.set_ylabel("RMS² − RMS² of the input")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    places = (("decoder-only", "ffn.fc2", lambda norm: grad["untied", norm, f3]),
              ("enc-dec decoder stack", "dec.ffn.fc2", lambda norm: grad["encdec", norm, "dec"]),
              ("enc-dec encoder stack", "enc.ffn.fc2", lambda norm: grad["encdec", norm, "enc"]))

    def encdec_plot(plt: Any):
        from lnexp.report.figures import label_log_axis, seed_band

        fig, axes = plt.subplots(1, len(places), figsize=(4.4 * len(places), 3.7), squeeze=False, sharey=True)
        for ax, (title, role, get) in zip(axes[0], places):
            for i, norm in enumerate(POST_PRE):
                fitted = mean_pm([trend_ratio(p) for p in get(norm)])
                seed_band(ax, [list(enumerate(p)) for p in get(norm) if p], f"C{i}", marker=".",
                          label=f"{LAYOUTS[norm].label} (fitted last/first {fitted})")
            ax.set_yscale("log")
            label_log_axis(ax.yaxis)
            ax.set_title(f"{title}, L = {f3}\n{role}", fontsize=10)
            ax.set_xlabel("layer within its stack (from 0)")
            ax.set_xticks(range(f3))
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("‖∇W_FC2‖ at initialisation")
        fig.tight_layout()
        return fig

    findings = _encdec_findings(
        {f"{norm}/{title}": [trend_ratio(p) for p in get(norm)]
         for norm in POST_PRE for title, _, get in places},
        {f"{norm}/{place}": v.verdict for (place, norm, n), v in figure3.items() if n == f3}, f3)
    findings.append(_width_finding(widths_b, widths, f3))

    rows = []
    for norm in POST_PRE:
        label = LAYOUTS[norm].label
        for n in profile_depths(params):
            ps = grad["untied", norm, n]
            rows.append([label, n, "", mean_pm([last_layer(p) for p in ps]),
                         mean_pm([p[-1] / p[0] if p and p[0] > 0 else None for p in ps]), mean_pm(trend(
                             ("untied", norm, n)))])
        rows += [[f"{label}, tied embeddings", n, "", mean_pm(lasts(("tied", norm, n))), "", ""]
                 for n in depths]
        rows += [[label, f3, d, mean_pm(lasts(("width", norm, d))), "", ""] for d in widths]
        for stack, role in STACKS.items():
            ps = grad["encdec", norm, stack]
            rows.append([f"{label}, enc-dec {role} (`{stack}.ffn.fc2`)", f"{f3} + {f3}", "",
                         mean_pm([last_layer(p) for p in ps]),
                         mean_pm([p[-1] / p[0] if p and p[0] > 0 else None for p in ps]),
                         mean_pm([trend_ratio(p) for p in ps])])
    table = md_table(["layout", "L", "d_model (if not the scale's)", "last layer ‖∇W_FC2‖", "raw last/first",
                      "fitted last/first"], rows)
    return Analysis(verdicts, definitions, [
        Figure("grad_by_layer.png", "Figure 3 analogue: ‖∇W_FC2‖ by layer at initialisation (seed mean, "
               "min–max band)", profiles_plot),
        Figure("grad_by_layer_encdec.png", f"Figure 3, decoder-only against encoder-decoder (the paper's "
               f"setting): ‖∇W_FC2‖ by layer at initialisation, L = {f3} (per stack), seed mean and min–max",
               encdec_plot),
        Figure("grad_vs_depth.png", "Theorem 1: the last layer's ‖∇W_FC2‖ against depth (left; dotted: "
               "tied embeddings) and width (right), log-log, with the power law fitted to each seed",
               scaling_plot),
        Figure("residual_growth.png", f"Lemma: residual-stream RMS² by layer at initialisation, L = "
               f"{deepest_l}, against the paper's bounds (seed mean, min–max band)", lemma_plot),
    ], [table], findings=findings)


SUITE = Suite(
    "xiong2020-init", "Gradients at initialisation: Post-LN against Pre-LN",
    "Xiong et al. 2020, On Layer Normalization in the Transformer Architecture — Theorem 1, Figure 3 and "
    "the hidden-state lemma", PARAMS, grid, analyse)
