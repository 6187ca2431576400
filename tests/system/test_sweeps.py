"""Sweeps and clusters: every ready sweep and launcher config composes, the preflight checks a
sweep's values, the SLURM dry run prints the job script, the W&B sweep's parameters are config
keys; end to end, a joblib multirun and a two-trial Optuna study."""

import json
import subprocess
import sys
import time
import zipfile
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from conftest import fast_overrides
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode

from rlhf_bench.cli import (
    _jobs_to_check,
    compose,
    conf_dir,
    load_config,
    objective,
    preflight,
    sweep_overrides,
    sweeps_dir,
)
from rlhf_bench.methods.best_of_n import BestOfNConfig
from rlhf_bench.methods.pg import PGConfig

SWEEPS = sorted(p.stem for p in sweeps_dir().glob("*.yaml"))
LAUNCHERS = sorted(p.stem for p in (conf_dir() / "hydra" / "launcher").glob("*.yaml"))
# Tiny runs without the lm-eval suite or W&B: these tests are about launching, not evaluating.
QUICK = ["eval.lm_eval.tasks=[]", "logger.mode=disabled"]


def _params(sweep: str) -> dict[str, str]:
    """The sweep's ``hydra.sweeper.params`` as override strings, key -> value."""
    cfg = compose([f"+sweep={sweep}"], return_hydra_config=True)
    return {k: str(v) for k, v in cfg.hydra.sweeper.params.items()}


def _values(override_value: str) -> list[str]:
    return list(OverridesParser.create().parse_override(f"k={override_value}").sweep_string_iterator())


def test_the_ready_sweeps():
    assert SWEEPS == ["bon_n", "methods_x_seeds", "pg_family", "ppo_adaptive_kl", "ppo_kl", "ppo_optuna"]


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_is_a_multirun_whose_every_value_composes(sweep):
    cfg = compose([f"+sweep={sweep}"], return_hydra_config=True)
    assert cfg.hydra.mode == RunMode.MULTIRUN  # -m is optional
    assert cfg.hydra.sweeper.params
    assert "sweep" not in cfg  # a global-package file: it sets keys, it is not one
    jobs = _jobs_to_check(sweep_overrides([f"+sweep={sweep}"]))
    for job in jobs:  # what the CLI's preflight composes: every value of every key once
        load_config(job)
    assert len(jobs) > 1


def test_methods_x_seeds_and_pg_family_cover_every_method_times_three_seeds():
    classic, family = _params("methods_x_seeds"), _params("pg_family")
    methods = {p.stem: p.read_text() for p in (conf_dir() / "method").glob("*.yaml")}
    presets = sorted(m for m, text in methods.items() if "rlhf_bench.methods.pg.train" in text)
    assert sorted(_values(family["method"])) == presets, "a new preset belongs in sweeps/pg_family.yaml"
    others = sorted(set(methods) - set(presets)) + ["grpo", "ppo", "rloo"]  # the classic online three too
    assert sorted(_values(classic["method"])) == sorted(others), "a new method belongs in sweeps/methods_x_seeds.yaml"
    assert _values(classic["seed"]) == _values(family["seed"]) == ["0", "1", "2"]
    assert load_config(["+sweep=methods_x_seeds"]).task.name == "sentiment"
    assert load_config(["+sweep=pg_family"]).task.name == "chains"


def test_ppo_kl_sweeps_are_ppo_config_keys():
    ppo_keys = {f.name for f in fields(PGConfig)}
    fixed, adaptive = _params("ppo_kl"), _params("ppo_adaptive_kl")
    assert load_config(["+sweep=ppo_kl"]).method.name == load_config(["+sweep=ppo_adaptive_kl"]).method.name == "ppo"
    assert fixed["method.adaptive_kl"] == "false" and len(_values(fixed["method.kl_coef"])) >= 5
    assert adaptive["method.adaptive_kl"] == "true" and len(_values(adaptive["method.target_kl"])) >= 4
    for params in (fixed, adaptive):
        assert {k.removeprefix("method.") for k in params if k.startswith("method.")} <= ppo_keys


def test_bon_n_sweeps_n_over_powers_of_two():
    params = _params("bon_n")
    assert load_config(["+sweep=bon_n"]).method.name == "best_of_n" and "n" in {f.name for f in fields(BestOfNConfig)}
    assert [int(n) for n in _values(params["method.n"])] == [1, 2, 4, 8, 16, 32, 64]


def test_optuna_sweep_tunes_lr_and_kl_coef_log_uniform_to_maximise():
    cfg = compose(["+sweep=ppo_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and str(sweeper.direction) == "maximize"
    for key in ("method.lr", "method.kl_coef"):
        value = OverridesParser.create().parse_override(f"{key}={sweeper.params[key]}").value()
        assert value.tags == {"log"} and 0 < value.start < value.end, key


def test_command_line_value_replaces_the_sweeps():
    overrides = sweep_overrides(["+sweep=methods_x_seeds", "seed=0", "method=ppo,dpo"])
    assert overrides == ["+sweep=methods_x_seeds", "seed=0", "method=ppo,dpo"]
    assert sweep_overrides(["seed=0,1"]) == ["seed=0,1"]  # no sweep selected: the command line as is


def test_preflight_checks_both_ends_of_a_sampled_range():
    jobs = _jobs_to_check(sweep_overrides(["+sweep=ppo_optuna"]))
    tried = {item for job in jobs for item in job}
    assert {"method.lr=1e-05", "method.lr=0.001", "method.kl_coef=0.005", "method.kl_coef=0.5"} <= tried


@pytest.mark.parametrize(
    "argv, key, values",
    [
        (
            ["-m", "+sweep=bon_n", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
            "method.n",
            {1, 2, 4, 8, 16, 32, 64},
        ),
        (["-m", "method=ppo,dpo,rloo", "seed=0,1,2", "hydra/launcher=joblib"], "method.name", {"ppo", "dpo", "rloo"}),
        (["-m", "method=ppo,dpo,rloo", "seed=0,1,2", "hydra/launcher=joblib"], "seed", {0, 1, 2}),
        (["-m", "+sweep=ppo_optuna", "hydra.sweeper.n_trials=2", "hydra/launcher=slurm"], "method.lr", {1e-5, 1e-3}),
        (["-m", "hydra/sweeper=optuna", "method.lr=tag(log, interval(1e-5, 1e-3))"], "method.lr", {1e-5, 1e-3}),
        (["+sweep=ppo_kl", "hydra/launcher=ray_cluster"], "method.kl_coef", {0.0, 0.01, 0.02, 0.05, 0.1, 0.2}),
        (["+sweep=bon_n", "method.n=4", "seed=1"], "method.n", {4}),  # the sweep selects best_of_n: its keys are there
    ],
)
def test_preflight_passes_sweeps_with_launchers_and_sweepers(argv, key, values, monkeypatch):
    """A valid sweep passes the check (no exit), and the check composed every value of the sweep."""
    from rlhf_bench import cli

    composed = []
    load = cli.load_config
    monkeypatch.setattr(cli, "load_config", lambda overrides: composed.append(load(overrides)) or composed[-1])
    preflight(argv)  # exits 2 on a config error
    seen = set()
    for cfg in composed:
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        seen.add(node)
    assert seen == values


@pytest.mark.parametrize(
    "args, expected",
    [
        (["+sweep=bon_n", "method.n=0,4"], "method.n must be >= 1"),
        (["-m", "+sweep=ppo_optuna", "method.lr=tag(log, interval(-1, 1e-3))"], "method.lr must be > 0"),
        (["+sweep=bon_n", "method=ppo"], "'method.n' is not a key of the chosen method option"),
        (["-m", "method.n=4"], "the method options that have it: best_of_n"),
        (["+sweep=methods_x_seed"], "Did you mean +sweep=methods_x_seeds?"),
        (["-m", "hydra/launcher=jobib"], "Did you mean hydra/launcher=joblib?"),
        (["-m", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_job=2"], "Did you mean: hydra.launcher.n_jobs?"),
        (["-m", "seed=0,1", "hydra.launcher.n_jobs=2"], "The chosen hydra/launcher (basic) has no such key."),
        (
            ["+sweep=bon_n", "hydra/launcher=slurm", "hydra.launcher.partitio=gpu"],
            "Did you mean: hydra.launcher.partition?",
        ),
        (["+sweep=ppo_optuna", "hydra.sweeper.n_trial=2"], "Did you mean: hydra.sweeper.n_trials"),
    ],
)
def test_bad_sweep_is_one_line_and_exit_2(args, expected, capsys):
    with pytest.raises(SystemExit) as info:
        preflight(args)
    assert info.value.code == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("launcher", [*LAUNCHERS, "joblib"])
def test_every_launcher_config_composes(launcher):
    cfg = compose([f"hydra/launcher={launcher}", "+sweep=bon_n"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.startswith("hydra_plugins.")


def test_slurm_launcher_resources_are_keys():
    resources = {
        "partition": "gpu",
        "nodes": 2,
        "gpus_per_node": 4,
        "cpus_per_task": 16,
        "mem_gb": 64,
        "timeout_min": 30,
    }
    cfg = compose(["hydra/launcher=slurm", *[f"hydra.launcher.{k}={v}" for k, v in resources.items()]], True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert {k: launcher[k] for k in resources} == resources
    with pytest.raises(Exception, match="gpus_per_nod"):  # the plugin's schema types the keys
        compose(["hydra/launcher=slurm", "hydra.launcher.gpus_per_nod=1"], True)


def test_ray_launcher_config_matches_the_plugin():
    # hydra-ray-launcher is not installed in CI (ray is heavy); its launcher is RayLauncher(ray=...)
    # with ray.init -> ray.init(**init) and ray.remote -> ray.remote(**remote) per job.
    launcher = compose(["hydra/launcher=ray_cluster"], True).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert set(launcher) == {"_target_", "ray"} and set(launcher.ray) == {"init", "remote"}
    assert launcher.ray.init.address == "auto" and "object_store_memory" in launcher.ray.init
    assert {"num_gpus", "num_cpus", "memory"} <= set(launcher.ray.remote)


def test_ray_launcher_config_instantiates_the_plugins_launcher():
    # Runs where the `ray` extra is installed (checked by hand with hydra-ray-launcher 1.2.2).
    pytest.importorskip("hydra_plugins.hydra_ray_launcher.ray_launcher")
    from hydra.utils import instantiate
    from hydra_plugins.hydra_ray_launcher._config import RayLauncherConf
    from omegaconf import OmegaConf

    ours = compose(["hydra/launcher=ray_cluster"], True).hydra.launcher
    OmegaConf.merge(OmegaConf.structured(RayLauncherConf), ours)  # the plugin's schema accepts it
    launcher = instantiate(ours)
    launcher.ray_cfg.init.setdefault("object_store_memory", 78643200)  # what the plugin does
    assert launcher.ray_cfg.init.object_store_memory is None  # so ray.init(address=...) accepts it


def test_slurm_dry_run_prints_the_sbatch_script(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(sweeps_dir() / "slurm_dry_run.py"),
            "+sweep=bon_n",
            "seed=0",
            "hydra.launcher.partition=gpu-test",
            "hydra.launcher.gpus_per_node=2",
            "hydra.launcher.cpus_per_task=6",
            "hydra.launcher.timeout_min=30",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = proc.stdout
    assert script.startswith("#!/bin/bash")
    for line in (
        "#SBATCH --partition=gpu-test",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=6",
        "#SBATCH --time=30",
        "#SBATCH --mem=32GB",
        "#SBATCH --job-name=rlhf-bench",
        "#SBATCH --array=0-6%7",  # 7 values of n, one seed
    ):
        assert line in script, line
    assert "-m submitit.core._submit" in script and "method.n=64" in script
    assert not (tmp_path / "results").exists()  # nothing was written, nothing submitted


def _wandb_sweep() -> dict:
    return yaml.safe_load((sweeps_dir() / "wandb_sweep" / "ppo_lr_kl.yaml").read_text())


def test_wandb_sweep_parameters_compose_as_overrides():
    sweep = _wandb_sweep()
    assert sweep["method"] in ("grid", "random", "bayes") and sweep["metric"]["goal"] == "maximize"
    command = sweep["command"]
    assert command[:4] == ["${env}", "${interpreter}", "-m", "rlhf_bench"] and command[-1] == "${args_no_hyphens}"
    fixed = [c for c in command[4:] if not c.startswith("${")]
    for name, spec in sweep["parameters"].items():
        values = spec.get("values") or [spec[k] for k in ("value", "min", "max") if k in spec]
        for value in values:  # as the agent writes them: f"{name}={value}"
            load_config([*fixed, f"{name}={value}"])
        if "distribution" in spec:
            assert spec["distribution"] in ("log_uniform_values", "uniform", "int_uniform", "q_log_uniform_values")


def test_wandb_sweep_metric_is_what_a_run_logs():
    import torch

    from rlhf_bench.evaluation.gold import _summary
    from rlhf_bench.pipeline import flatten

    x = torch.tensor([0.1, 0.2])
    samples = {"gold": x, "proxy": x, "kl": x, "length": x, "eos": x}
    logged = flatten({"policy": _summary(samples, x)}, "eval/")  # the pipeline's W&B summary keys
    assert _wandb_sweep()["metric"]["name"] in logged


def test_objective_is_the_gold_reward():
    record = {"metrics": {"policy": {"gold_reward": 0.7}, "sft": {"gold_reward": 0.1}}}
    assert objective(record) == 0.7
    assert objective({"metrics": {"sft": {"gold_reward": 0.1}}}) == 0.1  # method=sft: the policy is SFT


def test_a_failed_job_does_not_stop_the_sweep(tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf_bench",
            "-m",
            "seed=0,1",
            "paths.artifacts_dir=blocker/artifacts",  # each job fails at once, before any training
            "logger.mode=disabled",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "#1 : seed=1" in output  # the second job ran after the first failed
    assert output.count("run failed: OSError: cannot write to artifacts_dir") == 3  # each job, then the summary
    assert "Traceback" not in output


@pytest.mark.slow
def test_wheel_ships_and_finds_the_sweeps(tmp_path, installed_wheel):
    wheel, site = installed_wheel
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("methods_x_seeds.yaml", "ppo_optuna.yaml", "wandb_sweep/ppo_lr_kl.yaml", "slurm_dry_run.py"):
        assert f"rlhf_bench/sweeps/{name}" in names, name
    assert "rlhf_bench/conf/hydra/launcher/slurm.yaml" in names
    assert not [n for n in names if "__pycache__" in n]
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from rlhf_bench.cli import sweeps_dir, load_config; print(sweeps_dir());"
            " print(load_config(['+sweep=bon_n']).method.name)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.split() == [str(site / "rlhf_bench" / "sweeps"), "best_of_n"]
    dry_run = subprocess.run(
        [sys.executable, "-m", "rlhf_bench.sweeps.slurm_dry_run", "+sweep=bon_n", "hydra.launcher.partition=p"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert dry_run.returncode == 0 and "#SBATCH --partition=p" in dry_run.stdout, dry_run.stderr[-2000:]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One results/artifacts folder for the end-to-end sweeps: the second reuses the stage cache."""
    return tmp_path_factory.mktemp("sweeps")


def _rlhf_bench(root: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_bench", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "results" / "runs").glob("*/record.json"))]


@pytest.mark.slow
def test_joblib_multirun_runs_jobs_in_parallel_on_one_sft_model(root):
    _rlhf_bench(
        root,
        "-m",
        "+sweep=bon_n",
        "method.n=1,4",  # replaces the sweep's n grid
        "seed=0",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *fast_overrides(root, ppo=False, shared=False),
        *QUICK,
    )
    records = _records(root)
    assert len(records) == 2 and {r["status"] for r in records} == {"finished"}
    assert sorted(r["config"]["method"]["n"] for r in records) == [1, 4]
    assert {r["method"] for r in records} == {"best_of_n"}
    for r in records:  # the overrides of each job, as Hydra gave them, are in its record
        assert "+sweep=bon_n" in r["overrides"] and f"method.n={r['config']['method']['n']}" in r["overrides"]
    # Both jobs started together; one built the SFT model and the reward model under the lock,
    # the other waited and reused them.
    for stage in ("sft", "reward_model"):
        assert len({r["artifacts"][stage]["path"] for r in records}) == 1, stage
        assert sorted(r["artifacts"][stage]["cached"] for r in records) == [False, True], stage
    sweep_dirs = list((root / "results" / "multirun").iterdir())
    assert len(sweep_dirs) == 1 and (sweep_dirs[0] / "multirun.yaml").is_file()


@pytest.mark.slow
def test_optuna_sweep_reports_the_best_parameters(root):
    before = {r["run_id"] for r in _records(root)} if (root / "results").exists() else set()
    _rlhf_bench(root, "+sweep=ppo_optuna", "hydra.sweeper.n_trials=2", *fast_overrides(root), *QUICK)
    trials = [r for r in _records(root) if r["run_id"] not in before]
    assert len(trials) == 2 and {r["method"] for r in trials} == {"ppo"}
    results = sorted((root / "results" / "multirun").glob("*/optimization_results.yaml"))
    assert len(results) == 1
    best = yaml.safe_load(results[0].read_text())
    assert set(best["best_params"]) == {"method.lr", "method.kl_coef"}
    assert 1e-5 <= best["best_params"]["method.lr"] <= 1e-3
    # The objective Optuna maximised is each run's gold reward, and it kept the larger.
    assert best["best_value"] == pytest.approx(max(objective(r) for r in trials))


# --- a run's identity: config hash + seed ----------------------------------------------------
def _leaderboard(root: Path) -> str:
    """The leaderboard ``rlhf-bench-report`` writes of ``root``'s records (markdown)."""
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_bench.report.leaderboard", "--results-dir", str(root / "results"), "--no-plots"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (root / "results" / "leaderboard.md").read_text()


@pytest.mark.slow
def test_a_rerun_sweep_finishes_what_is_missing_and_reuses_what_finished(tmp_path):
    quick = [*fast_overrides(tmp_path, shared=False), *QUICK]
    _rlhf_bench(tmp_path, "-m", "seed=0", *quick)  # a sweep cut short: one of its two jobs ran
    first = _records(tmp_path)
    proc = _rlhf_bench(tmp_path, "-m", "seed=0,1", *quick)
    records = _records(tmp_path)
    assert len(first) == 1 and len(records) == 2 and sorted(r["seed"] for r in records) == [0, 1]
    assert proc.stderr.count("reusing finished run") == 1 and first[0]["run_id"] in proc.stderr
    board = _leaderboard(tmp_path)
    built = sorted(p.name for p in (tmp_path / "artifacts").rglob("*") if p.is_dir())

    again = _rlhf_bench(tmp_path, "-m", "seed=0,1", *quick)  # the whole sweep again: nothing to do
    assert _records(tmp_path) == records  # no record added or changed
    assert again.stderr.count("reusing finished run") == 2 and "nothing trained" in again.stderr
    assert "SFT:" not in again.stderr and "PPO:" not in again.stderr
    assert sorted(p.name for p in (tmp_path / "artifacts").rglob("*") if p.is_dir()) == built
    assert _leaderboard(tmp_path) == board  # the leaderboard counts the same runs

    forced = _rlhf_bench(tmp_path, "seed=0", "--fresh", *quick)  # --fresh (or +rerun=true) runs it again
    assert "reusing" not in forced.stderr and len(_records(tmp_path)) == 3
    _rlhf_bench(tmp_path, "seed=1", "+rerun=true", *quick)
    assert len(_records(tmp_path)) == 4


@pytest.mark.slow
def test_a_second_identical_command_waits_for_the_running_one_and_reuses_it(tmp_path):
    command = [sys.executable, "-m", "rlhf_bench", *fast_overrides(tmp_path, shared=False), *QUICK, "method.steps=6"]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not list((tmp_path / "results" / "runs").glob("*/record.json")):  # it holds its identity now
        assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.1)
    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.wait(timeout=600) == 0 and second.returncode == 0, second.stderr[-3000:]
    (record,) = _records(tmp_path)  # one run, trained once
    assert record["status"] == "finished"
    err = " ".join(second.stderr.split())
    # it started while the first ran (the first trains SFT, pairs, reward model and 6 PPO steps)
    assert f"is already running: run {record['run_id']} (pid {record['attempts'][0]['pid']}" in err
    assert "waiting for it to end" in err
    assert f"reusing finished run {record['run_id']}" in err
