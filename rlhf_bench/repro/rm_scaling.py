"""Reproduction 4: reward-model accuracy grows with preference data and with model size
(Stiennon et al. 2020, Sec. 4.3 and Fig. 6; Gao et al. 2022 for the proxies of reproduction 2).

Stiennon et al. trained reward models from 160M to 13B parameters on 8k to 64k comparisons and
found held-out accuracy rising log-linearly in both: about +1.1 points per doubling of the data
and +1.8 per doubling of the model. Here the grid is ``preferences.n_train`` x the reward model's
backbone size (``reward_model.backbone``; the policy's own backbone is the largest), each point
one run of the pipeline (``method=sft``: the run only builds the stages and records the reward
model's held-out accuracy, ``metrics.reward_model.accuracy``).

The simulated annotator prefers a over b with probability sigmoid((g_a - g_b) / T) and then flips
its label with probability f. No reward model can beat the gold ordering against such labels: on
a pair with gold gap |g_a - g_b| = D the gold-better response is labelled chosen with probability

    q(D) = (1 - f) sigmoid(D / T) + f (1 - sigmoid(D / T))       (q = 1/2 on a tie)

and the Bayes classifier, which always picks it, is right with probability max(q, 1 - q) = q
(f <= 1/2). The ceiling of held-out accuracy is the mean of q over the held-out pairs (their gold
rewards are in the preference stage's ``eval.jsonl``), with a pool of annotators each pair at its
own annotator's temperature. Its standard error is that of a mean over the pairs; a reward
model's accuracy has the binomial standard error sqrt(a (1 - a) / n).

The checks: accuracy rises with data at every size, rises with size at the largest data size
(rank correlation and the end-to-end rise beyond noise), and never exceeds the ceiling beyond
noise. The published slopes per doubling are reported beside ours (log2-linear least squares),
not checked: they belong to another regime (human labels, 8k-64k comparisons, 160M-13B models).

Deviations from the paper:
  1. Labels from a simulated annotator on the toy world's gold reward, not from people.
  2. Two epochs over the pairs at every data size (Stiennon et al.: one), so the smallest data
     sizes also get few optimiser steps (64 pairs: 4, inside the 20-step warmup).
  3. One reward-model seed per grid point: the standard errors are the held-out pairs' only.
  4. Each preference stage draws its own held-out pairs (they change with ``n_train``); at one
     ``n_train`` every size is scored on the same pairs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_bench.repro.session import Check, Outcome, Session


def annotator_ceiling(
    gold_gap: np.ndarray, temperature: np.ndarray | float, flip_prob: float, deterministic: bool = False
) -> np.ndarray:
    """[N] |gold(a) - gold(b)| -> [N] probability q that the annotator labels the gold-better response
    chosen: the Bayes classifier's accuracy on each pair. ``deterministic``: the gold reward decides
    (``preferences.label=gold``), so q = 1 - f (ties are dropped from such pairs)."""
    gap = np.abs(np.asarray(gold_gap, dtype=np.float64))
    p = np.ones_like(gap) if deterministic else 1.0 / (1.0 + np.exp(-gap / np.asarray(temperature)))
    q = (1.0 - flip_prob) * p + flip_prob * (1.0 - p)
    return np.where(gap == 0, 0.5, np.maximum(q, 1.0 - q))


def pair_ceiling(rows: list[dict[str, Any]], preferences) -> dict[str, float]:
    """The Bayes ceiling of held-out accuracy on preference rows (with their gold rewards), under
    the annotator of ``preferences`` (a PreferenceConfig): mean, its standard error, and the
    realised accuracy of the gold ordering on these very labels (ties one half)."""
    from rlhf_bench.rewards.preferences import annotator_temperatures

    chosen = np.array([r["chosen_gold"] for r in rows], dtype=np.float64)
    rejected = np.array([r["rejected_gold"] for r in rows], dtype=np.float64)
    temperatures = annotator_temperatures(preferences).double().numpy()
    who = np.array([int(r.get("annotator", 0)) if len(temperatures) > 1 else 0 for r in rows])
    temperature = temperatures[who]
    deterministic = getattr(preferences, "label", "bradley_terry") == "gold"
    q = annotator_ceiling(chosen - rejected, temperature, preferences.flip_prob, deterministic)
    realised = np.where(chosen > rejected, 1.0, np.where(chosen == rejected, 0.5, 0.0))
    return {
        "ceiling": float(q.mean()),
        "ceiling_se": float(q.std(ddof=1) / math.sqrt(len(q))) if len(q) > 1 else 0.0,
        "gold_order_accuracy": float(realised.mean()),
        "ties": float((chosen == rejected).mean()),
        "pairs": len(q),
    }


def binomial_se(accuracy: float, n: int) -> float:
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n) if n > 0 else float("nan")


def slope_per_doubling(xs, ys) -> float:
    """Least-squares slope of ys against log2(xs): the change per doubling."""
    x = np.log2(np.asarray(xs, dtype=np.float64))
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan")
    return float(np.polyfit(x, np.asarray(ys, dtype=np.float64), 1)[0])


# --- the grid ----------------------------------------------------------------------------------
def settings(tolerance: dict[str, Any], quick: bool) -> dict[str, Any]:
    """The claim's tolerance, with its ``quick`` values in place under ``--quick``."""
    return {**tolerance, **(tolerance.get("quick") or {})} if quick else dict(tolerance)


def backbone_overrides(size: dict[str, int] | None) -> list[str]:
    """Overrides giving the reward model a backbone of ``size`` ({n_layer, d_model, n_head});
    None: the SFT policy's own backbone (the pipeline's default)."""
    if not size:
        return []
    return [f"reward_model.backbone.{key}={size[key]}" for key in ("n_layer", "d_model", "n_head")]


def parameters(folder: str | Path) -> int:
    """Parameters of the model saved in ``folder`` (its safetensors files), without loading it."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                total += math.prod(fh.get_slice(key).get_shape())
    return total


def grid_point(session: Session, n_train: int, size: dict[str, int] | None) -> dict[str, Any]:
    """One reward model of the grid: its run, held-out accuracy, and the ceiling on its held-out pairs."""
    from rlhf_bench.compose import load_config
    from rlhf_bench.tasks.data import read_jsonl

    record = session.run(f"preferences.n_train={n_train}", *backbone_overrides(size))
    rm = record["metrics"]["reward_model"]
    rows = read_jsonl(Path(record["artifacts"]["preferences"]["path"]) / "eval.jsonl")
    ceiling = pair_ceiling(rows, load_config(record["overrides"]).preferences)
    return {
        "run_id": record["run_id"],
        "n_train": n_train,
        "backbone": dict(size) if size else "policy",
        "parameters": parameters(record["artifacts"]["reward_model"]["path"]),
        "accuracy": rm["accuracy"],
        "accuracy_se": binomial_se(rm["accuracy"], ceiling["pairs"]),
        "gold_accuracy": rm["gold_accuracy"],
        **ceiling,
    }


def spearman(xs, ys) -> float:
    """Spearman's rank correlation; NaN for fewer than two points or a constant series."""
    from scipy.stats import spearmanr

    if len(xs) < 2 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return float("nan")
    return float(spearmanr(xs, ys).statistic)


def rise_check(label: str, xs: list[float], accs: list[float], ses: list[float], tol: dict) -> Check:
    """``accs`` rises with ``xs``: rank correlation >= ``trend_min_spearman`` and the last point
    above the first by more than ``se_multiplier`` standard errors (NaNs never pass)."""
    order = np.argsort(xs)
    xs, accs, ses = (np.asarray(v, dtype=np.float64)[order] for v in (xs, accs, ses))
    rho = spearman(xs, accs)
    rise, se = float(accs[-1] - accs[0]), math.hypot(ses[0], ses[-1])
    z, rho_min = float(tol["se_multiplier"]), float(tol["trend_min_spearman"])
    return Check(
        label,
        f"rho {rho:.2f}, {rise:+.3f}",
        f"rho >= {rho_min}, rise > {z:g} s.e.",
        rho >= rho_min and rise > z * se,
        "; ".join(f"{x:g}: {a:.3f} ± {s:.3f}" for x, a, s in zip(xs, accs, ses)) + f" (s.e. of the rise {se:.3f})",
    )


def ceiling_check(points: list[dict[str, Any]], tol: dict) -> Check:
    """No reward model is above the Bayes ceiling of its held-out pairs beyond noise."""
    z = float(tol["se_multiplier"])
    excess = [(p["accuracy"] - p["ceiling"]) / math.hypot(p["accuracy_se"], p["ceiling_se"]) for p in points]
    worst = int(np.argmax(excess))
    p = points[worst]
    return Check(
        "held-out accuracy stays below the annotator's Bayes ceiling",
        f"max {excess[worst]:+.2f} s.e.",
        f"<= {z:g} s.e. above",
        max(excess) <= z,
        f"closest: {p['parameters']:,} params, {p['n_train']} pairs: accuracy {p['accuracy']:.3f} vs ceiling "
        f"{p['ceiling']:.3f} ± {p['ceiling_se']:.3f} (gold ordering on these labels {p['gold_order_accuracy']:.3f})",
    )


def reproduce(session: Session) -> Outcome:
    tol = settings(session.claim.tolerance, session.quick)
    sizes, data = list(tol["rm_sizes"]), [int(n) for n in tol["data_sizes"]]
    points = [grid_point(session, n, size) for size in sizes for n in data]
    checks = []
    for size in sizes:
        row = [p for p in points if p["backbone"] == (dict(size) if size else "policy")]
        checks.append(
            rise_check(
                f"accuracy rises with preference data ({row[0]['parameters']:,}-parameter RM)",
                [p["n_train"] for p in row],
                [p["accuracy"] for p in row],
                [p["accuracy_se"] for p in row],
                tol,
            )
        )
    top = [p for p in points if p["n_train"] == max(data)]
    checks.append(
        rise_check(
            f"accuracy rises with RM size ({max(data)} pairs)",
            [p["parameters"] for p in top],
            [p["accuracy"] for p in top],
            [p["accuracy_se"] for p in top],
            tol,
        )
    )
    checks.append(ceiling_check(points, tol))
    return Outcome(
        checks, data={"points": points, **slopes(points, sizes, data)}, notes=notes(points, sizes, data, tol)
    )


def _row(points: list[dict[str, Any]], size) -> list[dict[str, Any]]:
    return [p for p in points if p["backbone"] == (dict(size) if size else "policy")]


def slopes(points: list[dict[str, Any]], sizes: list, data: list[int]) -> dict[str, Any]:
    """Accuracy points per doubling of the data (at each size) and of the parameters (at each data size)."""
    by_size = {
        str(_row(points, s)[0]["parameters"]): slope_per_doubling(
            [p["n_train"] for p in _row(points, s)], [p["accuracy"] for p in _row(points, s)]
        )
        for s in sizes
    }
    by_data = {}
    for n in data:
        column = [p for p in points if p["n_train"] == n]
        by_data[str(n)] = slope_per_doubling([p["parameters"] for p in column], [p["accuracy"] for p in column])
    return {"per_data_doubling": by_size, "per_size_doubling": by_data}


def notes(points: list[dict[str, Any]], sizes: list, data: list[int], tol: dict) -> list[str]:
    """The grid as a table (accuracy ± s.e., the ceiling in brackets), and the slopes against the published ones."""
    lines = ["held-out accuracy ± s.e. [Bayes ceiling] by reward-model parameters (rows) and preference pairs:"]
    for size in sizes:
        row = _row(points, size)
        cells = " | ".join(
            f"{p['n_train']}: {p['accuracy']:.3f}±{p['accuracy_se']:.3f} [{p['ceiling']:.3f}]" for p in row
        )
        lines.append(f"  {row[0]['parameters']:>9,} params ({row[0]['backbone']}): {cells}")
    s = slopes(points, sizes, data)
    published = tol.get("published_slopes", {})
    lines.append(
        "accuracy per doubling of data: "
        + ", ".join(f"{k} params {v * 100:+.1f} pts" for k, v in s["per_data_doubling"].items())
        + f" (Stiennon et al.: {published.get('data', 'n/a')} pts at 8k-64k human comparisons)"
    )
    lines.append(
        "accuracy per doubling of parameters: "
        + ", ".join(f"{k} pairs {v * 100:+.1f} pts" for k, v in s["per_size_doubling"].items())
        + f" (Stiennon et al.: {published.get('size', 'n/a')} pts at 160M-13B parameters)"
    )
    ties = np.mean([p["ties"] for p in points])
    lines.append(f"held-out pairs with tied gold rewards (the annotator's coin flips): {ties:.1%} on average")
    return lines
