"""Hydra composition: the config tree, the schemas registered from it, and ``compose``.

The schemas are found, not listed: each YAML option of ``conf/<group>/`` names its schema in its
defaults (``/schema/<group>/<name>@_here_``) and its code in ``_target_``; the schema is the
dataclass in the ``_target_``'s module whose own ``_target_`` default is that same target
(``PPOConfig`` for ``rlhf_bench.methods.ppo.train``). Groups whose root field is typed (model, eval,
logger) take the type of ``Config``'s field. So adding a method is one ``.py`` and one YAML: no
central list to edit.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from functools import lru_cache
from pathlib import Path

from rlhf_bench.config import Config
from rlhf_bench.errors import ConfigError

SCHEMA_PREFIX = "/schema/"


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


@lru_cache(maxsize=1)
def schemas() -> dict[str, dict[str, type]]:
    """{group: {schema name: dataclass}} for every option YAML in ``conf/`` (see the module docstring)."""
    from omegaconf import OmegaConf

    hints = typing.get_type_hints(Config)
    found: dict[str, dict[str, type]] = {}
    for group_dir in sorted(p for p in conf_dir().iterdir() if p.is_dir()):
        for path in sorted(group_dir.glob("*.yaml")):
            node = OmegaConf.load(path)
            defaults = [d for d in node.get("defaults", []) if isinstance(d, str) and d.startswith(SCHEMA_PREFIX)]
            if not defaults:
                continue
            group, _, name = defaults[0].removeprefix(SCHEMA_PREFIX).partition("@")[0].rpartition("/")
            typed = hints.get(group)  # model, eval, logger: the root's field says
            schema = typed if dataclasses.is_dataclass(typed) else _schema_of_target(node.get("_target_"), path)
            found.setdefault(group, {})[name] = schema
    return found


def _schema_of_target(target: str | None, path: Path) -> type:
    """The dataclass in ``target``'s module whose ``_target_`` field defaults to ``target``."""
    if not target:
        raise ConfigError("_target_", f"is missing in {path}: an option with a schema names its code")
    module = importlib.import_module(target.rpartition(".")[0])
    for value in vars(module).values():
        if not (isinstance(value, type) and dataclasses.is_dataclass(value)):
            continue
        field = next((f for f in dataclasses.fields(value) if f.name == "_target_"), None)
        if field is not None and field.default == target:
            return value
    raise ConfigError("_target_", f"{target} (in {path}): its module has no config dataclass with that _target_")


def register_schemas() -> None:
    """Store the root schema and every option's schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="rlhf_bench_schema", node=Config)
    for group, options in schemas().items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def compose(overrides: list[str], return_hydra_config: bool = False):
    """Compose the config for ``overrides`` (outside a Hydra run): a DictConfig, with the
    ``hydra`` node (launcher, sweeper, sweep folder) when ``return_hydra_config``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    register_sweeps()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=overrides, return_hydra_config=return_hydra_config)


def load_config(overrides: list[str]):
    """The typed config (``rlhf_bench.config.Config``) for ``overrides``."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(compose(overrides))
