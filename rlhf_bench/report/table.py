"""The run's summary table, built from its record (never typed by hand)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

COLUMNS = [
    ("gold reward", "gold_reward", "gold_reward_se"),
    ("proxy reward", "proxy_reward", "proxy_reward_se"),
    ("KL to SFT", "kl", "kl_se"),
    ("win vs SFT", "win_rate_vs_sft", "win_rate_vs_sft_se"),
    ("length", "response_length", None),
]


def summary_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per policy in the record: the SFT reference first, then the method."""
    metrics = record.get("metrics", {})
    rows = []
    for key, label in (("sft", "sft (ref)"), ("policy", record.get("method", "policy"))):
        if key in metrics:
            rows.append({"policy": label, **metrics[key]})
    return rows


def _cell(row: dict[str, Any], key: str, se_key: str | None) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    text = f"{value:.3f}"
    if se_key and row.get(se_key) is not None:
        text += f"±{row[se_key]:.3f}"
    return text


def summary_table(record: dict[str, Any]) -> Table:
    """A rich table: SFT vs the method on gold reward, proxy reward, KL, win rate (mean ± s.e.)."""
    rm = record.get("metrics", {}).get("reward_model", {})
    caption = f"mean ± s.e. over {record.get('metrics', {}).get('sft', {}).get('n_samples', '?')} held-out prompts"
    if rm:
        caption += f"; reward model accuracy {rm['accuracy']:.3f} (vs gold {rm['gold_accuracy']:.3f})"
    table = Table(title=f"run {record.get('run_id')} [{record.get('status')}]", caption=caption)
    table.add_column("policy", style="bold", no_wrap=True)
    for title, _, _ in COLUMNS:
        table.add_column(title, justify="right", no_wrap=True)
    for row in summary_rows(record):
        table.add_row(row["policy"], *(_cell(row, key, se) for _, key, se in COLUMNS))
    return table
