"""Is the difference real? The statistics of the leaderboard and of ``rlhf-bench-report compare``.

Each function is small and pure (numpy arrays in, numbers or arrays out); the array ones work on
any leading batch axes, so the calibration test runs 2,000 synthetic comparisons in one call.

The data of one configuration is a matrix ``x[s, p]``: the score (gold reward ...) of seed ``s``
on held-out prompt ``p``, every seed scored on the same prompts (the run's ``per_prompt.parquet``,
samples of one prompt averaged). Its model, a two-way layout with random effects:

    x[s, p] = mu + u_s + alpha_p + e_sp,   Var u = var_seed, Var alpha = var_prompt, Var e = var_resid

Two configurations A and B scored on the same prompts share ``alpha_p`` (a prompt's difficulty),
so the per-prompt differences ``d[s, p] = a[s, p] - b[s, p]`` lose it: with seed s of A paired
with seed s of B, the per-seed mean difference ``D_s = mean_p d[s, p]`` has variance

    Var D_s = var_seed(d) + var_resid(d) / P        (var_seed(d) = var_seed(A) + var_seed(B) ...)

and ``D_1 .. D_S`` are independent: the paired test is Student's t on them with S - 1 degrees of
freedom (``paired_difference``), exact under normality, so identical configurations reject at the
nominal rate and the power is the noncentral t's (``power_t``; Miller 2024, "Adding Error Bars to
Evals"; rliable, Agarwal et al. 2021, for the bootstrap, the IQM, the probability of improvement
and the performance profiles).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as sps

ALPHA = 0.05
POWER = 0.8


# --- one configuration -----------------------------------------------------------------------------
def bootstrap_ci(
    strata: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray] = np.mean,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(statistic, low, high): the stratified percentile bootstrap interval (rliable).

    ``strata``: the runs' scores of each task (each [n_k]); a resample draws n_k runs with
    replacement within each task, and ``statistic(values [B, N], axis=1)`` is taken over all N
    drawn runs together. One stratum is the plain bootstrap of the runs (seeds) of one configuration.
    """
    rng = np.random.default_rng(seed)
    parts = [np.asarray(s, dtype=float) for s in strata if len(s)]
    point = float(statistic(np.concatenate(parts)))
    drawn = np.concatenate([p[rng.integers(0, len(p), size=(n_resamples, len(p)))] for p in parts], axis=1)
    values = statistic(drawn, axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return point, float(low), float(high)


def clustered_se(values: np.ndarray, clusters: np.ndarray) -> float:
    """The standard error of ``mean(values)`` when the samples of a cluster (a prompt) are correlated:

        SE^2 = G / (G - 1) * sum_g (sum_{i in g} (y_i - ybar))^2 / N^2

    (the cluster-robust sandwich with the small-sample factor; Miller 2024, eq. 6). One sample per
    cluster gives the naive s / sqrt(N) exactly.
    """
    y = np.asarray(values, dtype=float)
    _, group = np.unique(np.asarray(clusters), return_inverse=True)
    n_groups = int(group.max()) + 1
    if n_groups < 2:
        return float("nan")
    sums = np.bincount(group, weights=y - y.mean(), minlength=n_groups)
    return float(np.sqrt(n_groups / (n_groups - 1) * np.sum(sums**2)) / len(y))


def iqm(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """The interquartile mean: the mean of the middle 50% (scipy's ``trim_mean`` cutting 25% each side)."""
    return sps.trim_mean(values, 0.25, axis=axis)


def variance_components(x: np.ndarray) -> tuple[float, float, float]:
    """(var_seed, var_prompt, var_resid) of ``x`` [S, P] by the two-way ANOVA without replication:

        MS_seed = P sum_s (m_s - g)^2 / (S-1),  MS_prompt = S sum_p (c_p - g)^2 / (P-1),
        MS_resid = sum (x - m_s - c_p + g)^2 / ((S-1)(P-1)),
        var_resid = MS_resid, var_seed = (MS_seed - MS_resid) / P, var_prompt = (MS_prompt - MS_resid) / S

    (the method-of-moments estimates, floored at 0). One seed: var_seed and var_resid are NaN.
    """
    x = np.asarray(x, dtype=float)
    s, p = x.shape
    g, m, c = x.mean(), x.mean(axis=1, keepdims=True), x.mean(axis=0, keepdims=True)
    if s < 2:
        return float("nan"), float(np.var(x, ddof=1)) if p > 1 else float("nan"), float("nan")
    ms_resid = float(np.sum((x - m - c + g) ** 2) / ((s - 1) * (p - 1))) if p > 1 else 0.0
    ms_seed = float(p * np.sum((m - g) ** 2) / (s - 1))
    ms_prompt = float(s * np.sum((c - g) ** 2) / (p - 1)) if p > 1 else float("nan")
    return max(0.0, (ms_seed - ms_resid) / p), max(0.0, (ms_prompt - ms_resid) / s), ms_resid


# --- two configurations ----------------------------------------------------------------------------
@dataclass
class Comparison:
    """A difference of means (A - B) with its interval, p-value, standard error and degrees of freedom
    (arrays when the inputs had batch axes); ``method`` says which test gave them."""

    diff: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p: np.ndarray
    se: np.ndarray
    dof: np.ndarray
    method: str


def _t_comparison(diff, se, dof, method: str, confidence: float = 0.95) -> Comparison:
    with np.errstate(divide="ignore", invalid="ignore"):
        t_stat = diff / se
    half = sps.t.ppf(0.5 + confidence / 2, dof) * se
    p = 2 * sps.t.sf(np.abs(t_stat), dof)
    return Comparison(diff, diff - half, diff + half, p, se, dof, method)


def paired_difference(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> Comparison:
    """A - B paired over shared seeds and prompts: ``a``, ``b`` [..., S, P] (seed s of A with seed s
    of B, prompt p with prompt p). Student's t on the per-seed mean differences D_s [..., S],
    S - 1 degrees of freedom (scipy's ``ttest_rel`` of the run means, batched).

    One shared seed: the seed's variance cannot be measured, and the interval is over prompts only
    (t on the P per-prompt differences; conditional on that seed's SFT, reward model and method
    draw), which ``method`` says.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    seeds, prompts = d.shape[-2], d.shape[-1]
    if seeds >= 2:
        per_seed = d.mean(axis=-1)
        se = per_seed.std(axis=-1, ddof=1) / np.sqrt(seeds)
        return _t_comparison(per_seed.mean(axis=-1), se, seeds - 1, f"paired t over {seeds} seeds", confidence)
    per_prompt = d[..., 0, :]
    se = per_prompt.std(axis=-1, ddof=1) / np.sqrt(prompts)
    method = f"paired t over {prompts} prompts, one seed or seed means (no seed variance)"
    return _t_comparison(per_prompt.mean(axis=-1), se, prompts - 1, method, confidence)


def welch_difference(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> Comparison:
    """A - B unpaired: Welch's t on the run means ``a`` [..., n], ``b`` [..., m] (scipy's
    ``ttest_ind(equal_var=False)``, batched); the Welch–Satterthwaite degrees of freedom."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n, m = a.shape[-1], b.shape[-1]
    va, vb = a.var(axis=-1, ddof=1) / n, b.var(axis=-1, ddof=1) / m
    se = np.sqrt(va + vb)
    with np.errstate(divide="ignore", invalid="ignore"):
        dof = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (m - 1))
    return _t_comparison(a.mean(axis=-1) - b.mean(axis=-1), se, dof, f"Welch t over {n} vs {m} runs", confidence)


def prompt_level_widths(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """(unpaired, paired) widths of the 95% interval of A - B at the prompt level (Miller 2024, sec. 4):
    unpaired from the two means' prompt-clustered standard errors, sqrt(SE_A^2 + SE_B^2); paired
    from the prompt-clustered standard error of the per-(seed, prompt) differences. ``a``, ``b``
    [S, P]. Both are conditional on the seeds (no seed variance): they show what pairing removes,
    the prompts' shared difficulty."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    clusters = np.broadcast_to(np.arange(a.shape[1]), a.shape).ravel()
    z = sps.norm.ppf(0.5 + confidence / 2)
    unpaired = np.hypot(clustered_se(a.ravel(), clusters), clustered_se(b.ravel(), clusters))
    paired = clustered_se((a - b).ravel(), clusters)
    return float(2 * z * unpaired), float(2 * z * paired)


def probability_of_improvement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """P(X > Y) + P(X = Y) / 2 for a run X of A and a run Y of B of the same task, averaged over tasks
    (rliable): the Mann–Whitney U of each task over n m. ``a``, ``b``: the runs' scores per task."""
    per_task = []
    for x, y in zip(a, b):
        x, y = np.asarray(x, dtype=float)[:, None], np.asarray(y, dtype=float)[None, :]
        per_task.append(float(np.mean((x > y) + 0.5 * (x == y))))
    return float(np.mean(per_task))


def performance_profile(strata: Sequence[np.ndarray], taus: np.ndarray) -> np.ndarray:
    """The run-score distribution (rliable): for each threshold tau, the fraction of runs scoring
    above it, averaged over tasks (each task weighs the same): [len(taus)]."""
    taus = np.asarray(taus, dtype=float)
    return np.mean([np.mean(np.asarray(s, dtype=float)[:, None] > taus[None, :], axis=0) for s in strata], axis=0)


# --- many rows ----------------------------------------------------------------------------------------
def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (NaN stays NaN and is not counted): the i-th smallest of m
    is max_{j <= i} min(1, (m - j + 1) p_(j)); reject where adjusted < alpha (family-wise error <= alpha)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def mark_against_best(adjusted: Sequence[float], is_best: Sequence[bool], alpha: float = ALPHA) -> list[str]:
    """Each row's mark: ``best``; ``≈ best`` where the Holm-adjusted p-value against the best is at
    least ``alpha`` (it cannot be told from the best); ``< best`` where it is below; ``untested``
    where there is no p-value (too few runs)."""
    marks = []
    for p, best in zip(adjusted, is_best):
        if best:
            marks.append("best")
        elif p != p:
            marks.append("untested")
        else:
            marks.append("≈ best" if p >= alpha else "< best")
    return marks


# --- power --------------------------------------------------------------------------------------------
def power_t(effect_over_se: np.ndarray, dof: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """The power of a two-sided t-test at level ``alpha`` when the true difference is
    ``effect_over_se`` standard errors: P(|T| > t_crit) for T ~ noncentral t(dof, effect/se)."""
    crit, nc = sps.t.ppf(1 - alpha / 2, dof), np.abs(effect_over_se)
    with np.errstate(invalid="ignore"):  # scipy's lower tail is NaN (for ~0) far from the centre
        power = sps.nct.sf(crit, dof, nc) + np.nan_to_num(sps.nct.cdf(-crit, dof, nc), nan=0.0)
    return np.where(np.isinf(nc), 1.0, power)


def min_detectable_difference(se: float, dof: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The difference a t-test with this standard error and these degrees of freedom detects with
    probability ``power`` (the root of ``power_t(delta / se, dof) = power``)."""
    if not (se > 0 and dof >= 1) or power_t(40.0, dof, alpha) < power:  # (scipy's nct is NaN far beyond)
        return float("nan")
    return float(optimize.brentq(lambda k: power_t(k, dof, alpha) - power, 0.0, 40.0)) * se


def _power(delta: float, se: float, dof: int, alpha: float) -> float:
    return 1.0 if se == 0 else float(power_t(abs(delta) / se, dof, alpha))


def paired_se(var_seed: float, var_resid: float, seeds: int, prompts: int) -> float:
    """The standard error of the paired mean difference: sqrt((var_seed + var_resid / P) / S),
    with the variance components of the per-prompt differences (``variance_components`` of d)."""
    return float(np.sqrt((var_seed + var_resid / prompts) / seeds))


def seeds_needed(
    delta: float, var_seed: float, var_resid: float, prompts: int, alpha: float = ALPHA, power: float = POWER
) -> int | None:
    """The fewest seeds (>= 2) with which the paired test detects ``delta`` with probability
    ``power``; None beyond 10,000 seeds."""
    if not delta:
        return None
    for seeds in range(2, 10_001):
        if _power(delta, paired_se(var_seed, var_resid, seeds, prompts), seeds - 1, alpha) >= power:
            return seeds
    return None


def prompts_needed(
    delta: float, var_seed: float, var_resid: float, seeds: int, alpha: float = ALPHA, power: float = POWER
) -> int | None:
    """The fewest held-out prompts with which ``seeds`` seeds detect ``delta`` with probability
    ``power``; None if even infinitely many cannot (the seed variance alone is too large) or it
    takes over 10**7."""
    if seeds < 2 or not delta or _power(delta, paired_se(var_seed, 0.0, seeds, 1), seeds - 1, alpha) < power:
        return None
    if _power(delta, paired_se(var_seed, var_resid, seeds, 1), seeds - 1, alpha) >= power:
        return 1
    lo, hi = 1, 2
    while _power(delta, paired_se(var_seed, var_resid, seeds, hi), seeds - 1, alpha) < power:
        lo, hi = hi, hi * 2
        if hi > 10**7:
            return None
    while hi - lo > 1:  # power grows with the prompts: bisect for the first that is enough
        mid = (lo + hi) // 2
        enough = _power(delta, paired_se(var_seed, var_resid, seeds, mid), seeds - 1, alpha) >= power
        lo, hi = (lo, mid) if enough else (mid, hi)
    return hi
