"""A decoder-only Transformer LM in which one flag moves the LayerNorm.

    Post-LN (Vaswani et al. 2017):  x = LN(x + F(x))          -- the block output is normalised
    Pre-LN  (Xiong et al. 2020):    x = x + F(LN(x))          -- plus one final LN before the head

As in fairseq's `normalize_before`, the same LayerNorm modules serve both orders, so a block's
parameter names and shapes are identical in both layouts; only Pre-LN owns `final_norm`.
GPT-2 residual scaling multiplies the init of every residual branch's output projection
(`attn.out`, `ffn.fc2`) by 1/sqrt(N), N = 2 * n_layers.

For decoding, `forward(idx, cache=KVCache(n_layers))` keeps every layer's keys and values, so the
next call feeds only the new tokens (positions continue from the cached length). Without a cache
(training) nothing of this runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lnexp.config import ModelConfig

# The weight matrices that end a residual branch: the ones GPT-2 scales by 1/sqrt(N).
RESIDUAL_OUTPUTS = ("attn.out.weight", "ffn.fc2.weight")


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.q, self.k, self.v, self.out = (nn.Linear(d, d, bias=cfg.bias) for _ in range(4))

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (proj(x).view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))
        if cache is None:
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
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn = Attention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        x = self.residual(x, self.attn, self.attn_norm, cache)
        return self.residual(x, self.ffn, self.ffn_norm)

    def residual(self, x: torch.Tensor, branch: nn.Module, norm: nn.LayerNorm, *args) -> torch.Tensor:
        if self.pre_norm:
            return x + self.drop(branch(norm(x), *args))
        return norm(x + self.drop(branch(x, *args)))


class TransformerLM(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        d = cfg.d_model
        self.tok_emb = nn.Embedding(vocab_size, d)
        if cfg.positional == "learned":
            self.pos_emb = nn.Embedding(cfg.max_seq_len, d)
        else:
            self.register_buffer("sinusoid", sinusoidal_positions(cfg.max_seq_len, d), persistent=False)
        # fairseq scales Xavier-initialised embeddings (std d^-1/2) by sqrt(d): unit-variance inputs.
        self.embed_scale = math.sqrt(d) if cfg.init == "xavier" else 1.0
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.norm == "pre" else None
        self.head = None if cfg.tie_embeddings else nn.Linear(d, vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Xavier-uniform linears (original Transformer, Xiong et al.) or GPT-2's N(0, 0.02)."""
        xavier = self.cfg.init == "xavier"
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if xavier:
                    nn.init.xavier_uniform_(module.weight)
                else:
                    nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.cfg.d_model ** -0.5 if xavier else 0.02)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        if self.cfg.residual_scaling == "gpt2":
            scale = 1.0 / math.sqrt(2 * self.cfg.n_layers)
            for name, param in self.named_parameters():
                if name.endswith(RESIDUAL_OUTPUTS):
                    param.mul_(scale)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position of idx (and the loss if targets are given). With a cache, idx
        continues the cached tokens: its keys and values are appended to it."""
        start, end = (0, idx.shape[1]) if cache is None else (len(cache), len(cache) + idx.shape[1])
        if end > self.cfg.max_seq_len:
            raise ValueError(f"{end} positions exceed model.max_seq_len ({self.cfg.max_seq_len})")
        table = self.pos_emb.weight if self.cfg.positional == "learned" else self.sinusoid
        x = self.drop(self.tok_emb(idx) * self.embed_scale + table[start:end])
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


def sinusoidal_positions(length: int, d: int) -> torch.Tensor:
    """The original Transformer's fixed sin/cos position table, shape (length, d)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(length, d)
    table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return table
