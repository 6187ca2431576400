"""What the benchmarks share: a real run context (the pipeline's own stages, cached under a root
folder), equal-length responses, a step clock, peak memory, a matmul peak, model FLOPs, and the
JSON they write.

Not part of the package: benchmarks measure speed and are run by hand (see
results/benchmarks/README.md for the commands and the numbers).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

# The ~25M-parameter config of the benchmarks (GPT-2 style: 8 layers, d 512, 8 heads of 64): 25.2M in
# the blocks. The BPE trainer stops at the vocabulary the task's text supports (576 tokens on the
# sentiment task, whatever is asked), so the embeddings add only ~0.5M.
MODEL_25M = [
    "model.tiny.n_layer=8",
    "model.tiny.d_model=512",
    "model.tiny.n_head=8",
    "model.tiny.vocab_size=16384",
    "model.tiny.max_positions=320",
]
MODELS = {"tiny": ["model.tiny.max_positions=320"], "25m": MODEL_25M}


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's intra-op threads in this process (None: torch's default, one per core).

    On a machine shared with other jobs, one thread is steadier: with two, every small op waits
    for the slower core (measured here: 8x slower generation while another job held a core)."""
    if threads:
        torch.set_num_threads(threads)


def build_context(overrides: list[str], root: Path, sft_steps: int = 100):
    """A Run as a run's method receives it: base model, SFT, preference pairs and the
    gold reward as the training reward (so both libraries optimise the same function), built
    by the pipeline's cached stages under ``root`` (a second call reuses them)."""
    import dataclasses

    from rlhf_bench.compose import load_config
    from rlhf_bench.core import models
    from rlhf_bench.core.device import resolve_device, resolve_dtype, seed_everything
    from rlhf_bench.pipeline import prepare
    from rlhf_bench.tracking.wandb_run import Tracker

    models.quiet_transformers()
    cfg = load_config(
        [
            f"paths.artifacts_dir={root}/artifacts",
            f"paths.results_dir={root}/results",
            "reward_model=gold",
            f"sft.steps={sft_steps}",
            "logger.mode=disabled",
            *overrides,
        ]
    )
    device = resolve_device(cfg.device)
    tracker = Tracker(dataclasses.replace(cfg.logger, mode="disabled"), root, "bench", "bench", {})
    seed_everything(cfg.seed)
    ctx, _ = prepare(cfg, tracker, device, resolve_dtype(cfg.precision, device), None)
    seed_everything(cfg.seed)
    return ctx


def instrument(ctx, **services) -> None:
    """Swap services of a run for measured or fixed ones (a benchmark's instruments). A ``Run`` is
    frozen so that no stage writes into it; a benchmark standing outside the stages may."""
    for name, service in services.items():
        object.__setattr__(ctx, name, service)


def ban_eos(ctx) -> list[int]:
    """Never sample EOS (nor pad, bos, unk) in ``ctx.sample``: every response is exactly
    ``ctx.max_new_tokens`` long, so that runs compared with each other generate and train on the
    same number of tokens (TRL gets the same list as ``suppress_tokens``). Returns the list."""
    banned = sorted({*ctx.banned_token_ids(), ctx.tokenizer.eos_token_id})
    instrument(ctx, banned_token_ids=lambda: banned)
    return banned


class StepClock:
    """Times a training loop from outside: every ``ckpt.step_done`` call (once per step, after the
    step, in every method) is stamped with the time and the cost counters, so that the steady-state
    rate leaves out model loading and the first step. Also keeps the last metrics logged."""

    def __init__(self, ctx):
        self.marks: list[Mark] = []
        self.last: dict[str, Any] = {}
        checkpointer, log = ctx.checkpointer, ctx.tracker.log

        def stamped_checkpointer(stage: str, folder=None):
            ckpt = checkpointer(stage, folder)
            step_done = ckpt.step_done

            def stamped(step: int, force: bool = False, **extra: Any) -> None:
                step_done(step, force=force, **extra)
                self.marks.append(mark(step, ctx.cost.tokens_generated, ctx.cost.tokens_trained))

            ckpt.step_done = stamped
            return ckpt

        def logged(stage: str, metrics: dict[str, Any]) -> None:
            self.last = metrics
            log(stage, metrics)

        instrument(ctx, checkpointer=stamped_checkpointer)
        ctx.tracker.log = logged

    def rates(self, skip: int = 1) -> dict[str, float]:
        """Steps, generated and trained tokens per second from the end of step ``skip`` to the last."""
        return steady_rates(self.marks, skip)


Mark = tuple[int, float, float, int, int]  # steps done, wall time, process CPU time, tokens generated, trained


def mark(step: int, generated: int = 0, trained: int = 0) -> Mark:
    return step, time.perf_counter(), time.process_time(), generated, trained


def steady_rates(marks: list[Mark], skip: int = 1) -> dict[str, float]:
    """Rates between the mark after step ``skip`` and the last. ``steps_per_cpu_second`` divides by
    the process's CPU time instead of the wall clock: with one thread it hardly moves when other
    jobs share the machine, so it is the figure to compare on a loaded machine."""
    if len(marks) <= skip:
        raise ValueError(f"{len(marks)} steps timed: run more than {skip} (--steps)")
    (s0, t0, c0, g0, r0), (s1, t1, c1, g1, r1) = marks[skip - 1], marks[-1]
    seconds, cpu = t1 - t0, c1 - c0
    return {
        "steps_timed": s1 - s0,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "steps_per_second": (s1 - s0) / seconds,
        "steps_per_cpu_second": (s1 - s0) / cpu,
        "generated_tokens_per_second": (g1 - g0) / seconds,
        "trained_tokens_per_second": (r1 - r0) / seconds,
    }


def sync(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device: torch.device | str = "cpu") -> float:
    """``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the process's peak RSS (a running
    maximum over the whole process: run one configuration per process to attribute it)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_flops(
    device: torch.device | str = "cpu", n: int = 2048, dtype: torch.dtype = torch.float32, seconds: float = 3.0
) -> float:
    """The measured peak of a plain square matmul on ``device``: the best of repeated timed runs
    of an n x n x n product (2 n^3 FLOPs each) over ``seconds``."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(load[0], 2) if load else None,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def write_results(out: str | Path, rows: list[dict[str, Any]], **extra: Any) -> Path:
    """``{"meta": machine + command, "rows": rows, **extra}`` written atomically to ``out``."""
    from rlhf_bench.tracking.record import write_json_atomic

    out = Path(out)
    meta = {**machine(), "command": "python " + " ".join(sys.argv)}
    write_json_atomic(out, {"meta": meta, "rows": rows, **extra})
    return out


def load_results(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def run_isolated(script: str | Path, args: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Run ``python script *args`` in a fresh process (peak RSS is a per-process maximum) and return
    the JSON object it printed last on a line starting with ``RESULT ``."""
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout)
    results = [line[len("RESULT ") :] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not results:
        raise RuntimeError(f"{script} {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(results[-1])


def print_result(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result), flush=True)
