"""Unit tests of the core's tensor math, with hand-derived values."""

import math

import torch

from rlhf_bench.core.ops import (
    entropy_from_logits,
    gae,
    last_token_index,
    logprobs_and_entropy,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    position_ids_from_mask,
)


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    # Real tokens count 0, 1, 2 ... from the first 1; pads get 0.
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]])
    assert torch.equal(position_ids_from_mask(mask), expected)


def test_masked_mean_var_and_whiten():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    # Masked elements are 1, 2, 3, 4: mean 2.5, unbiased variance 5/3, biased 1.25.
    assert masked_mean(x, m).item() == 2.5
    assert math.isclose(masked_var(x, m).item(), 5 / 3, rel_tol=1e-6)
    assert math.isclose(masked_var(x, m, unbiased=False).item(), 1.25, rel_tol=1e-6)
    assert torch.allclose(masked_mean(x, m, dim=-1), torch.tensor([1.5, 3.5]))
    w = masked_whiten(x, m)
    assert w[0, 2] == 0 and w[1, 2] == 0  # masked positions are zeroed
    assert abs(masked_mean(w, m).item()) < 1e-6
    assert math.isclose(masked_var(w, m).item(), 1.0, rel_tol=1e-4)
    # shift_mean=False keeps the mean: (x - 2.5)/sd + 2.5
    w2 = masked_whiten(x, m, shift_mean=False)
    assert math.isclose(masked_mean(w2, m).item(), 2.5, rel_tol=1e-5)


def test_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])  # p = (1/4, 3/4), then (1/2, 1/2)
    labels = torch.tensor([[1, 0]])
    lp = logprobs_from_logits(logits, labels)
    assert torch.allclose(lp, torch.tensor([[math.log(0.75), math.log(0.5)]]))
    ent = entropy_from_logits(logits)
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert torch.allclose(ent, torch.tensor([[h1, math.log(2.0)]]), atol=1e-6)


def test_logprobs_and_entropy_from_one_log_softmax():
    """The fused helper gives exactly the two separate computations; the entropy has no graph."""
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.tensor([[0, 6, 3], [2, 2, 5]])
    lp, ent = logprobs_and_entropy(logits, labels, with_entropy=True)
    assert torch.equal(lp, logprobs_from_logits(logits, labels))
    assert torch.equal(ent, entropy_from_logits(logits.detach())) and not ent.requires_grad
    assert logprobs_and_entropy(logits, labels)[1] is None


def _gae_loop(rewards, values, length, gamma, lam):
    """Plain-python GAE over one sequence of ``length`` real tokens."""
    adv = [0.0] * length
    last = 0.0
    for t in reversed(range(length)):
        next_v = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


def test_gae_hand_computed():
    # One sequence of 2 tokens, gamma = 1, lam = 0.5, rewards (0, 1), values (0.5, 0.25):
    # delta_1 = 1 + 0 - 0.25 = 0.75           A_1 = 0.75
    # delta_0 = 0 + 0.25 - 0.5 = -0.25        A_0 = -0.25 + 0.5 * 0.75 = 0.125
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.25, 9.0]])  # the padded value must be ignored
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[0.125, 0.75, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[0.625, 1.0, 0.0]]))


def test_gae_matches_plain_loop_with_right_padding():
    torch.manual_seed(0)
    lengths = [5, 3, 1, 4]
    rewards, values = torch.randn(4, 5), torch.randn(4, 5)
    mask = torch.tensor([[1.0] * n + [0.0] * (5 - n) for n in lengths])
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for i, n in enumerate(lengths):
        expected = _gae_loop(rewards[i].tolist(), values[i].tolist(), n, 0.9, 0.8)
        assert torch.allclose(adv[i, :n], torch.tensor(expected), atol=1e-6)
        assert torch.all(adv[i, n:] == 0)


def test_last_token_index():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    assert last_token_index(mask).tolist() == [1, 2, 0]
