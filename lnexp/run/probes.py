"""What a run measures inside the model, on logging steps only.

- `grad`: the norm of every parameter's gradient (named by layer and role), before clipping.
- `act`: the RMS of the residual stream entering every block and leaving the last one (before
  the final norm).
- `update`: the update-to-weight ratio ||Δθ|| / ||θ|| of every parameter after the optimiser step.
- `adam`: quantiles (10/50/90%) of Adam's second moment v_t per parameter (`adam_v_q10` ...).
- `output_change` (at `log.output_change_steps`): Admin's amplification measure, per layer: the
  relative change of the logits, ||f(x; θ + δ) − f(x; θ)|| / ||f(x; θ)||, when only that layer's
  weights get a random-sign perturbation δ = ε·|θ|·s.
- `rank`: the dimensionality of the features, on a fixed validation batch (a no-grad forward of its
  own on logging steps): for the residual stream entering each block and leaving the last (`resid.*`)
  and for each branch's output before it joins the stream (`attn.*`, `cross.*`, `ffn.*`), one SVD of
  the centred (tokens × d_model) matrix gives the entropy effective rank exp(H(σ/Σσ)) of Roy &
  Vetterli 2007 (`*.erank`) and the participation ratio (Σλ)²/Σλ², λ = σ² (`*.pr`); and the mean
  cosine similarity between token vectors, uncentred (`*.aniso`: 1 is rank collapse).
- `sensitivity`: ||∂loss/∂x_l||, the gradient of the training loss with respect to the residual
  stream entering each block and leaving the last (`dloss_dx`), from the logging step's own backward
  pass (the gradient of a zero added to the stream there: no second backward), and the scale-free
  ||x_l||·||∂loss/∂x_l|| (`scale_free`, both norms over the step's whole stream: unchanged when a
  later norm makes the loss blind to x's scale); and at `log.ablation_steps`, per layer, the
  relative change of the validation loss when every branch output of that layer is replaced by
  Gaussian noise of the same norm, token by token (`noise_loss_change`: one forward per layer).

The feature-dimension instruments (issue #26), each at its `log.*_steps`, on the first validation
batch cut to at most 4,096 tokens (whole sequences; `ProbeKind.tokens`):
- `intrinsic_dim`: the TwoNN intrinsic dimension (Facco et al. 2017) of the residual stream entering
  each block and leaving the last (`twonn`, with its standard error `twonn_se`). Each token vector is
  first normalised as a LayerNorm without affine would (centred, unit variance), so Pre-LN's growing
  raw stream and Post-LN's normalised one are compared on equal terms. See `twonn` for the estimator.
- `outliers`: for the stream and each branch's output (as `rank`), the kurtosis of the per-neuron
  RMS (He et al. 2024: mean(s⁴)/mean(s²)², s_i the RMS of neuron i over the tokens; 1 when every
  neuron has the same RMS, large when a few dominate) and max |a| / median |a| over all the tensor's
  entries (Sun et al. 2024's massive activations).
- `layer_change`: per block, the mean over tokens of the angular distance (1/π)·arccos(cos(x_in,
  x_out)) between its input and output (`angle`; Gromov et al. 2024), and the relative change of the
  validation loss when the block is skipped, its output replaced by its input (`skip_loss_change`:
  one forward per block).
- `direction_ablation`: at each boundary of the stream (entering each block and leaving the last),
  the relative change of the validation loss when its top-k dimensions by RMS over the tokens
  (`top_dims_loss_change`) or its top-k principal directions (`top_pcs_loss_change`) are
  mean-replaced, k = `log.direction_k`: the ablated coordinates take their mean over the batch's
  tokens. Mean-replacing rather than zeroing removes what a direction carries from token to token
  and keeps its constant offset: a massive activation that acts as a bias would otherwise shift the
  next norm's input by a constant the model never saw, which measures the offset's size rather
  than the model's use of the direction. Two forwards per boundary.

In an encoder-decoder (`model.arch: encoder_decoder`) a parameter's layer is its index in its stack
and its role carries the stack (`enc.3.ffn.fc2.weight` -> layer 3, `enc.ffn.fc2.weight`). `act`,
`rank`, `sensitivity` and `output_change` follow the decoder's blocks (`dec.{i}`), the stream the
logits are read from: `act` is the RMS entering each decoder block and leaving the last, and
`output_change` perturbs one decoder block at a time (its self-attention, cross-attention and FFN).
The encoder's layers are not in these per-layer probes (their rows are keyed by layer index alone).

Nothing here reads the device: a Reading keeps its values as device tensors, and the training loop
reads every pending reading together with the pending losses in one transfer. `act` and
`sensitivity` read the residual stream through the model's tap (lnexp.core.model: `forward(...,
tap=)`), a `StreamTap` that the trainer passes on logging steps only (`arm()` gives it); a packed
step taps its cells with the same and hands their values over (`record_stream`). The evaluation
probes use the same tap to change the stream (skip a block, ablate directions). Under torch.compile
the tap is traced into the graph: the graph's guards check which tap the forward gets (`untapped`,
or a StreamTap: its `act` flag, its `acts` list empty, its deltas' shapes), so a logging step runs a
graph of its own and the other steps' graph has no trace of the probes. Each probe's
eager work is labelled `probe:<kind>` (sensitivity's noise ablation: `probe:ablation`) for
torch.profiler (benchmarks/bench_train.py reads its cost from these labels).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from lnexp.core.config import LogConfig
from lnexp.core.model import Tap, untapped
from lnexp.core.probe_kinds import FEATURE_STATS, OUTLIER_STATS, PROBE_KINDS, ProbeKind

_LAYER = re.compile(r"^(?:blocks|(enc|dec))\.(\d+)\.(.+)$")
QUANTILES = (0.1, 0.5, 0.9)
QUANTILE_SAMPLE = 1 << 20  # torch.quantile sorts: larger tensors are subsampled evenly
RANK_TOKENS = 4096  # the rank probe's SVD takes at most this many tokens (evenly strided)
TWONN_TOKENS = 4096  # TwoNN's points, at most (evenly strided)
TWONN_DISCARD = 0.1  # the share of the largest μ = r2/r1 that TwoNN censors (Facco et al. 2017)
TWONN_CHUNK = 512  # rows of the distance matrix computed at once


def split_name(name: str) -> tuple[int | None, str]:
    """`blocks.3.ffn.fc2.weight` -> (3, 'ffn.fc2.weight'), `dec.3.cross.v.weight` -> (3,
    'dec.cross.v.weight'); `tok_emb.weight` -> (None, 'tok_emb.weight')."""
    match = _LAYER.match(name)
    if not match:
        return None, name
    stack, layer, role = match.groups()
    return int(layer), f"{stack}.{role}" if stack else role


def tensor_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of each tensor, stacked on the device: no host sync."""
    if not tensors:
        return torch.zeros(0)
    try:
        norms = torch._foreach_norm(tensors)  # private but fast: one fused kernel per device/dtype
    except (AttributeError, RuntimeError, NotImplementedError):
        norms = [torch.linalg.vector_norm(t) for t in tensors]
    return torch.stack([n.float() for n in norms])


@dataclass
class Reading:
    """One logging step's measurements, still on the device: `keys[i]` names `values()[i]`."""

    step: int
    keys: list[tuple[str, int | None, str]] = field(default_factory=list)  # (probe, layer, param)
    parts: list[torch.Tensor] = field(default_factory=list)
    total_on_device: torch.Tensor | None = None  # the total gradient norm, for clipping
    # Under torchrun, every rank's [total gradient norm, local loss]: the norms agree (all-reduced
    # gradients), the losses do not (each rank draws its own batches).
    ranks: list[list[float]] | None = None

    def add(self, probe: str, names: list[tuple[int | None, str]], values: torch.Tensor) -> None:
        self.keys += [(probe, layer, param) for layer, param in names]
        self.parts.append(values.detach().float().flatten())

    def values(self) -> torch.Tensor:
        return torch.cat(self.parts) if self.parts else torch.zeros(0)

    def rows(self, host: list[float]) -> list[dict]:
        return [{"step": self.step, "probe": probe, "layer": layer, "param": param, "value": value}
                for (probe, layer, param), value in zip(self.keys, host)]

    def grad_norm_total(self, host: list[float]) -> float | None:
        """The total from the host values (the total is read with them, last of the grad section)."""
        return None if self.total_on_device is None else host[self.keys.index(("grad", None, "total"))]


class Probes:
    def __init__(self, model: nn.Module, kinds: list[str], optimizer: torch.optim.Optimizer | None = None
                 ) -> None:
        self.model, self.optimizer = model, optimizer
        self.kinds = set(kinds)
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [split_name(name) for name, _ in named]
        self.params = [p for _, p in named]
        self.blocks = list(model.residual_blocks())  # see the docstring
        self._tap: StreamTap | None = None
        self._stream: tuple[torch.Tensor | None, ...] = (None, None, None)
        self._before: list[torch.Tensor] = []

    @property
    def enabled(self) -> bool:
        return any(PROBE_KINDS[kind].training_step for kind in self.kinds)

    def arm(self, targets: torch.Tensor) -> Tap:
        """Before a logging step's forward pass: the tap to pass it (`untapped` when neither `act` nor
        `sensitivity` is on). `targets`: the step's, one per position of the stream."""
        if not self.kinds & {"act", "sensitivity"}:
            return untapped
        deltas = zero_deltas(len(self.blocks) + 1, (*targets.shape, self.model.cfg.d_model), targets.device) \
            if "sensitivity" in self.kinds else ()
        self._tap = StreamTap("act" in self.kinds, deltas)
        return self._tap

    def record_stream(self, acts: torch.Tensor | None, grad_norms: torch.Tensor | None,
                      stream_norms: torch.Tensor | None = None) -> None:
        """A logging step's stream values, one per boundary (None: not probed): the RMS entering each
        block and leaving the last (`act`), and ||∂loss/∂x|| and ||x|| there (`sensitivity`). `read`
        takes them from the tap `arm` gave, or a packed step (lnexp.run.pack) hands each cell's over."""
        self._stream = (acts, grad_norms, stream_norms)

    def read(self, step: int) -> Reading:
        """After backward, before the optimiser step: gradient and activation norms (on the device)."""
        reading = Reading(step)
        if self._tap is not None:  # this model's forward was tapped (a packed step hands its values over)
            self.record_stream(*self._tap.values())
            self._tap = None
        if "grad" in self.kinds:
            with record_function("probe:grad"):
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
                norms = tensor_norms(grads)
                reading.total_on_device = torch.linalg.vector_norm(norms)
                reading.add("grad", [*self.names, (None, "total")],
                            torch.cat([norms, reading.total_on_device[None]]))
        (acts, grad_norms, stream_norms), self._stream = self._stream, (None, None, None)
        if acts is not None:
            with record_function("probe:act"):
                reading.add("act", [(layer, "resid") for layer in range(len(acts))], acts)
        if grad_norms is not None:
            with record_function("probe:sensitivity"):
                for param, values in (("dloss_dx", grad_norms), ("scale_free", stream_norms * grad_norms)):
                    reading.add("sensitivity", [(layer, param) for layer in range(len(values))], values)
        if "update" in self.kinds:
            with record_function("probe:update"):
                self._before = [p.detach().clone() for p in self.params]
        return reading

    @torch.no_grad()
    def after_update(self, reading: Reading) -> None:
        """After the optimiser step: update-to-weight ratios and Adam's second-moment quantiles."""
        if self._before:
            with record_function("probe:update"):
                change = tensor_norms(torch._foreach_sub([p.detach() for p in self.params], self._before))
                reading.add("update", self.names, change / tensor_norms(self._before).clamp_min(1e-30))
                self._before = []
        if "adam" in self.kinds and self.optimizer is not None:
            with record_function("probe:adam"):
                self._adam_quantiles(reading)

    def _adam_quantiles(self, reading: Reading) -> None:
        names, stats = [], []
        for name, p in zip(self.names, self.params):
            v = self.optimizer.state.get(p, {}).get("exp_avg_sq")
            if v is not None:
                names.append(name)
                stats.append(torch.quantile(_sample(v), torch.tensor(QUANTILES, device=v.device)))
        if stats:
            table = torch.stack(stats)
            for column, q in enumerate(QUANTILES):
                reading.add(f"adam_v_q{round(q * 100)}", names, table[:, column])

    def evaluate(self, kind: ProbeKind, batch: tuple[torch.Tensor, ...], step: int, seed: int = 0,
                 log: LogConfig | None = None) -> Reading:
        """An evaluation probe's measurement on `batch` (the model's arguments, the targets last; cut
        to the kind's `tokens`): labelled `probe:<its function>` for the profiler, in eval mode (no
        dropout) and without gradients, the model's mode given back however it ends. `log`: the
        config's section, whose `kind.options` the probe reads (their defaults if None)."""
        evaluate = kind.evaluator()
        if kind.tokens is not None:
            batch = first_sequences(batch, kind.tokens)
        options = {key: getattr(log or LogConfig(), key) for key in kind.options}
        was_training = self.model.training
        with record_function(f"probe:{evaluate.__name__}"), torch.no_grad():
            self.model.eval()
            try:
                measured = evaluate(ProbeInput(self.model, self.blocks, batch[:-1], batch[-1], seed, options))
            finally:
                self.model.train(was_training)
        reading = Reading(step)
        for param, values in measured.items():
            reading.add(kind.name, [(layer, param) for layer in range(len(values))], values)
        return reading


class StreamTap:
    """A logging step's tap on the residual stream (lnexp.core.model: `forward(..., tap=)`). At each
    boundary it keeps the stream's RMS in `acts` (`act`) and, given `deltas` (`zero_deltas`), the
    stream's norm in `norms` and adds the boundary's zero to the stream: its gradient after the
    backward pass is ∂loss/∂x there (`sensitivity`). Nothing is hooked: the deltas are made before
    the forward pass and read after the backward one, so torch.compile traces the tap whole, and
    inside a packed step's vmap (lnexp.run.pack) the deltas are its inputs and the RMSs and norms its
    outputs."""

    def __init__(self, act: bool, deltas: tuple[torch.Tensor, ...] = ()) -> None:
        self.act, self.deltas = act, deltas
        self.acts: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []

    def __call__(self, index: int, stream: torch.Tensor) -> torch.Tensor:
        if self.act:
            with record_function("probe:act"):
                self.acts.append(rms(stream))
        if not self.deltas:
            return stream
        with record_function("probe:sensitivity"):
            self.norms.append(torch.linalg.vector_norm(stream.detach().float()))
        return stream + self.deltas[index]

    def values(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """After the backward pass: the RMS, ||∂loss/∂x|| and ||x|| at each boundary (None: not
        tapped), as `Probes.record_stream` takes them."""
        acts = torch.stack(self.acts) if self.acts else None
        if not self.deltas:
            return acts, None, None
        with record_function("probe:sensitivity"):
            return acts, dloss_dx(self.deltas), torch.stack(self.norms)


def zero_deltas(boundaries: int, shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """A StreamTap's deltas: a zero leaf of the stream's `shape` per boundary, for .grad to fill."""
    with record_function("probe:sensitivity"):
        return tuple(torch.zeros(shape, device=device, requires_grad=True) for _ in range(boundaries))


def dloss_dx(deltas: tuple[torch.Tensor, ...], start_dim: int = 0) -> torch.Tensor:
    """||∂loss/∂x|| at each boundary from its delta's gradient: (boundaries,); with `start_dim=1`, a
    pack's (cells first), (cells, boundaries)."""
    return torch.stack([torch.linalg.vector_norm(d.grad.float().flatten(start_dim), dim=-1) for d in deltas],
                       dim=-1)


@dataclass
class ProbeInput:
    """What an evaluation probe gets: the model, the blocks of its residual stream (the decoder's in
    an encoder-decoder), the first validation batch's model arguments and targets, a seed for any
    randomness it draws (the run's), and the values of its `log.*` options."""

    model: nn.Module
    blocks: list[nn.Module]
    inputs: tuple[torch.Tensor, ...]
    targets: torch.Tensor
    seed: int
    options: dict[str, Any] = field(default_factory=dict)

    def loss(self, tap: Tap = untapped) -> torch.Tensor:
        """The validation loss of the batch, the stream through `tap`."""
        return self.model(*self.inputs, self.targets, tap=tap)[1].float()


def first_sequences(batch: tuple[torch.Tensor, ...], tokens: int) -> tuple[torch.Tensor, ...]:
    """The batch's first sequences holding at most `tokens` target tokens (at least one sequence)."""
    rows = max(1, tokens // batch[-1].shape[1])
    return tuple(part[:rows] for part in batch)


def output_change(probe: ProbeInput, eps: float = 1e-2) -> dict[str, torch.Tensor]:
    """Per layer: relative change of the logits when only that layer's weights get a random-sign
    perturbation δ = ε·|θ|·s."""
    model, inputs = probe.model, probe.inputs
    base = model(*inputs)[0].float()
    generator = torch.Generator(device=inputs[0].device).manual_seed(probe.seed)
    changes = []
    for block in probe.blocks:
        params = list(block.parameters())
        signs = [torch.randint(0, 2, p.shape, generator=generator, device=p.device) * 2 - 1 for p in params]
        saved = [p.clone() for p in params]
        torch._foreach_add_(params, [eps * p.abs() * sign for p, sign in zip(params, signs)])
        changes.append(torch.linalg.vector_norm(model(*inputs)[0].float() - base))
        for p, original in zip(params, saved):  # exactly back: adding and subtracting rounds
            p.copy_(original)
    return {"logits": torch.stack(changes) / torch.linalg.vector_norm(base)}


def branches(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """A block's residual branches (attention, cross-attention, FFN), in the order they run."""
    return [(name, getattr(block, name)) for name in block.SUBLAYERS]


def per_site(probe: ProbeInput, measure: Callable[[torch.Tensor], torch.Tensor], stats: dict[str, str]
             ) -> dict[str, torch.Tensor]:
    """`measure` (a tensor of one value per name in `stats`) of one forward pass's residual stream
    entering each block and leaving the last (`resid.*`: the model's hidden states), and of each
    branch's output before it joins the stream (`attn.*`, ...: through hooks that live for this call)."""
    outputs: dict[str, list[torch.Tensor]] = {}

    def keep(role: str) -> Any:
        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            outputs.setdefault(role, []).append(measure(output))
        return hook

    hooks = [branch.register_forward_hook(keep(role))
             for block in probe.blocks for role, branch in branches(block)]
    try:
        _, hiddens = probe.model.with_hiddens(*probe.inputs)
    finally:
        for hook in hooks:
            hook.remove()
    measured = {"resid": [measure(x) for x in hiddens], **outputs}
    return {f"{role}.{stat}": torch.stack(values)[:, column]
            for role, values in measured.items() for column, stat in enumerate(stats)}


def rank(probe: ProbeInput) -> dict[str, torch.Tensor]:
    """The feature statistics (see the module docstring) of the stream and each branch's output."""
    return per_site(probe, feature_stats, FEATURE_STATS)


def outliers(probe: ProbeInput) -> dict[str, torch.Tensor]:
    """The outlier statistics (`outlier_stats`) of the stream and each branch's output."""
    return per_site(probe, outlier_stats, OUTLIER_STATS)


def intrinsic_dim(probe: ProbeInput) -> dict[str, torch.Tensor]:
    """The TwoNN intrinsic dimension and its standard error of the LN-normalised stream entering each
    block and leaving the last."""
    _, hiddens = probe.model.with_hiddens(*probe.inputs)
    estimates = torch.stack([twonn(layer_normalised(x)) for x in hiddens])
    return {"twonn": estimates[:, 0], "twonn_se": estimates[:, 1]}


def layer_change(probe: ProbeInput) -> dict[str, torch.Tensor]:
    """Per block: the mean angular distance between its input and output, and (loss with the block
    skipped − loss) / loss."""
    (_, base), hiddens = probe.model.with_hiddens(*probe.inputs, probe.targets)
    angles = [angular_distance(x_in, x_out) for x_in, x_out in zip(hiddens, hiddens[1:])]
    skipped = [probe.loss(skipping(index)) for index in range(len(probe.blocks))]
    return {"angle": torch.stack(angles), "skip_loss_change": (torch.stack(skipped) - base) / base}


def direction_ablation(probe: ProbeInput) -> dict[str, torch.Tensor]:
    """Per boundary of the stream: (loss with its top-k dimensions by RMS, or its top-k principal
    directions, mean-replaced − loss) / loss, k = `log.direction_k`."""
    k, base = probe.options["direction_k"], probe.loss()
    boundaries = range(len(probe.blocks) + 1)
    changes = {param: torch.stack([probe.loss(replacing(index, ablate, k)) for index in boundaries])
               for param, ablate in (("top_dims_loss_change", mean_replace_top_dims),
                                     ("top_pcs_loss_change", mean_replace_top_pcs))}
    return {param: (losses - base) / base for param, losses in changes.items()}


def skipping(index: int) -> Tap:
    """A tap that skips block `index`: the stream leaving it is the stream that entered it."""
    entered: list[torch.Tensor] = []

    def tap(i: int, x: torch.Tensor) -> torch.Tensor:
        if i == index:
            entered.append(x)
        return entered[0] if i == index + 1 else x
    return tap


def replacing(index: int, ablate: Callable[[torch.Tensor, int], torch.Tensor], k: int) -> Tap:
    """A tap that passes the stream at boundary `index` through `ablate(x, k)`."""
    return lambda i, x: ablate(x, k) if i == index else x


def mean_replace_top_dims(x: torch.Tensor, k: int) -> torch.Tensor:
    """x (..., d) with its k dimensions of largest RMS over the tokens set to their mean over them."""
    flat = x.float().reshape(-1, x.shape[-1])
    top = torch.zeros(x.shape[-1], device=x.device).index_fill_(0, flat.pow(2).mean(0).topk(k).indices, 1.0)
    return (flat * (1 - top) + flat.mean(0) * top).reshape(x.shape).to(x.dtype)


def mean_replace_top_pcs(x: torch.Tensor, k: int) -> torch.Tensor:
    """x (..., d) with its components along the k leading principal directions of the tokens (the
    covariance's top eigenvectors) set to their mean: x − ((x − μ)·V)·Vᵀ."""
    flat = x.float().reshape(-1, x.shape[-1])
    centred = flat - flat.mean(0)
    directions = torch.linalg.eigh(centred.T @ centred)[1][:, -k:]  # eigenvalues ascend
    return (flat - centred @ directions @ directions.T).reshape(x.shape).to(x.dtype)


def layer_normalised(x: torch.Tensor) -> torch.Tensor:
    """Each token vector centred and scaled to unit variance, as a LayerNorm without affine would."""
    return nn.functional.layer_norm(x.detach().float(), x.shape[-1:])


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The mean over tokens of (1/π)·arccos of the cosine between a's and b's token vectors (..., d)."""
    cos = nn.functional.cosine_similarity(a.detach().float(), b.detach().float(), dim=-1)
    return (torch.arccos(cos.clamp(-1, 1)) / math.pi).mean()


def outlier_stats(x: torch.Tensor) -> torch.Tensor:
    """[kurtosis, max/median] (OUTLIER_STATS' order) of the activations x (..., d), on the device:
    He et al.'s kurtosis mean(s⁴)/mean(s²)² of s, each neuron's RMS over the tokens (uncentred), and
    max |a| / median |a| over every entry. Both 0 for an all-zero x."""
    a = x.detach().float().reshape(-1, x.shape[-1])
    s2 = a.pow(2).mean(0)  # s², per neuron
    tiny = torch.finfo(s2.dtype).tiny
    kurtosis = torch.where(s2.mean() > 0, s2.pow(2).mean() / s2.mean().pow(2).clamp_min(tiny), 0.0)
    magnitudes = a.abs()
    peak, median = magnitudes.max(), magnitudes.median()
    return torch.stack([kurtosis, torch.where(median > 0, peak / median.clamp_min(tiny), 0.0)])


def twonn(points: torch.Tensor, discard: float = TWONN_DISCARD) -> torch.Tensor:
    """[intrinsic dimension, standard error] of the points (..., d) by TwoNN (Facco, d'Errico, Rodriguez
    & Laio 2017, Sci. Rep. 7:12140), on the device, without a host sync.

    For each point μ = r2/r1, its second- over first-nearest-neighbour distance (exact neighbours:
    torch.cdist over row chunks, in float64 so that near distances keep their digits). Under local
    uniformity log μ is exponential with rate d, the dimension. The estimate is that rate's maximum
    likelihood with the largest `discard` share of μ censored (Type II censoring of the exponential:
    d = r / (Σ_{i≤r} log μ_(i) + (n − r)·log μ_(r)), r = ⌊(1 − discard)·n⌋ of n, the points whose μ
    sit above the cut counted as "at least μ_(r)"), which keeps the paper's robustness to the noisy
    tail without the bias of simply dropping it; its standard error is d/√r (the Fisher
    information r/d²). Facco et al. fit a line through the empirical CDF of those same censored μ;
    the likelihood gives the same quantity with a closed-form error.

    Duplicate points (closer than 1e-6 of the cloud's RMS radius: r1 would be 0) are merged: only a
    point's first copy counts, and no point takes a copy as a neighbour. At most TWONN_TOKENS points
    (evenly strided); fewer than three distinct points give [0, 0]."""
    m = points.detach().reshape(-1, points.shape[-1]).double()
    if m.shape[0] > TWONN_TOKENS:
        m = m[:: -(-m.shape[0] // TWONN_TOKENS)]
    m = m - m.mean(0)  # distances are unchanged; cdist's matmul form loses fewer digits
    n, index = m.shape[0], torch.arange(m.shape[0], device=m.device)
    tol = 1e-6 * m.pow(2).sum(1).mean().sqrt()
    first = torch.ones(n, dtype=torch.bool, device=m.device)
    for start in range(0, n, TWONN_CHUNK):  # a copy of an earlier point is not a first copy
        end = min(start + TWONN_CHUNK, n)
        near = torch.cdist(m[start:end], m[:end]) <= tol
        first[start:end] = ~(near & (index[None, :end] < index[start:end, None])).any(1)
    nearest = []
    for start in range(0, n, TWONN_CHUNK):  # the two nearest distinct first copies
        distances = torch.cdist(m[start:start + TWONN_CHUNK], m)
        distances = distances.masked_fill(~first[None, :] | (distances <= tol), math.inf)
        nearest.append(distances.topk(2, dim=1, largest=False).values)
    r1, r2 = torch.cat(nearest).unbind(1)
    counted = first & torch.isfinite(r2)
    log_mu = torch.where(counted, torch.log(r2 / r1), math.inf).sort().values  # counted ones first
    total = counted.sum()
    kept = torch.floor((1 - discard) * total).clamp_min(1)
    observed = torch.arange(n, device=m.device) < kept
    last = log_mu.gather(0, (kept.long() - 1).reshape(1)).squeeze(0)
    exposure = torch.where(observed, log_mu, 0.0).sum() + (total - kept) * last
    dim = torch.where((total >= 3) & (exposure > 0), kept / exposure, 0.0)
    return torch.stack([dim, dim / kept.sqrt()]).float()


def ablation(probe: ProbeInput) -> dict[str, torch.Tensor]:
    """Per layer: (loss with that layer's branch outputs replaced by noise of the same norm, token by
    token − loss) / loss."""
    generator = torch.Generator(device=probe.targets.device).manual_seed(probe.seed)

    def noise(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        return noise_like(output, generator)

    base = probe.loss()
    changes = []
    for block in probe.blocks:
        hooks = [branch.register_forward_hook(noise) for _, branch in branches(block)]
        try:
            changes.append(probe.loss())
        finally:
            for hook in hooks:
                hook.remove()
    return {"noise_loss_change": (torch.stack(changes) - base) / base}


def feature_stats(x: torch.Tensor) -> torch.Tensor:
    """[effective rank, participation ratio, anisotropy] (FEATURE_STATS' order) of the token vectors
    x (..., d), on the device. The ranks come from one SVD of the centred (tokens × d) matrix (0 when
    it is all zero); the anisotropy is the mean cosine similarity between distinct token vectors,
    uncentred."""
    m = x.detach().float().reshape(-1, x.shape[-1])
    if m.shape[0] > RANK_TOKENS:
        m = m[:: -(-m.shape[0] // RANK_TOKENS)]
    n = m.shape[0]
    sigma = torch.linalg.svdvals(m - m.mean(0))
    total = sigma.sum()
    p = sigma / total.clamp_min(torch.finfo(sigma.dtype).tiny)
    erank = torch.where(total > 0, torch.exp(-torch.special.xlogy(p, p).sum()), 0.0)
    lam = sigma**2
    pr = torch.where(total > 0, lam.sum() ** 2 / (lam**2).sum().clamp_min(torch.finfo(sigma.dtype).tiny), 0.0)
    u = nn.functional.normalize(m, dim=1)
    summed = u.sum(0)
    aniso = (summed @ summed - (u * u).sum()) / max(n * (n - 1), 1)
    return torch.stack([erank, pr, aniso])


def noise_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise with the norm of x along the last axis (each token vector's norm kept)."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    scale = torch.linalg.vector_norm(x.float(), dim=-1, keepdim=True) / \
        torch.linalg.vector_norm(noise, dim=-1, keepdim=True).clamp_min(1e-30)
    return (noise * scale).to(x.dtype)


def radam_rho(step: int, beta2: float) -> float:
    """RAdam's ρ_t (Liu et al. 2019) at update `step` (0-based): the adaptive step starts once ρ_t > 5
    in torch.optim.RAdam (4 in the paper); before that it takes SGD-with-momentum steps."""
    t = step + 1
    rho_inf = 2 / (1 - beta2) - 1
    return rho_inf - 2 * t * beta2**t / (1 - beta2**t)


def _sample(v: torch.Tensor) -> torch.Tensor:
    flat = v.detach().float().flatten()
    return flat[:: -(-flat.numel() // QUANTILE_SAMPLE)] if flat.numel() > QUANTILE_SAMPLE else flat


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().pow(2).mean().sqrt()
