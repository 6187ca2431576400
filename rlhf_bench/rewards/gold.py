"""The gold reward as the training signal: an oracle upper bound with no reward-model error.

Nothing is trained. Its held-out accuracy against the annotator's labels is still measured,
which shows how much of the labels is noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhf_bench.rewards.bradley_terry import load_pairs, pair_accuracy
from rlhf_bench.rewards.reward import load_reward, write_spec
from rlhf_bench.run import Run


@dataclass
class GoldConfig:
    _target_: str = "rlhf_bench.rewards.gold.train"
    name: str = "gold"
    batch_size: int = 128


def train(ctx: Run, cfg: GoldConfig, pairs_dir: Path, out_dir: Path, _checkpoints=None) -> dict[str, float]:
    _, eval_pairs = load_pairs(ctx, pairs_dir)
    write_spec(out_dir, {"kind": "gold"})
    return pair_accuracy(ctx, load_reward(ctx, out_dir), eval_pairs, cfg.batch_size)
