"""The training-loop skeleton (``core.loop.run_loop``) with a real checkpointer: the steps it runs,
what it logs, and that a loop stopped mid-way resumes where it stopped with its state, weights,
optimizer and random generator as the uninterrupted loop had them."""

from types import SimpleNamespace

import pytest
import torch

from rlhf_bench.config import LoggerConfig
from rlhf_bench.core import checkpoint
from rlhf_bench.core.checkpoint import CheckpointConfig, Checkpointer
from rlhf_bench.core.loop import STEP_KEY, Trainables, run_loop
from rlhf_bench.core.train import Cost
from rlhf_bench.run import Progress
from rlhf_bench.tracking.wandb_run import Tracker


def a_run(folder):
    """What a checkpointer reads of its run: device, cost, tracker, progress (no pipeline)."""
    tracker = Tracker(LoggerConfig(mode="disabled"), folder, "t", "t", {})
    progress = Progress(cost=Cost())
    ctx = SimpleNamespace(device=torch.device("cpu"), cost=progress.cost, tracker=tracker, progress=progress)
    return ctx, Checkpointer(folder, CheckpointConfig(every_steps=1, every_seconds=0), ctx, "toy")


class Stop(Exception):
    pass


def regression_loop(folder, total: int, stop_at: int | None = None):
    """A linear model fitted by SGD on batches drawn from a checkpointed generator; ``stop_at``:
    raise at that step (a crash)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(1)
    ctx, ckpt = a_run(folder)

    def step(i: int, state: dict) -> dict[str, float]:
        if i == stop_at:
            raise Stop
        x = torch.randn(8, 3, generator=data)
        loss = ((model(x).squeeze(-1) - x.sum(-1)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state["seen"] += 8
        return {"train/loss": loss.item()}

    state = run_loop(
        ckpt,
        ctx.tracker.log,
        "toy",
        total,
        step,
        Trainables({"model": model}, optimizer, generators={"data": data}),
        state={"seen": 0},
        log_every=2,
    )
    return model, state, ctx.tracker.history["toy"]


def test_runs_every_step_and_logs_under_train_step(tmp_path):
    _, state, rows = regression_loop(tmp_path / "a", total=5)
    assert state == {"seen": 40}
    # every log_every=2 steps and the last one, each under train/step (the stage is the namespace)
    assert [row[STEP_KEY] for row in rows] == [0, 2, 4]
    assert all(set(row) == {STEP_KEY, "train/loss"} for row in rows)


def test_a_stopped_loop_resumes_where_it_stopped(tmp_path):
    whole, whole_state, _ = regression_loop(tmp_path / "whole", total=6)
    with pytest.raises(Stop):
        regression_loop(tmp_path / "resumed", total=6, stop_at=3)
    assert checkpoint._state["in_loop"] == 0  # the skeleton closed the checkpointer on the way out
    resumed, state, _ = regression_loop(tmp_path / "resumed", total=6)
    assert state == whole_state == {"seen": 48}  # 3 steps before the crash, 3 after: the state came back
    # weights, optimizer and the data generator as the uninterrupted loop had them: the same model
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_nothing_to_do_when_every_step_was_checkpointed(tmp_path):
    _, _, first = regression_loop(tmp_path / "done", total=3)
    _, state, rows = regression_loop(tmp_path / "done", total=3, stop_at=0)  # running step 0 again would raise
    assert state == {"seen": 24}  # restored
    assert rows == first  # the history the checkpoint kept, and no row logged again
