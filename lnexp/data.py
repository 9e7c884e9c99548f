"""Corpora and batching. Nothing is downloaded.

- `stdlib`: bytes of the Python standard library's own `.py` files (sorted, first `max_bytes`; every
  k-th file goes to validation, k = round(1/val_fraction)). Real text every Python install has. Read
  once and cached as a tensor file.
- `text`: a user's file, byte-level; the last `val_fraction` of it is validation.
- `synthetic`: sequences made on the fly: `random` tokens, `copy` (a random half, then the same half
  again) or `reverse` (a random half, then reversed), over `vocab_size` tokens.

Sequence-to-sequence data (`model.arch: encoder_decoder`) batches as (source, target input, target
output), each (batch, train.seq_len): the source is its tokens then EOS, the target input BOS then the
target, the target output the target then EOS; truncated to seq_len, padded with PAD (id 0, ignored
in the loss and masked as a key). Ids 0-2 are PAD, BOS, EOS; content symbol c is token c + 3.

- `seq2seq`: `data.task` over `data.vocab_size` symbols, generated on the fly, source lengths uniform
  in 1..seq_len-1: `reverse` (target = source reversed), `sort` (target = source sorted ascending),
  `copy_noise` (target = a random sequence, source = that sequence with each symbol replaced, with
  probability 0.1, by a uniform random symbol: the corrupted positions set a floor on the loss) or
  `translate` (between two made-up languages; see `make_languages`).
- `pairs`: a user's UTF-8 or binary file of `source<TAB>target` lines, byte-level (vocab 256 + 3);
  blank lines are skipped, the last `val_fraction` of the lines is validation.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import sys
import sysconfig
from pathlib import Path

import torch

from lnexp.config import ConfigError, DataConfig
from lnexp.files import FileProblem, atomic_write, map_regular
from lnexp.model import PAD

BOS, EOS = 1, 2
SPECIALS = 3  # PAD, BOS, EOS: content symbol c is token c + SPECIALS
NOISE = 0.1  # copy_noise: the probability that a source symbol is replaced
LEXICON = 64  # translate: words per language


class Corpus:
    """A byte-level corpus split in two 1-D uint8 tensors; batches are random windows."""

    def __init__(self, train: torch.Tensor, val: torch.Tensor, description: str) -> None:
        self.train, self.val, self.description = train, val, description
        self.vocab_size = 256

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the training split's byte frequencies: the loss of a context-blind model."""
        p = torch.bincount(self.train.long(), minlength=256).double()
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

    def __init__(self, task: str, vocab_size: int) -> None:
        self.task, self.vocab_size = task, vocab_size
        self.description = f"synthetic {task} task, vocab {vocab_size}"

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

    def __init__(self, task: str, symbols: int, seed: int = 0) -> None:
        self.task, self.symbols, self.seq_len = task, symbols, 64
        self.vocab_size = symbols + SPECIALS
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

    def batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pairs = [self.example(seq_len, generator) for _ in range(batch_size)]
        return seq2seq_batch([([c + SPECIALS for c in s], [c + SPECIALS for c in t]) for s, t in pairs],
                             seq_len)


class PairsCorpus:
    """`data.source: pairs`: a user's source/target lines, byte-level; batches draw lines at random."""

    def __init__(self, train: list[tuple[list[int], list[int]]], val: list[tuple[list[int], list[int]]],
                 description: str) -> None:
        self.train, self.val, self.description = train, val, description
        self.vocab_size = 256 + SPECIALS

    def check(self, seq_len: int) -> None:
        pass

    def unigram_entropy(self) -> float:
        """Entropy of the training targets' token frequencies (their bytes and one EOS per line)."""
        targets = torch.tensor([tok for _, t in self.train for tok in t + [EOS]], dtype=torch.long)
        return _target_entropy([(targets,)])

    def batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pairs = self.train if split == "train" else self.val
        rows = torch.randint(len(pairs), (batch_size,), generator=generator).tolist()
        return seq2seq_batch([pairs[r] for r in rows], seq_len)


Data = Corpus | SyntheticTask | Seq2SeqTask | PairsCorpus


def load_data(cfg: DataConfig) -> Data:
    """Build the configured data source; raises ConfigError (naming the key) if it cannot."""
    if cfg.source == "synthetic":
        return SyntheticTask(cfg.task, cfg.vocab_size)
    if cfg.source == "seq2seq":
        return Seq2SeqTask(cfg.task, cfg.vocab_size, cfg.seed)
    if cfg.source == "pairs":
        return _pairs_corpus(Path(cfg.path), cfg.val_fraction)
    if cfg.source == "text":
        return _text_corpus(Path(cfg.path), cfg.val_fraction)
    return _stdlib_corpus(cfg.max_bytes, cfg.val_fraction)


def _read(path: Path) -> bytes | mmap.mmap:
    """A data file's bytes, memory-mapped: pages are read as batches use them. Regular files only."""
    try:
        return map_regular(path)
    except FileProblem as exc:
        raise ConfigError(f"data.path: {exc}: {path}") from None


def _pairs_corpus(path: Path, val_fraction: float) -> PairsCorpus:
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
        pairs.append(([b + SPECIALS for b in source], [b + SPECIALS for b in target]))
    n_val = max(1, int(len(pairs) * val_fraction))
    if len(pairs) - n_val < 1:
        raise ConfigError(f"data.path: {path} has {len(pairs)} source<TAB>target lines, fewer than one "
                          "for training and one for validation")
    return PairsCorpus(pairs[:-n_val], pairs[-n_val:], f"source/target pairs {path}")


def _text_corpus(path: Path, val_fraction: float) -> Corpus:
    raw = _read(path)  # the tensor shares the map's memory: nothing is copied
    tokens = torch.frombuffer(raw, dtype=torch.uint8) if len(raw) else torch.zeros(0, dtype=torch.uint8)
    n_val = int(len(tokens) * val_fraction)
    return Corpus(tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val:], f"text file {path}")


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted((p for p in root.rglob("*.py")
                   if not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts)),
                  key=lambda p: p.relative_to(root).as_posix())


def _stdlib_corpus(max_bytes: int, val_fraction: float) -> Corpus:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha1(f"{sys.version}|{max_bytes}|{val_fraction}".encode()).hexdigest()[:12]
    cache = cache_dir() / f"stdlib-{version}-{key}.pt"
    description = f"Python {version} standard library, {max_bytes} bytes"
    if cache.exists():
        try:
            split = torch.load(cache, weights_only=True)
            return Corpus(split["train"], split["val"], description)
        except Exception:  # a corrupt cache is rebuilt, never trusted
            pass
    every = max(2, round(1 / val_fraction))
    parts: dict[str, list[bytes]] = {"train": [], "val": []}
    total = 0
    for i, path in enumerate(stdlib_files()):
        if total >= max_bytes:
            break
        text = path.read_bytes()[: max_bytes - total]
        parts["val" if i % every == every - 1 else "train"].append(text)
        total += len(text)
    split = {name: torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)
             for name, chunks in parts.items()}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda f: torch.save(split, f))
    except OSError:  # an unwritable cache only costs the re-read next time
        pass
    return Corpus(split["train"], split["val"], description)


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lnexp"
    return Path(os.environ.get("LNEXP_CACHE_DIR", default))
