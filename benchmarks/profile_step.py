"""Where a training step's time goes, rlhf-bench next to TRL: py-spy samples of the same runs as
benchmarks/versus_trl.py (each library in its own process, one after the other), sorted into the
phases of a step: generation, reward, the no-grad scoring passes (reference; TRL's RLOO also the
"old" policy), the policy's forward pass with grad, its backward pass, the optimizer, and the rest
(the loop itself, logging, TRL's Trainer). Model loading and setup are left out.

py-spy comes with the optional ``bench`` extra. Prints a table of each phase's share of the
sampled time (and its seconds per step); writes JSON to --out.

    python benchmarks/profile_step.py --help
"""

from __future__ import annotations

import argparse
import collections
import linecache
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import write_results
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PHASES = ("generation", "reward", "scoring passes (no grad)", "policy forward", "backward", "optimizer", "other")
FRAME = re.compile(r"(\S+) \(([^:]+):(\d+)\)")


def source_line(file: str, line: int) -> str:
    path = Path(file)
    if not path.is_absolute():
        path = REPO / path
    return linecache.getline(str(path), line)


SETUP = ("load_policy", "load_reference", "load_reward", "load_value_model", "load_pairs", "checkpointer", "restore(")


def phase(frames: list[tuple[str, str, int]]) -> str | None:
    """The phase of one sampled stack (root first), or None outside the training loop (loading, setup)."""
    stack = ";".join(f"{func} ({file}" for func, file, _ in frames)
    # lines of our methods and of the offline loop, outermost first: what the loop was doing
    own = [
        source_line(file, line)
        for _, file, line in frames
        if "rlhf_bench/methods/" in file or "training/pairs.py" in file
    ]
    if not any(k in stack for k in ("rlhf_bench/methods/", "_inner_training_loop (", "_precompute_ref_logps (")):
        return None
    if any(key in text for text in own for key in SETUP):
        return None
    if "polarity_scores (" in stack or "gold_reward (" in stack or "_calculate_rewards (" in stack:
        return "reward"
    if "generate (rlhf_bench/core/rollout.py" in stack or "_generate_single_turn (" in stack:
        return "generation"
    if "run_backward (" in stack:
        return "backward"
    if "torch/optim/" in stack or "clip_grad_norm" in stack:
        return "optimizer"
    if any(k in stack for k in ("_precompute_ref_logps (", "compute_ref_log_probs (", "reference_logps (")):
        return "scoring passes (no grad)"
    if "_get_per_token_logps_and_entropies (" in stack and "_generate_and_score_completions (" in stack:
        return "scoring passes (no grad)"
    if "_compute_loss (" in stack:
        return "policy forward"
    if any(k in stack for k in ("response_logprobs (", "response_values (", "_logps (")):
        if own and re.search(r"\bref\b|ref_|old_", own[-1]):
            return "scoring passes (no grad)"
        return "policy forward"
    return "other"


def profile(library: str, model: str, method: str, args) -> dict:
    out = Path(tempfile.mkdtemp(prefix="profile-step-")) / "samples.txt"
    child = [sys.executable, str(HERE / "versus_trl.py"), "--steps", str(args.steps), "--threads", str(args.threads)]
    child += ["--root", str(args.root), "--child", library, model, method]
    spy = [args.py_spy, "record", "--rate", str(args.rate), "--format", "raw", "--output", str(out), "--", *child]
    proc = subprocess.run(spy, capture_output=True, text=True)
    if proc.returncode or not out.exists():
        raise RuntimeError(f"py-spy failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    counts: collections.Counter = collections.Counter()
    for row in out.read_text().splitlines():
        stack, _, n = row.rpartition(" ")
        frames = [(f, file, int(line)) for f, file, line in FRAME.findall(stack)]
        name = phase(frames)
        if name is not None:
            counts[name] += int(n)
    total = sum(counts.values())
    steps = args.steps if method != "dpo" else args.dpo_steps
    seconds = total / args.rate
    return {
        "library": library,
        "model": model,
        "method": method,
        "samples": total,
        "sampled_seconds": seconds,
        "share": {p: counts[p] / total for p in PHASES},
        "seconds_per_step": {p: counts[p] / args.rate / steps for p in PHASES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny", help="comma-separated: tiny, 25m")
    parser.add_argument("--methods", default="grpo,rloo,dpo")
    parser.add_argument("--steps", type=int, default=10, help="steps per GRPO/RLOO run")
    parser.add_argument("--dpo-steps", type=int, default=16, help="DPO's steps (pairs / 32; see versus_trl --pairs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--root", type=Path, default=Path("artifacts/benchmarks"))
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"))
    parser.add_argument("--out", default="results/benchmarks/profile_step.json")
    args = parser.parse_args()

    rows = [
        profile(library, model, method, args)
        for model in args.models.split(",")
        for method in args.methods.split(",")
        for library in ("rlhf-bench", "trl")
    ]
    table = Table(title="where a step's time goes (py-spy): share of sampled time, seconds per step")
    for col in ("model", "method", "library", *PHASES):
        table.add_column(col, justify="right")
    for r in rows:
        cells = [f"{r['share'][p]:.0%} {r['seconds_per_step'][p]:.3f}" for p in PHASES]
        table.add_row(r["model"], r["method"], r["library"], *cells)
    console = Console(width=220)
    console.print(table)
    console.print(f"wrote {write_results(args.out, rows)}")


if __name__ == "__main__":
    main()
