"""Trust (issue #27, and #28's generate and start-up items): reading a run folder runs no code from
it, memory limits are the real ones, external services fail fast and a failed start leaves nothing,
summaries tell the truth, output is never cut. Each test failed on the code before its fix."""

import hashlib
import io
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY
from test_faults import one_line_error, runner
from test_reliability import RELIABLE, interrupt_at
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core import plugins
from lnexp.core.config import load_config
from lnexp.core.status import Status
from lnexp.experiments.sweep.state import JobState
from lnexp.run import train as training

MARKER_PLUGIN = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


def invoke(*args: object, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny byte-level run, copied by the tests that change it."""
    root = tmp_path_factory.mktemp("trusted")
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump({**TINY, "run": {"dir": str(root / "runs"), "name": "good"}}))
    assert invoke("train", path, "--quiet").exit_code == 0
    return root / "runs" / "good"


def plant_plugin(run: Path, tmp_path: Path, config_file: Path | None = None) -> tuple[Path, Path]:
    """Make `run` name a plugin that writes a marker when it runs, as a sent folder could: in its
    config.yaml, meta.json (with the file's sha256) and checkpoint; returns (plugin, marker)."""
    marker, plugin = tmp_path / "marker", tmp_path / "evil.py"
    plugin.write_text(MARKER_PLUGIN.format(marker=str(marker)))
    for file in [run / "config.yaml", *([config_file] if config_file else [])]:
        file.write_text(yaml.safe_dump({**yaml.safe_load(file.read_text()), "plugins": [str(plugin)]}))
    meta = json.loads((run / "meta.json").read_text())
    record = [{"path": str(plugin), "sha256": hashlib.sha256(plugin.read_bytes()).hexdigest()}]
    (run / "meta.json").write_text(json.dumps({**meta, "plugins": record}))
    if (run / "checkpoint.pt").exists():
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        state["config"]["plugins"] = [str(plugin)]
        torch.save(state, run / "checkpoint.pt")
    return plugin, marker


@pytest.fixture
def forget_plugins():
    loaded = dict(plugins._LOADED)
    yield
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)


# --- 1. reading a run folder executes no code -------------------------------------------------------

def test_1_readers_never_run_a_folders_plugin(trained, tmp_path, forget_plugins):
    run = shutil.copytree(trained, tmp_path / "runs" / "sent")
    config = tmp_path / "sweep.yaml"
    config.write_text((run / "config.yaml").read_text())
    _, marker = plant_plugin(run, tmp_path, config)
    # a probe of the plugin's, which this process has no declaration of: shown by its rows' names
    rows = [{"step": 0, "probe": "stream_mean", "layer": i, "param": "mean", "value": 0.5 + i}
            for i in (0, 1)]
    with open(run / "probes.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    # a sweep folder whose sweep.json names a config that lists the plugin
    sweep = tmp_path / "runs" / "sw"
    shutil.copytree(trained, sweep / "lr=0.003,seed=0")
    (sweep / "sweep.json").write_text(json.dumps({
        "name": "sw", "config_file": str(config), "grid": {"optim.lr": ["0.003"]}, "seeds": 1, "set": [],
        "cells": [{"name": "lr=0.003,seed=0", "group": "lr=0.003", "seed": 0,
                   "overrides": ["optim.lr=0.003", "train.seed=0"], "status": "completed"}]}))
    for args in (["compare", run], ["compare", run, "--json"], ["compare", run, "--plot", tmp_path / "c.png"],
                 ["plot", run], ["runs", tmp_path / "runs"], ["export", run], ["sweep", "status", sweep]):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
        assert not marker.exists(), args
    shown = json.loads(invoke("compare", run, "--probe", "stream_mean", "--json").stdout)
    assert shown["runs"][0]["profile"]["values"] == [0.5, 1.5] and not marker.exists()
    assert "completed" in invoke("sweep", "status", sweep).stdout


def test_1_loading_a_model_needs_its_plugin_trusted_by_sha256(trained, tmp_path, forget_plugins):
    run = shutil.copytree(trained, tmp_path / "runs" / "sent")
    plugin, marker = plant_plugin(run, tmp_path)
    other = tmp_path / "other" / "evil.py"
    other.parent.mkdir()
    other.write_text(plugin.read_text() + "# changed\n")
    for command in (["generate", run, "--prompt", "\x01\x02"], ["decode-stats", run],
                    ["translate", run, "--text", "1 2"]):
        line = one_line_error(invoke(*command))
        assert f"needs the plugin {plugin}" in line and "--plugin FILE" in line, line
        line = one_line_error(invoke(*command, "--plugin", other))
        assert "no --plugin file has its sha256" in line, line
        assert not marker.exists()
    copy = tmp_path / "copy.py"  # trusted by its content, wherever it is
    copy.write_text(plugin.read_text())
    result = invoke("generate", run, "--prompt", "\x01\x02", "--max-new-tokens", "3", "--plugin", copy)
    assert result.exit_code == 0, result.output
    assert marker.exists()


def test_1_resume_needs_the_plugin_trusted_too(tmp_path, write_config, forget_plugins):
    cfg = load_config(write_config(**RELIABLE, run={"name": "cut"}))
    run = training.train(cfg, "t.yaml", progress=interrupt_at(14)).path
    plugin, marker = plant_plugin(run, tmp_path)
    line = one_line_error(invoke("train", "--resume", run))
    assert f"needs the plugin {plugin}" in line and "--plugin FILE" in line
    assert not marker.exists() and json.loads((run / "meta.json").read_text())["status"] == "interrupted"
    result = invoke("train", "--resume", run, "--plugin", plugin, "--quiet")
    assert result.exit_code == 0, result.output
    assert marker.exists() and json.loads((run / "summary.json").read_text())["status"] == "completed"


# --- 2. memory limits are the real ones ------------------------------------------------------------

def test_2_a_batch_over_rlimit_as_is_refused_before_anything_is_written(tmp_path, write_config):
    # about 5 GiB of activations: more than a 4 GiB address space, far less than this machine's memory
    path = write_config(train={"batch_size": 140_000})

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    proc = subprocess.run([sys.executable, "-m", "lnexp", "train", str(path), "--quiet"], capture_output=True,
                          text=True, timeout=300, preexec_fn=limit)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "train.batch_size: 140000 sequences" in lines[0] and "RLIMIT_AS" in lines[0]
    assert not (tmp_path / "runs").exists()


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_2_cgroup_limits_v2_and_v1_are_read_from_the_process_cgroup_up(tmp_path):
    from lnexp.run.hardware import cgroup_memory_left

    gib = 2**30
    proc = tmp_path / "cgroup"
    # v2, a SLURM job's step inside its job: the job's limit counts; reclaimable cache does not
    proc.write_text("0::/job/step\n")
    write_tree(tmp_path / "v2", {"job/step/memory.max": "max\n", "job/step/memory.current": f"{gib}\n",
                                 "job/memory.max": f"{4 * gib}\n", "job/memory.current": f"{3 * gib}\n",
                                 "job/memory.stat": f"anon 1\ninactive_file {gib}\n"})
    left = cgroup_memory_left(proc, tmp_path / "v2")
    assert left.bytes == 2 * gib and "cgroup" in left.what
    # a container sees its own cgroup at the mount's root
    proc.write_text("0::/elsewhere\n")
    write_tree(tmp_path / "box", {"memory.max": f"{gib}\n", "memory.current": "0\n"})
    assert cgroup_memory_left(proc, tmp_path / "box").bytes == gib
    # v1's memory controller; its "no limit" is a huge number
    proc.write_text("4:memory:/slurm/uid_1\n3:cpu:/\n")
    write_tree(tmp_path / "v1", {"memory/slurm/uid_1/memory.limit_in_bytes": f"{2 * gib}\n",
                                 "memory/slurm/uid_1/memory.usage_in_bytes": f"{gib}\n",
                                 "memory/memory.limit_in_bytes": "9223372036854771712\n",
                                 "memory/memory.usage_in_bytes": f"{gib}\n"})
    assert cgroup_memory_left(proc, tmp_path / "v1").bytes == gib
    proc.write_text("0::/\n")
    write_tree(tmp_path / "none", {"memory.max": "max\n", "memory.current": "5\n"})
    assert cgroup_memory_left(proc, tmp_path / "none") is None


def test_2_the_smallest_limit_refuses_and_names_itself(tmp_path, write_config, monkeypatch):
    from lnexp.run import hardware

    monkeypatch.setattr(hardware, "cgroup_memory_left",
                        lambda: hardware.Memory(2**10, "what the cgroup's memory limit leaves"))
    line = one_line_error(invoke("train", write_config(), "--quiet"))
    assert "more than the 0.0 GiB of what the cgroup's memory limit leaves" in line
    assert not (tmp_path / "runs").exists()


# --- 3. external services fail fast and clean; a failed start leaves nothing -------------------------

@pytest.fixture
def unreachable_hub(monkeypatch):
    """The hub at a port where nothing listens (refused at once, network or not), not offline."""
    datasets = pytest.importorskip("datasets")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if hasattr(datasets.config, flag):
            monkeypatch.setattr(datasets.config, flag, False)


def test_3_an_unreachable_hub_is_one_line_within_seconds(tmp_path, write_config, unreachable_hub):
    started = time.perf_counter()
    result = invoke("train", write_config(data={"source": "hf", "dataset": "someone/some-corpus"}), "--quiet")
    elapsed = time.perf_counter() - started
    line = one_line_error(result)
    assert "data.dataset: someone/some-corpus: the Hugging Face Hub" in line and "cannot be reached" in line
    assert "HF_HUB_OFFLINE=1" in line and "data.dataset: ./FOLDER" in line
    assert elapsed < 15 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["./my_corpus", "~/no/such/corpus", "data/my/corpus"])
def test_3_a_mistyped_local_folder_is_no_such_folder(tmp_path, write_config, unreachable_hub, name):
    line = one_line_error(invoke("train", write_config(data={"source": "hf", "dataset": name}), "--quiet"))
    assert line.endswith(f"data.dataset: {name}: no such folder"), line


def test_3_slurm_without_slurm_leaves_no_sweep_and_no_run(tmp_path, write_config, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no srun
    line = one_line_error(invoke("sweep", write_config(), "--grid", "optim.lr=1e-3,3e-3", "--name", "s",
                                 "--launcher", "slurm"))
    assert "--launcher slurm: no SLURM here (no srun on PATH)" in line
    assert not (tmp_path / "runs").exists()


def test_3_every_cell_state_is_documented_and_written_from_the_enums(write_config):
    from lnexp.experiments.sweep import sweep_record
    from lnexp.experiments.sweep.grid import expand

    table = (Path(__file__).parent.parent / "docs" / "reliability.md").read_text().split("| cell state |")[1]
    table = table.split("\n\n")[0]
    assert all(f"`{state.value}`" in table for state in (*Status, *JobState))
    sweep = expand(write_config(), ["optim.lr=1e-3,3e-3"])  # cells never started
    assert [c["status"] for c in sweep_record(sweep)["cells"]] == [JobState.NEW, JobState.NEW]


# --- 5. summaries tell the truth --------------------------------------------------------------------

SUITE = '''
from dataclasses import dataclass

from lnexp.experiments.reproduce.engine import per_seed
from lnexp.experiments.reproduce.measure import final_loss
from lnexp.experiments.reproduce.report import Analysis
from lnexp.experiments.reproduce.suites import Suite, register
from lnexp.experiments.reproduce.suites.common import model_norm
from lnexp.experiments.reproduce.verdicts import GREATER, Claim


@dataclass(frozen=True)
class Params:
    pass


def grid(scale, p):
    return {norm: per_seed("train", scale.seeds, model_norm(norm)) for norm in ("post", "pre")}


ENDS = Claim("a run ends", "final val loss", GREATER, -1.0, "a test's choice")


def analyse(runs):
    return Analysis([ENDS.test([final_loss(r) for r in runs["pre"]], runs.seeds())])


register(Suite("trust-claim", "runs end", "a test", {"test": Params()}, grid, analyse))
'''


def test_5_a_reports_header_has_the_commands_wall_time_and_threads(tmp_path, monkeypatch):
    import dataclasses

    from lnexp.experiments.reproduce import SCALES, reproduce
    from lnexp.experiments.reproduce.suites import SUITES

    (tmp_path / "suite.py").write_text(SUITE)
    saved, loaded = dict(SUITES), dict(plugins._LOADED)
    model = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 16}
    data = {"source": "synthetic", "task": "copy", "vocab_size": 16}
    train = {"steps": 4, "batch_size": 4, "seq_len": 16, "eval_every": 2, "eval_batches": 1}
    base = {"model": model, "data": data, "train": train, "log": {"grad_every": 2}}
    scale = dataclasses.replace(SCALES["tiny"], name="test", seeds=1, init_seeds=1, train=base, init=base)
    try:
        outcome = reproduce("trust-claim", scale, out=tmp_path / "out", threads=1, pack=1,
                            plugins=[str(tmp_path / "suite.py")])
    finally:
        SUITES.clear()
        SUITES.update(saved)
        plugins._LOADED.clear()
        plugins._LOADED.update(loaded)
    report = (tmp_path / "out" / "trust-claim" / "report.md").read_text()
    written = next(line for line in report.splitlines() if line.startswith("Written"))
    assert "--threads 1" in written and f"in {outcome.wall_s:.0f} s of wall time" in written
    runs = sorted((tmp_path / "out" / "runs" / "train").iterdir())
    assert all("--threads" in json.loads((r / "meta.json").read_text())["command"] for r in runs)
    walls = [json.loads((r / "meta.json").read_text())["wall_time_s"] for r in runs]
    assert outcome.wall_s > max(walls)  # the command's time, not its last run's


def test_5_the_last_log_line_shows_the_final_validation_loss(tmp_path, write_config, capsys):
    from lnexp.report.console import plain_progress

    cfg = load_config(write_config(run={"name": "logged"}))
    outcome = training.train(cfg, "t.yaml", progress=plain_progress(every=4))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("step 12/12") and f"val {outcome.summary['final_val_loss']:.3f} |" in last


def test_5_collapse_at_the_unigram_entropy_while_still_learning_is_too_early():
    from lnexp.run.train import TOO_EARLY, collapse_report

    falling = [{"step": s, "loss": 5.0 - 0.02 * s} for s in range(100)]  # a model on its way down
    plateau = [{"step": s, "loss": 3.0 + 0.01 * (-1) ** s} for s in range(100)]
    assert collapse_report([], 3.0, 3.02, falling)["collapsed"] == TOO_EARLY
    assert collapse_report([], 3.0, 3.02, plateau)["collapsed"] is True
    assert collapse_report([], 3.0, 2.5, falling)["collapsed"] is False
    assert collapse_report([], 3.0, 3.02, falling[:1])["collapsed"] == TOO_EARLY  # too short to say


def test_5_compare_shows_too_early(trained, tmp_path):
    run = shutil.copytree(trained, tmp_path / "early")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "collapsed": "too early"}))
    table = invoke("compare", run).stdout
    assert any("collapsed" in line and "too early" in line for line in table.splitlines())
    outcome = json.loads(invoke("compare", run, "--json").stdout)["runs"][0]["outcome"]
    assert outcome["collapsed"] == "too early"


def test_5_translate_warns_about_unknown_words_and_shows_unk(tmp_path):
    pytest.importorskip("tokenizers")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("the cat sat\tle chat assis\na dog ran\tun chien courait\n" * 20)
    config = tmp_path / "t.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"arch": "encoder_decoder", "n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 32,
                  "max_seq_len": 16},
        "data": {"source": "pairs", "path": str(pairs), "tokenizer": "word", "vocab_size": 20},
        "train": {"steps": 2, "batch_size": 4, "seq_len": 8, "eval_every": 2, "eval_batches": 1},
        "run": {"dir": str(tmp_path / "runs"), "name": "w"}}))
    assert invoke("train", config, "--quiet").exit_code == 0
    result = invoke("translate", tmp_path / "runs" / "w", "--text", "the zebra sat")
    assert result.exit_code == 0, result.output
    assert "warning: --text: not in the run's vocabulary, read as <unk>: 'zebra'" in result.stderr
    from lnexp.data.tokenizers import read_tokenizer

    tokenizer = read_tokenizer(tmp_path / "runs" / "w" / "tokenizer.json", "word")
    assert tokenizer.decode(tokenizer.encode("the zebra sat")) == "the <unk> sat"


def test_5_a_bpe_character_cut_short_is_shown_as_escapes():
    pytest.importorskip("tokenizers")
    from lnexp.data.tokenizers import train_tokenizer

    text = "héllo wörld € " * 40
    tokenizer = train_tokenizer("bpe", 300, [text])
    assert tokenizer.decode(tokenizer.encode(text)) == text
    euro = tokenizer.encode("€")
    assert tokenizer.decode(euro[:1]) == "\\xe2\\x82"  # the library's own decoder gives U+FFFD


def test_5_generate_echoes_the_prompt_and_reads_a_prompt_file(trained, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(b"\x01\x02\x03\n")  # the synthetic run's tokens are bytes 0-15
    result = invoke("generate", trained, "--prompt-file", prompt, "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    echoed = "\\x01\\x02\\x03\n"  # the prompt as printed: control characters as \xNN
    assert result.stdout.startswith(echoed) and len(result.stdout) > len(echoed) + 1
    neither = one_line_error(invoke("generate", trained))
    assert neither.endswith("--prompt TEXT or --prompt-file FILE (one of them)")
    prompt.write_bytes(b"\xff\xfe")
    not_text = one_line_error(invoke("generate", trained, "--prompt-file", prompt))
    assert not_text.endswith("cannot read (not UTF-8 text)")


def test_5_startup_says_the_data_loads_and_the_model_builds(monkeypatch):
    from rich.console import Console

    from lnexp.report import console

    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)
    monkeypatch.setattr(console, "stderr", terminal)
    with console.training_progress("quick", quiet=False) as update:
        assert update is not None
    shown = terminal.file.getvalue()
    assert "loading the data and building the model" in shown and "0/?" not in shown and "lr -" not in shown


# --- 6. output is never cut -------------------------------------------------------------------------

@pytest.fixture
def narrow(monkeypatch):
    """stdout as a pipe would be under COLUMNS=40 (rich reads COLUMNS when it starts)."""
    from lnexp.report import console

    monkeypatch.setattr(console.stdout, "width", 40)


def test_6_compare_of_five_runs_and_runs_are_whole_when_piped(trained, tmp_path, narrow):
    names = [f"a-rather-long-run-name-{i}" for i in range(5)]
    for name in names:
        shutil.copytree(trained, tmp_path / "runs" / name)
    result = invoke("compare", *(tmp_path / "runs" / n for n in names))
    assert result.exit_code == 0 and "…" not in result.stdout
    lines = result.stdout.splitlines()
    assert any(all(n in line for n in names) for line in lines)  # one header row names every run
    assert sum("final val loss" in line for line in lines) == 1  # a row per quantity, not turned
    listing = invoke("runs", tmp_path / "runs").stdout.splitlines()
    for name in names:
        (row,) = [line for line in listing if name in line]
        assert "completed" in row and "12/12" in row


def test_6_the_verdict_table_is_whole_when_piped(monkeypatch, narrow):
    from lnexp.experiments import reproduce as reproduction
    from lnexp.experiments.reproduce.report import StoredSuite
    from lnexp.experiments.reproduce.verdicts import LESS, Claim

    claim = "Pre-LN's gradient norm is flat across layers at initialisation"
    verdict = Claim(claim, "last/first layer ratio", LESS, 2.0, "a test's choice").test([1.1, 1.2, 1.3],
                                                                                         [0, 1, 2])
    stored = StoredSuite("xiong2020-init", "init", "a test", "tiny", [verdict])
    done = reproduction.Reproduction({}, {"xiong2020-init": stored}, 0, 3, {}, 1.0, Path("runs/report.md"))
    monkeypatch.setattr(reproduction, "reproduce", lambda *args, **kwargs: done)
    result = CliRunner().invoke(app, ["reproduce", "xiong2020-init"])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if "xiong2020-init" in line and "│" in line]
    assert claim in row and "reproduced" in row
