"""Initialisation recipes (`model.init`), each as its source's code wrote it, parameter by parameter.

A recipe is one declaration: how every role (attention q/k/v, attention output, FFN, embeddings,
output projection, norms) is initialised, whether token embeddings are scaled by √d in the forward,
whether a padding row exists, and the defaults it brings for `model.tie_embeddings` and
`model.positional` (used when the config does not set them). The config's allowed values, the model,
the run's `meta.json` and the docs all read this registry. Sources and deviations: docs/recipes.md.

Torch is imported inside the init functions only, so that reading a config (and `lnexp --help`)
does not import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lnexp.core.registry import Registry

if TYPE_CHECKING:
    from torch import nn

# The attention projections that read the input; fairseq scales their Xavier init by 1/√2.
QKV = ("q", "k", "v")


@dataclass(frozen=True)
class InitRecipe:
    name: str
    source: str                      # the file and function the recipe follows
    init: Callable[[nn.Module, int], None]  # (model, d_model): every parameter, in module order
    embed_scale: bool                # token embeddings × √d in the forward
    padding_row: bool                # the encoder-decoder's PAD row is zero and gets no gradient
    defaults: dict[str, Any] = field(default_factory=dict)  # model keys the recipe decides if unset


def _reset_norm(module: nn.Module) -> None:
    """A norm (LayerNorm, RMSNorm, DyT, a plugin's: a leaf module with its own reset_parameters, not a
    linear layer or an embedding) to its own init, weight 1 and bias 0; anything else is left alone."""
    from torch import nn

    leaf = next(module.children(), None) is None
    if leaf and hasattr(module, "reset_parameters") and not isinstance(module, (nn.Linear, nn.Embedding)):
        module.reset_parameters()


def _fairseq(model: nn.Module, d_model: int) -> None:
    """fairseq v0.9 (Xiong et al. 2020 and Wang et al. 2019 trained with it):
    - q, k, v: `xavier_uniform_(gain=1/√2)` — `fairseq/modules/multihead_attention.py`,
      `MultiheadAttention.reset_parameters` (qkv_same_dim; also in cross-attention, whose kdim and vdim
      default to embed_dim), their biases left at nn.Linear's U(±1/√fan_in); out_proj:
      `xavier_uniform_`, bias 0 (same function).
    - fc1, fc2: `xavier_uniform_`, bias 0 — `fairseq/modules/transformer_layer.py`, `Linear()`.
    - token and learned position embeddings: N(0, d^-½), padding row 0 —
      `fairseq/models/transformer.py`, `Embedding()`; × √d in the forward (`embed_scale`).
    - an unshared output projection: N(0, d^-½) — `fairseq/models/transformer.py`,
      `TransformerDecoder.__init__` (`embed_out`) / `build_output_projection`.
    """
    import torch
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            qkv = name.rsplit(".", 1)[-1] in QKV
            if name == "head":
                nn.init.normal_(module.weight, std=d_model**-0.5)
            else:
                nn.init.xavier_uniform_(module.weight, gain=2**-0.5 if qkv else 1.0)
            if module.bias is not None and qkv:  # reset_parameters leaves nn.Linear's U(±1/√fan_in)
                bound = module.in_features**-0.5
                nn.init.uniform_(module.bias, -bound, bound)
            elif module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=d_model**-0.5)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        else:
            _reset_norm(module)


def _gpt2(model: nn.Module, d_model: int) -> None:
    """GPT-2 as nanoGPT writes it (`model.py`, `GPT._init_weights`): every linear and embedding
    (tokens and learned positions) N(0, 0.02), biases 0, norms 1/0. The 1/√(2L) on the residual
    outputs (`c_proj`) is `model.residual_scaling: gpt2`, applied by the model on top."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        else:
            _reset_norm(module)


def _torch(model: nn.Module, d_model: int) -> None:
    """PyTorch's own module defaults (`torch/nn/modules/linear.py`, `Linear.reset_parameters`:
    kaiming-uniform a=√5, i.e. U(±1/√fan_in) for weight and bias; `sparse.py`, `Embedding`: N(0, 1);
    norms 1/0)."""
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def _xavier_per_proj(model: nn.Module, d_model: int) -> None:
    """lnexp ≤ 0.1's `xavier`, kept so old runs reproduce bit for bit: every linear (q, k and v each
    over its own (d, d), so √2 larger than fairseq's; the output projection too) Xavier-uniform,
    biases 0; every embedding N(0, d^-½)."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=d_model**-0.5)
        else:
            _reset_norm(module)


RECIPES: Registry[InitRecipe] = Registry("init recipe")


def register_recipe(recipe: InitRecipe) -> InitRecipe:
    """Add a recipe (a plugin's or a built-in): its name becomes a `model.init` value."""
    return RECIPES.add(recipe.name, recipe)


# fairseq's transformer_lm and transformer (IWSLT, WMT) architectures share no embeddings by default
# (`share_decoder_input_output_embed` / `share_all_embeddings` False in `base_lm_architecture` and
# `base_architecture`) and use sinusoidal positions (`decoder_learned_pos` False).
register_recipe(InitRecipe(
    "fairseq", "fairseq v0.9: modules/multihead_attention.py MultiheadAttention.reset_parameters; "
    "modules/transformer_layer.py Linear; models/transformer.py Embedding, TransformerDecoder",
    _fairseq, embed_scale=True, padding_row=True,
    defaults={"tie_embeddings": False, "positional": "sinusoidal"}))
# GPT-2 ties wte and lm_head and learns its positions.
register_recipe(InitRecipe(
    "gpt2", "nanoGPT model.py GPT._init_weights (GPT-2's init)", _gpt2, embed_scale=False, padding_row=False,
    defaults={"tie_embeddings": True, "positional": "learned"}))
register_recipe(InitRecipe(
    "torch", "PyTorch module defaults (nn.Linear/nn.Embedding/nn.LayerNorm.reset_parameters)", _torch,
    embed_scale=False, padding_row=False, defaults={"tie_embeddings": False, "positional": "learned"}))
register_recipe(InitRecipe(
    "xavier_per_proj", "lnexp 0.1 model.init_weights (its `xavier`)", _xavier_per_proj, embed_scale=True,
    padding_row=False, defaults={"tie_embeddings": True, "positional": "learned"}))
RECIPES.seal()
DEFAULT_RECIPE = "fairseq"
# Names a config may still carry from earlier lnexp versions, and what they meant then.
LEGACY_NAMES = {"xavier": "xavier_per_proj"}


def recipe_meta(name: str) -> dict[str, Any]:
    """What `meta.json` records of the recipe a run used."""
    recipe = RECIPES[name]
    return {"name": recipe.name, "source": recipe.source, "embed_scale": recipe.embed_scale,
            "padding_row": recipe.padding_row}
