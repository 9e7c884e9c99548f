"""The DyT module of `model.norm_type: dyt` (declared in lnexp.core.layouts, which imports no torch)."""

from __future__ import annotations

import torch
from torch import nn


class DyT(nn.Module):
    """Dynamic Tanh, a norm-free replacement for a norm (Zhu, Chen, He, LeCun, Liu, CVPR 2025; their
    `dynamic_tanh.py`, `DynamicTanh`): γ·tanh(α·x) + β, with α one learnable scalar (init
    `model.dyt_alpha`, the paper's default 0.5) and γ, β per channel (init 1 and 0)."""

    def __init__(self, d_model: int, alpha: float) -> None:
        super().__init__()
        self.alpha_init = alpha
        self.alpha = nn.Parameter(torch.empty(()))
        self.weight = nn.Parameter(torch.empty(d_model))
        self.bias = nn.Parameter(torch.empty(d_model))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.alpha.fill_(self.alpha_init)
        self.weight.fill_(1.0)
        self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.tanh(self.alpha * x) + self.bias
