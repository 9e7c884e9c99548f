"""bench_train: what lnexp's measurement costs, measured side by side in one process.

1. Whole-loop speed ratios. lnexp's real training loop (`lnexp.run.train.train`, run folder and all)
   with the default probes (grad, act) every step, every 10 steps and off, and a minimal loop over
   the same model, data and optimiser with none of lnexp's machinery. Each runs in its own thread;
   they take turns every SEGMENT steps (one at a time, so they never compete), and every segment of
   a variant is compared with the "probes off" segments run just before and after it. Targets:
   every-10 >= 0.98x off, every-step >= 0.95x off, off >= 0.98x minimal.
2. A torch.profiler profile of lnexp's loop with every probe on: the time inside each probe's
   `probe:<kind>` label per logging step, against the step itself. It resolves costs far below
   the whole-loop noise of a shared 2-core VM.
3. The single model's step against nanoGPT's `GPT` (benchmarks/nanogpt_model.py, vendored): both
   in the same bare AdamW loop, same shape and data kind, taking turns every SEGMENT steps
   (`PAIRS`: at --shape cpu 6 layers, d_model 128, Pre-LN, GELU, GPT-2 init, tied, learned
   positions, biases; at gpt2-small GPT-2 small as nanoGPT's bench.py runs it, bf16, compiled).
   Target >= 1.0x.

    python benchmarks/bench_train.py                       # CPU shape, 2 cores
    python benchmarks/bench_train.py --shape gpt2-small    # on a GPU: bf16, compile
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lnexp.core.config import Config, validate
from lnexp.core.model import TransformerLM
from lnexp.core.probe_kinds import PROBE_KINDS
from lnexp.data.sources import load_data
from lnexp.run.train import build_optimizer, train

SHAPES: dict[str, dict[str, Any]] = {
    "cpu": {"model": {"n_layers": 4, "d_model": 128, "n_heads": 4, "d_ff": 512, "max_seq_len": 128},
            "data": {"source": "synthetic", "task": "random", "vocab_size": 256},
            "train": {"batch_size": 16, "seq_len": 128, "device": "cpu"}},
    "gpt2-small": {"model": {"n_layers": 12, "d_model": 768, "n_heads": 12, "d_ff": 3072,
                             "max_seq_len": 1024, "norm": "pre", "init": "gpt2",
                             "residual_scaling": "gpt2", "dropout": 0.0},
                   "data": {"source": "synthetic", "task": "random", "vocab_size": 50304},
                   "train": {"batch_size": 12, "seq_len": 1024, "device": "cuda", "precision": "bf16",
                             "compile": True}},
}
TARGETS = {"probes every 10 / off": 0.98, "probes every step / off": 0.95, "probes off / minimal": 0.98,
           "lnexp / nanoGPT GPT": 1.0}
BASELINE = "probes off"  # every other variant is timed between two segments of it
RATIOS = {"probes every 10 / off": ("probes every 10", "probes off"),  # label: (numerator, denominator)
          "probes every step / off": ("probes every step", "probes off"),
          "probes off / minimal": ("probes off", "minimal")}
DEFAULT_PROBES = ["grad", "act"]
VARIANTS: dict[str, tuple[int, list[str]] | None] = {  # (log.grad_every, log.probes); None: minimal loop
    "minimal": None,
    "probes off": (1, []),
    "probes every 10": (10, DEFAULT_PROBES),
    "probes every step": (1, DEFAULT_PROBES),
}
CLOCK = "device" if torch.cuda.is_available() else "CPU"  # what the profile's labels are timed by
SEGMENT = 10  # steps between hand-overs: lnexp's flush interval (log.loss_every) and grad_every 10


def make_config(shape: str, steps: int, probes: tuple[int, list[str]] | None, run_dir: str, name: str
                ) -> Config:
    raw = {section: dict(values) for section, values in SHAPES[shape].items()}
    raw["train"].update(steps=steps, eval_every=10**9, eval_batches=1)
    grad_every, kinds = probes or (1, [])
    raw["log"] = {"grad_every": grad_every, "probes": kinds, "loss_every": SEGMENT}
    raw["run"] = {"dir": run_dir, "name": name}
    return validate(raw, source="bench")



def lnexp_loop(config: Config, segment_done: Callable[[], None]) -> None:
    """lnexp's real loop, run folder and all; it hands over at each flush."""
    train(config, "bench", ["bench"], progress=lambda done, total, row: segment_done())


def minimal_loop(config: Config, segment_done: Callable[[], None]) -> None:
    """The same model, data and optimiser in the shortest loop that trains it."""
    t = config.train
    device = torch.device(t.device)
    data = load_data(config.data, config.model.arch)
    torch.manual_seed(t.seed)
    model = TransformerLM(config.model, data.vocab_size).to(device)
    optimizer = build_optimizer(model, config, fused=device.type == "cuda")
    forward = torch.compile(model) if t.compile else model
    generator = torch.Generator().manual_seed(t.seed)
    bf16 = t.precision == "bf16"
    for step in range(t.steps):
        x, y = (b.to(device, non_blocking=True)
                for b in data.batch("train", t.batch_size, t.seq_len, generator))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = forward(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % SEGMENT == 0:
            loss.item()  # the loop's loss read for a log line, and the wait for the device
            segment_done()


class Interleaved:
    """Runs each variant's whole loop in its own thread, one thread at a time, handing over every
    SEGMENT steps, so every variant samples the machine's fast and slow moments alike. Only the
    running thread does work (the others wait on a semaphore), so the variants never compete."""

    def __init__(self, loops: dict[str, Callable[[Callable[[], None]], None]]) -> None:
        self.turn = {name: threading.Semaphore(0) for name in loops}
        self.back = threading.Semaphore(0)
        self.log: list[tuple[str, float]] = []  # (variant, seconds) per segment, in the order run
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(name, loop), daemon=True)
                        for name, loop in loops.items()]
        for thread in self.threads:
            thread.start()

    def _run(self, name: str, loop: Callable[[Callable[[], None]], None]) -> None:
        self.turn[name].acquire()
        began = time.perf_counter()

        def segment_done() -> None:
            nonlocal began
            self.log.append((name, time.perf_counter() - began))
            self.back.release()
            self.turn[name].acquire()
            began = time.perf_counter()

        try:
            loop(segment_done)
        except BaseException as exc:  # re-raised by the scheduler, in the main thread
            self.errors.append(exc)
        self.back.release()

    def give_turn(self, name: str) -> None:
        self.turn[name].release()
        self.back.acquire()
        if self.errors:
            raise self.errors[0]

    def finish(self) -> None:
        for thread, name in zip(self.threads, self.turn):
            self.give_turn(name)
            thread.join()


def measure(shape: str, rounds: int, warmup: int) -> dict[str, Any]:
    """Each round runs, for every other variant X, a segment of "probes off" and then one of X (the
    order of the X rotating each round), so every segment of X sits between two of "probes off".
    Its ratio is taken against the mean of those two neighbours, which cancels the machine's drift;
    the median over rounds is reported with a distribution-free 95% interval."""
    others = [name for name in VARIANTS if name != BASELINE]
    schedule = []
    for r in range(warmup + rounds):
        for name in others[r % len(others):] + others[: r % len(others)]:
            schedule += [BASELINE, name]
    schedule.append(BASELINE)
    with tempfile.TemporaryDirectory() as tmp:
        loops = {}
        for name, probes in VARIANTS.items():
            steps = schedule.count(name) * SEGMENT
            config = make_config(shape, steps, probes, tmp, name.replace(" ", "-").replace("+", ""))
            loops[name] = functools.partial(minimal_loop if probes is None else lnexp_loop, config)
        runner = Interleaved(loops)
        for name in schedule:
            runner.give_turn(name)
        runner.finish()
    timed = runner.log[2 * len(others) * warmup:]  # (name, seconds) in the order they ran
    relative: dict[str, list[float]] = {name: [] for name in others}  # X's speed / its neighbours'
    for i in range(1, len(timed) - 1, 2):
        name, seconds = timed[i]
        relative[name].append((timed[i - 1][1] + timed[i + 1][1]) / 2 / seconds)
    tokens = SEGMENT * config.train.batch_size * config.train.seq_len
    speed = {name: tokens / statistics.median(s for n, s in timed if n == name) for name in VARIANTS}
    ratios = {}
    for label, (num, den) in RATIOS.items():
        values = relative[num] if den == BASELINE else [1 / v for v in relative[den]]
        ratios[label] = median_interval(values)
    return {"shape": shape, "rounds": rounds, "warmup": warmup, "threads": torch.get_num_threads(),
            "tokens_per_s": speed, "ratios": ratios}


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """The median and a distribution-free ~95% interval for it (order statistics, sign test)."""
    ordered, n = sorted(values), len(values)
    k = max(0, int((n - 1.96 * math.sqrt(n)) / 2))
    return statistics.median(ordered), ordered[k], ordered[n - 1 - k]


PROFILED = {"probes off": [], "default probes": DEFAULT_PROBES,  # each on every step
            "every probe": list(PROBE_KINDS)}
SCHEDULED = [kind for kind in PROBE_KINDS.values() if kind.schedule]  # evaluation probes at log.*_steps


def probe_costs(shape: str, steps: int = 60) -> dict[str, dict[str, float]]:
    """torch.profiler over lnexp's loop, probes on every step: ms inside each `probe:<kind>` label
    per step (an evaluation probe with a schedule, `output_change` ... `direction_ablation`: per
    call, at one step), inside `lnexp:flush` per flush (the one transfer and the writing of the
    lines), and the steady-state step itself."""
    table = {}
    for name, kinds in PROFILED.items():
        with tempfile.TemporaryDirectory() as tmp:
            config = make_config(shape, steps, (1, kinds), tmp, "profile")
            for kind in SCHEDULED:
                setattr(config.log, kind.schedule, [steps // 2])
            flushes, profiler = profiled_train(config)
        calls = {f"probe:{kind.evaluator().__name__}": 1 for kind in SCHEDULED}
        calls["lnexp:flush"] = len(flushes)
        intervals = [b - a for a, b in zip(flushes, flushes[1:])]
        row = {"step": statistics.median(intervals) * 1e3 / SEGMENT}  # with its probes
        for event in profiler.key_averages():
            if event.key.startswith(("probe:", "lnexp:")):
                clock = event.device_time_total if CLOCK == "device" else event.cpu_time_total
                row[event.key] = clock / 1e3 / calls.get(event.key, steps)
        table[name] = row
    return table


def profiled_train(config: Config) -> tuple[list[float], torch.profiler.profile]:
    """lnexp's loop under torch.profiler; returns the time of each flush, and the profile."""
    flushes: list[float] = []
    activities = [torch.profiler.ProfilerActivity.CPU]
    if CLOCK == "device":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        train(config, "bench", ["bench"], progress=lambda *_: flushes.append(time.perf_counter()))
    return flushes, profiler


def predicted_ratios(costs: dict[str, dict[str, float]]) -> dict[str, float]:
    """The default probes' cost from the profile, as the whole-loop ratios it implies: their
    labelled work plus the writing of their lines (the flush's growth over probes off)."""
    off, on = costs["probes off"], costs["default probes"]
    plain = off["step"]
    per_probed_step = on.get("probe:act", 0) + on.get("probe:grad", 0) + \
        (on["lnexp:flush"] - off["lnexp:flush"]) / SEGMENT
    return {"probes every 10 / off": plain / (plain + per_probed_step / SEGMENT),
            "probes every step / off": plain / (plain + per_probed_step)}


def report(result: dict[str, Any]) -> str:
    lines = [f"shape {result['shape']}, {result['threads']} threads; {result['rounds']} timed rounds after "
             f"{result['warmup']} warm-up; a segment is {SEGMENT} steps", "",
             "| variant | tokens/s (median segment) |", "| --- | --- |"]
    lines += [f"| {name} | {value:,.0f} |" for name, value in result["tokens_per_s"].items()]
    lines += ["", "| speed ratio (per segment, against its neighbours) | median | 95% interval | target "
              "| met |", "| --- | --- | --- | --- | --- |"]
    for name, (median, low, high) in result["ratios"].items():
        target = TARGETS[name]
        met = "yes" if low >= target else "no" if high < target else "within noise"
        lines.append(f"| {name} | {median:.3f} | {low:.3f} - {high:.3f} | >= {target} | {met} |")
    return "\n".join(lines)


def cost_report(costs: dict[str, dict[str, float]]) -> str:
    labels = sorted({label for row in costs.values() for label in row if label != "step"})
    lines = [f"torch.profiler over lnexp's loop, probes on every step ({CLOCK} time inside each label, "
             "ms; a probe's per step, a scheduled evaluation probe's per call, lnexp:flush per flush of "
             f"{SEGMENT} steps)", "",
             "| profiled run | step | " + " | ".join(labels) + " |", "| --- " * (len(labels) + 2) + "|"]
    for name, row in costs.items():
        cells = [f"{row[label]:.2f}" if label in row else "-" for label in labels]
        lines.append(f"| {name} | {row['step']:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "| speed ratio the profile implies | value | target |", "| --- | --- | --- |"]
    lines += [f"| {name} | {value:.4f} | >= {TARGETS[name]} |"
              for name, value in predicted_ratios(costs).items()]
    return "\n".join(lines)


NANOGPT_SHAPE = {"n_layers": 6, "d_model": 128, "n_heads": 4, "d_ff": 512, "max_seq_len": 128, "norm": "pre",
                 "activation": "gelu", "init": "gpt2", "residual_scaling": "gpt2", "bias": True}


@dataclass(frozen=True)
class Pair:
    """What `versus_nanogpt` builds both models at and feeds them: lnexp's model keys (nanoGPT's
    GPTConfig is derived from them; its MLP is always 4 x d_model wide), random tokens, the device,
    bf16 autocast, and torch.compile's backend (None: eager)."""

    model: dict[str, Any]
    vocab_size: int = 256
    batch_size: int = 16
    seq_len: int = 128
    device: str = "cpu"
    bf16: bool = False
    compile: str | None = None

    def describe(self) -> str:
        m = self.model
        biases = "" if m.get("bias", True) else " no biases"
        return (f"{m['n_layers']} layers d_model {m['d_model']} {m['n_heads']} heads, Pre-LN GELU{biases}, "
                f"vocab {self.vocab_size}, {self.batch_size} x {self.seq_len} tokens, {self.device}"
                f"{', bf16 autocast' if self.bf16 else ''}, "
                + (f"torch.compile ({self.compile})" if self.compile else "eager"))


# GPT-2 small as nanoGPT's bench.py runs it: GELU, no biases, vocabulary padded to 50304, 12 x 1024 tokens
PAIRS = {"cpu": Pair(NANOGPT_SHAPE),
         "gpt2-small": Pair({**SHAPES["gpt2-small"]["model"], "activation": "gelu", "bias": False},
                            vocab_size=50304, batch_size=12, seq_len=1024, device="cuda", bf16=True,
                            compile="inductor")}


def bare_loop(build: Callable[[], torch.nn.Module], segment_done: Callable[[], None], steps: int,
              pair: Pair) -> None:
    """A model in the barest AdamW loop (fused on CUDA): random tokens, lr 1e-3."""
    torch.manual_seed(0)
    device = torch.device(pair.device)
    model = build().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True if device.type == "cuda" else None)
    forward = torch.compile(model, backend=pair.compile) if pair.compile else model
    generator = torch.Generator(device).manual_seed(0)
    for step in range(steps):
        tokens = torch.randint(pair.vocab_size, (pair.batch_size, pair.seq_len + 1), generator=generator,
                               device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=pair.bf16):
            _, loss = forward(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % SEGMENT == 0:
            loss.item()  # and the wait for the device
            segment_done()


def versus_nanogpt(rounds: int, pair: Pair = PAIRS["cpu"]) -> dict[str, Any]:
    """lnexp's TransformerLM against nanoGPT's GPT, alternating segments (nanoGPT, lnexp, nanoGPT,
    ...); each lnexp segment against the mean of its two neighbours, median over rounds. The first
    segment of each (and its compilation) warms up."""
    from nanogpt_model import GPT, GPTConfig

    m = pair.model
    lnexp_config = validate({"model": m, "train": {"seq_len": pair.seq_len}}).model
    nano_config = GPTConfig(block_size=m["max_seq_len"], vocab_size=pair.vocab_size, n_layer=m["n_layers"],
                            n_head=m["n_heads"], n_embd=m["d_model"], dropout=0.0, bias=m.get("bias", True))
    # nanoGPT runs rounds + 2 segments, lnexp rounds + 1 (one warm-up each): a loop with a segment
    # more than it is given turns for never ends (its thread waits for a turn, and `finish` for it)
    runner = Interleaved({"nanoGPT GPT": functools.partial(bare_loop, lambda: GPT(nano_config),
                                                           steps=(rounds + 2) * SEGMENT, pair=pair),
                          "lnexp": functools.partial(bare_loop,
                                                     lambda: TransformerLM(lnexp_config, pair.vocab_size),
                                                     steps=(rounds + 1) * SEGMENT, pair=pair)})
    for _ in range(rounds + 1):
        runner.give_turn("nanoGPT GPT")
        runner.give_turn("lnexp")
    runner.give_turn("nanoGPT GPT")
    runner.finish()
    timed = runner.log[2:]  # the first pair warms up
    relative = [(timed[i - 1][1] + timed[i + 1][1]) / 2 / timed[i][1] for i in range(1, len(timed) - 1, 2)]
    tokens = SEGMENT * pair.batch_size * pair.seq_len
    return {"tokens_per_s": {name: tokens / statistics.median(s for n, s in timed if n == name)
                             for name in ("nanoGPT GPT", "lnexp")},
            "ratio": median_interval(relative), "threads": torch.get_num_threads(),
            "first_segment_s": dict(runner.log[:2]), "pair": pair.describe()}


def nanogpt_report(result: dict[str, Any]) -> str:
    median, low, high = result["ratio"]
    target = TARGETS["lnexp / nanoGPT GPT"]
    met = "yes" if low >= target else "no" if high < target else "within noise"
    speeds = ", ".join(f"{name} {value:,.0f}" for name, value in result["tokens_per_s"].items())
    return "\n".join([
        f"bare AdamW loop, {result['pair']}, {result['threads']} threads "
        f"(tokens/s, median segment: {speeds})",
        "", "| speed ratio | median | 95% interval | target | met |", "| --- | --- | --- | --- | --- |",
        f"| lnexp / nanoGPT GPT | {median:.3f} | {low:.3f} - {high:.3f} | >= {target} | {met} |"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="cpu")
    parser.add_argument("--rounds", type=int, default=20, help="timed segments of each variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--only-nanogpt", action="store_true", help="only part 3, against nanoGPT's GPT")
    args = parser.parse_args()
    print(nanogpt_report(versus_nanogpt(args.rounds, PAIRS[args.shape])))
    print()
    if args.only_nanogpt:
        return
    print(report(measure(args.shape, args.rounds, args.warmup)))
    print()
    print(cost_report(probe_costs(args.shape)))


if __name__ == "__main__":
    main()
