"""`lnexp sweep CONFIG` (short for `lnexp sweep run CONFIG`) and `lnexp sweep status NAME`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lnexp.cli._groups import fail, with_default
from lnexp.cli._options import Force, Jobs, LauncherOptions, Plugins, Quiet, Sets, launcher_options
from lnexp.cli._output import notes, sweep_figures
from lnexp.core.status import FINISHED, Status

app = typer.Typer(cls=with_default("run"), help="Train a grid of configs x seeds, or show a sweep's "
                  "state.\n\n`lnexp sweep CONFIG ...` is `lnexp sweep run CONFIG ...`.")


@app.command(short_help="Train a grid of configs x seeds; table, figures (the default command).")
@launcher_options
def run(
    config: Annotated[Path, typer.Argument(help="YAML config file: the base of every cell.")],
    grid: Annotated[list[str], typer.Option("--grid", help="KEY=V1,V2,...: values of one key (repeatable; "
                                            "the cells are the cartesian product).")] = [],  # noqa: B006
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per cell: train.seed, train.seed+1, ...")] = 1,
    jobs: Jobs = 1,
    pack: Annotated[int, typer.Option(min=1, help="Cells of one model structure trained together in one "
                                      "process, up to this many (docs/packing.md).")] = 1,
    set_: Sets = [],  # noqa: B006 (typer reads it)
    name: Annotated[str | None, typer.Option(help="Sweep name: its folder is <run.dir>/<name>/ "
                                             "(default: the config's stem).", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the cells (and, with --launcher slurm, "
                                          "the batch script submitit would submit); train, submit and "
                                          "write nothing.")] = False,
    force: Force = False,
    quiet: Quiet = False,
    launch: LauncherOptions = LauncherOptions(),
    plugin: Plugins = [],  # noqa: B006 (typer reads it)
) -> None:
    """Train the cartesian product of the --grid values x --seeds, one run folder per cell.

    Cells go to <run.dir>/<name>/<cell>/ with sweep.json beside them (--set run.dir=D moves the
    sweep). Re-running the same command skips finished cells (completed or diverged), so an
    interrupted sweep resumes. Ends with a table: final validation loss mean ± std over seeds, and how
    many diverged. `lnexp sweep status NAME` shows every cell's state (and its SLURM job's) and, once
    all are done, the table.
    """
    from lnexp.core.config import config_warnings
    from lnexp.experiments import sweep as sweeps
    from lnexp.experiments.sweep import tables
    from lnexp.experiments.sweep.grid import expand
    from lnexp.experiments.sweep.state import WAITING
    from lnexp.report import console

    plan = expand(config, grid, seeds=seeds, sets=set_, name=name, jobs=jobs,
                         plugins=[str(p) for p in plugin])
    launcher = launch.load()
    warnings = dict.fromkeys(w for cell in plan.cells for w in config_warnings(cell.config))
    notes(launch.storage_warnings(launcher, plan.root), "warning")
    if dry_run:
        console.stdout.print(tables.cells_table(plan))
        if launcher is not None and launcher.kind == "slurm":
            from lnexp.experiments.sweep import slurm
            from lnexp.experiments.sweep.state import plan as unfinished

            todo = len(unfinished(plan.cells, force).todo)
            script = slurm.batch_script(launcher, plan.root, todo) if todo else \
                "# every cell is finished: nothing would be submitted\n"
            typer.echo(script, nl=False)
        return
    try:
        results = sweeps.run_sweep(plan, jobs=jobs, force=force,
                                   on_event=None if quiet else tables.print_event, launcher=launcher,
                                   detach=launch.detach, pack=pack)
    except KeyboardInterrupt:
        raise fail(f"interrupted; run the same command again to resume {plan.root}", 130) from None
    waiting = sum(r.get("status") in WAITING for r in results.values())
    if waiting:  # detached: the jobs run on
        console.stderr.print(f"{waiting} cell(s) queued or running; see them with: lnexp sweep status "
                             f"{plan.root}", markup=False, soft_wrap=True)
        return
    notes((f"{config}: {warning}" for warning in warnings), "warning")  # after the sweep's checks: one line
    console.stdout.print(tables.summary_table(plan, results))
    if not any(r.get("status") == Status.INTERRUPTED for r in results.values()):
        sweep_figures(plan.root)
    failed = [n for n, r in results.items() if r.get("status") == Status.FAILED]
    if any(r.get("status") == Status.INTERRUPTED for r in results.values()):
        raise fail(f"interrupted; run the same command again to resume {plan.root}", 130)
    if failed:
        error = str(results[failed[0]].get("error")).partition("\n")[0]  # a job's log tail: in meta.json
        raise fail(f"{len(failed)} cell(s) failed, e.g. {failed[0]}: {error}", 1)


@app.command(short_help="Every cell's state, and the table once all are done.")
def status(
    name: Annotated[str, typer.Argument(help="The sweep's name (under runs/) or folder.")],
) -> None:
    """Show every cell of the sweep NAME: its run folder's state and its SLURM job's where it was
    submitted; once all are done, the table of the sweep."""
    from lnexp.experiments.sweep import find_sweep, tables
    from lnexp.report import console

    found = find_sweep(name)
    table, states = tables.status_table(found)
    console.stdout.print(table)
    if all(s in (*FINISHED, Status.FAILED, Status.INTERRUPTED) for s in states):
        console.stdout.print(tables.summary_table(found, {}))
