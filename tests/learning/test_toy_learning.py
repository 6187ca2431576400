"""Learning on the exact toy world, where every number is exact: the offline pair methods and
best-of-n beat the SFT policy's exact gold reward and, like every policy, lie on or below the
exact reward-KL frontier (a point above it would be a KL or log-prob bug)."""

import pytest
from conftest import RM_FAST, TOY_TINY

from rlhf_bench import pipeline
from rlhf_bench.cli import load_config

# the pairs all four methods learn from, and the reward model best-of-n selects with
PAIRS = ["preferences.n_train=512", "preferences.label=gold", *RM_FAST]
METHODS = {
    "dpo": ["method=dpo", "method.epochs=2", "method.lr=1e-3", "method.beta=0.1"],
    "ipo": ["method=ipo", "method.epochs=2", "method.lr=1e-3"],
    "simpo": ["method=simpo", "method.epochs=2", "method.lr=1e-3"],
    "kto": ["method=kto", "method.epochs=2", "method.lr=1e-3"],
    "best_of_n": ["method=best_of_n", "method.n=8"],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_method_beats_sft_on_the_exact_toy_world_and_stays_below_the_frontier(tmp_path, shared_artifacts, method):
    overrides = [
        "task=toy",
        *TOY_TINY,
        *PAIRS,
        f"paths.results_dir={tmp_path}/results",
        f"paths.artifacts_dir={shared_artifacts}",
        *METHODS[method],
    ]
    record = pipeline.run(load_config(overrides))
    sft, policy = record["metrics"]["sft"], record["metrics"]["policy"]
    # exact values: no sampling error to allow for
    assert policy["exact_gold_reward"] > sft["exact_gold_reward"] + 0.1, (policy, sft)
    assert policy["exact_kl"] > 0
    assert policy["above_frontier"] is False and policy["regret"] >= -1e-9
