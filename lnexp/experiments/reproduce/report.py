"""A suite's report.md and verdicts.json, and every table printed from stored verdicts.

verdicts.json holds everything a verdict table needs (the claim's fields, the values per seed, the
interval, the verdict and its reason, the kind: claim, wiring or placebo), so that the suite's report,
the index (<out>/report.md), the terminal table and the docs' tables are all printed from it by the
same functions; `lnexp reproduce report DIR` prints them without training anything or importing torch,
and `refresh` rewrites the blocks of a markdown page that hold that command's output.

Figures are drawn with matplotlib's Agg backend (files only), imported when the first one is drawn.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnexp.core.errors import LnexpError
from lnexp.core.stats import mean_std
from lnexp.experiments.reproduce.verdicts import (
    CLAIM,
    PLACEBO,
    REPRODUCED,
    WIRING,
    Tally,
    Verdict,
    num,
)

__all__ = ["Analysis", "Figure", "StoredSuite", "md_table", "mean_pm", "num", "load", "markdown", "refresh"]


@dataclass
class Figure:
    """A PNG the report embeds: `draw(plt)` returns a matplotlib figure."""

    file: str
    caption: str
    draw: Callable[[Any], Any]


@dataclass
class Analysis:
    verdicts: list[Verdict]                            # claims, wiring checks and placebos, in report order
    definitions: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)   # markdown blocks
    notes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # sentences composed from the measured numbers


def mean_pm(values: Sequence[float | None], digits: int = 3) -> str:
    """`mean ± std (n)` of the usable values (the numbers tables; verdicts show intervals)."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "– (0)"
    if n == 1 or std != std:
        return f"{num(mean, digits)} ({n})"
    return f"{num(mean, digits)} ± {num(std, 2)} ({n})"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


RULE = ("Each claim states its statistic (one number per seed), the direction it claims and the smallest "
        "effect that counts, with whose number that is. The verdict comes from the 95% t-interval of the "
        "statistic's mean over the seeds: **reproduced** when the interval lies beyond the smallest "
        "effect in the claimed direction (inside the band, for a claimed band); **not reproduced** when "
        "it lies on the other side of it or ends at it (outside the band); **inconclusive** when it "
        "contains the smallest effect (crosses an edge of the band), or there is no interval (fewer than "
        "2 seeds with a number, or a diverged run's infinite value); **not applicable** when the data "
        "refute a premise the claim needs, named with its numbers (a premise they can neither establish "
        "nor refute makes it inconclusive); **inconclusive: grid edge** when the arms compared sit at the"
        " same edge of the learning-rate grid on every seed; **missing (n of m runs)** when it lacks a "
        "number while n of the suite's m runs have no result. Wiring checks are identities the code must "
        "satisfy: they are listed apart and never counted as reproductions. A placebo compares two arms "
        'that differ only in their seeds: its "reproduced" rows are false positives. Verdicts are '
        "computed from the run folders each time a report is written; none is fixed in advance.")
WIRING_TITLE = "Wiring checks: identities the code must satisfy, not evidence"
PLACEBO_TITLE = "Placebo comparisons: arm A against arm A′ on disjoint seeds (negative controls)"


def per_seed_text(v: Verdict) -> str:
    return ", ".join(f"{s}: {num(x)}" for s, x in zip(v.seeds or range(len(v.values)), v.values))


def verdict_table(verdicts: Sequence[Verdict], suite: str | None = None) -> str:
    """Claims (or placebos): claim, statistic, what is claimed and whose number, per seed, interval,
    verdict and why; with a suite column when `suite` is given (the index's, the docs')."""
    rows = [[*([suite] if suite else []), v.claim + (f" ({v.note})" if v.note else ""), v.statistic,
             f"{v.rule} ({v.effect_source})", per_seed_text(v), v.summary, f"**{v.verdict}**: {v.reason}"]
            for v in verdicts]
    return md_table([*(["suite"] if suite else []), "claim", "statistic (per seed)",
                     "claimed: direction, smallest effect (source)", "per seed", "mean [95% CI] (n)",
                     "verdict"], rows)


def wiring_table(verdicts: Sequence[Verdict], suite: str | None = None) -> str:
    rows = [[*([suite] if suite else []), v.claim, v.statistic, f"{v.rule} ({v.effect_source})",
             per_seed_text(v), f"**{v.verdict}**: {v.reason}"] for v in verdicts]
    return md_table([*(["suite"] if suite else []), "identity", "statistic (per seed)",
                     "must be (why)", "per seed", "check"], rows)


def sections(verdicts: Sequence[Verdict], suite: str | None = None, level: str = "##") -> list[str]:
    """The verdict table, the placebos' and the wiring checks', each under its heading when it has
    rows, and the tally."""
    claims = [v for v in verdicts if v.kind == CLAIM]
    placebos = [v for v in verdicts if v.kind == PLACEBO]
    wiring = [v for v in verdicts if v.kind == WIRING]
    lines = [verdict_table(claims, suite) if claims else "(no claim)", ""]
    if placebos:
        lines += [f"{level}# {PLACEBO_TITLE}", "", verdict_table(placebos, suite), ""]
    if wiring:
        lines += [f"{level}# {WIRING_TITLE}", "", wiring_table(wiring, suite), ""]
    return lines + [" ".join(Tally.of(verdicts).sentences()), ""]


def render_figure(path: Path, draw: Callable[[Any], Any]) -> None:
    import matplotlib.pyplot as plt

    from lnexp.report.figures import save  # imported before drawing: it selects the Agg backend

    save(draw(plt), path, dpi=110, bbox_inches="tight")


@dataclass
class StoredSuite:
    """A suite's verdicts.json read back: what every table is printed from."""

    suite: str
    title: str
    source: str
    scale: str
    verdicts: list[Verdict]
    runs: int = 0            # distinct run folders the suite reads
    run_seconds: float = 0.0  # their training time (a pack's once)
    extra: dict[str, Any] = field(default_factory=dict)  # provenance: version, time written

    def to_json(self) -> dict[str, Any]:
        return {"suite": self.suite, "title": self.title, "source": self.source, "scale": self.scale,
                "runs": self.runs, "run_seconds": round(self.run_seconds, 1), **self.extra,
                "rows": [v.to_json() for v in self.verdicts]}


def write_report(folder: Path, stored: StoredSuite, header: list[str], analysis: Analysis,
                 scale_note: str) -> Path:
    """Write folder/report.md, its figures and verdicts.json; returns the report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {stored.suite}: {stored.title}", "", f"*{stored.source}*", "", *header, "", "## Verdicts",
             "", *sections(analysis.verdicts), RULE, ""]
    if any(v.kind == CLAIM and v.verdict != REPRODUCED for v in analysis.verdicts):
        lines += [f"> {scale_note}", ""]
    if analysis.findings:
        lines += ["## What the numbers say", "", *(f"- {f}" for f in analysis.findings), ""]
    if analysis.definitions:
        lines += ["## Definitions", "", *(f"- {d}" for d in analysis.definitions), ""]
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
    (folder / "verdicts.json").write_text(json.dumps(stored.to_json(), indent=2, ensure_ascii=False) + "\n")
    return path


# --- reading stored verdicts, and the tables printed from them -------------------------------------------

def load_suite(path: Path) -> StoredSuite:
    """A suite folder's verdicts.json (LnexpError naming the file if it is not one)."""
    file = path / "verdicts.json"
    try:
        data = json.loads(file.read_text())
        return StoredSuite(data["suite"], data["title"], data["source"], data["scale"],
                           [Verdict.from_json(row) for row in data["rows"]], data["runs"],
                           data["run_seconds"],
                           {k: v for k, v in data.items() if k in ("lnexp", "written")})
    except OSError as exc:
        raise LnexpError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LnexpError(f"{file}: not an lnexp verdicts file ({type(exc).__name__}: {exc})") from None


def load(path: Path | str, order: Sequence[str] = ()) -> list[StoredSuite]:
    """The stored verdicts of a reproduction folder (its suites' <suite>/verdicts.json, in `order`
    first, then by name) or of one suite's folder; LnexpError when there are none."""
    path = Path(path)
    if (path / "verdicts.json").is_file():
        return [load_suite(path)]
    found = sorted(p.parent.name for p in path.glob("*/verdicts.json")) if path.is_dir() else []
    if not found:
        raise LnexpError(f"{path}: no stored verdicts (<suite>/verdicts.json) there")
    ranked = [name for name in order if name in found] + [name for name in found if name not in order]
    return [load_suite(path / name) for name in ranked]


def summary_table(stored: Sequence[StoredSuite]) -> str:
    """One row per suite: its claims' verdicts counted, its wiring checks, its placebos' false
    positives, its runs and their training time (a run two suites share counts in both)."""
    rows = []
    for s in stored:
        tally = Tally.of(s.verdicts)
        rate = tally.false_positive_rate()
        rows.append([s.suite, s.scale, ", ".join(f"{n} {k}" for k, n in tally.claims.items()) or "–",
                     ", ".join(f"{n} {k}" for k, n in tally.wiring.items()) or "–",
                     f"{tally.placebo_reproduced} of {tally.placebo_judged} ({rate:.0%})" if rate is not None
                     else "–", s.runs, f"{s.run_seconds:.0f}"])
    return md_table(["suite", "scale", "claims", "wiring checks", "placebo false positives", "runs",
                     "training time (s)"], rows)


def markdown(stored: Sequence[StoredSuite], summary: bool = False) -> str:
    """What `lnexp reproduce report DIR --markdown` prints: every suite's tables (with `summary`: one
    row per suite), then the placebos' false-positive rate over all suites."""
    if summary:
        lines = [summary_table(stored), ""]
    else:
        lines = []
        for s in stored:
            lines += [f"### {s.suite}", "", *sections(s.verdicts, level="###")]
    tally = Tally.of([v for s in stored for v in s.verdicts])
    with_placebos = sum(any(v.kind == PLACEBO for v in s.verdicts) for s in stored)
    if (summary or with_placebos > 1) and tally.placebo_judged:  # else its one suite's tally said it
        lines += [tally.sentences()[-1], ""]
    return "\n".join(lines).rstrip() + "\n"


def console_table(stored: Sequence[StoredSuite], title: str = "verdicts") -> Any:
    """The claims (and placebos) of the stored suites as a rich table, for the terminal."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("suite", "claim", "mean [95% CI] (n)", "claimed", "verdict"):
        table.add_column(column)
    for s in stored:
        for v in s.verdicts:
            if v.kind == WIRING:
                continue
            style = {"reproduced": "green", "not reproduced": "red"}.get(v.verdict, "yellow")
            table.add_row(s.suite, v.claim, v.summary, v.rule, f"[{style}]{v.verdict}[/]")
    return table


BLOCK = re.compile(r"(<!-- lnexp reproduce report (?P<args>[^>]*?) -->\n)(?P<body>.*?)(<!-- /lnexp reproduce "
                   r"report -->)", re.S)


def refresh(text: str, root: Path, order: Sequence[str] = ()) -> str:
    """`text` (a markdown page) with every block between `<!-- lnexp reproduce report DIR [--summary]
    -->` and `<!-- /lnexp reproduce report -->` replaced by `lnexp reproduce report DIR --markdown
    [--summary]`'s output, DIR relative to `root` (the repository)."""
    def block(match: re.Match[str]) -> str:
        args = shlex.split(match["args"])
        paths = [a for a in args if not a.startswith("--")]
        if len(paths) != 1 or set(args) - {*paths, "--markdown", "--summary"}:
            raise LnexpError("a generated block's marker must read `lnexp reproduce report DIR "
                             f"[--summary]`, not {match['args']!r}")
        body = markdown(load(root / paths[0], order), summary="--summary" in args)
        return match[1] + body + match[4]

    return BLOCK.sub(block, text)
