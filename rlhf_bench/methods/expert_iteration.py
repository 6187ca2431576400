"""Expert iteration: rejection-sampling fine-tuning (AlpacaFarm, Dubois et al. 2023, Sec. 4;
Anthony et al. 2017; the "rejection sampling" stage of Llama 2).

Repeat for ``rounds``: sample k responses per prompt from the current policy, keep the one
the reward model scores highest (best-of-k), and fine-tune the policy on those (prompt,
best response) pairs with the next-token loss on response tokens only. There is no KL term:
the policy stays close to the SFT policy only through the few fine-tuning steps per round.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.core import distributed
from rlhf_bench.core.loop import Trainables, run_loop
from rlhf_bench.core.ops import masked_mean
from rlhf_bench.core.rollout import Samples, pad
from rlhf_bench.core.train import check_finite, make_optimizer, optimizer_step
from rlhf_bench.errors import require
from rlhf_bench.rewards.reward import load_run_reward
from rlhf_bench.run import Run
from rlhf_bench.training.groups import sample_groups, select_best


@dataclass
class ExpertIterationConfig:
    _target_: str = "rlhf_bench.methods.expert_iteration.train"
    name: str = "expert_iteration"
    rounds: int = 4
    prompts_per_round: int = 240  # rounds * prompts_per_round * k = PPO's 3,840 responses
    k: int = 4
    steps_per_round: int = 30
    batch_size: int = 32
    lr: float = 1e-4
    temperature: float = 1.0
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        require(self.rounds >= 1, "method.rounds", "must be >= 1", self.rounds)
        require(self.k >= 1, "method.k", "must be >= 1", self.k)
        require(self.lr > 0, "method.lr", "must be > 0", self.lr)

    def conventions(self) -> dict:
        return {"sequence_logprobs": "per-token mean (NLL)", "kl_in": "none", "sampling_temperature": self.temperature}


def best_responses(
    ctx: Run, policy, reward, prompts: list[str], k: int, temperature: float, generator, chunk: int = 64
):
    """For each prompt, the best of k samples by the reward: (prompt ids, response ids, scores)."""
    kept_prompts, kept_responses, kept_scores = [], [], []
    for start in range(0, len(prompts), chunk):
        part = prompts[start : start + chunk]
        _, batch = sample_groups(ctx, policy, part, k, temperature, generator)
        scores = ctx.score(reward, *batch.inputs())
        ids, mask = select_best(scores, batch.response_ids, batch.response_mask, k)
        kept_scores.append(scores.view(-1, k).max(-1).values.cpu())
        kept_prompts += ctx.encode_prompts(part)
        kept_responses += [row[: int(m.sum())].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
    return kept_prompts, kept_responses, torch.cat(kept_scores)


def train(ctx: Run, cfg: ExpertIterationConfig) -> torch.nn.Module:
    policy = ctx.load_policy().train()
    reward = load_run_reward(ctx)
    optimizer = make_optimizer(policy.parameters(), cfg.lr, max_grad_norm=cfg.max_grad_norm)
    prompt_gen, sample_gen = ctx.generators()
    pad_id = ctx.tokenizer.pad_token_id

    def round_(i: int, state: dict) -> dict[str, float]:
        """One round: best-of-k samples of fresh prompts, then ``steps_per_round`` fine-tuning steps on them."""
        prompts = ctx.sample_prompts(cfg.prompts_per_round, prompt_gen)
        kept_p, kept_r, scores = best_responses(ctx, policy, reward, prompts, cfg.k, cfg.temperature, sample_gen)
        for _ in range(cfg.steps_per_round):
            idx = distributed.shard(torch.randint(len(kept_p), (cfg.batch_size,), generator=prompt_gen)).tolist()
            batch = Samples(
                *pad([kept_p[j] for j in idx], pad_id, "left", ctx.device),
                *pad([kept_r[j] for j in idx], pad_id, "right", ctx.device),
            )
            with ctx.autocast():
                logp, _ = ctx.logprobs(policy, *batch.inputs())
            loss = -masked_mean(logp, batch.response_mask.float())  # next-token loss on the response only
            check_finite(loss, "expert_iteration/loss", state["optimizer_steps"])
            grad_norm = optimizer_step(loss, optimizer, cfg.max_grad_norm)
            ctx.cost.tokens_trained += batch.tokens()
            state["optimizer_steps"] += 1
        return {
            "train/optimizer_steps": state["optimizer_steps"],
            "train/loss": loss.item(),
            "train/grad_norm": grad_norm,
            "objective/best_score": float(scores.mean()),
        }

    trainables = Trainables({"policy": policy}, optimizer, generators={"prompt": prompt_gen, "sample": sample_gen})
    run_loop(
        ctx.checkpointer("expert_iteration"),
        ctx.tracker.log,
        "expert_iteration",
        cfg.rounds,
        round_,
        trainables,
        state={"optimizer_steps": 0},
        desc="expert iteration",
        unit="round",
    )
    return policy
