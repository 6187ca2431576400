"""The pipeline of one run.

    base model -> SFT -> preference pairs -> reward model -> method -> evaluation -> record

Stages whose inputs are unchanged are not recomputed (``stage_cache``). Each stage returns what
it built and the pipeline makes the next ``Run`` from it; ``run`` writes the record as the run
starts and as it ends, and resumes an interrupted run of the same config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import secrets
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from rlhf_bench.config import Config, to_plain
from rlhf_bench.core import distributed
from rlhf_bench.core.checkpoint import Preempted, preemption_handler
from rlhf_bench.errors import require
from rlhf_bench.run import Progress, Run, Stage, Stages
from rlhf_bench.stage_cache import StageResult, cached_stage, config_hash, utc_now
from rlhf_bench.tracking.record import (
    RECORD_VERSION,
    git_commit,
    package_versions,
    record_progress,
    start_attempt,
    write_json_atomic,
)

console = Console(stderr=True)


def make_run_id(cfg: Config) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = cfg.run_name or f"{cfg.task.name}-{cfg.method.name}-s{cfg.seed}"
    return f"{stamp}-{name}-{secrets.token_hex(2)}"


def check_writable(folder: Path, what: str) -> None:
    """Fail before any training if ``folder`` cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OSError(
            f"cannot write to {what} {folder} ({exc.strerror}); set paths.{what} to a writable folder"
        ) from None


def conventions(cfg: Config) -> dict[str, Any]:
    """The conventions that change a method's numbers, stated in every record (see README)."""
    method = cfg.method.conventions() if hasattr(cfg.method, "conventions") else {}
    return {
        "prompt_tokens_masked": True,  # every loss and KL is over response tokens only
        "reward_normalization": bool(getattr(cfg.reward_model, "normalize", False)),
        "reward": cfg.reward_model.name,
        **method,
    }


def new_record(cfg: Config, run_id: str, overrides: list[str] | None, device, dtype) -> dict[str, Any]:
    """The record of a run that has just started (status ``running``)."""
    return {
        "record_version": RECORD_VERSION,
        "run_id": run_id,
        "status": "running",
        "error": None,
        "created": utc_now(),
        "finished": None,
        "task": cfg.task.name,
        "method": cfg.method.name,
        "model": cfg.model.name,
        "reward_model": cfg.reward_model.name,
        "seed": cfg.seed,
        "seed_scope": cfg.seed_scope,  # method: the seed varied the method only; pipeline: SFT, pairs, RM too
        "config": to_plain(cfg),
        "conventions": conventions(cfg),
        "overrides": list(overrides or []),
        "git": git_commit(),
        "versions": package_versions(),
        "device": str(device),
        "precision": str(dtype).removeprefix("torch.") if dtype else "fp32",
        "metrics": {},
        "cost": {},
        "artifacts": {},
        "wandb": None,
        "history": {},
    }


# the global batch sizes that several processes split, each taking an equal share
_SPLIT_KEYS = ("batch_size", "prompts_per_step", "prompts_per_round")


def check_batches_split(cfg: Config, processes: int) -> None:
    """With several processes every training batch must split into equal shares (PPO's
    minibatches too): otherwise 2 processes x b would not take the steps of 1 x 2b, and PPO's
    processes would take different numbers of minibatch steps and wait for each other forever."""
    if processes == 1:
        return
    for section in ("sft", "reward_model", "method"):
        options = getattr(cfg, section)
        if section == "reward_model" and not hasattr(options, "epochs"):
            continue  # a reward that is not trained: its batches are the main process's alone
        for key in _SPLIT_KEYS:
            size = getattr(options, key, None)
            if isinstance(size, int):
                require(
                    size % processes == 0, f"{section}.{key}", f"must be a multiple of the {processes} processes", size
                )
        minibatches = getattr(options, "num_minibatches", None)
        if isinstance(minibatches, int):
            # each process splits its share of the prompts' rows (group_size per prompt) into minibatches
            group = getattr(options, "group_size", 1)
            require(
                options.prompts_per_step * group % (processes * minibatches) == 0,
                f"{section}.prompts_per_step",
                f"must be a multiple of {processes} processes x {section}.num_minibatches={minibatches} "
                f"(each process splits its share, {section}.group_size={group} rows a prompt, into that many minibatches)",
                options.prompts_per_step,
            )


def run(cfg: Config, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run every stage for ``cfg``; return the run record (also written to disk).

    If an earlier run of the same config was interrupted (killed, preempted) and
    ``checkpoint.resume`` is on, this continues it: same run id, same record, each stage
    resumed from its last checkpoint.
    """
    from rlhf_bench.core import models
    from rlhf_bench.core.device import reproducible_on, resolve_device, resolve_dtype, seed_everything
    from rlhf_bench.tracking.wandb_run import Tracker

    models.quiet_transformers()
    reproducible_on(resolve_device(cfg.device))
    distributed.setup(resolve_device(cfg.device), cfg.parallel.strategy, cfg.parallel.zero_stage)
    check_batches_split(cfg, distributed.world_size())
    if not distributed.is_main():
        return run_worker(cfg)
    results_dir, artifacts_dir = Path(cfg.paths.results_dir), Path(cfg.paths.artifacts_dir)
    check_writable(results_dir, "results_dir")
    check_writable(artifacts_dir, "artifacts_dir")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.precision, device)
    config = to_plain(cfg)
    resume_key = config_hash(config)
    found = find_interrupted(results_dir, resume_key) if cfg.checkpoint.resume else None
    if found is not None:
        run_dir, record, lock = found
        record.update(status="running", error=None, finished=None)
        record["resumed"] = record.get("resumed", 0) + 1
    else:
        run_dir = results_dir / "runs" / make_run_id(cfg)
        run_dir.mkdir(parents=True)
        lock = _run_lock(run_dir)
        lock.acquire()
        record = new_record(cfg, run_dir.name, overrides, device, dtype)
        record["resume_key"] = resume_key
        record["processes"] = distributed.world_size()
    run_id, record_path = distributed.broadcast(run_dir.name), run_dir / "record.json"
    earlier = start_attempt(record, platform.node(), os.getpid())
    write_json_atomic(record_path, record)
    console.print(
        f"[bold]rlhf-bench[/bold] {'resuming' if found else 'run'} [cyan]{run_id}[/cyan]: task={cfg.task.name} "
        f"model={cfg.model.name} reward_model={cfg.reward_model.name} method={cfg.method.name} seed={cfg.seed} "
        f"device={device}"
    )
    # One W&B run per run: every attempt opens the record's run id (tracking/wandb_run.py: offline,
    # each attempt's folder is given the rows logged before it, so the newest holds them all).
    tracker = Tracker(cfg.logger, run_dir, run_id, run_id, config, resume=found is not None)
    record["wandb"] = {
        "run_id": tracker.run_id,
        "mode": tracker.mode,
        "project": cfg.logger.project,
        "dir": str(tracker.dir) if tracker.dir else None,
    }
    record["attempts"][-1]["wandb_dir"] = record["wandb"]["dir"]
    died = sum(a["status"] == "died" for a in record["attempts"])
    tracker.summary({"run/attempt": len(record["attempts"]), "run/attempts_died": died})
    progress = Progress(earlier=earlier)

    def save_progress(write: bool = True) -> None:  # the record as the run stands: at each boundary and checkpoint
        cost, seconds = progress.cost.to_dict(), progress.attempt_seconds()
        record_progress(record, cost, seconds, tracker.history, progress.artifacts, progress.boundaries)
        if write:
            write_json_atomic(record_path, record)

    progress.persist = save_progress
    try:
        with preemption_handler():
            seed_everything(cfg.seed)
            ctx, rm_info = prepare(cfg, tracker, device, dtype, artifacts_dir / "checkpoints" / run_id, progress)
            seed_everything(cfg.seed)
            record["metrics"] = policy_and_evaluation(ctx, run_dir, rm_info)
        record["status"] = "finished"
    except BaseException as exc:
        record["status"] = "preempted" if isinstance(exc, Preempted) else "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        if progress.checkpoint():  # not one of a stage that was built since (its folder is gone)
            record["checkpoint"] = progress.checkpoint()
        raise
    finally:
        record["finished"] = utc_now()
        progress.persist = None
        save_progress(write=False)
        record["attempts"][-1]["status"] = record["status"]
        if record["status"] == "finished":
            del record["resume_state"]  # the run is complete: nothing to resume from
        tracker.summary(flatten(record["cost"], "cost/"))
        tracker.finish(exit_code=0 if record["status"] == "finished" else 1)
        if tracker.failed:
            record["wandb"]["failed"] = tracker.failed
        write_json_atomic(record_path, record)
        if record["status"] == "finished":  # only now: a run killed before this line resumes from them
            shutil.rmtree(artifacts_dir / "checkpoints" / run_id, ignore_errors=True)
        lock.release()
    distributed.all_done()  # the other processes wait for the record before they exit
    record["record_path"] = str(record_path)
    return record


def _run_lock(run_dir: Path):
    """Held by the process running the run; the OS releases it when that process dies."""
    from filelock import FileLock

    return FileLock(str(run_dir / ".run.lock"))


def find_interrupted(results_dir: Path, resume_key: str):
    """(run folder, record, held lock) of an interrupted run with this config, or None.

    Interrupted: its record says running or preempted, and no live process holds its lock.
    """
    from filelock import Timeout

    for path in sorted((results_dir / "runs").glob("*/record.json"), reverse=True):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("resume_key") != resume_key or record.get("status") not in ("running", "preempted"):
            continue
        lock = _run_lock(path.parent)
        try:
            lock.acquire(timeout=0)
        except Timeout:  # still running elsewhere
            continue
        return path.parent, record, lock
    return None


def task_key(task, cfg: Config) -> dict[str, Any]:
    """What identifies a task's data in the stage hashes: its config, and for user data the
    content itself (an edited file invalidates the cached stages built from it)."""
    key = to_plain(cfg.task)
    key["chat_template"] = cfg.model.chat_template  # it changes every prompt the stages see
    if hasattr(task, "fingerprint"):
        key["data"] = task.fingerprint()
    return key


def model_key(cfg: Config) -> dict[str, Any]:
    """What identifies the tiny base model in the stage hashes. LoRA, activation checkpointing,
    the attention kernel and torch.compile change how a model trains and runs, not the model it
    starts from, so they are left out (switching them reuses the cached base and SFT)."""
    how = ("lora", "gradient_checkpointing", "attn_implementation", "compile")
    return {k: v for k, v in to_plain(cfg.model).items() if k not in how}


def base_stage(cfg: Config, tracker, device, dtype, checkpoint_dir: Path | None = None, progress=None) -> Run:
    """The task and the base model (a hub model by name, or the tiny one built from a config): the
    run as it starts, with its ``base`` stage."""
    from hydra.utils import get_class

    from rlhf_bench.core import models

    task = get_class(cfg.task._target_)(cfg.task)
    progress = progress if progress is not None else Progress()
    if cfg.model.name_or_path is None:

        def build_base(out: Path, _checkpoints: Path) -> dict[str, Any]:
            if hasattr(task, "build_tokenizer"):  # a task with a fixed vocabulary (the exact toy world)
                tokenizer = task.build_tokenizer()
            else:
                tokenizer = models.train_tokenizer(
                    getattr(task, "tokenizer_texts", task.sft_texts), cfg.model.tiny.vocab_size
                )
            model = models.build_tiny_model(cfg.model.tiny, tokenizer, cfg.model.init_seed)
            models.save_pretrained(model, tokenizer, out)
            return {
                "parameters": sum(p.numel() for p in model.parameters()),
                "vocab_size": len(tokenizer),
            }

        key = {"model": model_key(cfg), "task": task_key(task, cfg)}
        base = cached_stage(Path(cfg.paths.artifacts_dir), "base", key, build_base, cfg.checkpoint.verify_artifacts)
        progress.artifacts["base"] = _artifact(base)
        base_ref = Stage(str(base.path), base.hash)
    else:
        require(
            not hasattr(task, "build_tokenizer"),
            "model.name_or_path",
            f"must be null for task={cfg.task.name}: the task builds its own tokenizer and tiny model",
            cfg.model.name_or_path,
        )
        digest = config_hash({"name_or_path": cfg.model.name_or_path, "revision": cfg.model.revision})
        base_ref = Stage(cfg.model.name_or_path, digest)
    tokenizer = models.load_tokenizer(base_ref.path, cfg.model.revision, cfg.model.trust_remote_code)
    return Run(
        cfg=cfg,
        task=task,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        tracker=tracker,
        stages=Stages(base=base_ref),
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )


def prepare(cfg: Config, tracker, device, dtype, checkpoint_dir: Path | None, progress=None) -> tuple[Run, dict]:
    """Every stage before the method (base model, SFT, pairs, reward model), each cached: the run
    ready for its method, and the reward model's info. The main process and the workers of a
    data-parallel run both start this way."""
    ctx = base_stage(cfg, tracker, device, dtype, checkpoint_dir, progress)
    ctx.check_inputs()  # prompts that fit the context, a batch that fits the memory; the budget
    ctx.stage_done("base", cached=ctx.progress.artifacts.get("base", {}).get("cached", True))
    return preparation_stages(ctx)


def run_from_record(record: dict[str, Any], cfg: Config, tracker=None, device=None, dtype=None) -> Run:
    """The run of a finished record, rebuilt: its config (``cfg``: ``compose.load_config`` of the
    record's overrides), task and tokenizer, and the stages it used, found where the record says. Nothing is
    trained: the reproductions use this to look again at a run's SFT policy and reward model."""
    from hydra.utils import get_class

    from rlhf_bench.core import models
    from rlhf_bench.core.device import resolve_device

    artifacts = record["artifacts"]
    stages = Stages(
        **{
            name: Stage(artifacts[name]["path"], artifacts[name].get("hash", ""))
            for name in ("base", "sft", "preferences", "reward_model", "reward_backbone")
            if name in artifacts
        }
    )
    if stages.base is None:  # a hub model: the record's config names it
        stages = dataclasses.replace(stages, base=Stage(cfg.model.name_or_path, ""))
    if stages.sft is None:  # sft.steps=0: the base model is the SFT policy
        stages = dataclasses.replace(stages, sft=stages.base)
    return Run(
        cfg=cfg,
        task=get_class(cfg.task._target_)(cfg.task),
        tokenizer=models.load_tokenizer(stages.base.path, cfg.model.revision, cfg.model.trust_remote_code),
        device=device if device is not None else resolve_device(cfg.device),
        dtype=dtype,
        tracker=tracker,
        stages=stages,
    )


def preparation_stages(ctx: Run) -> tuple[Run, dict[str, Any]]:
    """SFT, preference pairs and reward model, each cached: the run with those stages, and the
    reward model's info."""
    from hydra.utils import get_method

    from rlhf_bench.methods.sft import train_sft
    from rlhf_bench.rewards.preferences import sample_preferences, stage_key

    cfg, artifacts_dir = ctx.cfg, Path(ctx.cfg.paths.artifacts_dir)
    verify, artifacts = cfg.checkpoint.verify_artifacts, ctx.progress.artifacts
    data_key = task_key(ctx.task, cfg)
    with ctx.progress.timed("sft"):
        if cfg.sft.steps > 0:
            key = {"base": ctx.stages.base.hash, "task": data_key, "sft": to_plain(cfg.sft)}
            sft = cached_stage(
                artifacts_dir,
                "sft",
                key,
                lambda out, ckpt: train_sft(ctx, cfg.sft, ctx.stages.base.path, out, ckpt),
                verify,
                parallel=True,
                on_built=lambda built: ctx.stage_built("sft", _artifact(built)),
            )
            ctx = ctx.with_stage("sft", sft.path, sft.hash)
            artifacts["sft"] = _artifact(sft)
            ctx.stage_done("sft", sft.cached)
        else:  # the base model is the SFT policy (e.g. an instruction-tuned hub model)
            ctx = ctx.with_stage("sft", ctx.stages.base.path, ctx.stages.base.hash)
    with ctx.progress.timed("preferences"):
        key = {
            "sft": ctx.stages.sft.hash,
            "task": data_key,
            "preferences": stage_key(cfg.preferences),
        }
        prefs = cached_stage(
            artifacts_dir,
            "preferences",
            key,
            lambda out, _ckpt: sample_preferences(ctx, cfg.preferences, out),
            verify,
            on_built=lambda built: ctx.stage_built("preferences", _artifact(built)),
        )
        artifacts["preferences"] = _artifact(prefs)
        ctx = ctx.with_stage("preferences", prefs.path, prefs.hash)
        ctx.stage_done("preferences", prefs.cached)
    with ctx.progress.timed("reward_model"):
        train_rm = get_method(cfg.reward_model._target_)
        ctx = reward_backbone_stage(ctx, data_key)
        backbone = ctx.stages.reward_backbone
        key = {
            "preferences": prefs.hash,
            "sft": ctx.stages.sft.hash,
            "reward_model": rm_key(cfg.reward_model),
            **({"backbone": backbone.hash} if backbone else {}),
        }
        rm = cached_stage(
            artifacts_dir,
            "reward_model",
            key,
            lambda out, ckpt: train_rm(ctx, cfg.reward_model, prefs.path, out, ckpt),
            verify,
            parallel=True,
            on_built=lambda built: ctx.stage_built("reward_model", _artifact(built)),
        )
        ctx = ctx.with_stage("reward_model", rm.path, rm.hash)
        artifacts["reward_model"] = _artifact(rm)
        ctx.stage_done("reward_model", rm.cached)
    ctx.tracker.summary({"eval/rm_accuracy": rm.info["accuracy"], "eval/rm_gold_accuracy": rm.info["gold_accuracy"]})
    console.print(
        f"reward model: held-out accuracy {rm.info['accuracy']:.3f}, agreement with gold {rm.info['gold_accuracy']:.3f}"
        + (" (cached)" if rm.cached else "")
    )
    return ctx, rm.info


def rm_key(rm_cfg) -> dict[str, Any]:
    """The reward model's config in its stage hash; without a backbone of its own, as before the
    option existed (the hashes of existing reward models stay the same)."""
    key = to_plain(rm_cfg)
    if key.get("backbone", {}).get("n_layer", 1) == 0:
        del key["backbone"]
    return key


def reward_backbone_stage(ctx: Run, data_key: dict[str, Any]) -> Run:
    """A reward model's own backbone (``reward_model.backbone``): the policy's tiny architecture and
    tokenizer at that size, SFT-trained like the policy (two cached stages: ``base`` and
    ``reward_backbone``): the run with its ``reward_backbone`` stage. Without it (the run as it
    is) the head goes on the SFT policy."""
    from rlhf_bench.core import models
    from rlhf_bench.methods.sft import train_sft

    cfg, backbone = ctx.cfg, getattr(ctx.cfg.reward_model, "backbone", None)
    if backbone is None or not backbone.enabled:
        return ctx
    size = f"{backbone.n_layer} layers x {backbone.d_model}"
    require(
        cfg.model.name_or_path is None,
        "reward_model.backbone",
        "needs the tiny policy model (model.name_or_path=null)",
        size,
    )
    require(
        cfg.sft.steps > 0,
        "reward_model.backbone",
        "needs sft.steps > 0 (the backbone is SFT-trained like the policy)",
        size,
    )
    tiny = dataclasses.replace(
        cfg.model.tiny, n_layer=backbone.n_layer, d_model=backbone.d_model, n_head=backbone.n_head
    )
    artifacts_dir, verify = Path(cfg.paths.artifacts_dir), cfg.checkpoint.verify_artifacts

    def build_base(out: Path, _checkpoints: Path) -> dict[str, Any]:
        model = models.build_tiny_model(tiny, ctx.tokenizer, cfg.model.init_seed)
        models.save_pretrained(model, ctx.tokenizer, out)
        return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(ctx.tokenizer)}

    base_key = {"model": to_plain(tiny), "init_seed": cfg.model.init_seed, "tokenizer_of": ctx.stages.base.hash}
    base = cached_stage(artifacts_dir, "base", base_key, build_base, verify)
    key = {"base": base.hash, "task": data_key, "sft": to_plain(cfg.sft)}
    sft = cached_stage(
        artifacts_dir,
        "reward_backbone",
        key,
        lambda out, ckpt: train_sft(ctx, cfg.sft, str(base.path), out, ckpt, label="reward_backbone"),
        verify,
        parallel=True,
        on_built=lambda built: ctx.stage_built("reward_backbone", _artifact(built)),
    )
    ctx.progress.artifacts["reward_backbone"] = _artifact(sft)
    ctx = ctx.with_stage("reward_backbone", sft.path, sft.hash)
    ctx.stage_done("reward_backbone", sft.cached)
    return ctx


def train_policy(ctx: Run):
    """The method's training (every process of a data-parallel run takes part); the cost counters
    summed over processes."""
    from hydra.utils import get_method

    with ctx.progress.timed("policy"):
        policy = get_method(ctx.cfg.method._target_)(ctx, ctx.cfg.method)
        policy = ctx.whole(policy)  # fsdp: gathered whole to the main process, which evaluates it alone
    cost = ctx.cost
    cost.tokens_generated = distributed.total(cost.tokens_generated)
    cost.tokens_trained = distributed.total(cost.tokens_trained)
    cost.reward_model_queries = distributed.total(cost.reward_model_queries)
    return policy


def run_worker(cfg: Config) -> dict[str, Any]:
    """A process other than the main one in a data-parallel run: the same stages in lockstep,
    writing nothing (no record, no W&B, no policy); the main process evaluates."""
    from rlhf_bench.core.device import resolve_device, resolve_dtype, seed_everything
    from rlhf_bench.tracking.wandb_run import Tracker

    device = resolve_device(cfg.device)
    run_id = distributed.broadcast(None)
    tracker = Tracker(dataclasses.replace(cfg.logger, mode="disabled"), Path("."), run_id, run_id, {})
    with preemption_handler():
        seed_everything(cfg.seed)
        checkpoints = Path(cfg.paths.artifacts_dir) / "checkpoints" / run_id
        ctx, _ = prepare(cfg, tracker, device, resolve_dtype(cfg.precision, device), checkpoints)
        seed_everything(cfg.seed)
        train_policy(ctx)
    distributed.all_done()  # wait while the main process evaluates and writes: a launcher ends all at the first exit
    return {"run_id": run_id, "rank": distributed.rank(), "status": "finished"}


def policy_and_evaluation(ctx: Run, run_dir: Path, rm_info: dict[str, Any]) -> dict[str, Any]:
    """Train the method from the SFT policy, save it, and evaluate it against the SFT reference
    (the task's metrics, then the lm-eval suite)."""
    import torch
    from tqdm.auto import tqdm

    from rlhf_bench.evaluation import lm_eval_suite
    from rlhf_bench.evaluation.gold import evaluate_prompts, write_per_prompt
    from rlhf_bench.rewards.reward import load_run_reward

    cfg = ctx.cfg
    policy = train_policy(ctx)
    ctx.stage_done("policy", cached=False)  # its checkpoint, not a boundary, is what a resume continues from
    with ctx.progress.timed("eval"):
        with distributed.whole_models():  # the main process alone
            # a LoRA policy's reference is its own base weights, adapters off (the SFT model)
            ref = ctx.load_reference(policy if isinstance(policy, torch.nn.Module) else None)
            reward = load_run_reward(ctx)
        metrics, per_prompt = evaluate_prompts(ctx, policy, ref, reward, cfg.eval, cfg.seed)
        # the rows behind the means, beside the record (and in W&B as a table artifact)
        ctx.progress.artifacts["per_prompt"] = write_per_prompt(per_prompt, run_dir / "per_prompt.parquet")
        ctx.tracker.table("per_prompt", per_prompt)
    metrics["reward_model"] = {
        "accuracy": rm_info["accuracy"],
        "gold_accuracy": rm_info["gold_accuracy"],
    }
    if cfg.eval.lm_eval.tasks:
        with ctx.progress.timed("lm_eval"):
            suite = lm_eval_suite.write_suite(ctx, run_dir / "lm_eval", cfg.eval.lm_eval.max_gen_toks)
            models = {"sft": ref, "policy": policy} if isinstance(policy, torch.nn.Module) else {"sft": ref}
            log_file = run_dir / "run.log"  # lm-eval's own logs and bars: the terminal keeps one bar
            metrics["lm_eval"] = {
                who: lm_eval_suite.evaluate(ctx, m, cfg.eval.lm_eval, suite, log_file)
                for who, m in tqdm(models.items(), desc="lm-eval", unit="model", dynamic_ncols=True)
            }
    policy_dir = Path(cfg.paths.artifacts_dir) / "policy" / run_dir.name
    policy.save_pretrained(policy_dir)  # safetensors for models; best-of-n writes its spec
    ctx.tokenizer.save_pretrained(policy_dir)
    ctx.progress.artifacts["policy"] = {"path": str(policy_dir)}
    ctx.tracker.summary(flatten(metrics, "eval/"))
    ctx.stage_done("eval", cached=False)
    return metrics


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a/b": 1}: nested metrics as W&B keys."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _artifact(stage: StageResult) -> dict[str, Any]:
    return {"path": str(stage.path), "hash": stage.hash, "cached": stage.cached, "info": stage.info}
