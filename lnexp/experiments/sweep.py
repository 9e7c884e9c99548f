"""Sweeps: the cartesian product of `--grid` values × seeds, each cell a normal run folder.

    runs/<sweep>/sweep.json    the sweep: config, grids, seeds, and one entry per cell
    runs/<sweep>/<cell>/       a run folder (lnexp.run.folder), named from the cell's overrides

Every cell's config is built with `config.load_config` and validated before any cell runs, so a bad
grid value is one line, exit code 2, and nothing written. A cell whose folder already holds a
finished run (summary status completed or diverged) is skipped: re-running a sweep resumes it. Cells
run in this process (`jobs=1`) or in a pool of worker processes that share the CPU threads.

This module imports no torch at import time (`lnexp --help` stays fast); `preflight` and the runners do.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lnexp.core.config import Config, ConfigError, load_config, validate
from lnexp.core.files import try_lock
from lnexp.core.stats import mean_std
from lnexp.run.folder import FINISHED, RunError, now, write_json

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


# --- grid parsing and cell expansion ---------------------------------------------------------------

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


# --- the state of a cell's folder ------------------------------------------------------------------

def folder_status(path: Path) -> str | None:
    """The status of the run in `path` (summary first, then meta), or None when there is no run."""
    for name in ("summary.json", "meta.json"):
        try:
            status = json.loads((path / name).read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            continue
        if status:
            return status
    return "unknown" if path.exists() else None


def is_finished(path: Path) -> bool:
    return folder_status(path) in FINISHED


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


def read_summary(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


# --- running ---------------------------------------------------------------------------------------

def preflight(cells: list[Cell]) -> None:
    """Checks that need the data or the device (after validation, before anything is written)."""
    from lnexp.data.sources import load_data

    seen = set()
    for cell in cells:
        c = cell.config
        key = (json.dumps(c.data.model_dump(mode="json"), sort_keys=True), c.train.seq_len)
        if key not in seen:
            seen.add(key)
            data = load_data(c.data, seq2seq=c.model.arch == "encoder_decoder")
            data.check(c.train.seq_len)
    if any(cell.config.train.device == "cuda" for cell in cells):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("train.device: cuda requested but no CUDA device is available")


_worker_stop: Any = None  # a pool worker's Stop, set by a signal (see _worker_init)


def visible_devices() -> list[str]:
    """The GPUs a pool may hand out, one per worker: CUDA_VISIBLE_DEVICES's entries if set, else
    every device torch sees (none on a machine without CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _worker_init(devices: Any = None) -> None:
    """A pool worker: in its own process group, so a terminal's Ctrl-C reaches only the sweep, which
    passes it on once; a signal sets the worker's Stop, so its cell checkpoints and later cells do
    not start (a second signal would stop a run without its checkpoint). With `devices` (a queue of
    GPU ids) the worker takes one and sees only it: one cell per GPU."""
    global _worker_stop
    if devices is not None:  # before torch initialises CUDA, which reads the variable once
        os.environ["CUDA_VISIBLE_DEVICES"] = devices.get()
    from lnexp.run.train import Stop

    os.setpgrp()
    stop = _worker_stop = Stop()

    def handler(signum: int, frame: Any) -> None:
        stop.requested = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def run_cell(config: dict[str, Any], source: str, command: list[str], force: bool, stop: Any = None,
             resume: bool = False, progress: Any = None) -> dict[str, Any]:
    """Train one cell (in this process, a pool worker or a batch job); a crash is a result: status
    failed. With `resume` (a requeued job) a finished folder is kept and an unfinished one continues
    from its checkpoint, as `lnexp train --resume` does."""
    from lnexp.run.train import CHECKPOINT, failure_message, train
    from lnexp.run.train import resume as resume_run

    stop = stop or _worker_stop
    if stop is not None and stop.requested:
        return {"status": "interrupted", "error": "not started: the sweep was stopped"}
    try:
        cfg = validate(config, source)  # in a worker or a batch job: loads the config's plugins
    except ConfigError as exc:
        return {"status": "failed", "error": str(exc)}
    path = Path(cfg.run.dir) / cfg.run.name
    status = folder_status(path) if resume else None
    try:
        if status in FINISHED:
            return {**read_summary(path), "status": status}
        if status is not None and (path / CHECKPOINT).exists():
            outcome = resume_run(path, ["lnexp", "train", "--resume", str(path)], progress, stop)
        else:
            outcome = train(cfg, source, command, force=force or status is not None, progress=progress,
                            stop=stop)
    except (ConfigError, RunError) as exc:
        return {"status": "failed", "error": str(exc)}
    except Exception as exc:  # the run folder says "failed" and why; the other cells go on
        return {"status": "failed", "error": failure_message(exc)}
    return {**outcome.summary, "status": outcome.status}


def run_pack(configs: list[dict[str, Any]], source: str, commands: list[list[str]], force: list[bool]
             ) -> list[dict[str, Any]]:
    """Train cells of one structure as one pack (lnexp.run.pack), in this process or a pool worker; one
    result per cell. A crash fails every cell still in the pack (their folders say why)."""
    from lnexp.run.pack import train_pack
    from lnexp.run.train import failure_message

    if len(configs) == 1:
        return [run_cell(configs[0], source, commands[0], force[0])]
    if _worker_stop is not None and _worker_stop.requested:
        return [{"status": "interrupted", "error": "not started: the sweep was stopped"} for _ in configs]
    try:
        outcomes = train_pack([validate(c, source) for c in configs], [source] * len(configs),
                              commands, force, stop=_worker_stop)
    except (ConfigError, RunError) as exc:
        return [{"status": "failed", "error": str(exc)} for _ in configs]
    except Exception as exc:
        return [{"status": "failed", "error": failure_message(exc)} for _ in configs]
    return [{**o.summary, "status": o.status} for o in outcomes]


def pack_units(cells: list[Cell], pack: int | None) -> list[list[int]]:
    """The cells' indices in the packs they train in: up to `pack` cells of one structure key
    together (lnexp.run.pack); `pack` None: packs of up to AUTO_PACK where measured faster here."""
    if pack == 1 or len(cells) < 2:
        return [[i] for i in range(len(cells))]
    from lnexp.run.pack import AUTO_PACK, packs, packs_that_pay

    configs = [cell.config for cell in cells]
    return packs(configs, pack) if pack is not None else packs_that_pay(configs, AUTO_PACK)


Event = Callable[[int, int, Cell, str, dict[str, Any]], None]


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
        status = folder_status(cell.path)
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


def execute(work: Plan, jobs: int = 1, source: str = "sweep",
            command: Callable[[Cell], list[str]] | None = None,
            on_event: Event | None = None, pack: int | None = 1) -> dict[str, dict[str, Any]]:
    """Train the plan's cells, `jobs` packs at a time (`pack_units`: packs of up to `pack` cells of
    one structure; 1: every cell alone); returns cell folder -> summary (with `status`)."""
    results = dict(work.skipped)
    total, done = len(work.todo), 0  # progress counts the cells that train
    if on_event:
        for cell in work.cells:
            if cell.key in results:
                on_event(0, total, cell, "skipped", results[cell.key])
    command = command or (lambda cell: ["lnexp", "train", source, *(a for o in cell.overrides
                                                                   for a in ("--set", o))])
    cells = [cell for cell, _ in work.todo]
    units = [([cells[i] for i in unit],
              ([cells[i].config.to_dict() for i in unit], source, [command(cells[i]) for i in unit],
               [work.todo[i][1] for i in unit]))
             for unit in pack_units(cells, pack)]

    def finished(unit_cells: list[Cell], unit_results: list[dict[str, Any]]) -> None:
        nonlocal done
        for cell, result in zip(unit_cells, unit_results):
            results[cell.key] = result
            done += 1
            if on_event:
                on_event(done, total, cell, "finished", result)

    if jobs <= 1 or len(units) <= 1:
        try:
            with on_signals(_interrupt):  # between packs; a pack's run handles them itself
                for unit_cells, unit_args in units:
                    if on_event:
                        for cell in unit_cells:
                            on_event(done, total, cell, "started", {})
                    finished(unit_cells, run_pack(*unit_args))
                    if any(results[c.key].get("status") == "interrupted" for c in unit_cells):  # Ctrl-C
                        break
        except KeyboardInterrupt:
            raise Interrupted(results) from None
        return results
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor, as_completed

    # spawn: a fresh interpreter per worker, never a fork of a process whose torch threads exist
    context = multiprocessing.get_context("spawn")
    gpus = visible_devices() if any(c.config.train.device != "cpu" for c in cells) else []
    devices = None
    if gpus:  # one GPU per worker (round robin when there are more workers than GPUs)
        devices = context.Queue()
        for i in range(jobs):
            devices.put(gpus[i % len(gpus)])
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init,
                               initargs=(devices,))
    futures: dict[Future, list[Cell]] = {}
    queue = [unit_cells for unit_cells, _ in units]  # the pool starts packs in this order, `jobs` at a time

    def start_next() -> None:
        if queue and on_event:
            for cell in queue.pop(0):
                on_event(done, total, cell, "started", {})
    stopping: list[int] = []

    def stop_workers(signum: int, frame: Any) -> None:
        """Ctrl-C or SIGTERM: cells not started stay so; each worker is told once to checkpoint its
        cells and return; a second signal stops the sweep at once."""
        if stopping:
            raise KeyboardInterrupt
        stopping.append(signum)
        for future in futures:
            future.cancel()
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGTERM)

    try:
        with on_signals(stop_workers):
            futures.update({pool.submit(run_pack, *unit_args): unit_cells for unit_cells, unit_args in units})
            for _ in range(jobs):
                start_next()
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                unit_cells = futures[future]
                try:
                    unit_results = future.result()
                except Exception as exc:  # a worker that died (killed, out of memory)
                    unit_results = [{"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                                    for _ in unit_cells]
                finished(unit_cells, unit_results)
                if not stopping:
                    start_next()
    except BaseException as exc:
        pool.shutdown(wait=False, cancel_futures=True)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(results) from None
        raise
    pool.shutdown()
    if stopping or any(r.get("status") == "interrupted" for r in results.values()):
        raise Interrupted(results)  # every started cell has checkpointed and returned
    return results


class Interrupted(KeyboardInterrupt):
    """A signal stopped the cells: `results` has those that returned (some `interrupted`)."""

    def __init__(self, results: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        self.results = results


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the sweep records where it stopped


def on_signals(handler: Callable[[int, Any], None]) -> Any:
    """lnexp.run.train.on_signals, imported when used: this module imports no torch at import time."""
    from lnexp.run.train import on_signals as handle

    return handle(handler)


def run_cells(cells: list[Cell], jobs: int = 1, force: bool = False, mismatch: str = "error",
              source: str = "sweep", command: Callable[[Cell], list[str]] | None = None,
              on_event: Event | None = None, pack: int | None = 1) -> dict[str, dict[str, Any]]:
    """plan() then execute(): run every cell that is not finished."""
    return execute(plan(cells, force, mismatch), jobs, source, command, on_event, pack)


def sweep_record(sweep: Sweep, results: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    from lnexp.experiments.slurm import read_records

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
                   "status": folder_status(c.path) or results.get(c.key, {}).get("status"),
                   **({"job": jobs[c.key]} if c.key in jobs else {})}
                  for c in sweep.cells],
    }


def run_sweep(sweep: Sweep, jobs: int = 1, force: bool = False, on_event: Event | None = None,
              launcher: Any = None, detach: bool = False, pack: int = 1) -> dict[str, dict[str, Any]]:
    """Run the sweep's unfinished cells; sweep.json is written once the checks have passed. A second
    sweep of the same folder at once is refused (RunError): the sweep holds its lock throughout.
    With a slurm `launcher` the cells are submitted as jobs (lnexp.experiments.slurm), and waited for unless
    `detach`."""
    plan(sweep.cells, force)  # raises before anything is written
    sweep.root.mkdir(parents=True, exist_ok=True)
    with _sweep_lock(sweep.root), on_signals(_interrupt):
        work = plan(sweep.cells, force)  # again, under the lock: what another sweep finished is skipped
        write_json(sweep.root / "sweep.json", sweep_record(sweep))
        results: dict[str, dict[str, Any]] = {}
        command = lambda cell: _train_command(sweep, cell)  # noqa: E731
        try:
            if launcher is not None and launcher.kind == "slurm":
                from lnexp.experiments.slurm import launch

                record = lambda _: write_json(sweep.root / "sweep.json", sweep_record(sweep))  # noqa: E731
                results = launch(work, launcher, sweep.root, sweep.config_file, command, on_event, detach,
                                 on_submit=record)
            else:
                results = execute(work, jobs, sweep.config_file, command, on_event, pack)
        finally:
            write_json(sweep.root / "sweep.json", sweep_record(sweep, results))
    return results


def find_sweep(name: str, runs: Path = Path("runs")) -> Sweep:
    """The sweep named `name` (under `runs`) or in the folder `name`, expanded again from its sweep.json."""
    root = Path(name) if (Path(name) / "sweep.json").is_file() else runs / name
    try:
        record = json.loads((root / "sweep.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{root}: no readable sweep.json (is {name!r} a sweep's name or folder?)") from None
    grids = [f"{k}={','.join(v)}" for k, v in record.get("grid", {}).items()]
    sweep = expand(record["config_file"], grids, record.get("seeds", 1), record.get("set", []),
                   record.get("name"))
    if sweep.root.resolve() != root.resolve():  # the sweep was run with --set run.dir elsewhere
        for cell in sweep.cells:
            cell.config.run.dir = str(root)
        sweep.root = root
    return sweep


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


# --- the summary -----------------------------------------------------------------------------------

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
        summaries = [results.get(c.key) or {"status": folder_status(c.path), **read_summary(c.path)}
                     for c in members]
        statuses = [s.get("status") for s in summaries]
        losses = [reported_loss(s) for s in summaries if s.get("status") == "completed"]
        mean, std, _ = mean_std([v for v in losses if v is not None and math.isfinite(v)])
        rows.append({"group": group, "labels": members[0].labels, "seeds": len(members),
                     "loss_mean": mean, "loss_std": std,
                     "diverged": statuses.count("diverged"), "failed": statuses.count("failed"),
                     "unfinished": sum(s not in FINISHED and s != "failed" for s in statuses)})
    return rows


# --- reading a sweep folder back (figures) ---------------------------------------------------------

@dataclass
class CellResult:
    """A sweep cell as its folder says it ended."""

    name: str
    values: dict[str, str]  # grid key -> value text (train.seed left out)
    seed: int | None
    status: str | None
    final_val_loss: float | None
    collapsed: bool

    @property
    def converged(self) -> bool | None:
        """Completed, not collapsed (lnexp.run.train's detector), a finite final loss; None: no result."""
        if self.status not in FINISHED:
            return None
        loss = self.final_val_loss
        return self.status == "completed" and not self.collapsed and loss is not None and math.isfinite(loss)


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
                                folder_status(path), loss if isinstance(loss, (int, float)) else None,
                                summary.get("collapsed") is True))
    return [(k, v) for k, v in grid if k != "train.seed"], cells


# --- terminal output -------------------------------------------------------------------------------

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
    if status == "diverged":
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
        table.add_row(cell.name, " ".join(cell.overrides), folder_status(cell.path) or "new")
    return table


def status_table(sweep: Sweep):
    """Every cell's state: its run folder's, and its job's where it was submitted
    (lnexp.experiments.slurm)."""
    from rich.table import Table

    from lnexp.experiments.slurm import status_rows

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
    title = f"{sweep.root}: final validation loss over {sweep.seeds} seed(s)"
    table = Table(title=title, title_justify="left", min_width=len(title))
    labels = list(rows[0]["labels"]) if rows else []
    for label in labels:
        table.add_column(label)
    for column in ("seeds", "final loss (mean ± std)", "diverged"):
        table.add_column(column, justify="right")
    for row in rows:
        loss = "-" if math.isnan(row["loss_mean"]) else f"{fmt(row['loss_mean'])} ± {fmt(row['loss_std'], 2)}"
        diverged = f"{row['diverged']}/{row['seeds']}"
        if row["failed"]:
            diverged += f" ({row['failed']} failed)"
        table.add_row(*(row["labels"].get(label, "") for label in labels), str(row["seeds"]), loss, diverged)
    return table
