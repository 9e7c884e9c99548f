"""Where else a run's lines go: TensorBoard event files (RUN/tb/) and Weights & Biases.

A sink gets the rows a run writes to metrics.jsonl and probes.jsonl, as they are written (the host
values of the flush: no device sync of its own), and the summary at the end. `export` writes the
same from a finished run folder. tensorboard and wandb are optional extras, imported when used.

Scalar names: `train/loss`, `val/loss`, `train/lr`, `train/grad_norm_total`, `train/tokens_per_s`,
and per probe, role and layer `grad/ffn.fc2/layer_03` (layers from 0, as in probes.jsonl).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lnexp.core.config import Config, ConfigError
from lnexp.core.errors import LnexpError
from lnexp.core.status import FINISHED, Status
from lnexp.run.reader import Run, RunError, is_locked, is_run, load_run

TB_DIR = "tb"
WANDB_DIR = "wandb"
METRIC_TAGS = {"loss": "train/loss", "val_loss": "val/loss", "lr": "train/lr",
               "grad_norm_total": "train/grad_norm_total", "tokens_per_s": "train/tokens_per_s"}
# The summary's numbers shown as HParams metrics (and W&B summary), and the run's status as an hparam.
# final_val_bits_per_byte: text runs', comparable across tokenizers.
FINAL_METRICS = ("final_val_loss", "final_val_bits_per_byte", "best_val_loss", "final_train_loss",
                 "steps_done", "diverged_step", "tokens_per_s", "wall_time_s", "dead_layers")


class MissingExtra(RunError):
    """An optional package the config asks for is not installed."""


def check(config: Config) -> None:
    """Raise ConfigError, before anything is written, for a sink whose package is not installed."""
    from importlib.util import find_spec

    for key, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if getattr(config.log, key) not in (None, False) and find_spec(package) is None:
            raise ConfigError(f"log.{key}: needs the {package} package (pip install 'lnexp[{package}]')")


def start_error(exc: Exception, blame: Callable[[str], str]) -> LnexpError:
    """A sink that would not start (W&B without a login, a folder it cannot write), as one line
    naming its key; `blame` prefixes it with what set the key."""
    if isinstance(exc, LnexpError):
        return exc
    key = "log.wandb" if type(exc).__module__.startswith("wandb") else "log.tensorboard"
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return RunError(blame(f"{key}: could not start ({reason}); no run was made"))


def metric_scalars(row: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl row as {tag: value} (absent and null values left out)."""
    return {tag: float(row[key]) for key, tag in METRIC_TAGS.items() if row.get(key) is not None}


def probe_tag(row: dict[str, Any]) -> str:
    """`grad/ffn.fc2/layer_03` for a per-layer weight, `act/resid/layer_00`, `grad/total`."""
    param = row["param"].removesuffix(".weight")
    return f"{row['probe']}/{param}" if row["layer"] is None else \
        f"{row['probe']}/{param}/layer_{row['layer']:02d}"


HISTOGRAM_BINS = 30
HISTOGRAM_STATS = 5  # min, max, count, sum, sum of squares; then the bins' counts


def grad_histograms(grads: list[Any]) -> Any:
    """A histogram of each gradient, on its device (no sync: the flush reads it with the losses): a
    row per tensor of HISTOGRAM_STATS numbers and HISTOGRAM_BINS counts over [min, max]."""
    import torch

    rows = []
    device = next((g.device for g in grads if g is not None), None)
    for g in grads:
        if g is None:  # a weight this step did not reach: a row of NaN, left out when written
            rows.append(torch.full((HISTOGRAM_STATS + HISTOGRAM_BINS,), math.nan, device=device))
            continue
        g = g.detach().float().flatten()
        low, high = g.min(), g.max()
        scaled = (g - low) / (high - low).clamp_min(1e-30) * HISTOGRAM_BINS
        bins = scaled.long().clamp_(0, HISTOGRAM_BINS - 1)
        counts = torch.zeros(HISTOGRAM_BINS, device=g.device).scatter_add_(0, bins, torch.ones_like(g))
        count = torch.full((), float(g.numel()), device=g.device)  # a fill, not a copy from the host
        rows.append(torch.cat([torch.stack([low, high, count, g.sum(), g.square().sum()]), counts]))
    return torch.stack(rows)


def by_step(metrics: list[dict[str, Any]], probes: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Every scalar of these rows, grouped by step, in step order."""
    steps: dict[int, dict[str, float]] = defaultdict(dict)
    for row in metrics:
        steps[row["step"]].update(metric_scalars(row))
    for row in probes:
        steps[row["step"]][probe_tag(row)] = float(row["value"])
    return {step: steps[step] for step in sorted(steps)}


def hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The config as flat `section.key` hparams (run.* left out: the run is named by its folder).
    Values TensorBoard cannot show (lists, null) as their JSON text."""
    from lnexp.core.nested import flatten

    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in flatten(config).items() if not k.startswith("run.")}


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    return {f"final/{k}": float(summary[k]) for k in FINAL_METRICS
            if isinstance(summary.get(k), (int, float)) and not isinstance(summary.get(k), bool)}


class TensorBoard:
    """Event files in `folder`; `start` > 0 (a resumed run) hides the events of later steps that the
    interrupted run had written, as the jsonl lines of those steps are rewritten."""

    def __init__(self, folder: Path, config: dict[str, Any], start: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingExtra("log.tensorboard: needs the tensorboard package "
                               "(pip install 'lnexp[tensorboard]')") from None
        self.writer = SummaryWriter(str(folder), purge_step=start or None)
        self.config = config
        if not start:  # the resolved config, as the run folder's config.yaml has it
            import yaml

            self.writer.add_text("config", f"```yaml\n{yaml.safe_dump(config, sort_keys=False)}```", 0)

    def histograms(self, step: int, tags: list[str], rows: list[list[float]]) -> None:
        """grad_histograms' rows, read back, as TensorBoard histograms (a non-finite one is left out)."""
        for tag, (low, high, count, total, squares, *counts) in zip(tags, rows):
            if all(map(math.isfinite, (low, high, squares))):
                width = (high - low) / HISTOGRAM_BINS
                limits = [low + width * (i + 1) for i in range(HISTOGRAM_BINS)]
                self.writer.add_histogram_raw(tag, low, high, count, total, squares, limits, counts, step)

    def write(self, steps: dict[int, dict[str, float]]) -> None:
        for step, scalars in steps.items():
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # live: what the jsonl has, the event file has

    def finish(self, status: Status, summary: dict[str, Any]) -> None:
        """The config and final metrics through the HParams plugin (filter, group, parallel
        coordinates across a sweep's cells). Not for an interrupted run: its resumption says them."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        if status == Status.INTERRUPTED:
            self.writer.close()
            return
        metrics = final_metrics(summary)
        file_writer = self.writer._get_file_writer()
        for proto in hparams_summaries({**hparams(self.config), "status": str(status)}, metrics):
            file_writer.add_summary(proto)
        step = summary.get("steps_done") or 0
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.close()


def wandb_settings(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """wandb.init's arguments for the run in `path`: the keys `log.wandb` sets (the rest are W&B's
    environment's: WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE), named after the run; a sweep's cell
    (a run folder beside sweep.json) is named SWEEP/CELL and grouped by its sweep unless a group is
    set (`log.wandb.group`, WANDB_RUN_GROUP)."""
    settings = config.get("log", {}).get("wandb") or {}
    given = {k: v for k, v in settings.items() if v not in (None, [])}
    sweep = path.parent.name if (path.parent / "sweep.json").is_file() else None
    group = given.pop("group", None) or os.environ.get("WANDB_RUN_GROUP") or sweep
    return {**given, "name": f"{sweep}/{path.name}" if sweep else path.name,
            **({"group": group} if group else {})}


def add_figures(folder: Path, figures: dict[str, Any], step: int) -> None:
    """Figures (matplotlib's, closed here) as images `figures/<name>` at `step`, in an event file of
    their own in `folder` (RUN/tb/)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    try:
        for name, fig in figures.items():
            writer.add_figure(f"figures/{name}", fig, step, close=True)
    finally:
        writer.close()


class WandB:
    """A W&B run in RUN/wandb/: the same scalars by step, the config, the summary."""

    def __init__(self, folder: Path, config: dict[str, Any], settings: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise MissingExtra("log.wandb: needs the wandb package (pip install 'lnexp[wandb]')") from None
        folder.mkdir(exist_ok=True)
        self.run = wandb.init(dir=str(folder), config=hparams(config), reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off"), **settings)
        self.last = -1

    def write(self, steps: dict[int, dict[str, float]]) -> None:
        for step, scalars in steps.items():
            if step > self.last:  # W&B refuses steps that go back (a resumed run's redone steps)
                self.run.log(scalars, step=step)
                self.last = step

    def finish(self, status: Status, summary: dict[str, Any]) -> None:
        # the value: W&B writes an Enum member by its name
        self.run.summary.update({"status": Status(status).value, **final_metrics(summary)})
        self.run.finish(exit_code=0 if status in FINISHED else 1)


class Sinks:
    """The sinks a run's config asks for, fed with the rows as RunWriter writes them. Probe rows wait
    for the metrics rows of the same flush, so each step goes out once, in step order (W&B's rule)."""

    def __init__(self, sinks: list[TensorBoard | WandB]) -> None:
        self.sinks = sinks
        self.probes: list[dict[str, Any]] = []

    @classmethod
    def open(cls, config: dict[str, Any], path: Path, start: int = 0) -> Sinks | None:
        """The config's sinks for the run in `path` (None: it asks for none)."""
        log = config.get("log", {})
        sinks: list[TensorBoard | WandB] = []
        if log.get("tensorboard"):
            sinks.append(TensorBoard(path / TB_DIR, config, start))
        try:
            if log.get("wandb") is not None:
                sinks.append(WandB(path / WANDB_DIR, config, wandb_settings(config, path)))
        except BaseException:  # W&B would not start: the event file opened before it is closed
            for sink in sinks:
                sink.writer.close()
            raise
        return cls(sinks) if sinks else None

    def add_probes(self, rows: list[dict[str, Any]]) -> None:
        self.probes += rows

    def add_histograms(self, step: int, tags: list[str], rows: list[list[float]]) -> None:
        """Gradient histograms (grad_histograms' rows): TensorBoard's alone."""
        for sink in self.sinks:
            if isinstance(sink, TensorBoard):
                sink.histograms(step, tags, rows)

    def add_metrics(self, rows: list[dict[str, Any]]) -> None:
        steps = by_step(rows, self.probes)
        self.probes = []
        for sink in self.sinks:
            sink.write(steps)

    def finish(self, status: Status, summary: dict[str, Any]) -> None:
        if self.probes:
            self.add_metrics([])
        for sink in self.sinks:
            sink.finish(status, summary)


# --- export of existing run folders ----------------------------------------------------------------

def run_folders(paths: list[Path]) -> list[Path]:
    """The run folders named: a run folder itself, or every run folder in a folder (a sweep, runs/)
    and one level below it, in name order."""
    found: list[Path] = []
    for path in paths:
        if is_run(path):
            found.append(path)
        elif path.is_dir():
            found += sorted({p.parent for pattern in ("*/meta.json", "*/*/meta.json")
                             for p in path.glob(pattern)})
        else:
            raise RunError(f"{path}: no such run folder")
    if not found:
        raise RunError(f"{', '.join(map(str, paths))}: no run folders")
    return list(dict.fromkeys(found))


def export_run(run: Run, to: str) -> Path:
    """Write RUN/tb/ (`to` tensorboard) or RUN/wandb/ (an offline W&B run unless `log.wandb.mode` or
    WANDB_MODE says otherwise: `wandb sync` uploads it) anew from the run's files; an earlier one is
    replaced once the new one is complete. Refused for a run a process is still writing."""
    if is_locked(run.path):
        raise RunError(f"{run.path}: still running; export it when it has ended")
    name = TB_DIR if to == "tensorboard" else WANDB_DIR
    final, fresh, old = (run.path / n for n in (name, f".{name}.tmp", f".{name}.old"))
    shutil.rmtree(fresh, ignore_errors=True)
    if to == "tensorboard":
        sink: TensorBoard | WandB = TensorBoard(fresh, run.config)
    else:
        settings = wandb_settings(run.config, run.path)
        settings["mode"] = settings.get("mode") or os.environ.get("WANDB_MODE") or "offline"
        sink = WandB(fresh, run.config, settings)
    sink.write(by_step(run.metrics, run.probes))
    sink.finish(run.status, run.summary)
    if final.exists():
        final.rename(old)
    fresh.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


EXPORTS = ("tensorboard", "wandb")


def export(paths: list[Path], to: str = "tensorboard") -> tuple[list[Path], list[str]]:
    """Export every run folder under `paths`; returns the folders written and notes on runs skipped."""
    if to not in EXPORTS:
        raise RunError(f"--to: must be one of {', '.join(EXPORTS)}, got {to!r}")
    written, notes = [], []
    for folder in run_folders(paths):
        try:
            written.append(export_run(load_run(folder), to))
        except RunError as exc:
            if isinstance(exc, MissingExtra):
                raise
            notes.append(str(exc))
    return written, notes
