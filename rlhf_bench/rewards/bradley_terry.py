"""Bradley-Terry reward model (Ouyang et al. 2022, InstructGPT, eq. 1; Stiennon et al. 2020).

A scalar head on the SFT backbone, trained on preference pairs with
    loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected)).
Deviations from InstructGPT:
  1. One pair per prompt rather than all K-choose-2 comparisons of K responses.
  2. After training, scores are normalised to mean 0 and std 1 on SFT samples (Ziegler
     et al. 2019, Sec. 2.2), switchable with ``normalize``.

``fit_reward_model`` is shared by the variants (margin, ensemble): they differ in the loss
and in how many models they fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rlhf_bench.core import distributed, models
from rlhf_bench.core.loop import STEP_KEY, Trainables, run_loop
from rlhf_bench.core.rollout import sequence_scores
from rlhf_bench.core.train import (
    batches,
    check_finite,
    epoch_batches,
    make_optimizer,
    optimizer_step,
    warmup_linear_schedule,
)
from rlhf_bench.errors import require
from rlhf_bench.rewards.preferences import EncodedPairs, load_pairs, pair_batch
from rlhf_bench.rewards.reward import ModelReward, Normalization, write_spec
from rlhf_bench.run import Run


@dataclass
class BackboneConfig:
    """A reward model with a backbone of its own size (Gao et al. 2022 vary the proxy's size apart
    from the policy's): the policy's tiny architecture and tokenizer at ``n_layer`` x ``d_model``,
    SFT-trained on the same demonstrations with the same ``sft`` settings (a cached stage of its
    own), then given the scalar head. ``n_layer: 0`` (the default) puts the head on the SFT
    policy's own backbone, as InstructGPT does."""

    n_layer: int = 0  # 0: no backbone of its own
    d_model: int = 64
    n_head: int = 2

    @property
    def enabled(self) -> bool:
        return self.n_layer > 0

    def __post_init__(self) -> None:
        require(self.n_layer >= 0, "reward_model.backbone.n_layer", "must be >= 0 (0: the SFT policy's)", self.n_layer)
        require(self.n_head >= 1, "reward_model.backbone.n_head", "must be >= 1", self.n_head)
        require(
            self.d_model >= 1 and self.d_model % self.n_head == 0,
            "reward_model.backbone.d_model",
            f"must be a positive multiple of reward_model.backbone.n_head={self.n_head}",
            self.d_model,
        )


@dataclass
class BradleyTerryConfig:
    _target_: str = "rlhf_bench.rewards.bradley_terry.train"
    name: str = "bradley_terry"
    epochs: int = 2
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    normalize: bool = True
    n_normalization_samples: int = 512
    min_gold_accuracy: float = 0.55  # stop the run if the RM agrees with the gold ordering less often
    seed: int = 0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # n_layer 0: the SFT policy's backbone

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "reward_model.epochs", "must be >= 1", self.epochs)
        require(self.batch_size >= 1, "reward_model.batch_size", "must be >= 1", self.batch_size)
        require(self.lr > 0, "reward_model.lr", "must be > 0", self.lr)
        require(
            0 <= self.min_gold_accuracy <= 1,
            "reward_model.min_gold_accuracy",
            "must be in [0, 1]",
            self.min_gold_accuracy,
        )


class RewardModelTooWeak(RuntimeError):
    """The reward model's held-out agreement with the gold ordering is near chance."""


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """[N], [N] -> scalar mean of -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def pair_rewards(
    ctx: Run, model: torch.nn.Module, pairs: EncodedPairs, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the chosen and rejected responses of the pairs ``index``, in one forward pass: ([n], [n])."""
    with ctx.autocast():
        scores = sequence_scores(model, *pair_batch(ctx, pairs, index).inputs()).float()
    return scores[: len(index)], scores[len(index) :]


@torch.no_grad()
def pair_accuracy(ctx: Run, reward, pairs: EncodedPairs, batch_size: int) -> dict[str, float]:
    """Held-out accuracy of any reward against the annotator's labels and against the gold ordering."""
    margins = []
    for idx in batches(len(pairs), batch_size, shuffle=False):
        scores = reward(ctx, *pair_batch(ctx, pairs, idx).inputs()).float().cpu()
        margins.append(scores[: len(idx)] - scores[len(idx) :])
    margin = torch.cat(margins)
    correct = (margin > 0).float() + 0.5 * (margin == 0).float()
    gold_correct = torch.where(
        margin > 0, pairs.gold_order, torch.where(margin < 0, 1 - pairs.gold_order, torch.full_like(margin, 0.5))
    )
    return {"accuracy": float(correct.mean()), "gold_accuracy": float(gold_correct.mean())}


@torch.no_grad()
def normalization(ctx: Run, reward, n: int, seed: int) -> Normalization:
    """Mean and std of a reward's raw score on responses the SFT policy samples for ``n`` training
    prompts; ``reward`` is any ``(ctx, prompt_ids, prompt_mask, response_ids, response_mask) -> [B]``."""
    sft = ctx.load_policy(lora=False).eval()
    generator = torch.Generator().manual_seed(seed)
    pool = ctx.task.train_prompts
    prompts = [pool[int(i)] for i in torch.randint(len(pool), (n,), generator=generator)]
    sample_gen = torch.Generator(device=ctx.device).manual_seed(seed)
    scores = []
    for start in range(0, n, 256):
        ids, mask = ctx.pad_prompts(ctx.encode_prompts(prompts[start : start + 256]))
        response = ctx.sample(sft, ids, mask, temperature=1.0, generator=sample_gen)
        scores.append(reward(ctx, ids, mask, *response).float().cpu())
    scores = torch.cat(scores)
    return Normalization(float(scores.mean()), float(scores.std().clamp(min=1e-6)))


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def fit_reward_model(
    ctx: Run,
    cfg: BradleyTerryConfig,
    train_pairs: EncodedPairs,
    eval_pairs: EncodedPairs,
    out_dir: Path,
    loss_fn: LossFn,
    seed: int,
    margins: torch.Tensor | None = None,
    label: str = "reward_model",
    checkpoints: Path | None = None,
) -> dict[str, float]:
    """Fit one scalar-head model from the SFT backbone with ``loss_fn(chosen, rejected, margins)``;
    save it to ``out_dir``; return its held-out accuracies and normalisation. Checkpoints go to
    ``checkpoints`` (resumed from if present)."""
    torch.manual_seed(seed)  # the new head's initialisation
    model = ctx.load_scalar_model((ctx.stages.reward_backbone or ctx.stages.sft).path, per_token=False)
    schedule = epoch_batches(len(train_pairs), cfg.batch_size, cfg.epochs, torch.Generator().manual_seed(seed))
    optimizer = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay, max_grad_norm=cfg.max_grad_norm)
    scheduler = warmup_linear_schedule(optimizer, cfg.warmup_steps, len(schedule))
    margins = margins if margins is not None else torch.zeros(len(train_pairs))

    def step(i: int, state: dict) -> dict[str, float] | None:
        epoch, idx = schedule[i][0], distributed.shard(schedule[i][1])
        chosen, rejected = pair_rewards(ctx, model, train_pairs, idx)
        loss = loss_fn(chosen, rejected, margins[idx].to(chosen.device))
        check_finite(loss, "reward_model/loss", i)
        optimizer_step(loss, optimizer, cfg.max_grad_norm, scheduler)
        state["tokens"] += sum(
            2 * len(train_pairs.prompts[j]) + len(train_pairs.chosen[j]) + len(train_pairs.rejected[j])
            for j in idx.tolist()
        )
        if i + 1 == len(schedule) or schedule[i + 1][0] != epoch:  # the end of an epoch
            model.eval()
            state["held_out"] = pair_accuracy(ctx, ModelReward(model, Normalization()), eval_pairs, 4 * cfg.batch_size)
            model.train()
            ctx.tracker.log(
                "reward_model_eval",
                {
                    STEP_KEY: i + 1,
                    "train/epoch": epoch + 1,
                    "eval/accuracy": state["held_out"]["accuracy"],
                    "eval/gold_accuracy": state["held_out"]["gold_accuracy"],
                },
            )
        if i % 10:
            return None
        return {"train/loss": loss.item(), "train/accuracy": float((chosen > rejected).float().mean())}

    model.train()
    # the last step is always checkpointed: an ensemble resumed after this member does not refit it
    state = run_loop(
        ctx.checkpointer(label, checkpoints),
        ctx.tracker.log,
        "reward_model",
        len(schedule),
        step,
        Trainables({"model": model}, optimizer, scheduler),
        state={"tokens": 0, "held_out": None},
        desc=label,
    )
    tokens, held_out = state["tokens"], state["held_out"]
    model.eval()
    ctx.cost.tokens_trained += tokens
    raw = ModelReward(model, Normalization())
    norm = normalization(ctx, raw, cfg.n_normalization_samples, seed) if cfg.normalize else Normalization()
    models.save_pretrained(model, ctx.tokenizer, out_dir)  # a sharded model: gathered, written by the main process
    return {**held_out, "steps": len(schedule), "tokens_trained": tokens, "norm_mean": norm.mean, "norm_std": norm.std}


def check_strength(cfg: BradleyTerryConfig, info: dict[str, float]) -> None:
    """Stop the run if the reward model's agreement with the gold ordering is near chance."""
    if info["gold_accuracy"] < cfg.min_gold_accuracy:
        raise RewardModelTooWeak(
            f"reward model agrees with the gold ordering on only {info['gold_accuracy']:.3f} of held-out pairs "
            f"(reward_model.min_gold_accuracy={cfg.min_gold_accuracy}); train longer (reward_model.epochs, "
            f"preferences.n_train) or reduce label noise (preferences.temperature, preferences.flip_prob)"
        )


def model_spec(info: dict[str, float], path: str = ".") -> dict:
    return {"path": path, "norm_mean": info["norm_mean"], "norm_std": info["norm_std"]}


def train(
    ctx: Run, cfg: BradleyTerryConfig, pairs_dir: Path, out_dir: Path, checkpoints: Path | None = None
) -> dict[str, float]:
    """Train on ``pairs_dir/train.jsonl``, evaluate on ``eval.jsonl``, save to ``out_dir``."""
    train_pairs, eval_pairs = load_pairs(ctx, pairs_dir)
    info = fit_reward_model(
        ctx,
        cfg,
        train_pairs,
        eval_pairs,
        out_dir,
        lambda c, r, _: bradley_terry_loss(c, r),
        cfg.seed,
        checkpoints=checkpoints,
    )
    write_spec(out_dir, {"kind": "model", "members": [model_spec(info)]})
    check_strength(cfg, info)
    return info
