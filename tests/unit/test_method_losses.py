"""Every method's loss against values computed by hand from its paper's formula."""

import math

import pytest
import torch

from rlhf_bench.methods.best_of_n import analytic_kl
from rlhf_bench.methods.dpo import dpo_loss
from rlhf_bench.methods.grpo import aggregate_loss, group_advantages, grpo_loss
from rlhf_bench.methods.ipo import ipo_loss
from rlhf_bench.methods.kto import kto_loss
from rlhf_bench.methods.rloo import leave_one_out_advantages, rloo_loss
from rlhf_bench.methods.simpo import simpo_loss
from rlhf_bench.rewards.bradley_terry import bradley_terry_loss
from rlhf_bench.rewards.margin import margin_loss
from rlhf_bench.rewards.reward import aggregate
from rlhf_bench.training.groups import select_best


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def softplus(x):
    return math.log1p(math.exp(x))  # -log sigmoid(-x)


def test_dpo_loss():
    # h = (-1 - -1.5) - (-2 - -1.5) = 1; loss = -log sigmoid(0.1 * 1) = log(1 + e^-0.1)
    loss = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1)
    assert loss.item() == pytest.approx(softplus(-0.1), rel=1e-6)
    # conservative DPO, eps = 0.2: 0.8 * log(1 + e^-0.1) + 0.2 * log(1 + e^0.1)
    cdpo = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1, label_smoothing=0.2)
    assert cdpo.item() == pytest.approx(0.8 * softplus(-0.1) + 0.2 * softplus(0.1), rel=1e-6)


def test_ipo_loss():
    # h = 1 as above; tau = 0.1: (1 - 1/(2*0.1))^2 = (1 - 5)^2 = 16
    assert ipo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), tau=0.1).item() == pytest.approx(16.0)


def test_simpo_loss():
    # beta=2, gamma=1: 2*(-0.5) - 2*(-1.0) - 1 = 0 -> -log sigmoid(0) = log 2
    assert simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=1.0).item() == pytest.approx(math.log(2.0))
    # gamma=0: -log sigmoid(1) = log(1 + e^-1)
    assert simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=0.0).item() == pytest.approx(softplus(-1.0), rel=1e-6)


def test_kto_loss():
    # Chosen log-ratio 0.5, rejected -0.5, mismatched log-ratios (0.1, 0.3): z0 = 0.2; beta = 1.
    # L_D = 1 - sigmoid(0.5 - 0.2); L_U = 1 - sigmoid(0.2 + 0.5); loss = mean(L_D, L_U)
    loss, z0 = kto_loss(t(0.0), t(-1.0), t(-0.5), t(-0.5), t(0.1, 0.3), t(0.0, 0.0), beta=1.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert z0.item() == pytest.approx(0.2)
    assert loss.item() == pytest.approx(((1 - sig(0.3)) + (1 - sig(0.7))) / 2, rel=1e-6)
    # A negative KL estimate is clamped to 0.
    _, z0 = kto_loss(t(0.0), t(-1.0), t(-0.5), t(-0.5), t(-0.4), t(0.0), beta=1.0)
    assert z0.item() == 0.0


def test_rloo_baseline_and_loss():
    # k = 4, rewards (1, 2, 3, 6): baseline_i = (12 - R_i) / 3 = (11/3, 10/3, 3, 2)
    adv = leave_one_out_advantages(t(1, 2, 3, 6), k=4)
    assert torch.allclose(adv, t(-8 / 3, -4 / 3, 0, 4))
    # loss = -mean(A * logp) with logp (-1, -2, -3, -4): -(8/3 + 8/3 + 0 - 16) / 4 = 8/3
    assert rloo_loss(t(-1, -2, -3, -4), adv).item() == pytest.approx(8 / 3)
    # Two groups are independent.
    assert torch.allclose(leave_one_out_advantages(t(1, 3, 5, 5), k=2), t(-2, 2, 0, 0))


def test_grpo_advantages():
    # Group (1, 2, 3): mean 2, sample std 1 -> (-1, 0, 1) / (1 + 1e-4); unscaled: (-1, 0, 1)
    assert torch.allclose(group_advantages(t(1, 2, 3), 3), t(-1, 0, 1) / (1 + 1e-4))
    assert torch.allclose(group_advantages(t(1, 2, 3, 10, 10, 10), 3, scale=False), t(-1, 0, 1, 0, 0, 0))


def test_grpo_loss_aggregations_and_kl():
    # Two responses of 1 and 3 tokens, A = (1, -1), ratio 1, beta 0: per-token loss -A.
    mask = t(1, 0, 0, 1, 1, 1).view(2, 3)
    zeros = torch.zeros(2, 3)
    adv = t(1.0, -1.0)
    args = (zeros, zeros, zeros, adv, mask, 0.2, 0.0)
    assert grpo_loss(*args, aggregation="sequence")[0].item() == pytest.approx(0.0)  # mean(-1, +1)
    assert grpo_loss(*args, aggregation="token")[0].item() == pytest.approx(0.5)  # (-1 + 3) / 4
    assert grpo_loss(*args, aggregation="constant")[0].item() == pytest.approx(1 / 3)  # (-1 + 3) / (2 * 3)
    # k3 KL with log pi = log 0.5, log pi_ref = log 0.25: 0.5 - 1 + ln 2; beta = 0.1, A = 0
    lp, ref = torch.full((1, 1), math.log(0.5)), torch.full((1, 1), math.log(0.25))
    loss, stats = grpo_loss(lp, lp, ref, t(0.0), torch.ones(1, 1), 0.2, 0.1)
    assert loss.item() == pytest.approx(0.1 * (math.log(2) - 0.5), rel=1e-5)
    # Clipping: ratio 1.5, A = 1 -> min(1.5, 1.2) = 1.2 -> loss -1.2
    loss, _ = grpo_loss(
        torch.full((1, 1), math.log(1.5)), torch.zeros(1, 1), torch.zeros(1, 1), t(1.0), torch.ones(1, 1), 0.2, 0.0
    )
    assert loss.item() == pytest.approx(-1.2)


def test_aggregate_loss_rejects_unknown():
    with pytest.raises(ValueError, match="loss aggregation"):
        aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), "median")


def test_bradley_terry_and_margin_losses():
    # -log sigmoid(1 - 0) = log(1 + e^-1); with margin 1: -log sigmoid(0) = log 2
    assert bradley_terry_loss(t(1.0), t(0.0)).item() == pytest.approx(softplus(-1.0), rel=1e-6)
    assert margin_loss(t(1.0), t(0.0), t(1.0)).item() == pytest.approx(math.log(2))
    assert margin_loss(t(1.0, 1.0), t(0.0, 0.0), t(0.0, 1.0)).item() == pytest.approx(
        (softplus(-1.0) + math.log(2)) / 2
    )


def test_ensemble_aggregation():
    scores = t(1, 2, 3, 2, 2, 5).view(3, 2)  # k = 3 members, B = 2
    assert torch.allclose(aggregate(scores, "mean"), t(2, 3))
    assert torch.allclose(aggregate(scores, "min"), t(1, 2))
    # population std: column 0 (1, 3, 2) -> sqrt(2/3); column 1 (2, 2, 5) -> sqrt(2)
    assert torch.allclose(aggregate(scores, "mean_minus_std", lam=1.0), t(2 - math.sqrt(2 / 3), 3 - math.sqrt(2)))


def test_best_of_n():
    assert analytic_kl(1) == 0.0
    assert analytic_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert analytic_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    scores = t(0.1, 0.9, 0.5, 0.2)  # two prompts, n = 2
    ids = torch.tensor([[1, 2, 0], [3, 4, 5], [6, 0, 0], [7, 8, 0]])
    mask = (ids != 0).long()
    best_ids, best_mask = select_best(scores, ids, mask, n=2)
    assert best_ids.tolist() == [[3, 4, 5], [6, 0, 0]]
    assert best_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
