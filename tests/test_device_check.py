"""benchmarks/device_check.py --dry-run: every part of the GPU check runs on the CPU and gives numbers, so
the script is ready (and not rotten) the day a GPU is lent."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
PARTS = {"train", "pack", "ddp", "reproduce-init", "reproduce-train"}


def committed_results() -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in (ROOT / "benchmarks").glob("RESULTS*")}


def test_the_dry_run_measures_every_part(tmp_path):
    before = committed_results()
    # the script puts its checkout's lnexp first on the path, its own and its children's
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--dry-run",
                             "--out", str(tmp_path), "--budget-s", "200"],
                            cwd=ROOT, capture_output=True, text=True, timeout=260)
    assert result.returncode == 0, result.stderr[-3000:]
    assert committed_results() == before  # a dry run never writes over a committed RESULTS file
    summary = json.loads((tmp_path / "RESULTS-dry-run.json").read_text())
    assert summary["dry_run"] and {p["name"] for p in summary["parts"]} == PARTS
    for part in summary["parts"]:
        # a number from every entry, or the reason it has none; a part that failed (not one slowed past
        # its time limit by a loaded machine) means the script no longer runs
        assert part["status"] in ("ok", "timed out"), (part["name"], part.get("error"), part["entries"])
        assert part["entries"] or part.get("error"), part["name"]
        for entry in part["entries"]:
            numbers = [value for _, value, _, _ in entry["rows"] if isinstance(value, (int, float))]
            assert numbers or entry.get("error"), (part["name"], entry["name"])
            assert entry["status"] != "ok" or entry["peak"]["bytes"] > 0
    text = (tmp_path / "RESULTS-dry-run.md").read_text()
    assert "(DRY RUN)" in text and "lnexp / nanoGPT GPT" in text and "packed / one by one" in text
