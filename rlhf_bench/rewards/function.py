"""A reward written as code: any Python callable ``(prompts, responses) -> list[float]``.

Verifiable and rule-based rewards (an answer check, a regex, a unit test, a length rule) are
functions, not models. ``reward_model=function reward_model.target=package.module:function``
makes one the training reward; ``task.gold_reward=...`` (same syntax) makes one the gold
judge of a user task. ``target`` is ``package.module:function`` (importable) or
``path/to/file.py:function`` (a file, relative to the working folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhf_bench.rewards.bradley_terry import load_pairs, pair_accuracy
from rlhf_bench.rewards.reward import load_reward, write_spec
from rlhf_bench.run import Run
from rlhf_bench.tasks.judges import RewardFunctionError, check_target  # noqa: F401 (RewardFunctionError: raised here)


@dataclass
class FunctionRewardConfig:
    _target_: str = "rlhf_bench.rewards.function.train"
    name: str = "function"
    target: str | None = None  # package.module:function or path/to/file.py:function
    batch_size: int = 128

    def __post_init__(self) -> None:
        check_target(self.target, "reward_model.target")


def train(ctx: Run, cfg: FunctionRewardConfig, pairs_dir: Path, out_dir: Path, _checkpoints=None) -> dict[str, float]:
    """Nothing to train: check the function on the held-out pairs and write the spec."""
    _, eval_pairs = load_pairs(ctx, pairs_dir)
    write_spec(out_dir, {"kind": "function", "target": cfg.target})
    return pair_accuracy(ctx, load_reward(ctx, out_dir), eval_pairs, cfg.batch_size)
