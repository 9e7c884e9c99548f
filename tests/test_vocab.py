"""Tokenizers (byte, bpe, word) and the data sources beyond the stdlib: pre-tokenised ids, Hugging Face
datasets (read from local files through datasets.load_dataset)."""

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core.config import ConfigError, DataConfig, load_config
from lnexp.data.sources import bits_per_byte, load_data
from lnexp.data.tokenizers import ByteTokenizer, read_tokenizer, train_tokenizer

runner = CliRunner()

WORDS = ("the layer norm sits before each block and after the last one while the residual stream grows "
         "with depth so gradients near the output are large without warm up").split()


def sample_text(lines: int = 300, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + ".\n"
                   for _ in range(lines))


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "own.txt"
    path.write_text(sample_text())
    return path


def test_bpe_round_trips_text(tmp_path):
    tokenizer = train_tokenizer("bpe", 300, [sample_text()], tmp_path)
    for text in ("the layer norm sits before each block.\n", "unseen wörds, ünïcode € and\ttabs  ",
                 "def f(x):\n    return x ** 2\n", ""):
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
    assert len(tokenizer.encode("the layer norm sits")) < len(b"the layer norm sits")  # merges learnt
    assert tokenizer.vocab_size <= 300
    assert [tokenizer.tokenizer.id_to_token(i) for i in range(3)] == ["<pad>", "<bos>", "<eos>"]
    cached = train_tokenizer("bpe", 300, [sample_text()], tmp_path)  # the cache: read, not retrained
    assert cached.to_json() == tokenizer.to_json() and len(list(tmp_path.glob("tokenizer-*.json"))) == 1


def test_word_tokenizer_maps_unseen_words_to_unk_and_bytes_escape_invalid_utf8(tmp_path):
    word = train_tokenizer("word", 50, [sample_text()], tmp_path)
    assert word.decode(word.encode("the layer norm")) == "the layer norm"
    assert word.encode("zebra") == [3]  # <unk>
    as_bytes = ByteTokenizer(offset=3)
    assert as_bytes.encode("é") == [0xC3 + 3, 0xA9 + 3] and as_bytes.decode([1, 0xC3 + 3, 0xA9 + 3, 2]) == "é"
    with pytest.raises(ValueError, match="UTF-8"):
        as_bytes.encode("\udcff")


def test_text_corpus_is_tokenised_with_a_tokenizer_trained_on_the_training_split_only(text_file):
    cfg = DataConfig(source="text", path=str(text_file), tokenizer="bpe", vocab_size=300, val_fraction=0.2)
    corpus = load_data(cfg, "decoder")
    raw = text_file.read_bytes()
    n_val = int(len(raw) * 0.2)
    expected = train_tokenizer("bpe", 300, [raw[:-n_val].decode()])  # trained here without a cache
    assert corpus.tokenizer.to_json() == expected.to_json()
    assert corpus.train.tolist() == expected.encode(raw[:-n_val].decode())
    assert corpus.val.tolist() == expected.encode(raw[-n_val:].decode())
    assert corpus.vocab_size == corpus.tokenizer.vocab_size > int(corpus.train.max())
    assert corpus.bytes_per_token == pytest.approx(n_val / len(corpus.val))
    assert bits_per_byte(2.0, corpus) == pytest.approx(2.0 * len(corpus.val) / n_val / math.log(2))
    assert 0 < corpus.unigram_entropy() < math.log(corpus.vocab_size)


def tiny_lm(tmp_path: Path, data: dict, name: str) -> Path:
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 32},
        "data": data, "optim": {"lr": 3e-3},
        "train": {"steps": 8, "batch_size": 4, "seq_len": 16, "eval_every": 4, "eval_batches": 1},
        "log": {"grad_every": 4, "probes": []}, "run": {"dir": str(tmp_path / "runs"), "name": name}}))
    result = runner.invoke(app, ["train", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / name


def test_a_bpe_run_records_its_tokenizer_and_generates_text_through_it(tmp_path, text_file):
    run = tiny_lm(tmp_path, {"source": "text", "path": str(text_file), "tokenizer": "bpe", "vocab_size": 300},
                  "bpe")
    tokenizer = read_tokenizer(run / "tokenizer.json", "bpe")
    weights = torch.load(run / "model.pt", weights_only=True)
    meta = json.loads((run / "meta.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    # the tokenizer's vocabulary is the model's
    assert meta["vocab_size"] == tokenizer.vocab_size == weights["tok_emb.weight"].shape[0]
    assert summary["final_val_bits_per_byte"] > 0
    text_file.unlink()  # decoding needs only the run folder
    result = runner.invoke(app, ["generate", str(run), "--prompt", "the layer", "--max-new-tokens", "6",
                                 "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["prompt_ids"] == tokenizer.encode("the layer")
    assert len(out["outputs"][0]["ids"]) == 6
    assert out["outputs"][0]["text"] == tokenizer.decode(out["outputs"][0]["ids"])
    stats = runner.invoke(app, ["decode-stats", str(run), "--n", "1", "--max-new-tokens", "4", "--json",
                                "--plot", str(tmp_path / "stats.png")])
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.stdout)["prompts"][0] == "def "


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_bin_and_npy_token_files_load_the_ids_written(tmp_path, dtype):
    ids = np.random.default_rng(0).integers(0, 70_000 if dtype == "uint32" else 1000, 500).astype(dtype)
    ids.tofile(tmp_path / "train.bin")
    vocab = int(ids.max()) + 1
    corpus = load_data(DataConfig(source="tokens", path=str(tmp_path / "train.bin"), token_dtype=dtype,
                                  vocab_size=vocab, val_fraction=0.2), "decoder")
    assert torch.cat([corpus.train, corpus.val]).long().tolist() == ids.tolist()
    assert len(corpus.val) == 100 and corpus.vocab_size == vocab and corpus.bytes_per_token is None
    x, y = corpus.batch("train", 3, 8, torch.Generator().manual_seed(0))
    assert x.dtype == torch.long and (x[:, 1:] == y[:, :-1]).all()
    np.save(tmp_path / "val.npy", ids[:50])
    split = load_data(DataConfig(source="tokens", path=str(tmp_path / "train.bin"), token_dtype=dtype,
                                 val_path=str(tmp_path / "val.npy"), vocab_size=vocab), "decoder")
    assert split.train.long().tolist() == ids.tolist() and split.val.long().tolist() == ids[:50].tolist()
    with pytest.raises(ConfigError, match=f"holds id {vocab - 1}, outside data.vocab_size"):
        load_data(DataConfig(source="tokens", path=str(tmp_path / "train.bin"), token_dtype=dtype,
                             vocab_size=vocab - 1), "decoder")


def test_token_files_refuse_what_they_cannot_read_in_one_line(tmp_path, write_config):
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    np.save(tmp_path / "floats.npy", np.zeros(10, dtype=np.float32))
    cases = [({"path": str(tmp_path / "odd.bin")}, "3 bytes is not a whole number of uint16 ids"),
             ({"path": str(tmp_path / "floats.npy")}, "expected a 1-D uint16 or uint32 array, got 1-D "
                                                       "float32"),
             ({"path": str(tmp_path / "missing.bin")}, "data.path: no such file")]
    for data, message in cases:
        config = write_config(data={"source": "tokens", "vocab_size": 16, **data})
        result = runner.invoke(app, ["train", str(config)])
        assert result.exit_code == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
    unsized = tmp_path / "unsized.yaml"
    unsized.write_text(yaml.safe_dump({"data": {"source": "tokens", "path": str(tmp_path / "odd.bin")}}))
    with pytest.raises(ConfigError, match="data.vocab_size: required when data.source is tokens"):
        load_config(unsized)


@pytest.fixture
def local_dataset(tmp_path: Path) -> Path:
    """A dataset as local files: load_dataset(folder) finds the train and validation splits."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    text = sample_text(40).splitlines()
    for split, lines in (("train", text[:30]), ("validation", text[30:])):
        (folder / f"{split}.jsonl").write_text("".join(
            json.dumps({"text": line, "translation": {"en": line, "rev": " ".join(reversed(line.split()))},
                        "n": len(line)}) + "\n"
            for line in lines))
    return folder


def test_hf_source_reads_a_local_dataset_through_load_dataset(local_dataset):
    lines = sample_text(40).splitlines()
    corpus = load_data(DataConfig(source="hf", dataset=str(local_dataset), val_split="validation"), "decoder")
    assert bytes(corpus.train.tolist()).decode() == "".join(line + "\n" for line in lines[:30])
    assert bytes(corpus.val.tolist()).decode() == "".join(line + "\n" for line in lines[30:])
    assert "Hugging Face dataset" in corpus.description
    pairs = load_data(DataConfig(source="hf", dataset=str(local_dataset), source_field="translation.en",
                                 target_field="translation.rev", val_fraction=0.1), "encoder_decoder")
    assert len(pairs.train) == 27 and len(pairs.val) == 3  # the last tenth of the train split
    assert pairs.references[0] == " ".join(reversed(lines[27].split()))
    assert pairs.tokenizer.decode(pairs.val[0][0]) == lines[27]


def test_hf_bad_field_or_split_is_a_one_line_error(local_dataset, write_config):
    cases = [({"text_field": "body"}, "data.text_field: 'body' is not a column of"),
             ({"split": "tarin"}, "data.split: " + str(local_dataset) + ": Unknown split \"tarin\""),
             ({"val_split": "dev"}, "data.val_split:"),
             ({"text_field": "n"}, "data.text_field: 'n' is not a column of strings"),
             ({"text_field": "translation.fr"}, "not every row's translation has the key 'fr'"),
             ({"dataset": str(local_dataset / "nowhere")}, "data.dataset:")]
    for extra, message in cases:
        config = write_config(data={"source": "hf", "dataset": str(local_dataset), **extra})
        result = runner.invoke(app, ["train", str(config)])
        assert result.exit_code == 2, result.output
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("data,arch,message", [
    ({"source": "synthetic", "tokenizer": "bpe"}, "decoder", "data.tokenizer: applies to text"),
    ({"source": "stdlib", "tokenizer": "bpe", "vocab_size": 100}, "decoder",
     "data.vocab_size: must be >= 260"),
    ({"source": "hf"}, "decoder", "data.dataset: required when data.source is hf"),
    ({"source": "hf", "dataset": "d", "source_field": "en"}, "encoder_decoder",
     "data.target_field: required when data.source is hf with model.arch encoder_decoder"),
])
def test_tokenizer_and_source_keys_are_checked_together(write_config, data, arch, message):
    config = write_config(data=data, model={"arch": arch})
    with pytest.raises(ConfigError, match=message):
        load_config(config)
