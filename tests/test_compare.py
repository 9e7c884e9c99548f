"""lnexp compare, plot and runs, driven through the CLI on tiny runs trained here; the numbers in the
tables and the JSON are checked against the run files."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.run.reader import load_run
from lnexp.run.rows import layer_profile

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


_trained: list[Path] = []  # the first test's runs, copied for the others (training is the slow part)


@pytest.fixture
def pair(tmp_path, write_config, tmp_path_factory) -> tuple[Path, Path]:
    """A 2-layer Post-LN run logging gradients every 5 steps and a 3-layer Pre-LN run logging every 4:
    different depth and different logged steps. Each test gets its own copy, to damage if it likes
    (the originals are trained once, outside every test's folder)."""
    if not _trained:
        post = write_config("post", run={"name": "post"})
        pre = write_config("pre", run={"name": "pre"}, model={"norm": "pre", "n_layers": 3},
                           log={"grad_every": 4})
        for path in (post, pre):
            result = invoke("train", path, "--quiet")
            assert result.exit_code == 0, result.output
        originals = tmp_path_factory.mktemp("pair")
        for name in ("post", "pre"):
            shutil.move(tmp_path / "runs" / name, originals / name)
        _trained.extend([originals / "post", originals / "pre"])
    for run in _trained:
        shutil.copytree(run, tmp_path / "runs" / run.name)
    return tmp_path / "runs" / "post", tmp_path / "runs" / "pre"


FINAL_VAL = "final val loss (nats per token)"  # the runs' synthetic data: nats per token


def rows_of(stdout: str, label: str) -> list[str]:
    """The cells of the table row(s) that start with `label`."""
    return [re.split(r"\s*│\s*", line.strip("│ "))[1:] for line in stdout.splitlines()
            if re.match(rf"│\s*{re.escape(label)}\s*│", line)]


def test_compare_json_matches_the_run_files(pair):
    post, pre = pair
    result = invoke("compare", post, pre, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["name"] for r in data["runs"]] == ["post", "pre"]
    assert [r["layout"] for r in data["runs"]] == ["post", "pre"]
    # only the keys that differ, one value per run; run.name/run.dir are the headers already
    assert data["config_diff"] == {"model.n_layers": [2, 3], "model.norm": ["post", "pre"],
                                   "log.grad_every": [5, 4]}
    assert data["runs"][1]["label"] == "pre: model.n_layers=3, model.norm=pre, log.grad_every=4"
    for entry, path in zip(data["runs"], pair):
        summary = json.loads((path / "summary.json").read_text())
        for key in ("steps_done", "final_train_loss", "best_train_loss", "final_val_loss", "best_val_loss",
                    "tokens_per_s", "wall_time_s", "diverged_step"):
            assert entry["outcome"][key] == summary[key], key
        assert entry["outcome"]["status"] == "completed"
        # the default profile: ffn.fc2.weight's gradient norm at step 0, from probes.jsonl
        probes = [json.loads(line) for line in (path / "probes.jsonl").read_text().splitlines()]
        fc2 = {p["layer"]: p["value"] for p in probes
               if p["step"] == 0 and p["probe"] == "grad" and p["param"] == "ffn.fc2.weight"}
        assert entry["profile"]["step"] == 0
        assert entry["profile"]["values"] == [fc2[i] for i in sorted(fc2)]
        assert entry["profile"]["last/first"] == pytest.approx(fc2[max(fc2)] / fc2[0])
        assert entry["profile"]["max/min"] == pytest.approx(max(fc2.values()) / min(fc2.values()))
    assert len(data["runs"][0]["profile"]["values"]) == 2 and len(data["runs"][1]["profile"]["values"]) == 3
    losses = [json.loads((p / "summary.json").read_text())["final_val_loss"] for p in pair]
    assert data["best"]["final_val_loss"] == [["post", "pre"][losses.index(min(losses))]]
    assert data["profile"] == {"probe": "grad", "param": "ffn.fc2", "at": 0} and data["notes"] == []


def test_compare_tables_show_the_numbers(pair):
    post, pre = pair
    result = invoke("compare", post, pre)
    assert result.exit_code == 0, result.output
    out = result.stdout
    runs = [load_run(p) for p in pair]
    assert rows_of(out, "model.norm") == [["post", "pre"]]
    assert rows_of(out, "model.n_layers") == [["2", "3"]]
    assert rows_of(out, "optim.lr") == []  # equal in both: not shown without --all
    assert rows_of(out, "status") == [["completed", "completed"]]
    assert rows_of(out, FINAL_VAL) == [[f"{r.summary['final_val_loss']:.4g}" for r in runs]]
    assert rows_of(out, "steps done") == [["12", "12"]]
    profiles = [layer_profile(r.probes, "grad", "ffn.fc2", 0) for r in runs]
    assert rows_of(out, "2") == [["-", f"{profiles[1][2]:.4g}"]]  # post has no layer 2
    assert rows_of(out, "last/first") == [[f"{p[-1] / p[0]:.4g}" for p in profiles]]
    assert "gradient norm of ffn.fc2 by layer at step 0" in out
    every = invoke("compare", post, pre, "--all").stdout
    assert rows_of(every, "optim.lr") == [["0.003", "0.003"]]
    assert rows_of(every, "run.name") == [["post", "pre"]]


def test_profile_at_last_and_nearest_step_is_said(pair):
    post, pre = pair
    result = invoke("compare", post, pre, "--json", "--at", "10", "--param", "all")
    data = json.loads(result.stdout)
    # post logged grads at 0, 5, 10; pre at 0, 4, 8 -> 8 is the nearest to 10, and a note says so
    assert [r["profile"]["step"] for r in data["runs"]] == [10, 8]
    assert "pre: step 10 not logged, using the nearest logged step, 8" in result.stderr
    probes = load_run(pre).probes
    layer1 = [p["value"] for p in probes if p["step"] == 8 and p["probe"] == "grad" and p["layer"] == 1]
    assert data["runs"][1]["profile"]["values"][1] == pytest.approx(sum(v * v for v in layer1) ** 0.5)
    last = json.loads(invoke("compare", post, pre, "--json", "--at", "last", "--probe", "act").stdout)
    assert [r["profile"]["step"] for r in last["runs"]] == [10, 8]
    acts = [p["value"] for p in probes if p["step"] == 8 and p["probe"] == "act"]
    assert last["runs"][1]["profile"]["values"] == acts and len(acts) == 4  # entering 3 layers, leaving


def test_markdown(pair):
    result = invoke("compare", *pair, "--markdown")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "| key | post | pre |" in lines and "| model.norm | post | pre |" in lines
    summaries = [load_run(p).summary for p in pair]
    best = min(s["final_val_loss"] for s in summaries)
    row = next(line for line in lines if line.startswith("| final val loss"))
    assert f"**{best:.4g}**" in row  # the best value is bold


def test_plot_compare_writes_a_png(pair, tmp_path):
    out = tmp_path / "figs" / "cmp.png"
    result = invoke("compare", *pair, "--plot", out, "--log-loss")
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stderr
    header = out.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert (width, height) == (16 * 120, round((4.8 + 0.3 + 0.2) * 120))  # figsize x dpi, a legend row
    assert invoke("compare", *pair, "--plot", tmp_path / "x.svg").exit_code == 0
    assert (tmp_path / "x.svg").read_text().lstrip().startswith("<?xml")
    bad = invoke("compare", *pair, "--plot", tmp_path / "x.gif")
    assert bad.exit_code == 2 and "must end in .png, .svg or .pdf" in bad.stderr


def test_plot_run_writes_its_figures(pair):
    post, _ = pair
    result = invoke("plot", post)
    assert result.exit_code == 0, result.output
    names = ["curves.png", "grad_heatmap.png", "grad_profile.png", "activations.png"]
    assert result.stdout.split() == [str(post / "plots" / n) for n in names]
    for name in names:
        assert (post / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_lists_newest_first(pair, tmp_path):
    post, pre = pair
    meta = json.loads((post / "meta.json").read_text())
    meta["started"] = "2000-01-01T00:00:00+00:00"  # make post the oldest whatever the clock did
    (post / "meta.json").write_text(json.dumps(meta))
    result = invoke("runs", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines() if line.strip().startswith(("post", "pre"))]
    # in nats per the run's own unit: the synthetic task's tokens
    val = [f"{load_run(p).summary['final_val_loss']:.4g}/token" for p in (pre, post)]
    assert [line[:7] for line in lines] == [["pre", "completed", "pre", "adam", "0", "12/12", val[0]],
                                            ["post", "completed", "post", "adam", "0", "12/12", val[1]]]
    local = datetime.fromisoformat(meta["started"]).astimezone()  # shown in local time, as `date` does
    assert lines[1][7:] == local.strftime("%Y-%m-%d %H:%M").split()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("runs", empty).exit_code == 0
    missing = invoke("runs", tmp_path / "nope")
    assert missing.exit_code == 2 and "no such folder" in missing.stderr


def test_killed_run_is_shown_as_far_as_it_got(pair):
    """A run killed mid-way: meta still says running (its pid is gone), no summary, half a last line."""
    post, pre = pair
    meta = json.loads((pre / "meta.json").read_text())
    meta.update(status="running", pid=2**22 + 12345)  # above pid_max's default: no such process
    (pre / "meta.json").write_text(json.dumps(meta))
    (pre / "summary.json").unlink()
    lines = (pre / "metrics.jsonl").read_text().splitlines()[:7]
    (pre / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 7, "lr": 0.0')
    with open(pre / "probes.jsonl", "a") as f:
        f.write('{"step": 12, "probe": "gr')
    result = invoke("compare", post, pre, "--json", "--at", "last")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["runs"][1]
    assert entry["outcome"]["status"] == "stale" and entry["outcome"]["steps_done"] == 7
    losses = [json.loads(line)["loss"] for line in lines]
    assert entry["outcome"]["final_train_loss"] == pytest.approx(sum(losses) / 7)
    assert entry["outcome"]["best_train_loss"] == min(losses)
    assert entry["profile"]["step"] == 8
    assert "metrics.jsonl: skipped a truncated line" in result.stderr
    assert "pre: stale; outcome so far" in result.stderr
    assert "Traceback" not in result.output
    table = invoke("compare", post, pre).stdout
    assert rows_of(table, "status") == [["completed", "stale"]]


def test_bad_input_is_one_line_and_exit_2_only_when_nothing_can_be_shown(pair, tmp_path):
    post, _ = pair
    not_a_run = tmp_path / "plain"
    not_a_run.mkdir()
    partial = invoke("compare", post, not_a_run, tmp_path / "missing")
    assert partial.exit_code == 0
    assert f"{not_a_run}: not a run folder (no meta.json)" in partial.stderr
    assert f"{tmp_path / 'missing'}: no such run folder" in partial.stderr
    nothing = invoke("compare", not_a_run, tmp_path / "missing")
    assert nothing.exit_code == 2 and len(nothing.stderr.strip().splitlines()) == 1
    assert nothing.stderr.startswith("error: nothing to compare:")
    for args, message in (([post, post, "--at", "soon"], "--at: must be a step number or 'last'"),
                          ([post, post, "--probe", "weights"], "--probe: must be one of"),
                          ([post, post, "--json", "--markdown"], "choose one")):
        bad = invoke("compare", *args)
        assert bad.exit_code == 2 and message in bad.stderr and bad.stdout == ""
    unknown = invoke("compare", *pair, "--param", "ffn.fc3")
    assert unknown.exit_code == 0 and "no grad values for ffn.fc3 at step 0" in unknown.stderr
    glob = invoke("compare", str(tmp_path / "runs" / "*"), "--json")  # a quoted glob is expanded
    assert [r["name"] for r in json.loads(glob.stdout)["runs"]] == ["post", "pre"]
    assert invoke("plot", not_a_run).exit_code == 2


def test_commands_do_not_import_torch_or_matplotlib_at_startup():
    code = ("import sys, lnexp.cli, lnexp.report.compare; "
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert out.stdout.strip() == "[]", out.stderr


def test_group_by_aggregates_runs(pair, tmp_path):
    post, pre = pair
    twin = tmp_path / "runs" / "post2"
    shutil.copytree(post, twin)  # the same config as post: one group of two
    result = invoke("compare", post, twin, pre, "--group-by", "model.norm", "--json")
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)["groups"]
    assert [g["label"] for g in groups] == ["post (2 runs)", "pre (1 runs)"]
    assert groups[0]["runs"] == ["post", "post2"]
    assert groups[0]["outcome"]["final_val_loss"]["n"] == 2
    loss = load_run(post).summary["final_val_loss"]
    assert groups[0]["outcome"]["final_val_loss"]["mean"] == pytest.approx(loss)
    assert groups[0]["outcome"]["final_val_loss"]["std"] == 0
    table = invoke("compare", post, twin, pre, "--group-by", "model.norm").stdout
    assert rows_of(table, FINAL_VAL)[0][0] == f"{loss:.4g} ± 0"
    assert rows_of(table, "status") == [["2 completed", "1 completed"]]
    bad = invoke("compare", post, pre, "--group-by", "model.nrom")
    assert bad.exit_code == 2 and "--group-by model.nrom" in bad.stderr


def test_numbers_sort_as_numbers_and_wide_tables_turn(pair, tmp_path, monkeypatch):
    from lnexp.report import console
    from lnexp.report.compare import natural_key

    assert sorted(["lr=3e-3", "lr=3e-4", "lr=1e-2"], key=natural_key) == ["lr=3e-4", "lr=3e-3", "lr=1e-2"]
    assert sorted(["L10", "L2"], key=natural_key) == ["L2", "L10"]
    post, _ = pair
    for name in ("lr=3e-3", "lr=3e-4"):
        shutil.copytree(post, tmp_path / "runs" / name)
    glob = invoke("compare", str(tmp_path / "runs" / "lr=*"), "--json")
    assert [r["name"] for r in json.loads(glob.stdout)["runs"]] == ["lr=3e-4", "lr=3e-3"]
    cells = [tmp_path / "runs" / f"cell-{i:02d}" for i in range(14)]  # a sweep's worth of columns
    for cell in cells:
        shutil.copytree(post, cell)
    monkeypatch.setattr(console.Output, "is_terminal", True)  # a terminal's width counts; a pipe's not
    monkeypatch.setattr(console.stdout, "width", 120)
    narrow = invoke("compare", *cells)
    assert narrow.exit_code == 0
    # a row per run: each run's name starts a row whole, the outcome labels head the columns
    assert all(len(rows_of(narrow.stdout, cell.name)) == 2 for cell in cells)  # outcome and profile
    assert not rows_of(narrow.stdout, FINAL_VAL)
    assert "…" not in narrow.stdout
    assert rows_of(invoke("compare", *pair).stdout, FINAL_VAL)  # two runs fit: not turned


def test_runs_shows_an_unfinished_runs_last_val_loss_at_its_step(pair, tmp_path, monkeypatch):
    from lnexp.report import console

    post, pre = pair
    (pre / "summary.json").unlink()
    last = [json.loads(line) for line in (pre / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("val_loss") is not None and json.loads(line)["step"] < 12][-1]
    lines = [line for line in (pre / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["step"] < 12]  # the final evaluation's line not written yet
    (pre / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    result = invoke("runs", tmp_path / "runs")
    row = next(line for line in result.stdout.splitlines() if line.strip().startswith("pre "))
    assert f"{last['val_loss']:.4g}/token @ {last['step']}" in row
    monkeypatch.setattr(console.Output, "is_terminal", True)
    monkeypatch.setattr(console.stdout, "width", 30)
    narrow = invoke("runs", tmp_path / "runs")
    assert narrow.exit_code == 0 and "pre" in narrow.stdout.splitlines()  # the whole name, on its own line


def test_version_and_short_help():
    from lnexp import __version__

    assert invoke("--version").stdout.strip() == f"lnexp {__version__}"
    helped = invoke("train", "-h")
    assert helped.exit_code == 0 and "--force " in helped.stdout and "<bool>" not in helped.stdout
    top = invoke("-h").stdout
    assert "..." not in top.split("Commands:")[1]  # each command's line a whole sentence
