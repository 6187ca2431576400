"""The online policy-gradient family on one core: PPO, GRPO, Dr. GRPO, DAPO, GSPO, CISPO, SAPO,
GMPO, RLOO, REINFORCE++ and ReMax are settings of its parts (``conf/method/<name>.yaml``).

Each step, for ``prompts_per_step`` prompts x ``group_size`` samples:
  1. sample responses from pi_old (the policy as it is); score them with the reward; shape the
     score (a penalty for no EOS, DAPO's soft overlong punishment); with ``dynamic_sampling``,
     drop the groups whose scores all agree and sample again until the batch is full (DAPO);
  2. log-probs of the reference (and of pi_old when the batch is reused), the value model's V(s_t);
  3. advantages by ``advantage`` (core/advantages.py: gae, grpo, rloo, reinforce_pp,
     reinforce_pp_baseline, remax), the KL to the reference in the reward when ``kl_in=reward``;
  4. ``epochs`` passes of ``num_minibatches`` updates: the importance ``ratio`` (token, sequence,
     geometric), the ``surrogate`` (clip with eps_low / eps_high, unclipped, cispo, sapo,
     reinforce), the KL in the loss when ``kl_in=loss``, reduced by ``aggregation``
     (core/losses.py); PPO's value loss beside it.
The presets cite their papers and every deviation; ``method=grpo method.ratio=sequence`` swaps one
part, and the record's ``conventions`` names them all.

With one update per batch (``epochs=1``, ``num_minibatches=1``) the sampling policy is the one
being updated: its log-probs are the update's own, detached, and cost no forward pass (r = 1).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

import torch

from rlhf_bench.core import distributed
from rlhf_bench.core.advantages import ADVANTAGE_ESTIMATORS, STD_LEVELS, AdvantageInputs
from rlhf_bench.core.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_penalty
from rlhf_bench.core.loop import STEP_KEY, Trainables, run_loop
from rlhf_bench.core.losses import (
    AGGREGATIONS,
    RATIOS,
    SURROGATES,
    ClipRange,
    clipped_value_loss,
    overlong_penalty,
    ratio_stats,
)
from rlhf_bench.core.ops import masked_mean, masked_sum, masked_whiten
from rlhf_bench.core.rollout import Samples, concat_samples, response_values, select_rows
from rlhf_bench.core.train import batches, check_finite, make_optimizer, optimizer_step
from rlhf_bench.errors import ConfigError, require, require_choice
from rlhf_bench.evaluation.periodic import PeriodicEval
from rlhf_bench.rewards.reward import load_run_reward
from rlhf_bench.run import Run
from rlhf_bench.training.groups import greedy_scores, sample_groups
from rlhf_bench.training.value import load_value_model

KL_PLACES = ("reward", "loss", "none")


@dataclass
class PGConfig:
    """Every part of the family; the defaults are GRPO's (Shao et al. 2024)."""

    _target_: str = "rlhf_bench.methods.pg.train"
    name: str = "grpo"
    steps: int = 60
    prompts_per_step: int = 16
    group_size: int = 4  # G samples per prompt; 16 x 4 = 64 responses per step
    epochs: int = 1  # passes over each batch (PPO's ppo_epochs, GRPO's mu)
    num_minibatches: int = 1  # updates per pass
    lr: float = 1e-4
    temperature: float = 1.0
    max_grad_norm: float = 1.0
    # advantage
    advantage: str = "grpo"  # gae | grpo | rloo | reinforce_pp | reinforce_pp_baseline | remax
    advantage_std: str = "group"  # grpo: group | batch | none (Dr. GRPO)
    whiten_advantages: bool = False  # over the batch's tokens (PPO, REINFORCE++)
    whiten_rewards: bool = False  # gae
    gamma: float = 1.0
    lam: float = 0.95
    # policy loss
    ratio: str = "token"  # token | sequence (GSPO) | geometric (GMPO)
    surrogate: str = "clip"  # clip | unclipped | cispo | sapo | reinforce
    aggregation: str = "seq-mean-token-mean"  # | token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    eps_low: float = 0.2
    eps_high: float = 0.2  # > eps_low: DAPO's clip-higher
    tau_pos: float = 1.0  # SAPO's gate temperatures
    tau_neg: float = 1.05
    # KL to the reference
    kl_in: str = "loss"  # reward | loss | none
    kl_estimator: str = "k3"
    kl_coef: float = 0.04  # beta (the initial value when adaptive)
    adaptive_kl: bool = False
    target_kl: float = 6.0  # nats per sequence (Ziegler et al. 2019)
    kl_horizon: int = 10000
    # value model (advantage=gae)
    value_init: str = "reward_model"  # reward_model | sft
    vf_coef: float = 0.1
    clip_range_value: float = 0.2
    # rollout filters and shaping
    dynamic_sampling: bool = False  # DAPO: keep only groups whose scores differ
    max_sampling_rounds: int = 4  # dynamic sampling: draws per step at most
    overlong_buffer: int = 0  # DAPO's L_cache in tokens (0: off)
    mask_truncated: bool = False  # responses without EOS take no part in the loss
    non_eos_penalty: float | None = None  # the score of a response without EOS (Huang et al. 2024: -1)
    eval_every: int = 0  # evaluate on held-out prompts every k steps (0: never)

    def __post_init__(self) -> None:
        require(self.steps >= 0, "method.steps", "must be >= 0", self.steps)
        require(self.prompts_per_step >= 1, "method.prompts_per_step", "must be >= 1", self.prompts_per_step)
        require(self.group_size >= 1, "method.group_size", "must be >= 1", self.group_size)
        require(self.epochs >= 1, "method.epochs", "must be >= 1", self.epochs)
        require(self.num_minibatches >= 1, "method.num_minibatches", "must be >= 1", self.num_minibatches)
        require(self.lr > 0, "method.lr", "must be > 0", self.lr)
        require(self.temperature > 0, "method.temperature", "must be > 0", self.temperature)
        require(self.kl_coef >= 0, "method.kl_coef", "must be >= 0", self.kl_coef)
        require(self.target_kl > 0, "method.target_kl", "must be > 0", self.target_kl)
        require(self.kl_horizon >= 1, "method.kl_horizon", "must be >= 1", self.kl_horizon)
        require(0 <= self.lam <= 1 and 0 <= self.gamma <= 1, "method.gamma/lam", "must be in [0, 1]")
        require(self.eps_low >= 0 and self.eps_high >= 0, "method.eps_low/eps_high", "must be >= 0")
        require(self.tau_pos > 0 and self.tau_neg > 0, "method.tau_pos/tau_neg", "must be > 0")
        require(self.overlong_buffer >= 0, "method.overlong_buffer", "must be >= 0", self.overlong_buffer)
        require(self.max_sampling_rounds >= 1, "method.max_sampling_rounds", "must be >= 1", self.max_sampling_rounds)
        require(self.eval_every >= 0, "method.eval_every", "must be >= 0", self.eval_every)
        require_choice(self.advantage, ADVANTAGE_ESTIMATORS, "method.advantage")
        require_choice(self.advantage_std, STD_LEVELS, "method.advantage_std")
        require_choice(self.ratio, RATIOS, "method.ratio")
        require_choice(self.surrogate, SURROGATES, "method.surrogate")
        require_choice(self.aggregation, AGGREGATIONS, "method.aggregation")
        require_choice(self.kl_in, KL_PLACES, "method.kl_in")
        require_choice(self.kl_estimator, KL_ESTIMATORS, "method.kl_estimator")
        require_choice(self.value_init, ("reward_model", "sft"), "method.value_init")
        estimator = ADVANTAGE_ESTIMATORS[self.advantage]
        grouped = estimator.per_group or self.dynamic_sampling
        require(
            self.group_size >= 2 or not grouped,
            "method.group_size",
            f"must be >= 2 for advantage={self.advantage}"
            + (" and dynamic_sampling" if self.dynamic_sampling else "")
            + " (the baseline reads the other samples of the prompt)",
            self.group_size,
        )
        rows = self.prompts_per_step * self.group_size
        require(
            rows % self.num_minibatches == 0,
            "method.prompts_per_step",
            f"times method.group_size={self.group_size} must be divisible by method.num_minibatches={self.num_minibatches}",
            self.prompts_per_step,
        )
        require(
            self.surrogate != "reinforce" or not self.reuses_samples,
            "method.surrogate",
            "reinforce has no importance ratio: use it with method.epochs=1 and method.num_minibatches=1",
            self.surrogate,
        )

    @property
    def reuses_samples(self) -> bool:
        """More than one update per batch: pi_old's log-probs must be computed before the first."""
        return self.epochs * self.num_minibatches > 1

    def conventions(self) -> dict:
        return {
            "advantage": self.advantage,
            "advantage_std": self.advantage_std if self.advantage in ("grpo",) else None,
            "advantage_whitening": self.whiten_advantages,
            "reward_whitening": self.whiten_rewards,
            "ratio": self.ratio,
            "surrogate": self.surrogate,
            "clip": [self.eps_low, self.eps_high],
            "aggregation": self.aggregation,
            "kl_in": self.kl_in,
            "kl_estimator": self.kl_estimator,
            "kl_control": f"adaptive (target {self.target_kl})" if self.adaptive_kl else "fixed",
            "updates_per_batch": self.epochs * self.num_minibatches,
            "dynamic_sampling": self.dynamic_sampling,
            "overlong_buffer": self.overlong_buffer,
            "mask_truncated": self.mask_truncated,
            "non_eos_penalty": self.non_eos_penalty,
            "logprob_temperature": self.temperature,
        }


@dataclass(frozen=True)
class Batch:
    """One step's rollout and what was computed on it before the update (B rows)."""

    samples: Samples
    scores: torch.Tensor  # [B] shaped scores
    gold: torch.Tensor  # [B] the task's gold reward
    has_eos: torch.Tensor  # [B] 1.0 where the response ended with EOS
    loss_mask: torch.Tensor  # [B, R] the tokens the loss reads
    ref_logprobs: torch.Tensor  # [B, R]
    old_logprobs: torch.Tensor | None = None  # [B, R] pi_old (the update's own, detached, when used once)
    values: torch.Tensor | None = None  # [B, R] V_old(s_t)
    advantages: torch.Tensor | None = None  # [B, 1] or [B, R]
    returns: torch.Tensor | None = None  # [B, R] value targets

    def __len__(self) -> int:
        return len(self.samples)


def shaped_scores(ctx: Run, cfg: PGConfig, reward, samples: Samples) -> tuple[torch.Tensor, torch.Tensor]:
    """([B] the reward's scores with the configured penalties, [B] has-EOS flags)."""
    scores = ctx.score(reward, *samples.inputs())
    has_eos = (samples.response_ids == ctx.tokenizer.eos_token_id).any(-1)
    if cfg.non_eos_penalty is not None:
        scores = torch.where(has_eos, scores, torch.full_like(scores, cfg.non_eos_penalty))
    if cfg.overlong_buffer:
        lengths = samples.response_mask.sum(-1)
        scores = scores + overlong_penalty(lengths, ctx.max_new_tokens, cfg.overlong_buffer).to(scores.dtype)
    return scores, has_eos


def draw(ctx: Run, cfg: PGConfig, policy, reward, prompt_gen, sample_gen):
    """Sample a step's groups: (prompts [B], Samples, scores [B], has_eos [B], stats). With dynamic
    sampling, groups whose scores all agree are dropped and more are drawn, at most
    ``max_sampling_rounds`` times (DAPO, Yu et al. 2025, Sec. 3.2); a batch still short trains on
    what it kept (and on the last draw if it kept nothing: a step with zero advantages)."""
    kept, drawn, stats = [], 0, {}
    G = cfg.group_size
    for round_ in range(cfg.max_sampling_rounds):
        prompts = ctx.sample_prompts(cfg.prompts_per_step, prompt_gen)
        texts, samples = sample_groups(ctx, policy, prompts, G, cfg.temperature, sample_gen)
        scores, has_eos = shaped_scores(ctx, cfg, reward, samples)
        drawn += len(texts)
        if G >= 2:
            varies = scores.view(-1, G).std(-1) > 0
            if round_ == 0:
                stats["objective/zero_std_groups"] = float((~varies).float().mean())
        if not cfg.dynamic_sampling:
            return texts, samples, scores, has_eos, stats
        rows = varies.repeat_interleave(G).nonzero().squeeze(-1)
        kept.append(([texts[int(i)] for i in rows], select_rows(samples, rows), scores[rows], has_eos[rows]))
        if sum(len(k[0]) for k in kept) >= cfg.prompts_per_step * G:
            break
    texts = [t for k in kept for t in k[0]][: cfg.prompts_per_step * G]
    n = len(texts)
    if n == 0:  # every group of every draw agreed: the last draw, whose advantages are all 0
        stats.update({"cost/samples_per_kept": float(drawn), "objective/kept_groups": 0.0})
        return [p for p in prompts for _ in range(G)], samples, scores, has_eos, stats
    samples = select_rows(concat_samples([k[1] for k in kept], ctx.tokenizer.pad_token_id), torch.arange(n))
    stats["cost/samples_per_kept"] = drawn / max(n, 1)
    stats["objective/kept_groups"] = n / G
    scores, has_eos = torch.cat([k[2] for k in kept])[:n], torch.cat([k[3] for k in kept])[:n]
    return texts, samples, scores, has_eos, stats


def advantages_of(cfg: PGConfig, batch: Batch, old_logprobs, kl_coef: float, baseline=None) -> Batch:
    """The batch with its advantages (and value targets), the KL in the reward if it goes there."""
    mask = batch.samples.response_mask.float()
    kl = kl_penalty(old_logprobs, batch.ref_logprobs, cfg.kl_estimator) * mask
    inputs = AdvantageInputs(
        scores=batch.scores,
        kl=kl,
        kl_coef=kl_coef if cfg.kl_in == "reward" else 0.0,
        mask=mask,
        group_size=cfg.group_size,
        values=batch.values,
        baseline_scores=baseline,
        std=cfg.advantage_std,
        gamma=cfg.gamma,
        lam=cfg.lam,
        whiten_rewards=cfg.whiten_rewards,
    )
    advantages, returns = ADVANTAGE_ESTIMATORS[cfg.advantage].fn(inputs)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages.expand_as(mask), mask)
    return replace(batch, advantages=advantages, returns=returns)


def policy_loss(cfg: PGConfig, logp, mb: Batch, old_logp, kl_coef: float, max_length: int):
    """(scalar loss of the policy, its stats) on a minibatch: ratio -> surrogate (+ KL) -> aggregation."""
    clip = ClipRange(cfg.eps_low, cfg.eps_high, cfg.tau_pos, cfg.tau_neg)
    mask = mb.loss_mask
    # Padding holds the lowest float as its log-prob (a banned token): 0 there, so that no part that
    # multiplies a log-prob (REINFORCE, CISPO) overflows to inf, and inf * 0 = nan, before the mask.
    pad = mb.samples.response_mask == 0
    logp, old_logp = logp.masked_fill(pad, 0.0), old_logp.masked_fill(pad, 0.0)
    ratio = RATIOS[cfg.ratio](logp, old_logp, mb.advantages, mask, clip)
    per_token = SURROGATES[cfg.surrogate](ratio, logp, mb.advantages, clip)
    stats = {}
    if cfg.kl_in == "loss" and kl_coef:
        kl = kl_penalty(logp, mb.ref_logprobs.masked_fill(pad, 0.0), cfg.kl_estimator)
        per_token = per_token + kl_coef * kl
        stats["objective/kl_token"] = float(masked_mean(kl.detach(), mask))
    loss = AGGREGATIONS[cfg.aggregation](per_token, mask, max_length)
    with torch.no_grad():
        log_ratio = logp - old_logp
        unclipped = -mb.advantages * ratio
        clipped = -mb.advantages * torch.clamp(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
        stats["policy/clipfrac"] = float(masked_mean((clipped > unclipped).float(), mask))
        # Schulman's k3 estimator of KL(old || new) over this minibatch.
        stats["policy/approx_kl"] = float(masked_mean(torch.exp(log_ratio) - 1.0 - log_ratio, mask))
        stats.update(ratio_stats(ratio, mb.advantages, mask, clip))
    return loss, stats


def update(ctx: Run, cfg: PGConfig, models, optimizer, batch: Batch, first, kl_coef, generator, step: int):
    """``epochs`` passes of ``num_minibatches`` updates; the mean of each stat over the updates.
    ``first``: the update's own forward pass (logp, entropy) when the batch is not reused."""
    policy, value = models
    stats: dict[str, list[float]] = defaultdict(list)
    size = len(batch) // cfg.num_minibatches
    shuffle = cfg.num_minibatches > 1  # one minibatch: no permutation drawn (a full batch in any order)
    for _ in range(cfg.epochs):
        for index in batches(len(batch), size, generator, shuffle=shuffle):
            mb = select_rows(batch, index) if shuffle else batch
            if first is not None:
                (logp, entropy), first = first, None
            else:
                with ctx.autocast():
                    logp, entropy = ctx.logprobs(
                        policy, *mb.samples.inputs(), temperature=cfg.temperature, with_entropy=True
                    )
            loss, pg_stats = policy_loss(cfg, logp, mb, mb.old_logprobs, kl_coef, ctx.max_new_tokens)
            pg_loss = loss
            if value is not None:
                with ctx.autocast():
                    values = response_values(value, *mb.samples.inputs())
                mask = mb.samples.response_mask
                vf_loss, vf_stats = clipped_value_loss(values, mb.values, mb.returns, mask, cfg.clip_range_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                pg_stats.update(vf_stats, **{"value/loss": vf_loss.item()})
            check_finite(loss, f"{cfg.name}/loss", step)
            grad_norm = optimizer_step(loss, optimizer, cfg.max_grad_norm)
            pg_stats.update(
                {
                    "train/loss": loss.item(),
                    "train/policy_loss": pg_loss.item(),
                    "train/grad_norm": grad_norm,
                    "policy/entropy": float(masked_mean(entropy, mb.samples.response_mask)),
                }
            )
            for key, val in pg_stats.items():
                stats[key].append(val)
            ctx.cost.tokens_trained += mb.samples.tokens()
    return {k: sum(v) / len(v) for k, v in stats.items()}


def rollout_metrics(ctx: Run, batch: Batch, penalty: torch.Tensor, kl_coef: float) -> dict[str, float]:
    """What the rollout shows: score, gold, KL (k1, summed per response), the KL penalty ([B] the
    estimator's sum), lengths (of right and of wrong answers on a task whose gold reward is correctness)."""
    mask = batch.samples.response_mask.float()
    kl = masked_sum(batch.old_logprobs - batch.ref_logprobs, mask, dim=-1)
    lengths = mask.sum(-1)
    metrics = {
        "objective/score": float(batch.scores.mean()),
        "objective/gold_reward": float(batch.gold.mean()),
        "objective/kl": float(kl.mean()),
        "objective/kl_coef": kl_coef,
        "objective/non_score_reward": -kl_coef * float(penalty.mean()),
        "objective/rlhf_reward": float((batch.scores - kl_coef * penalty).mean()),
        "objective/response_length": float(lengths.mean()),
        "objective/eos_fraction": float(batch.has_eos.float().mean()),
    }
    if getattr(ctx.task, "verifiable", False):
        right = batch.gold.to(lengths.device) > 0.5
        for name, rows in (("right", right), ("wrong", ~right)):
            if bool(rows.any()):
                metrics[f"objective/length_{name}"] = float(lengths[rows].mean())
    return metrics


def score_passes(ctx: Run, cfg: PGConfig, models, texts, samples, scores, has_eos):
    """The passes before the update: (Batch with pi_old's log-probs, the update's own forward pass
    (logp, entropy) when the batch is used once, else None)."""
    policy, ref, value = models
    mask = samples.response_mask.float()
    loss_mask = mask * has_eos.unsqueeze(-1).to(mask.dtype) if cfg.mask_truncated else mask
    with torch.no_grad(), ctx.autocast():
        ref_logp, _ = ctx.logprobs(ref, *samples.inputs(), temperature=cfg.temperature)
        old_logp = (
            ctx.logprobs(policy, *samples.inputs(), temperature=cfg.temperature)[0] if cfg.reuses_samples else None
        )
        values = response_values(value, *samples.inputs()) if value is not None else None
    first = None
    if old_logp is None:  # one update: its forward pass gives pi_old's log-probs (r = 1)
        with ctx.autocast():
            first = ctx.logprobs(policy, *samples.inputs(), temperature=cfg.temperature, with_entropy=True)
        old_logp = first[0].detach()
    gold = ctx.gold(texts, samples.response_ids, samples.response_mask).to(scores.device)
    return Batch(samples, scores, gold, has_eos, loss_mask, ref_logp, old_logp, values), first


def train(ctx: Run, cfg: PGConfig) -> torch.nn.Module:
    """Run the configured member of the family from the SFT policy; return the trained policy."""
    estimator = ADVANTAGE_ESTIMATORS[cfg.advantage]
    if cfg.dynamic_sampling and distributed.world_size() > 1:
        raise ConfigError("method.dynamic_sampling", "runs in one process (each would keep a different batch)")
    policy = ctx.load_policy().train()
    ref, reward = ctx.load_reference(policy), load_run_reward(ctx)
    value = load_value_model(ctx, cfg.value_init, reward).train() if estimator.value_model else None
    params = [*policy.parameters(), *(value.parameters() if value is not None else ())]
    eps = {"eps": 1e-5} if value is not None else {}  # PPO's Adam epsilon (Huang et al. 2023)
    optimizer = make_optimizer(params, cfg.lr, max_grad_norm=cfg.max_grad_norm, **eps)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl else None
    kl_ctl = kl_ctl or FixedKLController(cfg.kl_coef)
    prompt_gen, sample_gen = ctx.generators()
    probe = PeriodicEval(ctx, ref, reward) if cfg.eval_every else None

    def step(i: int, state: dict) -> dict[str, float]:
        kl_ctl.value = state["kl_coef"]  # as checkpointed, on resume
        if probe is not None and i == 0:  # the curve starts at the SFT policy
            ctx.tracker.log(f"{cfg.name}_eval", {STEP_KEY: 0, **probe(policy)})
        texts, samples, scores, has_eos, draw_stats = draw(ctx, cfg, policy, reward, prompt_gen, sample_gen)
        check_finite(scores.mean(), "objective/score", i)
        batch, first = score_passes(ctx, cfg, (policy, ref, value), texts, samples, scores, has_eos)
        baseline = greedy_scores(ctx, policy, reward, texts, cfg.group_size) if estimator.greedy_baseline else None
        batch = advantages_of(cfg, batch, batch.old_logprobs, kl_ctl.value, baseline)
        kl = kl_penalty(batch.old_logprobs, batch.ref_logprobs, cfg.kl_estimator)
        penalty = masked_sum(kl, samples.response_mask.float(), dim=-1)
        metrics = rollout_metrics(ctx, batch, penalty, kl_ctl.value)
        stats = update(ctx, cfg, (policy, value), optimizer, batch, first, kl_ctl.value, prompt_gen, i)
        # every process keeps the same beta; n: the samples of the whole step
        kl_ctl.update(distributed.mean(float(penalty.mean())), cfg.prompts_per_step * cfg.group_size)
        state["kl_coef"] = kl_ctl.value
        if probe is not None and (i + 1) % cfg.eval_every == 0:
            ctx.tracker.log(f"{cfg.name}_eval", {STEP_KEY: i + 1, **probe(policy)})
        return {**metrics, **draw_stats, **stats}

    modules = {"policy": policy, **({"value": value} if value is not None else {})}
    trainables = Trainables(modules, optimizer, generators={"prompt": prompt_gen, "sample": sample_gen})
    run_loop(
        ctx.checkpointer(cfg.name),
        ctx.tracker.log,
        cfg.name,
        cfg.steps,
        step,
        trainables,
        state={"kl_coef": kl_ctl.value},
        desc=cfg.name.upper(),
    )
    return policy
