"""`lnexp reproduce SUITE`: the runs that test a paper's claims, and a report whose verdicts are
computed from them.

    <out>/runs/train/<cell>/     training runs, shared by every suite that needs the same cell
    <out>/runs/init/<cell>/      one-step runs that measure the model at initialisation
    <out>/<suite>/report.md      verdict table, wiring checks, definitions, figures, numbers
    <out>/<suite>/verdicts.json  the same verdicts, with everything their tables are printed from
    <out>/report.md              every suite's verdicts on one page, and where the time went

Finished runs are reused (a run whose stored config differs from the suite's is trained again; one
that logged more than is asked for is reused as it is), so an interrupted `lnexp reproduce` resumes,
and re-running it only rewrites the reports. The verdict rule: lnexp.experiments.reproduce.verdicts.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lnexp import __version__
from lnexp.core.errors import LnexpError
from lnexp.core.status import Status
from lnexp.experiments.reproduce.engine import (
    SCALES,
    Scale,
    SuiteRuns,
    adopt_covering_log,
    cost,
    make_cells,
    requested,
    with_plugins_in_cells,
)
from lnexp.experiments.reproduce.report import StoredSuite, load, markdown, summary_table, write_report
from lnexp.experiments.reproduce.suites import SUITES
from lnexp.experiments.reproduce.suites.layouts import choose_layouts
from lnexp.experiments.reproduce.verdicts import Verdict, usable
from lnexp.experiments.sweep.grid import Cell, threads_per_job
from lnexp.experiments.sweep.pool import Event, Interrupted, execute
from lnexp.experiments.sweep.state import WAITING, Plan, is_finished, plan
from lnexp.run.folder import now

__all__ = ["SCALES", "SUITES", "Scale", "Reproduction", "Stopped", "reproduce", "suite_names"]


def suite_names() -> list[str]:
    return [*SUITES, "all"]


@dataclass
class Reproduction:
    reports: dict[str, Path]
    stored: dict[str, StoredSuite]  # each suite's verdicts as its verdicts.json holds them
    trained: int
    reused: int
    failed: dict[str, str]
    wall_s: float
    index: Path | None
    waiting: int = 0  # runs whose jobs are queued or running (--detach): no report written yet

    @property
    def verdicts(self) -> dict[str, list[Verdict]]:
        return {name: s.verdicts for name, s in self.stored.items()}


class Stopped(LnexpError):
    """A signal stopped the reproduction before every run was done: no report is written."""

    exit_code = 130


def reproduce(suite: str, scale: Scale | str = "tiny", jobs: int = 1, out: Path | str | None = None,
              on_event: Event | None = None, sets: Sequence[str] = (), threads: int | None = None,
              launcher: Any = None, detach: bool = False, plugins: Sequence[str] = (),
              layouts: Sequence[str] = (), pack: int | None = None) -> Reproduction:
    """Run (or reuse) the suite's cells, then write its report. `suite` may be `all`. `sets` are
    `--set` items for every cell; `threads` per run (default: the cores split over `jobs`). With a
    slurm `launcher` the runs are batch jobs (lnexp.experiments.sweep.slurm): the report is written once all
    are done.
    `plugins` are loaded into every cell's config; `layouts` chooses the layouts suite's layouts
    (default: every registered one). `pack`: cells of one structure trained together, up to this
    many (lnexp.run.pack); None: where measured faster here."""
    scale = with_plugins_in_cells(SCALES[scale] if isinstance(scale, str) else scale, plugins)
    if suite not in suite_names():  # after the plugins: they may register suites
        raise ValueError(f"unknown suite {suite!r}")
    scale = choose_layouts(scale, layouts)  # after the plugins: they may register layouts
    out = Path(out) if out is not None else Path("runs") / f"reproduce-{scale.name}"
    names = list(SUITES) if suite == "all" else [suite]
    start = time.perf_counter()
    grids = {name: SUITES[name].grid_at(scale) for name in names}
    specs = {name: [s for group in grid.values() for s in group] for name, grid in grids.items()}
    cells = make_cells(scale, [s for group in specs.values() for s in group], out,
                       threads or threads_per_job(jobs), sets)
    unique = list({id(c): c for c in cells.values()}.values())
    asked: dict[int, set[str]] = {}
    for spec, cell in cells.items():
        asked.setdefault(id(cell), set()).update(requested(spec, sets))
    for cell in unique:  # a finished run that logged all this cell asks for is its run
        adopt_covering_log(cell, asked[id(cell)])
    unique.sort(key=lambda c: -cost(c.config))  # the longest first: the workers end together
    work = plan(unique, mismatch="replace")
    if launcher is not None and launcher.kind == "slurm":
        from lnexp.experiments.sweep.slurm import check, launch

        check(launcher)  # before anything is written
    # what every run's meta.json and the reports record: every option that chose these runs or their speed
    command = ["lnexp", "reproduce", suite, "--scale", scale.name, "--jobs", str(jobs), "--out", str(out),
               *(["--threads", str(threads)] if threads else []), *(["--pack", str(pack)] if pack else []),
               *(["--layouts", ",".join(layouts)] if layouts else []),
               *(a for p in plugins for a in ("--plugin", p)), *(a for s in sets for a in ("--set", s))]
    try:
        if launcher is not None and launcher.kind == "slurm":
            results = launch(work, launcher, out, f"reproduce {scale.name}", lambda _: command, on_event,
                             detach)
        else:
            results = execute(work, jobs, source=f"reproduce {scale.name}", command=lambda _: command,
                              on_event=on_event, pack=pack)
    except Interrupted as exc:
        raise Stopped(stopped_message(work, exc.results)) from None
    if any(r.get("status") == Status.INTERRUPTED for r in results.values()):
        raise Stopped(stopped_message(work, results))
    failed = {name: r.get("error", "") for name, r in results.items() if r.get("status") == Status.FAILED}
    waiting = sum(r.get("status") in WAITING for r in results.values())
    wall = time.perf_counter() - start
    if waiting:
        return Reproduction({}, {}, len(work.todo), len(work.skipped), failed, wall, None, waiting)
    reports, stored = {}, {}
    for name in names:
        ctx = SuiteRuns(name, scale, SUITES[name].params_at(scale), grids[name],
                        {s: cells[s] for s in specs[name]}, sets)
        analysis = SUITES[name].analyse(ctx)
        suite_cells = list({id(c): c for c in ctx.cells.values()}.values())
        mark_missing(analysis.verdicts, suite_cells)
        spent = run_time(suite_cells)
        stored[name] = StoredSuite(name, SUITES[name].title, SUITES[name].source, scale.name,
                                   analysis.verdicts, spent.runs, spent.seconds,
                                   {"lnexp": __version__, "written": now()})
        header = _header(scale, spent, wall, len(work.todo), command)
        note = (f"Claims that are not reproduced are measured results at scale `{scale.name}`, not "
                f"refutations of the papers: {scale.paper_gap}. The intervals say how far each claim is "
                "from its smallest effect.")
        reports[name] = write_report(out / name, stored[name], header, analysis, note)
    index = write_index(out, scale)
    return Reproduction(reports, stored, len(work.todo), len(work.skipped), failed, wall, index)


def stopped_message(work: Plan, results: dict[str, dict[str, Any]]) -> str:
    """How many of the runs to train were done, interrupted (resumable) and never started."""
    todo = [cell.key for cell, _ in work.todo]
    statuses = [results.get(key, {}).get("status") for key in todo]
    interrupted = sum(s == Status.INTERRUPTED and "steps_done" in results[k] for s, k in zip(statuses, todo))
    done = sum(s not in (None, Status.INTERRUPTED) for s in statuses)
    return (f"interrupted: {done} of {len(todo)} run(s) done, {interrupted} interrupted (they resume from "
            f"their checkpoints), {len(todo) - done - interrupted} never started; no report written. Run "
            "the same command again to resume")


def mark_missing(verdicts: list[Verdict], cells: list[Cell]) -> None:
    """A verdict that lacks a number while some of the suite's runs have no result (failed, not run)
    is not inconclusive: it is `missing (n of m runs)`."""
    missing = sum(not is_finished(cell.path) for cell in cells)
    if not missing:
        return
    for v in verdicts:
        if not v.values or any(not usable(x) for x in v.values):
            v.verdict = f"missing ({missing} of {len(cells)} runs)"


@dataclass
class RunTime:
    """Where a suite's time went: its runs' training time (a pack's runs each record the pack's wall
    time: counted once), how many trained in packs, on which devices, in which families."""

    runs: int
    seconds: float
    packed: int
    devices: list[str]
    families: list[str]


def run_time(cells: list[Cell]) -> RunTime:
    seconds, devices, packs, packed = 0.0, set(), {}, 0
    for cell in cells:
        try:
            meta = json.loads((cell.path / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        run_wall = meta.get("wall_time_s") or 0.0
        if meta.get("packs"):
            key = json.dumps(meta["packs"])
            packs[key] = max(packs.get(key, 0.0), run_wall)
            packed += 1
        else:
            seconds += run_wall
        devices.add(f"{meta.get('device', '?')}, {meta.get('threads', '?')} thread(s)")
    return RunTime(len(cells), seconds + sum(packs.values()), packed, sorted(devices),
                   sorted({Path(c.config.run.dir).name for c in cells}))


def _header(scale: Scale, spent: RunTime, wall: float, trained: int, command: list[str]) -> list[str]:
    """The report's first lines: the scale, the runs and what their training took, and the command that
    wrote it, which took `wall` seconds."""
    return [
        f"Scale **{scale.name}**: {scale.description}. Seeds per training cell: {scale.seeds}; per "
        f"initialisation cell: {scale.init_seeds} (a suite may set its own).",
        "",
        f"{spent.runs} runs, in " + ", ".join(f"`../runs/{f}/`" for f in spent.families) + " (device: "
        + ("; ".join(spent.devices) or "–") + f"); their training took {spent.seconds:.0f} s in total "
        "(sum of the runs' wall times; the runs of a pack share one, counted once)."
        + (f" {spent.packed} of them trained in packs (their `meta.json` says which): a packed run's "
           "numbers differ from the same run alone at rounding level, and can drift further over its "
           "steps (docs/packing.md)." if spent.packed else ""),
        "",
        f"Written {now()} by lnexp {__version__} (`{shlex.join(command)}`), which trained {trained} "
        "run(s) and reused the others "
        f"(finished runs are never trained again) in {wall:.0f} s of wall time.",
    ]


def write_index(out: Path, scale: Scale) -> Path:
    """out/report.md: the verdicts of every suite that has a report under `out`, and where the time
    went, printed from their verdicts.json as `lnexp reproduce report OUT --markdown` prints them."""
    lines = [f"# lnexp reproduce — scale {scale.name}", ""]
    try:
        stored = load(out, order=list(SUITES))
    except LnexpError:
        stored = []
    if stored:
        lines += ["Each suite's report (" + ", ".join(f"[{s.suite}]({s.suite}/report.md)" for s in stored)
                  + ") has the figures, definitions and numbers behind its verdicts.", "",
                  "## Where the time went", "", summary_table(stored), "",
                  "A run that two suites share is counted in both.", "", "## Verdicts", "", markdown(stored)]
    else:
        lines += ["(no suite has been run yet)", ""]
    path = out / "report.md"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path
