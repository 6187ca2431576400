"""Reproduction 3: DPO vs PPO on the reward-KL frontier (Rafailov et al. 2023, Fig. 2 left).

The paper's IMDb setup: SFT samples 4 completions per prompt, every two of them a pair labelled
by the ground-truth reward (6 pairs a prompt, App. C.1); DPO is trained on the pairs at
beta in {0.05, 0.1, 1, 5}, PPO at several KL targets, with a reward model learned from the same
pairs (PPO) and with the ground-truth reward itself (PPO-GT). Every policy is placed at
(KL(pi || pi_ref), E[gold reward]); the claim is that DPO's frontier dominates both PPOs'.

Here, on two tasks (``conf/experiment/repro_dpo_ppo_{toy,sentiment}.yaml``):
  toy        the exact world: KL, gold reward and regret against the exact frontier are sums
             (``evaluation/exact.py``); the exact frontier is rebuilt from the SFT policy.
  sentiment  the embedded IMDb analogue: Monte-Carlo KL and the VADER gold reward.

A method's empirical frontier is the upper-left concave hull of its runs' (KL, reward) points and
the SFT point (0, r_SFT), non-decreasing in KL: a mixture of two policies earns the average
reward at no more than the average KL (KL is convex), so the chord between two runs is
attainable, and a larger KL budget can always spend less. Two frontiers are compared on the KL
range both reach, [0, min of the methods' largest KL]: both are piecewise linear, so the lowest
value of f_DPO - f_PPO and the area between them are exact at the breakpoints. "DPO dominates"
holds where f_DPO >= f_PPO - tol over the whole range and the area between them is positive;
tol is 0 on the toy (exact evaluation) and ``se_multiplier`` standard errors of the difference
of the gold-reward estimates on sentiment.

Deviations from the paper:
  1. One point per run (the final policy), not one every 100 training steps: 4 points a method.
  2. PPO's KL targets are scaled to each task's frontier (the toy's whole frontier spans
     KL 0 to 3.3 nats), with the controller's horizon scaled to the budget (see reproduction 5).
  3. One seed: the frontiers carry the training noise of a single run per setting.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from rlhf_bench.repro.session import Check, Outcome, Session

METHODS = ("dpo", "ppo", "ppo_gt")  # PPO-GT: PPO on the gold reward (reward_model=gold)
LABELS = {"dpo": "DPO", "ppo": "PPO", "ppo_gt": "PPO-GT"}


@dataclass
class Point:
    """One run on the reward-KL plane."""

    setting: str  # the method's knob, e.g. "beta=0.1"
    run_id: str
    kl: float
    reward: float
    reward_se: float = 0.0
    regret: float | None = None  # toy: the exact frontier's reward at this KL minus the reward
    above_frontier: bool | None = None
    mc_kl: float | None = None  # toy: the Monte-Carlo estimate beside the exact KL (the estimator training uses)
    mc_kl_se: float | None = None


# --- frontiers: pure functions of points ---------------------------------------------------
def upper_hull(points: list[tuple[float, float]], origin: tuple[float, float]) -> list[tuple[float, float]]:
    """The vertices of the upper-left concave hull of ``points`` and ``origin`` (KL, reward):
    from ``origin`` to the highest-reward point, KL and reward increasing, slopes decreasing.
    A KL left of the origin's (a negative Monte-Carlo estimate) counts as the origin's."""
    best: list[tuple[float, float]] = [origin]
    for kl, reward in sorted(points, key=lambda p: (p[0], -p[1])):
        p = (max(kl, origin[0]), reward)
        if p[1] <= best[-1][1]:
            continue  # dominated: no more reward than a point with no more KL
        if p[0] == best[-1][0]:  # more reward at the origin's KL: it replaces the origin
            best[-1] = p
            continue
        while len(best) >= 2 and _cross(best[-2], best[-1], p) >= 0:
            best.pop()  # best[-1] lies on or under the chord from best[-2] to p
        best.append(p)
    return best


def _cross(o, a, b) -> float:
    """> 0 when o -> a -> b turns left (counter-clockwise)."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def hull_value(hull: list[tuple[float, float]], kl: float) -> float:
    """The frontier's reward at ``kl``: linear between vertices, flat after the last one."""
    if kl >= hull[-1][0]:
        return hull[-1][1]
    for (k0, r0), (k1, r1) in zip(hull, hull[1:]):
        if kl <= k1:
            return r0 + (r1 - r0) * (kl - k0) / (k1 - k0)
    return hull[-1][1]


def compare(hull_a: list, hull_b: list, kl_max: float, tol: float = 0.0) -> dict:
    """f_a - f_b on [0, kl_max]: its lowest and highest value, the area between (positive where a
    is higher), the fraction of the range where a is higher, and whether a dominates b."""
    if kl_max <= 0:
        return {
            "kl_max": kl_max,
            "min_diff": math.nan,
            "max_diff": math.nan,
            "area": 0.0,
            "frac_a_higher": 0.0,
            "dominates": False,
        }
    knots = sorted({0.0, kl_max, *(k for k, _ in hull_a + hull_b if 0 < k < kl_max)})
    diff = [hull_value(hull_a, k) - hull_value(hull_b, k) for k in knots]
    area = sum((k1 - k0) * (d0 + d1) / 2 for k0, k1, d0, d1 in zip(knots, knots[1:], diff, diff[1:]))
    higher = sum(_positive_length(k0, k1, d0, d1) for k0, k1, d0, d1 in zip(knots, knots[1:], diff, diff[1:]))
    inner = diff[1:]  # at KL 0 both are the SFT point
    return {
        "kl_max": kl_max,
        "min_diff": min(inner),
        "max_diff": max(inner),
        "area": area,
        "frac_a_higher": higher / kl_max,
        "dominates": min(inner) >= -tol and area > 0,
    }


def _positive_length(k0: float, k1: float, d0: float, d1: float) -> float:
    """The length of [k0, k1] where the linear function from d0 to d1 is > 0."""
    if d0 > 0 and d1 > 0:
        return k1 - k0
    if d0 <= 0 and d1 <= 0:
        return 0.0
    root = k0 + (k1 - k0) * d0 / (d0 - d1)
    return (k1 - root) if d1 > 0 else (root - k0)


def mean_gap(upper: list[tuple[float, float]], hull: list[tuple[float, float]], kl_max: float) -> float:
    """(1/K) * integral over [0, K] of upper(k) - hull(k), ``upper`` a curve of (KL, reward) points
    (the exact frontier, interpolated linearly) and ``hull`` a method's frontier."""
    if kl_max <= 0:
        return math.nan
    knots = sorted({0.0, kl_max, *(k for k, _ in upper + hull if 0 < k < kl_max)})
    gap = [hull_value(upper, k) - hull_value(hull, k) for k in knots]
    return sum((k1 - k0) * (g0 + g1) / 2 for k0, k1, g0, g1 in zip(knots, knots[1:], gap, gap[1:])) / kl_max


# --- the runs ------------------------------------------------------------------------------
def run_overrides(method: str, value: float, task: str, sweep: dict, quick: dict | None) -> list[str]:
    """The overrides of one run: DPO at beta = ``value``, or PPO / PPO-GT at target KL ``value``;
    with ``quick``, the claim's small budget (its ``rm`` part for the runs that train a reward model:
    DPO's runs train the one PPO uses, as every run's pipeline does)."""
    if method == "dpo":
        own = ["method=dpo", f"method.beta={value}", *sweep.get("dpo", [])]
    else:
        gold = ["reward_model=gold"] if method == "ppo_gt" else []
        own = ["method=ppo", "method.adaptive_kl=true", f"method.target_kl={value}", *sweep.get("ppo", []), *gold]
    if quick is None:
        return own
    rm = [] if method == "ppo_gt" else quick.get("rm", [])
    family = "dpo" if method == "dpo" else "ppo"
    return [*own, *quick.get("all", []), *quick.get(task, []), *quick.get(family, []), *rm]


def to_point(record: dict, setting: str, exact: bool) -> Point:
    """A run's (KL, gold reward): the exact values on the toy world, Monte-Carlo estimates elsewhere."""
    m = record["metrics"]["policy"]
    if exact:
        return Point(
            setting,
            record["run_id"],
            m["exact_kl"],
            m["exact_gold_reward"],
            regret=m["regret"],
            above_frontier=m["above_frontier"],
            mc_kl=m["kl"],
            mc_kl_se=m["kl_se"],
        )
    return Point(setting, record["run_id"], m["kl"], m["gold_reward"], m["gold_reward_se"])


def run_sweep(session: Session, task: str, sweep: dict, quick: dict | None) -> tuple[dict, dict]:
    """Every run of one task: ({method: [Point]}, a record, for the SFT point and the frontier)."""
    exact = task == "toy"
    points: dict[str, list[Point]] = {}
    record = None
    for method in METHODS:
        knob, values = ("beta", sweep["dpo_beta"]) if method == "dpo" else ("target_kl", sweep["ppo_target_kl"])
        points[method] = []
        for value in values[: quick["runs"]] if quick else values:
            record = session.run(*run_overrides(method, value, task, sweep, quick), experiment=sweep["experiment"])
            points[method].append(to_point(record, f"{knob}={value}", exact))
    return points, record


def exact_frontier(record: dict):
    """The exact reward-KL frontier of a toy run's world, rebuilt from its config and SFT policy
    (as ``exact.run_metrics`` builds it; every run of the sweep shares it)."""
    from rlhf_bench.compose import load_config
    from rlhf_bench.evaluation import exact
    from rlhf_bench.pipeline import run_from_record

    ctx = run_from_record(record, load_config(record["overrides"]))
    task, cfg = ctx.task, ctx.cfg
    ref, token_ids, length = ctx.load_reference(), ctx.response_token_ids(), task.max_response_tokens
    symbols = exact.all_responses(len(token_ids), length)
    worlds = [
        exact.Prompt(
            exact.sequence_logprobs(ref, ctx.encode_prompts([p])[0], token_ids, length, cfg.eval.temperature),
            task.gold_reward_symbols(p, symbols),
        )
        for p in dict.fromkeys(task.eval_prompts)
    ]
    return exact.Frontier(worlds)


# --- the verdict ---------------------------------------------------------------------------
def dominance(task: str, points: dict, hulls: dict, rival: str, se_multiplier: float) -> tuple[Check, dict]:
    """Whether DPO's frontier dominates ``rival``'s on the KL range both reach."""
    kl_max = max(0.0, min(max((p.kl for p in points[m]), default=0.0) for m in ("dpo", rival)))
    se = [max((p.reward_se for p in points[m]), default=0.0) for m in ("dpo", rival)]
    tol = 0.0 if task == "toy" else se_multiplier * math.hypot(*se)
    stats = compare(hulls["dpo"], hulls[rival], kl_max, tol)
    if kl_max > 0:
        detail = (
            f"min(f_DPO - f_{LABELS[rival]}) = {stats['min_diff']:+.3f} (tolerance {tol:.3g}), "
            f"max {stats['max_diff']:+.3f}, area between {stats['area']:+.3f}"
        )
    else:
        detail = "no KL range beyond 0 that both reach: nothing shown"
    check = Check(
        f"{task}: DPO's frontier dominates {LABELS[rival]}'s",
        f"DPO higher on {stats['frac_a_higher']:.0%} of KL [0, {kl_max:.3g}]",
        "DPO higher at every KL (Fig. 2)",
        stats["dominates"],
        detail,
    )
    return check, {**stats, "tol": tol}


def sanity(points: dict, frontier, record: dict) -> Check:
    """No toy run above the exact frontier, and the frontier rebuilt here is the records' one."""
    runs = [p for pts in points.values() for p in pts]
    above = [f"{p.setting} ({p.run_id})" for p in runs if p.above_frontier]
    want = record["metrics"]["frontier"]
    differs = [k for k in ("kl_max", "reward_max", "reward_ref") if abs(getattr(frontier, k) - want[k]) > 1e-6]
    return Check(
        "toy: no run lies above the exact frontier",
        f"{len(above)} of {len(runs)} above",
        "0 (a point above it is a KL or log-prob bug)",
        not above and not differs,
        (f"above: {', '.join(above)}; " if above else "")
        + (f"rebuilt frontier differs from the records' in {differs}" if differs else "rebuilt frontier = records'"),
    )


def kl_agreement(points: dict, n_se: float) -> Check:
    """Each toy run's Monte-Carlo KL (the k1 estimator PPO's penalty and controller use) against its
    exact KL: a disagreement means the training saw another KL than the one the policy has."""
    runs = [(m, p) for m, pts in points.items() for p in pts]
    off = [(m, p) for m, p in runs if abs(p.mc_kl - p.kl) > n_se * p.mc_kl_se]
    return Check(
        f"toy: each run's Monte-Carlo KL agrees with its exact KL (within {n_se:g} s.e.)",
        f"{len(runs) - len(off)} of {len(runs)} agree",
        f"{len(runs)} of {len(runs)}",
        not off,
        "; ".join(f"{LABELS[m]} {p.setting}: MC {p.mc_kl:.3f} ± {p.mc_kl_se:.3f} vs exact {p.kl:.3f}" for m, p in off)
        or "all agree",
    )


def summarise(task: str, points: dict, hulls: dict, curve: list | None) -> list[str]:
    """One note per run and per method frontier (with its mean regret on the toy)."""
    notes = []
    for method, pts in points.items():
        for p in pts:
            regret = f", regret {p.regret:.3f}" if p.regret is not None else f" ± {p.reward_se:.3f}"
            notes.append(f"{task} {LABELS[method]} {p.setting}: KL {p.kl:.3f}, gold {p.reward:.3f}{regret}")
    for method, hull in hulls.items():
        vertices = " -> ".join(f"({k:.2f}, {r:.3f})" for k, r in hull)
        kl_max = max((p.kl for p in points[method]), default=0.0)
        gap = f"; mean regret over KL [0, {kl_max:.2f}]: {mean_gap(curve, hull, kl_max):.3f}" if curve else ""
        notes.append(f"{task} {LABELS[method]} frontier (KL, gold): {vertices}{gap}")
    return notes


def caveats(task: str, points: dict, checks: list[Check]) -> list[str]:
    """What the dominance checks rest on: where a method has no run (its frontier is a chord from
    the SFT point there), and on the toy whether the KL the methods were trained on was the policy's."""
    lowest = {m: min((p.kl for p in pts), default=math.nan) for m, pts in points.items()}
    out = [
        f"{task}: lowest-KL run of each method: "
        + ", ".join(f"{LABELS[m]} {k:.2f}" for m, k in lowest.items())
        + "; below it a method's frontier is the chord from the SFT point (a mixture with SFT)"
    ]
    agreement = next((c for c in checks if c.name.startswith(f"{task}: each run's Monte-Carlo KL")), None)
    if agreement is not None and not agreement.passed:
        out.append(
            f"{task}: {agreement.measured.replace(' agree', '')} runs agree; the others were trained against a KL "
            "their policy does not have: their Monte-Carlo KL (full-vocabulary log-probs, what PPO's KL penalty and "
            "controller see) is far from the exact KL of what the sampler draws (it excludes some tokens), so this "
            "task's dominance checks compare DPO with PPO runs whose KL was not under control"
        )
    return out


def reproduce(session: Session) -> Outcome:
    tol = session.claim.tolerance
    quick = tol["quick"] if session.quick else None
    checks, notes, data = [], [], {}
    for task, sweep in tol["sweeps"].items():
        points, record = run_sweep(session, task, sweep, quick)
        sft = record["metrics"]["sft"]
        origin = (0.0, sft["exact_gold_reward"] if task == "toy" else sft["gold_reward"])
        hulls = {m: upper_hull([(p.kl, p.reward) for p in pts], origin) for m, pts in points.items()}
        curve = None
        if task == "toy":
            frontier = exact_frontier(record)
            curve = [(kl, reward) for _, kl, reward in frontier.curve(64)]
            checks += [sanity(points, frontier, record), kl_agreement(points, float(tol["kl_agreement_se"]))]
        comparisons = {}
        for rival in ("ppo", "ppo_gt"):
            check, comparisons[rival] = dominance(task, points, hulls, rival, float(tol["se_multiplier"]))
            checks.append(check)
        notes += summarise(task, points, hulls, curve) + caveats(task, points, checks)
        data[task] = {
            "sft": origin,
            "points": {m: [asdict(p) for p in pts] for m, pts in points.items()},
            "frontiers": hulls,
            "comparisons": comparisons,
            "exact_frontier": curve,
        }
    return Outcome(checks, data=data, notes=notes)
