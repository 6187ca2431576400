"""Read an offline W&B run back from its files, with no server and no account.

Uses W&B's own reader of the ``.wandb`` transaction log (``wandb leet inspect --json``),
so what we read is what ``wandb sync`` would upload.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def _wandb_cli() -> list[str]:
    exe = Path(sys.executable).with_name("wandb")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("wandb")
    if found:
        return [found]
    raise FileNotFoundError("the `wandb` command was not found beside this Python or on PATH")


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """{'summary': {...}, 'history': [row, ...], 'config': {...}, 'state': ...} of an offline run folder."""
    cli = _wandb_cli()
    summary = subprocess.run(
        [*cli, "leet", "inspect", "--summary", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    records = subprocess.run(
        [*cli, "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    state = json.loads(summary.stdout)
    history = []
    for line in records.stdout.splitlines():
        if '"type":"history"' in line:
            history.append(json.loads(line)["history"]["item"])
    return {
        "summary": state.get("summary", {}),
        "config": state.get("config", {}),
        "state": state.get("state"),
        "history": history,
    }
