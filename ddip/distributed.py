"""torch.distributed helpers: one process per device, launched by ``torchrun`` (NCCL on GPUs, gloo on CPUs).

Nothing here is needed for a single process: every helper degrades to the one-process answer when no process group
is initialised, so the same code path runs under plain ``python`` and under ``torchrun``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> bool:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1); True if distributed.

    The backend is NCCL when CUDA is available, gloo otherwise. Each rank on a GPU node uses ``cuda:LOCAL_RANK``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def close(*, wait: bool = True) -> None:
    """Leave the process group; with ``wait`` (a normal end) only once every rank is done with it.

    Without the barrier a rank that finishes first tears its gloo connections down while another still uses them,
    and about one two-process run in six aborted at exit ("terminate called without an active exception"). After an
    error on one rank there is no barrier: the others may never reach it.
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def process_group() -> Iterator[bool]:
    """Join the ``torchrun`` process group (if any) for the block; yields whether the run is distributed."""
    distributed = init_from_env()
    try:
        yield distributed
    except BaseException:
        close(wait=False)
        raise
    close()


def _collective_device() -> torch.device:
    """Where small tensors for a collective must live: NCCL only moves CUDA tensors."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_flag(*flags: bool) -> list[bool]:
    """Each flag OR-ed over the ranks (one small all-reduce), so that every rank takes the same decision."""
    t = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=_collective_device())
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.cpu().tolist()]


def gather(obj) -> list:
    """``obj`` of every rank, in rank order (a collective: every rank must call it)."""
    if world()[1] == 1:
        return [obj]
    out: list = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out
