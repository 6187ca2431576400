"""PPO's clipped policy and value losses on hand-computed values."""

import math

import torch

from rlhf_bench.core.losses import clipped_policy_loss, clipped_value_loss


def test_clipped_policy_loss_hand_computed():
    # Three tokens, eps = 0.2, plus one masked token that must not count.
    # t0: ratio 1.5, A = +1 -> max(-1.5, -1.2) = -1.2   (clipped: the gain is capped)
    # t1: ratio 0.5, A = +1 -> max(-0.5, -0.8) = -0.5   (unclipped: a loss is not capped)
    # t2: ratio 0.5, A = -2 -> max( 1.0,  1.6) =  1.6   (clipped)
    ratios = torch.tensor([[1.5, 0.5, 0.5, 3.0]])
    old = torch.zeros(1, 4)
    new = ratios.log()
    adv = torch.tensor([[1.0, 1.0, -2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, stats = clipped_policy_loss(new, old, adv, mask, clip_range=0.2)
    assert math.isclose(loss.item(), (-1.2 - 0.5 + 1.6) / 3, rel_tol=1e-6)
    assert math.isclose(stats["policy/clipfrac"], 2 / 3, rel_tol=1e-6)
    # approx KL (k3 of old vs new): mean(ratio - 1 - log ratio)
    expected_kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 0.5)) / 3
    assert math.isclose(stats["policy/approx_kl"], expected_kl, rel_tol=1e-5)


def test_clipped_policy_loss_gradient_vanishes_when_clipped():
    new = torch.tensor([[math.log(1.5)]], requires_grad=True)
    loss, _ = clipped_policy_loss(new, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    loss.backward()
    assert new.grad.item() == 0.0


def test_clipped_value_loss_hand_computed():
    # eps_v = 0.2. t0: v=1.0, old=0.5, R=1.0: clipped v = 0.7; max(0, 0.09) = 0.09
    #             t1: v=0.4, old=0.5, R=0.0: clipped v = 0.4; max(0.16, 0.16) = 0.16
    values = torch.tensor([[1.0, 0.4]])
    old = torch.tensor([[0.5, 0.5]])
    returns = torch.tensor([[1.0, 0.0]])
    loss, stats = clipped_value_loss(values, old, returns, torch.ones(1, 2), 0.2)
    assert math.isclose(loss.item(), 0.5 * (0.09 + 0.16) / 2, rel_tol=1e-5)
    assert math.isclose(stats["value/clipfrac"], 0.5)
