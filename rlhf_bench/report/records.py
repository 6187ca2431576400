"""Run records and their per-prompt files as pandas DataFrames; no bad file stops the report.

``load_records`` reads every ``<results_dir>/runs/*/record.json`` and sorts each into finished,
not finished (failed, running, preempted) or rejected: a file that is not JSON, not a JSON
object, has no status, holds a non-number where a metric belongs, or is finished without a gold
reward, is a ``Reject`` with its path and what is wrong, and the rest are reported.

``runs_frame`` makes one row per finished run: what it ran, its identity (the hash of its
settings and provenance, and its seed), its provenance and its metrics. Two runs of one identity
are one result run twice: ``drop_repeats`` keeps the latest and names the others.
``per_prompt_frame`` reads the runs' ``per_prompt.parquet`` (checked against the sha256 its record
lists) into one long frame.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

METRICS = {
    "gold_reward": ("metrics", "policy", "gold_reward"),
    "proxy_reward": ("metrics", "policy", "proxy_reward"),
    "kl": ("metrics", "policy", "kl"),
    "win_rate_vs_sft": ("metrics", "policy", "win_rate_vs_sft"),
    "sft_gold_reward": ("metrics", "sft", "gold_reward"),
    "sft_kl": ("metrics", "sft", "kl"),
    "rm_accuracy": ("metrics", "reward_model", "accuracy"),
    # the exact toy world (task=toy): the exact KL and the regret against the exact reward-KL frontier
    "exact_kl": ("metrics", "policy", "exact_kl"),
    "regret": ("metrics", "policy", "regret"),
    "tokens_generated": ("cost", "tokens_generated"),
    "wall_seconds": ("cost", "wall_seconds", "total"),
}
# Config keys that do not make two runs different configurations.
NOT_SETTINGS = ("seed", "run_name", "device", "precision", "paths.", "logger.", "checkpoint.")
# what a score depends on besides the configuration: rows that differ in any are not ranked together
PROVENANCE = ("judge", "evaluator", "task_version", "prompt_set", "chat_template", "precision", "seed_scope")


@dataclass
class Reject:
    """A record file the report left out, and why."""

    path: str
    reason: str


def get(record: Any, path: tuple[str, ...]) -> Any:
    node = record
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def problem(record: Any) -> str | None:
    """What makes ``record`` unusable, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    status = record.get("status")
    if not isinstance(status, str):
        return "no status" if status is None else f"status is a {type(status).__name__}, not a string"
    for key in ("config", "metrics", "cost"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            return f"{key} is a {type(record[key]).__name__}, not an object"
    if record.get("seed") is not None and not isinstance(record["seed"], int):
        return f"seed is a {type(record['seed']).__name__} ({record['seed']!r}), not an integer"
    for path in METRICS.values():
        value = get(record, path)
        if value is not None and not _is_number(value):
            return f"{'.'.join(path)} is a {type(value).__name__} ({value!r:.40}), not a number"
    if status == "finished" and get(record, METRICS["gold_reward"]) is None:
        return "finished, but metrics.policy.gold_reward is missing"
    return None


def load_records(results_dir: Path) -> tuple[list[dict], list[dict], list[Reject]]:
    """(finished records, the others: failed, running or preempted, the files left out and why)."""
    finished, others, rejects = [], [], []
    for path in sorted(Path(results_dir).glob("runs/*/record.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            rejects.append(Reject(str(path), f"not readable as JSON ({type(exc).__name__}: {str(exc)[:80]})"))
            continue
        reason = problem(record)
        if reason:
            rejects.append(Reject(str(path), reason))
            continue
        record.setdefault("run_id", path.parent.name)
        record["_dir"] = str(path.parent)
        (finished if record["status"] == "finished" else others).append(record)
    return finished, others, rejects


def _flat(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True)}


def settings(record: dict) -> dict[str, str]:
    """The config keys that make a configuration (the flattened config, JSON values), less
    ``NOT_SETTINGS``; under ``seed_scope=pipeline`` the stage seeds too (they are the run seed)."""
    from rlhf_bench.config import PIPELINE_SEEDS

    skip = NOT_SETTINGS + (PIPELINE_SEEDS if scope(record) == "pipeline" else ())
    flat = _flat(record.get("config") or {})
    named = {k: json.dumps(record.get(k)) for k in ("task", "method", "reward_model")}
    return {**{k: v for k, v in flat.items() if not any(k == n or k.startswith(n) for n in skip)}, **named}


def scope(record: dict) -> str:
    return record.get("seed_scope") or get(record, ("config", "seed_scope")) or "method"


def provenance(record: dict) -> dict[str, str]:
    """What the scores depend on besides the configuration (``PROVENANCE``); records from before a
    field was recorded say ``unrecorded`` (or the version that had none)."""
    task = get(record, ("config", "task")) or {}
    judge = task.get("gold_reward") or task.get("gold_model") or task.get("_target_") or record.get("task")
    prov = get(record, ("metrics", "provenance")) or {}
    temperature = get(record, ("config", "eval", "temperature"))
    version = (record.get("versions") or {}).get("rlhf-bench") if isinstance(record.get("versions"), dict) else None
    return {
        "judge": str(judge),
        "evaluator": f"v{prov.get('evaluator_version', 1)} T={temperature if temperature is not None else '?'}",
        "task_version": f"{record.get('task')}@{version or 'unrecorded'}",
        "prompt_set": str(prov.get("prompt_set_sha256", "unrecorded"))[:12],
        "chat_template": str(bool(get(record, ("config", "model", "chat_template")))),
        "precision": str(record.get("precision") or "unrecorded"),
        "seed_scope": scope(record),
    }


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def runs_frame(records: list[dict], group_by: list[str]) -> pd.DataFrame:
    """One row per finished run: run_id, task, method, reward_model, seed, the ``group_by`` config
    values, ``config_key`` (its settings and provenance hashed: one configuration), ``settings``
    (the settings as a dict), the ``PROVENANCE`` columns, the ``METRICS`` and where its per-prompt
    file is."""
    rows = []
    for r in records:
        mine, prov = settings(r), provenance(r)
        artifact = (r.get("artifacts") or {}).get("per_prompt") or {}
        row = {
            "run_id": r["run_id"],
            "task": r.get("task"),
            "method": r.get("method"),
            "reward_model": r.get("reward_model"),
            "seed": r.get("seed"),
            **{k: get(r.get("config") or {}, tuple(k.split("."))) for k in group_by},
            "config_key": _digest([mine, prov]),
            "settings": mine,
            **prov,
            **{name: get(r, path) for name, path in METRICS.items()},
            "finished": str(r.get("finished") or ""),
            "per_prompt": str(Path(r["_dir"]) / "per_prompt.parquet") if artifact and "_dir" in r else None,
            "per_prompt_sha256": artifact.get("sha256"),
        }
        rows.append(row)
    frame = pd.DataFrame(rows)
    for name in METRICS:
        if name in frame:
            frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return frame


def drop_repeats(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one run per identity, the repeats left out): a run's identity is its configuration and its
    seed; of several runs of one identity (a sweep run twice) the latest finished is kept, since
    counting them as independent would shrink the spread and the p-values."""
    if runs.empty:
        return runs, runs
    ordered = runs.sort_values("finished")
    repeated = ordered.duplicated(["config_key", "seed"], keep="last")
    return ordered[~repeated].sort_index(), ordered[repeated].sort_index()


def per_prompt_frame(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[Reject]]:
    """The per-prompt rows of ``runs`` (those with a file) in one long frame with the run's
    ``run_id``; a file missing, unreadable or whose sha256 differs from its record's is a ``Reject``."""
    frames, rejects = [], []
    for run in runs.itertuples():
        if not isinstance(run.per_prompt, str):  # no file listed (None, NaN in the frame)
            continue
        path = Path(run.per_prompt)
        try:
            data = path.read_bytes()
        except OSError as exc:
            rejects.append(Reject(str(path), f"per-prompt file not readable ({exc.strerror})"))
            continue
        if run.per_prompt_sha256 and hashlib.sha256(data).hexdigest() != run.per_prompt_sha256:
            rejects.append(Reject(str(path), "per-prompt file differs from the sha256 its record lists"))
            continue
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            rejects.append(Reject(str(path), f"per-prompt file not readable as Parquet ({type(exc).__name__})"))
            continue
        frames.append(frame.assign(run_id=run.run_id))
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), rejects


def score_matrix(per_prompt: pd.DataFrame, runs: pd.DataFrame, metric: str = "gold") -> pd.DataFrame:
    """The policy's ``metric`` per seed (rows) and prompt (columns, ``prompt_id``) for ``runs``, the
    samples of one prompt averaged; empty where no run has per-prompt rows."""
    if per_prompt.empty:
        return pd.DataFrame()
    mine = per_prompt[(per_prompt["policy"] == "policy") & per_prompt["run_id"].isin(runs["run_id"])]
    if mine.empty:
        return pd.DataFrame()
    seeds = runs.set_index("run_id")["seed"]
    return mine.assign(seed=mine["run_id"].map(seeds)).pivot_table(
        index="seed", columns="prompt_id", values=metric, aggfunc="mean"
    )


def record_from_wandb(run_id: str, state: str, config: dict, summary: dict) -> dict:
    """A run record rebuilt from a W&B run's config and summary (what ``rlhf-bench`` logs there)."""
    metrics: dict[str, dict] = {}
    for key, value in summary.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval" and isinstance(value, (int, float)):
            metrics.setdefault(parts[1], {})[parts[2]] = value
    return {
        "run_id": run_id,
        "status": "finished" if state == "finished" else state,
        "task": config.get("task", {}).get("name"),
        "method": config.get("method", {}).get("name"),
        "reward_model": config.get("reward_model", {}).get("name"),
        "seed": config.get("seed"),
        "config": config,
        "metrics": metrics,
        "cost": {
            "tokens_generated": summary.get("cost/tokens_generated"),
            "wall_seconds": {"total": summary.get("cost/wall_seconds/total")},
        },
        "source": "wandb",
    }


def load_wandb_records(project: str) -> tuple[list[dict], list[dict]]:
    """Records of every run in a W&B project (``entity/project``), through the W&B API (online)."""
    import wandb

    finished, others = [], []
    for run in wandb.Api().runs(project, filters={"jobType": {"$ne": "leaderboard"}}):
        record = record_from_wandb(run.id, run.state, dict(run.config), dict(run.summary))
        (finished if record["status"] == "finished" else others).append(record)
    return finished, others


def gather(args) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[dict], list[dict], list[Reject]]:
    """(runs, repeats left out, per-prompt rows, their records, unfinished records, rejected files)."""
    finished, others, rejects = load_records(Path(args.results_dir))
    if getattr(args, "wandb_project", None):
        seen = {r.get("run_id") for r in finished + others}
        remote_finished, remote_others = load_wandb_records(args.wandb_project)
        finished += [r for r in remote_finished if r["run_id"] not in seen]
        others += [r for r in remote_others if r["run_id"] not in seen]
    keep = [
        r
        for r in finished
        if (not args.task or r.get("task") in args.task) and (not args.method or r.get("method") in args.method)
    ]
    runs, repeats = drop_repeats(runs_frame(keep, args.group_by))
    per_prompt, bad_files = per_prompt_frame(runs) if not runs.empty else (pd.DataFrame(), [])
    used = set(runs["run_id"]) if not runs.empty else set()
    return runs, repeats, per_prompt, [r for r in keep if r["run_id"] in used], others, rejects + bad_files
