"""Terminal output: progress on stderr (silent when quiet or not a terminal), tables on stdout."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from lnexp.run.reader import load_run
from lnexp.run.rows import layer_profile, logged_steps, profile_ratios

FULL_WIDTH = 100_000  # wider than any table: a pipe or a file gets each row whole, on one line


class Output(Console):
    """stdout: as wide as the terminal, or, piped or redirected (a script, a log), as wide as what is
    printed, so that no table is cut at 80 columns or wrapped inside a cell, whatever COLUMNS says."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(FULL_WIDTH, size.height)


stdout = Output(highlight=False)
stderr = Console(stderr=True, highlight=False)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


PRINT_EVERY_S = 10.0


def duration(seconds: float) -> str:
    """`1m40s`, `2h05m`, `12s`."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_line(done: int, total: int, row: dict, eta_s: float | None) -> str:
    """nanoGPT-style: `step 120/1000 | loss 2.314 | val 2.401 | lr 1.0e-03 | 8,950 tok/s | eta 1m40s`."""
    def num(key: str, spec: str) -> str:
        return "-" if row.get(key) is None else format(row[key], spec)

    return (f"step {done}/{total} | loss {num('loss', '.3f')} | val {num('val_loss', '.3f')} | "
            f"lr {num('lr', '.1e')} | {num('tokens_per_s', ',.0f')} tok/s | "
            f"eta {'-' if eta_s is None else duration(eta_s)}")


def plain_progress(every: int | None = None, print_every_s: float = PRINT_EVERY_S
                   ) -> Callable[[int, int, dict], None]:
    """A progress callback for logs (stderr not a terminal): a line every `every` steps, or every
    `print_every_s` seconds, and at the last step."""
    first: list[tuple[float, int]] = []  # (time, step) of the first report: the rate's origin
    last = [time.perf_counter(), 0]

    def report(done: int, total: int, row: dict) -> None:
        clock = time.perf_counter()
        if not first:
            first.append((clock, done))
        due = done - last[1] >= every if every else clock - last[0] >= print_every_s
        if not (due or done >= total):
            return
        t0, s0 = first[0]
        eta = (total - done) * (clock - t0) / (done - s0) if done > s0 else None
        last[:] = [clock, done]
        print(progress_line(done, total, row, eta), file=sys.stderr, flush=True)

    return report


@contextmanager
def training_progress(name: str, quiet: bool, print_every: int | None = None
                      ) -> Iterator[Callable[[int, int, dict], None] | None]:
    """Yields a callback (done, total, last metrics row) that moves a progress bar on a terminal, or
    prints a plain line now and then elsewhere (a log), or None when quiet."""
    if quiet:
        yield None
        return
    if not stderr.is_terminal:
        yield plain_progress(print_every)
        return
    # until the first step is done the bar says what is happening instead of `0/? loss - lr -`
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[steps]}"),
               TextColumn("{task.fields[numbers]}"), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=False) as bar:
        task = bar.add_task(name, total=None, steps="", numbers="loading the data and building the model")

        def update(done: int, total: int, row: dict) -> None:
            bar.update(task, completed=done, total=total, steps=f"{done}/{total}",
                       numbers=f"loss {fmt(row.get('loss'))}  lr {fmt(row.get('lr'), 3)}  "
                       f"{fmt(row.get('tokens_per_s'), 3)} tok/s")

        yield update


def profile_rows(columns: dict[str, list[float]], spread: bool = False
                 ) -> tuple[list[list[str]], list[list[str]]]:
    """The cells of a profile table: a row per layer, then the footer (last/first-layer ratio and,
    with `spread`, max/min over the layers). Profiles of different depth leave "-" cells."""
    body = [[str(layer), *(fmt(v[layer]) if layer < len(v) else "-" for v in columns.values())]
            for layer in range(max(map(len, columns.values()), default=0))]
    ratios = [profile_ratios(v) for v in columns.values()]
    names = ("last/first", "max/min") if spread else ("last/first",)
    return body, [[name, *(fmt(r[name]) for r in ratios)] for name in names]


def profile_table(title: str, columns: dict[str, list[float]], spread: bool = False) -> Table:
    """Layers as rows, one column per profile, the last/first-layer ratio (and max/min) underneath."""
    table = Table(title=title, title_justify="left", min_width=len(title))  # the title on one line
    table.add_column("layer", justify="right")
    for name in columns:
        table.add_column(name, justify="right")
    body, footer = profile_rows(columns, spread)
    for row in body:
        table.add_row(*row)
    table.add_section()
    for row in footer:
        table.add_row(*row)
    return table


def summary_table(title: str, summary: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", min_width=len(title))
    for key, value in summary.items():
        table.add_row(key, fmt(value))
    return table


def training_profile(path: Path) -> Table | str:
    """The gradient norm of each layer's FFN output weight at initialisation and at the last log."""
    run = load_run(path)
    steps = logged_steps(run.probes, "grad")
    if not steps:
        return ""
    role = "dec.ffn.fc2" if run.config.get("model", {}).get("arch") == "encoder_decoder" else "ffn.fc2"
    columns = {f"step {s}": layer_profile(run.probes, "grad", role, s) for s in sorted({steps[0], steps[-1]})}
    return profile_table(f"gradient norm of {role}.weight by layer", columns)
