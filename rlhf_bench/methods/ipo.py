"""Identity Preference Optimisation (Azar et al. 2023, "A General Theoretical Paradigm to
Understand Learning from Human Preferences", eq. 17, the empirical IPO loss).

    h    = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))
    loss = (h - 1 / (2 * tau))^2
A squared loss that regresses the log-likelihood-ratio gap to 1/(2 tau) instead of pushing
it to infinity, so it does not overfit deterministic preferences. ``tau`` is the
regularisation (the role beta plays in DPO).

Deviations from the paper:
  1. Sequence log-probs are summed by default (the paper's formula); TRL averages them over
     tokens, which is ``average_logprobs=true`` here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.errors import require
from rlhf_bench.run import Run
from rlhf_bench.training.pairs import OfflineConfig, PairLogps, PairObjective, implicit_reward_stats, train_on_pairs


@dataclass
class IPOConfig(OfflineConfig):
    _target_: str = "rlhf_bench.methods.ipo.train"
    name: str = "ipo"
    tau: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.tau > 0, "method.tau", "must be > 0", self.tau)


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """[n] sequence log-probs -> [n] per-pair IPO losses."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return (h - 1 / (2 * tau)) ** 2


def train(ctx: Run, cfg: IPOConfig) -> torch.nn.Module:
    def loss_fn(logps: PairLogps):
        losses = ipo_loss(logps.chosen, logps.rejected, logps.ref_chosen, logps.ref_rejected, cfg.tau)
        return losses.mean(), implicit_reward_stats(logps, cfg.tau)

    return train_on_pairs(ctx, cfg, PairObjective("ipo", loss_fn))
