"""The leaderboard is built from run records: grouping, mean/std/CI over seeds, failed runs apart."""

import json
import math

import pytest

from rlhf_bench.report.leaderboard import add_significance, load_records, main, rows, t95


def _record(path, run_id, method, seed, gold, status="finished", n=None):
    record = {
        "run_id": run_id,
        "status": status,
        "task": "sentiment",
        "method": method,
        "reward_model": "bradley_terry",
        "seed": seed,
        "config": {"method": {"n": n}},
        "metrics": {
            "policy": {"gold_reward": gold, "proxy_reward": 1.0, "kl": 2.0, "win_rate_vs_sft": 0.9},
            "sft": {"gold_reward": 0.1},
            "reward_model": {"accuracy": 0.9},
        },
        "cost": {"tokens_generated": 100, "wall_seconds": {"total": 10.0}},
        "error": None if status == "finished" else "NonFiniteError: loss is nan at step 3",
    }
    folder = path / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(record))


@pytest.fixture
def results(tmp_path):
    for seed, gold in enumerate([0.7, 0.8, 0.9]):
        _record(tmp_path, f"ppo{seed}", "ppo", seed, gold)
    _record(tmp_path, "dpo0", "dpo", 0, 0.5)
    _record(tmp_path, "bad", "ppo", 3, float("nan"), status="failed")
    return tmp_path


def test_groups_over_seeds_with_mean_std_ci(results):
    finished, others = load_records(results)
    assert len(finished) == 4 and [r["run_id"] for r in others] == ["bad"]
    table = rows(finished, [])
    assert [r["method"] for r in table] == ["ppo", "dpo"]  # sorted by gold reward
    ppo = table[0]
    assert ppo["seeds"] == 3
    assert ppo["gold_reward"] == pytest.approx(0.8)
    assert ppo["gold_reward_std"] == pytest.approx(0.1)  # sample std of 0.7, 0.8, 0.9
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # Student's t, 2 dof, two-sided 95%: (2p - 1) / sqrt(2p(1 - p))
    assert ppo["gold_reward_ci95"] == pytest.approx(t2 * 0.1 / math.sqrt(3))
    assert math.isnan(table[1]["gold_reward_std"])  # one seed: no spread


def test_t_quantiles_against_their_closed_forms():
    # 1 degree of freedom: Student's t is the Cauchy distribution, F^-1(p) = tan(pi (p - 1/2))
    assert t95(1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-9)  # 12.7062
    # 2 degrees of freedom: F^-1(p) = (2p - 1) / sqrt(2 p (1 - p))
    assert t95(2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-9)  # 4.3027
    # many degrees of freedom: the normal quantile, Phi^-1(0.975) = sqrt(2) erfinv(0.95) = 1.959964
    assert t95(10**6) == pytest.approx(1.959964, abs=1e-5)
    assert t95(3) > t95(4) > t95(30) > t95(10**6)


def test_welch_significance_against_the_best_row(results):
    from scipy.stats import t as student_t

    _record(results, "dpo1", "dpo", 1, 0.55)
    table = rows(load_records(results)[0], [])
    add_significance(table)
    ppo, dpo = table
    assert ppo["vs_best"] == "best"
    # Welch by hand: means 0.525 and 0.8, sample variances 0.00125 and 0.01,
    # se = sqrt(0.00125/2 + 0.01/3) = 0.0629153, t = -0.275 / se = -4.37096,
    # dof = se^4 / ((0.00125/2)^2 / 1 + (0.01/3)^2 / 2) = 2.63504 (Welch-Satterthwaite)
    se = math.sqrt(0.00125 / 2 + 0.01 / 3)
    t_stat, dof = -0.275 / se, se**4 / ((0.00125 / 2) ** 2 + (0.01 / 3) ** 2 / 2)
    assert (t_stat, dof) == (pytest.approx(-4.37096, abs=1e-5), pytest.approx(2.63504, abs=1e-5))
    expected = 2 * student_t.sf(abs(t_stat), dof)  # two-sided
    assert dpo["p_vs_best"] == pytest.approx(expected, rel=1e-9)
    assert dpo["vs_best"] == f"p={expected:.3g}" + (" *" if expected < 0.05 else "")


def test_cli_writes_markdown_and_csv(results, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(results / "wandb_home"))
    assert main(["--results-dir", str(results)]) == 0
    for suffix in (".html", "_frontier.png", "_overoptimization.png", "_training.png"):
        path = results / f"leaderboard{suffix}"
        assert path.stat().st_size > 0, path
    assert (results / "leaderboard_frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "<table>" in (results / "leaderboard.html").read_text()
    assert list((results / "wandb").glob("offline-run-*/run-*.wandb"))  # the wandb.Table run
    out = capsys.readouterr().out
    assert "1 runs not finished" in out and "NonFiniteError" in out
    md = (results / "leaderboard.md").read_text()
    assert "| sentiment | ppo | bradley_terry |  | 3 | 3 | 0.800 ± 0.100 |" in md and "| best |" in md
    assert (
        (results / "leaderboard.csv").read_text().startswith("task,method,reward_model,settings,runs,seeds,gold_reward")
    )
    assert main(["--results-dir", str(results), "--method", "dpo", "--wandb", "disabled", "--no-plots"]) == 0
    assert "ppo" not in (results / "leaderboard.md").read_text()


def test_different_settings_are_different_rows(tmp_path):
    for seed in (0, 1):
        _record(tmp_path, f"n4-{seed}", "best_of_n", seed, 0.5 + seed / 10, n=4)
        _record(tmp_path, f"n8-{seed}", "best_of_n", seed, 0.7 + seed / 10, n=8)
    finished, _ = load_records(tmp_path)
    table = rows(finished, [])
    assert [(r["settings"], r["seeds"]) for r in table] == [("method.n=8", 2), ("method.n=4", 2)]
    _record(tmp_path, "n4-rerun", "best_of_n", 0, 0.5, n=4)
    n4 = [r for r in rows(load_records(tmp_path)[0], []) if r["settings"] == "method.n=4"][0]
    assert (n4["runs"], n4["seeds"]) == (3, 2)
    assert rows(finished, ["method.n"])[0]["method.n"] == 8


def test_the_network_guard_is_on():
    import socket

    with pytest.raises(AssertionError, match="tried to reach the network"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)


@pytest.mark.slow
def test_sweep_leaderboard_recomputed_from_records(tmp_path):
    """3 methods x 3 seeds through the CLI (Hydra multirun), then the leaderboard's numbers are
    recomputed from the records with plain Python and compared."""
    import csv
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
    table = {r["method"]: r for r in csv.DictReader((results / "leaderboard.csv").read_text().splitlines())}
    assert set(table) == {"sft", "best_of_n", "dpo"}
    records = [json.loads(p.read_text()) for p in results.glob("runs/*/record.json")]
    assert len(records) == 9 and all(r["status"] == "finished" for r in records)
    for method, row in table.items():
        mine = [r for r in records if r["method"] == method]
        for metric in ("gold_reward", "kl", "win_rate_vs_sft"):
            values = [r["metrics"]["policy"][metric] for r in mine]
            assert float(row[metric]) == pytest.approx(statistics.mean(values))
            assert float(row[f"{metric}_std"]) == pytest.approx(statistics.stdev(values), nan_ok=True)
        assert row["seeds"] == "3" and row["runs"] == "3"
