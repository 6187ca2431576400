"""Formatters for the published setups' data sets: each makes our rows of one raw record.

    formatter(record, kind, **task.formatter_args) -> row | list of rows | None (None: skip it)

``kind`` is what the task is loading: ``prompts``, ``sft`` or ``preferences``. A formatter is
named by ``task.formatter=rlhf_bench.tasks.formats:<name>`` (``task=hf_dataset``) and replaces the
column mapping; the experiment files of the full-scale reproductions in ``conf/experiment/``
use these. A record they cannot read is a DataError naming the columns it needs.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Any

from rlhf_bench.tasks.data import DataError

# Stiennon et al. 2020's query format, as Huang et al. 2024 (N+ details, Sec. 3) write it.
TLDR_TEMPLATE = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
EOS_TEXT = "<|endoftext|>"
OPENAI_PAD_TOKEN_ID = 50259  # the pad token of openai/lm-human-preferences' GPT-2 encoding


@lru_cache(maxsize=4)
def _tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def _strip_eos(text: str) -> str:
    """The N+ preprocessed sets end every completion with the text "<|endoftext|>"; our SFT and
    pair encoding append the tokenizer's EOS token themselves, so it would be there twice."""
    return text[: -len(EOS_TEXT)] if text.endswith(EOS_TEXT) else text


def _need(record: dict[str, Any], names: tuple[str, ...], what: str) -> None:
    missing = [n for n in names if record.get(n) is None]
    if missing:
        raise DataError(
            f"{what} needs column(s) {', '.join(map(repr, missing))}; this record has {', '.join(record) or 'none'}"
        )


def tldr(record: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """Reddit TL;DR (Stiennon et al. 2020) as the N+ details train on it (Huang et al. 2024).

    Two shapes of record are read:
      - the N+ preprocessed sets (``vwxyzjn/summarize_from_feedback_tldr_3_filtered_oai_preprocessing_*``
        and ``vwxyzjn/summarize_from_feedback_oai_preprocessing_*``): ``query`` is the prompt already
        formatted and truncated to 512 Pythia tokens the OpenAI way; ``reference_response``,
        ``chosen`` and ``rejected`` lose their trailing "<|endoftext|>" text;
      - the raw sets (``vwxyzjn/summarize_from_feedback_tldr_3_filtered``: subreddit, title, post,
        summary; ``openai/summarize_from_feedback`` ``comparisons``: info, summaries, choice): the
        prompt is ``TLDR_TEMPLATE`` filled in, not truncated; the completion is " " + summary.
    Comparisons of CNN/DM articles (no post) are skipped, as the N+ details keep them apart.
    """
    info = record.get("info") if isinstance(record.get("info"), dict) else record
    if "query" in record and record["query"] is not None:
        prompt = record["query"]
    elif info.get("post") is None and info.get("article") is not None:
        return None  # a CNN/DM comparison
    else:
        _need(info, ("subreddit", "title", "post"), "a raw TL;DR record (no 'query' column)")
        prompt = TLDR_TEMPLATE.format(subreddit=info["subreddit"], title=info["title"], post=info["post"])
    if kind == "prompts":
        return {"prompt": prompt}
    if kind == "sft":
        if record.get("reference_response") is not None:
            return {"prompt": prompt, "completion": _strip_eos(record["reference_response"])}
        _need(record, ("summary",), "a TL;DR SFT record")
        return {"prompt": prompt, "completion": " " + record["summary"]}
    if record.get("chosen") is not None and record.get("rejected") is not None:
        return {"prompt": prompt, "chosen": _strip_eos(record["chosen"]), "rejected": _strip_eos(record["rejected"])}
    _need(record, ("summaries", "choice"), "a TL;DR comparison (no 'chosen'/'rejected' columns)")
    choice = int(record["choice"])
    texts = [s["text"] for s in record["summaries"]]
    return {"prompt": prompt, "chosen": texts[choice], "rejected": texts[1 - choice]}


def imdb(
    record: dict[str, Any],
    kind: str,
    tokenizer: str = "gpt2-large",
    min_prompt_tokens: int = 2,
    max_prompt_tokens: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """IMDb reviews (``stanfordnlp/imdb``: text, label) for DPO's controlled sentiment generation
    (Rafailov et al. 2023, Sec. 6.1 and App. C.1: "prefixes from the IMDB dataset of length 2-8
    tokens"; SFT on IMDb reviews).

    prompts: the first n tokens of the review (``tokenizer``: the policy's), n drawn uniformly from
      [min_prompt_tokens, max_prompt_tokens] by a generator seeded with the review, so a review always
      gives the same prompt;
    sft: the whole review as the completion of an empty prompt (plain language modelling on reviews);
    preferences: IMDb has none; the pairs are sampled from the SFT policy and labelled by the judge.
    """
    _need(record, ("text",), "an IMDb record")
    text = record["text"]
    if kind == "sft":
        return {"prompt": "", "completion": text}
    if kind != "prompts":
        raise DataError("IMDb holds reviews, not preference pairs; leave task.preferences unset (pairs are sampled)")
    if not 1 <= min_prompt_tokens <= max_prompt_tokens:
        raise DataError(
            f"imdb: need 1 <= min_prompt_tokens <= max_prompt_tokens, got {min_prompt_tokens}, {max_prompt_tokens}"
        )
    n = random.Random(f"{seed}:{text}").randint(min_prompt_tokens, max_prompt_tokens)
    tok = _tokenizer(tokenizer)
    ids = tok(text[:512], add_special_tokens=False)["input_ids"][:n]  # a prefix's tokens need no more text
    return {"prompt": tok.decode(ids)}


def lm_human_preferences(
    record: dict[str, Any],
    kind: str,
    tokenizer: str = "gpt2",
    query_length: int = 64,
    start_text: str | None = ".",
    end_text: str | None = ".",
    pad_token_id: int = OPENAI_PAD_TOKEN_ID,
) -> dict[str, Any] | list[dict[str, Any]] | None:
    """Ziegler et al. 2019's stylistic continuation data as ``openai/lm-human-preferences`` reads it,
    reproduced by Huang et al. 2023 (``vwxyzjn/lm-human-preference-details``).

    prompts (BookCorpus, column ``text``): its GPT-2 tokens after the first ``start_text`` token
      (records without one are skipped), cut to ``query_length``, then to the last ``end_text``
      token (records without one are skipped), decoded: ``MyDataset`` of the details' code;
    preferences (the human labels, e.g. ``vwxyzjn/lm-human-preferences`` sentiment/offline_5k.json:
      ``query``, ``sample0``..``sample3`` as GPT-2 token ids, ``best``): decoded without OpenAI's pad
      token; the best sample against each of the other three, so one label gives 3 pairs. Their
      responses are 24 tokens cut without EOS, so the pairs say so (``chosen_eos`` false): the reward
      model scores them as it will score the policy's responses.
    """
    tok = _tokenizer(tokenizer)
    if kind == "prompts":
        _need(record, ("text",), "a BookCorpus record")
        tokens = tok(record["text"], add_special_tokens=False)["input_ids"]
        vocab = tok.get_vocab()
        if start_text:
            start = vocab[start_text]
            if start not in tokens:
                return None
            first = tokens.index(start) + 1
            if first < len(tokens):
                tokens = tokens[first:]
        tokens = tokens[:query_length]
        if end_text:
            end = vocab[end_text]
            if end not in tokens:
                return None
            tokens = tokens[: len(tokens) - tokens[::-1].index(end)]
        return {"prompt": tok.decode(tokens)}
    if kind != "preferences":
        raise DataError(
            "lm-human-preferences has no demonstrations: the policy starts from the pretrained model (sft.steps=0)"
        )
    samples = [f"sample{i}" for i in range(4)]
    _need(record, ("query", "best", *samples), "an lm-human-preferences label")

    def text(ids) -> str:
        return tok.decode([int(t) for t in ids if int(t) != pad_token_id])

    best = int(record["best"])
    if not 0 <= best < len(samples):
        raise DataError(f"'best' must be 0..3, got {best}")
    query, responses = text(record["query"]), [text(record[s]) for s in samples]
    return [
        {"prompt": query, "chosen": responses[best], "rejected": r, "chosen_eos": False, "rejected_eos": False}
        for i, r in enumerate(responses)
        if i != best
    ]
