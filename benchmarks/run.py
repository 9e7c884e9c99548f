"""Run every benchmark and rewrite benchmarks/RESULTS.md with its results and the machine.

    python benchmarks/run.py
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_startup  # noqa: E402
import bench_train  # noqa: E402


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, GPU: {gpu}")


def main() -> None:
    shape = "gpt2-small" if torch.cuda.is_available() else "cpu"
    train_result = bench_train.report(bench_train.measure(shape, rounds=20, warmup=1))
    train_result += "\n\n" + bench_train.cost_report(bench_train.probe_costs(shape))
    startup_result = bench_startup.report(bench_startup.measure())
    text = f"""# Benchmark results

Regenerate with `python benchmarks/run.py` (this file is overwritten).

Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on: {machine()}

## bench_train (`python benchmarks/bench_train.py --shape {shape}`)

{train_result}

## bench_startup (`python benchmarks/bench_startup.py`)

{startup_result}
"""
    out = Path(__file__).with_name("RESULTS.md")
    notes = out.with_name("NOTES.md")
    out.write_text(text + (f"\n{notes.read_text()}" if notes.exists() else ""))
    print(text)


if __name__ == "__main__":
    main()
