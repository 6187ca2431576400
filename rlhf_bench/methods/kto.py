"""KTO: Kahneman-Tversky Optimisation (Ethayarajh et al. 2024, eq. 8).

Each response is judged alone, desirable (the chosen) or undesirable (the rejected):
    r(x, y) = log pi(y|x) - log pi_ref(y|x)
    z0      = max(0, mean over mismatched pairs (x_i, y_j) of r(x_i, y_j))   (not backpropagated)
    L_D     = 1 - sigmoid(beta * (r(x, y_w) - z0))
    L_U     = 1 - sigmoid(beta * (z0 - r(x, y_l)))
    loss    = mean(lambda_D * L_D, lambda_U * L_U)
z0 is the reference point: the paper's batch estimate of KL(pi || pi_ref), from responses
of other prompts in the batch.

Deviations from the paper:
  1. Desirable and undesirable examples come from the same pairs (one of each per prompt),
     as when KTO is run on paired data in the paper's comparisons with DPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.errors import require
from rlhf_bench.run import Run
from rlhf_bench.training.pairs import OfflineConfig, PairLogps, PairObjective, mismatched_pairs, train_on_pairs


@dataclass
class KTOConfig(OfflineConfig):
    _target_: str = "rlhf_bench.methods.kto.train"
    name: str = "kto"
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.beta > 0, "method.beta", "must be > 0", self.beta)
        require(
            self.batch_size >= 2,
            "method.batch_size",
            "must be >= 2 (KTO's reference point uses other prompts)",
            self.batch_size,
        )


def kto_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    policy_mismatched: torch.Tensor,
    ref_mismatched: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[n] log-probs -> (scalar loss, z0)."""
    z0 = (policy_mismatched - ref_mismatched).mean().clamp(min=0).detach()
    desirable = 1 - torch.sigmoid(beta * ((policy_chosen - ref_chosen) - z0))
    undesirable = 1 - torch.sigmoid(beta * (z0 - (policy_rejected - ref_rejected)))
    losses = torch.cat([desirable_weight * desirable, undesirable_weight * undesirable])
    return losses.mean(), z0


def train(ctx: Run, cfg: KTOConfig) -> torch.nn.Module:
    def loss_fn(logps: PairLogps):
        loss, z0 = kto_loss(
            logps.chosen,
            logps.rejected,
            logps.ref_chosen,
            logps.ref_rejected,
            logps.mismatched,
            logps.ref_mismatched,
            cfg.beta,
            cfg.desirable_weight,
            cfg.undesirable_weight,
        )
        with torch.no_grad():
            chosen = cfg.beta * (logps.chosen - logps.ref_chosen)
            rejected = cfg.beta * (logps.rejected - logps.ref_rejected)
        stats = {
            "objective/kl_reference_point": float(z0),
            "objective/chosen_reward": float(chosen.mean()),
            "objective/rejected_reward": float(rejected.mean()),
        }
        return loss, stats

    return train_on_pairs(ctx, cfg, PairObjective("kto", loss_fn, extra_rows=mismatched_pairs))
