"""From run folders to numbers: the one way every suite reads its runs.

- A run's outcome: `final_loss` (+∞ for a diverged run), `capped_loss` (finite: Wortsman et al. 2023's
  min(final loss, loss at init)), `converged`, `outcome` (diverged, stuck or training), `loss_curve`,
  `steps_below` (when the training loss first crosses a line).
- A run's complete per-layer profile of a probe at initialisation or on the final model (`profile`),
  None when the run lacks it: a suite never sees a partial profile.
- Seed-level statistics: `seedwise(f, a, b, ...)` applies f to the seeds' values of each arm, seed by
  seed (a paired difference or ratio), None where a seed lacks one; the numbers a claim's statistic is
  made of (`power_exponent`, `trend_ratio`, `stream_growth`, ...) are here, each once.
- Bands for figures: a profile per seed is a curve of (layer, value): lnexp.report.figures.seed_band
  draws their mean and min–max (`seed_band(ax, [list(enumerate(p)) for p in profiles if p], ...)`).

"init" is step 0 (the probes of the first training step read the initial weights). "final" is the
last training step, `train.steps − 1`: the training-step probes (grad, act, ...) read a step's own
forward and backward, so the weights they see there have had all updates but the last. A suite that
reads "final" asks its cells to log that step (lnexp.experiments.reproduce.engine.log_final); a run
whose last logged step is another one has no final profile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from lnexp.core.probe_kinds import profile_depth
from lnexp.core.stats import usable
from lnexp.core.status import Status
from lnexp.run.reader import Run
from lnexp.run.rows import layer_profile, logged_steps

FINAL = ("the last training step (step `train.steps − 1`: its probes read the weights after all updates "
         "but the last)")


# --- a run's outcome ---------------------------------------------------------------------------------

def final_loss(run: Run | None) -> float | None:
    """Final validation loss of a completed run, +∞ for a diverged one, None for no result."""
    if run is None:
        return None
    if run.status == Status.DIVERGED:
        return math.inf
    if run.status != Status.COMPLETED:
        return None
    value = run.summary.get("final_val_loss")
    return float(value) if value is not None else None


def converged(run: Run | None, threshold: float) -> bool | None:
    """Completed, not diverged, and final validation loss below the threshold; None: no result."""
    loss = final_loss(run)
    return None if loss is None else loss < threshold


def loss_curve(run: Run | None, key: str = "loss") -> list[tuple[int, float]]:
    if run is None:
        return []
    return [(m["step"], float(m[key])) for m in run.metrics if m.get(key) is not None]


def init_loss(run: Run | None) -> float | None:
    """Validation loss of the initial model (the evaluation at step 0, on the same windows as the
    final one); None if the run has none."""
    return next((value for step, value in loss_curve(run, "val_loss") if step == 0), None)


def capped_loss(run: Run | None) -> float | None:
    """Wortsman et al. 2023's min(final loss, loss at init): the final validation loss, a diverged run
    (or one that ends above where it started) counting as its loss at initialisation. Finite, so that a
    diverged seed enters an interval instead of voiding it; None: no result."""
    final, start = final_loss(run), init_loss(run)
    if final is None or start is None:
        return None
    return min(final, start)


def lr_sensitivity(capped: Sequence[float | None]) -> float | None:
    """Wortsman et al. 2023's learning-rate sensitivity over a log grid of learning rates: the mean over
    the grid of [min(final loss, loss at init) − the best final loss over the grid], from the capped
    losses in grid order; None if one is missing."""
    if not capped or any(not usable(c) for c in capped):
        return None
    best = min(capped)
    return sum(c - best for c in capped) / len(capped)


DIVERGED, STUCK, TRAINING = "diverged", "stuck", "training"  # a run's outcome


def outcome(run: Run | None, threshold: float) -> str | None:
    """`diverged` (the trainer stopped it: a NaN or a loss past its divergence threshold), `training`
    (completed with a final validation loss below `threshold`), `stuck` (completed, not below it: at
    the unigram baseline, or above it); None: no result."""
    loss = final_loss(run)
    if loss is None:
        return None
    return DIVERGED if math.isinf(loss) else TRAINING if loss < threshold else STUCK


def steps_below(run: Run | None, line: float) -> float | None:
    """The first step at which the training loss (metrics.jsonl's, one batch's) is below `line`; a
    run that never gets there counts as its length, `train.steps` (a lower bound: censored). None: no
    result."""
    if final_loss(run) is None:
        return None
    return float(next((step for step, value in loss_curve(run) if value < line),
                      int(run.config.get("train", {}).get("steps", 0))))


# --- profiles ----------------------------------------------------------------------------------------

def profile(run: Run | None, probe: str, param: str,
            at: Literal["init", "final"] = "init") -> list[float] | None:
    """The probe's value by layer (`param`: a weight role such as `ffn.fc2`, or a measure such as
    `resid`) at initialisation or on the final model; None unless the run logged that step and the
    profile is complete (one value per layer, and one leaving the last block for a stream measure).
    "final" also needs a completed run: a diverged one has no final model."""
    if run is None:
        return None
    steps = logged_steps(run.probes, probe)
    if at == "init":
        step = 0
    else:
        step = int(run.config.get("train", {}).get("steps", 0)) - 1
        if run.status != Status.COMPLETED:
            return None
    if step not in steps:
        return None
    values = layer_profile(run.probes, probe, param, step)
    model = run.config.get("model", {})
    return values if len(values) == profile_depth(probe, param, int(model.get("n_layers", 0))) else None


def last_layer(values: Sequence[float] | None) -> float | None:
    return values[-1] if values else None


# --- seed-level statistics ---------------------------------------------------------------------------

def seedwise(f: Callable[..., float | None], *arms: Sequence[Any]) -> list[float | None]:
    """f applied seed by seed to the arms' values (each a list, one entry per seed, in seed order);
    None for a seed where an arm has no value or f gives none."""
    return [f(*xs) if all(x is not None for x in xs) else None for xs in zip(*arms)]


def difference(a: float | None, b: float | None) -> float | None:
    """a − b; None if either is missing or both are infinite (two diverged runs compare as nothing)."""
    if not usable(a) or not usable(b) or (math.isinf(a) and math.isinf(b)):
        return None
    return a - b


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b for finite a and positive finite b; None otherwise."""
    if not usable(a) or not usable(b) or not math.isfinite(a) or not math.isfinite(b) or b <= 0:
        return None
    return a / b


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept a and slope b of y = a + b·x (needs two distinct x)."""
    n = len(xs)
    if n < 2 or n != len(ys):
        raise ValueError("need at least two points")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("need two distinct x values")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def power_exponent(xs: Sequence[float], ys: Sequence[float | None]) -> float | None:
    """b in y ∝ x^b, fitted as log y = a + b·log x; None if a value is not positive or missing."""
    if any(not usable(y) or y <= 0 for y in ys) or any(x <= 0 for x in xs):
        return None
    return fit_line([math.log(x) for x in xs], [math.log(y) for y in ys])[1]


def trend_ratio(values: Sequence[float] | None) -> float | None:
    """Last/first ratio of the log-linear trend fitted through a per-layer profile: > 1 grows with
    the layer index, < 1 shrinks. Less noisy than the raw last/first ratio."""
    if not values or len(values) < 2 or any(not usable(v) or v <= 0 for v in values):
        return None
    _, b = fit_line(list(range(len(values))), [math.log(v) for v in values])
    return math.exp(b * (len(values) - 1))


def stream_growth(rms: Sequence[float] | None) -> float | None:
    """RMS² of the residual stream leaving the last block over RMS² leaving the first, from the `act`
    profile (entry l = the stream entering layer l; the last entry leaves the last layer). From the
    first block's output on, so that the embedding's own scale (√d-scaled tokens plus sinusoidal
    positions have RMS² 1.5, not the 1 a LayerNorm gives) does not count as growth."""
    if not rms or len(rms) < 3 or any(not usable(v) or v <= 0 for v in rms):
        return None
    return (rms[-1] / rms[1]) ** 2


def stream_increment(rms: Sequence[float] | None) -> float | None:
    """RMS² of the stream leaving the last layer minus RMS² of its input: E‖x_L‖²/d − E‖x_0‖²/d, what
    Xiong et al.'s lemma bounds by [L/2, 3L/2] for Pre-LN (their (1 + L/2)·d ≤ E‖x_L‖² ≤ (1 + 3L/2)·d
    with a unit-variance input; each block adds a variance that does not depend on the stream's)."""
    if not rms or len(rms) < 2 or any(not usable(v) for v in rms):
        return None
    return rms[-1] ** 2 - rms[0] ** 2
