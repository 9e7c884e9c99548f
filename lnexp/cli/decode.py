"""The commands that decode with a trained model: `lnexp generate`, `decode-stats`, `translate`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lnexp.cli._groups import fail
from lnexp.cli._options import (
    Beams,
    DecodeStrategy,
    FigureFile,
    Json,
    LengthPenalty,
    MaxNewTokens,
    Plugins,
    Seed,
    Temperature,
    Threads,
    TopK,
    TopP,
    TranslateStrategy,
)

if TYPE_CHECKING:
    from lnexp.data.tokenizers import Tokenizer

RunFolder = Annotated[Path, typer.Argument(help="Run folder (with model.pt).")]


def generate(
    run: RunFolder,
    prompt: Annotated[str | None, typer.Option(help="Text to continue (in the run's tokens: UTF-8 bytes, "
                                               "or its tokenizer.json's).", show_default=False)] = None,
    prompt_file: Annotated[Path | None, typer.Option(help="A UTF-8 file whose text, as it is (a final "
                                                     "newline included), is the prompt.",
                                                     show_default=False)] = None,
    strategy: Annotated[DecodeStrategy, typer.Option(
        help="greedy (argmax), sample (multinomial from the softmax), top-k, top-p (nucleus) or "
        "beam.")] = DecodeStrategy.greedy,
    n: Annotated[int, typer.Option("--n", help="Samples to draw (sample, top-k, top-p), or best "
                                   "hypotheses to return (beam, at most --beams); greedy gives one.")] = 1,
    max_new_tokens: MaxNewTokens = 100,
    temperature: Temperature = 1.0,
    k: TopK = 40,
    p: TopP = 0.9,
    beams: Beams = 4,
    length_penalty: LengthPenalty = 0.6,
    stop: Annotated[str | None, typer.Option(help="End an output once it ends with this text "
                                             "(included).", show_default=False)] = None,
    seed: Seed = 0,
    json_: Json = False,
    threads: Threads = 1,
    plugin: Plugins = [],  # noqa: B006 (typer reads it)
) -> None:
    """Continue --prompt (or --prompt-file) with the model of RUN and print the prompt and its
    continuation (--json: per output, its text, token ids and joint log-probability).

    Joint log-probabilities are under the untempered model. Keys and values are cached (cost per
    token linear in length); past model.max_seq_len tokens the context is a sliding window.
    """
    import json

    import torch

    from lnexp.decode import search as dec
    from lnexp.report import decoding
    from lnexp.run.trained import load_model

    torch.set_num_threads(threads)
    settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, k=k, p=p, beams=beams, seed=seed)
    dec.check_settings(strategy.value, n=n, alpha=length_penalty, **settings)
    if (prompt is None) == (prompt_file is None):
        raise fail("give the prompt as --prompt TEXT or --prompt-file FILE (one of them)")
    source = "--prompt" if prompt is not None else str(prompt_file)
    if prompt_file is not None:
        prompt = _read_text(prompt_file)
    if not prompt:
        raise dec.DecodeError(f"{source} is empty")
    if stop == "":
        raise dec.DecodeError("--stop is empty")
    loaded = load_model(run, trust=plugin)
    prompt_ids = dec.encode(loaded.tokenizer, prompt, source)
    _warn_unknown(loaded.tokenizer, [prompt], source)
    stop_ids = dec.encode(loaded.tokenizer, stop, "--stop") if stop else []
    outputs = dec.decode(loaded.model, prompt_ids, strategy.value, n=n, alpha=length_penalty, stop=stop_ids,
                         **settings)
    if json_:
        typer.echo(json.dumps(decoding.generation_record(
            run, loaded, prompt, prompt_ids, strategy.value, outputs, max_new_tokens=max_new_tokens,
            seed=seed, stop=stop, temperature=temperature, k=k, p=p, beams=beams,
            length_penalty=length_penalty), indent=2))
        return
    for i, out in enumerate(outputs):
        if len(outputs) > 1:
            score = f", score {out.score:.4g}" if out.score is not None else ""
            typer.echo(f"--- {i + 1}/{len(outputs)} (log p {out.logprob:.4g}{score}) ---")
        # decoded together: a character whose bytes straddle the prompt's end is shown whole
        typer.echo(dec.printable(loaded.tokenizer.decode(prompt_ids + out.ids)))


def _warn_unknown(tokenizer: Tokenizer, texts: list[str], what: str) -> None:
    """A warning naming the words the run's tokenizer reads as <unk> (the model sees them as one)."""
    from lnexp.cli._output import notes

    words = list(dict.fromkeys(word for text in texts for word in tokenizer.unknown(text)))
    if words:
        shown = ", ".join(map(repr, words[:5])) + (f" and {len(words) - 5} more" if len(words) > 5 else "")
        notes([f"{what}: not in the run's vocabulary, read as <unk>: {shown}"], "warning")


def _read_text(path: Path) -> str:
    """A UTF-8 file of at most 1 MiB (a prompt, prompts); DecodeError naming it otherwise."""
    from lnexp.core.files import CONFIG_LIMIT, FileProblem, read_regular
    from lnexp.decode.search import DecodeError

    try:
        return read_regular(path, CONFIG_LIMIT).decode("utf-8")
    except (FileProblem, UnicodeDecodeError) as exc:
        why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc
        raise DecodeError(f"{path}: cannot read ({why})") from None


def decode_stats(
    run: RunFolder,
    prompts: Annotated[Path | None, typer.Option(help="Text file, one prompt per line (default: "
                                                 "beginnings of Python code for a run on the stdlib, else "
                                                 "beginnings of lines of the run's validation text).",
                                                 show_default=False)] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Samples per prompt for sample, top-k and top-p.")] = 8,
    max_new_tokens: MaxNewTokens = 64,
    temperature: Temperature = 1.0,
    k: TopK = 40,
    p: TopP = 0.9,
    beams: Beams = 4,
    seed: Seed = 0,
    json_: Json = False,
    plot: FigureFile = None,
    threads: Threads = 1,
    plugin: Plugins = [],  # noqa: B006 (typer reads it)
) -> None:
    """Compare greedy, sample, top-k, top-p and beam on the same prompts: log-probability per token and
    joint, distinct-1/2, repetition, next-token entropy; a table and a figure (--plot, default
    RUN/plots/decode-stats.png). Prompt i is sampled with seed + i; beam's best hypothesis counts."""
    import json
    from contextlib import nullcontext

    import torch

    from lnexp.decode import search as dec
    from lnexp.decode import stats
    from lnexp.report import console, decoding
    from lnexp.run.trained import load_model

    torch.set_num_threads(threads)
    for strategy in dec.STRATEGIES:
        dec.check_settings(strategy, n=1, max_new_tokens=max_new_tokens, temperature=temperature,
                           k=k, p=p, beams=beams, seed=seed)
    if prompts is not None:
        texts = [line for line in _read_text(prompts).splitlines() if line.strip()]
        if not texts:
            raise dec.DecodeError(f"{prompts}: no prompts (one per line)")
    loaded = load_model(run, trust=plugin)
    model = loaded.model
    ids = [dec.encode(loaded.tokenizer, t, str(prompts)) for t in texts] if prompts is not None else \
        stats.default_prompts(loaded, seed)
    for prompt in ids:
        dec.check_prompt(prompt, model.vocab_size)
    spinner = console.stderr.status("decoding") if console.stderr.is_terminal else nullcontext()
    with spinner as status:
        rows = stats.decode_stats(model, ids, n=n, max_new_tokens=max_new_tokens,
                                temperature=temperature, k=k, p=p, beams=beams, seed=seed,
                                on_strategy=status and (lambda s: status.update(f"decoding: {s}")))
    better, total = stats.beam_vs_greedy(rows)
    figure = plot or run / "plots" / "decode-stats.png"
    try:
        decoding.plot_decode_stats(rows, figure, f"{run.name}: decoding strategies, {total} prompts, "
                              f"{max_new_tokens} tokens")
    except OSError as exc:
        raise fail(f"{figure}: {exc.strerror or exc}") from None
    if json_:
        typer.echo(json.dumps(decoding.stats_record(run, loaded, ids, rows, figure, n=n,
                                               max_new_tokens=max_new_tokens, seed=seed), indent=2))
        return
    console.stdout.print(decoding.stats_table(f"{run}: {total} prompts x {max_new_tokens} tokens", rows))
    typer.echo(f"beam's joint log p >= greedy's on {better} of {total} prompts")
    typer.echo(f"wrote {figure}", err=True)


def translate(
    run: Annotated[Path, typer.Argument(help="Encoder-decoder run folder (with model.pt).")],
    text: Annotated[str | None, typer.Option(help="A source to translate.", show_default=False)] = None,
    input_: Annotated[Path | None, typer.Option("--input", help="A file of sources, one per line.",
                                                show_default=False)] = None,
    eval_: Annotated[bool, typer.Option("--eval", help="Score the run's validation pairs: BLEU, chrF "
                                        "(sacrebleu) and exact match.")] = False,
    n: Annotated[int, typer.Option("--n", min=1, help="--eval: validation pairs scored.")] = 100,
    strategy: Annotated[TranslateStrategy, typer.Option(help="Decoding.")] = TranslateStrategy.greedy,
    beams: Beams = 4,
    length_penalty: LengthPenalty = 0.6,
    max_new_tokens: Annotated[int | None, typer.Option(help="Longest translation, in tokens (default: "
                                                       "train.seq_len).", show_default=False)] = None,
    json_: Json = False,
    threads: Threads = 1,
    plugin: Plugins = [],  # noqa: B006 (typer reads it)
) -> None:
    """Translate --text or --input FILE with the encoder-decoder of RUN, or score it with --eval.

    Sources and translations go through the run's tokenizer. --eval prints corpus BLEU and chrF of its
    translations of the run's first --n validation pairs, and the share translated exactly.
    """
    import json

    import torch

    from lnexp.decode import search as dec
    from lnexp.decode import translate as translation
    from lnexp.run.trained import load_model

    if sum((text is not None, input_ is not None, eval_)) != 1:
        raise fail("give one of --text, --input FILE or --eval")
    torch.set_num_threads(threads)
    how = strategy.value
    dec.check_settings(how, beams=beams, alpha=length_penalty, max_new_tokens=max_new_tokens or 1)
    sources = translation.read_sources(input_) if input_ is not None else [text] if text is not None \
        else []
    loaded = load_model(run, arch="encoder_decoder", trust=plugin)
    if eval_:
        result = translation.evaluate_run(run, loaded, n=n, strategy=how, beams=beams, alpha=length_penalty)
    else:
        _warn_unknown(loaded.tokenizer, sources, "--text" if text is not None else str(input_))
        result = {"translations": translation.translate_texts(
            loaded, sources, strategy=how, beams=beams, alpha=length_penalty, max_new_tokens=max_new_tokens)}
    if json_:
        typer.echo(json.dumps({"run": str(run), "strategy": how, **result}, indent=2))
    elif eval_:
        typer.echo(f"{run}: {result['pairs']} validation pairs, {how}: BLEU {result['bleu']:.2f}  "
                   f"chrF {result['chrf']:.2f}  exact match {result['exact_match']:.1%}")
    else:
        for line in result["translations"]:
            typer.echo(dec.printable(line))
