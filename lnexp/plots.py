"""Figures: `compare_figure` for runs side by side, `run_figures` for one run's folder.

Agg backend: figures go to files only, so they render without a display (CI, ssh). Imported lazily
by the CLI, so `lnexp --help` does not pay for matplotlib.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lnexp.compare import Comparison  # noqa: E402
from lnexp.runs import (  # noqa: E402
    FEATURE_STATS,
    MEASURES,
    PROBES,
    Run,
    layer_profile,
    logged_steps,
    profile_depth,
    weight_roles,
)

COLORS = plt.get_cmap("tab10").colors


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)  # pyplot keeps every figure alive until closed
    return path


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing running mean, so per-step training losses read as a curve."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_panel(ax: Axes, run: Run, color: Any, log_scale: bool = False) -> None:
    """Training loss (running mean, raw values faint) solid, validation loss dashed with dots, and a
    cross where a run diverged."""
    train = [(m["step"], m["loss"]) for m in run.metrics if m.get("loss") is not None]
    finite = [(s, v) for s, v in train if math.isfinite(v)]
    if finite:
        steps, losses = zip(*finite)
        window = max(1, len(losses) // 30)
        if window > 1:
            ax.plot(steps, losses, color=color, alpha=0.2, linewidth=0.8)
        ax.plot(steps, smooth(list(losses), window), color=color, linewidth=1.6)
    val = [(m["step"], m["val_loss"]) for m in run.metrics if m.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val), color=color, linestyle="--", marker="o", markersize=3.5, linewidth=1.2)
    diverged = run.summary.get("diverged_step")
    if diverged is not None and finite:
        ax.plot([diverged], [finite[-1][1]], color=color, marker="x", markersize=11, markeredgewidth=2.5)
    ax.set(xlabel="step", ylabel="loss", title="loss: train (solid), val (dashed)")
    if log_scale:
        ax.set_yscale("log")


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
    ax.set(xlabel="step", ylabel="learning rate", title="learning-rate schedule")
    ax.set_ylim(bottom=0)  # a warm-up or decay reads as a fraction of the peak
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


def _layer_axis(ax: Axes, values: list[list[float]], probe: str, param: str) -> None:
    depth = max(map(len, values), default=0)
    ax.set_xticks(range(depth))
    leaves_last = profile_depth(probe, param, 0) == 1  # a residual-stream measure
    ax.set_xlabel("layer (last = leaving the last block)" if leaves_last else "layer")
    flat = [v for vs in values for v in vs if math.isfinite(v)]
    if flat and min(flat) > 0 and max(flat) / min(flat) > 20:  # log only where it spans decades
        ax.set_yscale("log")


def compare_figure(c: Comparison, path: Path, log_loss: bool = False, metric: str = "loss") -> Path:
    """Loss curves (or the `metric` of SCORES) overlaid, the chosen per-layer profile of every run, and
    the learning rates: one colour per run in every panel, labelled by the config keys that differ."""
    fig, (ax_loss, ax_prof, ax_lr) = plt.subplots(1, 3, figsize=(16, 5.2))
    handles = []
    steps = {p.step for p in c.profiles if p.step is not None}
    for i, (run, legend, profile) in enumerate(zip(c.runs, c.legends, c.profiles)):
        color = COLORS[i % len(COLORS)]
        if metric == "loss":
            loss_panel(ax_loss, run, color, log_loss)
        else:
            score_panel(ax_loss, run, color, metric)
        # runs often share a schedule: earlier runs drawn wider, so identical curves stay visible
        lr_panel(ax_lr, run, color, width=1.4 + 2.5 * (len(c.runs) - 1 - i) / max(1, len(c.runs) - 1))
        label = legend + (f" (step {profile.step})" if len(steps) > 1 and profile.step is not None else "")
        (line,) = ax_prof.plot(range(len(profile.values)), profile.values, color=color, marker="o",
                               linewidth=1.6, label=label)
        handles.append(line)
    _layer_axis(ax_prof, [p.values for p in c.profiles], c.probe, c.param)
    ax_prof.set_title(c.profile_title, fontsize=10)
    ncol = min(len(handles), 3)
    rows = -(-len(handles) // ncol)
    fig.legend(handles, [h.get_label() for h in handles], loc="lower center", ncol=ncol, frameon=False)
    fig.tight_layout(rect=(0, 0.045 * rows + 0.01, 1, 1))
    return _save(fig, path)


def run_figures(run: Run, out_dir: Path, suffix: str = ".png") -> tuple[list[Path], list[str]]:
    """Write one run's figures into `out_dir`. Returns their paths and notes on what was left out
    (a probe the run did not log)."""
    paths, notes = [], []
    if run.metrics:
        fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(12, 4.5))
        loss_panel(ax_loss, run, COLORS[0])
        lr_panel(ax_lr, run, COLORS[0])
        fig.suptitle(run.name)
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"curves{suffix}"))
    else:
        notes.append("no metrics logged: no loss or learning-rate curves")
    grads = _by_step(run.probes, "grad")
    roles = weight_roles(run.probes)
    if roles:
        paths.append(_save(_heatmaps(run.name, grads, roles), out_dir / f"grad_heatmap{suffix}"))
        paths.append(_save(_grad_profiles(run.name, grads, roles), out_dir / f"grad_profile{suffix}"))
    else:
        notes.append("no grad probe logged: no gradient heatmap or profile")
    acts = _by_step(run.probes, "act")
    if acts:
        paths.append(_save(_activations(run.name, acts), out_dir / f"activations{suffix}"))
    else:
        notes.append("no act probe logged: no activation-norm figure")
    for probe in MEASURES:  # opt-in probes: a figure only where logged, no note otherwise
        by_step = _by_step(run.probes, probe)
        if by_step:
            paths.append(_save(_measures(run.name, by_step, probe), out_dir / f"{probe}{suffix}"))
    return paths, notes


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
    """Gradient norm, layer x step, one panel per weight role; log colour scale per panel (roles
    differ by orders of magnitude)."""
    steps = list(grads)
    fig, axes = _grid(len(roles), 4.2, 3.2)
    for ax, role in zip(axes, roles):
        columns = [layer_profile(grads[s], "grad", role, s) for s in steps]
        depth = max(map(len, columns))
        grid = [[col[layer] if layer < len(col) else math.nan for col in columns] for layer in range(depth)]
        positive = [v for row in grid for v in row if v > 0]
        norm = LogNorm(min(positive), max(positive)) if positive else None
        half = (steps[1] - steps[0]) / 2 if len(steps) > 1 else 0.5
        extent = (steps[0] - half, steps[-1] + half, -0.5, depth - 0.5)  # cells centred on step, layer
        image = ax.imshow(grid, aspect="auto", origin="lower", norm=norm, cmap="viridis",
                          interpolation="nearest", extent=extent)
        ax.set(title=role, xlabel="step", ylabel="layer", yticks=range(depth))
        fig.colorbar(image, ax=ax)
    fig.suptitle(f"{name}: gradient norm by layer and step")
    fig.tight_layout()
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
    params = [p for p in MEASURES[probe] if p in logged]
    fig, axes = _grid(len(params), 4.6, 3.6, cols=len(FEATURE_STATS) if probe == "rank" else 4)
    for ax, param in zip(axes, params):
        steps = {step: rows for step, rows in by_step.items() if any(r["param"] == param for r in rows)}
        _steps_panel(ax, steps, probe, param)
        ax.set_title(MEASURES[probe][param], fontsize=9)
    fig.suptitle(f"{name}: {PROBES[probe]} by layer")
    fig.tight_layout()
    return fig
