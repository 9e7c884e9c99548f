"""The `lnexp` command line: one function per command, argument handling only.

Heavy modules (torch) are imported inside the commands that need them, so `lnexp --help` is fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Where should LayerNorm sit in a Transformer? Train, measure, compare.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    """One line on stderr, no traceback."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    set_: Annotated[list[str], typer.Option("--set", help="Override a key: --set optim.lr=3e-3 "
                                            "(repeatable).")] = [],  # noqa: B006 (typer reads it)
    force: Annotated[bool, typer.Option(help="Replace an existing run folder of the same name.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train one model from CONFIG and write its run folder (runs/<name>/)."""
    from lnexp import console
    from lnexp.config import ConfigError, load_config
    from lnexp.runs import RunError

    try:
        cfg = load_config(config, set_)
        from lnexp.train import train as run_training

        with console.training_progress(cfg.run.name or config.stem, quiet) as progress:
            command = ["lnexp", "train", str(config), *(a for s in set_ for a in ("--set", s)),
                       *(["--force"] if force else []), *(["--quiet"] if quiet else [])]
            outcome = run_training(cfg, str(config), command, force=force, progress=progress)
    except (ConfigError, RunError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    except Exception as exc:  # the run folder already says "failed" and why
        raise fail(f"training failed: {type(exc).__name__}: {exc}", 1) from None
    console.stdout.print(console.summary_table(f"{outcome.path}: {outcome.status}", outcome.summary))
    console.stdout.print(console.training_profile(outcome.path))
    if outcome.status == "diverged":
        console.stdout.print(f"diverged at step {outcome.summary['diverged_step']} "
                             "(recorded as a result; see metrics.jsonl)")


@app.callback()
def main() -> None:
    """Where should LayerNorm sit in a Transformer? Train, measure, compare."""
