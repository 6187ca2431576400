"""PPO for RLHF (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022).

Maximise E[r(x, y)] - beta * KL(pi || pi_ref) with the clipped PPO objective (Schulman et
al. 2017). Each step: sample responses from pi; score them with the reward model; build
per-token rewards
    r_t = -beta * kl_t             (kl_t = log pi(y_t|.) - log pi_ref(y_t|.), estimator k1)
    r_T += score(x, y)             (at the last response token)
estimate advantages with GAE(gamma, lambda) against a separate value model; then run
``ppo_epochs`` epochs of ``num_minibatches`` minibatches of the clipped policy loss plus
``vf_coef`` times the clipped value loss. beta is fixed or adapted towards ``target_kl``
(Ziegler et al. 2019, Sec. 2.2).

Implementation details from "The N Implementation Details of RLHF with PPO" (Huang et al.
2023) and "The N+ Implementation Details of RLHF with PPO: A Case Study on TL;DR" (Huang et
al. 2024), each a switch: reward normalisation on SFT samples (in the reward-model stage),
advantage whitening, optional reward whitening, value model initialised from the reward
model, logprobs at the sampling temperature, dropout off, a score for responses without
EOS, global gradient clipping.

Deviations from the papers:
  1. Defaults are sized for the tiny CPU model: a larger learning rate (1e-4 rather than
     1e-5 / 1.41e-5) and fewer steps.
  2. Policy and value models are separate networks updated by one optimizer on the sum of
     their losses (as TRL does), rather than two optimizers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

import torch

from rlhf_bench.core import distributed
from rlhf_bench.core.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_penalty
from rlhf_bench.core.loop import STEP_KEY, Trainables, run_loop
from rlhf_bench.core.losses import clipped_policy_loss, clipped_value_loss
from rlhf_bench.core.ops import gae, last_token_index, masked_mean, masked_whiten
from rlhf_bench.core.rollout import Samples, response_values, score_head, select_rows
from rlhf_bench.core.train import batches, check_finite, make_optimizer, optimizer_step
from rlhf_bench.errors import require, require_choice
from rlhf_bench.evaluation.periodic import PeriodicEval
from rlhf_bench.rewards.reward import load_run_reward, value_init_member
from rlhf_bench.run import Run


@dataclass
class PPOConfig:
    _target_: str = "rlhf_bench.methods.ppo.train"
    name: str = "ppo"
    steps: int = 60  # rollout batches
    batch_size: int = 64  # prompts per rollout batch
    num_minibatches: int = 4
    ppo_epochs: int = 4
    lr: float = 1e-4
    temperature: float = 1.0
    kl_coef: float = 0.05  # beta (initial value when adaptive)
    adaptive_kl: bool = False
    target_kl: float = 6.0  # nats per sequence (Ziegler et al. 2019)
    kl_horizon: int = 10000  # Ziegler et al.; scale it to the run: 60 steps x 64 samples need ~200 to move beta
    kl_estimator: str = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    whiten_advantages: bool = True
    whiten_rewards: bool = False
    non_eos_penalty: float | None = None  # score given to responses without EOS (Huang et al. 2024 use -1)
    max_grad_norm: float = 1.0
    value_init: str = "reward_model"  # reward_model | sft
    eval_every: int = 0  # evaluate on held-out prompts every k steps (0: never): curves along training

    def __post_init__(self) -> None:
        require(self.steps >= 0, "method.steps", "must be >= 0", self.steps)
        require(self.lr > 0, "method.lr", "must be > 0", self.lr)
        require(self.kl_coef >= 0, "method.kl_coef", "must be >= 0", self.kl_coef)
        require(self.temperature > 0, "method.temperature", "must be > 0", self.temperature)
        require(self.target_kl > 0, "method.target_kl", "must be > 0", self.target_kl)
        require(self.kl_horizon >= 1, "method.kl_horizon", "must be >= 1", self.kl_horizon)
        require(
            self.num_minibatches >= 1,
            "method.num_minibatches",
            "must be >= 1",
            self.num_minibatches,
        )
        require(
            self.batch_size % self.num_minibatches == 0,
            "method.batch_size",
            f"must be divisible by method.num_minibatches={self.num_minibatches}",
            self.batch_size,
        )
        require_choice(self.kl_estimator, KL_ESTIMATORS, "method.kl_estimator")
        require_choice(self.value_init, ("reward_model", "sft"), "method.value_init")
        require(self.eval_every >= 0, "method.eval_every", "must be >= 0", self.eval_every)
        require(0 <= self.lam <= 1 and 0 <= self.gamma <= 1, "method.gamma/lam", "must be in [0, 1]")

    def conventions(self) -> dict:
        return {
            "sequence_logprobs": "per-token",
            "kl_estimator": self.kl_estimator,
            "kl_in": "reward (per token)",
            "kl_control": f"adaptive (target {self.target_kl})" if self.adaptive_kl else "fixed",
            "logprob_temperature": self.temperature,
            "non_eos_penalty": self.non_eos_penalty,
            "advantage_whitening": self.whiten_advantages,
            "reward_whitening": self.whiten_rewards,
        }


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


@dataclass(frozen=True)
class PPORollout:
    """One rollout batch and what PPO computed on it before the update (B rows)."""

    samples: Samples
    logprobs: torch.Tensor  # [B, R] log pi_old(y_t|.) at sampling
    values: torch.Tensor  # [B, R] V_old(s_t)
    advantages: torch.Tensor  # [B, R] GAE (whitened if whiten_advantages)
    returns: torch.Tensor  # [B, R] advantages + values, the value targets
    scores: torch.Tensor  # [B] the reward's score (non_eos_penalty applied)
    kl: torch.Tensor  # [B] sum_t of the KL estimator
    gold: torch.Tensor  # [B] the task's gold reward
    has_eos: torch.Tensor  # [B] 1.0 where the response ended with EOS

    def __len__(self) -> int:
        return len(self.samples)


@torch.no_grad()
def rollout(
    ctx: Run,
    cfg: PPOConfig,
    policy,
    ref,
    reward,
    value,
    prompts: list[str],
    kl_coef: float,
    generator,
) -> PPORollout:
    """Sample, score and compute advantages for one batch of prompts."""
    prompt_ids, prompt_mask = ctx.pad_prompts(ctx.encode_prompts(prompts))
    response_ids, mask = ctx.sample(policy, prompt_ids, prompt_mask, cfg.temperature, generator)
    samples = Samples(prompt_ids, prompt_mask, response_ids, mask)
    with ctx.autocast():
        logprobs, _ = ctx.logprobs(policy, *samples.inputs(), temperature=cfg.temperature)
        ref_logprobs, _ = ctx.logprobs(ref, *samples.inputs(), temperature=cfg.temperature)
        values = response_values(value, *samples.inputs())
    scores = ctx.score(reward, *samples.inputs())
    has_eos = (response_ids == ctx.tokenizer.eos_token_id).any(-1)
    if cfg.non_eos_penalty is not None:
        scores = torch.where(has_eos, scores, torch.full_like(scores, cfg.non_eos_penalty))
    mask = mask.float()
    kl = kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator) * mask
    rewards = -kl_coef * kl
    rewards[torch.arange(len(prompts), device=rewards.device), last_token_index(mask)] += scores
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae(rewards, values * mask, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    gold = ctx.gold(prompts, response_ids, mask)
    return PPORollout(
        samples=replace(samples, response_mask=mask),
        logprobs=logprobs,
        values=values,
        advantages=advantages,
        returns=returns,
        scores=scores,
        kl=kl.sum(-1),
        gold=gold.to(scores.device),
        has_eos=has_eos.float(),
    )


def update(
    ctx: Run, cfg: PPOConfig, policy, value, optimizer, data: PPORollout, generator, step: int
) -> dict[str, float]:
    """``ppo_epochs`` passes of minibatch updates on one rollout batch; mean stats."""
    stats: dict[str, list[float]] = defaultdict(list)
    minibatch = len(data) // cfg.num_minibatches
    for _ in range(cfg.ppo_epochs):
        for index in batches(len(data), minibatch, generator):
            mb = select_rows(data, index)
            mask = mb.samples.response_mask
            with ctx.autocast():
                logprobs, entropy = ctx.logprobs(
                    policy, *mb.samples.inputs(), temperature=cfg.temperature, with_entropy=True
                )
                values = response_values(value, *mb.samples.inputs())
            pg_loss, pg_stats = clipped_policy_loss(logprobs, mb.logprobs, mb.advantages, mask, cfg.clip_range)
            vf_loss, vf_stats = clipped_value_loss(values, mb.values, mb.returns, mask, cfg.clip_range_value)
            loss = pg_loss + cfg.vf_coef * vf_loss
            check_finite(loss, "ppo/loss", step)
            grad_norm = optimizer_step(loss, optimizer, cfg.max_grad_norm)
            for key, val in {
                **pg_stats,
                **vf_stats,
                "train/policy_loss": pg_loss.item(),
                "value/loss": vf_loss.item(),
                "policy/entropy": float(masked_mean(entropy, mask)),
                "train/grad_norm": grad_norm,
            }.items():
                stats[key].append(val)
            ctx.cost.tokens_trained += mb.samples.tokens()
    return {k: sum(v) / len(v) for k, v in stats.items()}


def train(ctx: Run, cfg: PPOConfig) -> torch.nn.Module:
    """Run PPO from the SFT policy against the reward model; return the trained policy."""
    policy = ctx.load_policy().train()
    ref = ctx.load_reference(policy)
    reward = load_run_reward(ctx)
    value = load_value_model(ctx, cfg.value_init, reward).train()
    optimizer = make_optimizer(
        [*policy.parameters(), *value.parameters()], cfg.lr, eps=1e-5, max_grad_norm=cfg.max_grad_norm
    )
    kl_ctl = (
        AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        if cfg.adaptive_kl
        else FixedKLController(cfg.kl_coef)
    )
    prompt_gen, sample_gen = ctx.generators()
    # every process evaluates (the same samples): sharded models need all of them in each forward
    probe = PeriodicEval(ctx, ref, reward) if cfg.eval_every else None

    def step(i: int, state: dict) -> dict[str, float]:
        kl_ctl.value = state["kl_coef"]  # as checkpointed, on resume
        if probe is not None and i == 0:  # the curve starts at the SFT policy
            ctx.tracker.log("ppo_eval", {STEP_KEY: 0, **probe(policy)})
        prompts = ctx.sample_prompts(cfg.batch_size, prompt_gen)
        data = rollout(ctx, cfg, policy, ref, reward, value, prompts, kl_ctl.value, sample_gen)
        check_finite(data.scores.mean(), "objective/score", i)
        stats = update(ctx, cfg, policy, value, optimizer, data, prompt_gen, i)
        mean_kl = float(data.kl.mean())
        metrics = {
            "objective/score": float(data.scores.mean()),
            "objective/gold_reward": float(data.gold.mean()),
            "objective/kl": mean_kl,
            "objective/kl_coef": kl_ctl.value,
            "objective/non_score_reward": -kl_ctl.value * mean_kl,
            "objective/response_length": float(data.samples.response_mask.sum(-1).mean()),
            "objective/eos_fraction": float(data.has_eos.mean()),
            **stats,
        }
        kl_ctl.update(distributed.mean(mean_kl), cfg.batch_size)  # every process keeps the same coefficient
        state["kl_coef"] = kl_ctl.value
        if probe is not None and (i + 1) % cfg.eval_every == 0:
            ctx.tracker.log("ppo_eval", {STEP_KEY: i + 1, **probe(policy)})
        return metrics

    trainables = Trainables(
        {"policy": policy, "value": value}, optimizer, generators={"prompt": prompt_gen, "sample": sample_gen}
    )
    run_loop(
        ctx.checkpointer("ppo"),
        ctx.tracker.log,
        "ppo",
        cfg.steps,
        step,
        trainables,
        state={"kl_coef": kl_ctl.value},
        desc="PPO",
    )
    return policy
