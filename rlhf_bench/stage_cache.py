"""The stage cache: a stage's output lives in ``<artifacts_dir>/<stage>/<hash>/``, where the hash
covers the config that produced it and the hash of the stage before.

A sweep over methods and seeds therefore trains one SFT model and one reward model, and every
method starts from the same checkpoint and is judged by the same reward model. Each stage is
built in a temporary folder under a file lock and renamed into place, so concurrent workers
build it once and nothing half-written is ever read; the files' sizes and hashes are recorded, and
a folder that no longer matches them is set aside and rebuilt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from rlhf_bench.core import distributed
from rlhf_bench.core.checkpoint import fault_point, manifest, verify_manifest
from rlhf_bench.core.files import write_json_atomic

console = Console(stderr=True)
STAGE_VERSION = 4  # bump when a stage's code changes what it produces


def config_hash(key: dict[str, Any]) -> str:
    """A short content hash of a JSON-ready dict."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclasses.dataclass
class StageResult:
    path: Path
    hash: str
    cached: bool
    info: dict[str, Any]


def cached_stage(
    artifacts_dir: Path,
    stage: str,
    key: dict[str, Any],
    build: Callable[[Path, Path], dict[str, Any]],
    verify: str = "hash",
    parallel: bool = False,
    on_built: Callable[[StageResult], None] | None = None,
) -> StageResult:
    """Return the stage's output folder, building it with ``build(tmp_dir, checkpoint_dir) -> info``
    if absent or if its files no longer match the hashes recorded when it was built.

    ``checkpoint_dir`` (``<stage>/<hash>.resume/``) outlives a killed build, so that the next
    build resumes from the last checkpoint; it is removed once the stage is complete.
    ``on_built(result)`` is called when a build is complete but not yet in place (the run keeps
    its boundary there: a kill after the stage is in place then loses nothing the build counted).
    """
    from filelock import FileLock

    digest = config_hash({"stage": stage, "stage_version": STAGE_VERSION, **key})
    root = artifacts_dir / stage
    final = root / digest
    if distributed.world_size() > 1:
        return _cached_stage_together(root, digest, stage, key, build, verify, parallel, on_built)
    found = _complete(final, verify)
    if found is not None:
        return StageResult(final, digest, True, found)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{digest}.lock")):
        found = _complete(final, verify)  # another worker built it while we waited
        if found is not None:
            return StageResult(final, digest, True, found)
        info = _build_stage(root, digest, stage, key, build, on_built)
    return StageResult(final, digest, False, info)


def _build_stage(root: Path, digest: str, stage: str, key: dict[str, Any], build, on_built=None) -> dict[str, Any]:
    """Build into a temporary folder, record the files' hashes, rename into place (lock held)."""
    final, tmp = root / digest, root / f".{digest}.tmp-{os.getpid()}"
    for stale in root.glob(f".{digest}.tmp-*"):  # left by a killed worker (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    if final.exists():  # incomplete or corrupted: keep it aside for inspection, rebuild
        final.rename(root / f".{digest}.bad-{int(time.time())}")
    tmp.mkdir()
    resume_dir = root / f"{digest}.resume"
    try:
        start = time.perf_counter()
        info = build(tmp, resume_dir)
        info["wall_seconds"] = round(time.perf_counter() - start, 3)
        meta = {"stage": stage, "hash": digest, "key": key, "info": info, "created": utc_now()}
        meta["files"] = manifest(tmp)
        write_json_atomic(tmp / "stage.json", meta)
        if on_built is not None:
            on_built(StageResult(final, digest, False, info))
        os.replace(tmp, final)
        fault_point(f"built:{stage}")
        shutil.rmtree(resume_dir, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _cached_stage_together(root, digest, stage, key, build, verify, parallel: bool, on_built=None) -> StageResult:
    """``cached_stage`` for processes of one data-parallel run: the main process takes the lock
    and decides; a ``parallel`` stage (a training loop) is built by all of them in lockstep,
    each writing to a folder of its own that only the main's replaces the stage with."""
    from filelock import FileLock

    final, lock = root / digest, None
    found = None
    if distributed.is_main():
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / f"{digest}.lock"))
        lock.acquire()
        found = _complete(final, verify)
    found = distributed.broadcast(found)
    try:
        if found is not None:
            return StageResult(final, digest, True, found)
        if distributed.is_main():
            with contextlib.nullcontext() if parallel else distributed.whole_models():  # alone: nothing sharded
                info = _build_stage(root, digest, stage, key, build, on_built)
        elif parallel:  # train along; what this process writes is discarded
            scratch = root / f".{digest}.rank{distributed.rank()}-{os.getpid()}"
            scratch.mkdir(parents=True, exist_ok=True)
            try:
                build(scratch, root / f"{digest}.resume")
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        distributed.barrier()
        if not distributed.is_main():
            info = json.loads((final / "stage.json").read_text())["info"]
        return StageResult(final, digest, False, info)
    finally:
        if lock is not None:
            lock.release()


def _complete(folder: Path, verify: str) -> dict[str, Any] | None:
    """The info of a complete, unaltered stage folder; None if absent; warns if altered."""
    meta_path = folder / "stage.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        problem = verify_manifest(folder, meta["files"], verify)
    except (OSError, ValueError, KeyError) as exc:
        problem = f"stage.json is unreadable ({exc})"
    if problem is None:
        return meta["info"]
    console.print(f"[yellow]cached artifact {folder} was altered or truncated ({problem}); rebuilding it[/yellow]")
    return None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
