"""Distributed data parallel set-up under ``torchrun`` (gloo on CPU, NCCL on GPU) and small collectives.

``torchrun --nproc_per_node N -m perception_encoder.cli.main train ...`` (or ``torchrun ... $(which pe)
train ...``) sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; ``init_distributed`` reads them and joins
the process group. Without them it is a single process and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this call created the process group (and ends it with ``shutdown``)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``auto`` -> ``cuda:<local rank>`` when CUDA is available, else ``cpu``; other names as given."""
    if name == "auto":
        return torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{info.local_rank}")
    return device


def init_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group described by torchrun's environment (if any); returns the rank facts and the
    device this process trains on. Already-initialised groups (tests, notebooks) are reused."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(
            dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_world_size()
        )
        return info, resolve_device(device_name, info)
    if world <= 1:
        info = DistInfo()
        return info, resolve_device(device_name, info)
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world, owns_group=True)
    device = resolve_device(device_name, info)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return info, device


def sum_over_ranks(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks, in one all-reduce (float64, on ``device``, which NCCL
    needs to be the GPU); ``values`` itself in a single process. Every rank must call it with a list of the
    same length."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group if ``init_distributed`` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
