"""A suite's report.md: the verdict table, the definitions and thresholds, figures, numbers, notes.

Figures are drawn with matplotlib's Agg backend (files only), imported when the first one is drawn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnexp.experiments.reproduce.verdicts import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Verdict, usable


@dataclass
class Figure:
    """A PNG the report embeds: `draw(plt)` returns a matplotlib figure."""

    file: str
    caption: str
    draw: Callable[[Any], Any]


@dataclass
class Analysis:
    verdicts: list[Verdict]
    definitions: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)   # markdown blocks
    notes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # sentences composed from the measured numbers


def num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.{digits}g}"


def mean_pm(values: Sequence[float | None], digits: int = 3) -> str:
    """`mean ± std (n)` of the usable values."""
    from lnexp.experiments.reproduce.verdicts import mean_std

    mean, std, n = mean_std(values)
    if n == 0:
        return "– (0)"
    if n == 1 or not math.isfinite(mean):
        return f"{num(mean, digits)} ({n})"
    return f"{num(mean, digits)} ± {num(std, 2)} ({n})"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def verdict_table(verdicts: Sequence[Verdict]) -> str:
    rows = []
    for v in verdicts:
        seeds = v.seeds or list(range(len(v.values)))
        per_seed = ", ".join(f"{s}: {num(x)}{'' if p is None else (' ✓' if p else ' ✗')}"
                             for s, x, p in zip(seeds, v.values, v.passes))
        rows.append([v.claim + (f" ({v.note})" if v.note else ""), v.quantity, v.threshold,
                     mean_pm(v.values), per_seed, f"**{v.verdict}**"])
    return md_table(["claim", "measured quantity", "threshold (each seed)", "mean ± std (n)",
                     "per seed (✓ passes)", "verdict"], rows)


RULE = ("Each claim is tested on every seed separately against its threshold: **reproduced** when "
        "every seed passes, **not reproduced** when none does, **inconclusive** when the seeds "
        "disagree or a run gave no number; **missing (n of m runs)** when it lacks a number while n of "
        "the suite's m runs have no result (failed, or not run yet). Verdicts are computed from the run "
        "folders each time this report is written; none is fixed in advance.")


def render_figure(path: Path, draw: Callable[[Any], Any]) -> None:
    import matplotlib.pyplot as plt

    from lnexp.report.figures import save  # imported before drawing: it selects the Agg backend

    save(draw(plt), path, dpi=110, bbox_inches="tight")


def write_report(folder: Path, title: str, source: str, header: list[str], analysis: Analysis,
                 scale_note: str) -> Path:
    """Write folder/report.md, its figures and verdicts.json; returns the report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", f"*{source}*", "", *header, "", "## Verdicts", "",
             verdict_table(analysis.verdicts), "", RULE, ""]
    counts = {k: sum(v.verdict == k for v in analysis.verdicts)
              for k in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)}
    missing = sum(v.verdict.startswith("missing") for v in analysis.verdicts)
    if missing:
        counts["missing a run"] = missing
    lines += [", ".join(f"{n} {k}" for k, n in counts.items()) + ".", ""]
    if counts[NOT_REPRODUCED] or counts[INCONCLUSIVE]:
        lines += [f"> {scale_note}", ""]
    if analysis.findings:
        lines += ["## What the numbers say", "", *(f"- {f}" for f in analysis.findings), ""]
    if analysis.definitions:
        lines += ["## Definitions and thresholds", "", *(f"- {d}" for d in analysis.definitions), ""]
    if analysis.figures:
        lines += ["## Figures", ""]
        for figure in analysis.figures:
            try:
                render_figure(folder / figure.file, figure.draw)
                lines += [f"![{figure.caption}]({figure.file})", "", f"*{figure.caption}*", ""]
            except Exception as exc:  # a figure that cannot be drawn must not lose the verdicts
                lines += [f"(figure {figure.file} could not be drawn: {type(exc).__name__}: {exc})", ""]
    if analysis.tables:
        lines += ["## Numbers", ""]
        for table in analysis.tables:
            lines += [table, ""]
    if analysis.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in analysis.notes), ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    (folder / "verdicts.json").write_text(json.dumps(
        [{"claim": v.claim, "quantity": v.quantity, "threshold": v.threshold, "values": _json(v.values),
          "seeds": v.seeds, "passes": v.passes, "summary": mean_pm(v.values), "verdict": v.verdict,
          "note": v.note}
         for v in analysis.verdicts], indent=2) + "\n")
    return path


def _json(values: Sequence[float | None]) -> list[Any]:
    return [v if usable(v) and math.isfinite(v) else (None if not usable(v) else str(v)) for v in values]


# --- small plotting helpers shared by the suites ---------------------------------------------------


def mean_curve(curves: list[list[tuple[int, float]]]) -> tuple[list[int], list[float]]:
    """Pointwise mean over seeds at the steps every curve has (finite values only)."""
    from lnexp.report.figures import band

    steps, mean, _, _ = band(curves)
    return steps, mean
