"""Leaderboard plots, built from run records and their per-prompt rows (PNG; embedded in the HTML).

- ``frontier``: gold reward vs KL to SFT, one point per configuration with its 95% intervals
  (bootstrap over seeds for gold, t over seeds for KL), and the SFT policy at KL 0 (the
  reward-KL frontier of Rafailov et al. 2023, Fig. 2);
- ``prompt_differences``: each row's per-prompt gold difference to the best row of its group
  (shared seeds averaged), with the paired mean difference and its interval;
- ``profiles``: performance profiles (rliable): the fraction of runs whose win rate vs SFT exceeds
  each threshold, per method, tasks weighing the same;
- ``overoptimization``: gold vs proxy reward over training for the online methods (Gao et al. 2022);
- ``training``: the proxy reward (objective/score), or the loss, per logged step.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from rlhf_bench.report import stats
from rlhf_bench.report.records import score_matrix


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    """The figure as PNG bytes (and closed)."""
    plt = _plt()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _label(row) -> str:
    text = f"{row['method']}" + (f" ({row['settings']})" if row["settings"] else "")
    return (text if row.get("seed_scope", "method") == "method" else f"{text} [{row['seed_scope']} seeds]")[:60]


def frontier(table: pd.DataFrame, runs: pd.DataFrame):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 5))
    for _, row in table.iterrows():
        low, high = row["gold_reward_boot_low"], row["gold_reward_boot_high"]
        yerr = [[row["gold_reward"] - low], [high - row["gold_reward"]]] if low == low else None
        xerr = row["kl_ci95"] if row["kl_ci95"] == row["kl_ci95"] else None
        ax.errorbar(row["kl"], row["gold_reward"], xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=_label(row))
    for task, group in runs.groupby("task"):
        sft = group["sft_gold_reward"].dropna().to_numpy()
        if len(sft):
            point, low, high = stats.bootstrap_ci([sft])
            ax.errorbar(
                0.0, point, yerr=[[point - low], [high - point]], fmt="k*", ms=12, capsize=3, label=f"SFT ({task})"
            )
    ax.set(xlabel="KL(policy || SFT), nats per response", ylabel="gold reward", title="reward-KL frontier (95% CIs)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def prompt_differences(table: pd.DataFrame, runs: pd.DataFrame, per_prompt: pd.DataFrame):
    """Box plots of per-prompt differences to the best row of the group; None without per-prompt rows."""
    boxes, labels, means = [], [], []
    for _, group in table.groupby("rank_group", sort=False):
        if group["gold_reward"].isna().all():
            continue
        best = group.loc[group["gold_reward"].idxmax()]
        mb = score_matrix(per_prompt, runs[runs["config_key"] == best["config_key"]])
        for _, row in group.iterrows():
            ma = score_matrix(per_prompt, runs[runs["config_key"] == row["config_key"]])
            if row["config_key"] == best["config_key"] or ma.empty or mb.empty:
                continue
            seeds, prompts = ma.index.intersection(mb.index), ma.columns.intersection(mb.columns)
            if not len(seeds) or not len(prompts):
                continue
            d = (ma.loc[seeds, prompts] - mb.loc[seeds, prompts]).mean(axis=0).dropna().to_numpy()
            boxes.append(d)
            labels.append(f"{_label(row)} - {_label(best)}")
            means.append((row["diff_vs_best"], row["diff_low"], row["diff_high"]))
    if not boxes:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.6 * len(boxes)))
    ax.boxplot(boxes, vert=False, showfliers=True)
    ax.set_yticks(range(1, len(boxes) + 1), labels, fontsize=7)
    for i, (d, lo, hi) in enumerate(means, start=1):
        if d == d:
            ax.errorbar(d, i, xerr=[[d - lo], [hi - d]], fmt="rD", capsize=4)
    ax.axvline(0, color="grey", lw=1)
    ax.set(xlabel="gold reward difference per prompt (row - best; red: paired mean and 95% CI)")
    return fig


def profiles(runs: pd.DataFrame):
    plt = _plt()
    taus = np.linspace(0, 1, 101)
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, group in runs.groupby(["method", "seed_scope"]):
        strata = [g["win_rate_vs_sft"].dropna().to_numpy() for _, g in group.groupby("task")]
        strata = [s for s in strata if len(s)]
        if strata:
            label = method[0] if method[1] == "method" else f"{method[0]} [pipeline seeds]"
            ax.plot(taus, stats.performance_profile(strata, taus), label=label)
    ax.set(xlabel="win rate vs SFT, tau", ylabel="fraction of runs > tau", title="performance profiles")
    ax.legend(fontsize=7)
    return fig


def _curve(record: dict, key: str) -> list[float]:
    for rows in (record.get("history") or {}).values():
        values = [r[key] for r in rows if isinstance(r, dict) and key in r]
        if values:
            return values
    return []


def curves(records: list[dict]):
    """(overoptimization figure, training figure) from the records' histories."""
    plt = _plt()
    online = [r for r in records if _curve(r, "objective/gold_reward") and _curve(r, "objective/score")]
    over, (ax_gold, ax_proxy) = plt.subplots(1, 2, figsize=(11, 4))
    for r in online:
        label = f"{r['method']} s{r['seed']}"
        ax_gold.plot(_curve(r, "objective/gold_reward"), label=label, lw=1)
        ax_proxy.plot(_curve(r, "objective/score"), label=label, lw=1)
    ax_gold.set(title="gold reward (training samples)", xlabel="step")
    ax_proxy.set(title="proxy reward (reward model)", xlabel="step")
    if online:
        ax_gold.legend(fontsize=6)
    train, ax = plt.subplots(figsize=(7, 4))
    plotted = 0
    for r in records:
        curve = _curve(r, "objective/score") or _curve(r, "train/loss")
        if curve:
            ax.plot(curve, lw=1, label=f"{r['method']} s{r['seed']}")
            plotted += 1
    ax.set(title="training curves (proxy reward, or loss for offline methods)", xlabel="logged step")
    if plotted:
        ax.legend(fontsize=6)
    return over, train


def leaderboard_figures(
    table: pd.DataFrame, runs: pd.DataFrame, per_prompt: pd.DataFrame, records: list[dict]
) -> dict[str, tuple[bytes, str]]:
    """name -> (PNG bytes, caption) of every leaderboard plot."""
    out = {
        "frontier": (
            png(frontier(table, runs)),
            "reward-KL frontier: each row's mean with 95% intervals; the star is SFT",
        )
    }
    diffs = prompt_differences(table, runs, per_prompt)
    if diffs is not None:
        out["prompt_differences"] = (png(diffs), "per-prompt gold differences to the best row of each group")
    out["profiles"] = (png(profiles(runs)), "performance profiles of the win rate vs SFT (rliable)")
    over, train = curves(records)
    out["overoptimization"] = (png(over), "gold vs proxy reward over training (online methods)")
    out["training"] = (png(train), "training curves")
    return out


def write_figures(figures: dict[str, tuple[bytes, str]], stem: Path) -> list[Path]:
    """Each figure as ``<stem>_<name>.png``."""
    written = []
    for name, (data, _) in figures.items():
        path = stem.parent / f"{stem.name}_{name}.png"
        path.write_bytes(data)
        written.append(path)
    return written
