"""Gold judges given as code or as a classifier: what a user task scores responses with.

A judge maps texts to numbers: a Python callable ``(prompts, responses) -> list[float]`` named by
``package.module:function`` or ``path/to/file.py:function`` (``task.gold_reward``, and the training
reward ``reward_model=function``), or a pretrained sequence classifier (``task.gold_model``, and the
training reward ``reward_model=pretrained``). They sit below the rewards: a task needs its judge
before any reward model exists.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from rlhf_bench.core import models
from rlhf_bench.errors import ConfigError, require, require_choice

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
            f"it returned {_described(out)}"
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


def _described(out) -> str:
    """What a reward function returned, for its error: ``list of str``, ``str``, ``dict``..."""
    if isinstance(out, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in out})
        return f"{type(out).__name__} of {' and '.join(kinds)}" if kinds else f"an empty {type(out).__name__}"
    return type(out).__name__


class TextClassifier:
    """A sequence classifier with its own tokenizer that scores (prompt, response) texts: one logit."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        label_index: int,
        input_format: str,
        batch_size: int,
    ):
        self.model, self.tokenizer, self.label_index = model, tokenizer, label_index
        self.input_format, self.batch_size = input_format, batch_size

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
        self.classifier = TextClassifier(model, tokenizer, label_index, input_format, batch_size)

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        scores = self.classifier.raw_scores(list(prompts), list(responses), self.device, probability=self.probability)
        return scores.cpu().tolist()
