"""Every figure, rendered from tiny runs and read back as matplotlib objects: axis labels, limits,
scales, legends, checked against the runs' own numbers."""

from pathlib import Path

import matplotlib.colors
import pytest
from matplotlib.collections import PolyCollection
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.experiments.sweep import figures as sweep_figures
from lnexp.report import plots
from lnexp.report.compare import build, load_runs
from lnexp.run.reader import load_run

runner = CliRunner()
_trained: dict[str, Path] = {}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def runs(tmp_path, write_config) -> dict[str, Path]:
    """Three runs: warm-up at a low lr; no warm-up at a high lr, two seeds (a group)."""
    if not _trained:
        for name, sets in (("warm", {"optim": {"lr": 1e-3}, "schedule": {"warmup_steps": 4}}),
                           ("hot-s0", {"optim": {"lr": 1e-2}, "train": {"seed": 0}}),
                           ("hot-s1", {"optim": {"lr": 1e-2}, "train": {"seed": 1}})):
            result = invoke("train", write_config(name, run={"name": name}, **sets), "--quiet")
            assert result.exit_code == 0, result.output
            _trained[name] = tmp_path / "runs" / name
    return _trained


@pytest.fixture
def figures(monkeypatch) -> dict[str, object]:
    """The figures the code under test saves, by file name, still open."""
    saved = {}

    def keep(fig, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=40)
        saved[path.name] = fig
        return path

    for module in (plots, sweep_figures):  # each draws through the one saver, imported by name
        monkeypatch.setattr(module, "save", keep)
    yield saved
    for fig in saved.values():
        plots.plt.close(fig)


def lines_with_data(ax):
    return [line for line in ax.get_lines() if len(line.get_xdata()) > 0]


def test_compare_figure_axes(runs, figures, tmp_path):
    c = build(load_runs([str(runs["warm"]), str(runs["hot-s0"])])[0])
    plots.compare_figure(c, tmp_path / "cmp.png")
    ax_loss, ax_prof, ax_lr = figures["cmp.png"].axes
    # every run's whole schedule lies inside the lr panel (the ylim was frozen at the first run)
    bottom, top = ax_lr.get_ylim()
    lr_lines = lines_with_data(ax_lr)
    assert len(lr_lines) == 2 and bottom == 0
    for line in lr_lines:
        assert all(bottom <= y <= top for y in line.get_ydata())
    assert max(max(line.get_ydata()) for line in lr_lines) == pytest.approx(1e-2)
    assert ax_lr.get_ylabel() == "learning rate"
    assert ax_loss.get_ylabel() == "loss (nats per token)"  # synthetic data: tokens, not bytes
    assert ax_prof.get_ylabel() == "gradient norm of ffn.fc2" and ax_prof.get_yscale() == "log"
    assert ax_prof.get_xlabel() == "layer (from 0)"
    # validation: markers without a line between two evals
    val = [line for line in ax_loss.get_lines() if line.get_marker() == "o"]
    assert val and all(line.get_linestyle() == "None" for line in val)
    # the end of the warm-up run's warm-up, marked
    assert any(list(line.get_xdata()) == [4, 4] for line in ax_loss.get_lines())
    assert {t.get_text() for t in ax_loss.get_legend().get_texts()} >= {"validation", "end of warm-up"}
    legend = figures["cmp.png"].legends[0]
    assert legend.get_title().get_text() == "optim.lr, schedule.warmup_steps"  # the keys, once
    assert [t.get_text() for t in legend.get_texts()] == ["0.001, 4", "0.01, 0"]


def test_group_by_draws_a_mean_with_a_band(runs, figures, tmp_path):
    c = build(load_runs([str(p) for p in runs.values()])[0], group_by=["optim.lr"])
    plots.compare_figure(c, tmp_path / "grouped.png")
    fig = figures["grouped.png"]
    ax_loss = fig.axes[0]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["0.001 (1 runs)", "0.01 (2 runs)"]
    assert any(isinstance(coll, PolyCollection) for coll in ax_loss.collections)  # the seeds' band
    # the band's mean line is the mean of the two seeds' smoothed curves
    two = [load_run(runs[n]) for n in ("hot-s0", "hot-s1")]
    first = [[m["loss"] for m in r.metrics if m.get("loss") is not None][0] for r in two]
    means = [line for line in ax_loss.get_lines()
             if line.get_linestyle() == "-" and len(line.get_xdata()) > 2]
    assert any(line.get_ydata()[0] == pytest.approx(sum(first) / 2) for line in means)


def test_colours_stay_distinct_past_ten():
    for n in (3, 12, 25):
        colours = [matplotlib.colors.to_hex(c) for c in plots.colors(n)]
        assert len(set(colours)) == n


def test_run_figures(runs, figures):
    run = load_run(runs["warm"])
    paths, _ = plots.run_figures(run, run.path / "plots")
    assert {p.name for p in paths} == {"curves.png", "grad_heatmap.png", "grad_profile.png",
                                       "activations.png"}
    ax_loss, ax_lr = figures["curves.png"].axes
    assert ax_loss.get_legend() is not None and ax_lr.get_ylim()[0] == 0
    top = ax_lr.get_ylim()[1]
    assert all(0 <= y <= top for line in lines_with_data(ax_lr) for y in line.get_ydata())
    heat = figures["grad_heatmap.png"]
    images = [ax.get_images()[0] for ax in heat.axes if ax.get_images()]
    assert len(images) == 8  # one per weight role
    limits = {(im.norm.vmin, im.norm.vmax) for im in images}
    assert len(limits) == 1  # one shared colour scale
    assert all(isinstance(im.norm, matplotlib.colors.LogNorm) for im in images)
    grads = [r["value"] for r in run.probes if r["probe"] == "grad" and r["layer"] is not None
             and r["param"].endswith(".weight")]
    vmin, vmax = limits.pop()
    assert vmin == pytest.approx(min(grads)) and vmax == pytest.approx(max(grads))
    bars = [ax for ax in heat.axes if not ax.get_images()]
    assert len(bars) == 1 and "gradient norm" in bars[0].get_ylabel()
    acts = figures["activations.png"].axes[0]
    assert acts.get_yscale() == "log"  # one rule whatever the range
    labelled = [t for t in acts.get_yticklabels() if t.get_text()]
    assert len(labelled) >= 2
    assert all(int(t) == t for t in acts.get_xticks())
    assert acts.get_xlabel().startswith("layer (from 0")


def test_grad_heatmap_can_leave_step_0_out(runs, figures):
    run = load_run(runs["warm"])
    plots.run_figures(run, run.path / "plots", skip_init=True)
    extent = figures["grad_heatmap.png"].axes[0].get_images()[0].get_extent()
    steps = sorted({r["step"] for r in run.probes if r["probe"] == "grad"})
    assert steps[0] == 0 and extent[0] > 0 and extent[0] < steps[1]


def test_sweep_figures(tmp_path, write_config, figures):
    config = write_config("grid", train={"steps": 6, "eval_every": 3})
    result = invoke("sweep", config, "--grid", "optim.lr=3e-3,3e-2,30", "--grid", "model.n_layers=1,2",
                    "--quiet")
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "grid"
    assert result.stdout.strip().splitlines()[-2:] == [str(root / "plots" / "final_loss.png"),
                                                       str(root / "plots" / "stability_map.png")]
    ax = figures["final_loss.png"].axes[0]
    assert ax.get_xlabel() == "optim.lr" and ax.get_xscale() == "log"
    assert ax.get_ylabel() == "final validation loss (nats per token)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["model.n_layers=1", "model.n_layers=2"]
    summaries = {p.name: load_run(p).summary for p in root.iterdir() if (p / "meta.json").exists()}
    for depth, line in zip((1, 2), [line for line in ax.get_lines() if line.get_label().startswith("model")]):
        finite = {float(n.split(",")[0].split("=")[1]): s["final_val_loss"] for n, s in summaries.items()
                  if f"n_layers={depth}," in n and s["status"] == "completed"}
        assert dict(zip(line.get_xdata(), line.get_ydata())) == pytest.approx(finite)
    assert any(s["status"] == "diverged" for s in summaries.values())  # lr 30
    assert "diverged (drawn at the top)" in labels
    stability = figures["stability_map.png"].axes[0]
    assert [t.get_text() for t in stability.get_yticklabels()] == ["none", "0.003", "0.03", "30"]
    assert [int(t) for t in stability.get_xticks()] == [1, 2]
    assert stability.get_ylabel() == "largest stable learning rate"
    again = invoke("plot", root)
    assert again.exit_code == 0 and again.stdout.split() == result.stdout.strip().splitlines()[-2:]

