"""Devices, torchrun/DDP set-up, and the FLOP and peak-throughput numbers behind MFU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lnexp.core.config import ConfigError

# Dense bf16 peak TFLOP/s per device (vendor datasheets, SXM parts). MFU is reported against these;
# `train.peak_tflops` overrides for other devices. Unknown devices get no MFU, tokens/s always.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (world_size 1 when run alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    if name != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun job if this process is in one (nccl on GPUs, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size == 1:
        return Dist(), device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), local_rank, dist.get_world_size(), backend), device


def any_rank(flag: bool, info: Dist, device: torch.device) -> bool:
    """True on every rank if it is true on any: ranks must stop together or they hang."""
    if info.world_size == 1:
        return flag
    tensor = torch.tensor([float(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def gather(value: torch.Tensor) -> list:
    """`value` from every rank, in rank order, on the host."""
    values = [torch.zeros_like(value) for _ in range(dist.get_world_size())]
    dist.all_gather(values, value)
    return torch.stack(values).tolist()


def flops_per_token(n_params_non_embedding: int, n_layers: int, d_model: int, seq_len: int) -> int:
    """Training FLOPs per token, PaLM appendix B: 6N + 12·L·d·T (attention scores and values)."""
    return 6 * n_params_non_embedding + 12 * n_layers * d_model * seq_len


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
