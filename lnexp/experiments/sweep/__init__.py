"""Sweeps: the cartesian product of `--grid` values × seeds, each cell a normal run folder.

    runs/<sweep>/sweep.json    the sweep: config, grids, seeds, and one entry per cell
    runs/<sweep>/<cell>/       a run folder (lnexp.run.folder), named from the cell's overrides

Every cell's config is built with `config.load_config` and validated before any cell runs (`grid`), so
a bad grid value is one line, exit code 2, and nothing written. A cell whose folder already holds a
finished run (completed or diverged) is skipped (`state.plan`): re-running a sweep resumes it. Cells
run in this process or in a pool of worker processes that share the CPU threads (`pool`), or as
SLURM jobs (`slurm`, `cell_job`); `results`, `tables` and `figures` read a sweep folder back.

This package imports no torch at import time (`lnexp --help` stays fast); `preflight` and the runners do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lnexp.core.config import Config, ConfigError, RunConfig
from lnexp.core.files import try_lock
from lnexp.experiments.sweep.grid import Cell, Sweep, labels_for
from lnexp.experiments.sweep.pool import Event, execute, on_signals, raise_interrupt
from lnexp.experiments.sweep.state import JobState, plan
from lnexp.run.folder import now, write_json
from lnexp.run.reader import RunError, read_status


def sweep_record(sweep: Sweep, results: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    from lnexp.experiments.sweep.slurm import read_records

    results, jobs = results or {}, read_records(sweep.root)
    return {
        "name": sweep.name,
        "config_file": sweep.config_file,
        "grid": {k: v for k, v in sweep.grids},
        "seeds": sweep.seeds,
        "set": sweep.sets,
        "updated": now(),
        # the folder is the truth; a result only for a cell that never got one (failed before it, queued)
        "cells": [{"name": c.name, "group": c.group, "seed": c.seed, "overrides": c.overrides,
                   "status": read_status(c.path) or results.get(c.key, {}).get("status") or JobState.NEW,
                   **({"job": jobs[c.key]} if c.key in jobs else {})}
                  for c in sweep.cells],
    }


def run_sweep(sweep: Sweep, jobs: int = 1, force: bool = False, on_event: Event | None = None,
              launcher: Any = None, detach: bool = False, pack: int = 1) -> dict[str, dict[str, Any]]:
    """Run the sweep's unfinished cells; sweep.json is written once the checks have passed. A second
    sweep of the same folder at once is refused (RunError): the sweep holds its lock throughout.
    With a slurm `launcher` the cells are submitted as jobs (lnexp.experiments.sweep.slurm), and
    waited for unless `detach`."""
    plan(sweep.cells, force)  # raises before anything is written
    if launcher is not None and launcher.kind == "slurm":
        from lnexp.experiments.sweep.slurm import check

        check(launcher)  # so does a launcher that cannot submit here
    sweep.root.mkdir(parents=True, exist_ok=True)
    with _sweep_lock(sweep.root), on_signals(raise_interrupt):
        work = plan(sweep.cells, force)  # again, under the lock: what another sweep finished is skipped
        write_json(sweep.root / "sweep.json", sweep_record(sweep))
        results: dict[str, dict[str, Any]] = {}
        command = lambda cell: _train_command(sweep, cell)  # noqa: E731
        try:
            if launcher is not None and launcher.kind == "slurm":
                from lnexp.experiments.sweep.slurm import launch

                record = lambda _: write_json(sweep.root / "sweep.json", sweep_record(sweep))  # noqa: E731
                results = launch(work, launcher, sweep.root, sweep.config_file, command, on_event, detach,
                                 on_submit=record)
            else:
                results = execute(work, jobs, sweep.config_file, command, on_event, pack)
        finally:
            write_json(sweep.root / "sweep.json", sweep_record(sweep, results))
    return results


def find_sweep(name: str, runs: Path = Path("runs")) -> Sweep:
    """The sweep named `name` (under `runs`) or in the folder `name`, as its sweep.json lists it, for
    reading: its config file is not read again (nor its plugins loaded: a sweep folder is data, like
    a run folder), so each cell carries the default config in its own folder."""
    root = Path(name) if (Path(name) / "sweep.json").is_file() else runs / name
    try:
        record = json.loads((root / "sweep.json").read_text())
        grids = [(str(k), [str(v) for v in values]) for k, values in record["grid"].items()]
        entries = [e for e in record["cells"] if isinstance(e, dict) and _folder_name(e.get("name"))]
        seeds, sets = int(record.get("seeds", 1)), [str(s) for s in record.get("set", [])]
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        raise ConfigError(f"{root}: no readable sweep.json (is {name!r} a sweep's name or folder?)") from None
    labels = labels_for([k for k, _ in grids])
    cells = []
    for entry in entries:
        overrides = [str(o) for o in entry.get("overrides", [])]
        values = dict(o.split("=", 1) for o in overrides if "=" in o)
        config = Config(run=RunConfig(name=entry["name"], dir=str(root)))
        cells.append(Cell(entry["name"], str(entry.get("group", "all")), overrides, config,
                          {labels[k]: v for k, v in values.items() if k in labels and k != "train.seed"}))
    return Sweep(root.name, root, str(record.get("config_file")), grids, seeds, sets, cells)


def _folder_name(name: Any) -> bool:
    """A cell's name as sweep.json may give it: one folder inside the sweep's, never a way out."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


@contextmanager
def _sweep_lock(root: Path) -> Iterator[None]:
    fd = os.open(root / ".sweep.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        if not try_lock(fd):
            raise RunError(f"{root}: another sweep of this name is running; wait for it, or use another "
                           "--name")
        yield
    finally:
        os.close(fd)


def _train_command(sweep: Sweep, cell: Cell) -> list[str]:
    sets = [*sweep.sets, *cell.overrides, f"run.name={cell.name}", f"run.dir={sweep.root}"]
    return ["lnexp", "train", sweep.config_file, *(a for s in sets for a in ("--set", s)),
            *(a for p in cell.config.plugins for a in ("--plugin", p)), "--quiet"]
