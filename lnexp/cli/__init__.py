"""The `lnexp` command line: a module per command or group of commands, each parsing its options and
handing off to the library; the options several share in _options.py, the one error handler in
_groups.py.

Heavy modules (torch, matplotlib) are imported inside the commands that need them, so `lnexp --help`
is fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from lnexp.cli import reproduce, sweep
from lnexp.cli._groups import LnexpGroup
from lnexp.cli.decode import decode_stats, generate, translate
from lnexp.cli.runs import compare, export, list_runs, plot
from lnexp.cli.train import train

app = typer.Typer(help="Where should LayerNorm sit in a Transformer? Train, measure, compare.",
                  cls=LnexpGroup, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})

app.command(short_help="Train a model from a config, or resume a run.")(train)
app.command(short_help="Put runs side by side: config, outcome, profile.")(compare)
app.command(short_help="Write a run's or a sweep's figures.")(plot)
app.command(short_help="Write TensorBoard files for existing runs.")(export)
app.command("runs", short_help="List the runs in a folder, newest first.")(list_runs)
app.add_typer(sweep.app, name="sweep", short_help="Train a grid of configs x seeds; table, figures.")
app.command(short_help="Continue a prompt with a trained model.")(generate)
app.command("decode-stats", short_help="Compare decoding strategies on the same prompts.")(decode_stats)
app.command(short_help="Translate with an encoder-decoder run, or score it.")(translate)
app.add_typer(reproduce.app, name="reproduce", short_help="Test the papers' claims; write a report.")


def _print_version(value: bool) -> None:
    if value:
        from lnexp import __version__

        typer.echo(f"lnexp {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print lnexp's version and exit.",
                                          callback=_print_version, is_eager=True)] = False,
) -> None:
    """Where should LayerNorm sit in a Transformer? Train, measure, compare."""
    if ctx.invoked_subcommand is None:  # `lnexp` alone: the help, as a usage error
        typer.echo(ctx.get_help(), err=True)
        raise typer.Exit(2)
