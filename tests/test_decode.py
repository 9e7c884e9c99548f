import itertools
import json
import math
from pathlib import Path
from statistics import NormalDist

import pytest
import torch
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core.config import ModelConfig
from lnexp.core.model import KVCache, TransformerLM
from lnexp.data.tokenizers import ByteTokenizer
from lnexp.decode import search as dec
from lnexp.decode import stats as decode_stats
from lnexp.run.trained import load_model

runner = CliRunner()
V = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Decoding a tiny model is one small matmul after another: extra threads only synchronise (and
    on a busy machine spin), so these tests run on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(norm: str = "post", positional: str = "learned", max_seq_len: int = 16) -> TransformerLM:
    # Tied embeddings make an untrained model's next-token distribution peaked (each token predicts
    # itself), like a trained model's; an untied one is near-uniform, where beam and greedy are a toss-up.
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=max_seq_len, norm=norm,
                      positional=positional, tie_embeddings=True)
    return TransformerLM(cfg, vocab_size=V).eval()


PROMPTS = [[1, 2, 3], [7], [15, 0, 4, 4, 9], [3, 3, 3, 3]]


def test_beam_search_with_one_beam_is_greedy():
    model = tiny()
    for prompt in PROMPTS:
        [g] = dec.decode(model, prompt, "greedy", max_new_tokens=12)
        [b] = dec.beam_search(model, prompt, beams=1, max_new_tokens=12)
        assert b.ids == g.ids and b.logprob == pytest.approx(g.logprob, abs=1e-6)


def test_beam_search_finds_at_least_greedys_joint_logprob():
    # Not a theorem for a pruned beam (greedy's prefix can fall out of the beam), but what it is for;
    # checked on several prompts and both layouts.
    for model in (tiny("post"), tiny("pre")):
        for prompt in PROMPTS:
            [g] = dec.decode(model, prompt, "greedy", max_new_tokens=12)
            best = dec.beam_search(model, prompt, beams=4, n_best=4, max_new_tokens=12)
            assert len(best) == 4 and best[0].logprob >= g.logprob - 1e-4
            assert [h.logprob for h in best] == sorted((h.logprob for h in best), reverse=True)
            assert len({tuple(h.ids) for h in best}) == 4


def test_beam_wide_enough_to_be_exhaustive_finds_the_most_probable_sequence():
    # With beams = V, two steps keep every prefix: beam search is then an exact search over V^2.
    model, prompt = tiny(), [1, 2, 3]
    with torch.no_grad():
        rows = torch.tensor([prompt + [a, b] for a, b in itertools.product(range(V), repeat=2)])
        logp = model(rows)[0].log_softmax(-1)
        joint = logp[:, 2, :].gather(-1, rows[:, 3:4]).squeeze(-1) + \
            logp[:, 3, :].gather(-1, rows[:, 4:5]).squeeze(-1)
    [best] = dec.beam_search(model, prompt, beams=V, max_new_tokens=2)
    assert best.ids == rows[joint.argmax(), 3:].tolist()
    assert best.logprob == pytest.approx(joint.max().item(), abs=1e-5)


def test_sampling_at_temperature_near_zero_is_greedy():
    model = tiny()
    for prompt in PROMPTS:
        [g] = dec.decode(model, prompt, "greedy", max_new_tokens=10)
        cold = dec.decode(model, prompt, "sample", n=4, temperature=1e-6, max_new_tokens=10)
        assert all(o.ids == g.ids and o.logprob == pytest.approx(g.logprob) for o in cold)


def test_top_k_with_k_1_and_top_p_with_a_tiny_p_are_greedy():
    model = tiny("pre")
    for prompt in PROMPTS:
        [g] = dec.decode(model, prompt, "greedy", max_new_tokens=10)
        for strategy, options in (("top-k", {"k": 1}), ("top-p", {"p": 1e-6})):
            outs = dec.decode(model, prompt, strategy, n=3, max_new_tokens=10, **options)
            assert all(o.ids == g.ids for o in outs)


PROBS = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def chi_square_critical(df: int, level: float = 0.999) -> float:
    """Wilson-Hilferty: (X/df)^(1/3) is close to normal with mean 1 - 2/(9 df), variance 2/(9 df).
    For df = 5 this gives 20.75 (the exact 0.999 quantile is 20.52): accurate enough for a threshold."""
    z = NormalDist().inv_cdf(level)
    c = 2 / (9 * df)
    return df * (1 - c + z * math.sqrt(c)) ** 3


def draws(picker, logits: torch.Tensor, n: int = 20000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    tokens = picker(logits.expand(n, -1), generator)
    return torch.bincount(tokens, minlength=logits.shape[-1]).float()


def test_sample_frequencies_match_the_softmax():
    logits = PROBS.log()[None] + 3.0  # a shift the softmax must ignore
    for temperature in (1.0, 2.0):
        counts = draws(dec.make_picker("sample", temperature=temperature), logits)
        expected = (logits / temperature).softmax(-1)[0]
        assert chi_square(counts, expected) < chi_square_critical(df=len(PROBS) - 1)
    # and a wrong distribution (uniform) is rejected by the same test
    counts = draws(dec.make_picker("sample"), logits)
    assert chi_square(counts, torch.full((6,), 1 / 6)) > 10 * chi_square_critical(df=5)


def test_top_k_frequencies_match_the_renormalised_top_k():
    counts = draws(dec.make_picker("top-k", k=3), PROBS.log()[None])
    assert counts[3:].sum() == 0
    assert chi_square(counts[:3], PROBS[:3] / PROBS[:3].sum()) < chi_square_critical(df=2)


def test_top_p_never_leaves_the_nucleus():
    probs = torch.tensor([0.05, 0.5, 0.1, 0.2, 0.15])  # not sorted on purpose
    for p, nucleus in ((0.8, {1, 3, 4}), (0.45, {1}), (0.65, {1, 3}), (0.99, {0, 1, 2, 3, 4})):
        # the nucleus by hand: most probable first, until their sum reaches p
        order, mass, expected = sorted(range(5), key=lambda i: -probs[i]), 0.0, set()
        for i in order:
            if mass >= p:
                break
            expected.add(i)
            mass += float(probs[i])
        assert expected == nucleus
        assert set(dec.nucleus(probs.log()[None], p)[0].nonzero().flatten().tolist()) == nucleus
        counts = draws(dec.make_picker("top-p", p=p), probs.log()[None], n=5000)
        assert set(counts.nonzero().flatten().tolist()) == nucleus


@pytest.mark.parametrize("norm,positional", [("post", "learned"), ("pre", "sinusoidal")])
def test_cached_and_uncached_generation_agree(norm, positional):
    model = tiny(norm, positional)
    # 5 + 20 tokens overflow max_seq_len = 16: the sliding window is exercised too.
    for strategy in dec.STRATEGIES:
        cached = dec.decode(model, [15, 0, 4, 4, 9], strategy, n=3, beams=3, max_new_tokens=20)
        plain = dec.decode(model, [15, 0, 4, 4, 9], strategy, n=3, beams=3, max_new_tokens=20,
                           use_cache=False)
        for a, b in zip(cached, plain, strict=True):
            assert a.ids == b.ids
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_cache_fed_in_chunks_equals_one_full_forward():
    model = tiny("pre")
    x = torch.randint(V, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)[0]
        cache = KVCache(len(model.blocks))
        parts = [model(x[:, a:b], cache=cache)[0] for a, b in ((0, 5), (5, 6), (6, 10), (10, 12))]
    assert len(cache) == 12
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(x[:, :5], cache=cache)


def test_outputs_log_probabilities_are_the_models():
    model = tiny()
    prompt = [1, 2, 3]
    [out] = dec.decode(model, prompt, "top-p", p=0.7, temperature=1.5, seed=3, max_new_tokens=8)
    with torch.no_grad():
        seq = torch.tensor([prompt + out.ids])
        logp = model(seq)[0][0].log_softmax(-1)
    positions = range(len(prompt) - 1, seq.shape[1] - 1)
    direct = [logp[t, seq[0, t + 1]].item() for t in positions]
    entropies = [-(logp[t].exp() * logp[t]).sum().item() for t in positions]
    assert out.token_logprobs == pytest.approx(direct, abs=1e-5)
    assert out.entropies == pytest.approx(entropies, abs=1e-5)


def test_stop_ends_outputs_and_beam_ranks_by_length_penalised_score():
    model = tiny()
    outs = dec.decode(model, [1, 2], "sample", n=6, max_new_tokens=30, stop=[5])
    assert all(o.ids[-1] == 5 and 5 not in o.ids[:-1] or len(o.ids) == 30 and 5 not in o.ids
               for o in outs)
    assert any(len(o.ids) < 30 for o in outs)
    for alpha in (0.0, 1.0):
        best = dec.beam_search(model, [1, 2], beams=4, n_best=4, max_new_tokens=30, alpha=alpha, stop=[5])
        assert all(h.ids[-1] == 5 or len(h.ids) == 30 for h in best)
        assert all(h.score == pytest.approx(h.logprob / dec.length_penalty(len(h.ids), alpha)) for h in best)
        assert [h.score for h in best] == sorted((h.score for h in best), reverse=True)


def test_text_rendering_escapes_what_is_not_utf8_or_printable():
    as_text = ByteTokenizer().decode
    assert as_text(list("é€".encode())) == "é€"
    assert as_text([0xFF, 0x41, 0xC3]) == "\\xffA\\xc3"
    assert dec.printable("a\x1b[31mb\n\tc") == "a\\x1b[31mb\n\tc"
    assert as_text([300, 2]) == "300 2"


def test_settings_and_prompts_are_checked():
    with pytest.raises(dec.DecodeError, match="--temperature"):
        dec.check_settings("sample", temperature=0.0)
    with pytest.raises(dec.DecodeError, match="--p"):
        dec.check_settings("top-p", p=1.5)
    with pytest.raises(dec.DecodeError, match="--n must be <= --beams"):
        dec.check_settings("beam", n=5, beams=4)
    with pytest.raises(dec.DecodeError, match="empty"):
        dec.check_prompt([], 256)
    with pytest.raises(dec.DecodeError, match="outside"):
        dec.check_prompt([1, 20], V)


def test_stats_show_the_difference_between_strategies():
    model = tiny()
    rows = decode_stats.decode_stats(model, PROMPTS[:2], n=3, max_new_tokens=10, beams=3)
    by = {r["strategy"]: r for r in rows}
    assert list(by) == list(dec.STRATEGIES)
    assert by["greedy"]["outputs"] == 2 and by["sample"]["outputs"] == 6 and by["beam"]["outputs"] == 2
    assert by["greedy"]["unique_outputs"] == 1
    assert by["beam"]["joint_logprob"] >= by["greedy"]["joint_logprob"] - 1e-4
    assert by["greedy"]["logprob_per_token"] > by["sample"]["logprob_per_token"]
    assert len(by["sample"]["entropy_by_step"]) == 10
    assert decode_stats.distinct([1, 2, 1, 2, 1], 2) == 0.5
    assert decode_stats.repetition([1, 1, 1, 1, 1], 4) == 0.5


# --- through the command line ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny byte-level run trained on a small text file."""
    root = tmp_path_factory.mktemp("decode")
    text = root / "corpus.txt"
    text.write_text("def add(a, b):\n    return a + b\n\n" * 120)
    config = root / "tiny.yaml"
    config.write_text(json.dumps({
        "model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 16},
        "data": {"source": "text", "path": str(text)},
        "train": {"steps": 30, "batch_size": 8, "seq_len": 16, "eval_every": 10, "eval_batches": 2},
        "log": {"grad_every": 10}, "run": {"dir": str(root / "runs"), "name": "r"}}))
    result = runner.invoke(app, ["train", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    return root / "runs" / "r"


def direct_logprob(run_dir: Path, prompt: list[int], ids: list[int]) -> float:
    """Recomputed from the saved weights, one full forward per token over the last max_seq_len."""
    model = load_model(run_dir).model
    seq, total = prompt + ids, 0.0
    with torch.no_grad():
        for t in range(len(prompt), len(seq)):
            context = torch.tensor([seq[max(0, t - 16):t]])
            total += model(context)[0][0, -1].log_softmax(-1)[seq[t]].item()
    return total


def test_generate_json_gives_text_ids_and_joint_logprob(run_dir):
    for args in (["--strategy", "sample", "--n", "3", "--temperature", "0.8"], ["--strategy", "top-k"],
                 ["--strategy", "beam", "--beams", "3", "--n", "2"], ["--strategy", "greedy"]):
        result = runner.invoke(app, ["generate", str(run_dir), "--prompt", "def ", "--max-new-tokens", "20",
                                     "--json", *args])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["prompt_ids"] == list(b"def ")
        expected_n = {"sample": 3, "beam": 2}.get(data["strategy"], 1)
        assert len(data["outputs"]) == expected_n
        for out in data["outputs"]:
            assert len(out["ids"]) == 20
            assert out["text"] == bytes(out["ids"]).decode("utf-8", errors="backslashreplace")
            assert out["logprob"] == pytest.approx(direct_logprob(run_dir, list(b"def "), out["ids"]),
                                                   abs=1e-4)


def test_generate_prints_plain_text_and_is_reproducible(run_dir):
    args = ["generate", str(run_dir), "--prompt", "def ", "--strategy", "sample", "--seed", "7",
            "--max-new-tokens", "12"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0 and first.stdout == second.stdout
    ids = json.loads(runner.invoke(app, [*args, "--json"]).stdout)["outputs"][0]["ids"]
    assert first.stdout == dec.printable(ByteTokenizer().decode(list(b"def ") + ids)) + "\n"  # prompt first
    several = runner.invoke(app, ["generate", str(run_dir), "--prompt", "a", "--strategy", "beam",
                                  "--n", "2"])
    assert several.exit_code == 0 and several.stdout.count("--- ") == 2 and "log p" in several.stdout


@pytest.mark.parametrize("args,message", [
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt", "x", "--strategy", "top-k", "--k", "0"], "--k must be >= 1"),
    (["--prompt", "x", "--strategy", "top-p", "--p", "0"], "--p must be in (0, 1]"),
    (["--prompt", "x", "--temperature", "-1"], "--temperature must be"),
    (["--prompt", "x", "--strategy", "nucleus"], "'nucleus' is not one of 'greedy', 'sample', 'top-k'"),
])
def test_generate_refuses_bad_options_in_one_line(run_dir, args, message):
    result = runner.invoke(app, ["generate", str(run_dir), *args])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_generate_refuses_what_is_not_a_finished_run(tmp_path, run_dir):
    result = runner.invoke(app, ["generate", str(tmp_path), "--prompt", "x"])
    assert result.exit_code == 2 and "not a run folder" in result.stderr
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("meta.json", "config.yaml"):
        (unfinished / name).write_bytes((run_dir / name).read_bytes())
    result = runner.invoke(app, ["generate", str(unfinished), "--prompt", "x"])
    assert result.exit_code == 2 and "no model.pt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_decode_stats_table_json_and_figure(run_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def \n\n    return \n")
    figure = tmp_path / "stats.png"
    args = ["decode-stats", str(run_dir), "--prompts", str(prompts), "--n", "3", "--max-new-tokens", "12",
            "--plot", str(figure)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["prompts"] == ["def ", "    return "]
    assert [r["strategy"] for r in data["strategies"]] == list(dec.STRATEGIES)
    assert figure.stat().st_size > 0
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "dist-2" in table.stdout and "beam B=4" in table.stdout
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = runner.invoke(app, ["decode-stats", str(run_dir), "--prompts", str(empty)])
    assert result.exit_code == 2 and "no prompts" in result.stderr


def test_default_prompts_come_from_the_runs_own_text(tmp_path):
    """A run on a user's text gets prompts from its validation lines, not Python code."""
    from lnexp.core.config import Config

    lines = [f"line {i}: the quick brown fox jumps over the lazy dog {i}" for i in range(200)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    def loaded(data: dict) -> dec.Loaded:
        config = Config.model_validate({"data": data})
        return dec.Loaded(TransformerLM(config.model, 256), config, ByteTokenizer())

    run = loaded({"source": "text", "path": str(corpus), "val_fraction": 0.2})
    prompts = decode_stats.default_prompts(run, seed=0)
    assert len(prompts) == 8 and all(len(p) == decode_stats.PROMPT_BYTES for p in prompts)
    validation = {line[: decode_stats.PROMPT_BYTES] for line in lines[160:]}  # the last fifth of the text
    assert {bytes(p).decode() for p in prompts} <= validation
    assert decode_stats.default_prompts(run, seed=0) == prompts  # the seed decides
    stdlib = loaded({})
    assert decode_stats.default_prompts(stdlib) == [dec.encode(ByteTokenizer(), t)
                                                    for t in decode_stats.DEFAULT_PROMPTS]
