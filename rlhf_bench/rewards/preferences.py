"""Preference pairs sampled from the SFT policy and labelled by a simulated annotator.

As in AlpacaFarm (Dubois et al. 2023) the annotator is simulated: here it is a
Bradley-Terry chooser on the task's gold reward,
    P(a preferred over b) = sigmoid((gold(a) - gold(b)) / temperature),
whose label is then flipped with probability ``flip_prob`` (label noise). It also states how
strongly it prefers (0..3, from the gold gap), which the margin reward model uses.
Pairs are written as JSONL ``{"prompt", "chosen", "rejected", ...}`` (the format user
preference data comes in too), with the gold rewards and whether each response ended with EOS.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlhf_bench.config import PreferenceConfig
from rlhf_bench.core.rollout import Samples, pad
from rlhf_bench.run import Run
from rlhf_bench.tasks.data import read_jsonl

# |gold(a) - gold(b)| above each threshold raises the stated preference strength by one:
# 0 "negligibly better" .. 3 "significantly better" (the four levels of Llama 2's annotation).
STRENGTH_THRESHOLDS = (0.25, 0.5, 1.0)


def annotator_temperatures(cfg: PreferenceConfig) -> torch.Tensor:
    """[K] the Bradley-Terry temperature of each simulated annotator of the pool: spread
    log-uniformly around ``temperature`` by a factor exp(±annotator_spread)."""
    if cfg.annotators == 1:
        return torch.tensor([cfg.temperature])
    return cfg.temperature * torch.exp(cfg.annotator_spread * torch.linspace(-1, 1, cfg.annotators))


def simulated_annotator(
    gold_a: torch.Tensor,
    gold_b: torch.Tensor,
    temperature: float | torch.Tensor,
    flip_prob: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] gold rewards of two responses -> ([N] bool, True where the annotator prefers a,
    [N] long preference strength in 0..3; a flipped label is stated with strength 0).
    ``temperature`` is one number, or [N]: the temperature of the annotator of each pair."""
    p_a = torch.sigmoid((gold_a - gold_b) / temperature)
    prefers_a = torch.rand(p_a.shape, generator=generator) < p_a
    flip = torch.rand(p_a.shape, generator=generator) < flip_prob
    gap = (gold_a - gold_b).abs()
    strength = sum((gap > t).long() for t in STRENGTH_THRESHOLDS)
    return prefers_a ^ flip, torch.where(flip, torch.zeros_like(strength), strength)


def gold_labels(gold_a: torch.Tensor, gold_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] gold rewards of two responses -> ([N] bool, True where gold(a) > gold(b); [N] bool, True
    where they tie). The deterministic annotator (``preferences.label=gold``): a tie states no
    preference, so its pair is dropped rather than given an arbitrary label."""
    return gold_a > gold_b, gold_a == gold_b


def _label(cfg: PreferenceConfig, gold_a, gold_b, generator) -> tuple[torch.Tensor, ...]:
    """(prefers_a, strength, annotator, keep) of [N] pairs under ``cfg.label``."""
    n = gold_a.shape[0]
    if cfg.label == "gold":
        prefers_a, tie = gold_labels(gold_a, gold_b)
        flip = torch.rand(n, generator=generator) < cfg.flip_prob if cfg.flip_prob > 0 else torch.zeros(n, dtype=bool)
        gap = (gold_a - gold_b).abs()
        strength = sum((gap > t).long() for t in STRENGTH_THRESHOLDS)
        return prefers_a ^ flip, torch.where(flip, 0, strength), torch.zeros(n, dtype=torch.long), ~tie
    temperatures = annotator_temperatures(cfg)
    # a pool (AlpacaFarm): each pair is labelled by one annotator drawn at random
    who = torch.randint(len(temperatures), (n,), generator=generator) if len(temperatures) > 1 else torch.zeros(n)
    prefers_a, strength = simulated_annotator(gold_a, gold_b, temperatures[who.long()], cfg.flip_prob, generator)
    return prefers_a, strength, who.long(), torch.ones(n, dtype=bool)


def _label_pairs(ctx: Run, sft, prompts: list[str], cfg: PreferenceConfig, generator, desc: str) -> list[dict]:
    """``cfg.samples_per_prompt`` SFT samples of each prompt; every two of them (i < j) a labelled pair."""
    pairs = []
    sample_gen = torch.Generator(device=ctx.device).manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
    k = cfg.samples_per_prompt
    per_batch = max(1, cfg.generation_batch_size // k)
    for start in tqdm(range(0, len(prompts), per_batch), desc=desc, unit="batch", dynamic_ncols=True):
        chunk = prompts[start : start + per_batch]
        n = len(chunk)
        repeated = chunk * k  # sample s of prompt i is row s * n + i, all in one generation batch
        ids, mask = ctx.pad_prompts(ctx.encode_prompts(repeated))
        response_ids, response_mask = ctx.sample(sft, ids, mask, temperature=1.0, generator=sample_gen)
        texts = ctx.decode(response_ids, response_mask)
        finished = (response_ids == ctx.tokenizer.eos_token_id).any(-1).tolist()
        gold = torch.tensor(ctx.task.gold_reward(repeated, texts))
        labelled = []
        for s, t in itertools.combinations(range(k), 2):
            rows_a, rows_b = s * n + torch.arange(n), t * n + torch.arange(n)
            labelled.append((rows_a, rows_b, *_label(cfg, gold[rows_a], gold[rows_b], generator)))
        for i, prompt in enumerate(chunk):
            for rows_a, rows_b, prefers_a, strength, who, keep in labelled:
                if not keep[i]:
                    continue
                a, b = (int(rows_a[i]), int(rows_b[i])) if prefers_a[i] else (int(rows_b[i]), int(rows_a[i]))
                pairs.append(
                    {
                        "prompt": prompt,
                        "chosen": texts[a],
                        "rejected": texts[b],
                        "chosen_gold": float(gold[a]),
                        "rejected_gold": float(gold[b]),
                        "chosen_eos": finished[a],
                        "rejected_eos": finished[b],
                        "strength": int(strength[i]),
                        "annotator": int(who[i]),
                    }
                )
    return pairs


def sample_preferences(ctx: Run, cfg: PreferenceConfig, out_dir: Path) -> dict[str, float]:
    """Write ``train.jsonl`` (train prompts) and ``eval.jsonl`` (held-out prompts) to ``out_dir``."""
    task = ctx.task
    if getattr(task, "preference_pairs", None) is not None:
        return write_user_pairs(ctx, out_dir)
    generator = torch.Generator().manual_seed(cfg.seed)
    sft = ctx.load_policy(lora=False).eval()
    train_prompts = [
        task.train_prompts[int(i)] for i in torch.randint(len(task.train_prompts), (cfg.n_train,), generator=generator)
    ]
    eval_prompts = [
        task.eval_prompts[int(i)] for i in torch.randint(len(task.eval_prompts), (cfg.n_eval,), generator=generator)
    ]
    info: dict[str, float] = {}
    for split, prompts in (("train", train_prompts), ("eval", eval_prompts)):
        pairs = _label_pairs(ctx, sft, prompts, cfg, generator, desc=f"preference pairs ({split})")
        if not pairs:
            raise ValueError(
                f"preferences: every {split} pair tied on the gold reward and was dropped (preferences.label=gold); "
                "sample more prompts (preferences.n_train / n_eval) or samples per prompt (preferences.samples_per_prompt)"
            )
        write_jsonl(out_dir / f"{split}.jsonl", pairs)
        decided = [p for p in pairs if p["chosen_gold"] != p["rejected_gold"]]
        agree = sum(p["chosen_gold"] > p["rejected_gold"] for p in decided)
        info[f"{split}_pairs"] = len(pairs)
        if cfg.label == "gold":
            k = cfg.samples_per_prompt
            info[f"{split}_ties_dropped"] = len(prompts) * k * (k - 1) // 2 - len(pairs)
        info[f"{split}_label_gold_agreement"] = agree / max(1, len(decided))
    return info


# Options added after the stage's first version, at their defaults: left out of its cache key so
# that the pairs cached before they existed are still found (and the same pairs are produced).
ADDED_OPTIONS = {"samples_per_prompt": 2, "label": "bradley_terry"}


def stage_key(cfg: PreferenceConfig) -> dict:
    """What identifies the preference pairs in the stage cache: the config, less the options of
    ``ADDED_OPTIONS`` that hold their defaults."""
    key = asdict(cfg)  # scalars only: the same dict as pipeline.to_plain gives
    return {k: v for k, v in key.items() if k not in ADDED_OPTIONS or v != ADDED_OPTIONS[k]}


def write_user_pairs(ctx: Run, out_dir: Path) -> dict[str, float]:
    """The user's own pairs as the stage's ``train.jsonl`` / ``eval.jsonl``, each with the gold
    reward of both responses (to measure how often the labels agree with the gold judge)."""
    info: dict[str, float] = {}
    for split, rows in (("train", ctx.task.preference_pairs), ("eval", ctx.task.eval_preference_pairs)):
        prompts = [r["prompt"] for r in rows]
        chosen = ctx.task.gold_reward(prompts, [r["chosen"] for r in rows])
        rejected = ctx.task.gold_reward(prompts, [r["rejected"] for r in rows])
        pairs = [{**r, "chosen_gold": c, "rejected_gold": j} for r, c, j in zip(rows, chosen, rejected)]
        write_jsonl(out_dir / f"{split}.jsonl", pairs)
        decided = [(c, j) for c, j in zip(chosen, rejected) if c != j]
        info[f"{split}_pairs"] = len(pairs)
        info[f"{split}_label_gold_agreement"] = sum(c > j for c, j in decided) / max(1, len(decided))
    return info


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


@dataclass
class EncodedPairs:
    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    gold_order: torch.Tensor  # [N] 1 where gold(chosen) > gold(rejected), 0 where <, 0.5 on ties
    strength: torch.Tensor  # [N] the annotator's stated preference strength (0 if not given)
    margin: torch.Tensor | None = None  # [N] margins given with user data ("margin" field), if any

    def __len__(self) -> int:
        return len(self.prompts)


def encode_pairs(ctx: Run, rows: list[dict]) -> EncodedPairs:
    eos = ctx.tokenizer.eos_token_id

    def response(text: str, ended: bool) -> list[int]:
        return ctx.encode([text])[0] + ([eos] if ended else [])

    gold = [
        (r["chosen_gold"] > r["rejected_gold"]) + 0.5 * (r["chosen_gold"] == r["rejected_gold"])
        if "chosen_gold" in r
        else 1.0
        for r in rows
    ]
    return EncodedPairs(
        prompts=ctx.encode_prompts([r["prompt"] for r in rows]),
        chosen=[response(r["chosen"], r.get("chosen_eos", True)) for r in rows],
        rejected=[response(r["rejected"], r.get("rejected_eos", True)) for r in rows],
        gold_order=torch.tensor(gold, dtype=torch.float32),
        strength=torch.tensor([int(r.get("strength", 0)) for r in rows], dtype=torch.long),
        margin=(
            torch.tensor([float(r.get("margin", 0.0)) for r in rows]) if any("margin" in r for r in rows) else None
        ),
    )


def pair_batch(ctx: Run, pairs: EncodedPairs, index: torch.Tensor) -> Samples:
    """The pairs ``index`` as 2n rows: the n chosen, then the n rejected."""
    rows = index.tolist()
    prompts = [pairs.prompts[i] for i in rows]
    responses = [pairs.chosen[i] for i in rows] + [pairs.rejected[i] for i in rows]
    prompt_ids, prompt_mask = pad(prompts + prompts, ctx.tokenizer.pad_token_id, "left", ctx.device)
    response_ids, response_mask = pad(responses, ctx.tokenizer.pad_token_id, "right", ctx.device)
    return Samples(prompt_ids, prompt_mask, response_ids, response_mask)


def load_pairs(ctx: Run, pairs_dir: Path | str) -> tuple[EncodedPairs, EncodedPairs]:
    return encode_pairs(ctx, read_jsonl(Path(pairs_dir) / "train.jsonl")), encode_pairs(
        ctx, read_jsonl(Path(pairs_dir) / "eval.jsonl")
    )
