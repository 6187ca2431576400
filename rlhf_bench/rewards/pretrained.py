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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from rlhf_bench.errors import require, require_choice
from rlhf_bench.rewards.bradley_terry import RewardModelTooWeak, normalization, pair_accuracy
from rlhf_bench.rewards.preferences import load_pairs
from rlhf_bench.rewards.reward import Normalization, load_pretrained_reward, write_spec
from rlhf_bench.run import Run

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


def train(ctx: Run, cfg: PretrainedRewardConfig, pairs_dir: Path, out_dir: Path, _checkpoints=None) -> dict[str, Any]:
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
