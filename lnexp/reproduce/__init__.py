"""`lnexp reproduce SUITE`: the runs that test a paper's claims, and a report whose verdicts are
computed from them.

    <out>/runs/train/<cell>/     training runs, shared by every suite that needs the same cell
    <out>/runs/init/<cell>/      one-step runs that measure the model at initialisation
    <out>/<suite>/report.md      verdict table, definitions and thresholds, figures, numbers
    <out>/<suite>/verdicts.json  the same verdicts for scripts
    <out>/report.md              every suite's verdicts on one page

Finished runs are reused (a run whose stored config differs from the suite's is trained again), so
an interrupted `lnexp reproduce` resumes, and re-running it only rewrites the reports.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from lnexp import __version__
from lnexp.reproduce import features  # noqa: F401 (registers the feature-dimension suite)
from lnexp.reproduce.engine import SCALES, Context, Scale, make_cells
from lnexp.reproduce.report import md_table, write_report
from lnexp.reproduce.suites import SUITES
from lnexp.reproduce.verdicts import Verdict
from lnexp.runs import now
from lnexp.sweep import Event, execute, plan, threads_per_job

__all__ = ["SCALES", "SUITES", "Scale", "Outcome", "reproduce", "suite_names"]


def suite_names() -> list[str]:
    return [*SUITES, "all"]


@dataclass
class Outcome:
    reports: dict[str, Path]
    verdicts: dict[str, list[Verdict]]
    trained: int
    reused: int
    failed: dict[str, str]
    wall_s: float
    index: Path


def reproduce(suite: str, scale: Scale | str = "tiny", jobs: int = 1, out: Path | str | None = None,
              on_event: Event | None = None, pack: int | None = None) -> Outcome:
    """Run (or reuse) the suite's cells, then write its report. `suite` may be `all`. `pack`: cells of
    one structure trained together, up to this many (lnexp.pack); None: where measured faster here."""
    if suite not in suite_names():
        raise ValueError(f"unknown suite {suite!r}")
    scale = SCALES[scale] if isinstance(scale, str) else scale
    out = Path(out) if out is not None else Path("runs") / f"reproduce-{scale.name}"
    names = list(SUITES) if suite == "all" else [suite]
    start = time.perf_counter()
    specs = {name: SUITES[name].specs(scale) for name in names}
    cells = make_cells(scale, [s for group in specs.values() for s in group], out, threads_per_job(jobs))
    unique = list({id(c): c for c in cells.values()}.values())
    # the longest cells first: better packing of the worker processes
    unique.sort(key=lambda c: -c.config.train.steps * c.config.model.n_layers)
    work = plan(unique, mismatch="replace")
    command = ["lnexp", "reproduce", suite, "--scale", scale.name, "--out", str(out)]
    results = execute(work, jobs, source=f"reproduce {scale.name}", command=lambda _: command,
                      on_event=on_event, pack=pack)
    failed = {name: r.get("error", "") for name, r in results.items() if r.get("status") == "failed"}
    wall = time.perf_counter() - start
    reports, verdicts = {}, {}
    for name in names:
        ctx = Context(scale, {s: cells[s] for s in specs[name]})
        analysis = SUITES[name].analyse(ctx)
        header = _header(name, scale, ctx, jobs, wall, len(work.todo), suite, out)
        note = (f"Rows that are not reproduced or inconclusive are measured results at scale `{scale.name}`, "
                f"not refutations of the papers: {scale.paper_gap}. The numbers say how far each claim "
                "is from its threshold.")
        reports[name] = write_report(out / name, f"{name}: {SUITES[name].title}", SUITES[name].source,
                                     header, analysis, note)
        verdicts[name] = analysis.verdicts
    index = write_index(out, scale)
    return Outcome(reports, verdicts, len(work.todo), len(work.skipped), failed, wall, index)


def _header(name: str, scale: Scale, ctx: Context, jobs: int, wall: float, trained: int, invoked: str,
            out: Path) -> list[str]:
    cells = list({id(c): c for c in ctx.cells.values()}.values())
    seconds, devices = 0.0, set()
    for cell in cells:
        try:
            meta = json.loads((cell.path / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        seconds += meta.get("wall_time_s") or 0.0
        devices.add(f"{meta.get('device', '?')}, {meta.get('threads', '?')} thread(s)")
    families = sorted({Path(c.config.run.dir).name for c in cells})
    return [
        f"Scale **{scale.name}**: {scale.description}. Seeds per training cell: {scale.seeds}; per "
        f"initialisation cell: {scale.init_seeds}.",
        "",
        f"{len(cells)} runs, in " + ", ".join(f"`../runs/{f}/`" for f in families) + " (device: "
        + ("; ".join(sorted(devices)) or "–") + f"); their training took {seconds:.0f} s in total "
        "(sum of the runs' wall times).",
        "",
        f"Written {now()} by lnexp {__version__} (`lnexp reproduce {invoked} --scale {scale.name} "
        f"--jobs {jobs} --out {out}`), which trained {trained} run(s) and reused the others "
        f"(finished runs are never trained again) in {wall:.0f} s of wall time.",
    ]


def write_index(out: Path, scale: Scale) -> Path:
    """out/report.md: the verdicts of every suite that has a report under `out`."""
    lines = [f"# lnexp reproduce — scale {scale.name}", "",
             "Each suite's report has the figures, definitions, thresholds and per-seed numbers.", ""]
    rows = []
    for name in SUITES:
        try:
            verdicts = json.loads((out / name / "verdicts.json").read_text())
        except (OSError, ValueError):
            continue
        for v in verdicts:
            rows.append([f"[{name}]({name}/report.md)", v["claim"], v["quantity"], v["threshold"],
                         v.get("summary", ""), f"**{v['verdict']}**"])
    lines += [md_table(["suite", "claim", "measured quantity", "threshold", "mean ± std (n)", "verdict"],
                       rows) if rows else "(no suite has been run yet)", ""]
    path = out / "report.md"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def verdicts_table(outcome: Outcome):
    """The verdicts of this invocation as a rich table (stdout)."""
    from rich.table import Table

    from lnexp.reproduce.report import mean_pm

    table = Table(title=f"verdicts ({outcome.index})", title_justify="left")
    for column in ("suite", "claim", "measured (mean ± std, n)", "threshold", "verdict"):
        table.add_column(column)
    for suite, verdicts in outcome.verdicts.items():
        for v in verdicts:
            style = {"reproduced": "green", "not reproduced": "red"}.get(v.verdict, "yellow")
            table.add_row(suite, v.claim, mean_pm(v.values), v.threshold, f"[{style}]{v.verdict}[/]")
    return table
