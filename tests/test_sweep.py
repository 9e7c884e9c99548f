import json
import os

import pytest
import yaml
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core.config import ConfigError
from lnexp.experiments.sweep.grid import expand, parse_grid, safe_name, split_values
from lnexp.experiments.sweep.results import summarise
from lnexp.experiments.sweep.state import read_status

runner = CliRunner()
FAST = {"train": {"steps": 4, "eval_every": 2, "eval_batches": 1}, "log": {"grad_every": 2, "loss_every": 2}}


def sweep(*args: str):
    return runner.invoke(app, ["sweep", *args, "--quiet"])


def test_cells_are_the_product_of_the_grids_times_the_seeds(tmp_path, write_config):
    path = write_config()
    s = expand(path, ["model.norm=post,pre", "optim.lr=1e-3,3e-3"], seeds=2, sets=["train.steps=7"],
               name="sw")
    assert len(s.cells) == 8 and s.root == tmp_path / "runs" / "sw"
    assert [c.name for c in s.cells[:3]] == ["norm=post,lr=1e-3,seed=0", "norm=post,lr=1e-3,seed=1",
                                             "norm=post,lr=3e-3,seed=0"]
    assert len({c.group for c in s.cells}) == 4
    pre = s.cells[-1]
    assert pre.overrides == ["model.norm=pre", "optim.lr=3e-3", "train.seed=1"]
    assert pre.config.model.norm == "pre" and pre.config.optim.lr == 3e-3 and pre.config.train.seed == 1
    assert pre.config.train.steps == 7  # --set applies to every cell
    assert pre.path == tmp_path / "runs" / "sw" / pre.name and pre.config.run.name == pre.name
    # --set run.dir moves the whole sweep; seeds count up from the config's train.seed
    moved = expand(path, ["optim.lr=0.01"], seeds=2, sets=[f"run.dir={tmp_path / 'elsewhere'}",
                                                           "train.seed=5"])
    assert moved.root == tmp_path / "elsewhere" / "tiny"
    assert [c.seed for c in moved.cells] == [5, 6]


def test_grid_parsing_and_names():
    assert split_values("[0.9,0.98],[0.9, 0.999]") == ["[0.9,0.98]", "[0.9, 0.999]"]
    assert parse_grid(["optim.betas=[0.9,0.98],[0.9,0.999]"]) == [("optim.betas",
                                                                  ["[0.9,0.98]", "[0.9,0.999]"])]
    assert safe_name(["path=a/b c", "seed=0"]) == "path=a_b_c,seed=0"
    long = safe_name([f"key{i}=value{i}" for i in range(30)])
    assert len(long) <= 100 and long != safe_name([f"key{i}=value{i}" for i in range(31)])
    for bad in (["optim.lr"], ["optim.lr="], ["optim.lr=1,,2"], ["optim.lr=1,1"], ["run.name=a,b"]):
        with pytest.raises(ConfigError):
            parse_grid(bad)


def test_bad_grid_value_is_one_line_exit_2_and_nothing_written(tmp_path, write_config):
    path = write_config()
    for args, needle in ((["--grid", "optim.lr=1e-3,-1"], "--grid optim.lr: must be > 0"),
                         (["--grid", "model.nrom=pre"],
                          "--grid model.nrom: unknown key (did you mean 'norm'?)"),
                         (["--grid", "model.norm=post,sideways"], "--grid model.norm: must be one of"),
                         (["--grid", "optim.lr"], "expected KEY=V1,V2"),
                         (["--grid", "train.seed=1,2", "--seeds", "2"], "cannot be combined with --seeds"),
                         (["--set", "run.name=x"], "--set run.name")):
        result = sweep(str(path), *args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
        assert not (tmp_path / "runs").exists()


def test_dry_run_prints_the_cells_and_writes_nothing(tmp_path, write_config):
    result = sweep(str(write_config()), "--grid", "model.norm=post,pre", "--seeds", "2", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "4 cells" in result.stdout and "norm=pre,seed=1" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_sweep_runs_summarises_and_resumes_skipping_finished_cells(tmp_path, write_config):
    path = write_config(**FAST)
    args = [str(path), "--grid", "model.norm=post,pre", "--seeds", "2", "--name", "sw"]
    first = sweep(*args)
    assert first.exit_code == 0, first.output
    root = tmp_path / "runs" / "sw"
    record = json.loads((root / "sweep.json").read_text())
    assert [c["name"] for c in record["cells"]] == ["norm=post,seed=0", "norm=post,seed=1",
                                                    "norm=pre,seed=0", "norm=pre,seed=1"]
    assert all(c["status"] == "completed" for c in record["cells"])
    assert record["grid"] == {"model.norm": ["post", "pre"]} and record["seeds"] == 2
    cell = yaml.safe_load((root / "norm=pre,seed=1" / "config.yaml").read_text())
    assert cell["model"]["norm"] == "pre" and cell["train"]["seed"] == 1
    assert "final loss (mean ± std)" in first.stdout and "0/2" in first.stdout
    # a finished cell is never trained again: its files stay as they were
    finished = root / "norm=post,seed=0"
    stamp = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished.iterdir()}
    # an interrupted cell is trained again
    killed = root / "norm=pre,seed=1"
    (killed / "summary.json").unlink()
    meta = json.loads((killed / "meta.json").read_text())
    (killed / "meta.json").write_text(json.dumps({**meta, "status": "interrupted"}))
    again = runner.invoke(app, ["sweep", *args])
    assert again.exit_code == 0, again.output
    assert again.stderr.count("[skip]") == 3 and "[1/1] norm=pre,seed=1: completed" in again.stderr
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished.iterdir()} == stamp
    assert read_status(killed) == "completed"
    # the same sweep with another config for a finished cell is refused, not silently mixed
    changed = sweep(*args, "--set", "optim.lr=0.5")
    assert changed.exit_code == 2 and "finished with another config (optim.lr" in changed.stderr
    # a key the finished run's config.yaml predates counts as its default: still skipped
    stored = yaml.safe_load((finished / "config.yaml").read_text())
    del stored["model"]["norm_eps"]
    (finished / "config.yaml").write_text(yaml.safe_dump(stored))
    assert sweep(*args).exit_code == 0
    assert (finished / "metrics.jsonl").stat().st_mtime_ns == stamp["metrics.jsonl"][0]


def test_jobs_run_cells_in_worker_processes_that_split_the_threads(tmp_path, write_config):
    path = write_config(**FAST)
    result = sweep(str(path), "--grid", "model.norm=post,pre", "--jobs", "2", "--name", "par")
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "par"
    metas = [json.loads((root / n / "meta.json").read_text())
             for n in ("norm=post,seed=0", "norm=pre,seed=0")]
    assert all(m["status"] == "completed" for m in metas)
    assert len({m["pid"] for m in metas} | {os.getpid()}) >= 2  # not trained in this process
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    config = yaml.safe_load((root / "norm=pre,seed=0" / "config.yaml").read_text())
    assert config["train"]["threads"] == max(1, cores // 2)


def test_summary_rows_average_over_seeds_and_count_divergence():
    from lnexp.experiments.sweep.grid import Cell

    class Fake:
        def __init__(self, seed):
            self.train = type("T", (), {"seed": seed})()
            self.run = type("R", (), {"dir": "/nonexistent"})()

    cells = [Cell(f"g,seed={i}", "g", [], Fake(i), {"lr": "1"}) for i in range(3)]
    outcomes = [{"status": "completed", "final_val_loss": 1.0},
                {"status": "completed", "final_val_loss": 3.0},
                {"status": "diverged", "final_val_loss": 9.0}]
    results = {cell.key: outcome for cell, outcome in zip(cells, outcomes)}  # keyed by folder
    (row,) = summarise(cells, results)
    assert row["seeds"] == 3 and row["diverged"] == 1 and row["loss_mean"] == 2.0
    assert abs(row["loss_std"] - 2 ** 0.5) < 1e-12
