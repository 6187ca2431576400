"""Exact evaluation on an enumerable response space (the ``toy`` task).

Where every response y to a prompt x can be listed (A symbols, length L: N = A**L responses),
the quantities that elsewhere are Monte-Carlo estimates are sums:

    log pi(y|x)            = sum_t log softmax(logits_t / T)[y_t] over the allowed symbols only,
                             exactly the distribution ``Run.sample`` draws from
    KL(pi || pi_ref)       = sum_y pi(y) (log pi(y) - log pi_ref(y))
    E_pi[r]                = sum_y pi(y) r(y)

and so is the KL-regularised optimum (Rafailov et al. 2023, eq. 4; Korbak et al. 2022)

    pi*_beta(y) ∝ pi_ref(y) exp(r(y) / beta),

whose (KL, reward) pairs trace the exact reward-KL frontier: for a budget k, the largest E_q[r]
over all q with KL(q || pi_ref) <= k is attained by the pi*_beta with KL = k (a concave, increasing
curve from (0, E_ref[r]) at beta = inf to (-log pi_ref(argmax set), max r) at beta -> 0). Over
several prompts the frontier of the averages shares one beta across prompts (the Lagrangian of
the averaged problem). A run's regret is the frontier's reward at its KL minus its reward; no
run can lie above the frontier, so a point that does (beyond float tolerance) is a KL or
log-prob bug.

Best-of-n from pi_ref with a discrete selection score s: n i.i.d. draws, the highest score
wins, ties between draws broken by their position (the first maximal draw, as ``torch.argmax``
does in ``methods.best_of_n``). Draws are exchangeable, so any rule that looks at positions
only is uniform among the tied draws, and with F(v) = P(s <= v), F_<(v) = P(s < v):

    P_bon(y) = pi_ref(y) / P(s = s(y)) * (F(s(y))**n - F_<(s(y))**n)

Its KL to pi_ref is at most log n - (n-1)/n, with equality only in the limit of no atoms
(Beirami et al. 2024, Theorem 1). Win rates count ties one half.

Log-probabilities are float64 from here on (the model's logits are float32). Responses are
listed in lexicographic order of symbol indices, the first symbol most significant
(``all_responses``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from rlhf_bench.core.ops import position_ids_from_mask
from rlhf_bench.run import Run


def all_responses(n_symbols: int, length: int) -> torch.Tensor:
    """Every response as symbol indices: [n_symbols**length, length], lexicographic order."""
    if length == 0:
        return torch.zeros(1, 0, dtype=torch.long)
    grids = torch.meshgrid(*[torch.arange(n_symbols)] * length, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=-1)


@torch.no_grad()
def sequence_logprobs(
    model: torch.nn.Module,
    prompt_ids: Sequence[int],
    token_ids: Sequence[int],
    length: int,
    temperature: float = 1.0,
    batch_size: int = 512,
) -> torch.Tensor:
    """Exact log pi(y | prompt) of every response y of ``length`` symbols: [A**length] float64.

    ``token_ids[i]`` is the token of symbol i (A = len(token_ids)); every other token is masked
    out before the softmax, at ``temperature``, as the sampler does. One forward pass per prefix
    of length L-1 gives the next-token distributions at all L positions, so A**(L-1) sequences
    are run, not A**L.
    """
    device = next(model.parameters()).device
    allowed = torch.as_tensor(list(token_ids), dtype=torch.long, device=device)
    n_symbols, prompt = len(token_ids), torch.as_tensor(list(prompt_ids), dtype=torch.long, device=device)
    prefixes = all_responses(n_symbols, length - 1).to(device)  # [A**(L-1), L-1]
    out = []
    for start in range(0, prefixes.shape[0], batch_size):
        prefix = prefixes[start : start + batch_size]  # [b, L-1]
        b = prefix.shape[0]
        input_ids = torch.cat([prompt.expand(b, -1), allowed[prefix]], dim=1)  # [b, P+L-1]
        mask = torch.ones_like(input_ids)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        logits = logits[:, prompt.numel() - 1 :, :].float() / temperature  # [b, L, V]: predict y_1 ... y_L
        logp = torch.log_softmax(logits[..., allowed].double(), dim=-1)  # [b, L, A]
        head = logp[:, :-1].gather(-1, prefix.unsqueeze(-1)).squeeze(-1).sum(-1)  # [b] log pi(y_1..y_{L-1})
        out.append((head.unsqueeze(-1) + logp[:, -1]).reshape(-1))  # [b*A], last symbol fastest
    return torch.cat(out).cpu()


# --- sums over the response space ---------------------------------------------------------
def expectation(logp: torch.Tensor, values: torch.Tensor) -> float:
    """E_pi[values] for [N] log pi and [N] values."""
    return float((logp.exp() * values.double()).sum())


def kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> float:
    """KL(pi || pi_ref) = sum_y pi(y) (log pi(y) - log pi_ref(y)); terms with pi(y) = 0 are 0."""
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - ref_logp), torch.zeros_like(p))
    return max(0.0, float(terms.sum()))


def tilted(ref_logp: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """log pi*_beta for pi*_beta ∝ pi_ref exp(r / beta): [N]. beta = inf: pi_ref; beta = 0:
    pi_ref restricted to the argmax set."""
    reward = reward.double()
    if beta == 0:
        best = reward == reward.max()
        logits = torch.where(best, ref_logp, torch.full_like(ref_logp, -math.inf))
    else:
        # r - max r keeps the argmax set's pi_ref exact however small beta is
        logits = ref_logp + (reward - reward.max()) / beta
    return logits - torch.logsumexp(logits, 0)


@dataclass
class Prompt:
    """One prompt's exact world: the reference's [N] log-probs and the [N] reward, with a weight."""

    ref_logp: torch.Tensor
    reward: torch.Tensor
    weight: float = 1.0


@dataclass
class Frontier:
    """The exact reward-KL frontier of the weighted average over prompts.

    Parametrised by lam = 1/beta, shared by the prompts: KL(lam) and R(lam) are the weighted
    means of KL(pi*_beta || pi_ref) and E_{pi*_beta}[r]; both increase with lam
    (dKL/dlam = lam Var(r) >= 0).
    """

    prompts: list[Prompt]
    weights: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        w = torch.tensor([p.weight for p in self.prompts], dtype=torch.float64)
        self.weights = w / w.sum()
        self.kl_max, self.reward_max = self.point(math.inf)
        self.reward_ref = self.point(0.0)[1]

    def point(self, lam: float) -> tuple[float, float]:
        """(KL, reward) of pi*_beta, beta = 1/lam (lam = inf: the argmax sets)."""
        beta = 0.0 if lam == math.inf else (math.inf if lam == 0 else 1.0 / lam)
        kls, rewards = [], []
        for p in self.prompts:
            logq = p.ref_logp if beta == math.inf else tilted(p.ref_logp, p.reward, beta)
            kls.append(kl(logq, p.ref_logp))
            rewards.append(expectation(logq, p.reward))
        w = self.weights.tolist()
        return sum(a * b for a, b in zip(w, kls)), sum(a * b for a, b in zip(w, rewards))

    def curve(self, n: int = 64, lam_max: float = 1e4) -> list[tuple[float, float, float]]:
        """(beta, KL, reward) for n values of lam log-spaced up to ``lam_max``, plus both endpoints; increasing KL."""
        lams = [0.0] + torch.logspace(-3, math.log10(lam_max), n, dtype=torch.float64).tolist() + [math.inf]
        return [(1 / lam if lam > 0 else math.inf, *self.point(lam)) for lam in lams]

    def reward_at(self, kl_budget: float, tol: float = 1e-12) -> float:
        """The frontier's reward at KL = ``kl_budget``: the beta with that KL found by bisection
        (exact up to ``tol`` in KL; interpolating a grid would cut under the concave curve)."""
        if kl_budget <= 0:
            return self.reward_ref
        if kl_budget >= self.kl_max:
            return self.reward_max
        lo, hi = 0.0, 1.0
        while (k_hi := self.point(hi)[0]) < kl_budget:
            lo, hi = hi, hi * 2
            if hi > 1e15:  # KL(lam) reaches kl_max only as lam -> inf
                return self.reward_max
        for _ in range(200):
            if k_hi - kl_budget <= tol:
                break
            mid = 0.5 * (lo + hi)
            k = self.point(mid)[0]
            if k < kl_budget:
                lo = mid
            else:
                hi, k_hi = mid, k
        # the bracket's upper end: KL >= the budget, so its reward never under-counts the frontier
        return self.point(hi)[1]

    def regret(self, kl_value: float, reward: float) -> float:
        """The frontier's reward at ``kl_value`` minus ``reward`` (>= 0 up to float error)."""
        return self.reward_at(kl_value) - reward

    def above(self, kl_value: float, reward: float) -> bool:
        """True if (KL, reward) lies above the frontier beyond float tolerance: a KL or log-prob bug."""
        return beyond(reward, self.reward_at(kl_value))


def beyond(reward: float, frontier_reward: float, atol: float = 1e-6, rtol: float = 1e-6) -> bool:
    """``reward`` exceeds ``frontier_reward`` by more than float error (float32 logits, float64 sums)."""
    return reward > frontier_reward + atol + rtol * abs(frontier_reward)


# --- best-of-n ----------------------------------------------------------------------------
def _levels(ref_logp: torch.Tensor, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(level index of each y [N], P(s = level) [V], P(s < level) [V]) under pi_ref, levels ascending."""
    _, inverse = torch.unique(score.double(), sorted=True, return_inverse=True)
    mass = torch.zeros(int(inverse.max()) + 1, dtype=torch.float64).index_add_(0, inverse, ref_logp.exp())
    below = torch.cumsum(mass, 0) - mass
    return inverse, mass, below.clamp(min=0)


def best_of_n_level_mass(mass: torch.Tensor, below: torch.Tensor, n: int) -> torch.Tensor:
    """P(best of n lands on each level) = F**n - F_<**n = -F**n expm1(n log1p(-P(level) / F)): [V]
    (no cancellation for small atoms)."""
    total = (below + mass).clamp(max=1.0)
    return -total.pow(n) * torch.expm1(n * torch.log1p(-(mass / total).clamp(max=1.0)))


def best_of_n_logprobs(ref_logp: torch.Tensor, score: torch.Tensor, n: int) -> torch.Tensor:
    """log P_bon(y) of best-of-n from pi_ref selecting by ``score`` (ties: the first draw): [N]."""
    inverse, mass, below = _levels(ref_logp, score)
    level = best_of_n_level_mass(mass, below, n)
    return ref_logp + (level.log() - mass.log())[inverse]


def best_of_n_kl(ref_logp: torch.Tensor, score: torch.Tensor, n: int) -> float:
    """KL(best-of-n || pi_ref) = sum_levels P_bon(level) log(P_bon(level) / P_ref(level))."""
    _, mass, below = _levels(ref_logp, score)
    level = best_of_n_level_mass(mass, below, n)
    terms = torch.where(level > 0, level * (level.log() - mass.log()), torch.zeros_like(level))
    return max(0.0, float(terms.sum()))


def best_of_n_kl_bound(n: int) -> float:
    """log n - (n-1)/n: the continuous-reward value, an upper bound for discrete rewards."""
    return math.log(n) - (n - 1) / n


def win_rate(logp: torch.Tensor, ref_logp: torch.Tensor, judge: torch.Tensor) -> float:
    """P(judge(Y) > judge(Y')) + 0.5 P(=) for Y ~ pi, Y' ~ pi_ref independent."""
    inverse, mass, below = _levels(ref_logp, judge)
    return expectation(logp, below[inverse] + 0.5 * mass[inverse])


# --- a run's exact metrics (the pipeline's evaluation on a task with ``response_vocabulary``) --
@torch.no_grad()
def _scores(ctx: Run, reward, prompt_ids: list[int], response_ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The reward (model) of every response of one prompt: [N] float64, as ``ctx.score`` gives it."""
    out = []
    for start in range(0, response_ids.shape[0], batch_size):
        ids = response_ids[start : start + batch_size].to(ctx.device)
        prompt = torch.as_tensor(prompt_ids, device=ctx.device).expand(ids.shape[0], -1)
        ones = torch.ones_like
        out.append(ctx.score(reward, prompt, ones(prompt), ids, ones(ids)).double().cpu())
    return torch.cat(out)


def run_metrics(ctx: Run, policy, ref, reward, temperature: float, batch_size: int = 512) -> dict[str, dict]:
    """Exact metrics of ``policy`` and of the SFT reference ``ref`` over the task's distinct eval prompts.

    For each: ``exact_kl``, ``exact_gold_reward``, ``exact_win_rate_vs_sft`` (gold, ties one half),
    ``frontier_reward`` (the frontier's gold reward at its KL), ``regret`` and ``above_frontier``;
    and the frontier's endpoints. A causal LM is enumerated at ``temperature`` (as the evaluation
    samples it); best-of-n (an object with ``model``, ``reward``, ``n``, ``temperature``) is
    computed in closed form from its base policy and its selection reward. ``per_prompt`` holds each
    distinct prompt's own ``exact_kl``, ``exact_gold_reward`` and ``exact_win_rate_vs_sft`` (the means
    above weigh them equally).
    """
    task, token_ids = ctx.task, ctx.response_token_ids()
    length, symbols = task.max_response_tokens, all_responses(len(token_ids), task.max_response_tokens)
    response_ids = torch.as_tensor(token_ids)[symbols]
    prompts = list(dict.fromkeys(task.eval_prompts))
    worlds, dists = [], {"sft": [], "policy": []}
    for prompt in prompts:
        ids = ctx.encode_prompts([prompt])[0]
        ref_logp = sequence_logprobs(ref, ids, token_ids, length, temperature, batch_size)
        gold = task.gold_reward_symbols(prompt, symbols)
        worlds.append(Prompt(ref_logp, gold))
        dists["sft"].append(ref_logp)
        if isinstance(policy, torch.nn.Module):
            dists["policy"].append(sequence_logprobs(policy, ids, token_ids, length, temperature, batch_size))
        elif policy is not ref:  # best-of-n over its base policy, at its own temperature
            base = sequence_logprobs(policy.model, ids, token_ids, length, policy.temperature, batch_size)
            score = _scores(ctx, policy.reward, ids, response_ids, batch_size)
            dists["policy"].append(best_of_n_logprobs(base, score, policy.n))
    frontier = Frontier(worlds)
    result: dict[str, dict] = {
        "frontier": {
            "kl_max": frontier.kl_max,
            "reward_max": frontier.reward_max,
            "reward_ref": frontier.reward_ref,
            "n_prompts": len(prompts),
            "responses_per_prompt": int(symbols.shape[0]),
        }
    }
    result["per_prompt"] = {}
    for who, logps in dists.items():
        if not logps:
            continue
        w = frontier.weights.tolist()
        kls = [kl(lp, p.ref_logp) for lp, p in zip(logps, worlds)]
        golds = [expectation(lp, p.reward) for lp, p in zip(logps, worlds)]
        win_rates = [win_rate(lp, p.ref_logp, p.reward) for lp, p in zip(logps, worlds)]
        result["per_prompt"][who] = {
            prompt: {"exact_kl": k, "exact_gold_reward": g, "exact_win_rate_vs_sft": v}
            for prompt, k, g, v in zip(prompts, kls, golds, win_rates)
        }
        kl_value = sum(a * k for a, k in zip(w, kls))
        gold = sum(a * g for a, g in zip(w, golds))
        wins = sum(a * v for a, v in zip(w, win_rates))
        best = frontier.reward_at(kl_value)
        result[who] = {
            "exact_kl": kl_value,
            "exact_gold_reward": gold,
            "exact_win_rate_vs_sft": wins,
            "frontier_reward": best,
            "regret": best - gold,
            "above_frontier": beyond(gold, best),
        }
    return result
