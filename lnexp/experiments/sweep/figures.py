"""A sweep's figures, from its folder: the final validation loss against a grid key, and the stability
map (the largest stable learning rate by depth)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lnexp.core.errors import LnexpError
from lnexp.core.status import Status
from lnexp.experiments.stability import largest_index, largest_lr_panel
from lnexp.experiments.sweep.results import CellResult, read_sweep
from lnexp.report.figures import colors, save
from lnexp.report.units import BPB, NATS, LossUnit, loss_units
from lnexp.run.reader import is_run, load_run


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def sweep_figures(root: Path, suffix: str = ".png", unit: str = NATS) -> tuple[list[Path], list[str]]:
    """Write a sweep's figures into SWEEP/plots/: the final validation loss against the first numeric
    grid key (in `unit`: NATS, the cells' own, or BPB), and, for a grid over optim.lr and
    model.n_layers, the stability map. RunError for a folder that is not a sweep; LnexpError for BPB
    on cells that are not text."""
    grid, cells = read_sweep(root)
    if not grid:
        return [], [f"{root}: the grid has no key besides the seed; nothing to plot against"]
    runs = {c.name: load_run(root / c.name, probes=False, tail=1) for c in cells if is_run(root / c.name)}
    numeric = [k for k, values in grid if all(_number(v) is not None for v in values)]
    x_key = numeric[0] if numeric else grid[0][0]
    out = root / "plots"
    paths, notes = [], []
    try:
        loss_unit = loss_units(list(runs.values()), unit)
    except LnexpError as exc:
        if unit == BPB:
            raise
        notes.append(f"final_loss{suffix} not drawn: {exc} (lnexp plot {root} --unit bpb)")
    else:
        converted = [replace(c, final_val_loss=loss_unit.convert(runs[c.name], c.final_val_loss))
                     if c.name in runs else c for c in cells]
        paths.append(save(_sweep_loss(root.name, grid, converted, x_key, loss_unit),
                          out / f"final_loss{suffix}"))
    if {"optim.lr", "model.n_layers"} <= set(numeric):
        paths.append(save(_sweep_stability(root.name, grid, cells), out / f"stability_map{suffix}"))
    return paths, notes


def _lines(grid: list[tuple[str, list[str]]], cells: list[CellResult], exclude: set[str]
           ) -> dict[str, list[CellResult]]:
    """The cells by the values of the grid keys not in `exclude` (a legend label each), in grid order."""
    others = [k for k, _ in grid if k not in exclude]
    order = {k: {v: i for i, v in enumerate(values)} for k, values in grid}
    lines: dict[tuple[int, ...], list[CellResult]] = {}
    for cell in cells:
        lines.setdefault(tuple(order[k].get(cell.values.get(k), -1) for k in others), []).append(cell)
    return {", ".join(f"{k}={cell_list[0].values.get(k)}" for k in others) or "all cells": cell_list
            for _, cell_list in sorted(lines.items())}


LOG_KEYS = ("lr", "min_lr")  # keys drawn on a log axis whatever their range: learning rates


def _sweep_loss(name: str, grid: list[tuple[str, list[str]]], cells: list[CellResult], x_key: str,
                unit: LossUnit) -> Figure:
    """Final validation loss against `x_key`, per combination of the other keys: over a numeric key
    a line through the seed means of the completed cells with a min-max band (a log axis for learning
    rates and ranges of 10x or more); over a categorical key (a layout) points with min-max bars, side
    by side. A cross at the top for each diverged cell, a ring around each collapsed one."""
    values = dict(grid)[x_key]
    numbers = [_number(v) for v in values]
    numeric = all(n is not None for n in numbers)
    at = dict(zip(values, numbers if numeric else range(len(values))))
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    lines = _lines(grid, cells, {x_key})
    marked = {"diverged": False, "collapsed": False}
    log_x = numeric and min(numbers) > 0 and (max(numbers) / min(numbers) >= 10
                                              or x_key.rsplit(".", 1)[-1] in LOG_KEYS)
    spacing = min(b - a for a, b in zip(sorted(at.values()), sorted(at.values())[1:])) if len(at) > 1 else 1
    for i, ((label, members), color) in enumerate(zip(lines.items(), colors(len(lines)))):
        nudge = 0.04 * (i - (len(lines) - 1) / 2)  # lines' crosses at one value side by side
        dodge = 0 if numeric else 0.5 * (i - (len(lines) - 1) / 2) / max(1, len(lines))  # categories' points
        xs, mean, low, high = [], [], [], []
        for value in values:
            here = [c for c in members if c.values.get(x_key) == value]
            losses = [c.final_val_loss for c in here if c.status == Status.COMPLETED
                      and c.final_val_loss is not None and math.isfinite(c.final_val_loss)]
            if losses:
                xs.append(at[value] + dodge)
                mean.append(sum(losses) / len(losses))
                low.append(min(losses))
                high.append(max(losses))
            for c in here:
                if c.status == Status.DIVERGED:
                    x = at[value] * (1 + nudge) if log_x else at[value] + dodge + nudge * spacing
                    ax.plot(x, 0.97, marker="x", color=color, markersize=10, markeredgewidth=2.2,
                            transform=ax.get_xaxis_transform(), clip_on=False)
                    marked["diverged"] = True
                elif c.collapsed and c.final_val_loss is not None:
                    ax.plot(at[value] + dodge, c.final_val_loss, marker="o", markersize=13,
                            markerfacecolor="none", markeredgecolor=color, markeredgewidth=1.5)
                    marked["collapsed"] = True
        if numeric:
            ax.plot(xs, mean, marker="o", color=color, linewidth=1.6, label=label)
            ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)
        else:
            spread = [[m - lo for m, lo in zip(mean, low)], [h - m for m, h in zip(mean, high)]]
            ax.errorbar(xs, mean, yerr=spread, color=color, marker="o", linestyle="none", capsize=4,
                        label=label)
    grey = dict(color="grey", linestyle="none")
    extra = [Line2D([], [], marker="x", markeredgewidth=2.2, label="diverged (drawn at the top)", **grey)] \
        if marked["diverged"] else []
    if marked["collapsed"]:
        extra.append(Line2D([], [], marker="o", markerfacecolor="none", markersize=11,
                            label="collapsed (val loss at the unigram entropy)", **grey))
    if log_x:
        ax.set_xscale("log")
        ax.minorticks_off()
    else:
        ax.set_xlim(min(at.values()) - 0.5 * spacing, max(at.values()) + 0.5 * spacing)
    ax.set_xticks(list(at.values()), values, rotation=30 if len(values) > 6 else 0)
    mean_mark, range_mark = ("line", "band") if numeric else ("point", "bars")
    ax.set(xlabel=x_key, ylabel=unit.label("final validation loss"),
           title=f"{name}: final validation loss ({mean_mark}: seed mean; {range_mark}: min to max "
                 "over seeds)")
    ax.title.set_fontsize(10)
    handles, _ = ax.get_legend_handles_labels()
    # beside the axes, never over a point
    ax.legend(handles=handles + extra, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1),
              borderaxespad=0)
    fig.tight_layout()
    return fig


def _sweep_stability(name: str, grid: list[tuple[str, list[str]]], cells: list[CellResult]) -> Figure:
    """The largest stable learning rate against depth, per value of the other grid keys (layout,
    recipe) and seed: stability.largest_lr_panel, as `reproduce stability-map` draws its own test."""
    keys = dict(grid)
    lrs = sorted(keys["optim.lr"], key=float)
    depths = sorted(keys["model.n_layers"], key=float)
    seeds = sorted({c.seed for c in cells if c.seed is not None}) or [None]
    lines = {}
    for label, members in _lines(grid, cells, {"optim.lr", "model.n_layers"}).items():
        at = {(c.values["optim.lr"], c.values["model.n_layers"], c.seed): c.stable for c in members}
        lines[label] = [[largest_index([at.get((lr, n, s)) for lr in lrs]) for n in depths] for s in seeds]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    largest_lr_panel(ax, [float(lr) for lr in lrs], [int(float(n)) for n in depths], lines,
                     "largest stable learning rate")
    ax.set_title(f"{name}: largest stable learning rate by depth, one line per seed\n(stable: completed, "
                 "not diverged, not collapsed)", fontsize=10)
    fig.tight_layout()
    return fig
