"""rlhf-bench-report: a leaderboard built from run records, never typed by hand.

Reads ``<results_dir>/runs/*/record.json`` (and each run's ``per_prompt.parquet``), groups finished
runs into configurations (task, method, reward model, settings, provenance), and reports per
configuration the mean over seeds with a bootstrap 95% interval and the prompt-clustered standard
error; against the best row of its ranking group, the paired test over shared seeds and prompts
(Welch's t on the run means where there are no shared seeds), Holm-adjusted, the rows that cannot
be told from the best marked, and the difference each test could have detected at 80% power.
Failed and unfinished runs, unreadable records and repeated runs of one identity are listed
apart, never averaged. Writes ``leaderboard.{md,csv,html}`` beside the runs.
``rlhf-bench-report compare A B`` compares two configurations (``report/compare.py``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from rlhf_bench.report import stats
from rlhf_bench.report.records import (  # noqa: F401 (record_from_wandb: read here by tests and users)
    METRICS,
    PROVENANCE,
    gather,
    record_from_wandb,
    score_matrix,
)

SHOWN = ("gold_reward", "proxy_reward", "kl", "win_rate_vs_sft")
EXACT = ("regret",)  # shown when some row has it (runs on an enumerable task)
KEYS = ("task", "method", "reward_model")


def t95(dof: int) -> float:
    """The two-sided 95% quantile of Student's t with ``dof`` degrees of freedom (scipy's)."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


# --- the table ---------------------------------------------------------------------------------------
def _varying(runs: pd.DataFrame, group_by: list[str]) -> dict[str, str]:
    """config_key -> the settings that tell it from the other configurations of its task, method
    and reward model (``method.n=8``), the ``group_by`` keys aside."""
    out = {}
    for _, family in runs.groupby(list(KEYS), dropna=False):
        configs = family.drop_duplicates("config_key")
        # keys every configuration has (a pipeline-scope run has no stage seeds of its own to vary)
        keys = sorted(set.intersection(*(set(s) for s in configs["settings"])) - set(KEYS) - set(group_by))
        varying = [k for k in keys if len({s.get(k) for s in configs["settings"]}) > 1]
        for key, mine in zip(configs["config_key"], configs["settings"]):
            out[key] = ", ".join(f"{k}={json.loads(mine[k]) if k in mine else None}" for k in varying)
    return out


def _row(members: pd.DataFrame, matrix: pd.DataFrame) -> dict[str, Any]:
    """The statistics of one configuration's runs (one per identity) and its seed x prompt matrix."""
    gold = members["gold_reward"].dropna().to_numpy()
    row: dict[str, Any] = {"runs": len(members), "seeds": members["seed"].nunique()}
    for name in METRICS:
        values = members[name].dropna()
        n = len(values)
        row[name] = values.mean() if n else math.nan
        row[f"{name}_std"] = values.std(ddof=1) if n > 1 else math.nan
        row[f"{name}_ci95"] = t95(n - 1) * row[f"{name}_std"] / math.sqrt(n) if n > 1 else math.nan
    _, low, high = stats.bootstrap_ci([gold]) if len(gold) else (math.nan, math.nan, math.nan)
    row["gold_reward_boot_low"], row["gold_reward_boot_high"] = low, high
    row["gold_iqm"] = float(stats.iqm(gold)) if len(gold) else math.nan
    row["prompts"] = matrix.shape[1] if not matrix.empty else 0
    if not matrix.empty:
        clusters = np.broadcast_to(matrix.columns.to_numpy(), matrix.shape).ravel()
        row["gold_se_prompt"] = stats.clustered_se(matrix.to_numpy().ravel(), clusters)
        row["var_seed"], row["var_prompt"], row["var_resid"] = stats.variance_components(matrix.to_numpy())
    else:
        row["gold_se_prompt"] = row["var_seed"] = row["var_prompt"] = row["var_resid"] = math.nan
    return row


def build_table(runs: pd.DataFrame, per_prompt: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    """One row per configuration (``config_key``), sorted by gold reward within each task; the
    ranking group (``rank_group``: task and provenance) and the comparison with its best row."""
    if runs.empty:
        return pd.DataFrame()
    varying = _varying(runs, group_by)
    rows = []
    for key, members in runs.groupby("config_key", sort=False):
        first = members.iloc[0]
        head = {k: first[k] for k in (*KEYS, *group_by)}
        prov = {k: first[k] for k in PROVENANCE}
        matrix = score_matrix(per_prompt, members)
        rows.append({**head, "settings": varying[key], **prov, "config_key": key, **_row(members, matrix)})
    table = pd.DataFrame(rows)
    table["rank_group"] = table.groupby(["task", *PROVENANCE], dropna=False, sort=False).ngroup()
    table = table.sort_values(["task", "rank_group", "gold_reward"], ascending=[True, True, False], kind="stable")
    return add_comparisons(table.reset_index(drop=True), runs, per_prompt)


def compare_rows(a: pd.DataFrame, b: pd.DataFrame, per_prompt: pd.DataFrame) -> stats.Comparison | None:
    """A - B in gold reward for two configurations' runs: paired over shared seeds and prompts
    where both have per-prompt rows for >= 2 shared seeds, else Welch on the run means (>= 2 runs
    each), else None."""
    ma, mb = score_matrix(per_prompt, a), score_matrix(per_prompt, b)
    if not ma.empty and not mb.empty:
        seeds = ma.index.intersection(mb.index)
        prompts = ma.columns.intersection(mb.columns)
        if len(seeds) >= 2 and len(prompts) >= 2:
            x, y = ma.loc[seeds, prompts].to_numpy(), mb.loc[seeds, prompts].to_numpy()
            if not (np.isnan(x).any() or np.isnan(y).any()):
                return stats.paired_difference(x, y)
    ga, gb = a["gold_reward"].dropna().to_numpy(), b["gold_reward"].dropna().to_numpy()
    if len(ga) >= 2 and len(gb) >= 2:
        return stats.welch_difference(ga, gb)
    return None


def add_comparisons(table: pd.DataFrame, runs: pd.DataFrame, per_prompt: pd.DataFrame) -> pd.DataFrame:
    """Each row against the best (highest mean gold reward) of its ranking group: ``diff_vs_best``,
    its interval, ``p_vs_best``, ``p_holm`` (Holm over the group's rows), ``vs_best`` (the mark),
    ``test`` (which test) and ``detectable`` (the difference that test detects at 80% power)."""
    cols = {c: [math.nan] * len(table) for c in ("diff_vs_best", "diff_low", "diff_high", "p_vs_best", "detectable")}
    tests = [""] * len(table)
    for _, group in table.groupby("rank_group", sort=False):
        best = group["gold_reward"].idxmax() if group["gold_reward"].notna().any() else group.index[0]
        best_runs = runs[runs["config_key"] == table.at[best, "config_key"]]
        for i in group.index:
            if i == best:
                continue
            c = compare_rows(runs[runs["config_key"] == table.at[i, "config_key"]], best_runs, per_prompt)
            if c is None:
                tests[i] = "needs >= 2 runs of each"
                continue
            for name, value in (
                ("diff_vs_best", c.diff),
                ("diff_low", c.low),
                ("diff_high", c.high),
                ("p_vs_best", c.p),
            ):
                cols[name][i] = float(value)
            cols["detectable"][i] = stats.min_detectable_difference(float(c.se), float(c.dof))
            tests[i] = c.method
    table = table.assign(**cols, test=tests)
    table["p_holm"] = math.nan
    table["vs_best"] = ""
    for _, group in table.groupby("rank_group", sort=False):
        adjusted = stats.holm(group["p_vs_best"].to_numpy())
        is_best = (group.index == group["gold_reward"].idxmax()) if group["gold_reward"].notna().any() else None
        table.loc[group.index, "p_holm"] = adjusted
        table.loc[group.index, "vs_best"] = stats.mark_against_best(adjusted, list(is_best))
    return table


def ranking_notes(table: pd.DataFrame) -> list[str]:
    """Why rows of one task are ranked apart: the provenance fields in which their groups differ."""
    notes = []
    for task, rows in table.groupby("task", sort=False):
        groups = rows.drop_duplicates("rank_group")
        if len(groups) < 2:
            continue
        differ = [f"{k} ({' vs '.join(map(str, groups[k].unique()))})" for k in PROVENANCE if groups[k].nunique() > 1]
        notes.append(
            f"task {task}: {len(groups)} ranking groups, each ranked on its own, apart because "
            + "; ".join(differ)
            + " differ (scores under different judges, evaluators, prompt sets, templates, precisions or "
            "seed scopes are not comparable)"
        )
    return notes


def closest_pairs(table: pd.DataFrame, runs: pd.DataFrame, per_prompt: pd.DataFrame) -> list[dict[str, Any]]:
    """For each ranking group with two rows or more, the two rows of closest mean gold reward, and the
    seeds (at this many prompts) the paired test needs to tell them apart at 80% power, from the
    variance components of their per-prompt differences (or of their run means)."""
    out = []
    for _, group in table.groupby("rank_group", sort=False):
        g = group.dropna(subset=["gold_reward"]).sort_values("gold_reward", ascending=False)
        if len(g) < 2:
            continue
        gaps = -np.diff(g["gold_reward"].to_numpy())
        i = int(np.argmin(gaps))
        a, b = g.iloc[i], g.iloc[i + 1]
        ra, rb = runs[runs["config_key"] == a["config_key"]], runs[runs["config_key"] == b["config_key"]]
        ma, mb = score_matrix(per_prompt, ra), score_matrix(per_prompt, rb)
        seeds = ma.index.intersection(mb.index) if not ma.empty and not mb.empty else []
        if len(seeds) >= 2:
            d = ma.loc[seeds] - mb.loc[seeds]
            d = d.dropna(axis=1)
            var_seed, _, var_resid = stats.variance_components(d.to_numpy())
            prompts, source = d.shape[1], f"per-prompt differences over {len(seeds)} shared seeds"
        else:
            var_seed = float(ra["gold_reward"].var(ddof=1) + rb["gold_reward"].var(ddof=1))
            var_resid, prompts, source = 0.0, 1, "run means (no shared per-prompt seeds)"
        delta = float(gaps[i])
        out.append(
            {
                "task": a["task"],
                "a": _label(a),
                "b": _label(b),
                "difference": delta,
                "var_seed": var_seed,
                "var_resid": var_resid,
                "prompts": prompts,
                "seeds_now": int(min(a["seeds"], b["seeds"])),
                "seeds_needed": stats.seeds_needed(delta, var_seed, var_resid, prompts)
                if var_seed == var_seed
                else None,
                "from": source,
            }
        )
    return out


def _label(row: pd.Series) -> str:
    return f"{row['method']}" + (f" ({row['settings']})" if row.get("settings") else "")


# --- rendering -----------------------------------------------------------------------------------------
def shown(table: pd.DataFrame) -> tuple[str, ...]:
    """The metric columns: SHOWN, and the exact world's regret where some row has it."""
    return SHOWN + tuple(m for m in EXACT if m in table and table[m].notna().any())


def _mean_std(mean: float, std: float) -> str:
    return "" if mean != mean else f"{mean:.3f}" + (f" ± {std:.3f}" if std == std else "")


def _num(value: float, fmt: str = ".3g") -> str:
    return "" if value != value else format(value, fmt)


def display_frame(table: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    """The leaderboard as people read it: one string per cell."""
    out = pd.DataFrame({k: table[k].astype(str) for k in (*KEYS, *group_by)})
    out["settings"] = table["settings"]
    out["scope"] = table["seed_scope"]
    out["group"] = [chr(ord("A") + int(g) % 26) for g in table["rank_group"]]
    out["runs"], out["seeds"] = table["runs"].astype(str), table["seeds"].astype(str)
    for m in shown(table):
        out[f"{m} (mean ± std)"] = [_mean_std(a, b) for a, b in zip(table[m], table[f"{m}_std"])]
        if m == "gold_reward":
            out["gold 95% CI (bootstrap)"] = [
                "" if lo != lo else f"[{lo:.3f}, {hi:.3f}]"
                for lo, hi in zip(table["gold_reward_boot_low"], table["gold_reward_boot_high"])
            ]
            out["gold s.e. (prompt-clustered)"] = [_num(v, ".3f") for v in table["gold_se_prompt"]]
    out["vs_best"] = table["vs_best"]
    out["Δ vs best [95% CI]"] = [
        "" if d != d else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        for d, lo, hi in zip(table["diff_vs_best"], table["diff_low"], table["diff_high"])
    ]
    out["p (Holm)"] = [_num(p) for p in table["p_holm"]]
    out["detectable Δ (80%)"] = [_num(v, ".3f") for v in table["detectable"]]
    out["test"] = table["test"]
    return out


def to_markdown(display: pd.DataFrame, notes: list[str] | None = None, verdicts: list[dict] | None = None) -> str:
    """The display frame as a GitHub Markdown table (pandas' ``to_markdown``), the notes below it,
    and the reproductions' verdicts."""
    text = display.to_markdown(index=False, tablefmt="github", disable_numparse=True) if len(display) else ""
    if notes:
        text += "\n\n" + "\n".join(f"- {n}" for n in notes)
    if verdicts:
        frame = pd.DataFrame([verdict_cells(v) for v in verdicts], columns=list(VERDICT_COLUMNS))
        text += "\n\n## Reproductions (rlhf-bench-repro)\n\n"
        text += frame.to_markdown(index=False, tablefmt="github", disable_numparse=True)
    return text + "\n"


VERDICT_COLUMNS = ("reproduction", "claim", "paper", "checks passed", "verdict", "budget", "runs", "date")


def verdict_cells(verdict: dict) -> list[str]:
    """A reproduction's latest verdict (``<results_dir>/repro/<name>/*.json``) as table cells."""
    checks = verdict.get("checks", [])
    return [
        verdict["name"],
        verdict.get("title", ""),
        f"{verdict.get('paper', '')}, {verdict.get('source', '')}",
        f"{sum(c['passed'] for c in checks)}/{len(checks)}",
        verdict["verdict"],
        "quick" if verdict.get("quick") else "full",
        str(len(verdict.get("runs", []))),
        verdict.get("created", "")[:10],
    ]


def csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Every number of the table (CSV): the display's strings aside."""
    return table.drop(columns=["config_key"], errors="ignore")


def power_notes(pairs: list[dict[str, Any]]) -> list[str]:
    notes = []
    for p in pairs:
        need = p["seeds_needed"]
        verdict = f"{need} seeds" if need else "more than 10,000 seeds (or no difference to find)"
        notes.append(
            f"power ({p['task']}): the closest rows, {p['a']} and {p['b']}, differ by {p['difference']:.4f} in gold "
            f"reward; the paired test needs {verdict} each to detect that at 80% power (now {p['seeds_now']}; "
            f"from the {p['from']}: seed variance {p['var_seed']:.3g}, per-prompt variance {p['var_resid']:.3g} "
            f"over {p['prompts']} prompts)"
        )
    return notes


# --- the command ---------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf-bench-report", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--results-dir", default="results", help="folder holding runs/<run-id>/record.json (default: results)"
    )
    p.add_argument("--task", action="append", help="keep only this task (repeatable)")
    p.add_argument("--method", action="append", help="keep only this method (repeatable)")
    p.add_argument(
        "--group-by", action="append", default=[], metavar="KEY", help="also group by this config key, e.g. method.n"
    )
    p.add_argument("--out", default=None, help="output stem (default: <results-dir>/leaderboard)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots (PNG files and the HTML's figures)")
    p.add_argument(
        "--wandb-project",
        metavar="ENTITY/PROJECT",
        help="also read the runs of this W&B project through the W&B API (needs a key and network)",
    )
    p.add_argument(
        "--wandb",
        default="offline",
        choices=["offline", "online", "disabled"],
        help="log the table as a wandb.Table (default: offline, files under <results-dir>/wandb)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from rlhf_bench.report.compare import main as compare_main

        return compare_main(argv[1:])
    args = parser().parse_args(argv)
    console = Console(width=max(Console().width, 160))
    runs, repeats, per_prompt, records, others, rejects = gather(args)
    table = build_table(runs, per_prompt, args.group_by)
    display = display_frame(table, args.group_by) if len(table) else pd.DataFrame()
    notes = ranking_notes(table) if len(table) else []
    notes += power_notes(closest_pairs(table, runs, per_prompt)) if len(table) else []
    if len(repeats):
        notes.append(
            f"{len(repeats)} repeated runs of a configuration and seed already counted were left out (not "
            "independent; the latest of each is kept): " + ", ".join(repeats["run_id"])
        )
    from rlhf_bench.repro.session import latest_verdicts

    verdicts = latest_verdicts(Path(args.results_dir))
    print_report(console, display, notes, verdicts, others, rejects, len(runs), args.results_dir)
    stem = Path(args.out) if args.out else Path(args.results_dir) / "leaderboard"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(to_markdown(display, notes, verdicts))
    csv_frame(table).to_csv(stem.with_suffix(".csv"), index=False)
    from rlhf_bench.report.html import leaderboard_page

    figures = {}
    if not args.no_plots and len(table):
        from rlhf_bench.report import plots

        figures = plots.leaderboard_figures(table, runs, per_prompt, records)
    title = f"rlhf-bench leaderboard ({args.results_dir})"
    vframe = pd.DataFrame([verdict_cells(v) for v in verdicts], columns=list(VERDICT_COLUMNS)) if verdicts else None
    stem.with_suffix(".html").write_text(leaderboard_page(title, display, notes, figures, LEGEND, vframe, rejects))
    written = [stem.with_suffix(s) for s in (".md", ".csv", ".html")]
    if figures:
        written += plots.write_figures(figures, stem)
    if args.wandb != "disabled" and len(display):
        log_wandb_table(display, Path(args.results_dir), args.wandb)
    console.print("wrote " + ", ".join(str(p) for p in written))
    return 0


def print_report(console, display, notes, verdicts, others, rejects, n_runs: int, results_dir) -> None:
    """The terminal's view: the table, its notes, the verdicts, and everything left out."""
    from rich.table import Table

    table = Table(title=f"leaderboard: {n_runs} finished runs in {results_dir}", caption=LEGEND)
    for col in display.columns:
        table.add_column(col, justify="left" if col in (*KEYS, "settings", "scope", "test") else "right")
    for row in display.itertuples(index=False):
        table.add_row(*map(str, row))
    console.print(table)
    for note in notes:
        console.print(f"- {note}", highlight=False)
    if verdicts:
        vtable = Table(title="reproductions: the latest verdict of each (rlhf-bench-repro)")
        for col in VERDICT_COLUMNS:
            vtable.add_column(col)
        for v in verdicts:
            vtable.add_row(*verdict_cells(v))
        console.print(vtable)
    if others:
        console.print(f"[yellow]{len(others)} runs not finished (not averaged):[/yellow]")
        for r in others:
            console.print(f"  {r.get('run_id')}: {r.get('status')} {r.get('error') or ''}", highlight=False)
    if rejects:
        console.print(f"[red]{len(rejects)} files left out (unreadable or malformed):[/red]")
        for r in rejects:
            console.print(f"  {r.path}: {r.reason}", highlight=False, soft_wrap=True)


LEGEND = (
    "mean ± std over seeds; gold 95% CI: bootstrap over seeds; s.e. clustered by prompt; vs_best: against the "
    "best row of its group (paired t over shared seeds and prompts, else Welch), Holm-adjusted: '≈ best' cannot "
    "be told from the best at 5%; detectable Δ: the difference that test finds at 80% power"
)


def log_wandb_table(display: pd.DataFrame, results_dir: Path, mode: str) -> None:
    """The leaderboard as a wandb.Table (from the DataFrame) in a run of its own (job_type leaderboard)."""
    import os

    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(
        project="rlhf-bench",
        job_type="leaderboard",
        dir=str(results_dir),
        mode=mode,
        settings=wandb.Settings(console="off", silent=True),
    )
    run.log({"leaderboard": wandb.Table(dataframe=display)})
    run.finish()


if __name__ == "__main__":
    raise SystemExit(main())
