"""Decoding a trained run: argmax, multinomial sampling (plain, top-k, nucleus) and beam search, and
the numbers that tell them apart.

A sampling strategy is a small function from a batch of next-token logits, shape (B, V), to one token
per row; `generate` calls it once per step. Beam search is a search, not a sampler: `beam_search`
keeps the `beams` prefixes of highest joint log-probability and returns the best finished ones.

Conventions (docs/decoding.md repeats them):
- An output's joint log-probability is the sum of log softmax(logits)[token] over its tokens under
  the model as trained -- untempered and unfiltered, whatever distribution the token was drawn from.
  The entropy at a step is likewise that of the model's own next-token distribution.
- Temperature divides the logits first; top-k and the nucleus are then cut from the tempered
  distribution (the order Hugging Face's samplers use).
- Context: a model has positions for model.max_seq_len tokens. While prompt and output fit, keys and
  values are cached and a step feeds one token. Beyond that the context is a sliding window of the
  last max_seq_len tokens, re-encoded at every step (positions are absolute: cached keys of a window
  that has moved are stale).
- Beam length penalty: GNMT's lp(L) = ((5 + L) / 6) ** alpha; a hypothesis of L tokens scores
  logp / lp(L). It matters only when hypotheses end at different lengths (a stop string); without
  one, every hypothesis has max_new_tokens tokens and the ranking is by joint log-probability.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lnexp.core.errors import LnexpError
from lnexp.core.model import EncoderDecoder, KVCache, TransformerLM
from lnexp.data.tokenizers import Tokenizer

STRATEGIES = ("greedy", "sample", "top-k", "top-p", "beam")

# (B, V) logits, a random generator -> (B,) token ids
Picker = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


class DecodeError(LnexpError):
    """Bad decoding input (run, prompt, settings): printed as one line, exit code 2."""


@dataclass
class Loaded:
    """A run's trained model (on the CPU, eval mode), its validated config and its tokenizer."""

    model: TransformerLM | EncoderDecoder
    config: Any
    tokenizer: Tokenizer


def encode(tokenizer: Tokenizer, text: str, what: str = "the text") -> list[int]:
    """Text's token ids; text the tokenizer cannot take is a DecodeError naming `what`."""
    try:
        return tokenizer.encode(text)
    except ValueError as exc:
        raise DecodeError(f"{what} {exc}") from None  # the tokenizer says "is not ..."


def printable(text: str) -> str:
    """Text safe for a terminal: control characters other than newline and tab as \\xNN."""
    return "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" and c not in "\n\t" else c
                   for c in text)


MAX_SEED = 2**63  # a torch.Generator takes 64 bits; decode-stats adds the prompt's index


def check_settings(strategy: str, *, n: int = 1, max_new_tokens: int = 1, temperature: float = 1.0,
                   k: int = 1, p: float = 1.0, beams: int = 1, alpha: float = 0.0, seed: int = 0) -> None:
    """Raise DecodeError naming the option for any value outside its range."""
    if strategy not in STRATEGIES:
        raise DecodeError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise DecodeError(f"--temperature must be a finite number > 0, got {temperature:g} "
                          "(argmax is --strategy greedy)")
    if k < 1:
        raise DecodeError(f"--k must be >= 1, got {k}")
    if not (0 < p <= 1):
        raise DecodeError(f"--p must be in (0, 1], got {p:g}")
    if beams < 1:
        raise DecodeError(f"--beams must be >= 1, got {beams}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise DecodeError(f"--length-penalty must be a finite number >= 0, got {alpha:g}")
    if n < 1:
        raise DecodeError(f"--n must be >= 1, got {n}")
    if strategy == "beam" and n > beams:
        raise DecodeError(f"--n must be <= --beams ({beams}): beam search returns at most --beams "
                          f"hypotheses, got {n}")
    if max_new_tokens < 1:
        raise DecodeError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not 0 <= seed < MAX_SEED:
        raise DecodeError(f"--seed must be in 0..2**63-1, got {seed}")


def check_prompt(prompt: Sequence[int], vocab_size: int) -> None:
    if not prompt:
        raise DecodeError("the prompt is empty")
    outside = sorted({t for t in prompt if not 0 <= t < vocab_size})
    if outside:
        raise DecodeError(f"the prompt has tokens outside the model's vocabulary (0..{vocab_size - 1}): "
                          f"{', '.join(map(str, outside[:5]))}")


# --- strategies: next-token logits (B, V) -> token ids (B,) -------------------------------------------


def greedy(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Argmax: the single most probable token, every time."""
    return logits.argmax(-1)


def tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # The max is subtracted first, so a temperature near 0 gives 0 and -inf, never inf - inf = nan.
    return (logits - logits.amax(-1, keepdim=True)) / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Exactly the k largest logits of each row kept (ties broken by position: the earlier token),
    the rest -inf. A stable sort, because torch.topk does not promise which of tied values it keeps."""
    if k >= logits.shape[-1]:
        return logits
    keep = logits.sort(dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.full_like(logits, -math.inf).scatter(-1, keep, logits.gather(-1, keep))


def nucleus(logits: torch.Tensor, p: float) -> torch.Tensor:
    """The nucleus (Holtzman et al. 2020) as a boolean mask: the smallest set of most probable tokens
    whose probabilities sum to at least p. A token is in it if the more probable ones sum to < p."""
    sorted_probs, order = logits.softmax(-1).sort(-1, descending=True)
    mass = sorted_probs.cumsum(-1)
    keep = torch.cat([torch.ones_like(mass[..., :1], dtype=torch.bool), mass[..., :-1] < p], dim=-1)
    return torch.zeros_like(keep).scatter(-1, order, keep)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1:
        return logits
    return logits.masked_fill(~nucleus(logits, p), -math.inf)


def draw(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One multinomial draw per row from softmax(logits)."""
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def make_picker(strategy: str, temperature: float = 1.0, k: int = 40, p: float = 0.9) -> Picker:
    """The token-choosing step of a sampling strategy (not beam search: see beam_search)."""
    if strategy == "greedy":
        return greedy
    if strategy not in ("sample", "top-k", "top-p"):
        raise ValueError(f"not a sampling strategy: {strategy}")

    def pick(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z = tempered(logits, temperature)
        if strategy == "top-k":
            z = top_k_filter(z, k)
        elif strategy == "top-p":
            z = top_p_filter(z, p)
        return draw(z, generator)

    return pick


# --- running the model ------------------------------------------------------------------------------


@dataclass
class Output:
    ids: list[int]  # generated tokens, prompt excluded
    token_logprobs: list[float]  # log p(token | context) under the untempered model
    entropies: list[float]  # entropy (nats) of the model's next-token distribution at each step
    score: float | None = None  # beam search: logprob / length penalty

    @property
    def logprob(self) -> float:
        """Joint log-probability of the generated tokens given the prompt."""
        return math.fsum(self.token_logprobs)

    def extend(self, token: int, logprob: float, entropy: float) -> Output:
        return Output(self.ids + [token], self.token_logprobs + [logprob], self.entropies + [entropy])


class Context:
    """The token rows fed to a model so far; `next_logits()` is each row's next-token logits."""

    def __init__(self, model: TransformerLM, rows: torch.Tensor, use_cache: bool = True) -> None:
        self.model, self.tokens = model, rows
        self.window = model.cfg.max_seq_len
        self.cache = KVCache(len(model.blocks)) if use_cache else None

    def next_logits(self) -> torch.Tensor:
        if self.tokens.shape[1] > self.window:
            self.cache = None  # the window slides from here on: re-encode it every step
        if self.cache is None:
            logits = self.model(self.tokens[:, -self.window:])[0]
        else:  # feed only what the cache has not seen (the prompt, then one token a step)
            logits = self.model(self.tokens[:, len(self.cache):], cache=self.cache)[0]
        return logits[:, -1].float()

    def append(self, tokens: torch.Tensor) -> None:
        self.tokens = torch.cat([self.tokens, tokens[:, None]], dim=1)

    def reorder(self, index: torch.Tensor) -> None:
        self.tokens = self.tokens.index_select(0, index)
        if self.cache is not None:
            self.cache.reorder(index)


class Seq2SeqContext(Context):
    """An encoder-decoder's target rows over their sources, (rows, source length) PAD-padded: the
    encoder runs once, and the cache keeps the decoder's keys and values and every cross-attention's
    keys and values of the source."""

    def __init__(self, model: EncoderDecoder, rows: torch.Tensor, sources: torch.Tensor,
                 use_cache: bool = True) -> None:
        self.model, self.tokens = model, rows
        self.cache = KVCache(len(model.dec), cross=True) if use_cache else None
        self.memory, self.mask = model.encode(sources)

    def next_logits(self) -> torch.Tensor:
        """No sliding window: the target has model.max_seq_len positions at most (translate keeps to
        them)."""
        if self.cache is None:
            logits = self.model.decode(self.tokens, self.memory, self.mask)
        else:
            logits = self.model.decode(self.tokens[:, len(self.cache):], self.memory, self.mask, self.cache)
        return logits[:, -1].float()

    def reorder(self, index: torch.Tensor) -> None:
        super().reorder(index)
        self.memory, self.mask = self.memory.index_select(0, index), self.mask.index_select(0, index)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(-1)


def ends_with(ids: list[int], stop: Sequence[int]) -> bool:
    return bool(stop) and len(ids) >= len(stop) and ids[-len(stop):] == list(stop)


def _context(model: TransformerLM | EncoderDecoder, prompt: Sequence[int], rows: int, use_cache: bool,
             sources: torch.Tensor | None) -> Context:
    """`rows` copies of the prompt; an encoder-decoder's over `sources` (one row, or one per row)."""
    check_prompt(prompt, model.vocab_size)
    device = model.tok_emb.weight.device
    tokens = torch.tensor([list(prompt)], dtype=torch.long, device=device).expand(rows, -1)
    if sources is None:
        return Context(model, tokens, use_cache)
    return Seq2SeqContext(model, tokens, sources.to(device).expand(rows, -1), use_cache)


@torch.no_grad()
def generate(model: TransformerLM | EncoderDecoder, prompt: Sequence[int], pick: Picker = greedy, n: int = 1,
             max_new_tokens: int = 100, generator: torch.Generator | None = None,
             stop: Sequence[int] = (), use_cache: bool = True, sources: torch.Tensor | None = None
             ) -> list[Output]:
    """n continuations of prompt, decoded together: max_new_tokens tokens each, or fewer for those that
    end with `stop` (which they include). An encoder-decoder's prompt is its target's beginning, and
    `sources` the source ids, (1, S) for all n or (n, S), one per output."""
    context = _context(model, prompt, n, use_cache, sources)
    outputs = [Output([], [], []) for _ in range(n)]
    rows = list(range(n))  # the output each batch row belongs to
    for _ in range(max_new_tokens):
        logits = context.next_logits()
        logp = logits.log_softmax(-1)
        tokens = pick(logits, generator)
        chosen = logp.gather(-1, tokens[:, None]).squeeze(-1)
        for row, token, lp, h in zip(rows, tokens.tolist(), chosen.tolist(), entropy(logp).tolist()):
            out = outputs[row]
            out.ids.append(token)
            out.token_logprobs.append(lp)
            out.entropies.append(h)
        context.append(tokens)
        alive = [i for i, row in enumerate(rows) if not ends_with(outputs[row].ids, stop)]
        if not alive:
            break
        if len(alive) < len(rows):
            context.reorder(torch.tensor(alive, device=tokens.device))
            rows = [rows[i] for i in alive]
    return outputs


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's (Wu et al. 2016) ((5 + length) / 6) ** alpha; 1 at alpha = 0."""
    return ((5 + length) / 6) ** alpha


@torch.no_grad()
def beam_search(model: TransformerLM | EncoderDecoder, prompt: Sequence[int], beams: int = 4,
                n_best: int = 1, max_new_tokens: int = 100, alpha: float = 0.6, stop: Sequence[int] = (),
                use_cache: bool = True, sources: torch.Tensor | None = None) -> list[Output]:
    """The n_best hypotheses (best first, `score` = logprob / length_penalty) of a beam search that
    keeps, at each step, the `beams` unfinished prefixes of highest joint log-probability. A hypothesis
    finishes when it ends with `stop` or reaches max_new_tokens tokens. `sources`: an encoder-decoder's
    source ids, (1, S)."""
    context = _context(model, prompt, 1, use_cache, sources)
    live = [Output([], [], [])]
    scores = torch.zeros(1, dtype=torch.float64)  # joint log-probability of each live hypothesis
    finished: list[Output] = []
    for step in range(1, max_new_tokens + 1):
        logp = context.next_logits().log_softmax(-1)
        vocab = logp.shape[-1]
        entropies = entropy(logp).tolist()
        totals = (scores[:, None] + logp.double().cpu()).flatten()
        top = totals.topk(min(2 * beams, totals.numel()))  # enough that `beams` stay unfinished unless
        chosen = logp.flatten()[top.indices.to(logp.device)].tolist()  # many candidates hit `stop`
        parents, survivors = [], []
        for index, lp in zip(top.indices.tolist(), chosen):
            parent, token = divmod(index, vocab)
            hyp = live[parent].extend(token, lp, entropies[parent])
            if ends_with(hyp.ids, stop):
                hyp.score = hyp.logprob / length_penalty(step, alpha)
                finished.append(hyp)
            else:
                parents.append(parent)
                survivors.append(hyp)
                if len(survivors) == beams:
                    break
        if not survivors:
            live = []
            break
        live = survivors
        scores = torch.tensor([h.logprob for h in live], dtype=torch.float64)
        context.reorder(torch.tensor(parents, device=logp.device))
        context.append(torch.tensor([h.ids[-1] for h in live], device=logp.device))
        if len(finished) >= n_best and step < max_new_tokens:
            # Log-probabilities only fall, so no live hypothesis can end above this bound.
            bound = scores.max().item() / max(length_penalty(step, alpha),
                                               length_penalty(max_new_tokens, alpha))
            if bound <= sorted(h.score for h in finished)[-n_best]:
                live = []
                break
    for hyp in live:  # reached max_new_tokens
        hyp.score = hyp.logprob / length_penalty(len(hyp.ids), alpha)
    return sorted(finished + live, key=lambda h: h.score, reverse=True)[:n_best]


def decode(model: TransformerLM, prompt: Sequence[int], strategy: str, *, n: int = 1,
           max_new_tokens: int = 100, temperature: float = 1.0, k: int = 40, p: float = 0.9,
           beams: int = 4, alpha: float = 0.6, seed: int = 0, stop: Sequence[int] = (),
           use_cache: bool = True) -> list[Output]:
    """One strategy's outputs: greedy gives one (it is deterministic), beam its n best, the samplers n."""
    if strategy == "beam":
        return beam_search(model, prompt, beams, n, max_new_tokens, alpha, stop, use_cache)
    generator = torch.Generator(model.tok_emb.weight.device).manual_seed(seed)
    return generate(model, prompt, make_picker(strategy, temperature, k, p), 1 if strategy == "greedy" else n,
                    max_new_tokens, generator, stop, use_cache)
