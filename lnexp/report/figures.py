"""Drawing primitives every figure shares: the one saver, the seed band, log-axis labels, colours.

matplotlib runs with the Agg backend: figures go to files only, so they render without a display (CI,
ssh). Imported lazily, so `lnexp --help` does not pay for matplotlib."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from lnexp.run.rows import finite

matplotlib.use("Agg")  # before any figure is made (switching after pyplot's import is allowed)

COLORS = plt.get_cmap("tab10").colors


def save(fig: Figure, path: Path, **savefig: Any) -> Path:
    """Write a figure (its folder made) and close it: pyplot keeps every figure alive until closed.
    `savefig` passes on (dpi, bbox_inches)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, **{"dpi": 120, **savefig})
    finally:
        plt.close(fig)
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


def label_log_axis(axis: Any) -> None:
    """Plain-number tick labels on a log axis, at 1-2-5 (or every digit when the axis spans less than
    a decade), so that a narrow range has more than one labelled tick."""
    low, high = sorted(axis.get_view_interval())
    if low <= 0:
        return
    if math.log10(high / low) > 1:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    else:  # evenly spaced round numbers, as on a linear axis
        axis.set_major_locator(FixedLocator([t for t in MaxNLocator(6).tick_values(low, high)
                                             if low <= t <= high]))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def colors(n: int) -> list[Any]:
    """n distinct colours: tab10, tab20 up to 20, then evenly spaced along a perceptual colour map."""
    if n <= 10:
        return list(COLORS[:n])
    if n <= 20:
        return list(plt.get_cmap("tab20").colors[:n])
    cmap = plt.get_cmap("turbo")
    return [cmap(0.05 + 0.9 * i / (n - 1)) for i in range(n)]


def seed_band(ax: Axes, curves: list[list[tuple[float, float]]], color: Any, **line: Any) -> None:
    """The mean of several runs' (seeds') curves of (x, y) points at the x they all have, with their
    min-max as a band."""
    steps, mean, low, high = band(curves)
    if steps:
        ax.plot(steps, mean, color=color, **line)
        ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)


def band(curves: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Pointwise mean, min and max over curves (step, value), at the steps every curve has a finite
    value."""
    if not curves:
        return [], [], [], []
    common = set.intersection(*({s for s, v in c if finite(v)} for c in curves))
    steps = sorted(common)
    by_curve = [dict(c) for c in curves]
    columns = [[d[s] for d in by_curve] for s in steps]
    return steps, [sum(col) / len(col) for col in columns], [min(col) for col in columns], \
        [max(col) for col in columns]
