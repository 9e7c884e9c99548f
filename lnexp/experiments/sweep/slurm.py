"""Cells as batch jobs through submitit (`--launcher slurm`): one job per cell, one job array per
submission, requeued after a time limit or pre-emption.

    <root>/jobs/            submitit's pickles and each job's <id>_0_log.out / _log.err
    <root>/jobs/jobs.json   cell folder -> its job (id, cluster, when submitted)

The run folder says what a cell's run did (completed, diverged, interrupted...); the job says whether
it is still queued or running. A cell with a live job is never submitted again, a finished cell is
never trained again, so re-running the command that submitted them only shows where they are and
collects the finished ones. Everything here imports submitit (an optional extra) when it is used.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, ValidationError

from lnexp.core.config import ConfigError, Int, Section, _describe
from lnexp.core.files import CONFIG_LIMIT, FileProblem, read_regular
from lnexp.core.status import FINISHED, Status
from lnexp.experiments.sweep.grid import Cell
from lnexp.experiments.sweep.pool import Event
from lnexp.experiments.sweep.state import JobState, Plan
from lnexp.run.folder import now, write_json
from lnexp.run.reader import pid_alive, read_status, read_summary

JOBS = "jobs"
POLL_S = 2.0
LOG_TAIL = 2000  # characters of a failed job's stderr kept in its cell's meta.json


def _minutes(value: Any) -> Any:
    """`90`, `"90"`, `"1:30"` (H:MM) or `"1:30:00"` (H:MM:SS) -> minutes."""
    if isinstance(value, str) and not value.strip().isdigit():
        parts = value.split(":")
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
            raise ValueError(f"must be minutes or H:MM[:SS], got {value!r}")
        hours, minutes, seconds = (int(p) for p in [*parts, "0"][:3])
        return hours * 60 + minutes + (1 if seconds else 0)
    return value


class Launcher(Section):
    """Where cells run, and what each SLURM job asks for (the `launcher:` block of a YAML file)."""

    kind: Literal["local", "slurm"] = "local"
    # submitit's executor: `local` runs the same submission, pickling and requeue path in local processes
    cluster: Literal["slurm", "local"] = "slurm"
    partition: str | None = None
    gpus_per_cell: Int = Field(1, ge=0, le=64)
    cpus_per_cell: Int | None = Field(None, ge=1, le=1024)
    mem: str | None = None  # SLURM's --mem: 32G, 64000M
    time: Annotated[Int, BeforeValidator(_minutes), Field(ge=1)] = 60  # minutes per job, before a requeue
    slurm: dict[str, str | int] = {}  # any other sbatch option: account, qos, constraint, exclude, ...
    max_requeues: Int = Field(3, ge=0)  # time-outs a cell may hit (pre-emptions are not counted)
    # lines the batch script runs before the job (module load, activating the environment)
    setup: list[str] = []


def parse_slurm(items: list[str]) -> dict[str, str]:
    """`--slurm K=V` items -> {K: V}; ConfigError on a malformed one."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"--slurm {item}: expected KEY=VALUE, e.g. --slurm account=myproject")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def load_launcher(file: Path | None, options: dict[str, Any]) -> Launcher:
    """The `launcher:` block of `file` (if given), then the command line's options (those not None)."""
    raw: dict[str, Any] = {}
    if file is not None:
        try:
            data = yaml.safe_load(read_regular(file, CONFIG_LIMIT))
        except (FileProblem, yaml.YAMLError) as exc:
            raise ConfigError(f"{file}: {str(exc).splitlines()[0]}") from None
        raw = data.get("launcher") if isinstance(data, dict) else None
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: no `launcher:` mapping")
        _validate(raw, lambda key: f"{file}: launcher.{key}")
    given = {k: v for k, v in options.items() if v is not None and v != {} and v != []}
    merged = {**raw, **given, "slurm": {**(raw.get("slurm") or {}), **given.get("slurm", {})}}
    if "setup" in given and isinstance(raw.get("setup"), list):
        merged["setup"] = [*raw["setup"], *given["setup"]]
    option = {"kind": "launcher"}
    launcher = _validate(merged, lambda key: f"--{option.get(key, key.split('.')[0]).replace('_', '-')}")
    slurm_only = sorted(given.keys() - {"kind"})
    if launcher.kind == "local" and slurm_only:
        raise ConfigError(f"--{slurm_only[0].replace('_', '-')}: only with --launcher slurm")
    return launcher


def from_options(file: Path | None, *, kind: str | None = None, partition: str | None = None,
                 gpus_per_cell: int | None = None, cpus_per_cell: int | None = None, mem: str | None = None,
                 time: str | None = None, slurm: Sequence[str] = (), setup: Sequence[str] = ()
                 ) -> Launcher | None:
    """The launcher of the command line's options (`slurm`: its `--slurm K=V` items; `setup`: lines
    after the file's) over `file`'s `launcher:` block; None (the local pool) when neither is given.
    ConfigError on bad input."""
    options = {"kind": kind, "partition": partition, "gpus_per_cell": gpus_per_cell,
               "cpus_per_cell": cpus_per_cell, "mem": mem, "time": time, "slurm": parse_slurm(list(slurm)),
               "setup": list(setup)}
    return load_launcher(file, options) if file or any(options.values()) else None


def _validate(raw: dict[str, Any], where: Callable[[str], str]) -> Launcher:
    try:
        return Launcher.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(f"{where('.'.join(map(str, error['loc'])))}: {_describe(error)}") from None


def check(launcher: Launcher) -> None:
    """What submitting needs, checked before a sweep or reproduction writes anything: submitit and,
    for SLURM, its `srun` (RunError: a failed start leaves no state behind)."""
    submitit = _submitit()
    if launcher.cluster == "slurm" and submitit.SlurmExecutor.affinity() <= 0:
        from lnexp.run.reader import RunError

        raise RunError("--launcher slurm: no SLURM here (no srun on PATH); run it on the cluster, or use "
                       "--launcher local")


def executor(launcher: Launcher, folder: Path) -> Any:
    """A submitit executor asking, per job, for what `launcher` says."""
    submitit = _submitit()
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=launcher.cluster,
                                   slurm_max_num_timeout=launcher.max_requeues)
    except RuntimeError as exc:  # no srun: not on a SLURM cluster
        from lnexp.run.reader import RunError

        raise RunError(f"--launcher slurm: {exc}") from None
    known = submitit.SlurmExecutor._valid_parameters()
    named = {"partition": launcher.partition, "mem": launcher.mem,
             **{k: v for k, v in launcher.slurm.items() if k in known}}
    slurm = {f"slurm_{k}": _int_or_text(v) for k, v in named.items() if v is not None}
    other = {k: v for k, v in launcher.slurm.items() if k not in known}
    if other:  # written as `#SBATCH --key=value` lines
        slurm["slurm_additional_parameters"] = {k: _int_or_text(v) for k, v in other.items()}
    if launcher.setup:
        slurm["slurm_setup"] = launcher.setup
    try:
        ex.update_parameters(name="lnexp", timeout_min=launcher.time, nodes=1, tasks_per_node=1,
                             gpus_per_node=launcher.gpus_per_cell, cpus_per_task=launcher.cpus_per_cell,
                             **slurm)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--slurm: {str(exc).splitlines()[0]}") from None
    return ex


def batch_script(launcher: Launcher, root: Path, cells: int) -> str:
    """The sbatch script a submission of `cells` cells would send (one job array; one job for one
    cell), rendered as submitit renders it, without submitting or writing anything."""
    slurm_executor = executor(launcher, root / JOBS)._executor  # AutoExecutor's own SlurmExecutor
    if not isinstance(slurm_executor, _submitit().SlurmExecutor):
        raise ConfigError("--dry-run: prints a SLURM batch script; the launcher's cluster is local")
    parameters = {**slurm_executor.parameters, **({"map_count": cells} if cells > 1 else {})}
    return _submitit().slurm.slurm._make_sbatch_string(command=slurm_executor._submitit_command_str,
                                                        folder=slurm_executor.folder, **parameters)


NODE_LOCAL_FS = {"tmpfs", "ramfs", "devtmpfs"}  # memory: each node has its own
NODE_LOCAL_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run")  # each node's own disk, as a rule


def node_local(path: Path) -> str | None:
    """Why `path` is most likely this node's own storage, which a job on another node cannot read
    (None: nothing says so; a shared filesystem cannot be proven from here)."""
    resolved = path.expanduser().resolve()
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:  # not Linux
        lines = []
    mounts = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:  # /proc/mounts writes a space in a path as \040
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
            mounts.append((Path(point), fields[2]))
    inside = [(point, kind) for point, kind in mounts if point == resolved or point in resolved.parents]
    if inside:
        point, kind = max(inside, key=lambda m: len(m[0].parts))
        if kind in NODE_LOCAL_FS:
            return f"on {kind} (mounted at {point})"
    local = next((d for d in NODE_LOCAL_DIRS if Path(d) == resolved or Path(d) in resolved.parents), None)
    return f"under {local}" if local else None


def storage_warnings(root: Path) -> list[str]:
    """Where jobs on other nodes could not read or write what a submission needs: the sweep's folder
    (the run folders, submitit's pickles and logs) and the data cache (LNEXP_CACHE_DIR)."""
    from lnexp.data.sources import cache_dir

    warnings = []
    for what, path in (("the sweep's folder", root), ("the data cache (LNEXP_CACHE_DIR)", cache_dir())):
        why = node_local(path)
        if why:
            warnings.append(f"{what} {path} is {why}: a job on another node cannot see it; put run.dir and "
                            "LNEXP_CACHE_DIR on a filesystem every node mounts")
    return warnings


def _int_or_text(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher slurm needs submitit: pip install 'lnexp[slurm]'") from None
    return submitit


# --- the job records ---------------------------------------------------------------------------------

def read_records(root: Path) -> dict[str, dict[str, Any]]:
    import json

    try:
        records = json.loads((root / JOBS / "jobs.json").read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def job_paths(root: Path, record: dict[str, Any]) -> Any:
    return _submitit().core.utils.JobPaths(root / JOBS, record["id"], 0)


def job_live(root: Path, record: dict[str, Any], handle: Any = None) -> bool:
    """Whether the cell's job may still run: queued, running or requeued (not yet ended)."""
    if job_paths(root, record).result_pickle.exists():
        return False
    if handle is not None:  # submitted by this process: submitit knows (a local job's process)
        return not handle.done()
    if record["cluster"] == "local":  # the job's id is its controller's pid
        pid = int(record["id"])
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:  # this process's child, ended: reaped, not a zombie
                return False
        except ChildProcessError:  # another process's (an earlier command's)
            pass
        return pid_alive(pid)
    submitit = _submitit()
    return not submitit.SlurmJob(root / JOBS, record["id"]).done(force_check=True)  # sacct


def resumable(cell: Cell) -> bool:
    from lnexp.experiments.sweep.state import config_differences

    return (cell.path / "checkpoint.pt").exists() and not config_differences(cell.path, cell.config)


def cell_state(root: Path, cell: Cell, record: dict[str, Any] | None, live: bool
               ) -> tuple[Status | JobState, str]:
    """(state, detail): the run's Status, or its job's JobState while the job waits."""
    status = read_status(cell.path)
    if record is None:
        return JobState.NEW if status is None else status, ""
    if status in FINISHED:
        return status, f"job {record['id']}"
    log = str(job_paths(root, record).stderr)
    if live:
        waiting = {Status.RUNNING: Status.RUNNING, Status.INTERRUPTED: JobState.REQUEUED}
        return waiting.get(status, JobState.QUEUED), f"job {record['id']}"
    if status == Status.INTERRUPTED:
        return Status.INTERRUPTED, f"job {record['id']}"
    return Status.FAILED, f"job {record['id']}, log {log}"


def record_failure(root: Path, cell: Cell, record: dict[str, Any]) -> str:
    """A job that ended without a finished run: its stderr's tail goes into the cell's meta.json."""
    import json

    try:
        tail = job_paths(root, record).stderr.read_text(errors="replace")[-LOG_TAIL:]
    except OSError:
        tail = "(no stderr log)"
    try:
        meta = json.loads((cell.path / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    own = f"{meta['error']}\n" if meta.get("error") else ""  # the run's own message comes first
    error = f"{own}job {record['id']} ended without a finished run; stderr tail:\n{tail}"
    cell.path.mkdir(parents=True, exist_ok=True)
    write_json(cell.path / "meta.json", {**meta, "status": Status.FAILED, "error": error, "job": record})
    return error


# --- submit, then wait or detach ---------------------------------------------------------------------

def launch(work: Plan, launcher: Launcher, root: Path, source: str, command: Callable[[Cell], list[str]],
           on_event: Event | None = None, detach: bool = False,
           on_submit: Callable[[dict[str, dict[str, Any]]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Submit the plan's cells that have no live job (one job array), then wait for every job (unless
    `detach`); returns cell folder -> summary with `status` (queued/running/requeued while detached)."""
    from lnexp.experiments.sweep.cell_job import CellJob

    records = read_records(root)
    handles: dict[str, Any] = {}
    live = {cell.key for cell, _ in work.todo
            if cell.key in records and job_live(root, records[cell.key])}
    # an interrupted run of the same config continues from its checkpoint (a job cancelled, or stopped)
    submit = [(cell, replace and not resumable(cell)) for cell, replace in work.todo if cell.key not in live]
    if submit:
        configs = []
        for cell, _ in submit:
            config = cell.config.to_dict()
            config["train"]["threads"] = config["train"]["threads"] or launcher.cpus_per_cell
            configs.append(config)
        ex = executor(launcher, root / JOBS)
        try:
            jobs = ex.map_array(CellJob(), configs, [source] * len(submit),
                                [command(cell) for cell, _ in submit], [replace for _, replace in submit])
        except Exception as exc:  # sbatch refused (a bad partition, option or account)
            from lnexp.run.reader import RunError

            raise RunError(f"job submission failed: {str(exc).strip().splitlines()[-1][:300]}") from None
        for (cell, _), job in zip(submit, jobs):
            records[cell.key] = {"id": str(job.job_id), "cluster": launcher.cluster, "submitted": now()}
            handles[cell.key] = job
        write_json(root / JOBS / "jobs.json", records)
    if on_submit:
        on_submit(records)
    return watch(root, work, records, handles, on_event, detach)


def watch(root: Path, work: Plan, records: dict[str, dict[str, Any]], handles: dict[str, Any],
          on_event: Event | None, detach: bool, poll_s: float = POLL_S) -> dict[str, dict[str, Any]]:
    """Follow the jobs of the plan's cells: a line when one starts and when it ends."""
    results = dict(work.skipped)
    total, done = len(work.todo), 0
    if on_event:
        for cell in work.cells:
            if cell.key in results:
                on_event(0, total, cell, "skipped", results[cell.key])
    pending = {cell.key: cell for cell, _ in work.todo}
    started: set[str] = set()
    while pending:
        for key, cell in list(pending.items()):
            record = records.get(key)
            live = record is not None and job_live(root, record, handles.get(key))
            state, detail = cell_state(root, cell, record, live)
            if state in (Status.RUNNING, JobState.REQUEUED) and key not in started:
                started.add(key)
                if on_event:
                    on_event(done, total, cell, "started", {"status": state, "error": detail})
            if live and not detach:
                continue
            if not live and state not in FINISHED and record is not None:
                detail = record_failure(root, cell, record) if state == Status.FAILED else detail
            results[key] = {**read_summary(cell.path), "status": state, "error": detail}
            del pending[key]
            if not live:
                done += 1
            if on_event:
                on_event(done, total, cell, "finished" if not live else "submitted", results[key])
        if pending:
            time.sleep(poll_s)
    return results


def status_rows(root: Path, cells: list[Cell]) -> list[tuple[Cell, str, str]]:
    """Every cell's state, for `lnexp sweep status` (no job is submitted or waited for)."""
    # by the resolved folder: the sweep's folder may be named otherwise than when its cells were submitted
    records = {str(Path(key).resolve()): record for key, record in read_records(root).items()}
    rows = []
    for cell in cells:
        record = records.get(str(cell.path.resolve()))
        live = record is not None and read_status(cell.path) not in FINISHED and job_live(root, record)
        rows.append((cell, *cell_state(root, cell, record, live)))
    return rows
