"""Periodic checkpoints of a training loop, resume from the last one, and preemption.

A loop registers what it trains and the state it needs to continue, then reports each
finished step::

    ckpt = Checkpointer(folder, cfg.checkpoint, ctx, "ppo")
    saved = ckpt.restore(modules={"policy": policy, "value": value}, optimizer=optimizer,
                         generators={"prompt": prompt_gen, "sample": sample_gen})
    for step in range(saved.get("step", 0), cfg.steps):
        ...
        ckpt.step_done(step + 1, kl_coef=kl_ctl.value)

A checkpoint holds the weights (safetensors), the optimizer and scheduler states, every
random generator the loop draws from (its own, torch's, python's and numpy's), the run's
cost counters and metric history, and the loop's own counters (``extra``). On CPU with the
same seeds, a loop resumed from step k computes exactly what the uninterrupted loop would
have computed from step k: the tests compare the two to the last digit.

Writes are atomic: a checkpoint is built in a temporary folder, its files hashed, renamed to
``step-<k>/``, and only then named in ``latest.json``. A checkpoint whose files do not match
their hashes (truncated, edited) is refused with a warning, and the loop starts afresh.
Nothing is unpickled: tensors load with ``torch.load(weights_only=True)``.

SIGTERM (SLURM's preemption signal) sets a flag; the loop's next ``step_done`` saves a
checkpoint and raises ``Preempted``. Outside a loop, SIGTERM raises ``Preempted`` at once.

``fault_point(name)`` marks the places a run may die (``step:<stage>`` after each loop step,
``done:<stage>`` at each stage boundary, ``generate`` after each generation call). It does nothing
unless the test-only variables ``RLHF_BENCH_FAULT_TRACE`` (a file each point passed is appended
to) or ``RLHF_BENCH_FAULT`` (``<name>#<k>``: the process exits the k-th time it passes a point
named ``<name>``, as ``kill -9`` would: ``os._exit``, nothing flushed) are set; the fault-injection
test (``tests/system/test_reliability.py``) kills a run at each of them and resumes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from rlhf_bench.core import distributed
from rlhf_bench.core.files import write_json_atomic
from rlhf_bench.errors import require, require_choice

console = Console(stderr=True)


@dataclass
class CheckpointConfig:
    """When training stages checkpoint, and whether a re-run resumes."""

    every_steps: int = 0  # 0: no step-based schedule
    every_seconds: float = 300.0  # 0: no time-based schedule (SIGTERM still checkpoints)
    resume: bool = True  # a re-run of an interrupted run (same config) continues it
    verify_artifacts: str = "hash"  # hash | size | none: how cached stages are checked before reuse

    def __post_init__(self) -> None:
        require(self.every_steps >= 0, "checkpoint.every_steps", "must be >= 0", self.every_steps)
        require(self.every_seconds >= 0, "checkpoint.every_seconds", "must be >= 0", self.every_seconds)
        require_choice(self.verify_artifacts, ("hash", "size", "none"), "checkpoint.verify_artifacts")


LATEST = "latest.json"


class Preempted(RuntimeError):
    """The run was asked to stop (SIGTERM); its last checkpoint lets a re-run continue."""


# --- the preemption signal ---------------------------------------------------------------
_state = {"requested": False, "in_loop": 0}


def _on_sigterm(signum, frame) -> None:
    _state["requested"] = True
    if not _state["in_loop"]:
        raise Preempted("SIGTERM received outside a training loop; re-run the same command to resume")


class preemption_handler:
    """Install the SIGTERM handler for the duration of a run (main thread only)."""

    def __enter__(self):
        _state["requested"], _state["in_loop"] = False, 0
        self._previous = None
        with contextlib.suppress(ValueError):  # not the main thread: no handler, SIGTERM kills as usual
            self._previous = signal.signal(signal.SIGTERM, _on_sigterm)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        _state["requested"], _state["in_loop"] = False, 0
        return False


def preemption_requested() -> bool:
    return _state["requested"]


# --- fault injection (tests) -----------------------------------------------------------------
FAULT_ENV, FAULT_TRACE_ENV = "RLHF_BENCH_FAULT", "RLHF_BENCH_FAULT_TRACE"
_faults: dict[str, int] = {}


def fault_point(name: str) -> None:
    """A place a run may be killed: counted by name, traced (``RLHF_BENCH_FAULT_TRACE``) and, the
    k-th time this process passes it (``RLHF_BENCH_FAULT=<name>#<k>``, ``#1`` if left out), the
    process ends at once with status 137 (``os._exit``: no handler, no ``finally``, no flush, as
    after ``kill -9``)."""
    trace, kill = os.environ.get(FAULT_TRACE_ENV), os.environ.get(FAULT_ENV)
    if not trace and not kill:
        return
    _faults[name] = _faults.get(name, 0) + 1
    if trace:
        with open(trace, "a") as fh:
            fh.write(f"{name}#{_faults[name]}\n")
    if kill and kill in (f"{name}#{_faults[name]}", name if _faults[name] == 1 else None):
        os._exit(137)


# --- hashing ------------------------------------------------------------------------------
def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """{relative path: {"size", "sha256"}} of every file under ``folder``."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel not in skip:
            out[rel] = {"size": path.stat().st_size, "sha256": file_digest(path)}
    return out


def verify_manifest(folder: Path, files: dict[str, dict[str, Any]], how: str = "hash") -> str | None:
    """None if every file of ``files`` is in ``folder`` unchanged, else what is wrong."""
    if how == "none":
        return None
    for rel, want in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != want["size"]:
            return f"{rel} has {path.stat().st_size} bytes, expected {want['size']}"
        if how == "hash" and file_digest(path) != want["sha256"]:
            return f"{rel} does not match its sha256"
    return None


# --- random states ------------------------------------------------------------------------
def _rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sharded_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    return any(distributed.is_sharded_tensor(p) for group in optimizer.param_groups for p in group["params"])


class Checkpointer:
    """Checkpoints of one training loop in ``folder`` (None: never checkpoint, never resume)."""

    def __init__(self, folder: Path | None, cfg: CheckpointConfig, ctx, stage: str):
        self.folder, self.cfg, self.ctx, self.stage = folder, cfg, ctx, stage
        self._objects: dict[str, Any] = {}
        self._last_save = time.monotonic()
        self._last_step = -1

    # -- resume ----------------------------------------------------------------------------
    def restore(
        self,
        modules: dict[str, torch.nn.Module],
        optimizer: torch.optim.Optimizer | None = None,
        scheduler=None,
        generators: dict[str, torch.Generator] | None = None,
    ) -> dict[str, Any]:
        """Register the loop's state; if a valid checkpoint exists, load it into that state and
        return its ``extra`` (with ``step``), else return ``{}``. Enters the loop (SIGTERM now
        waits for the next ``step_done``)."""
        self._objects = dict(modules=modules, optimizer=optimizer, scheduler=scheduler, generators=generators or {})
        _state["in_loop"] += 1
        self._entered = True
        found = self._latest()
        if found is None:
            return {}
        from safetensors.torch import load_file, load_model

        step_dir, meta = found
        for name, module in modules.items():
            weights = str(step_dir / f"{name}.safetensors")
            if distributed.is_sharded(module):  # every process reads the whole file and keeps its shard
                distributed.load_full_state_dict(module, load_file(weights, device=str(self.ctx.device)))
            elif distributed.zero():  # into ZeRO's flat buffer, which safetensors' load_model refuses
                distributed.load_state_dict_in_place(module, load_file(weights, device=str(self.ctx.device)))
            else:
                load_model(module, weights, device=str(self.ctx.device))
        tensors = torch.load(step_dir / "state.pt", map_location="cpu", weights_only=True)
        own = step_dir / f"rng-rank{distributed.rank()}.pt"  # another process count: the main's
        rng = torch.load(own if own.is_file() else step_dir / "rng-rank0.pt", map_location="cpu", weights_only=True)
        if optimizer is not None and distributed.zero_engine(optimizer) is not None:
            distributed.load_full_zero_optimizer_state(optimizer, tensors["optimizer"])
        elif optimizer is not None and _sharded_optimizer(optimizer):
            distributed.load_full_optimizer_state(optimizer, tensors["optimizer"])
        elif optimizer is not None:
            optimizer.load_state_dict(tensors["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(tensors["scheduler"])
        _set_rng_state(rng, self._objects["generators"])
        self._restore_run_state(meta["run"])
        self._last_step = meta["extra"]["step"]
        console.print(
            f"[green]resumed {self.stage} from its checkpoint at step {meta['extra']['step']}[/green] ({step_dir})"
        )
        return meta["extra"]

    def _latest(self) -> tuple[Path, dict[str, Any]] | None:
        if self.folder is None or not self.cfg.resume or not (self.folder / LATEST).is_file():
            return None
        try:
            meta = json.loads((self.folder / LATEST).read_text())
            step_dir = self.folder / meta["dir"]
            problem = verify_manifest(step_dir, meta["files"], "hash")
        except (OSError, ValueError, KeyError) as exc:
            problem = f"{LATEST} is unreadable ({exc})"
        if problem is not None:
            console.print(
                f"[yellow]ignoring the checkpoint in {self.folder}: {problem}; {self.stage} starts from the beginning[/yellow]"
            )
            return None
        return step_dir, meta

    def _restore_run_state(self, run: dict[str, Any]) -> None:
        cost, tracker = self.ctx.cost, self.ctx.tracker
        cost.tokens_generated = run["cost"]["tokens_generated"]
        cost.tokens_trained = run["cost"]["tokens_trained"]
        cost.reward_model_queries = run["cost"]["reward_model_queries"]
        # what the interrupted attempt had logged by then: a superset of what this attempt has
        # (checkpoints before record_version 3 kept the history and the step apart)
        tracker.restore(run.get("tracker") or {"history": run["history"], "step": run["tracker_step"]})

    # -- save ------------------------------------------------------------------------------
    def step_done(self, step: int, force: bool = False, **extra: Any) -> None:
        """Called after step ``step`` finished (``step`` steps done): checkpoint when due; after
        a SIGTERM, checkpoint and raise ``Preempted``."""
        preempt = preemption_requested()
        due = bool(
            force
            or preempt
            or (self.cfg.every_steps and step % self.cfg.every_steps == 0)
            or (self.cfg.every_seconds and time.monotonic() - self._last_save >= self.cfg.every_seconds)
        )
        if distributed.world_size() > 1:  # every process must take the same decision at the same step
            preempt = distributed.mean(float(preempt)) > 0
            due = distributed.mean(float(due)) > 0
        if due and self.folder is not None and step != self._last_step:
            self.save(step, **extra)
        if preempt:
            where = f"; checkpoint at step {step} in {self.folder}" if self.folder is not None else ""
            raise Preempted(f"SIGTERM during {self.stage}{where}; re-run the same command to resume")

    def save(self, step: int, **extra: Any) -> Path:
        """Write the checkpoint of ``step`` steps. With several processes, each writes its own
        random state (``rng-rank<r>.pt``); the main process writes the rest (the weights and
        optimizer are the same on every process) and publishes it.

        Sharded models (fsdp) and their optimizer state, and ZeRO's partitioned optimizer state
        (deepspeed), are gathered whole to the main process first, so that the files hold what a
        1-process or ddp run's hold (of tied weights, the name ``save_pretrained`` keeps): a
        checkpoint resumes under any strategy and process count."""
        from safetensors.torch import save_file, save_model

        objects = self._objects
        whole = {  # collective: every process takes part in gathering each sharded model
            name: distributed.full_state_dict(module, tied=False)
            for name, module in objects["modules"].items()
            if distributed.is_sharded(module)
        }
        if distributed.zero() and distributed.is_main():  # ZeRO flattened what it trains into one buffer
            whole.update(
                {n: distributed.unflattened_state_dict(m) for n, m in objects["modules"].items() if n not in whole}
            )
        optimizer = objects["optimizer"]
        optimizer_state = None
        if optimizer is not None and distributed.zero_engine(optimizer) is not None:
            optimizer_state = distributed.full_zero_optimizer_state(optimizer)
        elif optimizer is not None:
            optimizer_state = (
                distributed.full_optimizer_state(optimizer) if _sharded_optimizer(optimizer) else optimizer.state_dict()
            )
        name = f"step-{step:08d}"
        tmp, final = self.folder / f".tmp-{name}", self.folder / name
        if distributed.is_main():
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        distributed.barrier()
        torch.save(_rng_state(objects["generators"]), tmp / f"rng-rank{distributed.rank()}.pt")
        distributed.barrier()
        if distributed.is_main():
            for module_name, module in objects["modules"].items():
                if module_name in whole:
                    save_file(
                        {k: v.contiguous() for k, v in whole[module_name].items()},
                        str(tmp / f"{module_name}.safetensors"),
                        metadata={"format": "pt"},
                    )
                else:
                    save_model(module, str(tmp / f"{module_name}.safetensors"))
            torch.save(
                {
                    "optimizer": optimizer_state,
                    "scheduler": objects["scheduler"].state_dict() if objects["scheduler"] is not None else None,
                },
                tmp / "state.pt",
            )
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self._publish(final, step, extra)
        distributed.barrier()
        self._last_save, self._last_step = time.monotonic(), step
        self.ctx.progress.last_checkpoint = str(final)
        return final

    def _publish(self, final: Path, step: int, extra: dict[str, Any]) -> None:
        """Name ``final`` in latest.json (with its files' hashes and the run's state), drop older ones."""
        cost, tracker = self.ctx.cost, self.ctx.tracker
        meta = {
            "stage": self.stage,
            "dir": final.name,
            "files": manifest(final),
            "extra": {"step": step, **extra},
            "run": {
                "cost": {
                    "tokens_generated": cost.tokens_generated,
                    "tokens_trained": cost.tokens_trained,
                    "reward_model_queries": cost.reward_model_queries,
                },
                "tracker": tracker.state(),
            },
        }
        write_json_atomic(self.folder / LATEST, meta)
        for old in self.folder.glob("step-*"):
            if old.name != final.name:
                shutil.rmtree(old, ignore_errors=True)
        saved = getattr(self.ctx.progress, "checkpoint_saved", None)
        if saved is not None:  # the run's record: this attempt's wall time so far
            saved()

    def close(self) -> None:
        """Leave the loop (SIGTERM raises at once again)."""
        if getattr(self, "_entered", False):
            _state["in_loop"] -= 1
            self._entered = False
