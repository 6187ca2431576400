"""Every part of the policy-gradient family against values computed by hand from its paper's formula,
and the identities between the members (RLOO vs Dr. GRPO, GSPO vs GRPO, SAPO vs the plain gradient,
DAPO vs GRPO)."""

import math

import pytest
import torch

from rlhf_bench.compose import load_config
from rlhf_bench.core.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    group_normalized,
    leave_one_out,
    returns_to_go,
    token_rewards,
)
from rlhf_bench.core.losses import (
    AGGREGATIONS,
    RATIOS,
    SURROGATES,
    ClipRange,
    overlong_penalty,
    ratio_stats,
)
from rlhf_bench.core.rollout import Samples
from rlhf_bench.methods.pg import Batch, advantages_of, policy_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def inputs(scores, kl=None, kl_coef=0.0, mask=None, group_size=2, **kw):
    scores = t(*scores)
    mask = torch.ones(len(scores), 1) if mask is None else mask
    kl = torch.zeros_like(mask) if kl is None else kl
    return AdvantageInputs(scores=scores, kl=kl, kl_coef=kl_coef, mask=mask, group_size=group_size, **kw)


# --- advantages: (estimator, inputs, expected advantages), each derived in its comment ----------------
ADVANTAGE_CASES = [
    # GRPO: group (1, 2, 3): mean 2, sample std 1 -> (-1, 0, 1) / (1 + 1e-4)
    ("grpo", inputs((1, 2, 3), group_size=3), t(-1, 0, 1) / (1 + 1e-4)),
    # Dr. GRPO (std none): (1, 2, 3 | 10, 10, 10) -> (-1, 0, 1 | 0, 0, 0)
    ("grpo", inputs((1, 2, 3, 10, 10, 10), group_size=3, std="none"), t(-1, 0, 1, 0, 0, 0)),
    # batch std: (0, 2 | 4, 6) centred per group (-1, 1, -1, 1) / std(0, 2, 4, 6) = / sqrt(20/3)
    ("grpo", inputs((0, 2, 4, 6), std="batch"), t(-1, 1, -1, 1) / (math.sqrt(20 / 3) + 1e-4)),
    # RLOO: k = 4, (1, 2, 3, 6): baseline_i = (12 - R_i) / 3 = (11/3, 10/3, 3, 2)
    ("rloo", inputs((1, 2, 3, 6), group_size=4), t(-8 / 3, -4 / 3, 0, 4)),
    # RLOO with the KL in the reward: R = s - 0.5 * kl = (1 - 0.5, 0 - 0) -> (0.5, -0.5)
    ("rloo", inputs((1, 0), kl=t(1.0, 0.0).view(2, 1), kl_coef=0.5), t(0.5, -0.5)),
    # ReMax: R_i - r(greedy of its prompt): (1, 0 | 0.5, 0.5) - (0.5 | 1.0)
    ("remax", inputs((1, 0, 0.5, 0.5), baseline_scores=t(0.5, 1.0)), t(0.5, -0.5, -0.5, -0.5)),
    # REINFORCE++-baseline: the group mean subtracted, (1, 3 | 5, 5) -> (-1, 1 | 0, 0)
    ("reinforce_pp_baseline", inputs((1, 3, 5, 5)), t(-1, 1, 0, 0)),
]


@pytest.mark.parametrize("name,x,expected", ADVANTAGE_CASES)
def test_advantage_estimators_hand_computed(name, x, expected):
    advantages, returns = ADVANTAGE_ESTIMATORS[name].fn(x)
    assert torch.allclose(advantages, expected, atol=1e-6), advantages
    assert returns is None


def test_reinforce_pp_token_returns():
    # r = -beta kl with the score at the last real token: kl (0.2, 0.4, -), beta 0.5, score 1
    # -> r = (-0.1, -0.2 + 1, 0); returns to go: (0.7, 0.8, 0)
    mask = t(1, 1, 0).view(1, 3)
    x = AdvantageInputs(scores=t(1.0), kl=t(0.2, 0.4, 0).view(1, 3), kl_coef=0.5, mask=mask, group_size=1)
    assert torch.allclose(token_rewards(x), t(-0.1, 0.8, 0).view(1, 3))
    advantages, _ = ADVANTAGE_ESTIMATORS["reinforce_pp"].fn(x)
    assert torch.allclose(advantages, t(0.7, 0.8, 0).view(1, 3))
    # gamma 0.5: G_0 = r_0 + 0.5 r_1 = 1 + 0.5 * 2 = 2
    assert torch.allclose(returns_to_go(t(1, 2, 3).view(1, 3), mask, gamma=0.5), t(2, 2, 0).view(1, 3))


def test_gae_estimator_returns_value_targets():
    # one token, V = 0.25, score 1, lambda irrelevant: A = 1 - 0.25, return = 1
    x = AdvantageInputs(
        scores=t(1.0),
        kl=torch.zeros(1, 1),
        kl_coef=0.0,
        mask=torch.ones(1, 1),
        group_size=1,
        values=torch.full((1, 1), 0.25),
    )
    advantages, returns = ADVANTAGE_ESTIMATORS["gae"].fn(x)
    assert torch.allclose(advantages, t(0.75).view(1, 1)) and torch.allclose(returns, t(1.0).view(1, 1))


def test_rloo_is_g_over_g_minus_one_times_dr_grpo():
    rewards = torch.randn(8 * 5, generator=torch.Generator().manual_seed(0))
    for g in (2, 4, 5):
        r = rewards[: 8 * g]
        assert torch.allclose(leave_one_out(r, g), g / (g - 1) * group_normalized(r, g, "none"), atol=1e-6)


# --- ratios ------------------------------------------------------------------------------------------
def test_ratios_hand_computed():
    clip = ClipRange(eps_low=0.4, eps_high=0.4)
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    # token: exp(log r)
    lp = t(math.log(2.0), 0.0).view(1, 2)
    assert torch.allclose(RATIOS["token"](lp, old, t(1.0).view(1, 1), mask, clip), t(2.0, 1.0).view(1, 2))
    # GSPO: exp(mean(ln 2, 0)) = sqrt 2 on both tokens
    assert torch.allclose(RATIOS["sequence"](lp, old, t(1.0).view(1, 1), mask, clip), t(2**0.5, 2**0.5).view(1, 2))
    # GMPO, log ratios (0.5, -0.1), eps 0.4: A > 0 keeps min(l, clip l) = (0.4, -0.1) -> exp(0.15);
    # A < 0 keeps max(l, clip l) = (0.5, -0.1) -> exp(0.2)
    lp = t(0.5, -0.1).view(1, 2)
    assert torch.allclose(
        RATIOS["geometric"](lp, old, t(1.0).view(1, 1), mask, clip), torch.full((1, 2), math.exp(0.15))
    )
    assert torch.allclose(
        RATIOS["geometric"](lp, old, t(-1.0).view(1, 1), mask, clip), torch.full((1, 2), math.exp(0.2))
    )


# --- surrogates: (name, ratio, A, clip, expected per-token loss) --------------------------------------
SURROGATE_CASES = [
    # PPO clip eps 0.2: r 1.5, A 1 -> max(-1.5, -1.2) = -1.2; r 0.5, A 1 -> -0.5; r 0.5, A -2 -> max(1, 1.6) = 1.6
    ("clip", t(1.5, 0.5, 0.5), t(1, 1, -2), ClipRange(0.2, 0.2), t(-1.2, -0.5, 1.6)),
    # clip-higher eps (0.2, 0.28): r 1.5, A 1 -> -1.28; r 0.5, A -2 -> 2 * 0.8 = 1.6
    ("clip", t(1.5, 0.5), t(1, -2), ClipRange(0.2, 0.28), t(-1.28, 1.6)),
    # unclipped: -A r
    ("unclipped", t(1.5, 0.5), t(1, -2), ClipRange(), t(-1.5, 1.0)),
    # SAPO at r = 1: -(4 / tau) sigmoid(0) A = -2 A / tau: tau_pos 1 for A = 1, tau_neg 2 for A = -1
    ("sapo", t(1.0, 1.0), t(1, -1), ClipRange(tau_pos=1.0, tau_neg=2.0), t(-2.0, 1.0)),
]


@pytest.mark.parametrize("name,ratio,adv,clip,expected", SURROGATE_CASES)
def test_surrogates_hand_computed(name, ratio, adv, clip, expected):
    out = SURROGATES[name](ratio.view(1, -1), torch.zeros(1, ratio.numel()), adv.view(1, -1), clip)
    assert torch.allclose(out, expected.view(1, -1), atol=1e-6), out


def test_cispo_keeps_the_gradient_of_clipped_tokens_and_clip_drops_it():
    # r = 1.5 (log r from old = 0), A = 1, eps_high 0.2: CISPO's loss -1.2 * A * log pi has gradient -1.2;
    # PPO's clipped branch is constant in theta: gradient 0.
    clip = ClipRange(0.2, 0.2)
    for name, grad in (("cispo", -1.2), ("clip", 0.0)):
        lp = torch.full((1, 1), math.log(1.5), requires_grad=True)
        ratio = RATIOS["token"](lp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), clip)
        SURROGATES[name](ratio, lp, torch.ones(1, 1), clip).sum().backward()
        assert lp.grad.item() == pytest.approx(grad, abs=1e-6), name


def test_sapo_gate_has_slope_one_on_policy():
    # on-policy (r = 1) SAPO's gradient is the plain policy gradient -A d log pi, for either sign of A
    adv = t(1.5, -0.7).view(2, 1)
    grads = {}
    for name in ("sapo", "reinforce"):
        lp = t(-1.0, -2.0).view(2, 1).requires_grad_(True)
        ratio = RATIOS["token"](lp, lp.detach(), adv, torch.ones(2, 1), ClipRange())
        SURROGATES[name](ratio, lp, adv, ClipRange(tau_pos=1.0, tau_neg=1.05)).sum().backward()
        grads[name] = lp.grad.clone()
    assert torch.allclose(grads["sapo"], grads["reinforce"], atol=1e-6)


# --- aggregations ------------------------------------------------------------------------------------
def test_aggregations_hand_computed():
    # responses of 1 and 3 tokens, per-token losses -A with A = (1, -1): (-1 | 1, 1, 1)
    mask = t(1, 0, 0, 1, 1, 1).view(2, 3)
    per_token = t(-1, 0, 0, 1, 1, 1).view(2, 3)
    expected = {
        "seq-mean-token-mean": 0.0,  # mean(-1, 1)
        "token-mean": 0.5,  # (-1 + 3) / 4
        "seq-mean-token-sum": 1.0,  # (-1 + 3) / 2
        "seq-mean-token-sum-norm": 2 / 8,  # (-1 + 3) / (2 responses x L = 4)
    }
    for name, value in expected.items():
        assert AGGREGATIONS[name](per_token, mask, 4).item() == pytest.approx(value), name


def test_overlong_penalty():
    # L_max 20, L_cache 4: no penalty up to 16, linear to -1 at 20, -1 beyond
    assert torch.allclose(overlong_penalty(t(10, 16, 18, 20, 25), 20, 4), t(0, 0, -0.5, -1, -1))


def test_ratio_stats_count_each_side():
    # r (0.7, 1.3, 1.3, 1.0), A (-1, 1, -1, 1), eps 0.2: below-and-negative 1, above-and-positive 1 of 4
    stats = ratio_stats(t(0.7, 1.3, 1.3, 1.0).view(1, 4), t(-1, 1, -1, 1).view(1, 4), torch.ones(1, 4), ClipRange())
    assert stats["policy/clipfrac_low"] == 0.25 and stats["policy/clipfrac_high"] == 0.25
    assert (stats["policy/ratio_min"], stats["policy/ratio_max"]) == pytest.approx((0.7, 1.3))


# --- identities between members -----------------------------------------------------------------------
def _batch(n, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, r)
    samples = Samples(
        torch.zeros(n, 1, dtype=torch.long),
        torch.ones(n, 1, dtype=torch.long),
        torch.zeros(n, r, dtype=torch.long),
        mask.long(),
    )
    return Batch(
        samples=samples,
        scores=torch.randn(n, generator=g),
        gold=torch.zeros(n),
        has_eos=torch.ones(n),
        loss_mask=mask,
        ref_logprobs=-torch.rand(n, r, generator=g),
    )


def _loss(cfg, batch, logp, old):
    batch = advantages_of(cfg, batch, old, cfg.kl_coef)
    logp = logp.clone().requires_grad_(True)
    loss, _ = policy_loss(cfg, logp, batch, old, cfg.kl_coef, max_length=8)
    loss.backward()
    return loss.detach(), logp.grad


def test_gspo_on_one_token_responses_is_grpo():
    batch = _batch(8, 1)
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(8, 1, generator=g)
    logp = old + 0.3 * torch.randn(8, 1, generator=g)  # off-policy, so the ratios matter
    grpo = load_config(["method=grpo", "method.kl_in=none"]).method
    gspo = load_config(["method=grpo", "method.kl_in=none", "method.ratio=sequence"]).method
    for a, b in zip(_loss(grpo, batch, logp, old), _loss(gspo, batch, logp, old)):
        assert torch.allclose(a, b, atol=1e-6)


def test_dapo_without_its_switches_is_grpo_with_token_aggregation():
    batch = _batch(8, 5)
    g = torch.Generator().manual_seed(2)
    old = -torch.rand(8, 5, generator=g)
    logp = old + 0.3 * torch.randn(8, 5, generator=g)
    dapo = load_config(
        [
            "method=dapo",
            "method.eps_high=0.2",
            "method.dynamic_sampling=false",
            "method.overlong_buffer=0",
            "method.num_minibatches=1",
        ]
    ).method
    grpo = load_config(["method=grpo", "method.aggregation=token-mean", "method.kl_in=none"]).method
    ignore = {"dynamic_sampling", "overlong_buffer", "updates_per_batch"}
    assert {k: v for k, v in dapo.conventions().items() if k not in ignore} == {
        k: v for k, v in grpo.conventions().items() if k not in ignore
    }
    for a, b in zip(_loss(dapo, batch, logp, old), _loss(grpo, batch, logp, old)):
        assert torch.allclose(a, b, atol=1e-6)


def test_kl_in_the_loss_is_beta_times_k3():
    # A = 0 (one response per group of equal scores): the loss is beta * k3(log pi = ln 0.5, ref = ln 0.25)
    #  k3 = exp(ref - logp) - 1 - (ref - logp) = 0.5 - 1 + ln 2
    cfg = load_config(["method=grpo", "method.kl_coef=0.1", "method.group_size=2"]).method
    batch = _batch(2, 1)
    batch = Batch(**{**batch.__dict__, "scores": t(1.0, 1.0), "ref_logprobs": torch.full((2, 1), math.log(0.25))})
    lp = torch.full((2, 1), math.log(0.5))
    loss, _ = _loss(cfg, batch, lp, lp)
    assert loss.item() == pytest.approx(0.1 * (math.log(2) - 0.5), rel=1e-5)


def test_whitened_sequence_advantages_are_over_tokens():
    # REINFORCE++-baseline whitens the broadcast advantages over the batch's tokens: mean 0, var 1
    cfg = load_config(
        [
            "method=reinforce_pp",
            "method.advantage=reinforce_pp_baseline",
            "method.group_size=2",
            "method.prompts_per_step=4",
        ]
    ).method
    batch = advantages_of(cfg, _batch(8, 3), torch.zeros(8, 3), 0.0)
    assert batch.advantages.shape == (8, 3)
    assert batch.advantages.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert batch.advantages.var().item() == pytest.approx(1.0, rel=1e-3)


def test_padding_log_probs_do_not_overflow_the_loss():
    # padding carries the lowest float as its log-prob; REINFORCE's -A log pi would be inf there,
    # and inf * 0 (the mask) nan: the loss stays finite and equals the loss on the real tokens
    cfg = load_config(["method=rloo"]).method
    batch = _batch(2, 3)
    response_mask = t(1, 1, 0, 1, 0, 0).view(2, 3)
    samples = Samples(
        batch.samples.prompt_ids, batch.samples.prompt_mask, batch.samples.response_ids, response_mask.long()
    )
    lowest = torch.finfo(torch.float32).min
    logp = t(-1, -2, lowest, -3, lowest, lowest).view(2, 3)
    batch = Batch(
        **{**batch.__dict__, "samples": samples, "loss_mask": response_mask, "advantages": t(2.0, -3.0).view(2, 1)}
    )
    loss, _ = policy_loss(cfg, logp, batch, logp, 0.0, max_length=3)
    # seq-mean-token-sum of -A log pi: (2 * 3 + (-3) * 3) / 2 = -1.5
    assert loss.item() == pytest.approx(-1.5)
