"""End to end on a tiny config: every stage runs, the record and the W&B files hold the metrics,
and a second run reuses the cached SFT and reward model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fast_overrides

from rlhf_bench import pipeline
from rlhf_bench.cli import load_config
from rlhf_bench.report.table import summary_rows, summary_table
from rlhf_bench.tracking.wandb_files import read_offline_run

METRICS = ("gold_reward", "proxy_reward", "kl", "win_rate_vs_sft")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    first = pipeline.run(load_config(fast_overrides(root, shared=False, lm_eval=True) + ["seed=0"]))
    second = pipeline.run(load_config(fast_overrides(root, shared=False, lm_eval=True) + ["seed=1"]))
    return root, first, second


def test_record_has_every_field(two_runs):
    root, record, _ = two_runs
    on_disk = json.loads(Path(record["record_path"]).read_text())
    assert on_disk["status"] == "finished" and on_disk["error"] is None
    for key in (
        "config",
        "method",
        "task",
        "model",
        "seed",
        "git",
        "versions",
        "metrics",
        "cost",
        "artifacts",
        "wandb",
    ):
        assert key in on_disk, key
    assert on_disk["method"] == "ppo" and on_disk["task"] == "sentiment" and on_disk["seed"] == 0
    assert on_disk["config"]["method"]["steps"] == 2
    for who in ("policy", "sft"):
        for metric in METRICS:
            assert isinstance(on_disk["metrics"][who][metric], float), (who, metric)
    assert on_disk["metrics"]["sft"]["kl"] == 0.0
    assert on_disk["metrics"]["policy"]["kl"] != 0.0
    assert 0.0 <= on_disk["metrics"]["reward_model"]["accuracy"] <= 1.0
    cost = on_disk["cost"]
    assert cost["tokens_generated"] > 0 and cost["tokens_trained"] > 0 and cost["wall_seconds"]["total"] > 0
    assert on_disk["wandb"]["mode"] == "offline" and on_disk["wandb"]["run_id"]
    assert len(on_disk["history"]["ppo"]) == 2
    assert on_disk["versions"]["torch"]
    # lm-eval's offline suite ran on both policies, with its task versions.
    for who in ("policy", "sft"):
        lm = on_disk["metrics"]["lm_eval"][who]
        assert lm["rb_perplexity"]["word_perplexity"] > 1.0
        assert 0.0 <= lm["rb_probe"]["acc"] <= 1.0 and "acc_stderr" in lm["rb_probe"]
        assert -1.0 <= lm["rb_gold"]["gold_reward"] <= 1.0
        assert lm["_versions"] == {"rb_gold": 1.0, "rb_perplexity": 1.0, "rb_probe": 1.0}


def test_second_run_reuses_sft_and_reward_model(two_runs):
    _, first, second = two_runs
    for stage in ("base", "sft", "preferences", "reward_model"):
        assert first["artifacts"][stage]["cached"] is False, stage
        assert second["artifacts"][stage]["cached"] is True, stage
        assert first["artifacts"][stage]["path"] == second["artifacts"][stage]["path"]
    assert "sft" not in second["history"]  # nothing was trained again
    assert second["cost"]["tokens_trained"] < first["cost"]["tokens_trained"]


def test_changed_stage_config_rebuilds_only_downstream(two_runs):
    root, first, _ = two_runs
    third = pipeline.run(
        load_config(
            fast_overrides(root, shared=False, lm_eval=True) + ["preferences.flip_prob=0.2", "logger.mode=disabled"]
        )
    )
    assert third["artifacts"]["sft"]["cached"] is True
    assert third["artifacts"]["preferences"]["cached"] is False
    assert third["artifacts"]["reward_model"]["cached"] is False
    assert third["wandb"]["mode"] == "disabled"


def test_wandb_offline_files_hold_the_logged_metrics(two_runs):
    _, record, _ = two_runs
    run = read_offline_run(record["wandb"]["dir"])
    assert run["state"] == "finished"
    logged = run["history"]
    assert any("sft/train/loss" in row for row in logged)
    assert any("reward_model/train/loss" in row for row in logged)
    ppo_rows = [row for row in logged if "ppo/objective/kl" in row]
    assert len(ppo_rows) == 2
    assert ppo_rows[-1]["ppo/objective/kl"] == pytest.approx(record["history"]["ppo"][-1]["objective/kl"])
    summary = run["summary"]
    assert summary["eval/policy/gold_reward"] == pytest.approx(record["metrics"]["policy"]["gold_reward"])
    probe = record["metrics"]["lm_eval"]["policy"]["rb_probe"]["acc"]
    assert summary["eval/lm_eval/policy/rb_probe/acc"] == pytest.approx(probe)
    assert run["config"]["method"]["name"] == "ppo"


def test_summary_table_is_built_from_the_record(two_runs):
    _, record, _ = two_runs
    rows = summary_rows(record)
    assert [r["policy"] for r in rows] == ["sft (ref)", "ppo"]
    assert rows[1]["gold_reward"] == record["metrics"]["policy"]["gold_reward"]
    from rich.console import Console

    console = Console(record=True, width=140)
    console.print(summary_table(record))
    text = console.export_text()
    assert f"{record['metrics']['policy']['gold_reward']:.3f}" in text


def test_cli_run_prints_table_and_paths(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf_bench",
            *fast_overrides(tmp_path),
            "logger.mode=disabled",
            "run_name=cli",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gold reward" in proc.stdout and "record:" in proc.stdout
    records = list((tmp_path / "results" / "runs").glob("*-cli-*/record.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["status"] == "finished"


def test_unwritable_results_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="paths.results_dir"):
        pipeline.run(load_config(fast_overrides(tmp_path, shared=False) + [f"paths.results_dir={blocker}/results"]))
    assert not (tmp_path / "artifacts").exists()


def test_same_seed_gives_the_same_numbers(two_runs):
    """Every stage is budgeted in steps and seeded: rerunning seed 0 reproduces its metrics exactly on CPU."""
    root, first, _ = two_runs
    again = pipeline.run(
        load_config(fast_overrides(root, shared=False, lm_eval=True) + ["seed=0", "logger.mode=disabled"])
    )
    assert again["metrics"]["policy"] == first["metrics"]["policy"]
    assert again["metrics"]["sft"] == first["metrics"]["sft"]


def test_lm_eval_perplexity_matches_a_direct_computation(two_runs):
    """rb_perplexity's word perplexity equals exp(-sum log p / words) computed with the SFT model itself:
    each held-out text scored after an EOS token (lm-eval's rolling window, one window per short text)."""
    import math
    import re

    import torch

    from rlhf_bench.core import models

    _, record, _ = two_runs
    suite = Path(record["record_path"]).parent / "lm_eval"
    texts = [json.loads(line)["text"] for line in (suite / "rb_perplexity.jsonl").read_text().splitlines()]
    texts = texts[: record["config"]["eval"]["lm_eval"]["limit"]]
    sft = record["artifacts"]["sft"]["path"]
    tok = models.load_tokenizer(sft)
    model = models.load_causal_lm(sft, tok).eval()
    total_logp, words = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = [tok.eos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
            total_logp += sum(float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1))
            words += len(re.split(r"\s+", text))
    expected = math.exp(-total_logp / words)
    measured = record["metrics"]["lm_eval"]["sft"]["rb_perplexity"]["word_perplexity"]
    assert measured == pytest.approx(expected, rel=1e-3)


def test_a_record_rebuilt_from_the_wandb_run_matches(two_runs):
    """What `rlhf-bench-report --wandb-project` reads from W&B (config + summary) rebuilds the record's
    metrics; checked on the offline run's own files."""
    from rlhf_bench.report.leaderboard import record_from_wandb

    _, record, _ = two_runs
    run = read_offline_run(record["wandb"]["dir"])
    rebuilt = record_from_wandb(record["wandb"]["run_id"], run["state"], run["config"], run["summary"])
    assert rebuilt["status"] == "finished" and rebuilt["method"] == "ppo" and rebuilt["seed"] == 0
    for who in ("policy", "sft"):
        for key, value in record["metrics"][who].items():
            assert rebuilt["metrics"][who][key] == pytest.approx(value), (who, key)
    assert rebuilt["cost"]["wall_seconds"]["total"] == pytest.approx(record["cost"]["wall_seconds"]["total"])
