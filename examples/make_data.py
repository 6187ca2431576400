"""Writes examples/data/*.jsonl (committed; re-run to regenerate): a tiny customer-support task."""

import json
import random
from pathlib import Path

from reward import politeness

THINGS = ["order", "parcel", "refund", "invoice", "account", "password", "delivery", "subscription"]
PROBLEMS = ["is late", "is missing", "is wrong", "did not arrive", "was charged twice", "does not work"]
OPENERS = ["sorry about that", "thanks for telling us", "i am sorry", "happy to help", "whatever", "calm down"]
ACTIONS = [
    "we will fix your {t} today",
    "your {t} is on its way",
    "i have reset your {t}",
    "we refunded your {t}",
    "read the manual",
    "not my problem",
    "please send us your {t} number",
    "we are checking your {t}",
]
CLOSERS = ["", " thanks", " please write again if needed", " glad to help", " have a nice day"]


def prompt(rng):
    return f"customer: my {rng.choice(THINGS)} {rng.choice(PROBLEMS)} . agent:"


def reply(rng, p):
    thing = p.split()[2]
    t = thing if rng.random() < 0.7 else rng.choice(THINGS)
    return f" {rng.choice(OPENERS)} , {rng.choice(ACTIONS).format(t=t)} .{rng.choice(CLOSERS)}"


def main():
    rng = random.Random(0)
    out = Path(__file__).parent / "data"
    out.mkdir(exist_ok=True)

    def write(name, rows):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("prompts.jsonl", [{"prompt": prompt(rng)} for _ in range(400)])
    write("sft.jsonl", [{"prompt": p, "completion": reply(rng, p)} for p in (prompt(rng) for _ in range(1500))])
    pairs = []
    for _ in range(600):
        p = prompt(rng)
        a, b = reply(rng, p), reply(rng, p)
        if a == b:  # the same reply twice states no preference (the data loader refuses such a pair)
            continue
        ra, rb = politeness([p, p], [a, b])
        chosen, rejected = (a, b) if ra >= rb else (b, a)
        pairs.append({"prompt": p, "chosen": chosen, "rejected": rejected})
    write("preferences.jsonl", pairs)


if __name__ == "__main__":
    main()
