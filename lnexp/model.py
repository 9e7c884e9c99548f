"""A decoder-only Transformer LM in which one key (`model.norm`) moves the LayerNorm.

Each block has two residual sub-layers, F = attention then FFN; `model.norm` picks how they meet
the skip path and the norm:

    post      (Vaswani et al. 2017):  x = LN(x + F(x))             -- the block output is normalised
    pre       (Xiong et al. 2020):    x = x + F(LN(x))             -- plus one final LN before the head
    sandwich  (CogView, Ding 2021):   x = x + LN_out(F(LN(x)))     -- plus one final LN before the head
    deepnorm  (DeepNet, Wang 2022):   x = LN(alpha * x + F(x))     -- alpha = (2M)^(1/4), a constant
    admin     (Liu et al. 2020):      x = LN(omega * x + F(x))     -- omega: a trainable scalar

As in fairseq's `normalize_before`, the same norm modules (`attn_norm`, `ffn_norm`) serve every
order, so a block's parameter names and shapes are identical in post, pre and deepnorm; sandwich adds
`attn_out_norm`/`ffn_out_norm`, admin adds the scalar parameters `attn_skip`/`ffn_skip`, and only
pre and sandwich own `final_norm`. `model.norm_type` makes every norm an `nn.LayerNorm` or an
`nn.RMSNorm`. The layout is decided once, in `Block.__init__`: the forward pass only tests which of
the optional pieces exist.

Initialisation: the recipe `model.init` names (lnexp/recipes.py; fairseq's by default), then:
- GPT-2 residual scaling multiplies the init of every residual branch's output projection
  (`attn.out`, `ffn.fc2`) by 1/sqrt(N), N = 2 * n_layers.
- deepnorm multiplies the init of `attn.v`, `attn.out`, `ffn.fc1`, `ffn.fc2` by beta = (8M)^(-1/4)
  (q and k keep theirs), M = n_layers: DeepNet's decoder-only constants.
- admin sets every omega to sqrt((N+1)/ln(N+1) - 1), N = 2 * n_layers (`admin_init: closed_form`),
  or to 1 until `TransformerLM.admin_profile_(idx)` measures them (`admin_init: profile`).

For decoding, `forward(idx, cache=KVCache(n_layers))` keeps every layer's keys and values, so the
next call feeds only the new tokens (positions continue from the cached length). Without a cache
(training) nothing of this runs.

`model.arch: encoder_decoder` builds `EncoderDecoder` instead (`build_model` picks): an encoder of
`n_layers` blocks (non-causal self-attention, FFN) and a decoder of `n_layers` blocks (causal
self-attention, cross-attention over the encoder output, FFN), every sub-layer wired by the same
`Block.residual` rule, so every `model.norm` and `model.norm_type` applies to both stacks. Each stack
counts its own sub-layers for the constants: the encoder has 2 per layer, the decoder 3.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lnexp.config import ModelConfig
from lnexp.recipes import RECIPES

# The weight matrices that end a residual branch: the ones GPT-2 scales by 1/sqrt(N).
RESIDUAL_OUTPUTS = ("attn.out.weight", "cross.out.weight", "ffn.fc2.weight")
# The weight matrices whose init DeepNet scales by beta (q and k keep the plain init).
DEEPNORM_SCALED = ("attn.v.weight", "attn.out.weight", "cross.v.weight", "cross.out.weight",
                   "ffn.fc1.weight", "ffn.fc2.weight")
# The padding id of sequence-to-sequence batches: masked out as a key, ignored as a target.
PAD = 0


def deepnorm_alpha(n_layers: int) -> float:
    """DeepNet's skip-path multiplier for a decoder-only stack of M = n_layers: (2M)^(1/4)."""
    return (2 * n_layers) ** 0.25


def deepnorm_beta(n_layers: int) -> float:
    """DeepNet's init scale of the FFN, value and output projections, decoder-only: (8M)^(-1/4)."""
    return (8 * n_layers) ** -0.25


def admin_omega(n_layers: int, sublayers_per_layer: int = 2) -> float:
    """Admin's closed-form shortcut scale sqrt((N+1)/ln(N+1) - 1) for N = 2 * n_layers sub-layers
    (3 * n_layers in an encoder-decoder's decoder: self-attention, cross-attention, FFN)."""
    n = sublayers_per_layer * n_layers
    return math.sqrt((n + 1) / math.log(n + 1) - 1)


def make_norm(cfg: ModelConfig) -> nn.Module:
    """One norm over d_model as `model.norm_type` says: LayerNorm or RMSNorm (eps = model.norm_eps)."""
    cls = nn.RMSNorm if cfg.norm_type == "rmsnorm" else nn.LayerNorm
    return cls(cfg.d_model, eps=cfg.norm_eps)


class Attention(nn.Module):
    """Multi-head attention: causal self-attention (the LM, the decoder), or non-causal over `memory`
    (the encoder's self-attention: memory is None; the decoder's cross-attention: the encoder output).
    `mask`, (batch, 1, 1, keys) bool, True where a key may be attended: the source's non-PAD tokens."""

    def __init__(self, cfg: ModelConfig, causal: bool = True) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.dropout, self.causal = cfg.n_heads, cfg.dropout, causal
        self.q, self.k, self.v, self.out = (nn.Linear(d, d, bias=cfg.bias) for _ in range(4))

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, memory: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        heads = (self.n_heads, C // self.n_heads)
        if memory is None:  # self-attention: q, k and v in one matmul, as nanoGPT's c_attn
            q, k, v = (t.view(B, T, *heads).transpose(1, 2) for t in self._project(x, self.q, self.k, self.v))
        else:  # cross-attention: q from x, k and v (one matmul) from the encoder output
            S = memory.shape[1]
            q = self.q(x).view(B, T, *heads).transpose(1, 2)
            k, v = (t.view(B, S, *heads).transpose(1, 2) for t in self._project(memory, self.k, self.v))
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
    """Every layer's keys and values of the tokens fed so far, for incremental decoding."""

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerCache() for _ in range(n_layers)]

    def __len__(self) -> int:
        """The number of positions cached."""
        k = self.layers[0].k
        return 0 if k is None else k.shape[2]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (repeats allowed): beam search's survivors and their copies."""
        for layer in self.layers:
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
    """Two residual sub-layers (attention, FFN) wired as `cfg.norm` says (see the module docstring).

    Per sub-layer (`attn_*` and `ffn_*`): `*_norm` is the input norm (pre, sandwich) or the norm of
    the sum (post, deepnorm, admin); `*_out_norm` is sandwich's norm of the branch output (None
    otherwise); `*_skip` multiplies the skip path: None (post, pre, sandwich), the constant float
    alpha (deepnorm: not a parameter), or admin's trainable scalar nn.Parameter omega.

    `causal=False` makes it an encoder block; `alpha` replaces DeepNorm's decoder-only constant.
    """

    def __init__(self, cfg: ModelConfig, causal: bool = True, alpha: float | None = None) -> None:
        super().__init__()
        self.layout = cfg.norm
        self.pre_norm = cfg.norm in ("pre", "sandwich")  # the branch reads LN(x); else LN of the sum
        self.attn = Attention(cfg, causal)
        self.attn_norm = make_norm(cfg)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = make_norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.attn_out_norm = self.ffn_out_norm = None
        self.attn_skip = self.ffn_skip = None
        if cfg.norm == "sandwich":
            self.attn_out_norm, self.ffn_out_norm = make_norm(cfg), make_norm(cfg)
        elif cfg.norm == "deepnorm":
            self.attn_skip = self.ffn_skip = deepnorm_alpha(cfg.n_layers) if alpha is None else alpha
        elif cfg.norm == "admin":  # values set by TransformerLM.reset_parameters / admin_profile_
            self.attn_skip, self.ffn_skip = nn.Parameter(torch.ones(())), nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        if mask is None:
            x = self.residual(x, self.attn, self.attn_norm, self.attn_out_norm, self.attn_skip, cache)
        else:  # an encoder block: the source's PAD keys are masked
            x = self.residual(x, self.attn, self.attn_norm, self.attn_out_norm, self.attn_skip, mask=mask)
        return self.residual(x, self.ffn, self.ffn_norm, self.ffn_out_norm, self.ffn_skip)

    def residual(self, x: torch.Tensor, branch: nn.Module, norm: nn.Module, out_norm: nn.Module | None,
                 skip: float | torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        if self.pre_norm:
            y = branch(norm(x), *args, **kwargs)
            if out_norm is not None:  # sandwich; under autocast y is bf16: norm it in the stream's dtype
                y = out_norm(y.to(x.dtype))
            return x + self.drop(y)
        if skip is None:
            return norm(x + self.drop(branch(x, *args, **kwargs)))
        return norm(skip * x + self.drop(branch(x, *args, **kwargs)))


class DecoderBlock(Block):
    """An encoder-decoder's decoder block: causal self-attention, then cross-attention over the
    encoder output (`cross`, `cross_norm`, and as the layout needs `cross_out_norm`, `cross_skip`),
    then the FFN; three sub-layers, each through `Block.residual`."""

    def __init__(self, cfg: ModelConfig, alpha: float | None = None) -> None:
        super().__init__(cfg, causal=True, alpha=alpha)
        self.cross = Attention(cfg, causal=False)
        self.cross_norm = make_norm(cfg)
        self.cross_out_norm = make_norm(cfg) if cfg.norm == "sandwich" else None
        self.cross_skip = nn.Parameter(torch.ones(())) if cfg.norm == "admin" else self.attn_skip

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.residual(x, self.attn, self.attn_norm, self.attn_out_norm, self.attn_skip)
        x = self.residual(x, self.cross, self.cross_norm, self.cross_out_norm, self.cross_skip,
                          memory=memory, mask=mask)
        return self.residual(x, self.ffn, self.ffn_norm, self.ffn_out_norm, self.ffn_skip)


class Embedded(nn.Module):
    """What both architectures share: the token table (also the tied output layer) and positions."""

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

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Scaled token embeddings plus the positions start, start + 1, ..."""
        end = start + idx.shape[1]
        if end > self.cfg.max_seq_len:
            raise ValueError(f"{end} positions exceed model.max_seq_len ({self.cfg.max_seq_len})")
        table = self.pos_emb.weight if self.cfg.positional == "learned" else self.sinusoid
        return self.drop(self.tok_emb(idx) * self.embed_scale + table[start:end])


class TransformerLM(Embedded):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        d = cfg.d_model
        self._build_embeddings(cfg, vocab_size)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = make_norm(cfg) if cfg.norm in ("pre", "sandwich") else None
        self.head = None if cfg.tie_embeddings else nn.Linear(d, vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The init recipe `model.init` (lnexp/recipes.py: fairseq's, GPT-2's, ...), then the layout's
        own scaling: GPT-2's 1/sqrt(2 n_layers), DeepNet's beta, Admin's omega."""
        self.recipe.init(self, self.cfg.d_model)
        if self.cfg.residual_scaling == "gpt2":
            scale = 1.0 / math.sqrt(2 * self.cfg.n_layers)
            for name, param in self.named_parameters():
                if name.endswith(RESIDUAL_OUTPUTS):
                    param.mul_(scale)
        if self.cfg.norm == "deepnorm":
            beta = deepnorm_beta(self.cfg.n_layers)
            for name, param in self.named_parameters():
                if name.endswith(DEEPNORM_SCALED):
                    param.mul_(beta)
        if self.cfg.norm == "admin":
            omega = admin_omega(self.cfg.n_layers) if self.cfg.admin_init == "closed_form" else 1.0
            for block in self.blocks:
                block.attn_skip.fill_(omega)
                block.ffn_skip.fill_(omega)

    @torch.no_grad()
    def admin_profile_(self, idx: torch.Tensor) -> list[float]:
        """Admin's profiling init (`model.admin_init: profile`): set every omega from one batch.

        Sub-layers are numbered i = 0 .. 2*n_layers - 1 in the order they run (block 0's attention,
        block 0's FFN, block 1's attention, ...). One forward pass of `idx` (token ids, shape (B, T),
        on the model's device) runs with every omega = 1 (i.e. plain Post-LN), in eval mode (no
        dropout), in float32 and without gradients; it records Var[f_j], the variance over all
        elements (batch, positions, features; population variance) of sub-layer j's branch output
        f_j (the attention's or FFN's output, before the residual sum). Then

            omega_i = sqrt(1 + sum_{j < i} Var[f_j])

        where the 1 stands for the embedding, taken as unit-variance (true for `model.init: fairseq`,
        whose embeddings are N(0, 1/d) scaled by sqrt(d); under `init: gpt2` they are far smaller).
        So omega_0 = 1, and omega_i^2 is the variance a Pre-LN stream would have accumulated before
        sub-layer i. The model's train/eval mode is restored; omega stays a trainable parameter.
        Call it once, at initialisation, before training (and before wrapping the model in DDP, so
        that rank 0's values are the ones broadcast). Returns the omegas, in sub-layer order.
        """
        if self.cfg.norm != "admin":
            raise ValueError(f"admin_profile_ needs model.norm admin, got {self.cfg.norm}")
        stack = [pair for block in self.blocks
                 for pair in ((block.attn_skip, block.attn), (block.ffn_skip, block.ffn))]
        return profile_admin_skips(self, [stack], idx)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position of idx (and the loss if targets are given). With a cache, idx
        continues the cached tokens: its keys and values are appended to it."""
        x = self.embed(idx, 0 if cache is None else len(cache))
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i])
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = self.head(x) if self.head is not None else F.linear(x, self.tok_emb.weight)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if non_embedding else n


@torch.no_grad()
def profile_admin_skips(model: nn.Module, stacks: list[list[tuple[nn.Parameter, nn.Module]]],
                        *inputs: torch.Tensor) -> list[float]:
    """Admin's profiling rule (see `TransformerLM.admin_profile_`) for one residual stream per stack,
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


def deepnorm_encdec(n_enc: int, n_dec: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """DeepNet's encoder-decoder constants ((alpha, beta) of the encoder, of the decoder) for N
    encoder and M decoder layers: encoder 0.81 (N^4 M)^(1/16) and 0.87 (N^4 M)^(-1/16), decoder
    (3M)^(1/4) and (12M)^(-1/4)."""
    base = (n_enc**4 * n_dec) ** (1 / 16)
    return (0.81 * base, 0.87 / base), ((3 * n_dec) ** 0.25, (12 * n_dec) ** -0.25)


class EncoderDecoder(Embedded):
    """`model.arch: encoder_decoder`: `n_layers` encoder blocks (`enc.{i}`: non-causal self-attention
    `attn`, FFN `ffn`) and `n_layers` decoder blocks (`dec.{i}`: causal self-attention `attn`,
    cross-attention `cross` over the encoder output, FFN `ffn`), all wired by `model.norm`.

    Source and target share one token embedding (and the tied output projection) and one position
    table. Pre and sandwich end each stack with a norm (`enc_final_norm`, `dec_final_norm`). Source
    PAD tokens are masked as keys in the encoder and in cross-attention; PAD targets are ignored in
    the loss. Constants count each stack's sub-layers: GPT-2 scaling 1/sqrt(2L) in the encoder and
    1/sqrt(3L) in the decoder; Admin's closed-form omega with N = 2L and N = 3L; DeepNorm uses
    DeepNet's encoder-decoder alpha and beta (`deepnorm_encdec`), L = n_layers in each.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        d, n = cfg.d_model, cfg.n_layers
        self._build_embeddings(cfg, vocab_size)
        (enc_alpha, _), (dec_alpha, _) = deepnorm_encdec(n, n)
        self.enc = nn.ModuleList(Block(cfg, causal=False, alpha=enc_alpha) for _ in range(n))
        self.dec = nn.ModuleList(DecoderBlock(cfg, alpha=dec_alpha) for _ in range(n))
        pre = cfg.norm in ("pre", "sandwich")
        self.enc_final_norm = make_norm(cfg) if pre else None
        self.dec_final_norm = make_norm(cfg) if pre else None
        self.head = None if cfg.tie_embeddings else nn.Linear(d, vocab_size, bias=False)
        self.reset_parameters()

    def admin_stacks(self) -> list[list[tuple[nn.Parameter, nn.Module]]]:
        """Admin's (omega, branch) pairs, per stack, in the order they run."""
        return [[pair for b in self.enc for pair in ((b.attn_skip, b.attn), (b.ffn_skip, b.ffn))],
                [pair for b in self.dec
                 for pair in ((b.attn_skip, b.attn), (b.cross_skip, b.cross), (b.ffn_skip, b.ffn))]]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.recipe.init(self, self.cfg.d_model)
        n = self.cfg.n_layers
        if self.cfg.residual_scaling == "gpt2":
            scale = {"enc.": 1.0 / math.sqrt(2 * n), "dec.": 1.0 / math.sqrt(3 * n)}
            for name, param in self.named_parameters():
                if name.endswith(RESIDUAL_OUTPUTS):
                    param.mul_(scale[name[:4]])
        if self.cfg.norm == "deepnorm":
            (_, enc_beta), (_, dec_beta) = deepnorm_encdec(n, n)
            for name, param in self.named_parameters():
                if name.endswith(DEEPNORM_SCALED):
                    param.mul_(enc_beta if name.startswith("enc.") else dec_beta)
        if self.cfg.norm == "admin":
            closed = self.cfg.admin_init == "closed_form"
            for stack, per_layer in zip(self.admin_stacks(), (2, 3)):
                for skip, _ in stack:
                    skip.fill_(admin_omega(n, per_layer) if closed else 1.0)

    @torch.no_grad()
    def admin_profile_(self, src: torch.Tensor, tgt_in: torch.Tensor) -> list[float]:
        """`TransformerLM.admin_profile_`'s rule on one batch, each stack's stream on its own (both
        start from the unit-variance embedding). Returns the encoder's omegas, then the decoder's."""
        if self.cfg.norm != "admin":
            raise ValueError(f"admin_profile_ needs model.norm admin, got {self.cfg.norm}")
        return profile_admin_skips(self, self.admin_stacks(), src, tgt_in)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder output and the source key mask, (batch, 1, 1, source length), True = not PAD."""
        mask = (src != PAD)[:, None, None, :]
        x = self.embed(src)
        for block in self.enc:
            x = block(x, mask=mask)
        return (x if self.enc_final_norm is None else self.enc_final_norm(x)), mask

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every target position (and the loss over the non-PAD targets if given)."""
        memory, mask = self.encode(src)
        x = self.embed(tgt_in)
        for block in self.dec:
            x = block(x, memory, mask)
        if self.dec_final_norm is not None:
            x = self.dec_final_norm(x)
        logits = self.head(x) if self.head is not None else F.linear(x, self.tok_emb.weight)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if non_embedding else n


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
