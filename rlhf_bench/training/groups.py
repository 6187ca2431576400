"""Groups of responses per prompt: what GRPO, RLOO, expert iteration and best-of-n share.

Rows are laid out group by group: the k samples of prompt i are rows i*k .. i*k + k - 1.
"""

from __future__ import annotations

import torch

from rlhf_bench.core.rollout import Samples
from rlhf_bench.run import Run


def sample_groups(
    ctx: Run, policy, prompts: list[str], k: int, temperature: float, generator
) -> tuple[list[str], Samples]:
    """k responses for each prompt, consecutive: (the B*k prompts' texts, their B*k samples)."""
    repeated = [p for p in prompts for _ in range(k)]
    prompt_ids, prompt_mask = ctx.pad_prompts(ctx.encode_prompts(repeated))
    response_ids, response_mask = ctx.sample(policy, prompt_ids, prompt_mask, temperature, generator)
    return repeated, Samples(prompt_ids, prompt_mask, response_ids, response_mask)


def select_best(scores: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor, n: int):
    """[B*n] scores and [B*n, R] responses (n consecutive rows per prompt) -> the best row per prompt."""
    best = scores.view(-1, n).argmax(-1) + torch.arange(0, scores.numel(), n, device=scores.device)
    ids, mask = response_ids[best], response_mask[best]
    length = int(mask.sum(-1).max())  # drop columns that only the losers used
    return ids[:, :length], mask[:, :length]


@torch.no_grad()
def greedy_scores(ctx: Run, policy, reward, prompts: list[str], group_size: int) -> torch.Tensor:
    """[B / G] the reward of each prompt's greedy response (ReMax's baseline)."""
    prompt_ids, prompt_mask = ctx.pad_prompts(ctx.encode_prompts(prompts[::group_size]))
    response_ids, response_mask = ctx.sample(policy, prompt_ids, prompt_mask, temperature=0.0)
    return ctx.score(reward, prompt_ids, prompt_mask, response_ids, response_mask)
