"""Reproduction 4 (results/published/rm_scaling.yaml): the Bayes ceiling of held-out accuracy that
the simulated annotator implies, by hand; the trend and ceiling checks; the reward model's own
backbone (reward_model.backbone) through the pipeline's cached stages; and the reproduction end to
end on a tiny world."""

import json
import math

import numpy as np
import pytest
from conftest import TOY_TINY

from rlhf_bench.config import PreferenceConfig
from rlhf_bench.repro import rm_scaling


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_annotator_ceiling_by_hand():
    # T = 0.5, no flips: a gap of 0.5 is labelled the right way with sigmoid(1) = 0.7311; a tie is a coin
    q = rm_scaling.annotator_ceiling(np.array([0.5, -1.0, 0.0]), 0.5, 0.0)
    assert q.tolist() == pytest.approx([_sigmoid(1), _sigmoid(2), 0.5], abs=1e-12)
    # flips with f = 0.2: q = 0.8 sigmoid(D/T) + 0.2 (1 - sigmoid(D/T)); f = 0.5 makes every label a coin
    f = rm_scaling.annotator_ceiling(np.array([0.5]), 0.5, 0.2)
    assert f[0] == pytest.approx(0.8 * _sigmoid(1) + 0.2 * (1 - _sigmoid(1)), abs=1e-12)
    assert rm_scaling.annotator_ceiling(np.array([3.0, 0.1]), 0.1, 0.5).tolist() == pytest.approx([0.5, 0.5])
    # the deterministic annotator (the gold reward decides): 1 - f on every pair
    assert rm_scaling.annotator_ceiling(np.array([0.5, 2.0]), 1.0, 0.1, deterministic=True).tolist() == [0.9, 0.9]


def test_pair_ceiling_from_rows_and_an_annotator_pool():
    rows = [
        {"chosen_gold": 1.0, "rejected_gold": 0.5, "annotator": 0},  # right way round, gap 0.5
        {"chosen_gold": 0.0, "rejected_gold": 1.0, "annotator": 1},  # the annotator got this one wrong
        {"chosen_gold": 2.0, "rejected_gold": 2.0, "annotator": 0},  # a tie
    ]
    one = rm_scaling.pair_ceiling(rows, PreferenceConfig(temperature=0.5))
    q = [_sigmoid(1), _sigmoid(2), 0.5]
    assert one["ceiling"] == pytest.approx(sum(q) / 3, abs=1e-12)
    assert one["ceiling_se"] == pytest.approx(np.std(q, ddof=1) / math.sqrt(3), abs=1e-12)
    # the gold ordering on these labels: right, wrong, a tie (one half)
    assert one["gold_order_accuracy"] == pytest.approx(0.5) and one["ties"] == pytest.approx(1 / 3)
    # a pool of 2 annotators at T exp(-1) and T exp(+1) (annotator_spread 1): each pair at its own
    pool = rm_scaling.pair_ceiling(rows, PreferenceConfig(temperature=0.5, annotators=2, annotator_spread=1.0))
    t0, t1 = 0.5 * math.exp(-1), 0.5 * math.exp(1)
    assert pool["ceiling"] == pytest.approx((_sigmoid(0.5 / t0) + _sigmoid(1 / t1) + 0.5) / 3, abs=1e-6)


def test_trend_and_ceiling_checks():
    tol = {"se_multiplier": 2, "trend_min_spearman": 0.5}
    up = rm_scaling.rise_check("up", [64, 256, 1024], [0.60, 0.70, 0.75], [0.01, 0.01, 0.01], tol)
    assert up.passed and "rho 1.00" in up.measured
    noisy = rm_scaling.rise_check("flat", [64, 256, 1024], [0.70, 0.69, 0.71], [0.01, 0.01, 0.01], tol)
    assert not noisy.passed  # a rise of 0.01 is within 2 s.e. (0.028)
    down = rm_scaling.rise_check("down", [1, 2, 3], [0.8, 0.7, 0.6], [0.001] * 3, tol)
    assert not down.passed
    # one swap among three: rho = 1 - 6 * 2 / (3 * 8) = 0.5; a constant series has no rank correlation
    assert rm_scaling.spearman([1, 2, 3], [0.1, 0.3, 0.2]) == pytest.approx(0.5)
    assert math.isnan(rm_scaling.spearman([1, 2], [0.5, 0.5]))
    assert not rm_scaling.rise_check("flat", [1, 2], [0.5, 0.5], [0.0, 0.0], tol).passed
    point = {"parameters": 10, "n_train": 64, "gold_order_accuracy": 0.8, "ceiling_se": 0.01, "accuracy_se": 0.01}
    below = [{**point, "accuracy": 0.78, "ceiling": 0.80}]
    above = [{**point, "accuracy": 0.85, "ceiling": 0.80}]  # 0.05 / hypot(0.01, 0.01) = 3.5 s.e. above
    assert rm_scaling.ceiling_check(below, tol).passed and not rm_scaling.ceiling_check(above, tol).passed
    assert rm_scaling.slope_per_doubling([64, 128, 256], [0.6, 0.61, 0.62]) == pytest.approx(0.01)
    assert rm_scaling.backbone_overrides(None) == []
    assert rm_scaling.backbone_overrides({"n_layer": 1, "d_model": 16, "n_head": 2}) == [
        "reward_model.backbone.n_layer=1",
        "reward_model.backbone.d_model=16",
        "reward_model.backbone.n_head=2",
    ]


# --- end to end ----------------------------------------------------------------------------------
TINY_WORLD = [*TOY_TINY, "reward_model.epochs=1", "reward_model.n_normalization_samples=64"]


@pytest.mark.slow
def test_reproduction_end_to_end(tmp_path, capsys):
    from rlhf_bench.repro import cli as repro_cli

    args = ["rm_scaling", "--quick", f"--results-dir={tmp_path}/results", f"--artifacts-dir={tmp_path}/artifacts"]
    assert repro_cli.main([*args, "--", *TINY_WORLD]) == 0
    assert "verdict:" in capsys.readouterr().out
    (path,) = (tmp_path / "results" / "repro" / "rm_scaling").glob("*.json")
    verdict = json.loads(path.read_text())
    points = verdict["data"]["points"]
    assert len(points) == 4 and len(verdict["checks"]) == 4  # 2 sizes x 2 data sizes; 2 + 1 + 1 checks
    assert verdict["verdict"] == ("PASS" if all(c["passed"] for c in verdict["checks"]) else "FAIL")
    for p in points:
        assert 0 <= p["accuracy"] <= 1 and 0.5 <= p["ceiling"] <= 1 and p["pairs"] == 64
        record = json.loads((tmp_path / "results" / "runs" / p["run_id"] / "record.json").read_text())
        assert record["metrics"]["reward_model"]["accuracy"] == p["accuracy"]
        assert "reproductions" not in record  # the verdict names the run; the record is as its run wrote it
    small, policy = (sorted(points, key=lambda p: p["parameters"])[i] for i in (0, -1))
    assert small["backbone"] == {"n_layer": 1, "d_model": 16, "n_head": 2} and policy["backbone"] == "policy"
    assert small["parameters"] < policy["parameters"]
    # the same pairs at one n_train whatever the size: the same ceiling
    same = [p for p in points if p["n_train"] == 64]
    assert same[0]["ceiling"] == same[1]["ceiling"]
