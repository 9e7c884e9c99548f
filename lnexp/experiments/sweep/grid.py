"""A sweep's cells: the cartesian product of `--grid` values × seeds, each validated before anything runs."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnexp.core.config import Config, ConfigError, load_config

MAX_NAME = 100


_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-]")


_PLAIN = re.compile(r"[A-Za-z0-9._+\-=,]+")


_PER_CELL = {"run.name": "set per cell (name the sweep with --name)", "run.dir": "use --set run.dir",
             "train.threads": "use --set train.threads"}


@dataclass
class Cell:
    """One run of a sweep: its folder name, the seed-less group it is averaged in, and its config."""

    name: str
    group: str
    overrides: list[str]
    config: Config
    labels: dict[str, str] = field(default_factory=dict)  # grid label -> value text, for tables

    @property
    def path(self) -> Path:
        return Path(self.config.run.dir) / self.name

    @property
    def key(self) -> str:
        """What results are keyed by: the folder, since a reproduction's families share names."""
        return str(self.path)

    @property
    def seed(self) -> int:
        return self.config.train.seed


@dataclass
class Sweep:
    name: str
    root: Path
    config_file: str
    grids: list[tuple[str, list[str]]]
    seeds: int
    sets: list[str]
    cells: list[Cell]


def split_values(text: str) -> list[str]:
    """`0.001,0.003` -> ['0.001', '0.003']; commas inside [..], {..} or quotes do not split."""
    values, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    return values


def parse_grid(items: Iterable[str]) -> list[tuple[str, list[str]]]:
    """`KEY=V1,V2,...` items -> [(key, [value text, ...])]; raises ConfigError on a malformed item."""
    grids: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ConfigError(f"--grid {item}: expected KEY=V1,V2,..., e.g. optim.lr=1e-3,3e-3")
        if key in _PER_CELL:
            raise ConfigError(f"--grid {key}: cannot be swept ({_PER_CELL[key]})")
        values = split_values(text)
        if any(not v for v in values):
            raise ConfigError(f"--grid {item}: empty value")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {key}: a value is repeated")
        if key in (k for k, _ in grids):
            raise ConfigError(f"--grid {key}: given twice (list all its values in one --grid)")
        grids.append((key, values))
    return grids


def labels_for(keys: list[str]) -> dict[str, str]:
    """Short labels for cell names: the key's last part (`optim.lr` -> `lr`) unless two keys share it."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: leaf if leaves.count(leaf) == 1 and leaf != "seed" else k for k, leaf in zip(keys, leaves)}


def safe_name(parts: list[str]) -> str:
    """A filesystem-safe folder name from `label=value` parts; long names keep a hash of the full one."""
    full = ",".join(parts)
    name = ",".join("=".join(_UNSAFE.sub("_", s) for s in part.split("=", 1)) for part in parts)
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 9].rstrip(",") + "-" + hashlib.sha1(full.encode()).hexdigest()[:8]
    return name


def value_text(value: Any) -> str:
    """A Python value as a `--set` value: YAML flow style for lists, `g` format for floats."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def threads_per_job(jobs: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def expand(config_file: str | Path, grid_items: list[str], seeds: int = 1, sets: list[str] = (),
           name: str | None = None, jobs: int = 1, plugins: list[str] = ()) -> Sweep:
    """Every cell of the sweep, validated; raises ConfigError (one line) before anything is written."""
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {seeds}")
    for item in sets:
        key = item.partition("=")[0].strip()
        if key == "run.name":
            raise ConfigError(f"--set {key}: {_PER_CELL[key]}")
    grids = parse_grid(grid_items)
    base = load_config(config_file, list(sets), plugins)
    keys = [k for k, _ in grids]
    if "train.seed" in keys and seeds > 1:
        raise ConfigError("--grid train.seed: cannot be combined with --seeds (give seeds in one of them)")
    sweep_name = name if name is not None else _UNSAFE.sub("_", Path(config_file).stem)
    if sweep_name in ("", ".", "..") or not _PLAIN.fullmatch(sweep_name):
        raise ConfigError(f"--name: must be a plain folder name (letters, digits, . _ + - = ,), "
                          f"got {sweep_name!r}")
    root = Path(base.run.dir) / sweep_name
    labels = labels_for(keys)
    seed_values = [None] if "train.seed" in keys else [base.train.seed + i for i in range(seeds)]
    threads = None if base.train.threads or jobs <= 1 else threads_per_job(jobs)
    cells: list[Cell] = []
    seen: dict[str, str] = {}
    for combo in itertools.product(*(values for _, values in grids)):
        overrides = [f"{k}={v}" for k, v in zip(keys, combo)]
        parts = [f"{labels[k]}={v}" for k, v in zip(keys, combo) if k != "train.seed"]
        for seed in seed_values:
            seed_text = combo[keys.index("train.seed")] if seed is None else str(seed)
            cell_name = safe_name([*parts, f"seed={seed_text}"])
            group = safe_name(parts) if parts else "all"
            extra = [] if seed is None else [f"train.seed={seed}"]
            try:
                config = load_config(config_file, [*sets, *overrides, *extra], plugins)
            except ConfigError as exc:
                raise ConfigError(_grid_message(str(exc), keys, sets)) from None
            config.run.name, config.run.dir = cell_name, str(root)  # set, not parsed: any path works
            if threads is not None:
                config.train.threads = threads
            full = ", ".join(overrides + extra)
            if cell_name in seen:
                raise ConfigError(f"--grid: cells '{seen[cell_name]}' and '{full}' get the same folder "
                                  f"name {cell_name!r}; use distinct values")
            seen[cell_name] = full
            cell_overrides = [*overrides, *([f"train.seed={seed}"] if seed is not None else [])]
            cells.append(Cell(cell_name, group, cell_overrides, config,
                              {labels[k]: v for k, v in zip(keys, combo) if k != "train.seed"}))
    return Sweep(sweep_name, root, str(config_file), grids, seeds, list(sets), cells)


def _grid_message(message: str, keys: list[str], sets: list[str]) -> str:
    set_keys = {s.partition("=")[0].strip() for s in sets}
    for key in keys:
        if message.startswith(f"--set {key}") and key not in set_keys:
            return "--grid" + message[len("--set"):]
    return message
