"""A run's trained model loaded back for decoding (`generate`, `decode-stats`, `translate`): its validated
config, its tokenizer, its final weights (model.pt, torch.load with weights_only=True), and the
plugins its layouts or norms come from, only from files the user trusts (lnexp.core.plugins.trusted)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lnexp.core import plugins
from lnexp.core.model import build_model
from lnexp.data.tokenizers import run_tokenizer
from lnexp.decode.search import DecodeError, Loaded


def load_model(path: str | Path, arch: str = "decoder", trust: Sequence[str | Path] = ()) -> Loaded:
    """The trained model of a run folder of `model.arch` arch, with its config and tokenizer. `trust`:
    the `--plugin` files the user trusts as the plugins the run's config names."""
    from lnexp.core.config import ConfigError, validate
    from lnexp.run.reader import RunError, load_run

    path = Path(path)
    try:
        run = load_run(path)
    except RunError as exc:
        raise DecodeError(str(exc)) from None
    if "config.yaml unreadable" in run.notes or not run.config:
        raise DecodeError(f"{path}: config.yaml missing or unreadable")
    needed = plugins.trusted(run.config.get("plugins", []), run.meta.get("plugins"), trust, path)
    try:
        config = validate({**run.config, "plugins": needed}, source=str(path / "config.yaml"))
    except ConfigError as exc:
        raise DecodeError(str(exc)) from None
    if config.model.arch != arch:
        command = "translate" if arch == "encoder_decoder" else "decoding"
        raise DecodeError(f"{path}: {command} needs a model.arch {arch} run; this one is {config.model.arch}")
    weights = path / "model.pt"
    if not weights.is_file():
        raise DecodeError(f"{path}: no model.pt (run status: {run.status}; a run writes it when it ends)")
    try:
        tokenizer = run_tokenizer(path, config)
    except ValueError as exc:
        raise DecodeError(str(exc)) from None
    vocab = run.meta.get("vocab_size")  # runs before it was recorded: synthetic or bytes
    if not isinstance(vocab, int):
        vocab = config.data.vocab_size if config.data.source == "synthetic" else tokenizer.vocab_size
    model = build_model(config.model, vocab)
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as exc:  # a truncated file, or weights of another shape
        raise DecodeError(f"{weights}: cannot load ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                          ) from None
    return Loaded(model.eval(), config, tokenizer)
