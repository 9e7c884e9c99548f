"""Loss units (issue #28 item 1): every loss axis and column says nats per byte or per token, as the
run's tokenizer makes it; `--unit bpb` puts runs of different tokenizers on one axis in bits per byte;
runs in different units are never drawn on one axis unconverted."""

import json
import math
import random
import re
from pathlib import Path

import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.report import plots
from lnexp.report.compare import build, load_runs
from lnexp.report.units import BPB, bytes_per_token, loss_units
from lnexp.run.reader import load_run

runner = CliRunner()
pytest.importorskip("tokenizers")
_trained: dict[str, Path] = {}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = [rng.choice("bcdfglmnprst") + rng.choice("aeiou") + rng.choice("nrst") for _ in range(60)]
    return " ".join(rng.choice(vocab) for _ in range(n)) + "\n"


TEXT = {"model": {"max_seq_len": 32}, "train": {"steps": 8, "seq_len": 32, "eval_every": 4}}


@pytest.fixture
def text_runs(tmp_path_factory, write_config) -> dict[str, Path]:
    """The same text at byte level and in words, and a synthetic run (no text)."""
    if not _trained:
        corpus = tmp_path_factory.mktemp("corpus") / "words.txt"
        corpus.write_text(words(4000))
        for name, data in (("bytes", {"source": "text", "path": str(corpus)}),
                           ("words", {"source": "text", "path": str(corpus), "tokenizer": "word",
                                      "vocab_size": 64}),
                           ("synthetic", {})):
            sections = {**TEXT, "data": data, "log": {"tensorboard": True}} if data else {}
            config = write_config(name, run={"name": name}, **sections)
            result = invoke("train", config, "--quiet")
            assert result.exit_code == 0, result.output
            _trained[name] = Path(load_run(config.parent / "runs" / name).path)
    return _trained


def test_each_run_has_its_own_unit_and_bytes_per_token(text_runs):
    runs = {name: load_run(path) for name, path in text_runs.items()}
    assert loss_units([runs["bytes"]]).name == "nats per byte"
    assert loss_units([runs["words"]]).name == "nats per token"
    assert loss_units([runs["synthetic"]]).name == "nats per token"
    assert runs["bytes"].meta["bytes_per_token"] == 1.0 and runs["synthetic"].meta["bytes_per_token"] is None
    per_word = runs["words"].meta["bytes_per_token"]
    assert 3 < per_word < 5  # three letters and a space a word
    # the bits per byte the run computed when it ended, from the folder alone
    bpb = loss_units([runs["words"]], BPB)
    summary = runs["words"].summary
    assert bpb.convert(runs["words"], summary["final_val_loss"]) == \
        pytest.approx(summary["final_val_bits_per_byte"])
    # bits per byte in TensorBoard's HParams: runs of different tokenizers side by side
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(runs["words"].path / "tb"))
    acc.Reload()
    [logged] = acc.Scalars("final/final_val_bits_per_byte")
    assert logged.value == pytest.approx(summary["final_val_bits_per_byte"])
    content = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
    metrics = plugin_data_pb2.HParamsPluginData.FromString(content).experiment.metric_infos
    assert "final/final_val_bits_per_byte" in {m.name.tag for m in metrics}
    # a run from before bytes_per_token was recorded: what its summary implies
    del runs["words"].meta["bytes_per_token"]
    assert bytes_per_token(runs["words"]) == pytest.approx(per_word)


def test_compare_refuses_one_axis_for_two_units_and_converts_to_bits_per_byte(text_runs, tmp_path):
    both = [text_runs["bytes"], text_runs["words"]]
    mixed = invoke("compare", *both, "--plot", tmp_path / "mixed.png")
    assert mixed.exit_code == 2 and mixed.stdout == "" and not (tmp_path / "mixed.png").exists()
    assert mixed.stderr.strip().splitlines() == [
        f"error: {both[0]} is in nats per byte, {both[1]} in nats per token: give --unit bpb to put them "
        "on one axis, in bits per byte"]
    table = invoke("compare", *both)  # the tables say each run's unit, and rank no loss across them
    assert table.exit_code == 0 and re.search(r"│ losses in nats per\s+│\s+byte │\s+token │", table.stdout)
    result = invoke("compare", *both, "--unit", "bpb", "--json")
    data = json.loads(result.stdout)
    assert data["loss_unit"] == "bits per byte"
    for run in data["runs"]:
        bpb = load_run(run["path"]).summary["final_val_bits_per_byte"]
        assert run["outcome"]["final_val_loss"] == pytest.approx(bpb)
    assert [run["loss_unit"] for run in data["runs"]] == ["nats per byte", "nats per token"]
    c = build(load_runs([str(p) for p in both])[0], unit=BPB)
    figure = plots.compare_figure(c, tmp_path / "bpb.png")
    assert figure.exists()
    synthetic = invoke("compare", text_runs["synthetic"], text_runs["bytes"], "--unit", "bpb")
    assert synthetic.exit_code == 2 and synthetic.stderr.strip() == f"error: --unit bpb: " \
        f"{text_runs['synthetic']} has no bytes to count (data.source synthetic is not text)"


def test_loss_axes_name_the_unit(text_runs, monkeypatch):
    drawn = {}
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.setdefault(path.name, fig) and path)
    cases = (("words", "nats", "loss (nats per token)"), ("bytes", "nats", "loss (nats per byte)"),
             ("words", "bpb", "loss (bits per byte)"))
    for name, unit, label in cases:
        run = load_run(text_runs[name])
        plots.run_figures(run, run.path / "plots", unit=unit)
        ax = drawn.pop("curves.png").axes[0]
        assert ax.get_ylabel() == label
        if unit == "bpb":
            val = [line for line in ax.get_lines() if line.get_marker() == "o"][0]
            factor = 1 / (run.meta["bytes_per_token"] * math.log(2))
            want = [m["val_loss"] * factor for m in run.metrics if m.get("val_loss") is not None]
            assert list(val.get_ydata()) == pytest.approx(want)


def test_a_sweep_over_tokenizers_draws_bits_per_byte_and_categories_as_points(tmp_path, write_config):
    corpus = tmp_path / "w.txt"
    corpus.write_text(words(3000, seed=1))
    config = write_config("tok", **TEXT, data={"source": "text", "path": str(corpus), "vocab_size": 64})
    result = invoke("sweep", config, "--grid", "data.tokenizer=byte,word", "--seeds", "2", "--quiet")
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "tok"
    assert "final_loss.png not drawn" in result.stderr and "--unit bpb" in result.stderr
    assert "final validation loss (nats per each row's unit)" in result.stdout
    assert re.search(r"│ word\s+│\s+2 │.*│\s+token │", result.stdout)  # the table's loss per column
    assert not (root / "plots" / "final_loss.png").exists()
    from lnexp.experiments.sweep import figures

    drawn = {}
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.setdefault(path.name, fig) and path)
    try:
        figures.sweep_figures(root, unit=BPB)
    finally:
        monkeypatch.undo()
    ax = drawn["final_loss.png"].axes[0]
    assert ax.get_ylabel() == "final validation loss (bits per byte)"
    # a categorical key: a point with seed bars per value, no line between byte and word, no band
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1 and not any(isinstance(coll, PolyCollection) for coll in ax.collections)
    (points, _, _) = bars[0].lines
    assert points.get_linestyle() == "None" and len(points.get_xdata()) == 2
    cells = [load_run(p) for p in sorted(root.iterdir()) if (p / "meta.json").exists()]
    by_tokenizer = {}
    for run in cells:
        bpb = run.summary["final_val_bits_per_byte"]
        by_tokenizer.setdefault(run.config["data"]["tokenizer"], []).append(bpb)
    assert list(points.get_ydata()) == pytest.approx([sum(v) / 2 for v in by_tokenizer.values()])
