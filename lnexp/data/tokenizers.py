"""Tokenizers: text <-> token ids, one object per run (`data.tokenizer`).

- `byte` (the default): a token is a UTF-8 byte, vocab 256. Sequence-to-sequence data shifts every
  byte by 3 (ids 0-2 are PAD, BOS, EOS).
- `bpe`: byte-level BPE (GPT-2's: any text round-trips exactly), trained with Hugging Face
  `tokenizers` to `data.vocab_size` tokens on the training split only.
- `word`: whitespace/punctuation words, the `data.vocab_size` most frequent of the training split;
  the rest become <unk>, so decoding is lossy (and bits per byte flatter a word-level run).
- Synthetic runs and pre-tokenised corpora have no text: their "text" is the ids, space-separated.

A trained tokenizer is cached under LNEXP_CACHE_DIR by the hash of its training text and settings,
and saved in the run folder as `tokenizer.json`. Its ids 0-2 are always <pad>, <bos>, <eos>, so the
same tokenizer serves a language model and an encoder-decoder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lnexp.core.data_sources import is_seq2seq

TOKENIZER_FILE = "tokenizer.json"
# Ids 0-2 of every sequence-to-sequence vocabulary: PAD (lnexp.core.model), BOS, EOS; content symbol c
# is token c + SPECIALS.
BOS, EOS = 1, 2
SPECIALS = 3
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]  # ids 0-3: PAD, BOS, EOS as above, and unknown
UNK = 3


def _byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2's, the `tokenizers` ByteLevel pre-tokenizer's), character ->
    byte: a printable byte is its own character, the others are U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


_BYTE_OF = _byte_alphabet()


class ByteTokenizer:
    """UTF-8 bytes, shifted by `offset` (3 for sequence-to-sequence data: ids 0-2 are specials)."""

    kind = "byte"

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.vocab_size = 256 + offset

    def encode(self, text: str) -> list[int]:
        """ValueError for text with no UTF-8 form (an argument of invalid bytes arrives as lone
        surrogates)."""
        try:
            return [b + self.offset for b in text.encode("utf-8")]
        except UnicodeEncodeError:
            raise ValueError("is not valid UTF-8 text") from None

    def decode(self, ids: Sequence[int]) -> str:
        """Bytes decoded as UTF-8, invalid bytes as \\xNN escapes, specials dropped. Ids above the
        bytes (synthetic runs with a larger vocabulary) are not bytes: they are written as numbers."""
        ids = [i - self.offset for i in ids if i >= self.offset]
        if any(i > 255 for i in ids):
            return " ".join(map(str, ids))
        return bytes(ids).decode("utf-8", errors="backslashreplace")

    def unknown(self, text: str) -> list[str]:
        return []  # every byte is a token

    def to_json(self) -> str | None:
        return None


class SymbolTokenizer:
    """Runs without text (seq2seq tasks, pre-tokenised corpora): symbols written as numbers, "3 17 5",
    token id = symbol + `offset`."""

    kind = "symbols"

    def __init__(self, vocab_size: int, offset: int = 0) -> None:
        self.vocab_size, self.offset = vocab_size, offset

    def encode(self, text: str) -> list[int]:
        try:
            return [int(word) + self.offset for word in text.split()]
        except ValueError:
            raise ValueError("is not symbols as space-separated numbers, e.g. '3 17 5'") from None

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(str(i - self.offset) for i in ids if i >= self.offset)

    def unknown(self, text: str) -> list[str]:
        return []  # a number outside the vocabulary is refused (lnexp.decode.search.check_prompt)

    def to_json(self) -> str | None:
        return None


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` (bpe or word) with lnexp's specials at ids 0-3."""

    def __init__(self, tokenizer: Any, kind: str) -> None:
        self.tokenizer, self.kind = tokenizer, kind
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        try:
            return self.tokenizer.encode(text).ids
        except TypeError:  # lone surrogates: the Rust side takes only valid Unicode
            raise ValueError("is not valid UTF-8 text") from None

    def encode_all(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once (in parallel threads)."""
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`: PAD, BOS and EOS dropped, an unknown word shown as <unk>; a byte-level
        BPE's bytes that are not valid UTF-8 (a character cut off) as \\xNN escapes, as ByteTokenizer
        writes them (the library's decoder would put U+FFFD in their place)."""
        ids = [i for i in ids if i >= UNK]
        if self.kind != "bpe":
            return self.tokenizer.decode(ids, skip_special_tokens=False)
        tokens = [self.tokenizer.id_to_token(i) or "" for i in ids]
        data = b"".join(token.encode() if token in SPECIAL_TOKENS else bytes(_BYTE_OF[c] for c in token)
                        for token in tokens)
        return data.decode("utf-8", errors="backslashreplace")

    def unknown(self, text: str) -> list[str]:
        """The words of `text` this tokenizer reads as <unk> (a word tokenizer's out-of-vocabulary words)."""
        encoding = self.tokenizer.encode(text)
        return [text[a:b] for i, (a, b) in zip(encoding.ids, encoding.offsets) if i == UNK]

    def to_json(self) -> str | None:
        return self.tokenizer.to_str()


Tokenizer = ByteTokenizer | SymbolTokenizer | HFTokenizer


def _hf() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ValueError("data.tokenizer bpe and word need Hugging Face tokenizers: "
                         "pip install 'lnexp[tokenizers]'") from None
    return tokenizers


def train_tokenizer(kind: str, vocab_size: int, texts: list[str], cache: Path | None = None) -> HFTokenizer:
    """A `kind` (bpe or word) tokenizer of at most vocab_size tokens trained on `texts` (the training
    split), read from `cache` when it already holds one for the same texts and settings."""
    tokenizers = _hf()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    key = hashlib.sha1(f"{kind}|{vocab_size}|{tokenizers.__version__}".encode())
    for text in texts:
        key.update(hashlib.sha1(text.encode("utf-8", errors="surrogatepass")).digest())
    file = cache / f"tokenizer-{kind}-{vocab_size}-{key.hexdigest()[:16]}.json" if cache else None
    if file is not None and file.exists():
        try:
            return HFTokenizer(tokenizers.Tokenizer.from_file(str(file)), kind)
        except Exception:  # a corrupt cache is retrained, never trusted
            pass
    if kind == "bpe":
        tokenizer = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    else:
        tokenizer = tokenizers.Tokenizer(models.WordLevel(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                            show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if file is not None:
        from lnexp.core.files import atomic_write

        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(file, lambda f: f.write(tokenizer.to_str().encode()))
        except OSError:  # an unwritable cache only costs the training next time
            pass
    return HFTokenizer(tokenizer, kind)


def read_tokenizer(path: Path, kind: str) -> HFTokenizer:
    """A run's saved tokenizer.json; ValueError naming the file if it cannot be read."""
    tokenizers = _hf()
    try:
        return HFTokenizer(tokenizers.Tokenizer.from_file(str(path)), kind)
    except Exception as exc:
        why = "no such file" if not path.exists() else str(exc).splitlines()[0][:200]
        raise ValueError(f"{path}: cannot read the run's tokenizer ({why})") from None


def run_tokenizer(run: Path, config: Any) -> Tokenizer:
    """The tokenizer a run was trained with: its tokenizer.json (bpe, word), else what its data
    source implies (bytes; numbered symbols for seq2seq tasks and pre-tokenised corpora)."""
    d = config.data
    if d.tokenizer != "byte":
        return read_tokenizer(run / TOKENIZER_FILE, d.tokenizer)
    if d.source == "seq2seq":
        return SymbolTokenizer(d.vocab_size + SPECIALS, SPECIALS)
    if d.source == "tokens":
        return SymbolTokenizer(d.vocab_size)
    return ByteTokenizer(SPECIALS if is_seq2seq(d.source, config.model.arch) else 0)
