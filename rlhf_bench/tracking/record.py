"""The run record: one JSON file per run, written atomically, never edited afterwards.

``results/runs/<run-id>/record.json`` holds the resolved config, what was run, the git
commit, package versions, status, metrics, cost, artifact paths and the W&B run. Reports
read only these files.
"""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from rlhf_bench.core.files import write_json_atomic  # noqa: F401 (the record's writer; callers import it here)

# 2: every training loop logs its step as train/step (was train/ppo_step, train/sft_step ...), the
# reward model's held-out rows are history.reward_model_eval
# 3: attempts[] have status (running | finished | failed | preempted | died) and wall_seconds;
# cost.wall_seconds is summed over attempts (total: their wall time, not the sum of the stages')
RECORD_VERSION = 3
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


def start_attempt(record: dict[str, Any], host: str, pid: int) -> dict[str, dict[str, Any]]:
    """Add this attempt to ``record["attempts"]``. Of a resumed run: an earlier attempt that never
    wrote its end (its status still ``running``) is marked ``died`` (killed, out of memory, the
    machine lost), the checkpoint a failed attempt named is dropped (the new attempt names its own
    when it fails), and the stage boundaries the earlier attempts reached are returned
    (``resume_state``: ``Run.stage_done`` takes them back)."""
    attempts = record.setdefault("attempts", [])
    for attempt in attempts:
        if attempt.get("status", "running") == "running":
            attempt["status"] = "died"
    record.pop("checkpoint", None)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    attempts.append({"started": started, "host": host, "pid": pid, "status": "running"})
    return record.get("resume_state") or {}


def record_progress(
    record: dict[str, Any],
    cost: dict[str, Any],
    attempt_seconds: dict[str, float],
    history: dict[str, list[dict[str, float]]],
    artifacts: dict[str, dict[str, Any]],
    boundaries: dict[str, dict[str, Any]],
) -> None:
    """The run's state so far into ``record``: ``cost`` (counters: the run's, over every attempt),
    this attempt's wall time (``attempts[-1].wall_seconds``), the wall time summed over attempts
    (``cost.wall_seconds``: per stage, and ``total``), the history, the artifacts and the stage
    boundaries a later attempt resumes from (``resume_state``, dropped once the run finishes).

    An attempt that died counts up to its last checkpoint or stage boundary (when it last wrote)."""
    record["attempts"][-1]["wall_seconds"] = dict(attempt_seconds)
    summed: dict[str, float] = {}
    for attempt in record["attempts"]:
        for stage, seconds in (attempt.get("wall_seconds") or {}).items():
            summed[stage] = round(summed.get(stage, 0.0) + seconds, 3)
    record["cost"] = {**cost, "wall_seconds": summed}
    record["history"] = history
    record["artifacts"] = artifacts
    record["resume_state"] = boundaries
