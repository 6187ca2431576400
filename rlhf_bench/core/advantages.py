"""Advantage estimators of the policy-gradient family, chosen by name (``method.advantage``).

Each estimator reads an ``AdvantageInputs`` and returns ``(advantages, returns)``: advantages
[B] (one per response: outcome supervision) or [B, R] (per token), returns [B, R] for a value
model or None. Rows come group by group: the G samples of prompt j are rows j*G .. j*G + G - 1.

The reward an estimator sees already holds the KL penalty when the KL is "in the reward":
    sequence level  R_i = s_i - beta * sum_t kl_i,t                     (``sequence_rewards``)
    token level     r_i,t = -beta * kl_i,t,  r_i,T += s_i                 (``token_rewards``)
(s the reward's score, kl the per-token estimator, T the last response token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf_bench.core.ops import gae, last_token_index, masked_sum, masked_whiten

STD_LEVELS = ("group", "batch", "none")


@dataclass(frozen=True)
class AdvantageInputs:
    """What any estimator may read (B responses of R tokens, G per prompt)."""

    scores: torch.Tensor  # [B] the reward's score (shaped: penalties applied)
    kl: torch.Tensor  # [B, R] per-token KL estimate to the reference, detached, 0 off the mask
    kl_coef: float  # beta of the KL in the reward (0 when the KL is elsewhere)
    mask: torch.Tensor  # [B, R] response tokens
    group_size: int  # G
    values: torch.Tensor | None = None  # [B, R] V_old(s_t) (gae)
    baseline_scores: torch.Tensor | None = None  # [B / G] score of each prompt's greedy response (remax)
    std: str = "group"  # grpo: divide by the group's std, the batch's std, or nothing (Dr. GRPO)
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False  # gae: whiten the token rewards first (Huang et al. 2024)


def sequence_rewards(x: AdvantageInputs) -> torch.Tensor:
    """[B] R_i = s_i - beta * sum_t kl_i,t (the score alone when beta = 0)."""
    if x.kl_coef == 0:
        return x.scores
    return x.scores - x.kl_coef * masked_sum(x.kl, x.mask, dim=-1)


def token_rewards(x: AdvantageInputs) -> torch.Tensor:
    """[B, R] r_t = -beta * kl_t, with the score added at each response's last token."""
    rewards = -x.kl_coef * x.kl
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last_token_index(x.mask)] += x.scores
    return rewards


def group_normalized(rewards: torch.Tensor, group_size: int, std: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """GRPO (Shao et al. 2024, Sec. 4.1.2): [B] rewards -> [B] (r_i - mean_group(r)) / (std + eps).

    ``std``: "group" divides by the group's sample std (Bessel-corrected, as torch.std and TRL),
    "batch" by the whole batch's (Hu et al. 2025's batch-level std), "none" not at all (Dr. GRPO,
    Liu et al. 2025, Sec. 3.2: the std division weights easy and hard prompts unequally).
    """
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(-1, keepdim=True)
    if std == "group":
        centred = centred / (grouped.std(-1, keepdim=True) + eps)
    elif std == "batch":
        centred = centred / (rewards.std() + eps)
    elif std != "none":
        raise ValueError(f"unknown std level {std!r}; choose from {STD_LEVELS}")
    return centred.reshape(-1)


def leave_one_out(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, Sec. 3.2): [B] rewards -> [B] R_i - 1/(G-1) sum_{j != i} R_j.

    Equal to G/(G-1) times the group-centred reward (Dr. GRPO's advantage)."""
    grouped = rewards.view(-1, group_size)
    baseline = (grouped.sum(-1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """[B, R] token rewards -> [B, R] G_t = sum_{s >= t} gamma^(s-t) r_s (zero off the mask)."""
    rewards = rewards * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        out[:, t] = running
    return out * mask


def _grpo(x: AdvantageInputs):
    return group_normalized(sequence_rewards(x), x.group_size, x.std), None


def _rloo(x: AdvantageInputs):
    return leave_one_out(sequence_rewards(x), x.group_size), None


def _gae(x: AdvantageInputs):
    """PPO (Schulman et al. 2016; Ziegler et al. 2019): GAE(gamma, lambda) against the value model."""
    rewards = token_rewards(x)
    if x.whiten_rewards:
        rewards = masked_whiten(rewards, x.mask, shift_mean=False)
    return gae(rewards, x.values * x.mask, x.mask, x.gamma, x.lam)


def _reinforce_pp(x: AdvantageInputs):
    """REINFORCE++ (Hu et al. 2025, eq. 4-6): token returns of r_t = -beta kl_t (+ score at T),
    no baseline; the batch whitening that follows (``whiten_advantages``) is the normalisation."""
    return returns_to_go(token_rewards(x), x.mask, x.gamma), None


def _reinforce_pp_baseline(x: AdvantageInputs):
    """REINFORCE++-baseline (Hu et al. 2025, Sec. 3.3): the group mean subtracted from each reward,
    then (``whiten_advantages``) normalised by the batch: the group baseline, the batch's scale."""
    return group_normalized(sequence_rewards(x), x.group_size, "none"), None


def _remax(x: AdvantageInputs):
    """ReMax (Li et al. 2024, Alg. 1): R_i - r(x, greedy response), the greedy reward as baseline."""
    if x.baseline_scores is None:
        raise ValueError("remax needs the greedy responses' scores (baseline_scores)")
    baseline = x.baseline_scores.repeat_interleave(x.group_size)
    return sequence_rewards(x) - baseline, None


@dataclass(frozen=True)
class Estimator:
    fn: Callable[[AdvantageInputs], tuple[torch.Tensor, torch.Tensor | None]]
    value_model: bool = False  # needs V(s_t): a value model is trained beside the policy
    greedy_baseline: bool = False  # needs each prompt's greedy response scored
    per_group: bool = True  # reads the G samples of a prompt together (G >= 2)


ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {
    "gae": Estimator(_gae, value_model=True, per_group=False),
    "grpo": Estimator(_grpo),
    "rloo": Estimator(_rloo),
    "reinforce_pp": Estimator(_reinforce_pp, per_group=False),
    "reinforce_pp_baseline": Estimator(_reinforce_pp_baseline),
    "remax": Estimator(_remax, greedy_baseline=True, per_group=False),
}
