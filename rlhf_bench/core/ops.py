"""Tensor math shared by every method: masks, logprobs, whitening, GAE.

Shapes: B = batch, P = prompt length (left padded), R = response length (right padded),
T = P + R, V = vocabulary. Masks are 0/1 tensors of the shape of what they mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] mask -> [B, T] positions that start at 0 on the first real token.

    With left padding, positions must skip the pads, or a padded prompt would be scored
    as if it sat further into the context than it does. Pads get position 0.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over all elements, or along ``dim``)."""
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked elements (Bessel-corrected unless ``unbiased=False``)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise the masked elements to unit variance (and zero mean if ``shift_mean``).

    Masked-out positions are returned as 0 so they never leak into a loss.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, R, V] logits, [B, R] token ids -> [B, R] log p(label)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def logprobs_and_entropy(
    logits: torch.Tensor, labels: torch.Tensor, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, R, V] logits, [B, R] token ids -> ([B, R] log p(label), [B, R] entropy or None), both
    from one log-softmax (the same values as ``logprobs_from_logits`` and ``entropy_from_logits``,
    one pass over [B, R, V] fewer). The entropy is for logging: computed without a graph."""
    logp = F.log_softmax(logits.float(), dim=-1)
    token_logp = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return token_logp, None
    with torch.no_grad():
        detached = logp.detach()
        return token_logp, -(detached.exp() * detached).sum(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """[B, R, V] -> [B, R] entropy of the categorical distribution."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    rewards, values, mask: [B, R]; mask is 1 on response tokens (right padded). The value
    after the last response token is 0 (the episode ends there).
    Returns (advantages, returns), both [B, R], zero where mask is 0.
        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last * (mask[:, t + 1] if t + 1 < length else 0.0)
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """[B, R] right-padded mask -> [B] index of each row's last 1 (0 for an empty row)."""
    return (mask.long().sum(-1) - 1).clamp(min=0)
