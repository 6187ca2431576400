"""What every reproduction shares: running its experiment configs through the pipeline, the
checks it compares with the published claim, and the verdict it writes.

A runner is ``reproduce(session: Session) -> Outcome``: it runs what it needs with
``session.run(...)`` (each a normal run with its own record) and returns its checks, each a
measured value against the published one with PASS or FAIL. The verdict (PASS when every
check passes) is written to ``<results_dir>/repro/<name>/<stamp>.json``, naming every run the
reproduction used (``verdict["runs"]``); the runs' records are left as their runs wrote them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlhf_bench.config import to_plain
from rlhf_bench.repro.registry import Claim
from rlhf_bench.stage_cache import config_hash
from rlhf_bench.tracking.record import RECORD_VERSION


@dataclass
class Check:
    """One measured quantity against the published one."""

    name: str
    measured: Any
    published: Any
    passed: bool
    detail: str = ""  # the tolerance and the numbers behind the verdict


@dataclass
class Outcome:
    checks: list[Check]
    data: dict[str, Any] = field(default_factory=dict)  # curves, fits, tables: what a plot or a reader needs
    notes: list[str] = field(default_factory=list)  # the analysis, in words (why a check fails ...)

    @property
    def verdict(self) -> str:
        return "PASS" if self.checks and all(c.passed for c in self.checks) else "FAIL"


@dataclass
class Session:
    """One reproduction being run: where runs go, how big they are, and the runs made so far."""

    claim: Claim
    results_dir: Path
    artifacts_dir: Path
    quick: bool = False  # a smaller budget everywhere (tests, a first look); the verdict says so
    overrides: list[str] = field(default_factory=list)  # the user's extra overrides, applied to every run
    reuse: bool = True  # a finished run of the same config (same seed: same numbers) is not run again
    records: list[dict[str, Any]] = field(default_factory=list)

    def run(self, *overrides: str, experiment: str | None = None) -> dict[str, Any]:
        """A pipeline run of ``experiment`` (default: the claim's first) with ``overrides``; its record."""
        from rlhf_bench import pipeline
        from rlhf_bench.compose import load_config

        experiment = experiment or (self.claim.experiments[0] if self.claim.experiments else None)
        args = [
            *([f"experiment={experiment}"] if experiment else []),
            f"paths.results_dir={self.results_dir}",
            f"paths.artifacts_dir={self.artifacts_dir}",
            *overrides,
            *self.overrides,
        ]
        cfg = load_config(args)
        record = self._finished(config_hash(to_plain(cfg))) if self.reuse else None
        if record is None:
            record = pipeline.run(cfg, args)
        else:
            record["record_path"] = str(Path(self.results_dir) / "runs" / record["run_id"] / "record.json")
            record["reused"] = True
        self.records.append(record)
        return record

    def _finished(self, resume_key: str) -> dict[str, Any] | None:
        """The newest finished record of the config whose hash is ``resume_key``, if any, written in this
        record version (the runners read its history by the current keys)."""
        for path in sorted((Path(self.results_dir) / "runs").glob("*/record.json"), reverse=True):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if (
                record.get("resume_key") == resume_key
                and record.get("status") == "finished"
                and record.get("record_version") == RECORD_VERSION
            ):
                return record
        return None


def within(measured: float, published: float, atol: float = 0.0, rtol: float = 0.0) -> bool:
    """|measured - published| <= atol + rtol |published| (NaN never passes)."""
    if not (math.isfinite(measured) and math.isfinite(published)):
        return False
    return abs(measured - published) <= atol + rtol * abs(published)


def write_verdict(session: Session, outcome: Outcome, seconds: float) -> Path:
    """The verdict as JSON (atomically), with the ids of the runs it used. The runs' records are
    not touched: a record is written by its run alone and never edited afterwards (DESIGN.md)."""
    from rlhf_bench.tracking.record import git_commit, package_versions, write_json_atomic

    claim = session.claim
    stamp = datetime.now(timezone.utc)
    runs = list(dict.fromkeys(r["run_id"] for r in session.records))
    verdict = {
        "name": claim.name,
        "title": claim.title,
        "paper": claim.paper,
        "source": claim.source,
        "verdict": outcome.verdict,
        "quick": session.quick,
        "created": stamp.isoformat(timespec="seconds"),
        "wall_seconds": round(seconds, 1),
        "checks": [asdict(c) for c in outcome.checks],
        "notes": outcome.notes,
        "data": outcome.data,
        "runs": runs,
        "overrides": session.overrides,
        "conventions": claim.conventions,
        "git": git_commit(),
        "versions": package_versions(),
    }
    path = Path(session.results_dir) / "repro" / claim.name / f"{stamp.strftime('%Y%m%d-%H%M%S')}.json"
    write_json_atomic(path, verdict)
    return path


def latest_verdicts(results_dir: Path) -> list[dict[str, Any]]:
    """The newest verdict of each reproduction under ``<results_dir>/repro/``."""
    out = []
    for folder in sorted((Path(results_dir) / "repro").glob("*/")):
        files = sorted(folder.glob("*.json"))
        for path in reversed(files):
            try:
                out.append({**json.loads(path.read_text()), "path": str(path)})
                break
            except (OSError, ValueError):
                continue
    return out
