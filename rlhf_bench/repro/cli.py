"""rlhf-bench-repro: reproduce a published result and say whether it matches.

    rlhf-bench-repro --list                 the registry (results/published/*.yaml)
    rlhf-bench-repro NAME                   run the reproduction, print measured vs published
    rlhf-bench-repro NAME --quick           a smaller budget (a first look; the verdict says so)
    rlhf-bench-repro NAME -- key=value ...  Hydra overrides applied to every run it makes

The verdict (PASS when every check passes) goes to <results-dir>/repro/NAME/<stamp>.json, with
the ids of the runs it used; ``rlhf-bench-report`` lists the latest verdicts. Exit
code 0 when the reproduction ran (whatever its verdict; ``--strict``: 1 on FAIL), 2 on bad
input.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(stderr=True)


def list_claims() -> None:
    from rlhf_bench.repro.registry import load_claims

    table = Table(title="published claims (results/published/*.yaml)", show_lines=True)
    for col in ("name", "claim", "paper", "runs", "runtime here"):
        table.add_column(col)
    for claim in load_claims().values():
        where = "here (CPU)" if claim.runner and claim.needs == "cpu" else claim.needs
        table.add_row(
            claim.name,
            claim.title,
            f"{claim.paper}, {claim.source}",
            where if claim.runner else "reference only",
            claim.runtime_here or "",
        )
    Console(width=max(Console().width, 140)).print(table)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_outcome(claim, outcome, verdict_path: Path, seconds: float, quick: bool) -> None:
    out = Console(width=max(Console().width, 140), soft_wrap=True)
    table = Table(title=f"{claim.name}: {claim.title}", caption=f"{claim.paper}, {claim.source}")
    for col in ("check", "measured", "published", "", "how"):
        table.add_column(col)
    for c in outcome.checks:
        mark = "[green]PASS[/green]" if c.passed else "[red]FAIL[/red]"
        table.add_row(escape(c.name), escape(_fmt(c.measured)), escape(_fmt(c.published)), mark, escape(c.detail))
    out.print(table)
    for note in outcome.notes:
        out.print(f"- {escape(note)}")
    colour = "green" if outcome.verdict == "PASS" else "red"
    size = " (quick budget)" if quick else ""
    out.print(f"verdict: [bold {colour}]{outcome.verdict}[/bold {colour}]{size} in {seconds:.0f} s")
    out.print(f"verdict file: {verdict_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rlhf-bench-repro",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="?", help="the claim to reproduce (a file stem of results/published/)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (key=value) for every run it makes")
    parser.add_argument("--list", action="store_true", help="list the registry and exit")
    parser.add_argument("--quick", action="store_true", help="a smaller budget: a first look, not a verdict to cite")
    parser.add_argument(
        "--fresh", action="store_true", help="rerun runs even if a finished record of the same config exists"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when the verdict is FAIL")
    parser.add_argument(
        "--results-dir", default="results", help="where runs, records and verdicts go (default: results)"
    )
    parser.add_argument("--artifacts-dir", default="artifacts", help="where cached stages go (default: artifacts)")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_intermixed_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.overrides = [*args.overrides, *extra]

    from rlhf_bench.repro.registry import RegistryError, get_claim

    try:
        if args.list or not args.name:
            if not args.list:
                parser.print_usage(sys.stderr)
            list_claims()
            return 0 if args.list else 2
        claim = get_claim(args.name)
    except (RegistryError, FileNotFoundError) as exc:
        console.print(f"bad input: {escape(str(exc))}", style="red", highlight=False)
        return 2
    if claim.runner is None:
        console.print(
            f"bad input: {claim.name} holds published reference numbers only (needs {claim.needs}); "
            f"its configs: {', '.join('experiment=' + e for e in claim.experiments) or 'none'}",
            style="red",
            highlight=False,
        )
        return 2
    return reproduce(claim, args)


def reproduce(claim, args) -> int:
    from hydra.utils import get_method

    from rlhf_bench.compose import load_config
    from rlhf_bench.repro.session import Session, write_verdict

    module, function = claim.runner.split(":")
    runner = get_method(f"{module}.{function}")
    session = Session(
        claim=claim,
        results_dir=Path(args.results_dir),
        artifacts_dir=Path(args.artifacts_dir),
        quick=args.quick,
        overrides=list(args.overrides),
        reuse=not args.fresh,
    )
    from rlhf_bench.config_errors import explain_config_error, validate_overrides

    for experiment in claim.experiments or [None]:  # a bad override is caught before anything trains
        overrides = [*([f"experiment={experiment}"] if experiment else []), *session.overrides]
        try:
            message = validate_overrides(overrides)
            if message is None:
                load_config(overrides)
        except Exception as exc:  # Hydra's and our config errors: one line naming the key
            message = explain_config_error(exc, overrides)
        if message is not None:
            console.print(escape(message), style="red", highlight=False)
            return 2
    console.print(f"[bold]rlhf-bench-repro[/bold] {claim.name}: {claim.title} ({claim.paper}, {claim.source})")
    start = time.perf_counter()
    outcome = runner(session)
    seconds = time.perf_counter() - start
    path = write_verdict(session, outcome, seconds)
    print_outcome(claim, outcome, path, seconds, args.quick)
    return 1 if args.strict and outcome.verdict != "PASS" else 0


if __name__ == "__main__":
    raise SystemExit(main())
