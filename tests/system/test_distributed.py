"""Data parallelism on CPU with gloo: 2 processes x batch b take the same steps as 1 process x 2b,
under ddp (every process holds the whole model), fsdp (each holds half of every parameter) and
deepspeed (ZeRO: each holds half of the optimizer state);
a whole run under torchrun or accelerate writes one record, from the main process only."""

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import RM_FAST, fast_overrides

# Trains a tiny GPT-2 with the core's loss, batch sharding and optimizer step; saves the weights.
# With a 4th argument k: after k steps it checkpoints, builds a fresh model and optimizer, restores
# the checkpoint into them and goes on (the checkpoint stays in <out>.ckpt/).
STEPS_SCRIPT = """
import atexit
import json
import os
import sys
from pathlib import Path
import torch
from rlhf_bench.config import CheckpointConfig, TinyModelConfig
from rlhf_bench.core import distributed, models
from rlhf_bench.core.checkpoint import Checkpointer
from rlhf_bench.core.ops import position_ids_from_mask
from rlhf_bench.core.rollout import pad
from rlhf_bench.core.train import optimizer_step
from rlhf_bench.methods.sft import next_token_loss
from rlhf_bench.run import Progress
from rlhf_bench.tracking.wandb_run import Tracker

out, optimizer_name, (strategy, _, zero_stage) = sys.argv[1], sys.argv[2], sys.argv[3].partition(":")
resume_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
# registered before setup, so it runs after setup's own handler (atexit is last in, first out)
exit_file = Path(f"{out}.exit{os.environ.get('RANK', 0)}")
atexit.register(lambda: exit_file.write_text(str(torch.distributed.is_initialized())))
distributed.setup(torch.device("cpu"), strategy, int(zero_stage or 2))
torch.manual_seed(0)
texts = [f"review {i} : the film was {'good' if i % 3 else 'bad'} and {'long ' * (i % 5)}." for i in range(64)]
folder = out + ".model"  # built once (training a tokenizer is not bitwise reproducible across processes)
if distributed.is_main():
    tok = models.train_tokenizer(texts, 300)
    cfg = TinyModelConfig(n_layer=2, d_model=32, n_head=2, vocab_size=300)
    models.save_pretrained(models.build_tiny_model(cfg, tok, seed=0), tok, folder)
distributed.barrier()
tok = models.load_tokenizer(folder)


def fresh():
    model = models.load_causal_lm(folder, tok).train()
    if distributed.sharding():  # fsdp with 2 processes
        distributed.shard_model(model)
    optimizer = (
        torch.optim.SGD(model.parameters(), lr=0.5) if optimizer_name == "sgd"
        else torch.optim.AdamW(model.parameters(), lr=1e-3)
    )
    if distributed.zero():  # deepspeed with 2 processes
        optimizer = distributed.zero_optimizer(optimizer, max_grad_norm=1.0)
    return model, optimizer


class Run:  # what a Checkpointer reads of a run
    device = torch.device("cpu")
    progress = Progress()
    cost = progress.cost
    tracker = Tracker(type("L", (), {"mode": "disabled"})(), Path("."), "x", "x", {})


def checkpointer():
    return Checkpointer(Path(out + ".ckpt"), CheckpointConfig(), Run(), "steps")


model, optimizer = fresh()
data = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
generator = torch.Generator().manual_seed(0)
for step in range(4):
    if step == resume_at:
        ckpt = checkpointer()
        ckpt.restore({"model": model}, optimizer, generators={"data": generator})
        ckpt.save(step)
        ckpt.close()
        model, optimizer = fresh()
        generator = torch.Generator().manual_seed(123)  # the restore sets its state
        ckpt = checkpointer()
        assert ckpt.restore({"model": model}, optimizer, generators={"data": generator})["step"] == step
        ckpt.close()
    index = distributed.shard(torch.randint(len(data), (16,), generator=generator))  # global batch of 16
    ids, mask = pad([data[i] for i in index], tok.pad_token_id, "left")
    labels = ids.masked_fill(mask == 0, -100)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    loss = next_token_loss(logits, labels, mask)
    optimizer_step(loss, optimizer, max_grad_norm=1.0)
held = [p.to_local() if distributed.is_sharded_tensor(p) else p for p in model.parameters()]
Path(f"{out}.rank{distributed.rank()}.json").write_text(json.dumps({
    "sharded": distributed.is_sharded(model),
    "elements": sum(t.numel() for t in held),
    "bytes": sum(t.untyped_storage().nbytes() for t in held),
    "zero": distributed.zero_engine(optimizer) is not None,
    # DeepSpeed's shared-memory all-reduce (a C++ op it would compile): not built on CPU
    "shm_op": distributed.zero() and __import__("deepspeed").comm.comm.cdb.shm_comm_op is not None,
    "optimizer_elements": sum(v.numel() for s in optimizer.state.values() for v in s.values() if v.dim() > 0),
}))
state = distributed.full_state_dict(model) if distributed.is_sharded(model) else model.state_dict()
if distributed.is_main():
    torch.save({k: v.clone() for k, v in state.items()}, out)
distributed.all_done()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "accelerate"


# A launch whose process aborts in gloo with this, and nothing else wrong, is run once more from
# scratch (what it wrote removed). Seen twice in the accelerate test (once in ~60 runs last session,
# once in the 5 full runs of 2026-12-04), in a process waiting for the main one to evaluate; cause not found.
GLOO_ABORT = "terminate called without an active exception"


def _launch(command, args: tuple[str, ...], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    """Run ``command()`` (a fresh port each time it is called) for the launch of ``args``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command(), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0 and GLOO_ABORT in proc.stderr:
        warnings.warn(f"a launched process aborted in gloo ({GLOO_ABORT!r}); launching once more", stacklevel=3)
        for arg in args:  # the run's results and artifacts, so that the second launch starts afresh
            key, _, folder = arg.partition("=")
            if key in ("paths.results_dir", "paths.artifacts_dir"):
                shutil.rmtree(folder, ignore_errors=True)
        proc = subprocess.run(command(), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    return proc


def _accelerate(config: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``accelerate launch`` with one of examples/accelerate/*.yaml (2 processes)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(EXAMPLES / config)]
    return _launch(lambda: [*command, "--main_process_port", str(_free_port()), *args], args, cwd, timeout)


def _torchrun(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    return _launch(lambda: [*command, "--master_port", str(_free_port()), *args], args, cwd, timeout)


def _steps(tmp_path: Path, optimizer: str, strategy: str, *extra: str) -> None:
    """The steps script on 1 process (``one.pt``) and on 2 (``two.pt``)."""
    script = tmp_path / "steps.py"
    script.write_text(STEPS_SCRIPT)
    args = (optimizer, strategy, *extra)
    single = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one.pt"), *args], capture_output=True, text=True, timeout=600
    )
    assert single.returncode == 0, single.stderr[-3000:]
    double = _torchrun(str(script), str(tmp_path / "two.pt"), *args, cwd=tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]


def _two_steps_as_one(tmp_path: Path, strategy: str) -> tuple[dict, list[dict]]:
    """The AdamW steps script through a checkpoint at step 2, on 1 process and on 2 under
    ``strategy``: the final weights agree within 1e-5; what each process held (its JSON)."""
    _steps(tmp_path, "adamw", strategy, "2")
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert one.keys() == two.keys()
    for name, value in one.items():
        assert torch.allclose(value, two[name], atol=1e-5, rtol=0), (name, float((value - two[name]).abs().max()))
    alone = json.loads((tmp_path / "one.pt.rank0.json").read_text())
    return alone, [json.loads((tmp_path / f"two.pt.rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("optimizer, tolerance", [("sgd", 1e-6), ("adamw", 1e-5)])
def test_two_processes_with_half_batches_take_the_steps_of_one_with_the_whole(tmp_path, optimizer, tolerance):
    """Tolerance: the only difference is the order of float sums (each process sums its half, then
    the halves are summed), ~1e-7 per step; AdamW divides by sqrt(v), which magnifies it where a
    gradient is ~0, hence its larger bound after 4 steps."""
    _steps(tmp_path, optimizer, "ddp")
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    initial_moved = False
    for name, value in one.items():
        assert torch.allclose(value, two[name], atol=tolerance, rtol=0), (name, float((value - two[name]).abs().max()))
        initial_moved |= not torch.equal(value, torch.zeros_like(value))
    assert initial_moved
    # every process's group was destroyed before the interpreter's end (all_done): gloo's threads
    # left alive there may abort a finished process (SIGABRT)
    assert [(tmp_path / f"two.pt.exit{r}").read_text() for r in (0, 1)] == ["False", "False"]


@pytest.mark.slow
def test_a_run_under_torchrun_writes_one_record_from_the_main_process(tmp_path):
    """DPO end to end on 2 processes: SFT, reward model and DPO train data-parallel; the main
    process alone samples the pairs, evaluates and writes. Its numbers match a 1-process run
    to within the float-order tolerance (Adam after ~50 steps: ~1e-3 on weights of ~1)."""
    args = [
        *fast_overrides(tmp_path / "two", ppo=False, shared=False),
        "method=dpo",
        "method.epochs=1",
        "eval.lm_eval.tasks=[]",
    ]
    double = _torchrun("-m", "rlhf_bench", *args, cwd=tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]
    records = list((tmp_path / "two" / "results" / "runs").glob("*/record.json"))
    assert len(records) == 1  # one run, one record: the other process wrote none
    record = json.loads(records[0].read_text())
    assert record["status"] == "finished" and record["processes"] == 2
    assert len(list((tmp_path / "two" / "results" / "runs").glob("*/wandb/offline-run-*"))) == 1
    assert len(list((tmp_path / "two" / "artifacts" / "policy").iterdir())) == 1

    single_args = [
        *fast_overrides(tmp_path / "one", ppo=False, shared=False),
        "method=dpo",
        "method.epochs=1",
        "eval.lm_eval.tasks=[]",
    ]
    single = subprocess.run(
        [sys.executable, "-m", "rlhf_bench", *single_args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert single.returncode == 0, single.stderr[-3000:]
    reference = json.loads(next((tmp_path / "one" / "results" / "runs").glob("*/record.json")).read_text())
    assert record["cost"]["tokens_trained"] == reference["cost"]["tokens_trained"]  # summed over processes
    for who in ("sft", "policy"):
        for metric in ("gold_reward", "proxy_reward", "kl"):
            assert record["metrics"][who][metric] == pytest.approx(reference["metrics"][who][metric], abs=0.01)

    # DPO sharded (parallel.strategy=fsdp) from the same SFT, pairs and reward model (cached): the
    # numbers of the ddp run above
    shutil.copytree(
        tmp_path / "two" / "artifacts", tmp_path / "fsdp" / "artifacts", ignore=shutil.ignore_patterns("policy")
    )
    fsdp_args = [
        *fast_overrides(tmp_path / "fsdp", ppo=False, shared=False),
        "method=dpo",
        "method.epochs=1",
        "eval.lm_eval.tasks=[]",
    ]
    fsdp = _torchrun("-m", "rlhf_bench", *fsdp_args, "parallel.strategy=fsdp", cwd=tmp_path)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    assert "fsdp: GPT2LMHeadModel sharded over 2 processes" in fsdp.stderr
    sharded = _record(tmp_path / "fsdp")
    assert all(sharded["artifacts"][stage]["cached"] for stage in ("sft", "preferences", "reward_model"))
    weights = (_policy_weights(tmp_path / "fsdp"), _policy_weights(tmp_path / "two"))
    _assert_same_run(sharded, record, weights, who=("policy",))


def test_fsdp_shards_every_parameter_and_takes_the_steps_of_one_process_through_a_checkpoint(tmp_path):
    """parallel.strategy=fsdp, 2 processes: each holds half of the model's storage; AdamW with a
    global-norm clip (which bites at every step: norms 3.0 to 1.7 at a bound of 1) for 4 steps, checkpointed after
    2 into a fresh sharded model and optimizer, equals 1 process on the whole batch within 1e-5
    (the float-order bound of the ddp test: FSDP's reduce-scatter sums in its own order). The
    checkpoint files hold what the 1-process run's hold, so either can resume the other's."""
    alone, shares = _two_steps_as_one(tmp_path, "fsdp")
    assert not alone["sharded"] and all(share["sharded"] for share in shares)
    assert sum(share["elements"] for share in shares) == alone["elements"]  # nothing held twice
    for share in shares:  # half each, up to the padding of rows that do not split evenly
        assert 0.45 < share["bytes"] / alone["bytes"] < 0.55, share

    from safetensors.torch import load_file

    files = {who: tmp_path / f"{who}.pt.ckpt" / "step-00000002" for who in ("one", "two")}
    weights = {who: load_file(folder / "model.safetensors") for who, folder in files.items()}
    tied = set(weights["one"]) ^ set(weights["two"])  # each keeps one name of the tied embedding
    assert tied <= {"lm_head.weight", "transformer.wte.weight"} and len(tied) in (0, 2)
    for name in set(weights["one"]) & set(weights["two"]):
        assert torch.allclose(weights["one"][name], weights["two"][name], atol=1e-6, rtol=0), name
    states = {who: torch.load(folder / "state.pt", weights_only=True)["optimizer"] for who, folder in files.items()}
    assert states["one"]["param_groups"] == states["two"]["param_groups"]
    assert states["one"]["state"].keys() == states["two"]["state"].keys()
    for index, state in states["one"]["state"].items():
        for key, value in state.items():  # whole tensors, not shards
            assert torch.allclose(value, states["two"]["state"][index][key], atol=1e-6, rtol=0), (index, key)


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_zero_partitions_the_optimizer_and_takes_the_steps_of_one_process_through_a_checkpoint(
    tmp_path, stage
):
    """parallel.strategy=deepspeed (ZeRO-1 and -2), 2 processes: each holds the whole model and
    half of AdamW's moments; 4 steps with the global-norm clip biting, checkpointed after 2 into a
    fresh model and ZeRO optimizer, equal 1 process on the whole batch within 1e-5 (the float-order
    bound of the ddp test). The checkpoint holds the whole moments, as the 1-process run's."""
    pytest.importorskip("deepspeed")
    alone, shares = _two_steps_as_one(tmp_path, f"deepspeed:{stage}")
    assert not alone["zero"] and all(share["zero"] for share in shares)
    assert not any(share["shm_op"] for share in shares)
    assert all(share["elements"] == alone["elements"] for share in shares)  # the model whole on each
    for share in shares:  # exp_avg and exp_avg_sq: half each (up to the alignment padding)
        assert 0.49 < share["optimizer_elements"] / alone["optimizer_elements"] < 0.51, share

    files = {who: tmp_path / f"{who}.pt.ckpt" / "step-00000002" for who in ("one", "two")}
    states = {who: torch.load(folder / "state.pt", weights_only=True)["optimizer"] for who, folder in files.items()}
    for settings in states["two"]["param_groups"]:  # the 1-process format: parameter indices, AdamW's settings
        assert settings == next(g for g in states["one"]["param_groups"] if g["params"] == settings["params"])
    assert states["one"]["state"].keys() == states["two"]["state"].keys()
    for index, state in states["one"]["state"].items():
        assert state.keys() == states["two"]["state"][index].keys()
        for key, value in state.items():  # whole tensors, not partitions
            assert torch.allclose(value, states["two"]["state"][index][key], atol=1e-6, rtol=0), (index, key)


def test_parallel_strategy_config():
    """ddp by default; a bad value names the key; fsdp and deepspeed compose, and with one process
    they are ddp (nothing to shard over); an accelerate FSDP or DeepSpeed launch needs the matching
    parallel.strategy, and what either config asks for that is not built is refused by name."""
    from rlhf_bench.cli import load_config
    from rlhf_bench.core import distributed
    from rlhf_bench.errors import ConfigError

    assert load_config([]).parallel.strategy == "ddp"
    assert load_config(["parallel.strategy=fsdp"]).parallel.strategy == "fsdp"
    assert load_config(["parallel.strategy=deepspeed", "parallel.zero_stage=1"]).parallel.zero_stage == 1
    with pytest.raises(ConfigError, match="parallel.strategy must be one of ddp, fsdp, deepspeed"):
        load_config(["parallel.strategy=zero3"])
    with pytest.raises(ConfigError, match="parallel.zero_stage must be 1 or 2 .*parallel.strategy=fsdp"):
        load_config(["parallel.strategy=deepspeed", "parallel.zero_stage=3"])
    with pytest.raises(ConfigError, match="parallel.strategy must be one of ddp, fsdp, deepspeed"):
        distributed.setup(torch.device("cpu"), "zero3")
    try:
        distributed.setup(torch.device("cpu"), "fsdp")  # no launcher: one process
        assert distributed.world_size() == 1 and not distributed.sharding()
        model = torch.nn.Linear(2, 2)
        with distributed.gathered(model):  # nothing to gather
            assert not distributed.is_sharded(model)
        if importlib.util.find_spec("deepspeed") is not None:
            distributed.setup(torch.device("cpu"), "deepspeed")
            assert not distributed.zero()  # one process: plain AdamW
    finally:
        distributed.setup(torch.device("cpu"), "ddp")
    env = {"ACCELERATE_USE_FSDP": "true"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        with pytest.raises(ConfigError, match="must be fsdp under an accelerate config"):
            distributed.setup(torch.device("cpu"), "ddp")
        mp.setenv("FSDP_OFFLOAD_PARAMS", "true")
        with pytest.raises(ConfigError, match="fsdp_offload_params"):
            distributed.setup(torch.device("cpu"), "fsdp")
        mp.delenv("ACCELERATE_USE_FSDP")
        mp.delenv("FSDP_OFFLOAD_PARAMS")
        if importlib.util.find_spec("deepspeed") is not None:
            mp.setenv("ACCELERATE_USE_DEEPSPEED", "true")
            with pytest.raises(ConfigError, match="must be deepspeed under an accelerate config"):
                distributed.setup(torch.device("cpu"), "fsdp")
            mp.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
            with pytest.raises(
                ConfigError, match="parallel.zero_stage is 2 but the accelerate config says zero_stage: 3"
            ):
                distributed.setup(torch.device("cpu"), "deepspeed")
            mp.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
            mp.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu")
            with pytest.raises(ConfigError, match="offload_optimizer_device"):
                distributed.setup(torch.device("cpu"), "deepspeed")
            mp.delenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE")
            mp.setenv("ACCELERATE_GRADIENT_CLIPPING", "0.5")  # as `gradient_clipping: 0.5` in the file
            with pytest.raises(ConfigError, match=r"not at the accelerate config's gradient_clipping \(0.5\)"):
                distributed.setup(torch.device("cpu"), "deepspeed")
            mp.delenv("ACCELERATE_GRADIENT_CLIPPING")
            mp.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
            with pytest.raises(ConfigError, match=r"gradient_accumulation_steps \(4\) is not implemented"):
                distributed.setup(torch.device("cpu"), "deepspeed")
            mp.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")  # what the example file launches with
            distributed.setup(torch.device("cpu"), "deepspeed")
            assert distributed.strategy() == "deepspeed"
            mp.delenv("ACCELERATE_USE_DEEPSPEED")
            distributed.setup(torch.device("cpu"), "ddp")
        else:  # without the extra, the strategy names the install
            with pytest.raises(ConfigError, match=r"pip install 'rlhf-bench\[deepspeed\]'"):
                distributed.setup(torch.device("cpu"), "deepspeed")
    assert distributed.strategy() == "ddp"


def _record(root: Path) -> dict:
    records = list((root / "results" / "runs").glob("*/record.json"))
    assert len(records) == 1  # one run, one record: the other process wrote none
    return json.loads(records[0].read_text())


def _policy_weights(root: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (policy,) = (root / "artifacts" / "policy").iterdir()  # one policy, written once
    return load_file(policy / "model.safetensors")


def _assert_same_run(
    fsdp: dict, ddp: dict, weights: tuple[dict, dict], who=("sft", "policy"), strategy: str = "fsdp"
) -> None:
    """Tolerances: the two differ in the order of float sums only (FSDP reduce-scatters where DDP
    all-reduces, and sums the squares of the gradient norm shard by shard; ZeRO reduces into
    partitions), ~1e-7 per step on weights of ~1, so the samples are the same: measured here,
    metrics within 3e-7 and saved weights within 2e-6 (PPO) or equal (DPO); asserted: 1e-3 and 1e-5."""
    assert fsdp["status"] == "finished" and fsdp["processes"] == 2
    assert fsdp["config"]["parallel"]["strategy"] == strategy
    assert ddp["config"]["parallel"]["strategy"] == "ddp"
    for stage in who:
        for metric in ("gold_reward", "proxy_reward", "kl"):
            assert fsdp["metrics"][stage][metric] == pytest.approx(ddp["metrics"][stage][metric], abs=1e-3), (
                stage,
                metric,
            )
    sharded, whole = weights
    assert sharded.keys() == whole.keys()  # the same file as save_pretrained writes (tied weights once)
    for name, value in whole.items():
        assert torch.allclose(sharded[name], value, atol=1e-5, rtol=0), (
            name,
            float((sharded[name] - value).abs().max()),
        )


@pytest.mark.slow
def test_ppo_under_fsdp_and_deepspeed_with_the_accelerate_configs_matches_ddp(tmp_path):
    """The whole pipeline, launched with examples/accelerate/fsdp.yaml, deepspeed.yaml and ddp.yaml: SFT, the
    reward model (and its normalisation on SFT samples), PPO's policy, value model (from the reward
    model), reference and reward model sharded; sampling through gathered weights; the final PPO
    checkpoint and every stage's save gathered to the main process, which alone samples the
    preference pairs and evaluates whole models. Under deepspeed the same stages train with ZeRO-2
    optimizers. One record, one policy, the numbers of ddp's run, for each."""
    common = ["-m", "rlhf_bench", "eval.lm_eval.tasks=[]"]
    fsdp = _accelerate(
        "fsdp.yaml", *common, *fast_overrides(tmp_path / "fsdp", shared=False), "parallel.strategy=fsdp", cwd=tmp_path
    )
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    for model in ("GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2ForTokenClassification"):
        assert f"fsdp: {model} sharded over 2 processes" in fsdp.stderr  # policy, reward model, value model
    ddp = _accelerate("ddp.yaml", *common, *fast_overrides(tmp_path / "ddp", shared=False), cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "sharded over" not in ddp.stderr
    record, reference = _record(tmp_path / "fsdp"), _record(tmp_path / "ddp")
    assert len(list((tmp_path / "fsdp" / "results" / "runs").glob("*/wandb/offline-run-*"))) == 1
    for info in ("accuracy", "gold_accuracy", "norm_mean", "norm_std"):
        rm = record["artifacts"]["reward_model"]["info"][info]
        assert rm == pytest.approx(reference["artifacts"]["reward_model"]["info"][info], abs=1e-4), info
    assert record["cost"]["tokens_trained"] == reference["cost"]["tokens_trained"]
    weights = (_policy_weights(tmp_path / "fsdp"), _policy_weights(tmp_path / "ddp"))
    _assert_same_run(record, reference, weights)

    # DeepSpeed ZeRO-2 (examples/accelerate/deepspeed.yaml): every optimizer partitioned, the same run
    if importlib.util.find_spec("deepspeed") is None:
        return
    zero = _accelerate(
        "deepspeed.yaml",
        *common,
        *fast_overrides(tmp_path / "zero", shared=False),
        "parallel.strategy=deepspeed",
        cwd=tmp_path,
    )
    assert zero.returncode == 0, zero.stderr[-3000:]
    # SFT, reward model, PPO: each optimizer ZeRO's, this process stepping about half of it
    steps = [
        tuple(int(n.replace(",", "")) for n in m)
        for m in re.findall(
            r"deepspeed: ZeRO-2 optimizer over 2 processes \(this one steps ([\d,]+) of its ([\d,]+) parameters\)",
            zero.stderr,
        )
    ]
    assert len(steps) == 3, zero.stderr[-3000:]
    assert all(0.45 < held / total < 0.55 for held, total in steps), steps
    record = _record(tmp_path / "zero")
    assert record["config"]["parallel"]["zero_stage"] == 2
    assert record["cost"]["tokens_trained"] == reference["cost"]["tokens_trained"]
    weights = (_policy_weights(tmp_path / "zero"), _policy_weights(tmp_path / "ddp"))
    _assert_same_run(record, reference, weights, strategy="deepspeed")


def test_batches_that_do_not_split_over_the_processes_are_refused_by_key():
    """2 processes x b take the steps of 1 x 2b only if every training batch splits evenly; PPO's
    processes would otherwise take different numbers of minibatch steps and wait for each other."""
    from rlhf_bench.cli import load_config
    from rlhf_bench.errors import ConfigError
    from rlhf_bench.pipeline import check_batches_split

    check_batches_split(load_config([]), 2)  # the defaults split over 2, 4 and 8 processes
    check_batches_split(load_config([]), 8)
    with pytest.raises(
        ConfigError, match=r"method.prompts_per_step must be a multiple of 2 processes x method.num_minibatches=4"
    ):
        check_batches_split(load_config(["method.prompts_per_step=36"]), 2)
    with pytest.raises(ConfigError, match=r"sft.batch_size must be a multiple of the 2 processes \(got 33\)"):
        check_batches_split(load_config(["sft.batch_size=33"]), 2)
    with pytest.raises(ConfigError, match="method.prompts_per_step must be a multiple of the 3 processes"):
        check_batches_split(load_config(["method=grpo", "reward_model=gold", "sft.batch_size=63"]), 3)
    check_batches_split(
        load_config(["method=grpo", "method.prompts_per_step=15", "reward_model=gold", "sft.batch_size=63"]), 3
    )
    check_batches_split(load_config(["method.prompts_per_step=36"]), 1)  # one process: anything goes


@pytest.mark.slow
def test_an_ensemble_reward_model_trains_under_torchrun(tmp_path):
    """Each member trains on both processes; transformers saves on rank 0 only, so the main
    process alone scores the ensemble it saved (before, the other process tried to load members it
    never wrote, and the run died)."""
    args = [
        *fast_overrides(tmp_path, ppo=False, reward_model=False, shared=False),
        *RM_FAST,
        "reward_model=ensemble",
        "method=grpo",
        "method.steps=2",
        "eval.lm_eval.tasks=[]",
    ]
    double = _torchrun("-m", "rlhf_bench", *args, cwd=tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]
    record = _record(tmp_path)
    info = record["artifacts"]["reward_model"]["info"]
    assert record["status"] == "finished" and record["processes"] == 2
    assert len(info["member_accuracy"]) == 3 and 0 <= info["accuracy"] <= 1
