import dataclasses
import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.config import dump_yaml
from lnexp.reproduce import SCALES, reproduce
from lnexp.reproduce.engine import Context, cell_config, make_cells
from lnexp.reproduce.suites import SUITES
from lnexp.reproduce.verdicts import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    above,
    check,
    decide,
    fit_line,
    largest_index,
    mean_std,
    power_exponent,
    trend_ratio,
    within,
)

# A scale even tinier than `tiny`, on synthetic data (vocab 16: the unigram baseline is ln 16).
MODEL = {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 16}
DATA = {"source": "synthetic", "task": "copy", "vocab_size": 16}
TEST = dataclasses.replace(
    SCALES["tiny"], name="test",
    train={"model": MODEL, "data": DATA, "optim": {"lr": 1e-3}, "schedule": {"warmup_steps": 0},
           "train": {"steps": 6, "batch_size": 4, "seq_len": 16, "eval_every": 3, "eval_batches": 1},
           "log": {"grad_every": 3, "loss_every": 3}},
    init={"model": MODEL, "data": DATA,
          "train": {"steps": 1, "batch_size": 8, "seq_len": 16, "eval_every": 1, "eval_batches": 1},
          "log": {"grad_every": 1, "loss_every": 1}},
    seeds=2, init_seeds=2, warmup=2, lrs=(1e-3, 1e-2), init_depths=(1, 2, 4), figure3_depth=2,
    depths=(1, 2), map_depths=(1, 2), map_lrs=(1e-3, 1e-2), gpt2_depth=2)


# --- verdict rules on plain numbers ----------------------------------------------------------------

def test_decide_all_none_or_mixed():
    assert decide([True, True]) == REPRODUCED
    assert decide([False, False]) == NOT_REPRODUCED
    assert decide([True, False]) == INCONCLUSIVE
    assert decide([None, None]) == INCONCLUSIVE
    assert decide([True, None]) == REPRODUCED  # a seed without a number does not vote


def test_check_flips_with_the_data_and_is_inconclusive_when_seeds_disagree():
    t = above(0.1)
    assert check("c", "q", t, [0.5, 0.3]).verdict == REPRODUCED
    assert check("c", "q", t, [-0.5, 0.0]).verdict == NOT_REPRODUCED
    assert check("c", "q", t, [0.5, -0.5]).verdict == INCONCLUSIVE
    assert check("c", "q", t, [math.inf, 0.2]).verdict == REPRODUCED  # a diverged run is worst
    assert check("c", "q", t, [None, math.nan]).verdict == INCONCLUSIVE
    assert within(-0.75, -0.25, "b ").text == "-0.75 ≤ b ≤ -0.25"


def test_fits():
    assert fit_line([0, 1, 2], [1, 3, 5]) == (1.0, 2.0)
    assert abs(power_exponent([6, 12, 24], [6 ** -0.5, 12 ** -0.5, 24 ** -0.5]) + 0.5) < 1e-12
    assert power_exponent([6, 12], [1.0, None]) is None
    assert abs(trend_ratio([1, 2, 4, 8]) - 8) < 1e-9 and trend_ratio([1.0]) is None
    assert largest_index([True, True, False]) == 1 and largest_index([False, False]) == -1
    assert largest_index([True, None]) is None
    mean, std, n = mean_std([1.0, 3.0, None])
    assert (mean, n) == (2.0, 2) and abs(std - math.sqrt(2)) < 1e-12


# --- suite analyses on synthetic run folders -------------------------------------------------------

def fake_runs(tmp_path, suite, make):
    """Write a fake run folder for every cell of `suite`; make(config) -> (status, val loss, probes)."""
    specs = SUITES[suite].specs(TEST)
    cells = make_cells(TEST, specs, tmp_path, None)
    for cell in {id(c): c for c in cells.values()}.values():
        status, loss, probes = make(cell.config)
        cell.path.mkdir(parents=True, exist_ok=True)
        (cell.path / "config.yaml").write_text(dump_yaml(cell.config))
        (cell.path / "meta.json").write_text(json.dumps({"status": status}))
        (cell.path / "summary.json").write_text(json.dumps({"status": status, "final_val_loss": loss}))
        (cell.path / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": loss, "val_loss": loss}) + "\n" for s in (0, 3, 6)))
        (cell.path / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes))
    return SUITES[suite].analyse(Context(TEST, cells))


def init_probes(post_exponent, pre_exponent, pre_flat=False, seed_flip=None):
    def make(config):
        m, seed = config.model, config.train.seed
        exponent = post_exponent if m.norm == "post" else pre_exponent
        if seed_flip is not None and seed == seed_flip:
            exponent = pre_exponent if m.norm == "post" else post_exponent
        n = m.n_layers
        last = n ** exponent
        grows = m.norm == "post" or not pre_flat
        grads = [last * (1.5 ** (i - n + 1) if grows else 1.0) for i in range(n)]
        acts = [1.0] * (n + 1) if m.norm == "post" else [math.sqrt(1 + i) for i in range(n + 1)]
        rows = [{"step": 0, "probe": "grad", "layer": i, "param": "ffn.fc2.weight", "value": v}
                for i, v in enumerate(grads)]
        rows += [{"step": 0, "probe": "act", "layer": i, "param": "resid", "value": v}
                 for i, v in enumerate(acts)]
        return "completed", 2.0, rows
    return make


def verdicts_by_claim(analysis):
    return {v.claim: v.verdict for v in analysis.verdicts}


def test_theorem1_verdict_flips_when_the_gradients_flip(tmp_path):
    theorem = ["Theorem 1: Post-LN's last-layer FFN gradient at initialisation does not shrink with depth",
               "Theorem 1: Pre-LN's shrinks like 1/√L"]
    paper = verdicts_by_claim(fake_runs(tmp_path / "a", "xiong2020-init", init_probes(0.0, -0.5)))
    assert [paper[c] for c in theorem] == [REPRODUCED, REPRODUCED]
    flipped = verdicts_by_claim(fake_runs(tmp_path / "b", "xiong2020-init", init_probes(-0.5, 0.0)))
    assert [flipped[c] for c in theorem] == [NOT_REPRODUCED, NOT_REPRODUCED]
    mixed = verdicts_by_claim(fake_runs(tmp_path / "c", "xiong2020-init",
                                        init_probes(0.0, -0.5, seed_flip=1)))
    assert [mixed[c] for c in theorem] == [INCONCLUSIVE, INCONCLUSIVE]
    # Figure 3 (per-layer trend) and the lemma (residual growth: 1 + l for Pre-LN, flat for Post-LN)
    grows = "Figure 3: Post-LN's ∇W_FC2 at initialisation grows with the layer index (L = 2)"
    same = "Figure 3: Pre-LN's stays about the same across layers (L = 2)"
    assert paper[grows] == REPRODUCED and paper[same] == NOT_REPRODUCED
    flat = verdicts_by_claim(fake_runs(tmp_path / "d", "xiong2020-init",
                                       init_probes(0.0, -0.5, pre_flat=True)))
    assert flat[same] == REPRODUCED
    lemma = [c for c in paper if c.startswith("Lemma")]
    assert len(lemma) == 2 and all(paper[c] == REPRODUCED for c in lemma)


def losses(table):
    """make() from a function of (norm, optimiser, warm-up, lr, depth, seed) -> loss (inf: diverged)."""
    def make(config):
        loss = table(config.model.norm, config.optim.name, config.schedule.warmup_steps, config.optim.lr,
                     config.model.n_layers, config.train.seed)
        return ("diverged", None, []) if math.isinf(loss) else ("completed", loss, [])
    return make


def test_warmup_verdicts_flip_when_the_losses_flip(tmp_path):
    claim = "Post-LN without warm-up ends worse than with warm-up (lr 0.01)"
    # ln 16 = 2.77 is the baseline: 1.0 converges, 2.8 does not
    paper = losses(lambda norm, opt, warm, lr, n, seed:
                   2.8 if norm == "post" and not warm and lr > 3e-3 else 1.0)
    assert verdicts_by_claim(fake_runs(tmp_path / "a", "xiong2020-warmup", paper))[claim] == REPRODUCED
    other = losses(lambda norm, opt, warm, lr, n, seed: 2.8 if norm == "post" and warm else 1.0)
    assert verdicts_by_claim(fake_runs(tmp_path / "b", "xiong2020-warmup", other))[claim] == NOT_REPRODUCED
    diverged = losses(lambda norm, opt, warm, lr, n, seed:
                      math.inf if norm == "post" and not warm and seed == 0 else 1.0)
    analysis = fake_runs(tmp_path / "c", "xiong2020-warmup", diverged)
    assert verdicts_by_claim(analysis)[claim] == INCONCLUSIVE  # seed 0 diverged (+∞), seed 1 did not
    assert "verdict" in analysis.tables[0] or "final val loss" in analysis.tables[0]


def test_stability_map_and_depth_verdicts_follow_convergence(tmp_path):
    warm_claim = "Warm-up widens Post-LN's stable learning-rate range"

    def paper(norm, opt, warm, lr, n, seed):
        unstable = norm == "post" and not warm and opt == "adam" and lr > 3e-3
        return 2.8 if unstable or (norm == "post" and n > 1) else 1.0

    a = verdicts_by_claim(fake_runs(tmp_path / "a", "stability-map", losses(paper)))
    assert a[warm_claim] == REPRODUCED
    b = verdicts_by_claim(fake_runs(tmp_path / "b", "stability-map", losses(lambda *args: 1.0)))
    assert b[warm_claim] == NOT_REPRODUCED
    depth = verdicts_by_claim(fake_runs(tmp_path / "c", "depth", losses(paper)))
    assert depth["Pre-LN trains at every depth"] == REPRODUCED
    assert depth["Post-LN stops training beyond some depth at which Pre-LN still trains"] == REPRODUCED
    same = verdicts_by_claim(fake_runs(tmp_path / "d", "depth", losses(lambda *args: 1.0)))
    assert same["Post-LN stops training beyond some depth at which Pre-LN still trains"] == NOT_REPRODUCED


# --- one suite end to end --------------------------------------------------------------------------

def test_init_suite_end_to_end_writes_a_report_with_verdicts_and_figures(tmp_path):
    out = tmp_path / "repro"
    outcome = reproduce("xiong2020-init", TEST, jobs=1, out=out)
    assert outcome.trained == 2 * 3 * 2 and not outcome.failed
    report = (out / "xiong2020-init" / "report.md").read_text()
    assert "| claim | measured quantity | threshold (each seed) | mean ± std (n) |" in report
    assert "Theorem 1: Pre-LN's shrinks like 1/√L" in report and "-0.75 ≤ b ≤ -0.25" in report
    assert sum(report.count(f"**{v}**") for v in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)) >= 6
    pngs = sorted(p.name for p in (out / "xiong2020-init").glob("*.png"))
    assert pngs == ["grad_by_layer.png", "grad_vs_depth.png", "residual_growth.png"]
    assert all((out / "xiong2020-init" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    verdicts = json.loads((out / "xiong2020-init" / "verdicts.json").read_text())
    assert {v["verdict"] for v in verdicts} <= {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE}
    assert "xiong2020-init" in (out / "report.md").read_text()
    run = out / "runs" / "init" / "pre-L4-adam-lr0.001-w0-s1"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["n_layers"] == 4
    # a second invocation reuses every run and only rewrites the report
    again = reproduce("xiong2020-init", TEST, jobs=1, out=out)
    assert again.trained == 0 and again.reused == 12
    assert [v.verdict for v in again.verdicts["xiong2020-init"]] == [v["verdict"] for v in verdicts]


def test_cli_refuses_an_unknown_suite_or_scale(tmp_path):
    for args, needle in ((["reproduce", "nope"], "unknown suite 'nope'"),
                         (["reproduce", "radam", "--scale", "huge"], "--scale: must be one of tiny, small")):
        result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and needle in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", list(SUITES))
def test_every_suite_builds_valid_distinct_cells_at_both_scales(tmp_path, name):
    for scale in SCALES.values():
        specs = SUITES[name].specs(scale)
        cells = make_cells(scale, specs, tmp_path, None)
        paths = {c.path for c in cells.values()}
        configs = {(s.family, json.dumps(cell_config(scale, s).to_dict(), sort_keys=True)) for s in specs}
        assert len(paths) == len(configs)  # one folder per distinct config, shared across suites
        assert all(c.config.run.name == c.name == c.path.name for c in cells.values())
