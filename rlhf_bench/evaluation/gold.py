"""Evaluation of a policy on held-out prompts, against the SFT reference.

For each held-out prompt we sample one response from the policy and one from the SFT
policy (at ``eval.temperature``), and report for the policy:
  gold_reward      mean gold reward (the task's own scorer), with its standard error
  proxy_reward     mean reward-model score (normalised as in training)
  kl               mean over samples y ~ pi of sum_t log pi(y_t|.) - log pi_ref(y_t|.):
                   an unbiased Monte-Carlo estimate of the sequence-level KL(pi || pi_SFT)
  win_rate_vs_sft  fraction of prompts where the policy's response has the higher gold
                   reward than the SFT response (ties count one half)
  response_length, eos_fraction
The SFT row is computed the same way, with a second, independent SFT sample as its
opponent, so its KL is 0 and its win rate is 0.5 up to noise.

Best-of-n has no tractable log pi(y); its KL is the analytic bound log n - (n-1)/n
(Stiennon et al. 2020, App. G.3; exact for distinct samples), reported as ``kl`` and
``kl_analytic``.

On a task whose responses can be enumerated (``task.response_vocabulary``: the ``toy`` task),
each row also carries the exact values (``exact_kl``, ``exact_gold_reward``,
``exact_win_rate_vs_sft``, best-of-n included) and the run's place against the exact reward-KL
frontier (``frontier_reward``, ``regret``, ``above_frontier``); ``frontier`` holds its endpoints.
See ``evaluation/exact.py``. ``eval.exact=false`` leaves them out (runs that only need the
earlier stages, e.g. a grid of reward models, skip two enumerations of every response).

``evaluate_prompts`` also returns the per-prompt rows behind these means (one row per held-out
prompt, sample and policy: gold, proxy, KL contribution, length, EOS, win against the SFT sample,
and on an enumerable task the exact values of that prompt), which the pipeline writes beside
the record as ``per_prompt.parquet``; ``metrics.provenance`` names what the numbers depend on
besides the run (evaluator version, eval temperature, the hash of the eval prompt set).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch
from tqdm.auto import tqdm

from rlhf_bench.config import EvalConfig
from rlhf_bench.core.ops import masked_sum
from rlhf_bench.core.train import batches
from rlhf_bench.run import Run

# 2: per-prompt rows and metrics.provenance (1: the records before them; the means are computed alike)
EVALUATOR_VERSION = 2
ROW_KEYS = ("gold", "proxy", "kl", "length", "eos")  # the per-sample tensors of ``_samples``, per-prompt columns


@torch.no_grad()
def _samples(
    ctx: Run,
    model,
    ref,
    reward,
    prompts: list[str],
    cfg: EvalConfig,
    generator,
    desc: str,
) -> dict[str, torch.Tensor]:
    """Per-sample gold, proxy, KL to ``ref``, length and EOS for responses of ``model``: each [N].

    ``model`` is a causal LM, or a policy object with ``sample(ctx, ids, mask, generator)`` and
    an ``analytic_kl`` (best-of-n, whose sequence probabilities are not tractable).
    """
    is_lm = isinstance(model, torch.nn.Module)
    if is_lm:
        model.eval()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("gold", "proxy", "kl", "length", "eos")}
    for idx in tqdm(
        list(batches(len(prompts), cfg.batch_size, shuffle=False)),
        desc=desc,
        unit="batch",
        dynamic_ncols=True,
        leave=False,
    ):
        chunk = [prompts[i] for i in idx.tolist()]
        ids, mask = ctx.pad_prompts(ctx.encode_prompts(chunk))
        if is_lm:
            response_ids, response_mask = ctx.sample(model, ids, mask, cfg.temperature, generator)
        else:
            response_ids, response_mask = model.sample(ctx, ids, mask, generator)
        batch = (ids, mask, response_ids, response_mask)
        out["gold"].append(ctx.gold(chunk, response_ids, response_mask))
        out["proxy"].append(ctx.score(reward, *batch).cpu())
        if model is ref:
            out["kl"].append(torch.zeros(len(chunk)))
        elif not is_lm:
            out["kl"].append(torch.full((len(chunk),), float(model.analytic_kl)))
        else:
            with ctx.autocast():
                logp, _ = ctx.logprobs(model, *batch, temperature=cfg.temperature)
                ref_logp, _ = ctx.logprobs(ref, *batch, temperature=cfg.temperature)
            out["kl"].append(masked_sum(logp - ref_logp, response_mask.float(), dim=-1).cpu())
        out["length"].append(response_mask.sum(-1).float().cpu())
        out["eos"].append((response_ids == ctx.tokenizer.eos_token_id).any(-1).float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def _summary(samples: dict[str, torch.Tensor], opponent_gold: torch.Tensor) -> dict[str, float]:
    n = samples["gold"].numel()
    wins = (samples["gold"] > opponent_gold).float() + 0.5 * (samples["gold"] == opponent_gold).float()

    def se(x: torch.Tensor) -> float:
        return float(x.std() / math.sqrt(n)) if n > 1 else float("nan")

    return {
        "gold_reward": float(samples["gold"].mean()),
        "gold_reward_se": se(samples["gold"]),
        "proxy_reward": float(samples["proxy"].mean()),
        "proxy_reward_se": se(samples["proxy"]),
        "kl": float(samples["kl"].mean()),
        "kl_se": se(samples["kl"]),
        "win_rate_vs_sft": float(wins.mean()),
        "win_rate_vs_sft_se": se(wins),
        "response_length": float(samples["length"].mean()),
        "eos_fraction": float(samples["eos"].mean()),
        "n_samples": n,
    }


def prompt_set_sha256(prompts: list[str]) -> str:
    """The hash of the eval prompts in order: two runs whose hashes differ were not scored on the same set."""
    return hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode()).hexdigest()


def prompt_rows(
    who: str, prompts: list[str], pool_size: int, samples: dict[str, torch.Tensor], opponent_gold: torch.Tensor
) -> list[dict[str, Any]]:
    """One row per evaluated sample of ``who`` (``sft`` or ``policy``): the prompt's position in the eval
    list (``prompt_index``), its index in the task's pool (``prompt_id = prompt_index % pool_size``) and
    which repeat of it this is (``sample``), the prompt text, and each [N] tensor of ``samples`` at that
    position; ``win_vs_sft`` is 1, 0.5 or 0 as the gold reward beats, ties or loses to the opponent's
    (so its mean is the row's ``win_rate_vs_sft``)."""
    gold = samples["gold"]
    wins = ((gold > opponent_gold).float() + 0.5 * (gold == opponent_gold).float()).tolist()
    columns = {k: samples[k].tolist() for k in ROW_KEYS}
    return [
        {
            "policy": who,
            "prompt_index": i,
            "prompt_id": i % pool_size,
            "sample": i // pool_size,
            "prompt": prompt,
            **{k: float(columns[k][i]) for k in ROW_KEYS},
            "win_vs_sft": wins[i],
        }
        for i, prompt in enumerate(prompts)
    ]


def evaluate_prompts(ctx: Run, policy, ref, reward, cfg: EvalConfig, seed: int) -> tuple[dict[str, dict], list[dict]]:
    """Metrics of ``policy`` and of the SFT reference ``ref`` on ``cfg.n_prompts`` held-out prompts, and
    the per-prompt rows they average (``prompt_rows``; with the exact per-prompt values on an
    enumerable task)."""
    pool = ctx.task.eval_prompts
    prompts = [pool[i % len(pool)] for i in range(cfg.n_prompts)]
    generator = torch.Generator(device=ctx.device).manual_seed(seed + 10_000)
    sft_a = _samples(ctx, ref, ref, reward, prompts, cfg, generator, "eval: SFT")
    sft_b = _samples(ctx, ref, ref, reward, prompts, cfg, generator, "eval: SFT (opponent)")
    result = {"sft": _summary(sft_a, sft_b["gold"])}
    rows = prompt_rows("sft", prompts, len(pool), sft_a, sft_b["gold"])
    if policy is not ref:
        policy_samples = _samples(ctx, policy, ref, reward, prompts, cfg, generator, "eval: policy")
        result["policy"] = _summary(policy_samples, sft_a["gold"])
        rows += prompt_rows("policy", prompts, len(pool), policy_samples, sft_a["gold"])
        if not isinstance(policy, torch.nn.Module):
            result["policy"]["kl_analytic"] = float(policy.analytic_kl)
    if cfg.exact and getattr(ctx.task, "response_vocabulary", None) is not None:  # an enumerable world: exact too
        from rlhf_bench.evaluation.exact import run_metrics

        exact = run_metrics(ctx, policy, ref, reward, cfg.temperature)
        result["frontier"] = exact.pop("frontier")
        by_prompt = exact.pop("per_prompt")
        for who, values in exact.items():
            result[who].update(values)
        for row in rows:
            row.update(by_prompt[row["policy"]].get(row["prompt"], {}))
    result["provenance"] = {
        "evaluator_version": EVALUATOR_VERSION,
        "temperature": cfg.temperature,
        "n_prompts": len(prompts),
        "prompt_set_sha256": prompt_set_sha256(prompts),
    }
    return result, rows


def evaluate(ctx: Run, policy, ref, reward, cfg: EvalConfig, seed: int) -> dict[str, dict[str, float]]:
    """The metrics of ``evaluate_prompts`` alone."""
    return evaluate_prompts(ctx, policy, ref, reward, cfg, seed)[0]


def write_per_prompt(rows: list[dict[str, Any]], path) -> dict[str, Any]:
    """The per-prompt rows as a Parquet file (pandas + pyarrow): its listing for the record (file name,
    sha256 of the bytes, rows, columns)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame.to_parquet(path, index=False)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"path": str(path), "sha256": digest, "rows": len(frame), "columns": list(frame.columns)}
