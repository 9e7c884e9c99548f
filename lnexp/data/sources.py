"""Corpora and batching. Nothing is downloaded.

- `stdlib`: bytes of the Python standard library's own `.py` files (sorted, first `max_bytes`; every
  k-th file goes to validation, k = round(1/val_fraction)). Real text every Python install has. Read
  once and cached as a tensor file.
- `text`: a user's file; the last `val_fraction` of it is validation.
- `hf`: a Hugging Face dataset, `datasets.load_dataset(data.dataset, data.config, split=data.split)`
  (a hub name, or a local folder of .jsonl/.csv/.parquet/.txt files); the rows' `data.text_field`,
  one per line. Validation is `data.val_split`, else the last `val_fraction` of the split.
- `tokens`: pre-tokenised ids, a `.bin` (raw `data.token_dtype`, as nanoGPT writes) or `.npy`
  (uint16/uint32), memory-mapped; validation is `data.val_path`, else the last `val_fraction`.
- `synthetic`: sequences made on the fly: `random` tokens, `copy` (a random half, then the same half
  again) or `reverse` (a random half, then reversed), over `vocab_size` tokens.

Text is tokenised as `data.tokenizer` says (lnexp/data/tokenizers.py): bytes by default, or BPE/word tokens of
a tokenizer trained on the training split; the token ids of both splits are cached like the stdlib.
`bytes_per_token` (validation bytes / validation tokens; None without text) turns a loss per token
into bits per byte, the unit in which runs of different tokenizers compare.

Sequence-to-sequence data (`model.arch: encoder_decoder`) batches as (source, target input, target
output), each (batch, train.seq_len): the source is its tokens then EOS, the target input BOS then the
target, the target output the target then EOS; truncated to seq_len, padded with PAD (id 0, ignored
in the loss and masked as a key). Ids 0-2 are PAD, BOS, EOS; content symbol c is token c + 3.

- `seq2seq`: `data.task` over `data.vocab_size` symbols, generated on the fly, source lengths uniform
  in 1..seq_len-1: `reverse` (target = source reversed), `sort` (target = source sorted ascending),
  `copy_noise` (target = a random sequence, source = that sequence with each symbol replaced, with
  probability 0.1, by a uniform random symbol: the corrupted positions set a floor on the loss) or
  `translate` (between two made-up languages; see `make_languages`).
- `pairs`: a user's UTF-8 or binary file of `source<TAB>target` lines; blank lines are skipped, the
  last `val_fraction` of the lines is validation.
- `hf` with `data.source_field`/`data.target_field`: pairs from a Hugging Face dataset.
Byte-level pairs have vocab 256 + 3; a `bpe` or `word` tokenizer's ids 0-2 are already the specials.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import re
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lnexp.core.config import ConfigError, DataConfig
from lnexp.core.data_sources import DATA_SOURCES
from lnexp.core.files import FileProblem, atomic_write, map_regular
from lnexp.core.model import PAD
from lnexp.data.tokenizers import (
    BOS,
    EOS,
    SPECIALS,
    ByteTokenizer,
    SymbolTokenizer,
    Tokenizer,
    train_tokenizer,
)

NOISE = 0.1  # copy_noise: the probability that a source symbol is replaced
LEXICON = 64  # translate: words per language
EVAL_SEED = 1234  # the generator of a seq2seq task's scored examples (translate --eval, eval_bleu_every)


class Corpus:
    """A corpus split in two 1-D tensors of token ids (uint8 bytes, or a tokenizer's or a file's ids);
    batches are random windows."""

    def __init__(self, train: torch.Tensor, val: torch.Tensor, description: str, vocab_size: int = 256,
                 tokenizer: Tokenizer | None = None, bytes_per_token: float | None = 1.0) -> None:
        self.train, self.val, self.description = train, val, description
        self.vocab_size, self.bytes_per_token = vocab_size, bytes_per_token
        self.tokenizer = tokenizer or ByteTokenizer()

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the training split's token frequencies: the loss of a context-blind model."""
        # in chunks: a pre-tokenised corpus may be far larger than memory as int64
        p = sum(torch.bincount(chunk.long(), minlength=self.vocab_size) for chunk in self.train.split(2**24))
        p = p.double()
        p = p[p > 0] / p.sum()
        return float(-(p * p.log()).sum())

    def check(self, seq_len: int) -> None:
        shortest = min(len(self.train), len(self.val))
        if shortest < seq_len + 1:
            raise ConfigError(f"data: the {'train' if len(self.train) == shortest else 'val'} split "
                              f"has {shortest} tokens, fewer than one sequence (train.seq_len + 1 = "
                              f"{seq_len + 1})")

    def batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.train if split == "train" else self.val
        start = torch.randint(len(tokens) - seq_len, (batch_size, 1), generator=generator)
        window = tokens[start + torch.arange(seq_len + 1)].long()  # one gather, no Python loop
        return window[:, :-1], window[:, 1:]


class SyntheticTask:
    """Token sequences generated per batch; train and val differ only by their generators."""

    bytes_per_token = None

    def __init__(self, task: str, vocab_size: int) -> None:
        self.task, self.vocab_size = task, vocab_size
        self.description = f"synthetic {task} task, vocab {vocab_size}"
        self.tokenizer = ByteTokenizer()

    def unigram_entropy(self) -> float:
        """Every task draws its tokens uniformly, so the unigram entropy is ln(vocab_size) exactly."""
        return math.log(self.vocab_size)

    def check(self, seq_len: int) -> None:
        pass

    def batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.task == "random":
            seq = torch.randint(self.vocab_size, (batch_size, seq_len + 1), generator=generator)
        else:
            half = torch.randint(self.vocab_size, (batch_size, (seq_len + 2) // 2), generator=generator)
            second = half if self.task == "copy" else half.flip(1)
            seq = torch.cat([half, second], dim=1)[:, : seq_len + 1]
        return seq[:, :-1], seq[:, 1:]


def seq2seq_batch(pairs: list[tuple[list[int], list[int]]], seq_len: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source, target input, target output) token ids, each (len(pairs), seq_len), from pairs of
    token-id lists (content already offset by SPECIALS); see the module docstring."""
    src, tgt_in, tgt_out = (torch.full((len(pairs), seq_len), PAD, dtype=torch.long) for _ in range(3))
    for row, (source, target) in enumerate(pairs):
        s = (source + [EOS])[:seq_len]
        t = ([BOS] + target + [EOS])[: seq_len + 1]
        src[row, : len(s)] = torch.tensor(s)
        tgt_in[row, : len(t) - 1] = torch.tensor(t[:-1])
        tgt_out[row, : len(t) - 1] = torch.tensor(t[1:])
    return src, tgt_in, tgt_out


def _target_entropy(batches: list[tuple[torch.Tensor, ...]]) -> float:
    """Entropy (nats) of the non-PAD target-output token frequencies."""
    targets = torch.cat([b[-1].flatten() for b in batches])
    p = torch.bincount(targets[targets != PAD]).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """A uniform integer in low..high (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def make_languages(symbols: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """The translate task's two made-up languages, fixed by `data.seed`: LEXICON word pairs.

    Symbol 0 is the space between words. The source language spells its words with symbols
    1..A, the target language with A+1..2A (A = (symbols - 1) // 2): source words are 2-4 letters,
    target words 1-5, all drawn uniformly and all distinct, and source word i translates to target
    word i. A sentence of k words (k uniform in 1..max(1, (seq_len - 1) // 6), each word uniform over
    the lexicon) translates word by word, then each adjacent pair of words swaps places (word 0 with
    word 1, 2 with 3, ...; an odd last word stays), like adjective-noun order between languages.
    """
    generator = torch.Generator().manual_seed(seed)
    letters = (symbols - 1) // 2
    source: list[list[int]] = []
    target: list[list[int]] = []
    while len(source) < LEXICON:
        s = (1 + torch.randint(letters, (_randint(2, 4, generator),), generator=generator)).tolist()
        t = (1 + letters + torch.randint(letters, (_randint(1, 5, generator),), generator=generator)).tolist()
        if s not in source and t not in target:
            source.append(s)
            target.append(t)
    return source, target


class Seq2SeqTask:
    """`data.source: seq2seq`: source/target pairs generated per batch (see the module docstring)."""

    bytes_per_token = None

    def __init__(self, task: str, symbols: int, seed: int = 0) -> None:
        self.task, self.symbols, self.seq_len = task, symbols, 64
        self.vocab_size = symbols + SPECIALS
        self.tokenizer = SymbolTokenizer(self.vocab_size, SPECIALS)
        self.languages = make_languages(symbols, seed) if task == "translate" else None
        self.description = f"synthetic seq2seq {task} task, {symbols} symbols" + \
            (f", languages of seed {seed}" if task == "translate" else "")

    def check(self, seq_len: int) -> None:
        self.seq_len = seq_len  # the length unigram_entropy samples at

    def unigram_entropy(self) -> float:
        """Entropy of the target tokens' frequencies (EOS included), over 64 fixed batches of 32."""
        generator = torch.Generator().manual_seed(0)
        return _target_entropy([self.batch("val", 32, self.seq_len, generator) for _ in range(64)])

    def example(self, seq_len: int, generator: torch.Generator) -> tuple[list[int], list[int]]:
        """One (source, target) pair of symbols (not yet offset by SPECIALS)."""
        if self.task == "translate":
            source_words, target_words = self.languages
            k = _randint(1, max(1, (seq_len - 1) // 6), generator)
            words = torch.randint(LEXICON, (k,), generator=generator).tolist()
            order = [j ^ 1 if (j ^ 1) < k else j for j in range(k)]  # swap each adjacent pair
            join = lambda ws: [c for i, w in enumerate(ws) for c in ([0] if i else []) + w]  # noqa: E731
            return join([source_words[w] for w in words]), join([target_words[words[j]] for j in order])
        n = _randint(1, max(1, seq_len - 1), generator)
        seq = torch.randint(self.symbols, (n,), generator=generator)
        if self.task == "reverse":
            return seq.tolist(), seq.flip(0).tolist()
        if self.task == "sort":
            return seq.tolist(), seq.sort().values.tolist()
        noisy = torch.rand(n, generator=generator) < NOISE
        source = torch.where(noisy, torch.randint(self.symbols, (n,), generator=generator), seq)
        return source.tolist(), seq.tolist()

    def pair(self, seq_len: int, generator: torch.Generator) -> tuple[list[int], list[int]]:
        """One example as token ids (symbols offset by SPECIALS)."""
        source, target = self.example(seq_len, generator)
        return [c + SPECIALS for c in source], [c + SPECIALS for c in target]

    def batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return seq2seq_batch([self.pair(seq_len, generator) for _ in range(batch_size)], seq_len)

    def eval_pairs(self, n: int) -> list[tuple[list[int], list[int], str]]:
        """n validation examples, the same every call: (source ids, target ids, reference text)."""
        generator = torch.Generator().manual_seed(EVAL_SEED)
        pairs = [self.pair(self.seq_len, generator) for _ in range(n)]
        return [(s, t, self.tokenizer.decode(t)) for s, t in pairs]


class PairsCorpus:
    """`data.source: pairs` or `hf` pairs: a user's source/target texts as token ids; batches draw
    pairs at random. `references` are the validation targets as given (a lossy tokenizer's decoding
    is not what translations are scored against)."""

    def __init__(self, train: list[tuple[list[int], list[int]]], val: list[tuple[list[int], list[int]]],
                 references: list[str], description: str, tokenizer: Tokenizer,
                 bytes_per_token: float | None) -> None:
        self.train, self.val, self.references, self.description = train, val, references, description
        self.tokenizer, self.vocab_size = tokenizer, tokenizer.vocab_size
        self.bytes_per_token = bytes_per_token

    def check(self, seq_len: int) -> None:
        pass

    def unigram_entropy(self) -> float:
        """Entropy of the training targets' token frequencies (their tokens and one EOS per line)."""
        targets = torch.tensor([tok for _, t in self.train for tok in t + [EOS]], dtype=torch.long)
        return _target_entropy([(targets,)])

    def batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pairs = self.train if split == "train" else self.val
        rows = torch.randint(len(pairs), (batch_size,), generator=generator).tolist()
        return seq2seq_batch([pairs[r] for r in rows], seq_len)

    def eval_pairs(self, n: int) -> list[tuple[list[int], list[int], str]]:
        """The first n validation pairs: (source ids, target ids, reference text)."""
        return [(s, t, ref) for (s, t), ref in zip(self.val[:n], self.references[:n])]


Data = Corpus | SyntheticTask | Seq2SeqTask | PairsCorpus


def load_data(cfg: DataConfig, arch: str) -> Data:
    """Build the configured data source (its loader, lnexp/core/data_sources.py), pairs when the source
    gives them under `model.arch` arch; raises ConfigError (naming the key) if it cannot."""
    source = DATA_SOURCES[cfg.source]
    return source.load(cfg, source.seq2seq(arch))


# --- the loaders the data sources name ---------------------------------------------------------------

def load_stdlib(cfg: DataConfig, seq2seq: bool) -> Data:
    return _text_corpus(*_stdlib_splits(cfg.max_bytes, cfg.val_fraction), cfg)


def load_text(cfg: DataConfig, seq2seq: bool) -> Data:
    raw = _read(Path(cfg.path))  # the tensor shares the map's memory: nothing is copied
    tokens = torch.frombuffer(raw, dtype=torch.uint8) if len(raw) else torch.zeros(0, dtype=torch.uint8)
    n_val = int(len(tokens) * cfg.val_fraction)
    return _text_corpus(tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val:], f"text file {cfg.path}",
                        cfg)


def load_synthetic(cfg: DataConfig, seq2seq: bool) -> Data:
    return SyntheticTask(cfg.task, cfg.vocab_size)


def load_seq2seq(cfg: DataConfig, seq2seq: bool) -> Data:
    return Seq2SeqTask(cfg.task, cfg.vocab_size, cfg.seed)


def load_pairs(cfg: DataConfig, seq2seq: bool) -> Data:
    train, val = _split(_read_pairs(Path(cfg.path)), cfg.val_fraction, "data.path", cfg.path,
                        "source<TAB>target lines")
    return _pairs_corpus(train, val, cfg, f"source/target pairs {cfg.path}")


def _read(path: Path, key: str = "data.path") -> bytes | mmap.mmap:
    """A data file's bytes, memory-mapped: pages are read as batches use them. Regular files only."""
    try:
        return map_regular(path)
    except FileProblem as exc:
        raise ConfigError(f"{key}: {exc}: {path}") from None


def _read_pairs(path: Path) -> list[tuple[bytes, bytes]]:
    pairs = []
    data = _read(path)
    lines = iter(data.readline, b"") if isinstance(data, mmap.mmap) else iter(())  # b"": no lines
    for number, line in enumerate(lines, 1):
        line = line.removesuffix(b"\n").removesuffix(b"\r")
        if not line.strip():
            continue
        tabs = line.count(b"\t")
        if tabs != 1:
            raise ConfigError(f"data.path: {path} line {number}: expected source<TAB>target, found "
                              f"{tabs} tabs")
        source, target = line.split(b"\t")
        pairs.append((source, target))
    return pairs


def _split(rows: list, val_fraction: float, key: str, name: str, what: str) -> tuple[list, list]:
    """The rows but the last val_fraction (at least one), and those."""
    n_val = max(1, int(len(rows) * val_fraction))
    if len(rows) - n_val < 1:
        raise ConfigError(f"{key}: {name} has {len(rows)} {what}, fewer than one for training and one "
                          "for validation")
    return rows[:-n_val], rows[-n_val:]


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")


def _utf8(text: bytes | str) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", errors="surrogatepass")


def _tokenizer(cfg: DataConfig, train_texts: list[str]) -> Tokenizer:
    """The configured tokenizer, a trained one fitted to the training texts."""
    try:
        return train_tokenizer(cfg.tokenizer, cfg.vocab_size, train_texts, cache_dir())
    except ValueError as exc:  # tokenizers is not installed
        raise ConfigError(f"data.tokenizer: {exc}") from None


def _pairs_corpus(train: list[tuple[bytes | str, bytes | str]], val: list[tuple[bytes | str, bytes | str]],
                  cfg: DataConfig, description: str) -> PairsCorpus:
    """Pairs of texts (bytes of a file, or strings) as token ids of the configured tokenizer, trained
    on the training pairs' sources and targets together (the model shares one embedding)."""
    if cfg.tokenizer == "byte":
        tokenizer: Tokenizer = ByteTokenizer(SPECIALS)

        def encode(texts: list[bytes | str]) -> list[list[int]]:
            return [[b + SPECIALS for b in _utf8(t)] for t in texts]
    else:
        tokenizer = _tokenizer(cfg, [_text(t) for pair in train for t in pair])
        description += f", {cfg.tokenizer} tokenizer of {tokenizer.vocab_size} tokens"

        def encode(texts: list[bytes | str]) -> list[list[int]]:
            return tokenizer.encode_all([_text(t) for t in texts])

    encoded = [list(zip(encode([s for s, _ in rows]), encode([t for _, t in rows]))) for rows in (train, val)]
    target_tokens = sum(len(t) + 1 for _, t in encoded[1])  # the loss counts one EOS per target
    target_bytes = sum(len(_utf8(t)) for _, t in val)
    return PairsCorpus(*encoded, [_text(t) for _, t in val], description, tokenizer,
                       target_bytes / target_tokens)


def _text_corpus(train: torch.Tensor, val: torch.Tensor, description: str, cfg: DataConfig) -> Corpus:
    """Byte splits (uint8) as a corpus of the configured tokenizer. A trained tokenizer's ids are
    cached by the content hash of both splits and the tokenizer."""
    if cfg.tokenizer == "byte":
        return Corpus(train, val, description)
    texts = [_text(split.numpy().tobytes()) for split in (train, val)]
    tokenizer = _tokenizer(cfg, texts[:1])
    description += f", {cfg.tokenizer} tokenizer of {tokenizer.vocab_size} tokens"
    key = hashlib.sha1(tokenizer.to_json().encode())
    for text in texts:
        key.update(hashlib.sha1(_utf8(text)).digest())
    ids = _cached(f"tokens-{key.hexdigest()[:16]}.pt", lambda: {
        name: torch.tensor(encoded, dtype=torch.int32)
        for name, encoded in zip(("train", "val"), tokenizer.encode_all(texts))})
    return Corpus(ids["train"], ids["val"], description, tokenizer.vocab_size, tokenizer,
                  len(val) / max(1, len(ids["val"])))


def _cached(name: str, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The tensors cached under `name` in cache_dir(), else `build()`'s, cached for next time."""
    cache = cache_dir() / name
    if cache.exists():
        try:
            return torch.load(cache, weights_only=True)
        except Exception:  # a corrupt cache is rebuilt, never trusted
            pass
    tensors = build()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda f: torch.save(tensors, f))
    except OSError:  # an unwritable cache only costs the rebuild next time
        pass
    return tensors


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted((p for p in root.rglob("*.py")
                   if not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts)),
                  key=lambda p: p.relative_to(root).as_posix())


def _stdlib_splits(max_bytes: int, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The stdlib's train and val bytes (uint8) and the corpus's description."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha1(f"{sys.version}|{max_bytes}|{val_fraction}".encode()).hexdigest()[:12]

    def read() -> dict[str, torch.Tensor]:
        every = max(2, round(1 / val_fraction))
        parts: dict[str, list[bytes]] = {"train": [], "val": []}
        total = 0
        for i, path in enumerate(stdlib_files()):
            if total >= max_bytes:
                break
            text = path.read_bytes()[: max_bytes - total]
            parts["val" if i % every == every - 1 else "train"].append(text)
            total += len(text)
        return {name: torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)
                for name, chunks in parts.items()}

    split = _cached(f"stdlib-{version}-{key}.pt", read)
    return split["train"], split["val"], f"Python {version} standard library, {max_bytes} bytes"


TOKEN_DTYPES = {"uint16": torch.uint16, "uint32": torch.uint32}


def _token_ids(path: Path, key: str, dtype: str) -> torch.Tensor:
    """A .npy's or raw .bin's ids, memory-mapped (nothing is read until a batch needs it)."""
    if path.suffix == ".npy":
        import numpy as np  # installed with matplotlib

        _read(path, key)  # a regular file, or one line saying why not
        try:
            array = np.load(path, mmap_mode="c")  # copy-on-write: the file is never written
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{key}: {path}: not a .npy array ({str(exc).splitlines()[0]})") from None
        if array.dtype not in (np.uint16, np.uint32) or array.ndim != 1:
            raise ConfigError(f"{key}: {path}: expected a 1-D uint16 or uint32 array, got {array.ndim}-D "
                              f"{array.dtype}")
        return torch.from_numpy(array)
    raw = _read(path, key)
    width = TOKEN_DTYPES[dtype].itemsize
    if len(raw) % width:
        raise ConfigError(f"{key}: {path}: {len(raw)} bytes is not a whole number of {dtype} ids "
                          "(data.token_dtype)")
    return torch.frombuffer(raw, dtype=TOKEN_DTYPES[dtype]) if len(raw) else \
        torch.zeros(0, dtype=TOKEN_DTYPES[dtype])


def load_tokens(cfg: DataConfig, seq2seq: bool) -> Corpus:
    ids = _token_ids(Path(cfg.path), "data.path", cfg.token_dtype)
    if cfg.val_path:
        train, val = ids, _token_ids(Path(cfg.val_path), "data.val_path", cfg.token_dtype)
    else:
        n_val = int(len(ids) * cfg.val_fraction)
        train, val = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    for key, split in (("data.path", ids), ("data.val_path", val)):
        # an id past the embedding would fail mid-run, on the first batch that draws it
        top = max((int(chunk.long().max()) for chunk in split.split(2**24) if len(chunk)), default=-1)
        if top >= cfg.vocab_size:
            raise ConfigError(f"{key}: {getattr(cfg, key[5:]) or cfg.path} holds id {top}, outside "
                              f"data.vocab_size ({cfg.vocab_size})")
    description = f"token ids {cfg.path}" + (f" (validation {cfg.val_path})" if cfg.val_path else "")
    return Corpus(train, val, description, cfg.vocab_size, SymbolTokenizer(cfg.vocab_size), None)


def load_hf(cfg: DataConfig, seq2seq: bool) -> Corpus | PairsCorpus:
    """Text or pairs from `datasets.load_dataset` (see the module docstring)."""
    splits = {"data.split": _hf_split(cfg, cfg.split, "data.split")}
    if cfg.val_split:
        splits["data.val_split"] = _hf_split(cfg, cfg.val_split, "data.val_split")
    fields = ("source_field", "target_field") if seq2seq else ("text_field",)
    columns = [{field: _column(cfg, split, field, key) for field in fields} for key, split in splits.items()]
    description = f"Hugging Face dataset {cfg.dataset}" + (f" ({cfg.config})" if cfg.config else "")
    if seq2seq:
        rows = [list(zip(c["source_field"], c["target_field"])) for c in columns]
        train, val = rows if cfg.val_split else _split(rows[0], cfg.val_fraction, "data.split", cfg.split,
                                                       "rows")
        return _pairs_corpus(train, val, cfg, description)
    texts = ["".join(t if t.endswith("\n") else t + "\n" for t in c["text_field"]) for c in columns]
    if cfg.val_split:
        train, val = (_utf8(t) for t in texts)
    else:
        raw = _utf8(texts[0])
        n_val = int(len(raw) * cfg.val_fraction)
        train, val = raw[: len(raw) - n_val], raw[len(raw) - n_val:]
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8)  # noqa: E731
    return _text_corpus(as_tensor(train), as_tensor(val), description, cfg)


def _column(cfg: DataConfig, split: Any, field: str, split_key: str) -> list[str]:
    """A split's strings in `data.<field>`: a column, or `column.key` inside a column of mappings
    (iwslt2017's `translation.de`)."""
    name = getattr(cfg, field)
    column, *keys = name.split(".")
    where = f"{cfg.dataset} ({split_key} {getattr(cfg, split_key[5:])}"
    if column not in split.column_names:
        raise ConfigError(f"data.{field}: {column!r} is not a column of {where}; columns: "
                          f"{', '.join(split.column_names)})")
    values = split[column]
    for key in keys:
        if not all(isinstance(v, dict) and key in v for v in values):
            raise ConfigError(f"data.{field}: {name!r}: not every row's {column} has the key {key!r} "
                              f"({where})")
        values = [v[key] for v in values]
    if not all(isinstance(v, str) for v in values):
        raise ConfigError(f"data.{field}: {name!r} is not a column of strings ({where})")
    return values


HUB_TIMEOUT_S = 3.0  # to reach the hub before it counts as unreachable (datasets' own retries take ~30 s)
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # `name` or `owner/name`


def _hf_split(cfg: DataConfig, split: str, key: str) -> Any:
    """One split of the dataset; ConfigError naming the key that is wrong. A name that can only be a
    folder and is not one, or a hub that cannot be reached, is said in one line within seconds,
    without the hub client's retries and log lines."""
    try:
        import datasets
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:
        raise ConfigError("data.source: hf needs Hugging Face datasets: pip install 'lnexp[hf]'") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    hub_logging.set_verbosity_error()  # "Retrying in 1s" lines: the one line below says it all
    name = cfg.dataset
    local = Path(name).expanduser().exists()
    if not local and (name.startswith((".", "~", "/")) or not _REPO_ID.fullmatch(name)):
        raise ConfigError(f"data.dataset: {name}: no such folder")
    offline = getattr(datasets.config, "HF_HUB_OFFLINE", False) or \
        getattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    if not local and not offline:
        _check_hub(name)
    try:
        return datasets.load_dataset(cfg.dataset, cfg.config, split=split)
    except ValueError as exc:
        message = str(exc).splitlines()[0][:300]
        blamed = key if message.startswith("Unknown split") else \
            "data.config" if "BuilderConfig" in message or "Config name" in message else "data.dataset"
        raise ConfigError(f"{blamed}: {cfg.dataset}: {message}") from None
    except Exception as exc:  # not found, not cached (offline): datasets' own words
        message = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        also = " (nor is it a local folder)" if "/" in name and not local else ""
        raise ConfigError(f"data.dataset: {name}: {message}{also}") from None


def _check_hub(name: str) -> None:
    """ConfigError, at once, when the hub does not answer within HUB_TIMEOUT_S (through the hub
    client's own session: its proxies and HF_ENDPOINT count)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_TIMEOUT_S)
    except Exception as exc:  # any answer, even an error status, means the hub is reachable
        why = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ConfigError(f"data.dataset: {name}: the Hugging Face Hub ({constants.ENDPOINT}) cannot be "
                          f"reached ({why}); a dataset in the local cache loads with HF_HUB_OFFLINE=1, and "
                          "a local folder of data files as data.dataset: ./FOLDER") from None


def bits_per_byte(loss: float | None, data: Data) -> float | None:
    """A loss in nats per token as bits per byte of text (None without text or loss)."""
    if loss is None or data.bytes_per_token is None or not math.isfinite(loss):
        return None
    return loss / data.bytes_per_token / math.log(2)


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lnexp"
    return Path(os.environ.get("LNEXP_CACHE_DIR", default))
