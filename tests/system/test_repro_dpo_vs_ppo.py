"""Reproduction 3 (DPO vs PPO on the reward-KL frontier): the frontier and dominance computation
by hand, the paper's preference data (4 samples a prompt, all 6 pairs, gold labels) on pairs
really sampled from a model, its config errors, and the reproduction end to end."""

import json
from collections import Counter

import pytest
import torch

from rlhf_bench.cli import explain_config_error, load_config
from rlhf_bench.config import PreferenceConfig
from rlhf_bench.repro import cli as repro_cli
from rlhf_bench.repro.dpo_vs_ppo import compare, hull_value, mean_gap, upper_hull
from rlhf_bench.rewards import preferences


# --- frontiers by hand -----------------------------------------------------------------------
def test_upper_hull_keeps_the_concave_upper_left_points():
    origin = (0.0, 1.0)
    # slopes from the origin: 1, then 0.5, then 0.1 (concave). (1.5, 1.8) is under the chord
    # (1, 2)-(2, 2.5); (0.5, 0.9) has less reward than the origin; (4, 2.0) less than (1, 2) at more KL
    points = [(2.0, 2.5), (1.0, 2.0), (3.0, 2.6), (1.5, 1.8), (0.5, 0.9), (4.0, 2.0)]
    assert upper_hull(points, origin) == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5), (3.0, 2.6)]
    # (2, 2.2) makes a convex corner: slope 0.2 from (1, 2), then 0.7 to (3, 2.9); the chord
    # (1, 2)-(3, 2.9) (slope 0.45) passes above it, so it leaves the hull
    assert upper_hull([(1.0, 2.0), (2.0, 2.2), (3.0, 2.9)], origin) == [(0.0, 1.0), (1.0, 2.0), (3.0, 2.9)]
    # a Monte-Carlo KL below 0 counts as KL 0: more reward there replaces the origin
    assert upper_hull([(-0.01, 1.1), (1.0, 2.0)], origin) == [(0.0, 1.1), (1.0, 2.0)]
    assert upper_hull([], origin) == [origin]


def test_hull_value_is_linear_between_vertices_and_flat_after():
    hull = [(0.0, 1.0), (1.0, 2.0), (3.0, 2.9)]
    assert hull_value(hull, 0.0) == 1.0 and hull_value(hull, 0.5) == pytest.approx(1.5)
    assert hull_value(hull, 2.0) == pytest.approx(2.0 + 0.45)  # slope (2.9 - 2) / 2
    assert hull_value(hull, 5.0) == 2.9 and hull_value([(0.0, 1.0)], 3.0) == 1.0


def test_compare_crossing_frontiers():
    # a: slope 1 to (1, 1), flat after; b: slope 0.75 to (2, 1.5). a - b is 0.25 at KL 1 and
    # -0.5 at KL 2, zero at KL 1 + 0.25 / 0.75 = 4/3. Area: 0.25 / 2 on [0, 1] and (0.25 - 0.5) / 2
    # on [1, 2]: 0.125 - 0.125 = 0. a is higher on [0, 4/3]: 2/3 of the range.
    stats = compare([(0.0, 0.0), (1.0, 1.0)], [(0.0, 0.0), (2.0, 1.5)], kl_max=2.0)
    assert stats["min_diff"] == pytest.approx(-0.5) and stats["max_diff"] == pytest.approx(0.25)
    assert stats["area"] == pytest.approx(0.0, abs=1e-12)
    assert stats["frac_a_higher"] == pytest.approx(2 / 3)
    assert stats["dominates"] is False
    # only on the range both reach: up to KL 1, a is above b everywhere
    assert compare([(0.0, 0.0), (1.0, 1.0)], [(0.0, 0.0), (2.0, 1.5)], kl_max=1.0)["dominates"] is True


def test_compare_dominance_and_tolerance():
    # a - b: 0.5 at KL 1, 0.2 at KL 2; area 0.5 / 2 + (0.5 + 0.2) / 2 = 0.6
    stats = compare([(0.0, 0.0), (1.0, 1.0), (2.0, 1.2)], [(0.0, 0.0), (2.0, 1.0)], kl_max=2.0)
    assert stats["dominates"] is True and stats["area"] == pytest.approx(0.6) and stats["frac_a_higher"] == 1.0
    # a 0.01 below b everywhere: within a tolerance of 0.02, but a negative area is no dominance
    below = compare([(0.0, 0.0), (1.0, 1.0)], [(0.0, 0.0), (1.0, 1.01)], kl_max=1.0, tol=0.02)
    assert below["min_diff"] == pytest.approx(-0.01) and below["dominates"] is False
    # b has slope 0.6 to (2, 1.2): a - b is 0.4 at KL 1 and -0.01 at KL 2 (area 0.2 + 0.195 > 0): the tolerance decides
    a, b = [(0.0, 0.0), (1.0, 1.0), (2.0, 1.19)], [(0.0, 0.0), (2.0, 1.2)]
    assert compare(a, b, 2.0)["dominates"] is False and compare(a, b, 2.0, tol=0.02)["dominates"] is True
    assert compare(a, b, 0.0)["dominates"] is False  # no common range: nothing shown


def test_mean_gap_to_the_exact_frontier():
    # exact: the line r = k; the method: slope 0.5 up to KL 1, flat after. On [0, 1] the gap
    # grows from 0 to 0.5 (mean 0.25); on [0, 2] the gap is 0.25 * 1 + (0.5 + 1.5) / 2 * 1 = 1.25 over 2
    exact, method = [(0.0, 0.0), (2.0, 2.0)], [(0.0, 0.0), (1.0, 0.5)]
    assert mean_gap(exact, method, 1.0) == pytest.approx(0.25)
    assert mean_gap(exact, method, 2.0) == pytest.approx(0.625)


# --- the paper's preference data on real samples -----------------------------------------------
def _toy_context():
    """A small toy world (4 letters, 3 a response: 64 responses) and an untrained tiny GPT-2 on it."""
    from rlhf_bench.config import TinyModelConfig
    from rlhf_bench.core import models
    from rlhf_bench.run import Run
    from rlhf_bench.tasks.toy import ToyTask, ToyTaskConfig

    models.quiet_transformers()
    task = ToyTask(ToyTaskConfig(alphabet=4, response_length=3, n_prompts=3, n_sft=16))
    tok = task.build_tokenizer()
    model = models.build_tiny_model(TinyModelConfig(n_layer=1, d_model=16, n_head=2, max_positions=32), tok, 0)
    ctx = Run(
        cfg=load_config(["task=toy", "device=cpu"]),
        task=task,
        tokenizer=tok,
        device=torch.device("cpu"),
        dtype=None,
        tracker=None,
    )
    object.__setattr__(ctx, "load_policy", lambda lora=False: model)  # the "SFT policy" the pairs are sampled from
    return ctx


def _pairs(ctx, folder, **options):
    cfg = PreferenceConfig(n_train=24, n_eval=8, generation_batch_size=32, **options)
    info = preferences.sample_preferences(ctx, cfg, folder)
    return info, [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]


def test_four_samples_a_prompt_give_all_six_pairs_and_gold_labels_drop_ties(tmp_path):
    ctx = _toy_context()
    info_bt, bt = _pairs(ctx, tmp_path / "bt", samples_per_prompt=4)
    assert info_bt["train_pairs"] == 24 * 6 and "train_ties_dropped" not in info_bt
    # each prompt's 6 pairs are every two of its 4 samples: the 12 responses they hold are the
    # 4 samples 3 times each (a sample drawn twice counts 6 times), all of one prompt
    for start in range(0, len(bt), 6):
        group = bt[start : start + 6]
        assert len({p["prompt"] for p in group}) == 1
        counts = Counter(text for p in group for text in (p["chosen"], p["rejected"]))
        assert sum(counts.values()) == 12 and all(c % 3 == 0 for c in counts.values())
    # the gold annotator sees the same samples (the sampler has its own generator): its pairs are
    # the untied ones, each ordered by the gold reward; the ties are counted, not labelled
    info_gold, gold = _pairs(ctx, tmp_path / "gold", samples_per_prompt=4, label="gold")
    assert all(p["chosen_gold"] > p["rejected_gold"] for p in gold)
    untied = [p for p in bt if p["chosen_gold"] != p["rejected_gold"]]
    assert 0 < info_gold["train_ties_dropped"] == len(bt) - len(untied)
    assert info_gold["train_pairs"] == len(gold) == len(untied) and info_gold["train_label_gold_agreement"] == 1.0

    def unordered(rows):
        return Counter(
            (p["prompt"], frozenset([(p["chosen"], p["chosen_gold"]), (p["rejected"], p["rejected_gold"])]))
            for p in rows
        )

    assert unordered(gold) == unordered(untied)
    # the recorded gold rewards are the task's
    assert [p["chosen_gold"] for p in gold] == ctx.task.gold_reward(
        [p["prompt"] for p in gold], [p["chosen"] for p in gold]
    )


def test_default_pairs_keep_their_cache_key_and_bad_options_are_explained():
    key = preferences.stage_key(PreferenceConfig())
    assert "samples_per_prompt" not in key and "label" not in key  # the key the cache held before they existed
    assert preferences.stage_key(PreferenceConfig(samples_per_prompt=4, label="gold"))["label"] == "gold"
    cases = [
        (["preferences.samples_per_prompt=1"], "preferences.samples_per_prompt must be >= 2 (got 1)"),
        (["preferences.label=human"], "preferences.label must be one of bradley_terry, gold (got 'human')"),
        (["preferences.label=gold", "preferences.annotators=3"], "preferences.annotators must be 1 with"),
    ]
    for overrides, expected in cases:
        with pytest.raises(Exception) as info:
            load_config(overrides)
        assert expected in explain_config_error(info.value, overrides)
    cfg = load_config(["experiment=repro_dpo_ppo_toy"])
    assert (cfg.preferences.samples_per_prompt, cfg.preferences.label, cfg.method.name) == (4, "gold", "dpo")


# --- end to end ----------------------------------------------------------------------------
@pytest.mark.slow
def test_quick_reproduction_writes_frontiers_and_checks(tmp_path, capsys):
    args = ["dpo_vs_ppo_frontier", "--quick", f"--results-dir={tmp_path}/results", f"--artifacts-dir={tmp_path}/art"]
    assert repro_cli.main([*args, "--", "device=cpu", "logger.mode=disabled"]) == 0
    assert "verdict:" in capsys.readouterr().out
    (path,) = (tmp_path / "results" / "repro" / "dpo_vs_ppo_frontier").glob("*.json")
    verdict = json.loads(path.read_text())
    names = [c["name"] for c in verdict["checks"]]
    assert names[0] == "toy: no run lies above the exact frontier" and verdict["checks"][0]["passed"] is True
    assert sum("dominates" in n for n in names) == 4  # DPO vs PPO and PPO-GT, on toy and sentiment
    assert verdict["verdict"] == ("PASS" if all(c["passed"] for c in verdict["checks"]) else "FAIL")
    assert len(verdict["runs"]) == 6  # one run per method per task
    toy = verdict["data"]["toy"]
    for method in ("dpo", "ppo", "ppo_gt"):
        (point,) = toy["points"][method]
        assert point["regret"] >= -1e-9 and point["above_frontier"] is False
        assert toy["frontiers"][method][0] == toy["sft"]  # every frontier starts at the SFT point
    kls = [kl for kl, _ in toy["exact_frontier"]]
    assert kls == sorted(kls) and toy["exact_frontier"][0][1] == pytest.approx(toy["sft"][1])
    records = [json.loads((tmp_path / "results" / "runs" / r / "record.json").read_text()) for r in verdict["runs"]]
    assert {r["config"]["preferences"]["label"] for r in records} == {"gold"}
    assert {(r["task"], r["method"], r["reward_model"]) for r in records} == {
        (t, m, rm)
        for t in ("toy", "sentiment")
        for m, rm in (("dpo", "bradley_terry"), ("ppo", "bradley_terry"), ("ppo", "gold"))
    }
