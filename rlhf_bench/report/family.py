"""The policy-gradient family as tables: its presets' parts (read from ``conf/method/``), and a sweep's
runs of them with the metrics the papers argue with (accuracy, KL, lengths of right and wrong
answers, entropy, the groups dynamic sampling drops, what the samples cost).

    python -m rlhf_bench.report.family results/            (the table of the runs under results/runs/)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from rlhf_bench.report.stats import ALPHA, paired_difference

PG_TARGET = "rlhf_bench.methods.pg.train"
# the history's metrics of the last steps, averaged per run (the state training ended in)
TAIL_STEPS = 10
TAIL_METRICS = {
    "policy/entropy": "entropy",
    "objective/length_right": "length right",
    "objective/length_wrong": "length wrong",
    "policy/clipfrac_high": "clip high",
    "policy/clipfrac_low": "clip low",
}
# ... and of every step (what the whole run cost)
RUN_METRICS = {
    "objective/zero_std_groups": "zero-std groups",
    "cost/samples_per_kept": "samples per kept",
}
# The effects the papers argue with, measured as preset - baseline paired over seeds:
# (claim, preset, baseline, column, the sign of the difference the claim predicts). A baseline that is
# not a preset is a run labelled by method.name: dapo_no_clip_higher is
#   rlhf-bench -m +sweep=pg_family method=dapo method.eps_high=0.2 method.name=dapo_no_clip_higher
EFFECTS = (
    (
        "clip-higher keeps the entropy above symmetric clipping's (DAPO, Yu et al. 2025, Sec. 3.1, Fig. 2b):"
        " DAPO against itself with eps_high = eps_low",
        "dapo",
        "dapo_no_clip_higher",
        "entropy",
        1,
    ),
    (
        "clip-higher keeps the entropy above GRPO's: the presets (DAPO also drops the KL and takes 4 updates a batch)",
        "dapo",
        "grpo",
        "entropy",
        1,
    ),
    (
        "Dr. GRPO's wrong answers are shorter than GRPO's (Liu et al. 2025, Sec. 3.1)",
        "dr_grpo",
        "grpo",
        "length wrong",
        -1,
    ),
)


def presets(conf: Path) -> dict[str, dict[str, Any]]:
    """{preset: its YAML values and first comment} for every ``conf/method`` option of the family."""
    out = {}
    for path in sorted((Path(conf) / "method").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        values = yaml.safe_load(text) or {}
        if values.get("_target_") == PG_TARGET:
            comment = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
            out[path.stem] = {**values, "comment": comment}
    return out


def citation(comment: str) -> str:
    """The first parenthesised group of a preset's comment: its paper."""
    match = re.search(r"\(([^()]*)\)", comment)
    return match.group(1) if match else ""


def presets_frame(conf: Path) -> pd.DataFrame:
    """One row per preset: its paper and the part it sets for each knob of the core."""
    rows = []
    for name, v in presets(conf).items():
        clip = {
            "sapo": f"tau {v.get('tau_pos', 1.0)} / {v.get('tau_neg', 1.05)}",
            "reinforce": "",  # no ratio
        }.get(v.get("surrogate"), f"{v.get('eps_low', 0.2)} / {v.get('eps_high', 0.2)}")
        kl = (
            "none"
            if v.get("kl_in") == "none"
            else f"{v.get('kl_estimator')} x {v.get('kl_coef')}, in the {v.get('kl_in')}"
        )
        extras = [
            k
            for k, on in (
                ("dynamic sampling", v.get("dynamic_sampling")),
                (f"overlong buffer {v.get('overlong_buffer')}", v.get("overlong_buffer")),
                ("whitened advantages", v.get("whiten_advantages")),
                ("value model", v.get("advantage") == "gae"),
            )
            if on
        ]
        std = f" (std: {v.get('advantage_std', 'group')})" if v.get("advantage") == "grpo" else ""
        rows.append(
            {
                "`method=`": f"`{name}`",
                "paper": citation(v["comment"]),
                "advantage": f"{v.get('advantage')}{std}",
                "ratio": v.get("ratio"),
                "surrogate": v.get("surrogate"),
                "clip": clip,
                "aggregation": v.get("aggregation"),
                "KL": kl,
                "prompts x G": f"{v.get('prompts_per_step')} x {v.get('group_size')}",
                "updates / batch": v.get("epochs", 1) * v.get("num_minibatches", 1),
                "also": ", ".join(extras),
            }
        )
    return pd.DataFrame(rows)


def load_runs(results: Path) -> pd.DataFrame:
    """One row per finished run of a family preset under ``results/runs``: final metrics, the tail of
    the training history, and the cost."""
    rows = []
    for path in sorted(Path(results).glob("runs/*/record.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        method = (record.get("config") or {}).get("method") or {}
        if record.get("status") != "finished" or method.get("_target_") != PG_TARGET:
            continue
        policy = record["metrics"]["policy"]
        history = pd.DataFrame(record.get("history", {}).get(method["name"], []))
        tail = history.tail(TAIL_STEPS)
        cost = record.get("cost", {})
        rows.append(
            {
                "method": method["name"],
                "seed": record["config"].get("seed"),
                "accuracy": policy.get("gold_reward"),
                "KL": policy.get("kl"),
                "length": policy.get("response_length"),
                **{label: tail[key].mean() if key in tail else float("nan") for key, label in TAIL_METRICS.items()},
                **{
                    label: history[key].mean() if key in history else float("nan") for key, label in RUN_METRICS.items()
                },
                "tokens generated": cost.get("tokens_generated"),
                "wall s": _method_seconds(cost.get("wall_seconds") or {}, method["name"]),
            }
        )
    return pd.DataFrame(rows)


def _method_seconds(wall: dict[str, float], name: str) -> float | None:
    """The method stage's wall seconds (``policy``; older records named it after the method)."""
    return wall.get("policy", wall.get(name))


def family_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per preset: mean and standard deviation over seeds of each column, and the number of seeds."""
    grouped = runs.drop(columns="seed").groupby("method")
    mean, std = grouped.mean(numeric_only=True), grouped.std(numeric_only=True)
    table = mean.copy()
    for col in mean.columns:
        table[col] = [
            "" if pd.isna(m) else (f"{m:.3g}" if pd.isna(s) else f"{m:.3g} ± {s:.2g}")
            for m, s in zip(mean[col], std[col])
        ]
    table.insert(0, "seeds", grouped.size())
    return table.loc[mean["accuracy"].sort_values(ascending=False).index]


def effects(runs: pd.DataFrame) -> pd.DataFrame:
    """Each claim of ``EFFECTS``: the preset's value minus the baseline's, paired by seed (Student's t
    over the seeds both ran, ``stats.paired_difference``), and whether it shows here: ``shows`` (the
    predicted sign at p < 0.05), ``direction only`` (the predicted sign, not significant) or ``does
    not show``."""
    rows = []
    for claim, preset, baseline, column, sign in EFFECTS:
        a, b = (runs[runs["method"] == m].set_index("seed")[column].dropna() for m in (preset, baseline))
        seeds = sorted(set(a.index) & set(b.index))
        row = {"claim": claim, "difference": f"{preset} - {baseline}", "metric": column, "seeds": len(seeds)}
        if len(seeds) < 2:
            rows.append({**row, "here": "too few seeds (need 2 of each)"})
            continue
        c = paired_difference(a[seeds].to_numpy()[:, None], b[seeds].to_numpy()[:, None])
        predicted = float(c.diff) * sign > 0
        here = ("shows" if c.p < ALPHA else "direction only") if predicted else "does not show"
        rows.append(
            {
                **row,
                "baseline": f"{b[seeds].mean():.3g}",
                "value": f"{float(c.diff):+.3g}",
                "95% interval": f"[{float(c.low):+.3g}, {float(c.high):+.3g}]",
                "p": f"{float(c.p):.2g}",
                "here": here,
            }
        )
    columns = ["claim", "difference", "metric", "baseline", "value", "95% interval", "p", "seeds", "here"]
    return pd.DataFrame(rows).reindex(columns=columns)


def dynamic_sampling(runs: pd.DataFrame) -> pd.DataFrame:
    """Per preset that has the metric: the share of groups whose rewards all agree (what dynamic
    sampling drops; the others train on them with zero advantage), the samples drawn per kept one,
    and the tokens generated relative to GRPO's, means over seeds."""
    grpo_tokens = runs.loc[runs["method"] == "grpo", "tokens generated"].mean()
    grouped = runs.groupby("method")
    out = pd.DataFrame(
        {
            "zero-std groups": grouped["zero-std groups"].mean(),
            "samples per kept": grouped["samples per kept"].mean(),
            "tokens vs grpo": grouped["tokens generated"].mean() / grpo_tokens,
        }
    ).dropna(subset=["zero-std groups"])
    return out.round(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_bench.report.family", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results folder (holding runs/<id>/record.json)")
    parser.add_argument("--csv", type=Path, help="also write the per-run rows here")
    args = parser.parse_args(argv)
    runs = load_runs(args.results)
    if runs.empty:
        print(f"no finished runs of the policy-gradient family under {args.results}/runs", file=sys.stderr)
        return 1
    if args.csv:
        runs.to_csv(args.csv, index=False)
    print(family_table(runs).to_markdown())
    print()
    print(effects(runs).to_markdown(index=False))
    print()
    print(dynamic_sampling(runs).to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
