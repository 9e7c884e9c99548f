"""Training cells on this machine: in this process, or a pool of worker processes (one GPU each)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lnexp.core.config import ConfigError, validate
from lnexp.core.status import FINISHED, Status
from lnexp.experiments.sweep.grid import Cell
from lnexp.experiments.sweep.state import Plan
from lnexp.report.tensorboard import figures_to_tensorboard
from lnexp.run.reader import RunError, read_status, read_summary

NOT_STARTED = {"status": Status.INTERRUPTED, "error": "not started: the sweep was stopped"}
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
        return NOT_STARTED
    try:
        cfg = validate(config, source)  # in a worker or a batch job: loads the config's plugins
    except ConfigError as exc:
        return {"status": Status.FAILED, "error": str(exc)}
    path = Path(cfg.run.dir) / cfg.run.name
    status = read_status(path) if resume else None
    try:
        if status in FINISHED:
            return {**read_summary(path), "status": status}
        if status is not None and (path / CHECKPOINT).exists():
            outcome = resume_run(path, ["lnexp", "train", "--resume", str(path)], progress, stop,
                                 trust=cfg.plugins)  # the cell's own plugins, as its config names them
        else:
            outcome = train(cfg, source, command, force=force or status is not None, progress=progress,
                            stop=stop)
    except (ConfigError, RunError) as exc:
        return {"status": Status.FAILED, "error": str(exc)}
    except Exception as exc:  # the run folder says "failed" and why; the other cells go on
        return {"status": Status.FAILED, "error": failure_message(exc)}
    figures_to_tensorboard(outcome.path)
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
        return [NOT_STARTED for _ in configs]
    try:
        outcomes = train_pack([validate(c, source) for c in configs], [source] * len(configs),
                              commands, force, stop=_worker_stop)
    except (ConfigError, RunError) as exc:
        return [{"status": Status.FAILED, "error": str(exc)} for _ in configs]
    except Exception as exc:
        return [{"status": Status.FAILED, "error": failure_message(exc)} for _ in configs]
    for outcome in outcomes:
        figures_to_tensorboard(outcome.path)
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
            with on_signals(raise_interrupt):  # between packs; a pack's run handles them itself
                for unit_cells, unit_args in units:
                    if on_event:
                        for cell in unit_cells:
                            on_event(done, total, cell, "started", {})
                    finished(unit_cells, run_pack(*unit_args))
                    if any(results[c.key].get("status") == Status.INTERRUPTED for c in unit_cells):  # Ctrl-C
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
                    unit_results = [{"status": Status.FAILED, "error": f"{type(exc).__name__}: {exc}"}
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
    if stopping or any(r.get("status") == Status.INTERRUPTED for r in results.values()):
        raise Interrupted(results)  # every started cell has checkpointed and returned
    return results


class Interrupted(KeyboardInterrupt):
    """A signal stopped the cells: `results` has those that returned (some `interrupted`)."""

    def __init__(self, results: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        self.results = results


def raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the sweep records where it stopped


def on_signals(handler: Callable[[int, Any], None]) -> Any:
    """lnexp.run.train.on_signals, imported when used: this module imports no torch at import time."""
    from lnexp.run.train import on_signals as handle

    return handle(handler)
