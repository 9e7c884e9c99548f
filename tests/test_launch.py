"""Cells beyond one process (issue #17): SLURM jobs through submitit (its local executor runs the same
submission, pickling and requeue path in local processes), one GPU per pool worker, logs a batch job
can read."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_reliability import strip
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core.config import load_config
from lnexp.experiments.sweep.grid import expand
from lnexp.experiments.sweep.slurm import load_launcher, read_records, status_rows
from lnexp.experiments.sweep.state import plan
from lnexp.run import train as training
from lnexp.run.reader import load_run

pytest.importorskip("submitit")
runner = CliRunner()
FAST = {"train": {"steps": 4, "eval_every": 2, "eval_batches": 1}, "log": {"grad_every": 2, "loss_every": 2}}


@pytest.fixture
def local_jobs(tmp_path):
    """A launcher file: SLURM jobs through submitit's local executor."""
    path = tmp_path / "launcher.yaml"
    path.write_text(yaml.safe_dump({"launcher": {"kind": "slurm", "cluster": "local", "time": 5}}))
    return path


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_sweep_through_slurm_jobs_writes_every_cell_and_records_the_job_ids(tmp_path, write_config,
                                                                             local_jobs):
    args = ["sweep", str(write_config(**FAST)), "--grid", "model.norm=post,pre", "--name", "sw",
            "--launcher-config", str(local_jobs)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "sw"
    record = json.loads((root / "sweep.json").read_text())
    jobs = read_records(root)
    assert [c["status"] for c in record["cells"]] == ["completed", "completed"]
    for cell in record["cells"]:
        run = load_run(root / cell["name"])
        assert run.status == "completed" and run.config["model"]["norm"] == cell["name"][5:-7]
        assert cell["job"] == jobs[str(root / cell["name"])] and cell["job"]["cluster"] == "local"
        # the job ran the cell: its pid is the run's, not this process's; its log is where it says
        assert run.meta["pid"] != os.getpid()
        assert (root / "jobs" / f"{cell['job']['id']}_0_result.pkl").exists()
    assert len({c["job"]["id"] for c in record["cells"]}) == 2
    assert "final loss (mean ± std)" in result.stdout and "[2/2]" in result.stderr
    # the same command again trains nothing and submits nothing
    stamp = (root / "norm=pre,seed=0" / "metrics.jsonl").stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.stderr.count("[skip]") == 2
    assert read_records(root) == jobs
    assert (root / "norm=pre,seed=0" / "metrics.jsonl").stat().st_mtime_ns == stamp
    status = runner.invoke(app, ["sweep", "status", str(root)])
    assert status.exit_code == 0 and status.stdout.count("completed") == 2
    assert f"job {jobs[str(root / 'norm=post,seed=0')]['id']}" in status.stdout
    assert "final loss (mean ± std)" in status.stdout


# one thread in the job and in this process: a float sum's order, and so its last bit, follows the threads
LONG = {"model": {"dropout": 0.1}, "train": {"steps": 200, "eval_every": 50, "eval_batches": 1, "threads": 1},
        "log": {"grad_every": 20, "loss_every": 10, "print_every": 10}}


def submit_and_wait_for_lines(cfg, name, launcher):
    """Submit a one-cell sweep's job (detached), wait until its run has logged a line, and stop it
    there (SIGSTOP); returns the sweep, its cell and the run's pid."""
    from lnexp.experiments.sweep.slurm import launch

    sweep = expand(cfg, ["model.norm=pre"], name=name)
    sweep.root.mkdir(parents=True)
    (cell,) = sweep.cells
    submitted = launch(plan(sweep.cells), launcher, sweep.root, str(cfg), lambda c: ["lnexp"], detach=True)
    assert submitted[cell.key]["status"] in ("queued", "running")
    deadline, lines = time.time() + 120, 0
    while lines < 1 and time.time() < deadline:
        time.sleep(0.05)
        try:
            meta = json.loads((cell.path / "meta.json").read_text())
            lines = (cell.path / "metrics.jsonl").read_text().count("\n")
        except (OSError, ValueError):
            pass
    assert lines >= 1, "the job never started"
    os.kill(meta["pid"], signal.SIGSTOP)  # held mid-run, however fast this machine is
    assert not (cell.path / "summary.json").exists(), "the run ended before it could be stopped"
    return sweep, cell, meta["pid"]


@pytest.mark.faults
def test_a_killed_job_puts_its_stderr_tail_into_the_cells_meta(tmp_path, write_config, local_jobs):
    from lnexp.experiments.sweep.slurm import launch

    cfg = write_config(**LONG)
    launcher = load_launcher(local_jobs, {})
    sweep, cell, pid = submit_and_wait_for_lines(cfg, "oom", launcher)
    os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer would
    results = launch(plan(sweep.cells), launcher, sweep.root, str(cfg), lambda c: ["lnexp"])
    assert results[cell.key]["status"] == "failed"
    meta = json.loads((cell.path / "meta.json").read_text())
    job = read_records(sweep.root)[cell.key]
    assert meta["status"] == "failed" and meta["job"] == job
    assert f"job {job['id']} ended without a finished run; stderr tail:" in meta["error"]
    assert "step 10/200 | loss" in meta["error"]  # the run's own log lines, from the job's stderr
    ((_, state, detail),) = status_rows(sweep.root, sweep.cells)
    assert state == "failed" and detail.endswith(f"log {sweep.root / 'jobs' / job['id']}_0_log.err")


@pytest.mark.faults
def test_a_preempted_job_is_requeued_and_resumes_bit_exact(tmp_path, write_config, local_jobs):
    from lnexp.experiments.sweep.slurm import launch

    cfg = write_config(**LONG)
    launcher = load_launcher(local_jobs, {})
    sweep, cell, pid = submit_and_wait_for_lines(cfg, "pre", launcher)
    os.kill(pid, signal.SIGUSR2)  # SLURM's warning before a time limit or a pre-emption
    os.kill(pid, signal.SIGCONT)
    # waiting again submits nothing: the job is live; it checkpoints, submitit requeues it, it resumes
    results = launch(plan(sweep.cells), launcher, sweep.root, str(cfg), lambda c: ["lnexp"])
    assert results[cell.key]["status"] == "completed"
    run = load_run(cell.path)
    (resumed,) = run.meta["resumes"]
    assert 0 < resumed["from_step"] < 200 and resumed["command"][:3] == ["lnexp", "train", "--resume"]
    log = (sweep.root / "jobs" / f"{read_records(sweep.root)[cell.key]['id']}_0_log.out").read_text()
    assert "Calling checkpoint method" in log and "Requeued job" in log
    # the uninterrupted run of the same config, in this process
    config = load_config(cfg, [*cell.overrides])
    config.run.name, config.run.dir = "whole", str(tmp_path)
    whole = load_run(training.train(config, str(cfg)).path)
    assert strip(whole.metrics) == strip(run.metrics) and whole.probes == run.probes
    assert whole.summary["final_val_loss"] == run.summary["final_val_loss"]
    assert torch.equal(torch.load(tmp_path / "whole" / "model.pt")["blocks.1.ffn.fc2.weight"],
                       torch.load(cell.path / "model.pt")["blocks.1.ffn.fc2.weight"])


@pytest.fixture
def stub_slurm(tmp_path, monkeypatch):
    """sbatch, sacct and srun on PATH: sbatch keeps the script it is given and names job 4242; sacct
    knows no state (the jobs are queued); srun is there for submitit to find."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/script.sh\n"
                                    "echo 'Submitted batch job 4242'\n")
    (bin_dir / "sacct").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "sacct", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path / "script.sh"


def test_sbatch_script_carries_the_options_and_one_array_of_all_cells(tmp_path, write_config, stub_slurm):
    result = runner.invoke(app, ["sweep", str(write_config(**FAST)), "--grid", "optim.lr=1e-3,3e-3",
                                 "--seeds", "2", "--name", "cluster", "--launcher", "slurm",
                                 "--partition", "gpu", "--gpus-per-cell", "2", "--cpus-per-cell", "8",
                                 "--mem", "32G", "--time", "1:30:00", "--slurm", "account=proj",
                                 "--slurm", "qos=high", "--detach"])
    assert result.exit_code == 0, result.output
    script = (tmp_path / "script.sh").read_text()
    for directive in ("--partition=gpu", "--gpus-per-node=2", "--cpus-per-task=8", "--mem=32G",
                      "--time=90", "--array=0-3%4", "--account=proj", "--qos=high", "--signal=USR2@"):
        assert f"#SBATCH {directive}" in script, (directive, script)
    root = tmp_path / "runs" / "cluster"
    record = json.loads((root / "sweep.json").read_text())
    assert [c["job"]["id"] for c in record["cells"]] == ["4242_0", "4242_1", "4242_2", "4242_3"]
    assert not any((root / c["name"]).exists() for c in record["cells"])  # nothing ran here
    assert "4 cell(s) queued or running" in result.stderr and result.stderr.count("[job]") == 4
    # the same command again submits nothing: every cell has a live (queued) job
    (tmp_path / "script.sh").unlink()
    again = runner.invoke(app, ["sweep", str(write_config(**FAST)), "--grid", "optim.lr=1e-3,3e-3",
                                "--seeds", "2", "--name", "cluster", "--launcher", "slurm", "--detach"])
    assert again.exit_code == 0 and not (tmp_path / "script.sh").exists()
    status = runner.invoke(app, ["sweep", "status", str(root)])
    assert status.exit_code == 0 and status.stdout.count("queued") == 4


def test_launcher_options_are_checked_in_one_line_before_anything_is_written(tmp_path, write_config):
    path = str(write_config(**FAST))
    bad_file = tmp_path / "l.yaml"
    bad_file.write_text("launcher: {kind: slurm, gpus_per_cell: -1}\n")
    for args, needle in ((["--launcher", "pbs"], "'pbs' is not one of 'local', 'slurm'"),
                         (["--launcher", "slurm", "--time", "soon"], "--time: must be minutes or H:MM"),
                         (["--launcher", "slurm", "--slurm", "account"],
                          "--slurm account: expected KEY=VALUE"),
                         (["--partition", "gpu"], "--partition: only with --launcher slurm"),
                         (["--launcher-config", str(bad_file)],
                          f"{bad_file}: launcher.gpus_per_cell: must be >= 0")):
        line = one_line_error(runner.invoke(app, ["sweep", path, "--grid", "model.norm=post", *args]))
        assert needle in line, line
    assert not (tmp_path / "runs").exists()


def test_jobs_on_a_gpu_box_give_each_worker_its_own_device(tmp_path, write_config, monkeypatch):
    # the device list faked: the workers see one entry each (they train on the CPU here)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    result = runner.invoke(app, ["sweep", str(write_config(**FAST)), "--grid", "model.norm=post,pre",
                                 "--jobs", "2", "--name", "box"])
    assert result.exit_code == 0, result.output
    metas = [json.loads((tmp_path / "runs" / "box" / n / "meta.json").read_text())
             for n in ("norm=post,seed=0", "norm=pre,seed=0")]
    assert sorted(m["cuda_visible_devices"] for m in metas) == ["3", "5"]
    assert result.stderr.count("[start]") == 2


def test_train_prints_a_plain_line_now_and_then_when_stderr_is_a_log(write_config):
    result = runner.invoke(app, ["train", str(write_config(log={"loss_every": 2, "print_every": 4}))])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("step ")]
    steps = [int(line.split(" | ")[0][5:].split("/")[0]) for line in lines]
    # every 4 steps or more (at the first flush past them), and the last step
    assert len(steps) >= 3 and steps[0] >= 4 and steps[-1] == 12
    assert all(b - a >= 4 for a, b in zip(steps[:-2], steps[1:-1]))
    fields = lines[-1].split(" | ")
    assert fields[1].startswith("loss ") and fields[2].startswith("val ") and fields[3].startswith("lr ")
    assert fields[4].endswith(" tok/s") and fields[5].startswith("eta ")


def test_dry_run_prints_the_batch_script_with_its_setup_lines_and_submits_nothing(tmp_path, write_config,
                                                                                  stub_slurm):
    launcher = tmp_path / "cluster.yaml"
    launcher.write_text(yaml.safe_dump({"launcher": {"kind": "slurm", "partition": "gpu",
                                                     "setup": ["module load cuda/12.4"]}}))
    args = ["sweep", str(write_config(**FAST)), "--grid", "optim.lr=1e-3,3e-3", "--seeds", "2",
            "--name", "dry", "--launcher-config", str(launcher), "--setup", "source ~/venv/bin/activate",
            "--detach"]
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert not stub_slurm.exists() and not (tmp_path / "runs" / "dry").exists()  # nothing submitted, written
    script = dry.stdout[dry.stdout.index("#!/bin/bash"):]
    lines = script.splitlines()
    assert "#SBATCH --array=0-3%4" in lines and "#SBATCH --partition=gpu" in lines
    setup = lines.index("module load cuda/12.4")
    assert lines[setup + 1] == "source ~/venv/bin/activate"
    assert setup < next(i for i, line in enumerate(lines) if line.startswith("srun"))
    # the node-local storage the jobs could not see, said before anything is submitted
    assert f"warning: the sweep's folder {tmp_path / 'runs' / 'dry'} is under /tmp" in dry.stderr
    submitted = runner.invoke(app, args)
    assert submitted.exit_code == 0, submitted.output
    assert stub_slurm.read_text() == script  # what the dry run printed is what sbatch got


def test_node_local_storage_is_named():
    from lnexp.experiments.sweep.slurm import node_local

    assert node_local(Path("/tmp/x/runs")) == "under /tmp"
    if Path("/dev/shm").is_dir():
        assert node_local(Path("/dev/shm/lnexp")).startswith(("on tmpfs", "under /dev/shm"))
