"""Figures: `compare_figure` for runs side by side, `run_figures` for one run's folder."""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lnexp.core.probe_kinds import FEATURE_STATS, PROBE_KINDS, by_row, profile_depth
from lnexp.report.compare import Comparison, group_profiles
from lnexp.report.figures import COLORS, band, colors, label_log_axis, save, seed_band, smooth
from lnexp.report.units import NATS, LossUnit, loss_units
from lnexp.run.reader import Run
from lnexp.run.rows import layer_profile, logged_steps, weight_roles


def warmup_steps(run: Run) -> int:
    value = run.config.get("schedule", {}).get("warmup_steps")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


DENSE_EVALS = 12  # with this many validation points a line between them no longer misleads


def _losses(run: Run, key: str, unit: LossUnit) -> list[tuple[int, float]]:
    """(step, the metrics' `key` in `unit`) where the run logged it."""
    return [(m["step"], unit.convert(run, m[key])) for m in run.metrics if m.get(key) is not None]


def loss_panel(ax: Axes, run: Run, color: Any, unit: LossUnit, log_scale: bool = False) -> None:
    """Training loss (running mean, raw values faint) solid, validation loss as dots (joined only
    when evals are dense), a cross where a run diverged, a dotted line at the end of warm-up."""
    train = _losses(run, "loss", unit)
    finite = [(s, v) for s, v in train if math.isfinite(v)]
    if finite:
        steps, losses = zip(*finite)
        window = max(1, len(losses) // 30)
        if window > 1:
            ax.plot(steps, losses, color=color, alpha=0.2, linewidth=0.8)
        ax.plot(steps, smooth(list(losses), window), color=color, linewidth=1.6)
    val = _losses(run, "val_loss", unit)
    if val:
        ax.plot(*zip(*val), color=color, linestyle="--" if len(val) >= DENSE_EVALS else "none",
                marker="o", markersize=4.5, markeredgecolor="black", markeredgewidth=0.6, linewidth=1)
    diverged = run.summary.get("diverged_step")
    if diverged is not None and finite:
        ax.plot([diverged], [finite[-1][1]], color=color, marker="x", markersize=11, markeredgewidth=2.5)
    if warmup_steps(run):
        ax.axvline(warmup_steps(run), color=color, linestyle=":", linewidth=1)
    ax.set(xlabel="step", ylabel=unit.label(), title="loss")
    if log_scale:
        ax.set_yscale("log")


def loss_legend(ax: Axes, runs: list[Run]) -> None:
    """What the marks of a loss panel mean, in grey (the colours name the runs elsewhere)."""
    grey = dict(color="grey")
    handles = [Line2D([], [], linewidth=1.6, label="train (running mean)", **grey),
               Line2D([], [], linestyle="none", marker="o", markeredgecolor="black", label="validation",
                      **grey)]
    if any(r.summary.get("diverged_step") is not None for r in runs):
        handles.append(Line2D([], [], linestyle="none", marker="x", markeredgewidth=2.5, label="diverged",
                              **grey))
    if any(warmup_steps(r) for r in runs):
        handles.append(Line2D([], [], linestyle=":", label="end of warm-up", **grey))
    ax.legend(handles=handles, fontsize=8)


SCORES = {"bleu": "BLEU", "chrf": "chrF", "exact_match": "exact match"}  # train.eval_bleu_every's


def score_panel(ax: Axes, run: Run, color: Any, metric: str) -> None:
    """A translation score (metrics.jsonl's `metric`, train.eval_bleu_every) against the step."""
    points = [(m["step"], m[metric]) for m in run.metrics if m.get(metric) is not None]
    if points:
        ax.plot(*zip(*points), color=color, marker="o", markersize=3.5, linewidth=1.6)
    ax.set(xlabel="step", ylabel=SCORES[metric], title=f"validation {SCORES[metric]} (greedy)")


def lr_panel(ax: Axes, run: Run, color: Any, width: float = 1.6) -> None:
    points = [(m["step"], m["lr"]) for m in run.metrics if m.get("lr") is not None]
    if points:
        ax.plot(*zip(*points), color=color, linewidth=width)


def lr_axis(ax: Axes) -> None:
    """Once every run's schedule is drawn: from 0, so a warm-up or decay reads as a fraction of the
    peak (setting the limit before drawing would freeze autoscaling at the first run's curve)."""
    ax.set(xlabel="step", ylabel="learning rate", title="learning-rate schedule")
    ax.set_ylim(bottom=0)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


def uses_log_scale(probe: str, param: str) -> bool:
    """One y scale per quantity, whatever the data's range, so two runs' figures can be put side by
    side: the probe's declaration says which (log for magnitudes, linear for ranks and changes)."""
    kind = by_row(probe)
    return kind is not None and (kind.log_scale is True or param in (kind.log_scale or ()))


def _layer_axis(ax: Axes, values: list[list[float]], probe: str, param: str) -> None:
    depth = max(map(len, values), default=0)
    ax.set_xticks(range(depth))
    leaves_last = profile_depth(probe, param, 0) == 1  # a residual-stream measure
    ax.set_xlabel("layer (from 0; last = leaving the last block)" if leaves_last else "layer (from 0)")
    if uses_log_scale(probe, param):
        ax.set_yscale("log")
        label_log_axis(ax.yaxis)


def group_loss_panel(ax: Axes, runs: list[Run], color: Any, unit: LossUnit, log_scale: bool = False) -> None:
    """Like loss_panel for several runs (seeds): the running mean of the training loss and the
    validation loss averaged over them, each with a min-max band; crosses where one diverged."""
    train = []
    for run in runs:
        points = [(s, v) for s, v in _losses(run, "loss", unit) if math.isfinite(v)]
        window = max(1, len(points) // 30)
        train.append(list(zip([s for s, _ in points], smooth([v for _, v in points], window))))
    seed_band(ax, train, color, linewidth=1.6)
    val = [_losses(run, "val_loss", unit) for run in runs]
    steps, mean, low, high = band(val)
    if steps:
        spread = [[m - lo for m, lo in zip(mean, low)], [h - m for m, h in zip(mean, high)]]
        ax.errorbar(steps, mean, yerr=spread,
                    color=color, linestyle="--" if len(steps) >= DENSE_EVALS else "none", marker="o",
                    markersize=4.5, markeredgecolor="black", markeredgewidth=0.6, capsize=2)
    for run in runs:
        diverged = run.summary.get("diverged_step")
        finite = [v for _, v in _losses(run, "loss", unit) if math.isfinite(v)]
        if diverged is not None and finite:
            ax.plot([diverged], [finite[-1]], color=color, marker="x", markersize=11, markeredgewidth=2.5)
    for steps_w in {warmup_steps(r) for r in runs} - {0}:
        ax.axvline(steps_w, color=color, linestyle=":", linewidth=1)
    ax.set(xlabel="step", ylabel=unit.label(), title="loss (mean of a group's runs, band: min to max)")
    if log_scale:
        ax.set_yscale("log")


def compare_figure(c: Comparison, path: Path, log_loss: bool = False, metric: str = "loss") -> Path:
    """Loss curves (or the `metric` of SCORES) overlaid, in the comparison's unit, the chosen
    per-layer profile of every run (or group), and the learning rates: one colour per run or group in
    every panel; the legend names the values of the keys that differ (its title the keys). LnexpError
    for loss curves in different units (c.loss_unit None)."""
    unit = c.loss_unit or loss_units(c.runs)  # which raises, saying why
    ncol = min(len(c.groups), 3 if len(c.groups) <= 12 else 4)
    rows = -(-len(c.groups) // ncol)
    legend_height = 0.3 + 0.2 * rows  # inches: the figure grows with its legend, the panels keep theirs
    fig, (ax_loss, ax_prof, ax_lr) = plt.subplots(1, 3, figsize=(16, 4.8 + legend_height))
    handles = []
    steps = {p.step for p in c.profiles if p.step is not None}
    profiles = group_profiles(c)
    palette = colors(len(c.groups))
    for i, (group, color) in enumerate(zip(c.groups, palette)):
        runs = [c.runs[m] for m in group.members]
        if metric != "loss":  # a score per run: seeds drawn side by side in their group's colour
            for run in runs:
                score_panel(ax_loss, run, color, metric)
        elif len(runs) == 1:
            loss_panel(ax_loss, runs[0], color, unit, log_loss)
        else:
            group_loss_panel(ax_loss, runs, color, unit, log_loss)
        # runs often share a schedule: earlier runs drawn wider, so identical curves stay visible
        width = 1.4 + 2.5 * (len(c.groups) - 1 - i) / max(1, len(c.groups) - 1)
        for run in runs:
            lr_panel(ax_lr, run, color, width)
        step = c.profiles[group.members[0]].step
        label = group.label + (f" (step {step})" if len(steps) > 1 and step is not None else "")
        values = profiles[group.label]
        (line,) = ax_prof.plot(range(len(values)), values, color=color, marker="o", linewidth=1.6,
                               label=label)
        if len(runs) > 1:
            seed_band(ax_prof, [list(enumerate(c.profiles[m].values)) for m in group.members], color,
                  linewidth=0)
        handles.append(line)
    if metric == "loss":
        loss_legend(ax_loss, c.runs)
    lr_axis(ax_lr)
    _layer_axis(ax_prof, [c.profiles[m].values for g in c.groups for m in g.members], c.probe, c.param)
    ax_prof.set_title(c.profile_title, fontsize=10)
    ax_prof.set_ylabel(c.profile_quantity)
    fig.legend(handles, [h.get_label() for h in handles], loc="lower center", ncol=ncol, frameon=False,
               title=c.legend_title or None, fontsize=9 if len(handles) <= 12 else 7)
    fig.tight_layout(rect=(0, legend_height / fig.get_figheight(), 1, 1))
    return save(fig, path)


def run_figures(run: Run, out_dir: Path, suffix: str = ".png", skip_init: bool = False, unit: str = NATS
                ) -> tuple[list[Path], list[str]]:
    """Write one run's figures (`draw_run`'s) into `out_dir`: their paths, and notes on what was left
    out."""
    figures, notes = draw_run(run, skip_init, unit)
    return [save(fig, out_dir / f"{name}{suffix}") for name, fig in figures.items()], notes


def draw_run(run: Run, skip_init: bool = False, unit: str = NATS) -> tuple[dict[str, Figure], list[str]]:
    """One run's figures by name (curves, grad_heatmap, ...) and notes on what was left out (a probe
    the run did not log). `skip_init` leaves step 0 out of the gradient heatmap, whose initial
    gradients can be orders of magnitude above the rest and take up the colour scale; `unit`: the
    loss axis's, NATS (the run's own) or BPB."""
    figures, notes = {}, []
    if run.metrics:
        fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(12, 4.5))
        loss_panel(ax_loss, run, COLORS[0], loss_units([run], unit))
        loss_legend(ax_loss, [run])
        lr_panel(ax_lr, run, COLORS[0])
        lr_axis(ax_lr)
        fig.suptitle(run.name)
        fig.tight_layout()
        figures["curves"] = fig
    else:
        notes.append("no metrics logged: no loss or learning-rate curves")
    grads = _by_step(run.probes, "grad")
    roles = weight_roles(run.probes)
    if roles:
        shown = {s: rows for s, rows in grads.items() if s > 0} if skip_init and len(grads) > 1 else grads
        figures["grad_heatmap"] = _heatmaps(run.name, shown, roles)
        figures["grad_profile"] = _grad_profiles(run.name, grads, roles)
    else:
        notes.append("no grad probe logged: no gradient heatmap or profile")
    acts = _by_step(run.probes, "act")
    if acts:
        figures["activations"] = _activations(run.name, acts)
    else:
        notes.append("no act probe logged: no activation-norm figure")
    for probe in (k.name for k in PROBE_KINDS.values() if k.measures):  # a figure only where logged
        by_step = _by_step(run.probes, probe)
        if by_step:
            figures[probe] = _measures(run.name, by_step, probe)
    return figures, notes


def _by_step(rows: list[dict[str, Any]], probe: str) -> dict[int, list[dict[str, Any]]]:
    """The probe's rows grouped by step, so a profile per step reads only its own rows."""
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["probe"] == probe:
            groups[row["step"]].append(row)
    return {step: groups[step] for step in logged_steps(rows, probe)}


def _grid(n: int, width: float, height: float, cols: int = 4) -> tuple[Figure, list[Axes]]:
    cols = min(n, cols)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _heatmaps(name: str, grads: dict[int, list[dict[str, Any]]], roles: list[str]) -> Figure:
    """Gradient norm, layer x step, one panel per weight role, on one shared log colour scale (so a
    colour means the same norm in every panel)."""
    steps = list(grads)
    fig, axes = _grid(len(roles), 4.2, 3.2)
    grids = {}
    for role in roles:
        columns = [layer_profile(grads[s], "grad", role, s) for s in steps]
        depth = max(map(len, columns))
        grids[role] = [[col[layer] if layer < len(col) else math.nan for col in columns]
                       for layer in range(depth)]
    positive = [v for grid in grids.values() for row in grid for v in row if v > 0]
    norm = LogNorm(min(positive), max(positive)) if positive else None
    half = (steps[1] - steps[0]) / 2 if len(steps) > 1 else 0.5
    image = None
    for ax, role in zip(axes, roles):
        depth = len(grids[role])
        extent = (steps[0] - half, steps[-1] + half, -0.5, depth - 0.5)  # cells centred on step, layer
        image = ax.imshow(grids[role], aspect="auto", origin="lower", norm=norm, cmap="viridis",
                          interpolation="nearest", extent=extent)
        ax.set(title=role, xlabel="step", ylabel="layer (from 0)", yticks=range(depth))
    fig.suptitle(f"{name}: gradient norm by layer and step"
                 + (f" (from step {steps[0]})" if steps[0] else ""))
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    if image is not None:
        fig.colorbar(image, ax=axes, label="gradient norm (log scale, shared)", fraction=0.03, pad=0.02)
    return fig


def _grad_profiles(name: str, grads: dict[int, list[dict[str, Any]]], roles: list[str]) -> Figure:
    """Gradient norm against layer index for every weight role, at initialisation and at the end."""
    first, last = min(grads), max(grads)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, step in zip(axes, (first, last)):
        profiles = [layer_profile(grads[step], "grad", role, step) for role in roles]
        for i, (role, values) in enumerate(zip(roles, profiles)):
            ax.plot(range(len(values)), values, marker="o", color=COLORS[i % len(COLORS)], label=role)
        _layer_axis(ax, profiles, "grad", "ffn.fc2")
        ax.set(title=f"step {step}" + (" (initialisation)" if step == 0 else ""), ylabel="gradient norm")
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"{name}: gradient norm by layer")
    fig.tight_layout()
    return fig


def _steps_panel(ax: Axes, by_step: dict[int, list[dict[str, Any]]], probe: str, param: str) -> None:
    """One profile by layer per logged step, up to 6 from the first to the last, coloured by step."""
    steps = list(by_step)
    chosen = sorted({steps[round(i * (len(steps) - 1) / 5)] for i in range(6)})
    cmap = plt.get_cmap("viridis")
    profiles = []
    for i, step in enumerate(chosen):
        values = layer_profile(by_step[step], probe, param, step)
        profiles.append(values)
        ax.plot(range(len(values)), values, marker="o", color=cmap(i / max(1, len(chosen) - 1)),
                label=f"step {step}")
    _layer_axis(ax, profiles, probe, param)
    ax.legend(fontsize=8)


def _activations(name: str, acts: dict[int, list[dict[str, Any]]]) -> Figure:
    """Residual-stream RMS by layer at up to 6 logged steps, from the first to the last."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _steps_panel(ax, acts, "act", "resid")
    ax.set(ylabel="RMS of the residual stream", title=f"{name}: residual-stream norm entering each layer")
    fig.tight_layout()
    return fig


def _measures(name: str, by_step: dict[int, list[dict[str, Any]]], probe: str) -> Figure:
    """A panel per measure the run logged (rank: stream and branch outputs; sensitivity), each a
    profile by layer at up to 6 logged steps."""
    logged = {r["param"] for rows in by_step.values() for r in rows}
    kind = PROBE_KINDS[probe]
    params = [p for p in kind.measures if p in logged]
    fig, axes = _grid(len(params), 4.6, 3.6, cols=len(FEATURE_STATS) if probe == "rank" else 4)
    for ax, param in zip(axes, params):
        steps = {step: rows for step, rows in by_step.items() if any(r["param"] == param for r in rows)}
        _steps_panel(ax, steps, probe, param)
        ax.set_ylabel(textwrap.fill(kind.measures[param], 30), fontsize=9)  # what is measured, where
    fig.suptitle(f"{name}: {kind.title} by layer")
    fig.tight_layout()
    return fig
