"""The commands that read finished runs: `lnexp compare`, `plot`, `export`, `runs`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lnexp.cli._groups import fail
from lnexp.cli._options import (
    ExportFormat,
    FigureFile,
    Format,
    ImageFormat,
    Json,
    LossUnitOption,
    Metric,
    Unit,
)
from lnexp.cli._output import notes, sweep_figures
from lnexp.core.probe_kinds import row_titles


def compare(
    runs: Annotated[list[str], typer.Argument(help="Run folders, or globs (quoted: lnexp expands them).")],
    all_: Annotated[bool, typer.Option("--all", help="Every config key, not only the differing.")] = False,
    probe: Annotated[str, typer.Option(help="Per-layer profile of: " + ", ".join(
        f"{name} ({title})" for name, title in row_titles().items()) + "; or a probe the runs logged (a "
        "plugin's, by name).")] = "grad",
    param: Annotated[str | None, typer.Option(
        help="Weight role of a per-weight profile (attn.q, ..., ffn.fc2; default ffn.fc2), or all: a "
             "layer's combined norm. rank: resid|attn|cross|ffn.erank|pr|aniso (default resid.erank); "
             "sensitivity: dloss_dx (default) or noise_loss_change.")] = None,
    at: Annotated[str, typer.Option(help="Step of the profile: a number (0 = initialisation; else the "
                                    "nearest logged step) or last.")] = "0",
    json_: Json = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print markdown tables, for a "
                                           "report.")] = False,
    plot: FigureFile = None,
    log_loss: Annotated[bool, typer.Option("--log-loss", help="Log-scale loss axis in the figure.")] = False,
    group_by: Annotated[list[str], typer.Option(
        "--group-by", help="Aggregate the runs that share this config key's value (repeatable), e.g. "
        "the seeds of a sweep cell: mean ± std in the tables, mean and min-max band in the "
        "figure.")] = [],  # noqa: B006 (typer reads it)
    metric: Annotated[Metric, typer.Option(help="The figure's curves: loss, or a translation score that "
                                           "train.eval_bleu_every logged.")] = Metric.loss,
    unit: LossUnitOption = Unit.nats,
) -> None:
    """Put runs side by side: the config keys that differ, the outcome, a per-layer profile."""
    from lnexp.report import compare as comparison
    from lnexp.report import console

    if at != "last" and not at.isdigit():
        raise fail(f"--at: must be a step number or 'last', got {at!r}")
    if json_ and markdown:
        raise fail("--json and --markdown: choose one")
    if metric is not Metric.loss and plot is None:
        raise fail("--metric: chooses the curves of the figure; give --plot FILE")
    loaded, found = comparison.load_runs(runs)  # never their plugins: a run folder is data
    if not loaded:
        raise fail("nothing to compare: " + "; ".join(found))
    choices = comparison.probe_choices(loaded)
    if probe not in choices:
        raise fail(f"--probe: must be one of {', '.join(choices)}, got {probe!r}")
    param = param or comparison.profile_param(loaded, probe)

    c = comparison.build(loaded, probe=probe, param=param, at="last" if at == "last" else int(at),
                         all_keys=all_, notes=found, group_by=group_by, unit=unit.value)
    if plot is not None and metric is Metric.loss and c.loss_unit is None:
        from lnexp.report.units import loss_units

        loss_units(c.runs)  # raises: runs in different units on one axis, before anything is printed
    score = metric.value
    if metric is not Metric.loss and not any(m.get(score) is not None for run in loaded for m in run.metrics):
        c.notes.append(f"no run logged {score} (train.eval_bleu_every logs it, on encoder-decoder runs)")
    notes(c.notes)
    if json_:
        typer.echo(comparison.to_json(c))
    elif markdown:
        typer.echo(comparison.markdown(c), nl=False)
    else:
        for table in comparison.tables(c, console.stdout.width):
            console.stdout.print(table)
    if plot is not None:
        from lnexp.report import plots

        try:
            written = plots.compare_figure(c, plot, log_loss=log_loss, metric=score)
        except OSError as exc:
            raise fail(f"{plot}: {exc.strerror or exc}") from None
        console.stderr.print(f"wrote {written}", markup=False, soft_wrap=True)


def plot(
    run: Annotated[Path, typer.Argument(help="Run folder, or a sweep's folder.")],
    format_: Format = ImageFormat.png,
    skip_init: Annotated[bool, typer.Option("--skip-init", help="Leave step 0 out of the gradient "
                                            "heatmap (its initial gradients can take up the colour "
                                            "scale).")] = False,
    unit: LossUnitOption = Unit.nats,
) -> None:
    """Write figures for one RUN into RUN/plots/ and print their paths.

    Loss and lr curves, gradient-norm heatmaps (layer x step) and profiles, residual-stream norms.
    For a sweep's folder: the final validation loss against the first numeric grid key and, for a
    grid over optim.lr and model.n_layers, the stability map."""
    from lnexp.run.reader import is_run, load_run

    if (run / "sweep.json").exists() and not is_run(run):
        sweep_figures(run, f".{format_.value}", unit.value)
        return
    loaded = load_run(run)
    from lnexp.report import plots

    try:
        paths, found = plots.run_figures(loaded, run / "plots", suffix=f".{format_.value}",
                                         skip_init=skip_init, unit=unit.value)
    except OSError as exc:
        raise fail(f"{run / 'plots'}: {exc.strerror or exc}") from None
    notes(loaded.notes + found)
    if not paths:
        raise fail(f"{run}: nothing to plot (no metrics or probes logged yet)")
    for path in paths:
        typer.echo(str(path))


def export(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, or folders of them (a sweep, runs/).")],
    to: Annotated[ExportFormat, typer.Option(help="tensorboard: event files in RUN/tb/; wandb: a W&B run in "
                                             "RUN/wandb/, offline unless log.wandb.mode or WANDB_MODE "
                                             "says online.")] = ExportFormat.tensorboard,
) -> None:
    """Write TensorBoard event files, or a W&B run, for existing runs, as a run with log.tensorboard or
    log.wandb writes them: `tensorboard --logdir runs/`, or `wandb sync` the offline runs.

    The same scalars, config and final metrics; RUN/tb/ or RUN/wandb/ is replaced."""
    from lnexp.run import sinks

    written, found = sinks.export(runs, to.value)
    if to is ExportFormat.tensorboard:
        from lnexp.report.tensorboard import figures_to_tensorboard

        found += [note for path in written for note in figures_to_tensorboard(path.parent)]
    notes(found)
    for path in written:
        typer.echo(str(path))
    if not written:
        raise fail("nothing exported")
    offline = [str(p) for path in written for p in sorted(path.glob("wandb/offline-run-*"))]
    if offline:
        notes([f"upload with: wandb sync {' '.join(offline)}"])


def list_runs(
    directory: Annotated[Path, typer.Argument(help="Folder of run folders.")] = Path("runs"),
) -> None:
    """List the runs under DIRECTORY (default runs/), newest first, to find what to compare."""
    from lnexp.report import compare as comparison
    from lnexp.report import console

    if not directory.is_dir():
        raise fail(f"{directory}: no such folder")
    found = comparison.find_runs(directory)
    if not found:
        console.stderr.print(f"no runs in {directory}", markup=False, soft_wrap=True)
        return
    notes(f"{run.path}: {note}" for run in found for note in run.notes)
    console.stdout.print(comparison.runs_table(found, directory, console.stdout.width))
