"""`lnexp reproduce SUITE` (short for `lnexp reproduce run SUITE`), `lnexp reproduce list` and
`lnexp reproduce report DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lnexp.cli._groups import fail, with_default
from lnexp.cli._options import Jobs, LauncherOptions, Plugins, Quiet, Scale, Sets, launcher_options
from lnexp.core.layouts import LAYOUTS

app = typer.Typer(cls=with_default("run"), help="Test the papers' claims and write a report, or list the "
                  "claims' suites.\n\n`lnexp reproduce SUITE ...` is `lnexp reproduce run SUITE ...`.")


def _load_plugins(plugin: list[Path]) -> None:
    """Register the suites (and layouts, norms, probes) of the --plugin files."""
    from lnexp.core.config import with_plugins

    with_plugins({}, "--plugin", extra=[str(p) for p in plugin])


@app.command(short_help="Test the papers' claims; write a report (the default command).")
@launcher_options
def run(
    suite: Annotated[str, typer.Argument(help="A claim's suite, or all; `lnexp reproduce list` lists "
                                         "them (from the suites' registry, plugins' included).")],
    scale: Annotated[Scale, typer.Option(
        help="tiny (a CPU, minutes), cpu (2 CPU cores, about an hour for all) or small (sized for one GPU, "
        "used when present).")] = Scale.tiny,
    jobs: Jobs = 1,
    pack: Annotated[int | None, typer.Option(min=1, help="Runs of one model structure trained together, "
                                             "up to this many (1: each alone; default: packs of 8 where a "
                                             "quick measurement finds them faster; docs/packing.md).",
                                             show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(help="Folder of the runs and reports (default: "
                                             "runs/reproduce-<scale>).", show_default=False)] = None,
    quiet: Quiet = False,
    set_: Sets = [],  # noqa: B006 (typer reads it)
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads per run (default: the cores "
                                                "split over --jobs).", show_default=False)] = None,
    launch: LauncherOptions = LauncherOptions(),
    plugin: Plugins = [],  # noqa: B006 (typer reads it)
    layouts: Annotated[str | None, typer.Option(help="The layouts suite's layouts, comma-separated, of "
                                                f"{', '.join(LAYOUTS)} and a plugin's (default: "
                                                "all).")] = None,
) -> None:
    """Test the papers' claims: run a SUITE and write a report with verdicts computed from its runs.

    Trains (or reuses) the suite's runs under OUT/runs/, then writes OUT/SUITE/report.md: figures and a
    verdict table (reproduced / not reproduced / inconclusive / not applicable, from the 95% interval
    of each claim's statistic over the seeds against its smallest effect; docs/reproduce.md). Finished
    runs are reused, so an interrupted reproduction resumes where it stopped; finished runs whose
    config --set changes are trained again: use another --out to keep both.
    """
    from lnexp.experiments import reproduce as reproduction
    from lnexp.experiments.sweep.tables import print_event
    from lnexp.report import console

    _load_plugins(plugin)  # before the suite's name is checked: a plugin's suites are known
    if suite not in reproduction.suite_names():
        raise fail(f"unknown suite {suite!r}; choose one of: {', '.join(reproduction.suite_names())}")
    launcher = launch.load()
    chosen = [name.strip() for name in (layouts or "").split(",") if name.strip()]
    try:
        outcome = reproduction.reproduce(
            suite, scale.value, jobs=jobs, out=out, on_event=None if quiet else print_event,
            sets=set_, threads=threads, launcher=launcher, detach=launch.detach,
            plugins=[str(p) for p in plugin], layouts=chosen, pack=pack)
    except KeyboardInterrupt:
        raise fail("interrupted; run the same command again to resume (finished runs are kept)",
                   130) from None
    if outcome.waiting:
        console.stderr.print(f"{outcome.waiting} run(s) queued or running; run the same command again to "
                             "see them, and to write the report once all are done", markup=False)
        return
    from lnexp.experiments.reproduce.report import console_table
    from lnexp.experiments.reproduce.verdicts import Tally

    stored = list(outcome.stored.values())
    console.stdout.print(console_table(stored, f"verdicts ({outcome.index})"))
    tally = Tally.of([v for s in stored for v in s.verdicts])
    console.stdout.print(" ".join(tally.sentences()), markup=False)
    for path in outcome.reports.values():
        console.stdout.print(f"wrote {path}", markup=False)
    console.stderr.print(f"{outcome.trained} run(s) trained, {outcome.reused} reused, "
                         f"{outcome.wall_s:.0f} s", markup=False)
    if outcome.failed:
        name, error = next(iter(outcome.failed.items()))
        raise fail(f"{len(outcome.failed)} run(s) failed (their verdicts lack those seeds), e.g. {name}: "
                   f"{error}", 1)


@app.command("list", short_help="The claims' suites, plugins' included.")
def list_suites(plugin: Plugins = []) -> None:  # noqa: B006 (typer reads it)
    """List the suites `lnexp reproduce SUITE` runs: the built-in ones and the --plugin files'."""
    from lnexp.experiments import reproduce as reproduction

    _load_plugins(plugin)
    for name, registered in reproduction.SUITES.items():
        typer.echo(f"{name}: {registered.title}")


@app.command("report", short_help="Print the verdict tables of a reproduction's stored verdicts.")
def report(
    folder: Annotated[Path | None, typer.Argument(
        help="A reproduction's folder (OUT of `lnexp reproduce`, or docs/results/SCALE) or one suite's.",
        show_default=False)] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Markdown tables (claims, placebos, wiring "
                                           "checks per suite), as docs/reproduce.md holds them.")] = False,
    summary: Annotated[bool, typer.Option("--summary", help="Markdown, one row per suite: its verdicts "
                                          "counted, its runs and their time.")] = False,
    refresh: Annotated[list[Path], typer.Option(help="Rewrite the generated blocks of this markdown "
                                                "file (between `<!-- lnexp reproduce report DIR -->` and "
                                                "`<!-- /lnexp reproduce report -->`) from their DIR; "
                                                "repeatable.", show_default=False)] = [],  # noqa: B006
) -> None:
    """Print the verdicts stored in FOLDER's verdicts.json files: nothing is trained or recomputed.

    The tables of README.md and docs/reproduce.md are this command's output (`--refresh FILE` writes
    them); a test checks that they equal what it prints for the committed docs/results/.
    """
    from lnexp.experiments.reproduce import report as stored_report
    from lnexp.experiments.reproduce.suites import SUITES
    from lnexp.report import console

    if folder is None and not refresh:
        raise fail("give a FOLDER of stored verdicts, or --refresh FILE")
    order = list(SUITES)
    for page in refresh:
        try:
            text = page.read_text()
        except OSError as exc:
            raise fail(f"--refresh {page}: cannot read it ({exc.strerror or exc})") from None
        page.write_text(stored_report.refresh(text, Path.cwd(), order))
        console.stderr.print(f"refreshed {page}", markup=False)
    if folder is None:
        return
    stored = stored_report.load(folder, order)
    if markdown or summary:
        typer.echo(stored_report.markdown(stored, summary=summary), nl=False)
    else:
        console.stdout.print(stored_report.console_table(stored, f"verdicts ({folder})"))
