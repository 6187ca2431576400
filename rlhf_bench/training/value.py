"""The value model of the methods that learn one (PPO's GAE): its initialisation."""

from __future__ import annotations

import torch

from rlhf_bench.core.rollout import score_head
from rlhf_bench.rewards.reward import value_init_member
from rlhf_bench.run import Run


def load_value_model(ctx: Run, init: str, reward) -> torch.nn.Module:
    """A per-token value model: from the reward model (its head rescaled to the normalised
    score, so V starts at the expected reward), or from the SFT policy with a fresh head. The
    backbone loads from the reward model's folder in fp32; the head is the frozen reward model's
    (bf16-rounded under bf16 precision, ~0.4%: an initialisation)."""
    member = value_init_member(reward) if init == "reward_model" else None
    if member is None:  # value_init=sft, or a reward with no model (gold)
        return ctx.load_scalar_model(ctx.sft_path, per_token=True)
    value = ctx.load_scalar_model(member.folder, per_token=True)
    head, rm_head = score_head(value), score_head(member.model)
    with torch.no_grad():
        head.weight.copy_(rm_head.weight.float() / member.norm.std)
        if head.bias is not None:
            zero = torch.zeros_like(head.bias)  # sharded like the head under fsdp
            rm_bias = rm_head.bias if rm_head.bias is not None else zero
            head.bias.copy_((rm_bias.float() - member.norm.mean) / member.norm.std)
    return value.to(ctx.device)
