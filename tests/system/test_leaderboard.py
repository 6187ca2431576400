"""The leaderboard is built from run records: grouping, intervals over seeds, the paired test
against the best row with Holm's correction, provenance, repeats and bad records apart."""

import base64
import hashlib
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from rlhf_bench.report import stats
from rlhf_bench.report.leaderboard import build_table, main, t95
from rlhf_bench.report.records import drop_repeats, load_records, per_prompt_frame, runs_frame


def _record(path, run_id, method, seed, gold, status="finished", n=None, per_prompt=None, **extra):
    """A record (and, with ``per_prompt`` [P] gold scores, its per_prompt.parquet whose mean is ``gold``)."""
    folder = path / "runs" / run_id
    folder.mkdir(parents=True)
    record = {
        "run_id": run_id,
        "status": status,
        "task": "sentiment",
        "method": method,
        "reward_model": "bradley_terry",
        "seed": seed,
        "config": {"method": {"n": n}, **extra.pop("config", {})},
        "metrics": {
            "policy": {"gold_reward": gold, "proxy_reward": 1.0, "kl": 2.0, "win_rate_vs_sft": 0.9},
            "sft": {"gold_reward": 0.1},
            "reward_model": {"accuracy": 0.9},
        },
        "cost": {"tokens_generated": 100, "wall_seconds": {"total": 10.0}},
        "error": None if status == "finished" else "NonFiniteError: loss is nan at step 3",
        "finished": f"2026-01-01T00:00:{len(list(path.glob('runs/*'))):02d}",
        **extra,
    }
    if per_prompt is not None:
        frame = pd.DataFrame({"policy": "policy", "prompt_id": np.arange(len(per_prompt)), "gold": per_prompt})
        frame.to_parquet(folder / "per_prompt.parquet", index=False)
        digest = hashlib.sha256((folder / "per_prompt.parquet").read_bytes()).hexdigest()
        record["artifacts"] = {"per_prompt": {"path": str(folder / "per_prompt.parquet"), "sha256": digest}}
        record["metrics"]["policy"]["gold_reward"] = float(np.mean(per_prompt))
    (folder / "record.json").write_text(json.dumps(record))


def _table(root, group_by=()):
    finished, _, _ = load_records(root)
    runs, _ = drop_repeats(runs_frame(finished, list(group_by)))
    per_prompt, _ = per_prompt_frame(runs)
    return build_table(runs, per_prompt, list(group_by))


@pytest.fixture
def results(tmp_path):
    for seed, gold in enumerate([0.7, 0.8, 0.9]):
        _record(tmp_path, f"ppo{seed}", "ppo", seed, gold)
    _record(tmp_path, "dpo0", "dpo", 0, 0.5)
    _record(tmp_path, "bad", "ppo", 3, float("nan"), status="failed")
    return tmp_path


def test_groups_over_seeds_with_mean_std_and_intervals(results):
    finished, others, rejects = load_records(results)
    assert len(finished) == 4 and [r["run_id"] for r in others] == ["bad"] and rejects == []
    table = _table(results)
    assert list(table["method"]) == ["ppo", "dpo"]  # sorted by gold reward
    ppo = table.iloc[0]
    assert ppo["seeds"] == 3 and ppo["gold_reward"] == pytest.approx(0.8)
    assert ppo["gold_reward_std"] == pytest.approx(0.1)  # sample std of 0.7, 0.8, 0.9
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # Student's t, 2 dof, two-sided 95%: (2p - 1) / sqrt(2p(1 - p))
    assert ppo["gold_reward_ci95"] == pytest.approx(t2 * 0.1 / math.sqrt(3))
    # the bootstrap of the mean of 3 draws from {0.7, 0.8, 0.9}: its 2.5% point is 0.7 (P(all 0.7) = 1/27 > 2.5%)
    assert (ppo["gold_reward_boot_low"], ppo["gold_reward_boot_high"]) == (pytest.approx(0.7), pytest.approx(0.9))
    assert math.isnan(table.iloc[1]["gold_reward_std"])  # one seed: no spread
    assert table.iloc[1]["vs_best"] == "untested" and ppo["vs_best"] == "best"


def test_t_quantiles_against_their_closed_forms():
    # 1 degree of freedom: Student's t is the Cauchy distribution, F^-1(p) = tan(pi (p - 1/2))
    assert t95(1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-9)  # 12.7062
    # 2 degrees of freedom: F^-1(p) = (2p - 1) / sqrt(2 p (1 - p))
    assert t95(2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-9)  # 4.3027
    assert t95(10**6) == pytest.approx(1.959964, abs=1e-5)


def test_welch_against_the_best_row_without_per_prompt_rows(results):
    _record(results, "dpo1", "dpo", 1, 0.55)
    ppo, dpo = (row for _, row in _table(results).iterrows())
    # Welch by hand: means 0.525 and 0.8, sample variances 0.00125 and 0.01,
    # se = sqrt(0.00125/2 + 0.01/3) = 0.0629153, t = -0.275 / se = -4.37096,
    # dof = se^4 / ((0.00125/2)^2 / 1 + (0.01/3)^2 / 2) = 2.63504 (Welch-Satterthwaite)
    se = math.sqrt(0.00125 / 2 + 0.01 / 3)
    t_stat, dof = -0.275 / se, se**4 / ((0.00125 / 2) ** 2 + (0.01 / 3) ** 2 / 2)
    expected = 2 * sps.t.sf(abs(t_stat), dof)
    assert dpo["p_vs_best"] == pytest.approx(expected, rel=1e-9) and dpo["p_holm"] == pytest.approx(expected)
    assert dpo["test"].startswith("Welch") and dpo["diff_vs_best"] == pytest.approx(-0.275)
    assert dpo["vs_best"] == ("< best" if expected < 0.05 else "≈ best")
    assert dpo["detectable"] == pytest.approx(stats.min_detectable_difference(se, dof))


def _three_configs(root, seeds=3, prompts=40):
    """best (A), close (B: 0.01 below) and far (C: 0.3 below), on the same prompts and seeds."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0.5, 0.3, size=prompts)
    scores = {}
    for method, shift in (("a", 0.0), ("b", -0.01), ("c", -0.3)):
        for seed in range(seeds):
            x = difficulty + shift + rng.normal(0, 0.05, size=prompts)
            scores[(method, seed)] = x
            _record(root, f"{method}{seed}", method, seed, 0.0, per_prompt=x)
    return scores


def test_paired_test_and_holm_against_the_best(tmp_path):
    scores = _three_configs(tmp_path)
    table = _table(tmp_path).set_index("method")
    a = np.stack([scores[("a", s)] for s in range(3)])
    raw = {}
    for m in ("b", "c"):
        x = np.stack([scores[(m, s)] for s in range(3)])
        ref = sps.ttest_rel(x.mean(axis=1), a.mean(axis=1))  # the paired test over seeds of the per-prompt means
        assert table.loc[m, "p_vs_best"] == pytest.approx(ref.pvalue) and "paired" in table.loc[m, "test"]
        raw[m] = ref.pvalue
    holm = stats.holm([raw["b"], raw["c"]])
    assert list(table.loc[["b", "c"], "p_holm"]) == [pytest.approx(holm[0]), pytest.approx(holm[1])]
    assert table.loc["a", "vs_best"] == "best" and table.loc["c", "vs_best"] == "< best"
    assert table.loc["b", "vs_best"] == ("≈ best" if holm[0] >= 0.05 else "< best")
    # the prompt-clustered s.e. of A: its 3 x 40 scores clustered by prompt
    clusters = np.tile(np.arange(40), 3)
    assert table.loc["a", "gold_se_prompt"] == pytest.approx(stats.clustered_se(a.ravel(), clusters))


def test_bad_records_are_listed_apart_and_the_rest_reported(results, capsys):
    runs = results / "runs"
    bad = {
        "garbage": b"\x89\xff\x00binary",
        "a-list": b"[1, 2, 3]",
        "empty": b"{}",
        "string-metric": json.dumps(
            {"status": "finished", "metrics": {"policy": {"gold_reward": "high"}}, "seed": 0}
        ).encode(),
        "no-metrics": json.dumps({"status": "finished", "run_id": "no-metrics", "seed": 1, "metrics": {}}).encode(),
    }
    for name, data in bad.items():
        (runs / name).mkdir()
        (runs / name / "record.json").write_bytes(data)
    _record(results, "tampered", "ppo", 7, 0.0, per_prompt=np.array([0.1, 0.2]))
    (runs / "tampered" / "per_prompt.parquet").write_bytes(b"not the file the record hashed")
    assert main(["--results-dir", str(results), "--wandb", "disabled", "--no-plots"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    expected = {
        "garbage": "not readable as JSON",
        "a-list": "a JSON list, not an object",
        "empty": "no status",
        "string-metric": "metrics.policy.gold_reward is a str ('high'), not a number",
        "no-metrics": "finished, but metrics.policy.gold_reward is missing",
        "tampered": "per-prompt file differs from the sha256 its record lists",
    }
    for name, reason in expected.items():
        assert re.search(rf"runs/{name}/\S+: {re.escape(reason)}", out), (name, out[-2000:])
    assert "6 files left out" in out
    md = (results / "leaderboard.md").read_text()
    assert "| ppo " in md and "| dpo " in md  # the others are reported


def test_repeats_of_one_identity_are_not_independent(tmp_path, capsys):
    for seed in (0, 1):
        _record(tmp_path, f"n4-{seed}", "best_of_n", seed, 0.5 + seed / 10, n=4)
        _record(tmp_path, f"n8-{seed}", "best_of_n", seed, 0.7 + seed / 10, n=8)
    table = _table(tmp_path)
    assert [(r.settings, r.seeds) for r in table.itertuples()] == [("method.n=8", 2), ("method.n=4", 2)]
    assert _table(tmp_path, ["method.n"]).iloc[0]["method.n"] == 8
    _record(tmp_path, "n4-rerun", "best_of_n", 0, 0.9, n=4)  # the sweep run again: seed 0 twice
    n4 = _table(tmp_path).set_index("settings").loc["method.n=4"]
    assert (n4["runs"], n4["seeds"]) == (2, 2) and n4["gold_reward"] == pytest.approx((0.9 + 0.6) / 2)  # the latest
    assert main(["--results-dir", str(tmp_path), "--wandb", "disabled", "--no-plots"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "1 repeated runs of a configuration and seed already counted were left out" in out and "n4-0" in out


def test_provenance_and_seed_scope_are_never_ranked_together(tmp_path, capsys):
    for seed in (0, 1):
        _record(tmp_path, f"fp32-{seed}", "ppo", seed, 0.5 + seed / 10, precision="fp32")
        _record(tmp_path, f"bf16-{seed}", "ppo", seed, 0.9 + seed / 10, precision="bf16")
        _record(tmp_path, f"pipe-{seed}", "ppo", seed, 0.2, precision="fp32", seed_scope="pipeline")
    table = _table(tmp_path)
    assert len(table) == 3 and table["rank_group"].nunique() == 3  # three rows, each its own ranking
    assert list(table["vs_best"]) == ["best"] * 3
    assert sorted(table["seed_scope"]) == ["method", "method", "pipeline"]
    assert main(["--results-dir", str(tmp_path), "--wandb", "disabled", "--no-plots"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "3 ranking groups" in out and "precision (" in out and "seed_scope (" in out


def test_cli_writes_markdown_csv_and_a_self_contained_html(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    _three_configs(tmp_path)
    _record(tmp_path, "bad", "a", 9, float("nan"), status="failed")
    assert main(["--results-dir", str(tmp_path)]) == 0
    html = (tmp_path / "leaderboard.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == 5 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "<table" in html and "≈ best" in html or "< best" in html
    assert not re.search(r"(src|href)=['\"](?!data:)", html)  # nothing outside the file
    for name in ("frontier", "prompt_differences", "profiles"):
        assert (tmp_path / f"leaderboard_{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))  # the wandb.Table run
    out = capsys.readouterr().out
    assert "1 runs not finished" in out and "NonFiniteError" in out
    md = (tmp_path / "leaderboard.md").read_text()
    assert "gold_reward (mean ± std)" in md and "p (Holm)" in md and "power (sentiment)" in md
    csv = pd.read_csv(tmp_path / "leaderboard.csv")
    assert {"gold_reward", "gold_reward_std", "p_holm", "detectable", "runs", "seeds"} <= set(csv.columns)
    assert main(["--results-dir", str(tmp_path), "--method", "b", "--wandb", "disabled", "--no-plots"]) == 0
    assert "| a " not in (tmp_path / "leaderboard.md").read_text()


def test_the_network_guard_is_on():
    import socket

    with pytest.raises(AssertionError, match="tried to reach the network"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)


@pytest.mark.slow
def test_sweep_leaderboard_recomputed_from_records(tmp_path):
    """3 methods x 3 seeds through the CLI (Hydra multirun), then the leaderboard's numbers are
    recomputed from the records with plain Python and compared; the per-prompt files average to the
    records' means."""
    import statistics
    import subprocess
    import sys

    from conftest import fast_overrides

    overrides = fast_overrides(tmp_path, ppo=False) + ["logger.mode=disabled"]
    sweep = subprocess.run(
        [sys.executable, "-m", "rlhf_bench", "-m", "method=sft,best_of_n,dpo", "seed=0,1,2", *overrides],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    results = tmp_path / "results"
    assert main(["--results-dir", str(results), "--wandb", "disabled", "--no-plots"]) == 0
    table = pd.read_csv(results / "leaderboard.csv").set_index("method")
    assert set(table.index) == {"sft", "best_of_n", "dpo"}
    records = [json.loads(p.read_text()) for p in results.glob("runs/*/record.json")]
    assert len(records) == 9 and all(r["status"] == "finished" for r in records)
    for method, row in table.iterrows():
        mine = [r for r in records if r["method"] == method]
        for metric in ("gold_reward", "kl", "win_rate_vs_sft"):
            values = [r["metrics"]["policy"][metric] for r in mine]
            assert row[metric] == pytest.approx(statistics.mean(values))
            assert row[f"{metric}_std"] == pytest.approx(statistics.stdev(values), nan_ok=True)
        assert row["seeds"] == 3 and row["runs"] == 3
    for r in records:
        frame = pd.read_parquet(results / "runs" / r["run_id"] / "per_prompt.parquet")
        for who in ("policy", "sft"):
            rows = frame[frame["policy"] == who]
            assert rows["gold"].mean() == pytest.approx(r["metrics"][who]["gold_reward"], rel=1e-6)
            assert rows["win_vs_sft"].mean() == pytest.approx(r["metrics"][who]["win_rate_vs_sft"], rel=1e-6)
