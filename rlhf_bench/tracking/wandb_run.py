"""One W&B run per experiment: offline by default, online when the user has a key.

Offline runs need no account: W&B writes ``<run folder>/wandb/offline-run-*/run-<id>.wandb``,
which ``wandb sync`` uploads later and ``wandb beta leet`` / the reader in
``rlhf_bench.tracking.wandb_files`` read back locally.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import Console

from rlhf_bench.config import LoggerConfig

console = Console(stderr=True)


class Tracker:
    """Logs metrics to W&B and keeps a copy per stage for the run record."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, run_id: str, name: str, config: dict[str, Any]):
        self.mode = getattr(cfg.mode, "value", cfg.mode)
        self.history: dict[str, list[dict[str, float]]] = {}
        self._step = 0
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
        )
        try:
            self._run = wandb.init(mode=self.mode, **init)
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
        self._step += 1
        if self._run is not None:
            self._guard(lambda: self._run.log({f"{stage}/{k}": v for k, v in row.items()}, step=self._step))

    def summary(self, metrics: dict[str, Any]) -> None:
        if self._run is not None:
            self._guard(lambda: self._run.summary.update(metrics))

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
