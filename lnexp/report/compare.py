"""Runs side by side: which config keys differ, how each run ended, and a per-layer profile.

`build` reads runs into a `Comparison` (plain data); `tables`, `markdown` and `to_json` render it
(the figure is lnexp.report.plots'). `runs_table` lists the runs of a folder. No torch, no matplotlib here:
`lnexp compare` starts in well under a second.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from glob import glob
from pathlib import Path
from typing import Any, Literal

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from lnexp.core.layouts import label as layout_label
from lnexp.core.nested import flatten
from lnexp.core.probe_kinds import by_row, default_param, profile_depth, row_titles
from lnexp.core.stats import mean_std
from lnexp.core.status import Status
from lnexp.report.console import fmt, profile_rows, profile_table
from lnexp.report.units import BPB, NATS, LossUnit, loss_units, own_units
from lnexp.run.reader import Run, RunError, load_run
from lnexp.run.rows import (
    finite,
    layer_profile,
    logged_steps,
    loss_summary,
    nearest_step,
    profile_ratios,
    weight_roles,
)

Step = int | Literal["last"]

# Outcome rows: summary key, label, which value is best (None: not ranked).
OUTCOME: tuple[tuple[str, str, Callable[..., Any] | None], ...] = (
    ("status", "status", None),
    ("steps_done", "steps done", max),
    ("final_train_loss", "final train loss", min),
    ("best_train_loss", "best train loss", min),
    ("final_val_loss", "final val loss", min),
    ("best_val_loss", "best val loss", min),
    ("tokens_per_s", "tokens/s", max),
    ("wall_time_s", "wall time (s)", min),
    # the collapse detector: a val loss at the unigram entropy means context is ignored
    ("unigram_entropy", "unigram entropy", None),
    ("collapsed", "collapsed", None),
    ("dead_layers", "dead layers", min),
    # shown where a run has them: text runs (across tokenizers), translation scores
    ("final_val_bits_per_byte", "final val bits/byte", min),
    ("final_bleu", "final BLEU", max),
    ("final_chrf", "final chrF", max),
    ("final_exact_match", "final exact match", max),
)
OPTIONAL_OUTCOME = ("final_val_bits_per_byte", "final_bleu", "final_chrf", "final_exact_match")
# the outcome's losses, in nats per each run's unit (byte or token) or, with --unit bpb, bits per byte
LOSSES = ("final_train_loss", "best_train_loss", "final_val_loss", "best_val_loss", "unigram_entropy")
BEST_STYLE = "bold green"


def load_runs(patterns: list[str]) -> tuple[list[Run], list[str]]:
    """Every run the paths or globs name, once each, in the order given. What cannot be read becomes a
    note (one line each), so the runs that can be read are still shown. The plugins a run's config
    names are not loaded (a run folder is data: reading it runs no code from it); their probes are
    shown by their rows' names (`probe_choices`)."""
    runs: list[Run] = []
    notes: list[str] = []
    seen: set[Path] = set()
    for pattern in patterns:
        # The shell expands unquoted globs; a quoted one is expanded here.
        matches = sorted(glob(pattern), key=natural_key) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            notes.append(f"{pattern}: matches nothing")
        for match in matches:
            path = Path(match)
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                run = load_run(path)
            except RunError as exc:
                notes.append(str(exc))
                continue
            runs.append(run)
            notes.extend(f"{path}: {note}" for note in run.notes)
    return runs, notes


def probe_choices(runs: list[Run]) -> dict[str, str]:
    """`--probe`'s values and their titles: every declared probe's rows, and the probes these runs
    logged that no declaration here knows (a plugin's, not loaded), titled by their names."""
    logged = dict.fromkeys(r["probe"] for run in runs for r in run.probes)
    return {**row_titles(), **{name: name for name in logged if by_row(name) is None}}


def profile_param(runs: list[Run], probe: str) -> str:
    """The profile shown when no --param is given: the declared default, or for a probe no declaration
    knows, the first quantity the runs logged of it."""
    if by_row(probe) is not None:
        return default_param(probe)
    return next((r["param"] for run in runs for r in run.probes if r["probe"] == probe), "all")


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def natural_key(text: Any) -> tuple:
    """Sort key that reads numbers as numbers: lr=3e-4 before lr=3e-3, L2 before L10."""
    text, key, at = str(text), [], 0
    for match in _NUMBER.finditer(text):
        key += [(1, text[at:match.start()], 0.0), (0, "", float(match.group()))]
        at = match.end()
    return (*key, (1, text[at:], 0.0))


def config_diff(runs: list[Run], all_keys: bool = False) -> dict[str, list[Any]]:
    """Dotted key -> one value per run (None where a run lacks the key), only the keys that differ.
    run.name and run.dir are left out unless `all_keys`: the column headers already say them."""
    flat = [flatten(run.config) for run in runs]
    keys = dict.fromkeys(key for f in flat for key in f)  # config order, not alphabetical
    rows = {key: [f.get(key) for f in flat] for key in keys}
    if all_keys:
        return rows
    return {key: values for key, values in rows.items()
            if not key.startswith("run.") and len({json.dumps(v, default=str) for v in values}) > 1}


def outcome(run: Run) -> dict[str, Any]:
    """How a run ended: its summary.json, or for a run without one (running, killed) the same
    quantities from its metrics so far. Status is `Run.state` (a dead "running" run is "stale")."""
    summary = run.summary or partial_summary(run.metrics)
    return {"status": run.state, "diverged_step": summary.get("diverged_step"),
            **{key: summary.get(key) for key, _, _ in OUTCOME[1:]}}


def partial_summary(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json's numbers for a run without one (running, killed), from its metrics so far."""
    steps = [m["step"] for m in metrics if m.get("lr") is not None]  # the final val line has no lr
    speeds = [m["tokens_per_s"] for m in metrics if finite(m.get("tokens_per_s")) and m["tokens_per_s"] > 0]
    return {"steps_done": max(steps) + 1 if steps else 0, **loss_summary(metrics),
            # harmonic mean over steps = all tokens / all time, as in the summary
            "tokens_per_s": len(speeds) / sum(1 / s for s in speeds) if speeds else None}


@dataclass
class Profile:
    """One run's per-layer values at `step`, the logged step nearest the one asked for (None: the
    probe was never logged)."""

    step: int | None
    values: list[float]


def run_profile(run: Run, probe: str, param: str, at: Step, notes: list[str], who: str) -> Profile:
    steps = logged_steps(run.probes, probe)
    if not steps:
        notes.append(f"{who}: no {probe} probe logged")
        return Profile(None, [])
    step = steps[-1] if at == "last" else nearest_step(steps, at)
    if at != "last" and step != at:
        notes.append(f"{who}: step {at} not logged, using the nearest logged step, {step}")
    values = layer_profile(run.probes, probe, param, step)
    n_layers = run.config.get("model", {}).get("n_layers")
    depth = profile_depth(probe, param, n_layers if isinstance(n_layers, int) else 0)
    if not values:
        notes.append(f"{who}: no {probe} values for {param} at step {step} "
                     f"(roles: {', '.join(weight_roles(run.probes))}, all)")
    elif len(values) < depth:  # a run killed while writing that step's lines
        notes.append(f"{who}: step {step} has {len(values)} of {depth} layers (truncated probes.jsonl?)")
    return Profile(step, values)


@dataclass
class Group:
    """Runs aggregated as one (--group-by): their indices in Comparison.runs and their label."""

    label: str
    members: list[int]


@dataclass
class Comparison:
    runs: list[Run]
    headers: list[str]  # a column header per run: its name, or its path where names repeat
    legends: list[str]  # a label per run for figures: the header and the config keys that differ
    diff: dict[str, list[Any]]
    all_keys: bool  # diff holds every key, not only those that differ
    outcomes: list[dict[str, Any]]
    probe: str
    param: str
    at: Step
    profiles: list[Profile]
    notes: list[str]
    groups: list[Group] = field(default_factory=list)  # one per run unless grouped
    legend_title: str = ""  # the keys the figure's legend entries give the values of
    grouped: bool = False
    # the unit the outcomes' losses are in; None: each run's own, which differ (bytes and tokens)
    loss_unit: LossUnit | None = None

    @property
    def profile_quantity(self) -> str:
        kind = by_row(self.probe)
        if kind is None:  # a probe this process has no declaration of (a plugin's): its rows' names
            return f"{self.probe} {self.param}"
        title = row_titles()[self.probe]
        weights = "all weights" if self.param == "all" else self.param
        return title if kind.entries == "layer" else kind.measures.get(self.param, self.param) \
            if kind.entries == "measures" else f"{title} of {weights}"

    @property
    def profile_title(self) -> str:
        what = self.profile_quantity
        steps = {p.step for p in self.profiles if p.step is not None}
        when = f"step {steps.pop()}" if len(steps) == 1 else \
            "each run's last logged step" if self.at == "last" else f"the logged step nearest {self.at}"
        return f"{what} by layer at {when}"

    @property
    def profile_columns(self) -> dict[str, list[float]]:
        """Header -> values; the header names the step where the runs' steps differ."""
        differ = len({p.step for p in self.profiles if p.step is not None}) > 1
        return {h + (f" @ {p.step}" if differ and p.step is not None else ""): p.values
                for h, p in zip(self.headers, self.profiles)}


def build(runs: list[Run], probe: str = "grad", param: str = "ffn.fc2", at: Step = 0,
          all_keys: bool = False, notes: list[str] | None = None, group_by: list[str] = (),
          unit: str = NATS) -> Comparison:
    """Raises ConfigError for a --group-by key that no run's config has, LnexpError for `unit` BPB
    with a run that is not text. The outcomes' losses are in `unit` (NATS: each run's own)."""
    notes = list(notes or [])
    names = [run.name for run in runs]
    headers = [run.name if names.count(run.name) == 1 else str(run.path) for run in runs]
    if len(runs) == 1:
        notes.append("only one run: nothing to compare it with")
    differing = config_diff(runs)  # the legends name only these, even with all_keys
    legends = [_legend(h, {k: v[i] for k, v in differing.items()}) for i, h in enumerate(headers)]
    shared = unit == BPB or len(set(own_units(runs))) <= 1
    loss_unit = loss_units(runs, unit) if shared or group_by else None  # a mean of mixed units: refused
    outcomes = [outcome(run) for run in runs]
    for run, o in zip(runs, outcomes):
        o.update({key: loss_unit.convert(run, o[key]) for key in LOSSES} if loss_unit else {})
    for header, o in zip(headers, outcomes):
        if o["status"] in (Status.RUNNING, Status.STALE):
            notes.append(f"{header}: {o['status']}; outcome so far, from metrics.jsonl")
    profiles = [run_profile(run, probe, param, at, notes, h) for run, h in zip(runs, headers)]
    groups, legend_title = make_groups(runs, headers, differing, list(group_by))
    return Comparison(runs, headers, legends, config_diff(runs, all_keys), all_keys, outcomes, probe, param,
                      at, profiles, notes, groups, legend_title, bool(group_by), loss_unit)


def make_groups(runs: list[Run], headers: list[str], differing: dict[str, list[Any]], group_by: list[str]
                ) -> tuple[list[Group], str]:
    """The legend's entries: with `group_by`, one per combination of those keys' values (numbers in
    numeric order); else one per run. An entry names the values only; the legend's title names the
    keys, once. Where the values do not tell runs apart, the run's header leads."""
    flat = [flatten(run.config) for run in runs]
    for key in group_by:
        if all(key not in f for f in flat):
            from lnexp.core.config import ConfigError

            raise ConfigError(f"--group-by {key}: not a config key of these runs (e.g. model.norm)")
    if group_by:
        members: dict[tuple[str, ...], list[int]] = {}
        for i, f in enumerate(flat):
            members.setdefault(tuple(fmt(f.get(k)) for k in group_by), []).append(i)
        order = sorted(members, key=lambda values: [natural_key(v) for v in values])
        return [Group(", ".join(v) + f" ({len(members[v])} runs)", members[v]) for v in order], \
            ", ".join(group_by)
    keys = list(differing)
    values = [", ".join(fmt(differing[k][i]) for k in keys) for i in range(len(runs))]
    if keys and len(keys) <= LEGEND_KEYS and len(set(values)) == len(values):
        return [Group(label, [i]) for i, label in enumerate(values)], ", ".join(keys)
    return [Group(h, [i]) for i, h in enumerate(headers)], ""  # too many keys: the runs' names say them


LEGEND_KEYS = 5


def _legend(header: str, keys: dict[str, Any], most: int = 3) -> str:
    shown = [f"{key}={fmt(value)}" for key, value in list(keys.items())[:most]]
    more = ", …" if len(keys) > most else ""
    return f"{header}: {', '.join(shown)}{more}" if shown else header


def _status(o: dict[str, Any]) -> str:
    return f"{o['status']} @ {o['diverged_step']}" if o["diverged_step"] is not None else o["status"]


def best_runs(values: list[Any], better: Callable[..., Any] | None) -> set[int]:
    """Indices of the best value in a row; none when the row is not ranked or all values are equal."""
    measured = [v for v in values if finite(v)]
    if better is None or len(set(measured)) < 2:
        return set()
    best = better(measured)
    return {i for i, v in enumerate(values) if v == best}


@dataclass
class Section:
    """A table as text cells, for both renderers; `best` holds the (row, column) cells to highlight."""

    title: str
    header: list[str]
    rows: list[list[str]]
    best: set[tuple[int, int]]


def sections(c: Comparison) -> list[Section]:
    """The config diff and the outcome (the profile table is console.profile_table's); grouped, a
    column per group, the outcome's numbers as mean ± std over its runs."""
    if c.grouped:
        return grouped_sections(c)
    title = "config: " + ("every key" if c.all_keys else "keys that differ" if c.diff else
                          "no key differs (besides run.name, run.dir)")
    diff = Section(title, ["key", *c.headers], [[key, *map(fmt, values)] for key, values in c.diff.items()],
                   set())
    rows, best = [], set()
    for key, label, better in OUTCOME:
        values = [o[key] for o in c.outcomes]
        if key in OPTIONAL_OUTCOME and all(v is None for v in values):
            continue
        rows.append([_label(c, key, label), *(_status(o) if key == "status" else fmt(v)
                                              for o, v in zip(c.outcomes, values))])
        if key in LOSSES and c.loss_unit is None:  # different units: no best among them
            continue
        best |= {(len(rows) - 1, col) for col in best_runs(values, better)}
    if c.loss_unit is None:
        rows.insert(1, ["losses in nats per", *own_units(c.runs)])
    return [diff, Section("outcome (best in each row highlighted)", ["", *c.headers], rows, best)]


def _label(c: Comparison, key: str, label: str) -> str:
    """An outcome row's label; a loss's names its unit where the runs share one."""
    return c.loss_unit.label(label) if key in LOSSES and c.loss_unit else label


def group_stats(c: Comparison, group: Group, key: str) -> tuple[float, float, int]:
    """Mean, sample std and count of an outcome number over a group's runs (finite values only)."""
    return mean_std([c.outcomes[i][key] for i in group.members if finite(c.outcomes[i][key])])


def _group_cell(c: Comparison, group: Group, key: str) -> str:
    if key == "status":
        counts: dict[str, int] = {}
        for i in group.members:
            status = c.outcomes[i]["status"]
            counts[status] = counts.get(status, 0) + 1
        return ", ".join(f"{n} {status}" for status, n in counts.items())
    mean, std, n = group_stats(c, group, key)
    if n == 0:
        return "-"
    return fmt(mean) if n == 1 else f"{fmt(mean)} ± {fmt(std, 2)}"


def grouped_sections(c: Comparison) -> list[Section]:
    labels = [g.label for g in c.groups]
    diff_rows = []
    for key, values in c.diff.items():
        cells = [", ".join(dict.fromkeys(fmt(values[i]) for i in g.members)) for g in c.groups]
        diff_rows.append([key, *cells])
    diff = Section(f"config by group ({c.legend_title}): values of the keys that differ", ["key", *labels],
                   diff_rows, set())
    rows, best = [], set()
    for r, (key, label, better) in enumerate(OUTCOME):
        rows.append([_label(c, key, label), *(_group_cell(c, g, key) for g in c.groups)])
        if key != "status":
            means = [group_stats(c, g, key)[0] for g in c.groups]
            best |= {(r, col) for col in best_runs(means, better)}
    return [diff, Section("outcome: mean ± std over each group's runs (best mean highlighted)",
                          ["", *labels], rows, best)]


def group_profiles(c: Comparison) -> dict[str, list[float]]:
    """Label -> the per-layer profile, averaged over a group's runs (layers all of them have)."""
    out = {}
    for g in c.groups:
        profiles = [c.profiles[i].values for i in g.members if c.profiles[i].values]
        depth = min(map(len, profiles), default=0)
        out[g.label] = [sum(p[layer] for p in profiles) / len(profiles) for layer in range(depth)]
    return out


def tables(c: Comparison, width: int | None = None) -> list[Table | Text]:
    """Rich tables for the terminal (a section without rows is its title alone). Cells are Text,
    never markup: a value like [grad, act] stays as it is. A table wider than `width` (many runs) is
    turned round, one run (or group) per row, where that makes it narrower; cells fold, never cut."""
    out: list[Table | Text] = []
    for s in sections(c):
        out.append(_fit(_section_table(s), s, width) if s.rows else Text(s.title))
    columns = group_profiles(c) if c.grouped else c.profile_columns
    if any(columns.values()):
        body, footer = profile_rows(columns, spread=True)
        s = Section(c.profile_title, ["layer", *columns], body + footer, set())
        escaped = {escape(h): v for h, v in columns.items()}
        out.append(_fit(profile_table(escape(c.profile_title), escaped, spread=True), s, width))
    for table in out:
        if isinstance(table, Table):
            table.min_width = len(str(table.title))  # rich wraps a title to the table's width otherwise
    return out


def _fit(table: Table, s: Section, width: int | None) -> Table:
    """The table, or, wider than `width` with more runs than rows, turned round: the longer side
    down the page."""
    if width and natural_width(table) > width and len(s.header) - 1 > len(s.rows):
        return _section_table(s, turned=True)
    return table


def _section_table(s: Section, turned: bool = False) -> Table:
    """A section as a table: its rows as rows, or `turned`, its columns (the runs) as rows."""
    header, rows = s.header, s.rows
    best = s.best
    if turned:
        header = ["run" if header[0] in ("", "key") else header[0], *(row[0] for row in s.rows)]
        rows = [[s.header[col], *(row[col] for row in s.rows)] for col in range(1, len(s.header))]
        best = {(col, r) for r, col in s.best}
    table = Table(title=Text(s.title), title_justify="left")
    labels = max((len(row[0]) for row in rows), default=0)
    for i, name in enumerate(header):  # the labels whole (up to 40 characters); values fold, never cut
        table.add_column(Text(name), justify="left" if i == 0 else "right", overflow="fold",
                         min_width=min(labels, 40) if i == 0 else None)
    for r, row in enumerate(rows):
        table.add_row(*(Text(cell, style=BEST_STYLE if (r, col - 1) in best else "")
                        for col, cell in enumerate(row)))
    return table


def natural_width(table: Table) -> int:
    """The width a table takes uncut."""
    from rich.console import Console

    console = Console(width=100_000)
    return console.measure(table).maximum


def markdown(c: Comparison) -> str:
    parts = [_markdown_table(s.title, s.header, s.rows, s.best) for s in sections(c)]
    columns = group_profiles(c) if c.grouped else c.profile_columns
    if any(columns.values()):
        body, footer = profile_rows(columns, spread=True)
        parts.append(_markdown_table(c.profile_title, ["layer", *columns], body + footer, set()))
    return "\n\n".join(parts) + "\n"


def _markdown_table(title: str, header: list[str], rows: list[list[str]], best: set[tuple[int, int]]) -> str:
    def cell(text: str, bold: bool = False) -> str:
        text = text.replace("|", "\\|")
        return f"**{text}**" if bold else text

    if not rows:
        return f"**{title}**"
    lines = [f"**{title}**", "", "| " + " | ".join(map(cell, header)) + " |",
             "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cell(text, (r, col - 1) in best) for col, text in enumerate(row)) + " |"
              for r, row in enumerate(rows)]
    return "\n".join(lines)


def to_json(c: Comparison) -> str:
    """The same data for scripts: raw numbers, lists aligned with `runs`; NaN/inf become null."""
    data = {
        "runs": [{"name": run.name, "path": str(run.path), "header": header, "label": legend,
                  "layout": layout_label(run.config), "loss_unit": f"nats per {unit}", "outcome": o,
                  "profile": {"step": p.step, "values": p.values, **profile_ratios(p.values)}}
                 for run, header, legend, o, p, unit in zip(c.runs, c.headers, c.legends, c.outcomes,
                                                            c.profiles, own_units(c.runs))],
        "config_diff": c.diff,
        "best": {key: [c.headers[i] for i in sorted(best_runs([o[key] for o in c.outcomes], better))]
                 for key, _, better in OUTCOME if better},
        "profile": {"probe": c.probe, "param": c.param, "at": c.at},
        # the outcomes' losses: in this unit, or (null) each in its run's `loss_unit`
        "loss_unit": c.loss_unit.name if c.loss_unit else None,
        "notes": c.notes,
    }
    if c.grouped:
        profiles = group_profiles(c)
        data["groups"] = [
            {"label": g.label, "runs": [c.headers[i] for i in g.members], "profile": profiles[g.label],
             "outcome": {key: dict(zip(("mean", "std", "n"), group_stats(c, g, key)))
                         for key, _, better in OUTCOME if key != "status"}}
            for g in c.groups]
    return json.dumps(_json_safe(data), indent=2)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN (jq and browsers refuse it)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


LISTING_TAIL = 50  # metrics lines a listing reads, from the end: enough for a run without summary.json


def find_runs(root: Path) -> list[Run]:
    """The runs in `root` and one level below (a sweep's folder), newest first. Probes are not read,
    and only the tail of metrics.jsonl, unless a run without a summary has no validation loss there."""
    paths = sorted({p.parent for pattern in ("*/meta.json", "*/*/meta.json") for p in root.glob(pattern)})
    runs = []
    for path in paths:
        try:
            run = load_run(path, probes=False, tail=LISTING_TAIL)
            if not run.summary and not any(m.get("val_loss") is not None for m in run.metrics):
                run = load_run(path, probes=False)  # its last validation was further back
            runs.append(run)
        except RunError:
            continue  # vanished between the glob and the read
    return sorted(runs, key=_started, reverse=True)


def _started(run: Run) -> float:
    try:
        return datetime.fromisoformat(run.meta["started"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return (run.path / "meta.json").stat().st_mtime


RUNS_COLUMNS = ("name", "status", "layout", "optim", "warm-up", "steps", "val loss (nats)", "date")


def runs_table(runs: list[Run], root: Path, width: int | None = None) -> Table | Text:
    """A row per run; wider than `width`, a run per two lines instead: its name whole, then the rest
    (a name is never cut: sweep cells are told apart by its end)."""
    title = f"runs in {root}, newest first"
    rows = [_runs_row(run, root) for run in runs]
    # no rules between columns, no edge padding: the eight columns fit an 80-column terminal
    table = Table(title=Text(title), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for name in RUNS_COLUMNS:
        table.add_column(name, justify="right" if name in ("warm-up", "steps", "val loss (nats)") else "left",
                         no_wrap=True)
    for row in rows:
        table.add_row(*map(Text, row))
    if not width or natural_width(table) <= width:
        return table
    text = Text(title + "\n")
    for name, *rest in rows:
        text.append(name + "\n", style="bold")
        text.append("    " + " · ".join(f"{column} {value}" if column not in ("status", "date") else value
                                        for column, value in zip(RUNS_COLUMNS[1:], rest)) + "\n")
    return text


def _runs_row(run: Run, root: Path) -> list[str]:
    o, cfg = outcome(run), run.config
    total = cfg.get("train", {}).get("steps")
    return [str(run.path.relative_to(root)), _status(o), layout_label(cfg),
            fmt(cfg.get("optim", {}).get("name")),
            fmt(cfg.get("schedule", {}).get("warmup_steps")), f"{fmt(o['steps_done'])}/{fmt(total)}",
            _val_loss(run, o), datetime.fromtimestamp(_started(run)).strftime("%Y-%m-%d %H:%M")]


def _val_loss(run: Run, o: dict[str, Any]) -> str:
    """A finished run's final validation loss; an unfinished run's last measured one, at its step; each
    in nats per the run's own unit (byte or token: runs of both kinds may share a listing)."""
    (unit,) = own_units([run])
    if run.summary:
        value = o["final_val_loss"]
        return f"{fmt(value)}/{unit}" if finite(value) else fmt(value)
    last = next((m for m in reversed(run.metrics) if finite(m.get("val_loss"))), None)
    return f"{fmt(last['val_loss'])}/{unit} @ {last['step']}" if last else "-"
