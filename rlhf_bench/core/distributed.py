"""Data parallelism over processes: ``accelerate launch -m rlhf_bench ...`` or ``torchrun``.

Every process holds the whole model and takes its share of each batch; gradients are averaged
across processes before the optimiser step, as DDP does, so that ``N`` processes with batch
``b`` take the same steps as one process with batch ``N * b`` (up to the order of float sums).
The process group is set up by ``accelerate``'s ``PartialState`` from the environment the
launcher writes (gloo on CPU, NCCL on CUDA). One process, no launcher: everything here is a
no-op.

Only the main process writes: run records, W&B, cached stages, checkpoints. The others train
in lockstep, and wait for it where it writes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

_STATE: dict[str, Any] = {"rank": 0, "world": 1}


def setup(device: torch.device | None = None) -> None:
    """Join the process group a launcher described (WORLD_SIZE > 1); otherwise nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _STATE["world"] > 1:
        return
    if device is not None and device.type == "cpu":
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")  # gloo, not NCCL, for CPU training
    from accelerate import PartialState

    state = PartialState(cpu=device is not None and device.type == "cpu")
    _STATE.update(rank=state.process_index, world=state.num_processes)


def rank() -> int:
    return _STATE["rank"]


def world_size() -> int:
    return _STATE["world"]


def is_main() -> bool:
    return _STATE["rank"] == 0


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def broadcast(obj: Any) -> Any:
    """The main process's ``obj``, on every process."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def shard(items: Sequence) -> Sequence:
    """This process's contiguous share of a global batch (near-equal shares when it does not
    divide evenly, as ``numpy.array_split``)."""
    n, world = len(items), world_size()
    if world == 1:
        return items
    size, extra = divmod(n, world)
    start = rank() * size + min(rank(), extra)
    return items[start : start + size + (rank() < extra)]


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """All-reduce the gradients to their mean over processes (what DDP does after backward)."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def mean(value: float) -> float:
    """The mean of a number over processes (a statistic every process must agree on)."""
    if world_size() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t) / world_size()


def total(value: int) -> int:
    """The sum of a counter over processes."""
    if world_size() == 1:
        return value
    t = torch.tensor([int(value)], dtype=torch.int64)
    torch.distributed.all_reduce(t)
    return int(t)
