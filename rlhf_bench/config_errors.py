"""One readable line for a config error: the key, the problem, the choices.

Used by every entry point before a job runs (``cli.preflight``, ``rlhf-bench-repro``).
"""

from __future__ import annotations

import difflib

from rlhf_bench.compose import compose, conf_dir, register_schemas, register_sweeps


def explain_config_error(exc: BaseException, overrides: list[str]) -> str:
    """One readable line (or a few) for a config error: the key, the problem, the choices."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from rlhf_bench.errors import ConfigError

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

    register_schemas()
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
