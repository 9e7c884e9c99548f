"""bench_train: what lnexp's measurement costs, measured side by side in one process.

Tokens/s of lnexp's real training loop (`lnexp.train.train`, run folder and all) with the default
probes (grad, act) every step, every 10 steps and off, with the opt-in `update` and `adam` added,
and of a minimal loop over the same model, data and optimiser with
none of lnexp's machinery. Variants are interleaved and repeated; medians are compared, because
this machine is noisy. Targets: every-10 >= 0.98x off, every-step >= 0.95x off, off >= 0.98x minimal.

    python benchmarks/bench_train.py                       # CPU shape, 2 cores
    python benchmarks/bench_train.py --shape gpt2-small    # on a GPU: bf16, compile
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from lnexp.config import Config, validate
from lnexp.data import load_data
from lnexp.model import TransformerLM
from lnexp.train import build_optimizer, train

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
TARGETS = {"probes every 10 / off": 0.98, "probes every step / off": 0.95, "probes off / minimal": 0.98}


DEFAULT_PROBES = ["grad", "act"]
VARIANTS: dict[str, tuple[int, list[str]] | None] = {  # (log.grad_every, log.probes); None: minimal loop
    "minimal": None,
    "probes off": (1, []),
    "probes every 10": (10, DEFAULT_PROBES),
    "probes every step": (1, DEFAULT_PROBES),
    "+update+adam every 10": (10, [*DEFAULT_PROBES, "update", "adam"]),  # the opt-in probes' cost
}


def make_config(shape: str, steps: int, probes: tuple[int, list[str]] | None, run_dir: str, name: str
                ) -> Config:
    raw = {section: dict(values) for section, values in SHAPES[shape].items()}
    raw["train"].update(steps=steps, eval_every=10**9, eval_batches=1)
    grad_every, kinds = probes or (1, [])
    raw["log"] = {"grad_every": grad_every, "probes": kinds, "loss_every": 10}
    raw["run"] = {"dir": run_dir, "name": name}
    return validate(raw, source="bench")


def lnexp_speed(config: Config, warmup: int) -> float:
    """Steady-state tokens/s of the real loop: between the flush at `warmup` steps and the last one."""
    marks: list[tuple[int, float]] = []
    train(config, "bench", ["bench"], progress=lambda done, total, row: marks.append(
        (done, time.perf_counter())))
    (d0, t0), (d1, t1) = next(m for m in marks if m[0] >= warmup), marks[-1]
    return (d1 - d0) * config.train.batch_size * config.train.seq_len / (t1 - t0)


def minimal_speed(config: Config, warmup: int) -> float:
    """The same model, data and optimiser in the shortest loop that trains it."""
    t = config.train
    device = torch.device(t.device)
    data = load_data(config.data)
    torch.manual_seed(t.seed)
    model = TransformerLM(config.model, data.vocab_size).to(device)
    optimizer = build_optimizer(model, config, fused=device.type == "cuda")
    forward = torch.compile(model) if t.compile else model
    generator = torch.Generator().manual_seed(t.seed)
    bf16 = t.precision == "bf16"
    for step in range(t.steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        x, y = (b.to(device, non_blocking=True)
                for b in data.batch("train", t.batch_size, t.seq_len, generator))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = forward(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    loss.item()  # the loop's one read of the loss, and the wait for the device
    return (t.steps - warmup) * t.batch_size * t.seq_len / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(shape: str, steps: int, warmup: int, repeats: int) -> dict[str, Any]:
    speeds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            names = list(VARIANTS)
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:  # rotate the order: no variant always first
                run_name = f"{name}-{rep}".replace(" ", "-").replace("+", "")
                config = make_config(shape, warmup + steps, VARIANTS[name], tmp, run_name)
                measure_one = minimal_speed if name == "minimal" else lnexp_speed
                speeds[name].append(measure_one(config, warmup))
    median = {name: statistics.median(values) for name, values in speeds.items()}
    ratios = {"probes every 10 / off": median["probes every 10"] / median["probes off"],
              "probes every step / off": median["probes every step"] / median["probes off"],
              "probes off / minimal": median["probes off"] / median["minimal"],
              "+update+adam every 10 / off": median["+update+adam every 10"] / median["probes off"]}
    return {"shape": shape, "steps": steps, "warmup": warmup, "repeats": repeats,
            "threads": torch.get_num_threads(), "tokens_per_s": median, "all": speeds, "ratios": ratios}


def probe_costs(shape: str, rounds: int = 20) -> dict[str, float]:
    """Milliseconds per call of each probe on a logging step, against a training step without
    probes. The actions are timed round-robin, `rounds` times, and the minimum of each is kept: the
    machine's speed drifts, so both sides must sample the same fast and slow periods."""
    from lnexp.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        config = make_config(shape, 10, (1, ["grad", "act", "update", "adam"]), tmp, "costs")
    trainer = Trainer(config, load_data(config.data), torch.device(config.train.device))
    probes, model, device = trainer.probes, trainer.model, trainer.device
    x, y = trainer._batch(0)

    def backward() -> None:
        trainer.optimizer.zero_grad(set_to_none=True)
        model(x, y)[1].backward()

    def with_probes(kinds: set[str]) -> Callable[[], None]:
        def action() -> None:
            probes.kinds = kinds
            probes.arm()
            backward()
            reading = probes.read(0)
            probes.after_update(reading)
            reading.values().tolist()
        return action

    def step() -> None:
        probes.kinds = set()
        trainer.step(1)

    trainer.step(0)  # Adam's state exists from here on
    actions = {"training step (no probes)": step, "forward+backward": with_probes(set()),
               "+ act hooks": with_probes({"act"}), "+ grad norms, read to host": with_probes({"grad"}),
               "+ update ratio (opt-in)": with_probes({"update"}),
               "+ adam quantiles (opt-in)": with_probes({"adam"}),
               "output change (opt-in, at chosen steps)": lambda: probes.output_change(x, 0)}
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(rounds):
        for name, action in actions.items():
            sync(device)
            start = time.perf_counter()
            action()
            sync(device)
            times[name].append(time.perf_counter() - start)
    best = {name: min(values) * 1e3 for name, values in times.items()}
    plain = best["forward+backward"]
    return {name: value - plain if name.startswith("+") else value for name, value in best.items()}


def report(result: dict[str, Any]) -> str:
    lines = [f"shape {result['shape']}, {result['steps']} timed steps after {result['warmup']} warm-up, "
             f"median of {result['repeats']} interleaved repeats, {result['threads']} threads", "",
             "| variant | tokens/s (median) | all repeats |", "| --- | --- | --- |"]
    for name, value in result["tokens_per_s"].items():
        lines.append(f"| {name} | {value:,.0f} | {', '.join(f'{v:,.0f}' for v in result['all'][name])} |")
    lines += ["", "| ratio | measured | target | met |", "| --- | --- | --- | --- |"]
    for name, value in result["ratios"].items():
        target = TARGETS.get(name)  # the opt-in probes' cost is reported, with no target
        met = "-" if target is None else "yes" if value >= target else "no"
        lines.append(f"| {name} | {value:.3f} | {'-' if target is None else f'>= {target}'} | {met} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(report(measure(args.shape, args.steps, args.warmup, args.repeats)))
    print()
    print(cost_report(probe_costs(args.shape)))


def cost_report(costs: dict[str, float]) -> str:
    step = costs["training step (no probes)"]
    lines = ["| probe cost per logging step (+: over forward+backward) | ms (min of 20, round-robin) "
             "| % of a training step |", "| --- | --- | --- |"]
    lines += [f"| {name} | {ms:.2f} | {100 * ms / step:.1f}% |" for name, ms in costs.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
