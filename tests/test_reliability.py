"""Runs that survive: checkpoints, resume, signals, kill -9, determinism, hostile input."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core.config import ConfigError, load_config
from lnexp.run import train as training
from lnexp.run.folder import RunWriter
from lnexp.run.reader import load_run

runner = CliRunner()
RELIABLE = {"model": {"dropout": 0.1}, "train": {"steps": 30, "checkpoint_every": 10},
            "log": {"grad_every": 3, "loss_every": 4}}


def strip(rows):
    """Everything but the wall-clock speed, which no two runs share."""
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def interrupt_at(step: int):
    """A progress callback that sends this process SIGINT once `step` steps are done."""
    def progress(done: int, total: int, row: dict) -> None:
        if done >= step:
            signal.raise_signal(signal.SIGINT)
    return progress


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path, write_config):
    cfg = load_config(write_config(**RELIABLE))
    whole = training.train(cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": "whole"})}),
                           "t.yaml")
    cfg.run.name = "cut"
    cut = training.train(cfg, "t.yaml", progress=interrupt_at(14))
    assert cut.status == "interrupted" and cut.summary["steps_done"] == 14
    state = torch.load(cut.path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 14 and not any(k.startswith(("_orig_mod.", "module.")) for k in state["model"])
    resumed = training.resume(cut.path, ["lnexp", "train", "--resume", str(cut.path)])
    assert resumed.status == "completed"
    a, b = load_run(whole.path), load_run(cut.path)
    assert strip(a.metrics) == strip(b.metrics)
    assert a.probes == b.probes
    assert b.meta["status"] == "completed" and b.meta["resumes"][0]["from_step"] == 14
    assert torch.equal(torch.load(whole.path / "model.pt")["blocks.1.ffn.fc2.weight"],
                       torch.load(cut.path / "model.pt")["blocks.1.ffn.fc2.weight"])


def test_resume_drops_lines_after_the_checkpoint(tmp_path, write_config):
    cfg = load_config(write_config(**RELIABLE, run={"name": "r"}))
    run = training.train(cfg, "t.yaml", progress=interrupt_at(22))
    with open(run.path / "metrics.jsonl", "a") as f:  # a killed run's half-written line
        f.write('{"step": 99, "lo')
    state = torch.load(run.path / "checkpoint.pt", weights_only=True)
    state["step"] = 20  # as if the last checkpoint were older than the last lines
    torch.save(state, run.path / "checkpoint.pt")
    RunWriter.reopen(run.path, keep_before=20).close()
    assert [m["step"] for m in load_run(run.path).metrics] == list(range(20))
    assert max(p["step"] for p in load_run(run.path).probes) == 18


def test_resume_refuses_finished_runs_and_runs_without_checkpoint(tmp_path, write_config):
    path = write_config(run={"name": "done"})
    assert runner.invoke(app, ["train", str(path), "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "runs" / "done")])
    assert result.exit_code == 2 and "the run is completed; nothing to resume" in result.stderr
    (tmp_path / "runs" / "done" / "summary.json").unlink()
    meta = json.loads((tmp_path / "runs" / "done" / "meta.json").read_text())
    (tmp_path / "runs" / "done" / "meta.json").write_text(json.dumps({**meta, "status": "failed"}))
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "runs" / "done")])
    assert result.exit_code == 2 and "no checkpoint.pt" in result.stderr
    assert runner.invoke(app, ["train"]).exit_code == 2
    assert runner.invoke(app, ["train", str(path), "--resume", "x"]).exit_code == 2


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lnexp", "train", *args, "--quiet"]


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines (exit {proc.poll()})")


def long_run(write_config, name: str) -> Path:
    return write_config(name, train={"steps": 100_000, "checkpoint_every": 50}, run={"name": name})


def test_sigterm_checkpoints_and_exits_130(tmp_path, write_config):
    proc = subprocess.Popen(cli(str(long_run(write_config, "t"))), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_lines(tmp_path / "runs" / "t" / "metrics.jsonl", 30, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "lnexp train --resume" in err and "Traceback" not in err
    run = load_run(tmp_path / "runs" / "t")
    assert run.status == "interrupted" and run.meta["status"] == "interrupted"
    state = torch.load(run.path / "checkpoint.pt", weights_only=True)
    assert state["step"] == run.summary["steps_done"] == len([m for m in run.metrics if m["loss"]])


def test_kill_9_leaves_a_readable_folder_shown_as_stale(tmp_path, write_config):
    proc = subprocess.Popen(cli(str(long_run(write_config, "k"))), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_lines(tmp_path / "runs" / "k" / "metrics.jsonl", 20, proc)
    proc.kill()
    proc.wait()
    with open(tmp_path / "runs" / "k" / "metrics.jsonl", "a") as f:
        f.write('{"step": 12345, "lo')  # the line a kill can cut in half
    run = load_run(tmp_path / "runs" / "k")
    assert run.meta["status"] == "running" and run.state == "stale"
    assert len(run.metrics) >= 20 and all("loss" in m for m in run.metrics)
    assert any("truncated" in note for note in run.notes)


def test_two_runs_with_one_name_started_at_once(tmp_path, write_config):
    path = write_config(train={"steps": 50}, run={"name": "same"})
    procs = [subprocess.Popen(cli(str(path)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "run folder exists" in loser and len(loser.strip().splitlines()) == 1
    assert load_run(tmp_path / "runs" / "same").status == "completed"
    assert [m["step"] for m in load_run(tmp_path / "runs" / "same").metrics] == list(range(51))


def test_deterministic_flag_is_applied_and_recorded(tmp_path, write_config):
    path = write_config(train={"deterministic": True}, run={"name": "d"})
    try:
        assert runner.invoke(app, ["train", str(path), "--quiet"]).exit_code == 0
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert load_run(tmp_path / "runs" / "d").meta["deterministic"] is True


def test_disk_full_mid_run_marks_failed_and_keeps_the_last_good_checkpoint(tmp_path, write_config,
                                                                             monkeypatch):
    path = write_config(**RELIABLE, run={"name": "full"})
    saves = []
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        saves.append(f)
        if len(saves) == 2:  # the second checkpoint hits a full disk half-way
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    result = runner.invoke(app, ["train", str(path), "--quiet"])
    assert result.exit_code == 1
    run_dir = tmp_path / "runs" / "full"
    assert result.stderr.strip() == ("error: training failed: disk full: no space left on the device "
                                     f"writing {run_dir / 'checkpoint.pt'}")
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["error"].startswith("disk full")
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["step"] == 10  # the first checkpoint, intact
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_runs_dir_is_a_clear_error(tmp_path, write_config):
    (tmp_path / "afile").write_text("")
    path = write_config(run={"dir": str(tmp_path / "afile" / "runs"), "name": "x"})
    result = runner.invoke(app, ["train", str(path), "--quiet"])
    assert result.exit_code == 2 and "cannot create the run folder" in result.stderr


@pytest.mark.parametrize("name", ["../x", "/abs/x", "a/b", "..", "a\\b"])
def test_run_names_cannot_escape_the_runs_dir(tmp_path, write_config, name):
    result = runner.invoke(app, ["train", str(write_config()), "--quiet", "--set", f"run.name={name}"])
    assert result.exit_code == 2 and "run.name: must be a plain folder name" in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_impossible_models_fail_before_training(tmp_path, write_config):
    cases = {"model.n_heads=3": "model.n_heads: must divide model.d_model (16)",
             "train.seq_len=17": "train.seq_len: must be <= model.max_seq_len (16)",
             "train.steps=0": "train.steps: must be >= 1",
             "model.d_model=65536": "parameters need at least"}
    for override, message in cases.items():
        result = runner.invoke(app, ["train", str(write_config()), "--quiet", "--set", override,
                                     "--set", "model.n_layers=1000" if "65536" in override else "x=1"
                                     if False else "train.seed=0"])
        assert result.exit_code == 2 and message in result.stderr, (override, result.stderr)
    assert not (tmp_path / "runs").exists()


# --- fuzzing: random damage to a valid config never gives anything but one clear line ---

VALID = yaml.safe_dump({"model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32},
                        "optim": {"lr": 1e-3, "betas": [0.9, 0.98]}, "train": {"steps": 5}})
KEYS = [("model", "n_layers"), ("model", "d_model"), ("model", "norm"), ("optim", "lr"),
        ("optim", "betas"), ("optim", "clip_grad_norm"), ("train", "steps"), ("train", "seed"),
        ("schedule", "decay"), ("log", "probes"), ("run", "name"), ("data", "source")]
junk = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=True)
    | st.text(max_size=20) | st.sampled_from(["1e-3", "on", "no", "~", "-1", "1e999", "nan"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


def check_rejection(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text)
    try:
        load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(str(path)) and "\n" not in message and len(message) < 400


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), value=junk, extra=st.booleans())
def test_fuzzed_values_give_one_line_or_a_valid_config(tmp_path, key, value, extra):
    raw = yaml.safe_load(VALID)
    raw.setdefault(key[0], {})[key[1]] = value
    if extra:
        raw["model"]["n_layrs"] = 1
    check_rejection(tmp_path, yaml.safe_dump(raw).encode())
    if extra:
        with pytest.raises(ConfigError):  # an unknown key is never accepted, whatever else is wrong
            load_config(tmp_path / "fuzz.yaml")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_fuzzed_bytes_give_one_line_or_a_valid_config(tmp_path, data):
    check_rejection(tmp_path, data)


@pytest.mark.parametrize("text", [b"", b"\x00\x01\x02\xff", "model: {n_layers: 2}\n".encode("utf-16"),
                                  b"a: " + b"[" * 5000 + b"]" * 5000, b"model:\n" + b"  x:\n" * 2000,
                                  b"!!python/object/apply:os.system ['echo hacked']"],
                         ids=["empty", "binary", "utf16", "deep-lists", "deep-maps", "python-tag"])
def test_hostile_files_via_the_cli(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    result = runner.invoke(app, ["train", str(path), "--quiet", "--set", f"run.dir={tmp_path}/runs"])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(f"error: {path}")
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()
    assert not os.path.exists("hacked")
