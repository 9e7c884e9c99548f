"""A sweep's results read back from its folder: one row per group of seeds, and each cell's outcome."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lnexp.core.stats import mean_std
from lnexp.core.status import FINISHED, Status
from lnexp.experiments.sweep.grid import Cell
from lnexp.run.reader import RunError, read_status, read_summary


def reported_loss(summary: dict[str, Any]) -> float | None:
    """The loss a run's summary reports: its final validation loss, else its final training loss."""
    value = summary.get("final_val_loss")
    return value if value is not None else summary.get("final_train_loss")


def summarise(cells: list[Cell], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per group of seeds: its grid values, final loss mean ± std over the seeds that
    completed, and the fraction that diverged (and that failed)."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.group, []).append(cell)
    rows = []
    for group, members in groups.items():
        summaries = [results.get(c.key) or {"status": read_status(c.path), **read_summary(c.path)}
                     for c in members]
        statuses = [s.get("status") for s in summaries]
        losses = [reported_loss(s) for s in summaries if s.get("status") == Status.COMPLETED]
        mean, std, _ = mean_std([v for v in losses if v is not None and math.isfinite(v)])
        rows.append({"group": group, "labels": members[0].labels, "seeds": len(members),
                     "loss_mean": mean, "loss_std": std,
                     "diverged": statuses.count(Status.DIVERGED), "failed": statuses.count(Status.FAILED),
                     "unfinished": sum(s not in FINISHED and s != Status.FAILED for s in statuses)})
    return rows


@dataclass
class CellResult:
    """A sweep cell as its folder says it ended."""

    name: str
    values: dict[str, str]  # grid key -> value text (train.seed left out)
    seed: int | None
    status: Status | None
    final_val_loss: float | None
    collapsed: bool

    @property
    def stable(self) -> bool | None:
        """Completed, not collapsed (lnexp.run.train's detector), a finite final loss; None: no result.
        (Not the reproduce engine's "converged", which also asks for a loss below the unigram one.)"""
        if self.status not in FINISHED:
            return None
        loss = self.final_val_loss
        return self.status == Status.COMPLETED and not self.collapsed and loss is not None \
            and math.isfinite(loss)


def read_sweep(root: Path) -> tuple[list[tuple[str, list[str]]], list[CellResult]]:
    """A sweep folder's grid (sweep.json) and its cells' outcomes (their summary.json). RunError for
    a folder without a readable sweep.json."""
    try:
        record = json.loads((root / "sweep.json").read_text())
        grid = [(k, [str(v) for v in values]) for k, values in record["grid"].items()]
        entries = record["cells"]
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        raise RunError(f"{root}: not a sweep folder (no readable sweep.json)") from None
    cells = []
    for entry in entries:
        path = root / str(entry.get("name"))
        summary = read_summary(path)
        values = dict(o.split("=", 1) for o in entry.get("overrides", []) if "=" in o)
        seed = values.pop("train.seed", entry.get("seed"))
        loss = summary.get("final_val_loss")
        cells.append(CellResult(path.name, values, int(seed) if str(seed).isdigit() else None,
                                read_status(path), loss if isinstance(loss, (int, float)) else None,
                                summary.get("collapsed") is True))
    return [(k, v) for k, v in grid if k != "train.seed"], cells
