"""The run folder, written as a run goes (lnexp.run.reader reads it back, lnexp.run.rows queries its lines).

    runs/<name>/config.yaml    the fully resolved config, after overrides
    runs/<name>/meta.json      status, command, seed, versions, device, times, git commit
    runs/<name>/metrics.jsonl  one line per step: step, lr, loss, val_loss, tokens_per_s, grad_norm_total
    runs/<name>/probes.jsonl   one line per measurement: step, probe, layer, param, value
    runs/<name>/summary.json   final and best values, divergence step
    runs/<name>/model.pt       final weights (a plain state dict: torch.load(weights_only=True))
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from lnexp.core.files import (
    atomic_write,
    try_lock,
)
from lnexp.core.status import Status
from lnexp.run.reader import LOCK, RunError, is_locked, is_run, read_json, read_jsonl

RESERVE = ".reserve"  # space held back, freed when a write hits a full disk so the failure can be recorded
RESERVE_BYTES = 64 * 1024
# What a run folder may hold. A folder of these alone, without meta.json, is a run killed while it
# was being created: --force and sweeps may replace it.
RUN_FILES = {"config.yaml", "meta.json", "metrics.jsonl", "probes.jsonl", "summary.json", "model.pt",
             "checkpoint.pt", "plots", "tb", "wandb", LOCK, RESERVE}


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def stamped(stem: str) -> str:
    """A fresh run name: `stem` (cut to keep the name well under NAME_MAX) and the time."""
    return f"{stem[:100]}-{time.strftime('%Y%m%d-%H%M%S')}"


def retrain_name(config_file: Path, name: str | None) -> str | None:
    """A fresh run name when `config_file` is the saved config.yaml of run `name` (training a run's
    config again), whose own folder holds the name; else None."""
    folder = config_file.parent
    if config_file.name == "config.yaml" and name == folder.name and is_run(folder):
        return stamped(name)
    return None


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    atomic_write(path, lambda f: f.write(_json_bytes(data)))


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith((".tmp", ".old"))


def _in_use(path: Path) -> RunError:
    meta = read_json(path / "meta.json", [])  # a pid only of a run that says it is running
    running = isinstance(meta.get("pid"), int) and meta.get("status") == Status.RUNNING
    pid = f" (pid {meta['pid']})" if running else ""
    return RunError(f"{path}: in use by a running process{pid}; stop it first")


def check_target(path: Path, force: bool) -> None:
    """Fail before anything is built if the folder exists and may not be replaced: always a symlink,
    and with --force only a run folder (or a run killed while being created) that no process holds."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RunError(f"{path}: cannot create the run folder ({exc.strerror})") from None
    if stat.S_ISLNK(mode):
        raise RunError(f"{path}: is a symbolic link; refusing to use or replace it")
    if not force:
        raise RunError(f"{path}: run folder exists (choose another run.name, or --force to replace it)")
    try:
        names = os.listdir(path) if stat.S_ISDIR(mode) else None
    except FileNotFoundError:
        return  # removed since (by another --force)
    if names is None or "meta.json" not in names and not all(n in RUN_FILES or _is_temp(n) for n in names):
        raise RunError(f"{path}: exists and is not a run folder; refusing to replace it")
    if is_locked(path):
        raise _in_use(path)


def _remove_dead(path: Path) -> None:
    """Remove a run folder that check_target allowed, under its lock: a process that holds the lock
    keeps its folder, and two --force runs cannot both remove (or both create) one."""
    try:
        folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # another --force got here first
    try:
        lock = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder)
    except FileNotFoundError:  # removed since it was opened
        os.close(folder)
        return
    try:
        if not try_lock(lock):
            raise _in_use(path)
        try:
            here, held = os.lstat(path), os.fstat(folder)
        except FileNotFoundError:
            return  # another --force removed it while this one waited
        if (here.st_dev, here.st_ino) != (held.st_dev, held.st_ino):
            return  # replaced since it was opened: not the folder that was checked
        aside = path.with_name(f".{path.name}.{secrets.token_hex(6)}.old")
        os.rename(path, aside)  # atomic; the name is free from here on
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        os.close(lock)
        os.close(folder)


class RunWriter:
    """Owns one run folder for the run's life: a handle on the folder it created or claimed (every
    write goes into that folder, whatever happens to its path) and the folder's lock. Files are
    replaced atomically and lines appended unbuffered, so a killed run leaves complete files."""

    def __init__(self, path: Path, config_yaml: str, meta: dict[str, Any], force: bool = False) -> None:
        check_target(path, force)
        try:
            if force:
                _remove_dead(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()  # exclusive: of two runs started with one name, exactly one gets it
        except FileExistsError:
            raise RunError(f"{path}: run folder exists (another run took this name)") from None
        except OSError as exc:
            raise RunError(f"{path}: cannot create the run folder ({exc.strerror})") from None
        self._claim(path)
        try:
            self.meta = {"status": Status.RUNNING, **meta}
            self.write_json("meta.json", self.meta)  # first: with meta.json, the folder is a run
            self.write_file("config.yaml", lambda f: f.write(config_yaml.encode()))
            self._start()
        except OSError as exc:  # a full disk: no half-made folder is left behind
            self.close()
            shutil.rmtree(path, ignore_errors=True)
            raise RunError(f"{path}: cannot create the run folder ({exc.strerror})") from None

    @classmethod
    def reopen(cls, path: Path, keep_before: int) -> RunWriter:
        """Continue writing a run: lines of steps >= keep_before are dropped (they will be redone).
        Refused while another process holds the folder."""
        writer = cls.__new__(cls)
        writer._claim(path)
        try:
            writer.meta = read_json(path / "meta.json", [])
            for name in ("metrics.jsonl", "probes.jsonl"):
                kept = [row for row in read_jsonl(path / name) if row["step"] < keep_before]
                writer.write_file(name, lambda f, kept=kept: f.write(b"".join(
                    json.dumps(row).encode() + b"\n" for row in kept)))
            writer.remove("summary.json")
            writer._start()
        except OSError as exc:
            writer.close()
            raise RunError(f"{path}: cannot write the run folder ({exc.strerror})") from None
        return writer

    def _claim(self, path: Path) -> None:
        self.path, self._fds = path, []
        self.sinks: Any = None  # lnexp.run.sinks.Sinks: TensorBoard, W&B, fed the same rows as the files
        try:
            self._dir = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise RunError(f"{path}: cannot open the run folder ({exc.strerror})") from None
        self._fds.append(self._dir)
        try:
            lock = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                           dir_fd=self._dir)
        except OSError:  # removed by a --force between the mkdir and here
            self.close()
            raise RunError(f"{path}: replaced by another process while being created") from None
        self._fds.append(lock)
        if not try_lock(lock):
            self.close()
            raise _in_use(path)

    def _start(self) -> None:
        """The reserve, then the line files open for appending."""
        self.write_file(RESERVE, lambda f: f.write(bytes(RESERVE_BYTES)))
        self._metrics, self._probes = (self._open_append(n) for n in ("metrics.jsonl", "probes.jsonl"))

    def _open_append(self, name: str) -> int:
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=self._dir)
        self._fds.append(fd)
        return fd

    def write_file(self, name: str, write: Callable[[BinaryIO], Any]) -> None:
        atomic_write(self.path / name, write, dir_fd=self._dir)

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        self.write_file(name, lambda f: f.write(_json_bytes(data)))

    def remove(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._dir)
        except FileNotFoundError:
            pass

    def metrics(self, rows: list[dict[str, Any]]) -> None:
        self._append(self._metrics, "metrics.jsonl", rows)
        if self.sinks:
            self.sinks.add_metrics(rows)

    def probes(self, rows: list[dict[str, Any]]) -> None:
        self._append(self._probes, "probes.jsonl", rows)
        if self.sinks:
            self.sinks.add_probes(rows)

    def _append(self, fd: int, name: str, rows: list[dict[str, Any]]) -> None:
        data = memoryview("".join(json.dumps(row) + "\n" for row in rows).encode())
        try:
            while data:  # unbuffered: a line is in the file once this returns, nothing waits in memory
                data = data[os.write(fd, data):]
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path / name)) from None

    def update_meta(self, **fields: Any) -> None:
        self.meta.update(fields)
        self.write_json("meta.json", self.meta)

    def finish(self, status: Status, summary: dict[str, Any], error: str | None = None) -> None:
        """The run's last words, summary.json and meta.json, then the folder is let go. Best effort on
        a full disk: the reserve is freed first, so that there is room to say what happened."""
        self.remove(RESERVE)
        fields = {"status": status, "ended": now(), "wall_time_s": summary.get("wall_time_s")}
        for action in (lambda: self.write_json("summary.json", {"status": status, **summary}),
                       lambda: self.update_meta(**fields, **({"error": error} if error else {}))):
            try:
                action()
            except OSError:
                pass
        if self.sinks:
            try:
                self.sinks.finish(status, summary)
            except Exception as exc:  # the run's own files are written: a sink must not mask them
                warnings.warn(f"{self.path}: logging the summary failed: {type(exc).__name__}: {exc}",
                              stacklevel=2)
        self.close()

    def close(self) -> None:
        """Close every handle (the lock goes with it); safe to call twice."""
        while self._fds:
            os.close(self._fds.pop())

