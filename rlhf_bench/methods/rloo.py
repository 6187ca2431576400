"""REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics", Sec. 3.2; Kool et al. 2019).

For each prompt x, sample k responses y_1..y_k from pi and give each a sequence reward with
the KL penalty inside it:
    R_i = r(x, y_i) - beta * sum_t (log pi(y_i,t|.) - log pi_ref(y_i,t|.))
The baseline of sample i is the mean reward of the other k - 1 samples:
    A_i = R_i - 1/(k-1) * sum_{j != i} R_j
and the policy takes one REINFORCE step on the batch:
    loss = -mean_i( A_i * sum_t log pi(y_i,t|.) )
The whole response is one action (no value model, no per-token credit).

Deviations from the paper: a learning rate sized for the tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.core.kl import KL_ESTIMATORS, kl_penalty
from rlhf_bench.core.loop import Trainables, run_loop
from rlhf_bench.core.ops import masked_mean, masked_sum
from rlhf_bench.core.train import check_finite, make_optimizer, optimizer_step
from rlhf_bench.errors import require, require_choice
from rlhf_bench.rewards.reward import load_run_reward
from rlhf_bench.run import Run
from rlhf_bench.training.groups import sample_groups


@dataclass
class RLOOConfig:
    _target_: str = "rlhf_bench.methods.rloo.train"
    name: str = "rloo"
    steps: int = 60
    prompts_per_step: int = 16
    k: int = 4  # samples per prompt; prompts_per_step * k = PPO's 64 responses per step
    lr: float = 1e-4
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    temperature: float = 1.0
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        require(self.steps >= 0, "method.steps", "must be >= 0", self.steps)
        require(self.k >= 2, "method.k", "must be >= 2 (the baseline leaves one sample out)", self.k)
        require(self.lr > 0, "method.lr", "must be > 0", self.lr)
        require(self.kl_coef >= 0, "method.kl_coef", "must be >= 0", self.kl_coef)
        require_choice(self.kl_estimator, KL_ESTIMATORS, "method.kl_estimator")

    def conventions(self) -> dict:
        return {
            "sequence_logprobs": "sum",
            "kl_estimator": self.kl_estimator,
            "kl_in": "reward (per sequence)",
            "logprob_temperature": self.temperature,
        }


def leave_one_out_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """[B*k] rewards, k consecutive samples per prompt -> [B*k] R_i - mean of the other k-1."""
    grouped = rewards.view(-1, k)
    baseline = (grouped.sum(-1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).reshape(-1)


def rloo_loss(sequence_logprobs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """[N] sum_t log pi(y_t|.) with grad, [N] advantages -> scalar REINFORCE loss."""
    return -(advantages.detach() * sequence_logprobs).mean()


def train(ctx: Run, cfg: RLOOConfig) -> torch.nn.Module:
    policy = ctx.load_policy().train()
    ref, reward = ctx.load_reference(policy), load_run_reward(ctx)
    optimizer = make_optimizer(policy.parameters(), cfg.lr, max_grad_norm=cfg.max_grad_norm)
    prompt_gen, sample_gen = ctx.generators()

    def step(i: int, _state) -> dict[str, float]:
        prompts = ctx.sample_prompts(cfg.prompts_per_step, prompt_gen)
        texts, batch = sample_groups(ctx, policy, prompts, cfg.k, cfg.temperature, sample_gen)
        mask = batch.response_mask.float()
        with torch.no_grad():
            scores = ctx.score(reward, *batch.inputs())
            with ctx.autocast():
                ref_logp, _ = ctx.logprobs(ref, *batch.inputs(), temperature=cfg.temperature)
        with ctx.autocast():
            logp, entropy = ctx.logprobs(policy, *batch.inputs(), temperature=cfg.temperature, with_entropy=True)
        kl = masked_sum(kl_penalty(logp.detach(), ref_logp, cfg.kl_estimator), mask, dim=-1)
        rewards = scores - cfg.kl_coef * kl
        advantages = leave_one_out_advantages(rewards, cfg.k)
        loss = rloo_loss(masked_sum(logp, mask, dim=-1), advantages)
        check_finite(loss, "rloo/loss", i)
        grad_norm = optimizer_step(loss, optimizer, cfg.max_grad_norm)
        ctx.cost.tokens_trained += batch.tokens()
        gold = ctx.gold(texts, batch.response_ids, batch.response_mask)
        return {
            "train/loss": loss.item(),
            "train/grad_norm": grad_norm,
            "objective/score": float(scores.mean()),
            "objective/gold_reward": float(gold.mean()),
            "objective/kl": float(kl.mean()),
            "objective/rlhf_reward": float(rewards.mean()),
            "objective/response_length": float(mask.sum(-1).mean()),
            "policy/entropy": float(masked_mean(entropy, mask)),
        }

    trainables = Trainables({"policy": policy}, optimizer, generators={"prompt": prompt_gen, "sample": sample_gen})
    run_loop(ctx.checkpointer("rloo"), ctx.tracker.log, "rloo", cfg.steps, step, trainables, desc="RLOO")
    return policy
