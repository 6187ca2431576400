"""SimPO: Simple Preference Optimization with a reference-free reward (Meng et al. 2024, eq. 6).

    r(x, y) = beta / |y| * log pi(y|x)            (length-normalised, no reference model)
    loss    = -log sigmoid(r(x, y_w) - r(x, y_l) - gamma)
``gamma`` is the target reward margin. Defaults: beta = 2.0 and gamma / beta = 0.5, in the
range the paper recommends (beta 2.0-2.5, gamma/beta 0.3-0.5 ... 1.6).

Deviations from the paper:
  1. A learning rate sized for the tiny model. No reference model is loaded (none is needed),
     so SimPO trains at about half DPO's cost per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf_bench.errors import require
from rlhf_bench.run import Run
from rlhf_bench.training.pairs import OfflineConfig, PairLogps, PairObjective, train_on_pairs


@dataclass
class SimPOConfig(OfflineConfig):
    _target_: str = "rlhf_bench.methods.simpo.train"
    name: str = "simpo"
    beta: float = 2.0
    gamma: float = 1.0
    average_logprobs: bool = True  # the length normalisation is part of SimPO's reward

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.beta > 0, "method.beta", "must be > 0", self.beta)
        require(
            self.average_logprobs, "method.average_logprobs", "must be true for SimPO (its reward is length-normalised)"
        )

    def conventions(self) -> dict:
        return {"sequence_logprobs": "mean", "kl_in": "none (reference-free)"}


def simpo_loss(avg_chosen: torch.Tensor, avg_rejected: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """[n] length-averaged log-probs -> [n] per-pair SimPO losses."""
    return -F.logsigmoid(beta * avg_chosen - beta * avg_rejected - gamma)


def train(ctx: Run, cfg: SimPOConfig) -> torch.nn.Module:
    def loss_fn(logps: PairLogps):
        losses = simpo_loss(logps.chosen, logps.rejected, cfg.beta, cfg.gamma)
        with torch.no_grad():
            margin = cfg.beta * (logps.chosen - logps.rejected)
        stats = {
            "objective/reward_margin": float(margin.mean()),
            "objective/reward_accuracy": float((margin > 0).float().mean()),
        }
        return losses.mean(), stats

    return train_on_pairs(ctx, cfg, PairObjective("simpo", loss_fn, reference=False))
