"""Policy-gradient losses shared by the online methods (PPO, GRPO, ...).

Shapes: [B, R] per response token, with a [B, R] mask. Each returns (loss, stats), the
loss a scalar mean over masked tokens, stats detached floats for logging.
"""

from __future__ import annotations

import torch

from rlhf_bench.core.ops import masked_mean


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise.

    ratio = exp(logprobs - old_logprobs)
    loss  = mean( max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)) )
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "policy/clipfrac": float(masked_mean((clipped > unclipped).float(), mask)),
            # Schulman's k3 estimator of KL(old || new) over this minibatch.
            "policy/approx_kl": float(masked_mean(ratio - 1.0 - log_ratio, mask)),
        }
    return loss, stats


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
