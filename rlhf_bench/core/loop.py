"""The one training-loop skeleton every stage runs: restore, iterate with one progress bar, log,
checkpoint at the cadence, close.

A stage supplies its step, ``step(i, state) -> metrics`` (the metrics of step ``i``, or None when
it has nothing to log), and what its checkpoints hold (``Trainables``). The skeleton:

1. restores the newest checkpoint of the stage, if there is one: weights, optimizer, schedule,
   random generators, and ``state`` (the stage's resumable scalars: tokens counted, a KL
   coefficient ...), so that the loop resumes at the step after it;
2. runs steps ``start .. total - 1`` under one progress bar;
3. logs step ``i``'s metrics under ``train/step = i`` in the stage's history (the stage is the
   namespace: ``sft``, ``reward_model``, ``ppo`` ...) every ``log_every`` steps and at the last;
4. after each step, checkpoints when the schedule says so (``Checkpointer.step_done``; at the
   last step too when ``save_last``), with ``state``;
5. closes the checkpointer, also when a step raises.

After each step it passes ``fault_point("step:<stage>")``, where the fault-injection test kills it;
after the first few steps it states the time left (``_say_eta``: a warning beyond a week).

Nothing in it knows what a step computes, so a method is its step and its setup.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from rlhf_bench.core.checkpoint import fault_point

STEP_KEY = "train/step"

Step = Callable[[int, dict[str, Any]], "dict[str, float] | None"]


@dataclass
class Trainables:
    """What a stage's checkpoint holds besides its ``state``: named modules (their weights), the
    optimizer and schedule, and named random generators."""

    modules: dict[str, torch.nn.Module]
    optimizer: Any = None
    scheduler: Any = None
    generators: dict[str, torch.Generator] = field(default_factory=dict)


ETA_AFTER = 3  # steps timed (after the first, which warms up) before the ETA is stated
ETA_WARN_SECONDS = 7 * 24 * 3600  # an ETA beyond a week is stated as a warning


def _say_eta(clock: dict[str, float], name: str, done: int, left: int) -> None:
    """Once, after ``ETA_AFTER`` timed steps of this attempt: one line with the time left,
    (elapsed since the first step / steps since) x steps left; a warning beyond a week."""
    now = time.perf_counter()
    if done == 0:
        clock["first"] = now
    elif done == ETA_AFTER and left > 0:
        per_step = (now - clock["first"]) / ETA_AFTER
        eta = per_step * left
        days, hours = divmod(eta / 3600, 24)
        when = f"{days:,.0f} days {hours:.0f} h" if days >= 1 else f"{eta / 60:.1f} min"
        line = f"{name}: {left:,} steps left at {per_step:.2f} s/step: ETA {when}"
        if eta > ETA_WARN_SECONDS:
            line = f"warning: {line}; lower the steps or check the budget line above"
        tqdm.write(line, file=sys.stderr)


def run_loop(
    checkpointer,
    log: Callable[[str, dict[str, float]], None],
    stage: str,
    total: int,
    step: Step,
    trainables: Trainables,
    *,
    state: dict[str, Any] | None = None,
    desc: str | None = None,
    unit: str = "step",
    log_every: int = 1,
    save_last: bool = True,
) -> dict[str, Any]:
    """Run ``step`` for steps ``0 .. total - 1``, resuming after the last checkpointed one; return
    ``state`` as the last step left it. ``log(stage, row)`` receives each logged row."""
    state = dict(state or {})
    saved = checkpointer.restore(
        trainables.modules, trainables.optimizer, trainables.scheduler, trainables.generators or None
    )
    start = saved.pop("step", 0)
    state.update({k: v for k, v in saved.items() if k in state})
    try:
        bar = tqdm(range(start, total), desc=desc or stage, unit=unit, dynamic_ncols=True, initial=start, total=total)
        clock = {}
        for i in bar:
            metrics = step(i, state)
            if metrics is not None and (i % log_every == 0 or i == total - 1):
                log(stage, {STEP_KEY: i, **metrics})
            checkpointer.step_done(i + 1, force=save_last and i + 1 == total, **state)
            fault_point(f"step:{stage}")
            _say_eta(clock, desc or stage, i - start, total - i - 1)
    finally:
        checkpointer.close()
    return state
