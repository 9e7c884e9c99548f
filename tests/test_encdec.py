"""`model.arch: encoder_decoder` and its sequence-to-sequence data (`data.source: seq2seq | pairs`)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core.config import DataConfig, ModelConfig
from lnexp.core.layouts import admin_omega, deepnorm_encdec
from lnexp.core.model import PAD, EncoderDecoder, build_model
from lnexp.data.sources import LEXICON, Seq2SeqTask, load_data, make_languages
from lnexp.data.tokenizers import BOS, EOS, SPECIALS
from lnexp.run.probes import split_name
from lnexp.run.reader import load_run

runner = CliRunner()
LAYOUTS = ["post", "pre", "sandwich", "deepnorm", "admin"]
V = 20
SEQ2SEQ = {"source": "seq2seq", "task": "reverse", "vocab_size": 16}


def make(**kw) -> EncoderDecoder:
    torch.manual_seed(0)
    base = dict(arch="encoder_decoder", n_layers=2, d_model=16, n_heads=2, d_ff=32, max_seq_len=16)
    return build_model(ModelConfig(**{**base, **kw}), vocab_size=V)


def tokens(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(SPECIALS, V, shape, generator=torch.Generator().manual_seed(seed))


def train(path, *extra: str):
    return runner.invoke(app, ["train", str(path), "--quiet", *extra])


# --- the model ------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["post", "pre"])
def test_encoder_sees_the_whole_source_and_the_decoder_only_the_past(norm):
    model = make(norm=norm).eval()
    src, tgt = tokens(2, 8), tokens(2, 8, seed=1)
    changed_src, changed_tgt = src.clone(), tgt.clone()
    changed_src[:, -1] = (src[:, -1] - SPECIALS + 1) % (V - SPECIALS) + SPECIALS
    changed_tgt[:, 5] = (tgt[:, 5] - SPECIALS + 1) % (V - SPECIALS) + SPECIALS
    with torch.no_grad():
        memory, changed_memory = model.encode(src)[0], model.encode(changed_src)[0]
        logits, changed_logits = model(src, tgt)[0], model(src, changed_tgt)[0]
    assert not torch.allclose(memory[:, 0], changed_memory[:, 0])  # a later token reaches the first
    assert torch.equal(logits[:, :5], changed_logits[:, :5])  # causal: earlier positions untouched
    assert not torch.allclose(logits[:, 5:], changed_logits[:, 5:])


def test_cross_attention_reads_the_source_and_ignores_its_padding():
    model = make().eval()
    src, tgt = tokens(2, 8), tokens(2, 6, seed=1)
    other = src.clone()
    other[:, 2] = (src[:, 2] - SPECIALS + 1) % (V - SPECIALS) + SPECIALS
    padded = torch.cat([src, torch.full((2, 4), PAD)], dim=1)
    with torch.no_grad():
        logits = model(src, tgt)[0]
        assert not torch.allclose(logits, model(other, tgt)[0])
        assert torch.allclose(logits, model(padded, tgt)[0], atol=1e-5)  # PAD keys are masked


def test_pad_targets_are_ignored_in_the_loss():
    model = make()
    src, tgt_in, tgt_out = tokens(3, 8), tokens(3, 8, seed=1), tokens(3, 8, seed=2)
    tgt_out[0, 4:] = PAD
    tgt_out[2, 1:] = PAD
    logits, loss = model(src, tgt_in, tgt_out)
    keep = tgt_out != PAD
    expected = -F.log_softmax(logits.float(), -1).gather(-1, tgt_out[..., None])[..., 0][keep].mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_parameter_names_say_the_stack_layer_and_sublayer():
    names = {n for n, _ in make(norm="post").named_parameters()}
    assert {"enc.0.attn.q.weight", "enc.1.ffn.fc2.weight", "enc.0.attn_norm.weight",
            "enc.0.ffn_norm.weight", "dec.1.attn.v.weight", "dec.0.cross.v.weight", "dec.0.cross.out.weight",
            "dec.1.ffn.fc2.weight", "dec.0.cross_norm.weight", "tok_emb.weight"} <= names
    assert not any(n.startswith("enc.0.cross") for n in names)
    assert {n for n in names if "final" in n} == set()
    pre = {n for n, _ in make(norm="pre").named_parameters()}
    assert {"enc_final_norm.weight", "dec_final_norm.weight"} <= pre
    sandwich = {n for n, _ in make(norm="sandwich").named_parameters()}
    assert "dec.0.cross_out_norm.weight" in sandwich and "enc.0.ffn_out_norm.weight" in sandwich
    admin = {n for n, _ in make(norm="admin").named_parameters()}
    assert {"enc.0.attn_skip", "enc.0.ffn_skip", "dec.0.attn_skip", "dec.0.cross_skip",
            "dec.0.ffn_skip"} <= admin
    assert split_name("enc.3.ffn.fc2.weight") == (3, "enc.ffn.fc2.weight")
    assert split_name("dec.3.cross.v.weight") == (3, "dec.cross.v.weight")
    assert split_name("blocks.3.ffn.fc2.weight") == (3, "ffn.fc2.weight")
    assert split_name("dec_final_norm.weight") == (None, "dec_final_norm.weight")


def test_layout_constants_count_each_stacks_sublayers():
    model = make(norm="admin")
    assert model.enc[0].attn_skip.item() == pytest.approx(admin_omega(2, 2))
    assert model.dec[1].cross_skip.item() == pytest.approx(admin_omega(2, 3))
    (enc_alpha, _), (dec_alpha, _) = deepnorm_encdec(2, 2)
    deep = make(norm="deepnorm")
    assert deep.enc[0].ffn_skip == enc_alpha and deep.dec[0].cross_skip == dec_alpha == (3 * 2) ** 0.25
    profiled = make(norm="admin", admin_init="profile")
    omegas = profiled.admin_profile_(tokens(2, 8), tokens(2, 8, seed=1))
    assert len(omegas) == 2 * 2 + 3 * 2
    assert omegas[0] == omegas[4] == 1.0 and all(w > 1.0 for w in omegas[1:4] + omegas[5:])


# --- the data ------------------------------------------------------------------------------------

def symbols(row: torch.Tensor) -> list[int]:
    return [t - SPECIALS for t in row.tolist() if t >= SPECIALS]


@pytest.mark.parametrize("task", ["reverse", "sort"])
def test_reverse_and_sort_targets_are_exact(task):
    data = Seq2SeqTask(task, 10)
    src, tgt_in, tgt_out = data.batch("train", 16, 12, torch.Generator().manual_seed(0))
    assert data.vocab_size == 13 and src.shape == tgt_in.shape == tgt_out.shape == (16, 12)
    for s, ti, to in zip(src, tgt_in, tgt_out):
        source, target = symbols(s), symbols(to)
        assert target == (source[::-1] if task == "reverse" else sorted(source))
        n = len(source)
        assert s[n] == EOS and (s[n + 1:] == PAD).all()
        assert ti[0] == BOS and symbols(ti) == target and to[n] == EOS and (to[n + 1:] == PAD).all()


def test_copy_noise_corrupts_about_a_tenth_of_the_source():
    src, _, tgt_out = Seq2SeqTask("copy_noise", 50).batch("train", 64, 32, torch.Generator().manual_seed(0))
    pairs = [(symbols(s), symbols(t)) for s, t in zip(src, tgt_out)]
    assert all(len(s) == len(t) for s, t in pairs)
    differ = sum(a != b for s, t in pairs for a, b in zip(s, t)) / sum(len(s) for s, _ in pairs)
    assert 0.04 < differ < 0.16


def test_translate_follows_its_rule_and_is_fixed_by_the_seed():
    a, b, c = Seq2SeqTask("translate", 32, seed=0), Seq2SeqTask("translate", 32, seed=0), \
        Seq2SeqTask("translate", 32, seed=1)
    assert a.languages == b.languages != c.languages
    batch = lambda task: task.batch("train", 8, 40, torch.Generator().manual_seed(5))  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(batch(a), batch(b)))
    source_words, target_words = make_languages(32, 0)
    assert len(source_words) == len(set(map(tuple, source_words))) == LEXICON
    lexicon = {tuple(s): t for s, t in zip(source_words, target_words)}
    src, _, tgt_out = batch(a)
    for s, t in zip(src, tgt_out):
        words = [lexicon[w] for w in split_words(symbols(s))]
        swapped = [words[j ^ 1] if (j ^ 1) < len(words) else words[j] for j in range(len(words))]
        assert split_words(symbols(t)) == [tuple(w) for w in swapped]


def split_words(seq: list[int]) -> list[tuple[int, ...]]:
    words, word = [], []
    for c in seq + [0]:
        if c == 0:
            words.append(tuple(word))
            word = []
        else:
            word.append(c)
    return words


def test_pairs_file_is_read_byte_level_with_the_last_lines_for_validation(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"abc\tcba\r\n\nhello\tolleh\nxy\tyx\nlast\ttsal\n")
    data = load_data(DataConfig(source="pairs", path=str(path), val_fraction=0.25), "encoder_decoder")
    assert data.vocab_size == 256 + SPECIALS and len(data.train) == 3 and len(data.val) == 1
    src, tgt_in, tgt_out = data.batch("val", 2, 8, torch.Generator().manual_seed(0))
    assert bytes(symbols(src[0])) == b"last" and bytes(symbols(tgt_out[0])) == b"tsal"
    assert tgt_in[0, 0] == BOS and tgt_out[0, 4] == EOS
    long, _, _ = data.batch("train", 16, 3, torch.Generator().manual_seed(0))  # truncated to seq_len
    assert long.shape == (16, 3)
    # training targets cba, olleh, yx: l twice, 8 other bytes once, and one EOS per line
    p = torch.tensor([2] + [1] * 8 + [3], dtype=torch.float64) / 13
    assert data.unigram_entropy() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-9)


def test_malformed_pairs_and_mismatched_arch_are_one_line_errors(tmp_path, write_config):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nno tab here\nc\td\n")
    result = train(write_config(model={"arch": "encoder_decoder"},
                                data={"source": "pairs", "path": str(bad)}))
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "data.path" in line and "line 2" in line
    result = train(write_config(model={"arch": "encoder_decoder"}))  # synthetic LM data
    assert result.exit_code == 2 and "data.source" in result.output
    result = train(write_config(data=SEQ2SEQ))  # seq2seq data, decoder-only model
    assert result.exit_code == 2 and "model.arch encoder_decoder" in result.output
    result = train(write_config(model={"arch": "encoder_decoder"}, data={**SEQ2SEQ, "task": "copy"}))
    assert result.exit_code == 2 and "data.task" in result.output


# --- training and probes ------------------------------------------------------------------------

@pytest.mark.parametrize("norm", LAYOUTS)
def test_every_layout_trains_one_step_from_the_cli(tmp_path, write_config, norm):
    extra = {"admin": {"admin_init": "profile", "norm_type": "rmsnorm"}}.get(norm, {})
    path = write_config(model={"arch": "encoder_decoder", "norm": norm, **extra},
                        data={**SEQ2SEQ, "task": "translate"}, run={"name": norm})
    result = train(path, "--set", "train.steps=1", "--set", "log.probes=[grad, act, output_change]")
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "runs" / norm)
    assert run.meta["status"] == "completed" and math.isfinite(run.summary["final_val_loss"])


def test_probes_name_the_stacks_and_compare_reads_them(tmp_path, write_config):
    for name, norm in (("post", "post"), ("pre", "pre")):
        path = write_config(model={"arch": "encoder_decoder", "norm": norm}, data=SEQ2SEQ, run={"name": name})
        assert train(path, "--set", "train.steps=2").exit_code == 0
    run = load_run(tmp_path / "runs" / "post")
    params = {p["param"] for p in run.probes if p["probe"] == "grad"}
    assert {"enc.ffn.fc2.weight", "dec.ffn.fc2.weight", "dec.cross.v.weight", "enc.attn.q.weight"} <= params
    assert not any(p.startswith("ffn.") for p in params)
    acts = [p["layer"] for p in run.probes if p["probe"] == "act" and p["step"] == 0]
    assert acts == [0, 1, 2]  # entering each decoder block, leaving the last
    result = runner.invoke(app, ["compare", str(tmp_path / "runs" / "post"), str(tmp_path / "runs" / "pre"),
                                 "--param", "dec.ffn.fc2", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["runs"][0]["profile"]
    expected = [p["value"] for p in run.probes if p["probe"] == "grad" and p["step"] == 0
                and p["param"] == "dec.ffn.fc2.weight"]
    assert shown["values"] == expected and len(expected) == 2
