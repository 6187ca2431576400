"""Training-step throughput of rlhf-bench's methods, and how close the update gets to the hardware.

Three measurements, on the tiny default model (0.8M parameters) and on a ~25M-parameter config
(8 layers, d 512), each configuration in its own process (so that peak RSS is its own):

  methods   PPO, RLOO, GRPO and DPO at equal batch, 64 sequences per step (PPO 64 prompts, 4 epochs
            of 4 minibatches; RLOO and GRPO 16 prompts x 4 samples; DPO 32 pairs), each from its
            own defaults otherwise: steps/s, optimizer updates/s, generated and trained tokens/s
            over the steady state (model loading and the first step left out). EOS is never
            sampled, so every response is the task's full 24 tokens in every method.
  hardware  the policy's gradient update alone (log-probs + entropy, a policy-gradient loss, AdamW,
            on 64 sampled sequences as GRPO takes them): achieved FLOP/s (the model FLOPs the pass
            performs, ``logprob_pass_flops``, x 3 for the backward, / seconds) divided by the peak of
            a plain 2048^3 matmul measured in the same process, in fp32 and in bf16 autocast, at
            64 rows and more.
  lora      one GRPO run with full fine-tuning and one with LoRA: peak memory and the bytes of model
            weights held (distinct tensor storages of policy + reference): with LoRA the reference
            is the policy with its adapters off, no second copy.

The stages the methods start from (base model, SFT, preference pairs) are built once by the
pipeline's own cached stages under --root. The training reward is the gold reward (the same
function TRL gets in benchmarks/versus_trl.py). Prints tables; writes JSON to --out.

    python benchmarks/train_step.py --help
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import (
    MODELS,
    StepClock,
    ban_eos,
    build_context,
    instrument,
    matmul_peak_flops,
    peak_memory_mb,
    print_result,
    reset_peak_memory,
    run_isolated,
    set_threads,
    sync,
    write_results,
)
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

ROOT = Path("artifacts/benchmarks")
PAIRS = 512  # preference pairs: 16 DPO steps of 32 pairs per epoch


def context(model: str, root: Path, device: str = "cpu", extra: list[str] = ()):
    overrides = [f"device={device}", f"preferences.n_train={PAIRS}", "preferences.n_eval=64", *MODELS[model]]
    return build_context([*overrides, *extra], root)


def method_config(method: str, steps: int):
    """(config, train, optimizer updates per step): each method at 64 sequences per step."""
    from rlhf_bench.compose import load_config
    from rlhf_bench.methods import dpo, pg

    if method in ("ppo", "rloo", "grpo"):  # the presets: 64 prompts x 1 (ppo), 16 prompts x 4 samples
        cfg = load_config([f"method={method}", f"method.steps={steps}"]).method
        return cfg, pg.train, cfg.epochs * cfg.num_minibatches
    if method == "dpo":  # one epoch over the pairs: PAIRS / 32 steps
        return dpo.DPOConfig(epochs=1, batch_size=32, warmup_steps=0), dpo.train, 1
    raise ValueError(method)


def weight_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the distinct tensor storages behind the modules' parameters and buffers."""
    seen, total = set(), 0
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def child_method(model: str, method: str, steps: int, root: Path, lora: bool, device: str, precision: str) -> dict:
    ctx = context(model, root, device, [f"precision={precision}", *(["model.lora.enabled=true"] if lora else [])])
    ban_eos(ctx)
    cfg, train, updates = method_config(method, steps)
    held = {}
    load_policy, load_reference = ctx.load_policy, ctx.load_reference
    instrument(
        ctx,
        load_policy=lambda *a, **k: held.setdefault("policy", load_policy(*a, **k)),
        load_reference=lambda *a: held.setdefault("reference", load_reference(*a)),
    )
    clock = StepClock(ctx)
    reset_peak_memory(ctx.device)
    train(ctx, cfg)
    rates = clock.rates(skip=1)
    policy = held["policy"]
    return {
        "model": model,
        "method": method,
        "lora": lora,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "sequences_per_step": 64,
        "optimizer_updates_per_step": updates,
        **rates,
        "updates_per_second": rates["steps_per_second"] * updates,
        "final_loss": clock.last.get("train/loss", clock.last.get("train/policy_loss")),
        "weights_mb": weight_bytes(policy, held["reference"]) / 2**20,
        "trainable_parameters": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "peak_memory_mb": peak_memory_mb(ctx.device),
    }


def logprob_pass_flops(
    model: torch.nn.Module, prompt_rows: int, rows: int, prompt_length: int, response_length: int
) -> float:
    """Model FLOPs of one ``response_logits`` forward pass as it runs: ``prompt_rows`` distinct prompts
    of ``prompt_length`` positions once (``rows`` when no prompt repeats), then ``rows`` responses of
    ``response_length - 1`` positions (the last token is never an input) attending to the prompt and
    to the response so far; the LM head at the ``response_length`` positions that predict response
    tokens. Per position 2 x the block parameters; attention 4 x d_model x (keys attended) per layer
    (QK^T and AV over every key of the padded sequence, as the kernel computes them); the head
    2 x vocab x d_model. Padding positions count: the kernels compute them."""
    cfg = model.config
    n_layer = getattr(cfg, "n_layer", None) or cfg.num_hidden_layers
    d_model = getattr(cfg, "n_embd", None) or cfg.hidden_size
    blocks = sum(p.numel() for n, p in model.named_parameters() if ".h." in n or ".layers." in n)
    tail = response_length - 1
    positions = prompt_rows * prompt_length + rows * tail
    keys = prompt_rows * prompt_length * prompt_length + rows * tail * (prompt_length + tail)
    head = (prompt_rows + rows * tail) * 2 * cfg.vocab_size * d_model
    return 2.0 * blocks * positions + 4.0 * n_layer * d_model * keys + head


def child_hardware(model: str, repeats: int, root: Path, precision: str, groups: int, device: str) -> dict:
    """The update alone: log-probs and entropy, a policy-gradient loss and AdamW on a fixed sampled
    batch of ``groups`` prompts x 4 samples (the timed steps), next to a plain matmul's peak."""
    from rlhf_bench.core.rollout import _shared_prompts, response_logprobs
    from rlhf_bench.core.train import make_optimizer, optimizer_step
    from rlhf_bench.training.groups import sample_groups

    ctx = context(model, root, device)
    ban_eos(ctx)
    policy = ctx.load_policy().train()
    prompts = ctx.sample_prompts(groups, torch.Generator().manual_seed(0))
    _, batch = sample_groups(ctx, policy, prompts, 4, 1.0, torch.Generator().manual_seed(1))
    optimizer = make_optimizer(policy.parameters(), 1e-5)
    advantages = torch.randn(len(batch), generator=torch.Generator().manual_seed(2))
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step():
        with torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype is not None):
            logp, _ = response_logprobs(policy, *batch.inputs(), with_entropy=True)
        loss = -(advantages.unsqueeze(-1) * logp * batch.response_mask).sum(-1).mean()
        optimizer_step(loss, optimizer, 1.0)

    for _ in range(2):  # warm-up: allocator, AdamW state
        step()
    peak_dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def timed(fn, n):
        sync(ctx.device)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        sync(ctx.device)
        return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n

    peaks = [matmul_peak_flops(ctx.device, dtype=peak_dtype)]
    seconds, cpu_seconds = timed(step, repeats)
    peaks.append(matmul_peak_flops(ctx.device, dtype=peak_dtype))
    # the same matmul by CPU time: with one thread, both figures hardly move under other jobs' load
    a = torch.randn(2048, 2048, dtype=peak_dtype, device=ctx.device)
    _, matmul_cpu = timed(lambda: a @ a, 5)
    top_ops = op_profile(step)
    rows, prompt_length, response_length = len(batch), batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    shared = _shared_prompts(batch.prompt_ids, batch.prompt_mask)
    prompt_rows = rows if shared is None else shared[0].shape[0]
    flops = 3.0 * logprob_pass_flops(policy, prompt_rows, rows, prompt_length, response_length)
    peak = max(peaks)
    threads = torch.get_num_threads()
    return {
        "model": model,
        "precision": precision,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "rows": rows,
        "distinct_prompts": prompt_rows,
        "prompt_length": prompt_length,
        "response_length": response_length,
        "seconds_per_update": seconds,
        "tokens_per_second": rows * (prompt_length + response_length) / seconds,
        "flops_per_update": flops,
        "achieved_flops": flops / seconds,
        "matmul_peak_flops": peak,
        "fraction_of_peak": flops / seconds / peak,
        "fraction_of_peak_cpu_time": (flops / cpu_seconds) / (2 * 2048**3 / matmul_cpu),
        "threads": threads,
        "peak_memory_mb": peak_memory_mb(ctx.device),
        "top_ops": top_ops,
    }


def op_profile(step, top: int = 8) -> list[dict]:
    """torch.profiler over one more step: the ``top`` operators by self time, with their share."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,25m", help="comma-separated: tiny, 25m")
    parser.add_argument("--methods", default="ppo,rloo,grpo,dpo")
    parser.add_argument("--steps", type=int, default=8, help="steps per RL method run (DPO: one epoch of pairs)")
    parser.add_argument("--repeats", type=int, default=5, help="timed updates in the hardware measurement")
    parser.add_argument("--precisions", default="fp32,bf16", help="hardware: fp32 and/or bf16 autocast")
    parser.add_argument("--groups", default="16,64", help="hardware: prompts x 4 samples per update (16: 64 rows)")
    parser.add_argument("--parts", default="methods,hardware,lora", help="comma-separated: methods, hardware, lora")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="methods and lora runs")
    parser.add_argument("--root", type=Path, default=ROOT, help="where the cached stages are built")
    parser.add_argument("--out", default="results/benchmarks/train_step.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # one configuration, in this process
    args = parser.parse_args()
    set_threads(args.threads)

    if args.child:
        kind, model, *rest = args.child
        if kind == "method":
            lora = rest[1] == "lora"
            print_result(child_method(model, rest[0], args.steps, args.root, lora, args.device, args.precision))
        else:
            print_result(child_hardware(model, args.repeats, args.root, rest[0], int(rest[1]), args.device))
        return

    from rlhf_bench.core import models

    models.quiet_transformers()
    parts, model_names = args.parts.split(","), args.models.split(",")
    jobs = []
    for model in model_names:
        context(model, args.root, args.device)  # build the cached stages once, before the timed children
        if "methods" in parts:
            jobs += [("methods", ["method", model, m, "full"]) for m in args.methods.split(",")]
        if "hardware" in parts:
            jobs += [
                ("hardware", ["hardware", model, precision, groups])
                for precision in args.precisions.split(",")
                for groups in args.groups.split(",")
            ]
        if "lora" in parts:
            jobs += [("lora", ["method", model, "grpo", kind]) for kind in ("full", "lora")]
    common = ["--steps", str(args.steps), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    common += ["--device", args.device, "--precision", args.precision, "--root", str(args.root)]
    results = {"methods": [], "hardware": [], "lora": []}
    for part, child in tqdm(jobs, desc="train-step benchmark", unit="run"):
        results[part].append(run_isolated(__file__, [*common, "--child", *child]))
    print_tables(results, f"{args.device}, {args.precision}")
    out = write_results(args.out, [], **results)
    Console(width=200).print(f"wrote {out}")


def print_tables(results: dict, setting: str) -> None:
    console = Console(width=200)
    if results["methods"]:
        table = Table(title=f"train step: throughput at 64 sequences per step ({setting})")
        for col in ("model", "method", "steps/s", "updates/s", "gen tok/s", "trained tok/s", "steps/CPU s", "RSS MB"):
            table.add_column(col, justify="right")
        for r in results["methods"]:
            table.add_row(
                r["model"],
                r["method"],
                f"{r['steps_per_second']:.2f}",
                f"{r['updates_per_second']:.2f}",
                f"{r['generated_tokens_per_second']:.0f}",
                f"{r['trained_tokens_per_second']:.0f}",
                f"{r['steps_per_cpu_second']:.2f}",
                f"{r['peak_memory_mb']:.0f}",
            )
        console.print(table)
    if results["hardware"]:
        table = Table(title="the update vs the hardware: achieved FLOP/s / measured matmul peak (same dtype)")
        columns = ("model", "params", "precision", "rows x length", "s/update", "GFLOP/s", "peak GFLOP/s")
        for col in (*columns, "fraction", "fraction (CPU time)"):
            table.add_column(col, justify="right")
        for r in results["hardware"]:
            table.add_row(
                r["model"],
                f"{r['parameters'] / 1e6:.1f}M",
                r["precision"],
                f"{r['rows']} x {r['prompt_length'] + r['response_length']}",
                f"{r['seconds_per_update']:.3f}",
                f"{r['achieved_flops'] / 1e9:.1f}",
                f"{r['matmul_peak_flops'] / 1e9:.1f}",
                f"{r['fraction_of_peak']:.0%}",
                f"{r['fraction_of_peak_cpu_time']:.0%}",
            )
        console.print(table)
        for r in results["hardware"]:
            ops = ", ".join(f"{o['op'].removeprefix('aten::')} {o['share']:.0%}" for o in r["top_ops"][:6])
            console.print(f"  {r['model']} {r['precision']} {r['rows']} rows, top ops by self time: {ops}")
    if results["lora"]:
        table = Table(title="GRPO memory: full fine-tuning vs LoRA (reference = adapters off)")
        for col in ("model", "policy", "trainable params", "weights held MB", "peak RSS MB", "steps/s"):
            table.add_column(col, justify="right")
        for r in results["lora"]:
            table.add_row(
                r["model"],
                "LoRA" if r["lora"] else "full",
                f"{r['trainable_parameters']:,}",
                f"{r['weights_mb']:.1f}",
                f"{r['peak_memory_mb']:.0f}",
                f"{r['steps_per_second']:.2f}",
            )
        console.print(table)


if __name__ == "__main__":
    main()
