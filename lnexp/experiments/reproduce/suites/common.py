"""What several suites share: the Suite declaration and its registry, cell overrides, the definitions
and figures of the training suites.

Every number in a verdict comes from the run folders (metrics.jsonl, probes.jsonl, summary.json),
read through lnexp.experiments.reproduce.measure; each claim is declared in its suite's module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lnexp.core.layouts import POST as POST_LN
from lnexp.core.layouts import PRE as PRE_LN
from lnexp.core.registry import Registry
from lnexp.core.stats import usable
from lnexp.core.status import Status
from lnexp.experiments.reproduce.engine import Grid, Scale, Spec, SuiteRuns
from lnexp.experiments.reproduce.measure import final_loss, loss_curve
from lnexp.experiments.reproduce.report import Analysis, md_table, mean_pm
from lnexp.run.reader import Run


@dataclass(frozen=True)
class Suite:
    """A claim's suite: its parameters per scale name, the grid they give, and the analysis that reads
    the grid's runs (`runs[key]`, with the grid's own keys) into verdicts."""

    name: str
    title: str
    source: str
    params: Mapping[str, Any]                 # scale name -> the suite's own parameters
    grid: Callable[[Scale, Any], Grid]        # (scale, parameters) -> cell key -> its spec per seed
    analyse: Callable[[SuiteRuns], Analysis]

    def params_at(self, scale: Scale) -> Any:
        """The suite's parameters at this scale: the scale's `suite_params` entry, else its own."""
        if self.name in scale.suite_params:
            return scale.suite_params[self.name]
        if scale.name not in self.params:
            raise KeyError(f"suite {self.name} has no parameters for scale {scale.name!r}: give them in "
                           "the scale's suite_params")
        return self.params[scale.name]

    def grid_at(self, scale: Scale) -> Grid:
        return self.grid(scale, self.params_at(scale))

    def specs(self, scale: Scale) -> list[Spec]:
        return [spec for specs in self.grid_at(scale).values() for spec in specs]


# In report order: lnexp/experiments/reproduce/suites/__init__.py registers lnexp's, then a plugin may
# add its own.
SUITES: Registry[Suite] = Registry("suite")


def register(suite: Suite) -> Suite:
    """Add a suite to SUITES (the CLI, `all` and the index read it from there); a plugin's may not
    take a built-in suite's name, nor `all` or `list`."""
    if suite.name in ("all", "list"):
        raise ValueError(f"suite {suite.name!r}: `lnexp reproduce {suite.name}` means something else")
    return SUITES.add(suite.name, suite)


# --- cell overrides --------------------------------------------------------------------------------

POST_PRE = (POST_LN.name, PRE_LN.name)
# GPT-2's layout and recipe: Pre-LN, its init (tied, learned positions) and its 1/√N residual scaling.
PRE_GPT2 = {"model.norm": PRE_LN.name, "model.init": "gpt2", "model.residual_scaling": "gpt2"}
RADAM = {"optim.name": "radam"}


def model_norm(name: str) -> dict[str, Any]:
    return {"model.norm": name}


def n_layers(n: int) -> dict[str, Any]:
    return {"model.n_layers": n}


def optim_lr(value: float) -> dict[str, Any]:
    return {"optim.lr": value}


def warmup_steps(scale: Scale) -> dict[str, Any]:
    """The scale's warm-up, where a cell uses warm-up."""
    return {"schedule.warmup_steps": scale.warmup}


POST, PRE = model_norm(POST_LN.name), model_norm(PRE_LN.name)


# --- definitions, figures and tables of the training suites ----------------------------------------

MARGIN_LOSS = 0.1  # nats: "worse" means more than this much higher final validation loss


def converge_definition(ctx: SuiteRuns, seeds: Sequence[int] | None = None) -> str:
    seeds = ctx.seeds() if seeds is None else seeds
    per_seed = ", ".join(f"seed {s}: {ctx.baseline(s):.3f} − {ctx.scale.margin:g} = "
                         f"**{ctx.threshold(s):.3f}**" for s in seeds)
    return (f"**converges**: the run completed (no NaN, no loss above 2·ln 256) and its final "
            f"validation loss is below the unigram baseline minus {ctx.scale.margin:g} nats ({per_seed}). "
            "The unigram baseline is the cross-entropy of the run's own validation windows (they "
            "depend on the seed) under the training bytes' unigram frequencies: the loss of a model that "
            "has collapsed to ignoring context. Differences between settings are taken per seed, on "
            "the same validation windows.")


def loss_definition() -> str:
    return ("**final loss**: validation loss of the final model (`summary.json` final_val_loss); a "
            f"diverged run counts as +∞. A difference in final loss is called \"worse\" above "
            f"+{MARGIN_LOSS:g} nats.")


def curves_figure(ctx: SuiteRuns, panels: list[tuple[str, list[tuple[str, list[Run | None]]]]]):
    """One panel per entry: training loss (running mean, averaged over seeds) per setting, validation
    loss as dots, the unigram baseline and the convergence threshold dashed."""

    def draw(plt: Any):
        from lnexp.report.figures import band, smooth

        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False,
                                 sharey=True)
        for ax, (title, settings) in zip(axes[0], panels):
            for i, (label, runs) in enumerate(settings):
                color = f"C{i}"
                curves = [loss_curve(r) for r in runs if r is not None]
                steps, mean, _, _ = band([list(zip([s for s, _ in c], smooth([v for _, v in c], 10)))
                                          for c in curves if c])
                if steps:
                    ax.plot(steps, mean, color=color, label=label)
                vsteps, vmean, _, _ = band([loss_curve(r, "val_loss") for r in runs if r is not None])
                if vsteps:
                    ax.plot(vsteps, vmean, "o", color=color, markersize=4)
                for r in runs:
                    if r is not None and r.status == Status.DIVERGED:
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


def settings_table(ctx: SuiteRuns, rows: list[tuple[list[str], list[Run | None]]], header: list[str]) -> str:
    out = []
    for labels, runs in rows:
        losses = [final_loss(r) for r in runs]
        conv = [ctx.converged(r) for r in runs]
        out.append([*labels, mean_pm(losses), f"{sum(c is True for c in conv)}/{len(runs)}",
                    f"{sum(r is not None and r.status == Status.DIVERGED for r in runs)}/{len(runs)}",
                    ", ".join(r.name if r else "missing" for r in runs)])
    return md_table([*header, "final val loss (mean ± std, n)", "converged", "diverged", "runs"], out)


def trend_word(values: Sequence[float | None]) -> tuple[str, float | None]:
    """A per-layer trend in a word, from the seed mean of fitted last/first ratios, by Figure 3's
    thresholds: "grows" (> 1.25), "stays about flat" ([0.8, 1.25]), "falls" (< 0.8)."""
    xs = [v for v in values if usable(v)]
    if not xs:
        return "has no number", None
    mean = sum(xs) / len(xs)
    return ("grows" if mean > 1.25 else "stays about flat" if mean >= 0.8 else "falls"), mean
