"""decode-stats: greedy, the samplers and beam search on the same prompts, and the numbers that tell
them apart (docs/decoding.md's table)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from lnexp.core.model import TransformerLM
from lnexp.decode.search import Loaded, decode, encode

# For decode-stats on byte-level runs: beginnings the quickstart corpus (Python's stdlib) continues.
DEFAULT_PROMPTS = ("def ", "import ", "class ", "    return ", "    def __init__(self", "if __name__ == ",
                   "for i in range(", "# ")


def distinct(ids: Sequence[int], n: int) -> float:
    """distinct-n (Li et al. 2016) of one output: distinct n-grams / n-grams."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def repetition(ids: Sequence[int], n: int = 4) -> float:
    """seq-rep-n (Welleck et al. 2020): the share of an output's n-grams that repeat an earlier one."""
    return 1.0 - distinct(ids, n)


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _by_step(series: list[list[float]]) -> list[float]:
    """Mean over outputs at each step (outputs that stopped early drop out)."""
    longest = max(map(len, series), default=0)
    return [_mean([s[i] for s in series if i < len(s)]) for i in range(longest)]


PROMPT_BYTES = 16  # a default prompt from a run's own validation text: the start of one of its lines


def default_prompts(loaded: Loaded, seed: int = 0) -> list[list[int]]:
    """Runs on the stdlib: DEFAULT_PROMPTS (beginnings of Python code) in the run's tokens. Other text:
    the first PROMPT_BYTES characters of 8 lines of the run's own validation text, chosen with
    `seed`, in the run's tokens (DEFAULT_PROMPTS if the corpus is no longer there). Synthetic runs
    and pre-tokenised corpora: 8 prompts of 8 random tokens."""
    config, vocab_size = loaded.config, loaded.model.vocab_size
    rng = random.Random(seed)
    if config.data.source == "stdlib":
        return [encode(loaded.tokenizer, text) for text in DEFAULT_PROMPTS]
    if config.data.source in ("synthetic", "tokens"):
        return [[rng.randrange(vocab_size) for _ in range(8)] for _ in range(8)]
    from lnexp.core.config import ConfigError
    from lnexp.data.sources import load_data

    try:
        text = loaded.tokenizer.decode(load_data(config.data, config.model.arch).val.tolist())
    except ConfigError:  # the corpus is gone: decoding needs only the run folder
        return [encode(loaded.tokenizer, text) for text in DEFAULT_PROMPTS]
    # whole lines only (the split's first and last may be cut), with some text in them
    lines = [line[:PROMPT_BYTES] for line in text.split("\n")[1:-1]
             if len(line.strip()) >= PROMPT_BYTES // 2]
    if len(lines) < 8:  # few line breaks: windows at random places instead
        starts = [rng.randrange(max(1, len(text) - PROMPT_BYTES)) for _ in range(8)]
        lines = [text[s: s + PROMPT_BYTES] for s in starts]
    return [encode(loaded.tokenizer, line) for line in rng.sample(lines, 8)]


def stats_settings(n: int, temperature: float, k: int, p: float, beams: int) -> list[tuple[str, str, dict]]:
    """(strategy, label, options) of the strategies decode-stats compares."""
    t = f" T={temperature:g}" if temperature != 1 else ""
    return [("greedy", "greedy", {}),
            ("sample", f"sample{t or ' T=1'}", {"n": n, "temperature": temperature}),
            ("top-k", f"top-k k={k}{t}", {"n": n, "temperature": temperature, "k": k}),
            ("top-p", f"top-p p={p:g}{t}", {"n": n, "temperature": temperature, "p": p}),
            ("beam", f"beam B={beams}", {"n": 1, "beams": beams})]


def decode_stats(model: TransformerLM, prompts: list[list[int]], n: int = 8, max_new_tokens: int = 64,
                 temperature: float = 1.0, k: int = 40, p: float = 0.9, beams: int = 4, seed: int = 0,
                 on_strategy: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """For each strategy over the same prompts, means over its outputs (greedy: one a prompt; beam:
    its best hypothesis; samplers: n a prompt) of the numbers in docs/decoding.md's decode-stats table."""
    rows = []
    for strategy, label, options in stats_settings(n, temperature, k, p, beams):
        if on_strategy:
            on_strategy(label)
        per_prompt = [decode(model, prompt, strategy, max_new_tokens=max_new_tokens, seed=seed + i,
                             **options) for i, prompt in enumerate(prompts)]
        outputs = [o for group in per_prompt for o in group]
        rows.append({
            "strategy": strategy, "label": label, "outputs": len(outputs),
            "logprob_per_token": _mean([o.logprob / len(o.ids) for o in outputs]),
            "joint_logprob": _mean([o.logprob for o in outputs]),
            "distinct_1": _mean([distinct(o.ids, 1) for o in outputs]),
            "distinct_2": _mean([distinct(o.ids, 2) for o in outputs]),
            "repetition_4": _mean([repetition(o.ids, 4) for o in outputs]),
            "entropy": _mean([h for o in outputs for h in o.entropies]),
            "unique_outputs": _mean([len({tuple(o.ids) for o in group}) for group in per_prompt]),
            "per_prompt_joint_logprob": [max(o.logprob for o in group) for group in per_prompt],
            "entropy_by_step": _by_step([o.entropies for o in outputs]),
            "logprob_by_step": _by_step([list(_cumsum(o.token_logprobs)) for o in outputs]),
        })
    return rows


def _cumsum(values: list[float]) -> list[float]:
    total, out = 0.0, []
    for v in values:
        total += v
        out.append(total)
    return out


def beam_vs_greedy(rows: list[dict[str, Any]], tolerance: float = 1e-4) -> tuple[int, int]:
    """On how many prompts beam's best joint log-probability is >= greedy's, and of how many. Where
    beam keeps greedy's path the two differ by float32 rounding (batches of different sizes), hence
    the tolerance."""
    by = {r["strategy"]: r["per_prompt_joint_logprob"] for r in rows}
    pairs = list(zip(by["beam"], by["greedy"]))
    return sum(b >= g - tolerance for b, g in pairs), len(pairs)
