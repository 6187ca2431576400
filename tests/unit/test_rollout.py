"""Generation and the shared forward passes, with left padding."""

import copy

import torch

from rlhf_bench.core import models
from rlhf_bench.core.rollout import generate, pad, response_logprobs, sequence_scores


def test_pad_left_and_right():
    ids, mask = pad([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad([[5, 6, 7], [8]], pad_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_logprobs_do_not_depend_on_left_padding(tiny_lm):
    model, tok = tiny_lm
    short = tok("the movie", add_special_tokens=False)["input_ids"]
    long = tok("i watched this movie last night and it was", add_special_tokens=False)["input_ids"]
    resp = tok(" great .", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    p_ids, p_mask = pad([short, long], tok.pad_token_id, "left")
    r_ids, r_mask = pad([resp, resp], tok.pad_token_id, "right")
    batched, _ = response_logprobs(model, p_ids, p_mask, r_ids, r_mask)
    alone_ids, alone_mask = pad([short], tok.pad_token_id, "left")
    alone, _ = response_logprobs(model, alone_ids, alone_mask, r_ids[:1], r_mask[:1])
    assert torch.allclose(batched[0], alone[0], atol=1e-5)

    # Same check for the per-sequence reward-model score.
    from transformers import AutoModelForSequenceClassification

    config = type(model.config).from_dict({**model.config.to_dict(), "num_labels": 1})
    rm = AutoModelForSequenceClassification.from_config(config).eval()
    s_batched = sequence_scores(rm, p_ids, p_mask, r_ids, r_mask)
    s_alone = sequence_scores(rm, alone_ids, alone_mask, r_ids[:1], r_mask[:1])
    assert torch.allclose(s_batched[0], s_alone[0], atol=1e-5)


def test_logprobs_match_a_plain_loop(tiny_lm):
    """Vectorised response logprobs equal a token-by-token loop over full forward passes."""
    model, tok = tiny_lm
    prompt = tok("the film is", add_special_tokens=False)["input_ids"]
    resp = tok(" very dull .", add_special_tokens=False)["input_ids"]
    p_ids, p_mask = pad([prompt], tok.pad_token_id, "left")
    r_ids, r_mask = pad([resp], tok.pad_token_id, "right")
    fast, _ = response_logprobs(model, p_ids, p_mask, r_ids, r_mask, temperature=0.7)
    slow = []
    for t in range(len(resp)):
        ctx = torch.tensor([prompt + resp[:t]])
        logits = model(input_ids=ctx).logits[0, -1] / 0.7
        slow.append(torch.log_softmax(logits, -1)[resp[t]].item())
    assert torch.allclose(fast[0], torch.tensor(slow), atol=1e-5)


def test_generation_with_left_padding_matches_unpadded(tiny_lm):
    model, tok = tiny_lm
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("the movie was", "my friends said the plot was")]
    ids, mask = pad(prompts, tok.pad_token_id, "left")
    # A very low temperature makes sampling greedy, so the batch and the single run must agree.
    kwargs = dict(
        max_new_tokens=8,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        temperature=1e-4,
        banned_token_ids=models.banned_tokens(tok),
    )
    batch_ids, batch_mask = generate(model, ids, mask, **kwargs)
    for i, p in enumerate(prompts):
        one_ids, one_mask = generate(model, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), **kwargs)
        n = int(one_mask.sum())
        assert batch_ids[i, :n].tolist() == one_ids[0, :n].tolist()


def test_generation_masks_after_eos_and_never_samples_pad(tiny_lm):
    model, tok = tiny_lm
    prompts = [tok("the movie was", add_special_tokens=False)["input_ids"]] * 64
    ids, mask = pad(prompts, tok.pad_token_id, "left")
    gen = torch.Generator().manual_seed(0)
    r_ids, r_mask = generate(
        model,
        ids,
        mask,
        max_new_tokens=10,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        temperature=1.0,
        banned_token_ids=models.banned_tokens(tok),
        generator=gen,
    )
    assert r_ids.shape[1] <= 10
    for row, m in zip(r_ids.tolist(), r_mask.tolist()):
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n)  # right padded
        assert tok.pad_token_id not in row[:n]  # pad is banned
        assert all(t == tok.pad_token_id for t in row[n:])
        if tok.eos_token_id in row[:n]:
            assert row.index(tok.eos_token_id) == n - 1  # the mask ends at the first EOS


def _repeated_prompts(tok):
    """Six left-padded rows: two prompts three times each, interleaved, and one of them alone."""
    texts = ["the movie was", "my friends said the plot was", "the movie was", "the movie was"]
    texts += ["my friends said the plot was", "my friends said the plot was", "i liked it"]
    return pad([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.pad_token_id, "left")


def test_generation_prefills_each_distinct_prompt_once(tiny_lm, monkeypatch):
    """Rows with the same prompt share one prefill (its keys and values copied to each row), in a
    preallocated cache; the samples are those of the plain path (a prefill per row, the cache
    transformers grows by concatenation)."""
    from rlhf_bench.core import rollout

    model, tok = tiny_lm
    ids, mask = _repeated_prompts(tok)
    kwargs = dict(max_new_tokens=12, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    kwargs["banned_token_ids"] = models.banned_tokens(tok)
    batch_sizes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: batch_sizes.append(kw["input_ids"].shape), with_kwargs=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shared = generate(model, ids, mask, generator=torch.Generator().manual_seed(0), **kwargs)
        assert batch_sizes[0] == (3, ids.shape[1])  # one prefill row per distinct prompt
        assert all(shape == (7, 1) for shape in batch_sizes[1:])
        monkeypatch.setattr(rollout, "_full_attention_only", lambda model: False)  # the plain path
        plain = generate(model, ids, mask, generator=torch.Generator().manual_seed(0), **kwargs)
    finally:
        torch.set_num_threads(threads)
        hook.remove()
    assert torch.equal(shared[0], plain[0]) and torch.equal(shared[1], plain[1])
    assert shared[0].shape[1] == 12 or bool((shared[0] == tok.eos_token_id).any(-1).all())


def test_logprobs_with_shared_prompts_match_full_passes(tiny_lm, monkeypatch):
    """One pass per distinct prompt, then the responses on its copied keys and values, gives the
    log-probs and the gradients of a whole pass per row."""
    from rlhf_bench.core import rollout

    model, tok = tiny_lm
    model = copy.deepcopy(model).train()
    p_ids, p_mask = _repeated_prompts(tok)
    generator = torch.Generator().manual_seed(0)
    r_ids = torch.randint(2, len(tok), (p_ids.shape[0], 5), generator=generator)
    r_mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 5, [1] * 4 + [0], [1] * 5, [1, 0, 0, 0, 0], [1] * 5])
    results = {}
    for path in ("shared", "plain"):
        if path == "plain":
            monkeypatch.setattr(rollout, "_shared_prompts", lambda ids, mask: None)
        model.zero_grad()
        logp, entropy = response_logprobs(model, p_ids, p_mask, r_ids, r_mask, temperature=0.7, with_entropy=True)
        (logp * r_mask).sum().backward()
        results[path] = (logp.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters()})
    (logp_s, ent_s, grad_s), (logp_p, ent_p, grad_p) = results["shared"], results["plain"]
    mask = r_mask.bool()
    torch.testing.assert_close(logp_s[mask], logp_p[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_s[mask], ent_p[mask], atol=1e-5, rtol=1e-5)
    for name, grad in grad_p.items():
        torch.testing.assert_close(grad_s[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_banned_tokens_get_no_probability_but_a_banned_label_stays_finite(tiny_lm):
    """response_logprobs with banned tokens: the log-softmax over the others only (and its gradient
    none for the banned logits); a response token that is itself banned (data the sampler did not
    produce) keeps its unmasked log-prob instead of -inf."""
    model, tok = tiny_lm
    generator = torch.Generator().manual_seed(0)
    p_ids = torch.randint(3, len(tok), (2, 4), generator=generator)
    r_ids = torch.randint(3, len(tok), (2, 5), generator=generator)
    banned = [1, 2, 7]
    r_ids[r_ids == 7] = 8
    ones = torch.ones_like
    plain, _ = response_logprobs(model, p_ids, ones(p_ids), r_ids, ones(r_ids))
    masked, entropy = response_logprobs(
        model, p_ids, ones(p_ids), r_ids, ones(r_ids), with_entropy=True, banned_token_ids=banned
    )
    from rlhf_bench.core.rollout import response_logits

    logits = response_logits(model, p_ids, ones(p_ids), r_ids, ones(r_ids)).float()
    keep = torch.ones(logits.shape[-1], dtype=torch.bool)
    keep[banned] = False
    by_hand = logits.gather(-1, r_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits[..., keep], -1)
    torch.testing.assert_close(masked, by_hand, atol=1e-5, rtol=1e-5)
    assert (masked > plain).all() and torch.isfinite(entropy).all()
    r_ids[0, 2] = 7  # a banned token in the data
    masked, _ = response_logprobs(model, p_ids, ones(p_ids), r_ids, ones(r_ids), banned_token_ids=banned)
    plain, _ = response_logprobs(model, p_ids, ones(p_ids), r_ids, ones(r_ids))
    assert torch.isfinite(masked).all() and masked[0, 2] == plain[0, 2]
