"""The exact toy world (task=toy) and the exact evaluation (evaluation/exact.py): hand-derived
values, brute force against closed forms, the frontier that no policy may lie above, and the
task end to end through the pipeline."""

import itertools
import math

import pytest
import torch
from conftest import RM_FAST, TOY_TINY

from rlhf_bench.cli import load_config
from rlhf_bench.config import TinyModelConfig
from rlhf_bench.core import models
from rlhf_bench.core.rollout import response_logits, response_logprobs
from rlhf_bench.errors import ConfigError
from rlhf_bench.evaluation import exact
from rlhf_bench.run import Run
from rlhf_bench.tasks.toy import ToyTask, ToyTaskConfig

# pi_ref over the 4 responses aa, ab, ba, bb of a 2-symbol alphabet, L = 2, and a reward with a tied argmax
P_REF = [0.4, 0.3, 0.2, 0.1]
REWARD = [0.0, 1.0, 2.0, 2.0]


def _log(ps):
    return torch.tensor(ps, dtype=torch.float64).log()


def _tilted_closed_form(lam: float) -> tuple[float, float]:
    """q_i = p_i e^{lam r_i} / Z: KL(q || p) = lam E_q[r] - log Z, by hand (a plain loop)."""
    weights = [p * math.exp(lam * r) for p, r in zip(P_REF, REWARD)]
    z = sum(weights)
    reward = sum(w * r for w, r in zip(weights, REWARD)) / z
    return lam * reward - math.log(z), reward


def _tiny_world(alphabet=4, length=3, seed=0, **task_kwargs):
    """A toy task, its tokenizer and a random tiny GPT-2 on it (no training)."""
    models.quiet_transformers()
    task_kwargs.setdefault("n_prompts", 3)
    task = ToyTask(ToyTaskConfig(alphabet=alphabet, response_length=length, n_sft=16, **task_kwargs))
    tok = task.build_tokenizer()
    cfg = TinyModelConfig(n_layer=1, d_model=16, n_head=2, max_positions=32)
    return task, tok, models.build_tiny_model(cfg, tok, seed).eval()


def _context(task, tok):
    cfg = load_config(["task=toy", "device=cpu"])
    return Run(cfg=cfg, task=task, tokenizer=tok, device=torch.device("cpu"), dtype=None, tracker=None)


# --- sums over the response space --------------------------------------------------------
def test_all_responses_is_lexicographic():
    got = exact.all_responses(2, 2).tolist()
    assert got == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert exact.all_responses(3, 4).shape == (81, 4) and exact.all_responses(5, 0).shape == (1, 0)


def test_kl_and_expectation_by_hand():
    uniform = torch.full((4,), math.log(0.25), dtype=torch.float64)
    # KL(U || p) = sum_i 1/4 log((1/4) / p_i)
    expected = sum(0.25 * math.log(0.25 / p) for p in P_REF)
    assert exact.kl(uniform, _log(P_REF)) == pytest.approx(expected, abs=1e-12)
    assert exact.kl(_log(P_REF), _log(P_REF)) == 0.0
    assert exact.expectation(_log(P_REF), torch.tensor(REWARD)) == pytest.approx(0.3 + 0.4 + 0.2)


def test_frontier_matches_closed_form_and_endpoints():
    frontier = exact.Frontier([exact.Prompt(_log(P_REF), torch.tensor(REWARD, dtype=torch.float64))])
    for lam in (0.1, 0.7, 2.0, 5.0):
        kl_value, reward = _tilted_closed_form(lam)
        assert frontier.point(lam) == pytest.approx((kl_value, reward), abs=1e-12)
        assert frontier.reward_at(kl_value) == pytest.approx(reward, abs=1e-9)
    # beta -> inf: pi_ref itself; beta -> 0: pi_ref restricted to the argmax set {ba, bb} (mass 0.3)
    assert frontier.point(0.0) == pytest.approx((0.0, 0.9), abs=1e-12)
    assert (frontier.kl_max, frontier.reward_max) == pytest.approx((-math.log(0.3), 2.0), abs=1e-12)
    assert frontier.reward_at(0.0) == pytest.approx(0.9) and frontier.reward_at(10.0) == 2.0
    curve = frontier.curve(32)
    kls, rewards = [c[1] for c in curve], [c[2] for c in curve]
    assert kls == sorted(kls) and rewards == sorted(rewards)
    # concave: the slope dR/dKL = lam decreases with KL ... as the chords' slopes do
    slopes = [(r2 - r1) / (k2 - k1) for k1, k2, r1, r2 in zip(kls, kls[1:], rewards, rewards[1:]) if k2 - k1 > 1e-9]
    assert all(a >= b - 1e-9 for a, b in zip(slopes, slopes[1:]))


def test_no_distribution_beats_the_frontier():
    """The frontier is max E_q[r] over KL(q || pi_ref) <= k: random q, and pi*_beta lies on it."""
    gen = torch.Generator().manual_seed(0)
    ref = torch.log_softmax(torch.randn(64, generator=gen, dtype=torch.float64), 0)
    reward = torch.randint(-2, 4, (64,), generator=gen).double()
    frontier = exact.Frontier([exact.Prompt(ref, reward)])
    for scale in (0.3, 1.0, 3.0):
        for _ in range(20):
            q = torch.log_softmax(scale * torch.randn(64, generator=gen, dtype=torch.float64), 0)
            assert not frontier.above(exact.kl(q, ref), exact.expectation(q, reward))
            assert frontier.regret(exact.kl(q, ref), exact.expectation(q, reward)) >= -1e-9
    for beta in (0.05, 0.5, 5.0):
        q = exact.tilted(ref, reward, beta)
        assert frontier.regret(exact.kl(q, ref), exact.expectation(q, reward)) == pytest.approx(0.0, abs=1e-8)
    # and a point a hair above it is caught
    k, r = frontier.point(1.0)
    assert frontier.above(k, r + 1e-4) and not frontier.above(k, r)


def test_averaged_frontier_shares_beta():
    """Over two prompts, the frontier of the averages beats any split of the KL budget between them."""
    a = exact.Prompt(_log(P_REF), torch.tensor(REWARD, dtype=torch.float64))
    b = exact.Prompt(_log([0.1, 0.2, 0.3, 0.4]), torch.tensor([3.0, 0.0, 1.0, 0.0], dtype=torch.float64))
    both, alone = exact.Frontier([a, b]), [exact.Frontier([a]), exact.Frontier([b])]
    budget = 0.4
    for share in (0.0, 0.2, 0.5, 0.8, 1.0):  # prompt a gets 2 * budget * share, b the rest: mean KL = budget
        split = 0.5 * (alone[0].reward_at(2 * budget * share) + alone[1].reward_at(2 * budget * (1 - share)))
        assert split <= both.reward_at(budget) + 1e-9


# --- best-of-n ---------------------------------------------------------------------------
def _brute_force_best_of_n(p: list[float], score: list[float], n: int) -> list[float]:
    """Every n-tuple of draws; the first draw with the highest score wins."""
    out = [0.0] * len(p)
    for draws in itertools.product(range(len(p)), repeat=n):
        best = max(range(n), key=lambda i: (score[draws[i]], -i))
        out[draws[best]] += math.prod(p[d] for d in draws)
    return out


@pytest.mark.parametrize("score", [[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_best_of_n_matches_brute_force(score, n):
    expected = _brute_force_best_of_n(P_REF, score, n)
    got = exact.best_of_n_logprobs(_log(P_REF), torch.tensor(score), n).exp()
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    kl_expected = sum(q * math.log(q / p) for q, p in zip(expected, P_REF) if q > 0)
    assert exact.best_of_n_kl(_log(P_REF), torch.tensor(score), n) == pytest.approx(kl_expected, abs=1e-12)
    # win rate against pi_ref judged by the selection score, ties one half, by brute force
    wins = sum(
        q * p * (1.0 if s > t else 0.5 if s == t else 0.0)
        for q, s in zip(expected, score)
        for p, t in zip(P_REF, score)
    )
    assert exact.win_rate(got.log(), _log(P_REF), torch.tensor(score)) == pytest.approx(wins, abs=1e-12)


@pytest.mark.parametrize("n", [2, 4, 16])
def test_best_of_n_kl_below_bound_and_tends_to_it(n):
    """Beirami et al. 2024: KL_bon <= log n - (n-1)/n, reached as the atoms shrink; win rate -> n/(n+1)."""
    bound = exact.best_of_n_kl_bound(n)
    gaps = []
    for atoms in (4, 64, 4096):
        ref = torch.full((atoms,), -math.log(atoms), dtype=torch.float64)
        score = torch.randperm(atoms, generator=torch.Generator().manual_seed(atoms)).double()  # no ties
        kl_value = exact.best_of_n_kl(ref, score, n)
        assert kl_value <= bound + 1e-12
        gaps.append(bound - kl_value)
        bon = exact.best_of_n_logprobs(ref, score, n)
        assert torch.logsumexp(bon, 0) == pytest.approx(0.0, abs=1e-12)
        if atoms == 4096:
            assert exact.win_rate(bon, ref, score) == pytest.approx(n / (n + 1), abs=1e-3)
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 2e-3
    # ties lower it further; a constant score makes best-of-n the reference itself
    ref = torch.full((8,), -math.log(8), dtype=torch.float64)
    tied = exact.best_of_n_kl(ref, torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1]), n)
    assert tied < exact.best_of_n_kl(ref, torch.arange(8.0), n) and exact.best_of_n_kl(ref, torch.zeros(8), n) == 0.0
    assert exact.win_rate(exact.best_of_n_logprobs(ref, torch.zeros(8), n), ref, torch.zeros(8)) == pytest.approx(0.5)


# --- the task ----------------------------------------------------------------------------
def test_config_composes_and_guards_the_size():
    cfg = load_config(["task=toy"])
    assert isinstance(cfg.task, ToyTaskConfig) and cfg.task.alphabet**cfg.task.response_length == 32768
    with pytest.raises(ConfigError, match="task.response_length"):
        ToyTaskConfig(alphabet=8, response_length=6)
    with pytest.raises(Exception, match="task.response_length"):
        load_config(["task=toy", "task.response_length=6"])
    with pytest.raises(ConfigError, match="task.n_prompts"):
        ToyTaskConfig(alphabet=2, key_length=2, n_prompts=2)


def test_gold_reward_by_hand():
    task = ToyTask(ToyTaskConfig(alphabet=3, response_length=5, n_prompts=4, n_sft=8))
    assert set(task.eval_prompts) == {"b b :", "b c :", "c b :", "c c :"}
    prompt = "b c :"  # target, cyclic: b c b c b
    cases = {
        "b c b c b": 5 * 0.5,  # all match, no "a"
        "a a a b c": 0 * 0.5 + (2 - 1),  # no position matches; 3 "a": +2 up to the cap, -1 beyond
        "a c a c a": 2 * 0.5 + (2 - 1),  # c at positions 2 and 4 match
        "a c b c b": 4 * 0.5 + 1,
        "a a c c b": 2 * 0.5 + 2,
        "a a a a a": 0 + (2 - 3),
    }
    assert task.gold_reward([prompt] * len(cases), list(cases)) == pytest.approx(list(cases.values()))
    index = {s: i for i, s in enumerate(task.response_vocabulary)}
    symbols = torch.tensor([[index[w] for w in text.split()] for text in cases])
    assert task.gold_reward_symbols(prompt, symbols).tolist() == pytest.approx(list(cases.values()))
    assert task.gold_reward([prompt], ["b <|endoftext|> x"]) == [0.5]  # free text: only letters count


def test_tokenizer_has_one_token_per_symbol(tmp_path):
    task, tok, _ = _tiny_world()
    ids = tok.convert_tokens_to_ids(task.response_vocabulary)
    assert len(set(ids)) == len(ids) and tok.unk_token_id not in ids
    assert tok("a b c d", add_special_tokens=False)["input_ids"] == ids
    assert tok.decode(ids) == "a b c d"
    tok.save_pretrained(tmp_path)
    again = models.load_tokenizer(str(tmp_path))
    assert again("c a :", add_special_tokens=False)["input_ids"] == tok("c a :", add_special_tokens=False)["input_ids"]
    assert (again.pad_token, again.eos_token, again.padding_side) == (models.PAD, models.EOS, "left")


# --- exact log-probs against the sampler and the shared forward pass -----------------------
def test_enumerated_logprobs_sum_to_one_and_match_response_logprobs():
    task, tok, model = _tiny_world(alphabet=4, length=3)
    prompt_ids = tok(task.eval_prompts[0], add_special_tokens=False)["input_ids"]
    allowed = tok.convert_tokens_to_ids(task.response_vocabulary)
    for temperature in (1.0, 0.7):
        logp = exact.sequence_logprobs(model, prompt_ids, allowed, 3, temperature, batch_size=5)
        assert logp.shape == (64,) and float(torch.logsumexp(logp, 0)) == pytest.approx(0.0, abs=1e-9)
    # with every token allowed, the enumeration is exactly response_logprobs summed (no masking)
    vocab = list(range(len(tok)))
    full = exact.sequence_logprobs(model, prompt_ids, vocab, 2)
    responses = exact.all_responses(len(vocab), 2)
    prompt = torch.tensor([prompt_ids]).expand(len(responses), -1)
    per_token, _ = response_logprobs(model, prompt, torch.ones_like(prompt), responses, torch.ones_like(responses))
    assert full.tolist() == pytest.approx(per_token.double().sum(-1).tolist(), abs=1e-5)
    # with the allowed symbols only: response_logprobs renormalised over them, token by token
    masked = exact.sequence_logprobs(model, prompt_ids, allowed, 3)
    symbols = exact.all_responses(len(allowed), 3)
    ids = torch.tensor(allowed)[symbols]
    prompt = torch.tensor([prompt_ids]).expand(len(ids), -1)
    ones = torch.ones_like
    per_token, _ = response_logprobs(model, prompt, ones(prompt), ids, ones(ids))
    logits = response_logits(model, prompt, ones(prompt), ids, ones(ids)).float()
    allowed_mass = torch.logsumexp(torch.log_softmax(logits, -1)[..., allowed], -1)
    renormalised = (per_token - allowed_mass).double().sum(-1)
    assert masked.tolist() == pytest.approx(renormalised.tolist(), abs=1e-5)


def test_run_logprobs_are_the_sampled_distribution_and_cannot_be_gamed():
    """ctx.logprobs (every loss and KL of the methods and the evaluation) is the distribution the
    sampler draws from: summed over a response it equals the exact enumeration, and moving mass
    onto tokens the sampler never draws (what PPO did to lower its measured KL) changes nothing."""
    task, tok, model = _tiny_world(alphabet=4, length=3)
    ctx = _context(task, tok)
    allowed, banned = ctx.response_token_ids(), ctx.banned_token_ids()
    prompt_ids = ctx.encode_prompts([task.eval_prompts[0]])[0]
    ids = torch.tensor(allowed)[exact.all_responses(len(allowed), 3)]
    prompt = torch.tensor([prompt_ids]).expand(len(ids), -1)
    ones = torch.ones_like
    for temperature in (1.0, 0.7):
        per_token, entropy = ctx.logprobs(model, prompt, ones(prompt), ids, ones(ids), temperature, with_entropy=True)
        expected = exact.sequence_logprobs(model, prompt_ids, allowed, 3, temperature)
        assert per_token.double().sum(-1).tolist() == pytest.approx(expected.tolist(), abs=1e-5)
        assert torch.isfinite(entropy).all() and (entropy <= math.log(len(allowed)) + 1e-5).all()
    # push mass onto the banned tokens (EOS, PAD, UNK, ":"): the raw log-probs fall, ours do not
    bias = torch.zeros(len(tok))
    bias[banned] = 5.0
    before_raw, _ = response_logprobs(model, prompt, ones(prompt), ids, ones(ids))
    before, _ = ctx.logprobs(model, prompt, ones(prompt), ids, ones(ids))
    hook = model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias)
    try:
        after_raw, _ = response_logprobs(model, prompt, ones(prompt), ids, ones(ids))
        after, _ = ctx.logprobs(model, prompt, ones(prompt), ids, ones(ids))
    finally:
        hook.remove()
    assert (after_raw < before_raw - 1.0).all()
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_sampler_draws_exactly_the_enumerated_distribution():
    """Toy responses are always L allowed symbols, no EOS, and their frequencies match exp(log pi)."""
    task, tok, model = _tiny_world(alphabet=2, length=2, key_length=1, n_prompts=1, seed=3)
    ctx = _context(task, tok)
    allowed = ctx.response_token_ids()
    assert allowed == tok.convert_tokens_to_ids(["a", "b"]) and tok.eos_token_id in ctx.banned_token_ids()
    prompt_ids = ctx.encode_prompts([task.eval_prompts[0]])[0]
    n = 4000
    ids, mask = ctx.pad_prompts([prompt_ids] * n)
    response_ids, response_mask = ctx.sample(model, ids, mask, 1.0, torch.Generator().manual_seed(0))
    assert response_ids.shape == (n, 2) and bool(response_mask.all())
    assert set(response_ids.unique().tolist()) <= set(allowed)
    index = (response_ids == allowed[1]).long()  # symbol indices
    counts = torch.bincount(index[:, 0] * 2 + index[:, 1], minlength=4).double()
    probs = exact.sequence_logprobs(model, prompt_ids, allowed, 2).exp()
    se = (probs * (1 - probs) / n).sqrt()
    assert ((counts / n - probs).abs() <= 4 * se + 1e-3).all(), (counts / n, probs)
    # the gold reward reads the decoded responses as the task's symbols
    texts = ctx.decode(response_ids[:3], response_mask[:3])
    assert all(len(t.split()) == 2 for t in texts)


def test_random_tiny_policies_never_lie_above_the_frontier():
    task, tok, ref = _tiny_world(alphabet=4, length=4, seed=0)
    allowed = tok.convert_tokens_to_ids(task.response_vocabulary)
    symbols = exact.all_responses(4, 4)
    worlds, policies = [], []
    others = [_tiny_world(alphabet=4, length=4, seed=s)[2] for s in (1, 2)]
    for prompt in task.eval_prompts:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ref_logp = exact.sequence_logprobs(ref, ids, allowed, 4)
        worlds.append(exact.Prompt(ref_logp, task.gold_reward_symbols(prompt, symbols)))
        policies.append(
            [exact.sequence_logprobs(m, ids, allowed, 4, t) for m in (ref, *others) for t in (0.5, 1.0, 2.0)]
        )
    frontier = exact.Frontier(worlds)
    assert frontier.reward_max > frontier.reward_ref
    for j in range(len(policies[0])):
        kl_value = sum(exact.kl(p[j], w.ref_logp) for p, w in zip(policies, worlds)) / len(worlds)
        reward = sum(exact.expectation(p[j], w.reward) for p, w in zip(policies, worlds)) / len(worlds)
        assert not frontier.above(kl_value, reward)
        assert frontier.regret(kl_value, reward) >= -1e-9
    # best-of-n on the gold reward too, with its exact KL
    for n in (2, 8):
        bon = [exact.best_of_n_logprobs(w.ref_logp, w.reward, n) for w in worlds]
        kl_value = sum(exact.kl(b, w.ref_logp) for b, w in zip(bon, worlds)) / len(worlds)
        assert kl_value <= exact.best_of_n_kl_bound(n)
        assert not frontier.above(
            kl_value, sum(exact.expectation(b, w.reward) for b, w in zip(bon, worlds)) / len(worlds)
        )


# --- end to end --------------------------------------------------------------------------
TOY_FAST = ["task=toy", *TOY_TINY, "preferences.n_train=128", "eval.lm_eval.tasks=[]", *RM_FAST]


@pytest.mark.parametrize(
    "method",
    [
        ["method=ppo", "method.steps=2", "method.prompts_per_step=8", "method.num_minibatches=2", "method.epochs=1"],
        ["method=best_of_n", "method.n=4"],
    ],
    ids=["ppo", "best_of_n"],
)
def test_pipeline_reports_regret(tmp_path, method):
    from rlhf_bench import pipeline

    paths = [f"paths.results_dir={tmp_path}/results", f"paths.artifacts_dir={tmp_path}/artifacts"]
    record = pipeline.run(load_config(TOY_FAST + paths + method))
    assert record["status"] == "finished"
    metrics = record["metrics"]
    assert metrics["frontier"]["responses_per_prompt"] == 256 and metrics["frontier"]["n_prompts"] == 4
    assert metrics["sft"]["exact_kl"] == 0.0 and metrics["sft"]["regret"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["sft"]["exact_win_rate_vs_sft"] == pytest.approx(0.5)
    for who in ("sft", "policy"):
        assert metrics[who]["above_frontier"] is False and metrics[who]["regret"] >= -1e-9
        assert metrics[who]["response_length"] == 4.0 and metrics[who]["eos_fraction"] == 0.0
    if "method=best_of_n" in method:
        assert 0 < metrics["policy"]["exact_kl"] <= exact.best_of_n_kl_bound(4)


def test_hub_model_is_refused(tmp_path):
    from rlhf_bench import pipeline

    cfg = load_config(["task=toy", "model.name_or_path=gpt2", f"paths.artifacts_dir={tmp_path}", "device=cpu"])
    with pytest.raises(ConfigError, match="model.name_or_path"):
        pipeline.base_stage(cfg, None, torch.device("cpu"), None)
