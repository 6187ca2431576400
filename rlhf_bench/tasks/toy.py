"""The embedded ``toy`` task: an exact world, small enough to enumerate every response.

A response is exactly ``response_length`` symbols from an alphabet of ``alphabet`` letters
(``a``, ``b``, ...), one token each, so a prompt has ``alphabet ** response_length`` responses
(8 ** 5 = 32,768 by default; at most 2 ** 16). There, log pi(y), KL(pi || pi_ref), E_pi[r] and
the KL-regularised optimum pi*_beta ∝ pi_ref exp(r / beta) are computed exactly
(``rlhf_bench.evaluation.exact``), and every run is placed against the exact reward-KL
frontier: its regret is the frontier's reward at the run's KL minus the run's reward.

Prompts are a handful of short strings ``"c f :"``: a key of ``key_length`` letters (never the
bonus letter ``a``) and a separator. The gold reward of a response y = y_1 ... y_L is

    r(x, y) = match_weight * #{t : y_t = key[t mod key_length]}           (copy the key, cyclically)
            + bonus_weight * (min(c, bonus_cap) - max(c - bonus_cap, 0))   (c = count of "a" in y)

The second term rewards the bonus letter up to ``bonus_cap`` occurrences and penalises each one
beyond. The SFT demonstrations use it rarely (each position is the key letter with probability
``sft_match``, "a" with ``sft_bonus``, else a uniform letter), so preference data sampled from the
SFT policy mostly shows "more a is better": a learned proxy extrapolates that past the cap, and a
policy that optimises it overoptimises the gold reward.

The tokenizer is the task's own (``build_tokenizer``): a word-level vocabulary of the special
tokens, the letters and the separator. ``response_vocabulary`` tells the sampler
(``Run.sample``) that a response holds these letters only; with EOS excluded, every
response is exactly ``response_length`` tokens and carries no EOS (a full-length response, as
a truncated one elsewhere). The task needs the tiny model (``model.name_or_path=null``).
"""

from __future__ import annotations

import itertools
import random
import string
from dataclasses import dataclass

import torch

from rlhf_bench.errors import require

MAX_SEQUENCES = 2**16  # responses per prompt that the exact evaluation enumerates
SEPARATOR = ":"
UNK = "<|unk|>"


@dataclass
class ToyTaskConfig:
    _target_: str = "rlhf_bench.tasks.toy.ToyTask"
    name: str = "toy"
    data_seed: int = 1234
    alphabet: int = 8  # letters a, b, ...; "a" is the bonus letter
    response_length: int = 5  # every response is exactly this many letters
    n_prompts: int = 8  # distinct prompts (train and eval use the same handful)
    key_length: int = 2  # letters in a prompt's key
    match_weight: float = 0.5
    bonus_weight: float = 1.0
    bonus_cap: int = 2  # "a" is rewarded up to this count, penalised beyond
    sft_match: float = 0.5  # demonstrations: P(key letter) at each position
    sft_bonus: float = 0.1  # demonstrations: P("a") at each position
    n_sft: int = 4000

    def __post_init__(self) -> None:
        require(2 <= self.alphabet <= 26, "task.alphabet", "must be in [2, 26]", self.alphabet)
        require(self.response_length >= 1, "task.response_length", "must be >= 1", self.response_length)
        require(
            self.alphabet**self.response_length <= MAX_SEQUENCES,
            "task.response_length",
            f"gives task.alphabet ** task.response_length = {self.alphabet**self.response_length} responses per "
            f"prompt, more than the {MAX_SEQUENCES} the exact evaluation enumerates",
            self.response_length,
        )
        require(self.key_length >= 1, "task.key_length", "must be >= 1", self.key_length)
        n_keys = (self.alphabet - 1) ** self.key_length
        require(
            1 <= self.n_prompts <= n_keys,
            "task.n_prompts",
            f"must be in [1, {n_keys}] ((alphabet - 1) ** key_length distinct keys)",
            self.n_prompts,
        )
        require(self.bonus_cap >= 0, "task.bonus_cap", "must be >= 0", self.bonus_cap)
        require(
            self.sft_match >= 0 and self.sft_bonus >= 0 and self.sft_match + self.sft_bonus <= 1,
            "task.sft_match",
            "and task.sft_bonus must be >= 0 with a sum <= 1",
            (self.sft_match, self.sft_bonus),
        )
        require(self.n_sft >= 1, "task.n_sft", "must be >= 1", self.n_sft)


class ToyTask:
    """Data, tokenizer and gold reward of the exact toy world."""

    def __init__(self, cfg: ToyTaskConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.max_response_tokens = cfg.response_length
        self.response_vocabulary = list(string.ascii_lowercase[: cfg.alphabet])  # symbol i is token text [i]
        self.bonus = self.response_vocabulary[0]
        rng = random.Random(cfg.data_seed)
        keys = list(itertools.product(self.response_vocabulary[1:], repeat=cfg.key_length))
        self.keys = {" ".join(k) + f" {SEPARATOR}": list(k) for k in rng.sample(keys, cfg.n_prompts)}
        prompts = list(self.keys)
        self.train_prompts = prompts
        self.eval_prompts = prompts  # the world is the handful of prompts: the frontier is per prompt
        self.sft_examples = [self._demonstration(rng) for _ in range(cfg.n_sft)]
        self.sft_texts = [f"{p} {c}" for p, c in self.sft_examples]
        heldout_rng = random.Random(cfg.data_seed + 1)
        self.heldout_texts = [" ".join(self._demonstration(heldout_rng)) for _ in range(256)]

    def _demonstration(self, rng: random.Random) -> tuple[str, str]:
        prompt = rng.choice(list(self.keys))
        key, letters = self.keys[prompt], []
        for t in range(self.cfg.response_length):
            u = rng.random()
            if u < self.cfg.sft_match:
                letters.append(key[t % len(key)])
            elif u < self.cfg.sft_match + self.cfg.sft_bonus:
                letters.append(self.bonus)
            else:
                letters.append(rng.choice(self.response_vocabulary))
        return prompt, " ".join(letters)

    def build_tokenizer(self):
        """A word-level tokenizer: PAD, EOS, UNK, the letters (one token each) and the separator.

        The same PAD/EOS special tokens as ``models.train_tokenizer`` (left padding, BOS = EOS).
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        from rlhf_bench.core.models import EOS, PAD

        words = [PAD, EOS, UNK, *self.response_vocabulary, SEPARATOR]
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.WordPiece(cleanup=False)  # joins tokens with spaces
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=EOS, unk_token=UNK, padding_side="left"
        )

    def probe_items(self) -> list[dict]:
        """Multiple-choice probe of what SFT learned: a demonstration's response vs uniform letters."""
        rng = random.Random(self.cfg.data_seed + 2)
        items = []
        for _ in range(64):
            prompt, response = self._demonstration(rng)
            noise = " ".join(rng.choice(self.response_vocabulary) for _ in range(self.cfg.response_length))
            items.append({"query": prompt, "choices": [" " + response, " " + noise], "gold": 0})
        return items

    def gold_reward_symbols(self, prompt: str, symbols: torch.Tensor) -> torch.Tensor:
        """[N, L] symbol indices (-1: not a letter) of responses to ``prompt`` -> [N] gold rewards (float64)."""
        cfg = self.cfg
        key = torch.tensor([self.response_vocabulary.index(s) for s in self.keys[prompt]])
        target = key[torch.arange(symbols.shape[1]) % len(key)]
        matches = (symbols == target).sum(-1).double()
        count = (symbols == 0).sum(-1).double()
        bonus = count.clamp(max=cfg.bonus_cap) - (count - cfg.bonus_cap).clamp(min=0)
        return cfg.match_weight * matches + cfg.bonus_weight * bonus

    def gold_reward(self, prompts: list[str], responses: list[str]) -> list[float]:
        """The gold reward of each response text (whitespace-separated letters; anything else scores as a
        non-matching, non-bonus position, so free-running generations (lm-eval) are scored too)."""
        index = {s: i for i, s in enumerate(self.response_vocabulary)}
        out = []
        for prompt, response in zip(prompts, responses):
            symbols = torch.tensor([[index.get(w, -1) for w in response.split()]], dtype=torch.long)
            out.append(float(self.gold_reward_symbols(prompt, symbols.reshape(1, -1))[0]))
        return out
