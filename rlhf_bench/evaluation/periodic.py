"""Evaluation during training: the policy's gold reward, proxy reward and KL to the SFT policy
every few steps of an online method (``method.eval_every``), so that a curve along training
(gold reward against KL, Gao et al. 2022) comes from held-out evaluations rather than from the
training batches.

Each call evaluates as the final evaluation does (``evaluation.gold``: one sample for each of
``eval.n_prompts`` held-out prompts at ``eval.temperature``; win rate against a fixed SFT
sample), and on a task whose responses can be enumerated (the ``toy`` world) adds the exact
``exact_kl`` and ``exact_gold_reward`` (``evaluation.exact``; ``eval.exact=false``: not). The
reference side (its samples, its enumerated log-probs, the gold of every response) is computed once.

It draws from its own generator and puts a policy back in the mode it found it in, so turning
it on does not change the training run.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from rlhf_bench.evaluation import exact
from rlhf_bench.evaluation.gold import _samples, _summary
from rlhf_bench.run import Run

SEED_OFFSET = 20_000  # the evaluation's generators: apart from training's and the final evaluation's


@contextmanager
def uncounted(ctx: Run):
    """Sampling and scoring inside are evaluation, not the method's cost: the counters are restored."""
    cost = ctx.cost
    spent = (cost.tokens_generated, cost.reward_model_queries)
    try:
        yield
    finally:
        cost.tokens_generated, cost.reward_model_queries = spent


class PeriodicEval:
    """``probe(policy) -> {"eval/gold_reward": ..., ...}`` for a causal-LM policy."""

    def __init__(self, ctx: Run, ref: torch.nn.Module, reward):
        self.ctx, self.ref, self.reward, self.cfg = ctx, ref, reward, ctx.cfg.eval
        pool = ctx.task.eval_prompts
        self.prompts = [pool[i % len(pool)] for i in range(self.cfg.n_prompts)]
        self.seed = ctx.cfg.seed + SEED_OFFSET
        generator = torch.Generator(device=ctx.device).manual_seed(self.seed)
        with uncounted(ctx):
            self.sft_gold = _samples(ctx, ref, ref, reward, self.prompts, self.cfg, generator, "eval: SFT")["gold"]
        enumerable = self.cfg.exact and getattr(ctx.task, "response_vocabulary", None) is not None
        self.worlds = self._enumerate() if enumerable else None

    def _enumerate(self) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """(prompt ids, [N] reference log-probs, [N] gold reward) of each distinct eval prompt."""
        task, token_ids = self.ctx.task, self.ctx.response_token_ids()
        symbols = exact.all_responses(len(token_ids), task.max_response_tokens)
        worlds = []
        for prompt in dict.fromkeys(task.eval_prompts):
            ids = self.ctx.encode_prompts([prompt])[0]
            ref_logp = exact.sequence_logprobs(
                self.ref, ids, token_ids, task.max_response_tokens, self.cfg.temperature, self.cfg.batch_size
            )
            worlds.append((ids, ref_logp, task.gold_reward_symbols(prompt, symbols)))
        return worlds

    @torch.no_grad()
    def __call__(self, policy: torch.nn.Module) -> dict[str, float]:
        was_training = policy.training
        # the same draws at every call: differences along training are not sampling noise
        generator = torch.Generator(device=self.ctx.device).manual_seed(self.seed + 1)
        with uncounted(self.ctx):
            samples = _samples(self.ctx, policy, self.ref, self.reward, self.prompts, self.cfg, generator, "eval")
        metrics = {f"eval/{k}": v for k, v in _summary(samples, self.sft_gold).items()}
        if self.worlds is not None:
            kls, golds = [], []
            token_ids, length = self.ctx.response_token_ids(), self.ctx.task.max_response_tokens
            for ids, ref_logp, gold in self.worlds:
                logp = exact.sequence_logprobs(
                    policy, ids, token_ids, length, self.cfg.temperature, self.cfg.batch_size
                )
                kls.append(exact.kl(logp, ref_logp))
                golds.append(exact.expectation(logp, gold))
            metrics["eval/exact_kl"] = sum(kls) / len(kls)  # the prompts weigh equally (as in run_metrics)
            metrics["eval/exact_gold_reward"] = sum(golds) / len(golds)
        policy.train(was_training)
        return metrics
