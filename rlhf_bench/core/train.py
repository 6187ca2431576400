"""Optimisation plumbing shared by every stage: optimizer, schedule, one clipped step, cost."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch

from rlhf_bench.core import distributed


class NonFiniteError(RuntimeError):
    """A loss or reward became NaN/inf; the message names the step and the quantity."""


def check_finite(value: torch.Tensor | float, name: str, step: int) -> None:
    value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(value):
        raise NonFiniteError(f"{name} is {value} at step {step}")


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    max_grad_norm: float | None = None,
) -> torch.optim.Optimizer:
    """AdamW over the parameters that require grad. Under parallel.strategy=deepspeed with several
    processes it is DeepSpeed ZeRO's, which clips at ``max_grad_norm`` itself (the value the loop
    passes to ``optimizer_step``)."""
    optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay, eps=eps)
    return distributed.zero_optimizer(optimizer, max_grad_norm) if distributed.zero() else optimizer


def warmup_linear_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    final_fraction: float = 0.0,
):
    """Linear warm-up to the peak learning rate, then linear decay to ``final_fraction`` of it."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(final_fraction, 1.0 - (1.0 - final_fraction) * progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    max_grad_norm: float | None,
    scheduler=None,
) -> float:
    """Backward, clip the global gradient norm, step, zero; return the norm before clipping."""
    engine = distributed.zero_engine(optimizer)
    if engine is not None:  # DeepSpeed ZeRO: its engine averages, clips (at make_optimizer's norm) and steps
        if float(engine.gradient_clipping()) != float(max_grad_norm or 0.0):
            raise ValueError(
                f"make_optimizer was given max_grad_norm={engine.gradient_clipping()}, not {max_grad_norm}"
            )
        engine.backward(loss)
        engine.step()
        if scheduler is not None:
            scheduler.step()
        return float(engine.get_global_grad_norm())
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    distributed.average_gradients(params)  # several processes: each had its share of the batch
    # sharded parameters (fsdp): torch sums the squares over the shards, the norm is the global one
    norm = distributed.full(torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf")))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return float(norm)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True):
    """Index tensors covering range(n) in chunks of ``batch_size`` (the last may be shorter)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def epoch_batches(n: int, batch_size: int, epochs: int, generator: torch.Generator) -> list[tuple[int, torch.Tensor]]:
    """The whole data order of an epoch-based loop, drawn up front: [(epoch, index tensor)] per step.

    Drawing it before the first step makes the data position a step number: a loop resumed
    at step k takes ``schedule[k:]`` and sees exactly the batches the uninterrupted loop would.
    """
    return [(epoch, idx) for epoch in range(epochs) for idx in batches(n, batch_size, generator)]


@dataclass
class Cost:
    """What a run spent, so that methods can be compared at equal budget."""

    tokens_generated: int = 0
    tokens_trained: int = 0
    reward_model_queries: int = 0
    wall_seconds: dict[str, float] = field(default_factory=dict)

    def timed(self, stage: str):
        return _Timer(self, stage)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["wall_seconds"]["total"] = round(sum(self.wall_seconds.values()), 3)
        return out


class _Timer:
    def __init__(self, cost: Cost, stage: str):
        self.cost, self.stage = cost, stage

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        elapsed = time.perf_counter() - self.start
        self.cost.wall_seconds[self.stage] = round(self.cost.wall_seconds.get(self.stage, 0.0) + elapsed, 3)
        return False
