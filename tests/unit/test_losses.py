"""PPO's clipped value loss on hand-computed values (the policy losses: test_pg_parts.py)."""

import math

import torch

from rlhf_bench.core.losses import clipped_value_loss


def test_clipped_value_loss_hand_computed():
    # eps_v = 0.2. t0: v=1.0, old=0.5, R=1.0: clipped v = 0.7; max(0, 0.09) = 0.09
    #             t1: v=0.4, old=0.5, R=0.0: clipped v = 0.4; max(0.16, 0.16) = 0.16
    values = torch.tensor([[1.0, 0.4]])
    old = torch.tensor([[0.5, 0.5]])
    returns = torch.tensor([[1.0, 0.0]])
    loss, stats = clipped_value_loss(values, old, returns, torch.ones(1, 2), 0.2)
    assert math.isclose(loss.item(), 0.5 * (0.09 + 0.16) / 2, rel_tol=1e-5)
    assert math.isclose(stats["value/clipfrac"], 0.5)
