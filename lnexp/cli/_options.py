"""Options several commands share, their choices, and the launcher options as one group: declared once.

Ranges live in the declarations (`min=1`), choices in `str` Enums, so Typer checks them and `--help`
lists them. The Enums repeat names the library keeps beside torch or pydantic (decoding strategies,
scales, launcher kinds, translation scores), which `lnexp --help` must not import;
tests/test_cli.py checks that each list matches the library's.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

import typer

if TYPE_CHECKING:
    from lnexp.experiments.sweep.slurm import Launcher


class ImageFormat(str, Enum):
    """What matplotlib writes a figure as."""

    png = "png"
    svg = "svg"
    pdf = "pdf"


class DecodeStrategy(str, Enum):
    """lnexp.decode.search.STRATEGIES."""

    greedy = "greedy"
    sample = "sample"
    top_k = "top-k"
    top_p = "top-p"
    beam = "beam"


class TranslateStrategy(str, Enum):
    greedy = "greedy"
    beam = "beam"


class Scale(str, Enum):
    """lnexp.experiments.reproduce.engine.SCALES."""

    tiny = "tiny"
    cpu = "cpu"
    small = "small"


class Metric(str, Enum):
    """The curves of compare's figure: the loss, or a score of lnexp.report.plots.SCORES."""

    loss = "loss"
    bleu = "bleu"
    chrf = "chrf"
    exact_match = "exact_match"


class Unit(str, Enum):
    """lnexp.report.units: NATS, BPB."""

    nats = "nats"
    bpb = "bpb"


class ExportFormat(str, Enum):
    """lnexp.run.sinks.EXPORTS."""

    tensorboard = "tensorboard"
    wandb = "wandb"


class LauncherKind(str, Enum):
    """lnexp.experiments.sweep.slurm.Launcher.kind."""

    local = "local"
    slurm = "slurm"


def _figure_file(path: Path | None) -> Path | None:
    if path is not None and path.suffix.lower().lstrip(".") not in {f.value for f in ImageFormat}:
        raise typer.BadParameter(f"{path} must end in .png, .svg or .pdf")
    return path


Sets = Annotated[list[str], typer.Option(
    "--set", help="Override a config key: --set optim.lr=3e-3 (repeatable; a sweep's or a reproduction's: "
    "in every run).")]
Plugins = Annotated[list[Path], typer.Option(
    "--plugin", help="A Python file whose layouts, norms, probes and suites register, like the built-in "
    "ones; for a run folder's model, the file trusted as a plugin its config names (its sha256 must be the "
    "one meta.json recorded). Repeatable; see docs/plugins.md.", show_default=False)]
Force = Annotated[bool, typer.Option("--force", help="Train again what is already trained, replacing its run "
                                     "folder (a sweep: its finished cells).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress on stderr (no bar, no line per run).")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON, for scripts.")]
Jobs = Annotated[int, typer.Option(min=1, help="Runs trained at once, in worker processes that split the "
                                   "CPU threads.")]
FigureFile = Annotated[Path | None, typer.Option(
    "--plot", callback=_figure_file, show_default=False,
    help="Write the figure to FILE: .png, .svg or .pdf.")]
Format = Annotated[ImageFormat, typer.Option("--format", help="The figures' file format.")]
LossUnitOption = Annotated[Unit, typer.Option(
    "--unit", help="Losses in nats per each run's own unit (per byte for byte-level text, per token "
    "otherwise; runs in different units are not drawn on one axis), or bpb: bits per byte, in which "
    "runs of different tokenizers compare (text runs only).")]

# Decoding: generate, decode-stats, translate.
Threads = Annotated[int, typer.Option(min=1, help="CPU threads. A token a step makes small matrix products: "
                                      "more threads rarely pay, and spin on a busy machine.")]
MaxNewTokens = Annotated[int, typer.Option(help="Tokens generated per output.")]
Temperature = Annotated[float, typer.Option(help="Divides the logits before sampling (sample, top-k, "
                                            "top-p).")]
TopK = Annotated[int, typer.Option("--k", help="top-k: sample among the k most probable tokens.")]
TopP = Annotated[float, typer.Option("--p", help="top-p: sample in the smallest set of tokens with "
                                     "probability >= p.")]
Beams = Annotated[int, typer.Option(help="beam: hypotheses kept at each step.")]
LengthPenalty = Annotated[float, typer.Option(help="beam: alpha of GNMT's ((5+L)/6)^alpha; acts when "
                                              "hypotheses differ in length.")]
Seed = Annotated[int, typer.Option(help="Seed of the sampling generator.")]


@dataclass(frozen=True)
class LauncherOptions:
    """Where sweep and reproduce cells run (lnexp.experiments.sweep.slurm): options both commands declare by
    `@launcher_options`, each field one option."""

    launcher: Annotated[LauncherKind | None, typer.Option(
        "--launcher", help="local (this machine, --jobs at once; one GPU per worker) or slurm (one job per "
        "cell, a job array, through submitit).", show_default=False)] = None
    launcher_config: Annotated[Path | None, typer.Option(
        "--launcher-config", help="YAML file with a launcher: block (kind, partition, gpus_per_cell, ...); "
        "the options below override it.", show_default=False)] = None
    partition: Annotated[str | None, typer.Option(help="slurm: partition.", show_default=False)] = None
    gpus_per_cell: Annotated[int | None, typer.Option(help="slurm: GPUs per job (default 1).",
                                                      show_default=False)] = None
    cpus_per_cell: Annotated[int | None, typer.Option(help="slurm: CPUs per job (also the run's threads).",
                                                      show_default=False)] = None
    mem: Annotated[str | None, typer.Option(help="slurm: memory per job, e.g. 32G.",
                                            show_default=False)] = None
    time: Annotated[str | None, typer.Option(
        "--time", help="slurm: time limit per job, minutes or H:MM:SS (default 60); a job past it "
        "checkpoints and is requeued.", show_default=False)] = None
    slurm: Annotated[list[str], typer.Option(
        "--slurm", help="slurm: any other sbatch option, K=V (repeatable): --slurm account=proj --slurm "
        "qos=high.")] = ()
    setup: Annotated[list[str], typer.Option(
        "--setup", help="slurm: a line the batch script runs before the job, e.g. 'module load cuda' or "
        "'source ~/venv/bin/activate' (repeatable; after the launcher file's setup lines).")] = ()
    detach: Annotated[bool, typer.Option(
        "--detach", help="slurm: submit and return; run the same command again (or lnexp sweep status) to "
        "see and collect the cells.")] = False

    def load(self) -> Launcher | None:
        """The launcher these options and --launcher-config describe; None (the local pool) if none is
        given. ConfigError on bad input."""
        from lnexp.experiments.sweep import slurm

        return slurm.from_options(self.launcher_config, kind=self.launcher and self.launcher.value,
                                  partition=self.partition, gpus_per_cell=self.gpus_per_cell,
                                  cpus_per_cell=self.cpus_per_cell, mem=self.mem, time=self.time,
                                  slurm=self.slurm, setup=self.setup)

    def storage_warnings(self, launcher: Launcher | None, root: Path) -> list[str]:
        """For jobs on a cluster's nodes: where `root` (the runs) or the data cache are this node's own
        storage."""
        from lnexp.experiments.sweep import slurm
        from lnexp.run.reader import RunError

        if launcher is None or launcher.kind != "slurm" or launcher.cluster != "slurm":
            return []
        try:
            slurm.check(launcher)
        except RunError:  # no SLURM here: nothing will be submitted, and that error alone is the news
            return []
        return slurm.storage_warnings(root)


def launcher_options(command: Callable[..., None]) -> Callable[..., None]:
    """Declare the LauncherOptions fields as options of `command`, in place of its parameter
    `launch: LauncherOptions`, which receives them as one value. Typer reads a command's options from
    its signature, so `--help` lists them there, in that order."""
    signature = inspect.signature(command, eval_str=True)  # the Annotated declarations, not strings
    hints = get_type_hints(LauncherOptions, include_extras=True)
    parameters = []
    for parameter in signature.parameters.values():
        parameters += [parameter.replace(name=f.name, default=f.default, annotation=hints[f.name])
                       for f in fields(LauncherOptions)] if parameter.name == "launch" else [parameter]

    @functools.wraps(command)
    def with_launch(**options: Any) -> None:
        launch = LauncherOptions(**{f.name: options.pop(f.name) for f in fields(LauncherOptions)})
        command(**options, launch=launch)

    with_launch.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return with_launch
