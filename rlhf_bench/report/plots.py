"""Leaderboard plots (PNG), built from run records.

- ``<stem>_frontier.png``: gold reward vs KL to SFT, one point per configuration with its
  std over runs (the reward-KL frontier of Rafailov et al. 2023, Fig. 2).
- ``<stem>_overoptimization.png``: gold vs proxy reward over training for the online methods
  (Gao et al. 2022): where the proxy keeps rising and gold does not, the RM is being gamed.
- ``<stem>_training.png``: the proxy reward (objective/score) per step, per method.
"""

from __future__ import annotations

from pathlib import Path


def _curve(record: dict, key: str) -> list[float]:
    for rows in record.get("history", {}).values():
        values = [r[key] for r in rows if key in r]
        if values:
            return values
    return []


def write_plots(records: list[dict], table_rows: list[dict], folder: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(11, 5))
    for row in table_rows:
        label = f"{row['method']}" + (f" ({row['settings']})" if row["settings"] else "")
        xerr = row["kl_std"] if row["kl_std"] == row["kl_std"] else None
        yerr = row["gold_reward_std"] if row["gold_reward_std"] == row["gold_reward_std"] else None
        ax.errorbar(row["kl"], row["gold_reward"], xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=label[:60])
    ax.set_xlabel("KL(policy || SFT), nats per response")
    ax.set_ylabel("gold reward")
    ax.set_title("reward-KL frontier")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    written.append(_save(fig, folder / f"{stem}_frontier.png"))

    online = [r for r in records if _curve(r, "objective/gold_reward") and _curve(r, "objective/score")]
    fig, (ax_gold, ax_proxy) = plt.subplots(1, 2, figsize=(11, 4))
    for r in online:
        label = f"{r['method']} s{r['seed']}"
        ax_gold.plot(_curve(r, "objective/gold_reward"), label=label, lw=1)
        ax_proxy.plot(_curve(r, "objective/score"), label=label, lw=1)
    ax_gold.set(title="gold reward (training samples)", xlabel="step")
    ax_proxy.set(title="proxy reward (reward model)", xlabel="step")
    if online:
        ax_gold.legend(fontsize=6)
    written.append(_save(fig, folder / f"{stem}_overoptimization.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    plotted = 0
    for r in records:
        curve = _curve(r, "objective/score") or _curve(r, "train/loss")
        if curve:
            ax.plot(curve, lw=1, label=f"{r['method']} s{r['seed']}")
            plotted += 1
    ax.set(title="training curves (proxy reward, or loss for offline methods)", xlabel="logged step")
    if plotted:
        ax.legend(fontsize=6)
    written.append(_save(fig, folder / f"{stem}_training.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
