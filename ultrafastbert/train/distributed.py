"""Multi-process training with ``torchrun``: process group set-up, rank-aware helpers, DDP wrapping.

Under ``torchrun --nproc-per-node N`` the environment carries ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; without it
the same code runs as a single process and none of this does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and reports."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


DEVICES = ("auto", "cpu", "cuda")


def check_device(device: str) -> str:
    """``device`` if it is one of ``DEVICES`` and this machine has it, else a ``ValueError`` saying why."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        reason = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"device 'cuda' asked for, but {reason}; use --device cpu or auto")
    return device


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the ``torchrun`` process group if there is one (gloo on CPU, nccl on GPU) and pick the device
    (``check_device``: ``auto`` takes the GPU when there is one)."""
    check_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def wrap_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """DistributedDataParallel when several processes train, the model itself otherwise."""
    if not context.enabled:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum a tensor of statistics over all processes (identity for one process)."""
    if context.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_flag(flag: bool, context: DistributedContext) -> bool:
    """True on every rank if it is true on any: used so all ranks stop (and checkpoint) on the same step."""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def shutdown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
