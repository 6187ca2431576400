"""Every method's loss against values computed by hand from its paper's formula."""

import math

import pytest
import torch

from rlhf_bench.methods.best_of_n import analytic_kl
from rlhf_bench.methods.dpo import dpo_loss
from rlhf_bench.methods.ipo import ipo_loss
from rlhf_bench.methods.kto import kto_loss
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
