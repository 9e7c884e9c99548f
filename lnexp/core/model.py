"""A decoder-only Transformer LM in which one key (`model.norm`) moves the norm.

Each block has two residual sub-layers, F = attention then FFN, so that its forward reads
`x = self.residual("attn", x); return self.residual("ffn", x)`. `model.norm` names a layout from
lnexp/core/layouts.py, which says where the norm sits; one `Block.residual` serves them all:

    on the sum          x = LN(s·x + F(x))       post; deepnorm (s = α); admin (s = ω, trained)
    on the branch input x = x + F(LN(x))         pre; sandwich, peri_ln: x = x + LN_out(F(LN(x)));
                                                 lns: x = x + F(LN(x)·s), s = 1/√l a constant
    on the branch output x = x + LN(F(x))        reordered (OLMo 2)

Mix-LN picks post or pre per layer. As in fairseq's `normalize_before`, the same norm modules
(`attn_norm`, `ffn_norm`) serve every order, so a block's parameter names and shapes are identical
across layouts; an out-norm layout adds `attn_out_norm`/`ffn_out_norm`, a trainable skip adds the
scalar parameters `attn_skip`/`ffn_skip`, a layout with a final norm owns `final_norm`, one with an
embedding norm (Peri-LN) `embed_norm`, and `model.qk_norm` adds `attn.q_norm`/`attn.k_norm`.
`model.norm_type` names the norm module (LayerNorm, RMSNorm, DyT, a plugin's). The layout is decided
once, in `Block.__init__`: the forward pass only tests which of the optional pieces exist.

Initialisation: the recipe `model.init` names (lnexp/core/recipes.py; fairseq's by default), then per
stack (`Block.scale_init_`):
- GPT-2 residual scaling multiplies the init of every residual branch's output projection
  (`attn.out`, `cross.out`, `ffn.fc2`) by 1/sqrt(N), N = sub-layers per layer × n_layers.
- a layout's `branch_gain` (DeepNorm's β) multiplies the init of `v`, `out`, `fc1`, `fc2`.
- a trainable skip starts at the layout's `skip_init` (Admin's closed-form ω, or 1 until
  `admin_profile_` measures them under `admin_init: profile`).

For decoding, `forward(idx, cache=KVCache(n_layers))` keeps every layer's keys and values, so the
next call feeds only the new tokens (positions continue from the cached length); an encoder-decoder's
`decode(tgt, memory, mask, cache)` likewise, with the source's cross-attention keys and values
computed once. Without a cache (training) nothing of this runs.

`model.arch: encoder_decoder` builds `EncoderDecoder` instead (`build_model` picks): an encoder of
`n_layers` blocks (non-causal self-attention, FFN) and a decoder of `n_layers` blocks (causal
self-attention, cross-attention over the encoder output, FFN), every sub-layer wired by the same
`Block.residual` rule, so every layout and norm applies to both stacks. Each stack counts its own
sub-layers for the constants: the encoder has 2 per layer, the decoder 3.

The residual stream: `forward(..., tap=f)` calls `x = f(index, x)` on the stream entering each block
(index 0 .. n_layers - 1) and leaving the last (index n_layers, before the final norm), in the stream
the logits are read from (the decoder's in an encoder-decoder). What f returns flows on, so a tap can
read the stream (the `act` probe: its RMS), hook its gradient (`sensitivity`), or add to it (packed
training adds a zero whose gradient is ∂loss/∂x); `with_hiddens` returns the stream itself, as
x-transformers' `return_hiddens`. Without a tap the stream passes untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lnexp.core.config import ModelConfig
from lnexp.core.layouts import LAYOUTS, NORMS, Layout, Skip, Stack, Where
from lnexp.core.recipes import RECIPES

# The weight matrices that end a residual branch (GPT-2 scales them by 1/sqrt(N)), and those a
# layout's branch gain scales (DeepNet's β: q and k keep the plain init).
RESIDUAL_OUTPUTS = ("attn.out.weight", "cross.out.weight", "ffn.fc2.weight")
GAIN_SCALED = ("attn.v.weight", "attn.out.weight", "cross.v.weight", "cross.out.weight",
               "ffn.fc1.weight", "ffn.fc2.weight")
# The padding id of sequence-to-sequence batches: masked out as a key, ignored as a target.
PAD = 0
# A tap on the residual stream: (boundary index, the stream there) -> the stream that flows on.
Tap = Callable[[int, torch.Tensor], torch.Tensor]


def untapped(_index: int, x: torch.Tensor) -> torch.Tensor:
    """The forward's default tap: the stream passes as it is."""
    return x


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    """One norm over d_model (or `dim` features: QK-norm's head_dim), the kind `model.norm_type` names
    (lnexp/core/layouts.py NORMS). A norm's builder reads the width from `cfg.d_model`."""
    return NORMS[cfg.norm_type].build(cfg if dim is None else cfg.model_copy(update={"d_model": dim}))


class Attention(nn.Module):
    """Multi-head attention: causal self-attention (the LM, the decoder), or non-causal over `memory`
    (the encoder's self-attention: memory is None; the decoder's cross-attention: the encoder output).
    `mask`, (batch, 1, 1, keys) bool, True where a key may be attended: the source's non-PAD tokens.
    With `model.qk_norm`, `q_norm` and `k_norm` (one norm over head_dim each, shared by the heads)
    norm every head's queries and keys before the dot product; keys are cached normed."""

    def __init__(self, cfg: ModelConfig, causal: bool = True) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.dropout, self.causal = cfg.n_heads, cfg.dropout, causal
        self.q, self.k, self.v, self.out = (nn.Linear(d, d, bias=cfg.bias) for _ in range(4))
        head_dim = d // cfg.n_heads
        self.q_norm, self.k_norm = (make_norm(cfg, head_dim) if cfg.qk_norm else None for _ in range(2))

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, memory: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        heads = (self.n_heads, C // self.n_heads)
        if memory is None:  # self-attention: q, k and v in one matmul, as nanoGPT's c_attn
            q, k, v = (t.view(B, T, *heads).transpose(1, 2) for t in self._project(x, self.q, self.k, self.v))
            k = normed(self.k_norm, k)
        else:  # cross-attention: q from x, k and v (one matmul) from the encoder output
            q = self.q(x).view(B, T, *heads).transpose(1, 2)
            if cache is not None and cache.k is not None:  # while decoding: the source's keys and
                k, v = cache.k, cache.v                    # values, computed once
            else:
                S = memory.shape[1]
                k, v = (t.view(B, S, *heads).transpose(1, 2) for t in self._project(memory, self.k, self.v))
                k = normed(self.k_norm, k)
                if cache is not None:
                    cache.k, cache.v = k, v
        q = normed(self.q_norm, q)
        if memory is not None or not self.causal:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        elif cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        else:
            # Queries sit at the last T of S positions. SDPA's is_causal aligns the mask top-left,
            # which is wrong once S > T, so the mask is explicit (and unneeded for one query).
            k, v = cache.append(k, v)
            S = k.shape[2]
            mask = None if T == 1 else torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, T, C))

    @staticmethod
    def _project(x: torch.Tensor, *projections: nn.Linear) -> tuple[torch.Tensor, ...]:
        """Several projections of x in one matmul over their stacked weights (a copy of 3d² floats
        per call, against a matmul of tokens × 3d²): each projection keeps its own parameters, so
        names, init recipes, probes and checkpoints see q, k and v as the separate matrices they are."""
        weight = torch.cat([p.weight for p in projections])
        bias = None if projections[0].bias is None else torch.cat([p.bias for p in projections])
        return F.linear(x, weight, bias).split(projections[0].out_features, dim=-1)


def normed(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """x through an optional norm, in x's dtype (under autocast a norm returns float32)."""
    return x if norm is None else norm(x).to(x.dtype)


class LayerCache:
    """One layer's keys and values, (batch, heads, positions, head_dim), grown as tokens are fed."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v


class KVCache:
    """Every layer's keys and values of the tokens fed so far, for incremental decoding; for an
    encoder-decoder (`cross`) also every cross-attention's keys and values of the source."""

    def __init__(self, n_layers: int, cross: bool = False) -> None:
        self.layers = [LayerCache() for _ in range(n_layers)]
        self.cross = [LayerCache() for _ in range(n_layers)] if cross else []

    def __len__(self) -> int:
        """The number of positions cached."""
        k = self.layers[0].k
        return 0 if k is None else k.shape[2]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (repeats allowed): beam search's survivors and their copies."""
        for layer in self.layers + self.cross:
            if layer.k is not None:
                layer.k, layer.v = layer.k.index_select(0, index), layer.v.index_select(0, index)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.act = nn.GELU() if cfg.activation == "gelu" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Two residual sub-layers (attention, FFN) wired as the layout says (see the module docstring).

    Sub-layer `name` (`SUBLAYERS`, in the order they run) is its branch `<name>` and, around it,
    `<name>_norm`, the norm (of the branch input, of the sum, or of the branch output);
    `<name>_out_norm`, an out-norm layout's norm of the branch output (None otherwise); `<name>_skip`,
    what multiplies the skip path: None, a constant float (not a parameter), or a trainable scalar
    nn.Parameter. `index` is the block's place in its `stack` (Mix-LN's layers differ);
    `causal=False` makes it an encoder block.
    """

    SUBLAYERS: tuple[str, ...] = ("attn", "ffn")

    def __init__(self, cfg: ModelConfig, stack: Stack, index: int, causal: bool = True) -> None:
        super().__init__()
        self.layout: Layout = LAYOUTS[cfg.norm].at(cfg, index)
        self.attn = Attention(cfg, causal)
        self.attn_norm = make_norm(cfg)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = make_norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.attn_out_norm, self.ffn_out_norm = self._out_norm(cfg), self._out_norm(cfg)
        self.attn_skip, self.ffn_skip = self._skip(cfg, stack), self._skip(cfg, stack)
        # what multiplies the branch-input norm's output: a constant, not a parameter (LayerNorm Scaling)
        self.input_scale = None if self.layout.input_scale is None else self.layout.input_scale(index)

    def _out_norm(self, cfg: ModelConfig) -> nn.Module | None:
        return make_norm(cfg) if self.layout.out_norm else None

    def _skip(self, cfg: ModelConfig, stack: Stack) -> float | nn.Parameter | None:
        if self.layout.skip == Skip.CONSTANT:
            return self.layout.skip_init(stack, cfg)
        if self.layout.skip == Skip.TRAINABLE:  # its value: scale_init_, or admin_profile_
            return nn.Parameter(torch.ones(()))
        return None

    def sublayers(self) -> list[tuple[float | nn.Parameter | None, nn.Module]]:
        """(skip, branch) of each residual sub-layer, in the order they run."""
        return [(getattr(self, f"{name}_skip"), getattr(self, name)) for name in self.SUBLAYERS]

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        x = self.residual("attn", x, cache=cache, mask=mask)
        return self.residual("ffn", x)

    def residual(self, name: str, x: torch.Tensor, **kwargs: torch.Tensor | LayerCache | None
                 ) -> torch.Tensor:
        """Sub-layer `name` on the stream x, the branch F getting `kwargs`. Its pieces are looked up
        on the block at each call, never kept: functional_call (packing) swaps the block's parameters
        (an Admin skip is one) for the cells' own."""
        branch, norm = getattr(self, name), getattr(self, f"{name}_norm")
        where = self.layout.norm_at
        if where == Where.INPUT:  # x + F(LN(x)); sandwich: x + LN_out(F(LN(x))); lns: x + F(LN(x)·s)
            h = norm(x)
            y = branch(h if self.input_scale is None else h * self.input_scale, **kwargs)
            out_norm = getattr(self, f"{name}_out_norm")
            if out_norm is not None:  # under autocast y is bf16: norm it in the stream's dtype
                y = out_norm(y.to(x.dtype))
            return x + self.drop(y)
        if where == Where.OUTPUT:  # x + LN(F(x))
            return x + self.drop(norm(branch(x, **kwargs).to(x.dtype)))
        y = self.drop(branch(x, **kwargs))  # LN(s·x + F(x))
        skip = getattr(self, f"{name}_skip")
        return norm(x + y if skip is None else skip * x + y)

    @torch.no_grad()
    def scale_init_(self, cfg: ModelConfig, stack: Stack) -> None:
        """On top of the init recipe: GPT-2's 1/sqrt(N) on the branch outputs, the layout's branch
        gain, the trainable skips' initial values (see the module docstring)."""
        if cfg.residual_scaling == "gpt2":
            scale = 1.0 / math.sqrt(stack.sublayers * stack.n_layers)
            for name, param in self.named_parameters():
                if name.endswith(RESIDUAL_OUTPUTS):
                    param.mul_(scale)
        if self.layout.branch_gain is not None:
            gain = self.layout.branch_gain(stack)
            for name, param in self.named_parameters():
                if name.endswith(GAIN_SCALED):
                    param.mul_(gain)
        if self.layout.skip == Skip.TRAINABLE:
            for skip, _ in self.sublayers():
                skip.fill_(self.layout.skip_init(stack, cfg))


class DecoderBlock(Block):
    """An encoder-decoder's decoder block: causal self-attention, then cross-attention over the
    encoder output (`cross`, `cross_norm`, and as the layout needs `cross_out_norm`, `cross_skip`),
    then the FFN; three sub-layers, each through `Block.residual`."""

    SUBLAYERS = ("attn", "cross", "ffn")

    def __init__(self, cfg: ModelConfig, stack: Stack, index: int) -> None:
        super().__init__(cfg, stack, index, causal=True)
        self.cross = Attention(cfg, causal=False)
        self.cross_norm = make_norm(cfg)
        self.cross_out_norm = self._out_norm(cfg)
        self.cross_skip = self._skip(cfg, stack)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor,
                cache: LayerCache | None = None, cross_cache: LayerCache | None = None) -> torch.Tensor:
        x = self.residual("attn", x, cache=cache)
        x = self.residual("cross", x, memory=memory, mask=mask, cache=cross_cache)
        return self.residual("ffn", x)


class Embedded(nn.Module):
    """What both architectures share: the token table (also the tied output layer), positions, the
    init, Admin's profiling, and the residual stream the probes follow."""

    def _build_embeddings(self, cfg: ModelConfig, vocab_size: int) -> None:
        d = cfg.d_model
        self.recipe = RECIPES[cfg.init]
        # fairseq's padding row (PAD exists in encoder-decoder batches only): zero, and never updated
        pad = PAD if self.recipe.padding_row and cfg.arch == "encoder_decoder" else None
        self.tok_emb = nn.Embedding(vocab_size, d, padding_idx=pad)
        if cfg.positional == "learned":
            self.pos_emb = nn.Embedding(cfg.max_seq_len, d)
        else:
            self.register_buffer("sinusoid", sinusoidal_positions(cfg.max_seq_len, d), persistent=False)
        # fairseq scales its embeddings (std d^-1/2) by sqrt(d): unit-variance inputs.
        self.embed_scale = math.sqrt(d) if self.recipe.embed_scale else 1.0
        self.drop = nn.Dropout(cfg.dropout)

    def final_norm_or_none(self) -> nn.Module | None:
        return make_norm(self.cfg) if LAYOUTS[self.cfg.norm].final_norm else None

    def embed_norm_or_none(self) -> nn.Module | None:
        return make_norm(self.cfg) if LAYOUTS[self.cfg.norm].embed_norm else None

    def embed(self, idx: torch.Tensor, start: int = 0, norm: nn.Module | None = None) -> torch.Tensor:
        """Scaled token embeddings plus the positions start, start + 1, ..., through the stack's
        embedding norm `norm` if its layout has one (Peri-LN), then dropout."""
        end = start + idx.shape[1]
        if end > self.cfg.max_seq_len:
            raise ValueError(f"{end} positions exceed model.max_seq_len ({self.cfg.max_seq_len})")
        table = self.pos_emb.weight if self.cfg.positional == "learned" else self.sinusoid
        x = self.tok_emb(idx) * self.embed_scale + table[start:end]
        return self.drop(x if norm is None else norm(x))

    def stacks(self) -> list[tuple[Stack, nn.ModuleList]]:
        """Each residual stack and its blocks, in the order they run."""
        raise NotImplementedError

    def residual_blocks(self) -> nn.ModuleList:
        """The blocks of the stream the logits are read from (the tap's, and the per-layer probes')."""
        return self.stacks()[-1][1]

    def with_hiddens(self, *inputs: torch.Tensor, **kwargs: Any) -> tuple[Any, list[torch.Tensor]]:
        """x-transformers' `return_hiddens`: the forward's output and the residual stream at each tap
        point (entering each block and leaving the last, before the final norm) of that pass."""
        hiddens: list[torch.Tensor] = []

        def keep(_index: int, x: torch.Tensor) -> torch.Tensor:
            hiddens.append(x)
            return x

        return self(*inputs, tap=keep, **kwargs), hiddens

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The init recipe `model.init` (lnexp/core/recipes.py: fairseq's, GPT-2's, ...), then each block's
        own scaling (`Block.scale_init_`), which counts its stack's sub-layers."""
        self.recipe.init(self, self.cfg.d_model)
        for stack, blocks in self.stacks():
            for block in blocks:
                block.scale_init_(self.cfg, stack)

    @torch.no_grad()
    def admin_profile_(self, *inputs: torch.Tensor) -> list[float]:
        """Admin's profiling init (`model.admin_init: profile`): set every trainable skip ω from one
        batch (`inputs`: the model's arguments, on its device), each stack's stream on its own.

        Sub-layers are numbered i = 0, 1, ... in the order they run in a stack (block 0's attention,
        block 0's FFN, block 1's attention, ...). One forward pass runs with every ω = 1 (i.e. plain
        Post-LN), in eval mode (no dropout), in float32 and without gradients; it records Var[f_j],
        the variance over all elements (batch, positions, features; population variance) of
        sub-layer j's branch output f_j (before the residual sum). Then

            ω_i = sqrt(1 + sum_{j < i} Var[f_j])

        where the 1 stands for the embedding, taken as unit-variance (true for `model.init: fairseq`,
        whose embeddings are N(0, 1/d) scaled by sqrt(d); under `init: gpt2` they are far smaller).
        So ω_0 = 1, and ω_i² is the variance a Pre-LN stream would have accumulated before sub-layer
        i. The model's train/eval mode is restored; ω stays a trainable parameter. Call it once, at
        initialisation, before training (and before wrapping the model in DDP, so that rank 0's
        values are the ones broadcast). Returns the ωs, stack by stack, in sub-layer order.
        """
        if LAYOUTS[self.cfg.norm].skip != Skip.TRAINABLE:
            raise ValueError(f"admin_profile_ needs a layout with trainable skips, got model.norm "
                             f"{self.cfg.norm}")
        return profile_admin_skips(self, [[pair for block in blocks for pair in block.sublayers()]
                                          for _, blocks in self.stacks()], *inputs)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x) if self.head is not None else F.linear(x, self.tok_emb.weight)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if non_embedding else n


class TransformerLM(Embedded):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self._build_embeddings(cfg, vocab_size)
        self.stack = Stack(cfg.n_layers, 2, "lm")
        self.blocks = nn.ModuleList(Block(cfg, self.stack, i) for i in range(cfg.n_layers))
        self.final_norm = self.final_norm_or_none()
        self.embed_norm = self.embed_norm_or_none()
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.reset_parameters()

    def stacks(self) -> list[tuple[Stack, nn.ModuleList]]:
        return [(self.stack, self.blocks)]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                tap: Tap = untapped) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position of idx (and the loss if targets are given). With a cache, idx
        continues the cached tokens: its keys and values are appended to it. `tap`: see the module
        docstring."""
        x = self.embed(idx, 0 if cache is None else len(cache), self.embed_norm)
        for i, block in enumerate(self.blocks):
            x = block(tap(i, x), None if cache is None else cache.layers[i])
        x = tap(len(self.blocks), x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = self.logits(x)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


@torch.no_grad()
def profile_admin_skips(model: nn.Module, stacks: list[list[tuple[nn.Parameter, nn.Module]]],
                        *inputs: torch.Tensor) -> list[float]:
    """Admin's profiling rule (see `Embedded.admin_profile_`) for one residual stream per stack,
    given as its (omega, branch) pairs in the order they run: each stack's sum starts at 1."""
    variances: list[list[torch.Tensor]] = [[] for _ in stacks]
    hooks = []
    for into, stack in zip(variances, stacks):
        def record(_module: nn.Module, _args: tuple, out: torch.Tensor, into: list = into) -> None:
            into.append(out.detach().float().var(unbiased=False))

        hooks += [branch.register_forward_hook(record) for _, branch in stack]
    training = model.training
    for stack in stacks:
        for skip, _ in stack:
            skip.fill_(1.0)
    try:
        model.eval()
        with torch.autocast(inputs[0].device.type, enabled=False):
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(training)
    omegas = []
    for stack, stack_vars in zip(stacks, variances):
        total = 1.0
        for (skip, _), var in zip(stack, torch.stack(stack_vars).tolist(), strict=True):
            omegas.append(math.sqrt(total))
            skip.fill_(omegas[-1])
            total += var
    return omegas


class EncoderDecoder(Embedded):
    """`model.arch: encoder_decoder`: `n_layers` encoder blocks (`enc.{i}`: non-causal self-attention
    `attn`, FFN `ffn`) and `n_layers` decoder blocks (`dec.{i}`: causal self-attention `attn`,
    cross-attention `cross` over the encoder output, FFN `ffn`), all wired by `model.norm`.

    Source and target share one token embedding (and the tied output projection) and one position
    table. A layout with a final norm ends each stack with one (`enc_final_norm`, `dec_final_norm`),
    one with an embedding norm starts each with one (`enc_embed_norm`, `dec_embed_norm`).
    Source PAD tokens are masked as keys in the encoder and in cross-attention; PAD targets are
    ignored in the loss. Constants count each stack's sub-layers: GPT-2 scaling 1/sqrt(2L) in the
    encoder and 1/sqrt(3L) in the decoder; Admin's closed-form omega with N = 2L and N = 3L; DeepNorm
    uses DeepNet's encoder-decoder alpha and beta (`layouts.deepnorm_encdec`), L = n_layers in each.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        n = cfg.n_layers
        self._build_embeddings(cfg, vocab_size)
        self.enc_stack, self.dec_stack = Stack(n, 2, "encoder"), Stack(n, 3, "decoder")
        self.enc = nn.ModuleList(Block(cfg, self.enc_stack, i, causal=False) for i in range(n))
        self.dec = nn.ModuleList(DecoderBlock(cfg, self.dec_stack, i) for i in range(n))
        self.enc_final_norm = self.final_norm_or_none()
        self.dec_final_norm = self.final_norm_or_none()
        self.enc_embed_norm = self.embed_norm_or_none()
        self.dec_embed_norm = self.embed_norm_or_none()
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.reset_parameters()

    def stacks(self) -> list[tuple[Stack, nn.ModuleList]]:
        return [(self.enc_stack, self.enc), (self.dec_stack, self.dec)]

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder output and the source key mask, (batch, 1, 1, source length), True = not PAD."""
        mask = (src != PAD)[:, None, None, :]
        x = self.embed(src, norm=self.enc_embed_norm)
        for block in self.enc:
            x = block(x, mask=mask)
        return (x if self.enc_final_norm is None else self.enc_final_norm(x)), mask

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, targets: torch.Tensor | None = None,
                tap: Tap = untapped) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every target position (and the loss over the non-PAD targets if given); `tap`
        taps the decoder's stream."""
        logits = self.decode(tgt_in, *self.encode(src), tap=tap)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor,
               cache: KVCache | None = None, tap: Tap = untapped) -> torch.Tensor:
        """The decoder's logits for tgt_in over an encoded source. With a cache (`KVCache(n_layers,
        cross=True)`), tgt_in continues the cached target tokens, and the source's cross-attention keys
        and values are computed at the first call only."""
        x = self.embed(tgt_in, 0 if cache is None else len(cache), self.dec_embed_norm)
        for i, block in enumerate(self.dec):
            x = block(tap(i, x), memory, mask, *(() if cache is None else (cache.layers[i], cache.cross[i])))
        x = tap(len(self.dec), x)
        if self.dec_final_norm is not None:
            x = self.dec_final_norm(x)
        return self.logits(x)


def build_model(cfg: ModelConfig, vocab_size: int) -> TransformerLM | EncoderDecoder:
    """The model `model.arch` names."""
    if cfg.arch == "encoder_decoder":
        return EncoderDecoder(cfg, vocab_size)
    return TransformerLM(cfg, vocab_size)


def sinusoidal_positions(length: int, d: int) -> torch.Tensor:
    """The original Transformer's fixed sin/cos position table, shape (length, d)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(length, d)
    table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return table
