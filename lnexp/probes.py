"""What a run measures inside the model: per-layer gradient norms and residual-stream norms.

A reading is one device-to-host transfer: every gradient's norm (`torch._foreach_norm`, one stack),
the total norm and the activation norms are concatenated on the device and read with one `tolist()`.
Activation hooks exist only while a logging step's forward pass runs, so other steps pay nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

_LAYER = re.compile(r"^blocks\.(\d+)\.(.+)$")


def split_name(name: str) -> tuple[int | None, str]:
    """`blocks.3.ffn.fc2.weight` -> (3, 'ffn.fc2.weight'); `tok_emb.weight` -> (None, 'tok_emb.weight')."""
    match = _LAYER.match(name)
    return (int(match[1]), match[2]) if match else (None, name)


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
    """One logging step's measurements, already on the host, plus the total norm on the device."""

    rows: list[dict]
    grad_norm_total: float | None
    total_on_device: torch.Tensor | None
    # Under torchrun, every rank's [total gradient norm, local loss]: the norms agree (all-reduced
    # gradients), the losses do not (each rank draws its own batches).
    ranks: list[list[float]] | None = None


class Probes:
    def __init__(self, model: nn.Module, kinds: list[str]) -> None:
        self.model = model
        self.grad = "grad" in kinds
        self.act = "act" in kinds
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.blocks = list(model.blocks)
        self._acts: list[torch.Tensor] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def enabled(self) -> bool:
        return self.grad or self.act

    def arm(self) -> None:
        """Record the RMS of the residual stream entering every block and leaving the last one."""
        if not self.act:
            return
        self._acts = []

        def enter(_module: nn.Module, args: tuple) -> None:
            self._acts.append(_rms(args[0]))

        def leave(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            self._acts.append(_rms(output))

        self._hooks = [block.register_forward_pre_hook(enter) for block in self.blocks]
        self._hooks.append(self.blocks[-1].register_forward_hook(leave))

    def read(self, step: int) -> Reading:
        """Gradient and activation norms for this step (call after backward, before the update)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        parts, total = [], None
        if self.grad:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            norms = tensor_norms(grads)
            total = torch.linalg.vector_norm(norms)
            parts += [norms, total[None]]
        if self.act and self._acts:
            parts.append(torch.stack(self._acts).to(parts[0].device if parts else self._acts[0].device))
        values = torch.cat([p.float() for p in parts]).tolist() if parts else []  # the one transfer
        rows = []
        if self.grad:
            for name, value in zip(self.names, values):
                layer, param = split_name(name)
                rows.append({"step": step, "probe": "grad", "layer": layer, "param": param, "value": value})
            values = values[len(self.names):]
            grad_total, values = values[0], values[1:]
        else:
            grad_total = None
        for layer, value in enumerate(values):
            rows.append({"step": step, "probe": "act", "layer": layer, "param": "resid", "value": value})
        self._acts = []
        return Reading(rows, grad_total, total)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().pow(2).mean().sqrt()
