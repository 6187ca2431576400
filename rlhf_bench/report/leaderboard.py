"""rlhf-bench-report: a leaderboard built from run records, never typed by hand.

Reads ``<results_dir>/runs/*/record.json``, groups finished runs by (task, method, reward
model, and any ``--group-by`` config keys), and reports mean, std and a 95% confidence
interval over seeds (Student t). Failed and unfinished runs are listed apart, never averaged.
Writes ``leaderboard.md`` and ``leaderboard.csv`` beside the runs.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

METRICS = {
    "gold_reward": ("metrics", "policy", "gold_reward"),
    "proxy_reward": ("metrics", "policy", "proxy_reward"),
    "kl": ("metrics", "policy", "kl"),
    "win_rate_vs_sft": ("metrics", "policy", "win_rate_vs_sft"),
    "sft_gold_reward": ("metrics", "sft", "gold_reward"),
    "rm_accuracy": ("metrics", "reward_model", "accuracy"),
    # the exact toy world (task=toy): the exact KL and the regret against the exact reward-KL frontier
    "exact_kl": ("metrics", "policy", "exact_kl"),
    "regret": ("metrics", "policy", "regret"),
    "tokens_generated": ("cost", "tokens_generated"),
    "wall_seconds": ("cost", "wall_seconds", "total"),
}
SHOWN = ("gold_reward", "proxy_reward", "kl", "win_rate_vs_sft")
EXACT = ("regret",)  # shown when some row has it (runs on an enumerable task)


def t95(dof: int) -> float:
    """The two-sided 95% quantile of Student's t with ``dof`` degrees of freedom (scipy's)."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def _get(record: dict, path: tuple[str, ...]) -> Any:
    node: Any = record
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _config_value(record: dict, dotted: str) -> Any:
    return _get(record.get("config", {}), tuple(dotted.split(".")))


def load_records(results_dir: Path) -> tuple[list[dict], list[dict]]:
    """(finished records, the others: failed, running or unreadable)."""
    finished, others = [], []
    for path in sorted(Path(results_dir).glob("runs/*/record.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            others.append({"run_id": path.parent.name, "status": f"unreadable ({exc})"})
            continue
        (finished if record.get("status") == "finished" else others).append(record)
    return finished, others


# Config keys that do not make two runs different configurations.
NOT_SETTINGS = ("seed", "run_name", "device", "precision", "paths.", "logger.")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True)}


def _settings(record: dict) -> dict[str, str]:
    flat = _flat(record.get("config", {}))
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n) for n in NOT_SETTINGS)}


def record_from_wandb(run_id: str, state: str, config: dict, summary: dict) -> dict:
    """A run record rebuilt from a W&B run's config and summary (what ``rlhf-bench`` logs there)."""
    metrics: dict[str, dict] = {}
    for key, value in summary.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval" and isinstance(value, (int, float)):
            metrics.setdefault(parts[1], {})[parts[2]] = value
    return {
        "run_id": run_id,
        "status": "finished" if state == "finished" else state,
        "task": config.get("task", {}).get("name"),
        "method": config.get("method", {}).get("name"),
        "reward_model": config.get("reward_model", {}).get("name"),
        "seed": config.get("seed"),
        "config": config,
        "metrics": metrics,
        "cost": {
            "tokens_generated": summary.get("cost/tokens_generated"),
            "wall_seconds": {"total": summary.get("cost/wall_seconds/total")},
        },
        "source": "wandb",
    }


def load_wandb_records(project: str) -> tuple[list[dict], list[dict]]:
    """Records of every run in a W&B project (``entity/project``), through the W&B API (online)."""
    import wandb

    finished, others = [], []
    for run in wandb.Api().runs(project, filters={"jobType": {"$ne": "leaderboard"}}):
        record = record_from_wandb(run.id, run.state, dict(run.config), dict(run.summary))
        (finished if record["status"] == "finished" else others).append(record)
    return finished, others


def rows(records: list[dict], group_by: list[str]) -> list[dict[str, Any]]:
    """One row per configuration: mean, std, 95% CI half-width and the number of seeds of each metric.

    Runs are one configuration when their whole config agrees except for the seed (and paths,
    logging, device). The settings that tell configurations of the same task, method and
    reward model apart are listed in ``settings``, so a sweep's rows name what was swept.
    """
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        named = {
            "task": json.dumps(record.get("task")),
            "method": json.dumps(record.get("method")),
            "reward_model": json.dumps(record.get("reward_model")),
        }
        key = tuple(sorted({**_settings(record), **named}.items()))
        groups.setdefault(key, []).append(record)
    by_family: dict[tuple, list[dict[str, str]]] = {}
    for key, members in groups.items():
        r = members[0]
        by_family.setdefault((r.get("task"), r.get("method"), r.get("reward_model")), []).append(dict(key))
    out = []
    for key, members in groups.items():
        first = members[0]
        family = by_family[(first.get("task"), first.get("method"), first.get("reward_model"))]
        mine = dict(key)
        varying = sorted(
            k for k in mine if k not in ("task", "method", "reward_model") and any(o.get(k) != mine[k] for o in family)
        )
        row: dict[str, Any] = {
            "task": first.get("task"),
            "method": first.get("method"),
            "reward_model": first.get("reward_model"),
        }
        row.update({k: _config_value(first, k) for k in group_by})
        row["settings"] = ", ".join(f"{k}={json.loads(mine[k])}" for k in varying if k not in group_by)
        row["runs"] = len(members)
        row["seeds"] = len({r.get("seed") for r in members})  # a repeated seed is a rerun, counted in runs
        for name, path in METRICS.items():
            values = [float(v) for v in (_get(r, path) for r in members) if v is not None]
            n = len(values)
            mean = sum(values) / n if n else float("nan")
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
            row[name] = mean
            row[f"{name}_std"] = std
            row[f"{name}_ci95"] = t95(n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
            if name == "gold_reward":
                row["_gold_values"] = values
        out.append(row)
    return sorted(out, key=lambda r: -r["gold_reward"] if r["gold_reward"] == r["gold_reward"] else math.inf)


def _fmt(row: dict, name: str) -> str:
    mean, std = row[name], row[f"{name}_std"]
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std == std else "")


def add_significance(table_rows: list[dict], alpha: float = 0.05) -> None:
    """``vs_best``: Welch's two-sided t-test of each row's per-run gold reward against the best row
    of its task among rows with at least two runs (``best``; ``n/a`` for a row with one run);
    ``*`` marks p < alpha."""
    from scipy.stats import ttest_ind

    best: dict[Any, dict] = {}
    for row in sorted(table_rows, key=lambda r: len(r["_gold_values"]) >= 2):  # testable rows win ties of order
        testable = len(row["_gold_values"]) >= 2
        current = best.get(row["task"])
        if (
            current is None
            or (testable and len(current["_gold_values"]) < 2)
            or (testable == (len(current["_gold_values"]) >= 2) and row["gold_reward"] > current["gold_reward"])
        ):
            best[row["task"]] = row
    for row in table_rows:
        top = best[row["task"]]
        a, b = row["_gold_values"], top["_gold_values"]
        if row is top:
            row["vs_best"], row["p_vs_best"] = "best", float("nan")
        elif len(a) < 2 or len(b) < 2:
            row["vs_best"], row["p_vs_best"] = "n/a", float("nan")
        else:
            p = float(ttest_ind(a, b, equal_var=False).pvalue)
            row["p_vs_best"] = p
            row["vs_best"] = f"p={p:.3g}" + (" *" if p < alpha else "")


def shown(table_rows: list[dict]) -> tuple[str, ...]:
    """The metric columns: SHOWN, and the exact world's regret where some row has it."""
    return SHOWN + tuple(m for m in EXACT if any(r.get(m) == r.get(m) for r in table_rows))


def columns(group_by: list[str], metrics: tuple[str, ...] = SHOWN) -> list[str]:
    return ["task", "method", "reward_model", *group_by, "settings", "runs", "seeds", *metrics, "vs_best"]


def cells(row: dict, group_by: list[str], metrics: tuple[str, ...] = SHOWN) -> list[str]:
    """The displayed cells of a row, in the order of ``columns``."""
    head = [str(row[k]) for k in ("task", "method", "reward_model", *group_by, "settings", "runs", "seeds")]
    return head + [_fmt(row, m) for m in metrics] + [row.get("vs_best", "")]


def to_markdown(table_rows: list[dict], group_by: list[str], verdicts: list[dict] | None = None) -> str:
    metrics = shown(table_rows)
    head = [c if c not in metrics else f"{c} (mean ± std)" for c in columns(group_by, metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells(row, group_by, metrics)) + " |" for row in table_rows]
    if verdicts:
        lines += ["", "## Reproductions (rlhf-bench-repro)", "", "| " + " | ".join(VERDICT_COLUMNS) + " |"]
        lines += ["|" + "---|" * len(VERDICT_COLUMNS)]
        lines += ["| " + " | ".join(verdict_cells(v)) + " |" for v in verdicts]
    return "\n".join(lines) + "\n"


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


def to_csv(table_rows: list[dict], path: Path) -> None:
    import csv

    if not table_rows:
        path.write_text("")
        return
    fields = [k for k in table_rows[0] if not k.startswith("_")]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table_rows)


def to_html(table_rows: list[dict], group_by: list[str], title: str, verdicts: list[dict] | None = None) -> str:
    """A self-contained HTML page (inline CSS, no scripts) with the leaderboard."""
    from html import escape

    metrics = shown(table_rows)
    head = "".join(f"<th>{escape(c)}</th>" for c in columns(group_by, metrics))
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells(r, group_by, metrics)) + "</tr>" for r in table_rows
    )
    repro = ""
    if verdicts:
        vhead = "".join(f"<th>{escape(c)}</th>" for c in VERDICT_COLUMNS)
        vbody = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in verdict_cells(v)) + "</tr>" for v in verdicts)
        repro = f"<h2>Reproductions</h2><table><tr>{vhead}</tr>{vbody}</table>"
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}th{background:#eee}"
        "td:nth-child(-n+4){text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{style}</style>"
        f"</head><body><h1>{escape(title)}</h1><p>mean ± std over runs; vs_best: Welch's t-test of gold reward "
        f"against the best row of the task (* p &lt; 0.05)</p><table><tr>{head}</tr>{body}</table>{repro}</body></html>\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-bench-report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results-dir", default="results", help="folder holding runs/<run-id>/record.json (default: results)"
    )
    parser.add_argument("--task", action="append", help="keep only this task (repeatable)")
    parser.add_argument("--method", action="append", help="keep only this method (repeatable)")
    parser.add_argument(
        "--group-by",
        action="append",
        default=[],
        metavar="KEY",
        help="also group by this config key, e.g. method.n (repeatable)",
    )
    parser.add_argument("--out", default=None, help="output stem (default: <results-dir>/leaderboard)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--wandb-project",
        metavar="ENTITY/PROJECT",
        help="also read the runs of this W&B project through the W&B API (needs a key and network)",
    )
    parser.add_argument(
        "--wandb",
        default="offline",
        choices=["offline", "online", "disabled"],
        help="log the table as a wandb.Table (default: offline, files under <results-dir>/wandb)",
    )
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 160))
    finished, others = load_records(Path(args.results_dir))
    if args.wandb_project:
        seen = {r.get("run_id") for r in finished + others}
        remote_finished, remote_others = load_wandb_records(args.wandb_project)
        finished += [r for r in remote_finished if r["run_id"] not in seen]
        others += [r for r in remote_others if r["run_id"] not in seen]
    keep = [
        r
        for r in finished
        if (not args.task or r.get("task") in args.task) and (not args.method or r.get("method") in args.method)
    ]
    table_rows = rows(keep, args.group_by)
    add_significance(table_rows)
    metrics = shown(table_rows)
    table = Table(
        title=f"leaderboard: {len(keep)} finished runs in {args.results_dir}",
        caption="mean ± std over runs; sorted by gold reward",
    )
    for col in columns(args.group_by, metrics):
        table.add_column(col, justify="right" if col in (*metrics, "runs", "seeds") else "left")
    for row in table_rows:
        table.add_row(*cells(row, args.group_by, metrics))
    console.print(table)
    from rlhf_bench.repro.session import latest_verdicts

    verdicts = latest_verdicts(Path(args.results_dir))
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
    stem = Path(args.out) if args.out else Path(args.results_dir) / "leaderboard"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(to_markdown(table_rows, args.group_by, verdicts))
    to_csv(table_rows, stem.with_suffix(".csv"))
    stem.with_suffix(".html").write_text(
        to_html(table_rows, args.group_by, f"rlhf-bench leaderboard ({args.results_dir})", verdicts)
    )
    written = [stem.with_suffix(s) for s in (".md", ".csv", ".html")]
    if not args.no_plots and keep:
        from rlhf_bench.report.plots import write_plots

        written += write_plots(keep, table_rows, stem.parent, stem.name)
    if args.wandb != "disabled" and table_rows:
        log_wandb_table(table_rows, args.group_by, Path(args.results_dir), args.wandb)
    console.print("wrote " + ", ".join(str(p) for p in written))
    return 0


def log_wandb_table(table_rows: list[dict], group_by: list[str], results_dir: Path, mode: str) -> None:
    """The leaderboard as a wandb.Table in a run of its own (job_type leaderboard)."""
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
    metrics = shown(table_rows)
    table = wandb.Table(columns=columns(group_by, metrics), data=[cells(r, group_by, metrics) for r in table_rows])
    run.log({"leaderboard": table})
    run.finish()


if __name__ == "__main__":
    raise SystemExit(main())
