"""The policy-gradient family learns: on the exact toy world every preset raises the exact reward it
optimises (the gold reward, here) over the SFT policy's, and no preset's policy lies above the exact
reward-KL frontier (a point above it would be a KL or log-prob bug); on the chains task every preset
raises the share of right answers over the SFT policy's by more than 5 standard errors."""

import pytest
from conftest import TOY_TINY

from rlhf_bench import pipeline
from rlhf_bench.compose import conf_dir, load_config

PRESETS = sorted(
    p.stem for p in (conf_dir() / "method").glob("*.yaml") if "rlhf_bench.methods.pg.train" in p.read_text()
)


def test_the_family_is_every_preset_the_issue_names():
    assert (
        sorted(["ppo", "grpo", "dr_grpo", "dapo", "gspo", "cispo", "sapo", "gmpo", "rloo", "reinforce_pp", "remax"])
        == PRESETS
    )


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_learns_and_stays_below_the_exact_frontier(tmp_path, shared_artifacts, preset):
    overrides = [
        "task=toy",
        *TOY_TINY,
        "reward_model=gold",
        f"method={preset}",
        "method.steps=10",
        "method.prompts_per_step=8",
        "method.lr=1e-3",
        f"paths.results_dir={tmp_path}/results",
        f"paths.artifacts_dir={shared_artifacts}",
    ]
    metrics = pipeline.run(load_config(overrides))["metrics"]
    sft, policy = metrics["sft"], metrics["policy"]
    # exact values, no sampling error: the reward optimised (the gold, here) rises
    assert policy["exact_gold_reward"] > sft["exact_gold_reward"] + 0.05, (preset, policy, sft)
    assert policy["exact_kl"] > 0
    assert policy["above_frontier"] is False and policy["regret"] >= -1e-9, (preset, policy)


@pytest.mark.slow
def test_dynamic_sampling_that_keeps_nothing_still_takes_its_steps(tmp_path, shared_artifacts):
    # a constant reward: every group agrees, dynamic sampling drops them all on every draw
    (tmp_path / "flat.py").write_text("def flat(prompts, responses):\n    return [0.0] * len(responses)\n")
    overrides = [
        "task=toy",
        *TOY_TINY,
        "reward_model=function",
        f"reward_model.target={tmp_path / 'flat.py'}:flat",
        "method=dapo",
        "method.steps=2",
        "method.prompts_per_step=8",
        "method.max_sampling_rounds=2",
        f"paths.results_dir={tmp_path}/results",
        f"paths.artifacts_dir={shared_artifacts}",
    ]
    record = pipeline.run(load_config(overrides))
    rows = record["history"]["dapo"]
    assert record["status"] == "finished" and len(rows) == 2
    assert all(r["objective/kept_groups"] == 0 and r["cost/samples_per_kept"] == 2 * 8 * 4 for r in rows)
    assert all(r["objective/zero_std_groups"] == 1.0 and r["train/loss"] == 0.0 for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_raises_chains_accuracy_over_sft_by_five_standard_errors(tmp_path_factory, preset):
    root = tmp_path_factory.getbasetemp() / "chains"  # one SFT a worker, shared by the presets
    overrides = [
        "experiment=chains",  # the CPU-sized model and SFT of the pg_family sweep
        f"method={preset}",
        "method.steps=100",  # half the sweep's budget
        f"paths.results_dir={root}/results",
        f"paths.artifacts_dir={root}/artifacts",
        "device=cpu",
        "logger.mode=disabled",
    ]
    record = pipeline.run(load_config(overrides))
    sft, policy = record["metrics"]["sft"], record["metrics"]["policy"]
    assert 0.15 < sft["gold_reward"] < 0.5, sft  # the SFT policy solves some chains, not most
    margin = policy["gold_reward"] - sft["gold_reward"]
    assert margin > 5 * (policy["gold_reward_se"] ** 2 + sft["gold_reward_se"] ** 2) ** 0.5, (preset, policy, sft)
