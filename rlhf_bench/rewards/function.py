"""A reward written as code: any Python callable ``(prompts, responses) -> list[float]``.

Verifiable and rule-based rewards (an answer check, a regex, a unit test, a length rule) are
functions, not models. ``reward_model=function reward_model.target=package.module:function``
makes one the training reward; ``task.gold_reward=...`` (same syntax) makes one the gold
judge of a user task. ``target`` is ``package.module:function`` (importable) or
``path/to/file.py:function`` (a file, relative to the working folder).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from rlhf_bench.config import ConfigError, require
from rlhf_bench.core.context import RunContext
from rlhf_bench.rewards.bradley_terry import load_pairs, pair_accuracy
from rlhf_bench.rewards.reward import load_reward, write_spec

TARGET_FORM = "must look like 'package.module:function' or 'path/to/file.py:function'"


class RewardFunctionError(RuntimeError):
    """A user reward function raised, or returned something other than one number per response."""


def check_target(target: str | None, key: str) -> None:
    module, sep, name = (target or "").rpartition(":")
    require(bool(sep and module and name.isidentifier()), key, TARGET_FORM, target)


@lru_cache(maxsize=16)
def load_callable(target: str, key: str) -> Callable:
    """The function named by ``target``; a ConfigError naming ``key`` if it cannot be found."""
    check_target(target, key)
    module_name, _, name = target.rpartition(":")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ConfigError(key, f"names a file that does not exist ({path.resolve()})", target)
        spec = importlib.util.spec_from_file_location(f"rlhf_bench_user.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ConfigError(key, f"{path} failed to import ({type(exc).__name__}: {exc})", target) from None
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                key, f"cannot import {module_name!r} ({exc}); is it installed or on PYTHONPATH?", target
            ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(key, f"{module_name} has no function {name!r}", target)
    return fn


def call_reward(target: str, key: str, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """``target(prompts, responses)``, checked: one finite number per response."""
    fn = load_callable(target, key)
    try:
        out = fn(list(prompts), list(responses))
    except Exception as exc:
        raise RewardFunctionError(f"reward function {target} ({key}) raised {type(exc).__name__}: {exc}") from exc
    try:
        values = [float(v) for v in out]
    except (TypeError, ValueError):
        raise RewardFunctionError(
            f"reward function {target} ({key}) must return a list of numbers, one per response; "
            f"it returned {type(out).__name__}"
        ) from None
    if len(values) != len(responses):
        raise RewardFunctionError(
            f"reward function {target} ({key}) returned {len(values)} rewards for {len(responses)} responses"
        )
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        raise RewardFunctionError(
            f"reward function {target} ({key}) returned {values[bad]} for response {bad}: {responses[bad]!r}"
        )
    return values


@dataclass
class FunctionRewardConfig:
    _target_: str = "rlhf_bench.rewards.function.train"
    name: str = "function"
    target: str | None = None  # package.module:function or path/to/file.py:function
    batch_size: int = 128

    def __post_init__(self) -> None:
        check_target(self.target, "reward_model.target")


class FunctionReward:
    """The training reward computed by a user function on the decoded prompt and response."""

    def __init__(self, target: str):
        self.target = target

    def __call__(self, ctx, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        prompts = ctx.prompt_texts(prompt_ids, prompt_mask)
        responses = ctx.decode(response_ids, response_mask)
        scores = call_reward(self.target, "reward_model.target", prompts, responses)
        return torch.tensor(scores, dtype=torch.float32, device=response_ids.device)


def train(
    ctx: RunContext, cfg: FunctionRewardConfig, pairs_dir: Path, out_dir: Path, _checkpoints=None
) -> dict[str, float]:
    """Nothing to train: check the function on the held-out pairs and write the spec."""
    _, eval_pairs = load_pairs(ctx, pairs_dir)
    write_spec(out_dir, {"kind": "function", "target": cfg.target})
    return pair_accuracy(ctx, load_reward(ctx, out_dir), eval_pairs, cfg.batch_size)
