"""The probes, one declaration each: what everything but the measuring code needs to know.

The config's `log.probes` values, compare's `--probe` choices and titles, the profiles' depth (a
residual-stream measure has a value leaving the last block too), the figures' labels and when an
evaluation probe runs all come from `PROBE_KINDS`. The measuring code is lnexp/run/probes.py: the
training-step probes (grad, act, update, adam, sensitivity's ∂loss/∂x) ride on the step's own
forward and backward; an evaluation probe (`evaluate`) takes forward passes of its own on the first
validation batch, in eval mode and without gradients, at its `schedule`'s steps (a `log.*_steps`
key) or every `log.grad_every` steps.

A plugin adds a probe with `register_probe(ProbeKind(name, title, "measures", {...},
evaluate=fn))`, where `fn(probe_input) -> {param: per-layer tensor}` (see `ProbeInput` in
lnexp/run/probes.py). This module does not import torch: reading run folders must stay fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from lnexp.core.registry import Registry

FEATURE_STATS = {"erank": "effective rank", "pr": "participation ratio", "aniso": "anisotropy"}
OUTLIER_STATS = {"kurtosis": "kurtosis of the neuron RMS", "max_median": "max |a| / median |a|"}
# Where the per-site probes (rank, outliers) measure: the stream and each branch's output
SITES = {"resid": "residual stream", "attn": "attention output", "cross": "cross-attention output",
         "ffn": "FFN output"}
# An evaluation probe that says so (`tokens`) takes at most this many tokens of the validation batch
PROBE_TOKENS = 4096


@dataclass(frozen=True)
class ProbeKind:
    """`entries`: per `weight` (one value per parameter: grad, update, adam), one per `layer` (act,
    output_change), or named `measures` per layer (rank, sensitivity; `measures` maps each to its
    title, the first being compare's default). `stream`: the measures (or prefixes) taken on the
    residual stream, which also have a value leaving the last block. `rows`: the probe names its
    rows carry with their titles, when not its own (adam's three quantiles). `evaluate`: an
    evaluation probe's function (or "module:function"), run at the steps the `schedule` key of
    `log` lists, else every `log.grad_every` steps. `training_step`: a built-in measured by
    lnexp/run/probes.py's `Probes` on the training step's own passes. `tokens`: an evaluation probe's
    validation batch is cut to its first sequences holding at most this many tokens (at least one
    sequence). `options`: the `log.*` keys only this probe reads (its function gets their values)."""

    name: str
    title: str
    entries: Literal["weight", "layer", "measures"]
    measures: dict[str, str] = field(default_factory=dict)
    stream: tuple[str, ...] = ()
    rows: dict[str, str] = field(default_factory=dict)
    schedule: str | None = None
    evaluate: Callable[..., dict[str, Any]] | str | None = None
    training_step: bool = False  # measured on the training step's own forward and backward
    log_scale: bool | tuple[str, ...] = False  # figures' y scale: log for all, or for these measures
    tokens: int | None = None
    options: tuple[str, ...] = ()

    def row_titles(self) -> dict[str, str]:
        return self.rows or {self.name: self.title}

    def evaluator(self) -> Callable[..., dict[str, Any]]:
        if isinstance(self.evaluate, str):
            module, _, function = self.evaluate.partition(":")
            return getattr(importlib.import_module(module), function)
        return self.evaluate

    def due(self, log: Any, step: int) -> bool:
        """Whether the evaluation probe runs at `step` under the config's `log` section."""
        return step in getattr(log, self.schedule) if self.schedule else step % log.grad_every == 0


PROBE_KINDS: Registry[ProbeKind] = Registry("probe")


def register_probe(kind: ProbeKind) -> ProbeKind:
    """Add a probe (a plugin's or a built-in): its name becomes a `log.probes` value."""
    if (kind.entries == "measures") != bool(kind.measures):
        raise ValueError(f"probe {kind.name!r}: named measures need entries 'measures', and only it")
    return PROBE_KINDS.add(kind.name, kind)


def by_row(probe: str) -> ProbeKind | None:
    """The probe kind whose rows carry the name `probe` (adam_v_q50 -> adam)."""
    return next((k for k in PROBE_KINDS.values() if probe in k.row_titles()), None)


def row_titles() -> dict[str, str]:
    """Every probe name a row may carry, with its title: compare's `--probe` choices."""
    return {row: title for kind in PROBE_KINDS.values() for row, title in kind.row_titles().items()}


def default_param(probe: str) -> str:
    """The profile `compare` shows when no --param is given: a per-weight probe's FFN output
    weight, or a measure probe's first measure."""
    kind = by_row(probe)
    return next(iter(kind.measures)) if kind and kind.measures else "ffn.fc2"


def profile_depth(probe: str, param: str, n_layers: int) -> int:
    """How many entries a complete profile has: one per layer, plus one leaving the last block for
    measures of the residual stream."""
    kind = by_row(probe)
    return n_layers + bool(kind and param.startswith(kind.stream or ("\0",)))


register_probe(ProbeKind("grad", "gradient norm", "weight", training_step=True, log_scale=True))
register_probe(ProbeKind("act", "residual-stream RMS", "layer", stream=("resid",), training_step=True,
                         log_scale=True))
register_probe(ProbeKind("update", "update/weight ratio", "weight", training_step=True, log_scale=True))
register_probe(ProbeKind("adam", "Adam v_t quantiles", "weight", rows={
    "adam_v_q10": "Adam v_t 10% quantile", "adam_v_q50": "Adam v_t median",
    "adam_v_q90": "Adam v_t 90% quantile"}, training_step=True, log_scale=True))
register_probe(ProbeKind("output_change", "output change under perturbation", "layer",
                         schedule="output_change_steps", evaluate="lnexp.run.probes:output_change",
                         log_scale=True))


def per_site(stats: dict[str, str]) -> dict[str, str]:
    """Measures `<site>.<stat>` for every site (SITES) and stat, with their titles."""
    return {f"{site}.{stat}": f"{title} of the {what}" for site, what in SITES.items()
            for stat, title in stats.items()}


register_probe(ProbeKind("rank", "feature dimensionality", "measures", per_site(FEATURE_STATS),
                         stream=("resid.",), evaluate="lnexp.run.probes:rank"))
register_probe(ProbeKind(
    "sensitivity", "loss sensitivity", "measures",
    {"dloss_dx": "‖∂loss/∂x‖ of the residual stream",
     "scale_free": "‖x‖·‖∂loss/∂x‖ of the residual stream",
     "noise_loss_change": "relative loss change, branch outputs replaced by noise"},
    stream=("dloss_dx", "scale_free"), schedule="ablation_steps", evaluate="lnexp.run.probes:ablation",
    training_step=True, log_scale=("dloss_dx", "scale_free")))
# The feature-dimension instruments (issue #26): each on a validation batch of at most PROBE_TOKENS
register_probe(ProbeKind(
    "intrinsic_dim", "intrinsic dimension (TwoNN)", "measures",
    {"twonn": "TwoNN intrinsic dimension of the LN-normalised residual stream",
     "twonn_se": "standard error of the TwoNN intrinsic dimension"},
    stream=("twonn",), schedule="intrinsic_dim_steps", evaluate="lnexp.run.probes:intrinsic_dim",
    tokens=PROBE_TOKENS))
register_probe(ProbeKind("outliers", "outlier features", "measures", per_site(OUTLIER_STATS),
                         stream=("resid.",), schedule="outlier_steps", evaluate="lnexp.run.probes:outliers",
                         log_scale=True, tokens=PROBE_TOKENS))
register_probe(ProbeKind(
    "layer_change", "layer change", "measures",
    {"angle": "angular distance between a block's input and output",
     "skip_loss_change": "relative loss change, the block skipped"},
    schedule="layer_change_steps", evaluate="lnexp.run.probes:layer_change", tokens=PROBE_TOKENS))
register_probe(ProbeKind(
    "direction_ablation", "direction ablation", "measures",
    {"top_dims_loss_change": "relative loss change, the top-k dimensions by RMS mean-replaced",
     "top_pcs_loss_change": "relative loss change, the top-k principal directions mean-replaced"},
    stream=("top_",), schedule="direction_ablation_steps", evaluate="lnexp.run.probes:direction_ablation",
    tokens=PROBE_TOKENS, options=("direction_k",)))
PROBE_KINDS.seal()
