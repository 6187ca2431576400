"""A pretrained sequence classifier as the reward: a hub reward model, or a sentiment classifier.

Nothing is trained. The "stage" measures the classifier's held-out accuracy on the preference
pairs (against the annotator's labels and the gold ordering), the mean and std of its score on
SFT samples (Ziegler et al. 2019, Sec. 2.2, as for the Bradley-Terry model), and writes a
``reward.json`` of kind ``pretrained`` naming the classifier.

The classifier has its own tokenizer, so it cannot read the policy's token ids: each
(prompt, response) is decoded to text and re-tokenised. The reward is one logit,
``logits[:, label_index]`` (e.g. the POSITIVE logit of an IMDb classifier, as in TRL's
sentiment example), pooled by the classifier's own forward, as it was trained.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING

from rlhf_bench.config import require, require_choice
from rlhf_bench.core import models
from rlhf_bench.core.context import RunContext
from rlhf_bench.rewards.bradley_terry import RewardModelTooWeak, normalization, pair_accuracy
from rlhf_bench.rewards.preferences import load_pairs
from rlhf_bench.rewards.reward import Normalization, write_spec

INPUT_FORMATS = ("concat", "pair", "chat")


@dataclass
class PretrainedRewardConfig:
    _target_: str = "rlhf_bench.rewards.pretrained.train"
    name: str = "pretrained"
    name_or_path: str = MISSING  # a hub name or a local folder
    revision: str | None = None
    trust_remote_code: bool = False
    label_index: int = 0  # which logit is the reward
    # how (prompt, response) becomes the classifier's input: concat = prompt + response as one text;
    # pair = a text pair (cross-encoders such as OpenAssistant's DeBERTa RMs); chat = a user and an
    # assistant turn of the classifier's own chat template (Llama-style RMs)
    input_format: str = "concat"
    normalize: bool = True
    n_normalization_samples: int = 512
    batch_size: int = 32
    min_gold_accuracy: float = 0.0  # off: no setting here can make a given classifier agree more
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.label_index >= 0, "reward_model.label_index", "must be >= 0", self.label_index)
        require_choice(self.input_format, INPUT_FORMATS, "reward_model.input_format")
        require(self.batch_size >= 1, "reward_model.batch_size", "must be >= 1", self.batch_size)
        require(
            self.n_normalization_samples >= 2,
            "reward_model.n_normalization_samples",
            "must be >= 2",
            self.n_normalization_samples,
        )
        require(
            0 <= self.min_gold_accuracy <= 1,
            "reward_model.min_gold_accuracy",
            "must be in [0, 1]",
            self.min_gold_accuracy,
        )


class PretrainedReward:
    """A sequence classifier with its own tokenizer: decode the policy's tokens, re-tokenise, read one logit."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        label_index: int,
        input_format: str,
        batch_size: int,
        norm: Normalization,
    ):
        self.model, self.tokenizer, self.label_index = model, tokenizer, label_index
        self.input_format, self.batch_size, self.norm = input_format, batch_size, norm

    @torch.no_grad()
    def __call__(self, ctx, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        prompts, responses = ctx.prompt_texts(prompt_ids, prompt_mask), ctx.decode(response_ids, response_mask)
        return self.norm(self.raw_scores(prompts, responses, ctx.device, ctx.autocast))

    @torch.no_grad()
    def raw_scores(
        self,
        prompts: list[str],
        responses: list[str],
        device,
        autocast=contextlib.nullcontext,
        probability: bool = False,
    ) -> torch.Tensor:
        """[N] logit ``label_index`` of each (prompt, response), in batches, on ``device``; with
        ``probability``, that label's softmax probability over the classifier's labels instead."""
        out = []
        for i in range(0, len(prompts), self.batch_size):
            batch = self._tokenize(prompts[i : i + self.batch_size], responses[i : i + self.batch_size]).to(device)
            with autocast():
                logits = self.model(**batch).logits.float()
            out.append(logits.softmax(-1)[:, self.label_index] if probability else logits[:, self.label_index])
        return torch.cat(out)

    def _tokenize(self, prompts: list[str], responses: list[str]):
        tok, limit = self.tokenizer, _max_length(self.model, self.tokenizer)
        common = dict(padding=True, truncation=True, max_length=limit, return_tensors="pt")
        if self.input_format == "pair":
            return tok(prompts, responses, **common)
        if self.input_format == "chat":
            texts = [
                tok.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
                )
                for p, r in zip(prompts, responses)
            ]
            return tok(texts, add_special_tokens=False, **common)
        return tok([p + r for p, r in zip(prompts, responses)], **common)


def _max_length(model: torch.nn.Module, tokenizer) -> int:
    """The longest input the classifier takes: its tokenizer's limit, unless that is unset (a huge sentinel)."""
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None
    return min(x for x in (limit, positions, 4096) if x)


def load_classifier(spec: dict[str, Any], device: torch.device) -> tuple[torch.nn.Module, Any]:
    """(the frozen classifier on ``device``, its tokenizer) from a spec or config's fields.

    Right padding and truncation from the left: the classifier pools as it was trained, and
    an overlong input keeps its end, the response being scored.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    models.quiet_transformers()
    where = dict(revision=spec["revision"], trust_remote_code=spec["trust_remote_code"])
    tokenizer = AutoTokenizer.from_pretrained(spec["name_or_path"], **where)
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        spec["name_or_path"], dtype=models.WEIGHTS_DTYPE, **where
    )
    if model.config.pad_token_id is None:  # batches of more than one need it to find the last token
        model.config.pad_token_id = tokenizer.pad_token_id
    require(
        spec["label_index"] < model.config.num_labels,
        "reward_model.label_index",
        f"must be < the classifier's number of labels ({model.config.num_labels}: {model.config.id2label})",
        spec["label_index"],
    )
    require(
        spec["input_format"] != "chat" or bool(getattr(tokenizer, "chat_template", None)),
        "reward_model.input_format",
        f"is chat but the tokenizer of {spec['name_or_path']} has no chat template; use concat or pair",
    )
    model.to(device).eval().requires_grad_(False)
    return model, tokenizer


class ClassifierJudge:
    """A sequence classifier as the gold judge of a user task (``task.gold_model``): raw logit
    ``label_index`` of each (prompt, response) (``output="probability"``: its softmax probability,
    e.g. p(positive) as DPO's IMDb experiment labels pairs), text in and numbers out like a reward
    function."""

    def __init__(
        self,
        name_or_path: str,
        label_index: int,
        input_format: str = "concat",
        batch_size: int = 32,
        output: str = "logit",
    ):
        require_choice(output, ("logit", "probability"), "task.gold_model_output")
        self.probability = output == "probability"
        spec = dict(
            name_or_path=name_or_path,
            revision=None,
            trust_remote_code=False,
            label_index=label_index,
            input_format=input_format,
        )
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer = load_classifier(spec, self.device)
        self.reward = PretrainedReward(model, tokenizer, label_index, input_format, batch_size, Normalization())

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        scores = self.reward.raw_scores(list(prompts), list(responses), self.device, probability=self.probability)
        return scores.cpu().tolist()


def load_pretrained_reward(ctx: RunContext, spec: dict[str, Any]) -> PretrainedReward:
    """The reward a ``pretrained`` spec describes, on the run's device."""
    model, tokenizer = load_classifier(spec, ctx.device)
    model = ctx.frozen(model)
    norm = Normalization(spec["norm_mean"], spec["norm_std"])
    return PretrainedReward(model, tokenizer, spec["label_index"], spec["input_format"], spec["batch_size"], norm)


def _spec(cfg: PretrainedRewardConfig) -> dict[str, Any]:
    local = Path(cfg.name_or_path).expanduser()
    return {
        "kind": "pretrained",
        # a local folder by absolute path, so that the spec loads from any working directory
        "name_or_path": str(local.resolve()) if local.is_dir() else cfg.name_or_path,
        "revision": cfg.revision,
        "trust_remote_code": cfg.trust_remote_code,
        "label_index": cfg.label_index,
        "input_format": cfg.input_format,
        "batch_size": cfg.batch_size,
    }


def train(
    ctx: RunContext, cfg: PretrainedRewardConfig, pairs_dir: Path, out_dir: Path, _checkpoints=None
) -> dict[str, Any]:
    """Measure the classifier on ``pairs_dir/eval.jsonl`` and on SFT samples; write its spec to ``out_dir``."""
    require(cfg.name_or_path not in ("", MISSING), "reward_model.name_or_path", "must name a hub model or a folder")
    spec = _spec(cfg)
    reward = load_pretrained_reward(ctx, {**spec, "norm_mean": 0.0, "norm_std": 1.0})
    _, eval_pairs = load_pairs(ctx, pairs_dir)
    info: dict[str, Any] = pair_accuracy(ctx, reward, eval_pairs, cfg.batch_size)
    norm = normalization(ctx, reward, cfg.n_normalization_samples, cfg.seed) if cfg.normalize else Normalization()
    write_spec(out_dir, {**spec, "norm_mean": norm.mean, "norm_std": norm.std})
    info.update(norm_mean=norm.mean, norm_std=norm.std, parameters=sum(p.numel() for p in reward.model.parameters()))
    if info["gold_accuracy"] < cfg.min_gold_accuracy:
        raise RewardModelTooWeak(
            f"{cfg.name_or_path} agrees with the gold ordering on only {info['gold_accuracy']:.3f} of held-out "
            f"pairs (reward_model.min_gold_accuracy={cfg.min_gold_accuracy}): it does not measure what the "
            f"task's gold reward does; check reward_model.label_index and reward_model.input_format"
        )
    return info
