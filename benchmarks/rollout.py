"""Rollout throughput: generated tokens per second of rlhf-bench's sampler (core/rollout.generate).

Grid: model (the tiny default, a ~25M-parameter config) x batch size x response length, with the
KV cache (our sampler) and, for comparison, without it (every step re-reads the whole sequence,
as a naive sampler does). Prompts are the sentiment task's, left-padded; EOS is banned so every
row generates the full length. Prints a table and writes JSON (default
results/benchmarks/rollout.json). Not part of the test suite: a benchmark measures speed.

    python benchmarks/rollout.py --help
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from rlhf_bench.config import TinyModelConfig
from rlhf_bench.core import models
from rlhf_bench.core.ops import position_ids_from_mask
from rlhf_bench.core.rollout import generate, pad
from rlhf_bench.tasks.sentiment import SentimentTask, SentimentTaskConfig

MODELS = {
    "tiny": TinyModelConfig(max_positions=320),  # the default (4 layers, d 128, vocab 1024), longer context
    # the ~25M config of benchmarks/common.py (8 layers, d 512; the task's text caps the vocabulary at ~576)
    "25m": TinyModelConfig(n_layer=8, d_model=512, n_head=8, vocab_size=16384, max_positions=320),
}


@torch.no_grad()
def generate_without_cache(model, prompt_ids, prompt_mask, max_new_tokens, banned, generator):
    """The baseline: each new token from a full forward pass over prompt + response so far."""
    ids, mask = prompt_ids, prompt_mask
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[:, -1]
        logits[:, banned] = float("-inf")
        token = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator)
        ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
    return ids[:, prompt_ids.shape[1] :]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,25m", help="comma-separated: tiny, 25m")
    parser.add_argument("--batch-sizes", default="8,32,128,256")
    parser.add_argument("--lengths", default="32,128,256", help="response lengths (tokens)")
    parser.add_argument("--no-cache-max", type=int, default=32 * 128, help="run the no-cache baseline up to B*R")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="results/benchmarks/rollout.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    models.quiet_transformers()
    torch.manual_seed(0)
    task = SentimentTask(SentimentTaskConfig(n_sft=5000))
    rows = []
    grid = [
        (name, b, r)
        for name in args.models.split(",")
        for b in map(int, args.batch_sizes.split(","))
        for r in map(int, args.lengths.split(","))
    ]
    built = {}
    for name, batch, length in tqdm(grid, desc="rollout grid", unit="config"):
        if name not in built:
            cfg = MODELS[name]
            tok = models.train_tokenizer(task.sft_texts, cfg.vocab_size)
            model = models.build_tiny_model(cfg, tok, seed=0).eval()
            built[name] = (model, tok, sum(p.numel() for p in model.parameters()))
            warm_ids, warm_mask = pad([tok("the movie", add_special_tokens=False)["input_ids"]] * 2, 0, "left")
            generate(model, warm_ids, warm_mask, max_new_tokens=4, eos_token_id=-1, pad_token_id=0)  # untimed
        model, tok, n_params = built[name]
        prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in task.train_prompts[:batch]]
        prompt_ids, prompt_mask = pad(prompts, tok.pad_token_id, "left")
        banned = [tok.eos_token_id, tok.pad_token_id]
        for cache in (True, False):
            if not cache and batch * length > args.no_cache_max:
                continue
            generator = torch.Generator().manual_seed(0)
            start = time.perf_counter()
            if cache:
                out, _ = generate(
                    model,
                    prompt_ids,
                    prompt_mask,
                    max_new_tokens=length,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                    banned_token_ids=banned,
                    generator=generator,
                )
            else:
                out = generate_without_cache(model, prompt_ids, prompt_mask, length, banned, generator)
            seconds = time.perf_counter() - start
            assert out.shape == (batch, length), out.shape
            rows.append(
                dict(
                    model=name,
                    parameters=n_params,
                    batch=batch,
                    length=length,
                    kv_cache=cache,
                    seconds=round(seconds, 3),
                    tokens_per_second=round(batch * length / seconds, 1),
                    peak_rss_mb=round(peak_rss_mb(), 1),
                )
            )

    table = Table(title="rollout: generated tokens per second (CPU, fp32)")
    for col in ("model", "params", "batch", "length", "KV cache", "seconds", "tokens/s", "peak RSS MB"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["model"],
            f"{r['parameters'] / 1e6:.1f}M",
            str(r["batch"]),
            str(r["length"]),
            "on" if r["kv_cache"] else "off",
            f"{r['seconds']:.2f}",
            f"{r['tokens_per_second']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
        )
    Console().print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "command": "python benchmarks/rollout.py "
        + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    Console().print(f"wrote {out}")


if __name__ == "__main__":
    main()
