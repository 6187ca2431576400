"""Smoke: every method, and every reward-model variant, runs end to end on a tiny config:
the run finishes, its losses are finite, and every trainable parameter tensor changed."""

from pathlib import Path

import pytest
from conftest import RM_FAST, fast_overrides
from safetensors.torch import load_file

from rlhf_bench import pipeline
from rlhf_bench.cli import load_config
from rlhf_bench.tasks.data import read_jsonl

FAST = {
    "sft": [],
    "ppo": ["method.steps=2", "method.prompts_per_step=8", "method.num_minibatches=2", "method.epochs=1"],
    "best_of_n": ["method.n=2"],
    "dpo": ["method.epochs=1", "method.label_smoothing=0.1"],
    "ipo": ["method.epochs=1"],
    "simpo": ["method.epochs=1"],
    "kto": ["method.epochs=1"],
    "rloo": ["method.steps=2", "method.prompts_per_step=4", "method.group_size=2"],
    "grpo": ["method.steps=2", "method.prompts_per_step=4", "method.group_size=2", "method.epochs=2"],
    "expert_iteration": [
        "method.rounds=1",
        "method.prompts_per_round=8",
        "method.k=2",
        "method.steps_per_round=2",
        "method.batch_size=4",
    ],
}
TRAINED = {"ppo", "dpo", "ipo", "simpo", "kto", "rloo", "grpo", "expert_iteration"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


def _run(root, *overrides, reward_model: bool = True):
    base = fast_overrides(root, ppo=False, reward_model=reward_model)
    return pipeline.run(load_config(base + ["logger.mode=disabled", *overrides]))


def _changed_tensors(record) -> tuple[int, list[str]]:
    before = load_file(f"{record['artifacts']['sft']['path']}/model.safetensors")
    after = load_file(f"{record['artifacts']['policy']['path']}/model.safetensors")
    unchanged = [k for k in before if k in after and bool((before[k] == after[k]).all())]
    return len(before), unchanged


@pytest.mark.parametrize("method", sorted(FAST))
def test_every_method_runs(root, method):
    record = _run(root, f"method={method}", *FAST[method])
    assert record["status"] == "finished" and record["method"] == method
    policy = record["metrics"]["policy"]
    assert 0.0 <= policy["win_rate_vs_sft"] <= 1.0
    assert record["conventions"]["prompt_tokens_masked"] is True and "kl_in" in record["conventions"]
    if method in TRAINED:
        total, unchanged = _changed_tensors(record)
        assert total > 0 and unchanged == [], unchanged
        assert policy["kl"] != 0.0  # a Monte-Carlo estimate: near 0 after two steps, but not exactly 0
        rows = next(iter(record["history"].values()))
        assert all(v == v for row in rows for v in row.values())  # no NaN logged
    if method == "sft":
        assert policy["kl"] == 0.0
    if method == "best_of_n":
        assert policy["kl_analytic"] == pytest.approx(0.6931471805599453 - 0.5)


@pytest.mark.parametrize(
    "method, reward_model",
    [
        ("ppo", "gold"),
        ("rloo", "ensemble"),
        ("grpo", "margin"),
        ("best_of_n", "ensemble"),
        ("dpo", "margin"),  # offline methods ignore the reward model for training, not for evaluation
    ],
)
def test_reward_model_variants(root, method, reward_model):
    extra = ["reward_model.members=2", "reward_model.aggregation=mean_minus_std"] if reward_model == "ensemble" else []
    if reward_model in ("margin", "ensemble"):
        extra += RM_FAST
    record = _run(root, f"method={method}", f"reward_model={reward_model}", *FAST[method], *extra, reward_model=False)
    assert record["status"] == "finished" and record["reward_model"] == reward_model
    rm = record["metrics"]["reward_model"]
    assert 0.0 <= rm["accuracy"] <= 1.0
    if reward_model == "gold":
        # The oracle orders every pair as the gold reward does; ties (often 0 vs 0 here) count one half.
        pairs = read_jsonl(Path(record["artifacts"]["preferences"]["path"]) / "eval.jsonl")
        expected = sum(1.0 if p["chosen_gold"] != p["rejected_gold"] else 0.5 for p in pairs) / len(pairs)
        assert rm["gold_accuracy"] == pytest.approx(expected)
    if reward_model == "ensemble":
        assert len(record["artifacts"]["reward_model"]["info"]["member_accuracy"]) == 2
