"""Bradley-Terry reward model (Ouyang et al. 2022, InstructGPT, eq. 1; Stiennon et al. 2020).

A scalar head on the SFT backbone, trained on preference pairs with
    loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected)).
Deviations from InstructGPT:
  1. One pair per prompt rather than all K-choose-2 comparisons of K responses.
  2. After training, scores are normalised to mean 0 and std 1 on SFT samples (Ziegler
     et al. 2019, Sec. 2.2), switchable with ``normalize``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlhf_bench.config import require
from rlhf_bench.core import models
from rlhf_bench.core.context import RunContext
from rlhf_bench.core.rollout import pad, sequence_scores
from rlhf_bench.core.train import (
    batches,
    check_finite,
    make_optimizer,
    optimizer_step,
    warmup_linear_schedule,
)
from rlhf_bench.rewards.preferences import read_jsonl


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
    min_gold_accuracy: float = (
        0.55  # stop the run if the RM agrees with the gold ordering less often
    )
    seed: int = 0

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


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> torch.Tensor:
    """[N], [N] -> scalar mean of -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


@dataclass
class EncodedPairs:
    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    gold_order: torch.Tensor  # [N] 1 where gold(chosen) > gold(rejected), 0 where <, 0.5 on ties

    def __len__(self) -> int:
        return len(self.prompts)


def encode_pairs(ctx: RunContext, rows: list[dict]) -> EncodedPairs:
    eos = ctx.tokenizer.eos_token_id

    def response(text: str, ended: bool) -> list[int]:
        return ctx.encode([text])[0] + ([eos] if ended else [])

    gold = [
        (r["chosen_gold"] > r["rejected_gold"]) + 0.5 * (r["chosen_gold"] == r["rejected_gold"])
        for r in rows
    ]
    return EncodedPairs(
        prompts=ctx.encode([r["prompt"] for r in rows]),
        chosen=[response(r["chosen"], r.get("chosen_eos", True)) for r in rows],
        rejected=[response(r["rejected"], r.get("rejected_eos", True)) for r in rows],
        gold_order=torch.tensor(gold, dtype=torch.float32),
    )


def pair_rewards(
    ctx: RunContext, model: torch.nn.Module, pairs: EncodedPairs, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the chosen and rejected responses of the pairs ``index``, in one forward pass: ([n], [n])."""
    rows = index.tolist()
    prompts = [pairs.prompts[i] for i in rows]
    responses = [pairs.chosen[i] for i in rows] + [pairs.rejected[i] for i in rows]
    prompt_ids, prompt_mask = pad(prompts + prompts, ctx.tokenizer.pad_token_id, "left", ctx.device)
    response_ids, response_mask = pad(responses, ctx.tokenizer.pad_token_id, "right", ctx.device)
    with ctx.autocast():
        scores = sequence_scores(
            model, prompt_ids, prompt_mask, response_ids, response_mask
        ).float()
    return scores[: len(rows)], scores[len(rows) :]


@torch.no_grad()
def evaluate(
    ctx: RunContext, model: torch.nn.Module, pairs: EncodedPairs, batch_size: int
) -> dict[str, float]:
    """Held-out accuracy against the annotator's labels and against the gold ordering."""
    model.eval()
    margins = torch.cat(
        [
            torch.sub(*pair_rewards(ctx, model, pairs, idx)).cpu()
            for idx in batches(len(pairs), batch_size, shuffle=False)
        ]
    )
    correct = (margins > 0).float() + 0.5 * (margins == 0).float()
    gold_correct = torch.where(margins > 0, pairs.gold_order, 1 - pairs.gold_order)
    return {"accuracy": float(correct.mean()), "gold_accuracy": float(gold_correct.mean())}


@torch.no_grad()
def normalization(
    ctx: RunContext, model: torch.nn.Module, n: int, seed: int
) -> tuple[float, float]:
    """Mean and std of the raw score on responses the SFT policy samples for training prompts."""
    sft = ctx.load_policy().eval()
    generator = torch.Generator().manual_seed(seed)
    prompts = [
        ctx.task.train_prompts[int(i)]
        for i in torch.randint(len(ctx.task.train_prompts), (n,), generator=generator)
    ]
    sample_gen = torch.Generator(device=ctx.device).manual_seed(seed)
    scores = []
    for idx in batches(n, 256, shuffle=False):
        ids, mask = ctx.pad_prompts(ctx.encode([prompts[i] for i in idx.tolist()]))
        response = ctx.sample(sft, ids, mask, temperature=1.0, generator=sample_gen)
        with ctx.autocast():
            scores.append(sequence_scores(model, ids, mask, *response).float().cpu())
    scores = torch.cat(scores)
    return float(scores.mean()), float(scores.std().clamp(min=1e-6))


def train(
    ctx: RunContext, cfg: BradleyTerryConfig, pairs_dir: Path, out_dir: Path
) -> dict[str, float]:
    """Train on ``pairs_dir/train.jsonl``, evaluate on ``eval.jsonl``, save to ``out_dir``."""
    train_pairs = encode_pairs(ctx, read_jsonl(pairs_dir / "train.jsonl"))
    eval_pairs = encode_pairs(ctx, read_jsonl(pairs_dir / "eval.jsonl"))
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    model = models.load_scalar_model(ctx.sft_path, ctx.tokenizer, per_token=False).to(ctx.device)
    steps_per_epoch = -(-len(train_pairs) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    optimizer = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
    scheduler = warmup_linear_schedule(optimizer, cfg.warmup_steps, total)
    generator = torch.Generator().manual_seed(cfg.seed)
    progress = tqdm(total=total, desc="reward model", unit="step", dynamic_ncols=True)
    step, tokens = 0, 0
    for epoch in range(cfg.epochs):
        model.train()
        for idx in batches(len(train_pairs), cfg.batch_size, generator):
            chosen, rejected = pair_rewards(ctx, model, train_pairs, idx)
            loss = bradley_terry_loss(chosen, rejected)
            check_finite(loss, "reward_model/loss", step)
            optimizer_step(loss, optimizer, cfg.max_grad_norm, scheduler)
            tokens += sum(
                len(train_pairs.prompts[i]) * 2
                + len(train_pairs.chosen[i])
                + len(train_pairs.rejected[i])
                for i in idx.tolist()
            )
            if step % 10 == 0:
                accuracy = float((chosen > rejected).float().mean())
                ctx.tracker.log(
                    "reward_model",
                    {
                        "train/rm_step": step,
                        "train/rm_loss": loss.item(),
                        "train/rm_accuracy": accuracy,
                    },
                )
            step += 1
            progress.update()
        held_out = evaluate(ctx, model, eval_pairs, 4 * cfg.batch_size)
        ctx.tracker.log(
            "reward_model",
            {
                "train/rm_step": step,
                "eval/rm_accuracy": held_out["accuracy"],
                "eval/rm_gold_accuracy": held_out["gold_accuracy"],
                "train/rm_epoch": epoch + 1,
            },
        )
    progress.close()
    ctx.cost.tokens_trained += tokens
    mean, std = (
        normalization(ctx, model, cfg.n_normalization_samples, cfg.seed)
        if cfg.normalize
        else (0.0, 1.0)
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    ctx.tokenizer.save_pretrained(out_dir)
    info = {**held_out, "steps": step, "tokens_trained": tokens, "norm_mean": mean, "norm_std": std}
    if held_out["gold_accuracy"] < cfg.min_gold_accuracy:
        raise RewardModelTooWeak(
            f"reward model agrees with the gold ordering on only {held_out['gold_accuracy']:.3f} of held-out pairs "
            f"(reward_model.min_gold_accuracy={cfg.min_gold_accuracy}); train longer (reward_model.epochs, "
            f"preferences.n_train) or reduce label noise (preferences.temperature, preferences.flip_prob)"
        )
    return info
