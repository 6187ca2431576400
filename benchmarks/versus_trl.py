"""rlhf-bench versus TRL on the same work: GRPO, RLOO and DPO.

Both libraries load the same model folder (the pipeline's SFT checkpoint of the tiny model or of
the ~25M config) with the same tokenizer, and get the same prompts pool, reward function (the
task's gold reward, a VADER score of prompt + response), preference pairs, learning rate, batch
and number of steps. Each run is its own process (peak RSS is per process), one after the other
in this invocation, so that both sides see the same machine load. TRL comes from the optional
``bench`` extra (``pip install -e '.[bench]'``).

Equal work, setting by setting (ours = TRL):
  all     fp32 on CPU (TRL: bf16=False), no gradient checkpointing (TRL's default is on: off here),
          dropout off (ours always; the tiny config has none), AdamW(0.9, 0.999, eps 1e-8, no weight
          decay), clip the gradient norm at 1.0, seed 0.
  grpo    16 prompts x 4 samples = 64 responses per step (TRL: per_device_train_batch_size=64,
          num_generations=4, so generation_batch_size 64 and steps_per_generation 1), one update
          per batch (num_iterations=1: neither library runs an old-policy pass), beta 0.04 with the
          k3 estimator in the loss, clip 0.2, per-sequence loss mean (TRL loss_type="grpo"), group
          std scaling (scale_rewards="group"), lr 1e-4 constant, temperature 1.
  rloo    16 prompts x 4 samples, KL coefficient 0.05 (k1, summed per sequence, in the reward),
          leave-one-out baseline, no advantage normalisation, one update per batch, lr 1e-4.
  dpo     32 pairs per step, one epoch over the pairs (PAIRS / 32 steps), beta 0.1, sigmoid loss,
          sequence log-probs summed over tokens, lr 1e-4 with linear decay and no warm-up, EOS
          appended to each response (ours: the pairs' ``*_eos`` flags; TRL: always). The reference's
          log-probs of all pairs computed once before training on both sides (ours always; TRL
          precompute_ref_log_probs=True); TRL's default (the reference on every batch) is run too.
  length  EOS, pad, BOS and UNK are never sampled (ours: the banned list; TRL: suppress_tokens),
          so that every response is exactly the task's max_response_tokens (24) on both sides.

What differs, and is each library's own way: our sampler (core/rollout.generate) against
transformers' ``generate``; our layout (left-padded prompt + right-padded response, position ids
from the mask, the LM head on the response positions only) against TRL's (no position ids, its
chunked fused LM head over every position on CPU); TRL's RLOO runs a no-grad pass of the policy
for the "old" log-probs even at one update per batch (ours reuses the update's own, detached).
TRL passes no position ids to its training and reference passes: with left-padded prompts,
transformers 5.24's GPT-2 then numbers a row's positions from its first pad (``generate`` numbers
them from the first real token), so TRL's GRPO and RLOO score their samples at shifted positions;
the work is the same, the losses drift apart. TRL's DPO tokenizes prompt + response together,
ours each on its own (a token or so may differ at the seam). The losses printed are each
library's: at one update per batch TRL's RLOO loss is -mean(A), 0 by construction, ours
-mean(A * log pi(y)); same gradient.

Throughput is the steady state: from the end of the first step to the end of the last, on both
sides; DPO also reports the whole run including the reference pass (``end_to_end_s``). On a shared
machine one ratio is noise (the same command twice gave GRPO 1.01x then 1.21x), so each pair of runs
(ours, then TRL) is repeated ``--repeats`` times, interleaved, and the table gives the median ratio
ours / TRL of steps per second, its range and a bootstrap 95% interval; writes JSON to --out.

    python benchmarks/versus_trl.py --help
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import (
    MODELS,
    StepClock,
    ban_eos,
    build_context,
    mark,
    peak_memory_mb,
    print_result,
    reset_peak_memory,
    run_isolated,
    set_threads,
    steady_rates,
    write_results,
)
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

ROOT = Path("artifacts/benchmarks")
PROMPTS, SAMPLES = 16, 4  # GRPO/RLOO: 64 responses per step
PAIR_BATCH = 32


def context(model: str, root: Path, pairs: int, device: str = "cpu", precision: str = "fp32"):
    overrides = [f"device={device}", f"precision={precision}", f"preferences.n_train={pairs}", "preferences.n_eval=64"]
    return build_context([*overrides, *MODELS[model]], root)


def ours_config(method: str, steps: int):
    from rlhf_bench.compose import load_config
    from rlhf_bench.methods import dpo, pg

    if method in ("grpo", "rloo"):  # the presets, at PROMPTS x SAMPLES responses per step
        group = [f"method.prompts_per_step={PROMPTS}", f"method.group_size={SAMPLES}"]
        return load_config([f"method={method}", f"method.steps={steps}", *group]).method, pg.train
    if method == "dpo":
        return dpo.DPOConfig(epochs=1, batch_size=PAIR_BATCH, warmup_steps=0), dpo.train
    raise ValueError(method)


def child_ours(model: str, method: str, steps: int, root: Path, pairs: int, device: str, precision: str) -> dict:
    ctx = context(model, root, pairs, device, precision)
    ban_eos(ctx)
    cfg, train = ours_config(method, steps)
    clock = StepClock(ctx)
    reset_peak_memory(ctx.device)
    start = time.perf_counter()
    train(ctx, cfg)
    end_to_end = time.perf_counter() - start
    last = clock.last
    return {
        "model": model,
        "method": method,
        **clock.rates(skip=1),
        "end_to_end_s": end_to_end,
        "final_loss": last["train/loss"],
        "final_reward": last.get("objective/score"),
        "final_reward_accuracy": last.get("objective/reward_accuracy"),
        "tokens_trained_per_step": ctx.cost.tokens_trained / len(clock.marks),
        "peak_memory_mb": peak_memory_mb(ctx.device),
        "settings": {k: v for k, v in vars(cfg).items() if not k.startswith("_")},
    }


def trl_common(ctx, lr: float, precision: str) -> dict:
    return dict(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        learning_rate=lr,
        max_grad_norm=1.0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        warmup_steps=0,
        gradient_checkpointing=False,
        use_cpu=ctx.device.type == "cpu",
        bf16=precision == "bf16",
        fp16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )


def child_trl(
    model: str, method: str, steps: int, root: Path, pairs: int, device: str, precision: str, precompute: bool = True
) -> dict:
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    from rlhf_bench.core import models
    from rlhf_bench.tasks.data import read_jsonl

    ctx = context(model, root, pairs, device, precision)
    banned = ban_eos(ctx)
    ours, _ = ours_config(method, steps)
    policy = models.load_causal_lm(ctx.sft_path, ctx.tokenizer)  # as ours loads it: dropout off, pad id set
    marks = []

    per_step = 0 if method == "dpo" else PROMPTS * SAMPLES * ctx.max_new_tokens  # EOS banned: all full length

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(mark(state.global_step, state.global_step * per_step, state.num_input_tokens_seen))

    common = trl_common(ctx, ours.lr, precision)
    reset_peak_memory(ctx.device)
    start = time.perf_counter()
    if method == "dpo":
        rows = read_jsonl(Path(ctx.stages.preferences.path) / "train.jsonl")
        data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
        args = trl.DPOConfig(
            **common,
            per_device_train_batch_size=PAIR_BATCH,
            num_train_epochs=ours.epochs,
            lr_scheduler_type="linear",
            beta=ours.beta,
            loss_type=["sigmoid"],
            label_smoothing=ours.label_smoothing,
            max_length=None,
            precompute_ref_log_probs=precompute,
            precompute_ref_batch_size=PAIR_BATCH,
        )
        trainer = trl.DPOTrainer(
            model=policy, args=args, train_dataset=data, processing_class=ctx.tokenizer, callbacks=[Clock()]
        )
    else:

        def gold(prompts, completions, **_):
            return ctx.task.gold_reward(prompts, completions)

        data = Dataset.from_dict({"prompt": list(ctx.task.train_prompts)})
        shared = dict(
            **common,
            max_steps=steps,
            lr_scheduler_type="constant",
            per_device_train_batch_size=PROMPTS * SAMPLES,  # completions per step, not prompts
            num_generations=SAMPLES,
            num_iterations=1,
            max_completion_length=ctx.max_new_tokens,
            temperature=ours.temperature,
            top_p=1.0,
            top_k=0,
            epsilon=0.2,
            generation_kwargs={"suppress_tokens": banned},
        )
        if method == "grpo":
            args = trl.GRPOConfig(
                **shared,
                beta=ours.kl_coef,
                loss_type="grpo",
                scale_rewards=ours.advantage_std,
                disable_dropout=True,
            )
            cls = trl.GRPOTrainer
        else:
            args = trl.RLOOConfig(**shared, beta=ours.kl_coef, normalize_advantages=False, disable_dropout=True)
            cls = trl.RLOOTrainer
        trainer = cls(
            model=policy,
            reward_funcs=gold,
            args=args,
            train_dataset=data,
            processing_class=ctx.tokenizer,
            callbacks=[Clock()],
        )
    built = time.perf_counter()
    trainer.train()
    end = time.perf_counter()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    result = {
        "model": model,
        "method": method if precompute or method != "dpo" else "dpo (TRL: reference every step)",
        **steady_rates(marks, skip=1),
        "end_to_end_s": end - start,
        "setup_s": built - start,
        "final_loss": logs[-1]["loss"],
        "peak_memory_mb": peak_memory_mb(ctx.device),
        "trl": trl.__version__,
    }
    if method == "dpo":
        result["final_reward_accuracy"] = logs[-1].get("rewards/accuracies")
    else:
        result["final_reward"] = logs[-1].get("reward")
        result["mean_response_length"] = sum(h["completions/mean_length"] for h in logs) / len(logs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,25m", help="comma-separated: tiny, 25m")
    parser.add_argument("--methods", default="grpo,rloo,dpo")
    parser.add_argument("--steps", type=int, default=10, help="steps per GRPO/RLOO run (DPO: one epoch of pairs)")
    parser.add_argument("--pairs", type=int, default=512, help="preference pairs (DPO steps = pairs / 32)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda (both libraries)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="both libraries (bf16 autocast)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="interleaved runs of each pair (ours, TRL): the median ratio"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="where the cached stages are built")
    parser.add_argument("--out", default="results/benchmarks/versus_trl.json")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # library model method
    args = parser.parse_args()
    set_threads(args.threads)

    if args.child:
        library, model, method = args.child
        run = (model, method, args.steps, args.root, args.pairs, args.device, args.precision)
        result = child_ours(*run) if library == "rlhf-bench" else child_trl(*run, precompute=library == "trl")
        print_result({"library": "rlhf-bench" if library == "rlhf-bench" else "trl", **result})
        return

    try:
        import trl  # noqa: F401
    except ImportError:
        parser.error("TRL is not installed: pip install -e '.[bench]' (the optional bench extra)")
    models, methods = args.models.split(","), args.methods.split(",")
    for model in models:
        context(model, args.root, args.pairs, args.device, args.precision)  # the cached stages, before the children
    # Each repeat runs every pair (ours, then TRL) back to back: a pair sees the same machine load,
    # and the ratio's spread over repeats is the machine's noise (TRL's reference-every-step DPO: once).
    jobs = [
        (repeat, lib, model, method)
        for repeat in range(args.repeats)
        for model in models
        for method in methods
        for lib in ("rlhf-bench", "trl", *(["trl-ref-every-step"] if method == "dpo" and repeat == 0 else []))
    ]
    common = ["--steps", str(args.steps), "--pairs", str(args.pairs), "--threads", str(args.threads)]
    common += ["--device", args.device, "--precision", args.precision, "--root", str(args.root)]
    rows = [
        {"repeat": job[0], **run_isolated(__file__, [*common, "--child", *job[1:]])}
        for job in tqdm(jobs, desc="versus TRL", unit="run")
    ]
    ratios = pair_ratios(rows)
    console = Console(width=200)
    console.print(ratio_table(ratios, args))
    out = write_results(args.out, rows, ratios=ratios, repeats=args.repeats)
    console.print(f"wrote {out}")


def pair_ratios(rows: list[dict]) -> list[dict]:
    """Per (model, method): ours / TRL steps per second in each repeat, their median, range and a
    bootstrap 95% interval of the median (scipy.stats.bootstrap, percentile, 9,999 resamples)."""
    import numpy as np
    from scipy.stats import bootstrap

    ours = {(r["repeat"], r["model"], r["method"]): r for r in rows if r["library"] == "rlhf-bench"}
    pairs: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    for theirs in (r for r in rows if r["library"] == "trl"):
        mine = ours[(theirs["repeat"], theirs["model"], theirs["method"].split(" ")[0])]
        pairs.setdefault((theirs["model"], theirs["method"]), []).append((mine, theirs))
    out = []
    for (model, method), runs in pairs.items():
        ratio = np.array([a["steps_per_second"] / b["steps_per_second"] for a, b in runs])
        cpu = np.array([a["steps_per_cpu_second"] / b["steps_per_cpu_second"] for a, b in runs])
        low, high = (float("nan"),) * 2
        if len(ratio) >= 2 and np.ptp(ratio) > 0:
            ci = bootstrap((ratio,), np.median, n_resamples=9999, method="percentile", random_state=0)
            low, high = float(ci.confidence_interval.low), float(ci.confidence_interval.high)
        out.append(
            {
                "model": model,
                "method": method,
                "repeats": len(runs),
                "ratios": ratio.round(4).tolist(),
                "ratio": float(np.median(ratio)),
                "ratio_min": float(ratio.min()),
                "ratio_max": float(ratio.max()),
                "ratio_ci95": [low, high],
                "cpu_ratio": float(np.median(cpu)),
                "ours_steps_per_second": float(np.median([a["steps_per_second"] for a, _ in runs])),
                "trl_steps_per_second": float(np.median([b["steps_per_second"] for _, b in runs])),
                "ours_loss": runs[-1][0]["final_loss"],
                "trl_loss": runs[-1][1]["final_loss"],
                "rss_mb": [runs[-1][0]["peak_memory_mb"], runs[-1][1]["peak_memory_mb"]],
            }
        )
    return out


def ratio_table(ratios: list[dict], args) -> Table:
    table = Table(
        title=f"rlhf-bench vs TRL: steps per second at equal settings ({args.device}, {args.precision}), "
        f"median of {args.repeats} interleaved pairs"
    )
    columns = ("model", "method", "ours steps/s", "TRL steps/s", "ratio", "range", "95% CI", "ratio (CPU s)")
    for col in (*columns, "ours loss", "TRL loss", "RSS MB ours/TRL"):
        table.add_column(col, justify="right")
    for r in ratios:
        low, high = r["ratio_ci95"]
        table.add_row(
            r["model"],
            r["method"],
            f"{r['ours_steps_per_second']:.2f}",
            f"{r['trl_steps_per_second']:.2f}",
            f"{r['ratio']:.2f}x",
            f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}",
            f"{low:.2f}-{high:.2f}",
            f"{r['cpu_ratio']:.2f}x",
            f"{r['ours_loss']:.4f}",
            f"{r['trl_loss']:.4f}",
            f"{r['rss_mb'][0]:.0f} / {r['rss_mb'][1]:.0f}",
        )
    return table


if __name__ == "__main__":
    main()
