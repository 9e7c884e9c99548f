"""Translating with an encoder-decoder: cached decoding, greedy and beam, scores, the translate command,
train.eval_bleu_every and compare --metric."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core.config import ModelConfig
from lnexp.core.model import EncoderDecoder, KVCache
from lnexp.data.sources import Seq2SeqTask
from lnexp.data.tokenizers import BOS, EOS
from lnexp.decode import translate as tr
from lnexp.decode.search import beam_search, generate, greedy

runner = CliRunner()


def model(norm: str = "pre", seed: int = 0) -> EncoderDecoder:
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="encoder_decoder", n_layers=2, d_model=16, n_heads=2, d_ff=32, max_seq_len=24,
                      norm=norm)
    return EncoderDecoder(cfg, 19).eval()


def sources(n: int = 6) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return [(3 + torch.randint(16, (int(torch.randint(2, 9, (1,), generator=generator)),),
                               generator=generator)).tolist() for _ in range(n)]


@pytest.mark.parametrize("norm", ["post", "pre", "admin"])
def test_cached_decoding_equals_the_full_forward(norm):
    m = model(norm)
    src = torch.tensor([sources(1)[0] + [EOS]])
    tgt = torch.tensor([[BOS, 5, 9, 4, 7]])
    with torch.no_grad():
        full = m(src, tgt)[0]
        memory, mask = m.encode(src)
        cache = KVCache(2, cross=True)
        steps = torch.cat([m.decode(tgt[:, :2], memory, mask, cache)]
                          + [m.decode(tgt[:, i:i + 1], memory, mask, cache) for i in range(2, 5)], dim=1)
    assert torch.allclose(full, steps, atol=1e-5)
    uncached = generate(m, [BOS], greedy, max_new_tokens=8, sources=src, use_cache=False)[0]
    cached = generate(m, [BOS], greedy, max_new_tokens=8, sources=src)[0]
    assert cached.ids == uncached.ids
    assert cached.token_logprobs == pytest.approx(uncached.token_logprobs, abs=1e-5)


def test_translate_greedy_equals_beam_with_one_beam():
    m = model()
    srcs = sources()
    batched = tr.translate_ids(m, srcs, seq_len=20)  # greedy: all sources in one padded batch
    one_beam = tr.translate_ids(m, srcs, seq_len=20, strategy="beam", beams=1, alpha=0.0)
    assert batched == one_beam
    for source, ids in zip(srcs, batched):  # and each equals its own unbatched greedy decoding
        alone = generate(m, [BOS], greedy, max_new_tokens=20, stop=[EOS],
                         sources=torch.tensor([source + [EOS]]))[0].ids
        assert ids == (alone[:-1] if alone[-1] == EOS else alone)
    wide = [beam_search(m, [BOS], 4, 1, 20, 0.0, stop=[EOS], sources=torch.tensor([s + [EOS]]))[0]
            for s in srcs]
    narrow = [beam_search(m, [BOS], 1, 1, 20, 0.0, stop=[EOS], sources=torch.tensor([s + [EOS]]))[0]
              for s in srcs]
    assert all(w.logprob >= n.logprob - 1e-4 for w, n in zip(wide, narrow))


def test_bleu_of_a_perfect_translation_is_100_and_of_an_empty_one_0():
    refs = ["the cat sat on the mat", "a b c d e f", "where should the norm go"]
    assert tr.scores(refs, refs) == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0),
                                     "exact_match": 1.0}
    empty = tr.scores(["", "", ""], refs)
    assert empty["bleu"] == 0.0 and empty["chrf"] == 0.0 and empty["exact_match"] == 0.0
    half = tr.scores(["the cat sat on the mat", "", ""], refs)
    assert 0 < half["bleu"] < 100 and half["exact_match"] == pytest.approx(1 / 3)


def test_synthetic_tasks_score_their_own_examples():
    task = Seq2SeqTask("reverse", 16)
    task.check(12)
    pairs = task.eval_pairs(5)
    assert pairs == task.eval_pairs(5)  # the same examples every call
    for source, target, reference in pairs:
        assert target == source[::-1] and reference == " ".join(str(t - 3) for t in target)
    result = tr.evaluate(model(), task, seq_len=12, n=5)
    assert [e["reference"] for e in result["examples"]] == [r for _, _, r in pairs]
    assert [e["source"] for e in result["examples"]] == [" ".join(str(t - 3) for t in s) for s, _, _ in pairs]
    hypotheses = [e["translation"] for e in result["examples"]]
    assert {k: result[k] for k in ("bleu", "chrf", "exact_match")} == tr.scores(hypotheses,
                                                                                [r for _, _, r in pairs])


def write_run_config(tmp_path: Path, **train) -> Path:
    path = tmp_path / "translate.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"arch": "encoder_decoder", "n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 32,
                  "max_seq_len": 16, "norm": "pre"},
        "data": {"source": "seq2seq", "task": "translate", "vocab_size": 16},
        "optim": {"lr": 3e-3},
        "train": {"steps": 6, "batch_size": 4, "seq_len": 12, "eval_every": 3, "eval_batches": 1, **train},
        "log": {"grad_every": 3, "probes": []}, "run": {"dir": str(tmp_path / "runs"), "name": "tr"}}))
    return path


def test_eval_bleu_every_logs_scores_that_translate_eval_and_compare_read(tmp_path):
    result = runner.invoke(app, ["train", str(write_run_config(tmp_path, eval_bleu_every=3)), "--quiet"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "tr"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "bleu" in r]
    assert [r["step"] for r in scored] == [0, 3, 6]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_bleu"] == scored[-1]["bleu"] and "final_chrf" in summary
    evaluated = runner.invoke(app, ["translate", str(run), "--eval", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    scores = json.loads(evaluated.stdout)
    assert scores["pairs"] == tr.EVAL_PAIRS
    assert scores["bleu"] == pytest.approx(scored[-1]["bleu"]) and scores["chrf"] == pytest.approx(
        scored[-1]["chrf"])
    text = scores["examples"][0]["source"]
    translated = runner.invoke(app, ["translate", str(run), "--text", text])
    assert translated.exit_code == 0 and translated.stdout == scores["examples"][0]["translation"] + "\n"
    (tmp_path / "in.txt").write_text(f"{text}\n\n{text}\n")
    both = runner.invoke(app, ["translate", str(run), "--input", str(tmp_path / "in.txt"),
                               "--strategy", "beam", "--beams", "1", "--length-penalty", "0"])
    assert both.exit_code == 0 and both.stdout == translated.stdout * 2
    figure = tmp_path / "bleu.png"
    compared = runner.invoke(app, ["compare", str(run), "--metric", "bleu", "--plot", str(figure)])
    assert compared.exit_code == 0 and figure.stat().st_size > 0 and "final BLEU" in compared.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("translate")
    result = runner.invoke(app, ["train", str(write_run_config(tmp_path)), "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / "tr"


@pytest.mark.parametrize("args,message", [
    ([], "give one of --text, --input FILE or --eval"),
    (["--text", "1 2", "--eval"], "give one of"),
    (["--text", "1 x"], "the source is not symbols as space-separated numbers"),
    (["--text", "1 2", "--strategy", "top-k"], "'top-k' is not one of 'greedy', 'beam'"),
    (["--input", "/nonexistent/file"], "/nonexistent/file: cannot read (no such file)"),
])
def test_translate_refuses_bad_input_in_one_line(trained, args, message):
    bad = runner.invoke(app, ["translate", str(trained), *args])
    assert bad.exit_code == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_translate_refuses_a_decoder_run_and_train_refuses_bleu_without_one(tmp_path, write_config):
    config = write_config(run={"name": "tiny"})
    assert runner.invoke(app, ["train", str(config), "--quiet"]).exit_code == 0
    refused = runner.invoke(app, ["translate", str(tmp_path / "runs" / "tiny"), "--text", "a"])
    assert refused.exit_code == 2 and "translate needs a model.arch encoder_decoder run" in refused.stderr
    no_bleu = runner.invoke(app, ["train", str(write_config(train={"eval_bleu_every": 5}))])
    assert no_bleu.exit_code == 2
    assert "train.eval_bleu_every: needs model.arch encoder_decoder" in no_bleu.stderr
