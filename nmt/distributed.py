"""Data-parallel plumbing on PyTorch's own engine (torchrun + torch.distributed).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything here is a no-op for a
single process. NCCL on CUDA, gloo on CPU. A rank whose peer died sees the broken connection
in its next collective; one whose peer hangs gives up after ``trainer.dist_timeout_s`` seconds.
Either way it exits with an error, and torchrun then stops the remaining workers.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    # under NCCL, a gloo group for the small control collectives (token counts, stop
    # decisions): CPU tensors, so they never wait for the GPU; None = the default group
    cpu_group: Any = None


def init(device: str, timeout_s: int) -> DistContext:
    """Join the process group when launched by torchrun; else a single-process context.

    Idempotent: a second call returns the same context without joining again.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"device={device}: CUDA is not available on this machine")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    global _cpu_group
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout)
        _cpu_group = dist.new_group(backend="gloo", timeout=timeout) if use_cuda else None
    return DistContext(
        rank=rank, local_rank=local_rank, world_size=world_size, device=dev, cpu_group=_cpu_group
    )


_cpu_group: Any = None


def no_buffer_sync() -> dict[str, Any]:
    """DistributedDataParallel's keyword for not broadcasting buffers before every forward
    (``forward_sync_buffers`` where it exists, ``broadcast_buffers`` before); nmt's only
    buffer, ``Bridge.layer_index``, is a constant."""
    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def cleanup(ctx: DistContext) -> None:
    if ctx.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def main_first(ctx: DistContext) -> Iterator[None]:
    """Run the body on rank 0 first (e.g. building the data cache), then on the others."""
    if ctx.world_size > 1 and ctx.rank != 0:
        dist.barrier()
    yield
    if ctx.world_size > 1 and ctx.rank == 0:
        dist.barrier()


def _reduce(ctx: DistContext, value: float, op: dist.ReduceOp.RedOpType) -> float:
    if ctx.cpu_group is not None:  # gloo on the CPU: no device round trip
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=op, group=ctx.cpu_group)
    else:
        t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
        dist.all_reduce(t, op=op)
    return float(t.item())


def max_tensor(ctx: DistContext, t: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of ``t`` (on ``ctx.device``) over all ranks, in place and without
    reading it (no host sync); ``t`` itself for a single process."""
    if ctx.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def sum_int(ctx: DistContext, value: int) -> int:
    """Sum of ``value`` over all ranks."""
    if ctx.world_size <= 1:
        return value
    return int(round(_reduce(ctx, float(value), dist.ReduceOp.SUM)))


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if ctx.world_size <= 1:
        return flag
    return _reduce(ctx, float(flag), dist.ReduceOp.MAX) > 0


def max_int(ctx: DistContext, value: int) -> int:
    """Largest ``value`` over all ranks."""
    if ctx.world_size <= 1:
        return value
    return int(round(_reduce(ctx, float(value), dist.ReduceOp.MAX)))


def broadcast_object(ctx: DistContext, obj: T) -> T:
    """Rank 0's ``obj`` (picklable) on every rank."""
    if ctx.world_size <= 1:
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0, device=ctx.device)
    return box[0]


def gather_objects(ctx: DistContext, obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if ctx.world_size <= 1:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_float(ctx: DistContext, value: float) -> float:
    """Rank 0's ``value`` on every rank (also a barrier)."""
    if ctx.world_size <= 1:
        return value
    if ctx.cpu_group is not None:
        t = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(t, src=0, group=ctx.cpu_group)
    else:
        t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
        dist.broadcast(t, src=0)
    return float(t.item())
