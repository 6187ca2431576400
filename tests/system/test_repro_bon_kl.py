"""Reproduction 1 (best-of-n KL and win rate): the estimators against hand-derived values, a plain
loop and distributions whose answer is known; the exact toy-world rows and their checks; and the
reproduction end to end at a tiny budget."""

import json
import math

import pytest
import torch

from rlhf_bench.evaluation import exact
from rlhf_bench.repro import bon_kl


def test_closed_forms_by_hand():
    # n = 1 is the base policy itself: KL 0, win rate 1/2
    assert bon_kl.kl_bound(1) == 0 and bon_kl.win_bound(1) == 0.5
    assert bon_kl.kl_bound(2) == pytest.approx(math.log(2) - 0.5)  # 0.19315
    assert bon_kl.kl_bound(64) == pytest.approx(4.158883 - 63 / 64, abs=1e-6)
    assert bon_kl.win_bound(4) == 0.8


def test_log_density_ratio_by_hand():
    def ratio(below, mass, n):
        return float(bon_kl.log_density_ratio(torch.tensor([below]), torch.tensor([mass]), n)[0])

    # n = 2, F_< = 0.5, q = 0.25: F = 0.75, (0.75^2 - 0.5^2) / 0.25 = 1.25
    assert math.exp(ratio(0.5, 0.25, 2)) == pytest.approx(1.25)
    # no atom: n F^(n-1) = 2 * 0.5; a vanishing atom tends to it
    assert math.exp(ratio(0.5, 0.0, 2)) == pytest.approx(1.0)
    assert math.exp(ratio(0.5, 1e-12, 2)) == pytest.approx(1.0, rel=1e-9)
    # n = 3, F_< = 0.2, q = 0.5: (0.7^3 - 0.2^3) / 0.5 = (0.343 - 0.008) / 0.5 = 0.67
    assert math.exp(ratio(0.2, 0.5, 3)) == pytest.approx(0.67)
    # n = 1: best-of-1 is the base policy, ratio 1 whatever the cell
    assert ratio(0.3, 0.1, 1) == pytest.approx(0.0, abs=1e-12)


def test_atom_gap_is_what_the_atoms_cost_the_kl():
    """Sum over cells of pi_bon(cell) x atom_gap(cell) = log n - (n-1)/n - the discrete KL, exactly."""
    mass = torch.tensor([0.1, 0.3, 0.2, 0.4], dtype=torch.float64)  # four responses, scores ascending
    below = torch.cumsum(mass, 0) - mass
    for n in (2, 3, 8, 64):
        level = (below + mass) ** n - below**n  # pi_bon of each cell
        gaps = bon_kl.atom_gap(below, mass, n)
        kl = exact.best_of_n_kl(mass.log(), torch.arange(4.0), n)
        assert float((level * gaps).sum()) == pytest.approx(bon_kl.kl_bound(n) - kl, abs=1e-12)
    # a cell [0, F] holds the whole continuous KL; a tiny cell costs about ((n-1) q/F)^2 / 24
    one = torch.tensor([1.0], dtype=torch.float64)
    assert float(bon_kl.atom_gap(0 * one, 0.3 * one, 8)[0]) == pytest.approx(bon_kl.kl_bound(8))
    tiny = float(bon_kl.atom_gap(0.9 * one, 1e-7 * one, 64)[0])
    assert tiny == pytest.approx((63 * 1e-7 / (0.9 + 1e-7)) ** 2 / 24, rel=1e-3)
    assert float(bon_kl.atom_gap(0.5 * one, 0 * one, 8)[0]) == 0.0


def _loop_estimates(scores: list[float], logq: list[float], n: int) -> dict[str, list[float]]:
    """group_estimates written as the definition reads, one group and one opponent at a time."""
    N, out = len(scores), {"log_ratio": [], "win": [], "top_tie": [], "winner_repeated": []}
    for g in range(N // n):
        members = list(range(g * n, (g + 1) * n))
        best = members[0]
        for i in members[1:]:
            if scores[i] > scores[best]:  # strictly: the first maximal draw wins
                best = i
        others = [j for j in range(N) if j not in members]
        less = sum(scores[j] < scores[best] for j in others)
        equal = sum(scores[j] == scores[best] for j in others)
        below, q = max(less, 0.5) / len(others), math.exp(logq[best])
        ratio = ((below + q) ** n - below**n) / q if q > 0 else n * below ** (n - 1)
        in_group = sum(scores[i] == scores[best] for i in members)
        out["log_ratio"].append(math.log(ratio))
        out["win"].append(below + 0.5 * equal / len(others))
        out["top_tie"].append(float(in_group > 1))
        out["winner_repeated"].append(float(equal + in_group - 1 > 0))
    return out


def test_group_estimates_match_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.3, 0.25, 0.2, 0.1, 0.1, 0.05], dtype=torch.float64)  # six responses: many repeats
    value = torch.tensor([0.3, -1.0, 2.0, 0.7, 1.5, -0.2], dtype=torch.float64)
    draws = torch.multinomial(p, 41, replacement=True, generator=g)  # 41: a leftover draw beyond the groups
    scores, logq = value[draws], p[draws].log()
    for n in (1, 2, 3, 5, 8):
        fast = bon_kl.group_estimates(scores, logq, n)
        slow = _loop_estimates(scores.tolist(), logq.tolist(), n)
        for key, values in slow.items():
            assert fast[key].tolist() == pytest.approx(values, rel=1e-9, abs=1e-12), (n, key)


def _pooled(sample, n: int, pools: int, size: int, seed: int) -> tuple[dict, dict]:
    """Mean and s.e. over pools of each per-group estimate; ``sample(size, generator)`` -> (scores, log q)."""
    g = torch.Generator().manual_seed(seed)
    per_pool: dict[str, list[float]] = {}
    for _ in range(pools):
        for key, v in bon_kl.group_estimates(*sample(size, g), n).items():
            per_pool.setdefault(key, []).append(float(v.mean()))
    mean = {k: sum(v) / len(v) for k, v in per_pool.items()}
    se = {k: float(torch.tensor(v).std()) / math.sqrt(len(v)) for k, v in per_pool.items()}
    return mean, se


def test_monte_carlo_recovers_the_formula_for_a_continuous_score():
    """Normal scores, no atoms: the estimates sit within 3 s.e. of log n - (n-1)/n and n/(n+1)."""

    def sample(size, g):  # log q = -inf: no atoms
        return torch.randn(size, generator=g, dtype=torch.float64), torch.full((size,), -math.inf)

    for n in (2, 8, 32):
        mean, se = _pooled(sample, n, pools=48, size=512, seed=n)
        assert abs(mean["log_ratio"] - bon_kl.kl_bound(n)) <= 3 * se["log_ratio"], (n, mean, se)
        assert abs(mean["win"] - bon_kl.win_bound(n)) <= 3 * se["win"], (n, mean, se)
        assert mean["atom_gap"] == 0 and mean["top_tie"] == 0


def test_monte_carlo_recovers_the_exact_kl_of_a_discrete_score():
    """Four responses with atoms 0.1 ... 0.4: the estimator does not assume the formula; it finds the
    closed-form discrete KL and win rate, far below log n - (n-1)/n and n/(n+1), and its atom_gap
    accounts for the difference."""
    p = torch.tensor([0.1, 0.3, 0.2, 0.4], dtype=torch.float64)
    value = torch.arange(4.0, dtype=torch.float64)

    def sample(size, g):
        draws = torch.multinomial(p, size, replacement=True, generator=g)
        return value[draws], p[draws].log()

    for n in (2, 8):
        mean, se = _pooled(sample, n, pools=48, size=512, seed=10 + n)
        kl = exact.best_of_n_kl(p.log(), value, n)
        win = exact.win_rate(exact.best_of_n_logprobs(p.log(), value, n), p.log(), value)
        assert abs(mean["log_ratio"] - kl) <= 3 * se["log_ratio"], (n, mean, kl)
        assert abs(mean["win"] - win) <= 3 * se["win"], (n, mean, win)
        assert bon_kl.kl_bound(n) - kl > 5 * se["log_ratio"]  # the formula is rejected here
        assert abs(mean["atom_gap"] - (bon_kl.kl_bound(n) - kl)) <= 3 * se["atom_gap"] + 1e-3
        assert mean["top_tie"] > 0.1 and mean["winner_repeated"] == 1.0


def test_canonical_scores_make_copies_equal():
    ids = torch.tensor([[5, 6, 1], [7, 1, 0], [5, 6, 1], [8, 8, 1]])
    scores = torch.tensor([0.5, -0.1, 0.5 + 1e-7, -0.1], dtype=torch.float64)  # a copy with float jitter
    canon, stats = bon_kl.canonical_scores(ids, scores)
    assert canon.tolist() == [0.5, -0.1, 0.5, -0.1]
    assert stats["distinct"] == 3 and stats["jitter"] == pytest.approx(1e-7)
    assert stats["collisions"] == 1  # rows 1 and 3 differ but score alike: s is not one-to-one there


class _Ctx:
    def __init__(self, banned):
        self._banned = banned

    def banned_token_ids(self):
        return self._banned


def test_sampler_logprobs_are_a_distribution_over_what_the_sampler_draws():
    """With every token but four banned and no EOS among them, the 4^2 responses of 2 tokens are all
    the sampler can draw: their probabilities, at any temperature, sum to 1."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=24, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config).eval()
    allowed = [10, 11, 12, 13]
    ctx = _Ctx(sorted(set(range(24)) - set(allowed)))
    responses = torch.tensor([[a, b] for a in allowed for b in allowed])
    prompt = torch.tensor([[3, 7, 5]] * len(responses))
    for temperature in (0.7, 1.0, 2.0):
        logp = bon_kl.sampler_logprobs(
            ctx, model, prompt, torch.ones_like(prompt), responses, torch.ones_like(responses), temperature
        )
        assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-9)
        assert logp.unique().numel() > 1  # not trivially uniform


def _uniform_world(k: int) -> dict:
    ref = torch.full((k,), -math.log(k), dtype=torch.float64)
    return {"ref": {1.0: ref}, "gold": torch.arange(float(k)), "rm": torch.arange(float(k))}


def test_exact_rows_by_hand_and_the_checks():
    # two equally likely responses, n = 2: pi_bon = (1/4, 3/4),
    # KL = 1/4 log(1/2) + 3/4 log(3/2) = 0.130812; win = 1/4 (0 + 1/4) + 3/4 (1/2 + 1/4) = 0.625
    (row,) = bon_kl.exact_rows([_uniform_world(2)], [("gold", 1.0)], [2])
    assert row["kl"] == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert row["win"] == pytest.approx(0.625) and row["largest_atom"] == 0.5
    assert row["kl_gap"] == pytest.approx(bon_kl.kl_bound(2) - row["kl"])
    # uniform over k responses: the atoms shrink as 1/k and both gaps with them
    rows = []
    for k in (2, 8, 64, 4096):
        rows += bon_kl.exact_rows([_uniform_world(k)], [("rm", 1.0)], [2, 16])
    checks = bon_kl.discrete_checks(rows, 1e-9)
    assert [c.passed for c in checks] == [True] * 4, [c.detail for c in checks]
    assert rows[-1]["kl_gap"] < 1e-4
    # the ordering check is real: a setting whose gap grows as its atom shrinks fails it
    bad = [dict(r) for r in rows]
    bad[-1]["kl_gap"] = 1.0
    assert not bon_kl.discrete_checks(bad, 1e-9)[2].passed
    # so is "never above": a KL above the bound fails
    bad[-1]["kl"] = bad[-1]["kl_bound"] + 1e-6
    assert not bon_kl.discrete_checks(bad, 1e-9)[0].passed


TINY = [
    "task.n_sft=2000",
    "model.tiny.n_layer=2",
    "model.tiny.d_model=32",
    "model.tiny.n_head=2",
    "model.tiny.vocab_size=400",
    "sft.steps=40",
    "sft.batch_size=32",
    "preferences.n_train=128",
    "preferences.n_eval=64",
    "eval.n_prompts=32",
    "reward_model.epochs=1",
    "reward_model.min_gold_accuracy=0",
    "reward_model.n_normalization_samples=64",
    "device=cpu",
    "logger.mode=disabled",
]


@pytest.mark.slow
def test_the_reproduction_end_to_end_at_a_tiny_budget(tmp_path, capsys):
    from rlhf_bench.repro import cli as repro_cli

    args = ["bon_kl", "--quick", f"--results-dir={tmp_path}/results", f"--artifacts-dir={tmp_path}/artifacts"]
    assert repro_cli.main([*args, "--", *TINY]) == 0
    out = capsys.readouterr().out
    assert "verdict:" in out and "toy, exact" in out
    (path,) = (tmp_path / "results" / "repro" / "bon_kl").glob("*.json")
    verdict = json.loads(path.read_text())
    assert verdict["quick"] is True
    assert verdict["verdict"] == ("PASS" if all(c["passed"] for c in verdict["checks"]) else "FAIL")
    checks = {c["name"]: c for c in verdict["checks"]}
    # 2 Monte Carlo checks per n (quick: n = 2, 4, 8), and the toy world's four
    assert len(checks) == 2 * 3 + 4
    # whatever the training, an exact best-of-n never exceeds the continuous values
    assert all(c["passed"] for name, c in checks.items() if "never above" in name)
    curves = verdict["data"]["monte_carlo"]["curves"]
    assert [r["n"] for r in curves] == [2, 4, 8] and all(r["kl_se"] > 0 for r in curves)
    assert all(r["kl"] <= r["kl_bound"] + 1e-9 for r in verdict["data"]["exact"])
    for run_id in verdict["runs"]:
        record = json.loads((tmp_path / "results" / "runs" / run_id / "record.json").read_text())
        assert record["method"] == "best_of_n" and "reproductions" not in record  # as its run wrote it
