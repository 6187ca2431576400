"""The run record: one JSON file per run, written atomically, never edited afterwards.

``results/runs/<run-id>/record.json`` holds the resolved config, what was run, the git
commit, package versions, status, metrics, cost, artifact paths and the W&B run. Reports
read only these files.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from rlhf_bench.core.files import write_json_atomic  # noqa: F401 (the record's writer; callers import it here)

# 2: every training loop logs its step as train/step (was train/ppo_step, train/sft_step ...), the
# reward model's held-out rows are history.reward_model_eval
RECORD_VERSION = 2
PACKAGES = (
    "rlhf-bench",
    "torch",
    "transformers",
    "tokenizers",
    "hydra-core",
    "omegaconf",
    "wandb",
    "vaderSentiment",
    "lm_eval",
)


def git_commit(cwd: Path | None = None) -> dict[str, Any] | None:
    """The commit of the source tree (and whether it had uncommitted changes), if it is a git checkout."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
