"""KL estimators and KL controllers.

Per-token estimators of KL(pi || pi_ref) from samples y ~ pi (Schulman, "Approximating KL
divergence", 2020). With log_ratio = log pi(y) - log pi_ref(y):
    k1 = log_ratio                        unbiased, high variance, can be negative
    k2 = log_ratio**2 / 2                 biased, low variance, >= 0
    k3 = exp(-log_ratio) - 1 + log_ratio  unbiased, low variance, >= 0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def kl_k1(log_ratio: torch.Tensor) -> torch.Tensor:
    return log_ratio


def kl_k2(log_ratio: torch.Tensor) -> torch.Tensor:
    return 0.5 * log_ratio**2


def kl_k3(log_ratio: torch.Tensor) -> torch.Tensor:
    return torch.expm1(-log_ratio) + log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """[B, R] logprobs of sampled tokens under pi and pi_ref -> [B, R] per-token KL estimate."""
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose from {sorted(KL_ESTIMATORS)}") from None
    return fn(logprobs - ref_logprobs)


@dataclass
class FixedKLController:
    """A constant KL coefficient beta."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


@dataclass
class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019, Sec. 2.2.

    e_t = clip(KL_t / KL_target - 1, -0.2, 0.2);  beta_{t+1} = beta_t * (1 + K_beta * e_t)
    with K_beta = n_steps / horizon (n_steps = samples seen in this update).
    """

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
