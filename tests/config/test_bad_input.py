"""Bad input, table-driven: every case is the real command line, its exit code and the message
that names the problem (a config key, a file and line, a function) and the fix; no traceback,
and nothing is trained."""

import json
import re
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

def strings(prompts, responses):
    return ["high" for r in responses]

CALLS = []

def nan_sampled(prompts, responses):  # fine when the data is checked (the first call), NaN after SFT
    CALLS.append(len(responses))
    return [0.0 if len(CALLS) == 1 else float("nan") for r in responses]
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
    (
        "minibatches",
        ["method.prompts_per_step=15"],
        2,
        "method.prompts_per_step times method.group_size=1 must be divisible by method.num_minibatches=2",
    ),
    ("enum", ["logger.mode=sometimes"], 2, "logger.mode"),
    ("precision", ["precision=fp8"], 2, "precision"),
    ("device", ["device=tpu"], 2, "device must be one of auto, cpu, cuda, cuda:N, mps"),
    ("temperature 0", ["preferences.temperature=0"], 2, "preferences.temperature must be > 0"),
    ("flip prob", ["preferences.flip_prob=0.7"], 2, "preferences.flip_prob must be in [0, 0.5]"),
    ("annotators", ["preferences.annotators=0"], 2, "preferences.annotators must be >= 1"),
    ("dpo beta", ["method=dpo", "method.beta=0"], 2, "method.beta must be > 0"),
    ("bon n", ["method=best_of_n", "method.n=0"], 2, "method.n must be >= 1"),
    ("rloo group", ["method=rloo", "method.group_size=1"], 2, "method.group_size must be >= 2 for advantage=rloo"),
    (
        "grpo aggregation",
        ["method=grpo", "method.aggregation=median"],
        2,
        "method.aggregation must be one of",
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
    # --- issue 19: what used to fail late, raw or misleading ---------------------------------
    (
        "prompt longer than the context",
        ["task.prompts={d}/long.jsonl"],
        2,
        "long.jsonl:2: the prompt is 80 tokens; with task.max_response_tokens=32 it needs 112 positions, "
        "more than the model's context of 64: shorten or drop the prompt, lower task.max_response_tokens, "
        "or raise model.tiny.max_positions (1 of",
    ),
    (
        "model folder missing",
        ["model.name_or_path={d}/no-such-model"],
        2,
        "model.name_or_path {d}/no-such-model: no such folder",
    ),
    ("unquoted non-ascii", ["logger.project=café"], 2, 'must be quoted; write logger.project="café"'),
    ("run_name traversal", ["run_name=../../../escaped"], 2, "run_name must be a plain name: letters, digits"),
    ("run_name separator", ["run_name=dpo/beta0.1"], 2, "(no / or \\, no leading '.' or '-', at most 100"),
    (
        "nan margin",
        ["task.preferences={d}/nanmargin.jsonl"],
        2,
        "nanmargin.jsonl:2: field 'margin' must be a finite number, got nan",
    ),
    (
        "chosen is rejected",
        ["task.preferences={d}/same.jsonl"],
        2,
        "same.jsonl:2: 'chosen' and 'rejected' are the same text, which states no preference; remove the row",
    ),
    ("gold strings", ["task.gold_reward={d}/rewards.py:strings"], 2, "it returned list of str"),
    (
        "gold nan after sft",
        ["task.sft={d}/sftgood.jsonl", "task.gold_reward={d}/rewards.py:nan_sampled"],
        2,
        "returned nan for response 0",
    ),
    (
        "no record, no record claimed",
        ["paths.results_dir={d}/blocker/results"],
        1,
        "run failed: OSError: cannot write to results_dir",
    ),
    (
        "batch too big for memory",
        ["method.prompts_per_step=100000000"],
        2,
        "method.prompts_per_step makes 100,000,000 sequences a step of up to",
    ),
]
# What else each of those cases must (or must not) print: the note after the error
NOTES = {
    "gold nan after sft": ("built before the failure, and cached for the next run: base, sft", "nothing was"),
    "no record, no record claimed": ("it failed before writing a run record", "status=failed"),
    "batch too big for memory": ("GiB (logits and activations), more than the", "Traceback"),
}


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
    _write(d / "long.jsonl", _jsonl(GOOD_PROMPTS[:1] + [{"prompt": " ".join(["late"] * 80)}] + GOOD_PROMPTS * 10))
    _write(
        d / "nanmargin.jsonl",
        _jsonl([{**pair, "margin": 1.0}]) + '{"prompt": "p", "chosen": "a", "rejected": "b", "margin": NaN}\n',
    )
    _write(d / "same.jsonl", _jsonl([pair, {**pair, "rejected": "a"}]))
    sft = [{"prompt": g["prompt"], "completion": " thanks , we will fix it ."} for g in GOOD_PROMPTS]
    _write(d / "sftgood.jsonl", _jsonl(sft * 20))
    _write(d / "blocker", "a file where a folder should be")


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
    assert " ".join(message.replace("{d}", str(tmp_path)).split()) in output, output[-2000:]
    assert "Traceback" not in output
    must, must_not = NOTES.get(case, ("", None))
    assert must in output and (must_not is None or must_not not in output), output[-2000:]
    if case != "gold nan after sft":  # the one case found after SFT (on what SFT samples)
        assert not list(tmp_path.glob("artifacts/sft/*")), "nothing may be trained on bad input"


@pytest.mark.slow
def test_an_absurd_budget_is_stated_before_training_and_its_eta_after_the_first_steps(tmp_path):
    """``method.steps=10**12`` is no error: the run states its budget (as a warning) before SFT,
    then the ETA of each loop after its first steps, the method's as a warning; stopped there."""
    import os
    import subprocess

    command = [sys.executable, "-m", "rlhf_bench", *fast_overrides(tmp_path, shared=False)]
    command += ["method.steps=1000000000000", "logger.mode=disabled"]
    env = {**os.environ, "COLUMNS": "400"}  # one line per message
    proc = subprocess.Popen(
        command, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    lines = []
    try:
        for line in proc.stderr:
            lines.extend(part.strip() for part in line.split("\r") if part.strip())
            if "warning: PPO:" in line or len(lines) > 5000:
                break
    finally:
        proc.kill()
        proc.wait()
    text = "\n".join(lines)
    budget = next(i for i, line in enumerate(lines) if line.startswith("budget:"))
    # 1e12 steps x 16 prompts x 12 response tokens = 1.92e14 generated
    assert re.fullmatch(
        r"budget: SFT 40 steps x 32 sequences; ppo 1\.0e\+12 steps x 16 responses of <= 12 tokens: "
        r"<= 1\.9e\+14 tokens to generate, <= [0-9.]+e\+14 to train "
        r"\(warning: more than 1e\+12 tokens; is method\.steps=1000000000000 meant\?\)",
        lines[budget],
    ), text[-3000:]
    assert budget < next(i for i, line in enumerate(lines) if line.startswith("SFT:"))  # before training
    assert re.search(r"^SFT: 36 steps left at [0-9.]+ s/step: ETA [0-9.]+ min$", text, re.M), text[-3000:]
    eta = re.search(r"^warning: PPO: 999,999,999,996 steps left at ([0-9.]+) s/step: ETA ([0-9,]+) days", text, re.M)
    assert eta, text[-3000:]
    # the ETA is the steps left at the pace printed (to 2 decimals, so +-0.005 s), in days
    pace, days = float(eta.group(1)), int(eta.group(2).replace(",", ""))
    low, high = (999_999_999_996 * (pace + d) / 86400 for d in (-0.005, 0.005))
    assert low - 1 <= days <= high, text[-3000:]


def test_the_budget_line_counts_what_a_run_can_spend():
    from rlhf_bench.compose import load_config
    from rlhf_bench.run import budget_line

    cfg = load_config(
        ["method.steps=10", "method.prompts_per_step=8", "method.epochs=2", "sft.steps=5", "sft.batch_size=4"]
    )
    # PPO, one sample a prompt: 10 steps x 8 responses; generated 10 x 8 x 4 = 320 tokens at most,
    # trained 10 x 8 x (6 + 4) x 2 epochs = 1,600
    assert budget_line(cfg, prompt_tokens=6, response_tokens=4) == (
        "budget: SFT 5 steps x 4 sequences; ppo 10 steps x 8 responses of <= 4 tokens: "
        "<= 320 tokens to generate, <= 1,600 to train",
        False,
    )
    # 1e12 steps x 8 x 4 = 3.2e13 generated: absurd
    line, absurd = budget_line(load_config(["method.steps=1000000000000"]), 6, 4)
    assert absurd and line.endswith("(warning: more than 1e+12 tokens; is method.steps=1000000000000 meant?)")
    line, absurd = budget_line(load_config(["method=dpo"]), 6, 4)
    assert line.endswith("no tokens generated") and not absurd
