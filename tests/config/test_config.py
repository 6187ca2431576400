"""Config: every option of every group composes; bad input is one clear line and exit code 2."""

import subprocess
import sys

import pytest

from rlhf_bench.cli import _jobs_to_check, compose, conf_dir, explain_config_error, load_config
from rlhf_bench.config import Config
from rlhf_bench.errors import ConfigError
from rlhf_bench.methods.pg import PGConfig

GROUPS = sorted(p.name for p in conf_dir().iterdir() if p.is_dir())


def _options():
    for group in GROUPS:
        for yaml in sorted((conf_dir() / group).glob("*.yaml")):
            yield f"{group}={yaml.stem}"


# Options that cannot run without the user's own data or code say so; give them some.
REQUIRED = {
    "task=jsonl": ["task.prompts=prompts.jsonl", "task.gold_reward=examples.reward:politeness"],
    "task=hf_dataset": ["task.dataset=some/dataset", "task.prompts=train", "task.gold_reward=pkg.mod:fn"],
    "reward_model=function": ["reward_model.target=examples.reward:politeness"],
}


@pytest.mark.parametrize("override", list(_options()))
def test_every_group_option_composes_to_typed_config(override):
    cfg = load_config([override, *REQUIRED.get(override, [])])
    assert isinstance(cfg, Config)
    group, option = override.split("=")
    if group == "experiment":  # an experiment overrides other groups, it is not a key itself
        assert not hasattr(cfg, "experiment")
    else:
        assert getattr(cfg, group).name == option


def test_default_config_keys():
    cfg = load_config([])
    assert cfg.seed == 0 and cfg.device == "auto"
    assert cfg.paths.results_dir == "results" and cfg.paths.artifacts_dir == "artifacts"
    assert cfg.logger.mode.value == "offline"
    assert isinstance(cfg.method, PGConfig)
    assert cfg.task.name == "sentiment" and cfg.model.name == "tiny" and cfg.reward_model.name == "bradley_terry"


def test_overrides_reach_typed_config():
    cfg = load_config(["method=ppo", "seed=2", "method.kl_coef=0.2", "logger.mode=disabled"])
    assert cfg.seed == 2 and cfg.method.kl_coef == 0.2 and cfg.logger.mode.value == "disabled"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["metod=ppo"], "unknown config key 'metod'. Did you mean: method"),
        (
            ["method=ppoo"],
            "'ppoo' is not an option of config group 'method'. Available: best_of_n, cispo, dapo, dpo, dr_grpo, expert_iteration, gmpo, grpo, gspo, ipo, kto, ppo, reinforce_pp, remax, rloo, sapo, sft, simpo. Did you mean method=ppo?",
        ),
        (["method.lrr=1"], "unknown config key 'method.lrr'. Did you mean: method.lr"),
        (["seed=abc"], "seed"),
        (["method.lr=-1"], "method.lr must be > 0 (got -1.0)"),
        (
            ["method.prompts_per_step=10"],
            "method.prompts_per_step times method.group_size=1 must be divisible by method.num_minibatches=4",
        ),
        (["logger.mode=sometimes"], "logger.mode"),
        (["preferences.temperature=0"], "preferences.temperature must be > 0"),
        (["device=tpu"], "device must be one of auto, cpu, cuda, cuda:N, mps"),
        (
            ["method=sft", "method.steps=3"],
            "'method.steps' is not a key of the chosen method option; the method options that have it: cispo, dapo, dr_grpo, gmpo, grpo, gspo, ppo, reinforce_pp, remax, rloo, sapo.",
        ),
    ],
)
def test_config_errors_are_explained(overrides, expected):
    with pytest.raises(Exception) as info:
        load_config(overrides)
    message = explain_config_error(info.value, overrides)
    assert message.startswith("config error:")
    assert expected in message


def test_config_error_class_names_key():
    err = ConfigError("method.lr", "must be > 0", -1.0)
    assert str(err) == "method.lr must be > 0 (got -1.0)"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["metod=ppo"], "unknown config key 'metod'"),
        (["method=ppoo"], "Did you mean method=ppo?"),
        (["method.lr=-1"], "method.lr must be > 0"),
        (["-m", "seed=0,1", "method=ppo,ppoo"], "Did you mean method=ppo?"),
        (["-m", "method.lr=1e-4,-1"], "method.lr must be > 0"),
    ],
)
def test_cli_exits_2_without_traceback(args, expected, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    output = proc.stdout + proc.stderr
    assert expected in output
    assert "Traceback" not in output


def test_cli_help_lists_groups(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_bench", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0
    for group in ("task:", "model:", "method:", "reward_model:", "eval:", "logger:"):
        assert group in proc.stdout


def test_compose_has_hydra_free_keys():
    cfg = compose(["model=gpt2"])
    assert cfg.model.name_or_path == "gpt2"


def test_sweep_preflight_tries_every_value_once():
    jobs = _jobs_to_check(["seed=0,1,2", "method=ppo", "method.lr=1e-4,2e-4"])
    assert jobs[0] == ["seed=0", "method=ppo", "method.lr=0.0001"]
    tried = {item for job in jobs for item in job}
    assert {"seed=1", "seed=2", "method.lr=0.0002"} <= tried
    assert len(jobs) == 4  # the first job plus one per extra value, not the 6-job product


def test_arithmetic_experiment_selects_its_groups():
    cfg = load_config(["experiment=arithmetic", "method=rloo"])
    assert cfg.task.name == "arithmetic" and cfg.reward_model.name == "gold" and cfg.method.name == "rloo"
    assert cfg.method.steps == 300  # the experiment's budget applies to whichever method is chosen
