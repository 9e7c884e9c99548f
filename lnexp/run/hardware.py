"""Devices, torchrun/DDP set-up, and the FLOP and peak-throughput numbers behind MFU."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class Memory:
    """What a run may still allocate, and which limit says so (for the one-line refusal)."""

    bytes: int
    what: str


def memory_available(device: torch.device) -> Memory | None:
    """The memory a run on `device` can still take: a GPU's free memory, or on a CPU the smallest of the
    free memory (MemAvailable), the address space RLIMIT_AS leaves this process, and what its cgroup's
    limit leaves (containers, SLURM jobs); None if none of them can be read."""
    if device.type == "cuda":
        return Memory(torch.cuda.mem_get_info(device)[0], f"free memory of {device}")  # (free, total)
    found = [m for m in (free_memory(), address_space_left(), cgroup_memory_left()) if m is not None]
    return min(found, key=lambda m: m.bytes, default=None)


def free_memory(meminfo: Path = Path("/proc/meminfo")) -> Memory | None:
    """MemAvailable (free memory plus the page cache the kernel can reclaim); off Linux, the physical
    memory."""
    fields = _kib_fields(meminfo)
    if "MemAvailable" in fields:
        return Memory(fields["MemAvailable"], "free memory (MemAvailable)")
    try:
        return Memory(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical memory")
    except (ValueError, OSError):
        return None


def address_space_left(status: Path = Path("/proc/self/status")) -> Memory | None:
    """What RLIMIT_AS (ulimit -v) leaves this process: the limit less the address space it has mapped."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    return Memory(max(0, limit - _kib_fields(status).get("VmSize", 0)), "the address space RLIMIT_AS leaves")


# cgroup v2 (one hierarchy, "0::/path") and v1 (a "memory" controller): the limit, the usage, and the
# usage the kernel reclaims before it kills (inactive page cache; as kubelet's "working set" counts).
CGROUP_FILES = {"": ("", "memory.max", "memory.current", "inactive_file"),
                "memory": ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")}
UNLIMITED = 2**62  # v1 writes "no limit" as a page-rounded 2**63 - 1


def cgroup_memory_left(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
                       ) -> Memory | None:
    """The least any memory limit of this process's cgroup or its ancestors leaves (limit less working
    set); None without a limit."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    left = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers not in CGROUP_FILES:
            continue
        mount, limit_file, usage_file, reclaimable = CGROUP_FILES[controllers]
        folder = root / mount / path.lstrip("/")
        if not folder.is_dir():  # a container sees its own cgroup at the mount's root
            folder = root / mount
        for at in (folder, *folder.parents):
            limit, usage = _read_int(at / limit_file), _read_int(at / usage_file)
            if limit is not None and limit < UNLIMITED and usage is not None:
                stat = _fields(at / "memory.stat")
                left.append(limit - max(0, usage - stat.get(reclaimable, 0)))
            if at == root / mount:
                break
    return Memory(max(0, min(left)), "what the cgroup's memory limit leaves") if left else None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _fields(path: Path) -> dict[str, int]:
    """`name value` lines (memory.stat; /proc's `Name: value kB`) as numbers."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.replace(":", " ").split()[:2] for line in lines)
    return {pair[0]: int(pair[1]) for pair in pairs if len(pair) == 2 and pair[1].isdigit()}


def _kib_fields(path: Path) -> dict[str, int]:
    return {name: kib * 1024 for name, kib in _fields(path).items()}
