"""TensorBoard and W&B: what a run logs there equals its metrics.jsonl and probes.jsonl, live and exported."""

import json
import math
import struct
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.run.reader import load_run
from lnexp.run.sinks import METRIC_TAGS, probe_tag

runner = CliRunner()
pytest.importorskip("tensorboard")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def read_events(folder: Path) -> tuple[dict[str, dict[int, float]], object]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    every = {kind: 0 for kind in ("scalars", "histograms", "images", "tensors")}  # 0: keep all
    acc = EventAccumulator(str(folder), size_guidance=every)
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}, acc


def expected_scalars(run) -> dict[str, dict[int, float]]:
    """Every scalar the run folder's jsonl files hold, by tag and step."""
    want: dict[str, dict[int, float]] = {}
    for row in run.metrics:
        for key, tag in METRIC_TAGS.items():
            if row.get(key) is not None:
                want.setdefault(tag, {})[row["step"]] = row[key]
    for row in run.probes:
        want.setdefault(probe_tag(row), {})[row["step"]] = row["value"]
    return want


def assert_events_match(folder: Path, run) -> None:
    got, acc = read_events(folder)
    want = expected_scalars(run)
    assert "grad/ffn.fc2/layer_01" in want and "act/resid/layer_00" in want and "val/loss" in want
    for tag, values in want.items():
        assert set(got[tag]) == set(values), tag
        for step, value in values.items():
            assert got[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-30), (tag, step)  # float32
    final = run.summary["final_val_loss"]
    assert got["final/final_val_loss"] == {run.summary["steps_done"]: pytest.approx(final)}
    # the HParams plugin: the config's keys and the status, the final metrics
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = session.session_start_info.hparams
    assert hp["model.n_layers"].number_value == run.config["model"]["n_layers"]
    assert hp["model.norm"].string_value == run.config["model"]["norm"]
    assert hp["status"].string_value == run.status
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "final/final_val_loss" in {m.name.tag for m in experiment.metric_infos}


def test_live_tensorboard_equals_the_jsonl_files(tmp_path, write_config):
    config = write_config("tb", run={"name": "tb"}, log={"tensorboard": True, "grad_every": 5,
                                                         "loss_every": 4})
    result = invoke("train", config, "--quiet")
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "runs" / "tb")
    assert_events_match(run.path / "tb", run)


def test_tensorboard_gets_the_config_the_figures_and_opt_in_gradient_histograms(tmp_path, write_config):
    config = write_config("hist", run={"name": "hist"},
                          log={"tensorboard": True, "grad_every": 5, "loss_every": 4, "histograms_every": 5})
    result = invoke("train", config, "--quiet")
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "runs" / "hist")
    assert_events_match(run.path / "tb", run)
    _, acc = read_events(run.path / "tb")
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert yaml.safe_load(text.strip("`").removeprefix("yaml\n")) == run.config
    images = {tag: acc.Images(tag) for tag in acc.Tags()["images"]}
    figures = ("curves", "grad_heatmap", "grad_profile", "activations")
    assert set(images) == {f"figures/{name}" for name in figures}
    assert all([e.step for e in events] == [run.summary["steps_done"]] for events in images.values())
    # a histogram of each weight's gradient every 5 steps: its sum of squares is the grad probe's norm²
    hists = {tag: {e.step: e.histogram_value for e in acc.Histograms(tag)}
             for tag in acc.Tags()["histograms"]}
    assert "grad_hist/ffn.fc2/layer_01" in hists and "grad_hist/tok_emb" in hists
    norms = {(probe_tag(r), r["step"]): r["value"] for r in run.probes if r["probe"] == "grad"}
    weights = torch.load(run.path / "model.pt")
    for tag, by_step in hists.items():
        assert sorted(by_step) == [0, 5, 10], tag
        for step, h in by_step.items():
            norm = norms[(tag.replace("grad_hist/", "grad/"), step)]
            assert math.sqrt(h.sum_squares) == pytest.approx(norm, rel=1e-5), (tag, step)
            assert sum(h.bucket) == h.num and h.min <= h.max
    assert {h.num for by_step in hists.values() for h in by_step.values()} == \
        {float(w.numel()) for w in weights.values() if w.ndim >= 2}


def test_export_of_an_old_run_and_a_sweep(tmp_path, write_config):
    config = write_config("sw", train={"steps": 8})
    result = invoke("sweep", config, "--grid", "model.norm=post,pre", "--quiet")
    assert result.exit_code == 0, result.output
    sweep = tmp_path / "runs" / "sw"
    cells = sorted(p for p in sweep.iterdir() if (p / "meta.json").exists())
    assert len(cells) == 2 and not any((c / "tb").exists() for c in cells)
    result = invoke("export", sweep, "--to", "tensorboard")
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(c / "tb") for c in cells]
    for cell in cells:
        assert_events_match(cell / "tb", load_run(cell))
        _, acc = read_events(cell / "tb")
        assert "figures/curves" in acc.Tags()["images"] and not acc.Tags()["histograms"]
    # again on one run: its tb/ is replaced, not appended to (the scalars' event file, the figures')
    result = invoke("export", cells[0])
    assert result.exit_code == 0, result.output
    assert len(list((cells[0] / "tb").iterdir())) == 2
    assert_events_match(cells[0] / "tb", load_run(cells[0]))
    bad = invoke("export", cells[0], "--to", "csv")
    assert bad.exit_code == 2 and "--to" in bad.output


def wandb_records(path: Path) -> list:
    """The records of a W&B .wandb file: a 7-byte header, then LevelDB-log blocks of 32 KiB whose
    records are a 7-byte header (crc, length, type) and a protobuf `Record` (maybe in fragments)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, offset, block = [], b"", 7, 32768
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        length, kind = struct.unpack("<HB", data[offset + 4: offset + 7])
        pending += data[offset + 7: offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # full or last fragment
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
        elif kind == 0:
            break
    return records


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    """W&B as on a machine never logged in: no API key anywhere, W&B's settings in tmp_path."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    import wandb

    wandb.teardown()  # W&B reads its environment once per process: again with this one
    yield
    wandb.teardown()


def wandb_run(folder: Path) -> tuple[object, dict, dict, dict]:
    """The offline W&B run in `folder` (RUN/wandb/): its run record, history, config and summary."""
    files = list(folder.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    got: dict[str, dict[int, float]] = {}
    config_items, summary, run_record = {}, {}, None
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            step = record.history.step.num
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    got.setdefault(key, {})[step] = json.loads(item.value_json)
        elif kind in ("config", "run"):
            update = record.config.update if kind == "config" else record.run.config.update
            config_items.update({i.key: json.loads(i.value_json) for i in update})
            run_record = record.run if kind == "run" else run_record
        elif kind == "summary":
            summary.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                            for i in record.summary.update})
    return run_record, got, config_items, summary


def assert_wandb_matches(folder: Path, run) -> object:
    record, got, config_items, summary = wandb_run(folder)
    want = expected_scalars(run)
    assert got.keys() == want.keys()
    for tag, values in want.items():
        assert got[tag] == pytest.approx(values, rel=1e-12), tag
    assert config_items["model.norm"] == run.config["model"]["norm"]
    assert summary["final/final_val_loss"] == pytest.approx(run.summary["final_val_loss"])
    assert summary["status"] == run.status
    return record


def test_wandb_offline_from_the_environment_with_the_configs_settings(tmp_path, write_config, monkeypatch,
                                                                     no_wandb_login):
    """WANDB_MODE=offline without a login: the config's unset keys are W&B's environment's."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "env-team")
    config = write_config("wb", run={"name": "wb"},
                          log={"wandb": {"entity": "team", "tags": ["ln", "post"], "notes": "a note",
                                         "group": "g1"}})
    result = invoke("train", config, "--quiet")
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "runs" / "wb")
    record = assert_wandb_matches(run.path / "wandb", run)
    assert (record.project, record.entity, record.run_group) == ("from-env", "team", "g1")
    assert list(record.tags) == ["ln", "post"] and record.notes == "a note" and record.display_name == "wb"


def test_a_sweeps_cells_are_named_after_it_and_grouped(tmp_path, monkeypatch):
    from lnexp.run.sinks import wandb_settings

    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    (tmp_path / "lr").mkdir()
    (tmp_path / "lr" / "sweep.json").write_text("{}")
    cell = {"log": {"wandb": {"project": "p", "tags": [], "group": None, "mode": None}}}
    assert wandb_settings(cell, tmp_path / "lr" / "lr=0.1,seed=0") == \
        {"project": "p", "name": "lr/lr=0.1,seed=0", "group": "lr"}
    cell["log"]["wandb"]["group"] = "mine"
    assert wandb_settings(cell, tmp_path / "lr" / "c")["group"] == "mine"
    assert wandb_settings({"log": {"wandb": {}}}, tmp_path / "alone") == {"name": "alone"}


def test_a_wandb_run_that_cannot_start_leaves_no_run_folder(tmp_path, write_config, no_wandb_login):
    config = write_config("online", run={"name": "online"}, log={"wandb": {"project": "p", "mode": "online"}})
    result = invoke("train", config, "--quiet")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {config}: log.wandb: could not start (") \
        and "API key" in lines[0], lines
    assert not (tmp_path / "runs" / "online").exists()
    unknown = invoke("train", write_config("typo", log={"wandb": {"projekt": "p"}}), "--quiet")
    assert unknown.exit_code == 2
    assert unknown.stderr.strip().endswith("log.wandb.projekt: unknown key (did you mean 'project'?)")


def test_export_to_wandb_writes_an_offline_run(tmp_path, write_config, no_wandb_login):
    result = invoke("train", write_config("plain", run={"name": "plain"}), "--quiet")
    assert result.exit_code == 0, result.output
    path = tmp_path / "runs" / "plain"
    result = invoke("export", path, "--to", "wandb")
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(path / "wandb")]
    assert "wandb sync " + str(path / "wandb" / "wandb" / "offline-run-") in result.stderr
    record = assert_wandb_matches(path / "wandb", load_run(path))
    assert record.display_name == "plain"


def test_a_missing_extra_is_one_line_and_nothing_written(tmp_path, write_config, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    config = write_config("nowb", run={"name": "nowb"}, log={"wandb": {"project": "p", "mode": "offline"}})
    result = invoke("train", config, "--quiet")
    assert result.exit_code == 2
    assert result.stderr.strip() == \
        f"error: {config}: log.wandb: needs the wandb package (pip install 'lnexp[wandb]')"
    assert not (tmp_path / "runs" / "nowb").exists()


def test_resumed_run_hides_the_redone_steps(tmp_path, write_config):
    """Killed after a checkpoint: the events past it are purged on resume, as the jsonl lines are."""
    config = write_config("res", run={"name": "res"}, train={"checkpoint_every": 4},
                          log={"tensorboard": True, "loss_every": 2})
    from lnexp.core.config import load_config
    from lnexp.run.train import Stop, resume, train

    stop = Stop()

    def progress(done, total, row):
        if done >= 6:
            stop.requested = True

    outcome = train(load_config(config), str(config), progress=progress, stop=stop)
    assert outcome.status == "interrupted"
    resume(outcome.path)
    run = load_run(outcome.path)
    assert run.status == "completed"
    assert_events_match(run.path / "tb", run)


def test_packed_runs_write_their_tensorboard_events(tmp_path):
    """A pack's cells open their sinks as runs alone do: each cell's events equal its jsonl files."""
    from lnexp.core.config import validate
    from lnexp.run.pack import train_pack

    def cell(seed: int):
        return validate({"model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 16},
                         "data": {"source": "synthetic", "task": "copy", "vocab_size": 16},
                         "train": {"steps": 10, "batch_size": 4, "seq_len": 16, "eval_every": 5,
                                   "seed": seed},
                         "log": {"tensorboard": True, "grad_every": 5, "loss_every": 5,
                                 "probes": ["grad", "act"]},
                         "run": {"name": f"c{seed}", "dir": str(tmp_path)}})

    assert [o.status for o in train_pack([cell(0), cell(1)], ["t", "t"], [["t"], ["t"]])] == ["completed"] * 2
    for seed in (0, 1):
        assert_events_match(tmp_path / f"c{seed}" / "tb", load_run(tmp_path / f"c{seed}"))
