"""The feature-dimension suite (issue #26): claims (a)-(d) on constructed profiles, its premises, the
initialisation rows that never count, its cells shared with the layouts and gpt2-scaling suites, and
one small reproduction end to end."""

import dataclasses
import json
import math

import pytest
from test_reproduce import TEST, fake_runs, verdicts_by_claim

from lnexp.experiments.reproduce import SCALES, reproduce
from lnexp.experiments.reproduce.engine import make_cells
from lnexp.experiments.reproduce.suites import SUITES
from lnexp.experiments.reproduce.suites import feature_dimension as fd
from lnexp.experiments.reproduce.verdicts import (
    HOLDS,
    INCONCLUSIVE,
    NOT_APPLICABLE,
    NOT_REPRODUCED,
    REPRODUCED,
    Tally,
)

LEARNED, STUCK = 2.0, 2.9  # TEST's data: the unigram baseline is ln 16 = 2.77, learning is below 2.52


def test_thirds_and_the_profile_statistics():
    hunchback = [10.0, 14.0, 20.0, 21.0, 13.0, 11.0]
    assert fd.thirds(hunchback) == (12.0, 20.5, 12.0)
    assert fd.hump(hunchback) == pytest.approx((20.5 - 12.0) / 20.5)
    assert fd.hump([10.0] * 6) == 0.0 and fd.hump([5.0, 10.0, 15.0]) < 0  # flat, rising: no hump
    assert fd.rise([5.0, 10.0, 15.0]) == pytest.approx(2.0) and fd.rise(hunchback) == 0.0
    assert fd.late_over_early([4.0, 3.0, 2.0, 1.0]) == pytest.approx(0.25)  # thirds of 1 at L = 4
    assert fd.peak_depth(hunchback) == pytest.approx(4 / 6)
    assert fd.thirds([1.0, 2.0]) is None and fd.hump([1.0, None, 2.0]) is None  # under 3 blocks; a gap
    assert fd.ID.blocks([9.0, 1.0, 2.0]) == [1.0, 2.0] and fd.ANGLE.blocks([1.0, 2.0]) == [1.0, 2.0]
    assert fd.ID.xs(2) == [0.0, 0.5, 1.0] and fd.ANGLE.xs(2) == [0.5, 1.0]


def arm_of(config) -> str:
    m = config.model
    if m.norm_type == "dyt":
        return fd.DYT
    if m.init == "gpt2":
        return fd.GPT2 if m.residual_scaling == "gpt2" else fd.GPT2_INIT
    return m.norm


# What every arm's trained model shows, by default: a dimension that rises then falls, Pre-LN with more
# and larger outliers than Peri-LN (and than at its initialisation), deep Pre-LN blocks close to the
# identity and LayerNorm Scaling's and Mix-LN's not, and Post-LN's loss depending on its late top
# directions more than Pre-LN's: every claim reproduced.
PAPERS = {
    "id": lambda arm: "hump",
    "kurtosis": lambda arm: 8.0 if arm == "pre" else 2.0,
    "massive": lambda arm: 60.0 if arm == "pre" else 12.0,
    "angle": lambda arm: 0.3 if arm in ("pre", fd.GPT2_INIT) else 1.0,  # last third ÷ first third
    "skip": lambda arm: 0.005 if arm == "pre" else 0.05,                  # loss change, last third
    "top": lambda arm: 0.1 if arm == "post" else 0.0,                     # loss change, last third
    "scale_free": lambda arm: 3.0 if arm == "post" else 1.0,               # last third ÷ first third
    "loss": lambda arm, n: LEARNED,
}


def world(**changes):
    """Fake probe rows for every cell (lnexp.experiments.reproduce.suites.feature_dimension's probes, at
    steps 0 and 5 of TEST's 6): PAPERS' trained model, with `changes`; at initialisation, flat profiles
    that would pass no claim."""
    shape = {**PAPERS, **changes}

    def make(config):
        arm, n = arm_of(config), config.model.n_layers
        rows = []

        def add(step, m, values):
            rows.extend({"step": step, "probe": m.probe, "layer": i, "param": m.param, "value": v}
                        for i, v in enumerate(values))

        def thirds(first, middle, last, stream):  # a profile at the blocks' outputs, by thirds
            k = n // 3
            values = [first] * k + [middle] * (n - 2 * k) + [last] * k
            return [first] * stream + values

        for step in (0, 5):
            trained = step == 5
            ident = {"hump": (10, 16, 10), "rise": (10, 13, 16), "flat": (12, 12, 12)}[
                shape["id"](arm) if trained else "flat"]
            add(step, fd.ID, thirds(*ident, stream=True))
            add(step, fd.ID_SE, thirds(0.5, 0.5, 0.5, stream=True))
            kurt = shape["kurtosis"](arm) if trained else 1.5
            add(step, fd.KURTOSIS, thirds(1.5, 1.5, kurt, stream=True))
            add(step, fd.MASSIVE, thirds(6.0, 6.0, shape["massive"](arm) if trained else 6.0, stream=True))
            # at initialisation GPT-2's scaled branches turn every block's output by less
            angle = shape["angle"](arm) if trained else 1.0
            scale = 0.4 if arm == fd.GPT2 and not trained else 1.0
            add(step, fd.ANGLE, thirds(0.2 * scale, 0.2 * scale, 0.2 * scale * angle, stream=False))
            add(step, fd.SKIP, thirds(0.1, 0.05, shape["skip"](arm) if trained else 0.05, stream=False))
            top = shape["top"](arm) if trained else 0.0
            add(step, fd.TOP_DIMS, thirds(0.0, 0.0, top, stream=True))
            add(step, fd.TOP_PCS, thirds(0.0, 0.0, top, stream=True))
            add(step, fd.SCALE_FREE, thirds(1.0, 1.0, shape["scale_free"](arm) if trained else 1.0,
                                            stream=True))
        return "completed", shape["loss"](arm, n), rows

    return make


def analysed(tmp_path, **changes):
    analysis = fake_runs(tmp_path, "feature-dimension", world(**changes))
    return analysis, verdicts_by_claim(analysis)


def rows_of(verdicts, prefix, depth=None):
    return {c: v for c, v in verdicts.items() if c.startswith(prefix) and (depth is None or
                                                                          c.endswith(f"L = {depth}"))}


def test_every_claim_reproduces_on_the_papers_world_and_init_rows_never_count(tmp_path):
    analysis, verdicts = analysed(tmp_path)
    claims = [v for v in analysis.verdicts if v.kind == "claim"]
    # (a) hump per arm, (a) the mentor's for post and pre, (b) 3, (c) 5, (d) 3: at L = 3 and 6
    assert len(claims) == 2 * (len(fd.ARMS) + 2 + 3 + 5 + 3)
    assert {v.claim: v.verdict for v in claims if not v.claim.startswith("(a) The mentor's")} == \
        {v.claim: REPRODUCED for v in claims if not v.claim.startswith("(a) The mentor's")}
    # the mentor's version reads the same dimension profile: a hump is not "later is higher"
    assert set(rows_of(verdicts, "(a) The mentor's").values()) == {NOT_REPRODUCED}
    # the initialisation profiles are flat: the table reports them, no verdict reads them
    at_init = analysis.tables[0]
    assert "| (a) The intrinsic dimension rises then falls" in at_init and "trained model" in at_init
    assert Tally.of(analysis.verdicts).claims == {REPRODUCED: len(claims) - 4, NOT_REPRODUCED: 4}
    wiring = [v for v in analysis.verdicts if v.kind == "wiring"]
    assert [v.verdict for v in wiring] == [HOLDS, HOLDS] and wiring[0].values == pytest.approx([0.4, 0.4])


def test_the_verdicts_follow_the_measurements(tmp_path):
    _, verdicts = analysed(tmp_path, id=lambda arm: "rise", kurtosis=lambda arm: 1.6,
                           scale_free=lambda arm: 1.0, angle=lambda arm: 0.3 if arm == "pre" else 0.35)
    assert set(rows_of(verdicts, "(a) The intrinsic dimension").values()) == {NOT_REPRODUCED}
    assert set(rows_of(verdicts, "(a) The mentor's").values()) == {REPRODUCED}
    assert set(rows_of(verdicts, "(b) Pre-LN's stream has more outlier").values()) == {NOT_REPRODUCED}
    assert set(rows_of(verdicts, "(b) Training grows").values()) == {NOT_REPRODUCED}  # 1.6 ÷ 1.5 < 1.25
    assert set(rows_of(verdicts, "(d) Shielding, scale-free").values()) == {NOT_REPRODUCED}
    assert set(rows_of(verdicts, "(c) LayerNorm Scaling lifts").values()) == {NOT_REPRODUCED}  # 1.17×


def test_a_claim_on_an_arm_that_did_not_learn_is_not_applicable(tmp_path):
    # Post-LN does not learn at L = 6: its rows there are not applicable, at L = 3 they stand
    _, verdicts = analysed(tmp_path, loss=lambda arm, n: STUCK if arm == "post" and n == 6 else LEARNED)
    for prefix in ("(a) The mentor's version: later layers carry higher-dimensional features: Post-LN",
                   "(d) Shielding"):
        assert set(rows_of(verdicts, prefix, 6).values()) == {NOT_APPLICABLE}
        assert NOT_APPLICABLE not in rows_of(verdicts, prefix, 3).values()
    assert NOT_APPLICABLE not in rows_of(verdicts, "(c)", 6).values()  # no Post-LN there


def test_a_fix_needs_the_curse_and_shielding_needs_something_to_shield_from(tmp_path):
    # Pre-LN's deep blocks are not close to the identity: nothing for LayerNorm Scaling or Mix-LN to lift
    analysis, verdicts = analysed(tmp_path, angle=lambda arm: 1.0)
    assert set(rows_of(verdicts, "(c) The curse of depth").values()) == {NOT_REPRODUCED}
    for prefix in ("(c) LayerNorm Scaling", "(c) Mix-LN", "(c) GPT-2"):
        assert set(rows_of(verdicts, prefix).values()) == {NOT_APPLICABLE}
    lifted = next(v for v in analysis.verdicts if v.claim.startswith("(c) LayerNorm Scaling lifts"))
    assert lifted.reason.startswith("Pre-LN's deep blocks did not come close to the identity")
    # Post-LN's loss does not depend on its top directions either: shielding is not applicable
    _, verdicts = analysed(tmp_path / "b", top=lambda arm: 0.0)
    assert set(rows_of(verdicts, "(d) Shielding: ").values()) == {NOT_APPLICABLE}


def test_without_runs_every_row_is_inconclusive_not_applicable(monkeypatch, tmp_path):
    from lnexp.experiments.reproduce import engine
    from lnexp.experiments.reproduce.engine import SuiteRuns

    monkeypatch.setattr(engine, "unigram_val_loss", lambda config: 5.0)
    suite = SUITES["feature-dimension"]
    analysis = suite.analyse(SuiteRuns(suite.name, TEST, suite.params_at(TEST), suite.grid_at(TEST), {}))
    assert {v.verdict for v in analysis.verdicts} == {INCONCLUSIVE}


@pytest.mark.parametrize("scale", list(SCALES))
def test_the_cells_are_the_layouts_and_gpt2_suites_trainings(tmp_path, scale):
    """At every scale the suite's arms at the layouts suite's depth are that suite's cells, and its
    GPT-2 arms at gpt2-scaling's depth are that suite's: those train once, for all three."""
    s = SCALES[scale]
    p = fd.PARAMS[scale]
    mine = fd.SUITE.grid_at(s)
    others = [spec for name in ("layouts", "gpt2-scaling") for spec in SUITES[name].specs(s)]
    cells = make_cells(s, [spec for group in mine.values() for spec in group] + others, tmp_path, None)
    theirs = {cells[spec].path for spec in others}
    shared = {key for key, group in mine.items() if all(cells[spec].path in theirs for spec in group)}
    layouts_depth = SUITES["layouts"].params_at(s).depth
    gpt2_depth = SUITES["gpt2-scaling"].params_at(s).depth
    expected = {(arm, layouts_depth) for arm in fd.ARMS if arm not in (fd.GPT2, fd.GPT2_INIT)} | \
        {(arm, gpt2_depth) for arm in (fd.GPT2, fd.GPT2_INIT)}
    assert shared == expected and set(p.depths) == {layouts_depth, gpt2_depth} and len(p.depths) >= 2
    log = cells[mine[fd.POST.name, layouts_depth][0]].config.log  # the union of the three suites' requests
    last = s.train["train"]["steps"] - 1
    assert set(fd.PROBES) <= set(log.probes) and log.intrinsic_dim_steps == [0, last]
    assert log.grad_every == last  # log_final: the training-step probes at steps 0 and the last


def test_end_to_end_writes_figures_tables_and_the_answer(tmp_path):
    small = fd.Params((fd.PRE.name, fd.PERI.name, fd.LNS.name), depths=(3,), lr=3e-3)
    scale = dataclasses.replace(TEST, suite_params={**TEST.suite_params, "feature-dimension": small})
    outcome = reproduce("feature-dimension", scale, jobs=1, out=tmp_path)
    assert outcome.trained == 3 * 2 and not outcome.failed
    folder = tmp_path / "feature-dimension"
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(file for file, _, _ in fd.FIGURES)
    report = (folder / "report.md").read_text()
    assert "could not be drawn" not in report and "## What the numbers say" in report
    assert "Where the trained model's TwoNN dimension peaks" in report
    assert "| claim | at initialisation (mean ± std, n) | trained model |" in report
    rows = json.loads((folder / "verdicts.json").read_text())["rows"]
    # (a) hump for 3 arms and the mentor's for Pre-LN, (b) 3 rows, (c) identity, LNS angle and skip; no
    # row that reads Post-LN, Mix-LN or the GPT-2 arms
    assert len(rows) == 3 + 1 + 3 + 3
    assert all(v["values"] and all(x is not None and math.isfinite(x) for x in v["values"]) for v in rows)


def test_the_docs_tables_are_what_the_report_command_prints():
    """docs/feature-dimension.md's verdict tables are `lnexp reproduce report DIR --markdown` for the
    stored verdicts (`lnexp reproduce report --refresh docs/feature-dimension.md` rewrites them)."""
    from pathlib import Path

    from lnexp.experiments.reproduce.report import BLOCK, load, markdown

    root = Path(__file__).resolve().parents[1]
    blocks = {match["args"].split()[0]: match["body"]
              for match in BLOCK.finditer((root / "docs" / "feature-dimension.md").read_text())}
    assert "docs/results/tiny/feature-dimension" in blocks
    for folder, body in blocks.items():
        assert body == markdown(load(root / folder))
