"""Entry point: ``rlhf-bench [group=option ...] [key=value ...]``, a Hydra app.

Before Hydra runs the job, the command line is composed once here so that a typo in a
key, an unknown group option, a wrong type or a value out of range is reported as one
line naming the key and the choices, with exit code 2 and no stack trace
(``RLHF_BENCH_DEBUG=1`` shows it).
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)
EXIT_CONFIG_ERROR = 2
EXIT_RUN_FAILED = 1

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


def compose(overrides: list[str]):
    """Compose the config for ``overrides`` (outside a Hydra run): a DictConfig."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rlhf_bench.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


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
            return msg + (f" Did you mean {group}={hint[0]}?" if hint else "")
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
    return sorted(p.name for p in conf_dir().iterdir() if p.is_dir())


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
    folder = conf_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


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


def _known_keys() -> list[str]:
    """Every dotted key of the default config, and the group names."""
    from omegaconf import DictConfig, OmegaConf

    def walk(node, prefix=""):
        for k, v in node.items():
            key = f"{prefix}{k}"
            yield key
            if isinstance(v, DictConfig):
                yield from walk(v, key + ".")

    cfg = compose([])
    OmegaConf.set_struct(cfg, False)
    return sorted(set(walk(cfg)) | set(_groups()))


def _jobs_to_check(overrides: list[str]) -> list[list[str]]:
    """Override lists that together try every value of every sweep (``k=a,b,c``) once.

    A sweep of several keys is not expanded into its product: each value is checked with the
    first value of the other sweeps, which finds every bad key and bad value at a fraction of
    the cost. Sweeps a sweeper samples (``interval(...)``) are checked by Hydra's own run.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    values: list[list[str]] = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            try:
                values.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            except Exception:  # interval() and other sampled sweeps: no fixed values to check
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


def preflight(argv: list[str]) -> None:
    """Compose and validate the config(s) of this command line; exit 2 with a clear message if wrong."""
    overrides = _overrides(argv)
    if overrides is None:
        return
    try:
        for job in _jobs_to_check(overrides):
            load_config(job)
    except Exception as exc:
        if _debug():
            raise
        console.print(escape(explain_config_error(exc, overrides)), style="red", highlight=False, soft_wrap=True)
        sys.exit(EXIT_CONFIG_ERROR)


def run_job(cfg) -> None:
    """The Hydra task function: convert the config, run the pipeline, print the summary."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from rlhf_bench import pipeline
    from rlhf_bench.report.table import summary_table

    try:
        typed = OmegaConf.to_object(cfg)
    except Exception as exc:
        if _debug():
            raise
        console.print(escape(explain_config_error(exc, [])), style="red", highlight=False, soft_wrap=True)
        sys.exit(EXIT_CONFIG_ERROR)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    try:
        record = pipeline.run(typed, overrides)
    except (OSError, RuntimeError) as exc:
        if _debug():
            raise
        console.print(escape(f"run failed: {type(exc).__name__}: {exc}"), style="red", highlight=False, soft_wrap=True)
        console.print("(RLHF_BENCH_DEBUG=1 shows the stack trace; the run record says status=failed.)")
        sys.exit(EXIT_RUN_FAILED)
    Console(width=max(Console().width, 110)).print(summary_table(record))
    print_paths(record)


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
    preflight(sys.argv[1:])
    app = hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(run_job)
    app()


if __name__ == "__main__":
    main()
