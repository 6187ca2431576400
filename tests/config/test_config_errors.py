"""Config errors, table-driven: the exact one line each bad command line gets, and exit code 2.

The structure decides, not the wording: ``validate_overrides`` finds a bad group option or key
without composing the bad config, and ``explain_config_error`` reads an exception's class and
``full_key``, so the messages stay the same whatever Hydra's and OmegaConf's own messages say.
"""

import pytest

import rlhf_bench.compose as composition
from rlhf_bench import cli
from rlhf_bench.config_errors import explain_config_error, validate_overrides

TOP = (
    "Top-level keys and groups: checkpoint, device, eval, experiment, logger, method, model, parallel, paths,"
    " precision, preferences, reward_model, run_name, seed, seed_scope, sft, task. (rlhf-bench --help lists them all.)"
)
# the options as the config tree has them (a new method is one more file, not an edit here)
METHODS = ", ".join(sorted(p.stem for p in (composition.conf_dir() / "method").glob("*.yaml")))
UNKNOWN_METHOD = (
    f"config error: 'ppoo' is not an option of config group 'method'. Available: {METHODS}. Did you mean method=ppo?"
)

# (case id, command line, the exact message, found by validate_overrides before composing)
CASES = [
    ("unknown group option", ["method=ppoo"], UNKNOWN_METHOD, True),
    (
        "unknown top-level key",
        ["metod=ppo"],
        f"config error: unknown config key 'metod'. Did you mean: method, model? {TOP}",
        True,
    ),
    (
        "unknown nested key",
        ["method.lrr=1"],
        f"config error: unknown config key 'method.lrr'. Did you mean: method.lr, method.lam, method.ratio? {TOP}",
        True,
    ),
    (
        "unknown key under an unknown key",
        ["metod.lr=1"],
        f"config error: unknown config key 'metod'. Did you mean: method, model? {TOP}",
        True,
    ),
    (
        "key of another option",
        ["method=sft", "method.steps=3"],
        "config error: 'method.steps' is not a key of the chosen method option;"
        " the method options that have it: cispo, dapo, dr_grpo, gmpo, grpo, gspo, ppo, reinforce_pp, remax, rloo, sapo.",
        True,
    ),
    (
        "key of the option an experiment does not choose",
        ["experiment=arithmetic", "method.n=2"],
        "config error: 'method.n' is not a key of the chosen method option; the method options that have it: best_of_n.",
        True,
    ),
    (
        "~key of a missing key",
        ["~method.lrr"],
        f"config error: unknown config key 'method.lrr'. Did you mean: method.lr, method.lam, method.ratio? {TOP}",
        True,
    ),
    (
        "wrong type",
        ["seed=abc"],
        "config error: seed: Value 'abc' of type 'str' could not be converted to Integer",
        False,
    ),
    ("out of range (__post_init__)", ["method.lr=-1"], "config error: method.lr must be > 0 (got -1.0)", False),
    ("sweep values", ["-m", "seed=0,1", "method=ppo,ppoo"], UNKNOWN_METHOD, True),
    (
        "sweep value out of range",
        ["-m", "method.lr=1e-4,-1"],
        "config error: method.lr must be > 0 (got -1.0)",
        False,
    ),
    (
        "plugin group option",
        ["-m", "hydra/launcher=jobib"],
        "config error: 'jobib' is not an option of config group 'hydra/launcher'."
        " Available: basic, joblib, ray_cluster, slurm, submitit_local, submitit_slurm."
        " Did you mean hydra/launcher=joblib?",
        True,
    ),
    (
        "key of another plugin",
        ["-m", "seed=0,1", "hydra.launcher.n_jobs=2"],
        "config error: unknown config key 'hydra.launcher.n_jobs'. The chosen hydra/launcher (basic) has no such key.",
        True,
    ),
    (
        "ready sweep option",
        ["+sweep=methods_x_seed"],
        "config error: 'methods_x_seed' is not an option of config group 'sweep'."
        " Available: bon_n, methods_x_seeds, pg_family, ppo_adaptive_kl, ppo_kl, ppo_optuna. Did you mean +sweep=methods_x_seeds?",
        True,
    ),
]


def _overrides(argv: list[str]) -> list[str]:
    return [a for a in argv if not a.startswith("-")]


@pytest.mark.parametrize("case, argv, message, structural", CASES, ids=[c[0] for c in CASES])
def test_bad_command_line_is_one_exact_line_and_exit_2(case, argv, message, structural, capsys):
    found = validate_overrides(_overrides(argv))
    assert found == (message if structural else None)  # types and values are the conversion's to check
    with pytest.raises(SystemExit) as info:
        cli.preflight(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == message  # one line, exactly
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "overrides",
    [
        ["+foo=3"],  # + adds a key: it need not exist
        ["++seed=3"],
        ["~seed"],
        ["model=gpt2", "model.name_or_path=x"],  # a key of the option chosen on the same command line
        ["+sweep=bon_n", "method.n=4"],  # the ready sweep chooses best_of_n
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        ["eval.lm_eval.tasks=[]", "eval.lm_eval.tasks.0=x"],  # a list's items are not checked here
        ["method=ppo,dpo", "seed=0,1"],
    ],
)
def test_structurally_right_overrides_pass(overrides):
    assert validate_overrides(overrides) is None


def test_validate_overrides_never_composes_the_bad_config(monkeypatch):
    """The message comes from the structure: the group's options, the config composed for the
    chosen options; the config with the bad override is never composed (so Hydra's wording of its
    failure cannot matter)."""
    real = composition.compose
    calls: list[list[str]] = []

    def watched(overrides, return_hydra_config=False):
        calls.append(list(overrides))
        if any(o in ("method=ppoo", "metod=ppo", "method.steps=3") for o in overrides):
            raise AssertionError(f"composed a config that cannot compose: {overrides}")
        return real(overrides, return_hydra_config=return_hydra_config)

    monkeypatch.setattr(composition, "compose", watched)
    assert validate_overrides(["method=ppoo"]) == UNKNOWN_METHOD
    assert calls == []  # an option is checked against the group's options: nothing is composed
    assert validate_overrides(["metod=ppo"]).startswith("config error: unknown config key 'metod'.")
    assert validate_overrides(["method=sft", "method.steps=3"]).startswith("config error: 'method.steps' is not a key")
    assert ["method=sft"] in calls  # the chosen option alone, without the key override


def test_explain_config_error_reads_structure_not_wording():
    """Whatever an exception's text says, the message is the same: it comes from the overrides'
    structure or the exception's class and ``full_key``."""
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import ValidationError

    reworded = "Hydra 9 says this differently"
    assert explain_config_error(MissingConfigException(reworded, missing_cfg_file="x"), ["method=ppoo"]) == (
        UNKNOWN_METHOD
    )
    assert explain_config_error(ConfigCompositionException(reworded), ["metod=ppo"]) == (
        f"config error: unknown config key 'metod'. Did you mean: method, model? {TOP}"
    )
    invalid = ValidationError(f"{reworded}\nfull_key: whatever")
    invalid.full_key = "seed"
    assert explain_config_error(invalid, ["seed=abc"]) == f"config error: seed: {reworded}"
    assert explain_config_error(RuntimeError("odd"), []) == "config error: RuntimeError: odd"  # the last resort
