"""The embedded ``chains`` task: arithmetic chains with a verifiable answer, for the policy-gradient family.

A prompt is a chain of additions and subtractions, ``"7+12-5+3="``; the response may show its work
by folding the chain one operation at a time, or give the answer directly:

    7+12-5+3=   ->   19-5+3=14+3=17        (worked: every partial result written out)
                ->   17                      (direct)

The gold reward is 1 when the number after the last ``=`` (the whole response if there is none) is
the chain's value and the response is well formed (only digits, + and -, and =), else 0: an answer
check, as in GSM8K/MATH RL. What makes the variants of GRPO differ here:
  - difficulty varies (2 to ``max_terms`` terms, operands up to ``max_operand``): some groups are all
    right, some all wrong (dynamic sampling has groups to drop);
  - right answers vary in length (direct or worked, 1 to ~15 tokens) and a response that does not stop
    runs to ``max_response_tokens``: wrong answers can grow long (Dr. GRPO's length argument);
  - the SFT data is deliberately imperfect: a fraction ``noise`` (default 0.5) of the demonstrations
    carry one slip (a partial result off by 1..3, carried on), so the SFT policy solves some chains but
    not most (28% with the CPU model of ``experiment=chains``), while the right answer stays the most
    likely one: RL has something to sharpen (GRPO: 42-47% after 100 steps).
Generated offline from ``data_seed``; the checker is deterministic.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from rlhf_bench.errors import require

_RESPONSE = re.compile(r"^\s*(?:[0-9+\-]+=)*(-?\d+)\s*$")
_TERM = re.compile(r"[+-]?\d+")


@dataclass
class ChainsTaskConfig:
    _target_: str = "rlhf_bench.tasks.chains.ChainsTask"
    name: str = "chains"
    data_seed: int = 1234
    min_terms: int = 2
    max_terms: int = 3
    max_operand: int = 5  # operands in [0, max_operand]
    worked: float = 0.5  # fraction of SFT demonstrations that write out the partial results
    noise: float = 0.5  # fraction of SFT demonstrations with one slip carried to the answer
    n_sft: int = 20000
    n_train_prompts: int = 4096
    n_eval_prompts: int = 1024
    max_response_tokens: int = 24

    def __post_init__(self) -> None:
        require(self.min_terms >= 2, "task.min_terms", "must be >= 2", self.min_terms)
        require(self.max_terms >= self.min_terms, "task.max_terms", "must be >= task.min_terms", self.max_terms)
        require(self.max_operand >= 1, "task.max_operand", "must be >= 1", self.max_operand)
        require(0 <= self.worked <= 1, "task.worked", "must be in [0, 1]", self.worked)
        require(0 <= self.noise < 1, "task.noise", "must be in [0, 1)", self.noise)
        require(self.n_sft >= 1, "task.n_sft", "must be >= 1", self.n_sft)
        require(self.max_response_tokens >= 1, "task.max_response_tokens", "must be >= 1", self.max_response_tokens)


def chain_value(prompt: str) -> int:
    """The value of ``"a+b-c="``: the sum of its signed terms."""
    return sum(int(t) for t in _TERM.findall(prompt.rstrip("=")))


def worked_solution(prompt: str, slip: int = 0, slip_at: int = 0) -> str:
    """The chain folded one operation at a time, ``"19-5+3=14+3=17"``; ``slip`` is added to the
    partial result number ``slip_at`` (0-based) and carried on."""
    terms = [int(t) for t in _TERM.findall(prompt.rstrip("="))]
    steps, total = [], terms[0]
    for k, term in enumerate(terms[1:]):
        total += term + (slip if k == slip_at else 0)
        rest = "".join(f"{t:+d}" for t in terms[k + 2 :])
        steps.append(f"{total}{rest}")
    return "=".join(steps)


def answer_of(response: str) -> int | None:
    """The number after the last ``=`` of a well-formed response, else None."""
    match = _RESPONSE.match(response)
    return int(match.group(1)) if match else None


class ChainsTask:
    """Data and the verifiable gold reward of the chains task."""

    verifiable = True  # the gold reward is 1 for a right answer, 0 for a wrong one

    def __init__(self, cfg: ChainsTaskConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.max_response_tokens = cfg.max_response_tokens
        rng = random.Random(cfg.data_seed)
        # (prompt, completion): SFT tokenizes them apart, as the policy will see them (a prompt ends
        # with "=", and a tokenizer trained on the joined text merges "=-" in "8-9=-1")
        self.sft_examples = [self._demonstration(rng) for _ in range(cfg.n_sft)]
        self.sft_texts = [p + c for p, c in self.sft_examples]
        self.train_prompts = [self._prompt(rng) for _ in range(cfg.n_train_prompts)]
        eval_rng = random.Random(cfg.data_seed + 1)
        self.eval_prompts = [self._prompt(eval_rng) for _ in range(cfg.n_eval_prompts)]
        # Held-out, correct worked solutions for the lm-eval suite's perplexity and probe.
        self.heldout_texts = [p + worked_solution(p) for p in (self._prompt(eval_rng) for _ in range(256))]

    def _prompt(self, rng: random.Random) -> str:
        n = rng.randint(self.cfg.min_terms, self.cfg.max_terms)
        terms = [str(rng.randint(0, self.cfg.max_operand)) for _ in range(n)]
        return terms[0] + "".join(rng.choice("+-") + t for t in terms[1:]) + "="

    def _demonstration(self, rng: random.Random) -> tuple[str, str]:
        prompt = self._prompt(rng)
        n_ops = len(_TERM.findall(prompt)) - 1
        slip = rng.choice([-3, -2, -1, 1, 2, 3]) if rng.random() < self.cfg.noise else 0
        solution = worked_solution(prompt, slip, rng.randrange(n_ops))
        if rng.random() >= self.cfg.worked:
            solution = solution.rpartition("=")[2]  # the direct answer (the slip carried in it)
        return prompt, solution

    def probe_items(self) -> list[dict]:
        """Multiple-choice probe: the right final answer vs one off by one to three."""
        rng = random.Random(self.cfg.data_seed + 2)
        items = []
        for text in self.heldout_texts:
            prompt = text.partition("=")[0] + "="
            answer = chain_value(prompt)
            wrong = answer + rng.choice([-3, -2, -1, 1, 2, 3])
            items.append({"query": prompt, "choices": [str(answer), str(wrong)], "gold": 0})
        return items

    def gold_reward(self, prompts: list[str], responses: list[str]) -> list[float]:
        """1.0 where the response's final answer is the chain's value, else 0.0."""
        return [float(answer_of(r) == chain_value(p)) for p, r in zip(prompts, responses)]
