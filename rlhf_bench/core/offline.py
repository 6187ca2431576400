"""The loop shared by offline preference methods (DPO, IPO, SimPO, KTO).

Each method supplies its loss as a function of the sequence log-probabilities of the chosen
and rejected responses under the policy (and the frozen SFT reference); the loop does the
batching, the forward passes, the optimiser and the logging. It trains on the same pairs
the reward model was trained on (``ctx.preferences_path``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rlhf_bench.config import require
from rlhf_bench.core import distributed
from rlhf_bench.core.ops import masked_sum
from rlhf_bench.core.train import (
    check_finite,
    epoch_batches,
    make_optimizer,
    optimizer_step,
    warmup_linear_schedule,
)


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


def sequence_logps(ctx, model, prompt_ids, prompt_mask, response_ids, response_mask, average: bool) -> torch.Tensor:
    """[B] log pi(y|x) summed over response tokens, or averaged over them when ``average``
    (under the distribution the run samples from: ``RunContext.logprobs``)."""
    logp, _ = ctx.logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    mask = response_mask.float()
    total = masked_sum(logp, mask, dim=-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


LossFn = Callable[[PairLogps], tuple[torch.Tensor, dict[str, float]]]


def _logps(ctx, model, pairs, idx, average, mismatched):
    from rlhf_bench.rewards.preferences import pair_batch

    prompt_ids, prompt_mask, response_ids, response_mask = pair_batch(ctx, pairs, idx)
    n = len(idx)
    if mismatched:  # x_i with the chosen response of pair i+1
        shift = torch.roll(torch.arange(n, device=prompt_ids.device), -1)
        prompt_ids = torch.cat([prompt_ids, prompt_ids[:n]])
        prompt_mask = torch.cat([prompt_mask, prompt_mask[:n]])
        response_ids = torch.cat([response_ids, response_ids[shift]])
        response_mask = torch.cat([response_mask, response_mask[shift]])
    with ctx.autocast():
        out = sequence_logps(ctx, model, prompt_ids, prompt_mask, response_ids, response_mask, average)
    tokens = int(prompt_mask.sum() + response_mask.sum())
    return out[:n], out[n : 2 * n], (out[2 * n :] if mismatched else None), tokens


@torch.no_grad()
def reference_logps(ctx, ref, pairs, batch_size: int, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen reference's sequence log-probs of every pair's chosen and rejected response,
    each [n]: computed once before training instead of once per epoch (the reference never
    changes and has no dropout, so the values are the same)."""
    chosen, rejected = [], []
    for start in tqdm(range(0, len(pairs), batch_size), desc="reference log-probs", unit="batch", leave=False):
        idx = torch.arange(start, min(start + batch_size, len(pairs)))
        c, r, _, _ = _logps(ctx, ref, pairs, idx, average, mismatched=False)
        chosen.append(c.float())
        rejected.append(r.float())
    return torch.cat(chosen), torch.cat(rejected)


def train_on_pairs(
    ctx, cfg: OfflineConfig, loss_fn: LossFn, name: str, reference: bool = True, mismatched: bool = False
):
    """Fine-tune the SFT policy on the preference pairs with ``loss_fn``; return the policy.

    The reference's log-probs of the pairs are computed once up front, except with
    ``mismatched`` (KTO), whose mismatched pairs depend on the batch: there the reference runs
    on every batch.
    """
    from rlhf_bench.rewards.preferences import load_pairs

    pairs, _ = load_pairs(ctx, ctx.preferences_path)
    policy = ctx.load_policy().train()
    ref = ctx.load_reference() if reference else None
    ref_pairs = None
    if ref is not None and not mismatched:
        ref_pairs = reference_logps(ctx, ref, pairs, cfg.batch_size, cfg.average_logprobs)
    schedule = epoch_batches(len(pairs), cfg.batch_size, cfg.epochs, torch.Generator().manual_seed(ctx.cfg.seed))
    optimizer = make_optimizer(policy.parameters(), cfg.lr, max_grad_norm=cfg.max_grad_norm)
    scheduler = warmup_linear_schedule(optimizer, cfg.warmup_steps, len(schedule))
    ckpt = ctx.checkpointer(name)
    start = ckpt.restore({"policy": policy}, optimizer, scheduler).get("step", 0)
    for step in tqdm(range(start, len(schedule)), desc=name, unit="step", dynamic_ncols=True, initial=start):
        idx = distributed.shard(schedule[step][1])
        chosen, rejected, other, tokens = _logps(ctx, policy, pairs, idx, cfg.average_logprobs, mismatched)
        logps = PairLogps(chosen, rejected, mismatched=other)
        if ref_pairs is not None:
            logps.ref_chosen, logps.ref_rejected = ref_pairs[0][idx], ref_pairs[1][idx]
        elif ref is not None:
            with torch.no_grad():
                logps.ref_chosen, logps.ref_rejected, logps.ref_mismatched, _ = _logps(
                    ctx, ref, pairs, idx, cfg.average_logprobs, mismatched
                )
        loss, stats = loss_fn(logps)
        check_finite(loss, f"{name}/loss", step)
        grad_norm = optimizer_step(loss, optimizer, cfg.max_grad_norm, scheduler)
        ctx.cost.tokens_trained += tokens
        if step % 10 == 0 or step == len(schedule) - 1:
            ctx.tracker.log(
                name,
                {
                    "train/step": step,
                    "train/loss": loss.item(),
                    "train/grad_norm": grad_norm,
                    "train/lr": scheduler.get_last_lr()[0],
                    **stats,
                },
            )
        ckpt.step_done(step + 1, force=step + 1 == len(schedule))
    ckpt.close()
    return policy
