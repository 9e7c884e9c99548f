"""The run folder: writing it as a run goes, and reading it back (also from runs killed mid-way).

    runs/<name>/config.yaml    the fully resolved config, after overrides
    runs/<name>/meta.json      status, command, seed, versions, device, times, git commit
    runs/<name>/metrics.jsonl  one line per step: step, lr, loss, val_loss, tokens_per_s, grad_norm_total
    runs/<name>/probes.jsonl   one line per measurement: step, probe, layer, param, value
    runs/<name>/summary.json   final and best values, divergence step
    runs/<name>/model.pt       final weights (a plain state dict: torch.load(weights_only=True))
"""

from __future__ import annotations

import json
import math
import os
import platform
import secrets
import shutil
import stat
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from lnexp.core.errors import LnexpError
from lnexp.core.files import (
    CONFIG_LIMIT,
    FileProblem,
    MissingFile,
    atomic_write,
    open_regular,
    read_regular,
    try_lock,
)
from lnexp.core.probe_kinds import by_row

LOCK = ".lock"  # flock'd by the process writing the run, for the run's life
RESERVE = ".reserve"  # space held back, freed when a write hits a full disk so the failure can be recorded
RESERVE_BYTES = 64 * 1024
# What a run folder may hold. A folder of these alone, without meta.json, is a run killed while it
# was being created: --force and sweeps may replace it.
RUN_FILES = {"config.yaml", "meta.json", "metrics.jsonl", "probes.jsonl", "summary.json", "model.pt",
             "checkpoint.pt", "plots", "tb", "wandb", LOCK, RESERVE}
FINISHED = ("completed", "diverged")  # a run that ended as a result: never resumed, never re-run
JSON_LIMIT = 16 * 2**20  # meta.json and summary.json are a few KiB; anything this large is damage


class RunError(LnexpError):
    """A run folder that cannot be created or read: printed as one line, exit code 2."""


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


def _in_use(path: Path) -> RunError:
    meta = _read_json(path / "meta.json", [])  # a pid only of a run that says it is running
    running = isinstance(meta.get("pid"), int) and meta.get("status") == "running"
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
            self.meta = {"status": "running", **meta}
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
            writer.meta = _read_json(path / "meta.json", [])
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

    def finish(self, status: str, summary: dict[str, Any], error: str | None = None) -> None:
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
    def status(self) -> str:
        status = self.summary.get("status") or self.meta.get("status")
        return status if isinstance(status, str) else "unknown"

    @property
    def state(self) -> str:
        """`status`, except that a run still marked running whose process is gone (killed, machine
        rebooted) is "stale": its lock is free (or, for a folder without a lock file, its pid is gone;
        only decidable on the host that ran it)."""
        if self.status != "running":
            return self.status
        locked = is_locked(self.path)
        if locked is not None:
            return "running" if locked else "stale"
        if self.meta.get("host") != platform.node():
            return self.status
        return "running" if _alive(self.meta.get("pid")) else "stale"


def _alive(pid: Any) -> bool:
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
    meta = _read_json(path / "meta.json", notes)
    summary = _read_json(path / "summary.json", notes, missing_ok=meta.get("status") == "running")
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


def _read_json(path: Path, notes: list[str], missing_ok: bool = False) -> dict[str, Any]:
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


def loss_summary(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The loss numbers of summary.json from a run's metrics lines, in step order (train writes them
    from the lines it wrote; compare computes them for a run that has no summary yet): the final
    train loss is the mean of the last 10 finite ones; the final val loss the last one logged (inf or
    nan if the run diverged there), the best val loss the smallest finite one and its step."""
    train = [m["loss"] for m in metrics if finite(m.get("loss"))]
    vals = [(m["step"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
    best_step, best_val = min(((s, v) for s, v in vals if finite(v)), key=lambda sv: sv[1],
                              default=(None, None))
    tail = train[-10:]
    return {"final_train_loss": sum(tail) / len(tail) if tail else None,
            "best_train_loss": min(train, default=None),
            "final_val_loss": vals[-1][1] if vals else None,
            "best_val_loss": best_val, "best_val_step": best_step,
            "grad_norm_total_init": next((m.get("grad_norm_total") for m in metrics if m.get("step") == 0),
                                         None)}


def finite(value: Any) -> bool:
    """A number (not a bool) that is neither inf nor nan."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def logged_steps(rows: list[dict[str, Any]], probe: str) -> list[int]:
    return sorted({r["step"] for r in rows if r["probe"] == probe})


def nearest_step(steps: list[int], at: int) -> int | None:
    """The logged step closest to `at` (the earlier one on a tie); None when nothing was logged."""
    return min(steps, key=lambda s: (abs(s - at), s)) if steps else None


def weight_roles(rows: list[dict[str, Any]]) -> list[str]:
    """The per-layer weight roles the grad probe logged (`attn.q`, ..., `ffn.fc2`), in model order."""
    return list(dict.fromkeys(r["param"].removesuffix(".weight") for r in rows if r["probe"] == "grad"
                              and r["layer"] is not None and r["param"].endswith(".weight")))


def layer_profile(rows: list[dict[str, Any]], probe: str, param: str, step: int) -> list[float]:
    """Values by layer index at `step`. For per-weight probes, `param` is a role (`ffn.fc2` means its
    weight) or `all`: the layer's combined value, sqrt of the sum of its squared values. For probes
    with named measures it names the measure (`resid.erank`)."""
    kind = by_row(probe)
    if kind is not None and kind.entries == "layer":
        chosen = {r["layer"]: r["value"] for r in rows if r["probe"] == probe and r["step"] == step}
        return [chosen[i] for i in sorted(chosen)]
    measures = kind is not None and kind.entries == "measures"
    named = measures or param == "all" or param.endswith((".weight", ".bias"))
    name = param if named else param + ".weight"
    squares: dict[int, float] = {}
    for r in rows:
        if r["probe"] == probe and r["step"] == step and r["layer"] is not None \
                and (name == "all" or r["param"] == name):
            squares[r["layer"]] = squares.get(r["layer"], 0.0) + r["value"] ** 2
    return [squares[i] ** 0.5 for i in sorted(squares)]


def profile_ratios(values: list[float]) -> dict[str, float | None]:
    """A profile in two numbers: the last/first-layer ratio (Xiong et al.'s Figure 3 at a glance) and
    the spread, max/min over the layers. None where undefined (no layers, a zero)."""
    return {"last/first": values[-1] / values[0] if values and values[0] else None,
            "max/min": max(values) / min(values) if values and min(values) > 0 else None}
