"""Supervised fine-tuning: the first stage of every run, and the reference policy.

Next-token cross-entropy on the task's demonstrations (the SFT corpus), each followed by
EOS so that the policy learns to stop. Budgeted in optimiser steps, not epochs or seconds,
so that a run is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlhf_bench.config import SFTConfig
from rlhf_bench.core.context import RunContext
from rlhf_bench.core.ops import position_ids_from_mask
from rlhf_bench.core.rollout import pad
from rlhf_bench.core.train import (
    check_finite,
    make_optimizer,
    optimizer_step,
    warmup_linear_schedule,
)


def tokenize_demonstrations(texts: list[str], tokenizer, max_length: int) -> list[list[int]]:
    """Each text followed by EOS, truncated to ``max_length`` tokens."""
    eos = tokenizer.eos_token_id
    return [(tokenizer(t, add_special_tokens=False)["input_ids"] + [eos])[:max_length] for t in texts]


def train_sft(ctx: RunContext, cfg: SFTConfig, base_path: str, out_dir: Path) -> dict[str, float]:
    """Fine-tune the model at ``base_path`` on ``ctx.task.sft_texts``; save it to ``out_dir``."""
    tokenizer = ctx.tokenizer
    model = ctx.load_policy(base_path).train()
    max_length = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    data = tokenize_demonstrations(ctx.task.sft_texts, tokenizer, max_length)
    optimizer = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
    scheduler = warmup_linear_schedule(optimizer, cfg.warmup_steps, cfg.steps, final_fraction=0.1)
    generator = torch.Generator().manual_seed(cfg.seed)
    tokens, loss_value = 0, float("nan")
    for step in tqdm(range(cfg.steps), desc="SFT", unit="step", dynamic_ncols=True):
        index = torch.randint(len(data), (cfg.batch_size,), generator=generator)
        ids, mask = pad([data[i] for i in index], tokenizer.pad_token_id, "left", ctx.device)
        labels = ids.masked_fill(mask == 0, -100)
        with ctx.autocast():
            loss = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids_from_mask(mask),
                labels=labels,
            ).loss
        check_finite(loss, "sft/loss", step)
        grad_norm = optimizer_step(loss, optimizer, cfg.max_grad_norm, scheduler)
        tokens += int(mask.sum())
        loss_value = loss.item()
        if step % 10 == 0 or step == cfg.steps - 1:
            ctx.tracker.log(
                "sft",
                {
                    "train/sft_step": step,
                    "train/sft_loss": loss_value,
                    "train/sft_grad_norm": grad_norm,
                    "train/sft_lr": scheduler.get_last_lr()[0],
                },
            )
    ctx.cost.tokens_trained += tokens
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {"final_loss": loss_value, "steps": cfg.steps, "tokens_trained": tokens}


@dataclass
class SFTMethodConfig:
    """The SFT policy itself as a method: the reference row of every comparison."""

    _target_: str = "rlhf_bench.methods.sft.train"
    name: str = "sft"

    def conventions(self) -> dict:
        return {"kl_in": "none (the reference itself)"}


def train(ctx: RunContext, cfg: SFTMethodConfig) -> torch.nn.Module:
    """Return the SFT policy unchanged (a fresh copy, so that it is evaluated like any method)."""
    return ctx.load_policy()
