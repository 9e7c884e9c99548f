"""bench_startup: commands that need no tensors must not pay for importing torch.

Times `lnexp --help` and `lnexp compare A B` (on two tiny runs made first) as fresh processes,
against `python -c "import torch"` measured in the same run; checks which of them import torch.
Target: `lnexp --help` under 0.5 s.

    python benchmarks/bench_startup.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TINY = {"model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 16},
        "data": {"source": "synthetic"}, "train": {"steps": 5, "batch_size": 2, "seq_len": 16}}
PROBE = ("import sys, runpy; sys.argv = {argv!r}\ntry:\n    runpy.run_module('lnexp', run_name='__main__')\n"
         "except SystemExit:\n    pass\nsys.stderr.write('torch imported: %s\\n' % ('torch' in sys.modules))")


def wall(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def imports_torch(args: list[str]) -> bool:
    code = PROBE.format(argv=["lnexp", *args])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return "torch imported: True" in out.stderr


def measure(repeats: int = 5) -> dict[str, dict[str, float | bool]]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "tiny.yaml"
        config.write_text(yaml.safe_dump({**TINY, "run": {"dir": tmp}}))
        for name in ("a", "b"):
            subprocess.run([sys.executable, "-m", "lnexp", "train", str(config), "--quiet", "--set",
                            f"run.name={name}"], capture_output=True, check=True)
        commands = {"lnexp --help": ["--help"], "lnexp compare A B": ["compare", f"{tmp}/a", f"{tmp}/b"]}
        result = {name: {"seconds": wall([sys.executable, "-m", "lnexp", *args], repeats),
                         "imports torch": imports_torch(args)} for name, args in commands.items()}
        result["python -c 'import torch' (reference)"] = {
            "seconds": wall([sys.executable, "-c", "import torch"], repeats), "imports torch": True}
    return result


def report(result: dict[str, dict[str, float | bool]]) -> str:
    lines = ["| command | wall time (median of 5) | imports torch |", "| --- | --- | --- |"]
    for name, row in result.items():
        lines.append(f"| `{name}` | {row['seconds']:.3f} s | {'yes' if row['imports torch'] else 'no'} |")
    help_time = result["lnexp --help"]["seconds"]
    lines += ["", f"`lnexp --help` target < 0.5 s: {'met' if help_time < 0.5 else 'not met'} "
              f"({help_time:.3f} s)"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(measure()))
