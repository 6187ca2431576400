"""The policy-gradient family's report: rows from records, the leaderboard, the effects by hand."""

import json

import pandas as pd
import pytest

from rlhf_bench.report.family import PG_TARGET, dynamic_sampling, effects, family_table, load_runs


def _runs(entropy_dapo, entropy_grpo, wrong_dr, wrong_grpo):
    rows = []
    for seed in range(len(entropy_grpo)):
        common = {"seed": seed, "KL": 1.0, "length": 3.0, "wall s": 10.0, "samples per kept": 1.0}
        rows.append(
            {
                **common,
                "method": "grpo",
                "accuracy": 0.5,
                "entropy": entropy_grpo[seed],
                "length wrong": wrong_grpo[seed],
                "zero-std groups": 0.3,
                "tokens generated": 1000.0,
            }
        )
        rows.append(
            {
                **common,
                "method": "dapo",
                "accuracy": 0.6,
                "entropy": entropy_dapo[seed],
                "length wrong": 4.0,
                "zero-std groups": 0.4,
                "samples per kept": 1.5,
                "tokens generated": 1500.0,
            }
        )
        rows.append({**common, "method": "dr_grpo", "accuracy": 0.4, "entropy": 0.5, "length wrong": wrong_dr[seed]})
    return pd.DataFrame(rows)


def test_effects_are_paired_by_seed_and_say_what_shows():
    # dapo - grpo entropy per seed: 1, 2, 3 -> mean 2, se 1/sqrt(3), t = 3.46 on 2 dof, p = 0.074,
    # interval 2 -/+ 4.303 / sqrt(3)
    # dr_grpo - grpo wrong length per seed: -1, -1.1, -0.9 -> mean -1, se 0.0577, t = -17.3, p = 0.0033
    runs = _runs([1.5, 2.5, 3.5], [0.5, 0.5, 0.5], [2.0, 1.9, 2.1], [3.0, 3.0, 3.0])
    table = effects(runs).set_index("difference")
    entropy, wrong = table.loc["dapo - grpo"], table.loc["dr_grpo - grpo"]
    assert table.loc["dapo - dapo_no_clip_higher", "here"] == "too few seeds (need 2 of each)"  # not run
    assert entropy["value"] == "+2" and entropy["p"] == "0.074" and entropy["here"] == "direction only"
    assert entropy["95% interval"] == "[-0.484, +4.48]" and entropy["seeds"] == 3
    assert wrong["value"] == "-1" and wrong["p"] == "0.0033" and wrong["here"] == "shows"
    # the opposite sign of what the paper predicts does not show, however significant
    flipped = effects(_runs([0.4, 0.3, 0.2], [1.5, 1.5, 1.5], [4.0, 4.1, 3.9], [3.0, 3.0, 3.0]))
    assert list(flipped["here"][1:]) == ["does not show", "does not show"]
    one_seed = effects(_runs([1.0], [0.5], [2.0], [3.0]))
    assert list(one_seed["here"]) == ["too few seeds (need 2 of each)"] * 3


def test_the_leaderboard_and_the_cost_of_dynamic_sampling():
    runs = _runs([1.5, 2.5, 3.5], [0.5, 0.5, 0.5], [2.0, 1.9, 2.1], [3.0, 3.0, 3.0])
    table = family_table(runs)
    assert list(table.index) == ["dapo", "grpo", "dr_grpo"]  # by mean accuracy
    assert table.loc["dapo", "entropy"] == "2.5 ± 1" and table.loc["grpo", "seeds"] == 3
    cost = dynamic_sampling(runs)
    assert cost.loc["dapo"].to_dict() == {"zero-std groups": 0.4, "samples per kept": 1.5, "tokens vs grpo": 1.5}
    assert "dr_grpo" not in cost.index  # no zero-std metric: not a group method here


def test_rows_come_from_finished_records_of_the_family(tmp_path):
    history = [
        {"policy/entropy": float(i), "objective/zero_std_groups": 0.5, "cost/samples_per_kept": 1.0} for i in range(20)
    ]
    record = {
        "status": "finished",
        "config": {"seed": 2, "method": {"_target_": PG_TARGET, "name": "dapo"}},
        "metrics": {"policy": {"gold_reward": 0.4, "kl": 0.7, "response_length": 3.5}},
        "history": {"dapo": history},
        "cost": {"tokens_generated": 1234, "wall_seconds": {"sft": 3.0, "policy": 9.5, "total": 13.0}},
    }
    for name, patch in (
        ("a", {}),
        ("b", {"status": "running"}),
        ("c", {"config": {"seed": 0, "method": {"_target_": "rlhf_bench.methods.dpo.train", "name": "dpo"}}}),
    ):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "record.json").write_text(json.dumps({**record, **patch}))
    (tmp_path / "runs" / "d").mkdir()
    (tmp_path / "runs" / "d" / "record.json").write_text("{not json")
    runs = load_runs(tmp_path)
    assert len(runs) == 1
    row = runs.iloc[0]
    assert (row["method"], row["seed"], row["accuracy"], row["tokens generated"], row["wall s"]) == (
        "dapo",
        2,
        0.4,
        1234,
        9.5,
    )
    assert row["entropy"] == pytest.approx(sum(range(10, 20)) / 10)  # the last 10 steps
    assert row["zero-std groups"] == 0.5 and pd.isna(row["length wrong"])
