"""Fault injection (issue #15): hostile files, kills, races, full disks, damaged folders. Every test
here failed before the fixes it covers. `pytest -m faults` runs this group alone; CI runs it with the
rest."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
import yaml
from test_reliability import RELIABLE, cli, interrupt_at, wait_for_lines
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core.config import ConfigError, load_config
from lnexp.run import train as training
from lnexp.run.folder import RunWriter
from lnexp.run.reader import load_run

pytestmark = pytest.mark.faults
runner = CliRunner()


@pytest.fixture
def deadline():
    """Fail a test that hangs (a FIFO read, a run that should have been refused) instead of waiting."""
    def expire(signum, frame):
        raise TimeoutError("hung")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def one_line_error(result, code: int = 2) -> str:
    """The CLI's error, checked to be one line, without a traceback or warning, with `code`."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "Warning" not in result.output
    return lines[0]


def train_cli(*args: str):
    return runner.invoke(app, ["train", *args, "--quiet"])


# --- 1-6: files and inputs ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "too_large"])
def test_1_config_must_be_a_bounded_regular_file(tmp_path, deadline, kind):
    path = {"fifo": tmp_path / "fifo.yaml", "dev_zero": Path("/dev/zero"),
            "too_large": tmp_path / "big.yaml"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    if kind == "too_large":
        path.write_text("# comment\n" * 300_000)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ") and \
        ("not a regular file" in str(info.value) or "limit" in str(info.value))


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_1_data_path_must_be_a_regular_file(tmp_path, write_config, deadline, kind):
    data = tmp_path / "fifo.txt" if kind == "fifo" else Path("/dev/zero")
    if kind == "fifo":
        os.mkfifo(data)
    line = one_line_error(train_cli(str(write_config(data={"source": "text", "path": str(data)}))))
    assert "data.path: is a" in line and "not a regular file" in line and str(data) in line
    assert not (tmp_path / "runs").exists()


def test_1_text_data_is_memory_mapped_not_copied(tmp_path):
    from lnexp.core.config import DataConfig
    from lnexp.data.sources import load_data

    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc/self/maps")
    (tmp_path / "t.txt").write_bytes(bytes(range(256)) * 64)
    corpus = load_data(DataConfig(source="text", path=str(tmp_path / "t.txt")), "decoder")
    assert len(corpus.train) + len(corpus.val) == 256 * 64 and corpus.train[:3].tolist() == [0, 1, 2]
    address = corpus.train.untyped_storage().data_ptr()
    maps = [line.split() for line in Path("/proc/self/maps").read_text().splitlines()]
    spans = [[int(x, 16) for x in m[0].split("-")] for m in maps if m[-1] == str(tmp_path / "t.txt")]
    assert any(lo <= address < hi for lo, hi in spans)  # the tokens are the file's mapped pages


@pytest.mark.parametrize("text, line", [("model:\n  n_layers: 2\nmodel:\n  norm: pre\n", 3),
                                        ("optim:\n  lr: 0.1\n  lr: 0.2\n", 3)])
def test_2_duplicate_yaml_keys_are_refused_with_their_line(tmp_path, text, line):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: bad YAML at line {line}: duplicate key")
    path.write_text("optim:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="duplicate key"):  # a --set value's YAML is read the same way
        load_config(path, ["optim.betas={a: 1, a: 2}"])


def test_3_long_run_name_is_one_line_exit_2(tmp_path, write_config):
    line = one_line_error(train_cli(str(write_config()), "--set", "run.name=" + "n" * 300))
    assert "--set run.name: must be at most 200 bytes" in line
    assert not (tmp_path / "runs").exists()


def test_4_set_keys_need_every_part_and_faults_are_blamed_on_the_set(tmp_path, write_config):
    path = write_config()
    for key in ("optim..lr", ".optim.lr", "optim.lr."):
        with pytest.raises(ConfigError) as info:
            load_config(path, [f"{key}=3"])
        assert str(info.value) == f"--set {key}: empty key part (expected SECTION.KEY, e.g. optim.lr)"
    with pytest.raises(ConfigError) as info:
        load_config(path, ["data.source=text"])
    assert str(info.value) == "--set data.source=text: data.path: required when data.source is text"
    # a fault already in the file stays the file's, whatever the overrides
    bad = write_config("bad", data={"source": "text"})
    with pytest.raises(ConfigError) as info:
        load_config(bad, ["optim.lr=0.1"])
    assert str(info.value) == f"{bad}: data.path: required when data.source is text"


def test_5_keys_that_do_nothing_are_warned_about(tmp_path, write_config):
    from lnexp.core.config import config_warnings

    cfg = load_config(write_config(data={"max_bytes": 5000}, schedule={"warmup_steps": 50}))
    warnings = config_warnings(cfg)
    assert "data.max_bytes: has no effect with data.source synthetic" in warnings
    assert any(w.startswith("schedule.warmup_steps: 50 is more than train.steps (12)") for w in warnings)
    assert config_warnings(load_config(write_config("plain"))) == []
    steps_only = config_warnings(load_config(write_config("log", log={"ablation_steps": [0, 5]})))
    assert steps_only == ["log.ablation_steps: has no effect without sensitivity in log.probes"]
    result = train_cli(str(write_config(data={"max_bytes": 5000})))
    assert result.exit_code == 0 and "warning: " in result.stderr and "data.max_bytes" in result.stderr


def test_6_activations_count_in_the_memory_check(tmp_path, write_config):
    path = write_config(model={"d_model": 128, "n_heads": 4, "d_ff": 512, "max_seq_len": 128},
                        train={"seq_len": 128, "batch_size": 100_000})
    line = one_line_error(train_cli(str(path)))
    assert "train.batch_size: 100000 sequences of 128 tokens need at least" in line and "GiB" in line
    assert not (tmp_path / "runs").exists()


# --- 7-16: run folders and concurrency -----------------------------------------------------------

def test_7_resume_of_a_live_run_is_refused(tmp_path, write_config, deadline):
    proc = subprocess.Popen(cli(str(write_config("l", train={"steps": 100_000, "checkpoint_every": 5},
                                                 run={"name": "l"}))),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_dir = tmp_path / "runs" / "l"
        wait_for_lines(run_dir / "metrics.jsonl", 8, proc)
        while not (run_dir / "checkpoint.pt").exists():
            time.sleep(0.05)
        line = one_line_error(runner.invoke(app, ["train", "--resume", str(run_dir)]))
        assert f"in use by a running process (pid {proc.pid})" in line
        assert load_run(run_dir).state == "running"
    finally:
        proc.kill()
        proc.wait()
    assert load_run(run_dir).state == "stale"  # the lock died with the process


def test_8_force_never_replaces_a_live_run_and_a_writer_writes_only_into_its_folder(tmp_path, write_config):
    path = write_config(run={"name": "held"})
    run_dir = tmp_path / "runs" / "held"
    writer = RunWriter(run_dir, "x: 1\n", {"pid": os.getpid()})
    try:
        line = one_line_error(train_cli(str(path), "--force"))
        assert "in use by a running process" in line and (run_dir / "config.yaml").read_text() == "x: 1\n"
        # the folder renamed away and another made in its place: the writer still writes its own
        os.rename(run_dir, tmp_path / "moved")
        run_dir.mkdir()
        writer.update_meta(marker=1)
        writer.metrics([{"step": 0}])
        assert list(run_dir.iterdir()) == []
        assert json.loads((tmp_path / "moved" / "meta.json").read_text())["marker"] == 1
    finally:
        writer.close()


def test_8_concurrent_force_runs_never_mix_two_runs(tmp_path, write_config):
    path = write_config(train={"steps": 150}, run={"name": "same"})
    assert train_cli(str(path)).exit_code == 0
    seeds = (1, 2, 3)
    procs = [subprocess.Popen(cli(str(path), "--force", "--set", f"train.seed={seed}"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in seeds]
    results = [(p.wait(timeout=180), p.stderr.read()) for p in procs]
    # each trains or is refused in one line (one may also replace another that had finished)
    assert {code for code, _ in results} <= {0, 2} and 0 in {code for code, _ in results}, results
    assert all(len(err.strip().splitlines()) == 1 for code, err in results if code == 2), results
    run = load_run(tmp_path / "runs" / "same")
    winner = next(seed for p, seed in zip(procs, seeds) if p.pid == run.meta["pid"])
    assert run.config["train"]["seed"] == run.meta["seed"] == winner and run.status == "completed"
    assert results[seeds.index(winner)][0] == 0 and run.notes == []
    assert [m["step"] for m in run.metrics] == list(range(151))


def test_9_a_planted_symlink_at_a_temp_name_is_never_followed(tmp_path, write_config):
    cfg = load_config(write_config(**RELIABLE, run={"name": "s"}))
    run = training.train(cfg, "t.yaml", progress=interrupt_at(14))
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    for name in (".metrics.jsonl.tmp", ".probes.jsonl.tmp", f".meta.json.{os.getpid()}.tmp"):
        (run.path / name).symlink_to(outside)
    assert training.resume(run.path).status == "completed"
    assert outside.read_text() == "keep me"


def test_10_force_on_a_symlinked_run_folder_is_refused(tmp_path, write_config):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "meta.json").write_text("{}")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "link").symlink_to(target)
    for args in (["--force"], []):
        line = one_line_error(train_cli(str(write_config(run={"name": "link"})), *args))
        assert "is a symbolic link; refusing to use or replace it" in line
    assert [p.name for p in target.iterdir()] == ["meta.json"]


def test_11_a_folder_killed_before_meta_json_is_a_dead_run(tmp_path, write_config):
    half = tmp_path / "runs" / "half"
    half.mkdir(parents=True)
    (half / "config.yaml").write_text("model: {}\n")
    assert train_cli(str(write_config(run={"name": "half"})), "--force").exit_code == 0
    assert load_run(half).status == "completed"
    # a sweep cell in that state is trained again, not failed on every rerun
    cell = tmp_path / "runs" / "sw" / "norm=pre,seed=0"
    cell.mkdir(parents=True)
    (cell / "config.yaml").write_text("model: {}\n")
    result = runner.invoke(app, ["sweep", str(write_config()), "--grid", "model.norm=pre", "--name", "sw",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_run(cell).status == "completed"


def test_11_meta_json_is_written_first(tmp_path, monkeypatch):
    import lnexp.core.files

    order = []
    real = lnexp.core.files.atomic_write

    def record(path, write, dir_fd=None):
        order.append(Path(path).name)
        return real(path, write, dir_fd)

    monkeypatch.setattr("lnexp.run.folder.atomic_write", record)
    RunWriter(tmp_path / "r", "x: 1\n", {}).close()
    assert order[:2] == ["meta.json", "config.yaml"]


def sweep_cli(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lnexp", "sweep", str(path), "--quiet", *args]


def test_12_two_sweeps_of_one_name_at_once(tmp_path, write_config):
    path = write_config(train={"steps": 30})
    procs = [subprocess.Popen(sweep_cli(path, "--grid", "model.norm=post,pre", "--name", "both"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results  # the second waits its turn or is refused, never fails
    if codes == [0, 2]:
        assert "another sweep of this name is running" in next(e for c, e in results if c == 2)
    record = json.loads((tmp_path / "runs" / "both" / "sweep.json").read_text())
    assert [c["status"] for c in record["cells"]] == ["completed", "completed"]


def test_12_sweep_json_status_comes_from_the_folder(tmp_path, write_config):
    from lnexp.experiments.sweep import sweep_record
    from lnexp.experiments.sweep.grid import expand

    path = write_config(train={"steps": 4})
    s = expand(path, ["model.norm=pre"], name="rec")
    assert runner.invoke(app, ["sweep", str(path), "--grid", "model.norm=pre", "--name", "rec",
                               "--quiet"]).exit_code == 0
    record = sweep_record(s, {s.cells[0].name: {"status": "failed", "error": "run folder exists"}})
    assert record["cells"][0]["status"] == "completed"


def test_13_sigterm_to_a_parallel_sweep_checkpoints_its_cells_and_exits_130(tmp_path, write_config):
    path = write_config(train={"steps": 100_000, "checkpoint_every": 1000})
    proc = subprocess.Popen(sweep_cli(path, "--grid", "model.norm=post,pre", "--jobs", "2", "--name", "t"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = tmp_path / "runs" / "t"
    for cell in ("norm=post,seed=0", "norm=pre,seed=0"):
        wait_for_lines(root / cell / "metrics.jsonl", 8, proc, timeout=180)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "run the same command again" in err
    record = json.loads((root / "sweep.json").read_text())
    assert [c["status"] for c in record["cells"]] == ["interrupted", "interrupted"]
    for cell in ("norm=post,seed=0", "norm=pre,seed=0"):
        run = load_run(root / cell)
        state = torch.load(root / cell / "checkpoint.pt", weights_only=True)
        assert run.status == "interrupted" and state["step"] == run.summary["steps_done"] > 0
        deadline = time.time() + 30
        while training_alive(run.meta["pid"]) and time.time() < deadline:
            time.sleep(0.1)
        assert not training_alive(run.meta["pid"]), "a worker outlived its sweep"


def training_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of `size` at `path`: a real full disk (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("what, size, sets", [
    ("logging", "96k", {"train": {"steps": 100_000}, "log": {"grad_every": 1, "loss_every": 1}}),
    ("checkpointing", "160k", {"model": {"d_model": 64, "d_ff": 256, "n_heads": 2},
                               "train": {"steps": 100, "checkpoint_every": 10}}),
])
def test_14_a_real_full_disk_is_recorded_as_failed(tmp_path, write_config, what, size, sets):
    with small_disk(tmp_path / "disk", size) as disk:
        path = write_config(**sets, run={"name": "full", "dir": str(disk)})
        line = one_line_error(train_cli(str(path)), code=1)
        assert line.startswith("error: training failed: disk full: no space left on the device writing "
                               f"{disk / 'full'}/")
        if what == "checkpointing":
            assert line.endswith("checkpoint.pt")
        run_dir = disk / "full"
        meta = json.loads((run_dir / "meta.json").read_text())
        assert meta["status"] == "failed" and meta["error"].startswith("disk full"), meta
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
        assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []
        assert load_run(run_dir).state == "failed"


def interrupted_run(write_config, name: str) -> Path:
    cfg = load_config(write_config(**RELIABLE, run={"name": name}))
    return training.train(cfg, "t.yaml", progress=interrupt_at(14)).path


@pytest.mark.parametrize("damage", ["no_config", "wrong_shapes", "not_a_dict", "malicious_pickle", "no_rng"])
def test_15_malformed_checkpoints_are_one_line_naming_the_file(tmp_path, write_config, damage):
    import pickle

    run_dir = interrupted_run(write_config, "c")
    file = run_dir / "checkpoint.pt"
    state = torch.load(file, weights_only=True)
    if damage == "no_config":
        del state["config"]
    if damage == "wrong_shapes":
        state["model"]["blocks.0.ffn.fc2.weight"] = torch.zeros(3, 3)
    if damage == "no_rng":
        state["rng"] = {}
    if damage == "not_a_dict":
        state = [1, 2, 3]
    torch.save(state, file)
    if damage == "malicious_pickle":
        file.write_bytes(pickle.dumps(Path("/etc/passwd")))
    # a real process: pytest would catch a warning that a user sees on stderr
    proc = subprocess.run([sys.executable, "-m", "lnexp", "train", "--resume", str(run_dir)],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {file}: ") and "checkpoint" in lines[0]


def test_15_a_finished_run_keeps_no_stale_checkpoint_and_hints_are_right(tmp_path, write_config):
    done = training.train(load_config(write_config(**RELIABLE, run={"name": "d"})), "t.yaml")
    assert done.status == "completed" and not (done.path / "checkpoint.pt").exists()
    # a run that failed before its first checkpoint: checkpoint_every is set, so not suggested
    path = write_config("late", train={"checkpoint_every": 100}, run={"name": "late"})
    assert train_cli(str(path)).exit_code == 0
    run_dir = tmp_path / "runs" / "late"
    (run_dir / "summary.json").unlink()
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({**meta, "status": "failed"}))
    line = one_line_error(runner.invoke(app, ["train", "--resume", str(run_dir)]))
    assert "before its first checkpoint, at step 100" in line and "set train.checkpoint_every" not in line


def test_16_divergence_says_how_many_updates_ran_past_it(tmp_path, write_config):
    out = training.train(load_config(write_config(train={"diverge_loss": 0.1}, run={"name": "dv"})), "t")
    s = out.summary
    assert out.status == "diverged" and s["diverged_step"] == 0 and s["steps_done"] == 4  # log.loss_every
    assert s["updates_past_divergence"] == 4
    assert load_run(out.path).summary["updates_past_divergence"] == 4
    assert [m["step"] for m in load_run(out.path).metrics] == [0]


def test_16_a_double_ctrl_c_still_writes_a_summary(tmp_path, write_config):
    def twice(done, total, row):
        if done >= 8:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    cfg = load_config(write_config(train={"steps": 1000}, run={"name": "dd"}))
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, "t.yaml", progress=twice)
    summary = json.loads((tmp_path / "runs" / "dd" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps_done"] >= 8
    assert summary["final_train_loss"] is not None


# --- 17: readers never crash -----------------------------------------------------------------------

DAMAGE = {
    "meta_list": ("meta.json", b"[]"),
    "summary_list": ("summary.json", b"[1]"),
    "config_scalar_section": ("config.yaml", b"model: 5\n"),
    "metrics_number": ("metrics.jsonl", b"123\nnull\n"),
    "probe_without_probe": ("probes.jsonl", b'{"step": 0, "layer": 0, "param": "x", "value": 1}\n'),
    "metrics_not_utf8": ("metrics.jsonl", b'{"step": 0, "loss": 1.0}\n\xff\xfe\n'),
    "metrics_wrong_types": ("metrics.jsonl", b'{"step": "zero", "loss": "high"}\n'),
}


@pytest.fixture
def damaged_runs(tmp_path, write_config):
    """A good run and one copy per damage, side by side in one runs folder."""
    assert train_cli(str(write_config(run={"name": "good"}))).exit_code == 0
    good = tmp_path / "runs" / "good"
    for name, (file, content) in DAMAGE.items():
        folder = tmp_path / "runs" / name
        folder.mkdir()
        for f in good.iterdir():
            if f.is_file():
                (folder / f.name).write_bytes(f.read_bytes())
        if file in ("metrics.jsonl", "probes.jsonl"):
            content = (good / file).read_bytes() + content
        (folder / file).write_bytes(content)
    return tmp_path / "runs"


def test_17_runs_compare_and_plot_read_damaged_folders(damaged_runs):
    listing = runner.invoke(app, ["runs", str(damaged_runs)])
    assert listing.exit_code == 0 and "Traceback" not in listing.output, listing.output
    assert all(name in listing.stdout for name in DAMAGE)
    assert "metrics.jsonl: skipped line" in listing.stderr
    compared = runner.invoke(app, ["compare", *(str(damaged_runs / n) for n in ["good", *DAMAGE])])
    assert compared.exit_code == 0 and "Traceback" not in compared.output, compared.output
    assert re.search(r"probes\.jsonl: skipped line \d+: not a row of this file", compared.stderr)
    assert "not UTF-8" in compared.stderr and "meta.json is not a JSON object" in compared.stderr
    assert "config.yaml: model is not a mapping" in compared.stderr
    for name in DAMAGE:
        result = runner.invoke(app, ["plot", str(damaged_runs / name)])
        assert result.exit_code == 0 and "Traceback" not in result.output, (name, result.output)


def test_17_runs_reads_only_the_end_of_a_large_metrics_file(tmp_path, write_config):
    from lnexp.report.compare import find_runs

    assert train_cli(str(write_config(run={"name": "big"}))).exit_code == 0
    metrics = tmp_path / "runs" / "big" / "metrics.jsonl"
    line = json.dumps({"step": 1, "lr": 0.001, "loss": 2.5, "val_loss": None, "tokens_per_s": 1e5,
                       "grad_norm_total": None}) + "\n"
    metrics.write_text(line * 200_000 + metrics.read_text())  # about 25 MB
    tracemalloc.start()
    (run,) = find_runs(tmp_path / "runs")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 * 2**20 and run.metrics[-1]["step"] == 12


# --- elsewhere -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    path = root / "c.yaml"
    from conftest import TINY

    path.write_text(yaml.safe_dump({**TINY, "run": {"dir": str(root / "runs"), "name": "g"}}))
    assert train_cli(str(path)).exit_code == 0
    return root / "runs" / "g"


@pytest.mark.parametrize("args, message", [
    (["--prompt", "ab\udcff"], "--prompt is not valid UTF-8 text"),
    (["--prompt", "a", "--stop", "\udcfe"], "--stop is not valid UTF-8 text"),
    (["--prompt", "a", "--seed", str(2**64)], "--seed must be in 0..2**63-1"),
])
def test_generate_bad_text_and_seeds_are_one_line(trained_run, args, message):
    line = one_line_error(runner.invoke(app, ["generate", str(trained_run), *args]))
    assert message in line


def test_top_k_keeps_tied_tokens_by_position():
    from lnexp.decode.search import top_k_filter

    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (1, 256), generator=generator).float()
    k = int(torch.randint(1, 200, (1,), generator=generator))
    kept = torch.isfinite(top_k_filter(logits, k))[0]
    order = sorted(range(256), key=lambda i: (-logits[0, i].item(), i))
    assert set(kept.nonzero().flatten().tolist()) == set(order[:k])


def test_collapse_is_a_band_around_the_unigram_loss():
    from lnexp.run.train import collapse_report

    plateau = [{"step": s, "loss": 3.0} for s in range(100)]
    assert collapse_report([], 3.0, 4.9, plateau)["collapsed"] is False  # untrained: far above
    assert collapse_report([], 3.0, 3.02, plateau)["collapsed"] is True
    assert collapse_report([], 3.0, 2.0, plateau)["collapsed"] is False


def test_a_saved_config_trains_again_under_a_fresh_name(tmp_path, write_config):
    assert train_cli(str(write_config(run={"name": "orig"}))).exit_code == 0
    saved = tmp_path / "runs" / "orig" / "config.yaml"
    before = saved.read_bytes()
    result = train_cli(str(saved))
    assert result.exit_code == 0, result.output
    assert "training it again as orig-" in result.stderr
    again = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("orig-")]
    assert len(again) == 1 and load_run(again[0]).status == "completed" and saved.read_bytes() == before


def test_the_docs_read_probes_with_the_standard_library(tmp_path, write_config):
    assert train_cli(str(write_config(run={"name": "p"}))).exit_code == 0
    readme = (Path(__file__).parent.parent / "docs" / "run-folder.md").read_text()
    snippet = re.search(r"```python\n(.*?probes\.jsonl.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(snippet.replace("runs/NAME", str(tmp_path / "runs" / "p")), namespace)
