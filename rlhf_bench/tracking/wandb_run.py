"""One W&B run per experiment: offline by default, online when the user has a key.

Offline runs need no account: W&B writes ``<run folder>/wandb/offline-run-*/run-<id>.wandb``,
which ``wandb sync`` uploads later and ``wandb beta leet`` / the reader in
``rlhf_bench.tracking.wandb_files`` read back locally.

A resumed run is the same W&B run: every attempt opens the run id the record names with
``resume="allow"``. Online, W&B continues that run on the server. Offline it cannot (wandb 0.31
starts a new ``offline-run-<time>-<id>`` folder with ``resumed=False`` and step 0, and a folder
whose process was killed holds nothing: the log is not flushed), so when an attempt restores the
run's state (``restore``: from a checkpoint or a stage boundary) the rows logged before are logged
again into this attempt's run, at their own steps, in their own order: the newest folder, the one
the record names, holds every history row.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from rlhf_bench.config import LoggerConfig

console = Console(stderr=True)


class Tracker:
    """Logs metrics to W&B and keeps a copy per stage for the run record."""

    def __init__(
        self,
        cfg: LoggerConfig,
        run_dir: Path,
        run_id: str,
        name: str,
        config: dict[str, Any],
        resume: bool = False,
    ):
        self.mode = getattr(cfg.mode, "value", cfg.mode)
        self.history: dict[str, list[dict[str, float]]] = {}
        self._order: list[list[Any]] = []  # [[stage, rows], ...]: the order rows were logged in
        self._step = 0  # rows logged, over every attempt: row k has W&B step k
        self._sent = 0  # rows this attempt's W&B run has been given
        self._run = None
        self.failed: str | None = None  # why W&B stopped mid-run, if it did
        self.run_id = None
        self.dir: Path | None = None
        if self.mode == "disabled":
            return
        import wandb

        self._set_environment(run_dir)
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True)
        init = dict(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            tags=list(cfg.tags),
            name=name,
            id=run_id,
            config=config,
            dir=str(run_dir),
            settings=settings,
            **({"resume": "allow"} if resume else {}),
        )
        try:
            self._run = _init_when_free(wandb, self.mode, init)
        except Exception as exc:  # online without network or key: keep going offline, same run otherwise
            if self.mode != "online":
                raise
            console.print(f"[yellow]W&B online init failed ({exc}); logging offline instead.[/yellow]")
            self.mode = "offline"
            os.environ["WANDB_MODE"] = "offline"
            # The failed online run may still hold its id in W&B's service process: start a
            # fresh service, and give the offline run an id of its own (the record names it).
            wandb.teardown()
            self._run = wandb.init(mode="offline", **{**init, "id": f"{run_id}-offline"})
        self.run_id = self._run.id
        self.dir = Path(self._run.dir).parent  # .../wandb/offline-run-<date>-<id>

    def _set_environment(self, run_dir: Path) -> None:
        # Everything W&B writes stays under the run folder (not the home folder).
        os.environ["WANDB_MODE"] = self.mode
        os.environ.setdefault("WANDB_SILENT", "true")
        for var, sub in (
            ("WANDB_CACHE_DIR", "cache"),
            ("WANDB_DATA_DIR", "data"),
            ("WANDB_CONFIG_DIR", "config"),
        ):
            if var not in os.environ:
                os.environ[var] = str(run_dir / "wandb" / f".{sub}")

    def log(self, stage: str, metrics: dict[str, float]) -> None:
        """Log one step of ``stage`` (``sft``, ``reward_model``, ``ppo`` ...): the record's history
        keeps it under the stage; W&B gets each key under the stage's namespace
        (``sft/train/loss``), so that two stages' ``train/loss`` are two charts."""
        row = {k: float(v) for k, v in metrics.items()}
        self.history.setdefault(stage, []).append(row)
        if self._order and self._order[-1][0] == stage:
            self._order[-1][1] += 1
        else:
            self._order.append([stage, 1])
        self._step += 1
        self._send(stage, row, self._step)

    def _send(self, stage: str, row: dict[str, float], step: int) -> None:
        if self._run is not None and step > self._sent:
            self._guard(lambda: self._run.log({f"{stage}/{k}": v for k, v in row.items()}, step=step))
        self._sent = max(self._sent, step)

    def state(self) -> dict[str, Any]:
        """What a checkpoint or a stage boundary keeps of the tracker: the history, the order its
        rows were logged in (run-length: ``[[stage, rows], ...]``) and the step."""
        return {"history": self.history, "order": self._order, "step": self._step}

    def restore(self, state: dict[str, Any]) -> None:
        """Take the history of ``state`` (an earlier attempt's, a superset of this attempt's) and
        give this attempt's W&B run the rows it has not had yet, at their steps. A state without
        its order (older checkpoints) is taken stage by stage."""
        history = {stage: [dict(r) for r in rows] for stage, rows in state["history"].items()}
        order = state.get("order") or [[stage, len(rows)] for stage, rows in history.items()]
        self.history.clear()
        self.history.update(history)
        self._order = [list(run) for run in order]
        self._step = max(int(state.get("step", 0)), sum(n for _, n in order))
        seen: dict[str, int] = {}
        step = 0
        for stage, n in order:
            for _ in range(n):
                row, step = history[stage][seen.get(stage, 0)], step + 1
                seen[stage] = seen.get(stage, 0) + 1
                if step > self._sent:
                    self._send(stage, row, step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self._run is not None:
            self._guard(lambda: self._run.summary.update(metrics))

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        """``rows`` (dicts with the same keys) as a ``wandb.Table`` in an artifact of type ``table``
        named ``<name>-<run id>`` (the record keeps the same rows as a file)."""
        if self._run is None or not rows:
            return
        import wandb

        def log() -> None:
            columns = list(rows[0])
            table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
            artifact = wandb.Artifact(f"{name}-{self.run_id}", type="table")
            artifact.add(table, name)
            self._run.log_artifact(artifact)

        self._guard(log)

    def finish(self, exit_code: int = 0) -> None:
        if self._run is not None:
            self._guard(lambda: self._run.finish(exit_code=exit_code))
            self._run = None

    def _guard(self, call) -> None:
        """W&B failing mid-run must not stop training: say so once and go on; the run record
        keeps every metric (``history``), so nothing is lost."""
        try:
            call()
        except Exception as exc:
            console.print(
                f"[yellow]W&B failed ({type(exc).__name__}: {exc}); the run goes on without it, "
                "every metric is kept in the run record.[/yellow]"
            )
            self.failed = f"{type(exc).__name__}: {exc}"
            self._run = None


# A killed attempt's W&B service process outlives it for a while and holds the run id ("run ID
# ... is in use"): the next attempt waits for it to let go (~30 s), then takes an id of its own.
IN_USE_WAITS = (1, 2, 4, 8, 15)


def _init_when_free(wandb, mode: str, init: dict[str, Any]):
    for wait in (*IN_USE_WAITS, None):
        try:
            return wandb.init(mode=mode, **init)
        except Exception as exc:
            if "is in use" not in str(exc):
                raise
            wandb.teardown()
            if wait is None:
                break
            time.sleep(wait)
    fresh = f"{init['id']}-{int(time.time())}"
    console.print(f"[yellow]W&B run {init['id']} is still held by a killed attempt; logging to {fresh}.[/yellow]")
    return wandb.init(mode=mode, **{**init, "id": fresh})
