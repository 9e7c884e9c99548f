"""A sweep on the terminal: a line per cell event, and its tables."""

from __future__ import annotations

import math
from typing import Any

from lnexp.core.data_sources import loss_unit
from lnexp.core.status import FINISHED, Status
from lnexp.experiments.sweep.grid import Cell, Sweep
from lnexp.experiments.sweep.results import reported_loss, summarise
from lnexp.experiments.sweep.state import JobState
from lnexp.run.reader import read_status


def print_event(done: int, total: int, cell: Cell, kind: str, result: dict[str, Any]) -> None:
    """One line on stderr when a cell starts, ends (with its outcome), is skipped or is left to its job."""
    from lnexp.report.console import fmt, stderr

    if kind == "started":
        stderr.print(f"[start] {cell.name}", markup=False, highlight=False)
        return
    width = len(str(total))
    where = {"skipped": "skip", "submitted": "job"}.get(kind, f"{done:>{width}}/{total}")
    status = result.get("status", "?")
    detail = f"val loss {fmt(reported_loss(result))}" if status in FINISHED else result.get("error", "")
    if status == Status.DIVERGED:
        detail = f"at step {result.get('diverged_step')}"
    seconds = None if kind == "skipped" else result.get("wall_time_s")
    wall = "" if seconds is None else f" ({seconds:.1f} s)"
    stderr.print(f"[{where}] {cell.name}: {status} {detail}{wall}", markup=False, highlight=False)


def cells_table(sweep: Sweep):
    from rich.table import Table

    table = Table(title=f"{sweep.root}: {len(sweep.cells)} cells", title_justify="left")
    for column in ("cell", "overrides", "state"):
        table.add_column(column)
    for cell in sweep.cells:
        table.add_row(cell.name, " ".join(cell.overrides), read_status(cell.path) or JobState.NEW)
    return table


def status_table(sweep: Sweep):
    """Every cell's state: its run folder's, and its job's where it was submitted
    (lnexp.experiments.sweep.slurm)."""
    from rich.table import Table

    from lnexp.experiments.sweep.slurm import status_rows

    table = Table(title=f"{sweep.root}: {len(sweep.cells)} cells", title_justify="left")
    for column in ("cell", "state", "job / log"):
        table.add_column(column)
    rows = status_rows(sweep.root, sweep.cells)
    for cell, state, detail in rows:
        table.add_row(cell.name, state, detail)
    return table, [state for _, state, _ in rows]


def summary_table(sweep: Sweep, results: dict[str, dict[str, Any]]):
    from rich.table import Table

    from lnexp.report.console import fmt

    rows = summarise(sweep.cells, results)
    # each group's loss unit (its tokenizer's: lnexp.core.data_sources.loss_unit), named once if shared
    first = {cell.group: cell for cell in sweep.cells}  # one of each group: they share their data
    units = [loss_unit(first[row["group"]].config.data.model_dump()) for row in rows]
    shared = len(set(units)) <= 1
    unit = f"nats per {units[0]}" if units and shared else "nats per each row's unit"
    title = f"{sweep.root}: final validation loss ({unit}) over {sweep.seeds} seed(s)"
    table = Table(title=title, title_justify="left", min_width=len(title))
    labels = list(rows[0]["labels"]) if rows else []
    for label in labels:
        table.add_column(label)
    for column in ("seeds", "final loss (mean ± std)", *(() if shared else ("loss per",)), "diverged"):
        table.add_column(column, justify="right")
    for row, per in zip(rows, units):
        loss = "-" if math.isnan(row["loss_mean"]) else f"{fmt(row['loss_mean'])} ± {fmt(row['loss_std'], 2)}"
        diverged = f"{row['diverged']}/{row['seeds']}"
        if row["failed"]:
            diverged += f" ({row['failed']} failed)"
        table.add_row(*(row["labels"].get(label, "") for label in labels), str(row["seeds"]), loss,
                      *(() if shared else (per,)), diverged)
    return table
