"""device_check: lnexp's GPU path measured in one command, on one NVIDIA GPU, in under 8 minutes.

Whenever a GPU is lent, run this before anything else, from the repository root, and commit what it
writes (docs/development.md: how, with the device tool and the wheels that machine lacks):

    python benchmarks/device_check.py --out "$OUT"    # GPU: writes benchmarks/RESULTS-<device>.md
    python benchmarks/device_check.py --dry-run       # CPU: the same code at tiny shapes, about a minute

`--out DIR` gets a copy of the RESULTS file and its .json twin (the device tool brings $OUT back). The
dry run writes only to DIR (default benchmarks/out/, git-ignored), never over a committed RESULTS file;
tests/test_device_check.py runs it, so this script cannot rot unnoticed.

Each part runs in its own process under its own time limit (the last part gets what is left of
--budget-s, 450 s by default; the dry run has only the total), so a part that fails or runs out of
time is recorded with its reason and the others go on (a CUDA error poisons only its own process). The
RESULTS file is rewritten after every part and a part's process saves its results after every entry,
so a time-out still leaves numbers. The parts, numbered as in issue #29 and run in the order 1, 2, 4,
3 (the reproductions, the longest and least predictable, take what time is left):

1. `train`: lnexp's TransformerLM against nanoGPT's GPT (benchmarks/nanogpt_model.py) at GPT-2 small's
   shape (12 layers, d_model 768, 12 heads, 12 x 1024 tokens, as nanoGPT's bench.py), in bf16
   autocast, eager and compiled: bench_train's `versus_nanogpt`, the two loops taking turns in one
   process. Tokens/s, MFU against the device's own peak (lnexp.run.hardware), lnexp / nanoGPT.
2. `pack`: 8 cells trained packed against the same 8 one by one, at the `tiny`, `cpu` and `small`
   reproduction shapes (`small` too: bench_pack's 5x goal is stated there): bench_pack's `measure`.
3. `reproduce-init`, `reproduce-train`: `lnexp reproduce xiong2020-init --scale small`, then
   `lnexp reproduce xiong2020-warmup --scale small`, timed, through lnexp's CLI. The training suite:
   with radam the fewest layers trained at `small` (12 runs x 6 layers x 1000 steps; gpt2-scaling
   4 x 24, depth 16 runs up to 36), it tests the project's headline claim (Xiong et al.'s Figure 2:
   Post-LN needs warm-up), and its 8 Post-LN runs share one structure, so `reproduce` measures packing
   on the GPU and packs them where that is faster: a packed sweep in real use.
4. `ddp`: torchrun, 2 steps with per-layer gradient norms every step, against one process (below).
5. Every entry's peak memory: torch.cuda.max_memory_allocated (reset per entry; for torchrun, the
   largest of the ranks'); on a CPU the process's max RSS instead, labelled so.

Part 4's comparison. Each torchrun rank draws its own batches (the batch of step s is f(seed, rank,
s)), so with W > 1 ranks the all-reduced gradient averages W different batches and no single process
computes it: not the process with one rank's batch, nor one with a W-times larger batch (its rows are
other draws). So the check is made where equality holds: torchrun with one rank against one plain
process, same config, `train.deterministic` and one CPU thread: every per-layer gradient norm
(probes.jsonl, steps 0 and 1) must be identical. With one rank lnexp joins no process group, so this
checks torchrun's launch path, not nccl; the output says so. Where W > 1 devices exist (2 gloo ranks in
the dry run, every GPU otherwise) a W-rank run checks what lnexp guarantees for it (docs/hardware.md,
tests/test_distributed.py): every rank logs the same total gradient norm (all-reduced) while their
losses differ (own batches); its per-layer norms against the single process are shown, not checked.
nccl refuses two ranks on one GPU, so one GPU cannot exercise nccl at all. The dry run makes only the
2-rank check (the 1-rank one is the same code at world size 1).

The dry run runs every part's code on the CPU with shapes cut to seconds, on one thread (tiny models
on shared cores: a second thread only waits): a tiny GPT pair compiled by the `aot_eager` backend
(dynamo and AOT autograd; inductor's code generation alone takes a minute or more on 2 cores), cells of
d_model 16 on a synthetic task (`pack` at one shape: the cut makes the three alike), and a `dry-run`
reproduction scale (xiong2020-init at depths 2 and 3, xiong2020-warmup at one learning rate, one seed,
4 steps), passed to `lnexp.experiments.reproduce.reproduce`, the call `lnexp reproduce` makes.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import functools
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT))  # this checkout's lnexp, also where none is installed (the GPU machine)

import torch  # noqa: E402

PEAKS_ENV = "DEVICE_CHECK_PEAKS"  # where a torchrun rank appends its peak memory at exit
TRAIN_SUITE = "xiong2020-warmup"
# Shapes cut to seconds for the dry run, as `--set` items over a reproduction scale's base config.
DRY_SETS = ["data={source: synthetic}", "model.d_model=16", "model.d_ff=32", "model.max_seq_len=16",
            "train.batch_size=4", "train.seq_len=16"]
GOAL_TOKENS_PER_S = 450_000  # lnexp at GPT-2 small on an H100, bf16, compiled (issue #29)
NANOGPT_BENCH_H100 = 400_000  # nanoGPT's own bench.py on an H100, as measured for this project
GOAL_PACK_RATIO = 5.0  # packed / one by one at 8 cells on a GPU (issue #29; bench_pack's TARGET_M8)
BUDGET_S = 450  # all parts, by default: 8 minutes with room for start-up


# --- a part's results, in its own process ---------------------------------------------------------

def peak_memory() -> dict[str, Any]:
    """This process's peak memory since the last reset: CUDA's allocator where CUDA is in use, else
    the max RSS (which cannot be reset: the process's so far)."""
    if torch.cuda.is_initialized():
        return {"bytes": torch.cuda.max_memory_allocated(), "what": "CUDA max_memory_allocated"}
    return {"bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
            "what": "no CUDA: max RSS since its process started"}


def reset_peak() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


class Recorder:
    """A part's entries, each a table of rows (measured, value, goal, met) with its seconds, peak
    memory and any error. The file is rewritten as each entry starts and ends, so a part killed at
    its time limit leaves what it finished (and the entry it was in, marked running)."""

    def __init__(self, path: Path) -> None:
        self.path, self.entries = path, []

    def save(self) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.entries, indent=1))
        partial.replace(self.path)  # whole, even if the process is killed mid-write

    @contextmanager
    def entry(self, name: str, **info: Any) -> Iterator[dict[str, Any]]:
        """Yields the entry: its "rows" to append to; an error ends the entry (recorded), not the part."""
        entry = {"name": name, "status": "running", "rows": [], **info}
        self.entries.append(entry)
        self.save()
        print(f"[{self.path.stem}] {name}: started", file=sys.stderr, flush=True)
        reset_peak()
        began = time.perf_counter()
        try:
            yield entry
            entry["status"] = "ok"
        except Exception:
            entry["status"], entry["error"] = "failed", traceback.format_exc()[-3000:]
            print(entry["error"], file=sys.stderr, flush=True)
        entry["seconds"] = time.perf_counter() - began
        entry.setdefault("peak", peak_memory())
        self.save()
        print(f"[{self.path.stem}] {name}: {entry['status']} in {entry['seconds']:.1f} s", file=sys.stderr,
              flush=True)


def row(measured: str, value: Any, goal: str = "", met: str = "") -> list[Any]:
    return [measured, value, goal, met]


def at_least(value: float, target: float) -> str:
    return "yes" if value >= target else "no"


def lnexp_cli(args: list[str]) -> int:
    """lnexp's CLI in this process (its exit code): the command line a user types, and its memory is
    this process's."""
    from lnexp.cli import app

    try:
        app(args, prog_name="lnexp")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    return 0


# --- 1. lnexp against nanoGPT at GPT-2 small -------------------------------------------------------

def part_train(rec: Recorder, dry: bool, work: Path) -> None:
    import bench_train

    from lnexp.core.config import validate
    from lnexp.core.model import TransformerLM
    from lnexp.run.hardware import flops_per_token, peak_tflops

    if dry:
        pair = bench_train.Pair({**bench_train.NANOGPT_SHAPE, "n_layers": 2, "d_model": 32, "n_heads": 2,
                                 "d_ff": 128, "max_seq_len": 32, "bias": False},
                                batch_size=4, seq_len=32, bf16=True, compile="aot_eager")
        rounds = 2
    else:
        pair, rounds = bench_train.PAIRS["gpt2-small"], 10
    m = pair.model
    with torch.device("meta"):  # only its parameter count
        n_params = TransformerLM(validate({"model": m, "train": {"seq_len": pair.seq_len}}).model,
                                 pair.vocab_size).num_params()
    flops = flops_per_token(n_params, m["n_layers"], m["d_model"], pair.seq_len)
    peak = peak_tflops(torch.device(pair.device), None)
    for compiled in (None, pair.compile):
        with rec.entry(f"bf16, {f'torch.compile ({compiled})' if compiled else 'eager'}") as entry:
            result = bench_train.versus_nanogpt(rounds, replace(pair, compile=compiled))
            speed = result["tokens_per_s"]
            median, low, high = result["ratio"]
            goals = compiled and not dry  # the goals are GPT-2 small's, compiled
            entry["rows"] += [
                row("lnexp tokens/s", speed["lnexp"],
                    f">= {GOAL_TOKENS_PER_S:,} (the goal on an H100)" if goals else "",
                    at_least(speed["lnexp"], GOAL_TOKENS_PER_S) if goals else ""),
                row("nanoGPT GPT tokens/s", speed["nanoGPT GPT"], f"about {NANOGPT_BENCH_H100:,} on an H100 "
                    "(nanoGPT's bench.py, for reference)" if goals else ""),
                *(row(f"{name} MFU (peak {peak:g} TFLOP/s)" if peak else f"{name} MFU",
                      speed[name] * flops / (peak * 1e12) if peak else "n/a: no peak known for this device")
                  for name in ("lnexp", "nanoGPT GPT")),
                row("lnexp / nanoGPT GPT (median of rounds)", median, ">= 1.0",
                    "yes" if low >= 1.0 else "no" if high < 1.0 else "within noise"),
                row("its 95% interval", f"{low:.3f} - {high:.3f}"),
                *(row(f"{name}: first segment, {bench_train.SEGMENT} steps"
                      + (" and compilation (s)" if compiled else " (s)"), seconds)
                  for name, seconds in result["first_segment_s"].items())]
            entry["setting"] = f"bare AdamW loop, {result['pair']}, {rounds} rounds"


# --- 2. packed cells against one by one ------------------------------------------------------------

def part_pack(rec: Recorder, dry: bool, work: Path) -> None:
    import bench_pack

    for scale in ("tiny",) if dry else ("tiny", "cpu", "small"):  # the dry run's sets make them one shape
        with rec.entry(f"8 cells at the {scale} shape") as entry:
            r = bench_pack.measure(scale, 8, rounds=1 if dry else 5, sets=DRY_SETS if dry else ())
            entry["rows"] += [row("packed tokens/s (all 8 cells)", r["packed"]),
                              row("one by one tokens/s", r["alone"]),
                              row("one model on the 8 batches tokens/s", r["one model"]),
                              row("packed / one by one", r["packed / alone"], f">= {GOAL_PACK_RATIO:g}",
                                  at_least(r["packed / alone"], GOAL_PACK_RATIO)),
                              row("ceiling: one model / one by one", r["one model / alone"])]


# --- 4. torchrun against one process ---------------------------------------------------------------

def grad_norms(run: Path) -> dict[tuple[Any, ...], float]:
    from lnexp.run.reader import load_run

    return {(p["step"], p["layer"], p["param"]): p["value"] for p in load_run(run).probes
            if p["probe"] == "grad"}


def max_relative_difference(a: dict[tuple[Any, ...], float], b: dict[tuple[Any, ...], float]) -> float:
    if a.keys() != b.keys() or not a:
        raise RuntimeError(f"the runs logged different gradient norms ({len(a)} and {len(b)} values)")
    return max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-30) for k in a)


def torchrun(world: int, config: Path, name: str, work: Path, timeout: float) -> dict[str, Any]:
    """`lnexp train` under torchrun with `world` ranks (this file's --lnexp mode, which records each
    rank's peak memory); returns the peak of the largest rank."""
    peaks = work / f"peaks-{name}.jsonl"
    env = {**os.environ, PEAKS_ENV: str(peaks)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(world), __file__, "--lnexp", "train", str(config), "--quiet",
                    "--set", f"run.name={name}"], env=env, check=True, timeout=timeout)
    return max((json.loads(line) for line in peaks.read_text().splitlines()), key=lambda p: p["bytes"])


def part_ddp(rec: Recorder, dry: bool, work: Path) -> None:
    import yaml

    from lnexp.core.config import apply_sets
    from lnexp.experiments.reproduce.engine import SCALES
    from lnexp.run.reader import load_run

    sets = [*(DRY_SETS if dry else []), "train.steps=2", "train.eval_batches=1", "train.threads=1",
            "train.deterministic=true", "log.grad_every=1", "log.probes=[grad]", "log.loss_every=1",
            f"run.dir={work / 'runs'}"]
    config = work / "ddp.yaml"
    config.write_text(yaml.safe_dump(apply_sets(SCALES["tiny" if dry else "small"].train, sets)))
    with rec.entry("one process (`lnexp train`)") as entry:
        code = lnexp_cli(["train", str(config), "--quiet", "--set", "run.name=single"])
        if code:
            raise RuntimeError(f"lnexp train exited with {code}")
        single = grad_norms(work / "runs" / "single")
        entry["rows"].append(row("per-layer gradient norms logged (steps 0 and 1)", len(single)))
    for world in [2] if dry else sorted({1, torch.cuda.device_count()}):
        with rec.entry(f"torchrun, {world} rank{'s' * (world > 1)}") as entry:
            entry["peak"] = torchrun(world, config, f"ranks{world}", work, timeout=180)
            run = load_run(work / "runs" / f"ranks{world}")
            difference = max_relative_difference(grad_norms(run.path), single)
            if world == 1:
                entry["rows"] += [
                    row("per-layer gradient norms against one process: max relative difference", difference,
                        "0 (the same batches, deterministic)", "yes" if difference == 0 else "no"),
                    row("process group", "none: at world size 1 lnexp joins none, so nccl is not exercised "
                        "(one rank is trivially one process)")]
                continue
            logged = [m["ranks"] for m in run.metrics if m.get("ranks")]
            norms_agree = all(len(set(r["grad_norm_total"])) == 1 for r in logged)
            losses_differ = all(len(set(r["loss"])) == world for r in logged)
            entry["rows"] += [
                row("backend, world size", f"{run.meta.get('backend')}, {run.meta.get('world_size')}"),
                row("steps whose every rank logged its norm", len(logged), "2", at_least(len(logged), 2)),
                row("every rank's total gradient norm equals rank 0's (all-reduced)", str(norms_agree),
                    "True", "yes" if norms_agree else "no"),
                row("the ranks' own losses differ (own batches)", str(losses_differ), "True",
                    "yes" if losses_differ else "no"),
                row("per-layer gradient norms against one process: max relative difference", difference,
                    "not equal by design: the all-reduced gradient averages the ranks' batches")]


# --- 3. reproduce, timed ---------------------------------------------------------------------------

def dry_run_scale() -> Any:
    """`tiny`, cut to seconds: the scale the dry run reproduces at (the GPU run: `small`)."""
    from lnexp.core.config import apply_sets
    from lnexp.experiments.reproduce.engine import SCALES
    from lnexp.experiments.reproduce.suites import xiong_init, xiong_warmup

    tiny = SCALES["tiny"]
    shrink = [*DRY_SETS, "train.steps=4", "train.eval_every=2", "log.grad_every=2", "log.loss_every=2"]
    return replace(
        tiny, name="dry-run", train=apply_sets(tiny.train, shrink), init=apply_sets(tiny.init, DRY_SETS),
        seeds=1, init_seeds=1, warmup=2, suite_params={
            "xiong2020-init": xiong_init.Params((2, 3), 2, (8, 16)),
            "xiong2020-warmup": xiong_warmup.Params((3e-3,))})


def run_folders(out: Path) -> list[Path]:
    return sorted(p.parent for p in (out / "runs").glob("*/*/meta.json"))


def reproduce_rows(out: Path, suite: str, total: int) -> list[list[Any]]:
    """What a reproduction's folder shows, finished or not: runs done, their wall times and speed,
    packs, verdicts. The parent reads it too, from a part killed at its time limit."""
    from lnexp.run.reader import load_run

    runs = [load_run(p, probes=False) for p in run_folders(out)]
    done = [r for r in runs if r.summary.get("status") == "completed"]
    walls = [r.summary["wall_time_s"] for r in done if r.summary.get("wall_time_s")]
    speeds = [r.summary["tokens_per_s"] for r in done
              if r.summary.get("tokens_per_s") and r.config["train"]["steps"] > 1]  # not the one-step cells
    rows = [row("runs completed", f"{len(done)} of {total}"),
            row("wall time per run, median (s)", statistics.median(walls) if walls else "none finished"),
            row("runs trained in packs", sum(bool(r.meta.get("packs")) for r in done))]
    if speeds:
        rows.append(row("tokens/s per training run, median", statistics.median(speeds),
                        "docs/scaling-out.md assumed 0.5-1.3 M for an L6 cell (2-5% of an H100)"))
    verdicts = out / suite / "verdicts.json"
    if verdicts.exists():
        from lnexp.experiments.reproduce.report import load_suite

        counts = collections.Counter(f"{v.kind} {v.verdict}" for v in load_suite(out / suite).verdicts)
        rows.append(row("verdicts", ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))))
    return rows


def part_reproduce(suite: str, rec: Recorder, dry: bool, work: Path) -> None:
    """`lnexp reproduce SUITE --scale small` through the library call the command makes (the dry run's
    scale is no name the command line accepts)."""
    from lnexp.experiments.reproduce import SCALES, SUITES, reproduce
    from lnexp.experiments.reproduce.engine import make_cells

    scale = dry_run_scale() if dry else SCALES["small"]
    out = work / f"reproduce-{suite}"
    cells = make_cells(scale, SUITES[suite].specs(scale), out, None)
    total = len({id(cell) for cell in cells.values()})  # specs of the same config share a cell
    with rec.entry(f"lnexp reproduce {suite} --scale {scale.name}", out=str(out), suite=suite, total=total
                   ) as entry:
        try:
            outcome = reproduce(suite, scale, out=out, threads=1 if dry else None)
        finally:
            entry["rows"] += reproduce_rows(out, suite, total)
        if outcome.failed:
            raise RuntimeError(f"{len(outcome.failed)} run(s) failed: {next(iter(outcome.failed.values()))}")


# --- the parts, run one by one in their own processes ----------------------------------------------

@dataclass(frozen=True)
class Part:
    name: str
    title: str
    limit_s: float | None  # its time limit on a GPU (capped by what is left); None: what is left
    run: Callable[[Recorder, bool, Path], None]


PARTS = [
    Part("train", "1. lnexp's model against nanoGPT's GPT at GPT-2 small", 180, part_train),
    Part("pack", "2. 8 cells packed against one by one", 45, part_pack),
    Part("ddp", "4. torchrun against one process: per-layer gradient norms", 45, part_ddp),
    Part("reproduce-init", "3a. lnexp reproduce xiong2020-init", 60,
         functools.partial(part_reproduce, "xiong2020-init")),
    Part("reproduce-train", f"3b. lnexp reproduce {TRAIN_SUITE}", None,
         functools.partial(part_reproduce, TRAIN_SUITE)),
]
MIN_PART_S = 15  # a part given less is skipped: start-up alone takes a few seconds


def run_child(argv: list[str], timeout: float) -> tuple[int | None, str]:
    """Runs argv in its own process group, its output passed through live; returns its exit code (None:
    killed, with everything it started, at the time limit) and its last lines of output."""
    paths = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": paths, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=40)

    def relay() -> None:
        for line in child.stdout:
            sys.stderr.write(line)
            tail.append(line)

    relaying = threading.Thread(target=relay, daemon=True)
    relaying.start()
    try:
        code = child.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        code = None
    relaying.join(10)
    return code, "".join(tail)


def run_part(part: Part, limit: float, dry: bool, work: Path) -> dict[str, Any]:
    result_path = work / f"{part.name}.json"
    argv = [sys.executable, __file__, "--part", part.name, "--work", str(work)]
    if dry:
        argv.append("--dry-run")
    began = time.perf_counter()
    code, tail = run_child(argv, limit)
    seconds = time.perf_counter() - began
    entries = json.loads(result_path.read_text()) if result_path.exists() else []
    for entry in entries:
        if entry["status"] == "running":  # killed inside it
            entry["status"] = "timed out" if code is None else "failed"
            entry["error"] = f"the part's process ended inside this entry, after {seconds:.0f} s" + \
                (f" (its time limit, {limit:.0f} s)" if code is None else f", exit code {code}")
            if entry.get("suite"):  # a reproduction: what its folder holds
                entry["rows"] = reproduce_rows(Path(entry["out"]), entry["suite"], entry["total"])
    status = "timed out" if code is None else "failed" if code or any(e["status"] != "ok" for e in entries) \
        else "ok"
    result = {"name": part.name, "title": part.title, "status": status, "seconds": seconds, "limit_s": limit,
              "entries": entries}
    if status != "ok" and not entries:
        result["error"] = ("killed at its time limit" if code is None else f"exit code {code}") + \
            f"; its last lines of output:\n{tail}"
    return result


# --- the report ------------------------------------------------------------------------------------

def slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def value_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def memory_text(peak: dict[str, Any] | None) -> str:
    return f"{peak['bytes'] / 2**30:.2f} GiB ({peak['what']})" if peak else "not measured"


def machine(dry: bool) -> dict[str, Any]:
    from lnexp import __version__
    from lnexp.run.hardware import peak_tflops

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "CPU"
    try:  # the device machine's copy of the checkout may have no .git, or no git
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    return {"device": device, "gpus": torch.cuda.device_count(), "dry_run": dry,
            "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
            "peak_tflops": peak_tflops(torch.device("cuda"), None) if cuda else None,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "lnexp": __version__, "commit": commit or "unknown", "cores": os.cpu_count(),
            "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "command": " ".join(sys.argv)}


def report(info: dict[str, Any], parts: list[dict[str, Any]], wall: float, budget: float) -> str:
    gpus = f"{info['gpus']} x {info['device']}, {info['memory_gib']:.0f} GiB" if info["gpus"] else "none"
    peak = f"{info['peak_tflops']:g} TFLOP/s (lnexp.run.hardware)" if info["peak_tflops"] else "none known"
    lines = [f"# lnexp's device check on {info['device']}{' (DRY RUN)' if info['dry_run'] else ''}", "",
             f"Measured {info['date']} by `{info['command']}`: lnexp {info['lnexp']} (commit "
             f"{info['commit']}), torch {info['torch']}, CUDA {info['cuda']}, Python {info['python']}, "
             f"{info['cores']} CPU cores; GPUs: {gpus}; dense bf16 peak {peak}. {wall:.0f} s of a "
             f"{budget:.0f} s budget.", ""]
    if info["dry_run"]:
        lines += ["A dry run: every part's code on the CPU at tiny shapes (benchmarks/device_check.py). Its "
                  "numbers say nothing about speed, and its goals are the GPU's.", ""]
    for part in parts:
        lines += [f"## {part['title']} (`{part['name']}`): {part['status']}, {part['seconds']:.0f} s of "
                  f"{part['limit_s']:.0f}", ""]
        if part.get("error"):
            lines += ["```", part["error"].strip(), "```", ""]
        for entry in part["entries"]:
            lines += [f"### {entry['name']}: {entry['status']}"
                      + (f", {entry['seconds']:.0f} s" if "seconds" in entry else "")
                      + f"; peak memory {memory_text(entry.get('peak'))}", ""]
            if entry.get("setting"):
                lines += [entry["setting"], ""]
            if entry["rows"]:
                lines += ["| measured | value | goal | met |", "| --- | --- | --- | --- |"]
                lines += [f"| {what} | {value_text(value)} | {goal} | {met} |"
                          for what, value, goal, met in entry["rows"]]
                lines.append("")
            if entry.get("error"):
                lines += ["```", entry["error"].strip(), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same code on a CPU at tiny shapes")
    parser.add_argument("--out", type=Path, help="also copy the RESULTS file and its .json here "
                        "(dry run: write them only here; default benchmarks/out/)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="wall-clock budget of all parts")
    parser.add_argument("--parts", help=f"comma-separated, of {', '.join(p.name for p in PARTS)} "
                        "(default: all)")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # a part's own process
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        if args.dry_run:
            torch.set_num_threads(1)  # tiny shapes on shared cores: more threads only wait for each other
        part = next(p for p in PARTS if p.name == args.part)
        part.run(Recorder(args.work / f"{part.name}.json"), args.dry_run, args.work)
        return
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run on a CPU")
    missing = [name for name in ("pydantic", "typer", "yaml", "rich", "matplotlib")
               if importlib.util.find_spec(name) is None]
    if missing:
        parser.error(f"lnexp needs {', '.join(missing)}: carry the wheels (docs/development.md)")
    chosen = [p for p in PARTS if not args.parts or p.name in args.parts.split(",")]
    info = machine(args.dry_run)
    if args.dry_run:
        results = (args.out or ROOT / "benchmarks" / "out") / "RESULTS-dry-run.md"
    else:
        results = ROOT / "benchmarks" / f"RESULTS-{slug(info['device'])}.md"
    results.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    parts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
        for part in chosen:
            left = args.budget_s - (time.perf_counter() - began)
            # the dry run's parts cost mostly start-up, not a share of the work: only the total binds them
            limit = left if args.dry_run or part.limit_s is None else min(part.limit_s, left)
            print(f"[device_check] {part.title}: limit {limit:.0f} s", file=sys.stderr, flush=True)
            if limit < MIN_PART_S:
                parts.append({"name": part.name, "title": part.title, "status": "skipped", "seconds": 0,
                              "limit_s": limit, "entries": [], "error": "no time left in the budget"})
            else:
                work = Path(tmp) / part.name
                work.mkdir()
                parts.append(run_part(part, limit, args.dry_run, work))
            wall = time.perf_counter() - began
            results.write_text(report(info, parts, wall, args.budget_s))
            summary = {**info, "wall_s": wall, "parts": parts}
            results.with_suffix(".json").write_text(json.dumps(summary, indent=1))
            if args.out and not args.dry_run:
                args.out.mkdir(parents=True, exist_ok=True)
                for written in (results, results.with_suffix(".json")):
                    shutil.copy(written, args.out / written.name)
    print(f"[device_check] wrote {results} in {time.perf_counter() - began:.0f} s", file=sys.stderr)


def as_lnexp(args: list[str]) -> None:
    """A torchrun rank: lnexp's CLI; at exit, this process's peak memory appended to $DEVICE_CHECK_PEAKS."""
    def record() -> None:
        with open(os.environ[PEAKS_ENV], "a") as peaks:
            peaks.write(json.dumps({"rank": os.environ.get("RANK"), **peak_memory()}) + "\n")

    atexit.register(record)
    sys.exit(lnexp_cli(args))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--lnexp"]:
        as_lnexp(sys.argv[2:])
    else:
        main()
