"""rlhf-bench-report compare A B: the paired comparison of two configurations, from their records
and per-prompt files, against scipy on the same numbers; selectors that pick none or several."""

import numpy as np
import pytest
from scipy import stats as sps
from test_leaderboard import _record

from rlhf_bench.report import stats
from rlhf_bench.report.leaderboard import main


@pytest.fixture
def two_methods(tmp_path):
    """ppo and dpo, 4 seeds each, 50 shared prompts whose difficulty dominates; ppo 0.02 better."""
    rng = np.random.default_rng(1)
    difficulty = rng.normal(0.0, 0.5, size=50)
    scores = {}
    for method, shift in (("ppo", 0.02), ("dpo", 0.0)):
        for seed in range(4):
            scores[(method, seed)] = difficulty + shift + rng.normal(0, 0.05, size=50) + rng.normal(0, 0.005)
            _record(tmp_path, f"{method}{seed}", method, seed, 0.0, per_prompt=scores[(method, seed)])
    return tmp_path, scores


def test_compare_paired_and_unpaired_against_scipy(two_methods, capsys):
    root, scores = two_methods
    assert main(["compare", "method=ppo", "method=dpo", "--results-dir", str(root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    a = np.stack([scores[("ppo", s)] for s in range(4)])
    b = np.stack([scores[("dpo", s)] for s in range(4)])
    paired = sps.ttest_rel(a.mean(axis=1), b.mean(axis=1))
    welch = sps.ttest_ind(a.mean(axis=1), b.mean(axis=1), equal_var=False)
    assert f"{paired.pvalue:.3g}" in out and f"{welch.pvalue:.3g}" in out
    diff = (a - b).mean()
    assert f"{diff:+.4f}" in out
    unpaired_width, paired_width = stats.prompt_level_widths(a, b)
    assert f"{paired_width:.4f} paired" in out and f"{unpaired_width:.4f} unpaired" in out
    assert unpaired_width > 5 * paired_width  # the prompts' shared difficulty is paired away
    ahead = int(np.sum((a - b).mean(axis=0) > 0))
    assert f"{ahead}/50" in out
    md = (root / "compare_method=ppo_vs_method=dpo.md").read_text()
    assert "A - B paired" in md and "A - B unpaired" in md
    assert (root / "compare_method=ppo_vs_method=dpo.png").read_bytes()[:4] == b"\x89PNG"


def test_two_run_ids_of_different_seeds_pair_over_prompts(two_methods, capsys):
    root, scores = two_methods
    assert main(["compare", "ppo0", "dpo1", "--results-dir", str(root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    ref = sps.ttest_rel(scores[("ppo", 0)], scores[("dpo", 1)])
    assert f"{ref.pvalue:.3g}" in out and "no seed variance" in out


def test_selectors_that_pick_none_or_several(two_methods, capsys):
    root, _ = two_methods
    _record(root, "ppo-n8", "ppo", 0, 0.5, n=8)  # a second ppo configuration
    assert main(["compare", "method=ppo", "method=dpo", "--results-dir", str(root)]) == 2
    assert "matches 2 configurations; add a key that tells them apart: method.n" in capsys.readouterr().out
    assert main(["compare", "method=grpo", "method=dpo", "--results-dir", str(root)]) == 2
    assert "'method=grpo' matches no finished run" in capsys.readouterr().out
    assert main(["compare", "method.n=8", "method=dpo", "--results-dir", str(root)]) == 0
