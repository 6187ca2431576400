"""The parts of a policy-gradient loss, each chosen by name (``method.ratio``, ``method.surrogate``,
``method.aggregation``), and PPO's value loss.

Shapes: [B, R] per response token with a [B, R] mask; advantages [B, 1] (one per response,
broadcast over its tokens) or [B, R]. A ratio function gives the importance ratio [B, R] (with
gradient); a surrogate turns it into a per-token loss [B, R] to minimise; an aggregation reduces
that to the scalar loss. Every part is the formula of its paper, cited in its docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf_bench.core.ops import masked_mean, masked_sum


@dataclass(frozen=True)
class ClipRange:
    """The trust region of a surrogate: eps_low / eps_high (DAPO's clip-higher when they differ),
    and SAPO's gate temperatures tau_pos (A > 0) / tau_neg (A < 0)."""

    eps_low: float = 0.2
    eps_high: float = 0.2
    tau_pos: float = 1.0
    tau_neg: float = 1.05


# --- importance ratios -------------------------------------------------------------------------


def token_ratio(logprobs, old_logprobs, advantages, mask, clip: ClipRange) -> torch.Tensor:
    """PPO / GRPO: r_t = pi(y_t|.) / pi_old(y_t|.), per token."""
    return torch.exp(logprobs - old_logprobs)


def sequence_ratio(logprobs, old_logprobs, advantages, mask, clip: ClipRange) -> torch.Tensor:
    """GSPO (Zheng et al. 2025, eq. 7): s_i = (pi(y_i|x) / pi_old(y_i|x))^(1/|y_i|)
    = exp(1/|y_i| sum_t (log pi - log pi_old)), one ratio per response, broadcast over its tokens
    (the surrogate clips the sequence; with ``seq-mean-token-mean`` this is GSPO's objective)."""
    log_ratio = masked_mean(logprobs - old_logprobs, mask, dim=-1)
    return torch.exp(log_ratio).unsqueeze(-1).expand_as(logprobs)


def geometric_ratio(logprobs, old_logprobs, advantages, mask, clip: ClipRange) -> torch.Tensor:
    """GMPO (Zhao et al. 2025, eq. 5): the geometric mean of the token ratios, each clipped first,
    pessimistically for the sign of A, in log space:
        l_t = sgn(A) * min(sgn(A) * log r_t, sgn(A) * clip(log r_t, -eps_low, eps_high))
        r_i = exp(1/|y_i| sum_t l_t)                     (broadcast over the response's tokens)
    The eps are log-space bounds (the paper's (e^-0.4, e^0.4) is eps = 0.4); follow with the
    ``unclipped`` surrogate."""
    log_ratio = logprobs - old_logprobs
    sign = torch.sign(advantages).expand_as(log_ratio)
    clipped = torch.clamp(log_ratio, -clip.eps_low, clip.eps_high)
    pessimistic = sign * torch.minimum(sign * log_ratio, sign * clipped)
    return torch.exp(masked_mean(pessimistic, mask, dim=-1)).unsqueeze(-1).expand_as(logprobs)


RATIOS: dict[str, Callable[..., torch.Tensor]] = {
    "token": token_ratio,
    "sequence": sequence_ratio,
    "geometric": geometric_ratio,
}


# --- surrogates: per-token losses ----------------------------------------------------------------


def clip_surrogate(ratio, logprobs, advantages, clip: ClipRange) -> torch.Tensor:
    """PPO (Schulman et al. 2017, eq. 7) with DAPO's decoupled bounds (Yu et al. 2025, eq. 10):
    max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip.eps_low, 1.0 + clip.eps_high)
    return torch.maximum(unclipped, clipped)


def unclipped_surrogate(ratio, logprobs, advantages, clip: ClipRange) -> torch.Tensor:
    """-A r: the importance-weighted policy gradient, for ratios that bound themselves (GMPO)."""
    return -advantages * ratio


def cispo_surrogate(ratio, logprobs, advantages, clip: ClipRange) -> torch.Tensor:
    """CISPO (MiniMax-M1, Chen et al. 2025, eq. 4): -sg(clip(r, 1 - eps_low, 1 + eps_high)) A log pi.
    The importance weight is clipped and detached, so every token keeps a gradient."""
    weight = torch.clamp(ratio, 1.0 - clip.eps_low, 1.0 + clip.eps_high).detach()
    return -weight * advantages * logprobs


def sapo_surrogate(ratio, logprobs, advantages, clip: ClipRange) -> torch.Tensor:
    """SAPO (Gao et al. 2025, eq. 6): -f(r) A with the soft gate f(r) = 4/tau * sigmoid(tau (r - 1)),
    tau = tau_pos where A > 0, tau_neg otherwise. f'(1) = 1: on-policy it is the plain gradient."""
    tau = torch.where(advantages > 0, clip.tau_pos, clip.tau_neg)
    return -(4.0 / tau) * torch.sigmoid(tau * (ratio - 1.0)) * advantages


def reinforce_surrogate(ratio, logprobs, advantages, clip: ClipRange) -> torch.Tensor:
    """REINFORCE (Williams 1992): -A log pi, no ratio; for one on-policy update per batch (RLOO, ReMax)."""
    return -advantages * logprobs


SURROGATES: dict[str, Callable[..., torch.Tensor]] = {
    "clip": clip_surrogate,
    "unclipped": unclipped_surrogate,
    "cispo": cispo_surrogate,
    "sapo": sapo_surrogate,
    "reinforce": reinforce_surrogate,
}


# --- aggregations --------------------------------------------------------------------------------


def seq_mean_token_mean(per_token, mask, max_length: int) -> torch.Tensor:
    """GRPO (Shao et al. 2024, eq. 3): 1/G sum_i 1/|y_i| sum_t l_i,t."""
    return masked_mean(per_token, mask, dim=-1).mean()


def token_mean(per_token, mask, max_length: int) -> torch.Tensor:
    """DAPO (Yu et al. 2025, eq. 12) and PPO: 1/sum_i |y_i| sum_i sum_t l_i,t."""
    return masked_mean(per_token, mask)


def seq_mean_token_sum(per_token, mask, max_length: int) -> torch.Tensor:
    """REINFORCE / RLOO: 1/G sum_i sum_t l_i,t (the response is one action)."""
    return masked_sum(per_token, mask, dim=-1).mean()


def seq_mean_token_sum_norm(per_token, mask, max_length: int) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, eq. 3): 1/(G L) sum_i sum_t l_i,t, L the constant generation
    budget (``max_length``, the task's response limit), so no response's length scales its tokens."""
    return masked_sum(per_token, mask) / (mask.shape[0] * max_length)


AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "seq-mean-token-mean": seq_mean_token_mean,
    "token-mean": token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}


@torch.no_grad()
def ratio_stats(ratio, advantages, mask, clip: ClipRange) -> dict[str, float]:
    """Where the trust region binds: below (r < 1 - eps_low with A < 0) and above (r > 1 + eps_high
    with A > 0), DAPO's clip-higher argument; and the ratio's range over response tokens."""
    adv = advantages.expand_as(ratio)
    real = mask.bool()
    values = ratio[real] if bool(real.any()) else ratio.new_ones(1)
    return {
        "policy/clipfrac_low": float(masked_mean(((ratio < 1 - clip.eps_low) & (adv < 0)).float(), mask)),
        "policy/clipfrac_high": float(masked_mean(((ratio > 1 + clip.eps_high) & (adv > 0)).float(), mask)),
        "policy/ratio_min": float(values.min()),
        "policy/ratio_max": float(values.max()),
        "policy/ratio_mean": float(values.mean()),
    }


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped value loss of OpenAI's baselines PPO2 (used by Ziegler et al. 2019).

    v_clip = old_values + clip(values - old_values, -eps_v, eps_v)
    loss   = 0.5 * mean( max((values - R)^2, (v_clip - R)^2) )
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        stats = {"value/clipfrac": float(masked_mean((loss_clipped > loss_unclipped).float(), mask))}
    return loss, stats


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): [B] lengths -> [B] penalties,
    0                              for |y| <= L_max - L_cache
    ((L_max - L_cache) - |y|) / L_cache   in the buffer
    -1                             beyond L_max."""
    start = max_length - buffer
    return torch.clamp((start - lengths.float()) / max(buffer, 1), min=-1.0, max=0.0)
