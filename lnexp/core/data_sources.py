"""Data sources (`data.source`): one declaration each, in the manner of the layouts, norms and probes.

A source says which `data.*` keys it reads and which it needs, which `data.task` values it takes,
whether its data is text (so `data.tokenizer` applies: bytes by default, BPE or words) and whether it
gives source/target pairs (always, never, or with `model.arch: encoder_decoder`). Everything else
derives from these declarations: the config's allowed values and consistency rules, the warnings on
keys that do nothing, the loader's dispatch, whether a run is sequence-to-sequence, and the unit of
its loss (nats per byte for byte-level text, else per token). The loaders themselves live in
lnexp.data.sources (named here as "module:function": this module imports no torch).

A plugin adds a source with `register_source(DataSource(...))` and a loader `fn(data_config, seq2seq)`
returning a `Data` (see lnexp.data.sources).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from lnexp.core.registry import Registry

ARCHES = ("decoder", "encoder_decoder")


@dataclass(frozen=True)
class DataSource:
    """`keys`: the `data.*` keys it reads; `required`: those a config must set (with why, or ""); `tasks`: its
    `data.task` values (none: it takes no task); `text`: a tokenizer applies; `pairs`: it gives
    (source, target) pairs "always" (an encoder-decoder's data), "never" (a language model's), or
    "with_encoder_decoder" (pairs under `model.arch: encoder_decoder`, text otherwise); `loader`:
    "module:function" or a function (data_config, seq2seq) -> Data."""

    name: str
    title: str
    loader: Callable[..., Any] | str
    keys: tuple[str, ...] = ()
    required: dict[str, str] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()
    text: bool = False
    pairs: Literal["always", "never", "with_encoder_decoder"] = "never"

    def load(self, data: Any, seq2seq: bool) -> Any:
        """The source's data (torch is imported here, by the loader's module)."""
        loader = self.loader
        if isinstance(loader, str):
            module, _, function = loader.partition(":")
            loader = getattr(importlib.import_module(module), function)
        return loader(data, seq2seq)

    def seq2seq(self, arch: str) -> bool:
        """Whether the data is source/target pairs under `model.arch` arch."""
        return self.pairs == "always" or (self.pairs == "with_encoder_decoder" and arch == "encoder_decoder")

    def arches(self) -> tuple[str, ...]:
        """The `model.arch` values it serves."""
        return {"always": ("encoder_decoder",), "never": ("decoder",)}.get(self.pairs, ARCHES)


DATA_SOURCES: Registry[DataSource] = Registry("data source")


def register_source(source: DataSource) -> DataSource:
    """Add a source (a plugin's or a built-in): its name becomes a `data.source` value."""
    if not set(source.required) <= set(source.keys):
        raise ValueError(f"data source {source.name!r}: required keys must be among its keys")
    return DATA_SOURCES.add(source.name, source)


def is_seq2seq(source: str, arch: str) -> bool:
    return DATA_SOURCES[source].seq2seq(arch)


def loss_unit(data: dict[str, Any]) -> str:
    """What a run's loss is per, from its config's `data` section (a run folder's, not validated):
    "byte" for byte-level text, "token" otherwise (a trained tokenizer's tokens, symbols, ids)."""
    source = DATA_SOURCES.get(data.get("source", DEFAULT_SOURCE))
    byte_level = source is not None and source.text and data.get("tokenizer", "byte") == "byte"
    return "byte" if byte_level else "token"


def read_keys(data: Any, arch: str) -> set[str]:
    """The `data.*` keys a config's source reads, given its tokenizer, task and `model.arch`: the rest
    have no effect (lnexp.core.config's warnings)."""
    source = DATA_SOURCES[data.source]
    keys = {*source.keys, "source"}
    if source.text:  # and a trained tokenizer's size
        keys |= {"tokenizer", *(("vocab_size",) if data.tokenizer != "byte" else ())}
    if "seed" in keys and data.task != "translate":  # the seed of the made-up languages
        keys.discard("seed")
    if source.pairs == "with_encoder_decoder":  # hf: a text column, or a source and a target column
        keys -= {"text_field"} if source.seq2seq(arch) else {"source_field", "target_field"}
    return keys


LM_TASKS = ("random", "copy", "reverse")
SEQ2SEQ_TASKS = ("reverse", "sort", "copy_noise", "translate")
SOURCES = "lnexp.data.sources"

DEFAULT_SOURCE = register_source(DataSource(
    "stdlib", "the bytes of Python's own standard library (nothing downloaded)", f"{SOURCES}:load_stdlib",
    keys=("max_bytes", "val_fraction"), text=True)).name
register_source(DataSource(
    "text", "a text file of yours", f"{SOURCES}:load_text", keys=("path", "val_fraction"),
    required={"path": ""}, text=True))
register_source(DataSource(
    "synthetic", "sequences made on the fly: random, copy or reverse", f"{SOURCES}:load_synthetic",
    keys=("task", "vocab_size"), tasks=LM_TASKS))
register_source(DataSource(
    "seq2seq", "source/target pairs made on the fly (reverse, sort, copy_noise, translate)",
    f"{SOURCES}:load_seq2seq", keys=("task", "vocab_size", "seed"), tasks=SEQ2SEQ_TASKS, pairs="always"))
register_source(DataSource(
    "pairs", "a file of source<TAB>target lines", f"{SOURCES}:load_pairs", keys=("path", "val_fraction"),
    required={"path": ""}, text=True, pairs="always"))
register_source(DataSource(
    "tokens", "pre-tokenised ids (.bin as nanoGPT writes them, or .npy)", f"{SOURCES}:load_tokens",
    keys=("path", "val_path", "token_dtype", "vocab_size", "val_fraction"),
    required={"path": "", "vocab_size": "the ids are < vocab_size"}))
register_source(DataSource(
    "hf", "a Hugging Face dataset (a hub name or a local folder of data files)", f"{SOURCES}:load_hf",
    keys=("dataset", "config", "split", "val_split", "text_field", "source_field", "target_field",
          "val_fraction"), required={"dataset": "a dataset name or a local folder"}, text=True,
    pairs="with_encoder_decoder"))
DATA_SOURCES.seal()
