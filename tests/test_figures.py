"""Every figure, rendered from tiny runs and read back as matplotlib objects: axis labels, limits,
scales, legends, checked against the runs' own numbers."""

import re
from pathlib import Path

import matplotlib.colors
import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.experiments.sweep import figures as sweep_figures
from lnexp.report import figures as report_figures
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

    def keep(fig, path, **savefig):
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=40)
        saved[path.name] = fig
        return path

    # each draws through the one saver, imported by name (decoding's when it draws)
    for module in (plots, sweep_figures, report_figures):
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
    assert f"{root}: final validation loss (nats per token) over 1 seed(s)" in result.stdout
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



# --- every figure kind: labelled axes, loss axes with their unit, legends clear of the data -----------

LOSS_UNIT = re.compile(r"\((nats per (byte|token)|bits per byte)\)")


def drawn_points(ax, renderer) -> np.ndarray:
    """Display coordinates of what an axes draws: line vertices and points along their segments,
    markers and error bars, band outlines (clipped to the axes, as drawn)."""
    chunks = []
    for line in ax.get_lines():
        xy = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))
        xy = xy[np.isfinite(xy).all(axis=1)]
        if line.get_linestyle() not in ("None", "none", "") and len(xy) > 1:
            t = np.linspace(0, 1, 25)[:, None, None]
            xy = np.concatenate([xy, (xy[:-1] + t * (xy[1:] - xy[:-1])).reshape(-1, 2)])
        chunks.append(xy)
    for coll in ax.collections:
        offsets = coll.get_offset_transform().transform(np.asarray(coll.get_offsets(), dtype=float))
        chunks.append(offsets)
        for path in coll.get_paths():
            chunks.append(coll.get_transform().transform(path.vertices))
    points = np.concatenate([c for c in chunks if len(c)]) if chunks else np.zeros((0, 2))
    box = ax.get_window_extent(renderer)
    inside = (points[:, 0] >= box.x0) & (points[:, 0] <= box.x1) & (points[:, 1] >= box.y0) & \
        (points[:, 1] <= box.y1)
    return points[inside & np.isfinite(points).all(axis=1)]


def figure_faults(name: str, fig) -> list[str]:
    """What a reviewer would send back: an axes with data but no label, a loss axis without its unit,
    a legend over data points or over another panel."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    faults = []
    panels = [ax for ax in fig.axes if ax.get_visible() and (ax.get_lines() or ax.collections or ax.images)]
    for ax in panels:
        if not ax.get_ylabel() or (not ax.get_xlabel() and not ax.images and ax.get_xticks().size):
            faults.append(f"{name}: an axes without a label ({ax.get_title()!r})")
        loss_axis = re.match(r"(final validation )?loss( \(|$)", ax.get_ylabel())
        if loss_axis and not LOSS_UNIT.search(ax.get_ylabel()):
            faults.append(f"{name}: loss axis without its unit: {ax.get_ylabel()!r}")
    legends = [(ax.get_legend(), ax) for ax in fig.axes if ax.get_legend()] + \
        [(legend, None) for legend in fig.legends]
    for legend, owner in legends:
        box = legend.get_window_extent(renderer)
        for ax in panels:
            if ax is owner:
                points = drawn_points(ax, renderer)
                covered = (points[:, 0] > box.x0) & (points[:, 0] < box.x1) & (points[:, 1] > box.y0) & \
                    (points[:, 1] < box.y1)
                if covered.any():
                    faults.append(f"{name}: the legend covers {covered.sum()} drawn points")
            elif box.overlaps(ax.get_window_extent(renderer)):
                faults.append(f"{name}: a legend over another panel ({ax.get_title()!r})")
    return faults


def test_every_figure_kind_labels_its_axes_and_keeps_legends_off_the_data(runs, figures, tmp_path,
                                                                         write_config):
    from lnexp.report import decoding

    loaded = load_runs([str(p) for p in runs.values()])[0]
    plots.compare_figure(build(loaded), tmp_path / "compare.png")
    plots.compare_figure(build(loaded, group_by=["optim.lr"]), tmp_path / "grouped.png")
    rank = write_config("rank", run={"name": "rank"}, log={"probes": ["grad", "act", "rank", "sensitivity"]})
    assert invoke("train", rank, "--quiet").exit_code == 0
    for run in (load_run(runs["warm"]), load_run(tmp_path / "runs" / "rank")):
        plots.run_figures(run, tmp_path / run.name)
    config = write_config("grid", train={"steps": 6, "eval_every": 3})
    for grid in (["optim.lr=3e-3,3e-2,30", "model.n_layers=1,2"], ["model.norm=post,pre,sandwich"]):
        result = invoke("sweep", config, *(a for g in grid for a in ("--grid", g)), "--seeds", "2", "--quiet",
                        "--name", grid[0].split("=")[0].split(".")[1])
        assert result.exit_code == 0, result.output
        figures.update({f"{grid[0][:9]}:{k}": figures.pop(k) for k in list(figures)
                        if k in ("final_loss.png", "stability_map.png")})
    # five strategies whose curves fill every corner of the panels: no room for a legend inside them
    rows = [{"label": label, "entropy_by_step": [a + (b - a) * t / 11 for t in range(12)],
             "logprob_by_step": [-(a + 0.3) * t for t in range(12)], "distinct_2": a / 3,
             "logprob_per_token": -a}
            for label, a, b in (("greedy", 0, 3), ("sample", 3, 0), ("top-k", 1.5, 1.5), ("top-p", 0.2, 0.2),
                                ("beam", 2.8, 2.8))]
    decoding.plot_decode_stats(rows, tmp_path / "decode-stats.png", "decode")
    kinds = {name.split(":")[-1].removesuffix(".png") for name in figures}
    assert kinds >= {"compare", "grouped", "curves", "grad_heatmap", "grad_profile", "activations", "rank",
                     "sensitivity", "final_loss", "stability_map", "decode-stats"}, kinds
    faults = [fault for name, fig in figures.items() for fault in figure_faults(name, fig)]
    assert not faults, "\n".join(faults)
