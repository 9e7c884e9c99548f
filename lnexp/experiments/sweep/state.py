"""The state of a cell's folder, and the plan: which cells train, which finished ones are reused."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from lnexp.core.config import Config, ConfigError
from lnexp.core.status import FINISHED, Status
from lnexp.experiments.sweep.grid import Cell
from lnexp.run.reader import read_status, read_summary


def is_finished(path: Path) -> bool:
    return read_status(path) in FINISHED


class JobState(str, Enum):
    """A sweep cell's state where its run folder does not say it all (lnexp.experiments.sweep.slurm): a
    batch job waiting, or no run at all."""

    NEW = "new"            # no run folder and no job: not started
    QUEUED = "queued"      # its job waits for a node
    REQUEUED = "requeued"  # its job was stopped (time limit, pre-emption) and waits to continue

    def __str__(self) -> str:
        return self.value


# A cell whose run is still to come, after `--detach`: running, or a job waiting.
WAITING = (Status.RUNNING, JobState.QUEUED, JobState.REQUEUED)


def config_differences(path: Path, config: Config) -> list[str]:
    """Keys where the finished run in `path` used another value than `config` (threads ignored).

    A key the stored config lacks (the run predates it) counts as its default value."""
    try:
        stored = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ["config.yaml unreadable"]
    wanted, defaults = config.to_dict(), Config().to_dict()
    diffs = []
    for section, values in wanted.items():
        if not isinstance(values, dict):  # a top-level list (plugins)
            old = stored.get(section, defaults[section])
            if _comparable(old) != _comparable(values):
                diffs.append(f"{section}: {old!r} there, {values!r} here")
            continue
        kept = stored.get(section) if isinstance(stored.get(section), dict) else {}
        for key, value in values.items():
            if (section, key) in (("train", "threads"), ("run", "name"), ("run", "dir")):
                continue
            old = kept.get(key, defaults.get(section, {}).get(key))
            if _comparable(old) != _comparable(value):
                diffs.append(f"{section}.{key}: {old!r} there, {value!r} here")
    return diffs


def _comparable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def preflight(cells: list[Cell]) -> None:
    """Checks that need the data or the device (after validation, before anything is written)."""
    from lnexp.data.sources import load_data

    seen = set()
    for cell in cells:
        c = cell.config
        key = (json.dumps(c.data.model_dump(mode="json"), sort_keys=True), c.train.seq_len)
        if key not in seen:
            seen.add(key)
            data = load_data(c.data, c.model.arch)
            data.check(c.train.seq_len)
    if any(cell.config.train.device == "cuda" for cell in cells):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("train.device: cuda requested but no CUDA device is available")


@dataclass
class Plan:
    """What a run of these cells will do: the cells to train (and whether each replaces a folder),
    and the summaries of the finished ones it skips."""

    cells: list[Cell]
    todo: list[tuple[Cell, bool]]
    skipped: dict[str, dict[str, Any]]


def plan(cells: list[Cell], force: bool = False, mismatch: str = "error") -> Plan:
    """Decide which cells run; every check that can fail runs here, before anything is written.

    A finished cell whose stored config differs from the cell's is an error (`mismatch="error"`,
    ConfigError) or is trained again (`"replace"`). Unfinished folders (failed, interrupted, killed)
    are replaced.
    """
    todo, skipped = [], {}
    for cell in cells:
        status = read_status(cell.path)
        if status in FINISHED and not force:
            diffs = config_differences(cell.path, cell.config)
            if not diffs:
                skipped[cell.key] = {**read_summary(cell.path), "status": status, "skipped": True}
                continue
            if mismatch == "error":
                raise ConfigError(f"{cell.path}: finished with another config ({diffs[0]}); "
                                  "use --force to train it again, or another --name")
        todo.append((cell, status is not None))
    if todo:
        preflight([cell for cell, _ in todo])
    return Plan(cells, todo, skipped)
