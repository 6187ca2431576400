"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, eq. 3 and Sec. 4.1.2).

For each prompt, sample a group of G responses and score them; the advantage of every token
of response i is its group-normalised reward (outcome supervision):
    A_i = (r_i - mean(r)) / std(r)
The clipped objective with the KL to the reference in the loss (not in the reward), per token:
    l_i,t = min(ratio * A_i, clip(ratio, 1 - eps, 1 + eps) * A_i) - beta * D_KL,t
    D_KL,t = pi_ref/pi - log(pi_ref/pi) - 1            (the k3 estimator)
    loss  = -1/G sum_i 1/|y_i| sum_t l_i,t             (``loss_aggregation=sequence``, the paper)
Switches for the variants that changed these conventions: ``loss_aggregation=token`` (DAPO:
one mean over all tokens of the batch), ``constant`` (Dr. GRPO: sum / (G * max length));
``scale_rewards=false`` (Dr. GRPO: no division by the group std).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.core.kl import KL_ESTIMATORS, kl_penalty
from rlhf_bench.core.loop import Trainables, run_loop
from rlhf_bench.core.ops import masked_mean
from rlhf_bench.core.train import check_finite, make_optimizer, optimizer_step
from rlhf_bench.errors import require, require_choice
from rlhf_bench.rewards.reward import load_run_reward
from rlhf_bench.run import Run
from rlhf_bench.training.groups import sample_groups

AGGREGATIONS = ("sequence", "token", "constant")


@dataclass
class GRPOConfig:
    _target_: str = "rlhf_bench.methods.grpo.train"
    name: str = "grpo"
    steps: int = 60
    prompts_per_step: int = 16
    group_size: int = 4  # G; prompts_per_step * G = PPO's 64 responses per step
    iterations: int = 1  # mu: policy updates per batch of samples
    lr: float = 1e-4
    beta: float = 0.04  # KL coefficient, in the loss
    kl_estimator: str = "k3"
    clip_range: float = 0.2
    scale_rewards: bool = True  # divide by the group std (False: Dr. GRPO)
    loss_aggregation: str = "sequence"  # sequence | token | constant
    temperature: float = 1.0
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        require(self.steps >= 0, "method.steps", "must be >= 0", self.steps)
        require(self.group_size >= 2, "method.group_size", "must be >= 2", self.group_size)
        require(self.iterations >= 1, "method.iterations", "must be >= 1", self.iterations)
        require(self.lr > 0, "method.lr", "must be > 0", self.lr)
        require(self.beta >= 0, "method.beta", "must be >= 0", self.beta)
        require_choice(self.loss_aggregation, AGGREGATIONS, "method.loss_aggregation")
        require_choice(self.kl_estimator, KL_ESTIMATORS, "method.kl_estimator")

    def conventions(self) -> dict:
        return {
            "sequence_logprobs": "per-token",
            "kl_estimator": self.kl_estimator,
            "kl_in": "loss",
            "loss_aggregation": self.loss_aggregation,
            "advantage_std": "group" if self.scale_rewards else "none",
            "logprob_temperature": self.temperature,
        }


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """[B*G] rewards, G consecutive per prompt -> [B*G] (r - group mean) / (group std + eps).

    The std is the sample std (Bessel-corrected), as torch.std and TRL compute it.
    """
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(-1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(-1, keepdim=True) + eps)
    return centred.reshape(-1)


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """[N, R] per-token losses -> scalar, by the paper's per-sequence mean or a variant."""
    if how == "sequence":
        return masked_mean(per_token, mask, dim=-1).mean()
    if how == "token":
        return masked_mean(per_token, mask)
    if how == "constant":
        return (per_token * mask).sum() / (mask.shape[0] * mask.shape[1])
    raise ValueError(f"unknown loss aggregation {how!r}; choose from {AGGREGATIONS}")


def grpo_loss(
    logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_range, beta, kl_estimator="k3", aggregation="sequence"
):
    """[N, R] per-token log-probs (new with grad, old, ref), [N] advantages -> (loss, stats)."""
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.unsqueeze(-1)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * adv)
    kl = kl_penalty(logprobs, ref_logprobs, kl_estimator)
    per_token = -(surrogate - beta * kl)
    loss = aggregate_loss(per_token, mask, aggregation)
    with torch.no_grad():
        stats = {
            "objective/kl_token": float(masked_mean(kl, mask)),
            "policy/clipfrac": float(masked_mean(((ratio - 1).abs() > clip_range).float(), mask)),
        }
    return loss, stats


def train(ctx: Run, cfg: GRPOConfig) -> torch.nn.Module:
    policy = ctx.load_policy().train()
    ref, reward = ctx.load_reference(policy), load_run_reward(ctx)
    optimizer = make_optimizer(policy.parameters(), cfg.lr, max_grad_norm=cfg.max_grad_norm)
    prompt_gen, sample_gen = ctx.generators()

    def step(i: int, _state) -> dict[str, float]:
        prompts = ctx.sample_prompts(cfg.prompts_per_step, prompt_gen)
        texts, batch = sample_groups(ctx, policy, prompts, cfg.group_size, cfg.temperature, sample_gen)
        mask = batch.response_mask.float()
        with torch.no_grad(), ctx.autocast():
            scores = ctx.score(reward, *batch.inputs())
            ref_logp, _ = ctx.logprobs(ref, *batch.inputs(), temperature=cfg.temperature)
            # With one update per batch (mu = 1) the sampling policy is the policy being updated:
            # its log-probs are the first update's, detached, and cost no forward pass of their own.
            old_logp = (
                ctx.logprobs(policy, *batch.inputs(), temperature=cfg.temperature)[0] if cfg.iterations > 1 else None
            )
        advantages = group_advantages(scores, cfg.group_size, cfg.scale_rewards)
        for _ in range(cfg.iterations):
            with ctx.autocast():
                logp, entropy = ctx.logprobs(policy, *batch.inputs(), temperature=cfg.temperature, with_entropy=True)
            if old_logp is None:
                old_logp = logp.detach()
            loss, stats = grpo_loss(
                logp,
                old_logp,
                ref_logp,
                advantages,
                mask,
                cfg.clip_range,
                cfg.beta,
                cfg.kl_estimator,
                cfg.loss_aggregation,
            )
            check_finite(loss, "grpo/loss", i)
            grad_norm = optimizer_step(loss, optimizer, cfg.max_grad_norm)
            ctx.cost.tokens_trained += batch.tokens()
        gold = ctx.gold(texts, batch.response_ids, batch.response_mask)
        seq_kl = (old_logp - ref_logp) * mask
        return {
            "train/loss": loss.item(),
            "train/grad_norm": grad_norm,
            **stats,
            "objective/score": float(scores.mean()),
            "objective/gold_reward": float(gold.mean()),
            "objective/kl": float(seq_kl.sum(-1).mean()),
            "objective/response_length": float(mask.sum(-1).mean()),
            "policy/entropy": float(masked_mean(entropy, mask)),
        }

    trainables = Trainables({"policy": policy}, optimizer, generators={"prompt": prompt_gen, "sample": sample_gen})
    run_loop(ctx.checkpointer("grpo"), ctx.tracker.log, "grpo", cfg.steps, step, trainables, desc="GRPO")
    return policy
