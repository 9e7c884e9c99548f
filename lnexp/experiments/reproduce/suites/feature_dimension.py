"""`feature-dimension`: the question lnexp was born from, turned into measurements.

A mentor's claim: high-dimensional features appear in a model's later layers, and LayerNorm placement
is chosen so that the model is less affected by them. Three verdicts, each from the runs:

1. Later layers carry higher-dimensional features: the effective rank of the residual stream (and of
   the branch outputs) rises with the relative depth l/L.
2. LN placement shields the model from them: the loss's sensitivity to the last layers' features,
   relative to the first layers', is smaller for Pre-LN than for Post-LN, at initialisation and
   after training (the gradient ‖∂loss/∂x_l‖, and the loss change when a layer's branch outputs are
   replaced by noise of the same norm).
3. Rank collapse with depth at initialisation (Dong et al. 2021; Noci et al. 2022): the anisotropy of
   the last layer's stream grows with depth, and differs between Post-LN and Pre-LN.

Every cell trains with the `rank` and `sensitivity` probes (lnexp/run/probes.py), so one run gives both its
initialisation (step 0) and its trained state (the last logged step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lnexp.core.layouts import LAYOUTS, POST, PRE
from lnexp.core.stats import usable
from lnexp.core.status import Status
from lnexp.experiments.reproduce.engine import Grid, Scale, SuiteRuns, per_seed
from lnexp.experiments.reproduce.measure import fit_line
from lnexp.experiments.reproduce.report import Analysis, Figure, md_table, mean_pm, num
from lnexp.experiments.reproduce.suites import depth, xiong_init
from lnexp.experiments.reproduce.suites.common import PRE_GPT2, Suite, n_layers
from lnexp.experiments.reproduce.verdicts import GREATER, LESS, Claim, Direction, Verdict
from lnexp.experiments.stability import depth_axis
from lnexp.run.reader import Run
from lnexp.run.rows import layer_profile, logged_steps

# The claim's three layouts first; the registry's others come along (cheap at these scales).
GPT2_SCALED = f"{PRE.name}+gpt2"
CLAIM_LAYOUTS = (POST.name, PRE.name, GPT2_SCALED)
FEATURE_LAYOUTS = {POST.name: {"model.norm": POST.name}, PRE.name: {"model.norm": PRE.name},
                   GPT2_SCALED: PRE_GPT2, **{name: {"model.norm": name} for name in LAYOUTS}}
LABELS = {**{name: layout.label for name, layout in LAYOUTS.items()}, GPT2_SCALED: "Pre-LN + GPT-2 scaling"}
WHEN = {"init": "at initialisation", "trained": "after training"}
# Thresholds (stated in the report):
RISE = 0.05  # claim 1: fitted change of effective rank / d from the first layer to the last
SHIELD = 0.8  # claim 2: Pre-LN's late/early gradient sensitivity below 0.8 × Post-LN's
ABLATION = 0.02  # claim 2: Pre-LN's late − early noise effect below Post-LN's by 0.02 (of the loss)
COLLAPSE = 0.1  # claim 3: anisotropy rises by more than 0.1 from the shallowest depth to the deepest


def _log(scale: Scale) -> dict[str, Any]:
    """Both probes, logged at step 0, mid-run and at the second-to-last step (the trained state)."""
    every = max(1, (scale.train["train"]["steps"] - 1) // 2)
    return {
        "log.probes": ("grad", "act", "rank", "sensitivity"),
        "log.grad_every": every,
        "log.ablation_steps": (0, 2 * every),
    }


@dataclass(frozen=True)
class Params:
    layouts: tuple[str, ...]  # names in FEATURE_LAYOUTS
    depths: tuple[int, ...]
    lr: float


# At `tiny` every layout at xiong2020-init's depths (6, 12, 24); above it Post-LN and Pre-LN at those up
# to 12 (every layout at 24 layers would double the cost of `all --scale cpu`). The depth suite's
# learning rate (with the scale's warm-up), so that every layout trains at every depth if it can.
PARAMS = {
    "tiny": Params(tuple(FEATURE_LAYOUTS), tuple(sorted(xiong_init.PARAMS["tiny"].depths)),
                   depth.PARAMS["tiny"].lr),
    **{name: Params((POST.name, PRE.name), tuple(n for n in sorted(xiong_init.PARAMS[name].depths)
                                                 if n <= 12), depth.PARAMS[name].lr)
       for name in ("cpu", "small")},
}


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: (layout, depth)."""
    return {(name, n): per_seed("train", scale.seeds, FEATURE_LAYOUTS[name], n_layers(n),
                                depth.recipe(scale, p.lr), _log(scale))
            for name in p.layouts for n in p.depths}


def _test(text: str, statistic: str, direction: Direction, smallest_effect: float,
          values: list[float | None], seeds: list[int]) -> Verdict:
    """A claim row (the thresholds above, lnexp's; this suite's claims are declared anew on the
    evidence framework in a later round)."""
    return Claim(text, statistic, direction, smallest_effect,
                 "lnexp's choice (docs/feature-dimension.md)").test(values, seeds)


def _relative_slope(profiles: Sequence[Sequence[float]], d: int) -> float | None:
    """Least-squares slope of value/d against relative depth l/(n−1), pooled over the profiles (one per
    depth): the change from the first entry to the last, as a fraction of d."""
    xs, ys = [], []
    for p in profiles:
        if len(p) < 2 or not all(usable(v) for v in p):
            continue
        xs += [i / (len(p) - 1) for i in range(len(p))]
        ys += [v / d for v in p]
    return fit_line(xs, ys)[1] if len(set(xs)) > 1 else None


def _thirds(profile: Sequence[float]) -> tuple[float, float] | None:
    """Means of the first and the last third of a profile (at least one entry each)."""
    k = max(1, len(profile) // 3)
    if len(profile) < 2 or not all(usable(v) for v in profile):
        return None
    return sum(profile[:k]) / k, sum(profile[-k:]) / k


def _geomean(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if usable(v) and v > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs and len(xs) == len(values) else None


def _mean(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if usable(v)]
    return sum(xs) / len(xs) if xs and len(xs) == len(values) else None


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds = ctx.scale, ctx.seeds()
    names, depths = ctx.params.layouts, ctx.params.depths
    claimed = [n for n in CLAIM_LAYOUTS if n in names]  # the claim's layouts this scale trains
    d = scale.train["model"]["d_model"]
    runs = {(name, n, s): run for name in names for n in depths for s, run in zip(seeds, ctx[name, n])}

    def step_of(run: Run | None, when: str) -> int | None:
        steps = logged_steps(run.probes, "rank") if run else []
        return (steps[0] if when == "init" else steps[-1]) if steps else None

    def profile(name: str, n: int, s: int, probe: str, param: str, when: str) -> list[float]:
        run = runs[name, n, s]
        step = step_of(run, when)
        if step is None or (when == "trained" and run.status != Status.COMPLETED):
            return []
        values = layer_profile(run.probes, probe, param, step)
        return values if len(values) in (n, n + 1) else []

    # 1. effective rank against relative depth
    slope = {
        (name, where, when): [
            _relative_slope([profile(name, n, s, "rank", f"{where}.erank", when) for n in depths], d)
            for s in seeds
        ]
        for name in names
        for where in ("resid", "attn", "ffn")
        for when in WHEN
    }

    # 2. late/early sensitivity, per seed over depths (gradient: geometric mean of ratios;
    # ablation: mean of differences)
    def grad_ratio(name: str, s: int, when: str) -> float | None:
        parts = [_thirds(profile(name, n, s, "sensitivity", "dloss_dx", when)) for n in depths]
        return _geomean(
            [late / early if p and (early := p[0]) > 0 and (late := p[1]) >= 0 else None for p in parts]
        )

    def ablation_gap(name: str, s: int, when: str) -> float | None:
        parts = [
            _thirds(profile(name, n, s, "sensitivity", "noise_loss_change", when)) for n in depths if n >= 2
        ]  # one value per layer: thirds need two layers
        return _mean([p[1] - p[0] if p else None for p in parts])

    ratio = {(name, s, when): grad_ratio(name, s, when) for name in names for s in seeds for when in WHEN}
    gap = {(name, s, when): ablation_gap(name, s, when) for name in names for s in seeds for when in WHEN}

    def versus(table: dict, name: str, when: str, how: str) -> list[float | None]:
        pairs = [(table[name, s, when], table[POST.name, s, when]) for s in seeds]
        if how == "ratio":
            return [a / b if usable(a) and usable(b) and b > 0 else None for a, b in pairs]
        return [a - b if usable(a) and usable(b) else None for a, b in pairs]

    # 3. anisotropy of the last layer's stream at initialisation, against depth
    def last_aniso(name: str, n: int, s: int) -> float | None:
        p = profile(name, n, s, "rank", "resid.aniso", "init")
        return p[-1] if len(p) == n + 1 else None

    aniso = {(name, n, s): last_aniso(name, n, s) for name in names for n in depths for s in seeds}

    def aniso_rise(name: str) -> list[float | None]:
        return [
            aniso[name, depths[-1], s] - aniso[name, depths[0], s]
            if usable(aniso[name, depths[-1], s]) and usable(aniso[name, depths[0], s])
            else None
            for s in seeds
        ]

    post_minus_pre = [
        aniso[POST.name, depths[-1], s] - aniso[PRE.name, depths[-1], s]
        if usable(aniso[POST.name, depths[-1], s]) and usable(aniso[PRE.name, depths[-1], s])
        else None
        for s in seeds
    ]

    depth_text = ", ".join(map(str, depths))
    q_slope = (
        "fitted change of {what}'s effective rank / d_model from the first layer to the last "
        "(relative depth), pooled over L ∈ {{" + depth_text + "}}, {when}"
    )
    q_ratio = (
        "Pre-LN's late/early ratio of ‖∂loss/∂x_l‖ (mean of the last third of layers over the "
        "first third; geometric mean over L) ÷ Post-LN's, {when}"
    )
    q_gap = (
        "Pre-LN's late − early relative loss change under noise ablation (mean over L) minus "
        "Post-LN's, {when}"
    )
    what_of = {"resid": "the residual stream", "attn": "the attention output", "ffn": "the FFN output"}
    verdicts = []
    for name in claimed:
        for where, when in (("resid", "init"), ("resid", "trained"), ("attn", "trained"), ("ffn", "trained")):
            verdicts.append(
                _test(
                    f"1. Later layers carry higher-dimensional features: {LABELS[name]}, {what_of[where]}, "
                    f"{WHEN[when]}",
                    q_slope.format(what=what_of[where], when=WHEN[when]),
                    GREATER, RISE,
                    slope[name, where, when],
                    seeds,
                )
            )
    for name in claimed[1:]:  # against Post-LN
        for when in WHEN:
            verdicts.append(
                _test(
                    f"2. LN placement shields the model from late layers' features: {LABELS[name]} against "
                    f"Post-LN, gradient sensitivity, {WHEN[when]}",
                    q_ratio.format(when=WHEN[when]).replace("Pre-LN", LABELS[name]),
                    LESS, SHIELD,
                    versus(ratio, name, when, "ratio"),
                    seeds,
                )
            )
            verdicts.append(
                _test(
                    f"2. LN placement shields the model from late layers' features: {LABELS[name]} against "
                    f"Post-LN, noise ablation, {WHEN[when]}",
                    q_gap.format(when=WHEN[when]).replace("Pre-LN", LABELS[name]),
                    LESS, -ABLATION,
                    versus(gap, name, when, "difference"),
                    seeds,
                )
            )
    q_rise = (
        f"anisotropy (mean cosine similarity of token vectors) of the stream leaving the last layer "
        f"at initialisation, L = {depths[-1]} minus L = {depths[0]}"
    )
    for name in claimed:
        verdicts.append(
            _test(
                f"3. Rank collapse: {LABELS[name]}'s last-layer stream grows more anisotropic with "
                "depth at initialisation",
                q_rise,
                GREATER, COLLAPSE,
                aniso_rise(name),
                seeds,
            )
        )
    verdicts.append(
        _test(
            "3. Rank collapse: Post-LN and Pre-LN differ in anisotropy at initialisation, deepest L",
            f"Post-LN's minus Pre-LN's last-layer anisotropy at initialisation, L = {depths[-1]}",
            GREATER, COLLAPSE,
            [abs(v) if usable(v) else None for v in post_minus_pre],
            seeds,
        )
    )

    definitions = [
        f"Cells: every layout of {', '.join(LABELS[n] for n in names)}, at L ∈ {{{depth_text}}}, "
        f"seeds {', '.join(map(str, seeds))}; the depth suite's recipe (Adam, lr {ctx.params.lr:g}, "
        f"warm-up {scale.warmup} steps, linear decay, {scale.train['train']['steps']} steps) so that as "
        'many cells as possible train. "At initialisation" is step 0; "after training" is the last '
        "logged step (the second-to-last step); a run that did not complete has no trained values.",
        "Probes (lnexp/run/probes.py): `rank` on the run's first validation batch (a forward of its own, eval"
        " mode): one SVD per matrix of token vectors (tokens × d_model, centred) gives the entropy effective "
        "rank exp(H(σ/Σσ)) (Roy & Vetterli 2007), used by claim 1, and the participation ratio; the "
        "anisotropy is the mean cosine similarity between token vectors, uncentred (1 = every token points "
        "the same way: rank collapse). `sensitivity`: ‖∂loss/∂x_l‖ of the training batch's loss with respect "
        "to the residual stream entering layer l (and leaving the last), from the step's own backward; and "
        "the relative change of the validation loss when all of layer l's branch outputs are replaced by "
        "Gaussian noise of the same norm, token by token.",
        f"Claim 1 threshold: the fitted line of effective rank / d_model against relative depth l/L (the "
        f"stream: L + 1 boundaries; a branch: L layers), pooled over the depths, rises by more than {RISE:g} "
        "of d_model from the first layer to the last.",
        f'Claim 2 thresholds: "late/early" is the mean over the last third of the layers divided by the '
        f"mean over the first third. Shielding means the Pre-LN layout's ratio is below {SHIELD:g} × "
        f"Post-LN's (gradient), or its late − early ablation effect is below Post-LN's by more than "
        f"{ABLATION:g} (a fraction of the loss). Each seed is compared on the same seed.",
        f'Claim 3 thresholds: "grows more anisotropic with depth" is a rise of more than {COLLAPSE:g} in '
        f'mean cosine similarity from L = {depths[0]} to L = {depths[-1]}; "differ" is an absolute '
        f"difference above {COLLAPSE:g}. Dong et al. 2021 show pure attention collapsing to rank 1 "
        "(anisotropy → 1) doubly exponentially with depth; skip connections and MLPs slow it, and Noci et "
        "al. 2022 show 1/√L residual scaling preventing it. The 0.1 margins are lnexp's, not the papers'.",
    ]

    deepest = depths[-1]

    def bands(ax: Any, probe: str, param: str, when: str) -> None:
        """Each layout's profile at the deepest depth against relative depth: seed mean, min-max band."""
        for i, name in enumerate(names):
            profiles = [p for s in seeds if (p := profile(name, deepest, s, probe, param, when))]
            if not profiles or len({len(p) for p in profiles}) != 1:
                continue
            xs = [k / (len(profiles[0]) - 1) for k in range(len(profiles[0]))]
            columns = list(zip(*profiles))
            ax.plot(xs, [sum(c) / len(c) for c in columns], color=f"C{i}", marker=".", label=LABELS[name])
            ax.fill_between(
                xs, [min(c) for c in columns], [max(c) for c in columns], color=f"C{i}", alpha=0.2
            )

    def profiles_figure(plt: Any, panels: list[list[tuple[str, str, str, str, str]]]):
        """A grid of `bands` panels, each (probe, param, when, title, y label); ‖∂loss/∂x‖ on a log axis."""
        fig, axes = plt.subplots(
            len(panels),
            len(panels[0]),
            figsize=(4.7 * len(panels[0]), 3.5 * len(panels)),
            sharex=True,
            squeeze=False,
        )
        for row, specs in zip(axes, panels):
            for ax, (probe, param, when, title, ylabel) in zip(row, specs):
                bands(ax, probe, param, when)
                if param == "dloss_dx":
                    ax.set_yscale("log")
                ax.set(title=title, ylabel=ylabel)
                ax.title.set_fontsize(10)
        for ax in axes[-1]:
            ax.set_xlabel(f"relative depth l/L (L = {deepest})")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        return fig

    def rank_plot(plt: Any):
        return profiles_figure(
            plt,
            [
                [
                    ("rank", f"{where}.erank", when, f"{what_of[where]}, {WHEN[when]}", "effective rank")
                    for where in ("resid", "attn", "ffn")
                ]
                for when in WHEN
            ],
        )

    def sensitivity_plot(plt: Any):
        measures = (("dloss_dx", "‖∂loss/∂x_l‖"), ("noise_loss_change", "relative loss change, noise"))
        return profiles_figure(
            plt,
            [
                [("sensitivity", param, when, f"{label}, {WHEN[when]}", label) for when in WHEN]
                for param, label in measures
            ],
        )

    def aniso_plot(plt: Any):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for i, name in enumerate(names):
            per_seed = [[aniso[name, n, s] for n in depths] for s in seeds]
            per_seed = [p for p in per_seed if all(usable(v) for v in p)]
            if per_seed:
                columns = list(zip(*per_seed))
                ax.plot(
                    depths, [sum(c) / len(c) for c in columns], color=f"C{i}", marker="o", label=LABELS[name]
                )
                ax.fill_between(
                    depths, [min(c) for c in columns], [max(c) for c in columns], color=f"C{i}", alpha=0.2
                )
        depth_axis(ax, depths, "depth L")
        ax.set_ylabel("anisotropy of the last layer's stream at init")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    rows = []
    for name in names:
        rows.append(
            [
                LABELS[name],
                *(mean_pm(slope[name, where, when]) for where in ("resid", "ffn") for when in WHEN),
                *(mean_pm([ratio[name, s, when] for s in seeds]) for when in WHEN),
                *(mean_pm([gap[name, s, when] for s in seeds]) for when in WHEN),
                *(mean_pm([aniso[name, n, s] for s in seeds]) for n in depths),
            ]
        )
    table = md_table(
        [
            "layout",
            "stream rank change, init",
            "stream rank change, trained",
            "FFN rank change, init",
            "FFN rank change, trained",
            "‖∂L/∂x‖ late/early, init",
            "‖∂L/∂x‖ late/early, trained",
            "ablation late − early, init",
            "ablation late − early, trained",
            *(f"last-layer anisotropy at init, L = {n}" for n in depths),
        ],
        rows,
    )
    return Analysis(
        verdicts,
        definitions,
        [
            Figure(
                "effective_rank.png",
                f"Effective rank by relative depth, L = {deepest}: the stream and each "
                "branch's output, at initialisation and after training (seed mean, min–max band)",
                rank_plot,
            ),
            Figure(
                "sensitivity.png",
                f"Loss sensitivity by relative depth, L = {deepest}: the gradient with "
                "respect to the stream, and the loss change when a layer's branch outputs become noise",
                sensitivity_plot,
            ),
            Figure(
                "anisotropy.png",
                "Rank collapse: anisotropy of the last layer's stream at initialisation against depth",
                aniso_plot,
            ),
        ],
        [table],
        findings=_answer(slope, ratio, aniso_rise, seeds, verdicts, scale.name, claimed),
    )


def _answer(
    slope: dict,
    ratio: dict,
    aniso_rise: Any,
    seeds: Sequence[int],
    verdicts: list,
    scale: str,
    claimed: Sequence[str],
) -> list[str]:
    """The answer to the mentor's claim at this scale, composed from the numbers."""

    def m(values: Sequence[float | None]) -> float | None:
        xs = [v for v in values if usable(v)]
        return sum(xs) / len(xs) if xs else None

    def word(change: float | None) -> str:
        return (
            "has no number"
            if change is None
            else "rises"
            if change > RISE
            else "falls"
            if change < -RISE
            else "stays about flat"
        )

    parts = []
    for when in WHEN:
        listed = "; ".join(
            f"{LABELS[n]} {word(m(slope[n, 'resid', when]))} ({num(m(slope[n, 'resid', when]))})"
            for n in claimed
        )
        parts.append(
            f"Effective rank of the residual stream with depth, {WHEN[when]} (fitted change / d_model "
            f"from the first layer to the last): {listed}."
        )
    ffn = "; ".join(
        f"{LABELS[n]} {word(m(slope[n, 'ffn', 'trained']))} ({num(m(slope[n, 'ffn', 'trained']))})"
        for n in claimed
    )
    parts.append(f"The FFN's output after training: {ffn}.")
    for when in WHEN:
        post, pre = (m([ratio[name, s, when] for s in seeds]) for name in (POST.name, PRE.name))
        if post is not None and pre is not None:
            relation = (
                "less than"
                if pre < SHIELD * post
                else "more than"
                if pre > post / SHIELD
                else "about as much as"
            )
            parts.append(
                f"{WHEN[when].capitalize()}, the loss's gradient with respect to the last third of "
                f"the stream, relative to the first third, is {num(post)} for Post-LN and {num(pre)} "
                f"for Pre-LN: relative to its early layers, Pre-LN's late layers weigh {relation} "
                "Post-LN's do."
            )
    rises = {n: m(aniso_rise(n)) for n in claimed}
    parts.append(
        "Anisotropy of the last layer at initialisation, deepest minus shallowest: "
        + "; ".join(f"{LABELS[n]} {num(v)}" for n, v in rises.items())
        + "."
    )
    parts.append(_conclusion(verdicts, scale))
    return parts


def _conclusion(verdicts: list, scale: str) -> str:
    """The mentor's two claims answered in one sentence each, from how their verdict rows came out."""

    def tally(prefix: str) -> tuple[int, int, int]:
        rows = [v.verdict for v in verdicts if v.claim.startswith(prefix)]
        return rows.count("reproduced"), rows.count("not reproduced"), len(rows)

    def says(prefix: str, claim: str) -> str:
        yes, no, n = tally(prefix)
        if yes == n:
            return f"{claim} holds in all {n} of its rows"
        if no == n:
            return f"{claim} holds in none of its {n} rows"
        rest = "" if yes + no == n else f"; {n - yes - no} inconclusive"
        return f"{claim} holds in {yes} of its {n} rows (not in {no}{rest})"

    return (
        f"So, at scale `{scale}`: "
        + says("1.", '"later layers carry higher-dimensional features"')
        + "; "
        + says("2.", '"LN placement shields the model from them"')
        + ". These are byte-level "
        "models far smaller than the mentor had in mind; docs/feature-dimension.md says what would "
        "change at a larger scale."
    )


SUITE = Suite(
    "feature-dimension",
    "Do later layers carry higher-dimensional features, and does LN placement shield the model from them?",
    "A mentor's claim (the note lnexp was built from); Roy & Vetterli 2007 (effective rank); Dong et al. "
    "2021 and Noci et al. 2022 (rank collapse)", PARAMS, grid, analyse)
