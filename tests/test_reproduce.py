import dataclasses
import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from lnexp.cli import app
from lnexp.core.config import dump_yaml
from lnexp.core.stats import mean_std, t_interval
from lnexp.experiments.reproduce import SCALES, engine, reproduce, suites
from lnexp.experiments.reproduce.engine import SuiteRuns, cell_config, make_cells
from lnexp.experiments.reproduce.measure import (
    fit_line,
    power_exponent,
    stream_growth,
    stream_increment,
    trend_ratio,
)
from lnexp.experiments.reproduce.suites import SUITES
from lnexp.experiments.reproduce.verdicts import (
    BROKEN,
    GREATER,
    GRID_EDGE,
    HOLDS,
    INCONCLUSIVE,
    LESS,
    NOT_APPLICABLE,
    NOT_REPRODUCED,
    REPRODUCED,
    WITHIN,
    Claim,
    Precondition,
    Tally,
    Verdict,
    Wiring,
    grid_edge,
    judge,
    premise,
)
from lnexp.experiments.stability import largest_index

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
    seeds=2, init_seeds=2, warmup=2, suite_params={
        "xiong2020-init": suites.xiong_init.Params(depths=(1, 2, 4), figure3_depth=2, widths=(8, 16, 32)),
        "xiong2020-warmup": suites.xiong_warmup.Params(lrs=(1e-3, 1e-2)),
        "radam": suites.radam.Params(lrs=(1e-3, 1e-2)),
        "depth": suites.depth.Params(depths=(1, 2), lr=3e-3),
        "stability-map": suites.stability_map.Params(depths=(1, 2), lrs=(1e-3, 1e-2)),
        "gpt2-scaling": suites.gpt2.Params(depth=2, lr=3e-3),
        "layouts": suites.layouts.Params(depth=2, seeds=2, lrs=(1e-3, 3e-3, 1e-2)),
        "feature-dimension": suites.feature_dimension.Params(tuple(suites.feature_dimension.ARMS),
                                                             depths=(3, 6), lr=3e-3),
        "placebo": suites.placebo.Params(ladder_depth=1)})


# --- the verdict rule on constructed numbers -------------------------------------------------------

def test_the_interval_is_students_t_and_needs_two_finite_values():
    interval = t_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.high - interval.mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)  # t(0.975, 2)
    assert t_interval([1.0]) is None and t_interval([1.0, math.inf]) is None
    assert t_interval([2.0, 2.0]).low == t_interval([2.0, 2.0]).high == 2.0  # the seeds agree exactly


@pytest.mark.parametrize("values, expected", [
    ([0.5, 0.6, 0.55], REPRODUCED),          # the interval lies above the smallest effect
    ([0.01, 0.02, 0.015], NOT_REPRODUCED),   # a real effect, but below the smallest that counts
    ([-0.05, 0.12, 0.3], INCONCLUSIVE),      # the interval straddles 0.1
    ([0.0, 0.2, -0.1], INCONCLUSIVE),        # a null effect with the interval around the threshold
    ([0.5], INCONCLUSIVE),                   # one seed: no interval
    ([0.5, None, math.nan], INCONCLUSIVE),   # seeds without a number do not count
    ([0.5, math.inf, 0.6], INCONCLUSIVE),    # a diverged run's +∞: no interval
])
def test_greater_is_reproduced_only_when_the_interval_clears_the_smallest_effect(values, expected):
    verdict, reason, _ = judge(values, GREATER, 0.1)
    assert verdict == expected, reason
    mirrored, _, _ = judge([None if v is None else -v for v in values], LESS, -0.1)
    assert mirrored == expected


def test_an_effect_below_the_smallest_effect_is_never_reproduced():
    for seed in range(50):  # whatever the noise, a true effect of 0.05 < 0.1 never passes
        values = [0.05 + 0.001 * ((seed * 7 + k * 13) % 11 - 5) for k in range(3)]
        assert judge(values, GREATER, 0.1)[0] != REPRODUCED


def test_a_null_effect_passes_the_rule_about_2_5_percent_of_the_time():
    import random

    rng = random.Random(0)
    trials = 4000
    passed = sum(judge([rng.gauss(0, 1) for _ in range(3)], GREATER, 0.0)[0] == REPRODUCED
                 for _ in range(trials))
    assert 0.01 < passed / trials < 0.04  # one-sided 2.5% (the every-seed rule at 2 seeds: 25%)


def test_a_band_is_reproduced_inside_not_reproduced_outside_inconclusive_across_an_edge():
    band = (-0.25, 0.25)
    assert judge([0.0, 0.05, -0.05], WITHIN, band)[0] == REPRODUCED
    assert judge([0.6, 0.7, 0.65], WITHIN, band)[0] == NOT_REPRODUCED   # grows with depth: fails two-sided
    assert judge([-0.6, -0.7, -0.65], WITHIN, band)[0] == NOT_REPRODUCED
    assert judge([0.2, 0.3, 0.25], WITHIN, band)[0] == INCONCLUSIVE


def test_a_failed_precondition_is_not_applicable_and_names_itself():
    rescue = premise("Post-LN without warm-up fails at lr 0.001",
                     "Post-LN without warm-up trained at lr 0.001: nothing for warm-up to rescue",
                     "final loss minus the convergence threshold", [-0.5, -0.4, -0.45], GREATER, 0.0)
    assert rescue.holds is False
    verdict, reason, interval = judge([0.5, 0.6, 0.55], GREATER, 0.1, [rescue])
    assert verdict == NOT_APPLICABLE and interval is not None
    assert reason.startswith("Post-LN without warm-up trained at lr 0.001: nothing for warm-up to rescue (")
    unsure = premise("p", "not p", "s", [-1.0, 1.0, 0.5], GREATER, 0.0)
    assert unsure.holds is None
    verdict, reason, _ = judge([0.5, 0.6, 0.55], GREATER, 0.1, [unsure])
    assert verdict == INCONCLUSIVE and reason.startswith("premise not established: p (")
    assert judge([0.5, 0.6, 0.55], GREATER, 0.1, [Precondition("p", "not p", True)])[0] == REPRODUCED


def test_both_arms_at_the_same_edge_of_the_grid_is_inconclusive_grid_edge():
    top = 3
    edge = grid_edge([3, 3, 3], [3, 3, 3], top, "DeepNorm and Post-LN")
    assert edge.holds is False and "at the grid's largest learning rate" in edge.failed
    assert judge([0.0, 0.0, 0.0], GREATER, 0.0, [edge])[0] == GRID_EDGE
    assert grid_edge([-1, -1], [-1, -1], top, "a and b").holds is False
    assert grid_edge([3, 3, 3], [1, 1, 2], top, "a and b").holds is True
    assert grid_edge([None], [None], top, "a and b").holds is None


def test_a_claim_declares_its_rule_once_and_formats_its_fields():
    claim = Claim("grows at L = {L}", "ratio at L = {L}", GREATER, 1.25, "lnexp's choice")
    verdict = claim.format(L=6).test([2.0, 2.1, 1.9], [0, 1, 2])
    assert (verdict.claim, verdict.statistic, verdict.rule, verdict.verdict) == \
        ("grows at L = 6", "ratio at L = 6", "> 1.25", REPRODUCED)
    assert claim.placebo("A against A′").test([2.0, 2.1, 1.9], [0, 1, 2]).kind == "placebo"
    with pytest.raises(ValueError, match="within"):
        Claim("c", "s", WITHIN, 0.5, "x")
    with pytest.raises(ValueError, match="smallest effect"):
        Claim("c", "s", WITHIN, None, "x").test([1.0, 2.0], [0, 1])
    assert Claim("c", "s", WITHIN, None, "x").format(smallest_effect=(0.0, 3.0)).test(
        [1.0, 2.0, 1.5], [0, 1, 2]).verdict == REPRODUCED


def test_a_wiring_check_holds_on_every_seed_or_is_broken_and_is_never_a_reproduction():
    wiring = Wiring("every block ends in a LayerNorm", "ratio", 0.999, 1.001, "an identity")
    assert wiring.check([1.0, 1.0000004, 0.9999999], [0, 1, 2]).verdict == HOLDS
    assert wiring.check([1.0, 1.3, 1.0], [0, 1, 2]).verdict == BROKEN
    assert wiring.check([1.0, None], [0, 1]).verdict == INCONCLUSIVE
    claim = Claim("c", "s", GREATER, 0.0, "x")
    placebo = claim.placebo("A against A′")
    rows = [wiring.check([1.0, 1.0], [0, 1]), claim.test([1.0, 1.1, 1.2], [0, 1, 2]),
            placebo.test([1.0, 1.1, 1.2], [3, 4, 5]), placebo.test([-1.0, 1.1, 0.2], [3, 4, 5])]
    tally = Tally.of(rows)
    assert tally.claims == {REPRODUCED: 1} and tally.wiring == {HOLDS: 1}
    assert tally.false_positive_rate() == 0.5
    assert "Placebo comparisons: 1 of 2 came out \"reproduced\"" in " ".join(tally.sentences())


def test_a_stored_verdict_reads_back_the_same_with_a_diverged_seed():
    claim = Claim("c", "s", LESS, 0.1, "x")
    for row in (claim.test([0.01, 0.02, 0.03], [0, 1, 2]), claim.test([0.01, math.inf, None], [0, 1, 2])):
        stored = json.loads(json.dumps(row.to_json()))
        assert Verdict.from_json(stored) == row


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
    grid = SUITES[suite].grid_at(TEST)
    cells = make_cells(TEST, [s for specs in grid.values() for s in specs], tmp_path, None)
    for cell in {id(c): c for c in cells.values()}.values():
        status, loss, probes = make(cell.config)
        cell.path.mkdir(parents=True, exist_ok=True)
        (cell.path / "config.yaml").write_text(dump_yaml(cell.config))
        (cell.path / "meta.json").write_text(json.dumps({"status": status}))
        (cell.path / "summary.json").write_text(json.dumps({"status": status, "final_val_loss": loss}))
        (cell.path / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": loss, "val_loss": loss}) + "\n" for s in (0, 3, 6)))
        (cell.path / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes))
    return SUITES[suite].analyse(SuiteRuns(suite, TEST, SUITES[suite].params_at(TEST), grid, cells))


def init_probes(post_exponent, pre_exponent, pre_flat=False, seed_flip=None, encdec_flat=False):
    """Per-layer gradients ∝ 1.5^layer (Post-LN; Pre-LN too unless pre_flat) whose last layer is
    L^exponent; the encoder-decoder cells get the same profile in both stacks (flat if encdec_flat)."""
    def make(config):
        m, seed = config.model, config.train.seed
        exponent = post_exponent if m.norm == "post" else pre_exponent
        if seed_flip is not None and seed == seed_flip:
            exponent = pre_exponent if m.norm == "post" else post_exponent
        n = m.n_layers
        last = n ** exponent
        encdec = m.arch == "encoder_decoder"
        grows = (m.norm == "post" or not pre_flat) and not (encdec and encdec_flat)
        grads = [last * (1.5 ** (i - n + 1) if grows else 1.0) for i in range(n)]
        acts = [1.0] * (n + 1) if m.norm == "post" else [math.sqrt(1 + i) for i in range(n + 1)]
        roles = ("enc.ffn.fc2.weight", "dec.ffn.fc2.weight") if encdec else ("ffn.fc2.weight",)
        rows = [{"step": 0, "probe": "grad", "layer": i, "param": role, "value": v}
                for role in roles for i, v in enumerate(grads)]
        rows += [{"step": 0, "probe": "act", "layer": i, "param": "resid", "value": v}
                 for i, v in enumerate(acts)]
        return "completed", 2.0, rows
    return make


def verdicts_by_claim(analysis):
    return {v.claim: v.verdict for v in analysis.verdicts}


def test_theorem1_verdict_flips_when_the_gradients_flip(tmp_path):
    theorem = ["Theorem 1: Post-LN's last-layer FFN gradient at initialisation does not depend on depth",
               "Theorem 1: Pre-LN's shrinks like 1/√L"]
    paper = verdicts_by_claim(fake_runs(tmp_path / "a", "xiong2020-init", init_probes(0.0, -0.5)))
    assert [paper[c] for c in theorem] == [REPRODUCED, REPRODUCED]
    flipped = verdicts_by_claim(fake_runs(tmp_path / "b", "xiong2020-init", init_probes(-0.5, 0.0)))
    assert [flipped[c] for c in theorem] == [NOT_REPRODUCED, NOT_REPRODUCED]
    mixed = verdicts_by_claim(fake_runs(tmp_path / "c", "xiong2020-init",
                                        init_probes(0.0, -0.5, seed_flip=1)))
    assert [mixed[c] for c in theorem] == [INCONCLUSIVE, INCONCLUSIVE]
    grows = verdicts_by_claim(fake_runs(tmp_path / "e", "xiong2020-init", init_probes(0.5, -0.5)))
    assert grows[theorem[0]] == NOT_REPRODUCED  # two-sided: a gradient that grows with depth fails too
    # Figure 3 (per-layer trend) and the lemma (residual growth: 1 + l for Pre-LN, flat for Post-LN)
    grows = "Figure 3: Post-LN's ∇W_FC2 at initialisation grows with the layer index (L = 2)"
    same = "Figure 3: Pre-LN's stays about the same across layers (L = 2)"
    assert paper[grows] == REPRODUCED and paper[same] == NOT_REPRODUCED
    flat = verdicts_by_claim(fake_runs(tmp_path / "d", "xiong2020-init",
                                       init_probes(0.0, -0.5, pre_flat=True)))
    assert flat[same] == REPRODUCED
    assert paper["Lemma: Pre-LN's residual stream grows linearly with depth, L/2 ≤ (E‖x_L‖² − E‖x_0‖²)/d ≤ "
                 "3L/2"] == REPRODUCED
    assert paper["Lemma: Post-LN's residual stream stays constant (every block ends in a LayerNorm)"] == HOLDS


def test_encoder_decoder_figure3_rows_and_findings_follow_the_data(tmp_path):
    rows = {stack: (f"Figure 3, encoder-decoder {stack}: Post-LN's ∇W_FC2 at initialisation grows with "
                    "the layer index (L = 2 per stack)",
                    f"Figure 3, encoder-decoder {stack}: Pre-LN's stays about the same across layers "
                    "(L = 2 per stack)")
            for stack in ("decoder stack", "encoder stack")}
    same = fake_runs(tmp_path / "a", "xiong2020-init", init_probes(0.0, -0.5, pre_flat=True))
    verdicts = verdicts_by_claim(same)
    assert all(verdicts[grows] == verdicts[flat] == REPRODUCED for grows, flat in rows.values())
    assert any("Post-LN, L = 2: decoder-only and encoder-decoder agree" in f for f in same.findings)
    # encoder-decoder profiles flat, decoder-only Post-LN growing: the Post-LN rows flip, and the
    # report says where the two differ, with the numbers
    flat = fake_runs(tmp_path / "b", "xiong2020-init",
                     init_probes(0.0, -0.5, pre_flat=True, encdec_flat=True))
    verdicts = verdicts_by_claim(flat)
    assert all(verdicts[grows] == NOT_REPRODUCED for grows, _ in rows.values())
    differ = [f for f in flat.findings
              if f.startswith("Post-LN, L = 2: decoder-only and encoder-decoder differ")]
    assert len(differ) == 1 and "decoder-only grows (1.5)" in differ[0]
    assert "enc-dec decoder stack stays about flat (1)" in differ[0]
    assert any(f.startswith("Post-LN's Figure 3 verdict at L = 2 is reproduced decoder-only but not "
                            "reproduced in the enc-dec decoder stack") for f in flat.findings)


def layout_runs(largest=None, flat=("post", "deepnorm", "admin"), grows=("pre", "mix", "reordered"),
                deep_small=("pre",)):
    """make() for the layouts suite. Init cells: a residual stream flat for the layouts in `flat`,
    growing (RMS² 1 + l) otherwise. Training cells converge (1.0) up to their arm's largest lr
    (`largest`, by layout or "dyt"; None: at none) and stay at the baseline (2.8) above it; on the
    final model (step 5) their stream grows for the layouts in `grows` and their ‖∇W_FC2‖ halves per
    layer for those in `deep_small`."""
    largest = {"post": 1e-3, "pre": 3e-3, "sandwich": 3e-3, "reordered": 3e-3, "mix": 3e-3, "deepnorm": 3e-3,
               "admin": 3e-3, "dyt": 3e-3, "peri_ln": 3e-3, "lns": 3e-3, **(largest or {})}

    def make(config):
        m = config.model
        n = m.n_layers
        arm = "dyt" if m.norm_type == "dyt" else m.norm
        if config.train.steps == 1:
            acts = [1.0] * (n + 1) if m.norm in flat else [math.sqrt(1 + i) for i in range(n + 1)]
            rows = [{"step": 0, "probe": "act", "layer": i, "param": "resid", "value": v}
                    for i, v in enumerate(acts)]
            rows += [{"step": 0, "probe": "grad", "layer": i, "param": "ffn.fc2.weight", "value": 1.2 ** i}
                     for i in range(n)]
            return "completed", 2.0, rows
        rows = []
        for step in (0, config.train.steps - 1):
            acts = [math.sqrt(1 + 4 * i) for i in range(n + 1)] if m.norm in grows else [1.0] * (n + 1)
            rows += [{"step": step, "probe": "act", "layer": i, "param": "resid", "value": v}
                     for i, v in enumerate(acts)]
            rows += [{"step": step, "probe": "grad", "layer": i, "param": "ffn.fc2.weight",
                      "value": 0.5 ** i if m.norm in deep_small else 1.0} for i in range(n)]
        limit = largest[arm]
        return "completed", 1.0 if limit is not None and config.optim.lr <= limit else 2.8, rows
    return make


LAYOUT_CLAIMS = {key: claim.format(L=2, lr=1e-3, a="", b="").text for key, claim in (
    ("pre", suites.layouts.PRE_WHERE_POST_FAILS), ("deepnorm", suites.layouts.DEEPNORM_STABLE),
    ("admin", suites.layouts.ADMIN_STABLE), ("sandwich", suites.layouts.SANDWICH_STABLE),
    ("reordered", suites.layouts.REORDERED_STABLE), ("tames", suites.layouts.SANDWICH_TAMES),
    ("mix", suites.layouts.MIX_GRADIENTS), ("dyt", suites.layouts.DYT_MATCHES))}


def test_layouts_verdicts_flip_when_the_data_flips(tmp_path):
    from lnexp.experiments.reproduce.report import StoredSuite, write_report

    paper = fake_runs(tmp_path / "a", "layouts", layout_runs())
    verdicts = verdicts_by_claim(paper)
    assert {verdicts[c] for c in LAYOUT_CLAIMS.values()} == {REPRODUCED}, verdicts
    wiring = [v for v in paper.verdicts if v.kind == "wiring"]
    assert [v.claim for v in wiring] == [suites.layouts.NORMALISED.format(layout=name, last=1, L=2).text
                                         for name in ("Post-LN", "DeepNorm", "Admin")]
    assert {v.verdict for v in wiring} == {HOLDS}
    assert len(paper.verdicts) == len(LAYOUT_CLAIMS) + 3
    # Post-LN trains at every lr: nothing to rescue; Sandwich-LN and the reordered norm train at none; every
    # layout's stream grows on the trained model; Pre-LN's deep layers keep their gradients; DyT fails
    flipped = fake_runs(tmp_path / "b", "layouts", layout_runs(
        largest={"post": 1e-2, "sandwich": None, "reordered": None, "dyt": None, "deepnorm": 1e-3},
        flat=("post", "admin"), grows=tuple(LAYOUT_CLAIMS) + ("post",), deep_small=()))
    verdicts = verdicts_by_claim(flipped)
    for key in ("pre", "deepnorm", "admin", "mix"):
        assert verdicts[LAYOUT_CLAIMS[key]] == NOT_APPLICABLE, key
    reason = {v.claim: v.reason for v in flipped.verdicts}[LAYOUT_CLAIMS["pre"]]
    assert reason.startswith("Post-LN without warm-up converged up to the grid's largest learning rate "
                             "(0.01): nothing for a layout to rescue (")
    for key in ("sandwich", "reordered", "tames", "dyt"):
        assert verdicts[LAYOUT_CLAIMS[key]] == NOT_REPRODUCED, key
    assert verdicts["DeepNorm's residual stream stays normalised at initialisation"] == BROKEN
    # every layout at the grid's top: the lr rows are the grid's, not the layouts'
    edge = verdicts_by_claim(fake_runs(tmp_path / "c", "layouts", layout_runs(largest={
        name: 1e-2 for name in ("pre", "sandwich", "reordered", "mix", "deepnorm", "admin", "dyt")})))
    assert edge[LAYOUT_CLAIMS["sandwich"]] == GRID_EDGE and edge[LAYOUT_CLAIMS["reordered"]] == GRID_EDGE
    # the figures draw from these numbers
    write_report(tmp_path / "report", StoredSuite("layouts", "t", "s", "test", paper.verdicts), [], paper, "")
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert pngs == ["largest_lr.png", "profiles.png"]
    assert "could not be drawn" not in (tmp_path / "report" / "report.md").read_text()


def test_stream_measures_do_not_count_the_embeddings_own_scale_as_growth():
    # act profiles (RMS entering each layer, then leaving the last), with an input of RMS² 1.5
    pre = [math.sqrt(1.5 + layer) for layer in range(7)]  # each block adds variance 1
    post = [math.sqrt(1.5)] + [1.0] * 6  # every block ends in a LayerNorm
    assert stream_increment(pre) == pytest.approx(6.0) and stream_growth(pre) == pytest.approx(7.5 / 2.5)
    assert stream_growth(post) == pytest.approx(1.0) and stream_increment(post) == pytest.approx(-0.5)
    assert stream_growth([1.0, 2.0]) is None and stream_increment([1.0]) is None


# --- one suite end to end --------------------------------------------------------------------------

def test_init_suite_end_to_end_writes_a_report_with_verdicts_and_figures(tmp_path):
    out = tmp_path / "repro"
    outcome = reproduce("xiong2020-init", TEST, jobs=1, out=out)
    # untied (the theorem's setting) and tied, 2 layouts x 3 depths x 2 seeds each, + encoder-decoder cells
    # + the widths other than the scale's own (its cells are the untied ones at L = 2)
    assert outcome.trained == 2 * (2 * 3 * 2) + 2 * 2 + 2 * 2 * 2 and not outcome.failed
    report = (out / "xiong2020-init" / "report.md").read_text()
    assert "| claim | statistic (per seed) | claimed: direction, smallest effect (source) |" in report
    assert "Theorem 1: Pre-LN's shrinks like 1/√L" in report and "in [-0.75, -0.25] (lnexp's choice" in report
    assert "### Wiring checks: identities the code must satisfy, not evidence" in report
    assert (out / "runs" / "init" / "post-d32-L2-adam-lr0.001-w0-s1" / "meta.json").exists()
    assert "Theorem 1 with tied input/output embeddings (not the theorem's setting" in report
    tied = out / "runs" / "init" / "pre-tied-L4-adam-lr0.001-w0-s1"
    assert yaml.safe_load((tied / "config.yaml").read_text())["model"]["tie_embeddings"] is True
    assert sum(report.count(f"**{v}**") for v in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)) >= 6
    pngs = sorted(p.name for p in (out / "xiong2020-init").glob("*.png"))
    assert pngs == ["grad_by_layer.png", "grad_by_layer_encdec.png", "grad_vs_depth.png",
                    "residual_growth.png"]
    assert "could not be drawn" not in report
    assert "Figure 3, encoder-decoder decoder stack: Post-LN's" in report
    assert "Figure 3, encoder-decoder encoder stack: Pre-LN's" in report
    assert "## What the numbers say" in report and "decoder-only and encoder-decoder" in report
    encdec = out / "runs" / "init" / "encdec-post-L2-adam-lr0.001-w0-s0"
    assert yaml.safe_load((encdec / "config.yaml").read_text())["model"]["arch"] == "encoder_decoder"
    assert all((out / "xiong2020-init" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    verdicts = json.loads((out / "xiong2020-init" / "verdicts.json").read_text())["rows"]
    assert {v["verdict"] for v in verdicts} <= {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, HOLDS}
    assert "xiong2020-init" in (out / "report.md").read_text()
    run = out / "runs" / "init" / "pre-L4-adam-lr0.001-w0-s1"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["n_layers"] == 4
    # a second invocation reuses every run and only rewrites the report
    again = reproduce("xiong2020-init", TEST, jobs=1, out=out)
    assert again.trained == 0 and again.reused == 36
    assert [v.verdict for v in again.verdicts["xiong2020-init"]] == [v["verdict"] for v in verdicts]


def test_cli_refuses_an_unknown_suite_or_scale(tmp_path):
    for args, needle in ((["reproduce", "nope"], "unknown suite 'nope'"),
                         (["reproduce", "radam", "--scale", "huge"],
                          "'huge' is not one of 'tiny', 'cpu', 'small'")):
        result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and needle in result.stderr
    assert not (tmp_path / "o").exists()


def test_compare_labels_every_layout_of_the_suites(tmp_path):
    from lnexp.core.layouts import label as layout

    specs = SUITES["layouts"].specs(SCALES["tiny"]) + SUITES["xiong2020-init"].specs(SCALES["tiny"]) + \
        SUITES["gpt2-scaling"].specs(SCALES["tiny"])
    labels = {layout(c.config.to_dict()) for c in make_cells(SCALES["tiny"], specs, tmp_path, None).values()}
    assert labels == {"post", "pre", "sandwich", "deepnorm", "admin", "mix", "reordered", "peri_ln", "lns",
                      "post+encdec", "pre+encdec", "pre+gpt2", "pre+dyt"}
    assert layout({"model": {"norm": "pre", "norm_type": "rmsnorm", "arch": "encoder_decoder"}}) == \
        "pre+rmsnorm+encdec"


@pytest.mark.parametrize("name", list(SUITES))
def test_every_suite_builds_valid_distinct_cells_at_both_scales(tmp_path, name):
    for scale in SCALES.values():
        specs = SUITES[name].specs(scale)
        cells = make_cells(scale, specs, tmp_path, None)
        paths = {c.path for c in cells.values()}
        # one folder per distinct config, what it logs aside (the union of the requests), shared across suites
        configs = {(s.family, json.dumps({k: v for k, v in cell_config(scale, s).to_dict().items()
                                          if k != "log"}, sort_keys=True)) for s in specs}
        assert len(paths) == len(configs)
        assert all(c.config.run.name == c.name == c.path.name for c in cells.values())


class ReadingRuns(SuiteRuns):
    """SuiteRuns that notes every grid key the analysis asks for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


@pytest.mark.parametrize("name", list(SUITES))
def test_every_analysis_reads_its_runs_through_its_grid_and_reads_every_cell(monkeypatch, tmp_path, name):
    # no run folders: every run is None, and a key the grid does not declare is a KeyError
    monkeypatch.setattr(engine, "unigram_val_loss", lambda config: 5.0)
    suite = SUITES[name]
    for scale in SCALES.values():
        grid = suite.grid_at(scale)
        runs = ReadingRuns(name, scale, suite.params_at(scale), grid, {})
        analysis = suite.analyse(runs)
        assert analysis.verdicts and {v.verdict for v in analysis.verdicts} == {INCONCLUSIVE}
        assert runs.read == set(grid), f"{name} at {scale.name} trains cells it never reads"


def test_a_key_the_grid_does_not_declare_is_an_error_not_a_missing_run():
    suite = SUITES["xiong2020-warmup"]
    runs = SuiteRuns(suite.name, TEST, suite.params_at(TEST), suite.grid_at(TEST), {})
    assert runs["post", 1e-2] == [None, None]  # declared, not run yet
    with pytest.raises(KeyError, match=r"xiong2020-warmup: its grid declares no cell \('post', 0.003\)"):
        runs["post", 3e-3]


def test_a_custom_scale_names_the_suite_whose_parameters_it_lacks():
    bare = dataclasses.replace(TEST, name="bare", suite_params={})
    with pytest.raises(KeyError, match="suite depth has no parameters for scale 'bare'"):
        SUITES["depth"].specs(bare)


def test_reuse_is_counted_per_folder_when_families_share_cell_names(tmp_path):
    # the layouts suite has one-step `init` cells and `train` cells of the same name (its lowest lr)
    first = reproduce("layouts", TEST, jobs=1, out=tmp_path, layouts=["post", "pre"])
    names = [p.name for family in ("init", "train") for p in (tmp_path / "runs" / family).iterdir()]
    assert len(names) > len(set(names))  # the premise: some names repeat across the two families
    again = reproduce("layouts", TEST, jobs=1, out=tmp_path, layouts=["post", "pre"])
    assert first.trained == len(names) and again.trained == 0 and again.reused == len(names)


def test_a_report_says_which_runs_trained_in_packs_and_counts_a_packs_time_once(tmp_path):
    outcome = reproduce("xiong2020-warmup", TEST, jobs=1, out=tmp_path, pack=4)
    assert outcome.trained and not outcome.failed
    metas = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/*/meta.json")]
    packed = [m for m in metas if m.get("packs")]
    assert packed and all(len(m["packs"][0]["cells"]) > 1 for m in packed)
    report = (tmp_path / "xiong2020-warmup" / "report.md").read_text()
    assert f"{len(packed)} of them trained in packs" in report
    per_pack: dict[str, float] = {}
    for m in packed:  # each run of a pack records the pack's wall time
        per_pack[json.dumps(m["packs"])] = max(per_pack.get(json.dumps(m["packs"]), 0.0), m["wall_time_s"])
    alone = sum(m["wall_time_s"] for m in metas if not m.get("packs"))
    took = float(report.split("their training took ")[1].split(" s in total")[0])
    assert took == round(alone + sum(per_pack.values()))


# --- what sweep takes: --set, --threads; stopping; missing runs (issue #17) ---------------------------

def test_set_and_threads_reach_every_cell_and_a_bad_set_is_one_line(tmp_path):
    from lnexp.core.config import ConfigError

    outcome = reproduce("xiong2020-warmup", TEST, jobs=1, out=tmp_path, sets=["model.d_ff=48"], threads=1)
    assert outcome.trained > 0 and not outcome.failed
    configs = [yaml.safe_load(p.read_text()) for p in (tmp_path / "runs" / "train").glob("*/config.yaml")]
    assert configs and all(c["model"]["d_ff"] == 48 and c["train"]["threads"] == 1 for c in configs)
    assert "--set model.d_ff=48" in (tmp_path / "xiong2020-warmup" / "report.md").read_text()
    for bad, needle in ((["model.d_ff=-1"], "--set: model.d_ff: must be >= 1"),
                        (["train.seed=3"], "--set train.seed: set by the suites per cell")):
        with pytest.raises(ConfigError, match=needle):
            reproduce("radam", TEST, out=tmp_path / "bad", sets=bad)
    assert not (tmp_path / "bad").exists()


def test_a_stopped_reproduction_counts_its_runs_and_writes_no_report(tmp_path):
    import signal

    from lnexp.experiments.reproduce import Stopped

    def stop_after_first(done, total, cell, kind, result):
        if kind == "finished":
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Stopped) as info:
        reproduce("radam", TEST, jobs=1, out=tmp_path, on_event=stop_after_first)
    total = len({id(c) for c in make_cells(TEST, SUITES["radam"].specs(TEST), tmp_path, None).values()})
    assert f"1 of {total} run(s) done, 0 interrupted" in str(info.value)
    assert f"{total - 1} never started; no report written" in str(info.value)
    assert not (tmp_path / "radam" / "report.md").exists()


def test_verdicts_lacking_a_run_are_missing_not_inconclusive(tmp_path):
    from lnexp.experiments.reproduce import mark_missing

    cells = list(make_cells(TEST, SUITES["radam"].specs(TEST), tmp_path, None).values())[:2]
    cells[0].path.mkdir(parents=True)
    (cells[0].path / "summary.json").write_text(json.dumps({"status": "completed"}))
    claim = Claim("c", "s", GREATER, 0.0, "x")
    gap, whole = claim.test([1.0, None], [0, 1]), claim.test([1.0, 2.0], [0, 1])
    mark_missing([gap, whole], cells)
    assert gap.verdict == "missing (1 of 2 runs)" and whole.verdict == INCONCLUSIVE  # [1, 2]: wide at n = 2


# --- shared trainings: one run, the union of the probes (issue #25 item 7) ---------------------------------

def test_cells_that_differ_only_in_what_they_log_are_one_run_logging_the_union(tmp_path):
    from lnexp.experiments.reproduce.engine import Spec, log_final

    post = {"model.norm": "post"}
    plain = Spec.of("train", 0, post)
    probed = Spec.of("train", 0, post, {"log.probes": ("grad", "rank"), "log.grad_every": 2,
                                        "log.ablation_steps": (0, 4)})
    final = Spec.of("train", 0, post, log_final(TEST))  # TEST trains 6 steps: probes at 0 and 5
    cells = make_cells(TEST, [plain, probed], tmp_path, None)
    assert cells[plain] is cells[probed]
    log = cells[plain].config.log
    assert (log.probes, log.grad_every, log.ablation_steps) == (["grad", "act", "rank"], 2, [0, 4])
    assert make_cells(TEST, [plain], tmp_path, None)[plain].config.log.grad_every == 3  # the scale's
    both = make_cells(TEST, [probed, final], tmp_path, None)[final].config.log
    assert both.grad_every == 1  # gcd(2, 5): every step either asked for is logged
    with pytest.raises(RuntimeError, match="ask for different log.loss_every"):
        make_cells(TEST, [plain, Spec.of("train", 0, post, {"log.loss_every": 1})], tmp_path, None)


def test_a_finished_run_that_logged_more_is_reused_and_rerunning_trains_nothing(tmp_path):
    # feature-dimension's GPT-2 arms at gpt2-scaling's depth and learning rate are its cells: they log
    # more probes, at steps 0 and 5, and gpt2-scaling asks for nothing they lack
    from lnexp.experiments.reproduce.suites.feature_dimension import GPT2, GPT2_INIT

    fd = suites.feature_dimension.Params((GPT2, GPT2_INIT), depths=(2,), lr=3e-3)
    scale = dataclasses.replace(TEST, suite_params={**TEST.suite_params, "feature-dimension": fd})
    features = reproduce("feature-dimension", scale, jobs=1, out=tmp_path)
    assert features.trained == 2 * 2 and not features.failed
    gpt2 = reproduce("gpt2-scaling", scale, jobs=1, out=tmp_path)
    assert gpt2.trained == 0 and gpt2.reused == 2 * 2
    assert reproduce("feature-dimension", scale, jobs=1, out=tmp_path).trained == 0


def test_a_placebos_second_arm_is_the_same_cell_on_the_next_seeds(tmp_path):
    from lnexp.experiments.reproduce.engine import disjoint, per_seed

    arm = per_seed("train", 3, {"model.norm": "post"})
    other = disjoint(arm)
    assert [s.seed for s in other] == [3, 4, 5] and {s.overrides for s in other} == {arm[0].overrides}
    cells = make_cells(TEST, [*arm, *other], tmp_path, None)
    assert len({cells[s].path for s in (*arm, *other)}) == 6
    assert [s.seed for s in disjoint(per_seed("train", 2, {}, first=4))] == [6, 7]


def test_verdict_numbers_are_identical_across_jobs_and_differ_across_threads_at_rounding_level(tmp_path):
    """docs/reproduce.md#determinism: each run trains in its own process from its own seed, so --jobs
    does not change a number; the thread count changes the order of the matmuls' sums, so --threads
    moves numbers at rounding level (and training can carry that further: measured in the docs)."""
    def values(out, **how):
        outcome = reproduce("gpt2-scaling", TEST, out=tmp_path / out, pack=1, **how)
        assert outcome.trained == 4 and not outcome.failed
        return [v.values for v in outcome.verdicts["gpt2-scaling"]]

    alone = values("a", jobs=1, threads=1)
    assert all(x is not None for v in alone for x in v)
    assert values("b", jobs=2, threads=1) == alone
    threads = values("c", jobs=1, threads=2)
    assert all(x == pytest.approx(y, rel=1e-4) for v, w in zip(threads, alone) for x, y in zip(v, w))


def test_the_false_positive_rate_counts_only_placebos_with_an_interval():
    from lnexp.experiments.reproduce.verdicts import Tally

    placebo = Claim("a lead", "steps", GREATER, 0.0, "a test's choice").placebo("A against A′")
    judged = placebo.test([2.0, 2.1, 2.2], [0, 1, 2])             # an interval: counted
    unmeasured = placebo.test([None, None, None], [0, 1, 2])       # inconclusive, no interval: not counted
    assert judged.verdict == "reproduced" and unmeasured.verdict == "inconclusive"
    tally = Tally.of([judged, unmeasured])
    assert (tally.placebo_reproduced, tally.placebo_judged) == (1, 1)
