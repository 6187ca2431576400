"""The generated tables of README.md and docs/: ``python -m rlhf_bench.report.docs`` (``make docs``).

The tables are built from the files they describe, never typed by hand:

- ``config-groups`` (docs/config.md): every option of every config group of ``conf/`` (but
  ``hydra``), described by the first comment paragraph of its YAML file;
- ``pg-family`` and ``pg-family-runs`` (docs/methods.md): the policy-gradient presets' parts (from
  ``conf/method/``), and the ``pg_family`` sweep's leaderboard and measured effects (from the
  committed ``docs/data/pg_family_runs.csv``);
- ``versus-trl`` (results/benchmarks/README.md): rlhf-bench against TRL before and after the
  policy-gradient core, from the two committed ``results/benchmarks/versus_trl*.json``;
- ``reproductions`` (docs/reproductions.md) and ``reproductions-summary`` (README.md): one row per
  claim of the registry (``results/published/*.yaml``), joined with its verdict from the committed
  ``docs/data/verdicts.yaml`` (and, only when asked with ``--repro-results``, the newest verdicts a
  ``rlhf-bench-repro`` run wrote to ``<dir>/repro/<name>/*.json``).

Each table sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` in its target
file; the prose around the markers is hand-written and left as it is. ``--check`` writes nothing
and exits 1 naming the files that differ from what would be generated (tests/test_docs.py).

Layering: this module imports the standard library, pandas, yaml and ``rlhf_bench.repro.registry``
only (report/ sits above repro/ and below cli).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from rlhf_bench.report.family import dynamic_sampling, effects, family_table, presets_frame
from rlhf_bench.repro.registry import Claim, load_claims

END = "<!-- end generated -->"
MARKER = re.compile(r"<!-- generated: ([a-z0-9-]+) -->\n(.*?)" + re.escape(END), re.DOTALL)
EXCLUDED_GROUPS = ("hydra",)  # launchers: described with the sweeps (docs/sweeps.md)
VERDICTS_FILE = Path("docs/data/verdicts.yaml")
PG_FAMILY_RUNS = Path("docs/data/pg_family_runs.csv")  # python -m rlhf_bench.report.family <results> --csv
MAX_DESCRIPTION = 300  # characters; a longer first paragraph is cut to its first sentence


# --- Markdown ------------------------------------------------------------------------------------


def cell(value: Any) -> str:
    """A table cell: one line, pipes escaped, ``<`` before a letter escaped (``<name>`` is HTML)."""
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
    text = " ".join(text.split())
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text.replace("|", "\\|"))


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no dependency on ``tabulate``, so the output is the same
    wherever it is rendered)."""
    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def generated_note(source: str) -> str:
    return f"<!-- do not edit this table: `make docs` writes it from {source} -->"


# --- Config groups -------------------------------------------------------------------------------


def first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence outside parentheses and quotes."""
    depth, quoted = 0, False
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(depth - 1, 0)
        elif ch == '"':
            quoted = not quoted
        elif ch in ".!?" and depth == 0 and not quoted:
            rest = text[i + 1 :]
            if not rest.strip():
                return text
            if rest[0] == " " and rest.lstrip()[0].isupper():
                return text[: i + 1]
    return text


def describe(path: Path) -> str:
    """The first paragraph of a YAML file's leading comment: the ``# ...`` lines up to a blank
    comment line, an indented one (an example command or a list) or the first line of YAML;
    ``# @package`` directives are skipped. Over ``MAX_DESCRIPTION`` characters, its first sentence."""
    paragraph: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        body = line[1:]
        if body.strip().startswith("@package"):
            continue
        if not body.strip() or body.startswith("  "):
            if paragraph:
                break
            continue
        paragraph.append(body.strip())
    text = " ".join(paragraph)
    if len(text) > MAX_DESCRIPTION:
        text = first_sentence(text)
    if text.endswith(":"):  # "Needs a GPU and the hub:" introduced the example commands
        text = text[:-1] + "."
    return text


def config_defaults(conf: Path) -> dict[str, str]:
    """group -> the default option, from the defaults list of ``conf/config.yaml``."""
    raw = yaml.safe_load((conf / "config.yaml").read_text(encoding="utf-8")) or {}
    out = {}
    for entry in raw.get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                if isinstance(value, str) and not key.startswith("override "):
                    out[key] = value
    return out


def config_groups_frame(repo_root: Path) -> pd.DataFrame:
    """One row per option file of every group of ``conf/`` (but ``hydra``): group, option, what."""
    conf = repo_root / "conf"
    defaults = config_defaults(conf)
    rows = []
    for group in sorted(p for p in conf.iterdir() if p.is_dir() and p.name not in EXCLUDED_GROUPS):
        for path in sorted(group.glob("*.yaml")):
            rows.append(
                {
                    "group": group.name,
                    "option": path.stem,
                    "default": defaults.get(group.name) == path.stem,
                    "what it is": describe(path),
                }
            )
    return pd.DataFrame(rows, columns=["group", "option", "default", "what it is"])


GROUP_ORDER = ("task", "model", "method", "reward_model", "eval", "logger", "experiment")


def render_config_groups(repo_root: Path, context: dict[str, Any]) -> str:
    df = config_groups_frame(repo_root)
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    df = df.assign(_g=df["group"].map(lambda g: order.get(g, len(order))))
    df = df.assign(_d=~df["default"]).sort_values(["_g", "group", "_d", "option"], kind="stable")
    shown = pd.DataFrame(
        {
            "group": [f"`{g}`" if first else "" for g, first in zip(df["group"], ~df["group"].duplicated())],
            "option": [f"`{o}`" + (" (default)" if d else "") for o, d in zip(df["option"], df["default"])],
            "what it is": df["what it is"],
        }
    )
    return generated_note("the first comment of each conf/<group>/<option>.yaml") + "\n\n" + markdown_table(shown)


# --- Reproductions -------------------------------------------------------------------------------


def load_verdicts(repo_root: Path) -> dict[str, Any]:
    """The committed verdicts (``docs/data/verdicts.yaml``): ``{"reproductions": {name: {...}}}``."""
    path = repo_root / VERDICTS_FILE
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return raw or {"reproductions": {}}


def run_verdicts(results_dir: Path) -> dict[str, dict[str, Any]]:
    """The newest full (not ``--quick``) verdict of each reproduction under ``<results_dir>/repro/``,
    in the committed file's fields (the format of ``repro.session.write_verdict``)."""
    out: dict[str, dict[str, Any]] = {}
    for folder in sorted((Path(results_dir) / "repro").glob("*/")):
        for path in sorted(folder.glob("*.json"), reverse=True):
            try:
                v = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if v.get("quick"):
                continue
            checks = v.get("checks", [])
            failed = [c.get("name", "?") for c in checks if not c.get("passed")]
            sha = (v.get("git") or {}).get("sha") or ""
            out[v.get("name", folder.name)] = {
                "verdict": v.get("verdict", "?"),
                "checks": f"{len(checks) - len(failed)}/{len(checks)}",
                "command": f"rlhf-bench-repro {v.get('name', folder.name)}",
                "result": f"from {path.relative_to(results_dir).as_posix()}: "
                + (f"failing checks: {', '.join(failed)}" if failed else "every check passes"),
                "created": str(v.get("created", "")),
                "measured_on": f"rlhf-bench-repro, {str(v.get('created', ''))[:10]}"
                + (f", commit {sha[:7]}" if sha else ""),
            }
            break
    return out


def short_paper(paper: str) -> str:
    """'Stiennon, Ouyang, ... 2020, Learning to summarize ...' -> 'Stiennon et al. 2020'."""
    m = re.match(r"^(?P<authors>[^\d]*?)\s+(?P<year>\d{4})\b", paper)
    if not m:
        return paper
    authors = [a.strip() for a in m["authors"].split(",") if a.strip()]
    if len(authors) == 1:
        return f"{authors[0]} {m['year']}"
    if len(authors) == 2:
        return f"{authors[0]} & {authors[1]} {m['year']}"
    return f"{authors[0]} et al. {m['year']}"


def runtime(claim: Claim) -> str:
    """The wall time of ``runtime_here`` ('372 s wall, 8.5 min of CPU ...' -> '372 s')."""
    if not claim.runtime_here:
        return "not run here"
    m = re.match(r"^\s*([\d,.]+\s*(?:s|min|h))\b", claim.runtime_here)
    return m.group(1) if m else claim.runtime_here.split(",")[0]


def measured_text(entry: dict[str, Any] | None) -> str:
    """Where and when a verdict was measured, and which commit first stated it."""
    if not entry or not entry.get("measured_on"):
        return ""
    text = str(entry["measured_on"])
    stated = entry.get("stated_in") or {}
    if stated.get("commit"):
        text += f"; stated in the README at commit {str(stated['commit'])[:8]} ({stated.get('date', '')})"
    return text


def verdict_text(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "no verdict recorded"
    text = f"{entry.get('verdict', '?')} {entry.get('checks', '')}".strip()
    return f"**{text}**" if str(entry.get("verdict")).upper() == "FAIL" else text


def reproductions_frame(repo_root: Path, context: dict[str, Any]) -> pd.DataFrame:
    """One row per claim of the registry, joined with its verdict (committed, or newer from runs)."""
    claims = load_claims(repo_root / "results" / "published")
    committed = load_verdicts(repo_root).get("reproductions", {}) or {}
    newer = context.get("run_verdicts") or {}
    rows = []
    for name, claim in claims.items():
        entry = committed.get(name)
        if name in newer and newer[name]["created"] >= str(((entry or {}).get("stated_in") or {}).get("date", "")):
            entry = newer[name]
        number = (committed.get(name) or {}).get("number")
        rows.append(
            {
                "number": str(number) if isinstance(number, int) else "",
                "order": number if isinstance(number, int) else 10**6,
                "name": name,
                "command": (entry or {}).get("command") or f"rlhf-bench-repro {name}",
                "claim": claim.title,
                "paper": short_paper(claim.paper),
                "source": claim.source
                + ("; also " + "; ".join(short_paper(a) for a in claim.also) if claim.also else ""),
                "experiments": ", ".join(claim.experiments),
                "needs": claim.needs,
                "runtime": runtime(claim),
                "verdict": verdict_text(entry),
                "result": (entry or {}).get("result", ""),
                "measured": measured_text(entry),
                "path": Path(claim.path).name,
            }
        )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.sort_values(["order", "name"], kind="stable").drop(columns="order").reset_index(drop=True)


def verdict_sources(context: dict[str, Any]) -> str:
    source = "results/published/*.yaml and docs/data/verdicts.yaml"
    if context.get("run_verdicts"):
        source += " and the newest verdicts of " + Path(context["results_dir"]).as_posix() + "/repro/"
    return source


def render_reproductions(repo_root: Path, context: dict[str, Any]) -> str:
    """The full table (docs/reproductions.md); claim files linked relative to docs/."""
    df = reproductions_frame(repo_root, context)
    shown = pd.DataFrame(
        {
            "#": df["number"],
            "command": [f"`{c}`" for c in df["command"]],
            "claim": [f"{t} ([{p}](../results/published/{p}))" for t, p in zip(df["claim"], df["path"])],
            "paper": [f"{p}, {s}" for p, s in zip(df["paper"], df["source"])],
            "`experiment=`": [", ".join(f"`{e}`" for e in es.split(", ")) if es else "" for es in df["experiments"]],
            "needs": df["needs"],
            "runtime here": df["runtime"],
            "verdict": df["verdict"],
            "result": df["result"],
        }
    )
    stated = sorted({m for m in df["measured"] if m})
    footer = f"\n\nMeasured on: {'; '.join(stated)}." if stated else ""
    return generated_note(verdict_sources(context)) + "\n\n" + markdown_table(shown) + footer


def render_reproductions_summary(repo_root: Path, context: dict[str, Any]) -> str:
    """The short table of the README: reproduction, claim, verdict."""
    df = reproductions_frame(repo_root, context)
    shown = pd.DataFrame(
        {
            "`rlhf-bench-repro`": [f"`{n}`" for n in df["name"]],
            "claim": [f"{t} ({p})" for t, p in zip(df["claim"], df["paper"])],
            "needs": df["needs"],
            "verdict": df["verdict"],
        }
    )
    return generated_note(verdict_sources(context)) + "\n\n" + markdown_table(shown)


# --- Targets -------------------------------------------------------------------------------------


def render_pg_family(repo_root: Path, context: dict[str, Any]) -> str:
    """The policy-gradient family's presets and the part each sets (docs/methods.md)."""
    table = markdown_table(presets_frame(repo_root / "conf"))
    return f"{generated_note('conf/method/*.yaml, the presets of rlhf_bench.methods.pg')}\n\n{table}"


def render_pg_family_runs(repo_root: Path, context: dict[str, Any]) -> str:
    """The ``+sweep=pg_family`` leaderboard, the papers' effects measured on it, and what dynamic
    sampling cost (docs/methods.md), from the sweep's per-run rows committed as a CSV."""
    path = repo_root / PG_FAMILY_RUNS
    if not path.is_file():
        return f"No runs committed: {PG_FAMILY_RUNS} holds a sweep's rows (`python -m rlhf_bench.report.family`)."
    runs = pd.read_csv(path)
    note = generated_note(f"{PG_FAMILY_RUNS.as_posix()}, the per-run rows of `rlhf-bench -m +sweep=pg_family`")
    tables = [
        family_table(runs).reset_index(),
        effects(runs),
        dynamic_sampling(runs).reset_index(),
    ]
    return note + "\n\n" + "\n\n".join(markdown_table(t) for t in tables)


VERSUS_TRL = Path("results/benchmarks/versus_trl.json")  # benchmarks/versus_trl.py, after the pg core
VERSUS_TRL_BEFORE = Path("results/benchmarks/versus_trl_before_pg_core.json")  # the same at bf5da81
VERSUS_TRL_METHODS = {
    "grpo": "GRPO",
    "rloo": "RLOO",
    "dpo": "DPO (both compute the reference once)",
    "dpo (TRL: reference every step)": "DPO, TRL's default (reference every step)",
}


def _ratio_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not measured"
    low, high = row.get("ratio_ci95") or (float("nan"),) * 2
    ci = "-" if low is None or pd.isna(low) else f"{low:.2f}-{high:.2f}"
    return f"**{row['ratio']:.2f}x** ({row['ratio_min']:.2f}-{row['ratio_max']:.2f}; {ci})"


def _pair(before: dict[str, Any] | None, after: dict[str, Any] | None, key: str, fmt: str) -> str:
    return " / ".join("-" if r is None else format(r[key], fmt) for r in (before, after))


def render_versus_trl(repo_root: Path, context: dict[str, Any]) -> str:
    """rlhf-bench against TRL before and after the one policy-gradient core (results/benchmarks/README.md):
    per model and method, the median ratio ours / TRL of steps per second with its range and bootstrap
    interval, the CPU-second ratio and both sides' rates, from the two files' ``ratios``."""
    files = [repo_root / VERSUS_TRL_BEFORE, repo_root / VERSUS_TRL]
    before, after = (
        {(r["model"], r["method"]): r for r in json.loads(f.read_text(encoding="utf-8"))["ratios"]} for f in files
    )
    keys = sorted(set(before) | set(after), key=lambda k: (k[0] != "tiny", list(VERSUS_TRL_METHODS).index(k[1])))
    rows = []
    for key in keys:
        b, a = before.get(key), after.get(key)
        rows.append(
            {
                "model": key[0],
                "method": VERSUS_TRL_METHODS[key[1]],
                "repeats": _pair(b, a, "repeats", "d"),
                "before: ratio (range; 95% CI)": _ratio_cell(b),
                "after: ratio (range; 95% CI)": _ratio_cell(a),
                "ratio (CPU s) before / after": _pair(b, a, "cpu_ratio", ".2f"),
                "ours steps/s before / after": _pair(b, a, "ours_steps_per_second", ".3g"),
                "TRL steps/s before / after": _pair(b, a, "trl_steps_per_second", ".3g"),
            }
        )
    sources = f"{VERSUS_TRL_BEFORE.as_posix()} and {VERSUS_TRL.as_posix()}"
    return f"{generated_note(sources)}\n\n{markdown_table(pd.DataFrame(rows))}"


BLOCKS: dict[str, Callable[[Path, dict[str, Any]], str]] = {
    "config-groups": render_config_groups,
    "pg-family": render_pg_family,
    "pg-family-runs": render_pg_family_runs,
    "reproductions": render_reproductions,
    "reproductions-summary": render_reproductions_summary,
    "versus-trl": render_versus_trl,
}
TARGETS: dict[str, tuple[str, ...]] = {
    "README.md": ("reproductions-summary",),
    "docs/config.md": ("config-groups",),
    "docs/reproductions.md": ("reproductions",),
    "docs/methods.md": ("pg-family", "pg-family-runs"),
    "results/benchmarks/README.md": ("versus-trl",),
}


class DocsError(ValueError):
    """A target file without the markers of a table it must hold, or with an unknown one."""


def fill(text: str, path: str, blocks: dict[str, str]) -> str:
    """``text`` with the body of each ``<!-- generated: NAME -->`` block replaced."""
    found = MARKER.findall(text)
    names = [name for name, _ in found]
    unknown = sorted(set(names) - set(BLOCKS))
    if unknown:
        raise DocsError(f"{path}: unknown generated block '{unknown[0]}' (known: {', '.join(BLOCKS)})")
    missing = [name for name in TARGETS.get(path, ()) if name not in names]
    if missing:
        raise DocsError(f"{path}: no '<!-- generated: {missing[0]} -->' ... '{END}' block")
    return MARKER.sub(lambda m: f"<!-- generated: {m[1]} -->\n{blocks[m[1]]}\n{END}", text)


def render_docs(repo_root: Path, results_dir: Path | None = None) -> dict[Path, str]:
    """Target file -> its full content with every generated table filled in. Only committed files
    are read unless ``results_dir`` is given (then its newest full verdicts override the committed)."""
    repo_root = Path(repo_root)
    context: dict[str, Any] = {}
    if results_dir is not None:
        context = {"run_verdicts": run_verdicts(results_dir), "results_dir": results_dir}
    blocks = {name: fn(repo_root, context) for name, fn in BLOCKS.items()}
    out = {}
    for rel in TARGETS:
        path = repo_root / rel
        out[path] = fill(path.read_text(encoding="utf-8"), rel, blocks)
    return out


def repo_root_default() -> Path:
    return Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf_bench.report.docs",
        description="Regenerate the generated tables of README.md and docs/ (config groups, reproductions).",
    )
    parser.add_argument("--root", type=Path, default=repo_root_default(), help="the repository (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming the files that differ")
    parser.add_argument(
        "--repro-results",
        type=Path,
        default=None,
        metavar="DIR",
        help="also read the newest verdicts of rlhf-bench-repro runs in DIR/repro/ (default: committed files only)",
    )
    args = parser.parse_args(argv)
    try:
        rendered = render_docs(args.root, args.repro_results)
    except (DocsError, OSError) as exc:
        print(f"docs: {exc}", file=sys.stderr)
        return 2
    stale = [p for p, text in rendered.items() if p.read_text(encoding="utf-8") != text]
    for path in stale:
        rel = path.relative_to(args.root) if path.is_relative_to(args.root) else path
        if args.check:
            print(f"{rel} differs from what `make docs` generates", file=sys.stderr)
        else:
            path.write_text(rendered[path], encoding="utf-8")
            print(f"wrote {rel}")
    if args.check and stale:
        return 1
    if not stale:
        print("docs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
