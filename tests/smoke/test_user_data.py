"""Bring your own task: JSONL files and a local `datasets` folder, a reward function, a model given
by path (LoRA on and off), simulated annotators for data without pairs."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import fast_overrides

from rlhf_bench import pipeline
from rlhf_bench.cli import load_config
from rlhf_bench.config import PreferenceConfig, TinyModelConfig
from rlhf_bench.core import models
from rlhf_bench.rewards.preferences import annotator_temperatures, simulated_annotator
from rlhf_bench.tasks.data import load_jsonl, read_jsonl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
JUDGE = f"{EXAMPLES}/reward.py:politeness"


def _fast(root: Path, reward_model: bool = True) -> list[str]:
    """The fast budgets, without the embedded task's keys."""
    return [o for o in fast_overrides(root, ppo=False, reward_model=reward_model) if not o.startswith("task.")]


def _subset(src: Path, dst: Path, n: int) -> str:
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return str(dst)


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("user_data")
    return {
        "prompts": _subset(EXAMPLES / "data" / "prompts.jsonl", d / "prompts.jsonl", 120),
        "sft": _subset(EXAMPLES / "data" / "sft.jsonl", d / "sft.jsonl", 300),
        "preferences": _subset(EXAMPLES / "data" / "preferences.jsonl", d / "preferences.jsonl", 160),
    }


@pytest.fixture(scope="module")
def model_folder(user_files, tmp_path_factory):
    """A tiny GPT-2 and its tokenizer saved to a folder, as a hub model would be."""
    texts = [r["prompt"] + r["completion"] for r in read_jsonl(user_files["sft"])]
    tok = models.train_tokenizer(texts, 300)
    cfg = TinyModelConfig(n_layer=2, d_model=32, n_head=2, vocab_size=300)
    folder = tmp_path_factory.mktemp("local_model")
    models.save_pretrained(models.build_tiny_model(cfg, tok, seed=0), tok, folder)
    return folder


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_user_jsonl_task_with_a_reward_function_on_a_model_given_by_path(user_files, model_folder, tmp_path, lora):
    overrides = _fast(tmp_path, reward_model=False) + [
        "task=jsonl",
        f"task.prompts={user_files['prompts']}",
        f"task.sft={user_files['sft']}",
        f"task.preferences={user_files['preferences']}",
        f"task.gold_reward={JUDGE}",
        "task.max_response_tokens=12",
        f"model.name_or_path={model_folder}",
        f"model.lora.enabled={str(lora).lower()}",
        "sft.steps=20",
        "reward_model=function",
        f"reward_model.target={JUDGE}",
        "method=rloo",
        "method.steps=2",
        "method.prompts_per_step=8",
    ]
    record = pipeline.run(load_config(overrides))
    assert record["status"] == "finished" and record["task"] == "jsonl"
    for who in ("policy", "sft"):
        assert isinstance(record["metrics"][who]["gold_reward"], float)
    # the training reward is the judge itself: proxy and gold agree on every response
    assert record["metrics"]["policy"]["proxy_reward"] == pytest.approx(record["metrics"]["policy"]["gold_reward"])
    prefs = record["artifacts"]["preferences"]["info"]
    assert prefs["train_pairs"] == 144 and prefs["eval_pairs"] == 16  # the user's 160 pairs, 10% held out
    # the reward is the judge: it orders every held-out pair as the judge does (a tie counts a half)
    held_out = read_jsonl(Path(record["artifacts"]["preferences"]["path"]) / "eval.jsonl")
    expected = sum(1.0 if r["chosen_gold"] != r["rejected_gold"] else 0.5 for r in held_out) / len(held_out)
    assert record["metrics"]["reward_model"]["gold_accuracy"] == pytest.approx(expected)
    policy_dir = Path(record["artifacts"]["policy"]["path"])
    assert (policy_dir / "adapter_config.json").is_file() == lora


def test_sft_loss_is_on_the_completion_only(user_files, model_folder):
    from rlhf_bench.methods.sft import tokenize_examples

    tok = models.load_tokenizer(str(model_folder))
    rows = load_jsonl(user_files["sft"], "sft", "task.sft")[:3]
    for (ids, n_prompt), row in zip(tokenize_examples([(r["prompt"], r["completion"]) for r in rows], tok, 512), rows):
        assert tok.decode(ids[:n_prompt]) == row["prompt"]
        assert ids[-1] == tok.eos_token_id and tok.decode(ids[n_prompt:-1]) == row["completion"]


@pytest.fixture(scope="module")
def dataset_folder(user_files, tmp_path_factory):
    """A local data set folder (``save_to_disk``), with its own column names."""
    datasets = pytest.importorskip("datasets")
    rows = read_jsonl(user_files["sft"])
    data = datasets.Dataset.from_dict(
        {"question": [r["prompt"] for r in rows], "answer": [r["completion"] for r in rows]}
    )
    split = data.train_test_split(test_size=0.1, seed=0)
    folder = tmp_path_factory.mktemp("hf") / "support"
    split.save_to_disk(str(folder))
    return folder


def test_a_local_dataset_folder_through_datasets_with_simulated_annotators(dataset_folder, tmp_path):
    overrides = _fast(tmp_path) + [
        "task=hf_dataset",
        f"task.dataset={dataset_folder}",
        "task.prompts=train",
        "task.eval_prompts=test",
        "task.sft=train",
        "task.columns.prompt=question",
        "task.columns.completion=answer",
        f"task.gold_reward={JUDGE}",
        "task.max_response_tokens=12",
        "preferences.annotators=3",
        "preferences.annotator_spread=1.0",
        "method=dpo",
        "method.epochs=1",
    ]
    record = pipeline.run(load_config(overrides))
    assert record["status"] == "finished" and record["task"] == "hf_dataset"
    pairs = Path(record["artifacts"]["preferences"]["path"]) / "train.jsonl"
    rows = read_jsonl(pairs)
    assert len(rows) == 128 and {r["annotator"] for r in rows} == {0, 1, 2}  # sampled, labelled by the pool
    assert record["artifacts"]["preferences"]["info"]["train_label_gold_agreement"] > 0.5


def test_a_missing_column_names_the_mapping_key(dataset_folder):
    from rlhf_bench.tasks.data import DataError, load_hf_split

    with pytest.raises(DataError, match=r"has no column 'completion'.*task.columns.<field>=<column>"):
        load_hf_split(str(dataset_folder), "train", "sft", {"prompt": "question"})


def test_an_edited_user_file_invalidates_the_cache(user_files, tmp_path):
    from rlhf_bench.tasks.user import UserTask, UserTaskConfig

    prompts = tmp_path / "prompts.jsonl"
    shutil.copy(user_files["prompts"], prompts)
    cfg = UserTaskConfig(prompts=str(prompts), gold_reward=JUDGE)
    before = UserTask(cfg).fingerprint()
    with open(prompts, "a") as fh:
        fh.write(json.dumps({"prompt": "customer: my order is lost . agent:"}) + "\n")
    assert UserTask(cfg).fingerprint() != before


def test_annotator_pool_temperatures_and_labels():
    temps = annotator_temperatures(PreferenceConfig(temperature=0.1, annotators=3, annotator_spread=1.0))
    # exp(-1), 1, exp(1) times the temperature: the pool's middle annotator is the configured one
    assert torch.allclose(temps, torch.tensor([0.1 * 0.36787944, 0.1, 0.1 * 2.7182817]))
    gold_a, gold_b = torch.tensor([1.0, 0.0]).repeat(5000), torch.tensor([0.0, 1.0]).repeat(5000)
    sharp, _ = simulated_annotator(gold_a, gold_b, torch.full((10000,), 0.01), 0.0, torch.Generator().manual_seed(0))
    noisy, _ = simulated_annotator(gold_a, gold_b, torch.full((10000,), 10.0), 0.0, torch.Generator().manual_seed(0))
    agree = lambda prefers_a: float((prefers_a == (gold_a > gold_b)).float().mean())  # noqa: E731
    assert agree(sharp) == 1.0
    # sigmoid(1 / 10) = 0.525: a hot annotator is barely better than a coin
    assert agree(noisy) == pytest.approx(0.525, abs=0.015)


def test_jsonl_reader_skips_blank_lines_and_counts_them(tmp_path):
    from rlhf_bench.tasks.data import DataError

    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "a"}\r\n\r\n{"prompt": "b"}\n\n{"nope": 1}\n')
    with pytest.raises(DataError, match=r"p.jsonl:5: missing field 'prompt'"):
        load_jsonl(str(path), "prompts", "task.prompts")
    path.write_bytes(b'{"prompt": "a"}\r\n\r\n{"prompt": "b"}\n')
    assert [r["prompt"] for r in load_jsonl(str(path), "prompts", "task.prompts")] == ["a", "b"]


def test_a_classifier_as_the_gold_judge(user_files, model_folder, tmp_path):
    """task.gold_model: a sequence classifier (its own tokenizer) judges prompt + response."""
    from transformers import AutoModelForSequenceClassification, GPT2Config

    from rlhf_bench.tasks.user import UserTask, UserTaskConfig

    tok = models.load_tokenizer(str(model_folder))
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2, num_labels=2, pad_token_id=tok.pad_token_id
    )
    classifier = AutoModelForSequenceClassification.from_config(config).eval()
    classifier.save_pretrained(tmp_path / "judge")
    tok.save_pretrained(tmp_path / "judge")

    task = UserTask(
        UserTaskConfig(prompts=user_files["prompts"], gold_model=str(tmp_path / "judge"), gold_model_label=1)
    )
    prompts, responses = task.train_prompts[:3], [" sorry about that .", " whatever .", " thanks , glad to help ."]
    scores = task.gold_reward(prompts, responses)
    with torch.no_grad():
        expected = [
            float(classifier(**tok(p + r, return_tensors="pt")).logits[0, 1]) for p, r in zip(prompts, responses)
        ]
    assert scores == pytest.approx(expected, abs=1e-5)
