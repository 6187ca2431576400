"""A user's own task: prompts, demonstrations, preference pairs and a gold reward, from JSONL
files (``task=jsonl``) or a Hugging Face data set (``task=hf_dataset``), through one class.

What each part is for:
  prompts             training prompts for online methods and for sampling preference pairs
  eval_prompts        held-out prompts for evaluation (default: the last ``eval_fraction`` of prompts)
  sft                 demonstrations {"prompt", "completion"} for the SFT stage (loss on the completion)
  preferences         pairs {"prompt", "chosen", "rejected"} for the reward model and offline methods;
                      without them, pairs are sampled from the SFT policy and labelled by the
                      simulated annotators on the gold reward, as for the embedded tasks
  eval_preferences    held-out pairs (default: the last ``eval_fraction`` of preferences)
  gold_reward         the judge of evaluation: ``package.module:function`` or ``file.py:function``

For ``format=datasets`` each of these names a split of ``dataset`` (a hub name, a local folder
written by ``datasets``' ``save_to_disk``, or one data file: a local path or an
``hf://datasets/...`` URL ending in .json/.jsonl/.parquet/.csv), and ``columns`` maps our field
names to the data set's column names. Preference pairs may come from another data set
(``preference_dataset``). Records that need more than renaming (token ids to decode, a prompt
template, one record holding several pairs) go through ``formatter``, a function
``(record, kind, **formatter_args) -> row | list of rows | None`` used instead of ``columns``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

from rlhf_bench.errors import require, require_choice
from rlhf_bench.tasks.data import DataError, jsonl_lines, load_hf_split, load_jsonl
from rlhf_bench.tasks.judges import ClassifierJudge, call_reward, check_target, load_callable


@dataclass
class Columns:
    """format=datasets: the data set's column that holds each of our fields."""

    prompt: str = "prompt"
    completion: str = "completion"
    chosen: str = "chosen"
    rejected: str = "rejected"
    margin: str = "margin"
    strength: str = "strength"


@dataclass
class UserTaskConfig:
    _target_: str = "rlhf_bench.tasks.user.UserTask"
    name: str = "jsonl"
    format: str = "jsonl"  # jsonl: the keys below are file paths | datasets: they are split names
    dataset: str | None = None  # format=datasets: a hub name or a local data set folder
    dataset_config: str | None = None  # format=datasets: the data set's configuration name, if any
    # format=datasets: the data set of preferences / eval_preferences when not `dataset`
    preference_dataset: str | None = None
    preference_dataset_config: str | None = None
    columns: Columns = field(default_factory=Columns)
    # format=datasets: package.module:function (or file.py:function) making rows of each raw record,
    # called as formatter(record, kind, **formatter_args); replaces `columns` (tasks/formats.py)
    formatter: str | None = None
    formatter_args: dict[str, Any] = field(default_factory=dict)
    prompts: str | None = None
    eval_prompts: str | None = None
    sft: str | None = None
    preferences: str | None = None
    eval_preferences: str | None = None
    eval_fraction: float = 0.1  # held out when no eval split is given
    gold_reward: str | None = None
    gold_model: str | None = None  # or a sequence classifier (hub name or folder) as the judge
    gold_model_label: int = 0  # its logit that is the judge's score
    gold_model_output: str = "logit"  # logit | probability (softmax over its labels) of gold_model_label
    max_response_tokens: int = 32
    split_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.columns, dict):  # rebuilt from a plain dict (the lm-eval suite's task spec)
            self.columns = Columns(**self.columns)
        require_choice(self.format, ("jsonl", "datasets"), "task.format")
        if self.format == "datasets":
            require(bool(self.dataset), "task.dataset", "must name a data set (hub name or local folder)")
        else:
            for key in ("preference_dataset", "formatter"):
                require(getattr(self, key) is None, f"task.{key}", "needs task.format=datasets (task=hf_dataset)")
        if self.formatter is not None:
            check_target(self.formatter, "task.formatter")
        require_choice(self.gold_model_output, ("logit", "probability"), "task.gold_model_output")
        require(
            bool(self.prompts or self.preferences),
            "task.prompts",
            "or task.preferences must be set (prompts come from one of them)",
        )
        require(
            (self.gold_reward is None) != (self.gold_model is None),
            "task.gold_reward",
            "must be set (package.module:function), or else task.gold_model (a classifier): exactly one judges "
            "evaluation and the simulated annotators",
        )
        if self.gold_reward is not None:
            check_target(self.gold_reward, "task.gold_reward")
        require(0 < self.eval_fraction < 1, "task.eval_fraction", "must be in (0, 1)", self.eval_fraction)
        require(self.max_response_tokens >= 1, "task.max_response_tokens", "must be >= 1", self.max_response_tokens)


class UserTask:
    """The user's data and gold reward, with the interface of the embedded tasks."""

    def __init__(self, cfg: UserTaskConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.max_response_tokens = cfg.max_response_tokens
        self._where: dict[str, str] = {}  # prompt -> the file:line (or data set row) it was first read from
        prefs = self._load("preferences", "preferences")
        eval_prefs = self._load("eval_preferences", "preferences")
        if prefs is not None and eval_prefs is None:
            prefs, eval_prefs = self._hold_out(prefs)
        self.preference_pairs, self.eval_preference_pairs = prefs, eval_prefs

        prompts = self._load("prompts", "prompts")
        eval_prompts = self._load("eval_prompts", "prompts")
        if prompts is None:  # prompts of the preference pairs
            prompts, eval_prompts = prefs, eval_prompts or eval_prefs
        if eval_prompts is None:
            prompts, eval_prompts = self._hold_out(prompts)
        self.train_prompts = [r["prompt"] for r in prompts]
        self.eval_prompts = [r["prompt"] for r in eval_prompts]

        sft = self._load("sft", "sft")
        self.sft_examples = [(r["prompt"], r["completion"]) for r in sft] if sft else []
        self.sft_texts = [p + c for p, c in self.sft_examples]
        # what a tokenizer trained here (the tiny model) must cover
        self.tokenizer_texts = (
            self.sft_texts
            + self.train_prompts
            + [r[k] for r in (prefs or []) for k in ("prompt", "chosen", "rejected")]
        )
        held_sft = self.sft_texts[-256:] if self.sft_texts else []
        self.heldout_texts = held_sft or self.eval_prompts[:256]
        self._probe_gold()

    def _probe_gold(self) -> None:
        """Call the gold reward once on a few responses of the data, so that a function that
        raises or returns the wrong thing stops the run before any training."""
        samples = [(p, c) for p, c in self.sft_examples[:4]]
        samples += [(r["prompt"], r["chosen"]) for r in (self.preference_pairs or [])[:4]]
        if not samples:
            samples = [(p, "") for p in self.train_prompts[:4]]
        self.gold_reward([p for p, _ in samples], [r for _, r in samples])

    def where(self, prompt: str) -> str | None:
        """Where ``prompt`` was read: ``file:line``, or the data set, split and row."""
        return self._where.get(prompt)

    def _load(self, key: str, kind: str):
        rows = self._read(key, kind)
        if rows is None:
            return None
        source = getattr(self.cfg, key)
        if self.cfg.format == "jsonl":
            places = [f"{source}:{n}" for n in jsonl_lines(source)]
        else:
            places = [f"task.{key} ({source}) row {i + 1}" for i in range(len(rows))]
        for row, place in zip(rows, places):
            self._where.setdefault(row["prompt"], place)
        return rows

    def _read(self, key: str, kind: str):
        source = getattr(self.cfg, key)
        if source is None:
            return None
        cfg = self.cfg
        if cfg.format == "jsonl":
            return load_jsonl(source, kind, f"task.{key}")
        dataset, config_name = cfg.dataset, cfg.dataset_config
        if kind == "preferences" and cfg.preference_dataset is not None:
            dataset, config_name = cfg.preference_dataset, cfg.preference_dataset_config
        formatter = None
        if cfg.formatter is not None:
            formatter = partial(load_callable(cfg.formatter, "task.formatter"), **cfg.formatter_args)
        return load_hf_split(
            dataset, source, kind, vars(cfg.columns), config_name, formatter, f"formatter {cfg.formatter}"
        )

    def _hold_out(self, rows: list[dict]) -> tuple[list[dict], list[dict]]:
        """A seeded split: (train rows, the held-out ``eval_fraction``)."""
        order = list(range(len(rows)))
        random.Random(self.cfg.split_seed).shuffle(order)
        n_eval = max(1, round(self.cfg.eval_fraction * len(rows)))
        if n_eval >= len(rows):
            raise DataError(
                f"{len(rows)} row(s) are too few to hold out an evaluation split; "
                "add rows or give the eval split explicitly (task.eval_prompts / task.eval_preferences)"
            )
        return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]

    def fingerprint(self) -> str:
        """A hash of the data itself, so that cached stages notice an edited file."""
        import hashlib
        import json

        rows = (
            self.train_prompts,
            self.eval_prompts,
            self.sft_examples,
            self.preference_pairs,
            self.eval_preference_pairs,
        )
        return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]

    def probe_items(self) -> list[dict]:
        """Multiple-choice probe from the held-out preference pairs: the chosen response vs the rejected."""
        return [
            {"query": r["prompt"], "choices": [r["chosen"], r["rejected"]], "gold": 0}
            for r in (self.eval_preference_pairs or [])[:256]
        ]

    def gold_reward(self, prompts: list[str], responses: list[str]) -> list[float]:
        if self.cfg.gold_model is not None:
            judge = _judge(self.cfg.gold_model, self.cfg.gold_model_label, self.cfg.gold_model_output)
            return judge(prompts, responses)
        return call_reward(self.cfg.gold_reward, "task.gold_reward", prompts, responses)


@lru_cache(maxsize=2)
def _judge(name_or_path: str, label_index: int, output: str = "logit"):
    return ClassifierJudge(name_or_path, label_index, output=output)
