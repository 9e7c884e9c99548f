"""lnexp's figures in TensorBoard: a finished run's figures as images beside its scalars."""

from __future__ import annotations

from pathlib import Path

from lnexp.core.status import FINISHED
from lnexp.run.reader import load_run, read_status
from lnexp.run.sinks import TB_DIR, add_figures


def figures_to_tensorboard(path: Path) -> list[str]:
    """A finished run's figures (lnexp.report.plots.draw_run's) into its TensorBoard events, RUN/tb/,
    as images at its last step: for a run that logs to TensorBoard, or was exported to it (matplotlib
    is imported only then). Returns notes: a figure that cannot be drawn costs the images, never the
    run."""
    if not (path / TB_DIR).is_dir() or read_status(path) not in FINISHED:
        return []
    import matplotlib.pyplot as plt

    from lnexp.report.plots import draw_run

    run = load_run(path)
    try:
        figures, _ = draw_run(run)
        add_figures(path / TB_DIR, figures, run.summary.get("steps_done") or 0)
    except Exception as exc:
        plt.close("all")
        return [f"{path}: figures not logged to TensorBoard ({type(exc).__name__}: {exc})"]
    return []
