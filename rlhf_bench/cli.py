"""Entry point: ``rlhf-bench [group=option ...] [key=value ...]``, a Hydra app.

Before Hydra runs the job, the command line is composed once here so that a typo in a
key, an unknown group option, a wrong type or a value out of range is reported as one
line naming the key and the choices, with exit code 2 and no stack trace
(``RLHF_BENCH_DEBUG=1`` shows it). A multirun is checked the same way, with the values of
``hydra.sweeper.params`` (a ready sweep: ``+sweep=<name>``, a file in ``sweeps/``) added to
those of the command line.
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import NoReturn

from hydra.errors import CompactHydraException
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)
EXIT_CONFIG_ERROR = 2
EXIT_RUN_FAILED = 1
EXIT_PREEMPTED = 143  # 128 + SIGTERM, as a process killed by SIGTERM reports

# Hydra flags after which no job runs or whose arguments are not overrides.
_NO_PREFLIGHT_FLAGS = {
    "--help",
    "-h",
    "--hydra-help",
    "--version",
    "--cfg",
    "-c",
    "--info",
    "--shell-completion",
    "-sc",
    "--resolve",
    "--package",
    "-p",
    "--run",
    "-r",
}
_FLAGS_WITH_VALUE = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}


def conf_dir() -> Path:
    """The config tree: ``rlhf_bench/conf`` in an installed wheel, ``<repo>/conf`` in a checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"rlhf-bench's config tree was not found in {package / 'conf'} or {package.parent / 'conf'}"
    )


def sweeps_dir() -> Path:
    """The ready sweeps: ``rlhf_bench/sweeps`` in an installed wheel, ``<repo>/sweeps`` in a checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "sweeps", package.parent / "sweeps"):
        if (candidate / "methods_x_seeds.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"rlhf-bench's sweeps were not found in {package / 'sweeps'} or {package.parent / 'sweeps'}"
    )


def register_sweeps() -> None:
    """Make every ``sweeps/*.yaml`` an option of the config group ``sweep`` (``+sweep=<name>``).

    A sweep file is a global-package Hydra config that sets ``hydra.sweeper.params`` (and may
    override ``/hydra/sweeper``); storing it in the ConfigStore lets the package find it wherever
    it is installed, as ``conf_dir()`` does for the config tree. Idempotent.
    """
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    cs = ConfigStore.instance()
    for path in sorted(sweeps_dir().glob("*.yaml")):
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_", provider="rlhf-bench")


def _debug() -> bool:
    return os.environ.get("RLHF_BENCH_DEBUG", "") not in ("", "0") or os.environ.get("HYDRA_FULL_ERROR") == "1"


def _overrides(argv: list[str]) -> list[str] | None:
    """The key=value arguments, or None when a flag means no single job is composed here."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _NO_PREFLIGHT_FLAGS:
            return None
        if arg in _FLAGS_WITH_VALUE:
            skip = True
            continue
        if arg.startswith("-"):
            continue
        out.append(arg)
    return out


def compose(overrides: list[str], return_hydra_config: bool = False):
    """Compose the config for ``overrides`` (outside a Hydra run): a DictConfig, with the
    ``hydra`` node (launcher, sweeper, sweep folder) when ``return_hydra_config``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rlhf_bench.config import register_configs

    register_configs()
    register_sweeps()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=overrides, return_hydra_config=return_hydra_config)


def load_config(overrides: list[str]):
    """The typed config (``rlhf_bench.config.Config``) for ``overrides``."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(compose(overrides))


def explain_config_error(exc: BaseException, overrides: list[str]) -> str:
    """One readable line (or a few) for a config error: the key, the problem, the choices."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from rlhf_bench.config import ConfigError

    if isinstance(exc, ConfigError):
        return f"config error: {exc}"
    text = str(exc).strip()
    if isinstance(exc, MissingConfigException) or "Could not find" in text:
        group, option = _group_override(text, overrides)
        choices = _group_options(group) if group else []
        if group and choices:
            hint = difflib.get_close_matches(option or "", choices, n=1)
            msg = (
                f"config error: '{option}' is not an option of config group '{group}'. Available: {', '.join(choices)}."
            )
            if group.startswith("hydra/") and not hint:
                msg += " (Launcher and sweeper plugins: pip install 'rlhf-bench[sweeps]' for joblib, submitit, Optuna; 'rlhf-bench[ray]' for Ray.)"
            prefix = next(
                (o[: len(o) - len(o.lstrip("+~"))] for o in overrides if o.lstrip("+~").startswith(f"{group}=")), ""
            )
            return msg + (f" Did you mean {prefix}{group}={hint[0]}?" if hint else "")
        return "config error: " + " ".join(text.split())
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    first_line, _, rest = str(cause).strip().partition("\n")
    message = " ".join(str(cause).split())
    if "not in struct" in message or "Could not override" in message or "not in '" in message:
        key = _unknown_key(message, overrides)
        group, _, leaf = (key or "").partition(".")
        owners = _options_with_key(group, leaf) if group in _groups() and leaf else []
        if owners:  # a real key, but not of the option that was chosen
            return (
                f"config error: '{key}' is not a key of the chosen {group} option; "
                f"the {group} options that have it: {', '.join(owners)}."
            )
        if key and key.startswith(("hydra.launcher.", "hydra.sweeper.")):
            return f"config error: unknown config key '{key}'." + _plugin_key_hint(key, overrides)
        known = _known_keys()
        depth = key.count(".") if key else 0
        same_depth = [k for k in known if k.count(".") == depth]
        hint = difflib.get_close_matches(key or "", same_depth, n=3, cutoff=0.6) if key else []
        top = sorted({k.split(".")[0] for k in known})
        msg = f"config error: unknown config key '{key}'." if key else f"config error: {message}"
        if hint:
            msg += f" Did you mean: {', '.join(hint)}?"
        return msg + f" Top-level keys and groups: {', '.join(top)}. (rlhf-bench --help lists them all.)"
    if isinstance(cause, OmegaConfBaseException) or isinstance(exc, OmegaConfBaseException):
        key = getattr(cause, "full_key", None) or getattr(exc, "full_key", None)
        return f"config error: {key}: {first_line.strip()}" if key else f"config error: {first_line.strip()}"
    return f"config error: {type(exc).__name__}: {message}"


def _group_override(text: str, overrides: list[str]) -> tuple[str | None, str | None]:
    """From "Could not find 'method/ppoo'": ('method', 'ppoo')."""
    import re

    m = re.search(r"Could not find '([^']+)'", text)
    if m and "/" in m.group(1):
        group, option = m.group(1).rsplit("/", 1)
        return group.strip("/"), option
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key in _groups():
            return key, value
    return None, None


def _groups() -> list[str]:
    return sorted(p.name for p in conf_dir().iterdir() if p.is_dir() and p.name != "hydra")


def _options_with_key(group: str, leaf: str) -> list[str]:
    """The options of ``group`` whose config has the (dotted) key ``leaf``."""
    from omegaconf import OmegaConf

    owners = []
    for option in _group_options(group):
        try:
            node = compose([f"{group}={option}"])[group]
        except Exception:
            continue
        if OmegaConf.select(node, leaf, default="__missing__") != "__missing__":
            owners.append(option)
    return owners


def _group_options(group: str) -> list[str]:
    """The options of ``group`` as Hydra sees them: files in conf/, the ready sweeps, installed plugins."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rlhf_bench.config import register_configs

    register_configs()
    register_sweeps()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def _unknown_key(message: str, overrides: list[str]) -> str | None:
    import re

    for pattern in (
        r"Could not override '([^']+)'",
        r"full_key: (\S+)",
        r"Key '([^']+)' (?:is )?not in",
    ):
        m = re.search(pattern, message)
        if m:
            return m.group(1)
    return overrides[0].partition("=")[0] if overrides else None


def _walk(node, prefix=""):
    """Every dotted key under ``node``."""
    from omegaconf import DictConfig

    for k, v in node.items_ex(resolve=False):
        key = f"{prefix}{k}"
        yield key
        if isinstance(v, DictConfig) and not v._is_none():
            yield from _walk(v, key + ".")


def _known_keys() -> list[str]:
    """Every dotted key of the default config, and the group names."""
    from omegaconf import OmegaConf

    cfg = compose([])
    OmegaConf.set_struct(cfg, False)
    return sorted(set(_walk(cfg)) | set(_groups()))


def _plugin_key_hint(key: str, overrides: list[str]) -> str:
    """For an unknown ``hydra.launcher.*`` or ``hydra.sweeper.*`` key: the close keys of the chosen plugin."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    node = key.split(".")[1]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        kept = [o.input_line for o in parsed if not o.is_sweep_override() and o.get_key_element().lstrip("+~") != key]
        hydra_cfg = compose(kept, return_hydra_config=True).hydra
        known = list(_walk(hydra_cfg[node], f"hydra.{node}."))
        chosen = hydra_cfg.runtime.choices.get(f"hydra/{node}")
    except Exception:  # only a hint: never fail while explaining a failure
        return ""
    hint = difflib.get_close_matches(key, known, n=3, cutoff=0.8)
    return f" Did you mean: {', '.join(hint)}?" if hint else f" The chosen hydra/{node} ({chosen}) has no such key."


def _jobs_to_check(overrides: list[str]) -> list[list[str]]:
    """Override lists that together try every value of every sweep (``k=a,b,c``) once.

    A sweep of several keys is not expanded into its product: each value is checked with the
    first value of the other sweeps, which finds every bad key and bad value at a fraction of
    the cost. A range a sweeper samples from (``interval(a, b)``, Optuna) is checked at both ends.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    parsed = OverridesParser.create().parse_overrides(overrides)
    values: list[list[str]] = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            sweep = o.value()
            if isinstance(sweep, IntervalSweep):
                values.append([f"{key}={_number(sweep.start)}", f"{key}={_number(sweep.end)}"])
                continue
            try:
                values.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            except Exception:  # glob() and other sweeps with no fixed values to check here
                values.append([])
        else:
            values.append([o.input_line])
    base = [v[0] for v in values if v]
    jobs = [base]
    for i, options in enumerate(values):
        for option in options[1:]:
            job = list(base)
            job[sum(1 for v in values[:i] if v)] = option
            jobs.append(job)
    return jobs


def _number(x: float) -> str:
    """An interval end as an override value: ``1.0`` -> ``1`` (valid for int keys too), ``1e-05`` as is."""
    return str(int(x)) if float(x).is_integer() else str(x)


def sweep_overrides(overrides: list[str], multirun: bool = False) -> list[str]:
    """The overrides a multirun sweeps over: ``hydra.sweeper.params`` of the composed config
    (a ready sweep's grid or search space) followed by ``overrides``; a key given on the command
    line replaces the sweep's, as Hydra's sweepers do. A single run (no ``-m`` and ``hydra.mode``
    not ``MULTIRUN``) ignores the sweeper: ``overrides`` unchanged."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    parsed = OverridesParser.create().parse_overrides(overrides)
    # As Hydra composes a multirun's own config: with the overrides that are not sweeps.
    hydra_cfg = compose([o.input_line for o in parsed if not o.is_sweep_override()], return_hydra_config=True).hydra
    if not (multirun or hydra_cfg.mode == RunMode.MULTIRUN):
        return overrides
    given = {o.get_key_element().lstrip("+~") for o in parsed}
    params = hydra_cfg.sweeper.get("params") or {}
    return [f"{k}={v}" for k, v in params.items() if k not in given] + list(overrides)


def preflight(argv: list[str]) -> None:
    """Compose and validate the config(s) of this command line; exit 2 with a clear message if wrong."""
    overrides = _overrides(argv)
    if overrides is None:
        return
    try:
        overrides = sweep_overrides(overrides, multirun="-m" in argv or "--multirun" in argv)
        for job in _jobs_to_check(overrides):
            load_config(job)
    except Exception as exc:
        if _debug():
            raise
        console.print(escape(explain_config_error(exc, overrides)), style="red", highlight=False, soft_wrap=True)
        sys.exit(EXIT_CONFIG_ERROR)


class JobFailed(CompactHydraException):
    """One job of a multirun failed: Hydra marks it failed and the sweep goes on (Optuna counts a
    failed trial, up to ``hydra.sweeper.max_failure_rate``); the multirun exits 1 at the end,
    printing this message without a stack trace (a CompactHydraException)."""


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _fail(message: str, code: int, note: str = "") -> NoReturn:
    """Report a failed job: exit ``code`` from a single run, raise JobFailed inside a multirun."""
    console.print(escape(message), style="red", highlight=False, soft_wrap=True)
    if note:
        console.print(note)
    if _multirun():
        raise JobFailed(message) from None  # the message says it all; RLHF_BENCH_DEBUG=1 re-raises
    sys.exit(code)


def objective(record: dict) -> float:
    """What a sweeper maximises: the policy's mean gold reward on the held-out prompts (the SFT
    row's for ``method=sft``, whose policy is the reference), ``metrics.<who>.gold_reward``."""
    metrics = record["metrics"]
    return float((metrics.get("policy") or metrics["sft"])["gold_reward"])


def run_job(cfg) -> float:
    """The Hydra task function: convert the config, run the pipeline, print the summary; return
    the run's gold reward (``objective``) for sweepers such as Optuna (a single run ignores it)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from rlhf_bench import pipeline
    from rlhf_bench.report.table import summary_table

    try:
        typed = OmegaConf.to_object(cfg)
    except Exception as exc:
        if _debug():
            raise
        _fail(explain_config_error(exc, []), EXIT_CONFIG_ERROR)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    from rlhf_bench.config import ConfigError
    from rlhf_bench.core.checkpoint import Preempted
    from rlhf_bench.rewards.function import RewardFunctionError
    from rlhf_bench.tasks.data import DataError

    try:
        record = pipeline.run(typed, overrides)
    except (ConfigError, DataError, RewardFunctionError) as exc:  # bad input, found once the data is read
        if _debug():
            raise
        _fail(f"bad input: {exc}", EXIT_CONFIG_ERROR, "(nothing was trained; the run record says status=failed.)")
    except Preempted as exc:
        _fail(f"preempted: {exc}", EXIT_PREEMPTED)
    except (OSError, RuntimeError) as exc:
        if _debug():
            raise
        note = "(RLHF_BENCH_DEBUG=1 shows the stack trace; the run record says status=failed.)"
        _fail(f"run failed: {type(exc).__name__}: {exc}", EXIT_RUN_FAILED, note)
    if "record_path" not in record:  # a process other than the main one of a data-parallel run
        return float("nan")
    Console(width=max(Console().width, 110)).print(summary_table(record))
    print_paths(record)
    return objective(record)


def print_paths(record: dict) -> None:
    out = Console(soft_wrap=True)
    out.print(f"record:    {record['record_path']}")
    wb = record.get("wandb") or {}
    if wb.get("dir"):
        out.print(
            f"W&B run:   {wb['dir']} (mode {wb['mode']}; view: `wandb leet inspect --summary <dir>`;"
            " upload: `wandb sync <dir>` once logged in)"
        )
    for stage, art in record.get("artifacts", {}).items():
        cached = " (cached)" if art.get("cached") else ""
        out.print(f"{stage + ':':<14}{art['path']}{cached}")
    total = record.get("cost", {}).get("wall_seconds", {}).get("total")
    if total is not None:
        out.print(f"wall time: {total:.0f} s")


def main() -> None:
    """Console script ``rlhf-bench``."""
    import hydra

    from rlhf_bench.config import register_configs

    register_configs()
    register_sweeps()
    preflight(sys.argv[1:])
    app = hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(run_job)
    app()


if __name__ == "__main__":
    main()
