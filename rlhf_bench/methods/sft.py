"""Supervised fine-tuning: the first stage of every run, and the reference policy.

Next-token cross-entropy on the task's demonstrations (the SFT corpus), each followed by
EOS so that the policy learns to stop. Budgeted in optimiser steps, not epochs or seconds,
so that a run is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rlhf_bench.config import SFTConfig
from rlhf_bench.core import distributed, models
from rlhf_bench.core.loop import Trainables, run_loop
from rlhf_bench.core.ops import position_ids_from_mask
from rlhf_bench.core.rollout import pad
from rlhf_bench.core.train import (
    check_finite,
    make_optimizer,
    optimizer_step,
    warmup_linear_schedule,
)
from rlhf_bench.run import Run
from rlhf_bench.tasks.data import DataError


def tokenize_demonstrations(texts: list[str], tokenizer, max_length: int) -> list[tuple[list[int], int]]:
    """Each text followed by EOS, truncated to ``max_length`` tokens: (ids, 0 prompt tokens)."""
    eos = tokenizer.eos_token_id
    return [((tokenizer(t, add_special_tokens=False)["input_ids"] + [eos])[:max_length], 0) for t in texts]


def tokenize_examples(examples: list[tuple[str, str]], tokenizer, max_length: int) -> list[tuple[list[int], int]]:
    """(prompt, completion) pairs -> (prompt ids + completion ids + EOS, number of prompt tokens),
    truncated to ``max_length``; the loss is on the completion only (the prompt is given)."""
    eos = tokenizer.eos_token_id
    out = []
    for prompt, completion in examples:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [eos]
        out.append(((p + c)[:max_length], len(p)))
    return out


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, V] logits, [B, L] labels (-100: no loss), [B, L] attention mask -> the mean next-token NLL over the labelled
    tokens of the whole global batch. With several processes each holds a share of the batch:
    its sum is divided by the global token count (times the process count, which the gradient
    average divides out), so the step equals one process's on the whole batch."""
    # a target is a token whose context is a real token: with left padding the first token of a
    # shorter sequence follows a pad, and would be "predicted" from nothing
    targets = labels[:, 1:].masked_fill(mask[:, :-1] == 0, -100)
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    local = int((targets != -100).sum())
    return nll * distributed.world_size() / max(1, distributed.total(local))


def train_sft(
    ctx: Run,
    cfg: SFTConfig,
    base_path: str,
    out_dir: Path,
    checkpoints: Path | None = None,
    label: str = "sft",
) -> dict[str, float]:
    """Fine-tune the model at ``base_path`` on ``ctx.task.sft_texts``; save it to ``out_dir``
    (resuming from the last checkpoint in ``checkpoints`` if there is one). ``label`` names the
    loop in the history and checkpoints (a reward model's own backbone is ``reward_backbone``)."""
    tokenizer = ctx.tokenizer
    model = ctx.load_policy(base_path).train()
    max_length = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    examples = getattr(ctx.task, "sft_examples", None)
    if examples is not None and not examples:
        raise DataError("the task has no SFT data: set task.sft to a demonstrations file, or sft.steps=0")
    if examples:  # prompts as the policy will see them (model.chat_template)
        examples = list(zip(ctx.format_prompts([p for p, _ in examples]), [c for _, c in examples]))
    data = (
        tokenize_examples(examples, tokenizer, max_length)
        if examples
        else tokenize_demonstrations(ctx.task.sft_texts, tokenizer, max_length)
    )
    optimizer = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay, max_grad_norm=cfg.max_grad_norm)
    scheduler = warmup_linear_schedule(optimizer, cfg.warmup_steps, cfg.steps, final_fraction=0.1)
    generator = torch.Generator().manual_seed(cfg.seed)

    def step(i: int, state: dict) -> dict[str, float]:
        index = distributed.shard(torch.randint(len(data), (cfg.batch_size,), generator=generator))
        batch = [data[j] for j in index]
        ids, mask = pad([seq for seq, _ in batch], tokenizer.pad_token_id, "left", ctx.device)
        labels, _ = pad([[-100] * n + seq[n:] for seq, n in batch], -100, "left", ctx.device)
        with ctx.autocast():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        loss = next_token_loss(logits, labels, mask)
        check_finite(loss, "sft/loss", i)
        grad_norm = optimizer_step(loss, optimizer, cfg.max_grad_norm, scheduler)
        state["tokens"] += int(mask.sum())
        state["loss"] = loss.item()
        return {"train/loss": state["loss"], "train/grad_norm": grad_norm, "train/lr": scheduler.get_last_lr()[0]}

    state = run_loop(
        ctx.checkpointer(label, checkpoints),
        ctx.tracker.log,
        label,
        cfg.steps,
        step,
        Trainables({"model": model}, optimizer, scheduler, {"data": generator}),
        state={"tokens": 0, "loss": float("nan")},
        desc="SFT" if label == "sft" else label,
        log_every=10,
        save_last=False,  # the stage saves the model itself
    )
    tokens, loss_value = state["tokens"], state["loss"]
    ctx.cost.tokens_trained += tokens
    models.save_pretrained(model, tokenizer, out_dir)  # a sharded model: gathered, written by the main process
    return {"final_loss": loss_value, "steps": cfg.steps, "tokens_trained": tokens}


@dataclass
class SFTMethodConfig:
    """The SFT policy itself as a method: the reference row of every comparison."""

    _target_: str = "rlhf_bench.methods.sft.train"
    name: str = "sft"

    def conventions(self) -> dict:
        return {"kl_in": "none (the reference itself)"}


def train(ctx: Run, cfg: SFTMethodConfig) -> torch.nn.Module:
    """Return the SFT policy unchanged (a fresh copy, so that it is evaluated like any method)."""
    return ctx.load_policy()
