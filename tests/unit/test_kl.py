"""KL estimators and controllers: hand values and an unbiasedness check."""

import math

import pytest
import torch

from rlhf_bench.core.kl import AdaptiveKLController, FixedKLController, kl_penalty


def test_estimators_hand_values():
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    r = math.log(2.0)  # log_ratio
    assert math.isclose(kl_penalty(lp, ref, "k1").item(), r, rel_tol=1e-6)
    assert math.isclose(kl_penalty(lp, ref, "k2").item(), r * r / 2, rel_tol=1e-6)
    # k3 = exp(-r) - 1 + r = 0.5 - 1 + ln 2
    assert math.isclose(kl_penalty(lp, ref, "k3").item(), 0.5 - 1 + r, rel_tol=1e-6)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(lp, ref, "k9")


def test_k1_and_k3_are_unbiased_for_categoricals():
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    exact = float((p * (p / q).log()).sum())
    gen = torch.Generator().manual_seed(0)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    lp, lq = p.log()[samples], q.log()[samples]
    for est in ("k1", "k3"):
        assert abs(kl_penalty(lp, lq, est).mean().item() - exact) < 0.01, est


def test_adaptive_controller_follows_ziegler():
    # KL 9 vs target 6: error = clip(9/6 - 1, -0.2, 0.2) = 0.2; beta <- 0.1 * (1 + 0.2 * 64/1000)
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    ctl.update(9.0, 64)
    assert math.isclose(ctl.value, 0.1 * (1 + 0.2 * 0.064))
    # KL 5.4: error = -0.1
    ctl2 = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    ctl2.update(5.4, 100)
    assert math.isclose(ctl2.value, 0.1 * (1 - 0.1 * 0.1))
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 64)
    assert fixed.value == 0.05
