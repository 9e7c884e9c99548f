"""`lnexp train CONFIG`, `lnexp train --resume RUN`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lnexp.cli._groups import fail
from lnexp.cli._options import Force, Plugins, Quiet, Sets
from lnexp.cli._output import notes
from lnexp.core.errors import LnexpError
from lnexp.core.status import Status


def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config file.")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(
        help="KEY=VALUE overrides after CONFIG, as with --set: optim.lr=3e-3 model.norm=pre.",
        show_default=False)] = None,
    set_: Sets = [],  # noqa: B006 (typer reads it)
    resume: Annotated[Path | None, typer.Option(help="Continue this run folder from its checkpoint.",
                                                show_default=False)] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the resolved config (base files, overrides and defaults "
        "applied) as YAML and exit without training.")] = False,
    force: Force = False,
    quiet: Quiet = False,
    plugin: Plugins = [],  # noqa: B006 (typer reads it)
) -> None:
    """Train one model from CONFIG and write its run folder (runs/<name>/), or --resume one.

    Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and exits with code 130.
    """
    from lnexp.core.config import config_warnings, dump_yaml, load_config
    from lnexp.report import console
    from lnexp.run.folder import retrain_name

    if (config is None) == (resume is None):
        raise fail("give a CONFIG file to train, or --resume RUN to continue a run (not both)")
    for item in overrides or []:
        if "=" not in item:
            raise fail(f"{item}: expected KEY=VALUE after CONFIG (an override, as with --set)")
    set_ = [*set_, *(overrides or [])]  # recorded in the command as --set
    if resume is not None and (set_ or print_config):
        raise fail(f"--resume continues a run with its own config; {'--set' if set_ else '--print-config'} "
                   "cannot change or show it (its config.yaml is the resolved config)")
    if print_config:
        typer.echo(dump_yaml(load_config(config, set_, [str(p) for p in plugin])), nl=False)
        return
    command = ["lnexp", "train", *([str(config)] if config else ["--resume", str(resume)]),
               *(a for s in set_ for a in ("--set", s)), *(["--force"] if force else []),
               *(["--quiet"] if quiet else []), *(a for p in plugin for a in ("--plugin", str(p)))]
    try:
        cfg = load_config(config, set_, [str(p) for p in plugin]) if config else None

        def warn() -> None:
            notes((f"{config}: {warning}" for warning in config_warnings(cfg)), "warning")

        if cfg and not force and "run.name" not in (s.partition("=")[0].strip() for s in set_):
            renamed = retrain_name(config, cfg.run.name)
            if renamed:
                console.stderr.print(f"note: {config} is the saved config of run {cfg.run.name}; "
                                     f"training it again as {renamed}", markup=False, soft_wrap=True)
                cfg.run.name = renamed
        from lnexp.run import train as training

        with console.training_progress(cfg.run.name or config.stem if cfg else resume.name, quiet,
                                       cfg.log.print_every if cfg else None) as progress:
            outcome = training.train(cfg, str(config), command, force=force, progress=progress,
                                     on_ready=warn) \
                if cfg else training.resume(resume, command, progress=progress, trust=plugin)
    except LnexpError:
        raise
    except Exception as exc:  # the run folder already says "failed" and why
        from lnexp.run.train import failure_message

        raise fail(f"training failed: {failure_message(exc)}", 1) from None
    if not outcome.main:
        return
    from lnexp.report.tensorboard import figures_to_tensorboard

    notes(figures_to_tensorboard(outcome.path))
    console.stdout.print(console.summary_table(f"{outcome.path}: {outcome.status}", outcome.summary))
    console.stdout.print(console.training_profile(outcome.path))
    if outcome.status == Status.DIVERGED:
        console.stdout.print(f"diverged at step {outcome.summary['diverged_step']} "
                             "(recorded as a result; see metrics.jsonl)")
    if outcome.status == Status.INTERRUPTED:
        console.stderr.print(f"interrupted after step {outcome.summary['steps_done']}; "
                             f"continue with: lnexp train --resume {outcome.path}")
        raise typer.Exit(130)
