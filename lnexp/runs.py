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
import os
import platform
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import yaml


class RunError(Exception):
    """A run folder that cannot be created or read: printed as one line, exit code 2."""


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def check_target(path: Path, force: bool) -> None:
    """Fail before anything is built if the folder exists (and --force may not replace it)."""
    if not path.exists():
        return
    if not force:
        raise RunError(f"{path}: run folder exists (choose another run.name, or --force to replace it)")
    if not path.is_dir() or any(path.iterdir()) and not (path / "meta.json").exists():
        raise RunError(f"{path}: exists and is not a run folder; refusing to replace it")


class RunWriter:
    """Creates the folder exclusively, then appends and flushes lines as the run goes."""

    def __init__(self, path: Path, config_yaml: str, meta: dict[str, Any], force: bool = False) -> None:
        check_target(path, force)
        if force and path.exists():
            shutil.rmtree(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()  # exclusive: of two runs started with one name, exactly one gets it
        except FileExistsError:
            raise RunError(f"{path}: run folder exists (another run took this name)") from None
        except OSError as exc:
            raise RunError(f"{path}: cannot create the run folder ({exc.strerror})") from None
        self.path = path
        (path / "config.yaml").write_text(config_yaml)
        self.meta = {"status": "running", **meta}
        write_json(path / "meta.json", self.meta)
        self._metrics: TextIO = open(path / "metrics.jsonl", "a")
        self._probes: TextIO = open(path / "probes.jsonl", "a")

    @classmethod
    def reopen(cls, path: Path, keep_before: int) -> RunWriter:
        """Continue writing a run: lines of steps >= keep_before are dropped (they will be redone)."""
        writer = cls.__new__(cls)
        writer.path = path
        writer.meta = json.loads((path / "meta.json").read_text())
        for name in ("metrics.jsonl", "probes.jsonl"):
            kept = [row for row in read_jsonl(path / name) if row["step"] < keep_before]
            tmp = path / f".{name}.tmp"
            tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
            os.replace(tmp, path / name)
        (path / "summary.json").unlink(missing_ok=True)
        writer._metrics = open(path / "metrics.jsonl", "a")
        writer._probes = open(path / "probes.jsonl", "a")
        return writer

    def metrics(self, rows: list[dict[str, Any]]) -> None:
        _append(self._metrics, rows)

    def probes(self, rows: list[dict[str, Any]]) -> None:
        _append(self._probes, rows)

    def update_meta(self, **fields: Any) -> None:
        self.meta.update(fields)
        write_json(self.path / "meta.json", self.meta)

    def close(self) -> None:
        self._metrics.close()
        self._probes.close()


def _append(stream: TextIO, rows: list[dict[str, Any]]) -> None:
    if rows:
        stream.write("".join(json.dumps(row) + "\n" for row in rows))
        stream.flush()


@dataclass
class Run:
    """A run folder read back. `notes` says what was missing or truncated."""

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
        return self.summary.get("status") or self.meta.get("status", "unknown")

    @property
    def state(self) -> str:
        """`status`, except that a run still marked running whose process is gone (killed, machine
        rebooted) is "stale". Only decidable on the host that ran it."""
        if self.status != "running" or self.meta.get("host") != platform.node():
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


def load_run(path: str | Path, probes: bool = True) -> Run:
    """`probes=False` skips probes.jsonl, by far the largest file, for listings."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such run folder")
    if not is_run(path):
        raise RunError(f"{path}: not a run folder (no meta.json)")
    notes: list[str] = []
    meta = _read_json(path / "meta.json", notes)
    summary = _read_json(path / "summary.json", notes, missing_ok=meta.get("status") == "running")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config, _ = {}, notes.append("config.yaml unreadable")
    return Run(path, config, meta, summary, read_jsonl(path / "metrics.jsonl", notes),
               read_jsonl(path / "probes.jsonl", notes) if probes else [], notes)


def _read_json(path: Path, notes: list[str], missing_ok: bool = False) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if not missing_ok:
            notes.append(f"{path.name} missing")
    except (OSError, json.JSONDecodeError):
        notes.append(f"{path.name} unreadable")
    return {}


def read_jsonl(path: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Every complete line; a truncated last line (a killed run) is skipped and noted."""
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if notes is not None:
                notes.append(f"{path.name}: skipped a truncated line")
    return rows


def logged_steps(rows: list[dict[str, Any]], probe: str) -> list[int]:
    return sorted({r["step"] for r in rows if r["probe"] == probe})


def nearest_step(steps: list[int], at: int) -> int | None:
    """The logged step closest to `at` (the earlier one on a tie); None when nothing was logged."""
    return min(steps, key=lambda s: (abs(s - at), s)) if steps else None


def weight_roles(rows: list[dict[str, Any]]) -> list[str]:
    """The per-layer weight roles the grad probe logged (`attn.q`, ..., `ffn.fc2`), in model order."""
    return list(dict.fromkeys(r["param"].removesuffix(".weight") for r in rows if r["probe"] == "grad"
                              and r["layer"] is not None and r["param"].endswith(".weight")))


# What each probe measures, for titles. PER_LAYER probes have one value per layer; MEASURES probes
# several named ones (their `param`, the first the default); the rest one per weight.
PROBES = {"act": "residual-stream RMS", "output_change": "output change under perturbation",
          "grad": "gradient norm", "update": "update/weight ratio", "adam_v_q10": "Adam v_t 10% quantile",
          "adam_v_q50": "Adam v_t median", "adam_v_q90": "Adam v_t 90% quantile",
          "rank": "feature dimensionality", "sensitivity": "loss sensitivity"}
PER_LAYER = ("act", "output_change")
FEATURE_STATS = {"erank": "effective rank", "pr": "participation ratio", "aniso": "anisotropy"}
MEASURES = {
    "rank": {f"{where}.{stat}": f"{title} of the {what}"
             for where, what in (("resid", "residual stream"), ("attn", "attention output"),
                                 ("cross", "cross-attention output"), ("ffn", "FFN output"))
             for stat, title in FEATURE_STATS.items()},
    "sensitivity": {"dloss_dx": "‖∂loss/∂x‖ of the residual stream",
                    "noise_loss_change": "relative loss change, branch outputs replaced by noise"},
}
# The measures of the residual stream, which also has a value leaving the last block.
STREAM_MEASURES = ("resid.", "dloss_dx")


def default_param(probe: str) -> str:
    """The profile `compare` shows when no --param is given."""
    return next(iter(MEASURES[probe])) if probe in MEASURES else "ffn.fc2"


def profile_depth(probe: str, param: str, n_layers: int) -> int:
    """How many entries a complete profile has: one per layer, plus one leaving the last block for
    measures of the residual stream (act; rank's resid.*; sensitivity's dloss_dx)."""
    stream = probe == "act" or (probe in MEASURES and param.startswith(STREAM_MEASURES))
    return n_layers + stream


def layer_profile(rows: list[dict[str, Any]], probe: str, param: str, step: int) -> list[float]:
    """Values by layer index at `step`. For per-weight probes, `param` is a role (`ffn.fc2` means its
    weight) or `all`: the layer's combined value, sqrt of the sum of its squared values. For MEASURES
    probes it names the measure (`resid.erank`)."""
    if probe in PER_LAYER:
        chosen = {r["layer"]: r["value"] for r in rows if r["probe"] == probe and r["step"] == step}
        return [chosen[i] for i in sorted(chosen)]
    named = probe in MEASURES or param == "all" or param.endswith((".weight", ".bias"))
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
