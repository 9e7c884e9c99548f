"""bench_pack: tokens/s of M cells trained packed (lnexp.run.pack) against the same M cells one after
another, side by side in one process.

The cells are the tiny reproduction's training shape (`reproduce --scale tiny`: 6 layers, d_model 32,
16 x 32 tokens, byte-level stdlib), with seeds, learning rates and Adam/RAdam alternating across the
cells. Both ways run the real per-cell machinery (`Trainer.step`, `Pack.step`: batches, optimiser,
schedule; no probes, no folders), in alternating rounds of ROUND steps, so that a noisy shared
machine slows both alike; the ratio of their medians is what counts.

A third way bounds what any packing could gain here: one model (of the same shape) trained on the M
cells' batches as one batch of M x 16 sequences. It does the pack's arithmetic with none of its
per-cell work (no vmap, no per-cell weights or optimisers), so packed / one by one can hardly pass
its ratio: where that ceiling is below a target, no way of packing reaches the target on this machine.

    python benchmarks/bench_pack.py                   # M = 1, 4, 8, 16 on the CPU
    python benchmarks/bench_pack.py --profile 8       # where a packed step of M = 8 spends its time
    python benchmarks/bench_pack.py --scale small     # the small shape (on a GPU when there is one)
    python benchmarks/bench_pack.py --scale cpu       # the cpu scale's shape (d_model 128)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch

from lnexp.core.config import Config, apply_sets, validate
from lnexp.data.sources import load_data
from lnexp.experiments.reproduce.engine import SCALES
from lnexp.run.pack import Pack
from lnexp.run.train import Trainer

ROUND = 5  # steps per timed round
TARGET_M8 = {"tiny": 3.0, "small": 5.0}


def cell_configs(scale: str, m: int, sets: Sequence[str] = ()) -> list[Config]:
    """M cells of the scale's training shape, `--set`-style `sets` applied to each (a smaller shape)."""
    raw = apply_sets(SCALES[scale].train, list(sets))
    configs = []
    for i in range(m):
        cell = {k: dict(v) for k, v in raw.items()}
        cell["optim"] = {"name": ("adam", "radam")[i % 2], "lr": (1e-3, 3e-3)[i // 2 % 2],
                         "betas": [0.9, 0.98]}
        cell["train"].update(seed=i, device="cuda" if torch.cuda.is_available() else "cpu")
        cell["log"] = {"probes": [], "loss_every": 10**6}
        configs.append(validate(cell, source="bench_pack"))
    return configs


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


WAYS = ("packed", "alone", "one model")


def measure(scale: str, m: int, rounds: int, sets: Sequence[str] = ()) -> dict[str, float]:
    """Median tokens/s (all cells together) of M cells packed, of the same cells one by one and of one
    model on their M batches at once; and the medians over rounds of each round's ratios to "one by
    one" (a round's parts run back to back, so the machine's drift between rounds cancels)."""
    configs = cell_configs(scale, m, sets)
    data = load_data(configs[0].data, configs[0].model.arch)
    device = torch.device(configs[0].train.device)
    packed_trainers = [Trainer(c, data, device) for c in configs]
    alone_trainers = [Trainer(c, data, device) for c in configs]
    raw = configs[0].to_dict()
    raw["train"]["batch_size"] *= m
    one_model = Trainer(validate(raw, source="bench_pack"), data, device)
    pack = Pack(packed_trainers)
    t = configs[0].train
    tokens = m * ROUND * t.batch_size * t.seq_len
    speeds: dict[str, list[float]] = {way: [] for way in WAYS}
    step = 0
    for r in range(rounds + 1):  # round 0 warms up every way
        for way in WAYS[r % 3:] + WAYS[:r % 3]:  # no way always goes first
            sync()
            began = time.perf_counter()
            for s in range(step, step + ROUND):
                if way == "packed":
                    pack.step(packed_trainers, s)
                elif way == "alone":
                    for trainer in alone_trainers:
                        trainer.step(s)
                else:
                    one_model.step(s)
            sync()
            if r:
                speeds[way].append(tokens / (time.perf_counter() - began))
        step += ROUND
    result = {way: statistics.median(speeds[way]) for way in WAYS}
    for way in ("packed", "one model"):
        result[f"{way} / alone"] = statistics.median(x / a for x, a in zip(speeds[way], speeds["alone"]))
    return result


def profile(scale: str, m: int) -> None:
    configs = cell_configs(scale, m)
    data = load_data(configs[0].data, configs[0].model.arch)
    trainers = [Trainer(c, data, torch.device(configs[0].train.device)) for c in configs]
    pack = Pack(trainers)
    for s in range(3):
        pack.step(trainers, s)
    with torch.profiler.profile() as prof:
        for s in range(3, 3 + 2 * ROUND):
            pack.step(trainers, s)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="tiny", choices=sorted(SCALES))
    parser.add_argument("--cells", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", type=int, metavar="M", help="profile a packed step of M cells instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.profile:
        profile(args.scale, args.profile)
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} threads"
    print(f"{args.scale} shape, {device}; tokens/s of all M cells, median of {args.rounds} rounds of "
          f"{ROUND} steps; ratios: medians of the rounds' ratios")
    print("| M | packed | one by one | one model, M batches | packed / one by one | ceiling: one model / "
          "one by one |\n| --- | --- | --- | --- | --- | --- |")
    for m in args.cells:
        r = measure(args.scale, m, args.rounds)
        print(f"| {m} | {r['packed']:,.0f} | {r['alone']:,.0f} | {r['one model']:,.0f} | "
              f"{r['packed / alone']:.2f}x | {r['one model / alone']:.2f}x |", flush=True)
    if args.scale in TARGET_M8:
        print(f"target: >= {TARGET_M8[args.scale]}x at M = 8")


if __name__ == "__main__":
    main()
