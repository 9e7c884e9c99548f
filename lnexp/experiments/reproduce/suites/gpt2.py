"""`gpt2-scaling`: GPT-2's 1/√N scaling of the residual branches keeps the Pre-LN residual stream from
growing with depth (Radford et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lnexp.experiments.reproduce.engine import Grid, Scale, SuiteRuns, final_loss, per_seed
from lnexp.experiments.reproduce.report import Analysis, Figure, md_table, mean_pm
from lnexp.experiments.reproduce.suites.common import PRE_GPT2, Suite, n_layers, optim_lr
from lnexp.experiments.reproduce.verdicts import above, below, check, usable
from lnexp.run.rows import layer_profile, logged_steps


@dataclass(frozen=True)
class Params:
    depth: int
    lr: float


PARAMS = {"tiny": Params(12, 3e-3), "cpu": Params(12, 1e-3), "small": Params(24, 1e-3)}


def _gpt2(scaled: bool) -> dict[str, Any]:
    return {**PRE_GPT2, "model.residual_scaling": "gpt2" if scaled else "none"}


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: scaled (True: with GPT-2's 1/√N residual scaling)."""
    return {scaled: per_seed("train", scale.seeds, _gpt2(scaled), n_layers(p.depth), optim_lr(p.lr))
            for scaled in (False, True)}


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds, n = ctx.scale, ctx.seeds(), ctx.params.depth
    runs = {(scaled, s): run for scaled in (False, True) for s, run in zip(seeds, ctx[scaled])}

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
        f"Both Pre-LN with GPT-2's init (all weights N(0, 0.02)), L = {n}, Adam lr {ctx.params.lr:g}, no "
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


SUITE = Suite("gpt2-scaling", "GPT-2's 1/√N residual scaling and the residual stream's growth",
                       "Radford et al. 2019 (GPT-2), Language Models are Unsupervised Multitask Learners",
                       PARAMS, grid, analyse)
