"""The `lnexp` command line: one function per command, argument handling only.

Heavy modules (torch) are imported inside the commands that need them, so `lnexp --help` is fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Where should LayerNorm sit in a Transformer? Train, measure, compare.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    """One line on stderr, no traceback."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config file.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a key: --set optim.lr=3e-3 "
                                            "(repeatable).")] = [],  # noqa: B006 (typer reads it)
    resume: Annotated[Path | None, typer.Option(help="Continue this run folder from its checkpoint.",
                                                show_default=False)] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing run folder of the same name.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train one model from CONFIG and write its run folder (runs/<name>/), or --resume one.

    Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and exits with code 130.
    """
    from lnexp import console
    from lnexp.config import ConfigError, config_warnings, load_config
    from lnexp.runs import RunError, retrain_name

    if (config is None) == (resume is None):
        raise fail("give a CONFIG file to train, or --resume RUN to continue a run (not both)")
    if resume is not None and set_:
        raise fail("--resume continues a run with its own config; --set cannot change it")
    command = ["lnexp", "train", *([str(config)] if config else ["--resume", str(resume)]),
               *(a for s in set_ for a in ("--set", s)), *(["--force"] if force else []),
               *(["--quiet"] if quiet else [])]
    try:
        cfg = load_config(config, set_) if config else None

        def warn() -> None:
            for warning in config_warnings(cfg):
                console.stderr.print(f"warning: {config}: {warning}", markup=False, soft_wrap=True)

        if cfg and not force and "run.name" not in (s.partition("=")[0].strip() for s in set_):
            renamed = retrain_name(config, cfg.run.name)
            if renamed:
                console.stderr.print(f"note: {config} is the saved config of run {cfg.run.name}; "
                                     f"training it again as {renamed}", markup=False, soft_wrap=True)
                cfg.run.name = renamed
        from lnexp import train as training

        with console.training_progress(cfg.run.name or config.stem if cfg else resume.name,
                                       quiet) as progress:
            outcome = training.train(cfg, str(config), command, force=force, progress=progress,
                                     on_ready=warn) \
                if cfg else training.resume(resume, command, progress=progress)
    except (ConfigError, RunError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    except Exception as exc:  # the run folder already says "failed" and why
        from lnexp.train import failure_message

        raise fail(f"training failed: {failure_message(exc)}", 1) from None
    if not outcome.main:
        return
    console.stdout.print(console.summary_table(f"{outcome.path}: {outcome.status}", outcome.summary))
    console.stdout.print(console.training_profile(outcome.path))
    if outcome.status == "diverged":
        console.stdout.print(f"diverged at step {outcome.summary['diverged_step']} "
                             "(recorded as a result; see metrics.jsonl)")
    if outcome.status == "interrupted":
        console.stderr.print(f"interrupted after step {outcome.summary['steps_done']}; "
                             f"continue with: lnexp train --resume {outcome.path}")
        raise typer.Exit(130)


@app.command()
def compare(
    runs: Annotated[list[str], typer.Argument(help="Run folders, or globs (quoted: lnexp expands them).")],
    all_: Annotated[bool, typer.Option("--all", help="Every config key, not only the differing.")] = False,
    probe: Annotated[str, typer.Option(help="Per-layer profile of: grad (gradient norm), act "
                                       "(residual-stream RMS), update (update/weight ratio), "
                                       "adam_v_q10|q50|q90, output_change, rank (feature "
                                       "dimensionality), sensitivity.")] = "grad",
    param: Annotated[str | None, typer.Option(
        help="Weight role of a per-weight profile (attn.q, ..., ffn.fc2; default ffn.fc2), or all: a "
             "layer's combined norm. rank: resid|attn|cross|ffn.erank|pr|aniso (default resid.erank); "
             "sensitivity: dloss_dx (default) or noise_loss_change.")] = None,
    at: Annotated[str, typer.Option(help="Step of the profile: a number (0 = initialisation; else the "
                                    "nearest logged step) or last.")] = "0",
    json_: Annotated[bool, typer.Option("--json", help="Print the data as JSON, for scripts.")] = False,
    markdown: Annotated[bool, typer.Option(help="Print markdown tables, for a report.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also write a figure: FILE.png, .svg or .pdf.")] = None,
    log_loss: Annotated[bool, typer.Option(help="Log-scale loss axis in the figure.")] = False,
) -> None:
    """Put runs side by side: the config keys that differ, the outcome, a per-layer profile."""
    from lnexp import compare as comparison
    from lnexp import console
    from lnexp.runs import PROBES, default_param

    if probe not in PROBES:
        raise fail(f"--probe: must be one of {', '.join(PROBES)}, got {probe!r}")
    param = param or default_param(probe)
    if at != "last" and not at.isdigit():
        raise fail(f"--at: must be a step number or 'last', got {at!r}")
    if json_ and markdown:
        raise fail("--json and --markdown: choose one")
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise fail(f"--plot {plot}: must end in .png, .svg or .pdf")
    loaded, notes = comparison.load_runs(runs)
    if not loaded:
        raise fail("nothing to compare: " + "; ".join(notes))
    c = comparison.build(loaded, probe, param, "last" if at == "last" else int(at), all_, notes)
    for note in c.notes:
        console.stderr.print(f"note: {note}", markup=False, soft_wrap=True)
    if json_:
        typer.echo(comparison.to_json(c))
    elif markdown:
        typer.echo(comparison.markdown(c), nl=False)
    else:
        for table in comparison.tables(c):
            console.stdout.print(table)
    if plot is not None:
        from lnexp import plots

        try:
            written = plots.compare_figure(c, plot, log_loss)
        except OSError as exc:
            raise fail(f"{plot}: {exc.strerror or exc}") from None
        console.stderr.print(f"wrote {written}", markup=False, soft_wrap=True)


@app.command()
def plot(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    format_: Annotated[str, typer.Option("--format", help="png, svg or pdf.")] = "png",
) -> None:
    """Write figures for one RUN into RUN/plots/ and print their paths.

    Loss and lr curves, gradient-norm heatmaps (layer x step) and profiles, residual-stream norms."""
    from lnexp import console
    from lnexp.runs import RunError, load_run

    if format_ not in ("png", "svg", "pdf"):
        raise fail(f"--format: must be png, svg or pdf, got {format_!r}")
    try:
        loaded = load_run(run)
    except RunError as exc:
        raise fail(str(exc)) from None
    from lnexp import plots

    try:
        paths, notes = plots.run_figures(loaded, run / "plots", f".{format_}")
    except OSError as exc:
        raise fail(f"{run / 'plots'}: {exc.strerror or exc}") from None
    for note in loaded.notes + notes:
        console.stderr.print(f"note: {note}", markup=False, soft_wrap=True)
    if not paths:
        raise fail(f"{run}: nothing to plot (no metrics or probes logged yet)")
    for path in paths:
        typer.echo(str(path))


@app.command("runs")
def list_runs(
    directory: Annotated[Path, typer.Argument(help="Folder of run folders.")] = Path("runs"),
) -> None:
    """List the runs under DIRECTORY (default runs/), newest first, to find what to compare."""
    from lnexp import compare as comparison
    from lnexp import console

    if not directory.is_dir():
        raise fail(f"{directory}: no such folder")
    found = comparison.find_runs(directory)
    if not found:
        console.stderr.print(f"no runs in {directory}", markup=False, soft_wrap=True)
        return
    for run in found:
        for note in run.notes:
            console.stderr.print(f"note: {run.path}: {note}", markup=False, soft_wrap=True)
    console.stdout.print(comparison.runs_table(found, directory))


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="YAML config file: the base of every cell.")],
    grid: Annotated[list[str], typer.Option("--grid", help="KEY=V1,V2,...: values of one key (repeatable; "
                                            "the cells are the cartesian product).")] = [],  # noqa: B006
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per cell: train.seed, train.seed+1, ...")] = 1,
    jobs: Annotated[int, typer.Option(min=1, help="Cells trained at once, in worker processes that "
                                      "split the CPU threads.")] = 1,
    pack: Annotated[int, typer.Option(min=1, help="Cells of one model structure trained together in one "
                                      "process, up to this many (docs/packing.md).")] = 1,
    set_: Annotated[list[str], typer.Option("--set", help="Override a key in every cell; --set run.dir=D "
                                            "moves the sweep (repeatable).")] = [],  # noqa: B006
    name: Annotated[str | None, typer.Option(help="Sweep name: its folder is <run.dir>/<name>/ "
                                             "(default: the config's stem).", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the cells; train and write "
                                          "nothing.")] = False,
    force: Annotated[bool, typer.Option(help="Train finished cells again (replacing their "
                                        "folders).")] = False,
    quiet: Annotated[bool, typer.Option(help="No line per cell on stderr.")] = False,
) -> None:
    """Train the cartesian product of the --grid values x --seeds, one run folder per cell.

    Cells go to <run.dir>/<name>/<cell>/ with sweep.json beside them. Re-running the same command
    skips finished cells (completed or diverged), so an interrupted sweep resumes. Ends with a table:
    final validation loss mean ± std over seeds, and how many diverged.
    """
    from lnexp import console
    from lnexp import sweep as sweeps
    from lnexp.config import ConfigError, config_warnings
    from lnexp.runs import RunError

    try:
        plan = sweeps.expand(config, grid, seeds, set_, name, jobs)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    warnings = dict.fromkeys(w for cell in plan.cells for w in config_warnings(cell.config))
    if dry_run:
        console.stdout.print(sweeps.cells_table(plan))
        return
    try:
        results = sweeps.run_sweep(plan, jobs, force, None if quiet else sweeps.print_event, pack)
    except (ConfigError, RunError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted; run the same command again to resume {plan.root}", 130) from None
    for warning in warnings:  # after the sweep's checks, so that an error stays one line
        console.stderr.print(f"warning: {config}: {warning}", markup=False, soft_wrap=True)
    console.stdout.print(sweeps.summary_table(plan, results))
    failed = [n for n, r in results.items() if r.get("status") == "failed"]
    if any(r.get("status") == "interrupted" for r in results.values()):
        raise fail(f"interrupted; run the same command again to resume {plan.root}", 130)
    if failed:
        raise fail(f"{len(failed)} cell(s) failed, e.g. {failed[0]}: {results[failed[0]].get('error')}", 1)


@app.command()
def generate(
    run: Annotated[Path, typer.Argument(help="Run folder (with model.pt).")],
    prompt: Annotated[str, typer.Option(help="Text to continue (its UTF-8 bytes are the tokens).",
                                        show_default=False)],
    strategy: Annotated[str, typer.Option(help="greedy (argmax), sample (multinomial from the softmax), "
                                          "top-k, top-p (nucleus) or beam.")] = "greedy",
    n: Annotated[int, typer.Option("--n", help="Samples to draw (sample, top-k, top-p), or best "
                                   "hypotheses to return (beam, at most --beams); greedy gives one.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens (bytes) to generate per output.")] = 100,
    temperature: Annotated[float, typer.Option(help="Divides the logits before sampling (sample, "
                                               "top-k, top-p).")] = 1.0,
    k: Annotated[int, typer.Option("--k", help="top-k: sample among the k most probable tokens.")] = 40,
    p: Annotated[float, typer.Option("--p", help="top-p: sample in the smallest set of tokens with "
                                     "probability >= p.")] = 0.9,
    beams: Annotated[int, typer.Option(help="beam: hypotheses kept at each step.")] = 4,
    length_penalty: Annotated[float, typer.Option(help="beam: alpha of GNMT's ((5+L)/6)^alpha; acts "
                                                  "when hypotheses differ in length (--stop).")] = 0.6,
    stop: Annotated[str | None, typer.Option(help="End an output once it ends with this text "
                                             "(included).", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampling generator.")] = 0,
    json_: Annotated[bool, typer.Option("--json", help="Per output: text, token ids and joint "
                                        "log-probability, as JSON.")] = False,
    threads: Annotated[int, typer.Option(help="CPU threads. A token a step makes small matrix products: "
                                         "more threads rarely pay, and spin on a busy machine.")] = 1,
) -> None:
    """Continue --prompt with the model of RUN and print the generated text.

    Joint log-probabilities are under the untempered model. Keys and values are cached (cost per
    token linear in length); past model.max_seq_len tokens the context is a sliding window.
    """
    import json

    import torch

    from lnexp import decode as dec

    if threads < 1:
        raise fail(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        dec.check_settings(strategy, n=n, max_new_tokens=max_new_tokens, temperature=temperature, k=k,
                           p=p, beams=beams, alpha=length_penalty, seed=seed)
        if not prompt:
            raise dec.DecodeError("--prompt is empty")
        if stop == "":
            raise dec.DecodeError("--stop is empty")
        prompt_ids = dec.encode(prompt, "--prompt")
        stop_ids = dec.encode(stop, "--stop") if stop else []
        model, _ = dec.load_model(run)
        outputs = dec.decode(model, prompt_ids, strategy, n=n, max_new_tokens=max_new_tokens,
                             temperature=temperature, k=k, p=p, beams=beams, alpha=length_penalty,
                             seed=seed, stop=stop_ids)
    except dec.DecodeError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    if json_:
        settings = {"max_new_tokens": max_new_tokens, "seed": seed, "stop": stop, "temperature": temperature,
                    "k": k, "p": p, "beams": beams, "length_penalty": length_penalty}
        typer.echo(json.dumps({
            "run": str(run), "strategy": strategy, "prompt": prompt, "prompt_ids": prompt_ids,
            "settings": settings,
            "outputs": [{"text": dec.to_text(o.ids), "ids": o.ids, "logprob": o.logprob,
                         **({"score": o.score} if o.score is not None else {})} for o in outputs],
        }, indent=2))
        return
    for i, out in enumerate(outputs):
        if len(outputs) > 1:
            score = f", score {out.score:.4g}" if out.score is not None else ""
            typer.echo(f"--- {i + 1}/{len(outputs)} (log p {out.logprob:.4g}{score}) ---")
        typer.echo(dec.printable(dec.to_text(out.ids)))


@app.command("decode-stats")
def decode_stats(
    run: Annotated[Path, typer.Argument(help="Run folder (with model.pt).")],
    prompts: Annotated[Path | None, typer.Option(help="Text file, one prompt per line (default: a few "
                                                 "beginnings of Python code).", show_default=False)] = None,
    n: Annotated[int, typer.Option("--n", help="Samples per prompt for sample, top-k and top-p.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens (bytes) generated per output.")] = 64,
    temperature: Annotated[float, typer.Option(help="Temperature of the samplers.")] = 1.0,
    k: Annotated[int, typer.Option("--k", help="k of top-k.")] = 40,
    p: Annotated[float, typer.Option("--p", help="p of top-p.")] = 0.9,
    beams: Annotated[int, typer.Option(help="Beams of beam search (its best hypothesis counts).")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the samplers (prompt i uses seed + i).")] = 0,
    json_: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Figure file, .png, .svg or .pdf (default: "
                                              "RUN/plots/decode-stats.png).", show_default=False)] = None,
    threads: Annotated[int, typer.Option(help="CPU threads. A token a step makes small matrix products: "
                                         "more threads rarely pay, and spin on a busy machine.")] = 1,
) -> None:
    """Compare greedy, sample, top-k, top-p and beam on the same prompts: log-probability per token and
    joint, distinct-1/2, repetition, next-token entropy; a table and a figure."""
    import json
    from contextlib import nullcontext

    import torch

    from lnexp import console
    from lnexp import decode as dec

    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise fail(f"--plot {plot}: must end in .png, .svg or .pdf")
    if threads < 1:
        raise fail(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        for strategy in dec.STRATEGIES:
            dec.check_settings(strategy, n=1, max_new_tokens=max_new_tokens, temperature=temperature,
                               k=k, p=p, beams=beams, seed=seed)
        if n < 1:
            raise dec.DecodeError(f"--n must be >= 1, got {n}")
        if prompts is not None:
            from lnexp.files import CONFIG_LIMIT, FileProblem, read_regular

            try:
                lines = read_regular(prompts, CONFIG_LIMIT).decode("utf-8").splitlines()
            except (FileProblem, UnicodeDecodeError) as exc:
                why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc
                raise dec.DecodeError(f"{prompts}: cannot read ({why})") from None
            texts = [line for line in lines if line.strip()]
            if not texts:
                raise dec.DecodeError(f"{prompts}: no prompts (one per line)")
        model, config = dec.load_model(run)
        ids = [dec.encode(t) for t in texts] if prompts is not None else \
            dec.default_prompts(config, model.vocab_size, seed)
        for prompt in ids:
            dec.check_prompt(prompt, model.vocab_size)
        spinner = console.stderr.status("decoding") if console.stderr.is_terminal else nullcontext()
        with spinner as status:
            rows = dec.decode_stats(model, ids, n=n, max_new_tokens=max_new_tokens,
                                    temperature=temperature, k=k, p=p, beams=beams, seed=seed,
                                    on_strategy=status and (lambda s: status.update(f"decoding: {s}")))
    except dec.DecodeError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    better, total = dec.beam_vs_greedy(rows)
    figure = plot or run / "plots" / "decode-stats.png"
    try:
        dec.plot_decode_stats(rows, figure, f"{run.name}: decoding strategies, {total} prompts, "
                              f"{max_new_tokens} tokens")
    except OSError as exc:
        raise fail(f"{figure}: {exc.strerror or exc}") from None
    if json_:
        typer.echo(json.dumps({"run": str(run), "prompts": [dec.to_text(i) for i in ids], "n": n,
                               "max_new_tokens": max_new_tokens, "seed": seed, "strategies": rows,
                               "figure": str(figure), "beam_ge_greedy": [better, total]}, indent=2))
        return
    console.stdout.print(dec.stats_table(f"{run}: {total} prompts x {max_new_tokens} tokens", rows))
    typer.echo(f"beam's joint log p >= greedy's on {better} of {total} prompts")
    typer.echo(f"wrote {figure}", err=True)


@app.command()
def reproduce(
    suite: Annotated[str, typer.Argument(help="xiong2020-init, xiong2020-warmup, radam, depth, "
                                         "stability-map, gpt2-scaling, layouts, feature-dimension, or all.")],
    scale: Annotated[str, typer.Option(help="tiny (a CPU, minutes), cpu (2 CPU cores, about an hour for "
                                       "all) or small (sized for one GPU, used when present).")] = "tiny",
    jobs: Annotated[int, typer.Option(min=1, help="Runs trained at once, in worker processes that split "
                                      "the CPU threads.")] = 1,
    pack: Annotated[int | None, typer.Option(min=1, help="Runs of one model structure trained together, "
                                             "up to this many (1: each alone; default: packs of 8 where a "
                                             "quick measurement finds them faster; docs/packing.md).",
                                             show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(help="Folder of the runs and reports (default: "
                                             "runs/reproduce-<scale>).", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option(help="No line per run on stderr.")] = False,
) -> None:
    """Test the papers' claims: run a SUITE and write a report with verdicts computed from its runs.

    Trains (or reuses) the suite's runs under OUT/runs/, then writes OUT/SUITE/report.md: figures and a
    verdict table (reproduced / not reproduced / inconclusive, each claim tested on every seed against a
    stated threshold). Finished runs are reused, so an interrupted reproduction resumes where it stopped.
    """
    from lnexp import console
    from lnexp import reproduce as reproduction
    from lnexp import sweep as sweeps
    from lnexp.config import ConfigError

    if suite not in reproduction.suite_names():
        raise fail(f"unknown suite {suite!r}; choose one of: {', '.join(reproduction.suite_names())}")
    if scale not in reproduction.SCALES:
        raise fail(f"--scale: must be one of {', '.join(reproduction.SCALES)}, got {scale!r}")
    try:
        outcome = reproduction.reproduce(suite, scale, jobs, out, None if quiet else sweeps.print_event, pack)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; run the same command again to resume (finished runs are kept)",
                   130) from None
    console.stdout.print(reproduction.verdicts_table(outcome))
    for path in outcome.reports.values():
        console.stdout.print(f"wrote {path}", markup=False)
    console.stderr.print(f"{outcome.trained} run(s) trained, {outcome.reused} reused, "
                         f"{outcome.wall_s:.0f} s", markup=False)
    if outcome.failed:
        name, error = next(iter(outcome.failed.items()))
        raise fail(f"{len(outcome.failed)} run(s) failed (their verdicts lack those seeds), e.g. {name}: "
                   f"{error}", 1)


@app.callback()
def main() -> None:
    """Where should LayerNorm sit in a Transformer? Train, measure, compare."""
