"""The registry of published claims: one YAML file per claim in ``results/published/``.

A claim names the paper and the figure or table, what was measured, the published value or
functional form, the tolerance or the qualitative claim, the scale it was measured at, and the
conventions that change the number. ``runner`` (``module:function``) is the code that runs the
reproduction's experiment configs (``experiments``, files of ``conf/experiment/``) and compares
what it measured with the claim; ``reference_rows`` are published numbers of full-scale setups,
shown beside the leaderboard.

The folder is ``<repo>/results/published`` in a checkout and ``rlhf_bench/published`` in an
installed wheel (like ``conf/``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

REQUIRED = ("name", "title", "paper", "source", "measured", "published", "claim", "scale", "conventions")


class RegistryError(ValueError):
    """A claim file that is malformed, or a name that is not in the registry."""


@dataclass
class Claim:
    name: str  # the file's stem: rlhf-bench-repro <name>
    title: str
    paper: str  # authors, year, title
    source: str  # figure, table, section or equation
    measured: str  # what was measured, in words
    published: Any  # the published value(s) or functional form
    claim: str  # the tolerance or the qualitative claim, in words
    scale: str  # the scale it was measured at (models, data, compute)
    conventions: dict[str, Any]  # what changes the number: logprob sum/mean, KL estimator, KL in reward/loss ...
    tolerance: dict[str, Any] = field(default_factory=dict)  # the numbers the runner's checks use
    experiments: list[str] = field(default_factory=list)  # conf/experiment/<name>.yaml the reproduction runs
    runner: str | None = None  # module:function; None for reference rows that cannot run here
    needs: str = "cpu"  # cpu | gpu+hub: what it takes to run
    runtime_here: str | None = None  # measured on the project's 2-core CPU machine
    also: list[str] = field(default_factory=list)  # further papers the claim rests on
    reference_rows: list[dict[str, Any]] = field(default_factory=list)
    notes: str = ""
    path: str = ""


def published_dir() -> Path:
    """``rlhf_bench/published`` in an installed wheel, ``<repo>/results/published`` in a checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "published", package.parent / "results" / "published"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"the registry of published claims was not found in {package / 'published'} or "
        f"{package.parent / 'results' / 'published'}"
    )


def load_claim(path: Path) -> Claim:
    """One claim file -> a Claim; a malformed file is a RegistryError naming the file and the key."""
    from omegaconf import OmegaConf

    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # omegaconf wraps yaml's errors, which carry the line
        raise RegistryError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    known = {f.name for f in fields(Claim)} - {"path"}
    unknown = sorted(set(raw) - known)
    if unknown:
        hint = difflib.get_close_matches(unknown[0], known, n=1)
        raise RegistryError(
            f"{path}: unknown key '{unknown[0]}'"
            + (f" (did you mean '{hint[0]}'?)" if hint else "")
            + f"; keys: {', '.join(sorted(known))}"
        )
    missing = [k for k in REQUIRED if k not in raw or raw[k] in (None, "")]
    if missing:
        raise RegistryError(f"{path}: missing key '{missing[0]}' (every claim states: {', '.join(REQUIRED)})")
    if raw["name"] != path.stem:
        raise RegistryError(f"{path}: name '{raw['name']}' must equal the file name '{path.stem}'")
    if not isinstance(raw["conventions"], dict):
        raise RegistryError(f"{path}: 'conventions' must be a mapping (e.g. kl_estimator: k1)")
    runner = raw.get("runner")
    if runner is not None and (not isinstance(runner, str) or runner.count(":") != 1):
        raise RegistryError(f"{path}: 'runner' must be 'package.module:function', got {runner!r}")
    return Claim(**raw, path=str(path))


def load_claims(folder: Path | None = None) -> dict[str, Claim]:
    """Every claim of the registry, by name."""
    folder = folder or published_dir()
    return {p.stem: load_claim(p) for p in sorted(Path(folder).glob("*.yaml"))}


def get_claim(name: str, folder: Path | None = None) -> Claim:
    claims = load_claims(folder)
    if name not in claims:
        hint = difflib.get_close_matches(name, list(claims), n=1)
        raise RegistryError(
            f"'{name}' is not in the registry of published claims ({folder or published_dir()})"
            + (f"; did you mean '{hint[0]}'?" if hint else "")
            + f" Known: {', '.join(claims)}; `rlhf-bench-repro --list` describes them."
        )
    return claims[name]
