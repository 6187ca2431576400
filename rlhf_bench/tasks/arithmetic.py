"""The embedded ``arithmetic`` task: a verifiable reward, as reasoning-RL is benchmarked.

Prompts are additions ``"17+5="``; the policy writes the answer. The gold reward is 1 when
the answer is exactly right and 0 otherwise (a rule, not a model), the analogue of the
answer-checking rewards of GSM8K/MATH RL (Shao et al. 2024; DeepSeek-R1). The SFT corpus is
deliberately imperfect: a fraction ``noise`` of the demonstrations carry a nearby wrong
answer, so the SFT policy is right only part of the time and RL has something to fix.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from rlhf_bench.errors import require

_ANSWER = re.compile(r"^\s*(-?\d+)\s*$")


@dataclass
class ArithmeticTaskConfig:
    _target_: str = "rlhf_bench.tasks.arithmetic.ArithmeticTask"
    name: str = "arithmetic"
    data_seed: int = 1234
    max_operand: int = 9  # a, b in [0, max_operand]: single-digit additions
    noise: float = 0.5  # fraction of SFT demonstrations with a wrong answer (off by 1..3)
    n_sft: int = 20000
    n_train_prompts: int = 4096
    n_eval_prompts: int = 1024
    max_response_tokens: int = 6

    def __post_init__(self) -> None:
        require(self.max_operand >= 1, "task.max_operand", "must be >= 1", self.max_operand)
        require(0 <= self.noise < 1, "task.noise", "must be in [0, 1)", self.noise)
        require(self.n_sft >= 1, "task.n_sft", "must be >= 1", self.n_sft)
        require(self.max_response_tokens >= 1, "task.max_response_tokens", "must be >= 1", self.max_response_tokens)


class ArithmeticTask:
    """Data and the verifiable gold reward of the arithmetic task."""

    verifiable = True  # the gold reward is 1 for a right answer, 0 for a wrong one

    def __init__(self, cfg: ArithmeticTaskConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.max_response_tokens = cfg.max_response_tokens
        rng = random.Random(cfg.data_seed)
        self.sft_texts = []
        for _ in range(cfg.n_sft):
            a, b = rng.randint(0, cfg.max_operand), rng.randint(0, cfg.max_operand)
            answer = a + b
            if rng.random() < cfg.noise:
                answer += rng.choice([-3, -2, -1, 1, 2, 3])
            self.sft_texts.append(f"{a}+{b}={answer}")
        self.train_prompts = [self._prompt(rng) for _ in range(cfg.n_train_prompts)]
        eval_rng = random.Random(cfg.data_seed + 1)
        self.eval_prompts = [self._prompt(eval_rng) for _ in range(cfg.n_eval_prompts)]
        # Held-out, correct equations for the lm-eval suite's perplexity and probe.
        self.heldout_texts = [f"{p}{_sum(p)}" for p in (self._prompt(eval_rng) for _ in range(256))]

    def probe_items(self) -> list[dict]:
        """Multiple-choice probe: the right sum vs a sum off by one to three."""
        rng = random.Random(self.cfg.data_seed + 2)
        items = []
        for text in self.heldout_texts:
            prompt, answer = text.split("=")
            wrong = int(answer) + rng.choice([-3, -2, -1, 1, 2, 3])
            items.append({"query": prompt + "=", "choices": [answer, str(wrong)], "gold": 0})
        return items

    def _prompt(self, rng: random.Random) -> str:
        return f"{rng.randint(0, self.cfg.max_operand)}+{rng.randint(0, self.cfg.max_operand)}="

    def gold_reward(self, prompts: list[str], responses: list[str]) -> list[float]:
        """1.0 where the response is exactly the sum (surrounding spaces allowed), else 0.0."""
        return [float(_is_correct(p, r)) for p, r in zip(prompts, responses)]


def _sum(prompt: str) -> int:
    a, b = prompt.rstrip("=").split("+")
    return int(a) + int(b)


def _is_correct(prompt: str, response: str) -> bool:
    match = _ANSWER.match(response)
    if match is None:
        return False
    return int(match.group(1)) == _sum(prompt)
