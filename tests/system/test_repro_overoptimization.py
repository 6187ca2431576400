"""Reproduction 2 (results/published/rm_overoptimization.yaml): Gao et al.'s best-of-n estimator
by hand, against a plain loop and against brute force over subsets; the two functional forms
recovered from synthetic curves; the periodic evaluation hook leaves PPO's training unchanged;
and the reproduction end to end on a tiny world."""

import itertools
import json
import math

import numpy as np
import pytest
from conftest import RM_FAST, TOY_TINY

from rlhf_bench.repro import overoptimization as ovo


# --- the best-of-n estimator ---------------------------------------------------------------
def _loop_estimate(proxy: list[float], values: list[float], n: int) -> float:
    """sum_{i=n}^{N} C(i-1, n-1) / C(N, n) value_(i), ranks by ascending proxy, with math.comb."""
    ranked = [v for _, v in sorted(zip(proxy, values), key=lambda t: t[0])]
    big_n = len(ranked)
    return sum(math.comb(i - 1, n - 1) / math.comb(big_n, n) * ranked[i - 1] for i in range(n, big_n + 1))


def test_bon_weights_by_hand():
    # N = 3: best of 1 is the mean; best of 2 is the 2nd smallest in 1 of the 3 pairs ({1,2}) and
    # the largest in 2 ({1,3}, {2,3}); best of 3 is the largest
    w = ovo.bon_weights(3, [1, 2, 3])
    assert w.ravel().tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0, 1 / 3, 2 / 3, 0, 0, 1], abs=1e-12)
    # every row sums to 1 (the hockey-stick identity), also where C(N, n) is astronomically large
    assert ovo.bon_weights(4096, [1, 7, 512, 4096]).sum(axis=1) == pytest.approx([1.0] * 4, abs=1e-9)
    with pytest.raises(ValueError, match="pool size"):
        ovo.bon_weights(4, [5])


def test_bon_estimate_matches_a_plain_loop_and_brute_force():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(3, 9)), rng.normal(size=(3, 9))
    ns = [1, 2, 3, 5, 9]
    got = ovo.bon_estimate(proxy, gold, ns)
    loop = [np.mean([_loop_estimate(p.tolist(), g.tolist(), n) for p, g in zip(proxy, gold)]) for n in ns]
    assert got.tolist() == pytest.approx(loop, abs=1e-12)
    # the average, over every n-subset of the pool, of the gold of its proxy-best member
    for n in ns:
        brute = np.mean(
            [
                np.mean([g[max(s, key=lambda i: p[i])] for s in itertools.combinations(range(9), n)])
                for p, g in zip(proxy, gold)
            ]
        )
        assert got[ns.index(n)] == pytest.approx(brute, abs=1e-12)
    # the proxy of the proxy-best never decreases with n
    own = ovo.bon_estimate(proxy, proxy, list(range(1, 10)))
    assert (np.diff(own) >= -1e-12).all()


def test_bon_estimate_is_unbiased_for_iid_best_of_n():
    """Over many pools drawn from a known discrete distribution, the estimate averages to the exact
    best-of-n value computed in closed form (evaluation.exact)."""
    import torch

    from rlhf_bench.evaluation import exact

    p = np.array([0.4, 0.3, 0.2, 0.1])
    proxy, gold = np.array([0.0, 1.0, 3.0, 2.0]), np.array([1.0, 2.0, -1.0, 4.0])
    rng = np.random.default_rng(1)
    pools = rng.choice(4, size=(20000, 6), p=p)
    tie_break = rng.random(size=pools.shape) * 1e-9  # ties are between equal responses: any order
    est = ovo.bon_estimate(proxy[pools] + tie_break, gold[pools], [1, 3, 6])
    for n, value in zip([1, 3, 6], est):
        ref = torch.tensor(p).log()
        bon = exact.best_of_n_logprobs(ref, torch.tensor(proxy), n)
        assert value == pytest.approx(exact.expectation(bon, torch.tensor(gold)), abs=0.02)


# --- the fits ------------------------------------------------------------------------------
def test_fits_recover_known_coefficients():
    d = np.linspace(0.1, 3.0, 25)
    bon = ovo.fit_form("bon", d, d * (1.2 - 0.5 * d))
    assert (bon.alpha, bon.beta, bon.r2) == pytest.approx((1.2, 0.5, 1.0), abs=1e-9)
    # d* = alpha / (2 beta) = 1.2, R* = alpha^2 / (4 beta) = 0.72
    assert (bon.peak_d, bon.peak_gain) == pytest.approx((1.2, 0.72), abs=1e-9)
    rl = ovo.fit_form("rl", d, d * (0.8 - 0.4 * np.log(d)))
    assert (rl.alpha, rl.beta, rl.r2) == pytest.approx((0.8, 0.4, 1.0), abs=1e-9)
    # d* = exp(alpha / beta - 1) = e, where dR/dd = alpha - beta (log d + 1) = 0; R* = beta d*
    assert (rl.peak_d, rl.peak_gain) == pytest.approx((math.e, 0.4 * math.e), abs=1e-9)
    grid = np.linspace(0.01, 6, 60001)
    assert grid[np.argmax(rl(grid))] == pytest.approx(math.e, abs=1e-3)
    # with noise the coefficients come back within a few standard errors; R^2 drops below 1
    rng = np.random.default_rng(0)
    noisy = ovo.fit_form("bon", d, d * (1.2 - 0.5 * d) + rng.normal(0, 0.02, d.size))
    assert noisy.alpha == pytest.approx(1.2, abs=0.05) and noisy.beta == pytest.approx(0.5, abs=0.03)
    assert 0.9 < noisy.r2 < 1.0
    # a curve that bends up never turns down: no peak
    assert ovo.fit_form("bon", d, d * (1 + 0.2 * d)).peak_d == math.inf


def test_peak_and_shape_checks_by_hand():
    d = np.array([0.5, 1.0, 1.5, 2.0])
    gain = np.array([0.4, 0.6, 0.5, 0.1])
    fit = ovo.fit_form("bon", d, gain)
    inside, lower, upper = ovo.peak_between_neighbours(d, gain, fit)
    assert (lower, upper) == (0.5, 1.5) and inside == (0.5 <= fit.peak_d <= 1.5)
    rising = np.array([0.1, 0.2, 0.3, 0.35])  # the highest point is the last: no observed peak
    assert not ovo.peak_between_neighbours(d, rising, ovo.fit_form("bon", d, rising))[0]
    ok, detail = ovo.rises_then_falls(gain, [0.1, 0.2, 0.3, 0.4], drop=0.3)
    assert ok and "fell 0.500" in detail
    assert not ovo.rises_then_falls(gain, [0.1, 0.2, 0.3, 0.4], drop=0.6)[0]  # fell too little
    assert not ovo.rises_then_falls(gain, [0.1, 0.9, 0.3, 0.4], drop=0.3)[0]  # the proxy fell too
    assert not ovo.rises_then_falls([0.1, 0.2, 0.3], [0, 1, 2], drop=0.0)[0]  # no interior peak
    # a curve that falls to -0.5 after its peak and comes back to -0.2 is named as such
    rl = {"gain": [0.0, 0.2, -0.5, -0.2], "step": [0, 8, 16, 24], "kl": [0.0, 0.1, 2.0, 3.0]}
    (note,) = ovo.shape_notes(rl, [])
    assert "falls to -0.500 (step 16, KL 2.00), then rises again to -0.200 (step 24" in note
    assert ovo.shape_notes({**rl, "gain": [0.0, 0.2, -0.2, -0.5]}, []) == []


# --- PPO evaluated along training ------------------------------------------------------------
TINY_WORLD = ["task=toy", *TOY_TINY, "eval.lm_eval.tasks=[]", *RM_FAST]
PPO_TINY = ["method=ppo", "method.steps=4", "method.prompts_per_step=8", "method.num_minibatches=2", "method.epochs=1"]


@pytest.mark.slow
def test_evaluating_along_training_leaves_ppo_unchanged(tmp_path):
    """method.eval_every logs held-out evaluations (exact on the toy world) at step 0, 2 and 4, and the
    run is otherwise the same run: the same training history, final policy and cost."""
    from rlhf_bench import pipeline
    from rlhf_bench.cli import load_config
    from rlhf_bench.errors import ConfigError

    paths = [f"paths.results_dir={tmp_path}/results", f"paths.artifacts_dir={tmp_path}/artifacts"]
    world = [*TINY_WORLD, "preferences.n_train=128", *paths]
    pipeline.run(load_config([*world, "method=sft"]))  # the stages, cached for both runs (equal costs)
    base = [*world, *PPO_TINY]
    plain = pipeline.run(load_config(base))
    probed = pipeline.run(load_config([*base, "method.eval_every=2"]))
    assert "ppo_eval" not in plain["history"]
    assert probed["history"]["ppo"] == plain["history"]["ppo"]
    assert probed["metrics"]["policy"] == plain["metrics"]["policy"]
    assert probed["cost"]["tokens_generated"] == plain["cost"]["tokens_generated"]
    rows = probed["history"]["ppo_eval"]
    assert [r["train/step"] for r in rows] == [0, 2, 4]
    # step 0 is the SFT policy: KL 0, and its exact gold reward is the SFT row's; the last is the final policy
    assert rows[0]["eval/exact_kl"] == pytest.approx(0.0, abs=1e-6) and rows[0]["eval/kl"] == pytest.approx(0, abs=1e-5)
    assert rows[0]["eval/exact_gold_reward"] == pytest.approx(plain["metrics"]["sft"]["exact_gold_reward"], abs=1e-6)
    assert rows[-1]["eval/exact_kl"] == pytest.approx(plain["metrics"]["policy"]["exact_kl"], abs=1e-6)
    assert rows[-1]["eval/exact_gold_reward"] == pytest.approx(
        plain["metrics"]["policy"]["exact_gold_reward"], abs=1e-6
    )
    curve = ovo.rl_curve(probed)
    assert curve["step"] == [0, 2, 4] and curve["gain"][0] == 0.0 and all(curve["exact"])
    with pytest.raises(ValueError, match="method.eval_every=0"):
        ovo.rl_curve(plain)
    with pytest.raises(ConfigError, match="method.eval_every must be >= 0"):
        load_config(["method.eval_every=-1"])


# --- end to end ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_reproduction_end_to_end(tmp_path, capsys):
    from rlhf_bench.repro import cli as repro_cli

    world = [
        o for o in TINY_WORLD if o not in ("task=toy", "eval.lm_eval.tasks=[]", "reward_model.min_gold_accuracy=0")
    ]
    args = [
        "rm_overoptimization",
        "--quick",
        f"--results-dir={tmp_path}/results",
        f"--artifacts-dir={tmp_path}/artifacts",
    ]
    assert repro_cli.main([*args, "--", *world]) == 0
    assert "verdict:" in capsys.readouterr().out
    (path,) = (tmp_path / "results" / "repro" / "rm_overoptimization").glob("*.json")
    verdict = json.loads(path.read_text())
    assert len(verdict["checks"]) == 9 and verdict["verdict"] == (
        "PASS" if all(c["passed"] for c in verdict["checks"]) else "FAIL"
    )
    data = verdict["data"]
    bon, rl, exact_bon = data["bon"], data["rl"], data["bon_exact"]
    assert bon["n"] == [1, 2, 4, 8, 16] and bon["gain"][0] == 0.0 and bon["pool_size"] == 64
    assert bon["kl"] == pytest.approx([ovo.bon_analytic_kl(n) for n in bon["n"]])
    assert all(b >= a - 1e-12 for a, b in zip(bon["proxy"], bon["proxy"][1:]))  # the proxy of best-of-n only rises
    # the exact best-of-n (256 responses a prompt, all scored): its KL never exceeds the analytic one
    assert all(e <= a + 1e-9 for e, a in zip(exact_bon["kl"], bon["kl"])) and exact_bon["gain"][0] == 0.0
    assert rl["step"] == [0, 2, 4] and all(rl["exact"])
    kinds = {(p["axis"], p["n_train"], str(p["backbone"])) for p in data["sweep"]}
    assert kinds == {
        ("data", 64, "policy"),
        ("data", 128, "policy"),
        ("size", 128, "{'n_layer': 1, 'd_model': 16, 'n_head': 2}"),
        ("size", 128, "policy"),
    }
    # the sweep's runs are the stages of ordinary runs, reused where the config is the same
    runs = {p.name for p in (tmp_path / "results" / "runs").iterdir()}
    assert len(runs) == 4 and set(verdict["runs"]) == runs  # PPO + 3 distinct reward models (128/policy twice)
