"""Translating with an encoder-decoder run, and scoring the translations.

Decoding reuses lnexp.decode.search: greedy decodes many sources at once (a batch of PAD-padded sources,
each row stopping at its EOS), beam search one source at a time; both cache the decoder's keys and
values and the source's cross-attention keys and values. A source is its tokens then EOS, cut to
train.seq_len as in training; a translation starts from BOS and ends at EOS (not shown) or after
`max_new_tokens` tokens (train.seq_len by default: training never saw longer targets).

Scores are sacrebleu's corpus BLEU (13a tokenisation) and chrF of the decoded translations against
the references, plus the share of translations equal to their reference (exact match: what counts
on the synthetic tasks, whose "text" is numbered symbols). The scored pairs are the run's validation
pairs: the first `n` of a pairs file's (or dataset's) validation split, or `n` examples of a seq2seq
task drawn by a fixed generator (lnexp.data.sources.EVAL_SEED), the same for every run and every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lnexp.core.config import ConfigError
from lnexp.core.files import FileProblem, read_regular
from lnexp.core.model import PAD, EncoderDecoder
from lnexp.data.sources import PairsCorpus, Seq2SeqTask, load_data
from lnexp.data.tokenizers import BOS, EOS
from lnexp.decode.search import DecodeError, Loaded, beam_search, check_prompt, encode, generate, greedy

EVAL_PAIRS = 100  # validation pairs scored by `translate --eval` and train.eval_bleu_every
GREEDY_BATCH = 64  # sources decoded together by greedy


def source_ids(tokens: Sequence[int], seq_len: int) -> list[int]:
    """A source as the encoder saw it in training: its tokens then EOS, cut to seq_len."""
    return (list(tokens) + [EOS])[:seq_len]


def _padded(sources: list[list[int]]) -> torch.Tensor:
    batch = torch.full((len(sources), max(map(len, sources))), PAD, dtype=torch.long)
    for row, source in enumerate(sources):
        batch[row, : len(source)] = torch.tensor(source)
    return batch


def translate_ids(model: EncoderDecoder, sources: list[list[int]], seq_len: int, strategy: str = "greedy",
                  beams: int = 4, alpha: float = 0.6, max_new_tokens: int | None = None) -> list[list[int]]:
    """Each source's translation, token ids without EOS. `sources` are token ids without EOS."""
    limit = min(max_new_tokens or seq_len, model.cfg.max_seq_len)  # the decoder's positions
    encoded = [source_ids(s, min(seq_len, model.cfg.max_seq_len)) for s in sources]
    if strategy == "greedy":
        outputs = [o for i in range(0, len(encoded), GREEDY_BATCH)
                   for o in generate(model, [BOS], greedy, n=len(encoded[i:i + GREEDY_BATCH]),
                                     max_new_tokens=limit, stop=[EOS],
                                     sources=_padded(encoded[i:i + GREEDY_BATCH]))]
    elif strategy == "beam":
        outputs = [beam_search(model, [BOS], beams, 1, limit, alpha, stop=[EOS],
                               sources=torch.tensor([source]))[0] for source in encoded]
    else:
        raise DecodeError(f"--strategy must be greedy or beam, got {strategy!r}")
    return [o.ids[:-1] if o.ids[-1:] == [EOS] else o.ids for o in outputs]


def scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (0-100, sacrebleu) and exact match (0-1) of translations."""
    try:
        import sacrebleu
    except ImportError:
        raise DecodeError("BLEU and chrF need sacrebleu: pip install 'lnexp[translate]'") from None
    return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
            "exact_match": sum(h == r for h, r in zip(hypotheses, references)) / max(1, len(references))}


def evaluate(model: EncoderDecoder, data: Seq2SeqTask | PairsCorpus, seq_len: int, n: int = EVAL_PAIRS,
             strategy: str = "greedy", beams: int = 4, alpha: float = 0.6) -> dict[str, Any]:
    """Scores of the model's translations of the run's first n validation pairs (see the module
    docstring), with the pairs themselves: sources, references and hypotheses as text."""
    pairs = data.eval_pairs(n)
    was_training = model.training
    model.eval()
    try:
        translations = translate_ids(model, [s for s, _, _ in pairs], seq_len, strategy, beams, alpha)
    finally:
        model.train(was_training)
    hypotheses = [data.tokenizer.decode(ids) for ids in translations]
    references = [ref for _, _, ref in pairs]
    return {**scores(hypotheses, references), "pairs": len(pairs),
            "examples": [{"source": data.tokenizer.decode(s), "reference": r, "translation": h}
                         for (s, _, _), r, h in zip(pairs, references, hypotheses)]}


def training_scores(model: EncoderDecoder, data: Seq2SeqTask | PairsCorpus, seq_len: int) -> dict[str, float]:
    """train.eval_bleu_every's numbers for metrics.jsonl: greedy BLEU, chrF and exact match."""
    result = evaluate(model, data, seq_len)
    return {key: result[key] for key in ("bleu", "chrf", "exact_match")}


# --- the translate command ---------------------------------------------------------------------------

INPUT_LIMIT = 2**26  # --input: 64 MiB of sources


def read_sources(path: Path) -> list[str]:
    """--input: one source a line (blank lines skipped)."""
    try:
        text = read_regular(path, INPUT_LIMIT).decode("utf-8")
    except (FileProblem, UnicodeDecodeError) as exc:
        raise DecodeError(f"{path}: cannot read ({'not UTF-8 text' if isinstance(exc, ValueError) else exc})"
                          ) from None
    sources = [line for line in text.splitlines() if line.strip()]
    if not sources:
        raise DecodeError(f"{path}: no sources (one per line)")
    return sources


def translate_texts(loaded: Loaded, texts: list[str], strategy: str = "greedy", beams: int = 4,
                    alpha: float = 0.6, max_new_tokens: int | None = None) -> list[str]:
    """Each text's translation by the run's model, through its tokenizer."""
    ids = [encode(loaded.tokenizer, text, "the source") for text in texts]
    for source in ids:
        check_prompt(source or [EOS], loaded.model.vocab_size)
    seq_len = loaded.config.train.seq_len
    return [loaded.tokenizer.decode(t) for t in translate_ids(loaded.model, ids, seq_len, strategy, beams,
                                                              alpha, max_new_tokens)]


def evaluate_run(run: Path, loaded: Loaded, n: int = EVAL_PAIRS, strategy: str = "greedy", beams: int = 4,
                 alpha: float = 0.6) -> dict[str, Any]:
    """`translate --eval`: the run's data read again (as training read it), its validation pairs scored."""
    config = loaded.config
    try:
        data = load_data(config.data, config.model.arch)
        data.check(config.train.seq_len)
    except ConfigError as exc:
        raise DecodeError(f"{run / 'config.yaml'}: {exc}") from None
    if data.tokenizer.to_json() != loaded.tokenizer.to_json():
        raise DecodeError(f"{run}: its data has changed since training (the tokenizer trained on it now "
                          "differs from the run's tokenizer.json)")
    return evaluate(loaded.model, data, config.train.seq_len, n, strategy, beams, alpha)
