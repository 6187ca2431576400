"""Learning, not just running: on the embedded task, PPO beats its starting (SFT) gold reward
while its KL to the SFT policy stays bounded."""

import pytest

from rlhf_bench import pipeline
from rlhf_bench.cli import load_config


@pytest.mark.slow
def test_ppo_raises_gold_reward_over_sft(tmp_path):
    overrides = [
        f"paths.results_dir={tmp_path}/results",
        f"paths.artifacts_dir={tmp_path}/artifacts",
        "device=cpu",
        "logger.mode=disabled",
        "task.n_sft=5000",
        "task.max_response_tokens=16",
        "model.tiny.n_layer=2",
        "model.tiny.d_model=64",
        "model.tiny.vocab_size=512",
        "sft.steps=250",
        "preferences.n_train=1024",
        "preferences.n_eval=256",
        "reward_model.n_normalization_samples=256",
        "reward_model.epochs=4",
        "reward_model.batch_size=16",
        "method.steps=25",
        "method.prompts_per_step=32",
        "method.num_minibatches=2",
        "method.epochs=2",
        "method.lr=3e-4",
        "eval.n_prompts=512",
    ]
    record = pipeline.run(load_config(overrides))
    sft, ppo = record["metrics"]["sft"], record["metrics"]["policy"]
    assert record["metrics"]["reward_model"]["gold_accuracy"] > 0.7
    # The reward the method optimises rises ...
    assert ppo["proxy_reward"] > sft["proxy_reward"] + 0.3
    # ... and so does the gold reward, by many standard errors.
    margin = ppo["gold_reward"] - sft["gold_reward"]
    assert margin > 5 * (ppo["gold_reward_se"] ** 2 + sft["gold_reward_se"] ** 2) ** 0.5, (ppo, sft)
    assert ppo["win_rate_vs_sft"] > 0.6
    # The KL penalty keeps the policy near the reference (nats per response).
    assert 0.0 < ppo["kl"] < 15.0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_verifiable_reward_raises_accuracy(tmp_path_factory, method):
    """On the arithmetic task, RL on the answer check raises the fraction of right answers."""
    root = tmp_path_factory.getbasetemp() / "arithmetic"  # SFT shared by both methods
    overrides = [
        "experiment=arithmetic",
        f"method={method}",
        f"paths.results_dir={root}/results",
        f"paths.artifacts_dir={root}/artifacts",
        "device=cpu",
        "logger.mode=disabled",
        "task.n_sft=8000",
        "model.tiny.n_layer=2",
        "model.tiny.d_model=64",
        "model.tiny.vocab_size=300",
        "sft.steps=300",
        "preferences.n_train=64",
        "preferences.n_eval=64",
        "eval.n_prompts=512",
    ]
    record = pipeline.run(load_config(overrides))
    sft, policy = record["metrics"]["sft"], record["metrics"]["policy"]
    assert record["reward_model"] == "gold"
    margin = policy["gold_reward"] - sft["gold_reward"]
    assert margin > 5 * (policy["gold_reward_se"] ** 2 + sft["gold_reward_se"] ** 2) ** 0.5, (policy, sft)
    assert policy["kl"] < 5.0
