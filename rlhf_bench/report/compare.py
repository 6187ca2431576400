"""``rlhf-bench-report compare A B``: is A better than B, and by how much?

A and B are run ids or selectors: ``key=value`` pairs joined by commas, matched against each
finished run's task, method, reward model, seed scope, provenance and config
(``method=dpo``, ``method=best_of_n,method.n=8``, ``seed_scope=pipeline``). Each must pick out one
configuration (a run id: that run alone). The answer is a short table: each side's mean with its
bootstrap interval, the difference paired over shared seeds and prompts (interval, p-value) beside
the unpaired one (Welch on the run means), the prompt-level interval widths with and without
pairing, the probability of improvement, and the power; and a plot of the per-prompt differences
(``<results-dir>/compare_<A>_vs_<B>.png``, with the table as ``.md``).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from rlhf_bench.report import stats
from rlhf_bench.report.records import PROVENANCE, score_matrix

SCORES = {"gold": "gold_reward", "proxy": "proxy_reward", "kl": "kl", "win_vs_sft": "win_rate_vs_sft"}


class SelectionError(ValueError):
    """A selector that picks out no configuration, or several."""


def _matches(run: pd.Series, key: str, value: str) -> bool:
    if key in ("task", "method", "reward_model", "run_id", *PROVENANCE):
        return str(run[key]) == value
    if key == "seed":
        return str(run["seed"]) == value
    setting = run["settings"].get(key)
    return setting is not None and str(json.loads(setting)) in (value, value.capitalize())


def select(runs: pd.DataFrame, selector: str) -> pd.DataFrame:
    """The runs of the one configuration ``selector`` names (see the module docstring)."""
    if selector in set(runs["run_id"]):
        return runs[runs["run_id"] == selector]
    pairs = [p.split("=", 1) for p in selector.split(",") if p]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise SelectionError(f"{selector!r} is neither a run id nor key=value[,key=value] (e.g. method=dpo)")
    mask = runs.apply(lambda r: all(_matches(r, k.strip(), v.strip()) for k, v in pairs), axis=1)
    chosen = runs[mask]
    if chosen.empty:
        raise SelectionError(f"{selector!r} matches no finished run; see rlhf-bench-report for the configurations")
    if chosen["config_key"].nunique() > 1:
        configs = chosen.drop_duplicates("config_key")
        differ = sorted(k for k in PROVENANCE if configs[k].nunique() > 1)
        keys = {k for s in configs["settings"] for k in s}
        differ += sorted(k for k in keys if len({s.get(k) for s in configs["settings"]}) > 1)
        raise SelectionError(
            f"{selector!r} matches {len(configs)} configurations; add a key that tells them apart: {', '.join(differ[:6])}"
        )
    return chosen


def compare(runs_a: pd.DataFrame, runs_b: pd.DataFrame, per_prompt: pd.DataFrame, metric: str = "gold") -> dict:
    """Every number of the comparison of A and B (``metric``: a per-prompt column)."""
    run_metric = SCORES[metric]
    ga, gb = runs_a[run_metric].dropna().to_numpy(), runs_b[run_metric].dropna().to_numpy()
    out: dict = {"a": _side(ga), "b": _side(gb), "metric": run_metric}
    out["unpaired"] = stats.welch_difference(ga, gb) if len(ga) >= 2 and len(gb) >= 2 else None
    ma, mb = score_matrix(per_prompt, runs_a, metric), score_matrix(per_prompt, runs_b, metric)
    seeds = ma.index.intersection(mb.index) if not ma.empty and not mb.empty else pd.Index([])
    prompts = ma.columns.intersection(mb.columns) if not ma.empty and not mb.empty else pd.Index([])
    out["shared"] = (len(seeds), len(prompts))
    out["paired"], out["prompt_widths"], out["per_prompt"] = None, None, None
    if len(prompts) >= 2:
        if len(seeds):
            x, y = ma.loc[seeds, prompts].to_numpy(), mb.loc[seeds, prompts].to_numpy()
        else:  # no seed in common: each side's seeds averaged, paired over prompts only
            x, y = ma[prompts].mean(axis=0).to_numpy()[None], mb[prompts].mean(axis=0).to_numpy()[None]
        out["paired"] = stats.paired_difference(x, y)
        out["prompt_widths"] = stats.prompt_level_widths(x, y)
        out["per_prompt"] = (x - y).mean(axis=0)
        var_seed, _, var_resid = stats.variance_components(x - y)
        out["variance"] = (var_seed, var_resid)
    out["p_improvement"] = stats.probability_of_improvement([ga], [gb]) if len(ga) and len(gb) else float("nan")
    test = out["paired"] if out["paired"] is not None and len(seeds) >= 2 else out["unpaired"]
    out["detectable"] = stats.min_detectable_difference(float(test.se), float(test.dof)) if test else float("nan")
    if out["paired"] is not None and len(seeds) >= 2:
        out["seeds_needed"] = stats.seeds_needed(float(out["paired"].diff), *out["variance"], len(prompts))
    return out


def _side(values: np.ndarray) -> dict:
    if not len(values):
        return {"runs": 0, "mean": float("nan"), "low": float("nan"), "high": float("nan")}
    mean, low, high = stats.bootstrap_ci([values])
    return {"runs": len(values), "mean": mean, "low": low, "high": high}


def summary_frame(result: dict, name_a: str, name_b: str) -> pd.DataFrame:
    """The comparison as rows a person reads in ten seconds: what, estimate, 95% interval, p, note."""

    def diff_row(what: str, c: stats.Comparison | None, note: str) -> list[str]:
        if c is None:
            return [what, "", "", "", "not available: " + note]
        width = float(c.high - c.low)
        return [what, f"{float(c.diff):+.4f}", f"[{float(c.low):+.4f}, {float(c.high):+.4f}] (width {width:.4f})",
                f"{float(c.p):.3g}", c.method]  # fmt: skip

    a, b = result["a"], result["b"]
    seeds, prompts = result["shared"]
    rows = [
        [f"A: {name_a}", f"{a['mean']:.4f}", f"[{a['low']:.4f}, {a['high']:.4f}]", "", f"{a['runs']} runs (bootstrap)"],
        [f"B: {name_b}", f"{b['mean']:.4f}", f"[{b['low']:.4f}, {b['high']:.4f}]", "", f"{b['runs']} runs (bootstrap)"],
        diff_row("A - B paired", result["paired"], f"needs shared seeds with per-prompt rows ({seeds} x {prompts})"),
        diff_row("A - B unpaired", result["unpaired"], "needs >= 2 runs of each"),
    ]
    if result["prompt_widths"]:
        unpaired, paired = result["prompt_widths"]
        gain = f"pairing tightens it {unpaired / paired:.1f}x" if paired > 0 else "identical scores"
        rows.append(["prompt-level CI width", f"{paired:.4f} paired", f"{unpaired:.4f} unpaired", "",
                     f"{gain} ({seeds} seeds x {prompts} prompts)"])  # fmt: skip
    if result["per_prompt"] is not None:
        d = result["per_prompt"]
        rows.append(["prompts where A > B", f"{int(np.sum(d > 0))}/{len(d)}", "", "", f"ties {int(np.sum(d == 0))}"])
    rows.append(["P(A > B), runs", f"{result['p_improvement']:.2f}", "", "", "probability of improvement"])
    need = result.get("seeds_needed")
    rows.append(["detectable at 80% power", f"{result['detectable']:.4f}", "", "",
                 f"seeds for the observed difference: {need if need else 'over 10,000 or none'}"])  # fmt: skip
    return pd.DataFrame(rows, columns=["", result["metric"], "95% CI", "p", "how"])


def plot(result: dict, name_a: str, name_b: str, path: Path) -> Path | None:
    """Per-prompt differences A - B (mean over shared seeds), sorted, with the paired mean and interval."""
    if result["per_prompt"] is None:
        return None
    from rlhf_bench.report.plots import _plt, png

    plt = _plt()
    d = np.sort(result["per_prompt"])
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    ax.bar(np.arange(len(d)), d, color=np.where(d > 0, "tab:green", "tab:red"), width=1.0)
    c = result["paired"]
    ax.axhline(float(c.diff), color="k", lw=1.5, label=f"paired mean {float(c.diff):+.4f}")
    ax.axhspan(float(c.low), float(c.high), color="k", alpha=0.15, label="95% CI")
    ax.set(xlabel="prompt (sorted)", ylabel=f"{result['metric']}: A - B", title=f"A = {name_a}  vs  B = {name_b}")
    ax.legend(fontsize=8)
    hist.hist(d, bins=min(30, max(5, len(d) // 4)), orientation="horizontal", color="grey")
    hist.axhline(0, color="k", lw=0.8)
    hist.set(xlabel="prompts", title="distribution")
    path.write_bytes(png(fig))
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)[:60]


def main(argv: list[str] | None = None) -> int:
    from rlhf_bench.report.records import gather

    parser = argparse.ArgumentParser(prog="rlhf-bench-report compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="run id or selector, e.g. method=ppo")
    parser.add_argument("b", help="run id or selector, e.g. method=dpo")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--metric", default="gold", choices=sorted(SCORES), help="per-prompt score (default gold)")
    args = parser.parse_args(argv)
    args.task, args.method, args.group_by = None, None, []
    console = Console(width=max(Console().width, 140))
    runs, _, per_prompt, _, _, rejects = gather(args)
    if runs.empty:
        console.print(f"[red]no finished runs in {args.results_dir}/runs[/red]")
        return 1
    try:
        runs_a, runs_b = select(runs, args.a), select(runs, args.b)
    except SelectionError as exc:
        console.print(f"[red]rlhf-bench-report compare: {exc}[/red]", highlight=False)
        return 2
    result = compare(runs_a, runs_b, per_prompt, args.metric)
    frame = summary_frame(result, args.a, args.b)
    from rich.table import Table

    table = Table(title=f"compare: A = {args.a}  vs  B = {args.b}")
    for col in frame.columns:
        table.add_column(col)
    for row in frame.itertuples(index=False):
        table.add_row(*row)
    console.print(table)
    stem = Path(args.results_dir) / f"compare_{_slug(args.a)}_vs_{_slug(args.b)}"
    stem.with_suffix(".md").write_text(frame.to_markdown(index=False, tablefmt="github", disable_numparse=True) + "\n")
    written = [stem.with_suffix(".md"), plot(result, args.a, args.b, stem.with_suffix(".png"))]
    console.print("wrote " + ", ".join(str(p) for p in written if p))
    for r in rejects:
        console.print(f"  left out {r.path}: {r.reason}", highlight=False)
    return 0
