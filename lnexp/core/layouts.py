"""Layouts and norms: one declaration each, in the manner of fairseq's `register_model`.

A layout says where a block's norm sits relative to each residual sub-layer F (attention, cross-
attention, FFN):

    on the sum          x = LN(s·x + F(x))       post, deepnorm (s = α, a constant), admin (s = ω, trained)
    on the branch input x = x + F(LN(x))         pre; sandwich adds LN_out: x = x + LN_out(F(LN(x)));
                                                 peri_ln: sandwich with a norm on the embedding too;
                                                 lns scales LN(x) by 1/√l (layer l, 1-based)
    on the branch output x = x + LN(F(x))        reordered (OLMo 2)

and whether the stack ends with a final norm, and which init scaling and constants it brings. A
layout may also pick a different layout per layer (Mix-LN). Everything else derives from these
declarations: the config's allowed `model.norm` values and consistency rules, the model's blocks,
labels in compare, runs and reports, and the layouts suite. `model.norm_type` picks the norm module
from `NORMS` the same way.

A plugin (`--plugin FILE`, or `plugins:` in a config) adds its own with `register_layout(Layout(...))`
and `@register_norm(name)`. This module does not import torch: reading a config must stay fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from lnexp.core.registry import Registry

if TYPE_CHECKING:
    from torch import nn

# A layout's and a norm's functions take `cfg`, the config's `model` section (lnexp.core.config's
# ModelConfig, which reads this module's registries: so typed Any here).



class Where(str, Enum):
    """Where a sub-layer's norm sits."""

    SUM = "sum"        # LN(skip·x + F(x))
    INPUT = "input"    # x + F(LN(x))
    OUTPUT = "output"  # x + LN(F(x))


class Skip(str, Enum):
    """What multiplies the skip path of a norm-on-the-sum layout."""

    NONE = "none"
    CONSTANT = "constant"    # a float fixed by the depth (DeepNorm's α): not a parameter
    TRAINABLE = "trainable"  # a scalar nn.Parameter per sub-layer (Admin's ω)


@dataclass(frozen=True)
class Stack:
    """One residual stack, for a layout's constants: its depth, the sub-layers per layer (2: attention
    and FFN; 3 in a decoder that also cross-attends) and its role."""

    n_layers: int
    sublayers: int
    role: Literal["lm", "encoder", "decoder"]


@dataclass(frozen=True)
class Layout:
    """A block layout. `skip_init(stack, cfg)` gives the skip multiplier (constant) or its initial value
    (trainable); `branch_gain(stack)` multiplies the init of the value, output and FFN projections
    (q and k keep theirs); `input_scale(index)` multiplies the branch-input norm's output in layer
    `index` (0-based; LayerNorm Scaling); `embed_norm` norms the embedding output (Peri-LN);
    `per_layer(cfg, index)` names the layout that layer `index` uses instead; `options` are the
    `model.*` keys only this layout reads; `own_init` refuses GPT-2's residual scaling, which would
    confound the layout's own init (True), or for the reason it gives (a string)."""

    name: str
    label: str
    formula: str
    source: str
    norm_at: Where = Where.SUM
    out_norm: bool = False
    skip: Skip = Skip.NONE
    final_norm: bool = False
    skip_init: Callable[[Stack, Any], float] | None = None
    branch_gain: Callable[[Stack], float] | None = None
    input_scale: Callable[[int], float] | None = None
    embed_norm: bool = False
    own_init: bool | str = False
    per_layer: Callable[[Any, int], str] | None = None
    options: tuple[str, ...] = ()

    def at(self, cfg: Any, index: int) -> Layout:
        """The layout layer `index` of a stack uses."""
        return LAYOUTS[self.per_layer(cfg, index)] if self.per_layer else self


@dataclass(frozen=True)
class Norm:
    """A norm module over d_model: `build(cfg)` makes one (torch is imported there, not here)."""

    name: str
    label: str
    build: Callable[[Any], nn.Module]
    options: tuple[str, ...] = ()


LAYOUTS: Registry[Layout] = Registry("layout")
NORMS: Registry[Norm] = Registry("norm")


def register_layout(layout: Layout) -> Layout:
    """Add a layout (a plugin's or a built-in): its name becomes a `model.norm` value."""
    if layout.out_norm and layout.norm_at != Where.INPUT:
        raise ValueError(f"layout {layout.name!r}: out_norm needs norm_at input (sandwich)")
    if (layout.skip != Skip.NONE) != (layout.skip_init is not None):
        raise ValueError(f"layout {layout.name!r}: a skip multiplier needs skip_init, and only it")
    if layout.skip != Skip.NONE and layout.norm_at != Where.SUM:
        raise ValueError(f"layout {layout.name!r}: a skip multiplier needs norm_at sum")
    if layout.input_scale is not None and layout.norm_at != Where.INPUT:
        raise ValueError(f"layout {layout.name!r}: input_scale needs norm_at input (a norm to scale)")
    return LAYOUTS.add(layout.name, layout)


def register_norm(name: str, label: str | None = None, options: tuple[str, ...] = ()
                  ) -> Callable[[Callable[[Any], nn.Module]], Callable[[Any], nn.Module]]:
    """Decorator: `@register_norm("scalenorm")` on a function cfg -> nn.Module makes it a
    `model.norm_type` value."""
    def add(build: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        NORMS.add(name, Norm(name, label or name, build, options))
        return build
    return add


def label(config: dict[str, Any]) -> str:
    """A run's layout in one short label, from its config dict: the layout name, then +gpt2 (GPT-2
    residual scaling), +<norm_type> when not the default, and +encdec."""
    model = config.get("model", {})
    norm_type = model.get("norm_type", DEFAULT_NORM)
    return (str(model.get("norm", "?")) + ("+gpt2" if model.get("residual_scaling") == "gpt2" else "")
            + (f"+{norm_type}" if norm_type != DEFAULT_NORM else "")
            + ("+encdec" if model.get("arch") == "encoder_decoder" else ""))


# ---- the norms ---------------------------------------------------------------------------------

DEFAULT_NORM = "layernorm"


@register_norm(DEFAULT_NORM, "LayerNorm")
def _layernorm(cfg: Any) -> nn.Module:
    from torch import nn

    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


@register_norm("rmsnorm", "RMSNorm")
def _rmsnorm(cfg: Any) -> nn.Module:
    from torch import nn

    return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)


@register_norm("dyt", "DyT", options=("dyt_alpha",))
def _dyt(cfg: Any) -> nn.Module:
    """Dynamic Tanh (Zhu, Chen, He, LeCun, Liu, CVPR 2025): γ·tanh(α·x) + β, α a learnable scalar."""
    from lnexp.core.dyt import DyT

    return DyT(cfg.d_model, cfg.dyt_alpha)


# ---- the layouts' constants ---------------------------------------------------------------------

def deepnorm_encdec(n_enc: int, n_dec: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """DeepNet's encoder-decoder constants ((α, β) of the encoder, of the decoder) for N encoder and
    M decoder layers: encoder 0.81 (N^4 M)^(1/16) and 0.87 (N^4 M)^(-1/16), decoder (3M)^(1/4) and
    (12M)^(-1/4)."""
    base = (n_enc**4 * n_dec) ** (1 / 16)
    return (0.81 * base, 0.87 / base), ((3 * n_dec) ** 0.25, (12 * n_dec) ** -0.25)


def deepnorm_constants(stack: Stack) -> tuple[float, float]:
    """DeepNet's (α, β): decoder-only (2M)^(1/4) and (8M)^(-1/4) for M = n_layers; an encoder-
    decoder's from `deepnorm_encdec` (both stacks n_layers deep)."""
    if stack.role == "lm":
        return (2 * stack.n_layers) ** 0.25, (8 * stack.n_layers) ** -0.25
    encoder, decoder = deepnorm_encdec(stack.n_layers, stack.n_layers)
    return encoder if stack.role == "encoder" else decoder


def admin_omega(n_layers: int, sublayers_per_layer: int = 2) -> float:
    """Admin's closed-form shortcut scale sqrt((N+1)/ln(N+1) - 1) for N = sublayers × n_layers."""
    n = sublayers_per_layer * n_layers
    return math.sqrt((n + 1) / math.log(n + 1) - 1)


def _admin_skip(stack: Stack, cfg: Any) -> float:
    # `admin_init: profile` starts every ω at 1 until TransformerLM.admin_profile_ measures them
    return admin_omega(stack.n_layers, stack.sublayers) if cfg.admin_init == "closed_form" else 1.0


def _lns_scale(index: int) -> float:
    # LayerNorm Scaling: 1/√l for layer l = index + 1, as the authors' code (LlamaDecoderLayer, 'LNS')
    return 1 / math.sqrt(index + 1)


def _mix_ln(cfg: Any, index: int) -> str:
    # Mix-LN: Post-LN in the first ⌊α·L⌋ layers, Pre-LN in the rest
    return POST.name if index < math.floor(cfg.mix_ratio * cfg.n_layers) else PRE.name


# ---- the layouts -------------------------------------------------------------------------------

POST = register_layout(Layout(
    "post", "Post-LN", "x = LN(x + F(x))", "Vaswani et al. 2017"))
PRE = register_layout(Layout(
    "pre", "Pre-LN", "x = x + F(LN(x)), final LN", "Xiong et al. 2020; GPT-2",
    norm_at=Where.INPUT, final_norm=True))
SANDWICH = register_layout(Layout(
    "sandwich", "Sandwich-LN", "x = x + LN_out(F(LN(x))), final LN", "CogView, Ding et al. 2021",
    norm_at=Where.INPUT, out_norm=True, final_norm=True))
DEEPNORM = register_layout(Layout(
    "deepnorm", "DeepNorm", "x = LN(α·x + F(x)); v, out, FFN init × β", "DeepNet, Wang et al. 2022",
    skip=Skip.CONSTANT, skip_init=lambda stack, cfg: deepnorm_constants(stack)[0],
    branch_gain=lambda stack: deepnorm_constants(stack)[1], own_init=True))
ADMIN = register_layout(Layout(
    "admin", "Admin", "x = LN(ω·x + F(x)), ω trained", "Liu et al. 2020",
    skip=Skip.TRAINABLE, skip_init=_admin_skip, own_init=True, options=("admin_init",)))
MIX = register_layout(Layout(
    "mix", "Mix-LN", "Post-LN in the first ⌊α·L⌋ layers, Pre-LN in the rest, final LN",
    "Li, Yin, Liu 2024 (ICLR 2025)", norm_at=Where.INPUT, final_norm=True, per_layer=_mix_ln,
    options=("mix_ratio",)))
REORDERED = register_layout(Layout(
    "reordered", "Reordered (OLMo 2)", "x = x + LN(F(x)), final LN", "OLMo 2, 2025",
    norm_at=Where.OUTPUT, final_norm=True))
PERI = register_layout(Layout(
    "peri_ln", "Peri-LN", "x = x + LN_out(F(LN(x))), LN on the embedding, final LN",
    "Kim et al. 2025 (ICML)", norm_at=Where.INPUT, out_norm=True, final_norm=True, embed_norm=True))
LNS = register_layout(Layout(
    "lns", "LayerNorm Scaling", "x = x + F(LN(x)/√l), l the layer (1-based), final LN",
    "Sun et al. 2025 (NeurIPS), The Curse of Depth", norm_at=Where.INPUT, final_norm=True,
    input_scale=_lns_scale, own_init="its source trains without scaled initialisation"))
DEFAULT_LAYOUT = POST.name
LAYOUTS.seal()
NORMS.seal()
