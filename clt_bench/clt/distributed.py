"""torch.distributed under torchrun: DDP data parallel, or FSDP2 ``fully_shard`` for big CLTs.

Both use the same global batch split (each rank a contiguous slice), so either equals
single-process training on that batch up to float summation order. FSDP2 additionally shards
parameters, gradients and AdamW state across ranks -- the path for CLTs that do not fit one
device (the gpt2-goodfire preset: ~3.4B parameters, ~54 GB with AdamW state in fp32).
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from clt_bench.errors import UserError

PARALLEL = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=4))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def local_device(device: str, info: DistInfo) -> str:
    """``cuda`` -> ``cuda:<local_rank>`` under torchrun; other devices unchanged."""
    if device == "cuda" and info.enabled:
        return f"cuda:{info.local_rank}"
    return device


def wrap(module: nn.Module, kind: str, info: DistInfo, device: str) -> nn.Module:
    """DDP or FSDP2 around the training objective; unchanged for one process."""
    if kind not in PARALLEL:
        raise UserError(f"unknown clt.parallel '{kind}' (known: {', '.join(PARALLEL)}).")
    if not info.enabled:
        return module
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.local_rank] if device.startswith("cuda") else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (info.world,))
    fully_shard(module, mesh=mesh)
    return module


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t)
    return t


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    t = all_reduce_sum(t, info)
    return t / info.world if info.enabled else t


def full(t: torch.Tensor) -> torch.Tensor:
    """A (possibly sharded DTensor) tensor as a full local tensor."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def like(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (full) laid out like ``param`` (sharded DTensor or plain tensor)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        return distribute_tensor(
            value.to(param.device, param.dtype), param.device_mesh, param.placements
        )
    return value.to(param.device, param.dtype)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    """Leave the process group. FSDP2's wrapped modules sit in reference cycles that hold the
    group; collected only at interpreter exit (after the group is gone) they made gloo abort the
    process ("terminate called without an active exception", ~1 run in 8 on a loaded 2-core
    machine), so they are collected here first, and every rank finishes its work before any
    leaves."""
    if info.enabled and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
