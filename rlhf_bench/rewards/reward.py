"""The reward a method optimises: a trained reward model, an ensemble of them, a pretrained
classifier (``rewards/pretrained.py``), or the gold reward.

Each reward-model stage writes ``reward.json`` beside its checkpoints, saying how to load it;
``load_reward`` turns that folder into a callable
    reward(ctx, prompt_ids, prompt_mask, response_ids, response_mask) -> [B] scores
so that methods never need to know which variant they were given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf_bench.core.rollout import sequence_scores
from rlhf_bench.run import Run
from rlhf_bench.tasks.judges import TextClassifier, call_reward, load_classifier

REWARD_SPEC = "reward.json"


@dataclass
class Normalization:
    """Affine normalisation of a score: (score - mean) / std (Ziegler et al. 2019, Sec. 2.2)."""

    mean: float = 0.0
    std: float = 1.0

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores - self.mean) / self.std


class ModelReward:
    """A sequence-classification reward model, pooled at the last response token, normalised."""

    def __init__(self, model: torch.nn.Module, norm: Normalization):
        self.model, self.norm = model, norm
        self.folder: str | None = None

    @torch.no_grad()
    def __call__(self, ctx: Run, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        with ctx.autocast():
            raw = sequence_scores(self.model, prompt_ids, prompt_mask, response_ids, response_mask)
        return self.norm(raw.float())


AGGREGATIONS = ("mean", "min", "mean_minus_std")


class EnsembleReward:
    """k reward models; scores combined by mean, min (worst case) or mean - lam * std
    (uncertainty-weighted optimisation, Coste et al. 2023)."""

    def __init__(self, members: list[ModelReward], aggregation: str, lam: float):
        self.members, self.aggregation, self.lam = members, aggregation, lam

    def __call__(self, ctx: Run, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        scores = torch.stack([m(ctx, prompt_ids, prompt_mask, response_ids, response_mask) for m in self.members])
        return aggregate(scores, self.aggregation, self.lam)


def aggregate(scores: torch.Tensor, aggregation: str, lam: float = 0.0) -> torch.Tensor:
    """[k, B] member scores -> [B]. The std is the population std over members (ddof 0)."""
    if aggregation == "mean":
        return scores.mean(0)
    if aggregation == "min":
        return scores.min(0).values
    if aggregation == "mean_minus_std":
        return scores.mean(0) - lam * scores.std(0, unbiased=False)
    raise ValueError(f"unknown ensemble aggregation {aggregation!r}; choose from {AGGREGATIONS}")


class GoldReward:
    """The task's own gold reward as the training signal: an oracle with no reward-model error."""

    def __call__(self, ctx: Run, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        prompts = ctx.prompt_texts(prompt_ids, prompt_mask)
        return ctx.gold(prompts, response_ids, response_mask).to(response_ids.device)


class FunctionReward:
    """The training reward computed by a user function on the decoded prompt and response."""

    def __init__(self, target: str):
        self.target = target

    def __call__(self, ctx: Run, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        prompts = ctx.prompt_texts(prompt_ids, prompt_mask)
        responses = ctx.decode(response_ids, response_mask)
        scores = call_reward(self.target, "reward_model.target", prompts, responses)
        return torch.tensor(scores, dtype=torch.float32, device=response_ids.device)


class PretrainedReward(TextClassifier):
    """A pretrained sequence classifier as the reward: decode the policy's tokens, re-tokenise, read
    one logit, normalised like a reward model's score."""

    def __init__(self, model, tokenizer, label_index: int, input_format: str, batch_size: int, norm: Normalization):
        super().__init__(model, tokenizer, label_index, input_format, batch_size)
        self.norm = norm

    @torch.no_grad()
    def __call__(self, ctx: Run, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        prompts, responses = ctx.prompt_texts(prompt_ids, prompt_mask), ctx.decode(response_ids, response_mask)
        return self.norm(self.raw_scores(prompts, responses, ctx.device, ctx.autocast))


def load_pretrained_reward(ctx: Run, spec: dict[str, Any]) -> PretrainedReward:
    """The reward a ``pretrained`` spec describes, on the run's device."""
    model, tokenizer = load_classifier(spec, ctx.device)
    model = ctx.frozen(model)
    norm = Normalization(spec["norm_mean"], spec["norm_std"])
    return PretrainedReward(model, tokenizer, spec["label_index"], spec["input_format"], spec["batch_size"], norm)


def write_spec(folder: Path, spec: dict[str, Any]) -> None:
    (folder / REWARD_SPEC).write_text(json.dumps(spec, indent=2))


def load_reward(ctx: Run, folder: str | Path):
    """The reward stored in a reward-model stage folder, on the run's device."""
    folder = Path(folder)
    spec = json.loads((folder / REWARD_SPEC).read_text())
    kind = spec["kind"]
    if kind == "gold":
        return GoldReward()
    if kind == "pretrained":  # an external classifier with its own tokenizer
        return load_pretrained_reward(ctx, spec)
    if kind == "function":
        return FunctionReward(spec["target"])
    members = [
        _load_member(ctx, folder / m["path"], Normalization(m["norm_mean"], m["norm_std"])) for m in spec["members"]
    ]
    if kind == "model":
        return members[0]
    if kind == "ensemble":
        return EnsembleReward(members, spec["aggregation"], spec.get("lam", 0.0))
    raise ValueError(f"{folder / REWARD_SPEC}: unknown reward kind {kind!r}")


def load_run_reward(ctx: Run):
    """The reward the run's method optimises: its reward-model stage's folder, loaded."""
    return load_reward(ctx, ctx.stages.reward_model.path)


def _load_member(ctx: Run, folder: Path, norm: Normalization) -> ModelReward:
    model = ctx.load_scalar_model(str(folder), per_token=False, frozen=True)
    reward = ModelReward(model, norm)
    reward.folder = str(folder)
    return reward


def value_init_member(reward) -> ModelReward | None:
    """The reward model a value model can start from (None for the gold reward)."""
    if isinstance(reward, ModelReward):
        return reward
    if isinstance(reward, EnsembleReward):
        return reward.members[0]
    return None
