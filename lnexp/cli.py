"""The `lnexp` command line: one function per command, argument handling only.

Heavy modules (torch) are imported inside the commands that need them, so `lnexp --help` is fast.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from typer._click import exceptions as usage  # typer's own click, whose errors its parser raises

from lnexp.core.errors import LnexpError
from lnexp.core.layouts import LAYOUTS
from lnexp.core.probe_kinds import row_titles


class OneLineErrors(typer.core.TyperGroup):
    """Typer's own checks of the command line (a value not among an option's choices, a number out of
    range, a missing argument) end in one line, `error: ...`, exit code 2, as lnexp's do."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except usage.NoArgsIsHelpError as exc:  # `lnexp` alone: the help
            exc.show()
            sys.exit(exc.exit_code)
        except usage.UsageError as exc:
            typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except usage.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(help="Where should LayerNorm sit in a Transformer? Train, measure, compare.",
                  cls=OneLineErrors, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})


class ImageFormat(str, Enum):
    """What matplotlib writes a figure as."""

    png = "png"
    svg = "svg"
    pdf = "pdf"


class TranslateStrategy(str, Enum):
    greedy = "greedy"
    beam = "beam"


# Options several commands share, defined once.
Plugins = Annotated[list[Path], typer.Option(
    "--plugin", help="A Python file whose layouts, norms, probes and suites register, like the built-in "
    "ones (repeatable; see docs/plugins.md).", show_default=False)]


def fail(message: str, code: int = 2) -> LnexpError:
    """A bad option or argument, or any ending that is one line: raised, it reaches the handler."""
    error = LnexpError(message)
    error.exit_code = code
    return error


def command(*args: Any, **kwargs: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """`app.command`, with the one error handler: an LnexpError (bad input, an unusable run folder:
    ConfigError, RunError, DecodeError, ...) ends the command with `error: <message>` on stderr and
    its exit code, and Ctrl-C with exit code 130, never a traceback."""
    def register(function: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(function)
        def handled(*call_args: Any, **call_kwargs: Any) -> None:
            try:
                function(*call_args, **call_kwargs)
            except LnexpError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(exc.exit_code) from None
            except KeyboardInterrupt:
                typer.echo("error: interrupted", err=True)
                raise typer.Exit(130) from None
        return app.command(*args, **kwargs)(handled)
    return register


@command(short_help="Train a model from a config, or resume a run.")
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config file.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a key: --set optim.lr=3e-3 "
                                            "(repeatable).")] = [],  # noqa: B006 (typer reads it)
    resume: Annotated[Path | None, typer.Option(help="Continue this run folder from its checkpoint.",
                                                show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing run folder of the same "
                                        "name.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    plugin: Plugins = [],  # noqa: B006 (typer reads it)
) -> None:
    """Train one model from CONFIG and write its run folder (runs/<name>/), or --resume one.

    Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and exits with code 130.
    """
    from lnexp.core.config import config_warnings, load_config
    from lnexp.report import console
    from lnexp.run.folder import retrain_name

    if (config is None) == (resume is None):
        raise fail("give a CONFIG file to train, or --resume RUN to continue a run (not both)")
    if resume is not None and set_:
        raise fail("--resume continues a run with its own config; --set cannot change it")
    command = ["lnexp", "train", *([str(config)] if config else ["--resume", str(resume)]),
               *(a for s in set_ for a in ("--set", s)), *(["--force"] if force else []),
               *(["--quiet"] if quiet else []), *(a for p in plugin for a in ("--plugin", str(p)))]
    try:
        cfg = load_config(config, set_, [str(p) for p in plugin]) if config else None

        def warn() -> None:
            for warning in config_warnings(cfg):
                console.stderr.print(f"warning: {config}: {warning}", markup=False, soft_wrap=True)

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
                if cfg else training.resume(resume, command, progress=progress)
    except LnexpError:
        raise
    except Exception as exc:  # the run folder already says "failed" and why
        from lnexp.run.train import failure_message

        raise fail(f"training failed: {failure_message(exc)}", 1) from None
    if not outcome.main:
        return
    console.stdout.print(console.summary_table(f"{outcome.path}: {outcome.status}", outcome.summary))
    console.stdout.print(console.training_profile(outcome.path))
    if outcome.status == "diverged":
        console.stdout.print(f"diverged at step {outcome.summary['diverged_step']} "
                             "(recorded as a result; see metrics.jsonl)")
    if outcome.status == "interrupted":
        console.stderr.print(f"interrupted after step {outcome.summary['steps_done']}; "
                             f"continue with: lnexp train --resume {outcome.path}")
        raise typer.Exit(130)


@command(short_help="Put runs side by side: config, outcome, profile.")
def compare(
    runs: Annotated[list[str], typer.Argument(help="Run folders, or globs (quoted: lnexp expands them).")],
    all_: Annotated[bool, typer.Option("--all", help="Every config key, not only the differing.")] = False,
    probe: Annotated[str, typer.Option(help="Per-layer profile of: " + ", ".join(
        f"{name} ({title})" for name, title in row_titles().items()) + "; or a plugin's.")] = "grad",
    param: Annotated[str | None, typer.Option(
        help="Weight role of a per-weight profile (attn.q, ..., ffn.fc2; default ffn.fc2), or all: a "
             "layer's combined norm. rank: resid|attn|cross|ffn.erank|pr|aniso (default resid.erank); "
             "sensitivity: dloss_dx (default) or noise_loss_change.")] = None,
    at: Annotated[str, typer.Option(help="Step of the profile: a number (0 = initialisation; else the "
                                    "nearest logged step) or last.")] = "0",
    json_: Annotated[bool, typer.Option("--json", help="Print the data as JSON, for scripts.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print markdown tables, for a "
                                           "report.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also write a figure: FILE.png, .svg or .pdf.")] = None,
    log_loss: Annotated[bool, typer.Option("--log-loss", help="Log-scale loss axis in the figure.")] = False,
    group_by: Annotated[list[str], typer.Option(
        "--group-by", help="Aggregate the runs that share this config key's value (repeatable), e.g. "
        "the seeds of a sweep cell: mean ± std in the tables, mean and min-max band in the "
        "figure.")] = [],  # noqa: B006 (typer reads it)
    metric: Annotated[str, typer.Option(help="The figure's curves: loss, or a translation score that "
                                        "train.eval_bleu_every logged: bleu, chrf, exact_match.")] = "loss",
) -> None:
    """Put runs side by side: the config keys that differ, the outcome, a per-layer profile."""
    from lnexp.core.probe_kinds import default_param
    from lnexp.report import compare as comparison
    from lnexp.report import console

    if at != "last" and not at.isdigit():
        raise fail(f"--at: must be a step number or 'last', got {at!r}")
    if json_ and markdown:
        raise fail("--json and --markdown: choose one")
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise fail(f"--plot {plot}: must end in .png, .svg or .pdf")
    if metric not in ("loss", "bleu", "chrf", "exact_match"):
        raise fail(f"--metric: must be one of loss, bleu, chrf, exact_match, got {metric!r}")
    if metric != "loss" and plot is None:
        raise fail("--metric: chooses the curves of the figure; give --plot FILE")
    loaded, notes = comparison.load_runs(runs)  # and their plugins' probes
    if not loaded:
        raise fail("nothing to compare: " + "; ".join(notes))
    if probe not in row_titles():
        raise fail(f"--probe: must be one of {', '.join(row_titles())}, got {probe!r}")
    param = param or default_param(probe)

    c = comparison.build(loaded, probe, param, "last" if at == "last" else int(at), all_, notes, group_by)
    if metric != "loss" and not any(m.get(metric) is not None for run in loaded for m in run.metrics):
        c.notes.append(f"no run logged {metric} (train.eval_bleu_every logs it, on encoder-decoder runs)")
    for note in c.notes:
        console.stderr.print(f"note: {note}", markup=False, soft_wrap=True)
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
            written = plots.compare_figure(c, plot, log_loss, metric)
        except OSError as exc:
            raise fail(f"{plot}: {exc.strerror or exc}") from None
        console.stderr.print(f"wrote {written}", markup=False, soft_wrap=True)


@command(short_help="Write a run's or a sweep's figures.")
def plot(
    run: Annotated[Path, typer.Argument(help="Run folder, or a sweep's folder.")],
    format_: Annotated[ImageFormat, typer.Option("--format", help="The figures' file format.")] = \
        ImageFormat.png,
    skip_init: Annotated[bool, typer.Option("--skip-init", help="Leave step 0 out of the gradient "
                                            "heatmap (its initial gradients can take up the colour "
                                            "scale).")] = False,
) -> None:
    """Write figures for one RUN into RUN/plots/ and print their paths.

    Loss and lr curves, gradient-norm heatmaps (layer x step) and profiles, residual-stream norms.
    For a sweep's folder: the final validation loss against the first numeric grid key and, for a
    grid over optim.lr and model.n_layers, the stability map."""
    from lnexp.report import console
    from lnexp.run.reader import is_run, load_run

    if (run / "sweep.json").exists() and not is_run(run):
        _sweep_figures(run, f".{format_.value}")
        return
    loaded = load_run(run)
    from lnexp.report import plots

    try:
        paths, notes = plots.run_figures(loaded, run / "plots", f".{format_.value}", skip_init)
    except OSError as exc:
        raise fail(f"{run / 'plots'}: {exc.strerror or exc}") from None
    for note in loaded.notes + notes:
        console.stderr.print(f"note: {note}", markup=False, soft_wrap=True)
    if not paths:
        raise fail(f"{run}: nothing to plot (no metrics or probes logged yet)")
    for path in paths:
        typer.echo(str(path))


@command(short_help="Write TensorBoard files for existing runs.")
def export(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, or folders of them (a sweep, runs/).")],
    to: Annotated[str, typer.Option(help="Format: tensorboard (event files in RUN/tb/).")] = "tensorboard",
) -> None:
    """Write TensorBoard event files for existing runs, so `tensorboard --logdir runs/` shows them.

    The same scalars and HParams as a run with log.tensorboard: true; RUN/tb/ is replaced."""
    from lnexp.report import console
    from lnexp.run import sinks

    written, notes = sinks.export(runs, to)
    for note in notes:
        console.stderr.print(f"note: {note}", markup=False, soft_wrap=True)
    for path in written:
        typer.echo(str(path))
    if not written:
        raise fail("nothing exported")


def _sweep_figures(root: Path, suffix: str = ".png") -> None:
    """Write a sweep's figures and print their paths (stdout), its notes (stderr)."""
    from lnexp.experiments.sweep.figures import sweep_figures
    from lnexp.report import console

    try:
        paths, notes = sweep_figures(root, suffix)
    except OSError as exc:
        raise fail(f"{root / 'plots'}: {exc.strerror or exc}") from None
    for note in notes:
        console.stderr.print(f"note: {note}", markup=False, soft_wrap=True)
    for path in paths:
        typer.echo(str(path))


@command("runs", short_help="List the runs in a folder, newest first.")
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
    for run in found:
        for note in run.notes:
            console.stderr.print(f"note: {run.path}: {note}", markup=False, soft_wrap=True)
    console.stdout.print(comparison.runs_table(found, directory, console.stdout.width))


# Where sweep and reproduce cells run (lnexp.experiments.sweep.slurm): the same options on both commands.
LauncherKind = Annotated[str | None, typer.Option("--launcher", help="local (this machine, --jobs at once; "
                                                  "one GPU per worker) or slurm (one job per cell, a job "
                                                  "array, through submitit).", show_default=False)]
LauncherConfig = Annotated[Path | None, typer.Option("--launcher-config", help="YAML file with a launcher: "
                                                     "block (kind, partition, gpus_per_cell, ...); the "
                                                     "options below override it.", show_default=False)]
Partition = Annotated[str | None, typer.Option(help="slurm: partition.", show_default=False)]
GpusPerCell = Annotated[int | None, typer.Option(help="slurm: GPUs per job (default 1).", show_default=False)]
CpusPerCell = Annotated[int | None, typer.Option(help="slurm: CPUs per job (also the run's threads).",
                                                 show_default=False)]
Mem = Annotated[str | None, typer.Option(help="slurm: memory per job, e.g. 32G.", show_default=False)]
Time = Annotated[str | None, typer.Option("--time", help="slurm: time limit per job, minutes or H:MM:SS "
                                          "(default 60); a job past it checkpoints and is requeued.",
                                          show_default=False)]
Slurm = Annotated[list[str], typer.Option("--slurm", help="slurm: any other sbatch option, K=V (repeatable): "
                                          "--slurm account=proj --slurm qos=high.")]
Detach = Annotated[bool, typer.Option("--detach", help="slurm: submit and return; run the same command "
                                      "again (or lnexp sweep status) to see and collect the cells.")]


def _launcher(kind: str | None, file: Path | None, partition: str | None, gpus: int | None,
              cpus: int | None, mem: str | None, time: str | None, slurm: list[str]):
    """The launcher from --launcher-config and the options (None: the local pool); ConfigError on bad
    input."""
    from lnexp.experiments.sweep import slurm as launch

    options = {"kind": kind, "partition": partition, "gpus_per_cell": gpus, "cpus_per_cell": cpus,
               "mem": mem, "time": time, "slurm": launch.parse_slurm(slurm)}
    return launch.load_launcher(file, options) if file or any(options.values()) else None


@command(short_help="Train a grid of configs x seeds; table, figures.")
def sweep(
    config: Annotated[Path, typer.Argument(help="YAML config file: the base of every cell; or `status`, "
                                           "then the sweep's NAME or folder.")],
    status_of: Annotated[str | None, typer.Argument(metavar="[NAME]", help="With `status`: the sweep.",
                                                    show_default=False)] = None,
    grid: Annotated[list[str], typer.Option("--grid", help="KEY=V1,V2,...: values of one key (repeatable; "
                                            "the cells are the cartesian product).")] = [],  # noqa: B006
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per cell: train.seed, train.seed+1, ...")] = 1,
    jobs: Annotated[int, typer.Option(min=1, help="Cells trained at once, in worker processes that "
                                      "split the CPU threads.")] = 1,
    pack: Annotated[int, typer.Option(min=1, help="Cells of one model structure trained together in one "
                                      "process, up to this many (docs/packing.md).")] = 1,
    set_: Annotated[list[str], typer.Option("--set", help="Override a key in every cell; --set run.dir=D "
                                            "moves the sweep (repeatable).")] = [],  # noqa: B006
    name: Annotated[str | None, typer.Option(help="Sweep name: its folder is <run.dir>/<name>/ "
                                             "(default: the config's stem).", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the cells; train and write "
                                          "nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Train finished cells again (replacing their "
                                        "folders).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No line per cell on stderr.")] = False,
    launcher: LauncherKind = None,
    launcher_config: LauncherConfig = None,
    partition: Partition = None,
    gpus_per_cell: GpusPerCell = None,
    cpus_per_cell: CpusPerCell = None,
    mem: Mem = None,
    time: Time = None,
    slurm: Slurm = [],  # noqa: B006 (typer reads it)
    detach: Detach = False,
    plugin: Plugins = [],  # noqa: B006 (typer reads it)
) -> None:
    """Train the cartesian product of the --grid values x --seeds, one run folder per cell.

    Cells go to <run.dir>/<name>/<cell>/ with sweep.json beside them. Re-running the same command
    skips finished cells (completed or diverged), so an interrupted sweep resumes. Ends with a table:
    final validation loss mean ± std over seeds, and how many diverged. `lnexp sweep status NAME`
    shows every cell's state (and its SLURM job's) and, once all are done, the table.
    """
    from lnexp.core.config import config_warnings
    from lnexp.experiments import sweep as sweeps
    from lnexp.experiments.sweep import tables as sweep_tables
    from lnexp.experiments.sweep.grid import expand
    from lnexp.report import console

    if str(config) == "status" and not config.exists():
        if status_of is None:
            raise fail("lnexp sweep status NAME: give the sweep's name or folder")
        found = sweeps.find_sweep(status_of)
        table, states = sweep_tables.status_table(found)
        console.stdout.print(table)
        if all(s in ("completed", "diverged", "failed", "interrupted") for s in states):
            console.stdout.print(sweep_tables.summary_table(found, {}))
        return
    if status_of is not None:
        raise fail(f"unexpected argument {status_of!r} (only `lnexp sweep status NAME` takes a second one)")
    plan = expand(config, grid, seeds, set_, name, jobs, [str(p) for p in plugin])
    launch = _launcher(launcher, launcher_config, partition, gpus_per_cell, cpus_per_cell, mem, time,
                       slurm)
    warnings = dict.fromkeys(w for cell in plan.cells for w in config_warnings(cell.config))
    if dry_run:
        console.stdout.print(sweep_tables.cells_table(plan))
        return
    try:
        results = sweeps.run_sweep(plan, jobs, force, None if quiet else sweep_tables.print_event, launch,
                                   detach, pack)
    except KeyboardInterrupt:
        raise fail(f"interrupted; run the same command again to resume {plan.root}", 130) from None
    waiting = sum(r.get("status") in ("queued", "running", "requeued") for r in results.values())
    if waiting:  # detached: the jobs run on
        console.stderr.print(f"{waiting} cell(s) queued or running; see them with: lnexp sweep status "
                             f"{plan.root}", markup=False, soft_wrap=True)
        return
    for warning in warnings:  # after the sweep's checks, so that an error stays one line
        console.stderr.print(f"warning: {config}: {warning}", markup=False, soft_wrap=True)
    console.stdout.print(sweep_tables.summary_table(plan, results))
    if not any(r.get("status") == "interrupted" for r in results.values()):
        _sweep_figures(plan.root)
    failed = [n for n, r in results.items() if r.get("status") == "failed"]
    if any(r.get("status") == "interrupted" for r in results.values()):
        raise fail(f"interrupted; run the same command again to resume {plan.root}", 130)
    if failed:
        error = str(results[failed[0]].get("error")).partition("\n")[0]  # a job's log tail: in meta.json
        raise fail(f"{len(failed)} cell(s) failed, e.g. {failed[0]}: {error}", 1)


@command(short_help="Continue a prompt with a trained model.")
def generate(
    run: Annotated[Path, typer.Argument(help="Run folder (with model.pt).")],
    prompt: Annotated[str, typer.Option(help="Text to continue (in the run's tokens: UTF-8 bytes, or its "
                                        "tokenizer.json's).",
                                        show_default=False)],
    strategy: Annotated[str, typer.Option(help="greedy (argmax), sample (multinomial from the softmax), "
                                          "top-k, top-p (nucleus) or beam.")] = "greedy",
    n: Annotated[int, typer.Option("--n", help="Samples to draw (sample, top-k, top-p), or best "
                                   "hypotheses to return (beam, at most --beams); greedy gives one.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per output.")] = 100,
    temperature: Annotated[float, typer.Option(help="Divides the logits before sampling (sample, "
                                               "top-k, top-p).")] = 1.0,
    k: Annotated[int, typer.Option("--k", help="top-k: sample among the k most probable tokens.")] = 40,
    p: Annotated[float, typer.Option("--p", help="top-p: sample in the smallest set of tokens with "
                                     "probability >= p.")] = 0.9,
    beams: Annotated[int, typer.Option(help="beam: hypotheses kept at each step.")] = 4,
    length_penalty: Annotated[float, typer.Option(help="beam: alpha of GNMT's ((5+L)/6)^alpha; acts "
                                                  "when hypotheses differ in length (--stop).")] = 0.6,
    stop: Annotated[str | None, typer.Option(help="End an output once it ends with this text "
                                             "(included).", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampling generator.")] = 0,
    json_: Annotated[bool, typer.Option("--json", help="Per output: text, token ids and joint "
                                        "log-probability, as JSON.")] = False,
    threads: Annotated[int, typer.Option(help="CPU threads. A token a step makes small matrix products: "
                                         "more threads rarely pay, and spin on a busy machine.")] = 1,
) -> None:
    """Continue --prompt with the model of RUN and print the generated text.

    Joint log-probabilities are under the untempered model. Keys and values are cached (cost per
    token linear in length); past model.max_seq_len tokens the context is a sliding window.
    """
    import json

    import torch

    from lnexp.decode import search as dec
    from lnexp.report import decoding
    from lnexp.run.trained import load_model

    if threads < 1:
        raise fail(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    dec.check_settings(strategy, n=n, max_new_tokens=max_new_tokens, temperature=temperature, k=k,
                       p=p, beams=beams, alpha=length_penalty, seed=seed)
    if not prompt:
        raise dec.DecodeError("--prompt is empty")
    if stop == "":
        raise dec.DecodeError("--stop is empty")
    loaded = load_model(run)
    prompt_ids = dec.encode(loaded.tokenizer, prompt, "--prompt")
    stop_ids = dec.encode(loaded.tokenizer, stop, "--stop") if stop else []
    outputs = dec.decode(loaded.model, prompt_ids, strategy, n=n, max_new_tokens=max_new_tokens,
                         temperature=temperature, k=k, p=p, beams=beams, alpha=length_penalty,
                         seed=seed, stop=stop_ids)
    if json_:
        typer.echo(json.dumps(decoding.generation_record(
            run, loaded, prompt, prompt_ids, strategy, outputs, max_new_tokens=max_new_tokens, seed=seed,
            stop=stop, temperature=temperature, k=k, p=p, beams=beams, length_penalty=length_penalty),
            indent=2))
        return
    for i, out in enumerate(outputs):
        if len(outputs) > 1:
            score = f", score {out.score:.4g}" if out.score is not None else ""
            typer.echo(f"--- {i + 1}/{len(outputs)} (log p {out.logprob:.4g}{score}) ---")
        typer.echo(dec.printable(loaded.tokenizer.decode(out.ids)))


@command("decode-stats", short_help="Compare decoding strategies on the same prompts.")
def decode_stats(
    run: Annotated[Path, typer.Argument(help="Run folder (with model.pt).")],
    prompts: Annotated[Path | None, typer.Option(help="Text file, one prompt per line (default: "
                                                 "beginnings of Python code for a run on the stdlib, else "
                                                 "beginnings of lines of the run's validation text).",
                                                 show_default=False)] = None,
    n: Annotated[int, typer.Option("--n", help="Samples per prompt for sample, top-k and top-p.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per output.")] = 64,
    temperature: Annotated[float, typer.Option(help="Temperature of the samplers.")] = 1.0,
    k: Annotated[int, typer.Option("--k", help="k of top-k.")] = 40,
    p: Annotated[float, typer.Option("--p", help="p of top-p.")] = 0.9,
    beams: Annotated[int, typer.Option(help="Beams of beam search (its best hypothesis counts).")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the samplers (prompt i uses seed + i).")] = 0,
    json_: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Figure file, .png, .svg or .pdf (default: "
                                              "RUN/plots/decode-stats.png).", show_default=False)] = None,
    threads: Annotated[int, typer.Option(help="CPU threads. A token a step makes small matrix products: "
                                         "more threads rarely pay, and spin on a busy machine.")] = 1,
) -> None:
    """Compare greedy, sample, top-k, top-p and beam on the same prompts: log-probability per token and
    joint, distinct-1/2, repetition, next-token entropy; a table and a figure."""
    import json
    from contextlib import nullcontext

    import torch

    from lnexp.decode import search as dec
    from lnexp.decode import stats as decode_stats_
    from lnexp.report import console, decoding
    from lnexp.run.trained import load_model

    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise fail(f"--plot {plot}: must end in .png, .svg or .pdf")
    if threads < 1:
        raise fail(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    for strategy in dec.STRATEGIES:
        dec.check_settings(strategy, n=1, max_new_tokens=max_new_tokens, temperature=temperature,
                           k=k, p=p, beams=beams, seed=seed)
    if n < 1:
        raise dec.DecodeError(f"--n must be >= 1, got {n}")
    if prompts is not None:
        from lnexp.core.files import CONFIG_LIMIT, FileProblem, read_regular

        try:
            lines = read_regular(prompts, CONFIG_LIMIT).decode("utf-8").splitlines()
        except (FileProblem, UnicodeDecodeError) as exc:
            why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc
            raise dec.DecodeError(f"{prompts}: cannot read ({why})") from None
        texts = [line for line in lines if line.strip()]
        if not texts:
            raise dec.DecodeError(f"{prompts}: no prompts (one per line)")
    loaded = load_model(run)
    model = loaded.model
    ids = [dec.encode(loaded.tokenizer, t, str(prompts)) for t in texts] if prompts is not None else \
        decode_stats_.default_prompts(loaded, seed)
    for prompt in ids:
        dec.check_prompt(prompt, model.vocab_size)
    spinner = console.stderr.status("decoding") if console.stderr.is_terminal else nullcontext()
    with spinner as status:
        rows = decode_stats_.decode_stats(model, ids, n=n, max_new_tokens=max_new_tokens,
                                temperature=temperature, k=k, p=p, beams=beams, seed=seed,
                                on_strategy=status and (lambda s: status.update(f"decoding: {s}")))
    better, total = decode_stats_.beam_vs_greedy(rows)
    figure = plot or run / "plots" / "decode-stats.png"
    try:
        decoding.plot_decode_stats(rows, figure, f"{run.name}: decoding strategies, {total} prompts, "
                              f"{max_new_tokens} tokens")
    except OSError as exc:
        raise fail(f"{figure}: {exc.strerror or exc}") from None
    if json_:
        typer.echo(json.dumps(decoding.stats_record(run, loaded, ids, rows, figure, n=n,
                                               max_new_tokens=max_new_tokens, seed=seed), indent=2))
        return
    console.stdout.print(decoding.stats_table(f"{run}: {total} prompts x {max_new_tokens} tokens", rows))
    typer.echo(f"beam's joint log p >= greedy's on {better} of {total} prompts")
    typer.echo(f"wrote {figure}", err=True)


@command(short_help="Translate with an encoder-decoder run, or score it.")
def translate(
    run: Annotated[Path, typer.Argument(help="Encoder-decoder run folder (with model.pt).")],
    text: Annotated[str | None, typer.Option(help="A source to translate.", show_default=False)] = None,
    input_: Annotated[Path | None, typer.Option("--input", help="A file of sources, one per line.",
                                                show_default=False)] = None,
    eval_: Annotated[bool, typer.Option("--eval", help="Score the run's validation pairs: BLEU, chrF "
                                        "(sacrebleu) and exact match.")] = False,
    n: Annotated[int, typer.Option("--n", help="--eval: validation pairs scored.")] = 100,
    strategy: Annotated[TranslateStrategy, typer.Option(help="Decoding.")] = TranslateStrategy.greedy,
    beams: Annotated[int, typer.Option(help="beam: hypotheses kept at each step.")] = 4,
    length_penalty: Annotated[float, typer.Option(help="beam: alpha of GNMT's ((5+L)/6)^alpha.")] = 0.6,
    max_new_tokens: Annotated[int | None, typer.Option(help="Longest translation, in tokens (default: "
                                                       "train.seq_len).", show_default=False)] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    threads: Annotated[int, typer.Option(help="CPU threads.")] = 1,
) -> None:
    """Translate --text or --input FILE with the encoder-decoder of RUN, or score it with --eval.

    Sources and translations go through the run's tokenizer. --eval prints corpus BLEU and chrF of its
    translations of the run's first --n validation pairs, and the share translated exactly.
    """
    import json

    import torch

    from lnexp.decode import search as dec
    from lnexp.decode import translate as translation
    from lnexp.run.trained import load_model

    if sum((text is not None, input_ is not None, eval_)) != 1:
        raise fail("give one of --text, --input FILE or --eval")
    if threads < 1:
        raise fail(f"--threads must be >= 1, got {threads}")
    if n < 1:
        raise fail(f"--n must be >= 1, got {n}")
    torch.set_num_threads(threads)
    strategy = strategy.value
    dec.check_settings(strategy, beams=beams, alpha=length_penalty, max_new_tokens=max_new_tokens or 1)
    sources = translation.read_sources(input_) if input_ is not None else [text] if text is not None \
        else []
    loaded = load_model(run, arch="encoder_decoder")
    if eval_:
        result = translation.evaluate_run(run, loaded, n, strategy, beams, length_penalty)
    else:
        result = {"translations": translation.translate_texts(loaded, sources, strategy, beams,
                                                              length_penalty, max_new_tokens)}
    if json_:
        typer.echo(json.dumps({"run": str(run), "strategy": strategy, **result}, indent=2))
    elif eval_:
        typer.echo(f"{run}: {result['pairs']} validation pairs, {strategy}: BLEU {result['bleu']:.2f}  "
                   f"chrF {result['chrf']:.2f}  exact match {result['exact_match']:.1%}")
    else:
        for line in result["translations"]:
            typer.echo(dec.printable(line))


@command(short_help="Test the papers' claims; write a report.")
def reproduce(
    suite: Annotated[str, typer.Argument(help="A claim's suite, or all; `lnexp reproduce list` lists "
                                         "them (from the suites' registry, plugins' included).")],
    scale: Annotated[str, typer.Option(help="tiny (a CPU, minutes), cpu (2 CPU cores, about an hour for "
                                       "all) or small (sized for one GPU, used when present).")] = "tiny",
    jobs: Annotated[int, typer.Option(min=1, help="Runs trained at once, in worker processes that split "
                                      "the CPU threads.")] = 1,
    pack: Annotated[int | None, typer.Option(min=1, help="Runs of one model structure trained together, "
                                             "up to this many (1: each alone; default: packs of 8 where a "
                                             "quick measurement finds them faster; docs/packing.md).",
                                             show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(help="Folder of the runs and reports (default: "
                                             "runs/reproduce-<scale>).", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No line per run on stderr.")] = False,
    set_: Annotated[list[str], typer.Option("--set", help="Override a key in every run: --set "
                                            "train.device=cuda (repeatable). Finished runs with another "
                                            "config are trained again: use another --out to keep "
                                            "both.")] = [],  # noqa: B006 (typer reads it)
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads per run (default: the cores "
                                                "split over --jobs).", show_default=False)] = None,
    launcher: LauncherKind = None,
    launcher_config: LauncherConfig = None,
    partition: Partition = None,
    gpus_per_cell: GpusPerCell = None,
    cpus_per_cell: CpusPerCell = None,
    mem: Mem = None,
    time: Time = None,
    slurm: Slurm = [],  # noqa: B006 (typer reads it)
    detach: Detach = False,
    plugin: Plugins = [],  # noqa: B006 (typer reads it)
    layouts: Annotated[str | None, typer.Option(help="The layouts suite's layouts, comma-separated, of "
                                                f"{', '.join(LAYOUTS)} and a plugin's (default: "
                                                "all).")] = None,
) -> None:
    """Test the papers' claims: run a SUITE and write a report with verdicts computed from its runs.

    Trains (or reuses) the suite's runs under OUT/runs/, then writes OUT/SUITE/report.md: figures and a
    verdict table (reproduced / not reproduced / inconclusive, each claim tested on every seed against a
    stated threshold). Finished runs are reused, so an interrupted reproduction resumes where it stopped.
    """
    from lnexp.core.config import with_plugins
    from lnexp.experiments import reproduce as reproduction
    from lnexp.experiments.sweep.tables import print_event
    from lnexp.report import console

    with_plugins({}, "--plugin", extra=[str(p) for p in plugin])  # a plugin's suites: listed, and known
    if suite == "list":
        for name, registered in reproduction.SUITES.items():
            typer.echo(f"{name}: {registered.title}")
        return
    if suite not in reproduction.suite_names():
        raise fail(f"unknown suite {suite!r}; choose one of: {', '.join(reproduction.suite_names())}")
    if scale not in reproduction.SCALES:
        raise fail(f"--scale: must be one of {', '.join(reproduction.SCALES)}, got {scale!r}")

    launch = _launcher(launcher, launcher_config, partition, gpus_per_cell, cpus_per_cell, mem, time,
                       slurm)
    chosen = [name.strip() for name in (layouts or "").split(",") if name.strip()]
    try:
        outcome = reproduction.reproduce(suite, scale, jobs, out, None if quiet else print_event,
                                         set_, threads, launch, detach, [str(p) for p in plugin], chosen,
                                         pack)
    except KeyboardInterrupt:
        raise fail("interrupted; run the same command again to resume (finished runs are kept)",
                   130) from None
    if outcome.waiting:
        console.stderr.print(f"{outcome.waiting} run(s) queued or running; run the same command again to "
                             "see them, and to write the report once all are done", markup=False)
        return
    console.stdout.print(reproduction.verdicts_table(outcome))
    for path in outcome.reports.values():
        console.stdout.print(f"wrote {path}", markup=False)
    console.stderr.print(f"{outcome.trained} run(s) trained, {outcome.reused} reused, "
                         f"{outcome.wall_s:.0f} s", markup=False)
    if outcome.failed:
        name, error = next(iter(outcome.failed.items()))
        raise fail(f"{len(outcome.failed)} run(s) failed (their verdicts lack those seeds), e.g. {name}: "
                   f"{error}", 1)


def _print_version(value: bool) -> None:
    if value:
        from lnexp import __version__

        typer.echo(f"lnexp {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", help="Print lnexp's version and exit.",
                                          callback=_print_version, is_eager=True)] = False,
) -> None:
    """Where should LayerNorm sit in a Transformer? Train, measure, compare."""
