"""Direct Preference Optimization (Rafailov et al. 2023, eq. 7), with conservative DPO.

    h      = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))
    loss   = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
eps = ``label_smoothing`` is the probability that a label is flipped (cDPO, Mitchell 2023);
eps = 0 is the paper's DPO. The implicit reward is beta * (log pi - log pi_ref).

Deviations from the paper:
  1. The pairs are the reward model's training pairs, sampled from the SFT policy (the
     paper's "preferred-FT" setting uses the same kind of on-distribution pairs).
  2. A learning rate sized for the tiny model (1e-4, not 1e-6), with linear warm-up and decay.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf_bench.errors import require
from rlhf_bench.run import Run
from rlhf_bench.training.pairs import OfflineConfig, PairLogps, PairObjective, implicit_reward_stats, train_on_pairs


@dataclass
class DPOConfig(OfflineConfig):
    _target_: str = "rlhf_bench.methods.dpo.train"
    name: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.beta > 0, "method.beta", "must be > 0", self.beta)
        require(0 <= self.label_smoothing < 0.5, "method.label_smoothing", "must be in [0, 0.5)", self.label_smoothing)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """[n] sequence log-probs -> [n] per-pair DPO losses."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def train(ctx: Run, cfg: DPOConfig) -> torch.nn.Module:
    def loss_fn(logps: PairLogps):
        losses = dpo_loss(
            logps.chosen, logps.rejected, logps.ref_chosen, logps.ref_rejected, cfg.beta, cfg.label_smoothing
        )
        return losses.mean(), implicit_reward_stats(logps, cfg.beta)

    return train_on_pairs(ctx, cfg, PairObjective("dpo", loss_fn))
