"""Corpora and batching. Nothing is downloaded.

- `stdlib`: bytes of the Python standard library's own `.py` files (sorted, first `max_bytes`; every
  k-th file goes to validation, k = round(1/val_fraction)). Real text every Python install has. Read
  once and cached as a tensor file.
- `text`: a user's file, byte-level; the last `val_fraction` of it is validation.
- `synthetic`: sequences made on the fly: `random` tokens, `copy` (a random half, then the same half
  again) or `reverse` (a random half, then reversed), over `vocab_size` tokens.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import sysconfig
from pathlib import Path

import torch

from lnexp.config import ConfigError, DataConfig


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


Data = Corpus | SyntheticTask


def load_data(cfg: DataConfig) -> Data:
    """Build the configured data source; raises ConfigError (naming the key) if it cannot."""
    if cfg.source == "synthetic":
        return SyntheticTask(cfg.task, cfg.vocab_size)
    if cfg.source == "text":
        return _text_corpus(Path(cfg.path), cfg.val_fraction)
    return _stdlib_corpus(cfg.max_bytes, cfg.val_fraction)


def _text_corpus(path: Path, val_fraction: float) -> Corpus:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"data.path: no such file: {path}") from None
    except OSError as exc:
        raise ConfigError(f"data.path: cannot read {path} ({exc.strerror})") from None
    tokens = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.zeros(0, dtype=torch.uint8)
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
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        torch.save(split, tmp)
        os.replace(tmp, cache)
    except OSError:  # an unwritable cache only costs the re-read next time
        pass
    return Corpus(split["train"], split["val"], description)


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lnexp"
    return Path(os.environ.get("LNEXP_CACHE_DIR", default))
