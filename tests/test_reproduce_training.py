"""The training suites (xiong2020-warmup, radam, depth, stability-map) and the placebo suite, on fake run
folders whose numbers each test chooses: every verdict must follow the data, and flip when it flips."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from test_reproduce import TEST  # the test scale and its suites' parameters

from lnexp.core.config import dump_yaml
from lnexp.core.stats import binomial_interval
from lnexp.experiments.reproduce import SCALES, suites
from lnexp.experiments.reproduce.engine import SuiteRuns, make_cells
from lnexp.experiments.reproduce.measure import (
    DIVERGED,
    STUCK,
    TRAINING,
    capped_loss,
    lr_sensitivity,
    outcome,
    steps_below,
)
from lnexp.experiments.reproduce.suites import SUITES, radam
from lnexp.experiments.reproduce.verdicts import (
    GRID_EDGE,
    INCONCLUSIVE,
    NOT_APPLICABLE,
    NOT_REPRODUCED,
    PLACEBO,
    REPRODUCED,
    Claim,
    Tally,
)
from lnexp.run.reader import Run

BASELINE = math.log(16)  # the test scale's data: 16 uniform symbols; converges below BASELINE − 0.25
TRAINS, STUCK_AT, INIT = 1.0, 2.8, 4.0


@dataclasses.dataclass
class Fake:
    """What a fake run ends with: its final validation loss (inf: diverged), the first step at which
    its training loss is below the line (None: never), its per-layer probes."""

    final: float
    reaches: int | None = 3
    probes: list = dataclasses.field(default_factory=list)


def fake_runs(tmp_path: Path, suite: str, make, scale=TEST):
    """A fake run folder for every cell of `suite` (make(config) -> Fake); the suite's analysis."""
    grid = SUITES[suite].grid_at(scale)
    cells = make_cells(scale, [s for specs in grid.values() for s in specs], tmp_path, None)
    for cell in {id(c): c for c in cells.values()}.values():
        fake = make(cell.config)
        steps = cell.config.train.steps
        status = "diverged" if math.isinf(fake.final) else "completed"
        line = BASELINE - scale.margin
        rows = [{"step": s, "loss": line - 0.1 if fake.reaches is not None and s >= fake.reaches else INIT,
                 "val_loss": INIT if s == 0 else None} for s in range(0, steps, 3)]
        if status == "completed":
            rows.append({"step": steps, "loss": None, "val_loss": fake.final})
        cell.path.mkdir(parents=True, exist_ok=True)
        (cell.path / "config.yaml").write_text(dump_yaml(cell.config))
        (cell.path / "meta.json").write_text(json.dumps({"status": status}))
        (cell.path / "summary.json").write_text(json.dumps({
            "status": status, "final_val_loss": None if status == "diverged" else fake.final,
            "unigram_entropy": BASELINE}))
        (cell.path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (cell.path / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in fake.probes))
    return SUITES[suite].analyse(SuiteRuns(suite, scale, SUITES[suite].params_at(scale), grid, cells))


def verdicts(analysis, prefix: str = "") -> dict[str, str]:
    return {v.claim: v.verdict for v in analysis.verdicts if v.claim.startswith(prefix)}


def one(analysis, start: str):
    found = [v for v in analysis.verdicts if v.claim.startswith(start)]
    assert len(found) == 1, [v.claim for v in analysis.verdicts]
    return found[0]


# --- the measurements --------------------------------------------------------------------------------

def run(final: float | None, status: str = "completed", start: float = INIT, curve=()) -> Run:
    metrics = [{"step": 0, "val_loss": start}, *({"step": s, "loss": v} for s, v in curve)]
    return Run(Path("x"), {"train": {"steps": 150, "seed": 0}}, {"status": status},
               {"status": status, "final_val_loss": final}, metrics, [])


def test_the_capped_loss_is_wortsmans_min_of_final_and_init_and_finite_for_a_diverged_run():
    assert capped_loss(run(2.0)) == 2.0
    assert capped_loss(run(5.0)) == INIT  # ended above where it started
    assert capped_loss(run(None, "diverged")) == INIT
    assert capped_loss(run(None, "running")) is None


def test_the_lr_sensitivity_is_the_mean_gap_to_the_best_over_the_grid():
    assert lr_sensitivity([2.0, 1.0, 4.0]) == pytest.approx((1.0 + 0.0 + 3.0) / 3)
    assert lr_sensitivity([1.5, 1.5]) == 0.0
    assert lr_sensitivity([1.0, None]) is None


def test_a_run_is_diverged_stuck_or_training():
    assert outcome(run(None, "diverged"), 2.5) == DIVERGED
    assert outcome(run(2.6), 2.5) == STUCK
    assert outcome(run(2.4), 2.5) == TRAINING
    assert outcome(None, 2.5) is None


def test_steps_below_a_line_is_the_first_logged_step_under_it_or_the_run_length():
    curve = [(0, 5.0), (10, 3.0), (20, 2.0), (30, 1.9)]
    assert steps_below(run(1.9, curve=curve), 2.5) == 20
    assert steps_below(run(1.9, curve=curve), 1.0) == 150  # never: censored at the run's length


def test_the_placebo_rate_states_its_exact_binomial_interval():
    low, high = binomial_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1684, abs=1e-4)
    claim = Claim("x", "y", "greater", 0.0, "z").placebo("A against A′")
    tally = Tally.of([claim.test([1.0, 1.1, 1.2], [0, 1, 2])] + [claim.test([-1.0, 1.0, 0.0], [0, 1, 2])] * 3)
    assert tally.false_positive_rate() == 0.25
    assert "95% CI 1%–81%" in tally.sentences()[-1]


# --- xiong2020-warmup -----------------------------------------------------------------------------------

def warmup_world(post_fails=True, warm_rescues=True, pre_needs_warmup=False, pre_reaches=3, warm_reaches=6):
    """Post-LN without warm-up stuck at the top lr (1e-2) if `post_fails`; warm-up rescues it if
    `warm_rescues`; Pre-LN stuck without warm-up if `pre_needs_warmup`."""
    def make(config):
        norm, warm, lr = config.model.norm, config.schedule.warmup_steps > 0, config.optim.lr
        top = lr > 3e-3
        if norm == "post":
            stuck = top and (post_fails and not warm or warm and not warm_rescues)
            return Fake(STUCK_AT if stuck else TRAINS, warm_reaches if warm else 3)
        stuck = top and pre_needs_warmup and not warm
        return Fake(STUCK_AT if stuck else TRAINS, warm_reaches if warm else pre_reaches)
    return make


def test_warmup_rescue_and_interaction_follow_the_data_and_need_their_premises(tmp_path):
    paper = fake_runs(tmp_path / "a", "xiong2020-warmup", warmup_world())
    assert one(paper, "Warm-up rescues Post-LN (lr 0.01)").verdict == REPRODUCED
    assert one(paper, "Warm-up helps Post-LN more than Pre-LN: Pre-LN does not need it (lr 0.01)").verdict \
        == REPRODUCED
    assert one(paper, "Pre-LN without warm-up ends no worse than Post-LN with warm-up (lr 0.01)").verdict \
        == REPRODUCED
    # at 1e-3 Post-LN trains without warm-up: nothing to rescue, said with its numbers
    low = one(paper, "Warm-up rescues Post-LN (lr 0.001)")
    assert low.verdict == NOT_APPLICABLE and "trained: nothing to rescue" in low.reason
    no_help = fake_runs(tmp_path / "b", "xiong2020-warmup", warmup_world(warm_rescues=False))
    assert one(no_help, "Warm-up rescues Post-LN (lr 0.01)").verdict == NOT_REPRODUCED
    interaction = "Warm-up helps Post-LN more than Pre-LN: Pre-LN does not need it (lr 0.01)"
    assert one(no_help, interaction).verdict == NOT_APPLICABLE  # the warm-up arm failed
    both = fake_runs(tmp_path / "c", "xiong2020-warmup", warmup_world(pre_needs_warmup=True))
    assert one(both, interaction).verdict == NOT_REPRODUCED


def test_ahead_early_counts_steps_to_the_line_and_is_also_read_at_matched_learning_rates(tmp_path):
    analysis = fake_runs(tmp_path / "a", "xiong2020-warmup", warmup_world())
    # Pre-LN without warm-up reaches the line at step 3, both warm-up arms at step 6 (the run's length)
    ahead = "Pre-LN without warm-up gets ahead sooner than Post-LN with warm-up (lr 0.01)"
    assert one(analysis, ahead).verdict == REPRODUCED
    matched_claim = ("Pre-LN gets ahead sooner than Post-LN at matched learning rates: both with warm-up "
                     "(lr 0.01)")
    # both warm-up arms never reach the line: the 0 between them is no measurement of a lead
    matched = one(analysis, matched_claim)
    assert matched.verdict == NOT_APPLICABLE and "no lead to measure" in matched.reason
    tied = fake_runs(tmp_path / "t", "xiong2020-warmup", warmup_world(warm_reaches=3))
    tie = one(tied, matched_claim)
    assert tie.verdict == NOT_REPRODUCED and tie.values == [0.0, 0.0]
    late = fake_runs(tmp_path / "b", "xiong2020-warmup", warmup_world(pre_reaches=5, warm_reaches=3))
    assert one(late, ahead).verdict == NOT_REPRODUCED
    never = fake_runs(tmp_path / "n", "xiong2020-warmup", warmup_world(pre_reaches=None))  # neither: 6 steps
    assert one(never, ahead).verdict == NOT_APPLICABLE


# --- radam -----------------------------------------------------------------------------------------------

def test_radams_step_factor_is_torchs_rectifier_and_its_mean_sets_the_matched_arm():
    beta2, lr, g = 0.98, 1e-2, 1e-3  # a constant gradient: Adam's step is lr, RAdam's lr · r_t
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.RAdam([p], lr=lr, betas=(0.9, beta2))
    steps = []
    for _ in range(40):
        before = p.detach().clone()
        p.grad = torch.full((1,), g)
        opt.step()
        steps.append(float(before - p.detach()) / lr)
    for t, step in enumerate(steps):
        expected = radam.rectification(t, beta2)
        if expected == 0:
            assert 0 < step < 2 * g  # SGD with momentum: the gradient's size, ~0 beside an Adam step
        else:
            assert step == pytest.approx(expected, rel=1e-4)
    assert radam.ma_yarats_warmup(SCALES["tiny"]) == 100  # 2/(1 − 0.98)
    plain, rectified = radam.mean_lr_factors(SCALES["tiny"], {})
    assert plain == pytest.approx(0.5033, abs=1e-4) and rectified == pytest.approx(0.2732, abs=1e-4)
    assert radam.matched_lr(SCALES["tiny"], 1e-2) == 0.00543


def radam_world(adam_fails=True, matched_trains=False, radam_trains=True):
    """Post-LN with Adam without warm-up stuck at the top lr (1e-2) if `adam_fails`; Adam at RAdam's
    mean effective lr for it stuck unless `matched_trains`; RAdam there stuck unless `radam_trains`;
    everything else trains."""
    matched = radam.matched_lr(TEST, 1e-2)

    def make(config):
        if config.optim.name == "radam" and config.optim.lr == 1e-2 and not radam_trains:
            return Fake(STUCK_AT)
        bare_adam = config.optim.name == "adam" and config.schedule.warmup_steps == 0
        if bare_adam and config.optim.lr == 1e-2:
            return Fake(STUCK_AT if adam_fails else TRAINS)
        if bare_adam and config.optim.lr == matched:
            return Fake(TRAINS if matched_trains else STUCK_AT)
        return Fake(TRAINS)
    return make


def test_radam_is_told_apart_from_smaller_steps(tmp_path):
    rescue = "RAdam rescues Post-LN without warm-up (lr 0.01)"
    smaller = "RAdam does more than take smaller steps"
    paper = fake_runs(tmp_path / "a", "radam", radam_world())
    assert one(paper, rescue).verdict == REPRODUCED
    assert one(paper, f"{smaller}: it ends better than Adam at its mean effective learning rate (lr 0.01;") \
        .verdict == REPRODUCED
    assert one(paper, "RAdam without warm-up ends no worse than Adam with a 2/(1 − β2) = 6-step warm-up "
                      "(lr 0.01)").verdict == REPRODUCED
    steps = fake_runs(tmp_path / "b", "radam", radam_world(matched_trains=True))
    assert one(steps, f"{smaller}: it ends better than Adam at its mean effective learning rate (lr 0.01;") \
        .verdict == NOT_REPRODUCED
    fine = fake_runs(tmp_path / "c", "radam", radam_world(adam_fails=False))
    assert one(fine, rescue).verdict == NOT_APPLICABLE
    # RAdam stuck as Adam at the smaller lr is: two failed runs tie, which says nothing about step sizes
    stuck = one(fake_runs(tmp_path / "d", "radam", radam_world(radam_trains=False)),
                f"{smaller}: it ends better than Adam at its mean effective learning rate (lr 0.01;")
    assert stuck.verdict == NOT_APPLICABLE
    assert "RAdam without warm-up at lr 0.01 did not converge" in stuck.reason


# --- depth ---------------------------------------------------------------------------------------------

DEPTH_SCALE = dataclasses.replace(TEST, suite_params={
    **TEST.suite_params, "depth": suites.depth.Params((1, 2, 4), 3e-3, {"post": (2, 4)})})


def depth_world(post_fails_from=4, slow_at=(2,), shallow_fails=False):
    """Pre-LN trains everywhere; Post-LN is stuck from `post_fails_from` layers on, and at the depths
    `slow_at` stuck in its short run but training in its longer one."""
    def make(config):
        n, long = config.model.n_layers, config.train.steps > TEST.train["train"]["steps"]
        if config.model.norm == "pre":
            return Fake(TRAINS)
        stuck = n >= post_fails_from or (n in slow_at and not long) or (shallow_fails and n == 1)
        return Fake(STUCK_AT if stuck else TRAINS)
    return make


def test_depth_reads_slow_runs_through_their_longer_runs(tmp_path):
    claim = "Post-LN stops training beyond some depth at which Pre-LN still trains"
    fails = fake_runs(tmp_path / "a", "depth", depth_world(), DEPTH_SCALE)
    assert one(fails, claim).verdict == REPRODUCED and one(fails, claim).values == [2.0, 2.0]
    assert one(fails, "Pre-LN trains at every depth").verdict == REPRODUCED
    slow = fake_runs(tmp_path / "b", "depth", depth_world(post_fails_from=99, slow_at=(2, 4)), DEPTH_SCALE)
    assert one(slow, claim).verdict == GRID_EDGE  # slow is not failed: both train at the deepest depth
    uncovered = dataclasses.replace(DEPTH_SCALE, suite_params={
        **TEST.suite_params, "depth": suites.depth.Params((1, 2, 4), 3e-3, {})})
    blind = fake_runs(tmp_path / "c", "depth", depth_world(), uncovered)
    assert one(blind, claim).verdict == INCONCLUSIVE and "without a longer run" in one(blind, claim).reason
    control = fake_runs(tmp_path / "d", "depth", depth_world(shallow_fails=True), DEPTH_SCALE)
    assert one(control, claim).verdict == NOT_APPLICABLE


def test_a_longer_run_is_its_own_folder():
    specs = SUITES["depth"].specs(DEPTH_SCALE)
    names = {c.name for c in make_cells(DEPTH_SCALE, specs, Path("/tmp/unused"), None).values()}
    assert "post-L2-adam-lr0.003-w2-steps12-s0" in names and "post-L2-adam-lr0.003-w2-s0" in names


# --- stability-map -----------------------------------------------------------------------------------

def map_world(post_top_fails=True, radam_helps=True):
    """Everything trains, except Post-LN (Adam, no warm-up; RAdam too unless `radam_helps`) at the top
    learning rate (1e-2)."""
    def make(config):
        bare = config.model.norm == "post" and config.schedule.warmup_steps == 0
        unstable = bare and (config.optim.name == "adam" or not radam_helps)
        return Fake(STUCK_AT if unstable and post_top_fails and config.optim.lr > 3e-3 else TRAINS)
    return make


def test_the_stability_map_compares_lr_sensitivities_and_knows_its_grid_edge(tmp_path):
    paper = fake_runs(tmp_path / "a", "stability-map", map_world())
    warm = one(paper, "Warm-up makes Post-LN less sensitive to the learning rate")
    assert warm.verdict == REPRODUCED and warm.values == [pytest.approx((STUCK_AT - TRAINS) / 2)] * 2
    assert one(paper, "Pre-LN is less sensitive").verdict == REPRODUCED
    assert one(paper, "RAdam (no warm-up) makes Post-LN less sensitive").verdict == REPRODUCED
    assert one(paper, "Depth makes Post-LN more sensitive").verdict == NOT_REPRODUCED  # same at both depths
    no_radam = fake_runs(tmp_path / "b", "stability-map", map_world(radam_helps=False))
    assert one(no_radam, "RAdam (no warm-up) makes Post-LN less sensitive").verdict == NOT_REPRODUCED
    short = fake_runs(tmp_path / "c", "stability-map", map_world(post_top_fails=False))
    assert {v.verdict for v in short.verdicts} == {GRID_EDGE}  # the grid stops short of the instability


# --- placebo -------------------------------------------------------------------------------------------

def test_placebos_compare_an_arm_with_itself_and_false_positives_show(tmp_path):
    same = fake_runs(tmp_path / "a", "placebo", lambda config: Fake(TRAINS + 0.01 * (config.train.seed % 2)))
    assert same.verdicts and {v.kind for v in same.verdicts} == {PLACEBO}
    assert all(v.claim.startswith("placebo, ") for v in same.verdicts)
    assert REPRODUCED not in {v.verdict for v in same.verdicts}
    assert "a false-positive rate of 0%" in " ".join(same.findings)
    # the second arm's seeds end 0.3 nats better: the loss rows must call that an effect
    shifted = fake_runs(tmp_path / "b", "placebo",
                        lambda config: Fake(TRAINS + (0.3 if config.train.seed < TEST.seeds else 0.0)))
    assert Tally.of(shifted.verdicts).placebo_reproduced >= 4


def test_the_placebo_suite_reads_its_arms_from_the_suites_that_train_them_with_20_comparisons_at_tiny():
    scale = SCALES["tiny"]
    grid = SUITES["placebo"].grid_at(scale)
    warm = SUITES["xiong2020-warmup"].grid_at(scale)
    assert grid[(("post+warm-up", 1e-2), "A")] == warm["post+warm-up", 1e-2]
    assert [s.seed for s in grid[(("post+warm-up", 1e-2), "A′")]] == [3, 4, 5]
    params = SUITES["placebo"].params_at(scale)
    analysis = SUITES["placebo"].analyse(SuiteRuns("placebo", scale, params, grid, {}))
    assert len(analysis.verdicts) >= 20


def test_every_training_cell_has_the_scales_seeds():
    for name in ("xiong2020-warmup", "radam", "depth", "stability-map"):
        for scale in SCALES.values():
            assert {len(specs) for specs in SUITES[name].grid_at(scale).values()} == {scale.seeds}
