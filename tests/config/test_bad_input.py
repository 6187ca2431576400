"""Bad input, table-driven: every case is the real command line, its exit code and the message
that names the problem (a config key, a file and line, a function) and the fix; no traceback,
and nothing is trained."""

import json
import sys
from pathlib import Path

import pytest
from conftest import fast_overrides

from rlhf_bench import cli

GOOD_PROMPTS = [{"prompt": "customer: my order is late . agent:"}, {"prompt": "customer: my refund is wrong . agent:"}]


def _write(path: Path, content: str | bytes) -> str:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


REWARDS = """
def good(prompts, responses):
    return [float(len(r)) for r in responses]

def raises(prompts, responses):
    return [1.0 / 0 for r in responses]

def short(prompts, responses):
    return [1.0]

def text(prompts, responses):
    return "high"

def nan(prompts, responses):
    return [float("nan")] * len(responses)
"""

# (case id, arguments (``{d}`` is the case's folder), exit code, the message)
CASES = [
    # --- config: keys, groups, types, ranges ---------------------------------------------
    ("unknown key", ["metod=ppo"], 2, "unknown config key 'metod'. Did you mean: method"),
    ("unknown option", ["method=ppoo"], 2, "Did you mean method=ppo?"),
    ("unknown nested key", ["method.lrr=1"], 2, "unknown config key 'method.lrr'. Did you mean: method.lr"),
    ("wrong type", ["seed=abc"], 2, "seed"),
    ("wrong type float", ["sft.lr=fast"], 2, "sft.lr"),
    ("negative lr", ["method.lr=-1"], 2, "method.lr must be > 0 (got -1.0)"),
    ("minibatches", ["method.batch_size=15"], 2, "method.batch_size must be divisible by method.num_minibatches=2"),
    ("enum", ["logger.mode=sometimes"], 2, "logger.mode"),
    ("precision", ["precision=fp8"], 2, "precision"),
    ("device", ["device=tpu"], 2, "device must be one of auto, cpu, cuda, cuda:N, mps"),
    ("temperature 0", ["preferences.temperature=0"], 2, "preferences.temperature must be > 0"),
    ("flip prob", ["preferences.flip_prob=0.7"], 2, "preferences.flip_prob must be in [0, 0.5]"),
    ("annotators", ["preferences.annotators=0"], 2, "preferences.annotators must be >= 1"),
    ("dpo beta", ["method=dpo", "method.beta=0"], 2, "method.beta must be > 0"),
    ("bon n", ["method=best_of_n", "method.n=0"], 2, "method.n must be >= 1"),
    ("rloo k", ["method=rloo", "method.k=1"], 2, "method.k must be >= 2"),
    (
        "grpo aggregation",
        ["method=grpo", "method.loss_aggregation=median"],
        2,
        "method.loss_aggregation must be one of",
    ),
    ("key of another option", ["method=sft", "method.steps=3"], 2, "the method options that have it"),
    ("ensemble size", ["reward_model=ensemble", "reward_model.members=1"], 2, "reward_model.members must be >= 2"),
    ("checkpoint every", ["checkpoint.every_steps=-1"], 2, "checkpoint.every_steps must be >= 0"),
    ("verify", ["checkpoint.verify_artifacts=md5"], 2, "checkpoint.verify_artifacts must be one of hash, size, none"),
    ("sweep value", ["-m", "method.lr=1e-4,-1"], 2, "method.lr must be > 0"),
    ("sweep option", ["-m", "seed=0,1", "method=ppo,ppoo"], 2, "Did you mean method=ppo?"),
    (
        "function reward target",
        ["reward_model=function", "reward_model.target=nocolon"],
        2,
        "reward_model.target must look like",
    ),
    ("function reward missing", ["reward_model=function"], 2, "reward_model.target"),
    ("user task no gold", ["task=jsonl", "task.prompts=p.jsonl"], 2, "task.gold_reward must be set"),
    (
        "user task two judges",
        ["task=jsonl", "task.prompts=p.jsonl", "task.gold_reward=m:f", "task.gold_model=x"],
        2,
        "exactly one judges",
    ),
    ("user task no data", ["task=jsonl", "task.gold_reward=m:f"], 2, "task.prompts or task.preferences must be set"),
    # --- user data files -------------------------------------------------------------------
    ("missing file", ["task.prompts={d}/nope.jsonl"], 2, "nope.jsonl: no such file (set by task.prompts)"),
    ("empty file", ["task.prompts={d}/empty.jsonl"], 2, "empty.jsonl: empty file (set by task.prompts"),
    ("malformed json", ["task.prompts={d}/malformed.jsonl"], 2, "malformed.jsonl:3: not valid JSON"),
    ("not an object", ["task.prompts={d}/list.jsonl"], 2, "list.jsonl:2: expected a JSON object per line, got list"),
    ("missing field", ["task.prompts={d}/nofield.jsonl"], 2, "nofield.jsonl:2: missing field 'prompt'"),
    (
        "wrong field type",
        ["task.prompts={d}/wrongtype.jsonl"],
        2,
        "wrongtype.jsonl:1: field 'prompt' must be a string, got int",
    ),
    ("not utf-8", ["task.prompts={d}/latin1.jsonl"], 2, "latin1.jsonl:2: not UTF-8"),
    ("pair missing rejected", ["task.preferences={d}/pairs.jsonl"], 2, "pairs.jsonl:1: missing field 'rejected'"),
    (
        "bad strength",
        ["task.preferences={d}/strength.jsonl"],
        2,
        "strength.jsonl:2: field 'strength' must be 0, 1, 2 or 3",
    ),
    ("sft missing completion", ["task.sft={d}/sft.jsonl"], 2, "sft.jsonl:1: missing field 'completion'"),
    # --- user reward functions -------------------------------------------------------------
    (
        "gold file missing",
        ["task.gold_reward={d}/missing.py:good"],
        2,
        "task.gold_reward names a file that does not exist",
    ),
    ("gold no function", ["task.gold_reward={d}/rewards.py:absent"], 2, "has no function 'absent'"),
    (
        "gold raises",
        ["task.gold_reward={d}/rewards.py:raises"],
        2,
        "rewards.py:raises (task.gold_reward) raised ZeroDivisionError",
    ),
    ("gold wrong length", ["task.gold_reward={d}/rewards.py:short"], 2, "returned 1 rewards for 4 responses"),
    (
        "gold not numbers",
        ["task.gold_reward={d}/rewards.py:text"],
        2,
        "must return a list of numbers, one per response",
    ),
    ("gold nan", ["task.gold_reward={d}/rewards.py:nan"], 2, "returned nan for response 0"),
    ("module not importable", ["task.gold_reward=no_such_pkg.mod:fn"], 2, "cannot import 'no_such_pkg.mod'"),
]


def _files(d: Path) -> None:
    _write(d / "prompts.jsonl", _jsonl(GOOD_PROMPTS * 10))
    _write(d / "empty.jsonl", "\n\n")
    _write(d / "malformed.jsonl", _jsonl(GOOD_PROMPTS) + '{"prompt": "unclosed\n')
    _write(d / "list.jsonl", _jsonl(GOOD_PROMPTS[:1]) + '["a list"]\n')
    _write(d / "nofield.jsonl", _jsonl(GOOD_PROMPTS[:1]) + '{"text": "no prompt"}\n')
    _write(d / "wrongtype.jsonl", '{"prompt": 17}\n')
    _write(d / "latin1.jsonl", _jsonl(GOOD_PROMPTS[:1]).encode() + '{"prompt": "café"}\n'.encode("latin-1"))
    _write(d / "pairs.jsonl", '{"prompt": "p", "chosen": "a"}\n')
    pair = {"prompt": "p", "chosen": "a", "rejected": "b"}
    _write(d / "strength.jsonl", _jsonl([{**pair, "strength": 1}, {**pair, "strength": 7}]))
    _write(d / "sft.jsonl", '{"prompt": "p"}\n')
    _write(d / "rewards.py", REWARDS)


@pytest.mark.parametrize("case, args, code, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(case, args, code, message, tmp_path, monkeypatch, capsys):
    _files(tmp_path)
    args = [a.replace("{d}", str(tmp_path)) for a in args]
    user_task = any(a.startswith("task.") for a in args) and not any(a.startswith("task=") for a in args)
    if user_task:  # a runnable user task, with one thing wrong
        base = ["task=jsonl", f"task.prompts={tmp_path}/prompts.jsonl", f"task.gold_reward={tmp_path}/rewards.py:good"]
        args = base + args
    chosen = {a.split("=")[0] for a in args if "=" in a and "." not in a.split("=")[0]}
    fast = fast_overrides(tmp_path, ppo="method" not in chosen, reward_model="reward_model" not in chosen, shared=False)
    if "task" in chosen or user_task:  # the embedded task's sizes are not keys of a user task
        fast = [o for o in fast if not o.startswith("task.")]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rlhf-bench", *fast, *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out = capsys.readouterr()
    output = " ".join((out.out + out.err).split())
    assert exit_info.value.code == code, output[-2000:]
    assert " ".join(message.split()) in output, output[-2000:]
    assert "Traceback" not in output
    assert not list(tmp_path.glob("artifacts/sft/*")), "nothing may be trained on bad input"
