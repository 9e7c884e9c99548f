"""`feature-dimension`: the claim lnexp was born from, in the sharper forms published since (issue #26).

A mentor's claim: *later layers carry higher-dimensional features, and LN placement shields the model
from them.* Tested as four families of claims on the trained model, each row at every depth:

(a) dimension by depth: the TwoNN intrinsic dimension of the LN-normalised stream rises then falls, a
    high-dimensional phase inside the stack (Ansuini et al. 2019; Valeriani et al. 2023; Cheng et al.
    2025), and the mentor's own version, later layers higher than early ones;
(b) outlier features: Pre-LN's stream has more (kurtosis of the neuron RMS, He et al. 2024) and larger
    massive activations (max/median, Sun et al. 2024) than Peri-LN's (Kim et al. 2025), and training
    grows them in Pre-LN;
(c) the curse of depth: Pre-LN's deep blocks come close to the identity (angular distance, Gromov et
    al. 2024; Sun et al. 2025); LayerNorm Scaling and Mix-LN lift it; and GPT-2's 1/√N scaling, against
    GPT-2's init without it, is tested on the same mechanism;
(d) shielding: Pre-LN's loss depends less than Post-LN's on its late layers' outlier dimensions and
    top principal directions (direction ablation: what (b) and (a) measure), and on its late layers
    relative to its early ones, scale-free (‖x_l‖·‖∂L/∂x_l‖).

The cells are the layouts suite's and gpt2-scaling's trainings (same layout, depth, learning rate, no
warm-up), so most of them train once for all three suites; each logs its probes at step 0 and at the
last step. The same statistics at initialisation are reported in a table and the figures, never
counted. A claim about trained features is not applicable where a run did not learn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lnexp.core.layouts import LNS, MIX, PERI, POST, PRE
from lnexp.core.stats import usable
from lnexp.experiments.reproduce.engine import Grid, Scale, SuiteRuns, log_final, per_seed
from lnexp.experiments.reproduce.measure import FINAL, difference, final_loss, ratio, seedwise
from lnexp.experiments.reproduce.report import Analysis, Figure, md_table, mean_pm, num
from lnexp.experiments.reproduce.suites import gpt2, layouts
from lnexp.experiments.reproduce.suites.common import PRE_GPT2, Suite, model_norm, n_layers, optim_lr
from lnexp.experiments.reproduce.verdicts import (
    GREATER,
    LESS,
    REPRODUCED,
    Claim,
    Precondition,
    Verdict,
    Wiring,
    premise,
)

At = Literal["init", "final"]

# --- the arms: every layout the claims compare, by the overrides of its cells -----------------------
GPT2 = "pre+gpt2"            # Pre-LN with GPT-2's init and its 1/√N residual scaling
GPT2_INIT = "pre+gpt2-init"  # the control: GPT-2's init (tied, learned positions) without the scaling
DYT = layouts.DYT
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    POST.name: (POST.label, model_norm(POST.name)),
    PRE.name: (PRE.label, model_norm(PRE.name)),
    GPT2: ("Pre-LN + GPT-2 scaling", PRE_GPT2),
    GPT2_INIT: ("Pre-LN + GPT-2 init, no scaling", {**PRE_GPT2, "model.residual_scaling": "none"}),
    PERI.name: (PERI.label, model_norm(PERI.name)),
    LNS.name: (LNS.label, model_norm(LNS.name)),
    MIX.name: (MIX.label, model_norm(MIX.name)),
    DYT: ("Pre-LN + DyT", layouts.DYT_CELL),
}
PROBES = ("grad", "act", "sensitivity", "intrinsic_dim", "outliers", "layer_change", "direction_ablation")
STEP_LISTS = ("intrinsic_dim_steps", "outlier_steps", "layer_change_steps", "direction_ablation_steps")


def label(arm: str) -> str:
    return ARMS[arm][0]


@dataclass(frozen=True)
class Params:
    arms: tuple[str, ...]   # names in ARMS
    depths: tuple[int, ...]
    lr: float


def _shared(scale_name: str) -> Params:
    """Every arm at the layouts suite's depth and at gpt2-scaling's, at gpt2-scaling's learning rate
    (one of the layouts suite's grid, without warm-up as both): the layouts suite's cells at its depth
    and gpt2-scaling's at its own are this suite's, trained once with the union of the probes."""
    depths = {layouts.PARAMS[scale_name].depth, gpt2.PARAMS[scale_name].depth}
    return Params(tuple(ARMS), tuple(sorted(depths)), gpt2.PARAMS[scale_name].lr)


PARAMS = {name: _shared(name) for name in ("tiny", "cpu", "small")}


def log_request(scale: Scale) -> dict[str, Any]:
    """The probes at step 0 and at the last step (the training-step ones through log_final): two
    evaluations per run. `grad` and `act` too, and every other `log` key as its default, so that a run
    this suite trains first covers what the layouts and gpt2-scaling suites ask of it."""
    last = scale.train["train"]["steps"] - 1
    return {**log_final(scale), "log.probes": PROBES, **{f"log.{key}": (0, last) for key in STEP_LISTS}}


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: (arm, depth)."""
    return {(arm, n): per_seed("train", scale.seeds, ARMS[arm][1], n_layers(n), optim_lr(p.lr),
                               log_request(scale))
            for arm in p.arms for n in p.depths}


# --- the measures: a probe's per-layer values, read at the blocks' outputs ---------------------------

@dataclass(frozen=True)
class Measure:
    """A probe's profile (lnexp/core/probe_kinds.py). `stream`: one value per boundary of the residual
    stream, the embedding's first; otherwise one per block. `blocks` keeps the values at the blocks'
    outputs: a stream measure loses the embedding, whose tokens (a byte and a position) are no layer's
    features."""

    probe: str
    param: str
    title: str
    stream: bool
    log_scale: bool = False

    def blocks(self, profile: Sequence[float] | None) -> list[float] | None:
        return list(profile[1:] if self.stream else profile) if profile else None

    def xs(self, n: int) -> list[float]:
        """The profile's relative depths: boundary l at l/L (the embedding at 0), block i at (i+1)/L."""
        return [(k if self.stream else k + 1) / n for k in range(n + self.stream)]


ID = Measure("intrinsic_dim", "twonn", "TwoNN intrinsic dimension (LN-normalised stream)", True)
ID_SE = Measure("intrinsic_dim", "twonn_se", "TwoNN standard error", True)
KURTOSIS = Measure("outliers", "resid.kurtosis", "kurtosis of the neuron RMS (stream)", True, True)
MASSIVE = Measure("outliers", "resid.max_median", "max |a| / median |a| (stream)", True, True)
ANGLE = Measure("layer_change", "angle", "angular distance, block input to output", False)
SKIP = Measure("layer_change", "skip_loss_change", "relative loss change, block skipped", False)
TOP_DIMS = Measure("direction_ablation", "top_dims_loss_change", "rel. loss change, top-k dims mean-replaced",
                   True)
TOP_PCS = Measure("direction_ablation", "top_pcs_loss_change", "rel. loss change, top-k PCs mean-replaced",
                  True)
SCALE_FREE = Measure("sensitivity", "scale_free", "‖x‖·‖∂loss/∂x‖ (stream)", True, True)


def thirds(values: Sequence[float] | None) -> tuple[float, float, float] | None:
    """Means of the first, middle and last third of a profile at the blocks' outputs (k = ⌊L/3⌋ each
    end, the middle the rest); None under 3 blocks or with a missing value."""
    if not values or len(values) < 3 or not all(usable(v) for v in values):
        return None
    k = len(values) // 3
    parts = values[:k], values[k:len(values) - k], values[len(values) - k:]
    return tuple(sum(part) / len(part) for part in parts)


def hump(values: Sequence[float] | None) -> float | None:
    """(middle third − the larger of the first and last thirds) ÷ the middle third: > 0 when the
    profile rises then falls."""
    t = thirds(values)
    return (t[1] - max(t[0], t[2])) / t[1] if t and t[1] > 0 else None


def rise(values: Sequence[float] | None) -> float | None:
    """(last third − first third) ÷ the first third."""
    t = thirds(values)
    return (t[2] - t[0]) / t[0] if t and t[0] > 0 else None


def late(values: Sequence[float] | None) -> float | None:
    t = thirds(values)
    return t[2] if t else None


def late_over_early(values: Sequence[float] | None) -> float | None:
    t = thirds(values)
    return ratio(t[2], t[0]) if t else None


def mean_of(values: Sequence[float] | None) -> float | None:
    return sum(values) / len(values) if values and all(usable(v) for v in values) else None


def peak_depth(values: Sequence[float] | None) -> float | None:
    """The relative depth (l/L) of the profile's largest value at the blocks' outputs."""
    if not values or not all(usable(v) for v in values):
        return None
    return (max(range(len(values)), key=values.__getitem__) + 1) / len(values)


# --- the claims, each declared once --------------------------------------------------------------
THIRDS = "the blocks' outputs split in thirds (⌊L/3⌋ each end)"
TENTH = ("lnexp's choice: a tenth; TwoNN's own relative standard error is 1/√r, 0.047 at the 460 points "
         "it keeps of `tiny`'s 512-token batch")
QUARTER = "lnexp's choice: a quarter more"
FIFTH = "lnexp's choice: a fifth less"
LOSS_SHARE = "lnexp's choice: 1% of the loss"
A_HUMP = Claim(
    "(a) The intrinsic dimension rises then falls, a high-dimensional phase inside the stack (Valeriani "
    "et al. 2023; Cheng et al. 2025): {arm}, L = {L}",
    "(middle third's mean TwoNN ID − the larger of the first and last thirds') ÷ the middle's, "
    + THIRDS + ", trained model", GREATER, 0.1, TENTH)
A_LATER = Claim(
    "(a) The mentor's version: later layers carry higher-dimensional features: {arm}, L = {L}",
    "(last third's mean TwoNN ID − first third's) ÷ first third's, " + THIRDS + ", trained model",
    GREATER, 0.1, TENTH)
B_KURTOSIS = Claim(
    "(b) Pre-LN's stream has more outlier features than Peri-LN's (He et al. 2024: Pre-Norm promotes "
    "them; Kim et al. 2025: Peri-LN tames them), L = {L}",
    "last third's mean kurtosis of the neuron RMS of the stream, Pre-LN ÷ Peri-LN, trained model",
    GREATER, 1.25, QUARTER)
B_MASSIVE = Claim(
    "(b) Pre-LN's stream has larger massive activations than Peri-LN's (Sun et al. 2024; Kim et al. "
    "2025: Pre-LN is prone to them), L = {L}",
    "last third's mean max |a| / median |a| of the stream, Pre-LN ÷ Peri-LN, trained model",
    GREATER, 1.25, QUARTER)
B_TRAINING = Claim(
    "(b) Training grows Pre-LN's outlier features (He et al. 2024: they emerge in training, promoted by "
    "Pre-Norm and Adam), L = {L}",
    "last third's mean kurtosis of the neuron RMS of the stream, Pre-LN, trained model ÷ initialisation",
    GREATER, 1.25, QUARTER)
C_IDENTITY = Claim(
    "(c) The curse of depth: Pre-LN's deep blocks come close to the identity (Sun et al. 2025; Gromov "
    "et al. 2024), L = {L}",
    "mean angular distance between a block's input and output, last third ÷ first third, Pre-LN, "
    "trained model", LESS, 0.8, FIFTH)
LIFTS = ("mean angular distance between a block's input and output over the last third, {a} ÷ {b}, "
         "trained model")
C_LNS = Claim(
    "(c) LayerNorm Scaling lifts the curse: its deep blocks change the stream more than Pre-LN's (Sun et "
    "al. 2025), L = {L}", LIFTS.format(a=LNS.label, b=PRE.label), GREATER, 1.25, QUARTER)
C_LNS_SKIP = Claim(
    "(c) LayerNorm Scaling's deep blocks matter more to the loss than Pre-LN's (Sun et al. 2025: Pre-LN's "
    "deep layers can be pruned at little cost), L = {L}",
    "last third's mean relative loss change when one block is skipped, LayerNorm Scaling − Pre-LN, "
    "trained model", GREATER, 0.01, LOSS_SHARE)
C_MIX = Claim(
    "(c) Mix-LN's deep blocks change the stream more than Pre-LN's (Li et al. 2024: Pre-LN's small "
    "deep-layer gradients leave those layers ineffective; Mix-LN makes them contribute), L = {L}",
    LIFTS.format(a=MIX.label, b=PRE.label), GREATER, 1.25, QUARTER)
C_GPT2 = Claim(
    "(c) GPT-2's 1/√N scaling alone lifts the curse: it curbs the stream's growth (Radford et al. 2019), "
    "the curse's cause (Sun et al. 2025), L = {L}",
    LIFTS.format(a="Pre-LN + GPT-2 scaling", b="GPT-2 init without it"), GREATER, 1.25, QUARTER)
SHIELDS = ("last third's mean relative loss change when a boundary's {what} are mean-replaced, Pre-LN − "
           "Post-LN, trained model")
D_DIMS = Claim(
    "(d) Shielding: Pre-LN's loss depends less than Post-LN's on its late outlier dimensions (the "
    "mentor's claim with (b)'s directions), L = {L}",
    SHIELDS.format(what="top-k dimensions by RMS"), LESS, -0.01, LOSS_SHARE)
D_PCS = Claim(
    "(d) Shielding: Pre-LN's loss depends less than Post-LN's on its late top principal directions (the "
    "mentor's claim with (a)'s directions), L = {L}",
    SHIELDS.format(what="top-k principal directions"), LESS, -0.01, LOSS_SHARE)
D_SCALE_FREE = Claim(
    "(d) Shielding, scale-free: Pre-LN's loss is less sensitive to its late stream, relative to its early "
    "stream, than Post-LN's, L = {L}",
    "last third ÷ first third of ‖x_l‖·‖∂loss/∂x_l‖, Pre-LN ÷ Post-LN, trained model", LESS, 0.8, FIFTH)
GPT2_AT_INIT = Wiring(
    "GPT-2's 1/√N scaling makes every block change the stream less at initialisation, L = {L}",
    "mean angular distance between a block's input and output over all blocks at initialisation, Pre-LN "
    "+ GPT-2 scaling ÷ GPT-2 init without it", 0.0, 0.8,
    "the scaled init multiplies each branch's output projection by 1/√N, N = 2L: the branches add less "
    "to the stream by construction")


Statistic = Callable[[int, At], list[float | None] | None]  # (depth, at) -> one value per seed


@dataclass(frozen=True)
class Row:
    """A claim as the analysis tests it at each depth: the arms it reads (a row whose arms are not all
    chosen is left out), its statistic per seed on the trained model or at initialisation (None: it
    has none there), its premises beyond "every arm learned", and the claim's {fields}."""

    claim: Claim
    arms: tuple[str, ...]
    statistic: Statistic
    premises: Callable[[int], list[Precondition]] = lambda n: []
    fields: tuple[tuple[str, str], ...] = ()

    def at(self, n: int) -> Claim:
        return self.claim.format(L=n, **dict(self.fields))


class Reader:
    """A suite run's profiles as the statistics read them: per arm, depth and seed."""

    def __init__(self, ctx: SuiteRuns) -> None:
        self.ctx = ctx

    def blocks(self, arm: str, n: int, m: Measure, at: At) -> list[list[float] | None]:
        return [m.blocks(q) for q in self.ctx.profiles((arm, n), m.probe, m.param, at)]

    def values(self, arm: str, n: int, m: Measure, at: At, f: Callable[[Sequence[float]], float | None]
              ) -> list[float | None]:
        return [f(values) if values else None for values in self.blocks(arm, n, m, at)]

    def one(self, arm: str, m: Measure, f: Callable) -> Statistic:
        return lambda n, at: self.values(arm, n, m, at, f)

    def pair(self, how: Callable, a: str, b: str, m: Measure, f: Callable) -> Statistic:
        """`how` (ratio, difference) of two arms' values, seed by seed."""
        return lambda n, at: seedwise(how, self.values(a, n, m, at, f), self.values(b, n, m, at, f))

    def training(self, arm: str, m: Measure, f: Callable) -> Statistic:
        """The trained model's value ÷ the initial one's: a statistic of the trained model only."""
        return lambda n, at: None if at == "init" else seedwise(ratio, self.values(arm, n, m, "final", f),
                                                                 self.values(arm, n, m, "init", f))

    def learned(self, keys: Sequence[tuple[str, int]]) -> Precondition:
        """Every seed of every (arm, depth) learned: a completed run whose final validation loss is
        below its unigram baseline − the scale's margin. Fails (not applicable) if one did not."""
        ctx, failed, unknown, numbers = self.ctx, [], False, []
        for arm, n in keys:
            flags = [ctx.converged(r) for r in ctx[arm, n]]
            unknown |= None in flags
            failed += [f"{label(arm)} L = {n} seed {s}" for s, f in zip(ctx.seeds_of((arm, n)), flags)
                       if f is False]
            numbers.append(f"{label(arm)} L = {n}: " + ", ".join(num(final_loss(r)) for r in ctx[arm, n]))
        who = " and ".join(dict.fromkeys(label(arm) for arm, _ in keys))
        below = ", ".join(num(ctx.threshold(s)) for s in ctx.seeds()) if not unknown else "–"
        return Precondition(f"{who} learned on every seed", f"{', '.join(failed)} did not learn: no trained "
                            "features to measure", False if failed else None if unknown else True,
                            "final val loss " + "; ".join(numbers) + f"; learned below {below} (the seeds' "
                            f"unigram baselines − {ctx.scale.margin:g})")


def rows(arms: Sequence[str], read: Reader) -> list[Row]:
    """Every claim's rows, in report order (a depth's rows are made by `Row.at`)."""

    def curse(arm: str) -> Callable[[int], list[Precondition]]:
        return lambda n: [premise(
            f"{label(arm)}'s deep blocks come close to the identity (L = {n})",
            f"{label(arm)}'s deep blocks did not come close to the identity: no curse to lift",
            f"{label(arm)}'s last ÷ first third of the angular distance, L = {n}",
            read.values(arm, n, ANGLE, "final", late_over_early), C_IDENTITY.direction,
            C_IDENTITY.smallest_effect)]

    def depends(m: Measure, what: str) -> Callable[[int], list[Precondition]]:
        return lambda n: [premise(
            f"Post-LN's loss depends on its late {what} (L = {n})",
            f"Post-LN's loss does not depend on its late {what}: nothing to shield it from",
            f"Post-LN's last third's relative loss change, {what} mean-replaced, L = {n}",
            read.values(POST.name, n, m, "final", late), GREATER, -D_DIMS.smallest_effect)]

    pre, post = PRE.name, POST.name
    return [
        *(Row(A_HUMP, (arm,), read.one(arm, ID, hump), fields=(("arm", label(arm)),)) for arm in arms),
        *(Row(A_LATER, (arm,), read.one(arm, ID, rise), fields=(("arm", label(arm)),))
          for arm in (post, pre)),
        Row(B_KURTOSIS, (pre, PERI.name), read.pair(ratio, pre, PERI.name, KURTOSIS, late)),
        Row(B_MASSIVE, (pre, PERI.name), read.pair(ratio, pre, PERI.name, MASSIVE, late)),
        Row(B_TRAINING, (pre,), read.training(pre, KURTOSIS, late)),
        Row(C_IDENTITY, (pre,), read.one(pre, ANGLE, late_over_early)),
        Row(C_LNS, (LNS.name, pre), read.pair(ratio, LNS.name, pre, ANGLE, late), curse(pre)),
        Row(C_LNS_SKIP, (LNS.name, pre), read.pair(difference, LNS.name, pre, SKIP, late), curse(pre)),
        Row(C_MIX, (MIX.name, pre), read.pair(ratio, MIX.name, pre, ANGLE, late), curse(pre)),
        Row(C_GPT2, (GPT2, GPT2_INIT), read.pair(ratio, GPT2, GPT2_INIT, ANGLE, late), curse(GPT2_INIT)),
        Row(D_DIMS, (pre, post), read.pair(difference, pre, post, TOP_DIMS, late),
            depends(TOP_DIMS, "top-k dimensions")),
        Row(D_PCS, (pre, post), read.pair(difference, pre, post, TOP_PCS, late),
            depends(TOP_PCS, "top-k principal directions")),
        Row(D_SCALE_FREE, (pre, post), read.pair(ratio, pre, post, SCALE_FREE, late_over_early)),
    ]


def analyse(ctx: SuiteRuns) -> Analysis:
    p, seeds = ctx.params, ctx.seeds()
    arms = [arm for arm in ARMS if arm in p.arms]
    read = Reader(ctx)
    chosen = [row for row in rows(arms, read) if set(row.arms) <= set(arms)]
    verdicts: list[Verdict] = []
    at_init = []
    for row in chosen:
        for n in p.depths:
            claim = row.at(n)
            needs = [read.learned([(arm, n) for arm in row.arms]), *row.premises(n)]
            trained, init = row.statistic(n, "final"), row.statistic(n, "init")
            verdicts.append(claim.test(trained, seeds, needs))
            at_init.append([claim.text, mean_pm(init) if init is not None else "–", mean_pm(trained)])
    if {GPT2, GPT2_INIT} <= set(arms):
        scaled_over_control = read.pair(ratio, GPT2, GPT2_INIT, ANGLE, mean_of)
        verdicts += [GPT2_AT_INIT.format(L=n).check(scaled_over_control(n, "init"), seeds) for n in p.depths]
    tables = [md_table(["claim", "at initialisation (mean ± std, n)", "trained model"], at_init),
              numbers_table(read, arms, p.depths)]
    return Analysis(verdicts, definitions(ctx, arms), figures(read, arms, p.depths), tables,
                    notes=["The first table gives each claim's statistic at initialisation beside the "
                           "trained model's: reported, never counted (the claims are about trained "
                           "features)."],
                    findings=findings(read, arms, p.depths, verdicts, ctx.scale.name))


def numbers_table(read: Reader, arms: Sequence[str], depths: Sequence[int]) -> str:
    """Every arm's trained-model numbers (mean ± std over seeds): the claims' measures and more."""

    def trained(m: Measure, f: Callable) -> Callable[[str, int], list[float | None]]:
        return lambda arm, n: read.values(arm, n, m, "final", f)

    def relative_se(arm: str, n: int) -> list[float | None]:
        """TwoNN's standard error over its estimate, averaged over the blocks' outputs."""
        return [mean_of(seedwise(ratio, se, ident)) if se and ident else None for se, ident in
                zip(read.blocks(arm, n, ID_SE, "final"), read.blocks(arm, n, ID, "final"))]

    columns = {
        "ID peak at l/L": trained(ID, peak_depth), "ID hump": trained(ID, hump),
        "ID last vs first third": trained(ID, rise), "TwoNN s.e. ÷ ID": relative_se,
        "kurtosis, last third": trained(KURTOSIS, late), "max/median, last third": trained(MASSIVE, late),
        "angle, last ÷ first third": trained(ANGLE, late_over_early),
        "angle, last third": trained(ANGLE, late),
        "skip loss change, last third": trained(SKIP, late),
        "top-k dims loss change, last third": trained(TOP_DIMS, late),
        "top-k PCs loss change, last third": trained(TOP_PCS, late),
        "‖x‖·‖∂L/∂x‖, last ÷ first third": trained(SCALE_FREE, late_over_early)}
    out = []
    for arm in arms:
        for n in depths:
            runs = read.ctx[arm, n]
            out.append([label(arm), n, f"{sum(read.ctx.converged(r) is True for r in runs)}/{len(runs)}",
                        mean_pm([final_loss(r) for r in runs]),
                        *(mean_pm(f(arm, n)) for f in columns.values())])
    return md_table(["arm", "L", "learned", "final val loss", *columns], out)


FIGURES = (  # file, caption's subject, the measures drawn (one row of panels each)
    ("dimension.png", "(a) the TwoNN intrinsic dimension of the LN-normalised stream", (ID,)),
    ("outliers.png", "(b) outlier features and massive activations of the stream", (KURTOSIS, MASSIVE)),
    ("curse_of_depth.png", "(c) how much each block changes the stream, and the loss without it",
     (ANGLE, SKIP)),
    ("shielding.png", "(d) the loss's dependence on the stream's top directions, and its scale-free "
     "sensitivity", (TOP_DIMS, TOP_PCS, SCALE_FREE)),
)


def figures(read: Reader, arms: Sequence[str], depths: Sequence[int]) -> list[Figure]:
    """A figure per claim family: each measure's profile against relative depth, one line per arm (seed
    mean, min–max band), a column per depth at initialisation and on the trained model."""

    def draw(measures: Sequence[Measure]) -> Callable[[Any], Any]:
        def plot(plt: Any) -> Any:
            from lnexp.report.figures import colors, label_log_axis, seed_band

            panels = [(n, at) for n in depths for at in ("init", "final")]
            fig, axes = plt.subplots(len(measures), len(panels), squeeze=False, sharex=True,
                                     figsize=(4.2 * len(panels), 3.3 * len(measures)))
            for row, m in zip(axes, measures):
                for ax, (n, at) in zip(row, panels):
                    for color, arm in zip(colors(len(arms)), arms):
                        profiles = read.ctx.profiles((arm, n), m.probe, m.param, at)
                        seed_band(ax, [list(zip(m.xs(n), q)) for q in profiles if q], color, marker=".",
                                  label=label(arm))
                    if m.log_scale:
                        ax.set_yscale("log")
                        label_log_axis(ax.yaxis)
                    ax.set_title(f"{m.title}\nL = {n}, {'initialisation' if at == 'init' else 'trained'}",
                                 fontsize=9)
            for ax in axes[-1]:
                ax.set_xlabel("relative depth l/L (0: the embedding)")
            axes[0][-1].legend(fontsize=7)
            fig.tight_layout()
            return fig
        return plot

    return [Figure(file, f"{subject}: by relative depth, one line per arm (seed mean, min–max band), at "
                   "initialisation and on the trained model", draw(measures))
            for file, subject, measures in FIGURES]


def definitions(ctx: SuiteRuns, arms: Sequence[str]) -> list[str]:
    p, scale = ctx.params, ctx.scale
    return [
        "Arms: " + "; ".join(f"{label(arm)} (`" + ", ".join(f"{k}={v}" for k, v in ARMS[arm][1].items())
                             + "`)" for arm in arms)
        + f". Every arm at L ∈ {{{', '.join(map(str, p.depths))}}}, Adam lr {p.lr:g} without warm-up, "
        f"{scale.train['train']['steps']} steps, linear decay, seeds {', '.join(map(str, ctx.seeds()))}: the "
        "layouts suite's cells at its depth and gpt2-scaling's at its own are these runs. The GPT-2 control "
        "has GPT-2's init (N(0, 0.02), tied embeddings, learned positions) without the 1/√N scaling, so "
        "that the scaling alone differs.",
        f"\"Trained model\": the probes at {FINAL}. \"Initialisation\": step 0. Every claim needs the arms "
        f"it reads to have learned on every seed (final validation loss below the unigram baseline − "
        f"{scale.margin:g}): a run that did not learn has no trained features, and the row is not "
        "applicable.",
        "Thirds: a profile at the blocks' outputs (L values: the stream leaving each block, or each block's "
        "own measure) is split into its first ⌊L/3⌋, its last ⌊L/3⌋ and the middle. The embedding (the "
        "stream entering the first block) is in the figures, never in a statistic: its tokens are a "
        "byte and a position, no layer's features.",
        "Probes (lnexp/run/probes.py), on the run's first validation batch (at most 4,096 tokens): "
        "`intrinsic_dim` (TwoNN, Facco et al. 2017, each token vector first normalised as a LayerNorm "
        "without affine would, so Pre-LN's growing raw stream and Post-LN's normalised one compare on "
        "equal terms); `outliers` (He et al.'s kurtosis mean(s⁴)/mean(s²)² of the neurons' RMS s: 1 when "
        "every neuron has the same RMS; Sun et al.'s max |a| / median |a|); `layer_change` (the mean over "
        "tokens of (1/π)·arccos of the cosine between a block's input and output, Gromov et al. 2024; the "
        "relative loss change with the block skipped); `direction_ablation` (the relative loss change when "
        "a boundary's top-k dimensions by RMS, or its top-k principal directions, take their mean over "
        "the tokens, k = `log.direction_k`, 4); `sensitivity`'s scale-free ‖x_l‖·‖∂loss/∂x_l‖ on the "
        "training step's own batch (a LayerNorm's Jacobian goes as 1/RMS, so ‖∂loss/∂x‖ alone restates "
        "the stream's scale).",
        "The premises: a layout cannot lift a curse its reference does not show ((c)'s rows need the "
        "reference's deep blocks close to the identity, by (c)'s own rule), and Pre-LN cannot be shielded "
        "from directions Post-LN's loss does not depend on ((d)'s ablation rows need Post-LN's last-third "
        "loss change above 1% of the loss).",
        "Not kept from the earlier suite: effective rank (its profile started at the embedding, already "
        "about 0.9·d, and a fitted line cannot show a profile that rises then falls: the TwoNN profile "
        "replaces it), ‖∂loss/∂x‖ (not scale-free), and the uncentred anisotropy (it counts what the "
        "positions alone give).",
    ]


def findings(read: Reader, arms: Sequence[str], depths: Sequence[int], verdicts: Sequence[Verdict],
             scale: str) -> list[str]:
    """Sentences composed from the measured numbers: which arms learned, where the dimension peaks,
    and each family's verdicts."""
    ctx = read.ctx
    out = []
    stuck = [f"{label(arm)} at L = {n} ({sum(ctx.converged(r) is True for r in ctx[arm, n])} of "
             f"{len(ctx[arm, n])} seeds learned)" for arm in arms for n in depths
             if any(ctx.converged(r) is False for r in ctx[arm, n])]
    if stuck:
        out.append("Not every seed learned: " + "; ".join(stuck) + ". Their rows are not applicable.")

    def mean(values: Sequence[float | None]) -> float | None:
        xs = [v for v in values if usable(v)]
        return sum(xs) / len(xs) if xs else None

    peaks = [f"{label(arm)} " + ", ".join(f"{num(mean(read.values(arm, n, ID, 'final', peak_depth)), 2)} "
                                          f"(L = {n})" for n in depths) for arm in arms]
    out.append("Where the trained model's TwoNN dimension peaks (relative depth l/L of the largest value at "
               "the blocks' outputs, seed mean): " + "; ".join(peaks) + ".")
    families = {"(a)": "dimension by depth", "(b)": "outlier features", "(c)": "the curse of depth",
                "(d)": "shielding"}
    for prefix, name in families.items():
        found = [v.verdict for v in verdicts if v.claim.startswith(prefix) and v.kind == "claim"]
        if found:
            counts = ", ".join(f"{found.count(k)} {k}" for k in dict.fromkeys(found))
            out.append(f"{prefix} {name}: {counts} (of {len(found)} rows).")
    mentor = [v.verdict for v in verdicts if v.claim.startswith("(a) The mentor's")]
    shield = [v.verdict for v in verdicts if v.claim.startswith("(d)")]
    out.append(f"So, at scale `{scale}`: \"later layers carry higher-dimensional features\" is reproduced in "
               f"{mentor.count(REPRODUCED)} of its {len(mentor)} rows, and \"LN placement shields the model "
               f"from them\" in {shield.count(REPRODUCED)} of its {len(shield)}. docs/feature-dimension.md "
               "says what would change at a larger scale.")
    return out


SUITE = Suite(
    "feature-dimension",
    "Do later layers carry higher-dimensional features, and does LN placement shield the model from them?",
    "A mentor's claim (the note lnexp was built from), in its published forms: intrinsic dimension "
    "(Facco et al. 2017; Valeriani et al. 2023; Cheng et al. 2025), outlier features (He et al. 2024; Sun et "
    "al. 2024; Kim et al. 2025), the curse of depth (Sun et al. 2025; Gromov et al. 2024; Li et al. 2024)",
    PARAMS, grid, analyse)
