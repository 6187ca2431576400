"""Entry point: ``rlhf-bench [group=option ...] [key=value ...]``, a Hydra app.

Before Hydra runs the job, the command line is composed once here so that a typo in a
key, an unknown group option, a wrong type or a value out of range is reported as one
line naming the key and the choices, with exit code 2 and no stack trace
(``RLHF_BENCH_DEBUG=1`` shows it). A multirun is checked the same way, with the values of
``hydra.sweeper.params`` (a ready sweep: ``+sweep=<name>``, a file in ``sweeps/``) added to
those of the command line.

A job whose identity (config hash, seed included) already finished is reused, not trained again
(``run_or_reuse``): re-running a sweep finishes what is missing. ``--fresh`` (or ``+rerun=true``)
runs it again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

from hydra.errors import CompactHydraException
from rich.console import Console
from rich.markup import escape

from rlhf_bench.compose import (
    compose,
    conf_dir,
    load_config,
    register_schemas,
    register_sweeps,
    sweeps_dir,  # noqa: F401 (rlhf_bench.cli.sweeps_dir, as the docs name it)
)
from rlhf_bench.config_errors import ConfigStructure, explain_config_error, validate_overrides

console = Console(stderr=True)
EXIT_CONFIG_ERROR = 2
EXIT_RUN_FAILED = 1
EXIT_PREEMPTED = 143  # 128 + SIGTERM, as a process killed by SIGTERM reports
FRESH_ENV = "RLHF_BENCH_FRESH"  # set by --fresh: run again what already finished

# Hydra flags after which no job runs or whose arguments are not overrides.
_NO_PREFLIGHT_FLAGS = {
    "--help",
    "-h",
    "--hydra-help",
    "--version",
    "--cfg",
    "-c",
    "--info",
    "--shell-completion",
    "-sc",
    "--resolve",
    "--package",
    "-p",
    "--run",
    "-r",
}
_FLAGS_WITH_VALUE = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}


def _debug() -> bool:
    return os.environ.get("RLHF_BENCH_DEBUG", "") not in ("", "0") or os.environ.get("HYDRA_FULL_ERROR") == "1"


def _overrides(argv: list[str]) -> list[str] | None:
    """The key=value arguments, or None when a flag means no single job is composed here."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _NO_PREFLIGHT_FLAGS:
            return None
        if arg in _FLAGS_WITH_VALUE:
            skip = True
            continue
        if arg.startswith("-"):
            continue
        out.append(arg)
    return out


def _jobs_to_check(overrides: list[str]) -> list[list[str]]:
    """Override lists that together try every value of every sweep (``k=a,b,c``) once.

    A sweep of several keys is not expanded into its product: each value is checked with the
    first value of the other sweeps, which finds every bad key and bad value at a fraction of
    the cost. A range a sweeper samples from (``interval(a, b)``, Optuna) is checked at both ends.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    parsed = OverridesParser.create().parse_overrides(overrides)
    values: list[list[str]] = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            sweep = o.value()
            if isinstance(sweep, IntervalSweep):
                values.append([f"{key}={_number(sweep.start)}", f"{key}={_number(sweep.end)}"])
                continue
            try:
                values.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            except Exception:  # glob() and other sweeps with no fixed values to check here
                values.append([])
        else:
            values.append([o.input_line])
    base = [v[0] for v in values if v]
    jobs = [base]
    for i, options in enumerate(values):
        for option in options[1:]:
            job = list(base)
            job[sum(1 for v in values[:i] if v)] = option
            jobs.append(job)
    return jobs


def _number(x: float) -> str:
    """An interval end as an override value: ``1.0`` -> ``1`` (valid for int keys too), ``1e-05`` as is."""
    return str(int(x)) if float(x).is_integer() else str(x)


def sweep_overrides(overrides: list[str], multirun: bool = False) -> list[str]:
    """The overrides a multirun sweeps over: ``hydra.sweeper.params`` of the composed config
    (a ready sweep's grid or search space) followed by ``overrides``; a key given on the command
    line replaces the sweep's, as Hydra's sweepers do. A single run (no ``-m`` and ``hydra.mode``
    not ``MULTIRUN``) ignores the sweeper: ``overrides`` unchanged."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    parsed = OverridesParser.create().parse_overrides(overrides)
    # As Hydra composes a multirun's own config: with the overrides that are not sweeps.
    hydra_cfg = compose([o.input_line for o in parsed if not o.is_sweep_override()], return_hydra_config=True).hydra
    if not (multirun or hydra_cfg.mode == RunMode.MULTIRUN):
        return overrides
    given = {o.get_key_element().lstrip("+~") for o in parsed}
    params = hydra_cfg.sweeper.get("params") or {}
    return [f"{k}={v}" for k, v in params.items() if k not in given] + list(overrides)


def preflight(argv: list[str]) -> None:
    """Validate the config(s) of this command line; exit 2 with a clear message if wrong.

    The command line, then each job of ``_jobs_to_check``: first its structure (``validate_overrides``:
    group options and keys, before composing), then its types and values (``load_config``)."""
    overrides = _overrides(argv)
    if overrides is None:
        return
    structure = ConfigStructure()  # groups, options and composed configs, asked once for every job
    checking = overrides
    try:
        message = validate_overrides(overrides, structure)
        if message is None:
            overrides = sweep_overrides(overrides, multirun="-m" in argv or "--multirun" in argv)
            for checking in _jobs_to_check(overrides):
                message = validate_overrides(checking, structure)
                if message is not None:
                    break
                load_config(checking)
    except Exception as exc:
        if _debug():
            raise
        message = explain_config_error(exc, checking)
    if message is not None:
        console.print(escape(message), style="red", highlight=False, soft_wrap=True)
        sys.exit(EXIT_CONFIG_ERROR)


class JobFailed(CompactHydraException):
    """One job of a multirun failed: Hydra marks it failed and the sweep goes on (Optuna counts a
    failed trial, up to ``hydra.sweeper.max_failure_rate``); the multirun exits 1 at the end,
    printing this message without a stack trace (a CompactHydraException)."""


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _fail(message: str, code: int, note: str = "") -> NoReturn:
    """Report a failed job: exit ``code`` from a single run, raise JobFailed inside a multirun."""
    console.print(escape(message), style="red", highlight=False, soft_wrap=True)
    if note:
        console.print(note)
    if _multirun():
        raise JobFailed(message) from None  # the message says it all; RLHF_BENCH_DEBUG=1 re-raises
    sys.exit(code)


def objective(record: dict) -> float:
    """What a sweeper maximises: the policy's mean gold reward on the held-out prompts (the SFT
    row's for ``method=sft``, whose policy is the reference), ``metrics.<who>.gold_reward``."""
    metrics = record["metrics"]
    return float((metrics.get("policy") or metrics["sft"])["gold_reward"])


def run_job(cfg) -> float:
    """The Hydra task function: convert the config, run the pipeline, print the summary; return
    the run's gold reward (``objective``) for sweepers such as Optuna (a single run ignores it)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from rlhf_bench.report.table import summary_table

    try:
        typed = OmegaConf.to_object(cfg)
    except Exception as exc:
        if _debug():
            raise
        _fail(explain_config_error(exc, []), EXIT_CONFIG_ERROR)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    from rlhf_bench.core.checkpoint import Preempted
    from rlhf_bench.errors import ConfigError
    from rlhf_bench.tasks.data import DataError
    from rlhf_bench.tasks.judges import RewardFunctionError

    fresh = bool(cfg.get("rerun", False)) or os.environ.get(FRESH_ENV) == "1"
    try:
        record = run_or_reuse(typed, overrides, fresh)
    except (ConfigError, DataError, RewardFunctionError) as exc:  # bad input, found once the data is read
        if _debug():
            raise
        _fail(f"bad input: {exc}", EXIT_CONFIG_ERROR, failure_note(typed))
    except Preempted as exc:
        _fail(f"preempted: {exc}", EXIT_PREEMPTED)
    except (OSError, RuntimeError) as exc:
        if _debug():
            raise
        note = f"(RLHF_BENCH_DEBUG=1 shows the stack trace) {failure_note(typed)}"
        _fail(f"run failed: {type(exc).__name__}: {exc}", EXIT_RUN_FAILED, note)
    if "record_path" not in record:  # a process other than the main one of a data-parallel run
        return float("nan")
    Console(width=max(Console().width, 110)).print(summary_table(record))
    print_paths(record)
    return objective(record)


def run_or_reuse(cfg, overrides: list[str], fresh: bool = False) -> dict:
    """``pipeline.run``, once per identity. A run's identity is the hash of its whole config (the
    seed is in it: the record's ``resume_key``). If a finished run of this identity is in
    ``results_dir``, it is reused (said so, nothing trained) unless ``fresh`` (``--fresh`` or
    ``+rerun=true``); an interrupted one is resumed (``pipeline.run``). While a run executes, its
    identity's lock (``<results_dir>/locks/<hash>.lock``) is held, so that a second
    identical command waits for it (naming it) and then reuses what it finished.

    A data-parallel launch (``WORLD_SIZE`` > 1) runs as it is: its processes decide together."""
    from filelock import FileLock, Timeout

    from rlhf_bench import pipeline
    from rlhf_bench.config import to_plain
    from rlhf_bench.stage_cache import config_hash

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return pipeline.run(cfg, overrides)
    key, runs, locks = (
        config_hash(to_plain(cfg)),
        Path(cfg.paths.results_dir) / "runs",
        Path(cfg.paths.results_dir) / "locks",
    )
    pipeline.check_writable(locks, "results_dir")
    lock = FileLock(str(locks / f"{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        console.print(
            f"[yellow]the same run (config {key}, seed {cfg.seed}) is already running: {_running(runs, key)}; "
            "waiting for it to end (Ctrl-C to stop waiting)[/yellow]"
        )
        lock.acquire()
    try:
        done = None if fresh else _finished(runs, key)
        if done is None:
            return pipeline.run(cfg, overrides)
        console.print(
            f"[green]reusing finished run {done['run_id']}[/green] (same config {key} and seed {cfg.seed}; "
            "nothing trained): --fresh or +rerun=true runs it again"
        )
        return {**done, "reused": True, "record_path": str(runs / done["run_id"] / "record.json")}
    finally:
        lock.release()


def failure_note(cfg) -> str:
    """What a failed run leaves, as its record says: the stages it built (cached: the next run
    starts from them) and the record's path; or that no record was written."""
    from rlhf_bench.config import to_plain
    from rlhf_bench.stage_cache import config_hash

    runs = Path(cfg.paths.results_dir) / "runs"
    path, record = next(_records_of(runs, config_hash(to_plain(cfg))), (None, None))
    if record is None or record.get("status") not in ("failed", "preempted"):
        return "(it failed before writing a run record; nothing was trained.)"
    built = [stage for stage, a in (record.get("artifacts") or {}).items() if a.get("cached") is False]
    trained = (
        f"built before the failure, and cached for the next run: {', '.join(built)}"
        if built
        else "no stage was built before the failure"
    )
    return f"({trained}; the run record {path} says status={record['status']}.)"


def _records_of(runs: Path, key: str):
    """The readable records of identity ``key`` under ``runs``, newest first."""
    import json

    for path in sorted(runs.glob("*/record.json"), reverse=True):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("resume_key") == key:
            yield path, record


def _finished(runs: Path, key: str) -> dict | None:
    return next((r for _, r in _records_of(runs, key) if r.get("status") == "finished"), None)


def _running(runs: Path, key: str) -> str:
    """Which run holds the identity's lock, as its record says (it may not have written one yet)."""
    for path, record in _records_of(runs, key):
        if record.get("status") == "running":
            attempt = (record.get("attempts") or [{}])[-1]
            return f"run {record['run_id']} (pid {attempt.get('pid')} on {attempt.get('host')}; {path})"
    return f"another process holds {runs.parent / 'locks' / (key + '.lock')}"


def print_paths(record: dict) -> None:
    out = Console(soft_wrap=True)
    out.print(f"record:    {record['record_path']}")
    wb = record.get("wandb") or {}
    if wb.get("dir"):
        out.print(
            f"W&B run:   {wb['dir']} (mode {wb['mode']}; view: `wandb leet inspect --summary <dir>`;"
            " upload: `wandb sync <dir>` once logged in)"
        )
    for stage, art in record.get("artifacts", {}).items():
        cached = " (cached)" if art.get("cached") else ""
        out.print(f"{stage + ':':<14}{art['path']}{cached}")
    total = record.get("cost", {}).get("wall_seconds", {}).get("total")
    if total is not None:
        out.print(f"wall time: {total:.0f} s")


def main() -> None:
    """Console script ``rlhf-bench``."""
    import hydra

    register_schemas()
    register_sweeps()
    if "--fresh" in sys.argv[1:]:  # ours, not Hydra's: the jobs (also a launcher's processes) see it
        sys.argv = [a for a in sys.argv if a != "--fresh"]
        os.environ[FRESH_ENV] = "1"
    preflight(sys.argv[1:])
    app = hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(run_job)
    app()


if __name__ == "__main__":
    main()
