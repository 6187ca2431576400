"""Reproduction 2: reward-model overoptimization (Gao, Schulman, Hilton 2022, Scaling Laws for
Reward Model Overoptimization, Sec. 3, eq. 1-2).

A proxy reward model learned from limited preference data is optimised against, and the gold
reward (the task's own) is watched as the policy moves away from the SFT policy. With
d = sqrt(KL(pi || pi_SFT)) and R the gold reward relative to the SFT policy's, Gao et al. fit

    best-of-n:  R_bon(d) = d (alpha_bon - beta_bon d)      peak at d* = alpha / (2 beta),      R* = alpha^2 / (4 beta)
    RL:         R_RL(d)  = d (alpha_RL - beta_RL log d)    peak at d* = exp(alpha / beta - 1), R* = beta d*

Both are linear in (alpha, beta) (columns d, -d^2 and d, -d log d), so the fits are ordinary least
squares through the origin; R^2 = 1 - SS_res / SS_tot with SS_tot about the mean of R.

Best-of-n is measured as Gao et al. measured it (their App. on the estimator): from a pool of N
SFT samples of a prompt sorted by proxy score, the best of n draws without replacement has
expected gold reward

    E[gold of best-of-n] = sum_{i=n}^{N} C(i-1, n-1) / C(N, n) * gold_(i)     (i: rank by proxy, ascending)

the average over every n-subset of the pool of the gold reward of its proxy-best member: a
U-statistic, unbiased for best-of-n from n i.i.d. draws for every n <= N. The weights sum to 1
(hockey-stick identity). Its KL is the analytic log n - (n-1)/n. On the enumerable toy world the
exact best-of-n distribution is known too (``evaluation.exact.best_of_n_logprobs``), with its
exact KL (smaller than the analytic value once n is large: the response space has atoms), and
both are reported.

The RL curve is PPO against the proxy with a small KL coefficient, evaluated on held-out
prompts every ``method.eval_every`` steps (``evaluation.periodic``; exact KL and gold on the toy
world, the proxy by Monte Carlo).

How the peak moves: the best-of-n curve (pool estimator) of proxies trained on fewer or more
pairs (``preferences.n_train``) and with backbones of other sizes (``reward_model.backbone``),
each fitted the same way. Gao et al. find the gold peak higher with more data and with larger
reward models, and later with larger ones (alpha_bon grows and beta_bon shrinks with RM size).

Deviations from the paper:
  1. The gold reward is the toy world's function and the labels come from a simulated annotator
     on it (sigmoid of the gold gap / 0.1), not from a 6B gold reward model's scores.
  2. A small per-token KL penalty (0.01) in PPO's reward; Gao et al. mostly use none.
  3. Reward models train for a fixed 2 epochs at every data size (64 pairs: 4 optimiser steps).
  4. The standard errors are over the pool of samples (bootstrap); reward-model seeds are not
     repeated, so a trend across proxies carries their training noise unmeasured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from rlhf_bench.repro.session import Check, Outcome, Session
from rlhf_bench.rewards.reward import load_run_reward
from rlhf_bench.run import Run


# --- the estimator and the fits ------------------------------------------------------------
def bon_weights(pool_size: int, ns: list[int]) -> np.ndarray:
    """[len(ns), N]: w[k, i-1] = C(i-1, n_k - 1) / C(N, n_k), the probability that the best of a
    uniformly random n_k-subset of N ranked items is the i-th smallest (0 for i < n_k)."""
    from scipy.special import gammaln

    if any(n < 1 or n > pool_size for n in ns):
        raise ValueError(f"every n must be in [1, {pool_size}] (the pool size), got {ns}")
    i = np.arange(1, pool_size + 1, dtype=np.float64)[None, :]  # [1, N]
    n = np.asarray(ns, dtype=np.float64)[:, None]  # [K, 1]
    ok = i >= n
    safe = np.where(ok, i - n, 0.0)
    log_c = gammaln(i) - gammaln(n) - gammaln(safe + 1)  # log C(i-1, n-1)
    log_total = gammaln(pool_size + 1) - gammaln(n + 1) - gammaln(pool_size - n + 1)  # log C(N, n)
    return np.where(ok, np.exp(log_c - log_total), 0.0)


def bon_estimate(proxy: np.ndarray, values: np.ndarray, ns: list[int]) -> np.ndarray:
    """[P, N] proxy scores and [P, N] values (gold, or the proxy itself) of a pool of N samples for
    each of P prompts -> [len(ns)]: E[value of the proxy-best of n], averaged over the prompts."""
    proxy, values = np.atleast_2d(proxy), np.atleast_2d(values)
    order = np.argsort(proxy, axis=1, kind="stable")
    ranked = np.take_along_axis(values, order, axis=1)  # [P, N] values by ascending proxy
    return (bon_weights(proxy.shape[1], ns) @ ranked.T).mean(axis=1)


def bon_analytic_kl(n: int) -> float:
    """KL(best-of-n || pi_SFT) = log n - (n-1)/n (continuous scores; Stiennon et al. 2020, App. G.3)."""
    return math.log(n) - (n - 1) / n


@dataclass
class Fit:
    """Least squares of R(d) = d (alpha - beta d) (``form="bon"``) or d (alpha - beta log d) (``"rl"``)."""

    form: str
    alpha: float
    beta: float
    r2: float
    peak_d: float  # the fit's argmax (inf when it never turns down: beta <= 0)
    peak_gain: float  # R at peak_d
    points: int

    def __call__(self, d: np.ndarray) -> np.ndarray:
        return d * (self.alpha - self.beta * _shape(self.form, d))

    def to_dict(self) -> dict:
        return asdict(self)


def _shape(form: str, d: np.ndarray) -> np.ndarray:
    """The second column divided by -d: d (bon) or log d (rl; 0 at d = 0, where d log d -> 0)."""
    if form == "bon":
        return d
    if form == "rl":
        return np.log(np.where(d > 0, d, 1.0))
    raise ValueError(f"unknown functional form {form!r}: bon or rl")


def fit_form(form: str, d, gain) -> Fit:
    """Fit ``form`` to points (d, gain) by ordinary least squares through the origin."""
    d, gain = np.asarray(d, dtype=np.float64), np.asarray(gain, dtype=np.float64)
    design = np.stack([d, -d * _shape(form, d)], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, gain, rcond=None)
    residual = gain - design @ np.array([alpha, beta])
    total = float(((gain - gain.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else float("nan")
    if beta <= 0:
        peak_d, peak_gain = math.inf, math.inf
    elif form == "bon":
        peak_d, peak_gain = alpha / (2 * beta), alpha**2 / (4 * beta)
    else:
        peak_d = math.exp(alpha / beta - 1)
        peak_gain = beta * peak_d
    return Fit(form, float(alpha), float(beta), r2, float(peak_d), float(peak_gain), len(d))


def observed_peak(d, gain) -> tuple[int, float, float]:
    """(index, d, gain) of the highest observed point."""
    k = int(np.argmax(gain))
    return k, float(d[k]), float(gain[k])


def peak_between_neighbours(d, gain, fit: Fit) -> tuple[bool, float, float]:
    """Whether the fit's peak lies between the d of the points on either side of the observed
    peak (the resolution of the measured curve): (inside, lower d, upper d). A curve whose highest
    point is its last has no observed peak: never inside."""
    order = np.argsort(d, kind="stable")
    d, gain = np.asarray(d)[order], np.asarray(gain)[order]
    k, _, _ = observed_peak(d, gain)
    lower = float(d[k - 1]) if k > 0 else 0.0
    upper = float(d[k + 1]) if k + 1 < len(d) else math.inf
    return k + 1 < len(d) and lower <= fit.peak_d <= upper, lower, upper


def rises_then_falls(gain, proxy, drop: float) -> tuple[bool, str]:
    """Along a curve ordered by KL: the proxy ends higher than it was at the gold peak, and the
    gold peak is interior with the last point at least ``drop`` below it."""
    gain, proxy = np.asarray(gain), np.asarray(proxy)
    k = int(np.argmax(gain))
    fell = float(gain[k] - gain[-1])
    proxy_up = float(proxy[-1] - proxy[k])
    ok = 0 < k < len(gain) - 1 and fell >= drop and proxy_up > 0
    return ok, (
        f"gold gain peaks at point {k + 1}/{len(gain)} ({gain[k]:+.3f}) and ends {gain[-1]:+.3f} "
        f"(fell {fell:.3f}, needs >= {drop:.3f}); proxy from the gold peak to the end: {proxy_up:+.3f}"
    )


# --- the measurements ------------------------------------------------------------------------
def stage_context(record: dict[str, Any]):
    """A Run on the stages a finished run used (its SFT policy and reward model), rebuilt
    from the run's own overrides; the cached base stage gives the tokenizer."""
    from rlhf_bench import pipeline
    from rlhf_bench.compose import load_config

    return pipeline.run_from_record(record, load_config(record["overrides"]))


@dataclass
class Pool:
    """N SFT samples for each of P prompts: prompt and response ids, and the gold reward [P, N]."""

    prompts: list[str]
    batches: list[list[tuple[torch.Tensor, ...]]]  # per prompt: (prompt ids, mask, response ids, mask) chunks
    gold: np.ndarray

    @property
    def size(self) -> int:
        return self.gold.shape[1]


@torch.no_grad()
def sample_pool(ctx: Run, size: int, seed: int, max_prompts: int, batch_size: int = 1024) -> Pool:
    """``size`` samples from the SFT policy (at ``eval.temperature``) for each distinct eval prompt."""
    ref = ctx.load_reference()
    generator = torch.Generator(device=ctx.device).manual_seed(seed)
    prompts = list(dict.fromkeys(ctx.task.eval_prompts))[:max_prompts]
    batches, gold = [], []
    for prompt in prompts:
        chunks, values = [], []
        for start in range(0, size, batch_size):
            b = min(batch_size, size - start)
            ids, mask = ctx.pad_prompts(ctx.encode_prompts([prompt] * b))
            response, response_mask = ctx.sample(ref, ids, mask, ctx.cfg.eval.temperature, generator)
            chunks.append((ids, mask, response, response_mask))
            values.append(ctx.gold([prompt] * b, response, response_mask))
        batches.append(chunks)
        gold.append(torch.cat(values).double().numpy())
    return Pool(prompts, batches, np.stack(gold))


@torch.no_grad()
def score_pool(ctx: Run, pool: Pool) -> np.ndarray:
    """[P, N] proxy scores of the pool under the context's reward model (normalised as in training)."""
    reward = load_run_reward(ctx)
    return np.stack(
        [torch.cat([ctx.score(reward, *chunk).double().cpu() for chunk in chunks]).numpy() for chunks in pool.batches]
    )


def bon_curve(proxy: np.ndarray, gold: np.ndarray, ns: list[int], bootstrap: int, seed: int) -> dict[str, list]:
    """Gao et al.'s best-of-n curve from a pool: for each n the analytic KL, d, the gold and proxy
    estimates, the gold gain over n = 1, and its standard error (bootstrap over each prompt's pool)."""
    gold_bon, proxy_bon = bon_estimate(proxy, gold, ns), bon_estimate(proxy, proxy, ns)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        index = rng.integers(0, proxy.shape[1], size=proxy.shape)
        sample = bon_estimate(np.take_along_axis(proxy, index, 1), np.take_along_axis(gold, index, 1), ns)
        draws.append(sample - sample[0])
    kl = [bon_analytic_kl(n) for n in ns]
    d = np.sqrt(kl)
    peaks = [fit_form("bon", d[1:], draw[1:]).peak_d for draw in draws]  # n = 1 is d = 0: no information
    peaks = [p for p in peaks if math.isfinite(p)]
    return {
        "n": list(ns),
        "kl": kl,
        "d": d.tolist(),
        "gold": gold_bon.tolist(),
        "proxy": proxy_bon.tolist(),
        "gain": (gold_bon - gold_bon[0]).tolist(),
        "gain_se": np.std(draws, axis=0, ddof=1).tolist() if bootstrap > 1 else [0.0] * len(ns),
        "peak_d_se": float(np.std(peaks, ddof=1)) if len(peaks) > 1 else float("nan"),
    }


@torch.no_grad()
def exact_bon_curve(ctx: Run, ns: list[int], batch_size: int = 4096) -> dict[str, list]:
    """Best-of-n of the SFT policy under the proxy, exactly, on an enumerable world (every response of
    every eval prompt scored by the proxy): the exact KL, gold and proxy for each n."""
    from rlhf_bench.evaluation import exact

    ref, reward = ctx.load_reference(), load_run_reward(ctx)
    token_ids, length = ctx.response_token_ids(), ctx.task.max_response_tokens
    symbols = exact.all_responses(len(token_ids), length)
    responses = torch.as_tensor(token_ids)[symbols]
    worlds = []
    for prompt in dict.fromkeys(ctx.task.eval_prompts):
        ids = ctx.encode_prompts([prompt])[0]
        ref_logp = exact.sequence_logprobs(ref, ids, token_ids, length, ctx.cfg.eval.temperature)
        proxy = []
        for start in range(0, len(responses), batch_size):
            chunk = responses[start : start + batch_size].to(ctx.device)
            prompt_ids = torch.as_tensor(ids, device=ctx.device).expand(len(chunk), -1)
            ones = torch.ones_like
            proxy.append(ctx.score(reward, prompt_ids, ones(prompt_ids), chunk, ones(chunk)).double().cpu())
        worlds.append((ref_logp, torch.cat(proxy), ctx.task.gold_reward_symbols(prompt, symbols)))
    out: dict[str, list] = {"n": list(ns), "kl": [], "gold": [], "proxy": []}
    for n in ns:
        bons = [exact.best_of_n_logprobs(lp, proxy, n) for lp, proxy, _ in worlds]
        out["kl"].append(float(np.mean([exact.best_of_n_kl(lp, proxy, n) for lp, proxy, _ in worlds])))
        out["gold"].append(float(np.mean([exact.expectation(b, g) for b, (_, _, g) in zip(bons, worlds)])))
        out["proxy"].append(float(np.mean([exact.expectation(b, p) for b, (_, p, _) in zip(bons, worlds)])))
    out["d"] = [math.sqrt(k) for k in out["kl"]]
    out["gain"] = [g - out["gold"][0] for g in out["gold"]]
    return out


def rl_curve(record: dict[str, Any]) -> dict[str, list]:
    """PPO's held-out evaluations along training (``method.eval_every``; the first row is step 0,
    the SFT policy): exact KL and gold where the world is enumerable, Monte Carlo otherwise."""
    rows = record["history"].get("ppo_eval") or []
    if not rows:
        raise ValueError(f"run {record['run_id']} logged no evaluations along training (method.eval_every=0)")
    exact_world = "eval/exact_kl" in rows[0]
    kl_key, gold_key = ("eval/exact_kl", "eval/exact_gold_reward") if exact_world else ("eval/kl", "eval/gold_reward")
    kl = [max(0.0, r[kl_key]) for r in rows]
    return {
        "step": [int(r["train/step"]) for r in rows],
        "kl": kl,
        "d": [math.sqrt(k) for k in kl],
        "gold": [r[gold_key] for r in rows],
        "gain": [r[gold_key] - rows[0][gold_key] for r in rows],
        "gain_se": [r["eval/gold_reward_se"] * (0 if exact_world else 1) for r in rows],
        "proxy": [r["eval/proxy_reward"] for r in rows],
        "proxy_se": [r["eval/proxy_reward_se"] for r in rows],
        "exact": [exact_world] * len(rows),
    }


# --- the verdict -------------------------------------------------------------------------------
FORMS = {"bon": "d (alpha - beta d)", "rl": "d (alpha - beta log d)"}


def curve_checks(label: str, curve: dict[str, list], form: str, tol: dict) -> tuple[list[Check], Fit]:
    """The fit of ``form`` to a curve, whether its peak is where the curve's is, and whether the
    proxy keeps rising while the gold reward peaks and falls."""
    d, gain, se = (np.asarray(curve[k], dtype=np.float64) for k in ("d", "gain", "gain_se"))
    fit = fit_form(form, d[d > 0], gain[d > 0])  # d = 0 is the SFT policy itself: gain 0 by definition
    k, d_obs, gain_obs = observed_peak(d, gain)
    inside, lower, upper = peak_between_neighbours(d, gain, fit)
    z, r2_min = float(tol["se_multiplier"]), float(tol["r2_min"])
    drop = max(float(tol["drop_fraction"]) * gain_obs, z * math.hypot(se[k], se[-1]))
    shape_ok, shape = rises_then_falls(gain, curve["proxy"], drop)
    checks = [
        Check(
            f"{label}: gold gain = {FORMS[form]} fits (R^2)",
            fit.r2,
            f">= {r2_min}",
            fit.r2 >= r2_min and fit.points > 2,  # two points fit any two-parameter form exactly
            f"alpha {fit.alpha:.3f}, beta {fit.beta:.3f} over {fit.points} points with d > 0",
        ),
        Check(
            f"{label}: the fit's peak d* lies between the observed peak's neighbours",
            fit.peak_d,
            f"in [{lower:.3f}, {upper:.3f}]",
            inside,
            f"observed peak at d {d_obs:.3f} (KL {d_obs**2:.3f}), gain {gain_obs:+.3f}; "
            f"the fit's peak gain {fit.peak_gain:+.3f}",
        ),
        Check(f"{label}: the proxy keeps rising while gold peaks and falls", shape_ok, True, shape_ok, shape),
    ]
    return checks, fit


# --- the runs -----------------------------------------------------------------------------------
def sweep(session: Session, pool: Pool, sft_path: str, tol: dict) -> list[dict[str, Any]]:
    """Best-of-n curves (pool estimator) of proxies trained on more or fewer pairs, and with
    backbones of other sizes, all scored on the same pool of SFT samples."""
    from rlhf_bench.repro.rm_scaling import backbone_overrides, parameters

    grid = [("data", int(n), None) for n in tol["data_sizes"]]
    grid += [("size", int(tol["size_sweep_n_train"]), size) for size in tol["rm_sizes"]]
    points = []
    for axis, n_train, size in grid:
        record = session.run(
            f"preferences.n_train={n_train}", *backbone_overrides(size), experiment=tol["sweep_experiment"]
        )
        if record["artifacts"]["sft"]["path"] != sft_path:
            raise ValueError(f"run {record['run_id']} has another SFT policy than the pool's ({sft_path})")
        curve = bon_curve(score_pool(stage_context(record), pool), pool.gold, tol["bon_n"], tol["bootstrap"], 1)
        d, gain = np.asarray(curve["d"]), np.asarray(curve["gain"])
        fit, k = fit_form("bon", d[1:], gain[1:]), int(np.argmax(gain))
        points.append(
            {
                "axis": axis,
                "n_train": n_train,
                "backbone": dict(size) if size else "policy",
                "parameters": parameters(record["artifacts"]["reward_model"]["path"]),
                "rm_accuracy": record["metrics"]["reward_model"]["accuracy"],
                "rm_gold_accuracy": record["metrics"]["reward_model"]["gold_accuracy"],
                "peak_gain": float(gain[k]),
                "peak_gain_se": float(curve["gain_se"][k]),
                "peak_n": int(curve["n"][k]),
                "fit": fit.to_dict(),
                "fit_peak_d_se": curve["peak_d_se"],
                "curve": curve,
            }
        )
    return points


def sweep_checks(points: list[dict[str, Any]], tol: dict) -> list[Check]:
    """Gao et al.: the gold peak is higher with more data and with larger proxies, and with larger
    proxies it comes later (alpha_bon grows and beta_bon shrinks with RM size)."""
    from rlhf_bench.repro.rm_scaling import rise_check as trend_check

    data = [p for p in points if p["axis"] == "data"]
    size = [p for p in points if p["axis"] == "size"]
    return [
        trend_check(
            "best-of-n gold peak rises with the proxy's preference data",
            [p["n_train"] for p in data],
            [p["peak_gain"] for p in data],
            [p["peak_gain_se"] for p in data],
            tol,
        ),
        trend_check(
            "best-of-n gold peak rises with the proxy's size (parameters)",
            [p["parameters"] for p in size],
            [p["peak_gain"] for p in size],
            [p["peak_gain_se"] for p in size],
            tol,
        ),
        trend_check(
            "best-of-n peak moves to larger d with the proxy's size (fit's d*)",
            [p["parameters"] for p in size],
            [p["fit"]["peak_d"] for p in size],
            [p["fit_peak_d_se"] for p in size],
            tol,
        ),
    ]


def reproduce(session: Session) -> Outcome:
    from rlhf_bench.repro.rm_scaling import settings

    tol = settings(session.claim.tolerance, session.quick)
    ns = [int(n) for n in tol["bon_n"]]
    main = session.run(*tol.get("run_overrides", []))  # PPO against the proxy, evaluated along training
    ctx = stage_context(main)
    pool = sample_pool(ctx, int(tol["pool_size"]), int(tol["pool_seed"]), int(tol["pool_prompts"]))
    bon = bon_curve(score_pool(ctx, pool), pool.gold, ns, int(tol["bootstrap"]), 0)
    rl = rl_curve(main)
    bon_checks, bon_fit = curve_checks("best-of-n", bon, "bon", tol)
    rl_checks, rl_fit = curve_checks("RL (PPO)", rl, "rl", tol)
    exact = exact_bon_curve(ctx, ns) if tol.get("exact_bon") and ctx.response_token_ids() is not None else None
    points = sweep(session, pool, main["artifacts"]["sft"]["path"], tol)
    data = {
        "bon": {**bon, "fit": bon_fit.to_dict(), "pool_size": pool.size, "prompts": pool.prompts},
        "rl": {**rl, "fit": rl_fit.to_dict(), "run_id": main["run_id"]},
        "bon_exact": exact,
        "sweep": points,
        "rm": main["metrics"]["reward_model"],
    }
    if exact is not None:
        d = np.asarray(exact["d"])
        data["bon_exact"]["fit"] = fit_form("bon", d[d > 0], np.asarray(exact["gain"])[d > 0]).to_dict()
    return Outcome([*bon_checks, *rl_checks, *sweep_checks(points, tol)], data, notes=overview(data))


def overview(data: dict[str, Any]) -> list[str]:
    """The curves, fits and sweep in a few lines (the numbers behind the checks)."""
    bon, rl, exact = data["bon"], data["rl"], data["bon_exact"]
    fb, fr = bon["fit"], rl["fit"]
    lines = [
        f"proxy RM: held-out accuracy {data['rm']['accuracy']:.3f}, agreement with gold {data['rm']['gold_accuracy']:.3f}",
        f"best-of-n, pool of {bon['pool_size']} SFT samples x {len(bon['prompts'])} prompts, KL = log n - (n-1)/n: "
        + ", ".join(f"n={n}: {g:+.3f}" for n, g in zip(bon["n"], bon["gain"]))
        + " (gold gain); proxy "
        + f"{bon['proxy'][0]:+.3f} -> {bon['proxy'][-1]:+.3f}",
        f"best-of-n fit: alpha {fb['alpha']:.3f}, beta {fb['beta']:.3f}, R^2 {fb['r2']:.3f}, "
        f"peak d* {fb['peak_d']:.3f} (KL {fb['peak_d'] ** 2:.2f}), gain {fb['peak_gain']:+.3f}",
        f"RL (PPO, {len(rl['step']) - 1} held-out evaluations to step {rl['step'][-1]}): "
        + ", ".join(f"step {s}: KL {k:.2f} {g:+.3f}" for s, k, g in zip(rl["step"], rl["kl"], rl["gain"])),
        f"RL fit: alpha {fr['alpha']:.3f}, beta {fr['beta']:.3f}, R^2 {fr['r2']:.3f}, "
        f"peak d* {fr['peak_d']:.3f} (KL {fr['peak_d'] ** 2:.2f}), gain {fr['peak_gain']:+.3f}; proxy "
        f"{rl['proxy'][0]:+.3f} -> {rl['proxy'][-1]:+.3f}",
    ]
    if exact is not None:
        z = [abs(g - e) / max(s, 1e-9) for g, e, s in zip(bon["gain"], exact["gain"], bon["gain_se"])]
        fe = exact["fit"]
        lines.append(
            f"exact best-of-n (every response scored): pool estimate - exact gold gain within {max(z[1:]):.1f} s.e. "
            f"over n >= 2; exact KL at n={exact['n'][-1]}: {exact['kl'][-1]:.3f} vs analytic {bon['kl'][-1]:.3f}; "
            f"fit on the exact KL: R^2 {fe['r2']:.3f}, d* {fe['peak_d']:.3f}, gain {fe['peak_gain']:+.3f}"
        )
    lines += shape_notes(rl, data["sweep"])
    for p in data["sweep"]:
        f = p["fit"]
        lines.append(
            f"sweep ({p['axis']}): {p['n_train']} pairs, {p['parameters']:,} params ({p['backbone']}): RM accuracy "
            f"{p['rm_accuracy']:.3f}; best-of-n peak {p['peak_gain']:+.3f} ± {p['peak_gain_se']:.3f} at n={p['peak_n']}; "
            f"fit alpha {f['alpha']:.3f} beta {f['beta']:.3f} R^2 {f['r2']:.3f} d* {f['peak_d']:.3f} ± {p['fit_peak_d_se']:.3f}"
        )
    return lines


def shape_notes(rl: dict[str, list], sweep: list[dict[str, Any]]) -> list[str]:
    """What the functional forms cannot see: a curve that falls and then rises again (the RL form
    allows one turn), and the coefficients' trend with the proxy's size (Gao et al.: alpha up, beta down)."""
    gain = np.asarray(rl["gain"])
    k = int(np.argmax(gain))
    low = k + int(np.argmin(gain[k:]))
    lines = []
    if low + 1 < len(gain) and gain[low + 1 :].max() > gain[low]:
        back = int(low + 1 + np.argmax(gain[low + 1 :]))
        lines.append(
            f"the RL curve is not single-peaked: after its peak it falls to {gain[low]:+.3f} (step {rl['step'][low]}, "
            f"KL {rl['kl'][low]:.2f}), then rises again to {gain[back]:+.3f} (step {rl['step'][back]}, KL {rl['kl'][back]:.2f})"
        )
    size = sorted((p for p in sweep if p["axis"] == "size"), key=lambda p: p["parameters"])
    if len(size) > 1:
        lines.append(
            "best-of-n coefficients by proxy size (parameters: alpha, beta): "
            + "; ".join(f"{p['parameters']:,}: {p['fit']['alpha']:.3f}, {p['fit']['beta']:.3f}" for p in size)
        )
    return lines
