"""What several commands print: notes on stderr, and a sweep's figures."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import typer

from lnexp.cli._groups import fail


def notes(lines: Iterable[str], kind: str = "note") -> None:
    """Each line on stderr as `note: ...` (or `warning: ...`), never read as rich markup."""
    from lnexp.report import console

    for line in lines:
        console.stderr.print(f"{kind}: {line}", markup=False, soft_wrap=True)


def sweep_figures(root: Path, suffix: str = ".png", unit: str = "nats") -> None:
    """Write a sweep's figures (losses in `unit`) and print their paths (stdout), its notes (stderr)."""
    from lnexp.experiments.sweep.figures import sweep_figures as draw

    try:
        paths, found = draw(root, suffix, unit)
    except OSError as exc:
        raise fail(f"{root / 'plots'}: {exc.strerror or exc}") from None
    notes(found)
    for path in paths:
        typer.echo(str(path))
