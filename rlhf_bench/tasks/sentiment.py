"""The embedded ``sentiment`` task: continue a movie review so that it reads positive.

The offline analogue of the IMDb positive-sentiment task of Ziegler et al. 2019 and of
the DPO paper (Rafailov et al. 2023, Sec. 6.1): prompts are review openings, the policy
writes the rest, and the gold reward is a real sentiment scorer, VADER (Hutto & Gilbert
2014, the ``vaderSentiment`` package, which ships its lexicon), applied to the whole
review. Its compound score lies in [-1, 1].

The corpus is generated from templates, deterministically from ``data_seed``: each review
draws a latent sentiment s ~ U(-1, 1) and picks positive words with probability (1+s)/2,
so the SFT policy learns reviews of every sentiment and has room to improve. Openings are
neutral (VADER scores them 0) and the word lists were checked against VADER's lexicon:
no "neutral" word carries a score (VADER rates "strange", "serious" negative and "ok",
"fine" positive, so those are left out).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlhf_bench.errors import require

OPENINGS = [
    "the movie was",
    "this film is",
    "i thought the film was",
    "the acting in this movie was",
    "the story of this film is",
    "i watched this movie last night and it was",
    "my friends said the plot was",
    "the ending of the film was",
    "the soundtrack was",
    "i saw this film with my family . it was",
    "the cast of this movie is",
    "the script was",
    "this is a movie that is",
    "the director made a film that is",
    "after two hours i can say it was",
    "the characters in this story were",
]
SUBJECTS = [
    "the movie",
    "the film",
    "the story",
    "the plot",
    "the acting",
    "the cast",
    "the ending",
    "the soundtrack",
    "the script",
    "the dialogue",
    "the director",
    "the characters",
    "the music",
]
POSITIVE = [
    "great",
    "wonderful",
    "brilliant",
    "excellent",
    "amazing",
    "beautiful",
    "fun",
    "lovely",
    "perfect",
    "charming",
    "enjoyable",
    "delightful",
    "superb",
    "funny",
    "good",
    "nice",
]
NEGATIVE = [
    "terrible",
    "awful",
    "boring",
    "bad",
    "horrible",
    "dull",
    "weak",
    "ugly",
    "painful",
    "stupid",
    "poor",
    "disappointing",
    "annoying",
    "messy",
    "lame",
]
NEUTRAL = [
    "long",
    "short",
    "slow",
    "loud",
    "simple",
    "different",
    "predictable",
    "quiet",
    "dark",
    "familiar",
    "unusual",
    "modern",
    "old",
]
INTENSIFIERS = ["very", "really", "so", "quite", "extremely"]
NOUNS = ["movie", "film", "story", "experience", "evening"]


@dataclass
class SentimentTaskConfig:
    _target_: str = "rlhf_bench.tasks.sentiment.SentimentTask"
    name: str = "sentiment"
    data_seed: int = 1234
    n_sft: int = 20000  # reviews in the SFT corpus
    n_train_prompts: int = 4096  # prompts for RL and preference sampling
    n_eval_prompts: int = 1024  # held-out prompts for evaluation
    max_response_tokens: int = 24

    def __post_init__(self) -> None:
        require(self.n_sft >= 1, "task.n_sft", "must be >= 1", self.n_sft)
        require(self.n_train_prompts >= 1, "task.n_train_prompts", "must be >= 1", self.n_train_prompts)
        require(self.n_eval_prompts >= 1, "task.n_eval_prompts", "must be >= 1", self.n_eval_prompts)
        require(
            self.max_response_tokens >= 1,
            "task.max_response_tokens",
            "must be >= 1",
            self.max_response_tokens,
        )


class SentimentTask:
    """Data (SFT texts, train and eval prompts) and the gold reward of the sentiment task."""

    def __init__(self, cfg: SentimentTaskConfig):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.cfg = cfg
        self.name = cfg.name
        self.max_response_tokens = cfg.max_response_tokens
        self._vader = SentimentIntensityAnalyzer()
        rng = random.Random(cfg.data_seed)
        self.sft_texts = [review(rng) for _ in range(cfg.n_sft)]
        self.train_prompts = [rng.choice(OPENINGS) for _ in range(cfg.n_train_prompts)]
        # Held-out prompts use their own stream so that changing the training sizes leaves them be.
        eval_rng = random.Random(cfg.data_seed + 1)
        self.eval_prompts = [eval_rng.choice(OPENINGS) for _ in range(cfg.n_eval_prompts)]
        # Held-out text for the lm-eval suite: reviews the SFT policy never trained on.
        self.heldout_texts = [review(eval_rng) for _ in range(256)]

    def probe_items(self) -> list[dict]:
        """Multiple-choice probe of what SFT learned: a review's real ending vs its words shuffled."""
        rng = random.Random(self.cfg.data_seed + 2)
        items = []
        for text in self.heldout_texts:
            opening = next(o for o in sorted(OPENINGS, key=len, reverse=True) if text.startswith(o))
            ending = text[len(opening) :]
            words = ending.split()
            shuffled = words[:]
            while len(set(words)) > 1 and shuffled == words:
                rng.shuffle(shuffled)
            items.append({"query": opening, "choices": [ending, " " + " ".join(shuffled)], "gold": 0})
        return items

    def gold_reward(self, prompts: list[str], responses: list[str]) -> list[float]:
        """VADER compound score of each full review (prompt followed by response), in [-1, 1]."""
        return [self._vader.polarity_scores(p + r)["compound"] for p, r in zip(prompts, responses)]


def _adjective(rng: random.Random, sentiment: float) -> str:
    if rng.random() < 0.15:
        return rng.choice(NEUTRAL)
    word = rng.choice(POSITIVE) if rng.random() < (1 + sentiment) / 2 else rng.choice(NEGATIVE)
    if rng.random() < 0.25:
        word = f"{rng.choice(INTENSIFIERS)} {word}"
    return word


def _clause(rng: random.Random, sentiment: float) -> str:
    adj = _adjective(rng, sentiment)
    form = rng.randrange(5)
    if form == 0:
        return f"{rng.choice(SUBJECTS)} was {adj}"
    if form == 1:
        return f"{rng.choice(SUBJECTS)} felt {adj} and {_adjective(rng, sentiment)}"
    if form == 2:
        return f"i found {rng.choice(SUBJECTS)} {adj}"
    if form == 3:
        return f"overall a {adj} {rng.choice(NOUNS)}"
    return f"{rng.choice(SUBJECTS)} is {adj} but {rng.choice(SUBJECTS)} is {_adjective(rng, sentiment)}"


def review(rng: random.Random) -> str:
    """One templated review: a neutral opening, then 1-3 clauses of a random sentiment."""
    sentiment = rng.uniform(-1.0, 1.0)
    first = _adjective(rng, sentiment)
    tail = " . ".join(_clause(rng, sentiment) for _ in range(rng.randrange(0, 3)))
    text = f"{rng.choice(OPENINGS)} {first}"
    if rng.random() < 0.3:
        text += f" and {_adjective(rng, sentiment)}"
    return f"{text} . {tail} ." if tail else f"{text} ."
