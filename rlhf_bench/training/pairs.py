"""The loop shared by offline preference methods (DPO, IPO, SimPO, KTO).

Each method supplies a ``PairObjective``: its loss as a function of the sequence
log-probabilities of the chosen and rejected responses under the policy (and the frozen SFT
reference), and, as data, whether it reads the reference and which rows it scores besides the pairs. The loop
does the batching, the forward passes, the optimiser and the logging (``core.loop``). It trains on the same pairs
the reward model was trained on (``ctx.stages.preferences.path``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rlhf_bench.core import distributed
from rlhf_bench.core.loop import Trainables, run_loop
from rlhf_bench.core.ops import masked_sum
from rlhf_bench.core.rollout import Samples
from rlhf_bench.core.train import (
    check_finite,
    epoch_batches,
    make_optimizer,
    optimizer_step,
    warmup_linear_schedule,
)
from rlhf_bench.errors import require
from rlhf_bench.rewards.preferences import load_pairs, pair_batch
from rlhf_bench.run import Run


@dataclass
class OfflineConfig:
    """Optimisation settings every offline preference method has."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    average_logprobs: bool = False  # sequence log-prob summed over tokens (paper) or length-averaged

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "method.epochs", "must be >= 1", self.epochs)
        require(self.batch_size >= 1, "method.batch_size", "must be >= 1", self.batch_size)
        require(self.lr > 0, "method.lr", "must be > 0", self.lr)

    def conventions(self) -> dict:
        return {
            "sequence_logprobs": "mean" if self.average_logprobs else "sum",
            "kl_in": "implicit (reference in the loss)",
        }


@dataclass
class PairLogps:
    """Sequence log-probabilities for n pairs, each [n]; ``ref_*`` under the frozen reference."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    # KTO's reference point: responses of other prompts ("mismatched" pairs (x_i, y_{i+1})).
    mismatched: torch.Tensor | None = None
    ref_mismatched: torch.Tensor | None = None


def sequence_logps(ctx: Run, model, batch: Samples, average: bool) -> torch.Tensor:
    """[B] log pi(y|x) summed over response tokens, or averaged over them when ``average``
    (under the distribution the run samples from: ``Run.logprobs``)."""
    logp, _ = ctx.logprobs(model, *batch.inputs())
    mask = batch.response_mask.float()
    total = masked_sum(logp, mask, dim=-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def implicit_reward_stats(logps: PairLogps, beta: float) -> dict[str, float]:
    """The implicit rewards beta * log(pi / pi_ref) of chosen and rejected, and how often chosen wins."""
    with torch.no_grad():
        chosen = beta * (logps.chosen - logps.ref_chosen)
        rejected = beta * (logps.rejected - logps.ref_rejected)
        return {
            "objective/chosen_reward": float(chosen.mean()),
            "objective/rejected_reward": float(rejected.mean()),
            "objective/reward_margin": float((chosen - rejected).mean()),
            "objective/reward_accuracy": float((chosen > rejected).float().mean()),
        }


LossFn = Callable[[PairLogps], tuple[torch.Tensor, dict[str, float]]]


def mismatched_pairs(pairs: Samples) -> Samples:
    """n mismatched rows, (x_i, y_chosen of pair i+1), from ``pair_batch``'s 2n rows (the n chosen,
    then the n rejected): KTO's reference point."""
    n = len(pairs) // 2
    shift = torch.roll(torch.arange(n, device=pairs.prompt_ids.device), -1)
    return Samples(pairs.prompt_ids[:n], pairs.prompt_mask[:n], pairs.response_ids[shift], pairs.response_mask[shift])


@dataclass(frozen=True)
class PairObjective:
    """What an offline pair method gives the pair loop: its loss and what the loss reads.

    ``reference``: whether the loss reads the frozen reference's log-probs (SimPO does not, and no
    reference is loaded). ``extra_rows``: rows to score besides the pairs, made from a batch of
    pairs (KTO's mismatched pairs); they come back in ``PairLogps.mismatched`` and depend on the
    batch, so with them the reference scores every step instead of once up front.
    """

    name: str
    loss: LossFn
    reference: bool = True
    extra_rows: Callable[[Samples], Samples] | None = None


def _logps(ctx: Run, model, pairs, idx, average: bool, extra_rows=None):
    """(chosen [n], rejected [n], extra rows [n] or None, tokens read) of the pairs ``idx``: one
    forward pass over the pairs' 2n rows and the ``extra_rows`` made from them."""
    batch = pair_batch(ctx, pairs, idx)
    if extra_rows is not None:
        extra = extra_rows(batch)
        batch = Samples(*(torch.cat([a, b]) for a, b in zip(batch.inputs(), extra.inputs())))
    n = len(idx)
    with ctx.autocast():
        out = sequence_logps(ctx, model, batch, average)
    return out[:n], out[n : 2 * n], (out[2 * n :] if extra_rows is not None else None), batch.tokens()


@torch.no_grad()
def reference_logps(ctx: Run, ref, pairs, batch_size: int, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen reference's sequence log-probs of every pair's chosen and rejected response,
    each [n]: computed once before training instead of once per epoch (the reference never
    changes and has no dropout, so the values are the same)."""
    chosen, rejected = [], []
    for start in tqdm(range(0, len(pairs), batch_size), desc="reference log-probs", unit="batch", leave=False):
        idx = torch.arange(start, min(start + batch_size, len(pairs)))
        c, r, _, _ = _logps(ctx, ref, pairs, idx, average)
        chosen.append(c.float())
        rejected.append(r.float())
    return torch.cat(chosen), torch.cat(rejected)


def train_on_pairs(ctx: Run, cfg: OfflineConfig, objective: PairObjective):
    """Fine-tune the SFT policy on the preference pairs with ``objective``; return the policy.

    The reference's log-probs of the pairs are computed once up front, unless the objective's
    extra rows depend on the batch (KTO): there the reference runs on every batch.
    """
    pairs, _ = load_pairs(ctx, ctx.stages.preferences.path)
    policy = ctx.load_policy().train()
    ref = ctx.load_reference(policy) if objective.reference else None
    ref_pairs = None
    if ref is not None and objective.extra_rows is None:
        ref_pairs = reference_logps(ctx, ref, pairs, cfg.batch_size, cfg.average_logprobs)
    schedule = epoch_batches(len(pairs), cfg.batch_size, cfg.epochs, torch.Generator().manual_seed(ctx.cfg.seed))
    optimizer = make_optimizer(policy.parameters(), cfg.lr, max_grad_norm=cfg.max_grad_norm)
    scheduler = warmup_linear_schedule(optimizer, cfg.warmup_steps, len(schedule))

    def step(i: int, _state) -> dict[str, float]:
        idx = distributed.shard(schedule[i][1])
        chosen, rejected, other, tokens = _logps(ctx, policy, pairs, idx, cfg.average_logprobs, objective.extra_rows)
        logps = PairLogps(chosen, rejected, mismatched=other)
        if ref_pairs is not None:
            logps.ref_chosen, logps.ref_rejected = ref_pairs[0][idx], ref_pairs[1][idx]
        elif ref is not None:
            with torch.no_grad():
                logps.ref_chosen, logps.ref_rejected, logps.ref_mismatched, _ = _logps(
                    ctx, ref, pairs, idx, cfg.average_logprobs, objective.extra_rows
                )
        loss, stats = objective.loss(logps)
        check_finite(loss, f"{objective.name}/loss", i)
        grad_norm = optimizer_step(loss, optimizer, cfg.max_grad_norm, scheduler)
        ctx.cost.tokens_trained += tokens
        return {
            "train/loss": loss.item(),
            "train/grad_norm": grad_norm,
            "train/lr": scheduler.get_last_lr()[0],
            **stats,
        }

    run_loop(
        ctx.checkpointer(objective.name),
        ctx.tracker.log,
        objective.name,
        len(schedule),
        step,
        Trainables({"policy": policy}, optimizer, scheduler),
        log_every=10,
    )
    return policy
