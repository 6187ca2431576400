"""The full-scale reproduction configs (conf/experiment/{ziegler_sentiment_gpt2, dpo_imdb_gpt2_large,
ppo_tldr_pythia}.yaml): each composes, and each runs its data and model loading path end to end on
a tiny local stand-in with the real data sets' column names (a `save_to_disk` folder or a JSON data
file) and a tiny model in the published model's architecture, swapped in by overrides."""

import json
import math
from pathlib import Path

import pytest
import torch

from rlhf_bench import pipeline
from rlhf_bench.cli import load_config
from rlhf_bench.core import models
from rlhf_bench.errors import ConfigError
from rlhf_bench.tasks import formats
from rlhf_bench.tasks.data import DataError, load_hf_split, read_jsonl

datasets = pytest.importorskip("datasets")

EXPERIMENTS = ["ziegler_sentiment_gpt2", "dpo_imdb_gpt2_large", "ppo_tldr_pythia"]

BOOK_SENTENCES = [
    "it was late. she smiled at him and the night felt warm.",
    "the door was open. he walked in slowly.",
    "mr. smith looked at the sea and sighed.",
    "there was no period in this one",
    "they laughed. it was a good day for all of them.",
    "the rain fell. she took his hand.",
] * 4
REVIEWS = [
    "This movie was a wonderful surprise, the acting was great and the story kept me hooked.",
    "I hated every minute of this film. The plot made no sense and the dialogue was awful.",
    "A quiet, beautiful drama with a strong cast. I would watch it again.",
    "Terrible pacing, bad jokes and a boring ending. Skip it.",
    "One of the best films of the year, funny and moving at the same time.",
    "The director tried hard but the result is a mess of clichés.",
] * 6
POSTS = [
    ("relationships", "My boyfriend forgets my birthday", "We have been together two years and he forgot again."),
    ("personalfinance", "Should I pay off my car loan", "I have savings and a loan at six percent interest."),
    ("AskReddit", "What is a small thing that makes your day", "Mine is a good cup of coffee in the morning."),
    ("tifu", "TIFU by locking myself out", "I went to get the mail and the door shut behind me."),
]
SUMMARIES = ["he forgot my birthday again", "pay the loan or keep savings", "small joys", "locked out of home"]


def _texts() -> list[str]:
    tldr = [formats.TLDR_TEMPLATE.format(subreddit=s, title=t, post=p) for s, t, p in POSTS]
    return BOOK_SENTENCES + REVIEWS + tldr + [" " + s for s in SUMMARIES] + ["this is great . so happy"]


@pytest.fixture(scope="module")
def tok():
    return models.train_tokenizer(_texts(), 400)


def _ids(tok, **extra) -> dict:
    return dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)


@pytest.fixture(scope="module")
def stand_ins(tok, tmp_path_factory):
    """Tiny models saved to folders: a GPT-2 (for gpt2 / gpt2-large), a GPT-NeoX (for Pythia),
    and sequence classifiers standing in for the judges (2 labels; 1 label for a TL;DR RM)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        GPT2Config,
        GPTNeoXConfig,
    )

    root = tmp_path_factory.mktemp("stand_ins")
    gpt2 = GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=32, n_head=2, n_positions=256, **_ids(tok))
    neox = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        **_ids(tok),
    )
    folders = {}
    torch.manual_seed(0)
    for name, cls, config in [
        ("gpt2", AutoModelForCausalLM, gpt2),
        ("pythia", AutoModelForCausalLM, neox),
        ("judge", AutoModelForSequenceClassification, GPT2Config(**{**gpt2.to_dict(), "num_labels": 2})),
        ("tldr_rm", AutoModelForSequenceClassification, GPTNeoXConfig(**{**neox.to_dict(), "num_labels": 1})),
    ]:
        folders[name] = root / name
        models.save_pretrained(cls.from_config(config).eval(), tok, folders[name])
    return folders


def _run(tmp_path, experiment: str, overrides: list[str]) -> dict:
    common = [
        f"experiment={experiment}",
        f"paths.results_dir={tmp_path}/results",
        f"paths.artifacts_dir={tmp_path}/artifacts",
        "device=cpu",
        "logger.mode=disabled",
        "eval.n_prompts=16",
        "eval.batch_size=16",
        "eval.lm_eval.limit=4",
    ]
    return pipeline.run(load_config(common + overrides))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_full_scale_experiment_composes(experiment):
    cfg = load_config([f"experiment={experiment}"])
    assert cfg.task.name == "hf_dataset" and cfg.task.formatter.startswith("rlhf_bench.tasks.formats:")
    assert cfg.model.name_or_path and cfg.task.gold_model  # a hub model and a judge, by name


def test_experiment_settings_follow_the_papers():
    ziegler = load_config(["experiment=ziegler_sentiment_gpt2"])
    m = ziegler.method
    assert ziegler.model.name_or_path == "gpt2" and ziegler.sft.steps == 0
    assert (m.adaptive_kl, m.target_kl, m.kl_horizon, m.kl_coef) == (True, 6.0, 10000, 0.15)
    assert (m.prompts_per_step, m.num_minibatches, m.epochs, m.lr, m.temperature) == (512, 1, 4, 1e-5, 0.7)
    assert m.steps * m.prompts_per_step <= 1_000_000 < (m.steps + 1) * m.prompts_per_step
    assert m.whiten_rewards and m.whiten_advantages and ziegler.task.max_response_tokens == 24

    dpo = load_config(["experiment=dpo_imdb_gpt2_large"])
    assert dpo.model.name_or_path == "gpt2-large" and dpo.task.gold_model == "siebert/sentiment-roberta-large-english"
    assert (dpo.method.beta, dpo.method.batch_size, dpo.method.lr, dpo.method.warmup_steps) == (0.1, 64, 1e-6, 150)
    prefs = dpo.preferences
    assert (prefs.n_train, prefs.samples_per_prompt, prefs.label) == (25_000, 4, "gold")  # 6 pairs a prefix

    tldr = load_config(["experiment=ppo_tldr_pythia"])
    t = tldr.method
    assert tldr.model.name_or_path == "EleutherAI/pythia-1b-deduped"
    assert (t.kl_coef, t.adaptive_kl, t.non_eos_penalty, t.whiten_rewards, t.value_init) == (
        0.05,
        False,
        -1.0,
        False,
        "reward_model",
    )
    assert (t.prompts_per_step, t.lr, tldr.sft.batch_size, tldr.reward_model.batch_size) == (512, 3e-6, 128, 64)
    assert tldr.task.max_response_tokens == 53


# --- the data and model loading path of each, on tiny stand-ins --------------------------------------
def _label(tok, query: str, samples: list[str], best: int) -> dict:
    """An lm-human-preferences label: GPT-2-style token ids, the query left-padded with OpenAI's pad."""
    q = tok(query, add_special_tokens=False)["input_ids"]
    row = {"query": [formats.OPENAI_PAD_TOKEN_ID] * (64 - len(q)) + q, "best": best}
    for i, s in enumerate(samples):
        ids = tok(s, add_special_tokens=False)["input_ids"]
        row[f"sample{i}"] = ids + [formats.OPENAI_PAD_TOKEN_ID] * (24 - len(ids))
    return row


@pytest.fixture(scope="module")
def sentiment_data(tok, tmp_path_factory):
    """BookCorpus (`text`, one split `train`) as a save_to_disk folder, and the human labels
    (sentiment/offline_5k.json: query, sample0..3, best) as a local JSON data file."""
    root = tmp_path_factory.mktemp("sentiment")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": BOOK_SENTENCES})}).save_to_disk(
        str(root / "bookcorpus")
    )
    samples = ["this is great . so happy", "the door was open.", "it was late.", "she took his hand."]
    labels = [_label(tok, BOOK_SENTENCES[i % 6], samples, i % 4) for i in range(20)]
    (root / "offline_5k.json").write_text(json.dumps(labels))
    return root


def test_ziegler_sentiment_runs_on_a_local_stand_in(sentiment_data, stand_ins, tmp_path):
    record = _run(
        tmp_path,
        "ziegler_sentiment_gpt2",
        [
            f"task.dataset={sentiment_data / 'bookcorpus'}",
            "task.prompts=train",
            f"task.preference_dataset={sentiment_data / 'offline_5k.json'}",
            f"task.formatter_args.tokenizer={stand_ins['gpt2']}",
            f"task.gold_model={stand_ins['judge']}",
            f"model.name_or_path={stand_ins['gpt2']}",
            "reward_model.n_normalization_samples=16",
            "method.steps=2",
            "method.prompts_per_step=8",
        ],
    )
    assert record["status"] == "finished"
    assert record["conventions"]["kl_control"] == "adaptive (target 6.0)"
    pairs_dir = Path(record["artifacts"]["preferences"]["path"])
    pairs = read_jsonl(pairs_dir / "train.jsonl") + read_jsonl(pairs_dir / "eval.jsonl")
    assert len(pairs) == 3 * 20  # best of 4: three pairs per label
    assert not any(p["chosen_eos"] or p["rejected_eos"] for p in pairs)  # 24 tokens, cut without EOS
    assert "<|pad|>" not in pairs[0]["prompt"] and pairs[0]["prompt"] in {s for s in BOOK_SENTENCES}
    assert math.isfinite(record["metrics"]["policy"]["kl"]) and math.isfinite(
        record["metrics"]["policy"]["proxy_reward"]
    )


@pytest.fixture(scope="module")
def imdb_data(tmp_path_factory):
    """stanfordnlp/imdb's shape: splits train and test, columns text and label."""
    folder = tmp_path_factory.mktemp("imdb") / "imdb"
    labels = [1, 0, 1, 0, 1, 0] * 6
    data = datasets.Dataset.from_dict({"text": REVIEWS, "label": labels})
    datasets.DatasetDict({"train": data.select(range(24)), "test": data.select(range(24, 36))}).save_to_disk(
        str(folder)
    )
    return folder


def test_dpo_imdb_runs_on_a_local_stand_in(imdb_data, stand_ins, tok, tmp_path):
    record = _run(
        tmp_path,
        "dpo_imdb_gpt2_large",
        [
            f"task.dataset={imdb_data}",
            f"task.formatter_args.tokenizer={stand_ins['gpt2']}",
            f"task.gold_model={stand_ins['judge']}",
            f"model.name_or_path={stand_ins['gpt2']}",
            "task.max_response_tokens=8",
            "sft.steps=4",
            "sft.batch_size=8",
            "preferences.n_train=32",
            "preferences.n_eval=16",
            "method.batch_size=8",
            "method.warmup_steps=2",
        ],
    )
    assert record["status"] == "finished"
    for who in ("sft", "policy"):  # the judge's p(positive)
        assert 0.0 <= record["metrics"][who]["gold_reward"] <= 1.0
    pairs = read_jsonl(Path(record["artifacts"]["preferences"]["path"]) / "train.jsonl")
    # 4 samples of each of 32 prompts, all 6 pairs, the judge's ordering (ties dropped)
    assert 0 < len(pairs) <= 32 * 6 and all(p["chosen_gold"] > p["rejected_gold"] for p in pairs)
    prompt_tokens = {len(tok(p["prompt"], add_special_tokens=False)["input_ids"]) for p in pairs}
    assert prompt_tokens <= set(range(2, 9))


def _tldr_sft_row(i: int) -> dict:
    """A row of the N+ preprocessed SFT set (vwxyzjn/summarize_from_feedback_tldr_3_filtered_oai_preprocessing_*)."""
    subreddit, title, post = POSTS[i % len(POSTS)]
    query = formats.TLDR_TEMPLATE.format(subreddit=subreddit, title=title, post=post)
    reference = f" {SUMMARIES[i % len(SUMMARIES)]}<|endoftext|>"
    return {
        "id": f"t3_{i}",
        "subreddit": subreddit,
        "title": title,
        "post": post,
        "summary": SUMMARIES[i % len(SUMMARIES)],
        "query": query,
        "reference_response": reference,
        "query_reference_response": query.strip() + reference,
    }


def _tldr_pair_row(i: int) -> dict:
    """A row of the N+ preprocessed preference set (vwxyzjn/summarize_from_feedback_oai_preprocessing_*)."""
    subreddit, title, post = POSTS[i % len(POSTS)]
    texts = [" " + SUMMARIES[i % len(SUMMARIES)], " " + SUMMARIES[(i + 1) % len(SUMMARIES)]]
    choice = i % 2
    return {
        "info": {"id": f"t3_{i}", "post": post, "title": title, "subreddit": subreddit, "site": None, "article": None},
        "summaries": [{"text": t, "policy": "sup2", "note": None} for t in texts],
        "choice": choice,
        "batch": "batch3",
        "split": "train",
        "query": formats.TLDR_TEMPLATE.format(subreddit=subreddit, title=title, post=post),
        "chosen": texts[choice] + "<|endoftext|>",
        "rejected": texts[1 - choice] + "<|endoftext|>",
    }


@pytest.fixture(scope="module")
def tldr_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tldr")

    def save(rows_of, name: str, n_train: int, n_val: int) -> Path:
        rows = [rows_of(i) for i in range(n_train + n_val)]
        split = {"train": rows[:n_train], "validation": rows[n_train:]}
        datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in split.items()}).save_to_disk(
            str(root / name)
        )
        return root / name

    return {"sft": save(_tldr_sft_row, "sft", 24, 8), "preferences": save(_tldr_pair_row, "preferences", 32, 16)}


def test_ppo_tldr_runs_on_a_local_stand_in(tldr_data, stand_ins, tok, tmp_path):
    record = _run(
        tmp_path,
        "ppo_tldr_pythia",
        [
            f"task.dataset={tldr_data['sft']}",
            f"task.preference_dataset={tldr_data['preferences']}",
            f"task.gold_model={stand_ins['tldr_rm']}",
            f"model.name_or_path={stand_ins['pythia']}",
            "task.max_response_tokens=8",
            "sft.steps=4",
            "sft.batch_size=8",
            "reward_model.min_gold_accuracy=0",  # the stand-in judge is untrained
            "reward_model.n_normalization_samples=16",
            "method.steps=2",
            "method.prompts_per_step=8",
        ],
    )
    assert record["status"] == "finished"
    assert record["conventions"]["non_eos_penalty"] == -1.0
    pairs = read_jsonl(Path(record["artifacts"]["preferences"]["path"]) / "train.jsonl")
    assert len(pairs) == 32 and not any("<|endoftext|>" in p["chosen"] + p["rejected"] for p in pairs)
    assert pairs[0]["prompt"].startswith("SUBREDDIT: r/") and pairs[0]["prompt"].endswith("TL;DR:")


# --- the formatters ----------------------------------------------------------------------------------
def test_tldr_formatter_reads_preprocessed_and_raw_records():
    row = _tldr_sft_row(0)
    assert formats.tldr(row, "sft") == {"prompt": row["query"], "completion": " he forgot my birthday again"}
    raw = {k: row[k] for k in ("id", "subreddit", "title", "post", "summary")}  # tldr_3_filtered
    assert formats.tldr(raw, "sft") == formats.tldr(row, "sft")
    assert formats.tldr(raw, "prompts") == {"prompt": row["query"]}
    pair = _tldr_pair_row(1)
    comparison = {k: pair[k] for k in ("info", "summaries", "choice")}  # openai/summarize_from_feedback
    assert formats.tldr(comparison, "preferences") == formats.tldr(pair, "preferences")
    assert formats.tldr(pair, "preferences")["chosen"] == " small joys"  # choice 1 of row 1
    cnndm = {**comparison, "info": {"post": None, "article": "(CNN) ...", "title": "t", "subreddit": None}}
    assert formats.tldr(cnndm, "preferences") is None  # CNN/DM comparisons are kept apart
    with pytest.raises(DataError, match=r"needs column\(s\) 'subreddit', 'title'"):
        formats.tldr({"post": "p"}, "prompts")


def test_lm_human_preferences_formatter(tok, stand_ins):
    fmt = {"tokenizer": str(stand_ins["gpt2"])}
    # after the first "." token, up to the last one; records without a "." token are skipped
    assert formats.lm_human_preferences({"text": BOOK_SENTENCES[0]}, "prompts", **fmt) == {
        "prompt": " she smiled at him and the night felt warm."
    }
    assert formats.lm_human_preferences({"text": BOOK_SENTENCES[3]}, "prompts", **fmt) is None
    cut = formats.lm_human_preferences({"text": BOOK_SENTENCES[0]}, "prompts", query_length=4, **fmt)
    assert cut is None or cut["prompt"].endswith(".")  # cut to 4 tokens, then back to a "."
    label = _label(tok, "it was late.", ["a", "b", "c", "d"], best=2)
    pairs = formats.lm_human_preferences(label, "preferences", **fmt)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("c", "a"), ("c", "b"), ("c", "d")]
    assert pairs[0]["prompt"] == "it was late." and pairs[0]["chosen_eos"] is False
    with pytest.raises(DataError, match="'best' must be 0..3"):
        formats.lm_human_preferences({**label, "best": 4}, "preferences", **fmt)
    with pytest.raises(DataError, match="no demonstrations"):
        formats.lm_human_preferences({"text": "x."}, "sft", **fmt)


def test_imdb_formatter_takes_a_seeded_prefix_of_2_to_8_tokens(tok, stand_ins):
    fmt = {"tokenizer": str(stand_ins["gpt2"])}
    prompts = [formats.imdb({"text": r}, "prompts", **fmt)["prompt"] for r in REVIEWS[:6]]
    for review, prompt in zip(REVIEWS, prompts):
        assert review.startswith(prompt)
        assert 2 <= len(tok(prompt, add_special_tokens=False)["input_ids"]) <= 8
    assert prompts == [formats.imdb({"text": r}, "prompts", **fmt)["prompt"] for r in REVIEWS[:6]]  # reproducible
    assert formats.imdb({"text": REVIEWS[0], "label": 1}, "sft", **fmt) == {"prompt": "", "completion": REVIEWS[0]}
    with pytest.raises(DataError, match="not preference pairs"):
        formats.imdb({"text": "x"}, "preferences", **fmt)


# --- the loading machinery the configs use ------------------------------------------------------------
def test_a_data_file_is_a_data_set_and_formatter_errors_name_the_record(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"q": "a", "good": "b", "bad": "c"}, {"q": "d"}]))

    def ours(record, kind):
        if record["good"] is None:  # a JSON data set fills the keys a record lacks with None
            raise ValueError("no chosen response")
        return {"prompt": record["q"], "chosen": record["good"], "rejected": record["bad"]}

    with pytest.raises(DataError, match=r"row 2: the formatter raised ValueError: no chosen response \(columns of the"):
        load_hf_split(str(path), "train", "preferences", {}, formatter=ours)
    path.write_text(json.dumps([{"q": "a", "good": "b", "bad": "c"}]))
    assert load_hf_split(str(path), "train", "preferences", {}, formatter=ours) == [
        {"prompt": "a", "chosen": "b", "rejected": "c"}
    ]
    with pytest.raises(DataError, match="must return a dict of fields"):
        load_hf_split(str(path), "train", "preferences", {}, formatter=lambda r, k: "text")
    with pytest.raises(DataError, match=r"missing field 'rejected'"):
        load_hf_split(str(path), "train", "preferences", {}, formatter=lambda r, k: {"prompt": "a", "chosen": "b"})
    with pytest.raises(DataError, match="no such data file"):
        load_hf_split(str(tmp_path / "missing.json"), "train", "preferences", {})


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["task=jsonl", "task.prompts=p.jsonl", "task.gold_reward=m:f", "task.formatter=m:f"], "task.formatter needs"),
        (
            ["task=jsonl", "task.prompts=p.jsonl", "task.gold_reward=m:f", "task.preference_dataset=x"],
            "needs task.format",
        ),
        (["experiment=ppo_tldr_pythia", "task.formatter=not a function"], "task.formatter must look like"),
        (["experiment=dpo_imdb_gpt2_large", "task.gold_model_output=odds"], "task.gold_model_output must be one of"),
    ],
)
def test_bad_formatter_settings_name_the_key(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(overrides)


def test_judge_probability_is_the_softmax_of_its_labels(stand_ins, tok):
    from transformers import AutoModelForSequenceClassification

    from rlhf_bench.tasks.judges import ClassifierJudge

    prompts, responses = ["This movie was", "I hated"], [" great", " it"]
    probability = ClassifierJudge(str(stand_ins["judge"]), 1, output="probability")(prompts, responses)
    classifier = AutoModelForSequenceClassification.from_pretrained(stand_ins["judge"]).eval()
    with torch.no_grad():
        expected = [
            float(classifier(**tok(p + r, return_tensors="pt")).logits.softmax(-1)[0, 1])
            for p, r in zip(prompts, responses)
        ]
    assert probability == pytest.approx(expected, abs=1e-5)


def test_registry_holds_the_full_scale_setups():
    from rlhf_bench.cli import conf_dir
    from rlhf_bench.repro.registry import load_claims

    claims = load_claims()
    for name in EXPERIMENTS:
        claim = claims[name]
        assert claim.needs == "gpu+hub" and claim.runner == "rlhf_bench.repro.runners:published_values"
        assert claim.experiments == [name] and (conf_dir() / "experiment" / f"{name}.yaml").is_file()
        for row in claim.reference_rows:
            assert row["source"] and row["setup"]
            if "metric" in row:  # compared by the runner: a dotted path into the record, and a tolerance
                assert row["metric"].startswith("metrics.") and set(row["tolerance"]) <= {"atol", "rtol"}
