"""Reading a run folder back, whatever state its files are in (also from runs killed mid-way)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from lnexp.core.errors import LnexpError
from lnexp.core.files import (
    CONFIG_LIMIT,
    FileProblem,
    MissingFile,
    open_regular,
    read_regular,
    try_lock,
)
from lnexp.core.status import Status


class RunError(LnexpError):
    """A run folder that cannot be created or read: printed as one line, exit code 2."""


LOCK = ".lock"  # flock'd by the process writing the run, for the run's life
JSON_LIMIT = 16 * 2**20  # meta.json and summary.json are a few KiB; anything this large is damage


def is_locked(path: Path) -> bool | None:
    """Whether a live process holds the run folder's lock; None when it has no lock file."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return not try_lock(fd)  # taken only for this instant: closing the fd releases it
    finally:
        os.close(fd)


@dataclass
class Run:
    """A run folder read back. `notes` says what was missing, damaged or skipped."""

    path: Path
    config: dict[str, Any]
    meta: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> Status:
        return status_of(self.summary, self.meta)

    @property
    def state(self) -> Status:
        """`status`, except that a run still marked running whose process is gone (killed, machine
        rebooted) is STALE: its lock is free (or, for a folder without a lock file, its pid is gone;
        only decidable on the host that ran it)."""
        if self.status != Status.RUNNING:
            return self.status
        locked = is_locked(self.path)
        if locked is not None:
            return Status.RUNNING if locked else Status.STALE
        if self.meta.get("host") != platform.node():
            return self.status
        return Status.RUNNING if pid_alive(self.meta.get("pid")) else Status.STALE


def status_of(summary: dict[str, Any], meta: dict[str, Any]) -> Status:
    """A run's status: its summary.json's (written last), else its meta.json's; UNKNOWN if neither
    says one this version knows."""
    try:
        return Status(summary.get("status") or meta.get("status"))
    except ValueError:
        return Status.UNKNOWN


def read_status(path: Path) -> Status | None:
    """The status of the run folder `path` as `Run.status` reads it, without reading its lines; None
    when there is no such folder."""
    if not path.is_dir():
        return None
    return status_of(read_summary(path), read_json(path / "meta.json", [], missing_ok=True))


def read_summary(path: Path) -> dict[str, Any]:
    """A run folder's summary.json ({} when it has none yet, or it is damaged)."""
    return read_json(path / "summary.json", [], missing_ok=True)


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: do not call a run stale without evidence
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    return True


def is_run(path: Path) -> bool:
    return path.is_dir() and (path / "meta.json").exists()


def load_run(path: str | Path, probes: bool = True, tail: int | None = None) -> Run:
    """A run folder, whatever state its files are in: what cannot be used is skipped with a note.
    `probes=False` skips probes.jsonl (by far the largest file), `tail` keeps only the last metrics
    lines, read from the end of the file (listings)."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such run folder")
    if not is_run(path):
        raise RunError(f"{path}: not a run folder (no meta.json)")
    notes: list[str] = []
    meta = read_json(path / "meta.json", notes)
    summary = read_json(path / "summary.json", notes, missing_ok=meta.get("status") == Status.RUNNING)
    for key in [k for k, v in summary.items() if k in SUMMARY_NUMBERS and not _number_or_none(v)]:
        notes.append(f"summary.json: {key} is not a number; ignored")
        del summary[key]
    return Run(path, _read_config(path / "config.yaml", notes), meta, summary,
               read_jsonl(path / "metrics.jsonl", notes, tail=tail),
               read_jsonl(path / "probes.jsonl", notes) if probes else [], notes)


SUMMARY_NUMBERS = ("steps_done", "diverged_step", "final_train_loss", "best_train_loss", "final_val_loss",
                   "best_val_loss", "best_val_step", "tokens_per_s", "wall_time_s", "unigram_entropy",
                   "dead_layers", "grad_norm_total_init", "updates_past_divergence")


METRICS_NUMBERS = ("lr", "loss", "val_loss", "tokens_per_s", "grad_norm_total", "mfu", "radam_rho")


def _number_or_none(value: Any) -> bool:
    return value is None or isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_json(path: Path, notes: list[str], missing_ok: bool = False) -> dict[str, Any]:
    """A JSON object from a file; {} (and a note) when it is missing, unreadable or not an object."""
    try:
        data = json.loads(read_regular(path, JSON_LIMIT))
    except MissingFile:
        if not missing_ok:
            notes.append(f"{path.name} missing")
        return {}
    except (FileProblem, ValueError, RecursionError):
        notes.append(f"{path.name} unreadable")
        return {}
    if not isinstance(data, dict):
        notes.append(f"{path.name} is not a JSON object; ignored")
        return {}
    return data


def _read_config(path: Path, notes: list[str]) -> dict[str, Any]:
    """config.yaml as {section: {key: value}} (and the list of plugins); a section that is not a
    mapping is dropped with a note."""
    try:
        config = yaml.safe_load(read_regular(path, CONFIG_LIMIT)) or {}
    except (FileProblem, yaml.YAMLError, RecursionError):
        notes.append("config.yaml unreadable")
        return {}
    if not isinstance(config, dict):
        notes.append("config.yaml is not a mapping; ignored")
        return {}
    for section in [s for s, v in config.items()
                    if not isinstance(v, dict) and not (s == "plugins" and isinstance(v, list))]:
        notes.append(f"config.yaml: {section} is not a mapping; ignored")
        del config[section]
    return config


def _metrics_row(row: dict[str, Any]) -> bool:
    return _int(row.get("step")) and all(_number_or_none(row.get(k)) for k in METRICS_NUMBERS)


def _probes_row(row: dict[str, Any]) -> bool:
    return _int(row.get("step")) and isinstance(row.get("probe"), str) and isinstance(row.get("param"), str) \
        and (row.get("layer") is None or _int(row.get("layer"))) and _number_or_none(row.get("value")) \
        and row.get("value") is not None


ROW_CHECKS = {"metrics.jsonl": _metrics_row, "probes.jsonl": _probes_row}


def read_jsonl(path: Path, notes: list[str] | None = None, tail: int | None = None) -> list[dict[str, Any]]:
    """Every usable line, read as a stream (or only the last `tail` lines, read from the end). A
    truncated last line (a killed run), a line that is not UTF-8 or not JSON, or a row of the wrong
    shape is skipped, and noted with its line number (counted from the end with `tail`)."""
    check = ROW_CHECKS.get(path.name, lambda row: True)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    try:
        with open_regular(path) as f:
            lines = _last_lines(f, tail) if tail is not None else f
            for number, line in enumerate(lines, 1):
                why = _bad_line(line, check, rows)
                if why:
                    skipped.append(f"line {number}{' from the end' if tail is not None else ''}: {why}")
    except (FileProblem, OSError):
        return rows
    if notes is not None and skipped:
        if len(skipped) == 1 and skipped[0].endswith("truncated"):
            notes.append(f"{path.name}: skipped a truncated line")
        else:
            more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
            notes.append(f"{path.name}: skipped {skipped[0]}{more}")
    return rows


def _bad_line(line: bytes, check: Callable[[dict[str, Any]], bool], rows: list[dict[str, Any]]) -> str:
    """Append the line's row to `rows`, or say why it was skipped."""
    if not line.strip():
        return ""
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8"
    except (ValueError, RecursionError):
        return "truncated" if not line.endswith(b"\n") else "not JSON"
    if not isinstance(row, dict) or not check(row):
        return "not a row of this file"
    rows.append(row)
    return ""


def _last_lines(f: BinaryIO, n: int, block: int = 64 * 1024) -> list[bytes]:
    """The last n lines of a file, reading blocks backwards from its end (memory ~ the lines)."""
    end = f.seek(0, os.SEEK_END)
    start, data = end, b""
    while start > 0 and data.count(b"\n") <= n:
        start = max(0, start - block)
        f.seek(start)
        data = f.read(end - start)
        block *= 2
    lines = data.splitlines(keepends=True)
    if start > 0:
        lines = lines[1:]  # the first is a cut through a line, not damage
    return lines[-n:]
