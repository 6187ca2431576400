"""The chains task: its values, worked solutions, answer check and data by hand."""

import re

import pytest

from rlhf_bench.tasks.chains import ChainsTask, ChainsTaskConfig, answer_of, chain_value, worked_solution


def terms_of(prompt: str) -> list[str]:
    return re.findall(r"[+-]?\d+", prompt.rstrip("="))


@pytest.mark.parametrize(
    ("prompt", "value", "worked"),
    [
        ("7+12-5+3=", 17, "19-5+3=14+3=17"),
        ("8-9=", -1, "-1"),
        ("0-4-5=", -9, "-4-5=-9"),
        ("3+4=", 7, "7"),
    ],
)
def test_values_and_worked_solutions_by_hand(prompt, value, worked):
    assert chain_value(prompt) == value
    assert worked_solution(prompt) == worked
    assert answer_of(worked) == value


def test_a_slip_is_carried_to_the_answer():
    assert worked_solution("7+12-5+3=", slip=2, slip_at=1) == "19-5+3=16+3=19"


@pytest.mark.parametrize(
    ("response", "answer"),
    [("17", 17), (" 17 ", 17), ("19-5+3=14+3=17", 17), ("-1", -1), ("17=", None), ("17 apples", None), ("", None)],
)
def test_the_answer_check_parses_only_well_formed_responses(response, answer):
    assert answer_of(response) == answer


def test_gold_reward_is_one_for_the_right_final_answer_only():
    task = ChainsTask(ChainsTaskConfig(n_sft=10, n_train_prompts=4, n_eval_prompts=4))
    prompts = ["7+12-5+3=", "7+12-5+3=", "7+12-5+3=", "8-9="]
    assert task.gold_reward(prompts, ["19-5+3=14+3=17", "17", "19-5+3=14+3=18", "-1"]) == [1.0, 1.0, 0.0, 1.0]


def test_data_follows_the_config_and_is_reproducible():
    cfg = ChainsTaskConfig(n_sft=2000, n_train_prompts=500, n_eval_prompts=200, max_terms=4, worked=0.5, noise=0.2)
    task, again = ChainsTask(cfg), ChainsTask(cfg)
    assert task.sft_examples == again.sft_examples and task.eval_prompts == again.eval_prompts
    terms = {len(terms_of(p)) for p in task.train_prompts}
    assert terms == {2, 3, 4}
    assert all(0 <= int(t.lstrip("+-")) <= cfg.max_operand for p in task.train_prompts for t in terms_of(p))
    # prompts end with "=" and completions are the answer alone or worked: SFT sees them apart
    assert all(p.endswith("=") and "=" not in p[:-1] for p, _ in task.sft_examples)
    assert task.sft_texts == [p + c for p, c in task.sft_examples]
    worked = sum("=" in c for p, c in task.sft_examples if len(terms_of(p)) > 2)
    many = sum(len(terms_of(p)) > 2 for p, _ in task.sft_examples)
    assert 0.4 < worked / many < 0.6
    right = sum(answer_of(c) == chain_value(p) for p, c in task.sft_examples) / len(task.sft_examples)
    assert 0.75 < right < 0.85  # a fraction `noise` of the demonstrations carry a slip
