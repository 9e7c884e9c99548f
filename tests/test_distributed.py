"""torchrun with 2 gloo processes on CPU: one run folder, the same gradient norms on both ranks."""

import subprocess
import sys

from lnexp.run.reader import load_run


def test_two_gloo_ranks_write_one_complete_run(tmp_path, write_config):
    path = write_config(run={"name": "ddp"})
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", "-m", "lnexp", "train", str(path), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("steps_done") == 1  # rank 1 prints nothing
    run = load_run(tmp_path / "runs" / "ddp")
    assert run.notes == [] and run.status == "completed"
    assert {p.name for p in run.path.iterdir()} == {"config.yaml", "meta.json", "metrics.jsonl",
                                                    "probes.jsonl", "summary.json", "model.pt", ".lock"}
    assert run.meta["world_size"] == 2 and run.meta["backend"] == "gloo"
    logged = [m for m in run.metrics if m.get("ranks")]
    assert [m["step"] for m in logged] == [0, 5, 10]
    for m in logged:
        norms, losses = m["ranks"]["grad_norm_total"], m["ranks"]["loss"]
        assert norms[0] == norms[1] == m["grad_norm_total"]  # all-reduced gradients, rank 0 writes
        assert losses[0] != losses[1] and losses[0] == m["loss"]  # different batches per rank
    assert [m["step"] for m in run.metrics] == list(range(13))
