"""The first GPU's check: one command, every measurement in one JSON file.

    bash benchmarks/gpu_check.sh            # on the GPU machine: installs the carried wheels, then runs this
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-dry   # here: the same code paths on a CPU

Parts, each run in its own process with its own time limit (a part that fails or runs out of time
is recorded as such; the others still run), inside one overall budget (``--budget``, 450 s):

  install          the carried wheels (``--wheels``, made by benchmarks/gpu_wheels.sh) that are not
                   installed yet, ``pip install --no-index --no-deps`` (the image's torch is never
                   replaced), then ``pip check``
  gpu_tests        ``pytest -m gpu tests/system/test_gpu.py``: bf16 autocast with fp32 trained and
                   bf16 frozen weights, CUDA generators and determinism, ``device=cuda:N``, memory
                   freed between stages, an NCCL process group of one process
  pipeline         the default experiment on ``device=cuda precision=bf16`` end to end: the record is
                   read back and its numbers checked (finite, in range; whether PPO beat SFT)
  throughput_tiny  the tiny model and pythia-160m built from its published config (no hub): PPO, GRPO
  throughput_160m  and DPO steps/s at 64 sequences per step, generated tokens/s, the update's model
                   FLOP/s over a bf16 matmul peak measured in the same process (MFU), peak
                   ``torch.cuda.max_memory_allocated``
  versus_trl       ``benchmarks/versus_trl.py --device cuda --precision bf16`` when TRL is importable;
                   otherwise skipped, with the reason

``--dry-run``: device=cpu, tiny sizes, two or three steps, lm-eval off; everything else as on the
GPU (the GPU tests run on the CPU: RLHF_BENCH_GPU_TESTS_ON_CPU=1). The JSON's schema is
``REPORT_SCHEMA`` below and docs/gpu.md; ``validate`` checks a report against it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCHEMA_VERSION = 1
PARTS = ("install", "gpu_tests", "pipeline", "throughput_tiny", "throughput_160m", "versus_trl")
STATUSES = ("ok", "failed", "timeout", "skipped")
THROUGHPUT_METHODS = ("ppo", "grpo", "dpo")

# EleutherAI/pythia-160m's config.json (Biderman et al. 2023), built here with random weights: no hub.
# The vocabulary stays Pythia's 50,304 (embedding and LM head as in the real model) while the
# tokenizer is the task's own BPE (~576 tokens): ids past it are never in the data and decode to nothing.
PYTHIA_160M = dict(
    vocab_size=50304,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    rotary_pct=0.25,
    rotary_emb_base=10000,
    max_position_embeddings=2048,
    layer_norm_eps=1e-5,
    use_parallel_residual=True,
    tie_word_embeddings=False,
    attention_dropout=0.0,
    hidden_dropout=0.0,
)
# the same code path at a size a CPU runs in a second (--dry-run)
PYTHIA_DRY = {
    **PYTHIA_160M,
    "vocab_size": 768,  # still past the task's tokenizer: the ids beyond it are banned as on the GPU
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 128,
}

# The dry run's sizes: every stage and method at the sizes of the test suite's fast runs (a CPU runs
# each in seconds). The GPU run uses the defaults: the default experiment, each method's own batch.
DRY_TINY = ["model.tiny.n_layer=1", "model.tiny.d_model=32", "model.tiny.n_head=2", "model.tiny.vocab_size=400"]
DRY_TASK = ["task.n_sft=1000", "task.n_train_prompts=128", "task.n_eval_prompts=32", "task.max_response_tokens=8"]
DRY_METHODS = {
    "ppo": ["method.prompts_per_step=8", "method.epochs=1", "method.num_minibatches=1"],
    "grpo": ["method.prompts_per_step=2"],
    "dpo": [],
}
DRY_PIPELINE = [
    *DRY_TASK,
    *DRY_TINY,
    "sft.steps=10",
    "sft.batch_size=32",
    "preferences.n_train=64",
    "preferences.n_eval=32",
    "eval.n_prompts=16",
    "method.steps=2",
    *DRY_METHODS["ppo"],
    "reward_model.epochs=1",
    "reward_model.min_gold_accuracy=0",
    "reward_model.n_normalization_samples=32",
]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that differs between the GPU run and the dry run; the code paths do not."""

    dry_run: bool
    device: str
    precision: str
    work: str  # stage cache, run records, logs, W&B files (not returned from the GPU machine)
    budget: float  # seconds for all parts together
    limits: dict[str, float]  # each part's own time limit (seconds)
    pipeline: list[str]  # overrides of the default experiment
    tiny: list[str] | None  # the throughput's tiny model (None: benchmarks/common.py's, as its other benchmarks)
    task: list[str]  # the throughput runs' task and SFT sizes
    methods: dict[str, list[str]]  # each method's overrides in the throughput runs
    pythia: dict[str, Any]
    sft_steps: int  # SFT steps of the throughput runs' cached stage
    pairs: int  # preference pairs: DPO's one epoch is pairs / 32 steps
    peak_n: int  # the square bf16 matmul of the peak: 2 n^3 FLOPs
    peak_seconds: float
    generation: tuple[int, int]  # (prompts, new tokens) of the generation measurement
    update_groups: int  # the update measurement's prompts x 4 samples
    update_repeats: int
    wheels: str | None = None  # the folder of wheels to install first (the install part)

    @classmethod
    def create(cls, dry_run: bool, work: str, budget: float, wheels: str | None = None) -> Settings:
        """The GPU run (PPO and GRPO 8 steps, the first left out of the rates; DPO one epoch of
        512 pairs, 16 steps), or the dry run's tiny version of it."""
        if dry_run:
            limits = dict(install=120, gpu_tests=240, pipeline=240, throughput=240, versus_trl=240)
            methods = {
                m: [*sizes, "method.steps=2"] if m != "dpo" else ["method.epochs=1"] for m, sizes in DRY_METHODS.items()
            }
            sizes = dict(pipeline=DRY_PIPELINE, tiny=DRY_TINY, methods=methods, pythia=PYTHIA_DRY)
            sizes.update(task=[*DRY_TASK, "sft.batch_size=16"])
            sizes.update(sft_steps=10, pairs=64, peak_n=256, peak_seconds=0.2, generation=(8, 8))
            return cls(
                True, "cpu", "bf16", work, budget, limits, update_groups=2, update_repeats=2, wheels=wheels, **sizes
            )
        limits = dict(install=120, gpu_tests=120, pipeline=200, throughput=150, versus_trl=240)
        methods = {"ppo": ["method.steps=8"], "grpo": ["method.steps=8"], "dpo": ["method.epochs=1"]}
        sizes = dict(pipeline=[], tiny=None, task=[], methods=methods, pythia=PYTHIA_160M, sft_steps=100, pairs=512)
        sizes.update(peak_n=8192, peak_seconds=2.0, generation=(256, 128))
        return cls(
            False, "cuda", "bf16", work, budget, limits, update_groups=16, update_repeats=10, wheels=wheels, **sizes
        )


# --- the report's schema ----------------------------------------------------------------
# A type, a tuple of types (None: null allowed), or a nested schema (a dict). docs/gpu.md documents
# every key; tests/system/test_gpu_check.py checks the dry run's report and the docs against these.
PART_SCHEMA = {"status": str, "seconds": float, "limit_seconds": float, "error": (str, None), "result": (dict, None)}
RATES_SCHEMA = {
    "status": str,
    "steps_timed": int,
    "steps_per_second": float,
    "generated_tokens_per_second": float,
    "trained_tokens_per_second": float,
    "peak_memory_mb": float,
    "final_loss": (float, None),
}
RESULT_SCHEMAS: dict[str, dict[str, Any]] = {
    "install": {"wheels": int, "installed": list, "present": list, "pip_check": str, "python": str},
    "gpu_tests": {"device": str, "passed": int, "failed": int, "skipped": int, "errors": int, "tests": list},
    "pipeline": {
        "record": str,
        "status": str,
        "device": str,
        "precision": str,
        "lm_eval": bool,
        "wall_seconds": (float, None),
        "metrics": dict,
        "checks": dict,
        "learned": bool,
    },
    "throughput": {
        "model": str,
        "parameters": int,
        "device": str,
        "device_name": str,
        "precision": str,
        "peak": {"dtype": str, "n": int, "flops": float},
        "methods": dict,
        "generation": {
            "status": str,
            "prompts": int,
            "new_tokens": int,
            "seconds": float,
            "tokens_per_second": float,
            "peak_memory_mb": float,
        },
        "update": {
            "status": str,
            "rows": int,
            "distinct_prompts": int,
            "prompt_length": int,
            "response_length": int,
            "seconds_per_update": float,
            "flops_per_update": float,
            "achieved_flops": float,
            "mfu": float,
            "peak_memory_mb": float,
        },
        "peak_memory_mb": float,
        "torch": str,
        "cuda": (str, None),
    },
    "versus_trl": {"command": str, "results": dict},
}
REPORT_SCHEMA = {
    "schema_version": int,
    "dry_run": bool,
    "started": str,
    "seconds": float,
    "budget_seconds": float,
    "command": str,
    "git": (dict, None),
    "environment": dict,
    "parts": dict,
    "summary": list,
    "schema_errors": list,
}


def _type_errors(value: Any, schema: Any, where: str) -> list[str]:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        errors = [f"{where}.{key}: missing" for key in schema if key not in value]
        return errors + [e for k in schema if k in value for e in _type_errors(value[k], schema[k], f"{where}.{k}")]
    allowed = schema if isinstance(schema, tuple) else (schema,)
    if value is None:
        return [] if None in allowed else [f"{where}: null"]
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return [] if math.isfinite(value) else [f"{where}: {value} is not finite"]
    if isinstance(value, bool) and bool not in allowed:
        return [f"{where}: expected {'/'.join(t.__name__ for t in allowed if t)}, got bool"]
    if any(t is not None and isinstance(value, t) for t in allowed):
        return []
    return [f"{where}: expected {'/'.join(t.__name__ for t in allowed if t)}, got {type(value).__name__}"]


def result_schema(part: str) -> dict[str, Any]:
    return RESULT_SCHEMAS["throughput" if part.startswith("throughput") else part]


def validate(report: dict[str, Any]) -> list[str]:
    """Where ``report`` departs from the schema: [] when it follows it. A part that is not ``ok``
    needs only its status, time and error; an ``ok`` part's result must follow its own schema
    (a throughput method or measurement that failed inside an ``ok`` part: its status and error)."""
    errors = _type_errors(report, REPORT_SCHEMA, "report")
    for name, part in report.get("parts", {}).items():
        where = f"report.parts.{name}"
        if name not in PARTS:
            errors.append(f"{where}: not a part ({', '.join(PARTS)})")
            continue
        errors += _type_errors(part, PART_SCHEMA, where)
        if part.get("status") not in STATUSES:
            errors.append(f"{where}.status: {part.get('status')!r} is not one of {', '.join(STATUSES)}")
        if part.get("status") != "ok":
            continue
        result, schema = part.get("result") or {}, dict(result_schema(name))
        if name.startswith("throughput"):  # a measurement that failed has its status and error only
            for key in ("generation", "update"):
                if isinstance(result.get(key), dict) and result[key].get("status") != "ok":
                    schema[key] = {"status": str, "error": str}
            for method, rates in (result.get("methods") or {}).items():
                ok = isinstance(rates, dict) and rates.get("status") == "ok"
                errors += _type_errors(
                    rates, RATES_SCHEMA if ok else {"status": str, "error": str}, f"{where}.result.methods.{method}"
                )
        errors += _type_errors(result, schema, f"{where}.result")
    return errors


def schema_keys() -> list[str]:
    """Every documented key path (``parts.<part>.result.<key>``, dotted), for the docs' check."""
    keys = [f"report.{k}" for k in REPORT_SCHEMA] + [f"parts.<part>.{k}" for k in PART_SCHEMA]
    keys += [f"methods.<method>.{k}" for k in RATES_SCHEMA]

    def walk(schema: dict[str, Any], prefix: str) -> None:
        for key, value in schema.items():
            keys.append(f"{prefix}.{key}")
            if isinstance(value, dict):
                walk(value, f"{prefix}.{key}")

    for part, schema in RESULT_SCHEMAS.items():
        walk(schema, part)
    return keys


# --- running a part ---------------------------------------------------------------------
def child_env(s: Settings) -> dict[str, str]:
    """The environment of every process a part starts: the tree's own package first on the path
    (the installed wheel may be older than the tree), offline hub and W&B, files under ``work``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="offline", WANDB_SILENT="true")
    env.update({v: "1" for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")})
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        env[var] = str(Path(s.work) / "wandb_home" / var.lower())
    if s.dry_run:
        env["RLHF_BENCH_GPU_TESTS_ON_CPU"] = "1"
    return env


def run_command(cmd: list[str], timeout: float, env: dict[str, str], log: Path) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group with its output in ``log``; past ``timeout`` seconds the
    whole group is killed (a part's children too). Returns (exit code or None on timeout, output)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, log.read_text(errors="replace")


def tail(text: str, chars: int = 2000) -> str:
    return text[-chars:].strip()


class PartFailed(Exception):
    """A part ran but what it produced is wrong: its message is the part's error."""


def run_part(name: str, s: Settings, limit: float) -> dict[str, Any]:
    """One part, time-boxed: {status, seconds, limit_seconds, error, result}."""
    start = time.perf_counter()
    status, error, result = "ok", None, None
    try:
        result = PART_RUNNERS[name](s, limit)
    except subprocess.TimeoutExpired:
        status, error = "timeout", f"killed after {limit:.0f} s"
    except Skipped as skip:
        status, error = "skipped", str(skip)
    except Exception as exc:  # a failing part is recorded, never fatal to the others
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    return {
        "status": status,
        "seconds": round(time.perf_counter() - start, 2),
        "limit_seconds": float(limit),
        "error": error,
        "result": result,
    }


class Skipped(Exception):
    """A part that does not apply here (no TRL, no wheels folder): its message says why."""


def checked(cmd: list[str], s: Settings, limit: float, log_name: str) -> str:
    """Run ``cmd`` as a part's process; its output, or TimeoutExpired / PartFailed."""
    rc, output = run_command(cmd, limit, child_env(s), Path(s.work) / "logs" / log_name)
    if rc is None:
        raise subprocess.TimeoutExpired(cmd, limit)
    if rc != 0:
        raise PartFailed(f"exit {rc}: {tail(output)}")
    return output


# --- install ----------------------------------------------------------------------------
def wheel_project(path: Path) -> str:
    """The distribution name of a wheel file (``name-version-...whl``), normalised (PEP 503)."""
    return re.sub(r"[-_.]+", "-", path.name.split("-")[0]).lower()


def installed(project: str) -> bool:
    try:
        metadata.version(project)
    except metadata.PackageNotFoundError:
        return False
    return True


def install_wheels(folder: Path, limit: float) -> dict[str, Any]:
    """Install the wheels in ``folder`` whose project is not installed yet, with no index and no
    dependencies: nothing already there (torch, transformers ...) is replaced. Then ``pip check``."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise Skipped(f"no wheels in {folder} (make them with bash benchmarks/gpu_wheels.sh)")
    missing = [w for w in wheels if not installed(wheel_project(w))]
    present = sorted(wheel_project(w) for w in wheels if w not in missing)
    if missing:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--find-links", str(folder)]
        proc = subprocess.run([*cmd, *map(str, missing)], capture_output=True, text=True, timeout=limit)
        if proc.returncode:
            raise PartFailed(f"pip install exit {proc.returncode}: {tail(proc.stderr)}")
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    return {
        "wheels": len(wheels),
        "installed": [w.name for w in missing],
        "present": present,
        "pip_check": (check.stdout + check.stderr).strip(),
        "python": platform.python_version(),
    }


# --- gpu_tests --------------------------------------------------------------------------
def junit_results(path: Path) -> dict[str, Any]:
    """pytest's JUnit XML -> counts and one row per test (id, outcome, seconds, message)."""
    tests, counts = [], dict(passed=0, failed=0, skipped=0, errors=0)
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child, name in (("failure", "failed"), ("error", "errors"), ("skipped", "skipped")):
            node = case.find(child)
            if node is not None:
                outcome, message = name, (node.get("message") or "")[:500]
                break
        counts[outcome] += 1
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        tests.append({"id": test_id, "outcome": outcome, "seconds": float(case.get("time", 0)), "message": message})
    return {**counts, "tests": tests}


def part_gpu_tests(s: Settings, limit: float) -> dict[str, Any]:
    xml = Path(s.work) / "gpu_tests.xml"
    xml.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/system/test_gpu.py", "-p", "no:cacheprovider"]
    cmd += ["-p", "no:xdist", "-q", "-o", "addopts=", f"--junitxml={xml}"]
    rc, output = run_command(cmd, limit, child_env(s), Path(s.work) / "logs" / "gpu_tests.log")
    if rc is None:
        raise subprocess.TimeoutExpired(cmd, limit)
    if not xml.exists():
        raise PartFailed(f"pytest exit {rc}, no results: {tail(output)}")
    result = {"device": s.device, **junit_results(xml)}
    if rc not in (0, 1) or result["passed"] + result["failed"] + result["errors"] == 0:
        raise PartFailed(f"pytest exit {rc}, {result['passed']} passed, {result['skipped']} skipped: {tail(output)}")
    return result


# --- pipeline ---------------------------------------------------------------------------
def part_pipeline(s: Settings, limit: float) -> dict[str, Any]:
    """The default experiment on the device, end to end; its record read back and checked."""
    work = Path(s.work) / "pipeline"
    lm_eval = not s.dry_run and importlib.util.find_spec("lm_eval") is not None
    overrides = [f"paths.results_dir={work}/results", f"paths.artifacts_dir={work}/artifacts"]
    overrides += [f"device={s.device}", f"precision={s.precision}", *s.pipeline]
    overrides += [] if lm_eval else ["eval.lm_eval.tasks=[]"]
    checked([sys.executable, "-m", "rlhf_bench", *overrides], s, limit, "pipeline.log")
    records = sorted((work / "results" / "runs").glob("*/record.json"), key=lambda p: p.stat().st_mtime)
    if not records:
        raise PartFailed(f"no record under {work}/results/runs")
    record = json.loads(records[-1].read_text())
    metrics = {who: record["metrics"].get(who, {}) for who in ("policy", "sft", "reward_model")}
    checks = pipeline_checks(record, s)
    result = {
        "record": str(records[-1]),
        "status": record.get("status", ""),
        "device": str(record.get("device", "")),
        "precision": str(record.get("precision", "")),
        "lm_eval": lm_eval,
        "wall_seconds": record.get("cost", {}).get("wall_seconds", {}).get("total"),
        "metrics": metrics,
        "checks": checks,
        "learned": metrics["policy"].get("gold_reward", -9) > metrics["sft"].get("gold_reward", 9),
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise PartFailed(f"the record fails {', '.join(failed)}: {json.dumps(result)[:1500]}")
    return result


def pipeline_checks(record: dict[str, Any], s: Settings) -> dict[str, bool]:
    """The numbers a finished record must have whatever the budget: finite and in range."""
    m = record.get("metrics", {})
    policy, sft, rm = m.get("policy", {}), m.get("sft", {}), m.get("reward_model", {})

    def number(d: dict, key: str) -> float:
        value = d.get(key)
        return value if isinstance(value, (int, float)) and math.isfinite(value) else float("nan")

    def within(d: dict, key: str, lo: float, hi: float) -> bool:
        return lo <= number(d, key) <= hi

    return {
        "finished": record.get("status") == "finished" and record.get("error") is None,
        "on_device": str(record.get("device", "")).startswith(s.device),
        "bf16": str(record.get("precision", "")) in ("bfloat16", "bf16"),
        "gold_in_range": all(within(d, "gold_reward", -1.0, 1.0) for d in (policy, sft)),
        "win_rate_in_range": all(within(d, "win_rate_vs_sft", 0.0, 1.0) for d in (policy, sft)),
        "kl_nonnegative": within(policy, "kl", -0.05, 1e4) and within(sft, "kl", -1e-6, 1e-6),
        "rm_accuracy_in_range": within(rm, "accuracy", 0.0, 1.0),
        "tokens_counted": record.get("cost", {}).get("tokens_generated", 0) > 0,
    }


# --- throughput (a child process per model) ---------------------------------------------
def part_throughput(model: str):
    def run(s: Settings, limit: float) -> dict[str, Any]:
        cmd = [sys.executable, __file__, "--child", model, "--settings", json.dumps(dataclasses.asdict(s))]
        output = checked(cmd, s, limit, f"throughput_{model}.log")
        results = [line[len("RESULT ") :] for line in output.splitlines() if line.startswith("RESULT ")]
        if not results:
            raise PartFailed(f"no RESULT line: {tail(output)}")
        return json.loads(results[-1])

    return run


# --- versus TRL -------------------------------------------------------------------------
def part_versus_trl(s: Settings, limit: float) -> dict[str, Any]:
    out = Path(s.work) / "versus_trl.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "versus_trl.py"), "--device", s.device]
    cmd += ["--precision", s.precision, "--models", "tiny,25m", "--steps", "6"]
    cmd += ["--root", str(Path(s.work) / "bench_trl"), "--out", str(out)]
    missing = importlib.util.find_spec("trl") is None
    if s.dry_run:  # minutes on a CPU: run by hand there (results/benchmarks/README.md)
        gpu_cmd = " ".join(cmd[1:]).replace("--device cpu", "--device cuda")
        trl = " (TRL is not installed here; bash benchmarks/gpu_wheels.sh carries it)" if missing else ""
        raise Skipped(f"dry run: versus_trl.py not run{trl}; the GPU run runs {gpu_cmd}")
    if missing:
        raise Skipped("TRL is not installed: versus_trl skipped (bash benchmarks/gpu_wheels.sh carries it)")
    checked(cmd, s, limit, "versus_trl.log")
    return {"command": " ".join(cmd[1:]), "results": json.loads(out.read_text())}


def part_install(s: Settings, limit: float) -> dict[str, Any]:
    if not s.wheels:
        raise Skipped("no --wheels folder given: the packages installed are used as they are")
    return install_wheels(Path(s.wheels), limit)


PART_RUNNERS = {
    "install": part_install,
    "gpu_tests": part_gpu_tests,
    "pipeline": part_pipeline,
    "throughput_tiny": part_throughput("tiny"),
    "throughput_160m": part_throughput("160m"),
    "versus_trl": part_versus_trl,
}


def part_limit(name: str, s: Settings) -> float:
    return s.limits["throughput" if name.startswith("throughput") else name]


# --- the child's measurements -------------------------------------------------------------
def pythia_folder(s: Settings, overrides: list[str]) -> Path:
    """pythia-160m's architecture (``s.pythia``) with random weights and the task's own tokenizer,
    saved like a hub checkpoint: ``model=pythia_160m model.name_or_path=<folder>`` loads it."""
    from hydra.utils import get_class
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    from rlhf_bench.compose import load_config
    from rlhf_bench.core import models

    folder = Path(s.work) / "models" / ("pythia_160m_dry" if s.dry_run else "pythia_160m")
    if (folder / "config.json").exists():
        return folder
    cfg = load_config(overrides)
    task = get_class(cfg.task._target_)(cfg.task)
    tokenizer = models.train_tokenizer(getattr(task, "tokenizer_texts", task.sft_texts), 1024)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = GPTNeoXConfig(**s.pythia, **ids, pad_token_id=tokenizer.pad_token_id)
    models.quiet_transformers()
    models.save_pretrained(AutoModelForCausalLM.from_config(config), tokenizer, folder)
    return folder


def model_overrides(s: Settings, model: str) -> list[str]:
    from common import MODELS

    common = [
        f"device={s.device}",
        f"precision={s.precision}",
        f"preferences.n_train={s.pairs}",
        "preferences.n_eval=64",
        *s.task,
    ]
    if model == "tiny":
        return [*common, *(s.tiny if s.tiny is not None else MODELS["tiny"])]
    return [*common, "model=pythia_160m", f"model.name_or_path={pythia_folder(s, common)}"]


def context(s: Settings, overrides: list[str], method: str):
    """The run a method receives (cached stages under ``work``), EOS and the ids past the tokenizer
    never sampled: every response has the task's full length."""
    from common import ban_eos, build_context, instrument

    ctx = build_context([*overrides, f"method={method}", *s.methods[method]], Path(s.work) / "bench", s.sft_steps)
    banned = ban_eos(ctx)
    model_vocab = json.loads((Path(ctx.sft_path) / "config.json").read_text())["vocab_size"]
    if model_vocab > len(ctx.tokenizer):  # pythia's 50,304 over the task's BPE
        banned = sorted({*banned, *range(len(ctx.tokenizer), model_vocab)})
        instrument(ctx, banned_token_ids=lambda: banned)
    return ctx


def guarded(measure, *args) -> dict[str, Any]:
    """A measurement's result with status ok, or its error with status failed (the others go on)."""
    try:
        return {"status": "ok", **measure(*args)}
    except Exception as exc:
        import traceback

        traceback.print_exc()
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:1500]}


def method_rates(s: Settings, overrides: list[str], method: str) -> dict[str, Any]:
    """One method's steady-state rates at its defaults (64 sequences per step), first step left out."""
    from common import StepClock, peak_memory_mb, reset_peak_memory, sync
    from hydra.utils import get_method

    ctx = context(s, overrides, method)
    clock = StepClock(ctx)
    reset_peak_memory(ctx.device)
    get_method(ctx.cfg.method._target_)(ctx, ctx.cfg.method)
    sync(ctx.device)
    rates = clock.rates(skip=1)
    loss = clock.last.get("train/loss", clock.last.get("train/policy_loss"))
    return {
        "steps_timed": int(rates["steps_timed"]),
        "steps_per_second": rates["steps_per_second"],
        "generated_tokens_per_second": rates["generated_tokens_per_second"],
        "trained_tokens_per_second": rates["trained_tokens_per_second"],
        "peak_memory_mb": peak_memory_mb(ctx.device),
        "final_loss": float(loss) if loss is not None else None,
    }


def generation_rate(s: Settings, ctx) -> dict[str, Any]:
    """Our sampler (``core.rollout.generate``, KV cache) on the SFT policy: ``s.generation`` =
    (prompts, new tokens) per call, EOS banned so that every row generates all of them."""
    import torch
    from common import peak_memory_mb, reset_peak_memory, sync

    from rlhf_bench.core.rollout import generate

    prompts, new_tokens = s.generation
    policy = ctx.load_policy().eval()
    ids, mask = ctx.pad_prompts(ctx.encode_prompts(ctx.sample_prompts(prompts, torch.Generator().manual_seed(0))))
    tok = ctx.tokenizer

    def call(n: int):
        with ctx.autocast():
            return generate(
                policy, ids, mask, max_new_tokens=n, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, banned_token_ids=ctx.banned_token_ids(),
                generator=torch.Generator(device=ctx.device).manual_seed(0),
            )  # fmt: skip

    call(4)  # warm-up: kernels, allocator
    reset_peak_memory(ctx.device)
    sync(ctx.device)
    start = time.perf_counter()
    out, _ = call(new_tokens)
    sync(ctx.device)
    seconds = time.perf_counter() - start
    assert out.shape == (prompts, new_tokens), out.shape
    return {
        "prompts": prompts,
        "new_tokens": new_tokens,
        "seconds": seconds,
        "tokens_per_second": prompts * new_tokens / seconds,
        "peak_memory_mb": peak_memory_mb(ctx.device),
    }


def update_rate(s: Settings, ctx, peak: float) -> dict[str, Any]:
    """The policy's gradient update alone, as train_step.py's hardware measurement: log-probs and
    entropy of ``s.update_groups`` prompts x 4 samples, a policy-gradient loss, AdamW. MFU = the
    pass's model FLOPs (``logprob_pass_flops`` x 3 for the backward) per second / ``peak``."""
    import torch
    from common import peak_memory_mb, reset_peak_memory, sync
    from train_step import logprob_pass_flops

    from rlhf_bench.core import rollout
    from rlhf_bench.core.train import make_optimizer, optimizer_step
    from rlhf_bench.training.groups import sample_groups

    policy = ctx.load_policy().train()
    prompts = ctx.sample_prompts(s.update_groups, torch.Generator().manual_seed(0))
    _, batch = sample_groups(ctx, policy, prompts, 4, 1.0, torch.Generator(device=ctx.device).manual_seed(1))
    optimizer = make_optimizer(policy.parameters(), 1e-5)
    advantages = torch.randn(len(batch), generator=torch.Generator().manual_seed(2)).to(ctx.device)

    def step():
        with ctx.autocast():
            logp, _ = rollout.response_logprobs(policy, *batch.inputs(), with_entropy=True)
        loss = -(advantages.unsqueeze(-1) * logp.float() * batch.response_mask).sum(-1).mean()
        optimizer_step(loss, optimizer, 1.0)

    for _ in range(2):  # warm-up: kernels, allocator, AdamW state
        step()
    reset_peak_memory(ctx.device)
    sync(ctx.device)
    start = time.perf_counter()
    for _ in range(s.update_repeats):
        step()
    sync(ctx.device)
    seconds = (time.perf_counter() - start) / s.update_repeats
    rows, prompt_length, response_length = len(batch), batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    shared = rollout._shared_prompts(batch.prompt_ids, batch.prompt_mask)
    prompt_rows = rows if shared is None else shared[0].shape[0]
    flops = 3.0 * logprob_pass_flops(policy, prompt_rows, rows, prompt_length, response_length)
    return {
        "rows": rows,
        "distinct_prompts": prompt_rows,
        "prompt_length": prompt_length,
        "response_length": response_length,
        "seconds_per_update": seconds,
        "flops_per_update": flops,
        "achieved_flops": flops / seconds,
        "mfu": flops / seconds / peak,
        "peak_memory_mb": peak_memory_mb(ctx.device),
    }


def child_throughput(s: Settings, model: str) -> dict[str, Any]:
    """Everything measured on one model, in this process: the matmul peak first, then each method,
    the sampler and the update (each failure recorded beside the others' numbers)."""
    import torch
    from common import matmul_peak_flops, peak_memory_mb

    from rlhf_bench.core import models

    models.quiet_transformers()
    torch.manual_seed(0)
    device = torch.device(s.device)
    peak = matmul_peak_flops(device, n=s.peak_n, dtype=torch.bfloat16, seconds=s.peak_seconds)
    overrides = model_overrides(s, model)
    methods = {m: guarded(method_rates, s, overrides, m) for m in THROUGHPUT_METHODS}
    ctx = context(s, overrides, "grpo")
    parameters = sum(p.numel() for p in ctx.load_policy().parameters())
    return {
        "model": model,
        "parameters": parameters,
        "device": str(ctx.device),
        "device_name": torch.cuda.get_device_name(ctx.device)
        if ctx.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "precision": s.precision,
        "peak": {"dtype": "bf16", "n": s.peak_n, "flops": peak},
        "methods": methods,
        "generation": guarded(generation_rate, s, ctx),
        "update": guarded(update_rate, s, ctx, peak),
        "peak_memory_mb": peak_memory_mb(ctx.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


# --- the report ---------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """What the parts ran on, read without importing torch (a broken install still gets a report)."""
    versions = {}
    for name in (
        "torch",
        "transformers",
        "accelerate",
        "peft",
        "hydra-core",
        "omegaconf",
        "wandb",
        "lm-eval",
        "trl",
        "rlhf-bench",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpus = None
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        proc = subprocess.run(query, capture_output=True, text=True, timeout=60)
        gpus = [line.strip() for line in proc.stdout.splitlines() if line.strip()] or None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gpus": gpus,
        "versions": versions,
    }


def git_info() -> dict[str, Any] | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, timeout=30)
        status = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode:
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _rate(r: dict[str, Any], key: str, fmt: str) -> str:
    return format(r[key], fmt) if r.get("status") == "ok" else "failed"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One line per part (status, time), and the throughput figures under theirs."""
    lines = []
    for name, part in report["parts"].items():
        line = f"{name:<16} {part['status']:<8} {part['seconds']:>7.1f} s"
        result = part.get("result") or {}
        if part["status"] != "ok":
            line += f"  {(part['error'] or '').splitlines()[0][:120] if part['error'] else ''}"
        elif name == "gpu_tests":
            line += f"  {result['passed']} passed, {result['failed']} failed, {result['skipped']} skipped, {result['errors']} errors"
        elif name == "pipeline":
            p, sft = result["metrics"]["policy"], result["metrics"]["sft"]
            line += f"  gold {sft.get('gold_reward', float('nan')):.3f} -> {p.get('gold_reward', float('nan')):.3f}, KL {p.get('kl', float('nan')):.2f}"
        elif name == "install":
            line += f"  {len(result['installed'])} installed, {len(result['present'])} already there"
        lines.append(line)
        if name.startswith("throughput") and part["status"] == "ok":
            lines += throughput_lines(result)
    return lines


def flops_text(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP/s"


def throughput_lines(r: dict[str, Any]) -> list[str]:
    rates = ", ".join(f"{m} {_rate(v, 'steps_per_second', '.2f')}" for m, v in r["methods"].items())
    g, u = r["generation"], r["update"]
    return [
        f"    {r['model']} ({r['parameters'] / 1e6:.1f}M, {r['device_name']}): steps/s {rates}",
        f"    generated tokens/s {_rate(g, 'tokens_per_second', '.0f')}; update MFU {_rate(u, 'mfu', '.1%')} of a "
        f"{flops_text(r['peak']['flops'])} bf16 peak; peak memory {r['peak_memory_mb']:.0f} MB",
    ]


def run_all(s: Settings, parts: list[str], out: Path) -> dict[str, Any]:
    """Every part in order within the budget; the report written to ``out`` after each part (a
    run cut short still leaves what it measured)."""
    started, begin = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter()
    report = {
        "schema_version": SCHEMA_VERSION,
        "dry_run": s.dry_run,
        "started": started,
        "seconds": 0.0,
        "budget_seconds": float(s.budget),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git": git_info(),
        "environment": environment(),
        "parts": {},
        "summary": [],
        "schema_errors": [],
    }
    for name in parts:
        left = s.budget - (time.perf_counter() - begin)
        limit = min(part_limit(name, s), left)
        if limit < 20:
            report["parts"][name] = {"status": "skipped", "seconds": 0.0, "limit_seconds": float(max(limit, 0)),
                                     "error": f"the budget of {s.budget:.0f} s is spent", "result": None}  # fmt: skip
        else:
            print(f"[gpu_check] {name} (limit {limit:.0f} s) ...", flush=True)
            report["parts"][name] = run_part(name, s, limit)
            print(
                f"[gpu_check] {name}: {report['parts'][name]['status']} in {report['parts'][name]['seconds']:.0f} s",
                flush=True,
            )
        if name == "install":  # the environment as the other parts see it
            report["environment"] = environment()
        report["seconds"] = round(time.perf_counter() - begin, 2)
        report["summary"] = summary_lines(report)
        report["schema_errors"] = validate(report)
        write_report(out, report)
    return report


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="device=cpu, tiny sizes, a few steps")
    parser.add_argument("--out", help="folder of gpu_check.json (default: $OUT, else results/benchmarks/gpu)")
    parser.add_argument("--work", help="stage cache, records, logs (default: a folder under the temp dir)")
    parser.add_argument("--wheels", help="install the wheels of this folder that are missing (gpu_wheels.sh makes it)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated, in order: " + ", ".join(PARTS))
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all parts together")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a throughput part's process: tiny or 160m
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # common, train_step
        settings = json.loads(args.settings)
        s = Settings(**{**settings, "generation": tuple(settings["generation"])})
        print("RESULT " + json.dumps(child_throughput(s, args.child), default=float), flush=True)
        return 0
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    work = args.work or os.path.join(tempfile.gettempdir(), "rlhf-bench-gpu-check" + ("-dry" if args.dry_run else ""))
    wheels = str(Path(args.wheels).resolve()) if args.wheels else None
    s = Settings.create(args.dry_run, str(Path(work).resolve()), args.budget, wheels)
    out_dir = args.out or os.environ.get("OUT") or ("artifacts/gpu_check" if args.dry_run else "results/benchmarks/gpu")
    out = Path(out_dir) / "gpu_check.json"
    report = run_all(s, parts, out)
    print(
        "\n".join(
            [
                "",
                f"gpu_check ({'dry run' if s.dry_run else s.device}) in {report['seconds']:.0f} s:",
                *report["summary"],
            ]
        )
    )
    if report["schema_errors"]:
        print("schema errors: " + "; ".join(report["schema_errors"][:10]))
    print(f"wrote {out}")
    bad = [name for name, part in report["parts"].items() if part["status"] in ("failed", "timeout")]
    return 1 if bad or report["schema_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
