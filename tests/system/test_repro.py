"""The registry of published claims and rlhf-bench-repro: every claim file is well formed and
runnable as stated, a malformed one is refused with its file and key, and a reproduction writes
its verdict into its own file, into the records it used and onto the leaderboard."""

import json
import statistics
from pathlib import Path

import pytest
from conftest import RM_FAST, TOY_TINY

from rlhf_bench.cli import load_config
from rlhf_bench.repro import cli as repro_cli
from rlhf_bench.repro.registry import REQUIRED, RegistryError, get_claim, load_claim, load_claims, published_dir
from rlhf_bench.repro.session import Check, Outcome, within


def test_every_claim_is_well_formed_and_runnable_as_stated():
    from hydra.utils import get_method

    claims = load_claims()
    assert claims, f"no claims in {published_dir()}"
    for claim in claims.values():
        for key in REQUIRED:
            assert getattr(claim, key) not in (None, ""), (claim.name, key)
        assert claim.needs in ("cpu", "gpu+hub"), claim.name
        for experiment in claim.experiments:
            load_config([f"experiment={experiment}"])  # composes, with every key typed
        if claim.runner is not None:
            module, function = claim.runner.split(":")
            assert callable(get_method(f"{module}.{function}")), claim.runner
        if claim.needs == "cpu":
            assert claim.runner is not None, f"{claim.name} runs here but names no runner"


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


GOOD = """
name: demo
title: t
paper: p
source: Fig. 1
measured: m
published: 1.0
claim: c
scale: s
conventions: {kl_estimator: k1}
"""


def test_malformed_claims_name_the_file_and_the_key(tmp_path):
    assert load_claim(_write(tmp_path, "demo", GOOD)).published == 1.0
    with pytest.raises(RegistryError, match=r"demo.yaml: missing key 'scale'"):
        load_claim(_write(tmp_path, "demo", GOOD.replace("scale: s\n", "")))
    with pytest.raises(RegistryError, match=r"unknown key 'tolerence' \(did you mean 'tolerance'\?\)"):
        load_claim(_write(tmp_path, "demo", GOOD + "tolerence: {rtol: 0.1}\n"))
    with pytest.raises(RegistryError, match="must equal the file name 'other'"):
        load_claim(_write(tmp_path, "other", GOOD))
    with pytest.raises(RegistryError, match="'runner' must be 'package.module:function'"):
        load_claim(_write(tmp_path, "demo", GOOD + "runner: rlhf_bench.repro.adaptive_kl\n"))
    with pytest.raises(RegistryError, match="not valid YAML"):
        load_claim(_write(tmp_path, "demo", GOOD + "published: [1, \n"))
    with pytest.raises(RegistryError, match="did you mean 'adaptive_kl_target'"):
        get_claim("adaptive_kl_targt")


def test_within_and_the_verdict():
    assert within(6.5, 6.0, rtol=0.1) and not within(6.7, 6.0, rtol=0.1) and within(0.1, 0.0, atol=0.1)
    assert not within(float("nan"), 1.0, atol=10)
    ok, bad = Check("a", 1, 1, True), Check("b", 1, 2, False)
    assert Outcome([ok]).verdict == "PASS" and Outcome([ok, bad]).verdict == "FAIL"
    assert Outcome([]).verdict == "FAIL"  # nothing checked is not a pass


def test_cli_lists_and_refuses_bad_input(capsys):
    assert repro_cli.main(["--list"]) == 0
    assert repro_cli.main(["no_such_claim"]) == 2
    assert "not in the registry" in capsys.readouterr().err
    # a bad override is refused before anything trains
    assert repro_cli.main(["adaptive_kl_target", "method.lrr=1"]) == 2
    assert "lrr" in capsys.readouterr().err


REPRO_TINY = [
    *TOY_TINY,
    "preferences.n_train=128",
    "method.steps=4",
    "method.prompts_per_step=16",
    "method.num_minibatches=2",
    "method.epochs=1",
    *RM_FAST,
]


@pytest.mark.slow
def test_a_reproduction_writes_a_verdict_derived_from_its_runs_and_the_leaderboard_lists_it(tmp_path, capsys):
    from rlhf_bench.report import leaderboard
    from rlhf_bench.repro.adaptive_kl import last_fraction
    from rlhf_bench.repro.session import within

    root = tmp_path
    args = ["adaptive_kl_target", "--quick", f"--results-dir={root}/results", f"--artifacts-dir={root}/artifacts"]
    assert repro_cli.main([*args, "--", *REPRO_TINY]) == 0
    out = capsys.readouterr().out
    verdicts = sorted((root / "results" / "repro" / "adaptive_kl_target").glob("*.json"))
    assert len(verdicts) == 1
    verdict = json.loads(verdicts[0].read_text())
    assert verdict["quick"] is True and len(verdict["checks"]) == 4
    (run_id,) = verdict["runs"]
    record = json.loads((root / "results" / "runs" / run_id / "record.json").read_text())
    # each check's measured value and pass/fail is what the run's own record says
    tol = get_claim("adaptive_kl_target").tolerance
    target = float(tol["target"])
    tail = statistics.mean(last_fraction(record["history"]["ppo"], "objective/kl", tol["last_fraction"]))
    assert verdict["checks"][0]["measured"] == pytest.approx(tail)
    assert verdict["checks"][2]["measured"] == pytest.approx(record["metrics"]["policy"]["exact_kl"])
    # 4 PPO steps from the SFT policy (KL 0) move the KL nowhere near the 6-nat target: the
    # controller's check fails, and so does the verdict, which is the conjunction of the checks
    assert tail < target / 2
    assert verdict["checks"][0]["passed"] is within(tail, target, rtol=float(tol["rtol"])) is False
    assert verdict["verdict"] == "FAIL" and "verdict: FAIL" in out
    assert record["status"] == "finished" and record["config"]["method"]["adaptive_kl"] is True
    assert "reproductions" not in record  # the verdict names the run; the record is as its run wrote it
    # run again: the finished run of the same config is reused, not retrained
    assert repro_cli.main([*args, "--", *REPRO_TINY]) == 0
    assert len(list((root / "results" / "runs").iterdir())) == 1
    # the leaderboard lists the latest verdict (and the toy run's regret)
    assert leaderboard.main(["--results-dir", str(root / "results"), "--no-plots", "--wandb", "disabled"]) == 0
    markdown = (root / "results" / "leaderboard.md").read_text()
    assert "## Reproductions" in markdown and "| adaptive_kl_target |" in markdown
    assert "regret (mean ± std)" in markdown
