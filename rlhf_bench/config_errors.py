"""One readable line for a config error: the key, the problem, the choices.

Used by every entry point before a job runs (``cli.preflight``, ``rlhf-bench-repro``). The checks
read the structure Hydra and OmegaConf expose, never the wording of their messages:

- ``validate_overrides`` parses the command line with Hydra's own override parser and, before the
  job's config is composed, checks each group override's value against the group's options and
  each key override's key against the config composed for the chosen options (the group overrides
  alone, which cannot fail on a bad key or value);
- ``explain_config_error`` explains what composing or converting the config raised anyway (a type,
  a value out of range) from the exception's class and its ``full_key``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from contextlib import contextmanager

import rlhf_bench.compose as composition  # called through the module: a test can watch what is composed
from rlhf_bench.compose import conf_dir, register_schemas, register_sweeps

_PLUGINS_HINT = (
    " (Launcher and sweeper plugins: pip install 'rlhf-bench[sweeps]' for joblib, submitit, Optuna;"
    " 'rlhf-bench[ray]' for Ray.)"
)
_FOUND, _OPEN, _MISSING = "found", "open", "missing"


class ConfigStructure:
    """What Hydra says about the config tree: which names are config groups, their options, the
    config composed for a choice of options. Each is asked once and remembered, so one instance
    serves every job a preflight checks."""

    def __init__(self) -> None:
        self._is_group: dict[str, bool] = {}
        self._options: dict[str, list[str]] = {}
        self._exists: dict[str, bool] = {}
        self._composed: dict[tuple[str, ...], object] = {}

    def learn(self, names: Iterable[str], groups: Iterable[str] = (), configs: Iterable[str] = ()) -> None:
        """Ask Hydra, in one initialisation, whatever is not known yet about these names (is it a
        group?), groups (their options) and config paths (``group/option``: does it exist?)."""
        names = [n for n in names if n not in self._is_group]
        groups = [g for g in groups if g not in self._options]
        configs = [c for c in configs if c not in self._exists]
        if not (names or groups or configs):
            return
        with _config_loader() as loader:
            repository = loader.repository
            for name in names:
                self._is_group[name] = repository.group_exists(name)
            for group in groups:
                self._options[group] = sorted(loader.get_group_options(group))
            for config in configs:
                self._exists[config] = repository.config_exists(config)

    def is_group(self, name: str) -> bool:
        self.learn([name])
        return self._is_group[name]

    def options(self, group: str) -> list[str]:
        self.learn([], [group])
        return self._options[group]

    def config_exists(self, path: str) -> bool:
        self.learn([], [], [path])
        return self._exists[path]

    def composed(self, group_overrides: tuple[str, ...]):
        """The config (with its ``hydra`` node) for these group overrides."""
        if group_overrides not in self._composed:
            self._composed[group_overrides] = composition.compose(list(group_overrides), return_hydra_config=True)
        return self._composed[group_overrides]


@contextmanager
def _config_loader():
    """Hydra's config loader for the config tree, with the schemas and the ready sweeps stored."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    register_sweeps()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def validate_overrides(overrides: list[str], structure: ConfigStructure | None = None) -> str | None:
    """The one-line message for the first override that names no group option or no config key,
    found without composing the job's config; None when the overrides are structurally right (their
    values' types and ranges are checked when the config is converted: ``explain_config_error``).

    A group override's values (every value of a sweep ``group=a,b``) must be options of the group;
    a key override's key must be in the config composed for the chosen options, unless a ``+`` adds
    it or a node open to new keys (not in struct mode, a list, or unset) holds it; ``~key`` deletes a
    key, which must be there."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    structure = structure or ConfigStructure()
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        return _unquoted_non_ascii(overrides) or _fallback(exc)
    structure.learn([o.key_or_group for o in parsed])
    # As Hydra splits them (a dict value sets a group's keys rather than choosing its option).
    groups = [o for o in parsed if structure.is_group(o.key_or_group) and not _is_dict(o)]
    keys = [o for o in parsed if o not in groups]

    chosen = {id(o): _chosen_options(o) for o in groups}
    structure.learn([], [o.key_or_group for o in groups if chosen[id(o)]])
    for o in groups:
        group, options = o.key_or_group, structure.options(o.key_or_group)
        for option in chosen[id(o)] or []:
            if options and option not in options and not structure.config_exists(f"{group}/{option}"):
                return _unknown_option_message(group, option, options, _prefix(o))
    if not keys:
        return None

    lines = []
    for o in groups:
        if not o.is_sweep_override():
            lines.append(o.input_line)
        elif chosen[id(o)]:
            lines.append(f"{o.get_key_element()}={chosen[id(o)][0]}")
        else:  # a sweep whose values are not listed (glob): which options the keys belong to is unknown
            return None
    try:
        cfg = structure.composed(tuple(lines))
    except Exception:  # the chosen options do not compose; composing the job says why
        return None
    added: list[str] = []
    for o in keys:
        key = o.key_or_group
        if o.is_add() or o.is_force_add():  # +key adds a key, ++key adds or sets one: no need to exist
            added.append(key)
            continue
        if any(key == a or key.startswith(a + ".") for a in added):
            continue
        status, where = _lookup(cfg, key)
        if status == _MISSING:
            return _unknown_key_message(where, cfg)
    return None


def explain_config_error(exc: BaseException, overrides: list[str]) -> str:
    """One readable line for what composing or converting the config for ``overrides`` raised."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    from rlhf_bench.errors import ConfigError

    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(exc, OverrideParseException):  # a value Hydra's grammar cannot lex
        return _unquoted_non_ascii(overrides) or _fallback(exc)
    if isinstance(exc, ConfigError) or isinstance(cause, ConfigError):  # a __post_init__ check: names its key
        return f"config error: {exc if isinstance(exc, ConfigError) else cause}"
    if not isinstance(cause, ValidationError):  # a wrong type or value is the exception's to name
        try:
            message = validate_overrides(overrides)
        except Exception:  # never fail while explaining a failure
            message = None
        if message:
            return message
    key = getattr(cause, "full_key", None) or getattr(exc, "full_key", None)
    if key and isinstance(cause, (ConfigKeyError, ConfigAttributeError)):  # a key the config does not have
        return _unknown_key_message(key, None)
    if isinstance(exc, MissingConfigException):  # a config that a config file (not the command line) names
        return "config error: " + " ".join(str(exc).split())
    if isinstance(cause, OmegaConfBaseException) or isinstance(exc, OmegaConfBaseException):
        first_line = str(cause).strip().partition("\n")[0].strip()
        return f"config error: {key}: {first_line}" if key else f"config error: {first_line}"
    return _fallback(exc)


def _unquoted_non_ascii(overrides: list[str]) -> str | None:
    """The message for the override that Hydra's grammar cannot lex because its value holds
    characters outside ASCII without quotes (``LexerNoViableAltException``); None if no such one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or value.isascii():
            continue
        try:
            parser.parse_override(override)
            continue
        except Exception:  # HydraException (LexerNoViableAltException) or OverrideParseException
            pass
        items = value[1:-1].split(",") if value[:1] + value[-1:] == "[]" else None
        quoted = f"[{', '.join(_quoted(v) for v in items)}]" if items else _quoted(value)
        return (
            f"config error: {key}={value}: a value with characters outside ASCII must be quoted; "
            f"write {key}={quoted} (in the shell: '{key}={quoted}')"
        )
    return None


def _quoted(value: str) -> str:
    value = value.strip()
    return value if value[:1] in ("'", '"') else f'"{value}"'


def _fallback(exc: BaseException) -> str:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return f"config error: {type(exc).__name__}: {' '.join(str(cause).split())}"


def _is_dict(override) -> bool:
    return not override.is_sweep_override() and isinstance(override.value(), dict)


def _prefix(override) -> str:
    return "++" if override.is_force_add() else "+" if override.is_add() else "~" if override.is_delete() else ""


def _chosen_options(override) -> list[str] | None:
    """The options a group override chooses (every value of a sweep); None when it chooses none to
    check here (``~group``, a sampled or globbed sweep, a value that is not a name: Hydra says)."""
    if override.is_delete() or override.is_force_add():
        return None
    if override.is_sweep_override():
        try:
            return [str(v) for v in override.sweep_string_iterator()]
        except Exception:  # glob() and sweeps with no fixed values
            return None
    value = override.value()
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _unknown_option_message(group: str, option: str, choices: list[str], prefix: str) -> str:
    hint = difflib.get_close_matches(option, choices, n=1)
    msg = f"config error: '{option}' is not an option of config group '{group}'. Available: {', '.join(choices)}."
    if group.startswith("hydra/") and not hint:
        msg += _PLUGINS_HINT
    return msg + (f" Did you mean {prefix}{group}={hint[0]}?" if hint else "")


def _lookup(cfg, key: str) -> tuple[str, str]:
    """Whether dotted ``key`` is in ``cfg``: (_FOUND, key); (_MISSING, the first part of it that is
    not there and cannot be added: a struct node's absent key, a key under a typed value); or
    (_OPEN, ...) where the config cannot say (a node open to new keys, a list, an unset node)."""
    from omegaconf import DictConfig
    from omegaconf.nodes import AnyNode, ValueNode

    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if isinstance(node, DictConfig):
            if node._is_none() or node._is_missing() or node._is_interpolation():
                return _OPEN, where
            child = node._get_node(part, validate_access=False)
            if child is None:
                from omegaconf import OmegaConf

                return (_MISSING if OmegaConf.is_struct(node) else _OPEN), where
            node = child
        elif isinstance(node, ValueNode) and not isinstance(node, AnyNode):
            return _MISSING, where  # an int, a string, an enum... has no keys
        else:  # a list (keys are indices), an Any value
            return _OPEN, where
    return _FOUND, key


def _unknown_key_message(key: str, cfg) -> str:
    """For a key the config does not have: the options of its group that have it, or the close keys."""
    group, _, leaf = key.partition(".")
    owners = _options_with_key(group, leaf) if group in _groups() and leaf else []
    if owners:  # a real key, but not of the option that was chosen
        return (
            f"config error: '{key}' is not a key of the chosen {group} option; "
            f"the {group} options that have it: {', '.join(owners)}."
        )
    if key.startswith(("hydra.launcher.", "hydra.sweeper.")):
        return f"config error: unknown config key '{key}'." + _plugin_key_hint(key, cfg)
    known = _known_keys()
    same_depth = [k for k in known if k.count(".") == key.count(".")]
    hint = difflib.get_close_matches(key, same_depth, n=3, cutoff=0.6)
    top = sorted({k.split(".")[0] for k in known})
    msg = f"config error: unknown config key '{key}'."
    if hint:
        msg += f" Did you mean: {', '.join(hint)}?"
    return msg + f" Top-level keys and groups: {', '.join(top)}. (rlhf-bench --help lists them all.)"


def _groups() -> list[str]:
    return sorted(p.name for p in conf_dir().iterdir() if p.is_dir() and p.name != "hydra")


def _options_with_key(group: str, leaf: str) -> list[str]:
    """The options of ``group`` whose config has the (dotted) key ``leaf``."""
    owners = []
    for option in _group_options(group):
        try:
            node = composition.compose([f"{group}={option}"])[group]
        except Exception:
            continue
        if _lookup(node, leaf)[0] == _FOUND:
            owners.append(option)
    return owners


def _group_options(group: str) -> list[str]:
    """The options of ``group`` as Hydra sees them: files in conf/, the ready sweeps, installed plugins."""
    return ConfigStructure().options(group)


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

    cfg = composition.compose([])
    OmegaConf.set_struct(cfg, False)
    return sorted(set(_walk(cfg)) | set(_groups()))


def _plugin_key_hint(key: str, cfg) -> str:
    """For an unknown ``hydra.launcher.*`` or ``hydra.sweeper.*`` key: the close keys of the chosen
    plugin, read from ``cfg`` (composed with its ``hydra`` node for the chosen options)."""
    node = key.split(".")[1]
    try:
        hydra_cfg = cfg.hydra
        known = list(_walk(hydra_cfg[node], f"hydra.{node}."))
        chosen = hydra_cfg.runtime.choices.get(f"hydra/{node}")
    except Exception:  # only a hint (no config at hand, no such node): never fail while explaining a failure
        return ""
    hint = difflib.get_close_matches(key, known, n=3, cutoff=0.8)
    return f" Did you mean: {', '.join(hint)}?" if hint else f" The chosen hydra/{node} ({chosen}) has no such key."
