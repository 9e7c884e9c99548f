"""The stability map: the largest learning rate at which a run passes a test (the reproduce engine's
"converges", a sweep's "stable"), against depth, one line per layout or recipe and seed. Drawn by
`reproduce stability-map` and by `lnexp plot SWEEP` for a grid over the learning rate and the depth.
Takes matplotlib axes; imports no matplotlib itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def largest_index(flags: Sequence[bool | None]) -> int | None:
    """Index of the largest grid value whose flag is true (flags ordered by value); −1 if none is;
    None if a cell has no result."""
    if any(f is None for f in flags):
        return None
    return max((i for i, f in enumerate(flags) if f), default=-1)


def depth_axis(ax: Any, depths: Sequence[int], label: str) -> None:
    """A log-scaled x axis ticked at exactly the depths trained."""
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(depths, [str(n) for n in depths])
    ax.set_xlabel(label)


def largest_lr_panel(ax: Any, lrs: Sequence[float], depths: Sequence[int],
                     lines: dict[str, list[list[int | None]]], ylabel: str) -> None:
    """`lines`: label -> per seed, the index in `lrs` of the largest passing lr at each depth
    (largest_index); `ylabel` says what passing means. Seeds of one line are jittered apart so that
    equal lines stay visible."""
    for i, (label, per_seed) in enumerate(lines.items()):
        for k, ys in enumerate(per_seed):
            if all(y is not None for y in ys):
                jitter = (i - len(lines) / 2) * 0.03 + k * 0.01
                ax.plot([n * (1 + jitter) for n in depths], ys, marker="o", color=f"C{i % 10}", alpha=0.8,
                        label=label if k == 0 else None)
    ax.set_yticks(range(-1, len(lrs)), ["none", *(f"{lr:g}" for lr in lrs)])
    ax.set_ylim(-1.5, len(lrs) - 0.5)
    depth_axis(ax, depths, "depth (layers)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
