"""An example reward written as code, for the README's "Use your own data and model".

``politeness(prompts, responses) -> list[float]``: a support agent's reply earns credit for
polite phrases and for addressing the customer's problem, up to a point — replies longer than
``MAX_WORDS`` words lose credit per extra word, so that a proxy that learns "more polite words
is better" can be over-optimised against it.
"""

import re

POLITE = ("sorry", "thanks", "thank you", "please", "happy to help", "glad")
RUDE = ("whatever", "not my problem", "calm down", "read the manual")
MAX_WORDS = 14


def politeness(prompts: list[str], responses: list[str]) -> list[float]:
    scores = []
    for prompt, response in zip(prompts, responses):
        text = response.lower()
        polite = min(2, sum(phrase in text for phrase in POLITE))
        rude = sum(phrase in text for phrase in RUDE)
        topic = re.search(r"customer: my (\w+)", prompt.lower())
        on_topic = 1.0 if topic and topic.group(1) in text else 0.0
        words = len(text.split())
        scores.append(0.5 * polite + 0.5 * on_topic - 1.0 * rude - 0.1 * max(0, words - MAX_WORDS))
    return scores
