"""`gpt2-scaling`: GPT-2's 1/√N scaling of the residual branches keeps the Pre-LN residual stream from
growing with depth (Radford et al. 2019), at initialisation and on the trained model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lnexp.experiments.reproduce.engine import Grid, Scale, SuiteRuns, log_final, per_seed
from lnexp.experiments.reproduce.measure import FINAL, final_loss, ratio, seedwise
from lnexp.experiments.reproduce.report import Analysis, Figure, md_table, mean_pm
from lnexp.experiments.reproduce.suites.common import PRE_GPT2, Suite, n_layers, optim_lr
from lnexp.experiments.reproduce.verdicts import GREATER, LESS, Claim, Wiring, premise


@dataclass(frozen=True)
class Params:
    depth: int
    lr: float


PARAMS = {"tiny": Params(12, 3e-3), "cpu": Params(12, 1e-3), "small": Params(24, 1e-3)}

GROWTH = "RMS of the residual stream leaving the last layer / entering the first"
GROWS = Claim("Without scaling, the Pre-LN residual stream grows with depth (initialisation)",
              GROWTH + ", unscaled, at initialisation, L = {L}", GREATER, 1.25,
              "lnexp's choice: a quarter up over the stack (GPT-2 states the growth, no number)")
IN_CHECK_AT_INIT = Wiring("1/√N scaling keeps that growth in check at initialisation",
                          "the growth with scaling ÷ the growth without, at initialisation", 0.0, 0.8,
                          "the scaled init multiplies each branch's output projection by 1/√N at "
                          "initialisation: the branches add less to the stream by construction")
IN_CHECK_TRAINED = Claim("1/√N scaling keeps the growth in check on the trained model",
                         "the growth with scaling ÷ the growth without, on the final model", LESS, 0.8,
                         "lnexp's choice: a fifth less growth")


def _gpt2(scaled: bool) -> dict[str, Any]:
    return {**PRE_GPT2, "model.residual_scaling": "gpt2" if scaled else "none"}


def grid(scale: Scale, p: Params) -> Grid:
    """Keys: scaled (True: with GPT-2's 1/√N residual scaling). The cells log their probes at the
    first and the last step."""
    return {scaled: per_seed("train", scale.seeds, _gpt2(scaled), n_layers(p.depth), optim_lr(p.lr),
                             log_final(scale))
            for scaled in (False, True)}


def growth_of(rms: list[float] | None) -> float | None:
    """The stream's growth over the stack: RMS leaving the last block / entering the first."""
    return ratio(rms[-1], rms[0]) if rms else None


def analyse(ctx: SuiteRuns) -> Analysis:
    scale, seeds, n = ctx.scale, ctx.seeds(), ctx.params.depth
    act = {(scaled, at): ctx.profiles(scaled, "act", "resid", at) for scaled in (False, True)
           for at in ("init", "final")}
    growth = {key: [growth_of(p) for p in profiles] for key, profiles in act.items()}
    grows_after = premise("the unscaled stream grows on the trained model",
                          "Without scaling the stream did not grow on the trained model: there is no growth "
                          "to keep in check", f"{GROWTH}, unscaled, final model", growth[False, "final"],
                          GREATER, 1.25)
    verdicts = [
        GROWS.format(L=n).test(growth[False, "init"], seeds),
        IN_CHECK_TRAINED.test(seedwise(ratio, growth[True, "final"], growth[False, "final"]), seeds,
                              [grows_after]),
        IN_CHECK_AT_INIT.check(seedwise(ratio, growth[True, "init"], growth[False, "init"]), seeds),
    ]
    definitions = [
        f"Both Pre-LN with GPT-2's init (all weights N(0, 0.02)), L = {n}, Adam lr {ctx.params.lr:g}, no "
        f"warm-up, {scale.train['train']['steps']} steps; \"scaled\" multiplies the output projections of "
        f"every residual branch (attn.out, ffn.fc2) by 1/√N, N = 2·L = {2 * n}.",
        "The residual stream is the `act` probe: the RMS of each layer's input and of the last layer's "
        f"output, on a training batch, at initialisation (step 0) and on the final model: {FINAL}.",
        "The trained claim needs growth to keep in check: its precondition is that the unscaled stream "
        "grows on the trained model, by the same rule (its interval above 1.25).",
    ]

    def draw(plt: Any):
        from lnexp.report.figures import seed_band

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        for ax, at in zip(axes, ("init", "final")):
            for i, scaled in enumerate((False, True)):
                seed_band(ax, [list(enumerate(p)) for p in act[scaled, at] if p], f"C{i}", marker=".",
                          label="1/√N scaling" if scaled else "no scaling")
            ax.set_yscale("log")
            ax.set_title("initialisation" if at == "init" else
                         f"final model (step {scale.train['train']['steps'] - 1})")
            ax.set_xlabel("layer boundary")
        axes[0].set_ylabel("residual-stream RMS")
        axes[0].legend()
        fig.tight_layout()
        return fig

    rows = [["scaled" if scaled else "unscaled", mean_pm(growth[scaled, "init"]),
             mean_pm(growth[scaled, "final"]), mean_pm([final_loss(r) for r in ctx[scaled]])]
            for scaled in (False, True)]
    table = md_table(["residual scaling", "RMS growth at init", "RMS growth, final model", "final val loss"],
                     rows)
    return Analysis(verdicts, definitions, [
        Figure("residual_norms.png", "Residual-stream RMS by layer, with and without 1/√N scaling (seed "
               "mean, min–max band)", draw)], [table])


SUITE = Suite("gpt2-scaling", "GPT-2's 1/√N residual scaling and the residual stream's growth",
              "Radford et al. 2019 (GPT-2), Language Models are Unsupervised Multitask Learners",
              PARAMS, grid, analyse)
