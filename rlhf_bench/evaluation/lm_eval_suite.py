"""lm-eval suites on the in-memory policy, offline.

The suite ships with the package as task templates; at run time it is written to a folder
with the task's data as local JSONL and absolute paths (lm-eval resolves relative
``data_files`` against the current directory), and registered with
``TaskManager(include_path=...)``. Three tasks, versioned:
  rb_perplexity  loglikelihood_rolling on held-out task text (the alignment tax)
  rb_gold        generate_until on held-out prompts, scored by the task's gold reward
                 through ``process_results`` (greedy decoding)
  rb_probe       multiple choice: what the SFT model learned (a real ending vs a corrupted one)
Any standard lm-eval task name (``hellaswag``, ``arc_easy``, ...) can be added to
``eval.lm_eval.tasks`` by users who have the hub; then lm-eval's own task index is loaded.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from rlhf_bench.config import LM_EVAL_SUITE, LmEvalConfig, to_plain
from rlhf_bench.core.logs import to_log_file
from rlhf_bench.run import Run

SUITE = LM_EVAL_SUITE
SUITE_VERSION = 1.0


def _yaml(name: str, data: Path, body: str) -> str:
    return (
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"test_split: test\n{body}metadata:\n  version: {SUITE_VERSION}\n"
    )


def write_suite(ctx: Run, folder: Path, max_gen_toks: int) -> Path:
    """Write the suite's YAMLs, data and metric for ``ctx.task`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    task = ctx.task
    config_cls = type(ctx.cfg.task)
    task_spec = json.dumps(
        {
            "target": ctx.cfg.task._target_,
            "config_class": f"{config_cls.__module__}.{config_cls.__qualname__}",
            "config": to_plain(ctx.cfg.task),
        }
    )

    def jsonl(name: str, rows: list[dict]) -> Path:
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path.resolve()

    ppl = jsonl("rb_perplexity", [{"text": t} for t in task.heldout_texts])
    gen = jsonl("rb_gold", [{"prompt": p, "task": task_spec} for p in task.eval_prompts])
    probe_items = task.probe_items()
    probe = jsonl("rb_probe", probe_items)
    eos = ctx.tokenizer.eos_token
    (folder / "rb_perplexity.yaml").write_text(
        _yaml(
            "rb_perplexity",
            ppl,
            (
                'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
                "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
            ),
        )
    )
    (folder / "rb_gold.yaml").write_text(
        _yaml(
            "rb_gold",
            gen,
            (
                'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: ""\n'
                f"generation_kwargs:\n  until: [{json.dumps(eos)}]\n  max_gen_toks: {max_gen_toks}\n  do_sample: false\n"
                "process_results: !function rb_metric.process_results\n"
                "metric_list:\n  - metric: gold_reward\n    aggregation: mean\n    higher_is_better: true\n"
            ),
        )
    )
    if probe_items:  # a user task without preference pairs has nothing to probe
        (folder / "rb_probe.yaml").write_text(
            _yaml(
                "rb_probe",
                probe,
                (
                    'output_type: multiple_choice\ndoc_to_text: "{{query}}"\ndoc_to_choice: "{{choices}}"\n'
                    'doc_to_target: "{{gold}}"\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n'
                ),
            )
        )
    (folder / "rb_metric.py").write_text(
        "from rlhf_bench.evaluation.lm_eval_suite import gold_process_results as process_results  # noqa: F401\n"
    )
    return folder


@lru_cache(maxsize=4)
def _task_from_spec(spec: str):
    """The task (and so its gold reward) from the spec each rb_gold document carries."""
    from hydra.utils import get_class

    data = json.loads(spec)
    return get_class(data["target"])(get_class(data["config_class"])(**data["config"]))


def gold_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval hook: the task's gold reward of the generated continuation."""
    task = _task_from_spec(doc["task"])
    return {"gold_reward": task.gold_reward([doc["prompt"]], [results[0]])[0]}


def evaluate(ctx: Run, model, cfg: LmEvalConfig, folder: Path, log_file: Path | None = None) -> dict[str, Any]:
    """Run the suite on ``model``: {task: {metric: value, metric_stderr: value}, "_versions": {...}}.
    lm-eval's logs and progress bars go to ``log_file`` (the run's ``run.log``) when given."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # our tasks the suite could write for this task (a user task without pairs has no probe)
    tasks = [t for t in cfg.tasks if t not in SUITE or (folder / f"{t}.yaml").is_file()]
    standard = [t for t in tasks if t not in SUITE]
    if not standard:  # our suite is local files only: never let `datasets` reach for the hub
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    manager = TaskManager(include_path=str(folder), include_defaults=bool(standard))
    was_training = model.training
    with to_log_file(log_file):
        lm = HFLM(pretrained=model, tokenizer=ctx.tokenizer, batch_size=cfg.batch_size, device=str(ctx.device))
        out = simple_evaluate(
            model=lm, tasks=tasks, task_manager=manager, limit=cfg.limit, log_samples=False, bootstrap_iters=100
        )
    model.train(was_training)  # HFLM puts the model in eval mode
    results: dict[str, Any] = {}
    for task, metrics in out["results"].items():
        results[task] = {
            k.replace(",none", ""): v
            for k, v in metrics.items()
            if k not in ("name", "alias") and isinstance(v, (int, float))
        }
    results["_versions"] = {k: v for k, v in out.get("versions", {}).items()}
    return results
