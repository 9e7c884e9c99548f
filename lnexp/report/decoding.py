"""What `generate --json` and `decode-stats` print and draw: the JSON records, the table, the figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lnexp.decode.search import Loaded, Output
from lnexp.decode.stats import beam_vs_greedy


def generation_record(run: Path, loaded: Loaded, prompt: str, prompt_ids: list[int], strategy: str,
                      outputs: list[Output], **settings: Any) -> dict[str, Any]:
    """What `lnexp generate --json` prints: the run, the prompt, the settings and every output."""
    return {"run": str(run), "strategy": strategy, "prompt": prompt, "prompt_ids": prompt_ids,
            "settings": settings,
            "outputs": [{"text": loaded.tokenizer.decode(o.ids), "ids": o.ids, "logprob": o.logprob,
                         **({"score": o.score} if o.score is not None else {})} for o in outputs]}


def stats_record(run: Path, loaded: Loaded, prompts: list[list[int]], rows: list[dict[str, Any]],
                 figure: Path, **settings: Any) -> dict[str, Any]:
    """What `lnexp decode-stats --json` prints: the prompts, the settings, every strategy's row, the
    figure, and on how many prompts beam's joint log p is at least greedy's."""
    return {"run": str(run), "prompts": [loaded.tokenizer.decode(i) for i in prompts], **settings,
            "strategies": rows, "figure": str(figure), "beam_ge_greedy": list(beam_vs_greedy(rows))}


STAT_COLUMNS = (("outputs", "n", 0), ("logprob_per_token", "log p\n/token", 3),
                ("joint_logprob", "joint\nlog p", 4), ("distinct_1", "dist-1", 3),
                ("distinct_2", "dist-2", 3), ("repetition_4", "rep-4", 3),
                ("entropy", "entropy\n(nats)", 3), ("unique_outputs", "unique\noutputs", 3))


def stats_table(title: str, rows: list[dict[str, Any]]):
    """The decode-stats table; without vertical rules, so 80 columns hold it."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False)
    table.add_column("strategy", no_wrap=True)
    for _, header, _ in STAT_COLUMNS:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(row["label"], *(f"{row[key]:.{digits}g}" if digits else str(row[key])
                                      for key, _, digits in STAT_COLUMNS))
    return table


def plot_decode_stats(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Three panels: entropy of the next-token distribution by step, mean joint log-probability by
    step, and each strategy's diversity (distinct-2) against its log-probability per token."""
    import matplotlib.pyplot as plt

    from lnexp.report.figures import save  # imported before drawing: it selects the Agg backend

    fig, (ax_h, ax_lp, ax_div) = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    for i, row in enumerate(rows):
        color = f"C{i}"
        steps = range(1, len(row["entropy_by_step"]) + 1)
        ax_h.plot(steps, row["entropy_by_step"], color=color, label=row["label"])
        ax_lp.plot(steps, row["logprob_by_step"], color=color, label=row["label"])
        ax_div.scatter(row["distinct_2"], row["logprob_per_token"], color=color, s=60, label=row["label"])
        ax_div.annotate(row["label"], (row["distinct_2"], row["logprob_per_token"]),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax_h.set(xlabel="generated token", ylabel="entropy of next-token distribution (nats)",
             title="model's uncertainty along the path")
    ax_lp.set(xlabel="generated token", ylabel="joint log-probability so far (nats)",
              title="joint log-probability")
    ax_div.set(xlabel="distinct-2 (within an output)", ylabel="mean log-probability per token",
               title="diversity against likelihood")
    ax_div.margins(x=0.2, y=0.1)
    # one legend for the three panels, below them: inside a panel it would cover some strategy's curve
    fig.legend(*ax_h.get_legend_handles_labels(), loc="outside lower center", ncol=len(rows), fontsize=9)
    for ax in (ax_h, ax_lp, ax_div):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save(fig, path, dpi=110)
